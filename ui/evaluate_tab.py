"""Evaluate tab: base vs fine-tuned on the run's validation rows (in a child process, with progress),
the report's gates, metrics chart, probes and samples, and Diagnose: one button per flagged issue
that copies its suggested settings into the Train tab for a new run."""

from __future__ import annotations

import gradio as gr

from . import benchmarks_panel
from .render import num, pct, run_choices, user_errors


@user_errors
def evaluate_api(run_id: str, max_examples: float, benchmarks: list[str] | None = None, benchmark_file: str | None = None,
                 tasks: str | None = None, judge: str | None = None, progress=gr.Progress()) -> dict:
    """Evaluate a run against its base model in a child process; writes eval/report.json, .md and
    metrics.png, and returns the report (the `evaluate` API). Optional: benchmarks (built-in names), a
    benchmark file, lm-eval task names (comma-separated) and a judge model."""
    from finetune.evaluate import run_eval

    if not run_id:
        raise gr.Error("Choose a run to evaluate.")
    n = int(max_examples or 200)
    if not 1 <= n <= 5000:
        raise gr.Error("Max examples must be between 1 and 5000.")
    benches = benchmarks_panel.specs([benchmarks] if isinstance(benchmarks, str) else benchmarks, benchmark_file, tasks)
    progress(0.0, desc="starting the evaluation process")
    return run_eval(run_id.strip(), max_examples=n, on_progress=lambda f, m: progress(f, desc=m),
                    benchmarks=benches, judge=(judge or "").strip() or None)


@user_errors
def diagnose_api(run_id: str) -> dict:
    """Flag common issues (overfitting, underfitting, instability, forgetting, mode collapse, OOM) with
    evidence and suggested settings (the `diagnose` API)."""
    from finetune.eval.diagnose import diagnose_run

    if not run_id:
        raise gr.Error("Choose a run to diagnose.")
    return diagnose_run(run_id.strip())


def render_report(r: dict):
    if not r:
        return gr.skip(), gr.skip(), gr.skip()
    from finetune.evaluate import report_markdown

    b, f = r["base"], r["finetuned"]
    gates = r.get("gates") or {}
    failed = [k for k, g in gates.items() if not g["passed"]]
    verdict = (f"**All {len(gates)} gates pass.**" if not failed else f"**Failed gates: {', '.join(failed)}.**")
    main = r.get("primary_metric") or "exact_match"
    bm, fm = (r.get("base_metrics") or {}).get(main, b.get("exact_match")), (r.get("metrics") or {}).get(main, f.get("exact_match"))
    task = (r.get("verdict") or {}).get("text") or ""
    if task and not r["verdict"].get("learned"):
        task += " Press **Diagnose**, then **Apply to Train tab: task not learned**."
    head = (f"## {main.replace('_', ' ').capitalize()}: {pct(bm)} → **{pct(fm)}**\n"
            f"Perplexity: {num(b['perplexity'])} → **{num(f['perplexity'])}** on {r['examples']} validation "
            f"examples ({r.get('task_type', 'generation')}). {verdict}" + (f"\n\n{task}" if task else ""))
    return head, report_markdown(r), r.get("chart") or None


@user_errors
def _download(run_id: str | None):
    from .train_live import download_value

    return download_value((run_id or "").strip() or None)


ISSUES = ("task_not_learned", "overfitting", "underfitting", "unstable_training", "catastrophic_forgetting", "mode_collapse",
          "out_of_memory")


def show_flags(result: dict):
    items = (result or {}).get("flags") or []
    if not result:
        text = ""
    elif not items:
        text = (f"**Diagnose:** no issue found in {result.get('events', 0)} logged steps"
                + ("." if result.get("evaluated") else " (evaluate the run to check forgetting and mode collapse too)."))
    else:
        text = f"**Diagnose:** {len(items)} issue(s) found.\n\n" + "\n".join(
            f"- **{f['issue'].replace('_', ' ')}**: {f['evidence']}  \n  _{f['suggestion']}_" for f in items)
    found = {f["issue"] for f in items}
    return (text, *(gr.Button(visible=k in found) for k in ISSUES))


def apply_flag(result: dict, issue: str, keys: list[str]) -> tuple:
    flag = next((f for f in (result or {}).get("flags") or [] if f["issue"] == issue), None)
    if flag is None:
        raise gr.Error("Press Diagnose again: that issue is not flagged any more.")
    return settings_updates(flag["settings"], keys)


def settings_updates(settings: dict, keys: list[str]) -> tuple:
    """Values for the Train tab's components named in keys (unchanged where the settings say nothing),
    plus a switch to the Train tab."""
    shown = [k for k in keys if k in settings]
    rest = [k for k in settings if k not in keys]
    gr.Info("Train tab set for a new run: " + ", ".join(f"{k} = {settings[k]:g}" if isinstance(settings[k], float)
                                                        else f"{k} = {settings[k]}" for k in shown)
            + (f". Also suggested (set them in the run config): {', '.join(f'{k} = {settings[k]}' for k in rest)}"
               if rest else ""))
    return tuple(settings[k] if k in settings else gr.skip() for k in keys) + (gr.Tabs(selected="train"),)


def build(run_box, train: dict | None = None, tabs=None) -> None:
    with gr.Row():
        run_id = gr.Dropdown(run_choices(), allow_custom_value=True, label="Run", scale=3)
        max_ex = gr.Number(value=200, precision=0, minimum=1, maximum=5000, label="Max examples", scale=1)
        go = gr.Button("Evaluate", variant="primary", scale=1)
        diag = gr.Button("Diagnose", scale=1)
    download = gr.DownloadButton("Download adapter (.zip)", visible=False, elem_id="eval-download")
    bench_inputs, bench_table = benchmarks_panel.build()
    headline = gr.Markdown("Choose a finished run and press **Evaluate** (runs in its own process) or **Diagnose**.")
    raw = gr.JSON(visible=False)
    flags = gr.JSON(visible=False)

    flags_md = gr.Markdown()
    with gr.Row():  # one button per issue kind, shown when that issue is flagged
        buttons = {k: gr.Button(f"Apply to Train tab: {k.replace('_', ' ')}", size="sm", visible=False) for k in ISSUES}
    keys = [k for k in (train or {}) if k != "run_id"]
    flags.change(show_flags, flags, [flags_md, *buttons.values()], api_visibility="private")
    if train is not None and tabs is not None:
        for issue, btn in buttons.items():
            btn.click(lambda res, i=issue: apply_flag(res, i, keys), flags, [train[k] for k in keys] + [tabs],
                      api_visibility="private")

    with gr.Row():
        report = gr.Markdown(elem_id="eval-report")
        chart = gr.Image(label="Metrics: base (grey) vs fine-tuned (blue)", type="filepath", height=300,
                         interactive=False, scale=0, min_width=360)
    run_box.change(lambda r: gr.Dropdown(choices=run_choices(), value=r), run_box, run_id, api_visibility="private")
    run_id.change(_download, run_id, download, api_visibility="private")
    run_id.focus(lambda: gr.Dropdown(choices=run_choices()), None, run_id, api_visibility="private")
    go.click(evaluate_api, [run_id, max_ex, *bench_inputs], raw, api_name="evaluate", concurrency_limit=1,
             concurrency_id="model_work").then(render_report, raw, [headline, report, chart], api_visibility="private").then(
        benchmarks_panel.rows, raw, bench_table, api_visibility="private").then(
        lambda r, rep: diagnose_api(r) if rep else gr.skip(), [run_id, raw], flags, api_visibility="private")
    diag.click(diagnose_api, run_id, flags, api_name="diagnose")
