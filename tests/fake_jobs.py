"""A Hugging Face Jobs-compatible HTTP server on 127.0.0.1 that runs each job as a local process.

It answers the endpoints huggingface_hub 1.33's `HfApi` calls for Jobs: POST /api/jobs/{ns}
(run_job), GET /api/jobs/{ns}/{id} (inspect_job), GET /api/jobs/{ns}/{id}/logs (fetch_job_logs,
server-sent events), POST /api/jobs/{ns}/{id}/cancel (cancel_job), GET /api/jobs/hardware
(list_jobs_hardware). Tokens are the users of a FakeHub (tests/fake_hub.py).

A job's command runs with an empty home folder of its own (HOME, FINETUNE_HOME, HF_HOME) and only
the job's env, its secrets and the "platform" settings that point huggingface_hub at the loopback
Hub: whatever the app wants back from a job can only come through that Hub. The image decides the
rest: a Space's image (or any other image named) runs in the repository root, standing in for the
image's app folder; the stock `pytorch/pytorch:*` image is the local Python with nothing of this
project: the job runs in an empty folder, `python` is this Python, `pip` is tests/fake_image_pip.py
(offline: pins must already be met, a wheel goes with --no-deps into the job's own site folder, the
only one on its PYTHONPATH), so the code a job runs there is the code it installed.

Knobs: `credits = False` answers run_job with 402; `timeout_scale` shrinks timeoutSeconds so that a
test can watch a timeout; `schedule_s` keeps a job in SCHEDULING for a while; `specs` records the
job specs received (to check that the token travelled as a secret).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
STOCK_IMAGE = "pytorch/pytorch:"

HARDWARE = [
    {"name": "cpu-basic", "prettyName": "CPU Basic", "cpu": "2 vCPU", "ram": "16 GB", "ephemeralStorage": "50 GB",
     "accelerator": None, "unitCostMicroUSD": 167, "unitCostUSD": 0.000167, "unitLabel": "minute"},
    {"name": "cpu-upgrade", "prettyName": "CPU Upgrade", "cpu": "8 vCPU", "ram": "32 GB",
     "ephemeralStorage": "50 GB", "accelerator": None, "unitCostMicroUSD": 500, "unitCostUSD": 0.0005,
     "unitLabel": "minute"},
    {"name": "t4-small", "prettyName": "Nvidia T4 - small", "cpu": "4 vCPU", "ram": "15 GB",
     "ephemeralStorage": "50 GB", "accelerator": {"type": "gpu", "model": "T4", "quantity": "1", "vram": "16 GB",
                                                  "manufacturer": "Nvidia"},
     "unitCostMicroUSD": 6667, "unitCostUSD": 0.006667, "unitLabel": "minute"},
    {"name": "a10g-largex2", "prettyName": "2x Nvidia A10G - large", "cpu": "24 vCPU", "ram": "92 GB",
     "ephemeralStorage": "1000 GB", "accelerator": {"type": "gpu", "model": "A10G", "quantity": "2",
                                                   "vram": "48 GB", "manufacturer": "Nvidia"},
     "unitCostMicroUSD": 50000, "unitCostUSD": 0.05, "unitLabel": "minute"},
]


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class _Error(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class FakeJobs:
    def __init__(self, hub, platform_env: dict | None = None, tmp_root: str | os.PathLike | None = None):
        self.hub = hub  # a started tests.fake_hub.FakeHub: users, tokens and the Hub URL the jobs talk to
        self.platform_env = dict(platform_env or {})
        self.tmp_root = Path(tmp_root or tempfile.mkdtemp(prefix="fake-jobs-"))
        self.credits = True
        self.timeout_scale = 1.0
        self.schedule_s = 0.3
        self.cancel_grace_s = 20.0
        self.jobs: dict[str, dict] = {}
        self.specs: list[dict] = []
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None

    # ---- server ------------------------------------------------------------------------------
    def start(self) -> str:
        jobs = self

        class Handler(_Handler):
            pass

        Handler.jobs = jobs
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self.url

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def stop(self) -> None:
        for job in list(self.jobs.values()):
            proc = job.get("proc")
            if proc is not None and proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                proc.wait(timeout=10)
        # A job's own children (its training process, in a session of its own) end with the
        # container on the real platform; here, end whatever still runs out of a job's home.
        root = str(self.tmp_root).encode()
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if root in f.read():
                        os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # ---- jobs --------------------------------------------------------------------------------
    def _user(self, token: str | None, namespace: str | None = None) -> dict:
        user = self.hub.users.get(token or "")
        if user is None:
            raise _Error(401, "Invalid credentials in Authorization header")
        if namespace is not None and namespace != user["name"] and namespace not in user["orgs"]:
            raise _Error(403, f"You cannot run or see jobs in namespace {namespace}")
        return user

    def create(self, user: dict, namespace: str, spec: dict) -> dict:
        if user["role"] != "write":
            raise _Error(403, "This token cannot start jobs (read-only)")
        if spec.get("flavor") not in {h["name"] for h in HARDWARE}:
            raise _Error(400, f"Invalid flavor {spec.get('flavor')!r}")
        if not self.credits:
            raise _Error(402, "Payment Required: you have no credits left; add a payment method to run Jobs")
        if not spec.get("command"):
            raise _Error(400, "command is required")
        self.specs.append(json.loads(json.dumps(spec)))
        job_id = secrets.token_hex(12)
        home = self.tmp_root / job_id
        home.mkdir(parents=True)
        job = {"id": job_id, "namespace": namespace, "owner": user["name"], "spec": spec, "stage": "SCHEDULING",
               "message": None, "created": time.time(), "started": None, "finished": None, "proc": None,
               "home": home, "log": home / "job.log", "canceled": False}
        self.jobs[job_id] = job
        threading.Thread(target=self._run, args=(job,), daemon=True).start()
        return self.info(job)

    def _run(self, job: dict) -> None:
        time.sleep(self.schedule_s)
        spec, home = job["spec"], job["home"]
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "LANG": "C.UTF-8",
               "PYTHONPATH": str(ROOT), "FINETUNE_HOME": str(home / "finetune_home"), "HF_HOME": str(home / "hf"),
               "HF_ENDPOINT": self.hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0",
               "HF_DATASETS_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1",
               "TOKENIZERS_PARALLELISM": "false", "JOB_ID": job["id"]}
        cwd = ROOT
        if str(spec.get("dockerImage") or "").startswith(STOCK_IMAGE):
            cwd = self._stock_image(home, env)
        env.update(self.platform_env)
        env.update({k: str(v) for k, v in (spec.get("environment") or {}).items()})
        env.update({k: str(v) for k, v in (spec.get("secrets") or {}).items()})
        cmd = list(spec["command"]) + list(spec.get("arguments") or [])
        if cmd[0] == "python":  # the image's python
            cmd[0] = sys.executable
        with self.lock:
            if job["canceled"]:
                return
            log = open(job["log"], "ab")
            job["proc"] = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True)
            log.close()
            job["stage"], job["started"] = "RUNNING", time.time()
        timeout = spec.get("timeoutSeconds")
        deadline = job["started"] + timeout * self.timeout_scale if timeout else None
        proc = job["proc"]
        while proc.poll() is None:
            if deadline and time.time() > deadline and not job["canceled"]:
                with self.lock:
                    job["stage"], job["message"] = "ERROR", "Job timeout"
                    job["timed_out"] = True
                self._kill(job)
            time.sleep(0.2)
        with self.lock:
            job["finished"] = time.time()
            if job["canceled"]:
                job["stage"] = "CANCELED"
            elif not job.get("timed_out"):
                job["stage"] = "COMPLETED" if proc.returncode == 0 else "ERROR"
                if proc.returncode:
                    job["message"] = f"Job failed with exit code: {proc.returncode}"

    @staticmethod
    def _stock_image(home: Path, env: dict) -> Path:
        """The stock image's python and pip on PATH, its (empty) site folder on PYTHONPATH; returns the
        working folder (empty: no checkout to import from)."""
        image = home / "image"
        (image / "bin").mkdir(parents=True)
        (image / "site").mkdir()
        os.symlink(sys.executable, image / "bin" / "python")
        pip = image / "bin" / "pip"
        pip.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{ROOT / "tests" / "fake_image_pip.py"}" "$@"\n')
        pip.chmod(0o755)
        env.update(PATH=f"{image / 'bin'}{os.pathsep}{env['PATH']}", PYTHONPATH=str(image / "site"),
                   FAKE_IMAGE_SITE=str(image / "site"))
        (home / "work").mkdir()
        return home / "work"

    def _kill(self, job: dict) -> None:
        """SIGTERM, then SIGKILL after a grace period (like a container stop)."""
        proc = job.get("proc")
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except OSError:
            return

        def later():
            try:
                proc.wait(timeout=self.cancel_grace_s)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass

        threading.Thread(target=later, daemon=True).start()

    def cancel(self, job: dict) -> None:
        with self.lock:
            if job["stage"] in ("COMPLETED", "ERROR", "CANCELED", "DELETED"):
                return
            job["canceled"] = True
            if job["proc"] is None:
                job["stage"], job["finished"] = "CANCELED", time.time()
        self._kill(job)

    def info(self, job: dict) -> dict:
        spec = job["spec"]
        out = {"id": job["id"], "createdAt": _iso(job["created"]), "startedAt": _iso(job["started"]),
               "finishedAt": _iso(job["finished"]), "command": spec.get("command"),
               "arguments": spec.get("arguments") or [], "environment": spec.get("environment") or {},
               # the Hub never gives secrets back: only their names
               "secrets": {k: None for k in (spec.get("secrets") or {})}, "flavor": spec.get("flavor"),
               "labels": spec.get("labels"), "status": {"stage": job["stage"], "message": job["message"]},
               "owner": {"id": "u-" + job["owner"], "name": job["owner"], "type": "user"},
               "durations": {"schedulingSecs": int((job["started"] or time.time()) - job["created"]),
                             "runningSecs": int((job["finished"] or time.time()) - job["started"])
                             if job["started"] else None}}
        if spec.get("spaceId"):
            out["spaceId"] = spec["spaceId"]
        else:
            out["dockerImage"] = spec.get("dockerImage")
        return out

    def log_lines(self, job: dict) -> list[str]:
        try:
            text = job["log"].read_text(errors="replace")
        except OSError:
            text = ""
        return ["===== Job started ====="] + [ln for ln in text.replace("\r", "\n").split("\n") if ln.strip()]


class _Handler(BaseHTTPRequestHandler):
    jobs: FakeJobs
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if status >= 400:
            self.send_header("X-Error-Message", json.loads(body).get("error", ""))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, obj, status: int = 200):
        self._send(status, json.dumps(obj).encode())

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def _dispatch(self, method: str):
        url = urlsplit(self.path)
        parts = [p for p in unquote(url.path).split("/") if p]
        query = parse_qs(url.query)
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        auth = self.headers.get("Authorization") or ""
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        jobs = self.jobs
        try:
            if parts[:2] != ["api", "jobs"]:
                raise _Error(404, "Not Found")
            rest = parts[2:]
            if rest == ["hardware"] and method == "GET":
                return self._json(HARDWARE)
            if len(rest) == 1 and method == "POST":
                user = jobs._user(token, rest[0])
                with jobs.lock:
                    return self._json(jobs.create(user, rest[0], json.loads(body or b"{}")))
            if len(rest) >= 2:
                jobs._user(token, rest[0])
                job = jobs.jobs.get(rest[1])
                if job is None or job["namespace"] != rest[0]:
                    raise _Error(404, f"Job {rest[1]} not found")
                if len(rest) == 2 and method == "GET":
                    with jobs.lock:
                        return self._json(jobs.info(job))
                if rest[2:] == ["cancel"] and method == "POST":
                    jobs.cancel(job)
                    return self._send(200, b"{}")
                if rest[2:] == ["logs"] and method == "GET":
                    lines = jobs.log_lines(job)
                    tail = int(query["tail"][0]) if query.get("tail") else None
                    if tail is not None:
                        lines = lines[-tail:]
                    sse = "".join(f"data: {json.dumps({'timestamp': _iso(time.time()), 'data': ln})}\n\n"
                                  for ln in lines)
                    return self._send(200, sse.encode(), "text/event-stream")
            raise _Error(404, "Not Found")
        except _Error as e:
            self._json({"error": e.message}, e.status)
