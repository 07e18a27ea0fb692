"""Diagnose a run: flag the common fine-tuning issues from its curves, status and evaluation report.

Each flag is {issue, evidence, suggestion, settings}: `evidence` names the steps and values that
triggered it, `settings` is the change for a new run, keyed by the Train tab's field names
(method, learning_rate, epochs, batch_size, max_seq_len, lora_rank) plus config fields the tab may
not show (grad_accum, lora_dropout, weight_decay, warmup_ratio, gradient_checkpointing).
Issues (the seeds' tables): overfitting, underfitting, unstable training, catastrophic forgetting,
mode collapse, out of memory, and the task not learned (the loss fell but the task metric did not
beat the base on the held-out rows: the model learned to imitate text, not to do the task).

CLI: `python -m finetune diagnose RUN_ID --json`.
"""

from __future__ import annotations

import math
import statistics

# Thresholds, with why:
OVERFIT_RISE = 0.05          # validation loss 5% above its best while training loss kept falling
UNDERFIT_DROP = 0.10         # training loss fell by less than 10% over the run...
UNDERFIT_HIGH = 1.0          # ...and is still above 1 nat per token
SPIKE_FACTOR = 2.0           # a logged loss over twice the median of the 5 before it
GRAD_FACTOR = 10.0           # a grad norm over ten times the median of the 5 logged before it
COLLAPSE_DISTINCT2 = 0.25    # under a quarter of answer bigrams distinct
COLLAPSE_IDENTICAL = 0.5     # half the answers the same


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _flag(issue, evidence, suggestion, settings) -> dict:
    return {"issue": issue, "evidence": evidence, "suggestion": suggestion, "settings": settings}


