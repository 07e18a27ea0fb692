"""Evaluate tab: base vs fine-tuned perplexity and exact match on the run's validation split."""

from __future__ import annotations

import gradio as gr

from .render import num, pct, run_choices, user_errors


@user_errors
def evaluate_api(run_id: str, max_examples: float) -> dict:
    """Evaluate a run against its base model and write eval/report.json and .md (the `evaluate` API)."""
    from finetune.evaluate import evaluate_run

    if not run_id:
        raise gr.Error("Choose a run to evaluate.")
    return evaluate_run(run_id.strip(), max_examples=int(max_examples or 200))


def render_report(r: dict):
    if not r:
        return gr.skip(), gr.skip()
    from finetune.evaluate import report_markdown

    b, f, d = r["base"], r["finetuned"], r["delta"]
    head = (f"## Exact match: {pct(b['exact_match'])} → **{pct(f['exact_match'])}** "
            f"({'+' if (d['exact_match'] or 0) >= 0 else ''}{pct(d['exact_match'])})\n"
            f"Perplexity: {num(b['perplexity'])} → **{num(f['perplexity'])}** on {r['examples']} validation examples.")
    return head, report_markdown(r)


@user_errors
def _download(run_id: str | None):
    from .train_live import download_value

    return download_value((run_id or "").strip() or None)


def build(run_box) -> None:
    with gr.Row():
        run_id = gr.Dropdown(run_choices(), allow_custom_value=True, label="Run", scale=3)
        max_ex = gr.Number(value=200, precision=0, minimum=1, label="Max examples", scale=1)
        go = gr.Button("Evaluate", variant="primary", scale=1)
    download = gr.DownloadButton("Download adapter (.zip)", visible=False, elem_id="eval-download")
    headline = gr.Markdown("Choose a finished run and press **Evaluate**.")
    report = gr.Markdown()
    raw = gr.JSON(visible=False)
    run_box.change(lambda r: gr.Dropdown(choices=run_choices(), value=r), run_box, run_id, api_visibility="private")
    run_id.change(_download, run_id, download, api_visibility="private")
    run_id.focus(lambda: gr.Dropdown(choices=run_choices()), None, run_id, api_visibility="private")
    go.click(evaluate_api, [run_id, max_ex], raw, api_name="evaluate", concurrency_limit=1).then(
        render_report, raw, [headline, report], api_visibility="private")
