"""The Train tab's live view: progress bar, metrics panel, loss chart, log tail, runs table, download.

`poll(run_id)` is called by a gr.Timer while a run is active (the timer switches itself off when the
run ends). It asks finetune.live for what changed since the last tick and sends only that: the chart
and the log are skipped when nothing new arrived.
"""

from __future__ import annotations

import html
import tempfile

import gradio as gr
import pandas as pd

from .render import fmt_duration, num, user_errors

SERIES = ("training loss", "validation loss")
COLORS = {"training loss": "#4c78a8", "validation loss": "#f58518"}
RUN_COLUMNS = ["run", "state", "method", "model", "dataset", "created", "duration", "final loss",
               "best val loss (step)", "final val loss"]
MAX_POINTS = 400


def empty_curve() -> pd.DataFrame:
    return curve([])


def curve(events: list[dict]) -> pd.DataFrame:
    """Loss rows for the chart. Every series is always present (a None point where it has no value
    yet): Gradio 6.31's plot fixes its colour domain from the value it first draws, which after a
    reload is whatever the run had then, so a series missing at that moment would stay uncoloured."""
    if len(events) > MAX_POINTS:  # keep the whole curve's shape, not just its end
        stride = len(events) // (MAX_POINTS - 100) + 1
        events = events[:-100:stride] + events[-100:]
    rows = [{"step": e["step"], "value": e[key], "series": series}
            for e in events for key, series in (("loss", SERIES[0]), ("eval_loss", SERIES[1]))
            if e.get(key) is not None]
    first = rows[0]["step"] if rows else 0
    for series in SERIES:
        if not any(r["series"] == series for r in rows):
            rows.append({"step": first, "value": None, "series": series})
    return pd.DataFrame(rows).astype({"step": "int64", "value": "float64"})


def progress_html(snap: dict | None) -> str:
    """A real <progress> element (role progressbar) with the state, step, percent and ETA. Styles are
    inline: the page may be served without the app's CSS (tests, embedding)."""
    if not snap:
        return "<div class='fts-progress'><b>No run yet.</b> Press <b>Start training</b>.</div>"
    st = snap["status"]
    state, step, total = st.get("state"), st.get("step") or 0, st.get("total_steps")
    pct = 100.0 if state == "completed" else snap.get("progress") or 0.0
    eta = "done" if state == "completed" else fmt_duration(st.get("eta_s")) if state == "running" else "–"
    queue = f" · queue position {st['queue_position']}" if st.get("queue_position") else ""
    starting = " · starting (loading the model and data)" if state in ("queued", "running") and not total else ""
    return (f"<div class='fts-progress' data-state='{html.escape(str(state))}'>"
            f"<div><b>{html.escape(snap['run_id'])}</b>: <span class='fts-state'>{html.escape(str(state))}</span></div>"
            f"<progress max='100' value='{pct:.1f}' aria-label='training progress' "
            f"style='width:100%;height:14px;accent-color:#f97316'></progress>"
            f"<div class='fts-progress-text'>{pct:.0f}% · step {step}/{total or '?'} · ETA {eta}{queue}{starting}</div></div>")


def metrics_html(snap: dict | None) -> str:
    """The live numbers as a grid of small cards, then any error or note."""
    if not snap:
        return ""
    st, latest = snap["status"], snap.get("latest") or {}
    best = (f"{num(st.get('best_eval_loss'))} @ {st.get('best_step')}"
            if st.get("best_eval_loss") is not None else "n/a")
    mem = st.get("memory_gb")
    tps = latest.get("tokens_per_s") or st.get("tokens_per_s")
    mfu = latest.get("mfu") or st.get("mfu")
    lr = latest.get("learning_rate")
    cells = [("train loss", num(latest.get("loss", st.get("loss")))),
             ("val loss", num(latest.get("eval_loss", st.get("eval_loss")))), ("best val loss @ step", best),
             ("learning rate", f"{lr:.2e}" if lr is not None else "n/a"), ("grad norm", num(latest.get("grad_norm"))),
             ("tokens/s", f"{tps:,.0f}" if tps else "n/a"), ("MFU", f"{mfu:.1%}" if mfu else "n/a"),
             ("threads", str(st.get("threads") or "n/a")), ("memory in use", f"{mem:.2f} GB" if mem else "n/a"),
             ("elapsed", fmt_duration(st.get("elapsed_s") or st.get("duration_s")))]
    if latest.get("reward") is not None or st.get("reward") is not None:  # GRPO
        g = latest if latest.get("reward") is not None else st
        per = ", ".join(f"{k} {num(v)}" for k, v in (g.get("rewards") or {}).items()) or "n/a"
        cells += [("mean reward", num(g.get("reward"))), ("reward per function", per),
                  ("completion length", f"{g['completion_len']:.1f} tokens" if g.get("completion_len") else "n/a"),
                  ("KL", num(g.get("kl")))]
    grid = "".join(f"<div style='padding:4px 8px;border:1px solid var(--border-color-primary,#ddd);border-radius:6px'>"
                   f"<div style='font-size:0.8em;opacity:0.7'>{k}</div><div style='font-weight:600'>{html.escape(v)}</div></div>"
                   for k, v in cells)
    notes = []
    if st.get("error"):
        notes.append(f"<b>Error:</b> {html.escape(str(st['error']))}")
    if st.get("job_id"):  # a run on Hugging Face Jobs (finetune.jobs mirrors it into the run folder)
        url = str(st.get("job_url") or "")
        link = (f"<a href='{html.escape(url)}' target='_blank'>{html.escape(str(st['job_id']))}</a>"
                if url.startswith("https://") or url.startswith("http://") else html.escape(str(st["job_id"])))
        notes.append(f"Hugging Face job {link} on {html.escape(str(st.get('flavor')))}: "
                     f"{html.escape(str(st.get('job_stage')))}"
                     + (" (not followed: reattach with a token)" if st.get("follower") else ""))
    elif st.get("remote") and st.get("job_stage"):
        notes.append(f"Hugging Face Jobs: {html.escape(str(st['job_stage']).lower())} ({html.escape(str(st.get('flavor')))})")
    if st.get("memory_note"):  # finetune.preflight trimmed the batch to fit, keeping the effective batch
        notes.append(f"Memory: {html.escape(str(st['memory_note']))}.")
    if isinstance(st.get("launch"), dict):
        notes.append(f"{html.escape(str(st['launch'].get('num_processes')))} processes, "
                     f"{html.escape(str(st['launch'].get('reason')))}.")
    speed = [str(st[k]) for k in ("threads_why",) if st.get(k)]
    if st.get("prefix_sharing"):
        speed.append(f"shared prefix {st['prefix_sharing']}")
    if speed:  # why the run is as fast as it is (finetune.speed, finetune.sft_step)
        notes.append("<span class='fts-speed'>Speed: " + html.escape("; ".join(speed)) + "</span>")
    if st.get("early_stopped"):
        notes.append(f"Stopped early: {html.escape(str(st.get('early_stop_reason')))}")
    if st.get("state") in ("completed", "stopped") and st.get("kept_step") is not None:
        from finetune.monitor import kept_sentence

        notes.append(f"The adapter holds {html.escape(kept_sentence(st))}. Download it below or evaluate it in "
                     "<b>Evaluate</b>.")
    if st.get("resumable") and st.get("state") in ("failed", "stopped"):
        notes.append("This run can be resumed from its last checkpoint.")
    return (f"<div id='train-metrics-grid' style='display:grid;grid-template-columns:repeat(5,minmax(0,1fr));gap:6px'>"
            f"{grid}</div>" + "".join(f"<p style='margin:6px 0 0'>{n}</p>" for n in notes))


