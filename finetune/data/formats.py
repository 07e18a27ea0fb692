"""Detect a dataset's format and convert its records to TRL's canonical forms.

detect_format(records) -> Detection: alpaca, messages, sharegpt, text, prompt_completion, preference,
kto, classification (or "unknown"), with the columns it used and a confidence.
to_canonical(records) -> (rows, kind): kind is one of messages, prompt_completion, text, preference,
kto. Every problem is a DatasetError naming the row and the field.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

from .common import (
    _ALIASES,
    _KIND_OF,
    _ROLE_MAP,
    FORMAT_FIELDS,
    FORMATS,
    GENERATED_KEY,
    DatasetError,
    _as_list,
    _gc_paused,
    _RowError,
    _type_name,
)

# =============================================================================================
# Detection


@dataclass
class Detection:
    format: str  # one of FORMATS, or "unknown"
    confidence: float  # share of rows matching the winning schema, 0..1
    evidence: list[str]  # human-readable reasons
    columns: list[str]
    # Canonical field -> source column actually used (e.g. {"output": "response"}); empty for unknown.
    mapping: dict[str, str] = field(default_factory=dict)


def _present(row: dict, key: str) -> bool:
    return row.get(key) is not None


def _first_present(row: dict, names: Iterable[str]) -> str | None:
    for n in names:
        if row.get(n) is not None:
            return n
    return None


def _conversation_style(v: Any) -> str | None:
    v = _as_list(v)
    if not isinstance(v, list) or not v or not isinstance(v[0], dict):
        return None
    if "from" in v[0] and "value" in v[0]:
        return "sharegpt"
    if "role" in v[0]:
        return "messages"
    return None


def _is_bool_label(v: Any) -> bool:
    return isinstance(v, bool) or (isinstance(v, str) and v.strip().lower() in ("true", "false"))


# Text-only training: rows that carry images, audio or video are refused, never trained as text.
MEDIA_COLUMNS = ("images", "image", "audio", "audios", "video", "videos", "image_url", "image_path")
MEDIA_PART_TYPES = ("image", "image_url", "input_image", "audio", "input_audio", "audio_url", "video",
                    "video_url", "file")
MEDIA_TOKEN_RE = re.compile(r"<(image|video|audio)>")
REASONING_PART_TYPES = ("reasoning", "thinking")
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _media_in(rec: dict) -> str | None:
    """Why a record is multimodal (a media column, a media content part or an <image> token), or None."""
    for c in MEDIA_COLUMNS:
        v = rec.get(c)
        if v not in (None, "", [], {}):
            return f"column '{c}'"

    def scan(v: Any, depth: int) -> str | None:
        if isinstance(v, str):
            m = MEDIA_TOKEN_RE.search(v)
            return f"a {m.group(0)} token" if m else None
        if depth > 4:
            return None
        if isinstance(v, dict):
            if v.get("type") in MEDIA_PART_TYPES:
                return f"a content part of type '{v['type']}'"
            vals = v.values()
        elif isinstance(v, list):
            vals = v
        else:
            return None
        for x in vals:
            found = scan(x, depth + 1)
            if found:
                return found
        return None
    return scan(rec, 0)


def _dialect(records: list[dict], fmt: str, cols: dict[str, str]) -> list[str]:
    """Evidence lines that name the dialect within a format (ShareGPT roles, tools, parts, reasoning)."""
    sample = records[:2000]
    notes: list[str] = []

    def turns(r: dict) -> list:
        out = []
        for c in ("messages", "conversations", "conversation", "chat", "prompt", "completion", "chosen",
                  "rejected", "chosen_messages", "rejected_messages"):
            v = _as_list(r.get(c))
            out += v if isinstance(v, list) else ([v] if isinstance(v, dict) else [])
        return [m for m in out if isinstance(m, dict)]
    roles = sorted({str(m.get("from") or m.get("role")) for r in sample for m in turns(r)} - {"None"})
    tools_col = sum(1 for r in sample if r.get("tools"))
    tool_calls = sum(1 for r in sample if any(m.get("tool_calls") or m.get("from") == "function_call"
                                              for m in turns(r)))
    if fmt == "sharegpt":
        notes.append("dialect: ShareGPT (from/value turns; roles " + ", ".join(roles) + ")"
                     + (f" with a tools column in {tools_col} rows" if tools_col else ""))
    elif fmt == "messages":
        notes.append("dialect: OpenAI chat (role/content)" + (f" with tool calls in {tool_calls} rows" if tool_calls else "")
                     + (f" and a tools column in {tools_col} rows" if tools_col else ""))
    elif fmt == "preference":
        pc, ch = cols.get("prompt"), cols.get("chosen", "chosen")
        if pc in ("conversations", "conversation"):
            notes.append(f"dialect: ShareGPT-style preference ('{pc}' plus chosen/rejected turns)")
        elif ch == "chosen_messages":
            notes.append("dialect: chosen_messages/rejected_messages (full conversations; the shared start is the prompt)")
        elif any(isinstance(_as_list(r.get(ch)), list) for r in sample[:50]):
            notes.append("dialect: TRL conversational preference (message lists)")
    elif fmt == "kto":
        lab = cols.get("label", "label")
        notes.append(f"dialect: KTO as a conversation plus a boolean '{lab}' (the last assistant turn is the completion)"
                     if cols.get("completion") == "" else f"dialect: TRL KTO (prompt, completion, boolean '{lab}')")
    elif fmt == "prompt_completion" and any(isinstance(_as_list(r.get(cols.get("prompt", "prompt"))), list)
                                            for r in sample[:50]):
        notes.append("dialect: TRL conversational prompt/completion (message lists)")
    elif fmt == "alpaca" and any(r.get("history") for r in sample):
        notes.append("dialect: Alpaca with history (earlier [instruction, output] turns)")
    parts = sum(1 for r in sample if any(isinstance(m.get("content") or m.get("value"), list) for m in turns(r)))
    if parts:
        notes.append(f"content given as a list of parts in {parts} rows (text parts joined)")
    reasoning = sum(1 for r in sample if any(
        any(m.get(k) for k in REASONING_FIELDS) or any(isinstance(p, dict) and p.get("type") in REASONING_PART_TYPES
                                                      for p in (m.get("content") or m.get("value") or [])
                                                      if isinstance(m.get("content") or m.get("value"), list))
        for m in turns(r)))
    if reasoning:
        notes.append(f"reasoning in {reasoning} rows: kept as 'reasoning_content' on the assistant turn, which chat "
                     "templates that render reasoning (e.g. Qwen3) train on; other templates drop it")
    media = [(i, why) for i, r in enumerate(sample, 1) if (why := _media_in(r))]
    if media:
        notes.append(f"WARNING: {len(media)} rows hold images, audio or video (row {media[0][0]}: {media[0][1]}): "
                     "Fine-Tune Studio trains text-only models, so these rows are refused, not trained as text")
    return notes


def row_format(row: dict) -> tuple[str | None, dict[str, str]]:
    """The most specific format one row fits, and the columns that make it fit."""
    chosen = _first_present(row, _ALIASES["preference"]["chosen"])
    rejected = _first_present(row, _ALIASES["preference"]["rejected"])
    if chosen and rejected:
        p = _first_present(row, _ALIASES["preference"]["prompt"])
        return "preference", {"chosen": chosen, "rejected": rejected, **({"prompt": p} if p else {})}
    label = _first_present(row, _ALIASES["kto"]["label"])
    if label and _is_bool_label(row[label]):
        if _present(row, "prompt") and _present(row, "completion"):
            return "kto", {"label": label}
        for key in ("messages", "conversations", "conversation"):
            if _present(row, key) and _conversation_style(row[key]):  # KTO as a conversation + a label
                return "kto", {"prompt": key, "completion": "", "label": label}
    for key in ("messages", "conversations", "conversation", "chat"):
        if _present(row, key):
            style = _conversation_style(row[key])
            if style == "messages":
                return "messages", {"messages": key}
            if style == "sharegpt":
                return "sharegpt", {"conversations": key}
    if _present(row, "instruction"):
        out = _first_present(row, _ALIASES["alpaca"]["output"])
        if out:
            inp = _first_present(row, _ALIASES["alpaca"]["input"])
            return "alpaca", {"output": out, **({"input": inp} if inp else {})}
    p = _first_present(row, _ALIASES["prompt_completion"]["prompt"])
    c = _first_present(row, _ALIASES["prompt_completion"]["completion"])
    if p and c:
        return "prompt_completion", {"prompt": p, "completion": c}
    t = _first_present(row, _ALIASES["classification"]["text"])
    if t and _present(row, "label") and not isinstance(row["label"], (list, dict)):
        return "classification", {"text": t}
    if _present(row, "role") and _present(row, "content"):
        return None, {}
    t = _first_present(row, _ALIASES["text"]["text"])
    if t and isinstance(row[t], str):
        return "text", {"text": t}
    return None, {}


def _describe(fmt: str, cols: dict[str, str]) -> str:
    def q(*names: str) -> str:
        return " and ".join(f"'{n}'" for n in names)
    if fmt == "alpaca":
        return f"have {q('instruction', cols.get('output', 'output'))}"
    if fmt == "messages":
        return f"have {q(cols.get('messages', 'messages'))} as a list of role/content messages"
    if fmt == "sharegpt":
        return f"have {q(cols.get('conversations', 'conversations'))} as a list of from/value turns"
    if fmt == "text":
        return f"have a {q(cols.get('text', 'text'))} string"
    if fmt == "prompt_completion":
        return f"have {q(cols.get('prompt', 'prompt'), cols.get('completion', 'completion'))}"
    if fmt == "preference":
        return "have " + q(*([cols["prompt"]] if cols.get("prompt") else []), cols.get("chosen", "chosen"),
                           cols.get("rejected", "rejected"))
    if fmt == "kto":
        if cols.get("completion") == "":
            return f"have a conversation {q(cols['prompt'])} and a true/false {q(cols.get('label', 'label'))}"
        return f"have 'prompt', 'completion' and a true/false {q(cols.get('label', 'label'))}"
    if fmt == "classification":
        return f"have {q(cols.get('text', 'text'), 'label')} (a non-boolean label)"
    return "match"


def record_columns(records: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    last = None
    for r in records:
        keys = r.keys()
        if keys == last:  # most files have the same keys on every row: skip the merge
            continue
        for k in keys:
            seen.setdefault(k, None)
        last = keys
    return list(seen)


def detect_format(records: list[dict]) -> Detection:
    """Tell which of FORMATS the records are in, how sure we are, and why."""
    columns = record_columns(records)
    n = len(records)
    if n == 0:
        return Detection("unknown", 0.0, ["no rows"], columns)
    counts: dict[str, int] = {}
    maps: dict[str, dict[str, str]] = {}
    odd: dict[str | None, list[int]] = {}
    fmts: list[str | None] = []
    for r in records:
        fmt, cols = row_format(r)
        fmts.append(fmt)
        if fmt is not None:
            counts[fmt] = counts.get(fmt, 0) + 1
            maps.setdefault(fmt, cols)
    if not counts:
        if "role" in columns and "content" in columns:
            ev = ["rows look like single chat messages (role, content); put each conversation's "
                  "messages in a list under a 'messages' key, one conversation per row"]
        else:
            ev = [f"no known schema; columns found: {', '.join(columns) or '(none)'}",
                  "supported formats: " + ", ".join(FORMATS)]
        return Detection("unknown", 0.0, ev, columns)
    # Ties go to the more specific format, in row_format's order of preference.
    order = ["preference", "kto", "messages", "sharegpt", "alpaca", "prompt_completion",
             "classification", "text"]
    best = max(counts, key=lambda f: (counts[f], -order.index(f)))
    for i, f in enumerate(fmts, 1):
        if f != best:
            odd.setdefault(f, []).append(i)
    conf = counts[best] / n
    evidence = [f"{counts[best]}/{n} rows {_describe(best, maps[best])}"]
    for f, rows in odd.items():
        label = f"match {f}" if f else "match no known format"
        evidence.append(f"{len(rows)} row{'s' if len(rows) != 1 else ''} {label}: "
                        f"{_row_list(rows)} (keys: {', '.join(list(records[rows[0] - 1])[:8])})")
    mapping = {k: v for k, v in maps[best].items() if k != v and v}
    for k, v in mapping.items():
        evidence.append(f"using column '{v}' as '{k}'")
    evidence += _dialect(records, best, maps[best])
    return Detection(best, round(conf, 4), evidence, columns, dict(maps[best]))


def _row_list(rows: list[int], k: int = 5) -> str:
    head = ", ".join(str(r) for r in rows[:k])
    return f"rows {head}" + (f" and {len(rows) - k} more" if len(rows) > k else "")


# =============================================================================================
# Conversion to TRL's forms


def to_canonical(records: list[dict], fmt: str | None = None, mapping: dict[str, str] | None = None,
                 *, source: str = "", on_error: Literal["raise", "skip"] = "raise",
                 return_skipped: bool = False):
    """Convert records to TRL's canonical forms. Returns (rows, kind).

    kind is one of KINDS. With on_error="skip" bad rows are dropped instead of raising; pass
    return_skipped=True to get (rows, kind, skipped) where skipped is a list of DatasetError (one
    per dropped row, with .row and .field). mapping: {canonical field of fmt: source column}.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    name = os.path.basename(source) if source and not source.startswith(("builtin:", "hub:")) \
        else (source or None)
    if fmt is not None and fmt not in FORMATS:
        raise DatasetError(f"unknown format {fmt!r}; supported formats: {', '.join(FORMATS)}",
                           file=name, field="format")
    columns = record_columns(records)
    if mapping:
        mapping = {k: v for k, v in mapping.items() if v}
        records = apply_mapping(records, mapping, fmt, columns, name)
    det = None
    if fmt is None:
        det = detect_format(records)
        if det.format == "unknown":
            raise DatasetError(f"could not tell the dataset format; columns found: "
                               f"{', '.join(columns) or '(none)'}. Supported formats: "
                               f"{', '.join(FORMATS)}. Pick a format and map the columns.",
                               file=name)
        fmt = det.format
    cols = resolve_columns(records, fmt, det)
    convert = _CONVERTERS[fmt]
    rows: list[dict] = []
    origin: list[int] = []  # 1-based record number of each converted row, for later messages
    skipped: list[DatasetError] = []
    with _gc_paused():
        for i, rec in enumerate(records, 1):
            try:
                media = _media_in(rec)
                if media:
                    raise _RowError(media.split("'")[1] if media.startswith("column") else "content",
                                    f"holds media ({media}): Fine-Tune Studio trains text-only models; "
                                    "remove it or drop the row", "multimodal")
                row = convert(rec, cols)
                if GENERATED_KEY in rec:  # rows made by finetune.data.augment keep their marker
                    row[GENERATED_KEY] = rec[GENERATED_KEY]
                rows.append(row)
                origin.append(i)
            except _RowError as e:
                err = DatasetError(e.message, file=name, row=i, field=e.field, rule=e.rule)
                if on_error == "raise":
                    raise err from None
                skipped.append(err)
    kind = _KIND_OF[fmt]
    if kind in ("preference", "prompt_completion", "kto") and rows:
        bad = _mixed_form_rows(rows, cols.get("prompt", "prompt"))
        if bad:
            msg, idx = bad
            if on_error == "raise":
                raise DatasetError(msg, file=name, row=origin[idx[0]],
                                   field=cols.get("prompt", "prompt"), rule="invalid_row")
            drop = set(idx)
            for j in idx:
                skipped.append(DatasetError(msg, file=name, row=origin[j],
                                            field=cols.get("prompt", "prompt"), rule="invalid_row"))
            rows = [r for j, r in enumerate(rows) if j not in drop]
            skipped.sort(key=lambda e: e.row or 0)
    if return_skipped:
        return rows, kind, skipped
    return rows, kind


