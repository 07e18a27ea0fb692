"""Hyperparameter search within a budget (Optuna): plan a study, create it, read, list and stop it.

    python -m finetune sweep --model M --data D --trials N [--budget-min X] [--budget-usd Y] --json
    python -m finetune sweep --show STUDY_ID --json      # a study's trials, best and state
    python -m finetune sweep --list --json

The search space comes from the planner for this model and data (finetune/plan): the learning rate on
a log range around the Plan's (x1/4 to x4), epochs around the Plan's (x0.5 to x1.5), LoRA rank around
the Plan's, alpha as 1, 2 or 4 x rank, dropout 0 to 0.2. The first trial is the Plan's own settings,
so the best is never worse than what the Plan alone would train. A budget in minutes or dollars (at
the hardware tier's hourly price) becomes a trial count and a trial length from the Plan's time
estimate (calibrated by a dry run when one was measured here): `plan_study` says what it chose and
why. Trials are TPE-sampled (seeded) and pruned on validation loss (MedianPruner, finetune/sweep_trial.py).

Every trial is a normal run (runs/<run_id>/, tagged with the study id in status.json and trial.json).
A study lives in FINETUNE_HOME/studies/<study_id>/: study.json (settings, space, trials, best,
importance), optuna.journal (Optuna's storage), driver.log, and STOP while a stop is asked.
finetune/sweep_run.py is the driver that runs the trials (in the CLI's process, or a child of the app).
"""

from __future__ import annotations

import math
import os
import secrets
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from .paths import atomic_write_json, file_lock, read_json, slug
from .runs import now_iso, pid_alive
from .sweep_trial import StudyError, studies_dir, study_dir

# Objectives: validation loss (the trainer's) or a task metric of the evaluation (finetune.evaluate).
OBJECTIVES = {"eval_loss": "minimize", "perplexity": "minimize", "exact_match": "maximize",
              "rouge1": "maximize", "rouge2": "maximize", "rougeL": "maximize", "bleu": "maximize",
              "chrf": "maximize", "accuracy": "maximize", "macro_f1": "maximize"}
SWEEP_METHODS = ("lora", "rslora", "dora", "qlora")
PARAMS = ("learning_rate", "epochs", "lora_r", "lora_alpha_x", "lora_dropout")  # Optuna's parameter names
ACTIVE_STATES = ("queued", "running", "stopping")
DEFAULT_TRIALS, MIN_TRIALS, MAX_TRIALS = 10, 3, 100
MIN_LENGTH_SCALE = 0.1  # trials are never cut below a tenth of the Plan's length to fit a budget
EVALS_PER_TRIAL = 4  # evaluations in the shortest trial: the points where the pruner may stop it
DEFAULT_OVERHEAD_S = 30.0  # start-up of a trial (imports, model and data) when no dry run measured it
CHILDREN: dict[str, subprocess.Popen] = {}


def _nice_half(x: float) -> float:
    return max(0.5, round(x * 2) / 2)


def base_config(model: str, data: str, method: str = "lora"):
    """The Plan's run for this model and data (builtin:tiny-chat: its demo settings), and why."""
    from .builtin import TINY_CHAT_ID
    from .config import BUILTIN_DEMO_REASON, build_run_config

    if model == TINY_CHAT_ID:
        return build_run_config(model, data, {"train": {"method": method}}), BUILTIN_DEMO_REASON
    from .plan.calibrate import recommended_train

    cfg = build_run_config(model, data, {"train": {"method": method}})
    rec = recommended_train(model, data, method, seq_len=cfg.data.max_seq_len, batch_size=cfg.train.batch_size)
    cfg = build_run_config(model, data, {"train": {"method": method, **{k: rec[k] for k in
                                                                        ("learning_rate", "epochs", "grad_accum",
                                                                         "batch_size")}}})
    # The batch may be smaller than asked (memory, or small data wanting more updates per epoch): say so.
    return cfg, (f"learning rate: {rec['why']['learning_rate']}; epochs: {rec['why']['epochs']}; "
                 f"batch {rec['batch_size']}: {rec['why']['batch_size']}; "
                 f"gradient accumulation {rec['grad_accum']}: {rec['why']['grad_accum']}")


