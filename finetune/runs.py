"""Run folders and the job registry: create, start, follow, stop, resume and list training runs.

A run lives in FINETUNE_HOME/runs/<run_id>/:
  config.json   the RunConfig (no secrets)
  status.json   {state, step, total_steps, epoch, loss, eta_s, error, ...}; state is one of
                queued, running, stopping, stopped, failed, completed
  events.jsonl  one flushed JSON object per logged step
  train.log     the child process's stdout/stderr
  checkpoints/  resumable Trainer checkpoints (complete when trainer_state.json exists)
  adapter/      the PEFT adapter (or model/ for full fine-tuning), written when training ends
  eval/         report.json, report.md
  README.md     model card
Training runs in a child process (`python -m finetune train --run RUN_DIR`), so a crash or an OOM
never takes the app down. Stop writes a STOP file that the trainer checks at each step.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from .config import RunConfig
from .paths import atomic_write_json, is_safe_name, read_json, runs_dir, slug

STATES = ("queued", "running", "stopping", "stopped", "failed", "completed")
ACTIVE = ("queued", "running", "stopping")
_PROCS: dict[str, subprocess.Popen] = {}  # children started by this process


class RunError(ValueError):
    pass


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_dir(run_id: str) -> Path:
    if not is_safe_name(run_id, 128):
        raise RunError(f"invalid run id {run_id!r}")
    d = runs_dir() / run_id
    if not (d / "config.json").exists():
        raise RunError(f"no run {run_id!r} under {runs_dir()}")
    return d


def new_run_id(cfg: RunConfig) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = slug(cfg.name or cfg.model.model_id.split("/")[-1].replace("builtin:", ""), 40, "run")
    return f"{stamp}-{base}-{secrets.token_hex(2)}"


def create_run(cfg: RunConfig) -> str:
    """Write a new run folder (config + queued status) atomically and return its id."""
    run_id = new_run_id(cfg)
    final = runs_dir() / run_id
    tmp = runs_dir() / f".{run_id}.creating"
    tmp.mkdir(parents=True)
    try:
        atomic_write_json(tmp / "config.json", cfg.to_dict())
        atomic_write_json(tmp / "status.json", {"run_id": run_id, "state": "queued", "step": 0, "total_steps": None,
                                               "created": now_iso(), "updated": now_iso()})
        (tmp / "events.jsonl").touch()
        os.rename(tmp, final)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return run_id


def load_config(run_id: str) -> RunConfig:
    return RunConfig.from_dict(read_json(run_dir(run_id) / "config.json"))


def read_status(run_id: str) -> dict:
    d = run_dir(run_id)
    st = read_json(d / "status.json", default=None) or {"run_id": run_id, "state": "failed", "error": "status.json unreadable"}
    st.setdefault("run_id", run_id)
    if st.get("state") in ACTIVE and not _alive(st, d):
        # Gone without saying so (killed, out of memory, machine restarted). The guard keeps a final
        # state the child wrote just before exiting.
        st = update_status(d, only_if_state=ACTIVE, state="failed",
                           error=st.get("error") or "the training process ended unexpectedly (killed or out of memory?)",
                           resumable=last_checkpoint(run_id) is not None)
    return st


def update_status(run_id_or_dir, *, only_if_state: tuple[str, ...] | None = None, **fields) -> dict:
    """Read-modify-write status.json under a lock: the app and the training child both write it.

    With `only_if_state`, nothing is written unless the current state is one of those (so a stop
    request or a dead-process check never overwrites a run that has just finished)."""
    import fcntl

    d = Path(run_id_or_dir) if isinstance(run_id_or_dir, Path) else run_dir(run_id_or_dir)
    lock = os.open(d, os.O_RDONLY)  # flock on the run folder itself: no extra file in it
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        st = read_json(d / "status.json", default={}) or {}
        if only_if_state is not None and st.get("state") not in only_if_state:
            return st
        st.update(fields)
        st["updated"] = now_iso()
        atomic_write_json(d / "status.json", st)
        return st
    finally:
        os.close(lock)  # releases the lock


def read_events(run_id: str, offset: int = 0) -> tuple[list[dict], int]:
    """Events appended since byte `offset`, and the new offset (only whole lines are read)."""
    p = run_dir(run_id) / "events.jsonl"
    try:
        with open(p, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1
    events = []
    for line in data[:end].splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events, offset + end


def append_event(d: Path, event: dict) -> None:
    with open(d / "events.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(event) + "\n")
        f.flush()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _alive(st: dict, d: Path) -> bool:
    run_id = st.get("run_id")
    proc = _PROCS.get(run_id)
    pid = st.get("pid")
    if proc is not None and (not pid or proc.pid == int(pid)):
        return proc.poll() is None
    if proc is not None:
        proc.poll()  # an older child of ours for this run (resumed elsewhere since): reap it, judge by pid
    if not pid:
        # Queued, child not started yet: give the launcher a minute before calling it lost.
        return time.time() - os.path.getmtime(d / "status.json") < 60
    if not _pid_alive(int(pid)):
        return False
    try:  # the pid may have been reused by something else
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return str(run_id).encode() in f.read()
    except OSError:
        return True


def last_checkpoint(run: str | Path) -> str | None:
    """The newest complete checkpoint (its trainer_state.json exists) of a run id or run folder."""
    ck = (run if isinstance(run, Path) else run_dir(run)) / "checkpoints"
    best, best_step = None, -1
    if ck.is_dir():
        for c in ck.iterdir():
            m = re.match(r"checkpoint-(\d+)$", c.name)
            if m and (c / "trainer_state.json").exists() and int(m.group(1)) > best_step:
                best, best_step = str(c), int(m.group(1))
    return best


def start_run(run_id: str, *, resume: bool = False, env: dict | None = None) -> int:
    """Launch the training child for a run; return its pid. Secrets come only through `env`."""
    d = run_dir(run_id)
    st = read_status(run_id)
    if st.get("state") in ACTIVE and st.get("pid"):  # read_status has checked that pid is alive
        raise RunError(f"run {run_id} is already {st.get('state')}")
    if resume and st.get("state") == "completed":
        raise RunError(f"run {run_id} has completed; start a new run to train further")
    if resume and last_checkpoint(run_id) is None:
        raise RunError(f"run {run_id} has no complete checkpoint to resume from")
    (d / "STOP").unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "finetune", "train", "--run", str(d)]
    if resume:
        cmd.append("--resume")
    child_env = dict(os.environ)
    child_env.update(env or {})
    child_env["PYTHONUNBUFFERED"] = "1"
    child_env["FINETUNE_HOME"] = str(runs_dir().parent)  # the child runs in another folder: same home
    # The child must find the finetune package even when the app was started from another folder.
    pkg_root = str(Path(__file__).resolve().parent.parent)
    child_env["PYTHONPATH"] = pkg_root + (os.pathsep + child_env["PYTHONPATH"] if child_env.get("PYTHONPATH") else "")
    log = open(d / "train.log", "ab")
    update_status(d, state="queued", error=None, resumed=resume, stop_requested=False, pid=None)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=child_env, start_new_session=True, cwd=pkg_root)
    log.close()
    _PROCS[run_id] = proc
    update_status(d, pid=proc.pid)
    return proc.pid


def stop_run(run_id: str, *, force: bool = False) -> dict:
    """Ask a run to stop: it finishes the current step, saves a checkpoint and the adapter, then exits.

    A second request (or force=True) while it is already stopping kills the process group: for a
    child stuck before its first step (loading a model, tokenizing), which never sees the STOP file."""
    d = run_dir(run_id)
    st = read_status(run_id)
    if st.get("state") not in ACTIVE:
        return st
    if force or st.get("state") == "stopping":
        pid = st.get("pid")
        if pid and _alive(st, d):
            try:
                os.killpg(int(pid), signal.SIGKILL)
            except OSError:
                pass
            proc = _PROCS.get(run_id)
            if proc is not None:
                proc.wait(timeout=10)
        return update_status(d, only_if_state=ACTIVE, state="stopped", error="stopped by force",
                             resumable=last_checkpoint(d) is not None)
    (d / "STOP").write_text(now_iso())
    return update_status(d, only_if_state=ACTIVE, state="stopping", stop_requested=True)


def wait(run_id: str, timeout_s: float = 600, poll_s: float = 0.5) -> dict:
    deadline = time.time() + timeout_s
    while True:
        st = read_status(run_id)
        proc = _PROCS.get(run_id)
        if st.get("state") not in ACTIVE and (proc is None or proc.poll() is not None):
            return st
        if time.time() > deadline:
            return st
        time.sleep(poll_s)


def list_runs() -> list[dict]:
    """All runs, newest first, with their status (runs whose process died are marked failed)."""
    out = []
    for d in sorted(runs_dir().iterdir(), reverse=True):
        if d.name.startswith(".") or not (d / "config.json").exists():
            continue
        try:
            st = read_status(d.name)
        except Exception:  # a damaged run folder must not hide the others
            continue
        cfg = read_json(d / "config.json", default={}) or {}
        out.append({
            "run_id": d.name, "state": st.get("state"), "step": st.get("step"),
            "total_steps": st.get("total_steps"), "loss": st.get("loss"),
            "model": (cfg.get("model") or {}).get("model_id"), "method": (cfg.get("train") or {}).get("method"),
            "data": (cfg.get("data") or {}).get("source"), "created": st.get("created"),
            "eval_loss": st.get("eval_loss"), "best_eval_loss": st.get("best_eval_loss"),
            "best_step": st.get("best_step"), "duration_s": st.get("duration_s"),
            "resumable": st.get("state") in ("failed", "stopped") and last_checkpoint(d.name) is not None,
        })
    return out


def delete_run(run_id: str) -> dict:
    """Delete a run folder that is not active. The folder is renamed away first, so it disappears
    at once and whole (a reader never sees half of it)."""
    import shutil

    d = run_dir(run_id)
    st = read_status(run_id)
    if st.get("state") in ACTIVE:
        raise RunError(f"run {run_id} is {st.get('state')}: stop it before deleting it")
    trash = d.with_name(f".{run_id}.deleting")
    os.rename(d, trash)
    shutil.rmtree(trash, ignore_errors=True)
    _PROCS.pop(run_id, None)
    return {"run_id": run_id, "deleted": True}


def artifact_dir(run_id: str) -> Path | None:
    d = run_dir(run_id)
    for name in ("adapter", "model"):
        if (d / name).is_dir():
            return d / name
    return None


def start_training(cfg: RunConfig, *, env: dict | None = None, base_dir: str | os.PathLike | None = None) -> str:
    """Check `cfg` (finetune.preflight: paths made absolute against base_dir or the current folder,
    model reachable, data trains tokens, memory fits), create its run, launch the child and return
    the run id at once. A failed check raises before any run folder exists."""
    from .preflight import preflight

    preflight(cfg, base_dir=base_dir)
    run_id = create_run(cfg)
    start_run(run_id, env=env)
    return run_id


def status_summary(run_id: str) -> dict:
    """The status plus progress (percent), the latest events and where the results are."""
    st = read_status(run_id)
    events, _ = read_events(run_id)
    step, total = st.get("step") or 0, st.get("total_steps")
    art = artifact_dir(run_id)
    out = dict(st)
    out["progress"] = round(100.0 * step / total, 1) if total else 0.0
    if len(events) > 400:  # keep the whole curve's shape, not just its end
        stride = len(events) // 300 + 1
        events = events[:-100:stride] + events[-100:]
    out["events"] = events
    out["artifact"] = str(art) if art else None
    out["run_dir"] = str(run_dir(run_id))
    out.pop("pid", None)
    return out
