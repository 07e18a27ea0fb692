"""Run folders and the job registry: create, start, follow, stop, resume and list training runs.

A run lives in FINETUNE_HOME/runs/<run_id>/:
  config.json   the RunConfig (no secrets)
  status.json   {state, step, total_steps, epoch, loss, eta_s, error, ...}; state is one of
                queued, running, stopping, stopped, failed, completed
  events.jsonl  one flushed JSON object per logged step
  train.log     the child process's stdout/stderr
  checkpoints/  resumable Trainer checkpoints (complete when trainer_state.json exists)
  adapter/      the PEFT adapter (or model/ for full fine-tuning), written when training ends
  data/         validation.jsonl + meta.json (sha256): the validation rows as they were at start
  eval/         report.json, report.md, metrics.png
  README.md     model card
Training runs in a child process (`python -m finetune train --run RUN_DIR`), so a crash or an OOM
never takes the app down; with train.num_processes > 1 the child is `accelerate launch` (see
parallel.py), whose pid stands for the run and whose ranks record theirs in `rank_pids`. A run on
Hugging Face Jobs (`remote: hf-jobs`, see jobs.py) has a follower process instead, and never holds
the device. Stop writes a STOP file that the trainer checks at each step; a second
plain stop only asks again, and only `stop_run(force=True)` kills.

One training at a time per machine: `start_run` puts the run in the queue (state `queued`, `waiting`,
`queued_at` in its status.json, so the queue is on disk and survives an app restart) and `dispatch`
launches the oldest waiting run whenever no run holds the device. The training child dispatches
when it ends; `list_runs`, `status_summary` and `poll` dispatch too, so a queue whose holder was
killed moves on. Starting, resuming and dispatching happen under the queue lock and the run's own
lock (a flock on its config.json), so two clicks never start two trainers on one run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .config import RunConfig
from .paths import atomic_write_json, file_lock, is_safe_name, read_json, runs_dir, slug

STATES = ("queued", "running", "stopping", "stopped", "failed", "completed")
ACTIVE = ("queued", "running", "stopping")
CHILDREN: dict[str, subprocess.Popen] = {}  # children started by this process
_PENDING_ENV: dict[str, dict] = {}  # secrets for queued runs: in memory only, never on disk
_TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "FINETUNE_HF_TOKEN")
ENV_WAIT_S = 120  # how long a queued run that brought secrets waits for the process that holds them


class RunError(ValueError):
    pass


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_dir(run_id: str) -> Path:
    if not is_safe_name(run_id, 128):
        raise RunError(f"invalid run id {run_id!r}")
    d = runs_dir() / run_id
    if not (d / "config.json").exists():
        raise RunError(f"no run {run_id!r} (`runs` lists the runs you can see)")  # no server path: visitors read it
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
        from .snapshot import snapshot_validation

        snapshot_validation(cfg, tmp)  # evaluation later reads these rows, whatever happens to the source
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
    if st.get("state") == "queued" and st.get("waiting"):
        st["queue_position"] = _queue_position(run_id, st)
        return st
    if st.get("state") in ACTIVE and st.get("remote") and not _alive(st, d):
        # A Hugging Face job runs on without its local follower: say so, keep the state (jobs.ensure_follower
        # restarts the follower when a token is at hand, e.g. `python -m finetune status RUN_ID`).
        st["follower"] = "not running"
    elif st.get("state") in ACTIVE and not _alive(st, d):
        # Gone without saying so (killed, out of memory, machine restarted). The guard keeps a final
        # state the child wrote just before exiting.
        st = update_status(d, only_if_state=ACTIVE, state="failed",
                           error=st.get("error") or "the training process ended unexpectedly (killed or out of memory?)",
                           resumable=last_checkpoint(run_id) is not None)
    return st


def _waiting_runs() -> list[tuple[float, str, dict]]:
    """(queued_at, run_id, status) of every run waiting in the queue, oldest first."""
    out = []
    root = runs_dir()
    if not root.is_dir():
        return out
    for d in root.iterdir():
        if d.name.startswith("."):
            continue
        st = read_json(d / "status.json", default=None)
        if isinstance(st, dict) and st.get("state") == "queued" and st.get("waiting"):
            out.append((float(st.get("queued_at") or 0), d.name, st))
    return sorted(out)


def _queue_position(run_id: str, st: dict) -> int:
    return 1 + sum(1 for q, rid, _ in _waiting_runs() if (q, rid) < (float(st.get("queued_at") or 0), run_id))


def _queue_lock():
    """The machine-wide lock for the device slot and the queue (a dot file: not a run)."""
    runs_dir().mkdir(parents=True, exist_ok=True)
    return file_lock(runs_dir() / ".queue.lock", create=True)


def _run_lock(d: Path):
    # On config.json, not on the folder: update_status flocks the folder, and flock locks held through
    # two descriptors block each other even inside one process.
    return file_lock(d / "config.json")


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


def pid_alive(pid: int) -> bool:
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
    proc = CHILDREN.get(run_id)
    pid = st.get("pid")
    if proc is not None and (not pid or proc.pid == int(pid)):
        # poll() answers None while another thread waits on the child (Popen's waitpid lock), even
        # after the child died: /proc says whether it is gone (reaped or a zombie).
        return proc.poll() is None and pid_alive(proc.pid)
    if proc is not None:
        proc.poll()  # an older child of ours for this run (resumed elsewhere since): reap it, judge by pid
    if not pid:
        # Queued, child not started yet: give the launcher a minute before calling it lost.
        return time.time() - os.path.getmtime(d / "status.json") < 60
    if not pid_alive(int(pid)):
        return False
    return cmdline_has(int(pid), str(run_id))


def cmdline_has(pid: int, run_id: str) -> bool:
    """Whether process `pid` still runs this run (a pid may have been reused by something else)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return run_id.encode() in f.read()
    except OSError:
        return True


