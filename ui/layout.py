"""The page: a header with the shared model and dataset choice, then the five tabs in working order."""

from __future__ import annotations

import os
import secrets

import gradio as gr

from finetune.builtin import DEMO_DATASET_ID, TINY_CHAT_ID

from . import compare_tab, dataset_tab, evaluate_tab, export_panel, guard, hub_panel, mcp_tools, plan_tab, traffic, train_tab

CSS = """
.fts-note {font-size: 0.9em; opacity: 0.8}
.fts-progress progress {width: 100%; height: 1.1em; accent-color: var(--color-accent)}
.fts-progress-text {font-variant-numeric: tabular-nums}
#loss-plot .vega-embed {overflow: visible}
"""


def _browser_secret() -> str:
    """A stable secret for gr.BrowserState, so a restarted app can still read what the browser kept."""
    from finetune.paths import home

    p = home() / ".browser_secret"
    if not p.exists():
        p.write_text(secrets.token_hex(16))
        os.chmod(p, 0o600)
    return p.read_text().strip()


def build_demo() -> gr.Blocks:
    from finetune import access

    access.lock_down_hub()  # public mode: no Hub call sends the owner's HF_TOKEN on its own
    with gr.Blocks(title="Fine-Tune Studio") as demo:
        with gr.Row():
            gr.Markdown("# Fine-Tune Studio\nPlan → Dataset → Train → Evaluate → Compare. Everything runs offline "
                        "on the built-in model and demo data; any Hub model or your own files work too.")
            guard.login_button()
        if access.public_mode():
            gr.Markdown("Public mode: anyone may plan and inspect data; training, evaluating, comparing and pushing "
                        "need a login on this Space's allowlist. You see only your own runs and datasets.",
                        elem_classes="fts-note")
        run_state = gr.BrowserState(None, storage_key="fine_tune_studio_run", secret=_browser_secret())
        data_state = gr.BrowserState(None, storage_key="fine_tune_studio_data", secret=_browser_secret())
        with gr.Row():
            model = gr.Dropdown(plan_tab.model_choices(), value=TINY_CHAT_ID, allow_custom_value=True,
                                label="Base model", scale=2,
                                info="builtin:smollm2-135m-instruct is a real small chat model (offline); builtin:tiny-chat is "
                                     "a randomly initialised model for one-minute pipeline checks")
            data = gr.Dropdown(dataset_tab.dataset_choices(), value=DEMO_DATASET_ID, allow_custom_value=True,
                               label="Dataset", scale=2, info="builtin:demo, builtin:persona, a saved dataset or a file path",
                               elem_id="dataset-picker")
        with gr.Tabs() as tabs:
            with gr.Tab("Plan", id="plan"):
                plan = plan_tab.build(model, data)
            with gr.Tab("Dataset", id="dataset"):
                dataset_tab.build(model, data)
            with gr.Tab("Train", id="train"):
                t = train_tab.build(model, data, run_state)
            with gr.Tab("Evaluate", id="evaluate"):
                evaluate_tab.build(t["run_id"], t, tabs)  # Diagnose's "Apply" fills the Train tab
                hub_panel.build(t["run_id"])
                export_panel.build(t["run_id"])
            with gr.Tab("Compare", id="compare"):
                compare_tab.build(t["run_id"])
        plan_tab.connect_train(plan, t, tabs)  # "Use this plan" fills the Train tab
        # Jobs outlive the page: reattach to the run this browser was following.
        demo.load(lambda r: gr.Dropdown(choices=train_tab.run_choices(), value=r) if r else gr.skip(),
                  run_state, t["run_id"], api_visibility="private")
        # ...and to the dataset it had picked (an upload, a prepared split), so Train still trains that one.
        data.change(lambda d: d, data, data_state, api_visibility="private")
        demo.load(lambda d: gr.Dropdown(choices=dataset_tab.dataset_choices(), value=d or DEMO_DATASET_ID),
                  data_state, data, api_visibility="private")
    mcp_tools.for_agents(demo)  # tools as the contract names, free-text fields, JSON results
    traffic.route(demo)  # light and heavy lanes
    return guard.guard_demo(demo)  # identity, allowlist and ownership checks on every event