def apply_mapping(records: list[dict], mapping: dict[str, str], fmt: str | None,
                   columns: list[str], name: str | None) -> list[dict]:
    allowed = set(FORMAT_FIELDS[fmt]) if fmt else {f for fs in FORMAT_FIELDS.values() for f in fs}
    for canon, src in mapping.items():
        if canon not in allowed:
            fields = ", ".join(FORMAT_FIELDS[fmt]) if fmt else ", ".join(sorted(allowed))
            raise DatasetError(f"mapping names '{canon}', which is not a field of "
                               f"{fmt or 'any format'} (fields: {fields})", file=name, field=canon)
        if src not in columns:
            raise DatasetError(f"mapping: column '{src}' not found; columns: {', '.join(columns)}",
                               file=name, field=canon)
    out = []
    for r in records:
        new = {k: v for k, v in r.items() if k not in mapping}
        for canon, src in mapping.items():
            if src in r:
                new[canon] = r[src]
        out.append(new)
    return out


def resolve_columns(records: list[dict], fmt: str, det: Detection | None) -> dict[str, str]:
    if det is not None and det.format == fmt:
        cols = dict(det.mapping)
    else:
        cols = {}
    # Fill the rest from aliases, preferring the canonical name itself.
    sample = records[:1000]
    for canon, names in _ALIASES[fmt].items():
        if canon in cols and cols[canon]:
            continue
        for n in names:
            if any(n in r for r in sample):
                cols[canon] = n
                break
        else:
            cols[canon] = canon
    return cols


