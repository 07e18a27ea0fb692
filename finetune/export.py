"""Export a run for local use, with no Hub account: merged safetensors and/or a GGUF + Ollama Modelfile.

    export_run(run_id, out_dir, merged=True, gguf="q4_k_m") ->
        {"out", "files": [...], "agreement": {"merged": {...}, "gguf": {...}}, "modelfile": path | None, ...}

The merge is hub.merge_run and the GGUF is gguf_export.write_gguf, the same code `push` uses. Each
file is checked after writing: the merged weights against the base + adapter (logits on a few
prompts), the GGUF loaded back with transformers against the merged weights (gguf_export.check_gguf).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from .gguf_export import QTYPES, GGUFError

Progress = Callable[[float, str], None]


class ExportError(ValueError):
    """An export that cannot be done, with a message a user can act on."""


def check_merged(run_id: str, merged_dir: str | os.PathLike) -> dict:
    """Logits of the merged model vs the base with the adapter applied, on the same prompts as the GGUF check."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from .gguf_export import prompt_ids
    from .modeling import load_model
    from .runs import artifact_dir, load_config

    cfg, art = load_config(run_id), artifact_dir(run_id)
    if art is None or art.name == "model":
        return {"method": "copy of the full fine-tune", "max_abs_diff": 0.0, "argmax_agreement": 1.0}
    base = load_model(cfg.model.model_id, dtype="float32", trust_remote_code=cfg.model.trust_remote_code)
    ref = PeftModel.from_pretrained(base, str(art)).eval()
    got = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32).eval()
    ids = prompt_ids(Path(merged_dir), got.config.vocab_size)
    with torch.no_grad():
        a, b = ref(input_ids=ids).logits, got(input_ids=ids).logits
    return {"method": "base + adapter vs merged, logits", "prompts": int(ids.shape[0]),
            "max_abs_diff": float((a - b).abs().max()),
            "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean())}


def export_run(run_id: str, out_dir: str | os.PathLike, *, merged: bool = False, gguf: str | None = None,
               check: bool = True, system: str | None = None, progress: Progress | None = None) -> dict:
    """Write what was asked into out_dir; see the module doc for the result's keys."""
    from .gguf_export import check_gguf, write_gguf
    from .hub import merge_run
    from .modelfile import write_modelfile
    from .runs import RunError, artifact_dir, read_status

    if not merged and not gguf:
        raise ExportError("export: choose --merged and/or --gguf TYPE (nothing to write)")
    if gguf is not None and gguf not in QTYPES:
        raise ExportError(f"export: --gguf {gguf!r} is not a GGUF type; choose one of {', '.join(QTYPES)}")
    if artifact_dir(run_id) is None:
        raise RunError(f"run {run_id} has no trained adapter or model yet ({read_status(run_id).get('state')}); "
                       "wait until it completes or stops")
    prog = progress or (lambda f, m: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"out": str(out), "run_id": run_id, "files": [], "agreement": {}, "modelfile": None}
    with tempfile.TemporaryDirectory(prefix="fts-export-", dir=out) as tmp:
        prog(0.1, "merging the adapter into the base model")
        merged_dir = merge_run(run_id, (out / "merged") if merged else Path(tmp) / "merged")
        if merged:
            result["files"] += sorted(str(p) for p in merged_dir.iterdir() if p.is_file())
            if check:
                prog(0.3, "checking the merged weights against base + adapter")
                result["agreement"]["merged"] = check_merged(run_id, merged_dir)
        if gguf:
            prog(0.45, f"writing GGUF ({gguf})")
            try:
                info = write_gguf(merged_dir, out / f"{run_id}-{gguf}.gguf", gguf)
            except GGUFError as e:
                raise ExportError(str(e)) from None
            result["gguf"] = info
            result["files"].append(info["path"])
            mf = write_modelfile(merged_dir, info["path"], system=system)
            result["modelfile"], result["template"], result["stops"] = mf["path"], mf["format"], mf["stops"]
            result["files"].append(mf["path"])
            if check:
                prog(0.7, "loading the GGUF back and comparing it with the merged model")
                result["agreement"]["gguf"] = check_gguf(merged_dir, info["path"])
    prog(1.0, "exported")
    return result


def agreement_text(agreement: dict) -> str:
    """One line per check: 'gguf: top-1 agreement 93.3%, greedy tokens 100%, max logit diff 0.021 (...)'."""
    lines = []
    for what, a in agreement.items():
        parts = []
        if a.get("argmax_agreement") is not None:
            parts.append(f"top-1 agreement {a['argmax_agreement'] * 100:.1f}%")
        if a.get("greedy_match") is not None:
            parts.append(f"greedy tokens {a['greedy_match'] * 100:.0f}% the same")
        if a.get("max_abs_diff") is not None:
            parts.append(f"max {'weight' if a.get('tensors') else 'logit'} diff {a['max_abs_diff']:.4g}")
        lines.append(f"{what}: {', '.join(parts)} ({a.get('method')})" + (f"; {a['note']}" if a.get("note") else ""))
    return "\n".join(lines)


def export_text(r: dict) -> str:
    """The CLI's human summary of export_run's result."""
    lines = [f"exported {r.get('run_id')} to {r.get('out')}"] + [f"  {f}" for f in r.get("files") or []]
    g = r.get("gguf")
    if g:
        types = ", ".join(f"{k.lower()} x{v}" for k, v in sorted(g["types"].items()))
        lines.append(f"GGUF {g['qtype']} ({g['family']}, {g['size_bytes'] / 1e6:.1f} MB): {types}")
        lines += [f"  fallback: {f}" for f in g.get("fallbacks") or []]
    if r.get("modelfile"):
        lines.append(f"Modelfile: template {r.get('template')}, stops {', '.join(r.get('stops') or []) or 'none'}")
    if r.get("agreement"):
        lines.append(agreement_text(r["agreement"]))
    return "\n".join(lines)


if __name__ == "__main__":  # the app's child: python -m finetune.export < {"run_id", "out_dir", "merged", ...}
    from .workgate import child_main

    child_main(export_run)