def download_value(run_id: str | None):
    """The zip of the run's adapter in the temp folder (Gradio serves files from there, also on a
    Space whose runs live under /data), or a hidden button when there is none yet."""
    from finetune.artifacts import artifact_zip
    from finetune.runs import artifact_dir

    if not run_id or artifact_dir(run_id) is None:
        return gr.DownloadButton(value=None, visible=False)
    path = artifact_zip(run_id, tempfile.gettempdir() + "/fts-downloads")
    return gr.DownloadButton(label=f"Download {path.name}", value=str(path), visible=True)


def poll(run_id: str | None, shown: dict | None = None):
    """(progress, metrics, curve, log, download, timer, shown, runs table): what changed since the
    last tick. `shown` (per page) remembers how many events the chart has and the state last seen,
    so the chart is re-sent only when events arrived and the runs table only when the state changed."""
    from finetune.live import follow
    from finetune.runs import ACTIVE

    shown = shown if isinstance(shown, dict) else {}
    if not run_id:
        return (progress_html(None), "", empty_curve(), "", gr.DownloadButton(value=None, visible=False),
                gr.Timer(active=False), {}, gr.skip())
    try:
        snap = follow(run_id.strip())
    except ValueError as exc:
        return (f"<div class='fts-progress'><b>{html.escape(str(exc))}</b></div>", "", empty_curve(), "",
                gr.DownloadButton(value=None, visible=False), gr.Timer(active=False), {}, runs_frame())
    state = snap["status"].get("state")
    active = state in ACTIVE
    n = len(snap["events"])
    chart = curve(snap["events"]) if n != shown.get("n") else gr.skip()
    new_state = state != shown.get("state")
    log = snap["log_tail"] if snap["changed"] or new_state or "n" not in shown else gr.skip()
    download = (download_value(run_id.strip()) if not active else gr.DownloadButton(value=None, visible=False)) \
        if new_state else gr.skip()
    return (progress_html(snap), metrics_html(snap), chart, log, download, gr.Timer(active=active),
            {"n": n, "state": state}, runs_frame() if new_state else gr.skip())


def runs_frame() -> pd.DataFrame:
    from finetune.live import runs_table

    from .guard import visible_run_ids  # public mode: only the caller's own runs

    table = runs_table()
    mine = set(visible_run_ids([r["run"] for r in table]))
    rows = [{"run": r["run"], "state": r["state"], "method": r["method"], "model": r["model"],
             "dataset": r["dataset"], "created": r["created"], "duration": fmt_duration(r["duration_s"]),
             "final loss": num(r["final_loss"]), "final val loss": num(r["final_eval_loss"]),
             "best val loss (step)": (f"{num(r['best_eval_loss'])} ({r['best_step']})"
                                      if r["best_eval_loss"] is not None else "n/a")} for r in table if r["run"] in mine]
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


@user_errors
def delete(run_id: str | None):
    from finetune.live import forget
    from finetune.runs import delete_run

    if not run_id:
        return gr.skip(), gr.skip()
    delete_run(run_id.strip())
    forget(run_id.strip())
    gr.Info(f"Deleted run {run_id}.")
    return runs_frame(), None


def pick_row(frame: pd.DataFrame, evt: gr.SelectData):
    """Clicking a row of the runs table follows that run."""
    try:
        return frame.iloc[evt.index[0]]["run"]
    except (IndexError, KeyError, TypeError):
        return gr.skip()
