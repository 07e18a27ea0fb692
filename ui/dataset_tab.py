"""Dataset tab: load a file or builtin:demo, detect and convert its format, report issues, preview
exactly which tokens will be trained, and save a seeded train/validation split."""

from __future__ import annotations

import gradio as gr

from finetune.builtin import DEMO_DATASET_ID, TINY_CHAT_ID

from .render import md_table, user_errors

FORMATS = ["auto", "alpaca", "messages", "sharegpt", "text", "prompt_completion", "preference", "kto", "classification"]


def _source(upload, source: str) -> str:
    path = upload if isinstance(upload, str) else getattr(upload, "name", None) if upload else None
    src = path or (source or "").strip()
    if not src:
        raise gr.Error("Choose builtin:demo, a saved dataset, or upload a file.")
    return src


def _mapping(text: str) -> dict | None:
    out = {}
    for part in (text or "").replace("\n", ",").split(","):
        if part.strip():
            if "=" not in part:
                raise gr.Error(f"Column mapping {part.strip()!r}: write field=column, e.g. instruction=question")
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out or None


def dataset_choices() -> list[str]:
    from finetune.paths import datasets_dir

    prepared = sorted(str(p) for p in datasets_dir().iterdir() if (p / "meta.json").exists())
    return [DEMO_DATASET_ID] + prepared


@user_errors
def inspect_api(upload, source: str, fmt: str, mapping: str, model: str) -> dict:
    """Detect the format, convert, and report quality and token statistics (the `inspect_dataset` API)."""
    from finetune.data import inspect_dataset
    from finetune.modeling import load_tokenizer

    tok = load_tokenizer(model or TINY_CHAT_ID)
    return inspect_dataset(_source(upload, source), fmt=None if fmt in (None, "", "auto") else fmt,
                           mapping=_mapping(mapping), tokenizer=tok)


@user_errors
def prepare_api(upload, source: str, fmt: str, mapping: str, val_ratio: float, seed: float, name: str) -> dict:
    """Convert and split into train/validation files under the home folder (the `prepare_dataset` API)."""
    from finetune.data import prepare_dataset

    return prepare_dataset(_source(upload, source), None, val_ratio=float(val_ratio), seed=int(seed),
                           fmt=None if fmt in (None, "", "auto") else fmt, mapping=_mapping(mapping),
                           name=(name or "").strip() or None)


def render_inspection(info: dict, model: str):
    if not info:
        return gr.skip(), gr.skip()
    from finetune.modeling import load_tokenizer
    from finetune.tokenize import TokenizeError, render_trained_tokens

    ts = info.get("token_stats") or {}
    lines = [f"### Format: **{info.get('format')}** ({100 * (info.get('confidence') or 0):.0f}% confident) → {info.get('kind')}",
             "", *[f"- {e}" for e in info.get("evidence", [])[:5]], "",
             f"**{info.get('rows')} rows** · columns: {', '.join(info.get('columns', []))} · "
             f"tokens: total {ts.get('total')}, mean {ts.get('mean')}, p95 {ts.get('p95')}, max {ts.get('max')}"
             + (" (approximate)" if ts.get("approximate") else ""),
             "", f"**Quality score: {info.get('quality_score')} / 100**",
             *[f"- {r}" for r in info.get("quality_reasons", [])], "", "#### Issues",
             md_table([{**i, "examples": "; ".join(map(str, i.get("examples", [])))} for i in info.get("issues", [])],
                      ["rule", "count", "examples"])]
    spans: list[tuple[str, str | None]] = []
    if info.get("kind") in ("messages", "prompt_completion", "text"):
        tok = load_tokenizer(model or TINY_CHAT_ID)
        for row in info.get("preview", [])[:3]:
            try:
                for text, trained in render_trained_tokens(tok, row, info["kind"]):
                    spans.append((text, "trained" if trained else None))
            except TokenizeError as exc:
                spans.append((f"[cannot render: {exc}]", "problem"))
            spans.append(("\n\n", None))
    return "\n".join(lines), spans


def build(model_box, source) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(label="Upload (JSONL, JSON, CSV, TSV, Parquet, TXT)", type="filepath",
                             file_types=[".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt"])
            fmt = gr.Dropdown(FORMATS, value="auto", label="Format", info="auto-detects; choose to override")
            mapping = gr.Textbox(label="Column mapping (optional)", placeholder="instruction=question, output=answer")
            inspect = gr.Button("Inspect", variant="primary")
            with gr.Row():
                val_ratio = gr.Slider(0.0, 0.5, value=0.1, step=0.01, label="Validation share")
                seed = gr.Number(value=42, precision=0, label="Seed")
            name = gr.Textbox(label="Save as (name)", placeholder="my-dataset")
            prepare = gr.Button("Prepare and save split")
        with gr.Column(scale=2):
            report = gr.Markdown("Press **Inspect** to see the format, the issues and what will be trained.")
            preview = gr.HighlightedText(label="What will be trained (highlighted tokens carry loss)",
                                         color_map={"trained": "green", "problem": "red"}, combine_adjacent=True)
            saved = gr.JSON(label="Prepared dataset")
            info = gr.JSON(visible=False)
    inspect.click(inspect_api, [upload, source, fmt, mapping, model_box], info, api_name="inspect_dataset").then(
        render_inspection, [info, model_box], [report, preview], api_visibility="private")
    prepare.click(prepare_api, [upload, source, fmt, mapping, val_ratio, seed, name], saved, api_name="prepare_dataset").then(
        lambda: gr.Dropdown(choices=dataset_choices()), None, source, api_visibility="private")