def _get_str(rec: dict, col: str, canon: str, *, required: bool, allow_empty: bool = False) -> str:
    v = rec.get(col)
    if v is None:
        if required:
            raise _RowError(col, "missing" if col not in rec else "is null", "invalid_row")
        return ""
    if isinstance(v, bool) or isinstance(v, (dict, list)):
        raise _RowError(col, f"expected a string, got {_type_name(v)}", "invalid_row")
    if isinstance(v, (int, float)):
        if isinstance(v, float) and math.isnan(v):
            if required:
                raise _RowError(col, "is empty (NaN)", "empty_field")
            return ""
        v = str(v)  # numeric answers ("42") are common in CSV/Parquet exports
    if not isinstance(v, str):
        raise _RowError(col, f"expected a string, got {type(v).__name__}", "invalid_row")
    if required and not allow_empty and not v.strip():
        raise _RowError(col, "is empty", "empty_field")
    return v


def _part_text(p: dict) -> Any:
    return next((p[k] for k in ("text", "value", "content", "reasoning", "thinking") if isinstance(p.get(k), str)), None)


def _content_text(v: Any, where: str, reasoning: list[str] | None = None) -> str:
    """A message's text; content parts ({"type": "text", "text"|"value": ...}) are joined, reasoning
    parts go to `reasoning` (when given), media parts are refused."""
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        parts = []
        for p in v:
            kind = p.get("type", "text") if isinstance(p, dict) else None
            if isinstance(p, str):
                parts.append(p)
            elif kind == "text" and isinstance(_part_text(p), str):
                parts.append(_part_text(p))
            elif kind in REASONING_PART_TYPES and isinstance(_part_text(p), str) and reasoning is not None:
                reasoning.append(_part_text(p))
            elif kind in MEDIA_PART_TYPES:
                raise _RowError(where, f"holds a content part of type {kind!r}: Fine-Tune Studio trains text-only "
                                "models; remove it or drop the row", "multimodal")
            else:
                raise _RowError(where, f"content part of type {kind or _type_name(p)!r} is not supported "
                                "(text, value and reasoning parts are)", "invalid_row")
        return "".join(parts)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    raise _RowError(where, f"content must be a string, got {_type_name(v)}", "invalid_row")


