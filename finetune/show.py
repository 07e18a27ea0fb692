"""Plain-text summaries of the CLI's results (what `finetune COMMAND` prints without --json).

Tables for metrics, answers, issues and runs; a few key: value lines for the rest. Every cell is one
line, cut to a readable width: model output and user data may hold any character.
"""

from __future__ import annotations

import json
from typing import Any


def prepare_text(r: dict) -> str:
    """A prepared split: where it went, its rows, what cleaning did, and a table of the dropped rows."""
    clean = dict(r.get("cleaning") or {})
    dropped = clean.pop("skipped_rows", None) or []
    cleaning = ", ".join(f"{k} {v}" for k, v in clean.items() if v)
    out = (f"saved {r.get('dir')}\n{r.get('format')} -> {r.get('kind')}: {r.get('rows_train')} train, "
           f"{r.get('rows_validation')} validation rows" + (f"\ncleaning: {cleaning}" if cleaning else ""))
    if dropped:
        out += (f"\n\n{len(dropped)} row(s) dropped (use --strict to refuse the file instead):\n"
                + table(dropped, ["row", "line", "field", "problem"], width=60))
    return out


def table(rows: list[dict], cols: list[str], headers: list[str] | None = None, width: int = 40) -> str:
    """A fixed-width text table; '(none)' for no rows."""
    if not rows:
        return "(none)"
    headers = headers or cols
    cells = [[_cell(r.get(c), width) for c in cols] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(out)


def _cell(v: Any, width: int) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        s = f"{v:.4g}"
    elif isinstance(v, (list, dict)):
        s = json.dumps(v, default=str, ensure_ascii=False)
    else:
        s = str(v)
    s = " ".join("".join(ch if ch.isprintable() else " " for ch in s).split())
    return s if len(s) <= width else s[:width - 1] + "…"


def _lines(d: dict, keys: list[str]) -> str:
    return "\n".join(f"{k}: {_cell(d.get(k), 200)}" for k in keys if d.get(k) is not None)


def _pct(v) -> str | None:
    return None if v is None else f"{100 * v:.1f}%"


def inspect_text(r: dict) -> str:
    ts = r.get("token_stats") or {}
    req = r.get("requirement") or {}
    head = [f"{r.get('source')}: {r.get('format')} (confidence {r.get('confidence')}), kind {r.get('kind')}",
            f"rows: {r.get('rows')} read, {r.get('rows_valid')} usable · quality score {r.get('quality_score')}/100",
            f"tokens per row: mean {ts.get('mean')}, p50 {ts.get('p50')}, p95 {ts.get('p95')}, max {ts.get('max')}"
            + (" (approximate: characters / 4)" if ts.get("approximate") else "")]
    if req.get("reason"):
        head.append(f"size: {req['reason']}")
    if (r.get("trained_tokens") or {}).get("message"):
        head.append(f"trained tokens: {r['trained_tokens']['message']}")
    if r.get("hint"):
        head.append(f"hint: {r['hint']}")
    issues = table(r.get("issues") or [], ["rule", "count", "message"], width=90)
    return "\n".join(head) + "\n\nIssues:\n" + issues


def eval_text(r: dict) -> str:
    metrics, base = r.get("metrics") or {}, r.get("base_metrics") or {}
    if not metrics:  # an older report
        metrics, base = r.get("finetuned") or {}, r.get("base") or {}
    rows = [{"metric": k, "base": base.get(k), "fine-tuned": v,
             "change": (v - base[k]) if isinstance(v, (int, float)) and isinstance(base.get(k), (int, float)) else None}
            for k, v in metrics.items()]
    gates = [dict(g, gate=k, result="pass" if g.get("passed") else "FAIL") for k, g in (r.get("gates") or {}).items()]
    return (f"{r.get('run_id')}: {r.get('model')} ({r.get('method')}), {r.get('examples')} validation examples\n\n"
            + table(rows, ["metric", "base", "fine-tuned", "change"])
            + ("\n\nGates:\n" + table(gates, ["gate", "result", "value", "threshold"]) if gates else "")
            + ("\n\nBenchmarks:\n" + table([dict(b, task=k) for k, b in r["benchmarks"].items()],
                                             ["task", "metric", "base", "tuned", "delta", "n"]) if r.get("benchmarks") else "")
            + (f"\n\nJudge {r['judge']['judge_model']}: win rate {r['judge']['win_rate']:.2f} ({r['judge']['wins']} wins, "
               f"{r['judge']['losses']} losses, {r['judge']['ties']} ties of {r['judge']['n']}, both orders)"
               if r.get("judge") else "")
            + "\n\nSamples:\n"
            + table(r.get("samples") or [], ["prompt", "reference", "base", "finetuned"], width=30)
            + (f"\n\nreport: {r['report_md']}" if r.get("report_md") else ""))


def compare_text(r: dict) -> str:
    models = r.get("models") or []
    rows = [dict({"prompt": x.get("prompt")}, **(x.get("answers") or {})) for x in r.get("rows") or []]
    lat = ", ".join(f"{m} {v.get('per_prompt_s')} s/prompt" for m, v in (r.get("latency") or {}).items())
    return table(rows, ["prompt", *models], width=30) + (f"\n\nlatency: {lat}" if lat else "")


def diagnose_text(r: dict) -> str:
    flags = r.get("flags") or []
    if not flags:
        return f"{r.get('run_id')}: no issue found in {r.get('events')} logged steps"
    return table([dict(f, settings=json.dumps(f.get("settings"))) for f in flags],
                 ["issue", "evidence", "suggestion", "settings"], width=60)


def runs_text(r: dict) -> str:
    rows = [dict(x, steps=f"{x.get('step') or 0}/{x.get('total_steps') or '?'}") for x in r.get("runs") or []]
    return table(rows, ["run_id", "state", "method", "model", "data", "steps", "loss", "created"], width=36)


def status_text(r: dict) -> str:
    return _lines(dict(r, steps=f"{r.get('step') or 0}/{r.get('total_steps') or '?'}",
                       progress=f"{r.get('progress') or 0}%"),
                  ["run_id", "state", "steps", "progress", "eta_s", "loss", "eval_loss", "reward", "rewards",
                   "completion_len", "kl", "tokens_per_s", "queue_position", "error", "artifact", "run_dir"])


def sweep_text(r: dict) -> str:
    """The plain summary (`finetune sweep` without --json): plan notes, a table of trials, the best."""
    if "studies" in r:
        return table(r["studies"], ["study_id", "state", "model", "objective", "done", "n_trials", "best_value"])
    rows = [dict(t, **(t.get("params") or {}), steps=f"{t.get('steps') or 0}/{t.get('total_steps') or '?'}")
            for t in r.get("trials") or []]
    best = r.get("best") or {}
    lines = [f"study {r.get('study_id')}: {r.get('state')}" + (f" ({r['end_reason']})" if r.get("end_reason") else ""),
             *((r.get("plan") or {}).get("notes") or []), "",
             table(rows, ["number", "state", "value", "learning_rate", "epochs", "lora_r", "lora_alpha", "lora_dropout",
                          "steps", "run_id"], width=36)]
    if best:
        lines += ["", f"best: trial {best.get('number')} ({r.get('objective')} {best.get('value')}), run "
                      f"{best.get('run_id')}: {best.get('params')}"]
    if r.get("importance"):
        lines.append("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in r["importance"].items()))
    return "\n".join(lines)


def human(args, r: Any) -> str:
    """The plain summary of one command's result."""
    if not isinstance(r, dict):
        return str(r)
    cmd = args.cmd
    if cmd == "plan":
        return r["report_md"]
    if cmd == "calibrate":
        from .plan import calibrate

        return calibrate.dry_run_md(r) if args.cal_cmd == "dry-run" else calibrate.comparison_md(r)
    if cmd == "data" and args.data_cmd == "inspect":
        return inspect_text(r)
    if cmd == "data" and args.data_cmd == "prepare":
        return prepare_text(r)
    if cmd == "data" and args.data_cmd == "augment":
        return str(r.get("message") or "") + (f"\nsaved {r['dir']}" if r.get("dir") else "")
    if cmd == "runs":
        return runs_text(r)
    if cmd == "sweep":
        return sweep_text(r)
    if cmd == "export":
        from .export import export_text

        return export_text(r)
    if cmd == "eval":
        return eval_text(r)
    if cmd == "compare":
        return compare_text(r)
    if cmd == "diagnose":
        return diagnose_text(r)
    if cmd == "merge":
        return f"{r.get('summary')}\nrun folder: {r.get('run_dir')}"
    if cmd in ("status", "stop") or (cmd == "train" and "step" in r):
        return status_text(r)
    return _lines(r, [k for k, v in r.items() if not isinstance(v, (list, dict))])