def last_checkpoint(run: str | Path) -> str | None:
    """The newest good checkpoint of a run id or run folder: complete (its trainer_state.json exists)
    and saved before any non-finite step (status `bad_from_step`)."""
    d = run if isinstance(run, Path) else run_dir(run)
    ck = d / "checkpoints"
    bad = (read_json(d / "status.json", default={}) or {}).get("bad_from_step")
    best, best_step = None, -1
    if ck.is_dir():
        for c in ck.iterdir():
            m = re.match(r"checkpoint-(\d+)$", c.name)
            if bad is not None and m and int(m.group(1)) >= int(bad):
                continue
            if m and (c / "trainer_state.json").exists() and int(m.group(1)) > best_step:
                best, best_step = str(c), int(m.group(1))
    return best


def child_process_env(extra: dict | None) -> dict:
    """The environment of a child process of the app (training, heavy work): this one's, without the
    Space owner's token, plus `extra`, the same home folder, and the finetune package on the path."""
    env = dict(os.environ)
    if os.environ.get("SPACE_ID"):  # a visitor's run never inherits the Space owner's token
        for key in _TOKEN_VARS:
            env.pop(key, None)
    env.update(extra or {})
    env["PYTHONUNBUFFERED"] = "1"
    # Idle OpenMP threads spin only briefly (~10k rounds, tens of µs) before they sleep: long spinning
    # steals the cores the working threads need on a shared CPU (a 20x slower step measured at load 9
    # on 2 cores), while sleeping at once (OMP_WAIT_POLICY=PASSIVE) wakes the threads for each of the
    # thousands of small ops of a step: a SmolLM2-135M LoRA step (4 x 44 tokens, 2 threads) took
    # 1295 ms passive, 772 ms with this, 790 ms with libgomp's default. The thread tuner
    # (finetune.speed) picks fewer threads when the cores are busy.
    env.setdefault("GOMP_SPINCOUNT", "10000")
    env.setdefault("KMP_BLOCKTIME", "1")  # the same for LLVM/Intel OpenMP builds (ms before sleeping)
    env["FINETUNE_HOME"] = str(runs_dir().parent)  # the child runs in another folder: same home
    # The child must find the finetune package even when the app was started from another folder.
    pkg_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# A training child started before its run exists (warm_spare): it imports the training libraries
# while this process checks the run (preflight), then takes the run from its stdin.
SPARES: list[subprocess.Popen] = []
SPARE_TAKE_S = 300  # an older spare is not handed a run (it quits after train.SPARE_IDLE_S idle)


