"""Dataset tab: load a file, a saved dataset, builtin:demo or a Hub dataset; detect and map its format;
report quality, token lengths and exactly which tokens will be trained; clean and save a seeded
train/validation split; grow it with paraphrases or self-instruct rows (finetune.data.augment)."""

from __future__ import annotations

import gradio as gr

from finetune.builtin import BUILTIN_DATASETS, TINY_CHAT_ID
from finetune.data import FORMAT_FIELDS

from .render import check_source, md_table, tokenizer_or_none, user_errors

FORMATS = ["auto", "alpaca", "messages", "sharegpt", "text", "prompt_completion", "preference", "kto", "classification"]
N_MAP = max(len(f) for f in FORMAT_FIELDS.values())  # one dropdown per canonical field


def _source(upload, source: str) -> str:
    path = upload if isinstance(upload, str) else getattr(upload, "name", None) if upload else None
    src = path or (source or "").strip()
    if not src:
        raise gr.Error("Choose builtin:demo, a saved dataset, or upload a file.")
    return check_source(src, uploaded=bool(path))


def _fmt(fmt):
    return None if fmt in (None, "", "auto") else fmt


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
    from finetune.data import saved_datasets

    from .guard import visible_dataset_names

    names = set(visible_dataset_names([d["name"] for d in saved_datasets()]))
    return list(BUILTIN_DATASETS) + [d["dir"] for d in saved_datasets() if d["name"] in names]


@user_errors
def inspect_api(upload, source: str, fmt: str, mapping: str, model: str, max_seq_len: float = 0,
                min_examples: float = 1000) -> dict:
    """Detect the format, convert, and report quality, token statistics and the trained-token share
    (the `inspect_dataset` API). max_seq_len 0 means no limit. A source over FINETUNE_SMALL_SOURCE_MB
    is heavy work (a child process, once a heavy slot is free); an upload is named by its file name."""
    from pathlib import Path

    from finetune.inspect_cache import inspect_with_model
    from finetune.workgate import is_small_source

    from .traffic import in_heavy_child

    src = _source(upload, source)
    args = {"source": src, "model": model or TINY_CHAT_ID, "fmt": _fmt(fmt), "mapping": _mapping(mapping),
            "max_seq_len": int(max_seq_len or 0) or None, "min_examples": int(min_examples or 0)}
    if is_small_source(src):
        res = inspect_with_model(**args)
    else:
        res = in_heavy_child("inspect_dataset", "finetune.inspect_cache", args)
    if res.get("tokenizer_warning"):
        gr.Warning(res.pop("tokenizer_warning"))
    return {**res, "source": Path(src).name} if upload else res


@user_errors
def prepare_api(upload, source: str, fmt: str, mapping: str, val_ratio: float, seed: float, name: str,
                mask_pii: bool = False, dedupe: str = "none", model: str = "", max_seq_len: float = 0,
                strict: bool = False) -> dict:
    """Convert, clean and split into train/validation files under the home folder (the
    `prepare_dataset` API). Rows that cannot be converted are dropped and listed (cleaning.skipped_rows:
    row, file line, field, problem); with strict, the first one refuses the file instead. With a model,
    a dataset in which no token would be trained is refused."""
    from finetune.data import prepare_dataset

    from .guard import dataset_name_for_caller, record_dataset_owner

    src = _source(upload, source)
    res = record_dataset_owner(prepare_dataset(
        src, None, val_ratio=float(val_ratio), seed=int(seed), fmt=_fmt(fmt), mapping=_mapping(mapping),
        name=dataset_name_for_caller((name or "").strip() or None, src),
        mask_pii=bool(mask_pii), dedupe=None if dedupe in (None, "", "none") else dedupe,
        tokenizer=model or None, max_seq_len=int(max_seq_len or 0) or None, on_error="raise" if strict else "skip"))
    dropped = res["cleaning"].get("skipped_rows") or []
    if dropped:
        where = "; ".join(f"{'line ' + str(d['line']) if d.get('line') else 'row ' + str(d['row'])}"
                          f"{' (' + d['field'] + ')' if d.get('field') else ''}: {d['problem']}" for d in dropped[:5])
        more = f" and {res['cleaning']['skipped_invalid'] - 5} more" if res["cleaning"]["skipped_invalid"] > 5 else ""
        gr.Warning(f"Dropped {res['cleaning']['skipped_invalid']} invalid row(s): {where}{more}.")
    return res


def picked(upload, source: str):
    """The shared Dataset picker follows what was just inspected or uploaded."""
    try:
        return gr.Dropdown(choices=dataset_choices(), value=_source(upload, source), allow_custom_value=True)
    except gr.Error:
        return gr.skip()


def picked_result(res: dict | None):
    """After Prepare or Augment, the picker selects the saved dataset."""
    if not res or not res.get("dir"):
        return gr.skip()
    return gr.Dropdown(choices=dataset_choices(), value=res["dir"], allow_custom_value=True)


