"""Train tab: every run setting (generated from the config dataclasses), start/stop/resume, a live view
(ui.train_live) refreshed by a gr.Timer only while a run is active, the runs table, and the download.

The run id is kept in the browser (gr.BrowserState), so reloading the page reattaches to the run.
"""

from __future__ import annotations

import gradio as gr

from finetune.builtin import DEMO_DATASET_ID, TINY_CHAT_ID
from finetune.config import (BUILTIN_DEMO_REASON, DataConfig, LoraConfig, TrainConfig, build_run_config,
                             default_run_config)

from . import grpo_panel, jobs_panel, sweep_panel, train_live
from .forms import coerce, field_input
from .render import check_source, run_choices, user_errors

_D = default_run_config()
# (section, field) of every setting after the first eight `train` API parameters, in API order
# (new ones go at the end: API clients pass them by position). trust_remote_code is left out on
# purpose: running a model repository's own code is not a choice a web form should offer.
MORE = [("lora", "alpha"), ("lora", "dropout"), ("lora", "target_modules"), ("train", "grad_accum"),
        ("train", "warmup_ratio"), ("train", "lr_scheduler"), ("train", "weight_decay"), ("train", "max_steps"),
        ("train", "eval_steps"), ("train", "save_steps"), ("train", "logging_steps"), ("train", "keep_best"),
        ("train", "early_stopping_patience"), ("train", "gradient_checkpointing"), ("data", "val_ratio"),
        ("train", "seed"), ("lora", "num_virtual_tokens"), ("train", "dpo_beta"), ("train", "save_total_limit"),
        ("train", "early_stopping_threshold"), ("train", "precision"), ("train", "backend"),
        ("train", "group_by_length"), ("train", "report_to"), ("train", "init_from_run"), ("data", "seed"),
        ("train", "num_processes"), ("train", "accelerate_preset")]
MAIN = [("train", "method"), ("train", "learning_rate"), ("train", "epochs"), ("train", "batch_size"),
        ("data", "max_seq_len"), ("lora", "r")]
_CLS = {"train": TrainConfig, "lora": LoraConfig, "data": DataConfig}
_PARAM = {("lora", "alpha"): "lora_alpha", ("lora", "dropout"): "lora_dropout", ("data", "seed"): "data_seed",
          ("lora", "r"): "lora_r"}


def param(key: tuple[str, str]) -> str:
    """The train API parameter (and Train tab component) name of a (section, field)."""
    return _PARAM.get(key, key[1])


@user_errors
def train_api(model: str, data: str, method: str, learning_rate: float | str, epochs: float, batch_size: float,
              max_seq_len: float, lora_r: float, lora_alpha: float = 0, lora_dropout: float = 0.0,
              target_modules: str = "all-linear", grad_accum: float = 1, warmup_ratio: float = 0.03,
              lr_scheduler: str = "linear", weight_decay: float = 0.0, max_steps: float = 0, eval_steps: float = 100,
              save_steps: float = 200, logging_steps: float = 5, keep_best: bool = True,
              early_stopping_patience: float = 0, gradient_checkpointing: bool = False, val_ratio: float = 0.1,
              seed: float = 42, num_virtual_tokens: float = 16, dpo_beta: float = 0.1, save_total_limit: float = 2,
              early_stopping_threshold: float = 0.0, precision: str = "auto", backend: str = "auto",
              group_by_length: bool = True, report_to: str = "none", init_from_run: str = "",
              data_seed: float = 42, num_processes: float = 1, accelerate_preset: str = "auto",
              grpo_reward: str | list = "exact", grpo_reward_weights: str = "",
              grpo_format_regex: str = r"<answer>[\s\S]*?</answer>", grpo_json_schema: str = "",
              grpo_length_min_chars: float = 0, grpo_length_max_chars: float = 200, grpo_num_generations: float = 4,
              grpo_max_completion_len: float = 64, grpo_temperature: float = 1.0, grpo_beta: float = 0.0,
              grpo_reward_file: str = "") -> str:
    """Check and start a training run; return its run id at once (the `train` API). lora_alpha 0 means
    2 x rank; the grpo_* values are method grpo's rewards (ui.grpo_panel). A run that would fail (missing
    data, unknown model, nothing trained, too big even at batch 1) is refused before anything is created;
    a batch too big for memory trains in smaller pieces with the same effective batch (status memory_note)."""
    from .guard import start_as_caller  # owner, public-mode limits, the caller's token only

    given = dict(locals())
    data = check_source((data or DEMO_DATASET_ID).strip())
    sections: dict[str, dict] = {"train": {}, "data": {}, "lora": {}}
    for section, name in MAIN + MORE:
        sections[section][name] = coerce(_CLS[section], name, given[param((section, name))])
    sections["train"]["method"] = sections["train"]["method"] or "lora"
    sections["grpo"] = grpo_panel.settings(given)
    if not sections["lora"]["alpha"]:
        sections["lora"]["alpha"] = 2 * sections["lora"]["r"]
    cfg = build_run_config(model or TINY_CHAT_ID, data, sections)  # validation names the field
    return start_as_caller(cfg)  # preflight runs inside: nothing is created when it fails


