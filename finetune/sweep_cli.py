"""`finetune sweep`: hyperparameter search within a budget (finetune/sweep.py), kept apart from cli.py.

    python -m finetune sweep --model M --data D --trials N [--budget-min X] [--budget-usd Y]
                             [--objective eval_loss|exact_match|...] [--hardware TIER] --json
        -> {"study_id", "trials": [...], "best": {...}, "state", "plan": {...}}   (waits for the end)
    python -m finetune sweep ... --no-wait --json          # starts it in the background: {"study_id", ...}
    python -m finetune sweep --show STUDY_ID --json        # the same object, for any study
    python -m finetune sweep --list --json | --stop STUDY_ID | --resume STUDY_ID | --plan-only
"""

from __future__ import annotations

import argparse

def parse_ranges(a) -> dict:
    ranges = {}
    for key, text in (("learning_rate", a.lr_range), ("epochs", a.epochs_range), ("lora_dropout", a.dropout_range)):
        if text:
            parts = text.split(",")
            if len(parts) != 2:
                raise ValueError(f"--{key.replace('_', '-')}-range: expected LOW,HIGH, got {text!r}")
            ranges[key] = (float(parts[0]), float(parts[1]))
    if a.rank_choices:
        ranges["lora_r"] = [int(x) for x in a.rank_choices.split(",") if x.strip()]
    return ranges


def parse_try(items: list[str] | None) -> list[dict]:
    """--try learning_rate=1e-4,lora_r=8 (repeatable): trials to run first, in order."""
    out = []
    for item in items or []:
        params = {}
        for pair in item.split(","):
            if "=" not in pair:
                raise ValueError(f"--try {item!r}: expected NAME=VALUE[,NAME=VALUE]")
            k, v = (x.strip() for x in pair.split("=", 1))
            params[k] = int(v) if k in ("lora_r", "lora_alpha_x") else float(v)
        out.append(params)
    return out


def cmd_sweep(a) -> dict:
    from . import sweep

    if a.drive or a.resume:
        from .sweep_run import run_study

        if a.resume and not a.drive:
            doc = sweep.read_study(a.resume)
            if doc.get("state") in sweep.ACTIVE_STATES:
                raise ValueError(f"study {a.resume} is {doc['state']}: it is still going")
        return sweep.summary(run_study(a.drive or a.resume))
    if a.show:
        return sweep.summary(sweep.read_study(a.show))
    if a.stop:
        return sweep.summary(sweep.stop_study(a.stop))
    if a.list:
        return {"studies": sweep.list_studies()}
    p = sweep.plan_study(a.model, a.data, trials=a.trials, budget_min=a.budget_min,
                         budget_usd=a.budget_usd, hardware=a.hardware, objective=a.objective, method=a.method,
                         ranges=parse_ranges(a), seed=a.seed, prune=not a.no_prune)
    if a.plan_only:
        return sweep.summary(dict(p, study_id=None, trials=[], state="planned"))
    study_id = sweep.create_study(p, enqueue=parse_try(a.try_params))
    if a.no_wait:
        sweep.start_study(study_id)
        return sweep.summary(sweep.read_study(study_id))
    from .sweep_run import run_study

    return sweep.summary(run_study(study_id))


def add_commands(sub, js: argparse.ArgumentParser) -> None:
    from .builtin import DEMO_DATASET_ID, TINY_CHAT_ID
    from .sweep import OBJECTIVES, SWEEP_METHODS

    s = sub.add_parser("sweep", parents=[js], help="hyperparameter search within a budget (Optuna): trials are runs",
                       description="Search learning rate, epochs and LoRA rank/alpha/dropout around the Plan's "
                       "settings; the budget (trials, minutes or dollars) becomes a trial count and length. Waits "
                       "for the end unless --no-wait.")
    s.add_argument("--model", default=TINY_CHAT_ID)
    s.add_argument("--data", default=DEMO_DATASET_ID)
    s.add_argument("--method", default="lora", choices=list(SWEEP_METHODS))
    s.add_argument("--trials", type=int, default=None, help="number of trials (default: what the budget holds, or 10)")
    s.add_argument("--budget-min", type=float, default=None, help="time budget in minutes")
    s.add_argument("--budget-usd", type=float, default=None, help="money budget in US dollars (at --hardware's price)")
    s.add_argument("--hardware", default="local", help="the tier this runs on, for time and price (default local)")
    s.add_argument("--objective", default="eval_loss", choices=list(OBJECTIVES),
                   help="validation loss, or a task metric of the evaluation (slower: each trial is evaluated)")
    s.add_argument("--lr-range", default=None, metavar="LOW,HIGH", help="learning rate range (log scale)")
    s.add_argument("--epochs-range", default=None, metavar="LOW,HIGH")
    s.add_argument("--dropout-range", default=None, metavar="LOW,HIGH")
    s.add_argument("--rank-choices", default=None, metavar="R,R,...", help="LoRA ranks to try")
    s.add_argument("--try", dest="try_params", action="append", metavar="NAME=VALUE,...",
                   help="a trial to run first (repeatable); names: learning_rate, epochs, lora_r, lora_alpha_x, "
                        "lora_dropout (default: the Plan's settings)")
    s.add_argument("--seed", type=int, default=42, help="the TPE sampler's seed")
    s.add_argument("--no-prune", action="store_true", help="run every trial to its end (no median pruner)")
    s.add_argument("--no-wait", action="store_true", help="start it in the background and return its id")
    s.add_argument("--plan-only", action="store_true", help="say what the budget buys, start nothing")
    s.add_argument("--show", default=None, metavar="STUDY_ID", help="a study's trials, best and state")
    s.add_argument("--list", action="store_true", help="all studies")
    s.add_argument("--stop", default=None, metavar="STUDY_ID", help="stop a search (its running trial is saved)")
    s.add_argument("--resume", default=None, metavar="STUDY_ID", help="continue an interrupted or stopped study")
    s.add_argument("--drive", default=None, help=argparse.SUPPRESS)  # the app's driver child
    s.set_defaults(fn=cmd_sweep)

