"""Shared helpers for the tabs: error translation, choices, and small renderers (no engine logic)."""

from __future__ import annotations

import functools
import json
import math

import gradio as gr


def user_errors(fn):
    """Turn the engine's ValueErrors (config, dataset, run errors) into a clear gr.Error."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, KeyError, FileNotFoundError, OSError) as exc:
            raise gr.Error(str(exc).strip() or type(exc).__name__, duration=None) from None

    return wrapper


def run_choices() -> list[str]:
    from finetune.runs import list_runs

    return [r["run_id"] for r in list_runs()]


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
        cells = [str(r.get(c, "")).replace("|", "\\|").replace("\n", " ")[:120] for c in cols]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def pretty(obj) -> str:
    return json.dumps(obj, indent=2, default=str)
