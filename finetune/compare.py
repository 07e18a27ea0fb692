"""Compare: base and fine-tuned answers side by side for the same prompts.

CLI: `python -m finetune compare RUN_ID --prompts FILE --json` (FILE: one prompt per line, or JSONL
with a "prompt" field). Without prompts, the first validation prompts of the run are used.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

from .runs import RunError, artifact_dir, load_config


def read_prompts(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise RunError(f"{path}: no such prompts file")
    prompts = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise RunError(f"{path} line {n}: invalid JSON ({e})") from None
            if not isinstance(obj.get("prompt"), str):
                raise RunError(f"{path} line {n}: field 'prompt' is missing or not text")
            prompts.append(obj["prompt"])
        else:
            prompts.append(line)
    if not prompts:
        raise RunError(f"{path}: no prompts found")
    return prompts


def compare_run(run_id: str, prompts: list[str] | None = None, *, max_new_tokens: int = 64) -> dict:
    from .modeling import generate, load_for_inference, set_threads

    cfg = load_config(run_id)
    art = artifact_dir(run_id)
    if art is None:
        raise RunError(f"run {run_id} has no trained adapter or model yet")
    if not prompts:
        from .data import load_prepared
        from .tokenize import prompt_and_reference, prompt_text

        _, val, kind = load_prepared(cfg.data.source, val_ratio=cfg.data.val_ratio, seed=cfg.data.seed)
        pairs = [prompt_and_reference(r, kind) for r in val[:8]]
        prompts = [prompt_text(p) for p, _ in [x for x in pairs if x]]
    prompts = [p for p in prompts if p and p.strip()][:64]
    if not prompts:
        raise RunError("no prompts to compare")
    set_threads()
    model, tok = load_for_inference(cfg.model.model_id, str(art), trust_remote_code=cfg.model.trust_remote_code)
    chat = tok.chat_template is not None
    inputs = [[{"role": "user", "content": p}] if chat else p for p in prompts]
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            base = generate(model, tok, inputs, max_new_tokens=max_new_tokens)
    else:
        base_model, _ = load_for_inference(cfg.model.model_id, None)
        base = generate(base_model, tok, inputs, max_new_tokens=max_new_tokens)
    with nullcontext():
        tuned = generate(model, tok, inputs, max_new_tokens=max_new_tokens)
    rows = [{"prompt": p, "base": b, "finetuned": t} for p, b, t in zip(prompts, base, tuned)]
    return {"run_id": run_id, "model": cfg.model.model_id, "rows": rows}
