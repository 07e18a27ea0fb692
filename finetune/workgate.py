"""Heavy work gate: a bounded queue for work that takes the machine for a while (a big inspection,
preparing data, starting or evaluating a run...), with a limit per visitor, so that light calls
(plan, status, runs, inspecting a small source) never wait behind one visitor's heavy work.

    with heavy_gate().slot("alice", "prepare_dataset", on_wait=print):
        ...  # at most FINETUNE_HEAVY_SLOTS of these run at once

Settings (environment): FINETUNE_HEAVY_SLOTS (heavy jobs at once, default 2), FINETUNE_HEAVY_QUEUE
(heavy jobs allowed to wait, default 8), FINETUNE_HEAVY_PER_VISITOR (heavy jobs one visitor may
have running or waiting, default 1; 0 = no limit), FINETUNE_SMALL_SOURCE_MB (a dataset source up to
this size is light work, default 8).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections import Counter
from contextlib import contextmanager
from typing import Callable, Iterator


class BusyError(RuntimeError):
    """The heavy queue is full, or this visitor already has heavy work in flight."""


def _env_int(name: str, default: int) -> int:
    try:
        return max(0, int(os.environ.get(name, default)))
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {os.environ.get(name)!r}") from None


class HeavyGate:
    """First come, first served slots for heavy work, with a bounded waiting line."""

    def __init__(self, slots: int, max_waiting: int, per_visitor: int):
        self.slots, self.max_waiting, self.per_visitor = max(1, slots), max_waiting, per_visitor
        self._cond = threading.Condition()
        self._running = 0
        self._line: list[object] = []  # waiting tickets, oldest first
        self._by_visitor: Counter[str] = Counter()

    def snapshot(self) -> dict:
        with self._cond:
            return {"running": self._running, "waiting": len(self._line), "slots": self.slots}

    def _admit(self, visitor: str, what: str) -> object:
        if self.per_visitor and self._by_visitor[visitor] >= self.per_visitor:
            raise BusyError(f"{what}: you already have {self._by_visitor[visitor]} heavy request(s) running or "
                            f"waiting (at most {self.per_visitor} per visitor); wait for it to finish")
        if len(self._line) >= self.max_waiting and self._running >= self.slots:
            raise BusyError(f"{what}: the server is busy ({self._running} heavy jobs running, {len(self._line)} "
                            "waiting); try again in a minute")
        ticket = object()
        self._line.append(ticket)
        self._by_visitor[visitor] += 1
        return ticket

    def acquire(self, visitor: str, what: str, on_wait: Callable[[int], None] | None = None) -> Callable[[], None]:
        """Wait for a heavy slot; returns the function that gives it back. on_wait(n) is called with
        the number of heavy jobs ahead (running ones that must finish first included) whenever that
        number changes while waiting. Raises BusyError at once when the line is full or the visitor
        is over the limit."""
        with self._cond:
            ticket = self._admit(visitor, what)
            shown = None
            try:
                while not (self._line[0] is ticket and self._running < self.slots):
                    ahead = self._line.index(ticket) + max(0, self._running - self.slots + 1)
                    if on_wait and ahead != shown:
                        shown = ahead
                        self._cond.release()  # never call out while holding the lock
                        try:
                            on_wait(ahead)
                        finally:
                            self._cond.acquire()
                        continue
                    self._cond.wait(timeout=1.0)
            except BaseException:
                self._line.remove(ticket)
                self._release_visitor(visitor)
                raise
            self._line.pop(0)
            self._running += 1
            self._cond.notify_all()

        def release() -> None:
            with self._cond:
                self._running -= 1
                self._release_visitor(visitor)

        return release

    @contextmanager
    def slot(self, visitor: str, what: str, on_wait: Callable[[int], None] | None = None) -> Iterator[None]:
        """Hold one heavy slot for the block (see acquire)."""
        release = self.acquire(visitor, what, on_wait)
        try:
            yield
        finally:
            release()

    def _release_visitor(self, visitor: str) -> None:
        self._by_visitor[visitor] -= 1
        if self._by_visitor[visitor] <= 0:
            del self._by_visitor[visitor]
        self._cond.notify_all()


_GATE: HeavyGate | None = None
_GATE_LOCK = threading.Lock()


def heavy_gate() -> HeavyGate:
    """The process-wide gate, sized from the environment on first use."""
    global _GATE
    with _GATE_LOCK:
        if _GATE is None:
            _GATE = HeavyGate(_env_int("FINETUNE_HEAVY_SLOTS", 2), _env_int("FINETUNE_HEAVY_QUEUE", 8),
                              _env_int("FINETUNE_HEAVY_PER_VISITOR", 1))
        return _GATE


def small_source_bytes() -> int:
    return int(float(os.environ.get("FINETUNE_SMALL_SOURCE_MB", "8")) * 1024 * 1024)


def source_bytes(source: str) -> int | None:
    """The size on disk of a dataset source, without reading it: builtin sources count 0; Hub
    sources (a download of unknown size) and unknown paths give None."""
    src = (source or "").strip()
    if not src or src.startswith("builtin:"):
        return 0
    if src.startswith("hub:"):
        return None
    from .sources import resolve_local

    try:
        p = resolve_local(src)
    except ValueError:
        return 0  # refused sources fail fast in the caller: nothing heavy to wait for
    if p is None or not p.exists():
        return 0  # a missing source fails fast in the caller
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def is_small_source(source: str) -> bool:
    """Light work: a source known to be at most FINETUNE_SMALL_SOURCE_MB on disk."""
    n = source_bytes(source)
    return n is not None and n <= small_source_bytes()


def run_child(module: str, payload: dict, *, env: dict | None = None, timeout_s: float | None = None) -> dict:
    """`python -m module` as a child process at a lower CPU priority (FINETUNE_HEAVY_NICE, default 10):
    the payload goes as JSON on stdin, one JSON object comes back on stdout (the module calls
    child_main). CPU-bound heavy work then holds neither the app's GIL nor the core light calls need.
    `env`: overrides such as access.child_env (the caller's token only). A failure raises ValueError
    with the child's last line on stderr."""
    import subprocess

    from .runs import child_process_env

    limit = timeout_s or float(os.environ.get("FINETUNE_HEAVY_TIMEOUT_S", "1800"))
    try:
        p = subprocess.run([sys.executable, "-m", module], input=json.dumps(payload), capture_output=True, text=True,
                           env=child_process_env(env), timeout=limit)
    except subprocess.TimeoutExpired:
        raise ValueError(f"{module}: gave up after {limit:.0f} s (FINETUNE_HEAVY_TIMEOUT_S)") from None
    if p.returncode != 0:
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        raise ValueError(lines[-1] if lines else f"{module} failed (exit code {p.returncode})")
    return json.loads(p.stdout)


def child_main(fn: Callable[..., dict]) -> None:
    """The child's side of run_child: fn(**payload) printed as one JSON object on stdout; anything
    else the work prints goes to stderr; an error is one line on stderr and exit code 2."""
    try:
        os.nice(_env_int("FINETUNE_HEAVY_NICE", 10))
    except OSError:
        pass
    out, sys.stdout = sys.stdout, sys.stderr
    try:
        result = fn(**json.load(sys.stdin))
    except Exception as exc:  # noqa: BLE001 -- reported to the parent as one line
        print(" ".join(str(exc).split()) or type(exc).__name__, file=sys.stderr)
        sys.exit(2)
    finally:
        sys.stdout = out
    json.dump(result, sys.stdout, default=str)
