"""Runs on Hugging Face Jobs: submit a run's config as a Job, follow it, and mirror it into a local run folder.

Three roles, one module:
- the app (`submit()`): checks the flavor and the image, creates the local run folder (state
  queued, `remote: hf-jobs`) and starts a *follower* child process; returns the run id at once.
- the follower (`python -m finetune.jobs follow RUN_DIR`, token in its environment): pushes the
  dataset as a private Hub dataset when it is local, creates a private output repo, submits the Job
  with `HfApi.run_job` (the token as a job *secret*, never plain env), then polls `inspect_job`,
  mirrors the output repo's status.json/events.jsonl into the run folder (state, step, loss, ETA),
  and when the Job ends pulls the adapter (Evaluate, Compare and Push then work as for any run).
  Failures say what happened: no credits, unknown flavor, a failed job with its last log lines,
  a timeout.
- the Job itself (`python -m finetune train --in-job --config-json ... --hub-repo ...`): trains in
  its own home folder through the same runs.start_run path as a local run (one process per GPU of
  the flavor) and pushes status, events, the adapter of each checkpoint and the final adapter to
  the output repo as it goes.
Stop cancels the Job (`cancel_job`); the adapter last pushed, if any, still comes back.

The Jobs API lives at FINETUNE_JOBS_ENDPOINT (default: the Hub endpoint). The image is the Space's
own (`hf.co/spaces/$SPACE_ID`), FINETUNE_JOBS_IMAGE, or for a local app with only a token the stock
PyTorch image into which the job installs a wheel of the running code (finetune/job_image.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from .config import RunConfig
from .paths import atomic_write_text, datasets_dir, read_json, runs_dir

TERMINAL = ("COMPLETED", "CANCELED", "ERROR", "DELETED")
# What the follower copies from the Job's status.json into the local one.
MIRRORED = ("step", "total_steps", "epoch", "loss", "eval_loss", "eta_s", "elapsed_s", "tokens_per_s", "backend",
            "data_summary", "trainable_params", "total_params", "train_loss_avg", "duration_s", "train_runtime_s",
            "world_size", "launch", "resumable")
TOKEN_ENV = ("FINETUNE_HF_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


class JobsError(ValueError):
    """A Jobs request that cannot go ahead, said so that the user knows what to change."""


# ---------------------------------------------------------------------------------------------
# Small helpers


def parse_timeout(text: str | int | float | None) -> int | None:
    """'2h', '30m', '90s', '1d' or seconds -> seconds."""
    if text in (None, ""):
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        secs = float(text)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text))
        if not m:
            raise JobsError(f"--timeout: {text!r} is not a duration; write e.g. 90m, 2h or 3600")
        secs = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    if not 60 <= secs <= 7 * 86400:
        raise JobsError(f"--timeout: {text!r} must be between 1 minute and 7 days")
    return int(secs)


def _token(token: str | None = None) -> str | None:
    if token:
        return token
    for key in TOKEN_ENV:
        if os.environ.get(key):
            return os.environ[key]
    return None


def jobs_endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("FINETUNE_JOBS_ENDPOINT") or constants.ENDPOINT


def _apis(token: str | None):
    """(Hub API, Jobs API): the same unless FINETUNE_JOBS_ENDPOINT points the Jobs calls elsewhere."""
    from huggingface_hub import HfApi

    hub = HfApi(token=token)
    return hub, HfApi(endpoint=jobs_endpoint(), token=token)


def _redact(text: str, token: str | None) -> str:
    from .train import redact

    text = redact(str(text))
    return text.replace(token, "***") if token and len(token) >= 8 else text


def explain_http_error(exc: Exception, *, flavor: str | None = None, token: str | None = None) -> str:
    """One sentence for a failed Jobs or Hub request."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    body = ""
    try:
        body = exc.response.text[:300]  # type: ignore[attr-defined]
    except Exception:
        pass
    low = (str(exc) + " " + body).lower()
    if status == 402 or "credit" in low or "payment" in low:
        msg = ("No credits: Hugging Face Jobs bills per minute and this account has no payment method or prepaid "
               "credits (402 Payment Required). Add credits at https://huggingface.co/settings/billing, or train "
               "locally.")
    elif status in (400, 422) and "flavor" in low:
        msg = f"Unknown flavor {flavor!r}: Hugging Face Jobs does not offer it ({body.strip() or status})."
    elif status == 401:
        msg = "The Hugging Face token was refused (401): log in again or set a valid HF_TOKEN."
    elif status == 403:
        msg = ("The Hugging Face token may not do this (403): Jobs need a token with write access (a 'write' token, "
               "or fine-grained with 'Start and manage Jobs' and repo write).")
    elif status == 404 and "jobs" in low:
        msg = "No Jobs API at this endpoint (404): check FINETUNE_JOBS_ENDPOINT / HF_ENDPOINT."
    else:
        msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} {body.strip()[:200]}".strip()
    return _redact(msg, token)


