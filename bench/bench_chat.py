"""Benchmark of the chat playground's streaming: time to first token and tokens/s of
finetune.chat.stream_answer against one plain greedy `generate` call (the baseline: the whole answer
at once), on the real SmolLM2-135M-Instruct built-in (offline) and the tiny built-in model.

Prints, per model: the baseline's total seconds, the streamed answer's time to first visible text,
its total seconds and the number of partial texts, and whether both answers are the same text.

Run: `python bench/bench_chat.py [--max-new-tokens 64]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("FINETUNE_MODELS_DIR", str(Path.home() / ".cache" / "fine-tune-studio" / "models"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-new-tokens", type=int, default=64)
    a = ap.parse_args()
    from finetune.chat import stream_answer
    from finetune.modeling import generate, load_for_inference, set_threads

    set_threads()
    msgs = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Write three sentences about the sea."}]
    print(f"{'model':34} {'baseline s':>10} {'first text s':>12} {'stream s':>9} {'partials':>8} same")
    for model_id in ("builtin:tiny-chat", "builtin:smollm2-135m-instruct"):
        mdl, tok = load_for_inference(model_id)
        generate(mdl, tok, [msgs], max_new_tokens=4)  # warm-up
        t0 = time.perf_counter()
        want = generate(mdl, tok, [msgs], max_new_tokens=a.max_new_tokens)[0]
        base_s = time.perf_counter() - t0
        t0, first, parts = time.perf_counter(), None, []
        for text in stream_answer(mdl, tok, msgs, max_new_tokens=a.max_new_tokens):
            first = first or time.perf_counter() - t0
            parts.append(text)
        total = time.perf_counter() - t0
        print(f"{model_id:34} {base_s:10.3f} {first:12.3f} {total:9.3f} {len(parts):8d} {parts[-1] == want}")


if __name__ == "__main__":
    main()
