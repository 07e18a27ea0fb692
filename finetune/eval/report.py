"""The evaluation report: pass/fail gates, best and worst samples, a bar chart (PNG) of the metrics
base vs fine-tuned, provenance, and the Markdown rendering of eval/report.json.

report.json keys other pieces read (keep them stable): `metrics` and `base_metrics` (flat name ->
value, for the model card's model-index), `perplexity`, `base_perplexity`, `gates` (name ->
{passed, value, threshold}), `dataset` ({source, sha256, rows, kind, snapshot}), `regression`,
`safety`, `provenance`, `decoding`, `samples`, `best`, `worst`; with --benchmark/--judge also
`benchmarks` ({task: {base, tuned, metric, n, delta}}) and `judge` ({win_rate, wins, losses, ties, n,
judge_model, pairs}), gated in bench_report.py.
"""

from __future__ import annotations

import math
import platform
from pathlib import Path

from .bench_report import extra_gates, extra_markdown
from .probes import GENERAL_PPL_RATIO_MAX, GENERAL_SCORE_DROP_MAX, REFUSAL_DROP_MAX

# The task gate: the fine-tuned model must be better than its base on more held-out rows than chance
# explains (a one-sided paired sign test below this p-value), not merely "not worse" (0 vs 0 fails).
TASK_P_MAX = 0.05
FEW_ROWS = 10  # below this many evaluated rows the evidence is weak whatever the figures say

LIBRARIES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "rouge-score", "sacrebleu")


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))


def gate(passed: bool, value, threshold) -> dict:
    return {"passed": bool(passed), "value": value, "threshold": threshold}


def build_gates(r: dict) -> dict:
    """Pass/fail gates: the fine-tune must beat its base on the task and must not break general
    ability or safety past the probes' thresholds. A gate whose figure is missing is left out."""
    g: dict[str, dict] = {}
    if _num(r.get("perplexity")) and _num(r.get("base_perplexity")):
        g["perplexity"] = gate(r["perplexity"] < r["base_perplexity"], r["perplexity"], r["base_perplexity"])
    main = r.get("primary_metric")
    fm, bm = (r.get("metrics") or {}).get(main), (r.get("base_metrics") or {}).get(main)
    sig = r.get("task_significance")
    if main and _num(fm) and _num(bm):
        if sig:  # better than the base on enough rows that chance is an unlikely explanation
            g[main] = gate(fm > bm and sig["p_value"] < TASK_P_MAX, fm, bm) | {
                "rule": f"better than the base (value > threshold) with a paired sign test p < {TASK_P_MAX}",
                "p_value": sig["p_value"], "wins": sig["wins"], "losses": sig["losses"]}
        else:
            g[main] = gate(fm > bm, fm, bm) | {"rule": "better than the base (value > threshold)"}
    reg = r.get("regression") or {}
    gp = reg.get("general_text_perplexity") or {}
    if _num(gp.get("ratio")):
        g["general_text_perplexity_ratio"] = gate(gp["ratio"] <= GENERAL_PPL_RATIO_MAX, gp["ratio"], GENERAL_PPL_RATIO_MAX)
    gi = reg.get("general_instructions") or {}
    if _num(gi.get("drop")):
        g["general_instructions_drop"] = gate(gi["drop"] <= GENERAL_SCORE_DROP_MAX, gi["drop"], GENERAL_SCORE_DROP_MAX)
    kn = reg.get("knowledge") or {}
    if kn.get("known_by_base"):
        g["knowledge_lost"] = gate(not kn["flagged"], kn["lost"], kn["allowed"]) | {
            "rule": f"at most {kn['allowed']} of the {kn['known_by_base']} questions the base answers right may turn wrong"}
    s = r.get("safety") or {}
    if _num(s.get("drop")):
        g["safety_refusal_drop"] = gate(s["drop"] <= REFUSAL_DROP_MAX, s["drop"], REFUSAL_DROP_MAX)
    g.update(extra_gates(r))
    return g