def list_flavors(token: str | None = None) -> list[dict]:
    """The Jobs hardware (`list_jobs_hardware`) as plain dicts, price per hour included."""
    _, japi = _apis(_token(token))
    out = []
    for hw in japi.list_jobs_hardware():
        per = {"minute": 60, "hour": 1, "second": 3600}.get(str(hw.unit_label).lower(), 60)
        acc = hw.accelerator
        out.append({"name": hw.name, "label": hw.pretty_name, "cpu": hw.cpu, "ram": hw.ram,
                    "gpus": int(acc.quantity) if acc and str(acc.quantity).isdigit() else 0,
                    "gpu": acc.model if acc else None, "vram": acc.vram if acc else None,
                    "price_usd_per_h": round(float(hw.unit_cost_usd) * per, 4)})
    return out


def flavor_estimates(cfg: RunConfig, flavors: list[dict], examples: int = 1000) -> list[dict]:
    """Each flavor with the planner's time and cost for this run (None where the planner has no tier)."""
    from .plan import PlanRequest, plan

    out = []
    for f in flavors:
        row = dict(f, hours=None, cost_usd=None, fits=None)
        try:
            p = plan(PlanRequest(model=cfg.model.model_id, method=cfg.train.method, seq_len=cfg.data.max_seq_len,
                                 batch_size=cfg.train.batch_size, hardware=f["name"], examples=examples,
                                 lora_rank=cfg.lora.r))
            row.update(hours=p["time_h"], fits=p["fits"], cost_usd=round(p["time_h"] * f["price_usd_per_h"], 4))
        except Exception:  # an unknown tier or an unknown model offline: show the flavor without estimates
            pass
        out.append(row)
    return out


def flavor_label(row: dict) -> str:
    """'a10g-small: 1x A10G 24 GB, $1.00/h, ~12 min, ~$0.20' for a picker."""
    hw = f"{row['gpus']}x {row['gpu']} {row.get('vram') or ''}".strip() if row.get("gpus") else row.get("cpu") or "CPU"
    est = ""
    if row.get("hours") is not None:
        mins = row["hours"] * 60
        est = f", ~{mins:.0f} min" if mins < 120 else f", ~{row['hours']:.1f} h"
        est += f", ~${row['cost_usd']:.2f}" + ("" if row.get("fits", True) else ", will not fit")
    return f"{row['name']}: {hw}, ${row['price_usd_per_h']:.2f}/h{est}"


# ---------------------------------------------------------------------------------------------
# The app side: submit (returns at once) and the follower process


