"""Merge runs (an accordion in the Compare tab): pick two or more completed LoRA runs on one base,
a method (linear, TIES, DARE...), weights and density; Merge makes a new run (finetune/merge.py, in a
child process) that Evaluate, Compare and push treat like a trained one. The `merge` API and MCP tool."""

from __future__ import annotations

import gradio as gr

from .render import run_choices, user_errors

METHOD_CHOICES = [("linear (weighted sum)", "linear"), ("TIES", "ties"), ("DARE-TIES", "dare"),
                  ("DARE linear", "dare_linear"), ("cat (exact sum, rank adds up)", "cat")]


def _runs(runs) -> list[str]:
    """The chosen run ids, each checked against the caller (the guard checks plain strings only, not
    lists): a run someone else owns reads as missing."""
    from finetune import access

    from .guard import current

    if isinstance(runs, str):
        runs = runs.replace(",", " ").split()
    out = [str(r).strip() for r in (runs or []) if str(r).strip()]
    for r in out:
        access.check_run(current(), r)
    return out


@user_errors
def merge_api(runs, method: str = "ties", weights: str = "", density: float = 0.5, name: str = "") -> dict:
    """Merge two or more completed LoRA runs into a new run, in a child process (the `merge` API)."""
    from finetune import access
    from finetune.merge import DENSITY_METHODS, MERGE_METHODS, parse_weights
    from finetune.workgate import run_child

    from .guard import current

    ids = _runs(runs)
    if method not in MERGE_METHODS:
        raise gr.Error(f"Method must be one of {', '.join(MERGE_METHODS)}.")
    payload = {"run_ids": ids, "method": method, "weights": parse_weights(weights),
               "density": float(density) if method in DENSITY_METHODS and density is not None else None,
               "name": str(name or "")[:60], "owner": current().owner}
    # The route (ui/traffic.py HEAVY_APIS) already holds a heavy slot for this call: run the child directly.
    res = run_child("finetune.merge", payload, env=access.child_env(current()))
    if current().public:  # a visitor never sees a server folder (run_dir, the sources' data paths)
        from finetune.sources import hide_server_paths_in

        res.pop("run_dir", None)
        res = hide_server_paths_in(res)
    return res


def default_weights(runs, method: str) -> str:
    """The weights the method uses when none are given, one per chosen run (shown so they can be edited)."""
    from finetune.merge import SUMMING_METHODS

    n = len([r for r in (runs or []) if str(r).strip()])
    if n < 1:
        return ""
    w = 1.0 / n if method in SUMMING_METHODS else 1.0
    return ", ".join(f"{w:.4g}" for _ in range(n))


def render(result: dict):
    if not result:
        return gr.skip(), gr.skip()
    src = ", ".join(f"`{s['run_id']}` ({s['weight']:g})" for s in result.get("sources") or [])
    text = (f"**New run `{result['run_id']}`**: {result['summary']}\n\nSources (weight): {src}. Pick it in the "
            "Evaluate tab (selected now) or compare it with its sources above.")
    return text, gr.Dropdown(choices=run_choices(), value=result["run_id"])


def build(run_box) -> None:
    with gr.Accordion("Merge runs: combine finished LoRA adapters into a new run", open=False,
                      elem_id="merge-panel"):
        gr.Markdown("Two or more **completed LoRA runs on the same base model** (full fine-tunes, prefix tuning "
                    "and DoRA cannot merge). TIES keeps each adapter's largest entries and resolves sign conflicts; "
                    "DARE drops entries at random and rescales; linear sums them. The result is a new run.",
                    elem_classes="fts-note")
        with gr.Row():
            runs = gr.Dropdown(run_choices(), multiselect=True, max_choices=8, allow_custom_value=True,
                               label="Runs to merge (in order)", scale=3)
            method = gr.Radio(METHOD_CHOICES, value="ties", label="Method", scale=3)
        with gr.Row():
            weights = gr.Textbox(label="Weights, one per run (comma-separated)", placeholder="1, 1", scale=2,
                                 info="empty: 1/n each for linear, DARE linear and cat; 1 each for TIES and DARE-TIES")
            density = gr.Slider(0.05, 1.0, value=0.5, step=0.05, label="Density (TIES, DARE)", scale=2,
                                info="share of each adapter's entries kept")
            name = gr.Textbox(label="Name (optional)", placeholder="merge-ties", scale=1)
        go = gr.Button("Merge", variant="primary")
        summary = gr.Markdown(elem_id="merge-summary")
        raw = gr.JSON(visible=False)
    runs.focus(lambda: gr.Dropdown(choices=run_choices()), None, runs, api_visibility="private")
    for trigger in (runs.change, method.change):
        trigger(default_weights, [runs, method], weights, api_visibility="private")
    method.change(lambda m: gr.Slider(interactive=m in ("ties", "dare", "dare_linear")), method, density,
                  api_visibility="private")
    go.click(merge_api, [runs, method, weights, density, name], raw, api_name="merge", concurrency_limit=1,
             concurrency_id="model_work").then(render, raw, [summary, run_box], api_visibility="private")