def task_verdict(r: dict, cfg: dict) -> dict | None:
    """Whether the model learned the task, in a sentence, and the settings to try when it did not
    (keyed like Diagnose's: the Train tab's field names)."""
    main = r.get("primary_metric")
    g = (r.get("gates") or {}).get(main)
    if g is None:
        return None
    sig = r.get("task_significance") or {}
    n = sig.get("n") or r.get("examples") or 0
    fig = f"{main.replace('_', ' ')} {_fmt(g['threshold'], True)} -> {_fmt(g['value'], True)} on {n} held-out rows"
    weak = f" With only {n} rows the evidence is weak: evaluate on more." if n < FEW_ROWS else ""
    if g["passed"]:
        return {"learned": True, "settings": {}, "text": (
            f"The model learned the task: {fig} (better on {sig.get('wins', '?')}, worse on {sig.get('losses', '?')}"
            + (f", sign test p = {sig['p_value']:.2g})." if "p_value" in sig else ").") + weak)}
    sim = sig.get("similarity_to_references") or {}
    text = f"The model did not learn the task: {fig}"
    if _num(sim.get("finetuned")) and sim["finetuned"] < 0.5:
        text += (f", answers unlike the references (similarity {_fmt(sim.get('base'))} -> "
                 f"{_fmt(sim['finetuned'])})")
    text += "."
    if _num(g["value"]) and _num(g["threshold"]) and g["value"] > g["threshold"]:
        text += (f" It did better on {sig.get('wins')} rows and worse on {sig.get('losses')}: no more than chance "
                 f"explains (p = {sig.get('p_value', 1):.2g}).")
    train = (cfg or {}).get("train") or {}
    lr, epochs = float(train.get("learning_rate") or 2e-4), float(train.get("epochs") or 3)
    full = train.get("method") == "full"
    settings = {"learning_rate": min(lr * 3, 1e-4 if full else 3e-3), "epochs": min(epochs * 2, 20.0)}
    if settings["learning_rate"] > lr or settings["epochs"] > epochs:
        text += (f" Try a higher learning rate ({lr:g} -> {settings['learning_rate']:g}) and more epochs "
                 f"({epochs:g} -> {settings['epochs']:g}): too few or too small updates change nothing.")
    return {"learned": False, "settings": settings, "text": text + weak}


def best_and_worst(samples: list[dict], k: int = 3) -> tuple[list[dict], list[dict]]:
    ranked = sorted(samples, key=lambda s: (s.get("score") or 0.0))
    return list(reversed(ranked[-k:])), ranked[:k]


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def hardware() -> dict:
    import os

    info = {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "device": "cpu"}
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info.update(device="cuda", gpu=p.name, gpu_memory_gb=round(p.total_memory / 2**30, 1))
    except Exception as exc:  # noqa: BLE001 -- provenance is best effort
        info["device_error"] = str(exc)[:200]
    return info


def chart_png(path: Path, base: dict, tuned: dict) -> Path | None:
    """Grouped bars, base (grey) vs fine-tuned (blue), for the metrics on a 0..1 scale."""
    from PIL import Image, ImageDraw, ImageFont

    names = [k for k in tuned if k != "perplexity" and _num(tuned.get(k)) and 0 <= tuned[k] <= 1]
    if not names:
        return None
    w, h, top, bottom, left = max(420, 100 * len(names) + 90), 320, 34, 50, 48
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    try:
        d.font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1: the small bitmap font
        pass
    plot_h = h - top - bottom
    for frac in (0, 0.25, 0.5, 0.75, 1.0):
        y = top + plot_h * (1 - frac)
        d.line([(left, y), (w - 10, y)], fill="#dddddd")
        d.text((4, y - 6), f"{frac:.2f}", fill="#555555")
    slot = (w - left - 10) / len(names)
    for i, name in enumerate(names):
        x0 = left + i * slot + slot * 0.15
        bw = slot * 0.33
        for j, (vals, color) in enumerate(((base, "#9e9e9e"), (tuned, "#4c78a8"))):
            v = vals.get(name)
            if _num(v):
                y = top + plot_h * (1 - max(0.0, min(1.0, v)))
                d.rectangle([x0 + j * bw, y, x0 + (j + 1) * bw - 2, top + plot_h], fill=color)
        d.text((x0, h - bottom + 8), name[:14], fill="#222222")
    d.rectangle([w - 190, 8, w - 178, 20], fill="#9e9e9e")
    d.text((w - 172, 6), "base", fill="#222222")
    d.rectangle([w - 120, 8, w - 108, 20], fill="#4c78a8")
    d.text((w - 102, 6), "fine-tuned", fill="#222222")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    img.save(tmp, format="PNG")
    tmp.replace(path)
    return path


def _fmt(v, pct=False):
    if not _num(v):
        return "n/a"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def _cell(v, n: int = 80) -> str:  # model output may hold any control character: keep the table intact
    text = "".join(ch if ch.isprintable() else " " for ch in str(v))
    return text.replace("|", "\\|").replace("`", "'")[:n]


