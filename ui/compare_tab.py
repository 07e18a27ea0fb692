"""Compare tab: the base and up to four runs on the same prompts (same decoding and seed, with
latency), the runs' loss curves, metrics and config diff, and blind A/B votes exported as DPO data.

The blind pair's answers are the only thing the page receives: its pair id is random, and which
model wrote which side stays on the server until the vote is cast."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from . import chat_tab
from .render import md_table, run_choices, user_errors


def model_choices() -> list[str]:
    return ["base"] + run_choices()


def _models(runs) -> list[str]:
    """The chosen models, each run checked against the caller (the guard checks only plain string
    inputs, not lists: a run someone else owns reads as missing here too)."""
    from finetune import access

    from .guard import current

    if isinstance(runs, str):
        runs = [r for r in runs.replace(",", " ").split() if r]
    out = [str(r).strip() for r in (runs or []) if str(r).strip()]
    for r in out:
        if r != "base":
            access.check_run(current(), r)
    return out


def _owner() -> str:
    from .guard import current

    return current().owner


@user_errors
def compare_api(runs, prompts: str, max_new_tokens: float = 64, seed: float = 0) -> dict:
    """Answers of the base and up to four runs to the same prompts (one per line; empty: the first
    run's validation prompts), same greedy decoding and seed, with latency (the `compare` API)."""
    from finetune.compare import compare_models, compare_runs

    models = _models(runs)
    if not [m for m in models if m != "base"]:
        raise gr.Error("Choose one or more runs to compare (and 'base' for the base model).")
    lines = [p.strip() for p in (prompts or "").splitlines() if p.strip()]
    out = compare_models(models, lines or None, max_new_tokens=int(max_new_tokens or 64), seed=int(seed or 0))
    out["runs"] = compare_runs([m for m in models if m != "base"])
    return out


def render(result: dict):
    if not result:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
    models = result["models"]
    table = pd.DataFrame([[r["prompt"]] + [r["answers"][m] for m in models] for r in result["rows"]],
                         columns=["prompt"] + models)
    lat = " · ".join(f"**{m}** {v['per_prompt_s'] * 1000:.0f} ms/prompt" for m, v in result["latency"].items())
    dec = result["decoding"]
    info = f"Latency: {lat}  \nGreedy decoding, max {dec['max_new_tokens']} new tokens, seed {dec['seed']}."
    runs = result.get("runs") or {}
    curves = pd.DataFrame(runs.get("curves") or [], columns=["run", "step", "value", "series"])
    if len(curves):
        curves["curve"] = curves["run"].str[-12:] + " " + curves["series"]
    rows = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in runs.get("metrics") or []]
    metric_cols = list(dict.fromkeys(k for row in rows for k in row))
    diff = runs.get("config_diff") or []
    return (table, info, gr.LinePlot(value=curves if len(curves) else None),
            md_table(rows, metric_cols),
            md_table(diff, ["setting"] + runs.get("runs", [])) if diff else "_the configs are the same_")


@user_errors
def ab_pair_api(runs, prompt: str) -> dict:
    """Two of the chosen models ("base" or run ids) answer the prompt; returns {pair_id, a, b} with
    sides shuffled and no hint of which model wrote which (the `ab_pair` API)."""
    from finetune.votes import ab_pair

    return ab_pair(_models(runs), prompt or "", owner=_owner())


@user_errors
def vote_api(pair_id: str, choice: str) -> dict:
    """Record a vote on a blind pair: A, B or tie (the `vote` API); reveals the models afterwards."""
    from finetune.votes import vote

    return vote(str(pair_id or ""), str(choice or ""), owner=_owner())


@user_errors
def export_votes_api() -> dict:
    """Write the votes as a prompt/chosen/rejected dataset for DPO; returns {path, rows} (the
    `export_votes` API)."""
    from pathlib import Path

    from finetune import access
    from finetune.paths import datasets_dir
    from finetune.votes import export_votes

    from .guard import current

    ident = current()
    if not ident.public:
        return export_votes()
    name = f"ab-votes-{ident.owner}.jsonl"  # each visitor's own votes, in a dataset they own
    out = export_votes(str(datasets_dir() / name), owner=ident.owner)
    access.set_dataset_owner(Path(out["path"]).name, ident)
    return out


