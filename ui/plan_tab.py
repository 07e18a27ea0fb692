"""Plan tab: task, data and hardware in; method, memory, time, cost and hyperparameters out.

What it shows comes from finetune.plan and finetune.plan.calibrate (dry run, predicted vs actual)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import gradio as gr
import pandas as pd

from finetune.builtin import BUILTIN_MODELS, DEMO_DATASET_ID, TINY_CHAT_ID
from finetune.config import METHODS as CONFIG_METHODS
from finetune.plan.common import TASK_TYPES as PLAN_TASK_TYPES
from finetune.hardware import describe, tier_names

from .render import check_source, md_table, user_errors

METHODS = ["auto", *CONFIG_METHODS]
TASK_TYPES = list(PLAN_TASK_TYPES)
DEMO_MEAN_TOKENS = 23  # builtin:demo rows with tiny-chat's chat template ("Count from dataset" measures it)
# Every Train tab setting "Use this plan" fills (ui.plan_view.train_settings); the run applies them all.
TRAIN_FIELDS = ("method", "learning_rate", "epochs", "batch_size", "max_seq_len", "lora_rank", "lora_alpha",
                "lora_dropout", "target_modules", "grad_accum", "warmup_ratio", "lr_scheduler", "gradient_checkpointing")
PART_COLORS = {"weights": "#4c78a8", "trainable_and_grads": "#f58518", "optimizer": "#e45756",
               "activations": "#72b7b2", "logits": "#54a24b", "overhead": "#b8b8b8"}
_PALETTE = list(PART_COLORS.values()) + ["#eeca3b", "#b279a2", "#ff9da6", "#9d755d"]


def model_choices() -> list[str]:
    from finetune.plan import registry_models

    ids = [m["id"] for m in registry_models()]
    return list(BUILTIN_MODELS) + [i for i in ids if i not in BUILTIN_MODELS]


def _opt(v, cast=float):
    """An optional positive number from a form field: empty, NaN or <= 0 mean "not given"."""
    return None if v is None or v == "" or v != v or v <= 0 else cast(v)


@user_errors
def plan_api(model: str, method: str, task_type: str, task: str, examples: float, has_preferences: bool,
             hardware: str, seq_len: float, batch_size: float, priority: str, has_labels: bool = True,
             mean_tokens: float | None = None, budget_h: float | None = None, budget_usd: float | None = None,
             params_b: float | None = None, measured_tokens_per_s: float | None = None,
             measured_overhead_s: float | None = None, prompting_sufficient: bool = False) -> dict:
    """Recommend a method and estimate memory, time and cost (the `plan` API)."""
    from finetune.plan import PlanRequest, model_spec, plan

    model = (model or TINY_CHAT_ID).strip()
    try:
        model_spec(model, _opt(params_b))
    except ValueError as e:
        raise gr.Error(f"{e}. This machine is offline for models it has not seen: type the model's size in "
                       "billions of parameters into **Model size (B params)** and press Plan again.", duration=None)
    req = PlanRequest(model=model, method=method or "auto", task_type=task_type or "instruction", task=task or "",
                      examples=int(examples or 0), has_labels=bool(has_labels), has_preferences=bool(has_preferences),
                      prompting_sufficient=bool(prompting_sufficient), hardware=hardware or "local",
                      seq_len=int(seq_len), batch_size=int(batch_size),
                      priority=priority or "quality", mean_tokens=_opt(mean_tokens, int), budget_h=_opt(budget_h),
                      budget_usd=_opt(budget_usd), params_b=_opt(params_b),
                      measured_tokens_per_s=_opt(measured_tokens_per_s),
                      measured_overhead_s=_opt(measured_overhead_s) if measured_tokens_per_s else None)
    return plan(req)


def _servable(path: str) -> str:
    """Gradio serves files from the working folder or the temp folder; copy others (a Space's /data) there."""
    p = Path(path).resolve()
    for root in (Path.cwd(), Path(tempfile.gettempdir())):
        if p.is_relative_to(root.resolve()):
            return str(p)
    d = Path(tempfile.gettempdir()) / "fts-plans" / p.parent.name
    d.mkdir(parents=True, exist_ok=True)
    return shutil.copy2(p, d / p.name)


def _time_unit(hours: list) -> tuple[str, float]:
    """The unit that fits the longest time shown: seconds, minutes or hours (and its factor from hours)."""
    longest = max((h for h in hours if h == h and h is not None), default=0.0)
    return ("s", 3600.0) if longest * 3600 < 90 else ("min", 60.0) if longest < 1.5 else ("h", 1.0)


def _scatter(points: list[dict]) -> pd.DataFrame:
    """Tiers for the time-vs-cost chart with a `time` column in the unit that fits (x_title says which)."""
    df = pd.DataFrame(points).astype({"hours": "float64", "cost_usd": "float64"})
    unit, factor = _time_unit(list(df["hours"]))
    df["time"] = df["hours"] * factor
    df.attrs["unit"] = unit
    return df


def _views(p: dict) -> dict:
    from finetune.plan import write_plan_files
    from ui.plan_view import details_md, memory_rows, summary_md, tier_points, tier_rows

    cols = ["tier", "fits", "time", "training $", "$/h", "memory GB", "serving $/1M tokens"]
    return {"summary": summary_md(p), "chart": pd.DataFrame(memory_rows(p)),
            "scatter": _scatter(tier_points(p)),
            "tiers": pd.DataFrame(tier_rows(p))[cols],
            "hyper": md_table(p.get("hyperparameters") or [], ["name", "value", "rationale"]),
            "details": details_md(p), "yaml": p["trl_config_yaml"], "script": p["python_script"],
            "download": _servable(write_plan_files(p)["report_md"]), "report": p["report_md"]}


OUTPUTS = ("summary", "chart", "scatter", "tiers", "hyper", "details", "yaml", "script", "download", "report")


def render_plan(p: dict):
    """Plan dict -> OUTPUTS. Charts get new data, never new props: Gradio 6.31's native plot keeps the color
    domain of its first value, so every series is always present (a tier that does not fit has None)."""
    if not p:
        return (gr.skip(),) * len(OUTPUTS)
    v = _views(p)
    v["scatter"] = gr.update(value=v["scatter"], x_title=f"training time ({v['scatter'].attrs['unit']})")
    v["download"] = gr.DownloadButton(value=v["download"])
    return tuple(v[k] for k in OUTPUTS)


@user_errors
def count_from_dataset(source: str, model: str):
    from finetune.plan.calibrate import dataset_facts

    if not source:
        raise gr.Error("Choose a dataset in the Dataset box at the top first.")
    f = dataset_facts(check_source(source), model or None)
    gr.Info(f"{source}: {f['examples']} training rows ({f['kind']}), about {f['mean_tokens']} tokens each"
            + (" (approximate)" if f["approximate"] else ""))
    return f["examples"], f["has_labels"], f["has_preferences"], f["mean_tokens"], (
        "preference" if f["has_preferences"] else gr.skip())


@user_errors
def dry_run(model: str, source: str, method: str, seq_len: float, batch_size: float):
    from finetune.plan.calibrate import dry_run_in_child, dry_run_md

    gr.Info("Dry run: a few real training steps in a child process…")
    r = dry_run_in_child(model_id=model or TINY_CHAT_ID, source=check_source(source or DEMO_DATASET_ID),
                         method="lora" if method in ("auto", "dpo", None) else method,
                         seq_len=int(seq_len), batch_size=int(batch_size))
    return r["tokens_per_s"], r["overhead_s"], r["mean_tokens"], dry_run_md(r)


def how_far_off(record: bool = False) -> str:
    """The latest completed run: what the plan predicted vs how long it took (saved to its folder if asked)."""
    from finetune.plan.calibrate import latest_comparison_md

    return latest_comparison_md(record)


def use_plan(p: dict):
    from ui.plan_view import train_settings

    s = train_settings(p) if p else None
    if s is None:
        gr.Warning("The plan says a well-written prompt is enough: nothing to train, the Train tab is unchanged."
                   if p else "Press Plan first.")
        return (gr.skip(),) * (len(TRAIN_FIELDS) + 1)
    s["max_seq_len"] = min(4096, max(32, int(s["max_seq_len"])))
    s["batch_size"], s["lora_rank"] = min(64, int(s["batch_size"])), min(128, int(s["lora_rank"]))
    gr.Info(f"Train tab filled from the plan: {s['method']}, learning rate {s['learning_rate']:g}, "
            f"{s['epochs']:g} epochs, batch {s['batch_size']}.")
    from .forms import fmt_lr

    return tuple(fmt_lr(s[k]) if k == "learning_rate" else s[k] for k in TRAIN_FIELDS) + (gr.Tabs(selected="train"),)


def connect_train(plan_parts: dict, train: dict, tabs) -> None:
    """Wire "Use this plan" to the Train tab's components (called by ui.layout)."""
    plan_parts["use"].click(use_plan, plan_parts["plan"], [train[k] for k in TRAIN_FIELDS] + [tabs],
                            api_visibility="private")


def build(model, data=None) -> dict:
    from finetune.data import load_prepared

    n0 = len(load_prepared(DEMO_DATASET_ID)[0])  # 0.05 s: the demo's training split, counted
    p0 = plan_api(TINY_CHAT_ID, "auto", "instruction", "", n0, False, "local", 256, 8, "quality", True,
                  DEMO_MEAN_TOKENS)
    v0 = _views(p0)
    data = data if data is not None else gr.State(DEMO_DATASET_ID)
    with gr.Row():
        with gr.Column(scale=1):
            task = gr.Textbox(label="Task", placeholder="What should the model do?", lines=2)
            task_type = gr.Dropdown(TASK_TYPES, value="instruction", label="Task type")
            with gr.Row():
                examples = gr.Number(value=n0, precision=0, label="Labelled examples", minimum=0)
                mean_tokens = gr.Number(value=DEMO_MEAN_TOKENS, precision=0, minimum=0,
                                        label="Tokens per example (mean)")
            count = gr.Button("Count from dataset", size="sm")
            with gr.Row():
                has_labels = gr.Checkbox(value=True, label="Examples have target answers")
                has_pref = gr.Checkbox(label="I have preference pairs (chosen / rejected)")
                prompt_ok = gr.Checkbox(label="A well-written prompt already does the task well enough")
            with gr.Row():
                method = gr.Dropdown(METHODS, value="auto", label="Method")
                hardware = gr.Dropdown(tier_names(), value="local", label="Hardware",
                                       info="local = this machine; the others are Hugging Face Space tiers")
            gr.Markdown(f"**This machine:** {describe()}", elem_classes="fts-note")
            seq_len = gr.Slider(64, 8192, value=256, step=64, label="Sequence length (tokens)")
            batch = gr.Slider(1, 64, value=8, step=1, label="Batch size")
            priority = gr.Radio(["quality", "speed", "cost"], value="quality", label="Priority")
            with gr.Row():
                budget_h = gr.Number(label="Budget (hours)", minimum=0, info="optional; 0 = none")
                budget_usd = gr.Number(label="Budget ($)", minimum=0, info="optional; 0 = none")
            params_b = gr.Number(label="Model size (B params)", minimum=0,
                                 info="only for a model the planner cannot look up offline")
            with gr.Accordion("Calibration on this machine", open=False):
                tps = gr.Number(label="Measured tokens/s", minimum=0, info="from a dry run; empty = estimate")
                overhead = gr.Number(label="Measured start-up (s)", minimum=0)
                dry = gr.Button("Dry run (calibrate)")
                dry_note = gr.Markdown()
            go = gr.Button("Plan", variant="primary")
        with gr.Column(scale=2):
            summary = gr.Markdown(v0["summary"])
            use = gr.Button("Use this plan", variant="primary", size="sm")
            # The recommendation and key numbers first; the charts, tiers and settings fold away.
            with gr.Accordion("Charts: memory per method, time vs cost per tier", open=False, elem_id="plan-charts"):
                chart = gr.BarPlot(v0["chart"], x="method", y="GB", color="part", color_map=PART_COLORS,
                                   label="Memory breakdown per method (GB, ← = chosen)", tooltip="all",
                                   elem_id="plan-memory-chart")
                scatter = gr.ScatterPlot(v0["scatter"], x="time", y="cost_usd", color="hardware",
                                         x_title=f"training time ({v0['scatter'].attrs['unit']})", y_title="training $",
                                         color_map=dict(zip(v0["scatter"]["hardware"].unique(), _PALETTE * 3)),
                                         label="Time vs cost on the tiers that fit (hover for the tier)",
                                         tooltip=["tier", "hardware", "time", "cost_usd"], elem_id="plan-tiers-chart")
            with gr.Accordion("Hardware tiers: time, cost, fit", open=False):
                tiers = gr.Dataframe(v0["tiers"], label="Hardware tiers", interactive=False, max_height=320,
                                     elem_id="plan-tiers-table")
            with gr.Accordion("Hyperparameters", open=False):
                hyper = gr.Markdown(v0["hyper"])
            with gr.Accordion("Risks, dataset requirements, evaluation plan, readiness", open=False):
                details = gr.Markdown(v0["details"])
            with gr.Accordion("TRL config and Python script (copy or download)", open=False):
                yaml_code = gr.Code(v0["yaml"], language="yaml", label="plan.yaml (trl sft --config plan.yaml)",
                                    buttons=["copy", "download"])
                script = gr.Code(v0["script"], language="python", label="train.py", buttons=["copy", "download"])
            download = gr.DownloadButton("Download the plan (Markdown)", v0["download"], size="sm")
            with gr.Accordion("Plan report (Markdown)", open=False):
                report = gr.Markdown(v0["report"])
            off = gr.Markdown(how_far_off(), elem_id="plan-how-far-off")
            record = gr.Button("Save the comparison to the run folder", size="sm")
            raw = gr.JSON(p0, label="Plan (JSON)", visible=False)
    inputs = [model, method, task_type, task, examples, has_pref, hardware, seq_len, batch, priority,
              has_labels, mean_tokens, budget_h, budget_usd, params_b, tps, overhead, prompt_ok]
    outputs = [summary, chart, scatter, tiers, hyper, details, yaml_code, script, download, report]
    go.click(plan_api, inputs, raw, api_name="plan").then(
        render_plan, raw, outputs, api_visibility="private").then(how_far_off, None, off, api_visibility="private")
    count.click(count_from_dataset, [data, model], [examples, has_labels, has_pref, mean_tokens, task_type],
                api_visibility="private")
    dry.click(dry_run, [model, data, method, seq_len, batch],
              [tps, overhead, mean_tokens, dry_note], api_visibility="private").success(
        plan_api, inputs, raw, api_visibility="private").then(render_plan, raw, outputs, api_visibility="private")
    # a measurement belongs to one model, batch size and length: clear it when they change
    gr.on([model.change, batch.release, seq_len.release], lambda: (None, None, ""), None, [tps, overhead, dry_note],
          api_visibility="private")
    record.click(lambda: how_far_off(record=True), None, off, api_visibility="private")
    return {"use": use, "plan": raw}