def run_config(model, data, method, learning_rate, epochs, batch_size, max_seq_len, lora_r, num_processes=1):
    """The run config from the tab's main widgets (used by Run on Hugging Face Jobs)."""
    for label, value in (("Learning rate", learning_rate), ("Epochs", epochs), ("Batch size", batch_size),
                         ("Max sequence length", max_seq_len), ("LoRA rank", lora_r)):
        if value is None or value == "":
            raise gr.Error(f"{label} is empty: enter a number.")
    data = check_source((data or DEMO_DATASET_ID).strip())
    return build_run_config(model or TINY_CHAT_ID, data, {
        "train": {"method": method or "lora", "learning_rate": float(learning_rate), "epochs": float(epochs),
                  "batch_size": int(batch_size), "num_processes": int(num_processes or 1)},
        "data": {"max_seq_len": int(max_seq_len)}, "lora": {"r": int(lora_r), "alpha": 2 * int(lora_r)}})


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
    Pressing it twice does not kill the run: that is Force stop's job."""
    import finetune.jobs  # noqa: F401 -- registers how to stop a run on Hugging Face Jobs
    from finetune.runs import stop_run

    if not run_id:
        raise gr.Error("No run selected.")
    return stop_run(run_id.strip())


@user_errors
def force_stop_api(run_id: str) -> dict:
    """Kill a run now, without a final save (the `force_stop` API); it can resume from its last
    complete checkpoint."""
    import finetune.jobs  # noqa: F401 -- registers how to stop a run on Hugging Face Jobs
    from finetune.runs import stop_run

    if not run_id:
        raise gr.Error("No run selected.")
    return stop_run(run_id.strip(), force=True)


def runs_api() -> list[dict]:
    """All runs with their state, newest first (the `runs` API)."""
    from finetune.runs import list_runs

    from .guard import visible_runs

    return visible_runs(list_runs())


@user_errors
def resume(run_id: str) -> str:
    from .guard import resume_as_caller

    resume_as_caller(run_id)
    return run_id


def will_train(model: str, data: str) -> str:
    """What Start will use: the dataset (name, rows, format) and the model."""
    from finetune.preflight import describe_source
    from finetune.sources import SourceError, check_source as allowed

    try:  # on a public Space a typed server path is neither read nor described
        d = describe_source(allowed(data or DEMO_DATASET_ID))
    except SourceError as exc:
        return f"**Will train** `{model or TINY_CHAT_ID}` on … ⚠️ {exc}"
    rows = f"{d['rows']} rows" + (f" ({d['rows_train']} train / {d['rows_validation']} validation)"
                                  if d.get("rows_train") is not None else "")
    note = " — randomly initialised demo model" if (model or TINY_CHAT_ID) == TINY_CHAT_ID else ""
    err = f" ⚠️ {d['error']}" if d.get("error") else ""
    return (f"**Will train** `{model or TINY_CHAT_ID}`{note} on **{d['name']}** · {rows} · format "
            f"**{d['format']}** ({d['kind']}){err}")


