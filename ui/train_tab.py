"""Train tab: start a run in a child process, follow its loss and progress live, stop or resume it.

The run id is kept in the browser (gr.BrowserState), so reloading the page reattaches to the run.
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from finetune.builtin import DEMO_DATASET_ID, TINY_CHAT_ID
from finetune.config import BUILTIN_DEMO_REASON, METHODS, TrainConfig, build_run_config, default_run_config, help_for
from finetune.hardware import detect_hardware

from . import jobs_panel
from .render import check_source, fmt_duration, num, run_choices, user_errors

# Both series from the first value on: Gradio 6.31's native plot keeps the color domain of its first
# value, so a series missing then is drawn without a color later (an invisible line).
_EMPTY = pd.DataFrame({"step": pd.Series([0, 0], dtype="int64"), "value": pd.Series([None, None], dtype="float64"),
                       "series": ["training loss", "validation loss"]})
_DEFAULTS = default_run_config().train


@user_errors
def train_api(model: str, data: str, method: str, learning_rate: float, epochs: float, batch_size: float,
              max_seq_len: float, lora_r: float, num_processes: float = 1) -> str:
    """Start a training run and return its run id at once (the `train` API)."""
    cfg = run_config(model, data, method, learning_rate, epochs, batch_size, max_seq_len, lora_r, num_processes)
    _warn_if_it_will_not_fit(cfg)
    from .guard import start_as_caller  # owner, public-mode limits, the caller's token only

    return start_as_caller(cfg)


def run_config(model, data, method, learning_rate, epochs, batch_size, max_seq_len, lora_r, num_processes=1):
    """The run config from the tab's widgets (also used by Run on Hugging Face Jobs)."""
    for label, value in (("Learning rate", learning_rate), ("Epochs", epochs), ("Batch size", batch_size),
                         ("Max sequence length", max_seq_len), ("LoRA rank", lora_r)):
        if value is None:
            raise gr.Error(f"{label} is empty: enter a number.")
    data = check_source((data or DEMO_DATASET_ID).strip())
    cfg = build_run_config(model or TINY_CHAT_ID, data, {
        "train": {"method": method or "lora", "learning_rate": float(learning_rate), "epochs": float(epochs),
                  "batch_size": int(batch_size), "num_processes": int(num_processes or 1)},
        "data": {"max_seq_len": int(max_seq_len)}, "lora": {"r": int(lora_r), "alpha": 2 * int(lora_r)}})
    return cfg


def _warn_if_it_will_not_fit(cfg) -> None:
    """Estimate memory before launch (the planner's model) and say so when it will not fit here."""
    from finetune.plan import estimate_run_memory

    try:
        p = estimate_run_memory(cfg.model.model_id, cfg.train.method, cfg.data.max_seq_len, cfg.train.batch_size,
                                cfg.lora.r, cfg.train.gradient_checkpointing)
    except ValueError:  # an unknown model offline: nothing to estimate from
        return
    if not p["fits"]:
        gr.Warning(f"Estimated {p['vram_gb']:.1f} GB will not fit on this machine ({p['usable_gb']} GB "
                   "usable): expect out-of-memory. Lower the batch size or sequence length, or use QLoRA on a GPU.")


@user_errors
def status_api(run_id: str) -> dict:
    """A run's state, step, total steps, progress, ETA, latest loss and events (the `status` API)."""
    from finetune.runs import status_summary

    if not run_id:
        raise gr.Error("No run selected.")
    return status_summary(run_id.strip())


@user_errors
def stop_api(run_id: str) -> dict:
    """Stop a run cleanly: it finishes the step, saves, and ends as `stopped` (the `stop` API).
    A second stop while it is still stopping kills it (for a run stuck before its first step)."""
    from finetune.runs import stop_run

    if not run_id:
        raise gr.Error("No run selected.")
    return stop_run(run_id.strip())


def runs_api() -> list[dict]:
    """All runs with their state, newest first (the `runs` API)."""
    from finetune.runs import list_runs

    from .guard import visible_runs

    return visible_runs(list_runs())


