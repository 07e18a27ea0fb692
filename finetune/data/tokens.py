"""Token lengths of canonical rows, their statistics, and the share of tokens that carry loss.

Lengths are what a trainer would tokenize (chat-template renderings where the tokenizer has one).
_count_tokens counts many texts fast by cutting them into pieces that tokenize on their own
(bench/bench_tokens.py measures it against one plain batch encode); trained_token_share uses
finetune.tokenize's own masking.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

from .common import _gc_paused, _msgs_text

# =============================================================================================
# Token lengths and statistics

_TOKENIZERS: dict[str, Any] = {}


def resolve_tokenizer(tokenizer):
    if tokenizer is None or not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    key = str(tokenizer)
    if key not in _TOKENIZERS:
        from transformers import AutoTokenizer

        from ..builtin import resolve_model
        _TOKENIZERS[key] = AutoTokenizer.from_pretrained(resolve_model(key))
    return _TOKENIZERS[key]


def _length_texts(rows: list[dict], kind: str, tok) -> tuple[list[str], list[int], bool]:
    """The strings a trainer would tokenize, one or two per row (preference: chosen and rejected),
    with the row each belongs to and whether they are chat-template renderings."""
    template = getattr(tok, "chat_template", None) if tok is not None else None
    eos = (getattr(tok, "eos_token", None) or "") if tok is not None else ""
    convs: list[list[dict]] = []
    owner: list[int] = []
    texts: list[str] = []
    if kind == "messages":
        convs = [r["messages"] for r in rows]
        owner = list(range(len(rows)))
    elif kind == "text":
        texts = [r["text"] + eos for r in rows]
        owner = list(range(len(rows)))
    else:
        pairs = (("chosen", "rejected") if kind == "preference" else ("completion",))
        for i, r in enumerate(rows):
            for key in pairs:
                if isinstance(r["prompt"], list):
                    convs.append(r["prompt"] + r[key])
                else:
                    texts.append(r["prompt"] + r[key] + eos)
                owner.append(i)
    if convs:
        return _render(convs, tok if template else None), owner, bool(template)
    return texts, owner, False


def _render(convs: list[list[dict]], tok) -> list[str]:
    if tok is None:
        return [_msgs_text(c) for c in convs]
    try:
        out = tok.apply_chat_template(convs, tokenize=False)
        if isinstance(out, list) and len(out) == len(convs):
            return out
    except Exception:  # one odd row must not stop the whole count; retry row by row below
        pass
    res = []
    for c in convs:
        try:
            res.append(tok.apply_chat_template(c, tokenize=False))
        except Exception:
            res.append(_msgs_text(c))
    return res


# Set to False to count with one plain batch encode of every text (bench/bench_data.py measures both).
FAST_TOKEN_COUNT = True
# Where a text may be cut into pieces that tokenize on their own: single spaces (the space starts
# the next piece, as byte-level BPE pre-tokenizers attach it to the following word), and, tried
# first, single newlines too. Rows with whitespace runs are encoded whole.
_PIECE_PATTERNS = (re.compile(r" ?[^ \n]+|\n"), re.compile(r" ?[^ ]+"))
_ODD_WS = ("  ", " \n", "\n ", "\n\n", "\t", "\r", "\x0b", "\x0c", "\x85", "\xa0", "\u3000")


def _count_tokens(tok, texts: list[str], add_special_tokens: bool) -> list[int]:
    # The Rust tokenizer directly: no Python lists of ids, and it uses every core.
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None and (backend.truncation is not None or backend.padding is not None):
        backend = None  # left configured by an earlier call; counts would be cut or padded
    if backend is not None and FAST_TOKEN_COUNT and len(texts) >= 2000:
        counts = _count_by_pieces(backend, texts, add_special_tokens)
        if counts is not None:
            return counts
    return _count_whole(tok, backend, texts, add_special_tokens)


def _count_whole(tok, backend, texts: list[str], add_special_tokens: bool) -> list[int]:
    out: list[int] = []
    step = 8192
    for k in range(0, len(texts), step):
        part = texts[k:k + step]
        if backend is not None:
            encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch  # no offsets
            out.extend(len(e) for e in encode(part, add_special_tokens=add_special_tokens))
        else:
            ids = tok(part, add_special_tokens=add_special_tokens, return_attention_mask=False,
                      truncation=False)["input_ids"]
            out.extend(len(x) for x in ids)
    return out


def _piece_countable(backend) -> bool:
    """Byte-level BPE (GPT-2, Llama 3, Qwen, the built-in model): tokens never cross a pre-token
    boundary, so a text's count is the sum of its pieces' counts. Added tokens that swallow the
    spaces around them (lstrip/rstrip) or BPE dropout would break that."""
    try:
        if type(backend.model).__name__ != "BPE" or getattr(backend.model, "dropout", None):
            return False
        if "ByteLevel" not in repr(backend.pre_tokenizer):
            return False
        return not any(t.lstrip or t.rstrip or t.single_word
                       for t in backend.get_added_tokens_decoder().values())
    except Exception:  # an unfamiliar tokenizer: count the plain way
        return False


def _count_by_pieces(backend, texts: list[str], add_special_tokens: bool) -> list[int] | None:
    """Exact token counts from the counts of unique pieces (words with their leading space).

    Natural text repeats a small vocabulary of words, so encoding each unique piece once and
    summing does a fraction of the tokenizer's work (3-4x fewer CPU seconds on the bench's chat
    rows). A sample of whole texts is encoded the plain way and must agree exactly, else None
    (the caller then counts every text whole)."""
    if not _piece_countable(backend):
        return None
    encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
    extra = backend.num_special_tokens_to_add(False) if add_special_tokens else 0
    odd = [i for i, s in enumerate(texts) if not s or s[-1] == " " or any(w in s for w in _ODD_WS)]
    odd_set = set(odd)
    step = max(1, len(texts) // 200)
    sample = [i for i in range(0, len(texts), step) if i not in odd_set][:200]
    truth = [len(e) for e in encode([texts[i] for i in sample], add_special_tokens=add_special_tokens)]
    for pattern in _PIECE_PATTERNS:
        findall = pattern.findall
        if [sum(len(e) for e in encode(findall(texts[i]), add_special_tokens=False)) + extra
                for i in sample] != truth:
            continue  # this tokenizer joins pieces across these boundaries: try coarser ones
        with _gc_paused():
            pieces = [None if i in odd_set else findall(s) for i, s in enumerate(texts)]
            vocab_set: set[str] = set()
            for p in pieces:
                if p is not None:
                    vocab_set.update(p)
            vocab = list(vocab_set)
            lookup = dict(zip(vocab, (len(e) for e in encode(vocab, add_special_tokens=False))))
            get = lookup.__getitem__
            counts = [sum(map(get, p)) + extra if p is not None else 0 for p in pieces]
        if odd:
            for i, n in zip(odd, _count_whole(None, backend, [texts[i] for i in odd],
                                              add_special_tokens)):
                counts[i] = n
        return counts
    return None


def token_lengths(rows: list[dict], kind: str, tokenizer=None) -> tuple[list[int], bool]:
    """Tokens per row (preference: the longer of prompt+chosen and prompt+rejected), and whether
    they are approximate (no tokenizer: characters / 4)."""
    tok = resolve_tokenizer(tokenizer)
    texts, owner, chat = _length_texts(rows, kind, tok)
    if tok is None:
        counts = [math.ceil(len(s) / 4) for s in texts]
    else:
        unique = list(dict.fromkeys(texts))  # repeated rows are tokenized once
        n = _count_tokens(tok, unique, add_special_tokens=not chat)
        lookup = dict(zip(unique, n))
        counts = [lookup[s] for s in texts]
    lengths = [0] * len(rows)
    for o, c in zip(owner, counts):
        if c > lengths[o]:
            lengths[o] = c
    return lengths, tok is None


def token_stats(rows: list[dict], kind: str, tokenizer=None) -> dict:
    """{"count", "total", "mean", "p50", "p95", "max", "histogram": {"edges", "counts"},
    "approximate"}. Without a tokenizer, tokens are estimated as characters / 4."""
    lengths, approx = token_lengths(rows, kind, tokenizer)
    return length_stats(lengths, approx)


def length_stats(lengths: list[int], approximate: bool) -> dict:
    import numpy as np
    if not lengths:
        return {"count": 0, "total": 0, "mean": 0.0, "p50": 0, "p95": 0, "max": 0,
                "histogram": {"edges": [], "counts": []}, "approximate": approximate}
    arr = np.asarray(lengths, dtype=np.int64)
    lo, hi = int(arr.min()), int(arr.max())
    width = max(1, math.ceil((hi - lo + 1) / 20))  # whole-token bins read better than 10.1..11.1
    edges = np.arange(lo, hi + width + 1, width)
    counts, edges = np.histogram(arr, bins=edges)
    return {
        "count": int(len(arr)), "total": int(arr.sum()), "mean": round(float(arr.mean()), 1),
        "p50": int(np.percentile(arr, 50)), "p95": int(np.percentile(arr, 95)), "max": hi,
        "histogram": {"edges": [int(e) for e in edges], "counts": counts.tolist()},
        "approximate": approximate,
    }


TRAINED_SHARE_WARN = 0.05


def trained_token_share(rows: list[dict], kind: str, tokenizer, *, max_seq_len: int | None = None,
                        max_rows: int = 2000) -> dict:
    """How many tokens carry loss, through finetune.tokenize.tokenize_rows (the trainer's own
    masking). Datasets over max_rows are measured on evenly spaced rows; when that sample trains
    nothing, every row is checked before saying so. status: ok, low (< 5%), none, or
    not_applicable (preference/KTO rows are not trained by SFT)."""
    from ..tokenize import TokenizeError, tokenize_rows
    tok = resolve_tokenizer(tokenizer)
    base = {"rows": len(rows), "rows_checked": 0, "sampled": False, "tokens": 0,
            "trained_tokens": 0, "share": None, "rows_without_trained_tokens": 0}
    if kind not in ("messages", "prompt_completion", "text"):
        return {**base, "status": "not_applicable",
                "message": f"{kind} rows are trained by DPO/KTO, not by masking tokens"}
    step = max(1, math.ceil(len(rows) / max_rows))
    sample = rows[::step]
    try:
        _, summ = tokenize_rows(tok, sample, kind, max_seq_len)
        if summ["trained_tokens"] == 0 and step > 1:
            sample, step = rows, 1
            _, summ = tokenize_rows(tok, rows, kind, max_seq_len)
    except TokenizeError as e:
        return {**base, "status": "none", "share": 0.0,
                "message": f"no token would be trained: {e}"}
    share = summ["trained_share"]
    out = {**base, "rows_checked": len(sample), "sampled": step > 1, "tokens": summ["tokens"],
           "trained_tokens": summ["trained_tokens"], "share": round(share, 4),
           "rows_without_trained_tokens": summ["rows_without_trained_tokens"],
           "notes": summ["notes"]}
    where = f" (measured on {len(sample)} of {len(rows)} rows)" if step > 1 else ""
    if summ["trained_tokens"] == 0:
        cut = f" within max_seq_len {max_seq_len}" if max_seq_len else ""
        out.update(status="none", message=(
            f"no token would be trained{cut}: every label is masked. Rows must end with an "
            "assistant answer (or a completion) that fits in the sequence length"))
    elif share < TRAINED_SHARE_WARN:
        out.update(status="low", message=(
            f"only {share:.1%} of tokens are trained{where}; most compute goes to prompts. "
            "Shorter prompts/system messages or a longer max_seq_len help"))
    else:
        out.update(status="ok", message=f"{share:.1%} of tokens are trained{where}")
    if summ["rows_without_trained_tokens"] and out["status"] != "none":
        out["message"] += (f"; {summ['rows_without_trained_tokens']} rows train nothing and "
                           "will be skipped")
    return out