def _clean_message(m: Any, where: str, role_key: str = "role", content_key: str = "content") -> dict:
    if not isinstance(m, dict):
        raise _RowError(where, f"expected a message object, got {_type_name(m)}", "invalid_row")
    if role_key not in m and "from" in m:  # a ShareGPT turn where role/content was expected
        role_key, content_key = "from", "value"
    raw_role = m.get(role_key)
    if not isinstance(raw_role, str) or raw_role.strip().lower() not in _ROLE_MAP:
        raise _RowError(f"{where}.{role_key}", f"unknown role {raw_role!r}; expected one of "
                        "system, user, assistant, tool (or human, gpt, function_call, observation)",
                        "invalid_row")
    raw_role = raw_role.strip().lower()
    role = _ROLE_MAP[raw_role]
    reasoning: list[str] = []
    content = _content_text(m.get(content_key), f"{where}.{content_key}", reasoning)
    msg: dict[str, Any] = {"role": role, "content": content}
    for k, v in m.items():
        if k in (role_key, content_key, "role", "content") or v is None:
            continue
        if role_key == "from" and k in ("from", "value"):
            continue
        msg[k] = v
    for k in ("thinking", "reasoning"):  # one name for reasoning: the one chat templates read
        if isinstance(msg.get(k), str) and "reasoning_content" not in msg:
            reasoning.append(msg.pop(k))
    if reasoning:
        msg["reasoning_content"] = "\n".join(([msg["reasoning_content"]] if msg.get("reasoning_content") else [])
                                             + reasoning)
    if raw_role == "function_call" and "tool_calls" not in msg:
        # ShareGPT keeps a call as JSON text: turn it into an OpenAI-style tool call.
        try:
            call = json.loads(content)
        except ValueError:
            call = None
        if isinstance(call, dict) and "name" in call:
            args = call.get("arguments", {})
            msg = {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": call["name"], "arguments": args}}]}
    return msg


def check_conversation(msgs: list[dict], col: str, *, need_final_assistant: bool = True) -> None:
    """Role order: system first (optional), then user/assistant alternating, tool replies after a
    tool call, ending with the assistant. Raises _RowError(rule='role_order')."""
    if not msgs:
        raise _RowError(col, "empty conversation", "empty_field")
    prev = None
    started = False
    for i, m in enumerate(msgs):
        role = m["role"]
        where = f"{col}[{i}]"
        if role == "system":
            if started:
                raise _RowError(where, "system message after the conversation started", "role_order")
        elif role == "user":
            if prev == "user":
                raise _RowError(where, "two user messages in a row", "role_order")
            started = True
        elif role == "assistant":
            if not started:
                raise _RowError(where, "conversation starts with the assistant, not the user",
                                "role_order")
            if prev == "assistant" and not msgs[i - 1].get("tool_calls"):
                raise _RowError(where, "two assistant messages in a row", "role_order")
            started = True
        elif role == "tool":
            if prev not in ("assistant", "tool") or (prev == "assistant"
                                                     and not msgs[i - 1].get("tool_calls")):
                raise _RowError(where, "tool message without a preceding assistant tool call",
                                "role_order")
        if role != "system" and not m["content"].strip() and not m.get("tool_calls"):
            raise _RowError(f"{where}.content", f"empty {role} message", "empty_field")
        prev = role
    if not started:
        raise _RowError(col, "no user or assistant messages", "role_order")
    if need_final_assistant and msgs[-1]["role"] != "assistant":
        raise _RowError(f"{col}[{len(msgs) - 1}]", f"conversation ends with a {msgs[-1]['role']} "
                        "message; it must end with the assistant's reply", "role_order")


def _message_list(v: Any, col: str, role_key: str = "role", content_key: str = "content") -> list:
    v = _as_list(v)
    if v is None:
        raise _RowError(col, "missing", "invalid_row")
    if not isinstance(v, list):
        raise _RowError(col, f"expected a list of messages, got {_type_name(v)}", "invalid_row")
    return [_clean_message(m, f"{col}[{i}]", role_key, content_key) for i, m in enumerate(v)]


def _conv_alpaca(rec: dict, cols: dict) -> dict:
    instruction = _get_str(rec, cols["instruction"], "instruction", required=False)
    inp = _get_str(rec, cols["input"], "input", required=False)
    output = _get_str(rec, cols["output"], "output", required=True)
    if not instruction.strip() and not inp.strip():
        field_ = cols["instruction"]
        raise _RowError(field_, "is empty (and there is no input)" if field_ in rec else "missing",
                        "empty_field" if field_ in rec else "invalid_row")
    system = _get_str(rec, cols["system"], "system", required=False)
    msgs: list[dict] = []
    if system.strip():
        msgs.append({"role": "system", "content": system})
    history = rec.get(cols["history"])
    if history:
        if not isinstance(history, list):
            raise _RowError(cols["history"], f"expected a list of [instruction, output] pairs, got "
                            f"{_type_name(history)}", "invalid_row")
        for j, pair in enumerate(history):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2
                    and all(isinstance(x, str) for x in pair)):
                raise _RowError(f"{cols['history']}[{j}]", "expected a pair of strings "
                                "[instruction, output]", "invalid_row")
            msgs.append({"role": "user", "content": pair[0]})
            msgs.append({"role": "assistant", "content": pair[1]})
    user = instruction + ("\n\n" + inp if inp.strip() and instruction.strip() else inp)
    msgs.append({"role": "user", "content": user})
    msgs.append({"role": "assistant", "content": output})
    return {"messages": msgs}