DEMO_NOTE = (f"Defaults suit the built-in demo model. Why: {BUILTIN_DEMO_REASON}. It is **randomly "
             "initialised**, so a run shows the pipeline working, not a useful model.")


def settings_for(model: str, data: str):
    """The learning rate, epochs and gradient accumulation for the picked model and dataset, as
    `finetune train` takes them when unset: the demo's own for builtin:tiny-chat, else the Plan's (model
    size, optimizer steps on this data), so a real model picked here learns without a trip to the Plan."""
    from finetune.plan import model_spec
    from finetune.plan.calibrate import recommended_train
    from finetune.sources import check_source as allowed

    from .forms import fmt_lr

    model = (model or TINY_CHAT_ID).strip()
    if model == TINY_CHAT_ID:
        t = _D.train
        return fmt_lr(t.learning_rate), t.epochs, t.grad_accum, DEMO_NOTE
    try:
        model_spec(model)  # offline look-ups only: an unknown model is said at once, not fetched
        rec = recommended_train(model, allowed((data or DEMO_DATASET_ID).strip()), "lora")
    except Exception as exc:  # noqa: BLE001 -- an unknown model or unreadable data: preflight says what at Start
        return gr.skip(), gr.skip(), gr.skip(), f"The Plan could not advise settings for `{model}` ({str(exc)[:160]})."
    return (fmt_lr(rec["learning_rate"]), rec["epochs"], rec["grad_accum"],
            f"Settings from the Plan for `{model}` on this dataset: learning rate {rec['learning_rate']:g} "
            f"({rec['why']['learning_rate']}); {rec['epochs']:g} epochs ({rec['why']['epochs']}).")


