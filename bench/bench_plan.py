"""Time the planner: 100 plan() calls per case, printed as ms/call beside the 100 ms budget.

The planner runs on every change of a form field in the Plan tab, so it must answer well under
100 ms. Run: python bench/bench_plan.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.plan import PlanRequest, plan  # noqa: E402

CASES = [
    PlanRequest(),
    PlanRequest(model="meta-llama/Llama-3.1-8B-Instruct", hardware="t4-small"),
    PlanRequest(model="Qwen/Qwen2.5-72B-Instruct", hardware="a100x8", examples=50_000),
    PlanRequest(model="Qwen/Qwen2.5-7B-Instruct", has_preferences=True, hardware="l4x1"),
    # calibrated by a dry run (finetune.plan.calibrate): the measured throughput replaces the assumed MFU
    PlanRequest(examples=429, mean_tokens=23, epochs=20, batch_size=8, seq_len=256,
                measured_tokens_per_s=4500.0, measured_overhead_s=2.0),
]
BUDGET_MS = 100.0
N = 100


def main() -> None:
    t0 = time.perf_counter()
    plan(CASES[0])  # first call reads the registry and tier table and detects the hardware
    first_ms = (time.perf_counter() - t0) * 1000
    print(f"{'case':52s} {'ms/call':>8s}  (budget {BUDGET_MS:.0f} ms)")
    print(f"{'first call (loads registry, detects hardware)':52s} {first_ms:8.2f}")
    for req in CASES:
        t0 = time.perf_counter()
        for _ in range(N):
            plan(req)
        ms = (time.perf_counter() - t0) * 1000 / N
        name = req.model + " on " + req.hardware + (" (calibrated)" if req.measured_tokens_per_s else "")
        print(f"{name:52s} {ms:8.2f}")


if __name__ == "__main__":
    main()
