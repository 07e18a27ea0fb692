"""Token counting on 100,000 rows: `tokenizers`' batch encoding against our piece counter, side by side.

finetune/data/tokens.py counts tokens for the Data tab's statistics. Two ways, both exact:
  - batch encode: the Rust tokenizer's `encode_batch_fast` on every rendered row (uses every core),
  - piece counter (`_count_by_pieces`): cut each row at spaces/newlines, encode each unique piece
    once, sum per row; a sample of rows is checked against the batch encode first.
This script renders 100k chat rows (bench_data.py's generator) with the built-in model's chat
template, counts them both ways, checks that the counts agree, and prints wall and CPU seconds.
The piece counter is kept only while it is clearly faster (issue 7).

Run: `python bench/bench_tokens.py [--rows 100000] [--repeat 3]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs per method")
    args = ap.parse_args()
    os.environ.setdefault("FINETUNE_HOME", os.path.join(tempfile.mkdtemp(prefix="bench_tokens_"), "home"))

    from bench_data import make_rows

    from finetune.builtin import TINY_CHAT_ID
    from finetune.data.tokens import _count_by_pieces, _count_whole, resolve_tokenizer

    tok = resolve_tokenizer(TINY_CHAT_ID)
    backend = tok.backend_tokenizer
    convs = [r["messages"] for r in make_rows(args.rows)]
    texts = list(dict.fromkeys(tok.apply_chat_template(convs, tokenize=False)))  # as token_lengths does
    n_chars = sum(map(len, texts))
    print(f"{len(texts):,} unique rendered rows, {n_chars / 1e6:.1f} M characters, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}, tokenizer {TINY_CHAT_ID} "
          f"({backend.get_vocab_size():,} tokens, {type(backend.model).__name__})")

    def best(fn):
        runs = []
        for _ in range(args.repeat):
            t, c = time.perf_counter(), time.process_time()
            out = fn()
            runs.append((time.perf_counter() - t, time.process_time() - c, out))
        return min(runs, key=lambda r: r[0])

    whole = best(lambda: _count_whole(None, backend, texts, False))
    pieces = best(lambda: _count_by_pieces(backend, texts, False))
    assert pieces[2] is not None, "the piece counter refused this tokenizer"
    assert pieces[2] == whole[2], "counts differ"
    total = sum(whole[2])
    print(f"{total / 1e6:.1f} M tokens; counts identical: yes\n")
    print(f"{'method':<44}{'wall s':>9}{'CPU s':>9}{'rows/s':>12}")
    for label, (wall, cpu, _) in (("tokenizers encode_batch_fast (all rows)", whole),
                                  ("piece counter (unique pieces, summed)", pieces)):
        print(f"{label:<44}{wall:>9.2f}{cpu:>9.2f}{len(texts) / wall:>12,.0f}")
    print(f"\npiece counter: {whole[0] / pieces[0]:.1f}x less wall time, {whole[1] / pieces[1]:.1f}x less CPU time")


if __name__ == "__main__":
    main()
