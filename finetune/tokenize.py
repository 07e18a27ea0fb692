"""Turn canonical rows into token ids and labels: the one place that decides which tokens are trained.

Training (finetune/train.py), evaluation (perplexity) and the Dataset tab's preview all call
`tokenize_row`, so the preview shows exactly what the trainer will see. Labels are -100 on tokens
that are not trained (prompts, system and user turns); TRL uses a `labels` column as it is.

Chat rows are rendered with the tokenizer's own chat template. The trained spans are found by
rendering each prefix of the conversation (up to a user turn, with the generation prompt) and each
prefix through an assistant turn: the characters between them are that assistant turn. Tokens are
mapped back to characters with the fast tokenizer's offsets, so any template works that renders a
conversation as the concatenation of its prefixes; when a template rewrites earlier turns (some
reasoning templates drop old thoughts), only the final assistant turn is trained, and we say so.
"""

from __future__ import annotations

from typing import Any

IGNORE = -100


class TokenizeError(ValueError):
    pass


def _template(tokenizer, messages, add_generation_prompt: bool, tools: list | None = None) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, **({"tools": tools} if tools else {})
    )


def template_gaps(tokenizer, rows: list[dict]) -> list[str]:
    """What the rows carry that this chat template does not render (tools, tool calls, reasoning): said
    plainly, since those parts are then never seen in training."""
    tpl = str(getattr(tokenizer, "chat_template", "") or "")
    msgs = [m for r in rows for k in ("messages", "prompt", "completion", "chosen", "rejected")
            if isinstance(r.get(k), list) for m in r[k] if isinstance(m, dict)]
    notes = []
    n_tools = sum(1 for r in rows if r.get("tools")) + sum(1 for m in msgs if m.get("tool_calls"))
    if n_tools and "tool" not in tpl:
        notes.append(f"this model's chat template does not render tools or tool calls ({n_tools} found): that part of "
                     "the rows is not seen in training; pick a model whose template supports tools")
    n_reason = sum(1 for m in msgs if m.get("reasoning_content"))
    if n_reason and "reasoning_content" not in tpl:
        notes.append(f"this model's chat template does not render reasoning ({n_reason} turns with reasoning_content): "
                     "the reasoning is dropped and only the answers are trained")
    return notes


def _assistant_spans(tokenizer, messages: list[dict], tools: list | None = None
                     ) -> tuple[str, list[tuple[int, int]], str | None]:
    """The rendered conversation and the character spans of its assistant turns."""
    full = _template(tokenizer, messages, False, tools)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        before = _template(tokenizer, messages[:i], True, tools) if i else ""
        through = _template(tokenizer, messages[: i + 1], False, tools)
        if not (full.startswith(through) and through.startswith(before)):
            spans = []
            break
        spans.append((len(before), len(through)))
    if spans:
        return full, spans, None
    # The template is not prefix-stable: train the last assistant turn only.
    if not messages or messages[-1].get("role") != "assistant":
        raise TokenizeError("the conversation does not end with an assistant turn, so nothing would be trained")
    before = _template(tokenizer, messages[:-1], True, tools)
    if not full.startswith(before):
        raise TokenizeError(
            "the chat template renders the prompt differently inside the full conversation; "
            "cannot tell which tokens belong to the answer"
        )
    return full, [(len(before), len(full))], "chat template rewrites earlier turns: only the last assistant turn is trained"


