"""The driver of a hyperparameter search: asks Optuna for a trial, runs it as a normal training run,
tells Optuna how it went, and keeps study.json current (trials, best, parameter importance).

    python -m finetune sweep --drive STUDY_ID     # what the app starts as a child process
    run_study(study_id)                           # what `finetune sweep ... --json` calls in-process

One trial at a time, through the runs queue (finetune.runs.start_run), so a search shares the device
with other runs the same way they share it among themselves. A trial ends as complete (its objective:
the kept adapter's validation loss, or a task metric of finetune.evaluate), pruned (the training child
stopped it, finetune/sweep_trial.py), stopped (the search was stopped) or failed (its error is kept).
The search ends when its trials are done, its budget is spent (no trial starts that would not fit),
or a STOP file asks it to; a driver started again (`--resume`) continues an interrupted study.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .paths import atomic_write_json, read_json
from .runs import now_iso
from .sweep import ACTIVE_STATES, PARAMS, read_study, update_study
from .sweep_trial import TRIAL_FILE, load_optuna_study, study_dir

TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_DISABLE_IMPLICIT_TOKEN", "FINETUNE_TOKEN_SCOPED")
POLL_S = 0.5


def suggest(trial, space: dict) -> dict:
    """The trial's parameters from the study's space (see finetune.sweep.search_space)."""
    out = {}
    for name in PARAMS:
        s = space[name]
        if "choices" in s:
            out[name] = trial.suggest_categorical(name, s["choices"])
        elif name == "epochs":
            out[name] = trial.suggest_float(name, s["low"], s["high"], step=s.get("step", 0.5))
        else:
            out[name] = trial.suggest_float(name, s["low"], s["high"], log=bool(s.get("log")))
    # values people can read and retype: 3 significant digits (the sampler keeps its own exact draw)
    out["learning_rate"] = float(f"{out['learning_rate']:.3g}")
    out["lora_dropout"] = round(out["lora_dropout"], 3)
    return out


def trial_config(doc: dict, params: dict, number: int):
    """The run config of one trial: the Plan's base run with the trial's parameters."""
    from .config import RunConfig

    d = dict(doc["base_config"])
    r = int(params["lora_r"])
    d["train"] = dict(d["train"], learning_rate=float(params["learning_rate"]), epochs=float(params["epochs"]),
                      max_steps=0, eval_steps=int(doc["eval_steps"]), num_processes=1,
                      keep_best=True, early_stopping_patience=0)
    d["lora"] = dict(d["lora"], r=r, alpha=int(params["lora_alpha_x"]) * r, dropout=float(params["lora_dropout"]))
    d["name"] = f"sweep-{doc['study_id'][-4:]}-t{number}"
    d["owner"] = doc.get("owner") or ""
    return RunConfig.from_dict(d)


def shown_params(params: dict) -> dict:
    """The parameters as a run uses them (alpha as a number, not a multiple of the rank)."""
    out = {k: v for k, v in params.items() if k != "lora_alpha_x"}
    out["lora_alpha"] = int(params["lora_alpha_x"]) * int(params["lora_r"])
    return out


def objective_value(doc: dict, run_id: str, st: dict) -> float:
    """The trial's objective: the kept adapter's validation loss, or a metric of its evaluation."""
    name = doc["objective"]
    if name == "eval_loss":
        v = next((st[k] for k in ("best_eval_loss", "final_eval_loss", "eval_loss") if st.get(k) is not None), None)
        if v is None:
            raise ValueError("the run logged no validation loss")
        return float(v)
    from .evaluate import evaluate_run

    report = evaluate_run(run_id, max_examples=100, probes=False)
    v = (report.get("metrics") or {}).get(name)
    if v is None:
        raise ValueError(f"the evaluation has no {name} for this data (it has "
                         f"{', '.join(k for k, x in (report.get('metrics') or {}).items() if x is not None)})")
    return float(v)


def param_importance(study) -> dict | None:
    """Parameter importance (Optuna's default evaluator) once 3 trials are complete, else None."""
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 3:
        return None
    try:
        imp = optuna.importance.get_param_importances(study)
    except Exception:  # noqa: BLE001 -- e.g. every complete trial had the same parameters
        try:
            imp = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
        except Exception:  # noqa: BLE001
            return None
    return {("lora_alpha" if k == "lora_alpha_x" else k): round(float(v), 4) for k, v in imp.items()}


def _best(doc: dict) -> dict | None:
    done = [t for t in doc["trials"] if t.get("state") == "complete" and t.get("value") is not None]
    if not done:
        return None
    pick = min if doc["direction"] == "minimize" else max
    b = pick(done, key=lambda t: t["value"])
    return {k: b.get(k) for k in ("number", "run_id", "value", "params")}


def _update_trial(d: Path, number: int, **fields) -> dict:
    def change(doc: dict) -> None:
        for t in doc["trials"]:
            if t["number"] == number:
                t.update(fields)
        doc["best"] = _best(doc)

    return update_study(d, change)


def _wait_run(d: Path, run_id: str) -> tuple[dict, bool]:
    """Follow the trial's run to its end; a STOP of the study stops it (saved). Returns (status, asked_to_stop)."""
    from . import runs

    asked = False
    while True:
        st = runs.read_status(run_id)
        if st.get("waiting"):
            runs.dispatch()
        if st.get("state") not in runs.ACTIVE:
            proc = runs.CHILDREN.get(run_id)
            if proc is not None:
                proc.wait(timeout=30)
            return runs.read_status(run_id), asked
        if (d / "STOP").exists() and not asked:
            asked = True
            runs.stop_run(run_id)
        proc = runs.CHILDREN.get(run_id)
        try:
            if proc is not None and proc.poll() is None:
                proc.wait(timeout=POLL_S)
            else:
                time.sleep(POLL_S)
        except Exception:  # noqa: BLE001 -- subprocess.TimeoutExpired: poll again
            pass


def _fail_leftovers(d: Path, study) -> None:
    """A driver that died left a trial RUNNING in Optuna and in study.json: mark it failed."""
    import optuna

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)

    def change(doc: dict) -> None:
        for t in doc.get("trials") or []:
            if t.get("state") in ACTIVE_STATES:
                t.update(state="failed", error="the search's driver ended while this trial ran")

    update_study(d, change)


