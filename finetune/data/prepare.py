"""Split, inspect, prepare and load prepared datasets.

split_records(rows) -> (train, validation), seeded, optionally stratified;
inspect_dataset(source) -> one JSON-serialisable summary for the Data tab;
prepare_dataset(source) -> train.jsonl, validation.jsonl, meta.json written atomically (optional PII
masking and dedupe); load_prepared(dir_or_source) -> (train, validation, kind).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from ..paths import is_safe_name
from .common import (
    DEFAULT_SEED,
    DEFAULT_VAL_RATIO,
    FORMATS,
    LORA_MIN_EXAMPLES,
    SFT_MIN_EXAMPLES,
    DatasetError,
    _display_name,
    _fields,
    _slug,
)
from .formats import apply_mapping, record_columns, resolve_columns, row_format, detect_format, to_canonical
from .load import load_records, read_prepared
from .quality import collect_issues, score_quality, IssueTally, dedupe_rows, mask_pii_rows
from .tokens import resolve_tokenizer, length_stats, token_lengths, trained_token_share

# =============================================================================================
# Split


def split_records(rows: list[dict], val_ratio: float = DEFAULT_VAL_RATIO, seed: int = DEFAULT_SEED,
                  stratify_key: str | None = None) -> tuple[list[dict], list[dict]]:
    """Seeded split into (train, validation), both in their original order.

    At least one validation row when val_ratio > 0 and there are 2+ rows; with stratify_key each
    value of that field keeps its share in both parts."""
    if not isinstance(val_ratio, (int, float)) or not 0 <= val_ratio < 1:
        raise DatasetError(f"val_ratio must be at least 0 and below 1, got {val_ratio!r}",
                           field="val_ratio")
    n = len(rows)
    if n == 0 or val_ratio == 0:
        return list(rows), []
    n_val = min(n - 1, max(1, round(n * val_ratio))) if n >= 2 else 0
    rng = random.Random(seed)
    if stratify_key is None:
        order = list(range(n))
        rng.shuffle(order)
        val_idx = set(order[:n_val])
    else:
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            v = r.get(stratify_key)
            key = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
            groups.setdefault(key, []).append(i)
        # Largest-remainder allocation so the shares add up to exactly n_val.
        quotas = {k: len(g) * n_val / n for k, g in groups.items()}
        take = {k: int(q) for k, q in quotas.items()}
        rest = n_val - sum(take.values())
        for k in sorted(groups, key=lambda k: (-(quotas[k] - take[k]), k))[:rest]:
            take[k] += 1
        val_idx = set()
        for k in sorted(groups):
            g = groups[k][:]
            rng.shuffle(g)
            val_idx.update(g[:take[k]])
    train = [r for i, r in enumerate(rows) if i not in val_idx]
    val = [r for i, r in enumerate(rows) if i in val_idx]
    return train, val


# =============================================================================================
# Inspect, prepare, load


def inspect_dataset(source: str, *, fmt: str | None = None, mapping: dict | None = None,
                    tokenizer=None, max_seq_len: int | None = None,
                    max_bytes: int | None = None, min_examples: int | None = None) -> dict:
    """Everything the Data tab shows about a dataset, JSON-serialisable.

    Keys: source, format, confidence, evidence, kind, rows (records read), rows_valid (rows that
    convert), columns, mapping, issues, token_stats, preview (first 3 canonical rows),
    quality_score (0-100), quality_reasons, field_stats (chars per field), labels (classification
    and KTO label counts, else None), requirement ({min_examples, have, reason}) and
    meets_requirement, trained_tokens (share of tokens that carry loss, with a tokenizer) and
    hint (how to map columns when the format is unknown). Unreadable input raises DatasetError; a
    readable file in no known format returns format "unknown" with the columns found.
    tokenizer: a tokenizer object, a model id/path, or None (token counts are then estimated).
    min_examples: the size the plan needs (default SFT_MIN_EXAMPLES, the decision tree's 1,000).
    """
    records = load_records(source, max_bytes=max_bytes)
    name = _display_name(source)
    columns = record_columns(records)
    if mapping:
        mapping = {k: v for k, v in mapping.items() if v}
        records = apply_mapping(records, mapping, fmt, columns, name)
    det = detect_format(records)
    if fmt is not None:
        if fmt not in FORMATS:
            raise DatasetError(f"unknown format {fmt!r}; supported formats: {', '.join(FORMATS)}",
                               file=name, field="format")
        fits = sum(1 for r in records if row_format(r)[0] == fmt)
        evidence = [f"format set to {fmt}; {fits}/{len(records)} rows fit it on their own"]
        if det.format not in (fmt, "unknown"):
            evidence.append(f"detection would have said {det.format} ({det.confidence:.0%})")
        confidence = round(fits / len(records), 4)
    else:
        fmt, confidence, evidence = det.format, det.confidence, det.evidence
    result: dict[str, Any] = {
        "source": str(source), "format": fmt, "confidence": confidence, "evidence": evidence,
        "kind": None, "rows": len(records), "rows_valid": 0, "columns": columns,
        "mapping": {}, "issues": [], "token_stats": None,
        "preview": [], "quality_score": 0, "quality_reasons": [],
        "field_stats": {}, "labels": None, "trained_tokens": None, "hint": None,
    }
    if fmt == "unknown":
        result["preview"] = _jsonable(_truncate(records[:3]))
        result["quality_reasons"] = list(det.evidence) + [
            "pick a format and map its fields to your columns"]
        result["hint"] = mapping_hint(records, columns)
        result.update(_requirement(0, min_examples))
        return result
    # The columns each canonical field was read from, so the UI can prefill its mapping controls.
    resolved = resolve_columns(records, fmt, det)
    result["mapping"] = {k: v for k, v in resolved.items() if v in columns}
    if mapping:
        result["mapping"].update(mapping)
    rows, kind, skipped = to_canonical(records, fmt, source=name or "", on_error="skip",
                                       return_skipped=True)
    tally = IssueTally()
    for e in skipped:
        tally.add(e.rule or "invalid_row", f"row {e.row}: {e.field + ': ' if e.field else ''}"
                                           f"{e.detail}")
    tok = resolve_tokenizer(tokenizer)
    dropped = {e.row for e in skipped}
    origin = [i for i in range(1, len(records) + 1) if i not in dropped]
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=1) as pool:
        # The Rust tokenizer releases the GIL, so counting tokens in a thread overlaps with the
        # pure-Python checks below; collect_issues waits for the lengths only at its too_long step.
        pending = pool.submit(token_lengths, rows, kind, tok)
        issues = collect_issues(rows, kind, lengths=(lambda: pending.result()[0]) if tok is not None
                        else None, max_seq_len=max_seq_len, tally=tally, row_numbers=origin)
        lengths, approx = pending.result()
    stats = length_stats(lengths, approx)
    labels = _label_counts(rows, fmt, kind)
    score, reasons = score_quality(len(records), len(rows), confidence, issues, stats, max_seq_len,
                              labels)
    result.update({"kind": kind, "rows_valid": len(rows), "issues": issues, "token_stats": stats,
                   "preview": _jsonable(_truncate(rows[:3])), "quality_score": score,
                   "quality_reasons": reasons, "field_stats": field_stats(rows, kind),
                   "labels": labels})
    result.update(_requirement(len(rows), min_examples))
    if tok is not None:
        result["trained_tokens"] = trained_token_share(rows, kind, tok, max_seq_len=max_seq_len)
    return result


def mapping_hint(records: list[dict], columns: list[str] | None = None) -> str:
    """One sentence for an "unknown" dataset: the columns found and a mapping to try."""
    columns = columns if columns is not None else record_columns(records)
    sample = records[:200]
    texty = [c for c in columns if sum(isinstance(r.get(c), str) for r in sample) > len(sample) / 2]
    found = ", ".join(columns) or "(none)"
    if len(texty) >= 2:
        example = (f"e.g. format prompt_completion with prompt={texty[0]}, "
                   f"completion={texty[1]}")
    elif len(texty) == 1:
        example = f"e.g. format text with text={texty[0]}"
    else:
        example = "e.g. instruction=<question column>, output=<answer column>"
    return (f"Columns found: {found}. Pick a format and map its fields to these columns "
            f"(field=column), {example}.")


def field_stats(rows: list[dict], kind: str) -> dict[str, dict]:
    """Characters per field (per role for chats): {"field": {"count", "mean_chars", "max_chars",
    "empty_share"}}."""
    acc: dict[str, list[int]] = {}
    empty: dict[str, int] = {}
    for row in rows:
        for _, text, role in _fields(row, kind):
            n = len(text.strip())
            acc.setdefault(role, []).append(n)
            if n == 0:
                empty[role] = empty.get(role, 0) + 1
    out = {}
    for role, ns in acc.items():
        out[role] = {"count": len(ns), "mean_chars": round(sum(ns) / len(ns), 1),
                     "max_chars": max(ns), "empty_share": round(empty.get(role, 0) / len(ns), 4)}
    return out


def _label_counts(rows: list[dict], fmt: str, kind: str) -> dict | None:
    key = "completion" if fmt == "classification" else ("label" if kind == "kto" else None)
    if key is None:
        return None
    counts: dict[str, int] = {}
    for r in rows:
        v = r.get(key)
        v = str(v).lower() if isinstance(v, bool) else str(v)
        counts[v] = counts.get(v, 0) + 1
    return {"field": "label", "counts": dict(sorted(counts.items(), key=lambda kv: -kv[1]))}


def _requirement(n_rows: int, min_examples: int | None) -> dict:
    need = SFT_MIN_EXAMPLES if min_examples is None else int(min_examples)
    if need < 0:
        raise DatasetError(f"min_examples must be 0 or more, got {min_examples!r}",
                           field="min_examples")
    ok = n_rows >= need
    if ok:
        reason = f"{n_rows} usable rows ≥ {need} needed"
    elif n_rows >= LORA_MIN_EXAMPLES:
        reason = (f"{n_rows} usable rows < {need} needed; enough for a small LoRA adapter "
                  f"(minimum {LORA_MIN_EXAMPLES}), or add rows (augmentation helps)")
    else:
        reason = (f"{n_rows} usable rows < {need} needed, and below the LoRA minimum of "
                  f"{LORA_MIN_EXAMPLES}: collect or generate more data")
    return {"meets_requirement": ok,
            "requirement": {"min_examples": need, "have": n_rows, "reason": reason}}


def _truncate(obj: Any, n: int = 300) -> Any:
    if isinstance(obj, str):
        return obj if len(obj) <= n else obj[:n] + "…"
    if isinstance(obj, list):
        return [_truncate(x, n) for x in obj]
    if isinstance(obj, dict):
        return {k: _truncate(v, n) for k, v in obj.items()}
    return obj


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str, ensure_ascii=False))


def _stratify_key(fmt: str, kind: str) -> str | None:
    # Classification labels and KTO's good/bad flag should keep their shares in both splits.
    if fmt == "classification":
        return "completion"
    if kind == "kto":
        return "label"
    return None


def prepare_dataset(source: str, out_dir: str | None = None, *, val_ratio: float = DEFAULT_VAL_RATIO,
                    seed: int = DEFAULT_SEED, fmt: str | None = None, mapping: dict | None = None,
                    name: str | None = None, on_error: Literal["raise", "skip"] = "raise",
                    max_bytes: int | None = None, mask_pii: bool = False,
                    dedupe: Literal["exact", "near"] | None = None, tokenizer=None,
                    max_seq_len: int | None = None) -> dict:
    """Load, convert and split a dataset into out_dir/{train.jsonl, validation.jsonl, meta.json}.

    out_dir defaults to FINETUNE_HOME/datasets/<name or a slug of the source>. The folder appears
    whole or not at all: files are written to a temporary sibling folder that is renamed into
    place (replacing an earlier one). mask_pii replaces e-mail addresses, phone numbers and keys
    with [EMAIL], [PHONE], [SECRET]; dedupe="exact" drops repeated rows, "near" also rows at least
    NEAR_DUP_THRESHOLD similar to an earlier one. With a tokenizer, a dataset in which no token
    would be trained is refused. Returns {"dir", "train_path", "validation_path", "format", "kind",
    "rows_train", "rows_validation", "cleaning"}; meta.json holds the same "cleaning" counts.
    on_error="skip" drops rows that cannot be converted instead of refusing the file: "cleaning" then
    says how many ("skipped_invalid") and which ("skipped_rows": row, file line, field, problem).
    """
    if name is not None:
        if not is_safe_name(name, 100):
            raise DatasetError(f"dataset name {name!r} must be letters, digits, '.', '_' or '-' "
                               "(no slashes)", field="name")
    if not isinstance(val_ratio, (int, float)) or not 0 <= val_ratio < 1:
        raise DatasetError(f"val_ratio must be at least 0 and below 1, got {val_ratio!r}",
                           field="val_ratio")
    if dedupe in ("", "none", "off"):
        dedupe = None
    if dedupe not in (None, "exact", "near"):
        raise DatasetError(f"dedupe must be 'exact', 'near' or None, got {dedupe!r}", field="dedupe")
    records = load_records(source, max_bytes=max_bytes)
    display = _display_name(source)
    if fmt is None:
        if mapping:
            mapped = apply_mapping(records, {k: v for k, v in mapping.items() if v}, None,
                                    record_columns(records), display)
            fmt_used = detect_format(mapped).format
        else:
            fmt_used = detect_format(records).format
    else:
        fmt_used = fmt
    rows, kind, skipped = to_canonical(records, fmt, mapping, source=display, on_error=on_error,
                                       return_skipped=True)
    if not rows:
        raise DatasetError("no usable rows after conversion", file=display)
    if fmt_used == "unknown":
        fmt_used = fmt or "unknown"
    cleaning: dict[str, Any] = {"skipped_invalid": len(skipped)}
    if skipped:  # which rows were dropped, by file line where the file has lines, and why
        lines = record_lines(source, len(records))
        cleaning["skipped_rows"] = [
            {"row": e.row, "line": lines[e.row - 1] if lines and e.row else None, "field": e.field,
             "problem": e.detail} for e in skipped[:MAX_SKIPPED_LISTED]]
    if mask_pii:
        rows, cleaning["pii_masked"] = mask_pii_rows(rows, kind)
    if dedupe:
        rows, removed = dedupe_rows(rows, kind, near=dedupe == "near")
        cleaning["duplicates_removed"] = removed
        if not rows:
            raise DatasetError("no rows left after removing duplicates", file=display)
    if tokenizer is not None:
        trained = trained_token_share(rows, kind, tokenizer, max_seq_len=max_seq_len)
        if trained["status"] == "none":
            raise DatasetError(f"refusing to save: {trained['message']}", file=display)
        cleaning["trained_share"] = trained["share"]
    strat = _stratify_key(fmt_used, kind)
    train, val = split_records(rows, val_ratio=val_ratio, seed=seed, stratify_key=strat)

    if out_dir is None:
        from ..paths import datasets_dir
        out = datasets_dir() / (name or _slug(source))
    else:
        out = Path(out_dir).expanduser()
    meta = {
        "source": str(source), "format": fmt_used, "kind": kind,
        "counts": {"train": len(train), "validation": len(val), "skipped": len(skipped)},
        "seed": seed, "val_ratio": val_ratio, "stratify_key": strat,
        "mapping": dict(mapping or {}), "cleaning": cleaning,
    }
    out = write_prepared(out, train, val, meta)
    return {"dir": str(out), "train_path": str(out / "train.jsonl"),
            "validation_path": str(out / "validation.jsonl"), "format": fmt_used, "kind": kind,
            "rows_train": len(train), "rows_validation": len(val), "cleaning": cleaning}


MAX_SKIPPED_LISTED = 200  # the count is always whole; the list of which rows stops here


def record_lines(source: str, n_records: int) -> list[int] | None:
    """The file line on which each record starts (JSON lines, CSV, TSV), or None where records have
    no line of their own (a JSON array, Parquet, builtin:, hub:) or the count does not match."""
    import csv
    import io

    from .load import decode_text

    src = str(source)
    p = Path(src).expanduser()
    if src.startswith(("builtin:", "hub:")) or not p.is_file() or p.suffix.lower() == ".parquet":
        return None
    try:
        text = decode_text(p.read_bytes(), p.name)
    except (ValueError, OSError):
        return None
    out: list[int] = []
    if text.lstrip()[:1] == "{":
        out = [n for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    elif p.suffix.lower() in (".csv", ".tsv"):
        header = text.split("\n", 1)[0]
        delimiter = "\t" if "\t" in header and ("," not in header or p.suffix.lower() == ".tsv") else ","
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        try:
            width = len(next(reader))
            prev = reader.line_num
            for values in reader:
                start, prev = prev + 1, reader.line_num
                if not values or (len(values) == 1 and not values[0].strip() and width > 1):
                    continue
                out.append(start)
        except (StopIteration, csv.Error):
            return None
    return out if len(out) == n_records else None


def write_prepared(out: str | os.PathLike, train: list[dict], val: list[dict], meta: dict) -> Path:
    """Write train.jsonl, validation.jsonl and meta.json (plus a "created" time) into `out`,
    atomically: a temporary sibling folder renamed into place, the old folder restored on failure."""
    out = Path(out).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    old = None
    try:
        _write_jsonl(tmp / "train.jsonl", train)
        _write_jsonl(tmp / "validation.jsonl", val)
        meta = {**meta, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        from ..paths import atomic_write_json
        atomic_write_json(tmp / "meta.json", meta)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}-{time.monotonic_ns()}")
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            os.replace(old, out)  # put the earlier version back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, default=str))
            f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def load_prepared(dir_or_source: str, *, val_ratio: float = DEFAULT_VAL_RATIO,
                  seed: int = DEFAULT_SEED) -> tuple[list[dict], list[dict], str]:
    """(train_rows, validation_rows, kind) from a prepared folder (one with meta.json), a prepared
    dataset's name under FINETUNE_HOME/datasets, or any raw source (converted, then split with
    val_ratio and seed; a prepared folder keeps its own split)."""
    src = str(dir_or_source)
    from ..sources import check_source
    check_source(src)
    p = Path(src).expanduser()
    if is_safe_name(src):
        from ..paths import datasets_dir
        p = datasets_dir() / src  # a bare name is a saved dataset, never a file in the working folder
    if p.is_dir():
        return read_prepared(p)
    records = load_records(src)
    det_fmt = detect_format(records).format
    rows, kind = to_canonical(records, source=_display_name(src))
    train, val = split_records(rows, val_ratio, seed, stratify_key=_stratify_key(det_fmt, kind))
    return train, val, kind