def report_markdown(r: dict) -> str:
    b, f = r.get("base") or {}, r.get("finetuned") or {}
    lines = [f"# Evaluation of {_cell(r['run_id'])}", "",
             f"Base `{_cell(r['model'])}` vs fine-tuned ({r['method']}) on {r['examples']} validation examples"
             + (f" ({r['task_type']})." if r.get("task_type") else "."), "",
             *([f"The fine-tuned adapter holds {r['kept']}.", ""] if r.get("kept") else [])]
    lines += [f"> {_cell(n, 300)}" for n in r.get("notes") or []] + ([""] if r.get("notes") else [])
    verdict = r.get("verdict") or {}
    if verdict.get("text"):
        lines += [("**" if not verdict.get("learned") else "") + _cell(verdict["text"], 600)
                  + ("**" if not verdict.get("learned") else ""), ""]
    gates = r.get("gates") or {}
    if gates:
        lines += ["## Gates", "", "| gate | result | value | threshold |", "|---|---|---|---|"]
        for name, g in gates.items():
            lines.append(f"| {name} | {'pass' if g['passed'] else '**FAIL**'} | {_fmt(g['value'])} | {_fmt(g['threshold'])} |")
        lines.append("")
    lines += ["## Metrics", "", "| metric | base | fine-tuned | change |", "|---|---|---|---|"]
    metrics, base_metrics = r.get("metrics") or {}, r.get("base_metrics") or {}
    if not metrics:  # an older report: exact match and perplexity only
        metrics = {"exact_match": f.get("exact_match"), "perplexity": f.get("perplexity")}
        base_metrics = {"exact_match": b.get("exact_match"), "perplexity": b.get("perplexity")}
    for name, fv in metrics.items():
        bv = base_metrics.get(name)
        pct = name != "perplexity"
        delta = (fv - bv) if _num(fv) and _num(bv) else None
        sign = "+" if _num(delta) and delta >= 0 else ""
        lines.append(f"| {name.replace('_', ' ')} | {_fmt(bv, pct)} | {_fmt(fv, pct)} | {sign}{_fmt(delta, pct)} |")
    reg, saf = r.get("regression") or {}, r.get("safety") or {}
    if reg:
        gp, gi = reg["general_text_perplexity"], reg["general_instructions"]
        lines += ["", "## Regression probe", "",
                  (f"- General-text perplexity: {_fmt(gp['base'])} → {_fmt(gp['finetuned'])} (ratio {_fmt(gp['ratio'])}, "
                   f"flag above {gp['threshold']}){' **flagged**' if gp['flagged'] else ''}"),
                  (f"- General instructions score: {_fmt(gi['base'], True)} → {_fmt(gi['finetuned'], True)} "
                   f"(flag on a drop above {100 * gi['threshold']:.0f} points){' **flagged**' if gi['flagged'] else ''}")]
        kn = reg.get("knowledge") or {}
        if kn:
            lines.append(f"- Knowledge: of {kn['asked']} factual questions the base answers {kn['known_by_base']} right; "
                         f"the fine-tuned model lost {kn['lost']} (allowed {kn['allowed']}), gained {kn['gained']}"
                         f"{' **flagged**' if kn['flagged'] else ''}")
            if kn.get("lost_questions"):
                lines += ["", "| lost question | base | fine-tuned |", "|---|---|---|"]
                lines += [f"| {_cell(q['question'])} | {_cell(q['base'])} | {_cell(q['finetuned'])} |"
                          for q in kn["lost_questions"][:12]]
    if saf:
        lines += ["", "## Safety probe", "",
                  (f"- Refusal rate on {saf['prompts']} harmful requests: {_fmt(saf['refusal_rate_base'], True)} → "
                   f"{_fmt(saf['refusal_rate_finetuned'], True)} (flag on a drop above {100 * saf['threshold']:.0f} points)"
                   f"{' **flagged**' if saf['flagged'] else ''}")]
    lines += extra_markdown(r)
    for title, key in (("Best samples", "best"), ("Worst samples", "worst"), ("Samples", "samples")):
        rows = r.get(key) or []
        if not rows:
            continue
        lines += ["", f"## {title}", "", "| prompt | reference | base | fine-tuned |", "|---|---|---|---|"]
        for s in rows[:10]:
            lines.append(f"| {_cell(s['prompt'])} | {_cell(s['reference'])} | {_cell(s['base'])} | {_cell(s['finetuned'])} |")
    prov = r.get("provenance") or {}
    if prov:
        ds, dec = r.get("dataset") or {}, r.get("decoding") or {}
        lines += ["", "## Provenance", "",
                  f"- Dataset: `{_cell(ds.get('source'))}`, {ds.get('rows')} validation rows, sha256 `{ds.get('sha256')}`"
                  + ("" if ds.get("snapshot") else " (no snapshot kept at start: read from the source now)"),
                  (f"- Decoding: greedy, max {dec.get('max_new_tokens')} new tokens, stop ids {dec.get('eos_token_ids')}, "
                   f"seed {dec.get('seed')}"),
                  f"- Libraries: {', '.join(f'{k} {v}' for k, v in (prov.get('libraries') or {}).items() if v)}",
                  f"- Hardware: {_cell((prov.get('hardware') or {}).get('gpu') or (prov.get('hardware') or {}).get('cpu'))}"]
    return "\n".join(lines) + "\n"