def _conv_messages(rec: dict, cols: dict) -> dict:
    col = cols["messages"]
    msgs = _message_list(rec.get(col), col)
    check_conversation(msgs, col)
    out: dict[str, Any] = {"messages": msgs}
    tools = rec.get(cols.get("tools", "tools"))
    if tools:
        out["tools"] = _as_list(tools)
    return out


def _conv_sharegpt(rec: dict, cols: dict) -> dict:
    col = cols["conversations"]
    msgs = _message_list(rec.get(col), col, "from", "value")
    system = rec.get(cols.get("system", "system"))
    if isinstance(system, str) and system.strip() and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": system})
    check_conversation(msgs, col)
    out: dict[str, Any] = {"messages": msgs}
    tools = rec.get(cols.get("tools", "tools"))
    if tools:
        out["tools"] = _as_list(tools)
    return out


def _conv_text(rec: dict, cols: dict) -> dict:
    return {"text": _get_str(rec, cols["text"], "text", required=True)}


def _str_or_msgs(rec: dict, col: str, *, default_role: str, required: bool = True) -> Any:
    v = _as_list(rec.get(col))
    if isinstance(v, list):
        msgs = [_clean_message(m, f"{col}[{i}]") for i, m in enumerate(v)]
        if required and not msgs:
            raise _RowError(col, "empty message list", "empty_field")
        for i, m in enumerate(msgs):
            if m["role"] != "system" and not m["content"].strip() and not m.get("tool_calls"):
                raise _RowError(f"{col}[{i}].content", f"empty {m['role']} message", "empty_field")
        return msgs
    if isinstance(v, dict):
        return [_clean_message(v, col)]
    return _get_str(rec, col, col, required=required)


