"""Push to Hub panel (under Evaluate): a run's adapter or model, card, eval report, loss curve, and
optionally merged weights and GGUF, as one commit to a private (by default) model repo.

The token is the caller's: their HF login on a Space (gr.OAuthToken, write-repos scope), else a
token typed here, else HF_TOKEN locally. It is passed to the engine, never stored or shown.
"""

from __future__ import annotations

import gradio as gr

from .render import user_errors


@user_errors
def push_api(run_id: str, repo: str, public: bool = False, merged: bool = False, gguf: str = "none",
             write_token: str = "", progress=gr.Progress()) -> dict:
    """Push a run to the Hub in one commit; returns {url, commit, files} (the `push` API).
    repo is OWNER/NAME; new repos are private unless public is true; gguf is none, f16, bf16, q8_0 or q4_k_m."""
    from finetune import access
    from finetune.hub import push_run

    from .guard import current

    if not run_id:
        raise gr.Error("Choose a run to push.")
    ident = current()
    if (write_token or "").strip():
        tok = write_token.strip()  # the caller's own token, typed for this push only
    else:
        tok = access.hub_token(ident, for_push=True)
    if ident.public and not tok:
        raise gr.Error("No token to push with: log in with your Hugging Face account (write-repos scope) or "
                       "paste a write token.", duration=None)
    return push_run(run_id.strip(), repo, token=tok, private=not public, merged=bool(merged),
                    gguf=None if gguf in (None, "", "none") else gguf,
                    progress=lambda f, m: progress(f, desc=m))


def render_push(res: dict) -> str:
    if not res:
        return gr.skip()
    vis = "private" if res.get("private") else "public"
    return (f"Pushed to [{res['repo_id']}]({res['url']}) ({vis}), commit `{res['commit'][:10]}`: "
            f"{len(res['files'])} files ({', '.join(res['files'][:8])}{', …' if len(res['files']) > 8 else ''}).")


def build(run_box) -> None:
    with gr.Accordion("Push to the Hub", open=False):
        gr.Markdown("Sends the adapter (or model), tokenizer, evaluation report, loss curve and a model card in "
                    "**one commit**. New repos are **private** unless you tick Public.", elem_classes="fts-note")
        with gr.Row():
            repo = gr.Textbox(label="Repo (OWNER/NAME)", placeholder="your-name/my-adapter", scale=3)
            public = gr.Checkbox(label="Public", value=False, scale=1)
            merged = gr.Checkbox(label="Also merged weights", value=False, scale=1)
            gguf = gr.Dropdown(["none", "f16", "bf16", "q8_0", "q4_k_m"], value="none", label="GGUF", scale=1)
        token = gr.Textbox("", label="HF token (optional)", type="password",
                           info="Used for this push only, never saved. On a Space, logging in is enough.")
        go = gr.Button("Push", variant="primary")
        out = gr.Markdown()
        raw = gr.JSON(visible=False)
    go.click(push_api, [run_box, repo, public, merged, gguf, token], raw, api_name="push", concurrency_limit=1).then(
        render_push, raw, out, api_visibility="private")