def render_status(st: dict):
    if not st:
        return gr.skip(), gr.skip()
    state, step, total = st.get("state"), st.get("step") or 0, st.get("total_steps")
    bar = "█" * int((st.get("progress") or 0) / 5) + "░" * (20 - int((st.get("progress") or 0) / 5))
    lines = [f"### {st.get('run_id')}: **{state}**",
             f"`{bar}` {st.get('progress', 0):.0f}% · step {step}/{total or '?'} · ETA {fmt_duration(st.get('eta_s'))}"
             f" · loss {num(st.get('loss'))} · validation loss {num(st.get('eval_loss'))}"
             + (f" · {st.get('tokens_per_s')} tokens/s" if st.get("tokens_per_s") else "")]
    if st.get("job_id"):
        lines.append(f"\nHugging Face job [{st['job_id']}]({st.get('job_url')}) on {st.get('flavor')}: "
                     f"{st.get('job_stage')}" + (" (not followed: reattach with a token)" if st.get("follower") else ""))
    elif st.get("remote") and st.get("job_stage"):
        lines.append(f"\nHugging Face Jobs: {st['job_stage'].lower()} ({st.get('flavor')})")
    if st.get("launch"):
        lines.append(f"\n{st['launch'].get('num_processes')} processes, {st['launch'].get('reason')}.")
    if st.get("error"):
        lines.append(f"\n**Error:** {st['error']}")
    if st.get("artifact"):
        lines.append(f"\nSaved: `{st['artifact']}` — evaluate it in the **Evaluate** tab.")
    if st.get("resumable") and state in ("failed", "stopped"):
        lines.append("\nThis run can be resumed from its last checkpoint.")
    rows = []
    for e in st.get("events", []):
        for key, series in (("loss", "training loss"), ("eval_loss", "validation loss")):
            if e.get(key) is not None:
                rows.append({"step": e["step"], "value": e[key], "series": series})
    df = pd.DataFrame(rows).astype({"step": "int64", "value": "float64"}) if rows else _EMPTY
    return "\n".join(lines), df


def poll(run_id: str):
    if not run_id:
        return gr.skip(), gr.skip()
    try:
        return render_status(status_api(run_id))
    except gr.Error as exc:
        return f"**{exc.message}**", _EMPTY


@user_errors
def resume(run_id: str) -> str:
    from .guard import resume_as_caller

    resume_as_caller(run_id)
    return run_id


def _num_field(name, **kw):
    return dict(label=name.replace("_", " ").capitalize(), info=help_for(TrainConfig, name), **kw)


def build(model_box, data_box, run_state) -> dict:
    gr.Markdown(f"Defaults suit the built-in demo model. Why: {BUILTIN_DEMO_REASON}. It is **randomly "
                "initialised**, so a run shows the pipeline working, not a useful model.")
    with gr.Row():
        with gr.Column(scale=1):
            method = gr.Dropdown(list(METHODS), value="lora",
                                 **_num_field("method"))
            lr = gr.Number(value=_DEFAULTS.learning_rate, **_num_field("learning_rate"))
            epochs = gr.Number(value=_DEFAULTS.epochs, minimum=0, **_num_field("epochs"))
            batch = gr.Slider(1, 64, value=_DEFAULTS.batch_size, step=1, **_num_field("batch_size"))
            seq = gr.Slider(32, 4096, value=256, step=32, label="Max sequence length (tokens)")
            rank = gr.Slider(1, 128, value=16, step=1, label="LoRA rank", info="alpha is set to 2 x rank")
            gpus = detect_hardware().get("gpu_count") or 0  # one process per GPU; shown only with several
            procs = gr.Slider(1, max(2, gpus), value=1, step=1, visible=gpus > 1, **_num_field("num_processes"))
            start = gr.Button("Start training", variant="primary")
            jobs = jobs_panel.build()
            with gr.Row():
                stop = gr.Button("Stop", variant="stop")
                resume_btn = gr.Button("Resume")
        with gr.Column(scale=2):
            with gr.Row():
                run_id = gr.Dropdown(run_choices(), value=None, allow_custom_value=True, label="Run", scale=3)
                refresh = gr.Button("↻ Runs", scale=0)
            progress = gr.Markdown("No run yet. Press **Start training**.")
            plot = gr.LinePlot(_EMPTY, x="step", y="value", color="series", label="Loss", height=320,
                               x_title="step", y_title="loss",
                               color_map={"training loss": "#4c78a8", "validation loss": "#f58518"},
                               elem_id="loss-plot")
            raw = gr.JSON(visible=False)
    timer = gr.Timer(1.0)
    jobs_panel.wire(jobs, [model_box, data_box, method, lr, epochs, batch, seq, rank], run_id, run_state, run_choices)
    start.click(train_api, [model_box, data_box, method, lr, epochs, batch, seq, rank, procs], run_id, api_name="train").then(
        lambda r: (r, gr.Dropdown(choices=run_choices(), value=r)), run_id, [run_state, run_id], api_visibility="private")
    timer.tick(poll, run_id, [progress, plot], api_visibility="private", show_progress="hidden")
    run_id.change(lambda r: r, run_id, run_state, api_visibility="private").then(
        poll, run_id, [progress, plot], api_visibility="private")
    stop.click(stop_api, run_id, raw, api_name="stop")
    resume_btn.click(resume, run_id, run_id, api_visibility="private")
    refresh.click(lambda: gr.Dropdown(choices=run_choices()), None, run_id, api_visibility="private")
    run_id.focus(lambda: gr.Dropdown(choices=run_choices()), None, run_id, api_visibility="private")
    gr.api(status_api, api_name="status")  # API-only endpoints: no hidden components needed
    gr.api(runs_api, api_name="runs")
    return {"run_id": run_id, "method": method, "learning_rate": lr, "epochs": epochs, "batch_size": batch,
            "max_seq_len": seq, "lora_rank": rank, "num_processes": procs}
