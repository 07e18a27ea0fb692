"""Shared helpers for the tabs: error translation, choices, and small renderers (no engine logic)."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import subprocess

import gradio as gr

_log = logging.getLogger("fine_tune_studio")


def _user_error(msg: str, fn) -> gr.Error:
    """A gr.Error that Gradio shows but does not print as a traceback: the server log gets one line."""
    _log.warning("%s: %s", fn.__name__, " ".join(str(msg).split())[:500])
    return gr.Error(msg, duration=None, print_exception=False)


def user_errors(fn):
    """Turn engine errors into one clear gr.Error: never a bare "Error" or a traceback in the page,
    and one line (not a traceback) in the server log for a user's mistake."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error as exc:
            if exc.print_exception:  # raised by a handler itself: log it as one line too
                _log.warning("%s: %s", fn.__name__, " ".join(str(exc.message).split())[:500])
                exc.print_exception = False
            raise
        except KeyError as exc:
            raise _user_error(f"missing field {exc}", fn) from None
        except (ValueError, OSError, TypeError, subprocess.SubprocessError) as exc:
            raise _user_error(str(exc).strip() or type(exc).__name__, fn) from None
        except RuntimeError as exc:  # torch raises OutOfMemoryError (a RuntimeError) among others
            msg = str(exc).strip()
            if "out of memory" in msg.lower():
                msg = ("Out of memory: try fewer examples, a shorter max length, or a smaller model. "
                       f"({msg[:200]})")
            raise _user_error(msg or type(exc).__name__, fn) from None

    return wrapper


def on_space() -> bool:
    return bool(os.environ.get("SPACE_ID"))


def check_source(source: str, *, uploaded: bool = False) -> str:
    """The engine's source checks (finetune/sources.py) as a gr.Error: hub: ids, bare names under
    datasets/, and on a public Space no typed server paths (uploads are fine)."""
    from finetune.sources import SourceError
    from finetune.sources import check_source as engine_check

    try:
        return engine_check(source, public=False if uploaded else None)
    except SourceError as exc:
        raise gr.Error(str(exc), duration=None) from None


def tokenizer_or_none(model: str):
    """The model's tokenizer, or None (approximate counts, and a warning) when it cannot be loaded."""
    from finetune.inspect_cache import tokenizer_or_warning

    tok, warning = tokenizer_or_warning(model)
    if warning:
        gr.Warning(warning)
    return tok


def run_choices() -> list[str]:
    from finetune.runs import list_runs

    from .guard import visible_run_ids

    return visible_run_ids([r["run_id"] for r in list_runs()])


def fmt_duration(seconds) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "–"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h {m:02d}m" if h else (f"{m}m {sec:02d}s" if m else f"{sec}s")


def pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def num(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def md_table(rows: list[dict], cols: list[str], headers: list[str] | None = None) -> str:
    if not rows:
        return "_none_"
    headers = headers or cols
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = ["".join(ch if ch.isprintable() else " " for ch in str(r.get(c, ""))).replace("|", "\\|")[:120]
                 for c in cols]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def pretty(obj) -> str:
    return json.dumps(obj, indent=2, default=str)
