"""Light and heavy work, kept apart (applied once to the built Blocks by `route`).

Light endpoints (plan, status, runs, inspecting a small source, the page's own UI events) run in
their own Gradio concurrency group with many workers, so they answer at once. Heavy work (a big
inspection, prepare, augment, train and train_jobs starts, evaluate, compare, ab_pair, push) holds a
slot of the engine's heavy gate (finetune.workgate): a bounded waiting line, a few at a time, and a
limit per visitor. A request that waits says so in the page: "waiting for N heavy jobs ahead".
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os

import gradio as gr

HEAVY_APIS = {"prepare_dataset", "augment_dataset", "train", "train_jobs", "evaluate", "compare", "ab_pair", "push",
              "merge", "sweep", "chat", "export"}
HEAVY_UI_EVENTS = {"dry_run", "resume"}  # UI-only handlers that train or start a run
HEAVY_UI_EVENTS |= {"chat_send"}  # and the chat playground's streamed answers
LIGHT_GROUP, HEAVY_GROUP = "light", "heavy"
_log = logging.getLogger("fine_tune_studio")


def light_concurrency() -> int:
    return max(1, int(os.environ.get("FINETUNE_LIGHT_CONCURRENCY", "32")))


def _say_waiting(what: str, ahead: int) -> None:
    from finetune.workgate import heavy_gate

    msg = (f"{what}: waiting for {ahead} heavy job(s) ahead. Big inspections, data preparation, training "
           f"starts, evaluations and comparisons run {heavy_gate().slots} at a time so that light requests "
           "(plan, status, small inspections) stay fast.")
    _log.info(msg)
    with contextlib.suppress(Exception):  # outside a Gradio request (a direct call) there is no page to tell
        gr.Info(msg, duration=8)


@contextlib.contextmanager
def heavy_slot(what: str):
    """Hold a heavy slot for the caller (guard.current_visitor); a full line or a visitor over the
    limit is refused with a clear message."""
    from finetune.workgate import BusyError, heavy_gate

    from .guard import current_visitor

    try:
        release = heavy_gate().acquire(current_visitor(), what, on_wait=lambda n: _say_waiting(what, n))
    except BusyError as exc:
        raise gr.Error(str(exc), duration=None, print_exception=False) from None
    try:
        yield
    finally:
        release()


def in_heavy_child(what: str, module: str, payload: dict) -> dict:
    """Heavy work in a child process (finetune.workgate.run_child: its own GIL, a lower CPU priority),
    once a heavy slot is free; the child gets the caller's Hub token only."""
    from finetune import access
    from finetune.workgate import run_child

    from .guard import current

    with heavy_slot(what):
        return run_child(module, payload, env=access.child_env(current()))


def _heavy(fn, what: str):
    if inspect.isgeneratorfunction(fn):  # a streaming handler holds its slot until its last item
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            with heavy_slot(what):
                yield from fn(*args, **kwargs)

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with heavy_slot(what):
            return fn(*args, **kwargs)

    return wrapper


def _heavy_name(block_fn) -> str | None:
    """The name a heavy event is known by (its API name, or the UI-only handler's), else None."""
    if block_fn.fn is None:
        return None
    if block_fn.api_visibility != "private":
        return block_fn.api_name if block_fn.api_name in HEAVY_APIS else None
    name = getattr(block_fn.fn, "__name__", "")
    return name if name in HEAVY_UI_EVENTS else None


def route(demo: gr.Blocks) -> gr.Blocks:
    """Put every event in the light or the heavy lane (call before guard.guard_demo). Events with
    their own explicit limit (evaluate/compare's one model at a time, push) keep that limit."""
    from finetune.workgate import heavy_gate

    for block_fn in demo.fns.values():
        heavy = _heavy_name(block_fn)
        if heavy:
            block_fn.fn = _heavy(block_fn.fn, heavy)
        if block_fn.concurrency_limit != "default":
            continue
        if heavy:  # the gate bounds the work; this bounds the threads waiting for it
            block_fn.concurrency_id = HEAVY_GROUP
            block_fn.concurrency_limit = heavy_gate().slots + heavy_gate().max_waiting
        else:
            block_fn.concurrency_id, block_fn.concurrency_limit = LIGHT_GROUP, light_concurrency()
    return demo