def _conv_prompt_completion(rec: dict, cols: dict) -> dict:
    prompt = _str_or_msgs(rec, cols["prompt"], default_role="user")
    completion = _str_or_msgs(rec, cols["completion"], default_role="assistant")
    prompt, completion = _unify(prompt, completion, cols)
    if isinstance(prompt, list):
        check_conversation(prompt + completion, f"{cols['prompt']}+{cols['completion']}")
    return {"prompt": prompt, "completion": completion}


def _unify(prompt: Any, completion: Any, cols: dict, key: str = "completion") -> tuple[Any, Any]:
    # TRL wants both sides in the same form: promote a string side to a one-message list.
    if isinstance(prompt, list) and isinstance(completion, str):
        completion = [{"role": "assistant", "content": completion}]
    elif isinstance(prompt, str) and isinstance(completion, list):
        prompt = [{"role": "user", "content": prompt}]
    return prompt, completion


def _conv_kto(rec: dict, cols: dict) -> dict:
    if not cols.get("completion") or cols["completion"] not in rec:  # a conversation + label: split the last turn
        col = cols["prompt"]
        msgs = _message_list(rec.get(col), col)
        check_conversation(msgs, col)
        out = {"prompt": msgs[:-1], "completion": msgs[-1:]}
    else:
        out = _conv_prompt_completion(rec, {"prompt": cols["prompt"], "completion": cols["completion"]})
    label = rec.get(cols["label"])
    if isinstance(label, str) and label.strip().lower() in ("true", "false", "1", "0"):
        label = label.strip().lower() in ("true", "1")
    elif isinstance(label, int) and not isinstance(label, bool) and label in (0, 1):
        label = bool(label)
    if not isinstance(label, bool):
        raise _RowError(cols["label"], f"expected true or false, got {label!r}", "invalid_row")
    out["label"] = label
    return out