def warm_spare() -> None:
    """Start a spare training child now. `finetune train` calls this before its checks: the child's
    imports (~5 s of torch, transformers, peft, trl) then overlap the checks' own (the tokenizer) on
    the other core instead of following them. Not on a machine with a GPU device (Unsloth must be
    imported before transformers, and which backend a run takes is decided later); a spare nobody
    takes exits when this process does (its stdin closes)."""
    while SPARES and (SPARES[0].poll() is not None or time.monotonic() - SPARES[0].fts_born > SPARE_TAKE_S):
        _close_spare(SPARES.pop(0))  # it quit or will: make room
    if SPARES or Path("/dev/nvidiactl").exists():
        return
    fd, wait_log = tempfile.mkstemp(prefix="fts-spare-", suffix=".log")  # its output until it has a run
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "finetune", "train", "--spare", wait_log], stdin=subprocess.PIPE, stdout=fd,
            stderr=subprocess.STDOUT, env=child_process_env(None), start_new_session=True,
            cwd=str(Path(__file__).resolve().parent.parent))
    finally:
        os.close(fd)
    proc.fts_born = time.monotonic()  # type: ignore[attr-defined]
    SPARES.append(proc)


def _close_spare(proc: subprocess.Popen) -> None:
    """Let a spare go: end of input makes it exit; reap it if it already has."""
    with contextlib.suppress(OSError):
        proc.stdin.close()
    proc.poll()


def _take_spare(d: Path, resume: bool) -> subprocess.Popen | None:
    """Hand run folder `d` to a live spare child; None when there is none (or it died)."""
    while SPARES:
        proc = SPARES.pop()
        if proc.poll() is not None or time.monotonic() - proc.fts_born > SPARE_TAKE_S:
            _close_spare(proc)
            continue
        try:
            proc.stdin.write((json.dumps({"run": str(d), "resume": resume}) + "\n").encode())
            proc.stdin.close()
            return proc
        except OSError:  # it died between the check and the write
            continue
    return None


def _launch(run_id: str, *, resume: bool, env: dict | None) -> int | None:
    """Start the training child now (the caller holds the queue lock and has checked the slot)."""
    d = runs_dir() / run_id
    launch = None
    if load_config(run_id).train.num_processes > 1:
        from .parallel import ParallelError, launch_command

        try:
            cmd, launch = launch_command(d, load_config(run_id), resume=resume)
        except ParallelError as exc:  # cannot run here (any more): fail it rather than block the queue
            update_status(d, state="failed", waiting=False, queue_position=None, error=str(exc))
            return None
    else:
        cmd = [sys.executable, "-m", "finetune", "train", "--run", str(d)]
        if resume:
            cmd.append("--resume")
    proc = None if launch or env else _take_spare(d, resume)  # a spare has this process's environment
    if proc is None:
        log = open(d / "train.log", "ab")
        try:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=child_process_env(env), start_new_session=True,
                                    cwd=str(Path(__file__).resolve().parent.parent))
        finally:
            log.close()
    CHILDREN[run_id] = proc
    _PENDING_ENV.pop(run_id, None)
    update_status(d, state="queued", waiting=False, queue_position=None, pid=proc.pid, launched=now_iso(),
                  rank_pids=None, **({"launch": launch} if launch else {}))
    return proc.pid


def _holder() -> str | None:
    """The run that holds the device now (launched and alive), if any."""
    root = runs_dir()
    if not root.is_dir():
        return None
    for d in root.iterdir():
        if d.name.startswith(".") or not (d / "config.json").exists():
            continue
        st = read_json(d / "status.json", default=None)
        if not isinstance(st, dict) or st.get("state") not in ACTIVE or st.get("waiting") or not st.get("pid"):
            continue
        if st.get("remote"):  # a Hugging Face job trains elsewhere: its follower holds no device
            continue
        try:
            if read_status(d.name).get("state") in ACTIVE:  # marks a dead holder failed
                return d.name
        except RunError:
            continue
    return None


def _dispatch_locked() -> str | None:
    if _holder() is not None:
        return None
    waiting = _waiting_runs()
    if not waiting:
        return None
    _, run_id, st = waiting[0]
    env = _PENDING_ENV.get(run_id)
    if st.get("needs_env") and env is None:
        # Its secrets live only in the process that queued it: give that process time to launch it;
        # if it is gone (app restarted), launch without them rather than block the queue forever.
        since = st.get("head_since")
        if not since:
            update_status(runs_dir() / run_id, head_since=time.time())
            return None
        if time.time() - float(since) < ENV_WAIT_S:
            return None
        update_status(runs_dir() / run_id, note="started from the queue without the token it was queued with")
    _launch(run_id, resume=bool(st.get("resume")), env=env)
    return run_id


