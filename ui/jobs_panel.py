"""Run on Hugging Face Jobs (next to Start training): a flavor picker with the planner's time and cost
for each flavor, a time limit, and the button that submits the same run config as a Job.

The run then shows in the Train view like a local run (state, steps, loss, ETA, Stop), mirrored by
the engine (finetune/jobs.py). The token is the caller's: a token typed here, else their HF login
on a Space (ui/guard.py's identity), else HF_TOKEN locally; never stored or shown. Access (login,
allowlist) is the `train` permission, checked by the guard around every handler.
"""

from __future__ import annotations

import os

import gradio as gr

from .render import user_errors


def _caller_token(typed: str) -> str | None:
    from finetune import access

    from .guard import current

    if (typed or "").strip():
        return typed.strip()
    ident = current()
    if ident.public:  # the visitor's own login; the owner's HF_TOKEN secret only for the owner
        return access.hub_token(ident, for_push=True) or None
    return ident.token or os.environ.get("HF_TOKEN") or None


@user_errors
def flavors_api(model: str, data: str, method: str, learning_rate: float, epochs: float, batch_size: float,
                max_seq_len: float, lora_r: float, typed_token: str = ""):
    """The flavors of Hugging Face Jobs with the planner's time and cost for this run's config."""
    from finetune.jobs import flavor_estimates, flavor_label, list_flavors

    from .train_tab import run_config

    cfg = run_config(model, data, method, learning_rate, epochs, batch_size, max_seq_len, lora_r)
    rows = flavor_estimates(cfg, list_flavors(_caller_token(typed_token)))
    gpu = next((r["name"] for r in rows if r.get("gpus") and r.get("fits")), rows[0]["name"] if rows else None)
    return gr.Dropdown(choices=[(flavor_label(r), r["name"]) for r in rows], value=gpu)


@user_errors
def jobs_api(model: str, data: str, method: str, learning_rate: float, epochs: float, batch_size: float,
             max_seq_len: float, lora_r: float, flavor: str, timeout: str = "2h", typed_token: str = "") -> str:
    """Train this config on Hugging Face Jobs (flavor e.g. a10g-small, timeout e.g. 2h); returns the run id at
    once (the `train_jobs` API). The run is then followed like a local one (`status`, `stop`)."""
    from finetune.jobs import submit

    from .train_tab import run_config

    if not flavor:
        raise gr.Error("Pick a flavor first (↻ loads them from Hugging Face).")
    if method == "grpo":  # this panel sends the basic settings only: the rewards would be lost
        raise gr.Error("GRPO on Hugging Face Jobs: use the CLI (finetune train --method grpo --reward ... "
                       "--backend hf-jobs --flavor ...), which sends the reward settings too; or train it here.")
    from .guard import current

    token = _caller_token(typed_token)
    if not token:
        raise gr.Error("Hugging Face Jobs run on your account: log in, or paste a token with write access.")
    cfg = run_config(model, data, method, learning_rate, epochs, batch_size, max_seq_len, lora_r)
    cfg.owner = current().owner  # the run belongs to the caller, like a local one
    return submit(cfg, flavor=flavor, timeout=timeout or "2h", token=token)


def build() -> dict:
    """The controls, placed by the Train tab under Start training; `wire()` connects them."""
    with gr.Accordion("Run on Hugging Face Jobs", open=False):
        gr.Markdown("Trains the same config on Hugging Face's GPUs (billed to your account per minute) and "
                    "follows it here; the adapter comes back into this run when it ends.")
        with gr.Row():
            flavor = gr.Dropdown([], label="Flavor", info="↻ lists them, with the planner's time and cost", scale=4,
                                 allow_custom_value=True)  # the engine checks it against the Jobs API
            refresh = gr.Button("↻", scale=0, min_width=40)
        timeout = gr.Dropdown(["30m", "1h", "2h", "6h", "12h", "24h"], value="2h", label="Time limit")
        token = gr.Textbox("", label="HF token (optional)", type="password",
                           info="Used for this job only, never saved. On a Space, logging in is enough.")
        go = gr.Button("Run on Hugging Face Jobs")
    return {"flavor": flavor, "refresh": refresh, "timeout": timeout, "token": token, "go": go}


def wire(c: dict, inputs: list, run_id, run_state, run_choices) -> None:
    """inputs: model, data, method, learning rate, epochs, batch size, max length, LoRA rank."""
    c["refresh"].click(flavors_api, inputs + [c["token"]], c["flavor"], api_visibility="private")
    c["go"].click(jobs_api, inputs + [c["flavor"], c["timeout"], c["token"]], run_id, api_name="train_jobs").then(
        lambda r: (r, gr.Dropdown(choices=run_choices(), value=r)), run_id, [run_state, run_id],
        api_visibility="private")