def _conv_classification(rec: dict, cols: dict) -> dict:
    text = _get_str(rec, cols["text"], "text", required=True)
    label = rec.get(cols["label"])
    if label is None:
        raise _RowError(cols["label"], "missing", "invalid_row")
    if isinstance(label, (list, dict)):
        raise _RowError(cols["label"], f"expected a single label, got {_type_name(label)}",
                        "invalid_row")
    label_s = str(label).strip() if not isinstance(label, bool) else str(label).lower()
    if not label_s:
        raise _RowError(cols["label"], "is empty", "empty_field")
    return {"prompt": text, "completion": label_s}


def _conv_preference(rec: dict, cols: dict) -> dict:
    chosen = _str_or_msgs(rec, cols["chosen"], default_role="assistant")
    rejected = _str_or_msgs(rec, cols["rejected"], default_role="assistant")
    pcol = cols.get("prompt", "prompt")
    if rec.get(pcol) is not None:
        prompt = _str_or_msgs(rec, pcol, default_role="user")
    else:
        prompt, chosen, rejected = _extract_prompt(chosen, rejected, cols)
    if isinstance(prompt, list) or isinstance(chosen, list) or isinstance(rejected, list):
        prompt = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        chosen = chosen if isinstance(chosen, list) else [{"role": "assistant", "content": chosen}]
        rejected = rejected if isinstance(rejected, list) else \
            [{"role": "assistant", "content": rejected}]
        check_conversation(prompt + chosen, f"{pcol}+{cols['chosen']}")
        check_conversation(prompt + rejected, f"{pcol}+{cols['rejected']}")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _extract_prompt(chosen: Any, rejected: Any, cols: dict) -> tuple[Any, Any, Any]:
    """Implicit-prompt preference rows: the shared beginning of chosen and rejected is the prompt."""
    if isinstance(chosen, list) and isinstance(rejected, list):
        k = 0
        while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
            k += 1
        if k == 0:
            raise _RowError(cols["chosen"], "no 'prompt' field and 'chosen'/'rejected' share no "
                            "leading messages to use as the prompt", "invalid_row")
        return chosen[:k], chosen[k:], rejected[k:]
    if isinstance(chosen, str) and isinstance(rejected, str):
        k = 0
        n = min(len(chosen), len(rejected))
        while k < n and chosen[k] == rejected[k]:
            k += 1
        if k > 0 and chosen[k - 1] == " ":  # same rule as TRL's extract_prompt
            k -= 1
        if not chosen[:k].strip():
            raise _RowError(cols["chosen"], "no 'prompt' field and 'chosen'/'rejected' share no "
                            "common beginning to use as the prompt", "invalid_row")
        return chosen[:k], chosen[k:], rejected[k:]
    raise _RowError(cols["chosen"], "'chosen' and 'rejected' must both be strings or both be "
                    "message lists", "invalid_row")


def _mixed_form_rows(rows: list[dict], field_name: str) -> tuple[str, list[int]] | None:
    """Rows whose prompt is a string while most are message lists, or the reverse.

    TRL picks one code path per dataset, so one form must hold for every row."""
    is_list = [isinstance(r["prompt"], list) for r in rows]
    n_list = sum(is_list)
    if n_list in (0, len(rows)):
        return None
    majority = n_list >= len(rows) - n_list
    idx = [j for j, x in enumerate(is_list) if x != majority]
    form, other = ("a string", "message lists") if majority else ("a message list", "strings")
    return f"is {form} while most rows use {other}; use one form for the whole dataset", idx


_CONVERTERS = {
    "alpaca": _conv_alpaca, "messages": _conv_messages, "sharegpt": _conv_sharegpt,
    "text": _conv_text, "prompt_completion": _conv_prompt_completion,
    "preference": _conv_preference, "kto": _conv_kto, "classification": _conv_classification,
}
