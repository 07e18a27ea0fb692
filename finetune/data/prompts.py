"""Prompt rows for reinforcement learning (GRPO): a prompt, and a reference answer when the data has one.

Accepted, detected from the columns like the other formats (finetune/data/formats.py):
- prompt only: `prompt` / `question` / `query` / `problem` / `instruction` (+ `input`), a string or a
  list of chat messages;
- prompt + reference: any of those with `answer`, `solution`, `completion`, `reference`,
  `ground_truth`, `target`, `output` or `response` (a string, a number, or assistant messages);
- conversations (`messages`, `conversations`; role/content or ShareGPT from/value): the turns before
  the last assistant answer are the prompt, that answer is the reference;
- prepared datasets (prompt-completion or messages rows) the same way.
`prompt_rows(records)` -> rows {"prompt": [messages], "answer": str} ("answer" only when every row
has one), which TRL's GRPOTrainer takes as they are: the extra column reaches the reward functions.
"""

from __future__ import annotations

from typing import Any

from .common import _ROLE_MAP, DatasetError

PROMPT_COLUMNS = ("prompt", "question", "query", "problem", "instruction", "input", "user")
REFERENCE_COLUMNS = ("answer", "solution", "completion", "reference", "ground_truth", "target", "output",
                     "response", "assistant", "chosen")
CONVERSATION_COLUMNS = ("messages", "conversations", "conversation", "chat")


def _message(m: Any, where: str) -> dict:
    if not isinstance(m, dict):
        raise DatasetError(f"a message is {type(m).__name__}, expected an object with role and content", field=where)
    role = m.get("role", m.get("from"))
    content = m.get("content", m.get("value"))
    role = _ROLE_MAP.get(str(role).lower()) if role is not None else None
    if role is None or not isinstance(content, str):
        raise DatasetError("a message needs a role (system/user/assistant) and text content", field=where)
    return {"role": role, "content": content}


def _messages(v: Any, where: str) -> list[dict]:
    return [_message(m, where) for m in v]


def _text(v: Any) -> str | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return v
    if isinstance(v, list) and v and all(isinstance(m, dict) for m in v):  # assistant messages
        return "".join(str(m.get("content", m.get("value")) or "") for m in v)
    if isinstance(v, dict):
        return str(v.get("content", v.get("value")) or "") or None
    return None


def _first(rec: dict, names: tuple[str, ...]) -> str | None:
    return next((k for k in names if rec.get(k) not in (None, "", [])), None)


def prompt_row(rec: dict, i: int) -> dict:
    """One record as {"prompt": [messages], "answer": str | None}; DatasetError naming the row."""
    conv = _first(rec, CONVERSATION_COLUMNS)
    pcol = _first(rec, PROMPT_COLUMNS)
    answer = None
    if pcol is not None:
        p = rec[pcol]
        if isinstance(p, list):
            prompt = _messages(p, pcol)
        elif isinstance(p, str):
            text = p
            if pcol == "instruction" and isinstance(rec.get("input"), str) and rec["input"].strip():
                text = f"{p}\n\n{rec['input']}"
            prompt = ([{"role": "system", "content": rec["system"]}] if isinstance(rec.get("system"), str)
                      and rec["system"].strip() else []) + [{"role": "user", "content": text}]
        else:
            raise DatasetError(f"the prompt is {type(p).__name__}, expected text or chat messages", row=i, field=pcol)
        rcol = _first(rec, tuple(c for c in REFERENCE_COLUMNS if c != pcol))
        answer = _text(rec[rcol]) if rcol else None
    elif conv is not None and isinstance(rec[conv], list):
        msgs = _messages(rec[conv], conv)
        if msgs and msgs[-1]["role"] == "assistant":
            prompt, answer = msgs[:-1], msgs[-1]["content"]
        else:
            prompt = msgs
    else:
        raise DatasetError("no prompt: expected a 'prompt' (or question, query, problem, instruction) column or a "
                           "'messages' conversation", row=i)
    if not prompt or not any(m["role"] == "user" for m in prompt):
        raise DatasetError("the prompt has no user message", row=i)
    return {"prompt": prompt, "answer": answer}


def prompt_rows(records: list[dict], source: str = "") -> tuple[list[dict], dict]:
    """(rows, info): every record as a GRPO prompt row; info says how many have a reference answer."""
    if not records:
        raise DatasetError("no rows", file=source or None)
    rows = []
    for i, rec in enumerate(records, 1):
        if not isinstance(rec, dict):
            raise DatasetError("a row is not an object", file=source or None, row=i)
        try:
            rows.append(prompt_row(rec, i))
        except DatasetError as exc:
            raise DatasetError(exc.detail, file=source or None, row=exc.row or i, field=exc.field) from None
    with_ref = sum(r["answer"] is not None for r in rows)
    if 0 < with_ref < len(rows):
        missing = next(i for i, r in enumerate(rows, 1) if r["answer"] is None)
        raise DatasetError(f"{len(rows) - with_ref} of {len(rows)} rows have no reference answer (answer, solution, "
                           f"completion, ...): give every row one, or none", file=source or None, row=missing)
    if not with_ref:
        rows = [{"prompt": r["prompt"]} for r in rows]
    return rows, {"kind": "prompt", "rows": len(rows), "with_reference": bool(with_ref)}
