"""Train tab, "Search" accordion: a hyperparameter search within a budget (finetune/sweep.py).

Budget fields and Start (the `sweep` API: returns the study id at once; the search runs in a child
process of the app), a live table of trials (parameters, objective, state) refreshed by a gr.Timer
while the search runs, the objective per trial and the parameter importance as plots, and "Use the
best", which fills the Train tab's fields with the best trial's settings. `sweep_status` reads a
study, `sweep_stop` stops it (its running trial is saved). A study belongs to who started it.
"""

from __future__ import annotations

import os

import gradio as gr
import pandas as pd

from finetune.builtin import DEMO_DATASET_ID, TINY_CHAT_ID

from .render import check_source, user_errors

TRIAL_COLUMNS = ["trial", "state", "value", "learning_rate", "epochs", "lora_r", "lora_alpha", "lora_dropout",
                 "steps", "run_id"]


def _num(v, name: str, whole: bool = False):
    """An optional positive number from the browser (empty: not set)."""
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise gr.Error(f"{name}: {v!r} is not a number.") from None
    if x != x or x < 0:
        raise gr.Error(f"{name} must be 0 (not set) or a positive number, got {v}.")
    if x == 0:
        return None  # 0 means "not set" in the form
    if whole and x != int(x):
        raise gr.Error(f"{name} must be a whole number, got {v}.")
    return int(x) if whole else x


def _own(study_id: str) -> dict:
    """The caller's study (another visitor's reads as missing on a public Space)."""
    from finetune import access
    from finetune.sweep import read_study

    from .guard import current

    if not study_id or not str(study_id).strip():
        raise gr.Error("No study selected.")
    doc = read_study(str(study_id).strip())
    if not access.owns(current(), doc.get("owner")):
        raise gr.Error(f"no study {study_id!r}")
    return doc


PUBLIC_MAX_TRIALS = int(os.environ.get("FINETUNE_PUBLIC_MAX_TRIALS", "8"))  # a visitor's search on a Space


@user_errors
def sweep_api(model: str, data: str, trials: float | None = None, budget_min: float | None = None,
              budget_usd: float | None = None, hardware: str = "local", objective: str = "eval_loss") -> str:
    """Start a hyperparameter search (the `sweep` API); returns its study id at once. Follow it with
    `sweep_status`. trials, budget_min (minutes) and budget_usd (dollars at the hardware tier's price)
    are optional: empty or 0 means not set."""
    from finetune import access
    from finetune.sweep import MAX_TRIALS, create_study, list_studies, plan_study, start_study

    from .guard import current

    ident = current()
    n = _num(trials, "Trials", whole=True)
    most = PUBLIC_MAX_TRIALS if ident.public else MAX_TRIALS
    if n is not None and n > most:
        raise gr.Error(f"Trials: at most {most}{' on this Space' if ident.public else ''}.")
    if ident.public and not n:
        n = PUBLIC_MAX_TRIALS  # a budget alone may not ask for more trials than a visitor may run
    from .guard import START_LOCK

    with START_LOCK:  # checked and created as one step: two calls at once cannot both pass the check
        if ident.public:
            access.check_training_limits(ident, (model or TINY_CHAT_ID).strip())
            mine = [s for s in list_studies() if s["state"] in ("queued", "running", "stopping")
                    and access.owns(ident, s.get("owner"))]
            if mine:
                raise gr.Error(f"you already have a search running ({mine[0]['study_id']}): one at a time on this Space")
        p = plan_study((model or TINY_CHAT_ID).strip(), check_source((data or DEMO_DATASET_ID).strip()), trials=n,
                       budget_min=_num(budget_min, "Budget (minutes)"), budget_usd=_num(budget_usd, "Budget (dollars)"),
                       hardware=hardware or "local", objective=objective or "eval_loss")
        study_id = create_study(p, owner=ident.owner)
    start_study(study_id, env=access.child_env(ident))
    return study_id


@user_errors
def sweep_status_api(study_id: str) -> dict:
    """A study (the `sweep_status` API): state, trials with their parameters, objective value and state
    (complete, pruned, failed, stopped, running), best, parameter importance, and the plan's notes."""
    from finetune.sweep import summary

    return _shown(summary(_own(study_id)))


def _shown(doc: dict) -> dict:
    """A study as a visitor may read it: on a public Space, without the server's folders (plan.data...)."""
    from finetune.sources import hide_server_paths_in

    from .guard import current

    return hide_server_paths_in(doc) if current().public else doc


@user_errors
def sweep_stop_api(study_id: str) -> dict:
    """Stop a search (the `sweep_stop` API): the running trial stops cleanly (saved), no more start."""
    from finetune.sweep import stop_study, summary

    return _shown(summary(stop_study(_own(study_id)["study_id"])))


def study_choices() -> list[str]:
    from finetune import access
    from finetune.sweep import list_studies

    from .guard import current

    ident = current()
    return [s["study_id"] for s in list_studies() if access.owns(ident, s.get("owner"))]


