"""Benchmark of the dataset engine: inspect_dataset on 100,000 chat rows against a naive baseline.

Generates 100k rows in the messages format (system + user + assistant, with ~1% exact duplicates)
into a temporary JSONL file, then times, in one run:
  - baseline: a naive pure-json loop (json.loads per line + summing content lengths),
  - inspect_dataset with the built-in tokenizer (format detection, conversion, cleaning report with
    exact and near duplicates and PII, token lengths through the chat template, statistics), and
  - inspect_dataset without a tokenizer (token counts estimated as characters / 4),
and prints rows/second for each, plus a breakdown by phase. Tokenizing dominates: the built-in
tokenizer's small vocabulary makes ~144 tokens per row here (14M tokens in all).

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
    tok = data._get_tokenizer(TINY_CHAT_ID)  # loading transformers is a one-off, timed apart
    t_tok = time.perf_counter() - t

    t_base = baseline(path)

    t, c = time.perf_counter(), time.process_time()
    report = data.inspect_dataset(path, tokenizer=tok, max_seq_len=args.max_seq_len)
    t_inspect, c_inspect = time.perf_counter() - t, time.process_time() - c

    t = time.perf_counter()
    data.inspect_dataset(path)  # token counts estimated from characters
    t_notok = time.perf_counter() - t

    # Phase breakdown (the same steps inspect_dataset runs, timed one by one).
    phases = {}
    t = time.perf_counter(); recs = data.load_records(path); phases["load"] = time.perf_counter() - t
    t = time.perf_counter(); data.detect_format(recs); phases["detect"] = time.perf_counter() - t
    t = time.perf_counter(); canon, kind = data.to_canonical(recs); phases["convert"] = time.perf_counter() - t
    t = time.perf_counter(); lengths, _ = data._token_lengths(canon, kind, tok); phases["tokens"] = time.perf_counter() - t
    t = time.perf_counter(); data._clean(canon, kind, lengths=lengths, max_seq_len=args.max_seq_len); phases["clean"] = time.perf_counter() - t

    n = args.rows
    print(f"{'step':<34}{'seconds':>9}{'rows/s':>12}")
    print(f"{'baseline: json.loads + len loop':<34}{t_base:>9.2f}{n / t_base:>12,.0f}")
    print(f"{'inspect_dataset (all checks)':<34}{t_inspect:>9.2f}{n / t_inspect:>12,.0f}")
    print(f"{'  (CPU seconds, all threads)':<34}{c_inspect:>9.2f}")
    print(f"{'inspect_dataset without tokenizer':<34}{t_notok:>9.2f}{n / t_notok:>12,.0f}")
    print(f"{'  (tokenizer load, once)':<34}{t_tok:>9.2f}")
    for k, v in phases.items():
        print(f"{'  phase: ' + k:<34}{v:>9.2f}{n / v:>12,.0f}")
    print(f"inspect/baseline time ratio: {t_inspect / t_base:.1f}x")
    print("format:", report["format"], report["confidence"], "| kind:", report["kind"],
          "| quality:", report["quality_score"])
    print("token_stats:", {k: report["token_stats"][k] for k in ("mean", "p50", "p95", "max")})
    for issue in report["issues"]:
        print(f"  {issue['rule']}: {issue['count']}")


if __name__ == "__main__":
    main()