def dispatch() -> str | None:
    """Launch the oldest waiting run if no run holds the device; return its id (None if none started)."""
    with _queue_lock():
        return _dispatch_locked()


def start_run(run_id: str, *, resume: bool = False, env: dict | None = None) -> int | None:
    """Queue a run (or resume one) and launch it at once when the device is free.

    Returns the child's pid, or None while the run waits in the queue (its status then has
    `queue_position`). Secrets come only through `env`, which stays in this process's memory."""
    d = run_dir(run_id)
    with _queue_lock(), _run_lock(d):
        st = read_status(run_id)
        if st.get("state") in ACTIVE and (st.get("waiting") or st.get("pid")):  # read_status checked the pid
            where = f"waiting in the queue (position {st.get('queue_position')})" if st.get("waiting") \
                else st.get("state")
            raise RunError(f"run {run_id} is already {where}")
        if st.get("remote"):
            raise RunError(f"run {run_id} ran on Hugging Face Jobs: start a new run instead of resuming it")
        if resume and st.get("state") == "completed":
            raise RunError(f"run {run_id} has completed; start a new run to train further")
        if resume and last_checkpoint(run_id) is None:
            raise RunError(f"run {run_id} has no complete checkpoint to resume from")
        (d / "STOP").unlink(missing_ok=True)
        if env:
            _PENDING_ENV[run_id] = dict(env)
        update_status(d, state="queued", waiting=True, queued_at=time.time(), resume=resume, resumed=resume,
                      needs_env=bool(env), head_since=None, error=None, stop_requested=False, pid=None)
        _dispatch_locked()
        return (read_json(d / "status.json", default={}) or {}).get("pid")


# How to stop a run that trains elsewhere, by its status' `remote` (jobs.py registers "hf-jobs" when
# imported: the layers above runs plug in here, runs never imports them). Without an entry, a remote
# run gets the STOP file its follower watches.
REMOTE_STOPPERS: dict[str, Callable[..., dict]] = {}


def stop_run(run_id: str, *, force: bool = False) -> dict:
    """Ask a run to stop: it finishes the current step, saves a checkpoint and the adapter, then exits.

    Asking again only repeats the request (a double click must not kill a run). `force=True` kills
    the process group now, without a final save: for a child stuck before its first step. A run
    still waiting in the queue just leaves it."""
    d = run_dir(run_id)
    with _queue_lock(), _run_lock(d):
        st = read_status(run_id)
        if st.get("state") not in ACTIVE:
            return st
        remote = REMOTE_STOPPERS.get(st.get("remote") or "")
        if remote is not None:  # a run elsewhere (Hugging Face Jobs: jobs.py registers how to stop it)
            return remote(run_id, force=force)
        if st.get("waiting"):
            _PENDING_ENV.pop(run_id, None)
            return update_status(d, only_if_state=ACTIVE, state="stopped", waiting=False, queue_position=None,
                                 error=None, resumable=last_checkpoint(d) is not None)
        if not force:
            (d / "STOP").write_text(now_iso())
            return update_status(d, only_if_state=ACTIVE, state="stopping", stop_requested=True)
        pid = st.get("pid")
        if pid and _alive(st, d):
            try:
                os.killpg(int(pid), signal.SIGKILL)
            except OSError:
                pass
            proc = CHILDREN.get(run_id)
            if proc is not None:
                proc.wait(timeout=10)
        # Ranks of a multi-process run live in sessions of their own (torchrun): they die with the
        # launcher (PDEATHSIG), and are killed here too in case that did not reach them.
        for rpid in st.get("rank_pids") or []:
            if pid_alive(int(rpid)) and cmdline_has(int(rpid), run_id):
                try:
                    os.kill(int(rpid), signal.SIGKILL)
                except OSError:
                    pass
        (d / "STOP").unlink(missing_ok=True)
        st = update_status(d, only_if_state=ACTIVE, state="stopped", error="stopped by force",
                           resumable=last_checkpoint(d) is not None)
        _dispatch_locked()
        return st


