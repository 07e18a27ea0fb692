"""Plan tab: task, data and hardware in; method, memory, time, cost and hyperparameters out."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from finetune.builtin import TINY_CHAT_ID

from .render import md_table, user_errors

METHODS = ["auto", "lora", "qlora", "dora", "full", "prefix", "dpo"]
TASK_TYPES = ["instruction", "chat", "classification", "extraction", "summarisation", "code", "preference"]


def _model_choices() -> list[str]:
    from finetune.plan import registry_models

    ids = [m["id"] for m in registry_models()]
    return [TINY_CHAT_ID] + [i for i in ids if i != TINY_CHAT_ID]


def _tier_choices() -> list[str]:
    from finetune.hardware import list_tiers

    return ["local"] + [t["name"] for t in list_tiers() if t["name"] != "local"]


@user_errors
def plan_api(model: str, method: str, task_type: str, task: str, examples: float, has_preferences: bool,
             hardware: str, seq_len: float, batch_size: float, priority: str) -> dict:
    """Recommend a method and estimate memory, time and cost (the `plan` API)."""
    from finetune.plan import PlanRequest, plan

    req = PlanRequest(model=model or TINY_CHAT_ID, method=method or "auto", task_type=task_type or "instruction",
                      task=task or "", examples=int(examples or 0), has_preferences=bool(has_preferences),
                      hardware=hardware or "local", seq_len=int(seq_len), batch_size=int(batch_size),
                      priority=priority or "quality")
    return plan(req)


def render_plan(p: dict):
    if not p:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    fits = "fits" if p.get("fits") else "does NOT fit"
    head = (f"### Recommended: **{p.get('method')}** · {p.get('vram_gb', 0):.1f} GB ({fits}) · "
            f"{p.get('time_h', 0):.2f} h · ${p.get('cost_usd', 0):.2f}\n\n"
            + "\n".join(f"{i}. {r}" for i, r in enumerate(p.get("reasons", []), 1)))
    feas = [{"method": m, **row} for m, row in (p.get("feasibility") or {}).items()]
    head += "\n\n#### Feasibility\n" + md_table(feas, ["method", "vram_gb", "fits", "max_batch_size", "max_seq_len"])
    hp = md_table(p.get("hyperparameters") or [], ["name", "value", "rationale"])
    bars = []
    for row in feas:
        for part, gb in (row.get("breakdown") or {}).items():
            bars.append({"method": row.get("method"), "part": part, "GB": float(gb)})
    return head, hp, pd.DataFrame(bars or [{"method": "", "part": "", "GB": 0.0}]), p.get("report_md", "")


def model_choices() -> list[str]:
    return _model_choices()


def build(model) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            task = gr.Textbox(label="Task", placeholder="What should the model do?", lines=2)
            task_type = gr.Dropdown(TASK_TYPES, value="instruction", label="Task type")
            examples = gr.Number(value=477, precision=0, label="Labelled examples", minimum=0)
            has_pref = gr.Checkbox(label="I have preference pairs (chosen / rejected)")
            with gr.Row():
                method = gr.Dropdown(METHODS, value="auto", label="Method")
                hardware = gr.Dropdown(_tier_choices(), value="local", label="Hardware")
            seq_len = gr.Slider(64, 8192, value=256, step=64, label="Sequence length (tokens)")
            batch = gr.Slider(1, 64, value=8, step=1, label="Batch size")
            priority = gr.Radio(["quality", "speed", "cost"], value="quality", label="Priority")
            go = gr.Button("Plan", variant="primary")
        with gr.Column(scale=2):
            summary = gr.Markdown("Choose a model and press **Plan**.")
            chart = gr.BarPlot(pd.DataFrame([{"method": "", "part": "", "GB": 0.0}]), x="method", y="GB",
                               color="part", label="Memory breakdown (GB)", height=260)
            hyper = gr.Markdown()
            with gr.Accordion("Plan report (Markdown)", open=False):
                report = gr.Markdown()
            raw = gr.JSON(label="Plan (JSON)", visible=False)
    inputs = [model, method, task_type, task, examples, has_pref, hardware, seq_len, batch, priority]
    go.click(plan_api, inputs, raw, api_name="plan").then(
        render_plan, raw, [summary, hyper, chart, report], api_visibility="private")
