"""Benchmark of the dataset engine: inspect_dataset on 100,000 chat rows against a naive baseline.

Generates 100k rows in the messages format (system + user + assistant, with ~1% exact duplicates)
into a temporary JSONL file, then times, in one run:
  - baseline: a naive pure-json loop (json.loads per line + summing content lengths),
  - inspect_dataset with the built-in tokenizer (format detection, conversion, cleaning report with
    exact and near duplicates and PII, token lengths through the chat template, statistics, the
    trained-token share on a 2,000-row sample), twice: "before" counts tokens with one plain batch
    encode of every rendered conversation (tokens.FAST_TOKEN_COUNT = False), "after" with the piece
    counter (encode each unique word-with-its-space once and sum; exact, checked on a sample),
  - inspect_dataset without a tokenizer (token counts estimated as characters / 4),
and prints rows/second and CPU seconds for each, plus a breakdown by phase. The built-in tokenizer's
small vocabulary makes ~144 tokens per row here (14M tokens in all), so counting them dominated.

Run: `python bench/bench_data.py [--rows 100000]` (FINETUNE_HOME defaults to a temp folder).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ("time person year way day thing man world life hand part child eye woman place work week "
         "case point government company number group problem fact water book river garden city "
         "music letter market reason light story friend health energy paper color animal bird "
         "tree question answer morning evening window table kitchen train station museum").split()
VERBS = "explain describe compare list summarise translate suggest name find write".split()
SYSTEMS = ["You are a helpful assistant.", "You are a concise assistant. Answer briefly.",
           "You are a friendly tutor."]


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        if rows and rng.random() < 0.01:
            rows.append(rows[rng.randrange(len(rows))])  # some exact duplicates, as in real data
            continue
        q = (f"Please {rng.choice(VERBS)} the {rng.choice(WORDS)} and the {rng.choice(WORDS)} "
             f"near the {rng.choice(WORDS)} #{i}.")
        a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 40))).capitalize() + "."
        rows.append({"messages": [{"role": "system", "content": rng.choice(SYSTEMS)},
                                  {"role": "user", "content": q},
                                  {"role": "assistant", "content": a}]})
    return rows


def baseline(path: str) -> float:
    t = time.perf_counter()
    total = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            obj = json.loads(line)
            total += sum(len(m["content"]) for m in obj["messages"])
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--max-seq-len", type=int, default=128)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench_data_")
    os.environ.setdefault("FINETUNE_HOME", os.path.join(tmp, "home"))

    from finetune import data
    from finetune.data import quality, tokens
    from finetune.builtin import TINY_CHAT_ID

    path = os.path.join(tmp, "chat.jsonl")
    rows = make_rows(args.rows)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    size_mb = os.path.getsize(path) / 2**20
    print(f"{args.rows} chat rows, {size_mb:.1f} MB, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")

    t = time.perf_counter()
    tok = tokens.resolve_tokenizer(TINY_CHAT_ID)  # loading transformers is a one-off, timed apart
    t_tok = time.perf_counter() - t

    t_base = baseline(path)

    def timed(fn):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        return out, time.perf_counter() - t, time.process_time() - c

    runs = {}
    for label, fast in (("before", False), ("after", True)):
        tokens.FAST_TOKEN_COUNT = fast
        runs[label] = timed(lambda: data.inspect_dataset(path, tokenizer=tok, max_seq_len=args.max_seq_len))
    report = runs["after"][0]
    assert report["token_stats"] == runs["before"][0]["token_stats"], "fast counts differ"

    _, t_notok, _ = timed(lambda: data.inspect_dataset(path))  # token counts estimated from characters

    # Phase breakdown (the same steps inspect_dataset runs, timed one by one).
    phases = {}
    recs, phases["load"], _ = timed(lambda: data.load_records(path))
    _, phases["detect"], _ = timed(lambda: data.detect_format(recs))
    (canon, kind), phases["convert"], _ = timed(lambda: data.to_canonical(recs))
    for label, fast in (("before", False), ("after", True)):
        tokens.FAST_TOKEN_COUNT = fast
        (lengths, _), phases[f"tokens ({label})"], phases[f"tokens ({label}) cpu"] = timed(
            lambda: tokens.token_lengths(canon, kind, tok))
    _, phases["clean"], _ = timed(lambda: quality.collect_issues(canon, kind, lengths=lengths, max_seq_len=args.max_seq_len))
    _, phases["trained share (2k rows)"], _ = timed(lambda: data.trained_token_share(canon, kind, tok))

    n = args.rows
    print(f"{'step':<40}{'seconds':>9}{'rows/s':>12}{'CPU s':>9}")
    print(f"{'baseline: json.loads + len loop':<40}{t_base:>9.2f}{n / t_base:>12,.0f}")
    for label in ("before", "after"):
        _, w, c = runs[label]
        print(f"{'inspect_dataset, ' + label:<40}{w:>9.2f}{n / w:>12,.0f}{c:>9.2f}")
    print(f"{'inspect_dataset without tokenizer':<40}{t_notok:>9.2f}{n / t_notok:>12,.0f}")
    print(f"{'  (tokenizer load, once)':<40}{t_tok:>9.2f}")
    for k, v in phases.items():
        if k.endswith(" cpu"):
            continue
        cpu = phases.get(k + " cpu")
        print(f"{'  phase: ' + k:<40}{v:>9.2f}{n / v:>12,.0f}" + (f"{cpu:>9.2f}" if cpu is not None else ""))
    before, after = runs["before"], runs["after"]
    print(f"speed-up of inspect_dataset: {before[1] / after[1]:.2f}x wall, {before[2] / after[2]:.2f}x CPU; "
          f"inspect/baseline time ratio: {after[1] / t_base:.1f}x")
    print("format:", report["format"], report["confidence"], "| kind:", report["kind"],
          "| quality:", report["quality_score"])
    print("token_stats:", {k: report["token_stats"][k] for k in ("mean", "p50", "p95", "max")})
    for issue in report["issues"]:
        print(f"  {issue['rule']}: {issue['count']}")


if __name__ == "__main__":
    main()
