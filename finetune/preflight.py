"""Preflight: the checks a run must pass before its folder is created, the same for UI, CLI and API.

`preflight(cfg)` resolves the data source to an absolute path (the training child runs in another
folder), checks that the memory estimate fits this machine, that the model can be loaded (offline:
the same explanation the Plan gives for a model it does not know), and that the data yields trained
tokens. A failure raises `PreflightError` with one clear message naming the field; nothing is written.
`runs.start_training` calls it, so every way of starting a run goes through it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .config import RunConfig

SAMPLE_ROWS = 256  # rows tokenized to prove the data trains something: enough to be sure, fast to check


class PreflightError(ValueError):
    """A run that must not start, with the field it is about."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def resolve_source(source: str, base_dir: str | os.PathLike | None = None) -> str:
    """builtin:/hub: sources and saved dataset names as they are; a path made absolute against
    base_dir (default: the current folder). A path that does not exist is refused here."""
    src = (source or "").strip()
    if not src:
        raise PreflightError("data.source", "is empty: choose builtin:demo, a saved dataset or a file")
    if src.startswith(("builtin:", "hub:")):
        return src
    p = Path(src).expanduser()
    if not p.is_absolute():
        p = Path(base_dir or os.getcwd()) / p
    if p.exists():
        return str(p.resolve())
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", src) and ".." not in src:
        from .paths import datasets_dir

        cand = datasets_dir() / src
        if (cand / "meta.json").is_file():
            return str(cand.resolve())
        # rows saved from the chat playground: datasets/NAME.jsonl, by NAME or NAME.jsonl
        for rows in (cand, datasets_dir() / f"{src}.jsonl"):
            if rows.suffix == ".jsonl" and rows.is_file():
                return str(rows.resolve())
    raise PreflightError("data.source", f"{src} not found (looked at {p} and for a saved dataset named so "
                         "under the datasets folder)")


def resolve_model_path(model_id: str, base_dir: str | os.PathLike | None = None) -> str:
    """A local model folder given relative to the caller becomes absolute; ids stay as they are."""
    mid = model_id.strip()
    if mid.startswith("builtin:"):
        return mid
    p = Path(mid).expanduser()
    if not p.is_absolute():
        p = Path(base_dir or os.getcwd()) / p
    return str(p.resolve()) if p.is_dir() else mid  # like transformers: an existing folder wins