def run_trial(d: Path, study, env: dict) -> str:
    """Ask, train, tell: one trial. Returns its state."""
    import optuna

    from . import runs

    doc = read_json(d / "study.json", default={}) or {}
    trial = study.ask()
    params = suggest(trial, doc["space"])
    cfg = trial_config(doc, params, trial.number)
    run_id = runs.create_run(cfg)
    rd = runs.run_dir(run_id)
    atomic_write_json(rd / TRIAL_FILE, {"study_id": doc["study_id"], "number": trial.number})
    runs.update_status(rd, study_id=doc["study_id"], trial_number=trial.number)
    update_study(d, lambda doc: doc["trials"].append({"number": trial.number, "run_id": run_id,
                                                      "params": shown_params(params), "state": "running",
                                                      "value": None, "started": now_iso()}))
    t0 = time.time()
    runs.start_run(run_id, env=env)
    st, stopped = _wait_run(d, run_id)
    out = {"duration_s": round(time.time() - t0, 1), "steps": st.get("step"), "total_steps": st.get("total_steps"),
           "intermediate": {str(k): round(v, 5) for k, v in
                            next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
                            .intermediate_values.items()}}
    if st.get("state") == "completed":
        try:
            value = objective_value(doc, run_id, st)
        except Exception as exc:  # noqa: BLE001 -- a trial's failure is the trial's, not the search's
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            _update_trial(d, trial.number, state="failed", error=str(exc)[:300], **out)
            return "failed"
        study.tell(trial, value)
        _update_trial(d, trial.number, state="complete", value=round(value, 6), **out)
        return "complete"
    if st.get("state") == "stopped" and st.get("pruned"):
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        _update_trial(d, trial.number, state="pruned", pruned_at_step=st.get("pruned_at_step"),
                      reason=st.get("prune_reason"), **out)
        return "pruned"
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    state = "stopped" if st.get("state") == "stopped" or stopped else "failed"
    _update_trial(d, trial.number, state=state, error=st.get("error"), **out)
    return state


def run_study(study_id: str) -> dict:
    """Run the study's remaining trials here; returns the study (read_study) when it ends."""
    import optuna

    d = study_dir(study_id)

    def started(doc: dict) -> None:  # a stop asked before this driver started stays "stopping"
        if doc.get("state") != "stopping":  # a STOP left by a driver that never ran is not a new stop
            (d / "STOP").unlink(missing_ok=True)
        doc.update(state="stopping" if (d / "STOP").exists() else "running", driver_pid=os.getpid(),
                   started=doc.get("started") or now_iso(), error=None)

    doc = update_study(d, started)
    env = {k: os.environ[k] for k in TOKEN_VARS if k in os.environ}
    seed = int(doc.get("seed", 42)) + len(doc.get("trials") or [])  # a resumed study draws new trials
    study = load_optuna_study(d, optuna.samplers.TPESampler(seed=seed))
    _fail_leftovers(d, study)
    t_start, before = time.time(), float(doc.get("elapsed_s") or 0.0)
    end, reason = "completed", None
    try:
        while True:
            doc = read_json(d / "study.json", default={}) or {}
            finished = len([t for t in doc["trials"] if t.get("state") not in ACTIVE_STATES])
            spent = before + time.time() - t_start
            if (d / "STOP").exists():
                end, reason = "stopped", "stopped on request"
                break
            if finished >= doc["n_trials"]:
                break
            if doc.get("budget_s") and spent + 0.5 * float(doc["trial_s_estimate"]) > float(doc["budget_s"]):
                reason = f"budget reached: {spent / 60:.1f} of {float(doc['budget_s']) / 60:.0f} min spent"
                break
            run_trial(d, study, env)
            update_study(d, importance=param_importance(study), elapsed_s=round(before + time.time() - t_start, 1))
    except KeyboardInterrupt:
        end, reason = "stopped", "interrupted"
    except Exception as exc:  # noqa: BLE001 -- the study says why it ended
        from .train import redact

        end, reason = "failed", redact(f"{type(exc).__name__}: {exc}")[:400]
    finally:
        update_study(d, lambda doc: (d / "STOP").unlink(missing_ok=True), state=end, ended=now_iso(),
                     end_reason=reason, error=reason if end == "failed" else None,
                     elapsed_s=round(before + time.time() - t_start, 1))
    return read_study(study_id)
