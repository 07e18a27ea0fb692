"""Export panel (under Evaluate, beside Push to the Hub): merged weights and/or a GGUF + Ollama
Modelfile for a run, checked after writing, offered as downloads. No Hub account needed.

The visitor picks a run and the types, never a folder: files go to the app's own temp folder
(fts-exports/<run>-<types>, which Gradio serves) and come back as downloads; the JSON names files,
not server paths.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr

from .render import run_choices, user_errors

GGUF_CHOICES = ["none", "f16", "bf16", "q8_0", "q4_k_m"]


def export_dir(run_id: str, merged: bool, gguf: str | None) -> Path:
    tag = "-".join(([ "merged"] if merged else []) + ([gguf] if gguf else []))
    return Path(tempfile.gettempdir()) / "fts-exports" / f"{run_id}-{tag}"


@user_errors
def export_api(run_id: str, merged: bool = False, gguf: str = "q4_k_m", system: str = "",
               progress=gr.Progress()) -> tuple[dict, list[str]]:
    """Export a run: merged safetensors and/or a GGUF (f16, bf16, q8_0, q4_k_m) with an Ollama Modelfile, each
    loaded back and compared with the merged model (the `export` API). Returns (result, files to download)."""
    import shutil

    from finetune import access
    from finetune.paths import is_safe_name
    from finetune.workgate import run_child

    from .guard import current

    run_id = (run_id or "").strip()
    if not run_id or not is_safe_name(run_id):
        raise gr.Error("Choose a run to export.")
    gguf = None if gguf in (None, "", "none") else gguf
    out = export_dir(run_id, bool(merged), gguf)
    shutil.rmtree(out, ignore_errors=True)  # one export per run and choice: a new one replaces it
    progress(0.05, desc="exporting (merge, convert, load back and compare)")
    # In a child process (the route holds a heavy slot): the merge, the quantizing and the load-back
    # hold neither the app's GIL nor its memory, and a failure cannot take the app down.
    try:
        res = run_child("finetune.export", {"run_id": run_id, "out_dir": str(out), "merged": bool(merged),
                                            "gguf": gguf, "system": (system or "").strip() or None},
                        env=access.child_env(current()))
    except ValueError as e:
        shutil.rmtree(out, ignore_errors=True)
        raise gr.Error(str(e), duration=None) from None
    files = [f for f in res["files"] if Path(f).is_file()]
    shown = dict(res, out=out.name, files=[str(Path(f).relative_to(out)) for f in files],
                 modelfile=Path(res["modelfile"]).name if res.get("modelfile") else None)
    if shown.get("gguf"):  # a "path" key reads as a file to download to gradio_client: "file", a name
        g = shown["gguf"]
        shown["gguf"] = {**{k: v for k, v in g.items() if k != "path"}, "file": Path(g["path"]).name}
    return shown, files


def render_export(res: dict) -> str:
    from finetune.export import agreement_text

    if not res:
        return gr.skip()
    lines = [f"**Exported {res.get('run_id')}**: {len(res.get('files') or [])} files."]
    g = res.get("gguf")
    if g:
        types = ", ".join(f"{k.lower()} ×{v}" for k, v in sorted(g["types"].items()))
        lines.append(f"GGUF **{g['qtype']}** ({g['family']}, {g['size_bytes'] / 1e6:.1f} MB): {types}.")
        if g.get("fallbacks"):
            lines.append(f"{len(g['fallbacks'])} tensors kept in a wider type (row size): "
                         + "; ".join(g["fallbacks"][:3]) + ("…" if len(g["fallbacks"]) > 3 else ""))
    if res.get("modelfile"):
        lines.append(f"Ollama Modelfile: template **{res.get('template')}**, stops "
                     f"{', '.join(f'`{s}`' for s in res.get('stops') or []) or 'none'}.")
    if res.get("agreement"):
        lines.append("Checked after writing:\n" + "\n".join(f"- {ln}" for ln in
                                                           agreement_text(res["agreement"]).splitlines()))
    return "\n\n".join(lines)


def build(run_box) -> None:
    with gr.Accordion("Export (merged weights, GGUF for llama.cpp / Ollama)", open=False, elem_id="export-panel"):
        gr.Markdown("Writes the run's **merged** weights (safetensors) and/or a **GGUF** with an Ollama "
                    "`Modelfile`, loads each back and compares it with the merged model. No Hub account needed.",
                    elem_classes="fts-note")
        with gr.Row():
            run = gr.Dropdown(run_choices(), value=None, allow_custom_value=True, label="Run to export", scale=2,
                              elem_id="export-run")
            merged = gr.Checkbox(label="Merged safetensors", value=False, scale=1)
            gguf = gr.Dropdown(GGUF_CHOICES, value="q4_k_m", label="GGUF type", scale=1)
            system = gr.Textbox("", label="System prompt for the Modelfile (optional)", scale=3)
        go = gr.Button("Export", variant="primary", elem_id="export-button")
        out = gr.Markdown(elem_id="export-result")
        files = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="export-files")
        raw = gr.JSON(visible=False)
    # follows the run the Train tab shows, as the Evaluate tab's own box does
    run_box.change(lambda r: gr.Dropdown(choices=run_choices(), value=r), run_box, run, api_visibility="private")
    go.click(export_api, [run, merged, gguf, system], [raw, files], api_name="export",
             concurrency_limit=1).then(render_export, raw, out, api_visibility="private")
