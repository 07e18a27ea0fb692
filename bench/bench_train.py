"""Benchmark the default demo run: our CPU settings vs TRL's GPU-tuned defaults, side by side.

    python bench/bench_train.py [--steps 200]

Both variants train builtin:tiny-chat with LoRA on builtin:demo for the same number of steps in this
process. Ours: length-grouped batches, no gradient checkpointing, threads = cores. Baseline: what
TRL's SFTConfig does by default (random batches, gradient checkpointing on). Prints seconds,
tokens/s and the final training loss for each.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("FINETUNE_HOME", tempfile.mkdtemp(prefix="fts-bench-"))


def run(variant: str, steps: int) -> dict:
    from datasets import Dataset
    from trl import SFTTrainer

    from finetune.config import default_run_config, to_peft_config, to_sft_config
    from finetune.data import load_prepared
    from finetune.modeling import load_model, load_tokenizer, set_threads
    from finetune.tokenize import tokenize_rows

    set_threads()
    cfg = default_run_config(max_steps=steps, eval_steps=0, save_steps=10**6)
    tok = load_tokenizer(cfg.model.model_id)
    train_rows, _, kind = load_prepared(cfg.data.source)
    examples, summary = tokenize_rows(tok, train_rows, kind, cfg.data.max_seq_len)
    args = to_sft_config(cfg, tempfile.mkdtemp(), has_eval=False)
    if variant == "baseline":
        args.gradient_checkpointing = True
        args.train_sampling_strategy = "random"
    trainer = SFTTrainer(model=load_model(cfg.model.model_id), args=args, train_dataset=Dataset.from_list(examples),
                         processing_class=tok, peft_config=to_peft_config(cfg))
    t0 = time.perf_counter()
    res = trainer.train()
    secs = time.perf_counter() - t0
    tokens = trainer.state.num_input_tokens_seen
    return {"variant": variant, "seconds": secs, "tokens_per_s": tokens / secs, "train_loss": res.training_loss}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    a = ap.parse_args()
    rows = [run("ours", a.steps), run("baseline", a.steps)]
    print(f"\n{'variant':<10} {'seconds':>8} {'tokens/s':>10} {'loss':>8}   ({a.steps} steps, {os.cpu_count()} cores)")
    for r in rows:
        print(f"{r['variant']:<10} {r['seconds']:>8.1f} {r['tokens_per_s']:>10.0f} {r['train_loss']:>8.3f}")
    print(f"speed-up: {rows[1]['seconds'] / rows[0]['seconds']:.2f}x")


if __name__ == "__main__":
    main()