def _encode_with_spans(tokenizer, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    labels = []
    for tid, (start, end) in zip(ids, enc["offset_mapping"]):
        trained = any(s <= start and end <= e and end > start for s, e in spans)
        labels.append(tid if trained else IGNORE)
    return ids, labels


def _eos_id(tokenizer) -> int | None:
    return tokenizer.eos_token_id


def tokenize_row(tokenizer, row: dict, kind: str, max_seq_len: int | None = None) -> dict[str, Any]:
    """Token ids and labels for one canonical row of the given kind.

    kinds: "messages" ({"messages": [...]}), "prompt_completion" ({"prompt", "completion"}, strings
    or message lists), "text" ({"text"}). Returns {"input_ids", "labels", "note"}; truncation keeps the
    start, as TRL's default does.
    """
    note = None
    if kind == "messages":
        text, spans, note = _assistant_spans(tokenizer, row["messages"], row.get("tools"))
        ids, labels = _encode_with_spans(tokenizer, text, spans)
    elif kind == "prompt_completion":
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, list):
            before = _template(tokenizer, prompt, True)
            text = _template(tokenizer, prompt + completion, False)
            if not text.startswith(before):
                raise TokenizeError("the chat template renders the prompt differently inside the full conversation")
            ids, labels = _encode_with_spans(tokenizer, text, [(len(before), len(text))])
        else:
            p = tokenizer(prompt, add_special_tokens=True)["input_ids"]
            c = tokenizer(completion, add_special_tokens=False)["input_ids"]
            eos = _eos_id(tokenizer)
            if eos is not None:
                c = c + [eos]
            ids, labels = p + c, [IGNORE] * len(p) + list(c)
    elif kind == "text":
        ids = tokenizer(row["text"], add_special_tokens=True)["input_ids"]
        eos = _eos_id(tokenizer)
        if eos is not None:
            ids = ids + [eos]
        labels = list(ids)
    else:
        raise TokenizeError(f"rows of kind {kind!r} are not trained by supervised fine-tuning")
    truncated = False
    if max_seq_len and len(ids) > max_seq_len:
        ids, labels, truncated = ids[:max_seq_len], labels[:max_seq_len], True
    return {"input_ids": ids, "labels": labels, "note": note, "truncated": truncated}


def tokenize_rows(tokenizer, rows: list[dict], kind: str, max_seq_len: int | None = None) -> tuple[list[dict], dict]:
    """Tokenize many rows; return (examples with input_ids/labels, summary of what is trained)."""
    out, trained, total, empty, truncated, notes = [], 0, 0, 0, 0, set()
    for i, r in enumerate(rows, 1):
        try:
            t = tokenize_row(tokenizer, r, kind, max_seq_len)
        except TokenizeError as exc:
            raise TokenizeError(f"row {i}: {exc}") from None
        n = sum(1 for x in t["labels"] if x != IGNORE)
        trained += n
        total += len(t["input_ids"])
        truncated += t["truncated"]
        if t["note"]:
            notes.add(t["note"])
        if n == 0:
            empty += 1
            continue  # a row with nothing to learn only costs compute
        out.append({"input_ids": t["input_ids"], "labels": t["labels"]})
    summary = {
        "rows": len(rows), "rows_kept": len(out), "rows_without_trained_tokens": empty,
        "rows_truncated": truncated, "tokens": total, "trained_tokens": trained,
        "trained_share": (trained / total) if total else 0.0, "notes": sorted(notes) + template_gaps(tokenizer, rows),
    }
    return out, summary


def render_trained_tokens(tokenizer, row: dict, kind: str, max_seq_len: int | None = None) -> list[tuple[str, bool]]:
    """(token text, trained?) pairs for a preview: exactly what tokenize_row produces."""
    t = tokenize_row(tokenizer, row, kind, max_seq_len)
    pieces = []
    for tid, lab in zip(t["input_ids"], t["labels"]):
        pieces.append((tokenizer.decode([tid]), lab != IGNORE))
    return pieces


def prompt_and_reference(row: dict, kind: str) -> tuple[Any, str] | None:
    """Split a row into what the model is asked and the reference answer (for generation metrics)."""
    if kind == "messages":
        msgs = row["messages"]
        if not msgs or msgs[-1].get("role") != "assistant":
            return None
        return msgs[:-1], str(msgs[-1].get("content") or "")
    if kind == "prompt_completion":
        c = row["completion"]
        if isinstance(c, list):
            return row["prompt"], " ".join(str(m.get("content") or "") for m in c)
        return row["prompt"], str(c)
    return None


def prompt_text(prompt: Any) -> str:
    """What a person reads as the question of a prompt_and_reference() prompt: the last message's
    text for a conversation, the prompt itself for plain text (evaluate and compare both show it)."""
    if isinstance(prompt, list):
        return str(prompt[-1].get("content") or "") if prompt else ""
    return str(prompt)
