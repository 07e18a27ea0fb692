"""The cleaning report and the quality fixes: whitespace, empty fields, role order, duplicates
(exact and near: MinHash LSH), too-long rows, PII, train/validation overlap, and the quality score.

clean_report(rows, kind) lists the rules that fire; mask_pii_rows and dedupe_rows fix two of them
for prepare_dataset; score_quality turns the issues into the 0-100 score the Data tab shows.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from .common import (
    _KIND_FIELDS,
    KINDS,
    NEAR_DUP_THRESHOLD,
    DatasetError,
    _fields,
    _gc_paused,
    _norm,
    _row_text,
    _RowError,
)
from .formats import check_conversation
from .tokens import token_lengths

# =============================================================================================
# Cleaning report

_REPEATED_WS = re.compile(r"(?<=\S)[ \t]{2,}(?=\S)|\n{4,}")
_PII = re.compile(
    r"(?P<email>\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b)"
    r"|(?P<secret>\bhf_[A-Za-z0-9]{30,}\b|\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"
    r"|\bAKIA[0-9A-Z]{16}\b|\bgh[pousr]_[A-Za-z0-9]{36,}\b|\bgithub_pat_[A-Za-z0-9_]{40,}"
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}|-----BEGIN [A-Z ]*PRIVATE KEY-----)"
    r"|(?P<phone>(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,5}"
    r"(?![\w-]))"
)
_PII_NAMES = {"email": "email address", "secret": "API key or secret", "phone": "phone number"}
_RULE_ORDER = ("invalid_row", "empty_field", "role_order", "whitespace", "exact_duplicate",
               "near_duplicate", "too_long", "pii", "train_val_overlap")


def _snip(s: str, n: int = 40) -> str:
    s = s.replace("\n", "\\n")
    return s if len(s) <= n else s[: n - 1] + "…"


def _mask(kind: str, s: str) -> str:
    # Never repeat a secret in a report that may be shown or logged.
    if kind == "email":
        user, _, domain = s.partition("@")
        return f"{user[:1]}***@{domain}"
    if kind == "secret":
        return s[:4] + "…" + f"({len(s)} chars)"
    return s[:3] + "…" + s[-2:]


class IssueTally:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}
        self.extra: dict[str, dict] = {}

    def add(self, rule: str, example: str) -> None:
        self.counts[rule] = self.counts.get(rule, 0) + 1
        ex = self.examples.setdefault(rule, [])
        if len(ex) < 3:
            ex.append(example)

    def issues(self, total: int) -> list[dict]:
        out = []
        for rule in sorted(self.counts, key=lambda r: (_RULE_ORDER.index(r)
                                                       if r in _RULE_ORDER else 99, r)):
            n = self.counts[rule]
            item = {"rule": rule, "count": n, "examples": self.examples.get(rule, []),
                    "message": _rule_message(rule, n, total, self.extra.get(rule, {}))}
            item.update(self.extra.get(rule, {}))
            out.append(item)
        return out


def _rule_message(rule: str, n: int, total: int, extra: dict) -> str:
    rows = f"{n} row{'s' if n != 1 else ''}"
    share = f" ({n / total:.1%})" if total else ""
    return {
        "invalid_row": f"{rows}{share} cannot be used (missing field or wrong type) and were skipped",
        "empty_field": f"{rows}{share} have an empty field",
        "role_order": f"{rows}{share} have messages in an order a chat template cannot train on",
        "whitespace": f"{rows}{share} have leading/trailing or repeated whitespace",
        "exact_duplicate": f"{rows}{share} repeat an earlier row exactly",
        "near_duplicate": f"{rows}{share} are near-duplicates (Jaccard ≥ {NEAR_DUP_THRESHOLD}) "
                          "of an earlier row",
        "too_long": f"{rows}{share} are longer than {extra.get('max_seq_len')} tokens; "
                    f"{extra.get('truncated_token_share', 0):.1%} of all tokens would be cut",
        "pii": f"{rows}{share} contain an email address, phone number or secret",
        "train_val_overlap": f"{rows} of the validation rows also appear in the training rows",
    }.get(rule, f"{rows}{share}")


_SECRET_MARKERS = ("hf_", "sk-", "AKIA", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_",
                   "xoxa-", "xoxb-", "xoxp-", "xoxr-", "xoxs-", "PRIVATE KEY")


def _pii_candidates(texts: list[str]) -> set[int]:
    """Rows that might hold PII, found with cheap scans of all text at once; the full regex then
    runs on these rows only (it would cost seconds on 100k rows)."""
    from bisect import bisect_right
    sep = "\n\x00\n"
    big = sep.join(texts)
    starts = []
    pos = 0
    for s in texts:
        starts.append(pos)
        pos += len(s) + len(sep)
    hits: set[int] = set()

    def mark(offset: int) -> None:
        hits.add(bisect_right(starts, offset) - 1)

    for marker in ("@",) + _SECRET_MARKERS:
        k = big.find(marker)
        while k >= 0:
            mark(k)
            k = big.find(marker, k + 1)
    # Phone numbers: 9+ digits within 20 characters. On bytes with numpy, because a regex over
    # all text costs ~0.5 s per 100k rows; "replace" keeps one byte per character, so offsets hold.
    import numpy as np
    raw = np.frombuffer(big.encode("ascii", "replace"), dtype=np.uint8)
    digits = np.flatnonzero((raw >= 48) & (raw <= 57))
    if len(digits) >= 9:
        dense = digits[:-8][(digits[8:] - digits[:-8]) < 20]
        if len(dense):
            rows = np.searchsorted(np.asarray(starts), dense, side="right") - 1
            hits.update(np.unique(rows).tolist())
    return hits


def clean_report(rows: list[dict], kind: str, *, tokenizer=None, max_seq_len: int | None = None,
                 validation: list[dict] | None = None) -> list[dict]:
    """Find problems in canonical rows. Returns [{"rule", "count", "examples", "message", ...}]
    for the rules that fire: whitespace, empty_field, role_order, exact_duplicate, near_duplicate,
    too_long (needs tokenizer and max_seq_len), pii, train_val_overlap (needs validation)."""
    lengths = None
    if tokenizer is not None and max_seq_len:
        lengths, _ = token_lengths(rows, kind, tokenizer)
    return collect_issues(rows, kind, lengths=lengths, max_seq_len=max_seq_len, validation=validation)


def collect_issues(rows: list[dict], kind: str, *,
           lengths: list[int] | Callable[[], list[int]] | None = None,
           max_seq_len: int | None = None, validation: list[dict] | None = None,
           tally: IssueTally | None = None, row_numbers: list[int] | None = None) -> list[dict]:
    if kind not in KINDS:
        raise DatasetError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}", field="kind")
    t = tally or IssueTally()
    with _gc_paused():
        return _clean_rows(rows, kind, t, lengths, max_seq_len, validation, row_numbers)


def _clean_rows(rows: list[dict], kind: str, t: IssueTally,
                lengths: list[int] | Callable[[], list[int]] | None,
                max_seq_len: int | None, validation: list[dict] | None,
                row_numbers: list[int] | None) -> list[dict]:
    # Examples name rows as the user numbers them in the source, even after bad rows were dropped.
    def rn(i: int) -> int:
        return row_numbers[i - 1] if row_numbers else i

    texts = [_row_text(r, kind) for r in rows]
    pii_rows = _pii_candidates(texts)
    for i, row in enumerate(rows, 1):
        ws = empty = pii = None
        check_pii = (i - 1) in pii_rows
        for label, text, role in _fields(row, kind):
            if not text or text[0].isspace() or text[-1].isspace():
                if not text.strip():
                    if empty is None and role != "tool_call":
                        empty = f"row {rn(i)}: {label} is empty"
                    continue
                if ws is None:
                    side = "leading" if text[0].isspace() else "trailing"
                    ws = f"row {rn(i)}: {label} has {side} whitespace ({_snip(text.strip(), 30)!r})"
            # Substring tests first: the regex alone would cost a lookbehind at every character.
            if ws is None and ("  " in text or "\t\t" in text or "\n\n\n\n" in text) \
                    and _REPEATED_WS.search(text):
                ws = f"row {rn(i)}: {label} has repeated whitespace ({_snip(text, 30)!r})"
            if check_pii and pii is None:
                for m in _PII.finditer(text):
                    what = m.lastgroup
                    if what == "phone" and sum(c.isdigit() for c in m.group()) < 9:
                        continue
                    pii = f"row {rn(i)}: {_PII_NAMES[what]} {_mask(what, m.group())} in {label}"
                    break
        if empty:
            t.add("empty_field", empty)
        if ws:
            t.add("whitespace", ws)
        if pii:
            t.add("pii", pii)
        msgs = row.get("messages") if kind == "messages" else None
        if msgs is None and kind in ("prompt_completion", "kto") and isinstance(row.get("prompt"), list):
            msgs = row["prompt"] + row["completion"]
        if msgs:
            try:
                check_conversation(msgs, "messages")
            except _RowError as e:
                if e.rule == "role_order":
                    t.add("role_order", f"row {rn(i)}: {e.field}: {e.message}")

    first: dict[str, int] = {}
    dup_rows: set[int] = set()
    for i, s in enumerate(texts):
        j = first.setdefault(s, i)
        if j != i:
            dup_rows.add(i)
            t.add("exact_duplicate", f"row {rn(i + 1)} repeats row {rn(j + 1)} ({_snip(s)!r})")
    keep = [i for i in range(len(rows)) if i not in dup_rows]
    # A system prompt shared by every row would make unrelated rows look alike: leave it out.
    near_texts = [_row_text(rows[i], kind, skip_system=True) for i in keep]
    for a, b, sim in find_near_duplicates(near_texts):
        ra, rb = rn(keep[a] + 1), rn(keep[b] + 1)
        t.add("near_duplicate", f"row {ra} ≈ row {rb} (similarity {sim:.2f}): "
                                f"{_snip(near_texts[a], 30)!r}")

    if lengths is not None and max_seq_len:
        if callable(lengths):
            lengths = lengths()
        total = sum(lengths)
        cut = 0
        for i, n in enumerate(lengths, 1):
            if n > max_seq_len:
                cut += n - max_seq_len
                t.add("too_long", f"row {rn(i)}: {n} tokens > {max_seq_len}")
        if "too_long" in t.counts:
            t.extra["too_long"] = {"max_seq_len": max_seq_len,
                                   "truncated_token_share": round(cut / total, 4) if total else 0.0}

    if validation:
        train_keys = {_norm(s) for s in texts}
        for i, r in enumerate(validation, 1):
            s = _row_text(r, kind)
            if _norm(s) in train_keys:
                t.add("train_val_overlap", f"validation row {i} is also in training: {_snip(s)!r}")
    return t.issues(len(rows))


# --- near duplicates: MinHash signatures (datasketch's affine32 scheme) + LSH banding ----------

_NUM_PERM = 64
_MINHASH_SEED = 1
_WORD_RE = re.compile(r"\w+")
_M64 = (1 << 64) - 1


def _shingle_hashes(texts: list[str]):
    """Hash each text's word 3-shingles to uint32 (texts of 1-2 words give one shingle).

    Returns (hashes, row_of_hash) as numpy arrays. Words become vocabulary ids so the hashes are the
    same in every process (Python's str hash is salted per process)."""
    from collections import defaultdict
    from itertools import count

    import numpy as np
    # Ids from 1 in order of first appearance (0 marks "no word"); map() keeps the loop in C.
    vocab: defaultdict[str, int] = defaultdict(count(1).__next__)
    word_id = vocab.__getitem__
    findall = _WORD_RE.findall
    flat: list[int] = []
    lens = []
    for s in texts:
        ws = findall(s.lower())
        flat.extend(map(word_id, ws))
        lens.append(len(ws))
    lens_a = np.asarray(lens, dtype=np.int64)
    ends = np.cumsum(lens_a)
    starts = ends - lens_a
    a = np.zeros(len(flat) + 2, dtype=np.uint64)
    a[:len(flat)] = np.array(flat, dtype=np.int64)
    n = len(flat)
    row = np.repeat(np.arange(len(texts)), lens_a)
    pos = np.arange(n)
    end_of = ends[row]
    # A shingle starts at every position with two more words in its row, and short rows (1-2
    # words) get one shingle from their first word with missing neighbours set to 0.
    valid = (pos + 2 < end_of) | ((pos == starts[row]) & (lens_a[row] < 3))
    p = pos[valid]
    r = row[valid]
    e = end_of[valid]
    x0 = a[p]
    x1 = np.where(p + 1 < e, a[np.minimum(p + 1, n + 1)], 0)
    x2 = np.where(p + 2 < e, a[np.minimum(p + 2, n + 1)], 0)
    with np.errstate(over="ignore"):
        h = (x0 * np.uint64(0x9E3779B97F4A7C15)) ^ (x1 * np.uint64(0xC2B2AE3D27D4EB4F)) \
            ^ (x2 * np.uint64(0x165667B19E3779F9))
        h = (h ^ (h >> np.uint64(32))) & np.uint64(0xFFFFFFFF)
    return h.astype(np.uint32), r


def _fmix32(h):
    """MurmurHash3's 32-bit finalizer on a uint32 array (wrapping multiplies). datasketch.MinHash
    applies the same bijection to every input hash before its affine permutations; we own it
    rather than import datasketch's private helper. tests/test_data.py checks the signatures
    against datasketch.MinHash itself."""
    import numpy as np
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _signatures(hashes, rows, n_rows: int, num_perm: int = _NUM_PERM):
    """MinHash signature per row, exactly what datasketch.MinHash (affine32) computes from the same
    32-bit input hashes, vectorised over all rows at once. Returns (sig[rows_with_words], row_ids)."""
    import numpy as np
    from datasketch import MinHash
    a, b = MinHash(num_perm=num_perm, seed=_MINHASH_SEED).permutations
    if len(hashes) == 0:
        return np.zeros((0, num_perm), dtype=np.uint32), np.zeros(0, dtype=np.int64)
    hv = _fmix32(hashes.astype(np.uint32))
    seg = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    row_ids = rows[seg]
    sig = np.empty((len(seg), num_perm), dtype=np.uint32)
    # Small chunks keep the (shingles x permutations) temporary in the CPU cache: 4-6x faster
    # than one big array on 100k rows.
    step = max(1, (1 << 16) // num_perm)
    k = 0
    while k < len(seg):
        lo = seg[k]
        k2 = max(k + 1, int(np.searchsorted(seg, lo + step, side="left")))
        hi = seg[k2] if k2 < len(seg) else len(hv)
        with np.errstate(over="ignore"):
            phv = hv[lo:hi, None] * a[None, :] + b[None, :]
        sig[k:k2] = np.minimum.reduceat(phv, seg[k:k2] - lo, axis=0)
        k = k2
    return sig, row_ids


def find_near_duplicates(texts: list[str], threshold: float = NEAR_DUP_THRESHOLD
                     ) -> list[tuple[int, int, float]]:
    """(later row, earlier row, estimated Jaccard) for rows whose word 3-shingle sets are at least
    `threshold` similar. MinHash LSH with datasketch's permutations and band/row parameters;
    banding runs in numpy because inserting 100k sketches one by one into MinHashLSH alone takes
    seconds. Candidates are checked against the full signature, so only estimated matches count."""
    if len(texts) < 2:
        return []
    import numpy as np
    from datasketch import MinHashLSH
    with _gc_paused():
        hashes, rows = _shingle_hashes(texts)
    sig, row_ids = _signatures(hashes, rows, len(texts))
    if len(row_ids) < 2:
        return []
    # Weights favour recall: every candidate is verified below, so false positives cost only time.
    lsh = MinHashLSH(threshold=threshold, num_perm=_NUM_PERM, weights=(0.05, 0.95))
    n_bands, r = lsh.b, lsh.r
    best: dict[int, tuple[int, float]] = {}
    sig64 = sig.astype(np.uint64)
    idx = np.arange(len(row_ids))
    for band in range(n_bands):
        cols = sig64[:, band * r:(band + 1) * r]
        with np.errstate(over="ignore"):
            key = np.zeros(len(cols), dtype=np.uint64)
            for c in range(r):
                key = (key * np.uint64(0x100000001B3)) ^ cols[:, c]
        _, first, inv = np.unique(key, return_index=True, return_inverse=True)
        partner = first[inv]
        cand = idx[partner != idx]
        if len(cand) == 0:
            continue
        sim = (sig[cand] == sig[partner[cand]]).mean(axis=1)
        for i, p, s in zip(cand.tolist(), partner[cand].tolist(), sim.tolist()):
            if s >= threshold and (i not in best or s > best[i][1]):
                best[i] = (p, s)
    out = [(int(row_ids[i]), int(row_ids[p]), s) for i, (p, s) in best.items()]
    out.sort()
    return out


def score_quality(n_records: int, n_rows: int, confidence: float, issues: list[dict], stats: dict,
             max_seq_len: int | None, labels: dict | None = None) -> tuple[int, list[str]]:
    """A 0-100 score with one reason per deduction, so the number is never a mystery."""
    score = 100.0
    reasons = []
    counts = {i["rule"]: i["count"] for i in issues}
    total = max(1, n_records)

    def deduct(points: float, why: str) -> None:
        nonlocal score
        points = round(points)
        if points > 0:
            score -= points
            reasons.append(f"-{points}: {why}")

    if confidence < 1:
        deduct((1 - confidence) * 40, f"only {confidence:.0%} of rows share one format")
    bad = counts.get("invalid_row", 0) + counts.get("empty_field", 0) + counts.get("role_order", 0)
    if bad:
        deduct(min(40, 100 * bad / total), f"{bad} rows are unusable or have empty fields")
    weights = {"exact_duplicate": (50, 25, "exact duplicates"),
               "near_duplicate": (30, 15, "near-duplicates"),
               "whitespace": (10, 5, "whitespace problems"),
               "too_long": (40, 20, f"longer than max_seq_len ({max_seq_len})")}
    for rule, (w, cap, what) in weights.items():
        if counts.get(rule):
            deduct(min(cap, max(1, w * counts[rule] / total)), f"{counts[rule]} rows: {what}")
    if counts.get("pii"):
        deduct(min(20, 5 + 50 * counts["pii"] / total),
               f"{counts['pii']} rows contain personal data or secrets")
    if n_rows < 10:
        deduct(30, f"only {n_rows} usable rows; fine-tuning needs at least tens, ideally hundreds")
    elif n_rows < 100:
        deduct(10, f"{n_rows} usable rows is small; a few hundred or more works better")
    if stats.get("count") and stats.get("mean", 0) < 3:
        deduct(10, "rows are very short (under 3 tokens on average)")
    if labels and len(labels["counts"]) > 1:
        c = list(labels["counts"].values())
        if max(c) >= 10 * min(c):
            deduct(5, f"labels are imbalanced ({max(c)} vs {min(c)} rows)")
    elif labels and n_rows >= 10:
        deduct(10, "every row has the same label; nothing to tell apart")
    if not reasons:
        reasons.append("no problems found")
    return max(0, min(100, int(score))), reasons


_PII_TOKENS = {"email": "[EMAIL]", "phone": "[PHONE]", "secret": "[SECRET]"}


def mask_pii_text(text: str) -> tuple[str, dict[str, int]]:
    """Replace e-mail addresses, phone numbers (9+ digits) and API keys/private-key headers with
    [EMAIL], [PHONE], [SECRET]; return (text, counts per kind)."""
    counts: dict[str, int] = {}

    def sub(m: re.Match) -> str:
        what = m.lastgroup
        if what == "phone" and sum(c.isdigit() for c in m.group()) < 9:
            return m.group()
        counts[what] = counts.get(what, 0) + 1
        return _PII_TOKENS[what]

    return _PII.sub(sub, text), counts


def mask_pii_rows(rows: list[dict], kind: str) -> tuple[list[dict], dict]:
    """Masked copies of canonical rows and {"rows", "email", "phone", "secret"} counts."""
    total = {"rows": 0, "email": 0, "phone": 0, "secret": 0}
    candidates = _pii_candidates([_row_text(r, kind) for r in rows])

    def mask(v: Any, found: dict) -> Any:
        if isinstance(v, str):
            new, c = mask_pii_text(v)
            for k, n in c.items():
                found[k] = found.get(k, 0) + n
            return new
        if isinstance(v, list):
            return [mask(m, found) for m in v]
        if isinstance(v, dict):
            return {k: (mask(x, found) if k == "content" else x) for k, x in v.items()}
        return v

    out = []
    for i, row in enumerate(rows):
        if i not in candidates:
            out.append(row)
            continue
        found: dict[str, int] = {}
        new = {k: (mask(v, found) if k in _KIND_FIELDS[kind] else v) for k, v in row.items()}
        if found:
            total["rows"] += 1
            for k, n in found.items():
                total[k] += n
        out.append(new)
    return out, total


def dedupe_rows(rows: list[dict], kind: str, *, near: bool = False) -> tuple[list[dict], dict]:
    """Drop rows that repeat an earlier row exactly and, with near=True, rows whose word
    3-shingles are at least NEAR_DUP_THRESHOLD similar to an earlier kept row (the same MinHash
    test clean_report uses). Returns (kept rows in order, {"exact": n, "near": m})."""
    seen: set[str] = set()
    keep = []
    for i, r in enumerate(rows):
        t = _row_text(r, kind)
        if t not in seen:
            seen.add(t)
            keep.append(i)
    removed = {"exact": len(rows) - len(keep), "near": 0}
    if near and len(keep) > 1:
        texts = [_row_text(rows[i], kind, skip_system=True) for i in keep]
        drop = {later for later, _, _ in find_near_duplicates(texts)}
        removed["near"] = len(drop)
        keep = [i for j, i in enumerate(keep) if j not in drop]
    return [rows[i] for i in keep], removed
