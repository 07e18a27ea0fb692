"""Load check of the public Space: do light calls stay fast while one visitor inspects a big upload?

Starts `python app.py` in public mode (SPACE_ID set) on 127.0.0.1, a free port, a temporary home
folder, offline; writes the big upload itself (a JSONL file of --big-rows alpaca rows, about
--big-mb MB); then runs the same light load twice:
  - baseline: --visitors anonymous visitors, each calling plan, inspect_dataset (builtin:demo), runs
    and status --rounds times, one after the other;
  - with the big upload: the same, while one more visitor uploads and inspects the big file.
Anonymous visitors see no runs, so `status` answers "no run" (a refusal that is the right answer,
counted as an answer, not an error). Prints p50/p95/max seconds and errors per endpoint, side by
side, and how long the big inspection was in flight during the light load.

Visitors use Gradio's plain HTTP API (httpx); the big upload goes through gradio_client.
Bounded: at most --visitors + 1 clients, --rounds rounds, each call --call-timeout-s, the whole run
--max-seconds; 127.0.0.1 only; the app is stopped at the end.

Run: `python bench/load_public.py [--visitors 16 --rounds 3 --big-mb 46 --big-rows 120000]`
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIGHT = ("plan", "inspect_dataset", "runs", "status")
PLAN_ARGS = ("builtin:tiny-chat", "auto", "instruction", "answer short questions", 460, False, "local", 256, 8,
             "quality")
WORDS = ("time person year way day thing world life hand part child place work week case point company number "
         "group problem fact water book river garden city music letter market reason light story friend").split()


def write_big_upload(path: Path, rows: int, mb: float, seed: int = 0) -> None:
    """`rows` alpaca rows, each padded so that the file is `mb` MB (10^6 bytes)."""
    rng = random.Random(seed)
    per_row = int(mb * 1e6 / rows)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            row = {"instruction": f"Question {i}: what about the {rng.choice(WORDS)}?", "input": "", "output": ""}
            room = max(1, per_row - len(json.dumps(row)) - 1)
            row["output"] = " ".join(rng.choice(WORDS) for _ in range(room // 4 + 1))[:room].strip()
            f.write(json.dumps(row) + "\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(home: Path, port: int, limit_s: float) -> subprocess.Popen:
    env = {**os.environ, "SPACE_ID": "bench/studio", "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_SERVER_PORT": str(port), "FINETUNE_HOME": str(home), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("SYSTEM", None)  # not a real Space: no OAuth
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(home / "app.log", "w"))
    deadline = time.time() + limit_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the app exited ({proc.returncode}); see {home / 'app.log'}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).close()
            return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"the app did not answer within {limit_s:.0f} s")


class Visitor:
    """One anonymous visitor on Gradio's plain HTTP API (POST /gradio_api/call/NAME, then read the
    event stream): far lighter than gradio_client, whose threads would take the CPU the app needs
    on a small machine."""

    def __init__(self, url: str, timeout_s: float, api: dict):
        import httpx

        self.url, self.http, self.api = url.rstrip("/"), httpx.Client(timeout=timeout_s), api

    def call(self, api_name: str, *data):
        params = self.api["named_endpoints"][f"/{api_name}"]["parameters"]  # the rest take their defaults
        data = list(data) + [p.get("parameter_default") for p in params[len(data):]]
        r = self.http.post(f"{self.url}/gradio_api/call/{api_name}", json={"data": data})
        r.raise_for_status()
        event, body = None, None
        with self.http.stream("GET", f"{self.url}/gradio_api/call/{api_name}/{r.json()['event_id']}") as s:
            for line in s.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    body = line.split(":", 1)[1].strip()
                    break
        if event != "complete":
            raise RuntimeError(f"{api_name}: {body}")
        return json.loads(body)[0]


def light_call(visitor: Visitor, endpoint: str):
    if endpoint == "plan":
        return visitor.call("plan", *PLAN_ARGS)
    if endpoint == "inspect_dataset":
        return visitor.call("inspect_dataset", None, "builtin:demo", "auto", "", "builtin:tiny-chat")
    if endpoint == "runs":
        return visitor.call("runs")
    try:
        return visitor.call("status", "no-such-run")
    except RuntimeError as exc:  # the anonymous visitor's right answer
        if "no run" in str(exc):
            return None
        raise


def visit(client: Visitor, rounds: int, timings: dict, errors: dict, lock: threading.Lock) -> None:
    for _ in range(rounds):
        for endpoint in LIGHT:
            t0 = time.perf_counter()
            try:
                light_call(client, endpoint)
            except Exception as exc:  # noqa: BLE001 -- counted and shown
                with lock:
                    errors.setdefault(endpoint, []).append(str(exc)[:120])
                continue
            with lock:
                timings.setdefault(endpoint, []).append(time.perf_counter() - t0)


def big_inspect(url: str, path: Path, out: dict) -> None:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    out["start"] = time.perf_counter()
    try:
        info = client.predict(handle_file(str(path)), "", "auto", "", "builtin:tiny-chat", api_name="/inspect_dataset")
        out["rows"], out["source"] = info["rows"], info["source"]
    except Exception as exc:  # noqa: BLE001 -- shown in the report
        out["error"] = str(exc)[:200]
    out["end"] = time.perf_counter()


def cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system) used so far by a process (this one by default), its threads included."""
    fields = Path(f"/proc/{pid or os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(url: str, clients: list, rounds: int, big: Path | None, limit_s: float, app_pid: int) -> dict:
    timings, errors, lock, heavy = {}, {}, threading.Lock(), {}
    heavy_thread = None
    if big is not None:
        heavy_thread = threading.Thread(target=big_inspect, args=(url, big, heavy), daemon=True)
        heavy_thread.start()
        while "start" not in heavy:
            time.sleep(0.05)
        time.sleep(2.0)  # the upload goes first (loopback: well under that), then the inspection runs
    t0, cpu0 = time.perf_counter(), (cpu_s(), cpu_s(app_pid))
    with ThreadPoolExecutor(len(clients)) as pool:
        futures = [pool.submit(visit, c, rounds, timings, errors, lock) for c in clients]
        done, pending = wait(futures, timeout=limit_s)
        if pending:
            errors.setdefault("(time limit)", []).append(f"{len(pending)} visitors unfinished after {limit_s:.0f} s")
    t1, cpu1 = time.perf_counter(), (cpu_s(), cpu_s(app_pid))
    if heavy_thread is not None:
        heavy_thread.join(max(1.0, limit_s - (t1 - t0)))
    return {"timings": timings, "errors": errors, "light_s": t1 - t0, "light_span": (t0, t1), "heavy": heavy,
            "cpu": (cpu1[0] - cpu0[0], cpu1[1] - cpu0[1])}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))] if xs else float("nan")


