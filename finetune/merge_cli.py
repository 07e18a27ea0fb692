"""The `merge` command, kept apart from cli.py (registered there by add_commands):

    python -m finetune merge RUN_ID RUN_ID [...] --method linear|ties|dare [--weights 0.5,0.5]
                             [--density 0.5] [--name N] [--seed 0] --json

Prints one JSON object: {"run_id", "method", "combination_type", "weights", "density", "rank",
"sources", "notes", "eval_data", "summary", ...}; the new run is a run folder like a trained one
(see finetune/merge.py for the methods, their defaults and what is refused).
"""

from __future__ import annotations

import argparse


def cmd_merge(a) -> dict:
    from .merge import merge_runs

    return merge_runs(a.run_ids, method=a.method, weights=a.weights, density=a.density, name=a.name or "",
                      seed=a.seed)


def add_commands(sub, js: argparse.ArgumentParser) -> None:
    from .merge import MERGE_METHODS

    s = sub.add_parser("merge", parents=[js], help="merge two or more completed LoRA runs on one base into a new run",
                       description="Merge completed LoRA runs on the same base model with PEFT's add_weighted_adapter "
                       "into a new run that evaluates, compares and pushes like a trained one.")
    s.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    s.add_argument("--method", choices=MERGE_METHODS, default="ties",
                   help="linear (weighted sum; cat when ranks differ), ties (TIES), dare (DARE-TIES), dare_linear "
                        "(DARE with a weighted sum), cat (exact weighted sum of the updates, rank = sum of ranks)")
    s.add_argument("--weights", default=None, metavar="W1,W2,...",
                   help="one weight per run, in order (default: 1/n each for linear, dare_linear and cat; 1 each "
                        "for ties and dare)")
    s.add_argument("--density", type=float, default=None,
                   help="ties and dare: the share of each update's entries kept, above 0 and at most 1 (default 0.5)")
    s.add_argument("--name", default=None, help="a name for the new run (part of its id)")
    s.add_argument("--seed", type=int, default=0, help="seed for DARE's random drop")
    s.set_defaults(fn=cmd_merge)