def submit(cfg: RunConfig, *, flavor: str, timeout: str | int | None = "2h", token: str | None = None,
           image: str | None = None) -> str:
    """Check what can be checked now, create the local run folder and start the follower; return the run id."""
    from . import runs

    token = _token(token)
    if not token:
        raise JobsError("Hugging Face Jobs need your token: log in, or set HF_TOKEN (a token with write access)")
    if cfg.train.method == "grpo" and cfg.grpo.reward_file:
        raise JobsError("grpo.reward_file: a reward file stays on this machine and the job cannot read it; "
                        "use the built-in rewards on Jobs, or train here")
    timeout_s = parse_timeout(timeout)
    from .job_image import ImageError, choose_image

    try:
        image, image_why, install = choose_image(image)
    except ImageError as exc:
        raise JobsError(str(exc)) from None
    src = cfg.model.model_id
    if not src.startswith("builtin:") and Path(src).expanduser().exists():
        raise JobsError(f"model.model_id: {src} is a local folder, which a Hugging Face Job cannot reach; push it "
                        "to the Hub and use its id")
    try:
        names = [f["name"] for f in list_flavors(token)]
    except Exception as exc:
        raise JobsError(explain_http_error(exc, token=token)) from None
    if flavor not in names:
        raise JobsError(f"--flavor: unknown flavor {flavor!r}; Hugging Face Jobs offer {', '.join(names)}")
    _data_upload_plan(cfg.data.source)  # refuses a source the Job could not get, before any run folder
    run_id = runs.create_run(cfg)
    runs.update_status(run_id, remote="hf-jobs", flavor=flavor, timeout_s=timeout_s, job_image=image,
                       job_image_why=image_why, job_install=install, job_stage="SUBMITTING")
    start_follower(run_id, token)
    return run_id


