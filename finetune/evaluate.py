"""Evaluate a run: base model vs fine-tuned on the run's validation split.

Metrics: perplexity over the trained tokens (the same labels training used, from tokenize.py), and
exact match of greedy answers against the reference (after normalising case, spaces and trailing
punctuation). The base model is the same weights with the adapter switched off, so the comparison
costs one model load. Writes eval/report.json and eval/report.md atomically.

CLI: `python -m finetune eval RUN_ID [--max-examples N] --json`.
"""

from __future__ import annotations

import math
import re
import time
from contextlib import nullcontext
from pathlib import Path

from .monitor import kept_sentence
from .paths import atomic_write_json, atomic_write_text, read_json
from .runs import RunError, artifact_dir, load_config, run_dir


def normalize_answer(s: str) -> str:
    s = s.strip().lower()
    s = re.sub(r"\s+", " ", s)
    return s.strip(" .!?;:,'\"")


def exact_match(pred: str, ref: str) -> bool:
    return normalize_answer(pred) == normalize_answer(ref)


def perplexity(model, examples: list[dict], batch_size: int = 16) -> float:
    """exp(mean NLL over trained tokens) of pre-tokenized examples (input_ids, labels)."""
    import torch

    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        width = max(len(e["input_ids"]) for e in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, e in enumerate(chunk):
            n = len(e["input_ids"])
            ids[j, :n] = torch.tensor(e["input_ids"])
            labels[j, :n] = torch.tensor(e["labels"])
            mask[j, :n] = 1
        ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)),
                                                shift_labels.reshape(-1), ignore_index=-100, reduction="sum")
        total_nll += float(nll)
        total_tokens += int((shift_labels != -100).sum())
    if total_tokens == 0:
        return float("nan")
    return math.exp(min(total_nll / total_tokens, 50.0))


def _score(model, tok, examples, prompts, refs, max_new_tokens) -> dict:
    from .modeling import generate

    ppl = perplexity(model, examples)
    preds = generate(model, tok, prompts, max_new_tokens=max_new_tokens) if prompts else []
    em = [exact_match(p, r) for p, r in zip(preds, refs)]
    return {"perplexity": ppl, "exact_match": (sum(em) / len(em)) if em else None, "predictions": preds, "matches": em}


def evaluate_run(run_id: str, *, max_examples: int = 200, max_new_tokens: int = 32) -> dict:
    """Base vs fine-tuned perplexity and exact match on the run's validation split; writes the report."""
    from .data import load_prepared
    from .modeling import load_for_inference, set_threads
    from .tokenize import prompt_and_reference, prompt_text, tokenize_rows

    d = run_dir(run_id)
    cfg = load_config(run_id)
    art = artifact_dir(run_id)
    if art is None:
        raise RunError(f"run {run_id} has no trained adapter or model yet; wait until it completes or stops")
    set_threads()
    t0 = time.time()
    _, val_rows, kind = load_prepared(cfg.data.source, val_ratio=cfg.data.val_ratio, seed=cfg.data.seed)
    if not val_rows:
        raise RunError(f"run {run_id}: its dataset has no validation rows to evaluate on")
    val_rows = val_rows[:max_examples]
    model, tok = load_for_inference(cfg.model.model_id, str(art), trust_remote_code=cfg.model.trust_remote_code)
    examples, _ = tokenize_rows(tok, val_rows, kind, cfg.data.max_seq_len)
    pairs = [prompt_and_reference(r, kind) for r in val_rows]
    pairs = [p for p in pairs if p is not None]
    prompts, refs = [p for p, _ in pairs], [r for _, r in pairs]

    is_peft = hasattr(model, "disable_adapter")
    with (model.disable_adapter() if is_peft else nullcontext()):
        if is_peft:
            base = _score(model, tok, examples, prompts, refs, max_new_tokens)
    if not is_peft:  # a full fine-tune: load the base separately
        base_model, _ = load_for_inference(cfg.model.model_id, None, trust_remote_code=cfg.model.trust_remote_code)
        base = _score(base_model, tok, examples, prompts, refs, max_new_tokens)
        del base_model
    tuned = _score(model, tok, examples, prompts, refs, max_new_tokens)

    samples = []
    for i, (p, r) in enumerate(zip(prompts, refs)):
        if i >= 20:
            break
        q = prompt_text(p)
        samples.append({"prompt": q, "reference": r, "base": base["predictions"][i], "finetuned": tuned["predictions"][i],
                        "base_match": base["matches"][i], "finetuned_match": tuned["matches"][i]})

    def delta(key):
        a, b = base[key], tuned[key]
        return None if a is None or b is None else b - a

    report = {
        "run_id": run_id, "model": cfg.model.model_id, "method": cfg.train.method, "examples": len(val_rows),
        "base": {"perplexity": base["perplexity"], "exact_match": base["exact_match"]},
        "finetuned": {"perplexity": tuned["perplexity"], "exact_match": tuned["exact_match"]},
        "delta": {"perplexity": delta("perplexity"), "exact_match": delta("exact_match")},
        "samples": samples, "duration_s": round(time.time() - t0, 2),
        "kept": kept_sentence(read_json(Path(d) / "status.json", default={}) or {}),
    }
    out = Path(d) / "eval"
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", report_markdown(report))
    return report


def _fmt(v, pct=False):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def report_markdown(r: dict) -> str:
    b, f = r["base"], r["finetuned"]
    lines = [f"# Evaluation of {r['run_id']}", "",
             f"Base `{r['model']}` vs fine-tuned ({r['method']}) on {r['examples']} validation examples.", "",
             *([f"The fine-tuned adapter holds {r['kept']}.", ""] if r.get("kept") else []),
             "| metric | base | fine-tuned | change |", "|---|---|---|---|",
             f"| exact match | {_fmt(b['exact_match'], True)} | {_fmt(f['exact_match'], True)} | "
             f"{'+' if (r['delta']['exact_match'] or 0) >= 0 else ''}{_fmt(r['delta']['exact_match'], True)} |",
             f"| perplexity | {_fmt(b['perplexity'])} | {_fmt(f['perplexity'])} | {_fmt(r['delta']['perplexity'])} |",
             "", "## Samples", "", "| prompt | reference | base | fine-tuned |", "|---|---|---|---|"]
    def cell(v) -> str:  # model output may hold any control character: keep the table intact
        text = "".join(ch if ch.isprintable() else " " for ch in str(v))
        return text.replace("|", "\\|").replace("`", "'")[:80]

    for s in r["samples"][:10]:
        lines.append(f"| {cell(s['prompt'])} | {cell(s['reference'])} | {cell(s['base'])} | {cell(s['finetuned'])} |")
    return "\n".join(lines) + "\n"