def diagnose_events(events: list[dict], status: dict, cfg: dict, report: dict | None) -> list[dict]:
    train = (cfg or {}).get("train") or {}
    lora = (cfg or {}).get("lora") or {}
    data = (cfg or {}).get("data") or {}
    lr = float(train.get("learning_rate") or 2e-4)
    epochs = float(train.get("epochs") or 3.0)
    flags: list[dict] = []
    losses = [(e["step"], float(e["loss"])) for e in events if e.get("loss") is not None and "step" in e]
    evals = [(e["step"], float(e["eval_loss"])) for e in events if e.get("eval_loss") is not None and "step" in e]
    grads = [(e["step"], float(e["grad_norm"])) for e in events if e.get("grad_norm") is not None and "step" in e]

    err = str(status.get("error") or "")
    if "out of memory" in err.lower() or "outofmemory" in err.lower():
        bs = int(train.get("batch_size") or 4)
        flags.append(_flag(
            "out_of_memory", f"the run failed at step {status.get('step') or 0}: {err[:160]}",
            "Halve the batch size and double gradient accumulation (same effective batch), shorten the sequence "
            "length, and turn on gradient checkpointing; on a GPU, QLoRA loads the base in 4-bit.",
            {"batch_size": max(1, bs // 2), "grad_accum": int(train.get("grad_accum") or 1) * 2,
             "max_seq_len": max(64, int(data.get("max_seq_len") or 512) // 2), "gradient_checkpointing": True}))

    if len(evals) >= 2 and len(losses) >= 2:
        best_step, best = min(evals, key=lambda x: x[1])
        last_step, last = evals[-1]
        tr_at_best = [v for s, v in losses if s <= best_step]
        tr_after = [v for s, v in losses if s > best_step]
        falling = bool(tr_at_best and tr_after) and min(tr_after) < tr_at_best[-1]
        if last > best * (1 + OVERFIT_RISE) and last_step > best_step and falling:
            total = status.get("total_steps") or last_step
            best_epochs = round(max(0.5, epochs * best_step / total), 2) if total else epochs
            flags.append(_flag(
                "overfitting", f"validation loss rose from {best:.3f} (step {best_step}) to {last:.3f} (step {last_step}) "
                f"while training loss fell to {min(tr_after):.3f}",
                "Train fewer epochs (stop near the best validation step), add LoRA dropout and weight decay, "
                "or add more data.",
                {"epochs": best_epochs, "lora_dropout": max(0.1, float(lora.get("dropout") or 0.0)), "weight_decay": 0.01}))

    if len(losses) >= 3:
        first, last = losses[0][1], statistics.mean(v for _, v in losses[-3:])
        if _finite(first) and _finite(last) and last > UNDERFIT_HIGH and last > first * (1 - UNDERFIT_DROP):
            flags.append(_flag(
                "underfitting", f"training loss went from {first:.3f} (step {losses[0][0]}) to {last:.3f} "
                f"(mean of the last 3 logs, step {losses[-1][0]}): flat and high",
                "Train longer and with a higher learning rate (or a higher LoRA rank).",
                {"learning_rate": min(lr * 3, 1e-2), "epochs": epochs * 2,
                 "lora_rank": min(128, int(lora.get("r") or 16) * 2)}))

    spikes = []
    for i in range(5, len(losses)):
        prev = statistics.median(v for _, v in losses[i - 5:i])
        s, v = losses[i]
        if not _finite(v) or (prev > 0 and v > SPIKE_FACTOR * prev):
            spikes.append(f"step {s}: loss {v:.3f} after a median {prev:.3f}")
    # A grad norm is a spike against the ones just before it, not the run's median: norms fall by orders of
    # magnitude as a small task converges, and the first steps' large norms are not instability.
    big = []
    for i, (s, g) in enumerate(grads):
        prev = [v for _, v in grads[max(0, i - 5):i] if _finite(v)]
        if not _finite(g) or (len(prev) >= 3 and g > GRAD_FACTOR * statistics.median(prev) and g > 1.0):
            big.append(f"step {s}: grad norm {g:.3g}")
    nonfinite = "non-finite" if "became nan" in err.lower() or "became inf" in err.lower() else None
    if spikes or big or nonfinite:
        ev = "; ".join((spikes + big)[:4] + ([err[:120]] if nonfinite else []))
        flags.append(_flag(
            "unstable_training", ev,
            "Lower the learning rate (a third) and warm up longer; gradients are clipped at norm 1.0.",
            {"learning_rate": lr / 3, "warmup_ratio": 0.1}))

    verdict = (report or {}).get("verdict") or {}
    if verdict and not verdict.get("learned"):
        loss_part = ""
        if len(losses) >= 2:
            first, last = losses[0][1], statistics.mean(v for _, v in losses[-3:])
            loss_part = f"; training loss {first:.3f} -> {last:.3f}" + (" (it fell)" if last < first * 0.9 else " (flat)")
        sig = (report or {}).get("task_significance") or {}
        sim = sig.get("similarity_to_references") or {}
        sim_part = (f"; answer similarity to the references {sim['base']:.2f} -> {sim['finetuned']:.2f}"
                    if _finite(sim.get("base")) and _finite(sim.get("finetuned")) else "")
        gate = ((report or {}).get("gates") or {}).get((report or {}).get("primary_metric")) or {}
        flags.append(_flag(
            "task_not_learned", f"{(report or {}).get('primary_metric')} base {gate.get('threshold')} -> fine-tuned "
            f"{gate.get('value')} on {sig.get('n', (report or {}).get('examples'))} held-out rows (better on "
            f"{sig.get('wins', '?')}, worse on {sig.get('losses', '?')}){sim_part}{loss_part}",
            "The run did not teach the task: use a higher learning rate and more epochs (enough optimizer steps: "
            "~100-200 on a small dataset), and check the answers in the samples look like the references.",
            verdict.get("settings") or {"learning_rate": min(lr * 3, 3e-3), "epochs": min(epochs * 2, 20.0)}))

    reg = (report or {}).get("regression") or {}
    if reg.get("flagged"):
        gp, gi = reg.get("general_text_perplexity") or {}, reg.get("general_instructions") or {}
        parts = []
        if gp.get("flagged"):
            parts.append(f"general-text perplexity {gp.get('base'):.2f} -> {gp.get('finetuned'):.2f} "
                         f"(x{gp.get('ratio'):.2f}, limit x{gp.get('threshold')})")
        if gi.get("flagged"):
            parts.append(f"general instruction score {gi.get('base'):.2f} -> {gi.get('finetuned'):.2f}")
        kn = reg.get("knowledge") or {}
        if kn.get("flagged"):
            qs = "; ".join(q["question"] for q in kn.get("lost_questions", [])[:3])
            parts.append(f"lost {kn['lost']} of {kn['known_by_base']} facts the base knew (e.g. {qs})")
        flags.append(_flag(
            "catastrophic_forgetting", "; ".join(parts) or "the regression probe is flagged",
            "Lower the learning rate, train fewer epochs, use a smaller LoRA rank, or mix general data back in.",
            {"learning_rate": lr / 2, "epochs": max(1.0, epochs / 2), "lora_rank": max(4, int(lora.get("r") or 16) // 2)}))

    div = ((report or {}).get("diversity") or {}).get("finetuned") or {}
    d2, same = div.get("distinct_2"), div.get("identical_share")
    n = len((report or {}).get("samples") or [])
    if n >= 4 and ((_finite(d2) and d2 < COLLAPSE_DISTINCT2) or (_finite(same) and same >= COLLAPSE_IDENTICAL)):
        refs = [s.get("reference") for s in (report or {}).get("samples") or []]
        ref_same = len(set(refs)) <= max(1, len(refs) // 2)  # classification data repeats answers by design
        if not ref_same:
            flags.append(_flag(
                "mode_collapse", f"fine-tuned answers: distinct bigrams {d2 if d2 is not None else 'n/a'}"
                f"{'' if d2 is None else f' (limit {COLLAPSE_DISTINCT2})'}, most common answer in "
                f"{100 * (same or 0):.0f}% of {n} samples",
                "Make the data more diverse, train fewer epochs, and sample with a temperature when generating.",
                {"epochs": max(1.0, epochs / 2), "lora_dropout": 0.1}))
    return flags


def diagnose_run(run_id: str) -> dict:
    from ..paths import read_json
    from ..runs import read_events, read_status, run_dir

    d = run_dir(run_id)
    events, _ = read_events(run_id)
    status = read_status(run_id)
    cfg = read_json(d / "config.json", default={}) or {}
    report = read_json(d / "eval" / "report.json", default=None)
    flags = diagnose_events(events, status, cfg, report)
    return {"run_id": run_id, "state": status.get("state"), "flags": flags, "evaluated": report is not None,
            "events": len(events)}