def delete_run(run_id: str) -> dict:
    """Delete a run folder. Refuses a run that is running or waiting (stop it first)."""
    d = run_dir(run_id)
    with _queue_lock(), _run_lock(d):
        st = read_status(run_id)
        if st.get("state") in ACTIVE:
            raise RunError(f"run {run_id} is {st.get('state')}: stop it before deleting it")
        # Renamed first, so readers never see half a folder; then removed.
        trash = runs_dir() / f".deleting-{run_id}-{secrets.token_hex(3)}"
        os.rename(d, trash)
    shutil.rmtree(trash, ignore_errors=True)
    CHILDREN.pop(run_id, None)
    return {"run_id": run_id, "deleted": True}


def poll(run_id: str, offset: int = 0, generation: int | None = None) -> dict:
    """What a live view needs at each tick, read incrementally: the status, the events appended
    since byte `offset`, and the offset to pass next time. When a resume has rewritten the event
    log (its `events_generation` changed) or the file is shorter than `offset`, `reset` is true and
    the events are the whole log again."""
    dispatch()
    st = read_status(run_id)
    gen = int(st.get("events_generation") or 0)
    size = (run_dir(run_id) / "events.jsonl").stat().st_size if (run_dir(run_id) / "events.jsonl").exists() else 0
    reset = (generation is not None and int(generation) != gen) or offset > size or offset < 0
    events, new_offset = read_events(run_id, 0 if reset else offset)
    return {"status": _with_contract_keys(st, run_id), "events": events, "offset": new_offset,
            "generation": gen, "reset": reset}


def wait(run_id: str, timeout_s: float = 600, poll_s: float = 0.5) -> dict:
    deadline = time.time() + timeout_s
    while True:
        st = read_status(run_id)
        if st.get("waiting"):
            dispatch()  # in case the run holding the device died without handing over
        proc = CHILDREN.get(run_id)
        if st.get("state") not in ACTIVE and (proc is None or proc.poll() is not None):
            return st
        if time.time() > deadline:
            return st
        if proc is not None and proc.poll() is None:
            try:  # our own child: wake up the moment it exits, not up to poll_s later
                proc.wait(timeout=poll_s)
            except subprocess.TimeoutExpired:
                pass
        else:
            time.sleep(poll_s)


def list_runs() -> list[dict]:
    """All runs, newest first, with their status (runs whose process died are marked failed)."""
    dispatch()
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
            "queue_position": st.get("queue_position"), "backend": st.get("backend"),
            "duration_s": st.get("duration_s"), "eval_loss": st.get("eval_loss"),
            "best_eval_loss": st.get("best_eval_loss"), "best_step": st.get("best_step"),
            "resumable": st.get("state") in ("failed", "stopped") and last_checkpoint(d.name) is not None,
            "merged_from": st.get("merged_from"),  # an adapter merge of these runs (finetune/merge.py), not trained
            "study_id": st.get("study_id"),  # a trial of a hyperparameter search (finetune.sweep)
        })
    return out


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

    found = preflight(cfg, base_dir=base_dir)
    if cfg.train.num_processes > 1:  # refuse what cannot run here before any run folder exists
        from .parallel import choose_preset

        choose_preset(cfg)
    run_id = create_run(cfg)
    note = (found.get("memory") or {}).get("note")
    if note:  # the batch was trimmed to fit (same effective batch): say so where the run is watched
        update_status(run_id, memory_note=note)
    start_run(run_id, env=env)  # launches now, or queues it behind the run holding the device
    return run_id


def status_summary(run_id: str) -> dict:
    """The status plus progress (percent), the latest events and where the results are."""
    dispatch()
    st = _with_contract_keys(read_status(run_id), run_id)
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
    return out


CONTRACT_KEYS = ("state", "step", "total_steps", "loss", "eval_loss", "queue_position", "pid", "backend")


def _with_contract_keys(st: dict, run_id: str) -> dict:
    """`status RUN_ID --json` always has these keys (None where not known yet)."""
    out = dict(st)
    for key in CONTRACT_KEYS:
        out.setdefault(key, None)
    if out.get("state") != "queued" or not out.get("waiting"):
        out["queue_position"] = None
    out["run_id"] = run_id
    return out
