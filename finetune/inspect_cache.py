"""Inspection results kept for sources that have not changed, so that many visitors inspecting
builtin:demo (or the same saved dataset) cost one inspection, not one each.

    inspect_cached("builtin:demo", tokenizer=tok)  # same arguments as data.inspect_dataset

A source is the same when its fingerprint is: a builtin id as it is; a local file or saved dataset
by path, size and modification time of each file. Hub sources are never kept (they may change
without a local trace). At most MAX_ENTRIES results are kept, least recently used first out.
"""

from __future__ import annotations

import copy
import json
import threading
from collections import OrderedDict

MAX_ENTRIES = 32
_CACHE: OrderedDict[tuple, dict] = OrderedDict()
_LOCK = threading.Lock()


def fingerprint(source: str) -> str | None:
    """What identifies the source's content without reading it; None when it cannot be known."""
    from .sources import resolve_local

    src = (source or "").strip()
    if src.startswith("builtin:"):
        return src
    if not src or src.startswith("hub:"):
        return None
    p = resolve_local(src)
    if p is None or not p.exists():
        return None
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    return json.dumps([[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files])


def inspect_cached(source: str, **kwargs) -> dict:
    """data.inspect_dataset(source, **kwargs), answered from the cache when nothing changed."""
    from .data import inspect_dataset

    fp = fingerprint(source)
    tok = kwargs.get("tokenizer")
    tok_name = None if tok is None else getattr(tok, "name_or_path", None) or None
    key = None
    if fp is not None and (tok is None or tok_name):  # a tokenizer without a name cannot be told apart
        key = (fp, tok_name, json.dumps({k: v for k, v in kwargs.items() if k != "tokenizer"}, sort_keys=True,
                                        default=str))
    if key is not None:
        with _LOCK:
            if key in _CACHE:
                _CACHE.move_to_end(key)
                return copy.deepcopy(_CACHE[key])
    res = inspect_dataset(source, **kwargs)
    if key is not None:
        with _LOCK:
            _CACHE[key] = copy.deepcopy(res)
            while len(_CACHE) > MAX_ENTRIES:
                _CACHE.popitem(last=False)
    return res


def tokenizer_or_warning(model: str):
    """(the model's tokenizer, None), or (None, why) when it cannot be loaded, e.g. offline: token
    counts are then estimated."""
    from .modeling import load_tokenizer

    try:
        return load_tokenizer(model), None
    except Exception as exc:  # noqa: BLE001 -- inspection still works with estimated token counts
        return None, f"Token counts are approximate: could not load the tokenizer of {model} ({str(exc)[:160]})"


def inspect_with_model(source: str, model: str, **kwargs) -> dict:
    """inspect_cached with the model's tokenizer loaded here (also in a child process, run_child);
    `tokenizer_warning` says why counts are approximate when it cannot be loaded."""
    tok, warning = tokenizer_or_warning(model)
    res = inspect_cached(source, tokenizer=tok, **kwargs)
    return {**res, "tokenizer_warning": warning} if warning else res


if __name__ == "__main__":  # the heavy-work child: python -m finetune.inspect_cache < {"source": ..., "model": ...}
    from .workgate import child_main

    child_main(inspect_with_model)