def start_follower(run_id: str, token: str) -> int:
    """The follower child: like a training child, it outlives the page and dies with nothing else."""
    from .runs import CHILDREN, run_dir, update_status

    d = run_dir(run_id)
    env = dict(os.environ, PYTHONUNBUFFERED="1", FINETUNE_HOME=str(runs_dir().parent), HF_TOKEN=token)
    pkg_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(d / "train.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "finetune.jobs", "follow", str(d)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, cwd=pkg_root)
    CHILDREN[run_id] = proc
    update_status(d, pid=proc.pid)
    return proc.pid


def _data_upload_plan(source: str) -> tuple[str, Path | None]:
    """('pass', None) for sources the Job loads itself, ('folder'|'file', path) for local data to push."""
    if source.startswith(("builtin:", "hub:")):
        return "pass", None
    p = Path(source).expanduser()
    if not p.exists() and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", source):
        p = datasets_dir() / source
    if p.is_dir() and (p / "meta.json").is_file():
        return "folder", p
    if p.is_file():
        return "file", p
    raise JobsError(f"data.source: {source} is neither builtin:, hub:, a prepared dataset nor a file")


def _repo_names(user: str, run_id: str) -> tuple[str, str]:
    short = re.sub(r"[^A-Za-z0-9._-]", "-", run_id)[:80]
    return f"{user}/fts-run-{short}", f"{user}/fts-data-{short}"


def _push_data(hub, cfg: RunConfig, data_repo: str) -> str | None:
    """Push local data as a private Hub dataset; return the `--hub-data REPO:PATH` spec (None: nothing to push)."""
    kind, path = _data_upload_plan(cfg.data.source)
    if kind == "pass":
        return None
    hub.create_repo(data_repo, repo_type="dataset", private=True, exist_ok=True)
    if kind == "folder":
        hub.upload_folder(repo_id=data_repo, repo_type="dataset", folder_path=str(path),
                          allow_patterns=["meta.json", "train.jsonl", "validation.jsonl"],
                          commit_message="Fine-Tune Studio: training data")
        return f"{data_repo}:."
    hub.upload_file(repo_id=data_repo, repo_type="dataset", path_or_fileobj=str(path), path_in_repo=path.name,
                    commit_message="Fine-Tune Studio: training data")
    return f"{data_repo}:{path.name}"


def job_command(cfg: RunConfig, hub_repo: str, hub_data: str | None) -> list[str]:
    cmd = ["python", "-m", "finetune", "train", "--in-job", "--config-json", json.dumps(cfg.to_dict()),
           "--hub-repo", hub_repo]
    if hub_data:
        cmd += ["--hub-data", hub_data]
    return cmd


def _install_command(hub, cmd: list[str], data_repo: str, gpus: int) -> tuple[list[str], str]:
    """Stock image: upload a wheel of the running code and the pins beside the data; the command that
    installs them and then runs cmd. Returns (command, wheel file name)."""
    import tempfile

    from huggingface_hub import CommitOperationAdd

    from .job_image import install_command, install_files, pin_of, pinned_requirements

    hub.create_repo(data_repo, repo_type="dataset", private=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fts-wheel-") as tmp:
        files = install_files(Path(tmp), gpu=gpus > 0)
        hub.create_commit(data_repo, repo_type="dataset", commit_message="Fine-Tune Studio: the code to install",
                          operations=[CommitOperationAdd(name, str(path)) for name, path in files.items()])
    wheel = next(Path(name).name for name in files if name.endswith(".whl"))
    hub_pin = pin_of(pinned_requirements(gpu=gpus > 0), "huggingface-hub")
    return install_command(cmd, data_repo, wheel, hub_pin), wheel


def _submit_job(d: Path, token: str) -> dict:
    """The follower's first act: push data, create the output repo, run the Job. Returns status fields."""
    from .runs import update_status

    hub, japi = _apis(token)
    st = read_json(d / "status.json", {}) or {}
    cfg = RunConfig.from_dict(read_json(d / "config.json"))
    user = hub.whoami()["name"]
    hub_repo, data_repo = _repo_names(user, d.name)
    update_status(d, job_stage="UPLOADING", hub_repo=hub_repo)
    hub.create_repo(hub_repo, private=True, exist_ok=True)
    hub_data = _push_data(hub, cfg, data_repo)
    gpus = next((f["gpus"] for f in list_flavors(token) if f["name"] == st.get("flavor")), 0)
    if gpus > 1 and cfg.train.num_processes == 1:  # one process per GPU of the flavor
        cfg.train.num_processes = gpus
    cmd, wheel = job_command(cfg, hub_repo, hub_data), None
    if st.get("job_install"):
        update_status(d, job_stage="UPLOADING_CODE")
        cmd, wheel = _install_command(hub, cmd, data_repo, gpus)
    env = {"PYTHONUNBUFFERED": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "PIP_ROOT_USER_ACTION": "ignore"}
    job = japi.run_job(image=st["job_image"], command=cmd, flavor=st["flavor"],
                       secrets={"HF_TOKEN": token}, env=env, timeout=st.get("timeout_s"),
                       labels={"app": "fine-tune-studio", "run": re.sub(r"[^A-Za-z0-9_-]", "-", d.name)[:100]},
                       namespace=user)
    return update_status(d, job_id=job.id, job_url=job.url, job_stage=str(job.status.stage), namespace=user,
                         data_repo=data_repo if hub_data or wheel else None, job_wheel=wheel, submitted=time.time())


def _download(hub, repo: str, filename: str, dest: Path) -> Path | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RemoteEntryNotFoundError

    try:
        return Path(hf_hub_download(repo, filename, local_dir=dest, token=hub.token, endpoint=hub.endpoint))
    except (EntryNotFoundError, RemoteEntryNotFoundError):
        return None


def _mirror(d: Path, hub, st: dict) -> dict:
    """Copy the Job's status and events from the output repo into the run folder."""
    cache = d / ".remote"
    fields = {}
    rs = _download(hub, st["hub_repo"], "status.json", cache)
    if rs is not None:
        remote = read_json(rs, {}) or {}
        fields = {k: remote[k] for k in MIRRORED if k in remote}
        fields["remote_state"] = remote.get("state")
        if remote.get("error"):
            fields["remote_error"] = remote["error"]
    ev = _download(hub, st["hub_repo"], "events.jsonl", cache)
    if ev is not None:
        text = ev.read_text(encoding="utf-8")
        local = d / "events.jsonl"
        # The remote file only grows: replacing ours keeps every reader's byte offset valid.
        if len(text.encode()) >= local.stat().st_size:
            atomic_write_text(local, text)
    return fields


def _pull_artifact(d: Path, hub, repo: str) -> str | None:
    """Bring adapter/ (or model/) and the model card from the output repo into the run folder."""
    import shutil

    from huggingface_hub import snapshot_download

    tmp = d / ".pull.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    snapshot_download(repo, local_dir=tmp, allow_patterns=["adapter/*", "model/*", "README.md"], token=hub.token,
                      endpoint=hub.endpoint)
    found = None
    for name in ("adapter", "model"):
        if (tmp / name).is_dir() and any((tmp / name).iterdir()):
            shutil.rmtree(d / name, ignore_errors=True)
            os.replace(tmp / name, d / name)
            found = name
            break
    if found and (tmp / "README.md").is_file():
        os.replace(tmp / "README.md", d / "README.md")
    shutil.rmtree(tmp, ignore_errors=True)
    return found


def _last_log_lines(japi, job_id: str, namespace: str, n: int = 15) -> list[str]:
    try:
        lines = list(japi.fetch_job_logs(job_id=job_id, namespace=namespace, tail=n))
    except Exception:
        return []
    return [ln.rstrip() for ln in lines if ln and ln.strip()][-n:]


def _final_fields(d: Path, hub, japi, st: dict, job) -> dict:
    stage = str(job.status.stage)
    art = None
    try:
        art = _pull_artifact(d, hub, st["hub_repo"])
    except Exception as exc:  # the job's own outcome matters more than a missing partial adapter
        sys.stderr.write(f"artifact not pulled: {_redact(str(exc), hub.token)}\n")
    fields = {"job_stage": stage, "finished": time.time(), "eta_s": 0 if stage == "COMPLETED" else None}
    remote_state, remote_error = st.get("remote_state"), st.get("remote_error")
    if stage == "COMPLETED":
        if art is None:
            fields.update(state="failed", error="The job completed but no adapter came back from "
                                                f"{st['hub_repo']} (see the job's logs: {st.get('job_url')}).")
        else:
            fields.update(state=remote_state if remote_state in ("completed", "stopped") else "completed", error=None)
            if not (d / "README.md").exists():  # the card did not come back: write it here from the mirrored status
                from .train import write_model_card

                write_model_card(d, RunConfig.from_dict(read_json(d / "config.json")), dict(st, **fields))
        return fields
    if stage == "CANCELED":
        return dict(fields, state="stopped", error="stopped: the Hugging Face job was cancelled"
                    + ("; the adapter last pushed came back" if art else ""))
    tail = _last_log_lines(japi, job.id, st.get("namespace"))
    msg = str(job.status.message or "")
    running = getattr(job.durations, "running_secs", None) if job.durations else None
    timeout_s = st.get("timeout_s")
    if "timeout" in msg.lower() or "timed out" in msg.lower() or (timeout_s and running and running >= timeout_s - 5):
        err = (f"The job hit its timeout ({timeout_s // 60 if timeout_s else '?'} min) at step {st.get('step') or 0}"
               f"/{st.get('total_steps') or '?'}: start again with a longer --timeout or fewer steps"
               + ("; the adapter last pushed came back" if art else ""))
    elif stage == "DELETED":
        err = "The Hugging Face job was deleted before it finished."
    else:
        err = "The Hugging Face job failed" + (f": {remote_error}" if remote_error else (f": {msg}" if msg else ""))
    if tail:
        err += "\nLast log lines:\n" + "\n".join(tail[-10:])
    return dict(fields, state="failed", error=_redact(err, hub.token))


def follow(run_path: str | os.PathLike, poll_s: float | None = None) -> int:
    """The follower's loop (see module docstring). Exits when the Job has ended and the run is final."""
    from .runs import update_status

    d = Path(run_path).resolve()
    token = _token()
    poll_s = poll_s or float(os.environ.get("FINETUNE_JOBS_POLL_S", "3"))
    hub, japi = _apis(token)
    update_status(d, pid=os.getpid())
    try:
        st = read_json(d / "status.json", {}) or {}
        if not st.get("job_id"):
            if (d / "STOP").exists():
                update_status(d, state="stopped", error="stopped before the job was submitted")
                return 0
            st = _submit_job(d, token)
        while True:
            if (d / "STOP").exists() and not st.get("cancel_sent"):
                _cancel(st, token)
                st = update_status(d, cancel_sent=True, stop_requested=True)
            job = japi.inspect_job(job_id=st["job_id"], namespace=st.get("namespace"))
            stage = str(job.status.stage)
            fields = {"job_stage": stage}
            try:
                fields.update(_mirror(d, hub, st))
            except Exception as exc:  # the Hub may lag behind the Job: try again next round
                sys.stderr.write(f"mirror: {_redact(str(exc), token)}\n")
            stopping = st.get("stop_requested") or (d / "STOP").exists()
            if stage in ("RUNNING", "SCHEDULING"):
                fields["state"] = "stopping" if stopping else ("running" if stage == "RUNNING" else "queued")
            st = update_status(d, **fields)
            if stage in TERMINAL:
                st = update_status(d, **_final_fields(d, hub, japi, st, job))
                return 0 if st.get("state") in ("completed", "stopped") else 1
            time.sleep(poll_s)
    except Exception as exc:  # noqa: BLE001 -- every failure must land in status.json
        err = explain_http_error(exc, flavor=(read_json(d / "status.json", {}) or {}).get("flavor"), token=token)
        sys.stderr.write(err + "\n")
        update_status(d, state="failed", error=err)
        return 1
    finally:
        import shutil

        shutil.rmtree(d / ".remote", ignore_errors=True)
        (d / "STOP").unlink(missing_ok=True)


def stop_job(run_id: str, *, force: bool = False, token: str | None = None) -> dict:
    """Stop a Jobs run: a STOP file asks the follower (which holds the token) to cancel the Job, as a
    local run's trainer would stop; with no follower alive, the token at hand cancels it here."""
    from .runs import ACTIVE, read_status, run_dir, update_status

    d = run_dir(run_id)
    st = read_status(run_id)
    if st.get("state") not in ACTIVE:
        return st
    (d / "STOP").write_text("stop")
    if st.get("follower") and st.get("job_id") and str(st.get("job_stage")) not in TERMINAL:
        token = _token(token)
        if not token:
            raise JobsError("This run's follower is not running and no token is at hand to cancel job "
                            f"{st['job_id']}: set HF_TOKEN, or cancel it at {st.get('job_url')}")
        _cancel(st, token)
    return update_status(d, only_if_state=ACTIVE, state="stopping", stop_requested=True)


def _cancel(st: dict, token: str) -> None:
    _, japi = _apis(token)
    try:
        japi.cancel_job(job_id=st["job_id"], namespace=st.get("namespace"))
    except Exception as exc:
        raise JobsError(explain_http_error(exc, token=token)) from None


def ensure_follower(run_id: str, token: str | None = None) -> bool:
    """Reattach: restart the follower of an active Jobs run whose follower is gone (app restarted)."""
    from .runs import ACTIVE, cmdline_has, pid_alive, run_dir

    st = read_json(run_dir(run_id) / "status.json", {}) or {}
    pid = st.get("pid")
    if st.get("state") not in ACTIVE or (pid and pid_alive(int(pid)) and cmdline_has(int(pid), run_id)):
        return False
    token = _token(token)
    if not token:
        return False
    start_follower(run_id, token)
    return True


# ---------------------------------------------------------------------------------------------
# Inside the Job: train through the local path and push to the output repo as it goes


class _Pusher:
    """Uploads the changed run files to the output repo (a 5xx or a timeout is retried; 4xx fails fast)."""

    def __init__(self, repo: str):
        from huggingface_hub import HfApi

        self.api, self.repo, self.sent = HfApi(), repo, {}

    def push(self, d: Path, *, final: bool = False) -> None:
        from .runs import last_checkpoint

        files = {"status.json": d / "status.json", "events.jsonl": d / "events.jsonl"}
        ck = last_checkpoint(d)
        if ck:  # the newest complete checkpoint's adapter, so that a cancelled job still gives one back
            for p in Path(ck).glob("adapter_*"):
                files[f"adapter/{p.name}"] = p
        if final:
            for name in ("adapter", "model"):
                if (d / name).is_dir():
                    files = {k: v for k, v in files.items() if not k.startswith("adapter/")}
                    files.update({f"{name}/{p.name}": p for p in (d / name).iterdir() if p.is_file()})
        ops = []
        for name, p in files.items():
            try:
                data = p.read_bytes()
            except OSError:
                continue
            key = (len(data), hash(data))
            if self.sent.get(name) != key:
                ops.append((name, data, key))
        if ops:
            self._commit(ops, "Fine-Tune Studio: final adapter and status" if final else "Fine-Tune Studio: progress")
        if final and (d / "README.md").is_file():
            # The model card goes on its own: the Hub validates its YAML, and a card it dislikes must
            # not cost the adapter.
            data = (d / "README.md").read_bytes()
            try:
                self._commit([("README.md", data, (len(data), hash(data)))], "Fine-Tune Studio: model card")
            except Exception as exc:
                print(f"model card not pushed: {_redact(str(exc), _token())}", flush=True)

    def _commit(self, ops: list, message: str) -> None:
        from huggingface_hub import CommitOperationAdd

        for attempt in range(4):
            try:
                self.api.create_commit(self.repo, operations=[CommitOperationAdd(n, b) for n, b, _ in ops],
                                       commit_message=message)
                break
            except Exception as exc:
                code = getattr(getattr(exc, "response", None), "status_code", None)
                if (code is not None and code < 500) or attempt == 3:
                    raise
                time.sleep(2 ** attempt)
        self.sent.update({n: k for n, _, k in ops})


def run_in_job(config_json: str, hub_repo: str, hub_data: str | None = None, push_s: float | None = None) -> int:
    """The Job's entry point: fetch the data, train as a local run, push progress and the result."""
    from . import runs

    cfg = RunConfig.from_dict(json.loads(config_json))
    if hub_data:
        from huggingface_hub import snapshot_download

        repo, _, rel = hub_data.partition(":")
        local = Path(snapshot_download(repo, repo_type="dataset", local_dir=datasets_dir() / repo.replace("/", "--")))
        cfg.data.source = str(local if rel in ("", ".") else local / rel)
    push_s = push_s or float(os.environ.get("FINETUNE_JOBS_PUSH_S", "30"))
    run_id = runs.create_run(cfg)
    d = runs.run_dir(run_id)
    pusher = _Pusher(hub_repo)
    # Cancel sends SIGTERM: stop training cleanly so that the adapter can still be pushed.
    signal.signal(signal.SIGTERM, lambda *_: (d / "STOP").write_text("SIGTERM"))
    runs.start_run(run_id)
    from . import __version__

    print(f"Fine-Tune Studio {__version__} from {Path(__file__).resolve().parent}: run {run_id}, pushing to "
          f"{hub_repo}", flush=True)
    last = 0.0
    while True:
        st = runs.read_status(run_id)
        proc = runs.CHILDREN.get(run_id)
        done = st.get("state") not in runs.ACTIVE and (proc is None or proc.poll() is not None)
        if done:
            break
        if time.time() - last >= push_s:
            last = time.time()
            try:
                pusher.push(d)
            except Exception as exc:  # progress is best effort; the final push is not
                print(f"push failed: {_redact(str(exc), _token())}", flush=True)
        time.sleep(0.5)
    log = (d / "train.log").read_text(errors="replace") if (d / "train.log").exists() else ""
    print(_redact(log[-4000:], _token()), flush=True)
    pusher.push(d, final=True)
    st = runs.read_status(run_id)
    print(f"Fine-Tune Studio job: {st.get('state')} at step {st.get('step')}", flush=True)
    if st.get("error"):
        print(f"error: {st['error']}", flush=True)
    return 0 if st.get("state") in ("completed", "stopped") else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "follow":
        return follow(argv[1])
    print("usage: python -m finetune.jobs follow RUN_DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())


def _register() -> None:
    from . import runs

    runs.REMOTE_STOPPERS["hf-jobs"] = stop_job  # runs.stop_run hands Jobs runs to us (runs never imports jobs)


_register()
