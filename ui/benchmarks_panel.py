"""Evaluate tab, benchmarks and judge: which benchmarks to score base and fine-tuned on (built-in, an
uploaded JSONL, or locally an lm-eval task name or YAML), which judge compares their answers, and
the results table (finetune/eval/benchmarks.py, finetune/eval/judge.py)."""

from __future__ import annotations

import gradio as gr

from .render import pct

JUDGES = ["builtin:smollm2-135m-instruct", "builtin:tiny-chat"]
COLUMNS = ["task", "metric", "base", "fine-tuned", "change", "n"]


def build():
    """(benchmarks, benchmark_file, tasks, judge) inputs and the results table."""
    from finetune.caller import public_mode
    from finetune.eval.benchmarks import BUILTIN_BENCHMARKS

    public = public_mode()
    with gr.Accordion("Benchmarks and judge (optional)", open=False, elem_id="eval-bench"):
        with gr.Row():
            benches = gr.Dropdown(list(BUILTIN_BENCHMARKS), value=[], multiselect=True, label="Built-in benchmarks",
                                  info="multiple choice (log-likelihood of each choice) or generation (exact match)",
                                  scale=2)
            upload = gr.File(label="Benchmark file (.jsonl" + ("" if public else ", or an lm-eval task .yaml") + ")",
                             file_types=[".jsonl"] if public else [".jsonl", ".yaml", ".yml"], type="filepath",
                             scale=2, height=110)
        with gr.Row():
            tasks = gr.Textbox(label="lm-eval tasks (comma-separated; their data comes from the Hub)",
                               placeholder="arc_easy, hellaswag", visible=not public, scale=2)
            judge = gr.Dropdown([("no judge", "")] + [(j, j) for j in JUDGES], value="", allow_custom_value=not public,
                                scale=2, label="Judge model", info="compares base and fine-tuned answers pairwise, both orders"
                                + ("" if public else "; any local folder or Hub id works too"))
        table = gr.Dataframe(headers=COLUMNS, value=None, label="Benchmarks and judge: base vs fine-tuned",
                             interactive=False, elem_id="eval-bench-table", wrap=True)
    return (benches, upload, tasks, judge), table


def specs(benches, upload, tasks) -> list[str]:
    """The benchmark names the engine reads, from the three inputs."""
    out = [b for b in (benches or []) if b]
    if upload:
        out.append(upload if isinstance(upload, str) else getattr(upload, "name", str(upload)))
    out += [t.strip() for t in (tasks or "").split(",") if t.strip()]
    if len(out) > 8:
        raise gr.Error("At most 8 benchmarks per evaluation.")
    return out


def rows(report: dict):
    """The results table: one row per benchmark, then the judge's win rate."""
    if not report:
        return gr.skip()
    out = [[name, b.get("metric"), pct(b.get("base")), pct(b.get("tuned")),
            ("+" if (b.get("delta") or 0) >= 0 else "") + pct(b.get("delta")), b.get("n")]
           for name, b in (report.get("benchmarks") or {}).items()]
    j = report.get("judge") or {}
    if j:
        out.append([f"judge: {j.get('judge_model')}", "win rate (both orders)", "", pct(j.get("win_rate")),
                    f"{j.get('wins')} W / {j.get('losses')} L / {j.get('ties')} T", j.get("n")])
    return out or None