def _seconds_per_epoch(cfg, examples: int, mean_tokens: int, hardware: str) -> tuple[float, float, bool]:
    """(training seconds per epoch, start-up seconds, calibrated) from the Plan's time estimate."""
    from .plan import PlanRequest, plan
    from .plan.calibrate import calibration_fields, load_calibration

    cal = calibration_fields(load_calibration(cfg.model.model_id)) if hardware == "local" else {}
    t = cfg.train
    req = PlanRequest(model=cfg.model.model_id, method=t.method, examples=max(1, examples),
                      mean_tokens=min(cal.get("mean_tokens") or mean_tokens, cfg.data.max_seq_len),
                      seq_len=cfg.data.max_seq_len, batch_size=t.batch_size, epochs=min(100.0, t.epochs),
                      lora_rank=cfg.lora.r, gradient_checkpointing=t.gradient_checkpointing, hardware=hardware,
                      **{k: v for k, v in cal.items() if k != "mean_tokens"})
    p = plan(req)
    overhead = float(p["time"].get("overhead_s") or 0.0) if p["calibrated"] else DEFAULT_OVERHEAD_S
    return max(0.0, float(p["time_s"]) - overhead) / max(t.epochs, 1e-9), overhead, bool(p["calibrated"])


def _budget_s(budget_min, budget_usd, price: float, notes: list[str]) -> float | None:
    limits = []
    if budget_min is not None:
        limits.append(float(budget_min) * 60)
    if budget_usd is not None:
        if price > 0:
            limits.append(float(budget_usd) / price * 3600)
            notes.append(f"${float(budget_usd):g} at ${price:g}/h is {float(budget_usd) / price * 60:.0f} min")
        else:
            notes.append("this hardware tier has no hourly price (local): the dollar budget sets no limit; "
                         "choose the tier you pay for to price it")
    return min(limits) if limits else None