def frames(doc: dict) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(trials table, objective per trial, parameter importance) of a study."""
    rows = []
    for t in doc.get("trials") or []:
        p = t.get("params") or {}
        rows.append({"trial": t["number"], "state": t.get("state"), "value": t.get("value"),
                     **{k: p.get(k) for k in TRAIN_PARAMS},
                     "steps": f"{t.get('steps') or 0}/{t.get('total_steps') or '?'}", "run_id": t.get("run_id")})
    table = pd.DataFrame(rows, columns=TRIAL_COLUMNS)
    # a pruned trial's objective is its last validation loss: where the pruner stopped it
    pts = [{"trial": f"#{t['number']}", "value": t["value"] if t.get("value") is not None else _last(t),
            "state": t["state"]}
           for t in doc.get("trials") or [] if t.get("value") is not None or _last(t) is not None]
    values = pd.DataFrame(pts, columns=["trial", "value", "state"])
    imp = pd.DataFrame([{"parameter": k, "importance": v} for k, v in (doc.get("importance") or {}).items()],
                       columns=["parameter", "importance"])
    return table, values, imp


TRAIN_PARAMS = ["learning_rate", "epochs", "lora_r", "lora_alpha", "lora_dropout"]


def _last(t: dict):
    inter = t.get("intermediate") or {}
    return inter[max(inter, key=int)] if inter else None


def summary_md(doc: dict) -> str:
    done = [t for t in doc.get("trials") or [] if t.get("state") not in ("running",)]
    best = doc.get("best") or {}
    head = (f"**{doc['study_id']}** · {doc.get('state')} · {len(done)}/{doc.get('n_trials')} trials · objective "
            f"`{doc.get('objective')}` ({doc.get('direction')})")
    if best:
        head += f" · best: trial {best['number']} = {best['value']:.4g}"
    if doc.get("end_reason"):
        head += f" · {doc['end_reason']}"
    notes = "\n".join(f"- {n}" for n in doc.get("notes") or [])
    imp = "" if doc.get("importance") else "\n\n_Parameter importance appears once 3 trials are complete._"
    return f"{head}\n\n{notes}{imp}"


def poll(study_id: str):
    """What the panel shows for a study, and whether to keep polling."""
    if not study_id:
        return "No search yet.", *frames({}), gr.Timer(active=False)
    try:
        doc = _own(study_id)
    except (gr.Error, ValueError) as exc:
        return f"⚠️ {getattr(exc, 'message', exc)}", *frames({}), gr.Timer(active=False)
    return summary_md(doc), *frames(doc), gr.Timer(active=doc.get("state") in ("queued", "running", "stopping"))


def best_values(study_id: str, keys: list[tuple[str, str]]) -> list:
    """The best trial's run settings for the Train tab's fields `keys` ((section, field) pairs), in order."""
    from finetune.sweep import best_settings

    from .forms import fmt_lr

    s = best_settings(_own(study_id)["study_id"])
    out = []
    for section, name in keys:
        v = s[section][name]
        out.append(fmt_lr(v) if name == "learning_rate" else v)
    return out


def build(model_box, data_box, fields: dict) -> dict:
    """fields: {(section, field): Train tab component} that "Use the best" fills."""
    from finetune.hardware import tier_names
    from finetune.sweep import OBJECTIVES

    keys = list(fields)
    with gr.Accordion("Search: hyperparameters within a budget", open=False, elem_id="train-sweep"):
        gr.Markdown("Tries learning rate, epochs and LoRA rank / alpha / dropout around the Plan's settings "
                    "(Optuna TPE), each trial a normal run; bad trials are pruned on validation loss. Leave a field "
                    "at 0 for no limit: the budget decides the trial count and length.", elem_classes="fts-note")
        with gr.Row():
            trials = gr.Number(3, precision=0, minimum=0, label="Trials", info="0 = as many as the budget holds")
            minutes = gr.Number(0, minimum=0, label="Budget (minutes)")
            dollars = gr.Number(0, minimum=0, label="Budget (dollars)", info="at the hardware tier's price per hour")
            hardware = gr.Dropdown(tier_names(), value="local", label="Hardware (time and price)")
            objective = gr.Dropdown(list(OBJECTIVES), value="eval_loss", label="Objective")
        with gr.Row():
            start = gr.Button("Start search", variant="primary", elem_id="sweep-start")
            stop = gr.Button("Stop search", variant="stop")
            use = gr.Button("Use the best", elem_id="sweep-use-best")
            study = gr.Dropdown(study_choices(), value=None, allow_custom_value=True, label="Study", scale=3)
        info = gr.Markdown("No search yet.", elem_id="sweep-summary")
        table = gr.Dataframe(pd.DataFrame(columns=TRIAL_COLUMNS), interactive=False, elem_id="sweep-trials",
                             label="Trials")
        with gr.Row():
            values = gr.ScatterPlot(pd.DataFrame(columns=["trial", "value", "state"]), x="trial", y="value",
                                    color="state", label="Objective per trial (pruned: last validation loss)")
            imp = gr.BarPlot(pd.DataFrame(columns=["parameter", "importance"]), x="parameter", y="importance",
                             label="Parameter importance")
        raw = gr.JSON(visible=False)
    timer = gr.Timer(2.0, active=False)
    live = [info, table, values, imp, timer]
    start.click(sweep_api, [model_box, data_box, trials, minutes, dollars, hardware, objective], study,
                api_name="sweep").success(lambda s: gr.Dropdown(choices=study_choices(), value=s), study, study,
                                          api_visibility="private")
    study.change(poll, study, live, api_visibility="private", show_progress="hidden")
    timer.tick(poll, study, live, api_visibility="private", show_progress="hidden")
    stop.click(sweep_stop_api, study, raw, api_name="sweep_stop").then(poll, study, live, api_visibility="private")
    study.focus(lambda: gr.Dropdown(choices=study_choices()), None, study, api_visibility="private")
    @user_errors
    def use_best(study_id: str):
        return tuple(best_values(study_id, keys))

    use.click(use_best, study, [fields[k] for k in keys], api_visibility="private").success(
        lambda: gr.Info("Train tab filled with the best trial's settings."), None, None, api_visibility="private")
    gr.api(sweep_status_api, api_name="sweep_status")
    return {"study": study, "start": start, "use": use, "table": table}
