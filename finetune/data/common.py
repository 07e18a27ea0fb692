"""The bottom of the dataset engine: what every other part of finetune.data uses.

Format and kind names, limits and defaults, the error types (DatasetError for the user, _RowError
inside converters), the text views of canonical rows (for duplicates, PII, whitespace and token
counts), and small helpers. It imports nothing from its siblings; each of them imports only from
modules below it: common -> load -> formats -> tokens -> quality -> prepare -> augment.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

FORMATS = ("alpaca", "messages", "sharegpt", "text", "prompt_completion", "preference", "kto",
           "classification")
KINDS = ("messages", "prompt_completion", "text", "preference", "kto")
MAX_FILE_BYTES = 200 * 1024 * 1024
SUPPORTED_EXTENSIONS = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".txt")
DEFAULT_VAL_RATIO = 0.1
DEFAULT_SEED = 42
NEAR_DUP_THRESHOLD = 0.9
GENERATED_KEY = "_generated"  # "paraphrase" or "self-instruct" on rows made by finetune.data.augment
SFT_MIN_EXAMPLES = 1000  # the planner's decision tree: SFT wants 1,000+ examples (finetune/plan/recommend.py)
LORA_MIN_EXAMPLES = 100  # below this even a LoRA adapter mostly memorises

# The canonical field names of each format; `mapping` keys must be among these.
FORMAT_FIELDS: dict[str, tuple[str, ...]] = {
    "alpaca": ("instruction", "input", "output", "system", "history"),
    "messages": ("messages", "tools"),
    "sharegpt": ("conversations", "system", "tools"),
    "text": ("text",),
    "prompt_completion": ("prompt", "completion"),
    "preference": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion", "label"),
    "classification": ("text", "label"),
}

# Column names seen in the wild for each canonical field, tried in order when no mapping is given.
_ALIASES: dict[str, dict[str, tuple[str, ...]]] = {
    "alpaca": {"instruction": ("instruction",), "input": ("input", "context"),
               "output": ("output", "response"), "system": ("system",), "history": ("history",)},
    "messages": {"messages": ("messages", "conversations", "conversation", "chat"),
                 "tools": ("tools",)},
    "sharegpt": {"conversations": ("conversations", "conversation", "messages"),
                 "system": ("system",), "tools": ("tools",)},
    "text": {"text": ("text", "content")},
    "prompt_completion": {"prompt": ("prompt", "question", "query", "input", "user"),
                          "completion": ("completion", "response", "answer", "output", "assistant")},
    "preference": {"prompt": ("prompt", "question", "conversations", "conversation", "messages"),
                   "chosen": ("chosen", "chosen_messages"), "rejected": ("rejected", "rejected_messages")},
    "kto": {"prompt": ("prompt", "messages", "conversations", "conversation"), "completion": ("completion",),
            "label": ("label", "kto_tag")},
    "classification": {"text": ("text", "sentence", "content"), "label": ("label",)},
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    "alpaca": ("instruction", "output"),
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "text": ("text",),
    "prompt_completion": ("prompt", "completion"),
    "preference": ("chosen", "rejected"),
    "kto": ("prompt", "completion", "label"),
    "classification": ("text", "label"),
}
_KIND_OF = {"alpaca": "messages", "messages": "messages", "sharegpt": "messages", "text": "text",
            "prompt_completion": "prompt_completion", "preference": "preference", "kto": "kto",
            "classification": "prompt_completion"}

_ROLE_MAP = {
    "system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
    "bot": "assistant", "model": "assistant", "tool": "tool", "function": "tool",
    "observation": "tool", "ipython": "tool", "function_call": "assistant",
}


class DatasetError(ValueError):
    """One clear message naming file, line/row and field. str(e) is the full human message.

    `DatasetError("invalid JSON (Expecting ',')", file="data.jsonl", line=7)` reads
    "data.jsonl line 7: invalid JSON (Expecting ',')". `.detail` keeps the message without location.
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 row: int | None = None, field: str | None = None, rule: str | None = None):
        self.detail = message
        self.file = file
        self.line = line
        self.row = row
        self.field = field
        # Which clean_report rule a skipped row counts under (inspect_dataset shows them as issues).
        self.rule = rule
        where = []
        if file:
            f = str(file)
            where.append(f if f.startswith(("hub:", "builtin:"))
                         else os.path.basename(f.rstrip("/")) or f)
        if line is not None:
            where.append(f"line {line}")
        elif row is not None:
            where.append(f"row {row}")
        prefix = " ".join(where)
        if field:
            prefix = f"{prefix}, field '{field}'" if prefix else f"field '{field}'"
        super().__init__(f"{prefix}: {message}" if prefix else message)


class _RowError(Exception):
    """A problem in one record, raised deep in a converter and given its row number by the caller."""

    def __init__(self, field: str | None, message: str, rule: str = "invalid_row"):
        super().__init__(message)
        self.field = field
        self.message = message
        self.rule = rule


def _type_name(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


def _as_list(v: Any) -> Any:
    # CSV and some Parquet exports store conversations as JSON text.
    if isinstance(v, str) and v.lstrip().startswith("["):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


# =============================================================================================
# Text views of canonical rows (for duplicates, PII, whitespace and token counts)


def _msgs_text(msgs: list[dict], skip_system: bool = False) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in msgs
                     if not (skip_system and m["role"] == "system"))


def _part_text(v: Any, skip_system: bool = False) -> str:
    return _msgs_text(v, skip_system) if isinstance(v, list) else str(v)


def _row_text(row: dict, kind: str, skip_system: bool = False) -> str:
    if kind == "messages":
        return _msgs_text(row["messages"], skip_system)
    if kind == "text":
        return row["text"]
    if kind == "prompt_completion":
        return _part_text(row["prompt"], skip_system) + "\n" + _part_text(row["completion"])
    if kind == "kto":
        return (_part_text(row["prompt"], skip_system) + "\n" + _part_text(row["completion"])
                + f"\nlabel: {row['label']}")
    if kind == "preference":
        return (_part_text(row["prompt"], skip_system) + "\nchosen: " + _part_text(row["chosen"])
                + "\nrejected: " + _part_text(row["rejected"]))
    raise DatasetError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}", field="kind")


_KIND_FIELDS = {"messages": ("messages",), "text": ("text",),
                "prompt_completion": ("prompt", "completion"), "kto": ("prompt", "completion"),
                "preference": ("prompt", "chosen", "rejected")}


def _fields(row: dict, kind: str) -> Iterable[tuple[str, str, str]]:
    """(field label, text, role) for every text field of a canonical row."""
    for key in _KIND_FIELDS[kind]:
        v = row.get(key)
        if isinstance(v, list):
            for i, m in enumerate(v):
                if isinstance(m, dict):
                    yield f"{key}[{i}].content", m.get("content") or "", \
                        ("tool_call" if m.get("tool_calls") else m.get("role", ""))
        elif v is not None:
            yield key, str(v), key


class _gc_paused:
    """Pause the cyclic garbage collector while building many small containers: its repeated full
    passes over a growing heap otherwise cost more than the work itself on 100k rows."""

    def __enter__(self):
        import gc
        self.was = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc):
        import gc
        if self.was:
            gc.enable()


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


def _display_name(source: str) -> str:
    source = str(source)
    if source.startswith(("builtin:", "hub:")):
        return source
    return os.path.basename(source.rstrip("/")) or source


def _slug(text: str) -> str:
    text = str(text)
    if not text.startswith(("builtin:", "hub:")):
        text = Path(text).stem or text
    from ..paths import slug

    return slug(text, 80, "dataset")