def _show_pair(p: dict):
    if not p:
        return gr.skip(), gr.skip(), gr.skip()
    return p["a"], p["b"], "Which answer is better? Vote below; the models are revealed after the vote."


def _vote(p: dict, choice: str):
    if not p:
        raise gr.Error("Ask for a blind pair first.")
    r = vote_api(p["pair_id"], choice)
    return (f"Recorded **{choice}**. A was `{r['a_model']}`, B was `{r['b_model']}`. "
            f"{r['votes']} vote(s) so far: export them as a DPO dataset below."), None


def _export():
    r = export_votes_api()
    return (f"Exported **{r['rows']}** preference rows to `{r['path']}` (ties and identical answers skipped): pick it "
            "as the Train tab's dataset with method dpo."), r["path"]


def build(run_box) -> None:
    with gr.Row():
        models = gr.Dropdown(model_choices(), value=["base"], multiselect=True, max_choices=5,
                             allow_custom_value=True, label="Models: base and up to 4 runs", scale=3)
        max_new = gr.Slider(1, 512, value=32, step=1, label="Max new tokens", scale=1)
        seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", scale=1)
    prompts = gr.Textbox(lines=4, label="Prompts, one per line (empty: the first run's validation prompts)",
                         placeholder="What is the capital of France?\nIs 42 even or odd?")
    go = gr.Button("Compare", variant="primary")
    table = gr.Dataframe(wrap=True, label="Side by side (same prompts, decoding and seed)")
    latency = gr.Markdown()
    with gr.Accordion("Runs: loss curves, metrics and config diff", open=True):
        curves = gr.LinePlot(x="step", y="value", color="curve", label="Loss curves", height=340)
        metrics = gr.Markdown()
        diff = gr.Markdown()
    raw = gr.JSON(visible=False)
    with gr.Accordion("Blind A/B: vote, then export the votes as DPO data", open=True):
        ab_prompt = gr.Textbox(label="Prompt for a blind pair (two of the models above, drawn at random)")
        new_pair = gr.Button("New blind pair")
        with gr.Row():
            ans_a = gr.Textbox(label="A", lines=4, interactive=False)
            ans_b = gr.Textbox(label="B", lines=4, interactive=False)
        ab_note = gr.Markdown()
        with gr.Row():
            vote_a, vote_b, vote_tie = gr.Button("A is better"), gr.Button("B is better"), gr.Button("Tie")
        export = gr.Button("Export votes as a DPO dataset")
        export_file = gr.File(label="Preference dataset (prompt / chosen / rejected)", interactive=False, height=90)
    pair = gr.JSON(visible=False)  # {pair_id, a, b}: nothing that names a model

    def refresh(r=None):
        choices = model_choices()
        return gr.Dropdown(choices=choices, value=["base", r] if r and r in choices else gr.skip())

    run_box.change(refresh, run_box, models, api_visibility="private")
    models.focus(lambda: gr.Dropdown(choices=model_choices()), None, models, api_visibility="private")
    go.click(compare_api, [models, prompts, max_new, seed], raw, api_name="compare", concurrency_limit=1,
             concurrency_id="model_work").then(render, raw, [table, latency, curves, metrics, diff],
                                               api_visibility="private")
    new_pair.click(ab_pair_api, [models, ab_prompt], pair, api_name="ab_pair", concurrency_limit=1,
                   concurrency_id="model_work").then(_show_pair, pair, [ans_a, ans_b, ab_note],
                                                     api_visibility="private")
    for btn, choice in ((vote_a, "A"), (vote_b, "B"), (vote_tie, "tie")):
        btn.click(lambda p, c=choice: _vote(p, c), pair, [ab_note, pair], api_visibility="private")
    export.click(_export, None, [ab_note, export_file], api_visibility="private")
    gr.api(vote_api, api_name="vote")
    gr.api(export_votes_api, api_name="export_votes")
    chat_tab.build(run_box)

    from . import merge_panel  # Merge runs: a new run from finished LoRA runs (the `merge` API)

    merge_panel.build(run_box)
