"""The report's benchmark and judge parts: their gates and their Markdown (report.py calls both).

Gates: `benchmark_regression` fails when any benchmark's figure drops by more than
BENCHMARK_DROP_MAX (absolute, on a 0..1 metric) from base to fine-tuned; `judge_win_rate` fails when
the judge prefers the base (win rate below JUDGE_WIN_RATE_MIN).
"""

from __future__ import annotations

BENCHMARK_DROP_MAX = 0.05
JUDGE_WIN_RATE_MIN = 0.5


def extra_gates(r: dict) -> dict:
    g = {}
    benches = {k: v for k, v in (r.get("benchmarks") or {}).items() if isinstance(v.get("delta"), (int, float))}
    if benches:
        worst = min(benches, key=lambda k: benches[k]["delta"])
        d = benches[worst]["delta"]
        g["benchmark_regression"] = {"passed": d >= -BENCHMARK_DROP_MAX, "value": d, "threshold": -BENCHMARK_DROP_MAX,
                                     "rule": f"no benchmark drops by more than {BENCHMARK_DROP_MAX:g} "
                                             f"(worst: {worst})", "task": worst}
    j = r.get("judge") or {}
    if isinstance(j.get("win_rate"), (int, float)):
        g["judge_win_rate"] = {"passed": j["win_rate"] >= JUDGE_WIN_RATE_MIN, "value": j["win_rate"],
                               "threshold": JUDGE_WIN_RATE_MIN,
                               "rule": f"the judge prefers the fine-tuned answers at least as often as the base's "
                                       f"(win rate >= {JUDGE_WIN_RATE_MIN:g})"}
    return g


def _pct(v) -> str:
    return f"{100 * v:.1f}%" if isinstance(v, (int, float)) else "n/a"


def _cell(v, n: int = 60) -> str:
    text = "".join(ch if ch.isprintable() else " " for ch in str(v))
    return text.replace("|", "\\|").replace("`", "'")[:n]


def extra_markdown(r: dict) -> list[str]:
    lines: list[str] = []
    benches = r.get("benchmarks") or {}
    if benches:
        lines += ["", "## Benchmarks", "", "| task | metric | base | fine-tuned | change | n |", "|---|---|---|---|---|---|"]
        for name, b in benches.items():
            d = b.get("delta")
            sign = "+" if isinstance(d, (int, float)) and d >= 0 else ""
            lines.append(f"| {_cell(name)} | {_cell(b.get('metric'))} | {_pct(b.get('base'))} | {_pct(b.get('tuned'))} "
                         f"| {sign}{_pct(d)} | {b.get('n')} |")
    j = r.get("judge") or {}
    if j.get("error"):
        lines += ["", "## Judge", "", _cell(j["error"])]
    elif j:
        lines += ["", "## Judge", "",
                  f"Judge `{_cell(j.get('judge_model'))}` compared base and fine-tuned answers on {j.get('n')} held-out "
                  f"prompts, each pair twice with the positions swapped (a verdict counts only when both orders "
                  f"agree): fine-tuned win rate **{_pct(j.get('win_rate'))}** ({j.get('wins')} wins, "
                  f"{j.get('losses')} losses, {j.get('ties')} ties); the judge picked position A in "
                  f"{_pct((j.get('position_bias') or {}).get('prefers_a'))} of its calls."]
        pairs = j.get("pairs") or []
        if pairs:
            lines += ["", "| prompt | base | fine-tuned | P(A) base first | P(A) tuned first | verdict |",
                      "|---|---|---|---|---|---|"]
            for p in pairs[:10]:
                o = p.get("orders") or [{}, {}]
                lines.append(f"| {_cell(p['prompt'])} | {_cell(p['base'], 40)} | {_cell(p['finetuned'], 40)} | "
                             f"{o[0].get('p_a')} | {o[1].get('p_a')} | {p['verdict']} |")
    return lines