def check_memory(cfg: RunConfig) -> dict | None:
    """The planner's estimate for this run on this machine; raises when it will not fit.
    None when the model is unknown to the planner (the model check below explains that case)."""
    from .plan import estimate_run_memory

    method = cfg.train.method
    try:
        p = estimate_run_memory(cfg.model.model_id, method, cfg.data.max_seq_len, cfg.train.batch_size, cfg.lora.r,
                                cfg.train.gradient_checkpointing)
    except ValueError:
        return None
    est = {"vram_gb": p["vram_gb"], "usable_memory_gb": p["usable_gb"], "fits": p["fits"]}
    first, asked = p, (cfg.train.batch_size, cfg.train.grad_accum)
    b = cfg.train.batch_size
    floor = 2 if method == "kto" else 1  # TRL's KTO needs two rows a step (its KL term pairs them)
    # The same effective batch in smaller pieces: a divisor of the batch, with accumulation making up the rest
    # (the same loss: the Trainer normalises by the tokens of the whole accumulated batch; for GRPO the
    # same number of sampled answers per update).
    while not p.get("fits") and b > floor:
        b = max(d for d in range(1, b) if asked[0] % d == 0)
        if b < floor:
            break
        p = estimate_run_memory(cfg.model.model_id, method, cfg.data.max_seq_len, b, cfg.lora.r,
                                cfg.train.gradient_checkpointing)
        if p.get("fits"):
            accum = asked[1] * (asked[0] // b)
            cfg.train.batch_size, cfg.train.grad_accum = b, accum
            est = {"vram_gb": p["vram_gb"], "usable_memory_gb": p["usable_gb"], "fits": True,
                   "note": (f"batch {asked[0]} x {cfg.data.max_seq_len} tokens would need more memory than the "
                            f"{p['usable_gb']} GB usable here: training at batch {b} with {accum} accumulation "
                            f"steps (effective batch {b * accum}, was {asked[0] * asked[1]})")}
            return est
    if not p.get("fits"):
        p = first
        raise PreflightError("train.batch_size", (
            f"the memory estimate is {p['vram_gb']:.1f} GB and this machine has {p['usable_gb']} GB "
            f"usable for {cfg.model.model_id} with {method}, batch {cfg.train.batch_size} x "
            f"{cfg.data.max_seq_len} tokens: lower the batch size or max sequence length, turn on gradient "
            "checkpointing, use QLoRA on a GPU, or pick a smaller model"))
    return est


def check_model(cfg: RunConfig):
    """Load the model's tokenizer (a few files, no weights): proves the model is reachable."""
    from .modeling import load_tokenizer

    mid = cfg.model.model_id
    try:
        return load_tokenizer(mid, trust_remote_code=cfg.model.trust_remote_code)
    except ValueError as exc:
        raise PreflightError("model.model_id", str(exc)) from None
    except Exception as exc:  # noqa: BLE001 -- OSError, HF errors: all mean "cannot load it"
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        if mid.startswith("builtin:"):
            raise PreflightError("model.model_id", f"built-in model {mid} could not be built: {exc}") from None
        if Path(mid).expanduser().exists():
            raise PreflightError("model.model_id", f"{mid} is a folder but not a loadable model "
                                 f"({type(exc).__name__}: {str(exc)[:200]})") from None
        why = ("this machine is offline and the model is not in the local Hugging Face cache"
               if offline else f"it could not be loaded from the Hub ({type(exc).__name__}: {str(exc)[:160]})")
        raise PreflightError("model.model_id", (
            f"unknown model {mid}: {why}. Use builtin:tiny-chat, builtin:smollm2-135m-instruct, a local model folder, or a model "
            "downloaded earlier (check the spelling: org/name)")) from None


def check_data(cfg: RunConfig, tokenizer) -> dict:
    """Load the data as training will and tokenize a sample: refuse data that trains no token."""
    from .data import load_prepared
    from .tokenize import TokenizeError, tokenize_rows

    if cfg.train.method == "grpo":  # prompts (and reference answers) scored by rewards: finetune/grpo.py
        from .grpo import check_grpo

        try:
            return check_grpo(cfg)
        except (ValueError, OSError) as exc:
            field = getattr(exc, "field", None) or "data.source"
            raise PreflightError(field, str(exc).removeprefix(field + ": ")) from None
    try:
        train_rows, val_rows, kind = load_prepared(cfg.data.source, val_ratio=cfg.data.val_ratio, seed=cfg.data.seed)
    except (ValueError, OSError) as exc:
        raise PreflightError("data.source", str(exc)) from None
    if not train_rows:
        raise PreflightError("data.source", "the training split has no rows")
    out = {"kind": kind, "rows_train": len(train_rows), "rows_validation": len(val_rows)}
    if cfg.train.method == "dpo":
        if kind != "preference":
            raise PreflightError("data.source", f"DPO needs preference rows (prompt/chosen/rejected), this "
                                 f"dataset is {kind!r}")
        return out
    if kind not in ("messages", "prompt_completion", "text"):
        raise PreflightError("data.source", f"{kind!r} rows are for DPO/KTO, not supervised fine-tuning; "
                             "choose method dpo or another dataset")
    try:
        _rows, summary = tokenize_rows(tokenizer, train_rows[:SAMPLE_ROWS], kind, cfg.data.max_seq_len)
    except TokenizeError as exc:
        raise PreflightError("data.source", f"cannot tokenize with {cfg.model.model_id}'s tokenizer: {exc}") from None
    if summary["trained_tokens"] == 0:
        raise PreflightError("data.source", (
            f"no token would be trained in the first {summary['rows']} rows (every label is masked or cut "
            f"off at max_seq_len {cfg.data.max_seq_len}); check the chat template, that rows end with an "
            "assistant answer, and the max sequence length"))
    out["trained_tokens_sample"] = summary["trained_tokens"]
    return out


def preflight(cfg: RunConfig, *, base_dir: str | os.PathLike | None = None) -> dict:
    """Check a run before it is created; resolve its paths in cfg (in place). Returns what was found:
    {"data_source", "model", "memory", "data"}. Raises PreflightError with one clear message."""
    cfg.data.source = resolve_source(cfg.data.source, base_dir)
    cfg.model.model_id = resolve_model_path(cfg.model.model_id, base_dir)
    memory = check_memory(cfg)
    tok = check_model(cfg)
    data = check_data(cfg, tok)
    return {"data_source": cfg.data.source, "model": cfg.model.model_id, "memory": memory, "data": data}


_DESCRIBED: dict[tuple, dict] = {}


def describe_source(source: str) -> dict:
    """What a dataset source is, cheaply, for "Will train ...": {"name", "rows", "format", "kind",
    "rows_train", "rows_validation"} (rows split only for prepared data), or with "error"."""
    import json

    from .data import detect_format, load_prepared, load_records, to_canonical

    src = (source or "").strip()
    name = src if src.startswith(("builtin:", "hub:")) or "/" not in src else Path(src).name
    out = {"name": name or "(none)", "rows": "?", "format": "?", "kind": "?", "rows_train": None,
           "rows_validation": None}
    if src.startswith("hub:"):
        return out | {"format": "Hub dataset", "kind": "loaded at start"}
    try:
        path = Path(resolve_source(src)) if not src.startswith("builtin:") else None
        key = (src, path.stat().st_mtime_ns if path is not None else 0)
        if key in _DESCRIBED:
            return _DESCRIBED[key]
        if path is not None and path.is_dir():
            meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
            c = meta.get("counts") or {}
            out |= {"format": meta.get("format"), "kind": meta.get("kind"), "rows_train": c.get("train"),
                    "rows_validation": c.get("validation"),
                    "rows": (c.get("train") or 0) + (c.get("validation") or 0)}
        elif path is None:
            train, val, kind = load_prepared(src)
            out |= {"format": detect_format(load_records(src)).format, "kind": kind,
                    "rows_train": len(train), "rows_validation": len(val),
                    "rows": len(train) + len(val)}
        else:
            records = load_records(str(path))
            fmt = detect_format(records).format
            rows, kind, skipped = to_canonical(records, on_error="skip", return_skipped=True) \
                if fmt != "unknown" else ([], "?", [])
            out |= {"format": fmt, "kind": kind, "rows": len(rows)}
            if skipped:
                out["error"] = f"{len(skipped)} invalid rows: prepare it with 'drop invalid rows' first"
        _DESCRIBED[key] = out
        return out
    except (ValueError, OSError) as exc:
        return out | {"error": str(exc).splitlines()[0][:200]}