def choose_budget(trials: int | None, budget_s: float | None, per_epoch_s: float, overhead_s: float,
                  epochs: float) -> tuple[int, float, str]:
    """(trials, length scale, why): how many trials and how long each, within the budget.

    A trial of scale s trains s x the Plan's epochs on average and costs overhead + s x epochs x
    per_epoch_s. Without a budget: the trials asked (default 10) at the Plan's length. With one:
    the trials asked, shortened if they would not fit; or as many full-length trials as fit, at
    least 3 (shortened to fit), at most 100."""
    def cost(scale: float) -> float:
        return overhead_s + scale * epochs * per_epoch_s

    full = cost(1.0)
    if budget_s is None:
        n = trials or DEFAULT_TRIALS
        return n, 1.0, (f"{n} trials of {epochs:g} epochs on average (about {full / 60:.1f} min each, "
                        f"{n * full / 60:.0f} min in all)")
    want = trials or max(MIN_TRIALS, min(MAX_TRIALS, int(budget_s // full)))
    if want * full <= budget_s:
        return want, 1.0, (f"{want} trials of about {full / 60:.1f} min fit in {budget_s / 60:.0f} min"
                           + f" ({epochs:g} epochs on average)")
    scale = (budget_s / want - overhead_s) / max(1e-9, epochs * per_epoch_s)
    if scale >= MIN_LENGTH_SCALE:
        return want, min(1.0, scale), (f"{want} trials of {epochs:g} epochs would take {want * full / 60:.0f} min: "
                                       f"each is shortened to {scale:.0%} of that (about {cost(scale) / 60:.1f} min) "
                                       f"to fit {budget_s / 60:.0f} min")
    n = int(budget_s // cost(MIN_LENGTH_SCALE))
    if n < 1:
        raise StudyError(f"budget: {budget_s / 60:.1f} min is less than one trial needs (about "
                         f"{cost(MIN_LENGTH_SCALE) / 60:.1f} min at {MIN_LENGTH_SCALE:.0%} of {epochs:g} epochs)")
    return n, MIN_LENGTH_SCALE, (f"{budget_s / 60:.0f} min holds {n} trial(s) at {MIN_LENGTH_SCALE:.0%} of "
                                 f"{epochs:g} epochs (about {cost(MIN_LENGTH_SCALE) / 60:.1f} min each)")


def search_space(cfg, scale: float, ranges: dict | None = None) -> dict:
    """Optuna distributions (as plain dicts) around the Plan's settings; `ranges` overrides
    {"learning_rate": (lo, hi), "epochs": (lo, hi), "lora_r": [choices], "lora_dropout": (lo, hi)}."""
    lr, e, r = cfg.train.learning_rate, cfg.train.epochs * scale, cfg.lora.r
    space = {
        "learning_rate": {"low": max(1e-8, lr / 4), "high": min(1.0, lr * 4), "log": True},
        "epochs": {"low": _nice_half(e * 0.5), "high": max(_nice_half(e * 0.5), _nice_half(e * 1.5)), "step": 0.5},
        "lora_r": {"choices": sorted({max(1, min(256, int(r * f))) for f in (0.25, 0.5, 1, 2, 4)})},
        "lora_alpha_x": {"choices": [1, 2, 4]},
        "lora_dropout": {"low": 0.0, "high": 0.2},
    }
    for key, value in (ranges or {}).items():
        if key not in space:
            raise StudyError(f"search space: unknown parameter {key!r} (one of {', '.join(PARAMS)})")
        if "choices" in space[key]:
            space[key] = {"choices": sorted({int(v) for v in value})}
            continue
        lo, hi = float(value[0]), float(value[1])
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi or lo < 0 or (key == "learning_rate" and lo <= 0):
            raise StudyError(f"search space: {key} range {lo:g}..{hi:g} must be low <= high, above 0")
        space[key] = dict(space[key], low=lo, high=hi)
        if key == "epochs":  # yours, shortened like the Plan's when the budget asks for it
            lo, hi = _nice_half(lo * scale), _nice_half(hi * scale)
            space[key].update(low=lo, high=lo + math.floor((hi - lo) / 0.5) * 0.5)
    return space


def plan_study(model: str, data: str, *, trials: int | None = None, budget_min: float | None = None,
               budget_usd: float | None = None, hardware: str = "local", objective: str = "eval_loss",
               method: str = "lora", ranges: dict | None = None, seed: int = 42, prune: bool = True) -> dict:
    """Everything a study will do, decided before it starts: the Plan's base run, the space, the
    trial count and length within the budget, evaluation steps, the pruner, and the reasons."""
    from .data import load_prepared
    from .hardware import get_tier
    from .plan.calibrate import dataset_facts
    from .preflight import resolve_model_path, resolve_source

    if objective not in OBJECTIVES:
        raise StudyError(f"objective: {objective!r} is not one of {', '.join(OBJECTIVES)}")
    if method not in SWEEP_METHODS:
        raise StudyError(f"method: a search tunes LoRA settings; use one of {', '.join(SWEEP_METHODS)}")
    for name, v in (("trials", trials), ("budget_min", budget_min), ("budget_usd", budget_usd)):
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0
                              or not math.isfinite(v) or (name == "trials" and (v != int(v) or v > MAX_TRIALS))):
            raise StudyError(f"{name}: must be a number above 0" + (f", whole, at most {MAX_TRIALS}" if name == "trials"
                                                                     else "") + f" (got {v!r})")
    cfg, why = base_config(resolve_model_path(model), resolve_source(data), method)
    train_rows, val_rows, kind = load_prepared(cfg.data.source, val_ratio=cfg.data.val_ratio, seed=cfg.data.seed)
    if not val_rows:
        raise StudyError("data: a search needs validation rows (its objective and pruning are validation loss); "
                         "set a validation share or prepare the dataset with one")
    facts = dataset_facts(cfg.data.source, cfg.model.model_id)
    tier = get_tier(hardware)
    notes: list[str] = [f"Base: the Plan's settings for {model} ({why})."]
    budget_s = _budget_s(budget_min, budget_usd, float(tier.get("price_usd_per_h") or 0.0), notes)
    per_epoch, overhead, calibrated = _seconds_per_epoch(cfg, len(train_rows), facts["mean_tokens"], hardware)
    user_epochs = (ranges or {}).get("epochs")
    length = (float(user_epochs[0]) + float(user_epochs[1])) / 2 if user_epochs else cfg.train.epochs
    n, scale, why_n = choose_budget(int(trials) if trials else None, budget_s, per_epoch, overhead, length)
    notes.append(why_n + (" (time from a dry run on this machine)" if calibrated else
                          f" (the Plan's uncalibrated time on {hardware} plus {DEFAULT_OVERHEAD_S:.0f} s start-up; "
                          "`finetune calibrate dry-run` measures this machine)"))
    space = search_space(cfg, scale, ranges)
    trial_s = overhead + (space["epochs"]["low"] + space["epochs"]["high"]) / 2 * per_epoch
    steps_per_epoch = max(1, math.ceil(len(train_rows) / cfg.train.batch_size) // cfg.train.grad_accum)
    shortest = max(1, int(space["epochs"]["low"] * steps_per_epoch))
    eval_steps = max(1, shortest // EVALS_PER_TRIAL)
    notes.append(f"Validation loss every {eval_steps} steps ({steps_per_epoch} steps per epoch); " +
                 ("a trial whose loss is worse than the median of the finished trials at the same step is pruned "
                  "(stopped and saved)." if prune else "no pruning: every trial runs to its end."))
    startup = min(5, max(2, n // 4))  # finished trials before any is pruned: Optuna's median needs a few
    return {"model": cfg.model.model_id, "data": cfg.data.source, "method": method, "objective": objective,
            "direction": OBJECTIVES[objective], "n_trials": n, "length_scale": round(scale, 3),
            "budget_s": budget_s, "budget_min": budget_min, "budget_usd": budget_usd, "hardware": hardware,
            "trial_s_estimate": round(trial_s, 1), "seed": int(seed),
            "space": space, "eval_steps": eval_steps, "steps_per_epoch": steps_per_epoch,
            "base": {"learning_rate": cfg.train.learning_rate, "epochs": cfg.train.epochs, "lora_r": cfg.lora.r,
                     "batch_size": cfg.train.batch_size, "grad_accum": cfg.train.grad_accum,
                     "lora_alpha": cfg.lora.alpha, "lora_dropout": cfg.lora.dropout},
            "base_config": cfg.to_dict(),
            "pruner": {"kind": "median" if prune else "none", "n_startup_trials": startup,
                       "n_warmup_steps": eval_steps},
            "notes": notes}


def first_trial(p: dict) -> dict:
    """The Plan's own settings as the first trial, clipped into the space."""
    b, s = p["base"], p["space"]
    ratio = b["lora_alpha"] / max(1, b["lora_r"])
    return {"learning_rate": min(max(b["learning_rate"], s["learning_rate"]["low"]), s["learning_rate"]["high"]),
            "epochs": min(max(_nice_half(b["epochs"] * p["length_scale"]), s["epochs"]["low"]), s["epochs"]["high"]),
            "lora_r": min(s["lora_r"]["choices"], key=lambda c: abs(c - b["lora_r"])),
            "lora_alpha_x": min(s["lora_alpha_x"]["choices"], key=lambda c: abs(c - ratio)),
            "lora_dropout": min(max(b["lora_dropout"], s["lora_dropout"]["low"]), s["lora_dropout"]["high"])}


# ---------------------------------------------------------------------------------------------
# The study folder

RESULT_KEYS = ("study_id", "state", "objective", "direction", "n_trials", "trials", "best", "importance",
               "end_reason", "error", "elapsed_s")


def summary(doc: dict) -> dict:
    """A study as the CLI and the API return it: the contract keys first, then what was planned."""
    out = {k: doc.get(k) for k in RESULT_KEYS}
    out["plan"] = {k: doc.get(k) for k in ("model", "data", "method", "hardware", "length_scale", "budget_s",
                                             "trial_s_estimate", "eval_steps", "space", "base", "pruner", "notes")}
    return out


def new_study_id(model: str) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{slug(model.split('/')[-1].replace('builtin:', ''), 32, 'model')}-sweep-{secrets.token_hex(2)}"


def write_study(d: Path, doc: dict) -> dict:
    doc["updated"] = now_iso()
    atomic_write_json(d / "study.json", doc)
    return doc


def update_study(d: Path, change=None, *, only_if_state: tuple[str, ...] | None = None, **fields) -> dict:
    """Read-modify-write study.json under a lock on the study folder: the driver (trials, importance)
    and the app (stop, start) both write it, and a write from a stale read would undo the other's
    (a finished trial lost, or "stopping" turned back into "running"). `change(doc)` edits the doc in
    place; `fields` are set on it; with `only_if_state`, nothing is written unless the state is one of those."""
    with file_lock(d):
        doc = read_json(d / "study.json", default={}) or {}
        if only_if_state is not None and doc.get("state") not in only_if_state:
            return doc
        if change is not None:
            change(doc)
        doc.update(fields)
        return write_study(d, doc)


def create_study(p: dict, *, owner: str = "", enqueue: list[dict] | None = None) -> str:
    """Write a study folder from plan_study()'s result; the first trials are `enqueue` (partial
    parameter dicts), else the Plan's own settings. Checks the base run first (preflight)."""
    import optuna

    from .config import RunConfig
    from .preflight import preflight
    from .sweep_trial import make_pruner, storage

    first = enqueue if enqueue else [first_trial(p)]
    for params in first:
        bad = set(params) - set(PARAMS)
        if bad:
            raise StudyError(f"try: unknown parameter {sorted(bad)[0]!r} (one of {', '.join(PARAMS)})")
    cfg = RunConfig.from_dict(p["base_config"])
    preflight(cfg)
    study_id = new_study_id(p["model"])
    d = study_dir(study_id, must_exist=False)
    d.mkdir(parents=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=study_id, storage=storage(d), direction=p["direction"],
                                pruner=make_pruner(p["pruner"]))
    for params in first:
        study.enqueue_trial(params)
    doc = dict(p, base_config=cfg.to_dict(), study_id=study_id, owner=owner, state="queued", created=now_iso(),
               trials=[], best=None, importance=None, elapsed_s=0.0, error=None)
    write_study(d, doc)
    return study_id


def start_study(study_id: str, env: dict | None = None) -> int:
    """Run the study's driver (finetune.sweep_run) in a child process of its own; returns its pid."""
    from .runs import child_process_env

    d = study_dir(study_id)
    cmd = [sys.executable, "-m", "finetune", "sweep", "--drive", study_id]
    with open(d / "driver.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=child_process_env(env), start_new_session=True,
                                cwd=str(Path(__file__).resolve().parent.parent))
    CHILDREN[study_id] = proc

    def queued(doc: dict) -> None:  # until the driver writes its own pid and state (it may have already)
        if doc.get("driver_pid") != proc.pid:
            doc.update(driver_pid=proc.pid, state="queued")

    update_study(d, queued)
    return proc.pid


def _driver_alive(study_id: str, pid) -> bool:
    proc = CHILDREN.get(study_id)
    if proc is not None and proc.pid == pid:
        return proc.poll() is None
    if not pid or not pid_alive(int(pid)):
        return False
    from .runs import cmdline_has

    return cmdline_has(int(pid), "sweep")  # the app's driver child, or `finetune sweep ...` driving in its own process


def read_study(study_id: str) -> dict:
    """The study: settings, trials ({number, run_id, params, state, value, ...}), best, importance,
    state (queued, running, stopping, completed, stopped, failed, interrupted: its driver is gone)."""
    d = study_dir(study_id)
    doc = read_json(d / "study.json", default=None)
    if not isinstance(doc, dict):
        raise StudyError(f"study {study_id}: study.json is unreadable")
    if doc.get("state") in ACTIVE_STATES and doc.get("driver_pid") and not _driver_alive(study_id, doc["driver_pid"]):
        # Give a driver that just started a moment to write its own state.
        if time.time() - os.path.getmtime(d / "study.json") > 5:
            pid = doc["driver_pid"]

            def gone(doc: dict) -> None:  # unless a new driver took over meanwhile
                if doc.get("state") in ACTIVE_STATES and doc.get("driver_pid") == pid:
                    doc.update(state="interrupted", error="the search's driver process ended unexpectedly; "
                                                          "`finetune sweep --resume STUDY_ID` continues it")

            doc = update_study(d, gone)
    return doc


def list_studies() -> list[dict]:
    out = []
    for d in sorted(studies_dir().iterdir(), reverse=True):
        if not (d / "study.json").exists():
            continue
        try:
            s = read_study(d.name)
        except StudyError:
            continue
        out.append({k: s.get(k) for k in ("study_id", "state", "model", "data", "objective", "n_trials", "created",
                                          "owner")} | {"done": len([t for t in s["trials"] if t.get("state") not in
                                                                    ACTIVE_STATES]),
                                                       "best_value": (s.get("best") or {}).get("value")})
    return out


def stop_study(study_id: str) -> dict:
    """Ask the search to stop: its driver stops the running trial cleanly (saved) and starts no more."""
    d = study_dir(study_id)
    doc = read_study(study_id)
    if doc.get("state") not in ACTIVE_STATES:
        return doc

    def ask(doc: dict) -> None:  # under the study's lock: the driver ends (and clears STOP) under it too
        (d / "STOP").write_text(now_iso())
        doc["state"] = "stopping" if doc.get("driver_pid") else "stopped"  # never started: nothing reads STOP

    return update_study(d, ask, only_if_state=ACTIVE_STATES)


def best_settings(study_id: str) -> dict:
    """The best trial's run settings per config section ({"train": {...}, "lora": {...}, "data": {...}})
    and its run id: what "Use the best" fills into the Train tab."""
    from .runs import load_config

    best = read_study(study_id).get("best")
    if not best:
        raise StudyError(f"study {study_id} has no completed trial yet")
    cfg = load_config(best["run_id"]).to_dict()
    return {"run_id": best["run_id"], "value": best.get("value"), "params": best.get("params"),
            **{k: cfg[k] for k in ("model", "data", "lora", "train")}}