def report(base: dict, loaded: dict) -> None:
    print(f"\n{'endpoint':<16} {'':>4} {'baseline p50/p95/max s':>26} {'err':>4}   {'with big upload p50/p95/max s':>30} {'err':>4}")
    for endpoint in LIGHT:
        cols = []
        for res in (base, loaded):
            xs = res["timings"].get(endpoint, [])
            cols.append(f"{pct(xs, .5):7.2f} {pct(xs, .95):7.2f} {max(xs, default=float('nan')):7.2f}   n={len(xs):<3}")
            cols.append(f"{len(res['errors'].get(endpoint, [])):>4}")
        print(f"{endpoint:<16}      {cols[0]:>26} {cols[1]}   {cols[2]:>30} {cols[3]}")
    for res, label in ((base, "baseline"), (loaded, "with big upload")):
        for endpoint, errs in res["errors"].items():
            print(f"  {label} {endpoint} errors: {len(errs)}, first: {errs[0]}")
    print(f"\nlight phase: baseline {base['light_s']:.1f} s, with the big upload {loaded['light_s']:.1f} s")
    for res, label in ((base, "baseline"), (loaded, "with big upload")):
        print(f"  CPU seconds during the {label} light phase: load generator {res['cpu'][0]:.1f}, app process "
              f"{res['cpu'][1]:.1f} (the big inspection's child not counted)")
    h = loaded["heavy"]
    if "end" in h:
        t0, t1 = loaded["light_span"]
        overlap = max(0.0, min(t1, h["end"]) - max(t0, h["start"]))
        print(f"big upload: upload + inspect {h['end'] - h['start']:.1f} s, in flight during {overlap:.1f} s of the "
              f"{t1 - t0:.1f} s light phase; " + (f"error: {h['error']}" if "error" in h else
                                                   f"rows {h['rows']}, source shown as {h['source']!r}"))
    else:
        print("big upload: unfinished within the time limit")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--visitors", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--big-mb", type=float, default=46)
    ap.add_argument("--big-rows", type=int, default=120_000)
    ap.add_argument("--call-timeout-s", type=float, default=120)
    ap.add_argument("--max-seconds", type=float, default=900)
    a = ap.parse_args()
    if not (1 <= a.visitors <= 64 and 1 <= a.rounds <= 10):
        raise SystemExit("--visitors must be 1-64 and --rounds 1-10 (a bounded load)")
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="load_public_") as tmp:
        tmp = Path(tmp)
        (tmp / "home").mkdir()
        big = tmp / "big_upload.jsonl"
        write_big_upload(big, a.big_rows, a.big_mb)
        print(f"big upload: {big.stat().st_size / 1e6:.1f} MB, {a.big_rows} rows; cpus: {os.cpu_count()}, "
              f"load average: {os.getloadavg()[0]:.1f}")
        port = free_port()
        proc = start_app(tmp / "home", port, limit_s=min(300, a.max_seconds))
        try:
            url = f"http://127.0.0.1:{port}/"
            with urllib.request.urlopen(f"{url}gradio_api/info", timeout=60) as r:
                api = json.loads(r.read())
            clients = [Visitor(url, a.call_timeout_s, api) for _ in range(a.visitors)]
            for endpoint in LIGHT:  # warm-up: the built-in model and tokenizer load once
                light_call(clients[0], endpoint)
            with ThreadPoolExecutor(len(clients)) as pool:  # and each client makes its first call untimed
                list(pool.map(lambda c: light_call(c, "runs"), clients))
            left = lambda: max(10.0, a.max_seconds - (time.time() - started))  # noqa: E731
            base = run_load(url, clients, a.rounds, None, left() / 2, proc.pid)
            loaded = run_load(url, clients, a.rounds, big, left(), proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        report(base, loaded)
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
