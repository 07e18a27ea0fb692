"""Compare tab: base and fine-tuned answers side by side for the same prompts."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from .render import run_choices, user_errors


@user_errors
def compare_api(run_id: str, prompts: str, max_new_tokens: float) -> dict:
    """Generate base and fine-tuned answers for each prompt (one per line) (the `compare` API)."""
    from finetune.compare import compare_run

    if not run_id:
        raise gr.Error("Choose a run to compare.")
    lines = [p.strip() for p in (prompts or "").splitlines() if p.strip()]
    return compare_run(run_id.strip(), lines or None, max_new_tokens=int(max_new_tokens or 32))


def render(result: dict):
    if not result:
        return gr.skip()
    return pd.DataFrame(result["rows"], columns=["prompt", "base", "finetuned"]).rename(
        columns={"finetuned": "fine-tuned"})


def build(run_box) -> None:
    with gr.Row():
        run_id = gr.Dropdown(run_choices(), allow_custom_value=True, label="Run", scale=3)
        max_new = gr.Slider(1, 512, value=32, step=1, label="Max new tokens", scale=1)
    prompts = gr.Textbox(lines=5, label="Prompts, one per line (empty: the run's validation prompts)",
                         placeholder="What is the capital of France?\nIs 42 even or odd?")
    go = gr.Button("Compare", variant="primary")
    table = gr.Dataframe(headers=["prompt", "base", "fine-tuned"], wrap=True, label="Side by side",
                         column_widths=["30%", "35%", "35%"])
    raw = gr.JSON(visible=False)
    run_box.change(lambda r: gr.Dropdown(choices=run_choices(), value=r), run_box, run_id, api_visibility="private")
    run_id.focus(lambda: gr.Dropdown(choices=run_choices()), None, run_id, api_visibility="private")
    go.click(compare_api, [run_id, prompts, max_new], raw, api_name="compare", concurrency_limit=1).then(
        render, raw, table, api_visibility="private")