@user_errors
def augment_api(upload, source: str, method: str, n: float, seed: float, model: str, name: str) -> dict:
    """Add paraphrased or self-instruct rows to the training split and save a new prepared dataset
    (the `augment_dataset` API)."""
    from finetune.data import augment_dataset

    from .guard import dataset_name_for_caller, record_dataset_owner

    src = _source(upload, source)
    return record_dataset_owner(augment_dataset(src, method=method, n=int(n), seed=int(seed), model=model or TINY_CHAT_ID,
                                                name=dataset_name_for_caller((name or "").strip() or None, src)))


@user_errors
def use_hub(dataset_id: str, config: str, split: str):
    from finetune.data import hub_source

    return gr.Dropdown(value=hub_source(dataset_id, config, split))


def mapping_controls(info: dict | None, fmt: str):
    """Relabel the mapping dropdowns for the chosen (or detected) format's fields, offering the
    columns found; a hint says what to do when the format is unknown."""
    info = info or {}
    chosen = _fmt(fmt) or info.get("format")
    fields = FORMAT_FIELDS.get(chosen, ())
    cols = [""] + list(info.get("columns") or [])
    current = info.get("mapping") or {}
    boxes = [gr.Dropdown(label=fields[i], choices=cols, value=current.get(fields[i], ""), visible=True, interactive=True)
             if i < len(fields) else gr.Dropdown(choices=[""], visible=False, value="") for i in range(N_MAP)]
    if info.get("format") == "unknown":
        hint = f"**Format not recognised.** {info.get('hint') or ''}" + ("" if fields else " Choose a format above first.")
    elif info:
        hint = f"Columns found: {', '.join(info.get('columns', []))}. Change a field's column to override detection."
    else:
        hint = "Inspect first to see the columns, or type field=column pairs below."
    return [hint, gr.Accordion(open=info.get("format") == "unknown" or bool(_fmt(fmt)))] + boxes


def mapping_text(info: dict | None, fmt: str, *values) -> str:
    fields = FORMAT_FIELDS.get(_fmt(fmt) or (info or {}).get("format"), ())
    return ", ".join(f"{f}={v}" for f, v in zip(fields, values) if v)


def _report(info: dict) -> str:
    ts, tt, req = info.get("token_stats") or {}, info.get("trained_tokens") or {}, info.get("requirement") or {}
    ok = "✅" if info.get("meets_requirement") else "⚠️"
    lines = [f"### Format: **{info.get('format')}** ({100 * (info.get('confidence') or 0):.0f}% confident) → {info.get('kind')}",
             *[f"- {e}" for e in info.get("evidence", [])[:5]], "",
             f"**{info.get('rows')} rows** ({info.get('rows_valid')} usable) · columns: {', '.join(info.get('columns', []))} · "
             f"tokens: total {ts.get('total')}, mean {ts.get('mean')}, p95 {ts.get('p95')}, max {ts.get('max')}"
             + (" (approximate)" if ts.get("approximate") else ""), "",
             f"{ok} **Size:** {req.get('reason', '')}"]
    if tt:
        icon = {"ok": "✅", "low": "⚠️", "none": "⛔"}.get(tt.get("status"), "ℹ️")
        lines += ["", f"{icon} **Trained tokens:** {tt.get('message')}"]
    lines += ["", f"**Quality score: {info.get('quality_score')} / 100**", *[f"- {r}" for r in info.get("quality_reasons", [])]]
    if info.get("hint"):
        lines += ["", f"**{info['hint']}**"]
    fs = info.get("field_stats") or {}
    if fs:
        lines += ["", "#### Fields", md_table([{"field": k, **v, "empty_share": f"{100 * v['empty_share']:.1f}%"} for k, v in fs.items()],
                                              ["field", "count", "mean_chars", "max_chars", "empty_share"])]
    if info.get("labels"):
        counts = info["labels"]["counts"]
        total = sum(counts.values()) or 1
        lines += ["", "#### Labels", md_table([{"label": k, "rows": v, "share": f"{100 * v / total:.1f}%"} for k, v in counts.items()],
                                              ["label", "rows", "share"])]
    lines += ["", "#### Issues", md_table([{**i, "examples": "; ".join(map(str, i.get("examples", [])))}
                                           for i in info.get("issues", [])], ["rule", "count", "examples"])]
    return "\n".join(lines)


def _histogram(info: dict):
    import pandas as pd

    h = (info.get("token_stats") or {}).get("histogram") or {}
    edges, counts = h.get("edges", []), h.get("counts", [])
    labels = [f"{a}–{b - 1}" if b - 1 > a else str(a) for a, b in zip(edges, edges[1:])]
    return gr.BarPlot(pd.DataFrame({"tokens": labels, "rows": counts}), sort=labels)


