"""Views of a plan for the Plan tab: plain rows for tables and charts, and Markdown.

They only format what finetune.plan.plan() returned; the engine knows no screen.
"""

from __future__ import annotations

from finetune.plan.common import _bar, _hours
from finetune.plan.recommend import train_settings  # noqa: F401 -- "Use this plan" (ui.plan_tab)

MEMORY_PARTS = ("weights", "trainable_and_grads", "optimizer", "activations", "logits", "overhead")


def memory_rows(p: dict) -> list[dict]:
    """One row per (method, memory part) with GB, for a stacked bar chart; every part is present."""
    rows = []
    for m, row in (p.get("feasibility") or {}).items():
        bd = row.get("breakdown") or {}
        label = f"{m} ←" if m == p.get("training_method") else m
        rows += [{"method": label, "part": part, "GB": float(bd.get(part, 0.0))} for part in MEMORY_PARTS]
    return rows


def tier_rows(p: dict) -> list[dict]:
    """The tiers table: time, training cost, fit and serving cost per hardware tier."""
    return [{"tier": t["name"], "fits": "yes" if t["fits"] else "no", "time": _hours(t["hours"]),
             "training $": round(t["cost_usd"], 2), "$/h": t["price_usd_per_h"], "memory GB": t["vram_gb"],
             "serving $/1M tokens": t["inference_usd_per_1m_tokens"],
             "hours": t["hours"], "cost_usd": t["cost_usd"], "available": t["available"],
             "calibrated": t.get("calibrated", False)} for t in p.get("tiers") or []]


def tier_points(p: dict) -> list[dict]:
    """The time-vs-cost chart: every tier still offered, with the kind of hardware (CPU, T4, A100, ...);
    hours and cost are None where the plan does not fit, so the chart keeps the same series each time."""
    return [{"tier": t["name"], "hardware": t.get("hardware", t["name"]),
             "hours": t["hours"] if t["fits"] else None, "cost_usd": t["cost_usd"] if t["fits"] else None}
            for t in p.get("tiers") or [] if t["available"]]


def summary_md(p: dict) -> str:
    """The headline and the reasons, numbered."""
    fits = "fits" if p.get("fits") else "does NOT fit"
    cal = " (calibrated by a dry run)" if p.get("calibrated") else ""
    return (f"### Recommended: **{p['method']}** · {p['vram_gb']:.2f} GB ({fits} on {p['hardware']}) · "
            f"{_hours(p['time_h'])}{cal} · ${p['cost_usd']:.2f}\n\n"
            + "\n".join(f"{i}. {r}" for i, r in enumerate(p.get("reasons", []), 1)))


def details_md(p: dict) -> str:
    """Risks, dataset requirements, evaluation plan and readiness as Markdown."""
    def table(rows, cols):
        out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        out += ["| " + " | ".join(str(r.get(c, "")).replace("|", "\\|") for c in cols) + " |" for r in rows]
        return "\n".join(out)

    d, e = p["dataset_requirements"], p["evaluation_plan"]
    ready = p["readiness"]
    lines = [f"#### Readiness: {_bar(ready)} {ready}%", "",
             "#### Risks", table(p["risks"], ["risk", "level", "symptom", "mitigation"]), "",
             "#### Dataset requirements",
             f"- **Format:** {d['format']} ({d['columns']})",
             f"- **Size:** {d['have']} examples, recommended minimum {d['minimum_examples']} "
             f"({'enough' if d['enough'] else 'fewer than recommended'}); validation split {d['validation_split']:.0%}"]
    if d.get("synthetic_needed"):
        lines.append("- **Synthetic data needed:** you have no labelled answers yet")
    lines += [f"- {c}" for c in d["quality_checks"]]
    lines += ["", "#### Evaluation plan", f"- **Metrics:** {', '.join(e['metrics'])}",
              f"- **Test set:** {e['test_set']}", f"- **Baseline:** {e['baseline']}", f"- **Regression check:** {e['regression']}"]
    return "\n".join(lines)
