"""Following a run live, cheaply: events and the log read by byte offset.

`follow(run_id)` returns a snapshot for a live view: the status, every event so far, the newest value
of each metric (loss, validation loss, learning rate, grad norm, tokens/s, MFU), progress, ETA, memory in
use and the last lines of train.log. Each call reads only the events and log bytes appended since
the last call (runs.poll by offset; one follower per run, shared by every page that watches it),
so a 1 s refresh costs the small status file and a few new bytes, not the whole history.
`runs_table()` is the rows of the runs table.
"""

from __future__ import annotations

import threading
from collections import deque
from pathlib import Path

from .runs import list_runs, poll, run_dir

LOG_LINES = 12
METRICS = ("loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_s", "mfu")


class _Follower:
    def __init__(self, run_id: str):
        self.run_id = run_id
        self.dir = run_dir(run_id)
        self.lock = threading.Lock()
        self.events: list[dict] = []
        self.ev_offset = 0
        self.log_offset = 0
        self.log_tail: deque[str] = deque(maxlen=LOG_LINES)
        self.log_partial = b""
        self.status: dict = {}
        self.latest: dict = {}
        self.generation: int | None = None  # status.events_generation: bumped when a resume rewrites events.jsonl

    def _read_log(self) -> bool:
        p = self.dir / "train.log"
        try:
            size = p.stat().st_size
        except OSError:
            return False
        if size < self.log_offset:  # truncated or replaced: start over
            self.log_offset, self.log_partial = 0, b""
            self.log_tail.clear()
        if size == self.log_offset:
            return False
        with open(p, "rb") as f:
            f.seek(max(self.log_offset, size - 64_000))  # a huge first read only needs its end
            data = self.log_partial + f.read()
        self.log_offset = size
        lines = data.split(b"\n")
        self.log_partial = lines.pop()  # the last, unfinished line waits for its end
        for line in lines:
            text = line.decode("utf-8", "replace").rstrip("\r")
            if "\r" in text:  # progress bars rewrite their line: keep what was shown last
                text = text.rsplit("\r", 1)[-1]
            if text.strip():
                self.log_tail.append(text)
        return True

    def snapshot(self) -> dict:
        with self.lock:
            r = poll(self.run_id, self.ev_offset, self.generation)  # also starts a queued run when the device is free
            if r["reset"]:  # a resume rewrote events.jsonl without the steps after its checkpoint
                self.events, self.latest = [], {}
            self.ev_offset, self.generation = r["offset"], r["generation"]
            new = r["events"]
            status_changed = r["status"] != self.status
            self.status = r["status"]
            self.events.extend(new)
            for e in new:
                for k in METRICS:
                    if e.get(k) is not None:
                        self.latest[k] = e[k]
            log_changed = self._read_log()
            st = self.status
            step, total = st.get("step") or 0, st.get("total_steps")
            return {
                "run_id": self.run_id, "status": dict(st), "events": list(self.events), "new_events": len(new),
                "changed": bool(new) or log_changed or status_changed,
                "latest": dict(self.latest), "progress": (100.0 * step / total) if total else 0.0,
                "log_tail": "\n".join(self.log_tail),
            }


_FOLLOWERS: dict[str, _Follower] = {}
_LOCK = threading.Lock()


def _follower(run_id: str) -> tuple[_Follower, bool]:
    """The run's follower, and whether it is new (nothing read yet)."""
    d = run_dir(run_id)  # validates the id
    with _LOCK:
        f = _FOLLOWERS.get(run_id)
        if f is None or f.dir != d or not d.exists():
            f = _FOLLOWERS[run_id] = _Follower(run_id)
            return f, True
    return f, False


def follow(run_id: str) -> dict:
    """A snapshot of the run, reading only what changed since the last call for this run."""
    return _follower(run_id)[0].snapshot()


def events_seen(run_id: str) -> tuple[list[dict], int]:
    """The events the run's follower has read so far and its event-log generation, without reading
    anything new: a second view of the same run (the reward chart) must not take the changes that
    follow() reports to the live view (its log would then not be re-sent). A run nobody follows yet
    is followed from here."""
    f, new = _follower(run_id)
    if new:
        f.snapshot()
    with f.lock:
        return list(f.events), int(f.generation or 0)


def forget(run_id: str) -> None:
    with _LOCK:
        _FOLLOWERS.pop(run_id, None)


def runs_table() -> list[dict]:
    """One row per run, newest first: state, method, model, dataset, created, duration, final and best loss."""
    rows = []
    for r in list_runs():
        data = str(r.get("data") or "")
        rows.append({
            "run": r["run_id"], "state": r.get("state"), "method": r.get("method"), "model": r.get("model"),
            "dataset": Path(data).name if "/" in data else data,
            "created": (r.get("created") or "").replace("T", " ")[:16],
            "duration_s": r.get("duration_s"), "step": r.get("step"), "total_steps": r.get("total_steps"),
            "final_loss": r.get("loss"), "final_eval_loss": r.get("eval_loss"),
            "best_eval_loss": r.get("best_eval_loss"), "best_step": r.get("best_step"),
        })
    return rows