def build(model_box, data_box, run_state) -> dict:
    note = gr.Markdown(DEMO_NOTE, elem_classes="fts-note")
    summary = gr.Markdown(will_train(TINY_CHAT_ID, DEMO_DATASET_ID), elem_id="train-will-train")
    t, lo = _D.train, _D.lora
    with gr.Row():
        with gr.Column(scale=1):
            c = {"method": field_input(TrainConfig, "method", t.method, elem_id="train-method"),
                 "learning_rate": field_input(TrainConfig, "learning_rate", t.learning_rate),
                 "epochs": field_input(TrainConfig, "epochs", t.epochs, minimum=0, step=1),
                 "batch_size": gr.Slider(1, 64, value=t.batch_size, step=1, label="Batch size",
                                         info=TrainConfig.__dataclass_fields__["batch_size"].metadata["help"]),
                 "max_seq_len": gr.Slider(32, 4096, value=_D.data.max_seq_len, step=32, label="Max sequence length (tokens)"),
                 "lora_rank": gr.Slider(1, 128, value=lo.r, step=1, label="LoRA rank")}
            with gr.Accordion("More settings (all applied to the run)", open=False, elem_id="train-more"):
                for i in range(0, len(MORE), 2):  # two per row: the list stays short enough to scan
                    with gr.Row():
                        for section, name in MORE[i:i + 2]:
                            value = getattr(getattr(_D, section), name)
                            c[param((section, name))] = field_input(
                                _CLS[section], name, 0 if name == "alpha" else value,
                                **({"info": "0 = 2 x rank"} if name == "alpha" else
                                   {"label": "Data split seed"} if (section, name) == ("data", "seed") else {}))
            grpo = grpo_panel.build(c["method"])
            start = gr.Button("Start training", variant="primary")
            jobs = jobs_panel.build()
            with gr.Row():
                stop = gr.Button("Stop", variant="stop")
                force = gr.Button("Force stop", variant="stop", size="sm", elem_id="train-force-stop")
                resume_btn = gr.Button("Resume")
        with gr.Column(scale=2):
            with gr.Row():
                run_id = gr.Dropdown(run_choices(), value=None, allow_custom_value=True, label="Run", scale=3)
                refresh = gr.Button("↻ Runs", scale=0)
            progress = gr.HTML(train_live.progress_html(None), elem_id="train-progress")
            metrics = gr.HTML(elem_id="train-metrics")
            # no fixed height: with one, Gradio 6.31 crops the legend under the chart (only its title showed)
            plot = gr.LinePlot(train_live.empty_curve(), x="step", y="value", color="series", label="Loss",
                               x_title="step", y_title="loss", color_title="", x_axis_format="d",
                               color_map=train_live.COLORS, elem_id="loss-plot")
            reward_plot = grpo_panel.reward_plot()  # GRPO runs only
            download = gr.DownloadButton("Download adapter (.zip)", visible=False, elem_id="train-download")
            log = gr.Textbox(label="Log (last lines)", lines=6, max_lines=12, interactive=False, autoscroll=True,
                             elem_id="train-log")
            raw = gr.JSON(visible=False)
    with gr.Accordion("Runs", open=True):
        table = gr.Dataframe(train_live.runs_frame, interactive=False, max_height=300, elem_id="runs-table",
                             label="Click a row to follow that run")
        with gr.Row():
            refresh_table = gr.Button("↻ Refresh", size="sm")
            delete_btn = gr.Button("Delete the selected run", size="sm", variant="stop")
    main_keys = ["method", "learning_rate", "epochs", "batch_size", "max_seq_len", "lora_rank"]
    jobs_panel.wire(jobs, [model_box, data_box] + [c[k] for k in main_keys], run_id, run_state, run_choices)
    timer = gr.Timer(1.0, active=False)  # switched on by poll() while a run is active
    shown = gr.State({})  # per page: events already drawn in the chart, run state last shown
    order = main_keys + [param(k) for k in MORE]
    sweep_panel.build(model_box, data_box, dict(zip(MAIN + MORE, [c[k] for k in order])))  # "Search" accordion
    live = [progress, metrics, plot, log, download, timer, shown, table]
    gr.on([model_box.change, data_box.change], will_train, [model_box, data_box], summary, api_visibility="private",
          show_progress="hidden")
    gr.on([model_box.change, data_box.change], settings_for, [model_box, data_box],
          [c["learning_rate"], c["epochs"], c[param(("train", "grad_accum"))], note], api_visibility="private",
          show_progress="hidden")
    start.click(train_api, [model_box, data_box] + [c[k] for k in order] + grpo, run_id, api_name="train").success(
        lambda r: (r, gr.Dropdown(choices=run_choices(), value=r), train_live.runs_frame()), run_id,
        [run_state, run_id, table], api_visibility="private")
    timer.tick(train_live.poll, [run_id, shown], live, api_visibility="private", show_progress="hidden")
    grpo_panel.wire_curve(timer, run_id, reward_plot)
    run_id.change(lambda r: (r, {}), run_id, [run_state, shown], api_visibility="private").then(
        train_live.poll, [run_id, shown], live, api_visibility="private", show_progress="hidden")
    stop.click(stop_api, run_id, raw, api_name="stop").then(train_live.poll, [run_id, shown], live,
                                                             api_visibility="private", show_progress="hidden")
    force.click(force_stop_api, run_id, raw, api_name="force_stop",
                js="(r) => (r && confirm('Kill run ' + r + ' now, without a final save?')) ? r : null").then(
        train_live.poll, [run_id, shown], live, api_visibility="private", show_progress="hidden")
    resume_btn.click(resume, run_id, run_id, api_visibility="private").success(
        train_live.poll, [run_id, shown], live, api_visibility="private", show_progress="hidden")
    refresh.click(lambda: gr.Dropdown(choices=run_choices()), None, run_id, api_visibility="private")
    run_id.focus(lambda: gr.Dropdown(choices=run_choices()), None, run_id, api_visibility="private")
    refresh_table.click(train_live.runs_frame, None, table, api_visibility="private")
    table.select(train_live.pick_row, table, run_id, api_visibility="private")
    delete_btn.click(train_live.delete, run_id, [table, run_id], api_visibility="private",
                     js="(r) => (r && confirm('Delete run ' + r + ' and its files?')) ? r : null")
    gr.api(status_api, api_name="status")  # API-only endpoints: no hidden components needed
    gr.api(runs_api, api_name="runs")
    return {"run_id": run_id, **c}