def render_inspection(info: dict, model: str):
    if not info:
        return gr.skip(), gr.skip(), gr.skip()
    from finetune.tokenize import TokenizeError, render_trained_tokens

    spans: list[tuple[str, str | None]] = []
    tt = info.get("trained_tokens") or {}
    if tt.get("status") == "none":
        spans.append((f"⛔ Refused: {tt.get('message')}\n\n", "problem"))
    elif tt.get("status") == "low":
        gr.Warning(tt.get("message"))
    tok = tokenizer_or_none(model or TINY_CHAT_ID) if info.get("kind") in ("messages", "prompt_completion", "text") else None
    if tok is not None:
        for row in info.get("preview", [])[:3]:
            try:
                for text, trained in render_trained_tokens(tok, row, info["kind"]):
                    spans.append((text, "trained" if trained else "masked"))
            except TokenizeError as exc:
                spans.append((f"[cannot render: {exc}]", "problem"))
            spans.append(("\n\n", None))
    return _report(info), spans, _histogram(info)


def build(model_box, source) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(label="Upload (JSONL, JSON, CSV, TSV, Parquet, TXT)", type="filepath", elem_id="dataset-upload",
                             file_types=[".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt"])
            with gr.Accordion("From the Hugging Face Hub", open=False):
                hub_id = gr.Textbox(label="Dataset id", placeholder="owner/name")
                with gr.Row():
                    hub_config = gr.Textbox(label="Config", placeholder="default")
                    hub_split = gr.Textbox(label="Split", value="train")
                hub_use = gr.Button("Use this Hub dataset", size="sm")
            fmt = gr.Dropdown(FORMATS, value="auto", label="Format", info="auto-detects; choose to override")
            with gr.Accordion("Column mapping (override detection)", open=False) as map_acc:
                map_hint = gr.Markdown("Inspect first to see the columns, or type field=column pairs below.")
                boxes = [gr.Dropdown([""], value="", visible=False, allow_custom_value=True) for _ in range(N_MAP)]
                mapping = gr.Textbox(label="Column mapping (field=column)", placeholder="instruction=question, output=answer")
            with gr.Row():
                max_len = gr.Number(value=0, precision=0, label="Max sequence length", info="0 = no limit")
                min_ex = gr.Number(value=1000, precision=0, label="Examples needed", info="SFT 1000, LoRA 100+")
            inspect = gr.Button("Inspect", variant="primary")
            with gr.Row():
                val_ratio = gr.Slider(0.0, 0.5, value=0.1, step=0.01, label="Validation share")
                seed = gr.Number(value=42, precision=0, label="Seed")
            with gr.Row():
                mask_pii = gr.Checkbox(label="Mask e-mails, phones and keys")
                dedupe = gr.Radio(["none", "exact", "near"], value="none", label="Drop duplicates")
            strict = gr.Checkbox(False, label="Strict: refuse the file if any row is invalid",
                                 info="off: invalid rows are dropped and listed by line")
            name = gr.Textbox(label="Save as (name)", placeholder="my-dataset", elem_id="prepare-name")
            prepare = gr.Button("Prepare and save split")
            with gr.Accordion("Augment: paraphrases or synthetic rows", open=False):
                method = gr.Radio(["paraphrase", "self_instruct"], value="paraphrase", label="Method",
                                  info="self_instruct asks the base model for new pairs; a random model's output is rejected")
                with gr.Row():
                    aug_n = gr.Number(value=50, precision=0, label="New rows")
                    aug_seed = gr.Number(value=42, precision=0, label="Seed")
                aug_name = gr.Textbox(label="Save as (name)", placeholder="my-dataset-aug")
                augment = gr.Button("Generate and save")
                augmented = gr.JSON(label="Augmented dataset")
        with gr.Column(scale=2):
            report = gr.Markdown("Press **Inspect** to see the format, the issues and what will be trained.", elem_id="dataset-report")
            hist = gr.BarPlot(x="tokens", y="rows", label="Token length per row", x_title="tokens", y_title="rows", height=220, elem_id="token-hist")
            preview = gr.HighlightedText(label="What will be trained (green tokens carry loss, grey are masked)", elem_id="trained-preview",
                                         color_map={"trained": "green", "masked": "lightgray", "problem": "red"}, combine_adjacent=True)
            saved = gr.JSON(label="Prepared dataset")
            info = gr.JSON(visible=False)
    upload.upload(picked, [upload, source], source, api_visibility="private")
    hub_use.click(use_hub, [hub_id, hub_config, hub_split], source, api_visibility="private")
    inspect.click(inspect_api, [upload, source, fmt, mapping, model_box, max_len, min_ex], info, api_name="inspect_dataset").then(
        render_inspection, [info, model_box], [report, preview, hist], api_visibility="private").then(
        mapping_controls, [info, fmt], [map_hint, map_acc, *boxes], api_visibility="private").then(
        picked, [upload, source], source, api_visibility="private")
    fmt.input(mapping_controls, [info, fmt], [map_hint, map_acc, *boxes], api_visibility="private")
    for box in boxes:
        box.input(mapping_text, [info, fmt, *boxes], mapping, api_visibility="private")
    prepare.click(prepare_api, [upload, source, fmt, mapping, val_ratio, seed, name, mask_pii, dedupe, model_box, max_len,
                                strict], saved, api_name="prepare_dataset").success(
        picked_result, saved, source, api_visibility="private")
    augment.click(augment_api, [upload, source, method, aug_n, aug_seed, model_box, aug_name], augmented,
                  api_name="augment_dataset").success(picked_result, augmented, source, api_visibility="private")
