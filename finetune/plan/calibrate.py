"""Calibrate the planner's time estimate on this machine, and check it against finished runs.

`dry_run(model, source)` runs a few real SFT steps of the model on the dataset, the same path as
`finetune/train.py` (RunConfig -> SFTConfig/LoraConfig, load_model, tokenize_rows, trl.SFTTrainer),
and measures tokens per second, seconds per step, the fixed start-up cost and peak memory. Feed
`tokens_per_s`, `overhead_s` and `mean_tokens` into `PlanRequest(measured_tokens_per_s=...,
measured_overhead_s=..., mean_tokens=...)` and plan() replaces its assumed MFU with the measurement
("calibrated": true). The latest dry run per model is kept in FINETUNE_HOME/calibration.json.

`predicted_vs_actual(run_id)` asks plan() what it would have predicted for a finished run's config
(without and with the stored calibration) and compares it with the measured duration;
`record_calibration(run_id)` also writes that to runs/<id>/calibration.json.

Heavy libraries are imported inside the functions. Run it:

    python -m finetune calibrate dry-run --json            # builtin:tiny-chat on builtin:demo
    python -m finetune calibrate check RUN_ID [--record]   # how far off the plan was
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..builtin import DEMO_DATASET_ID, TINY_CHAT_ID
from ..runs import now_iso

WARMUP_STEPS = 2  # the first steps build optimizer state and warm kernels: not representative
UNSTEADY_RATIO = 3.0


def _rss_gb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 1e9
    except Exception:  # psutil missing: fall back to the lifetime high-water mark
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


class _PeakRSS:
    """Samples this process's RSS in a thread: the peak of a dry run even inside a long-lived app,
    where getrusage's lifetime maximum would report the app's own past peak."""

    def __init__(self, every_s: float = 0.02):
        self.every_s, self.peak, self._stop = every_s, _rss_gb(), threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, _rss_gb())

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_gb())


def dry_run(model_id: str = TINY_CHAT_ID, source: str = DEMO_DATASET_ID, method: str = "lora", steps: int = 8,
            seq_len: int | None = None, batch_size: int | None = None, lora_rank: int | None = None,
            *, min_seconds: float = 3.0, max_steps: int = 400, save: bool = True,
            callbacks: list | None = None) -> dict:
    """Run at least `steps` measured SFT steps (after WARMUP_STEPS), and more until `min_seconds` have
    passed (up to `max_steps`): a small model's 8 steps last a fraction of a second, too short to average
    out a busy machine. Returns what the steps cost on this machine.

    Returns tokens_per_s (non-padding tokens per second of training steps), step_s, mean_tokens
    (tokens per example of the dataset after the chat template), overhead_s (loading the model and
    data and building the trainer: the fixed cost every run pays), peak_memory_gb (CUDA: peak
    allocated; CPU: peak RSS of this process), the spread of step times (a busy machine shows as a
    large step_s_max / step_s_p50) and the settings measured. `callbacks`: more TrainerCallbacks for
    the trainer (bench/train_throughput.py --profile profiles two of the steps).
    """
    if method == "dpo":
        method = "lora"  # DPO needs preference pairs; a LoRA SFT step measures the same token cost
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: must be a whole number >= 1 (got {steps!r})")
    cold = "trl" not in sys.modules
    t_start = time.perf_counter()
    import torch
    from transformers import TrainerCallback
    from trl import SFTTrainer

    from ..config import build_run_config, to_sft_config
    from ..modeling import cuda_available, set_threads
    from ..sft_step import LeanSFTLoss, PrefixState
    from ..train import (build_model, keep_lora_inputs_16bit, load_data, prefix_sharing_off, resolve_plan,
                         sft_step_applies)

    t_imported = time.perf_counter()
    train = dict(method=method, max_steps=max(steps, max_steps) + WARMUP_STEPS, eval_steps=0,
                 save_steps=10_000_000, logging_steps=10_000)
    if batch_size:
        train["batch_size"] = batch_size
    cfg = build_run_config(model_id, source, {
        "train": train, "data": {"max_seq_len": int(seq_len)} if seq_len else {},
        "lora": {"r": int(lora_rank), "alpha": 2 * int(lora_rank)} if lora_rank else {}})
    cuda = cuda_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times: list[float] = []
    tokens: list[int] = []

    class _Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            times.append(time.perf_counter())
            tokens.append(int(state.num_input_tokens_seen or 0))

        def on_step_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter())
            tokens.append(int(state.num_input_tokens_seen or 0))
            control.should_save = False  # a dry run keeps nothing
            n = len(times) - 1 - WARMUP_STEPS
            if n >= steps and times[-1] - times[WARMUP_STEPS] >= min_seconds:
                control.should_training_stop = True

    with _PeakRSS() as rss, tempfile.TemporaryDirectory(prefix="fts-dry-run-") as out:
        set_threads()
        # The same model and data path as a real run (train.py), so the measurement is of that path.
        plan = resolve_plan(cfg)  # the precision and weights a real run gets on this machine
        model, tok, peft_config, _backend = build_model(cfg, plan)
        train, _val, summary = load_data(cfg, tok)
        args = to_sft_config(cfg, out, cuda=cuda, prec=plan, has_eval=False)
        # Random batches measure the average example; a length-grouped sampler starts with the longest.
        args.train_sampling_strategy = "random"
        args.save_strategy = "no"
        # the real run's step: its loss and shared prefix (finetune.sft_step), 16-bit LoRA inputs
        cls = type("DryRunSFTTrainer", (LeanSFTLoss, SFTTrainer), {}) if sft_step_applies(cfg, plan) else SFTTrainer
        trainer = cls(model=model, args=args, train_dataset=train,  # max_steps runs as many epochs as it needs
                      processing_class=tok, peft_config=peft_config, callbacks=[_Clock(), *(callbacks or [])])
        keep_lora_inputs_16bit(trainer.model, cfg, plan)
        if isinstance(trainer, LeanSFTLoss) and not prefix_sharing_off(cfg, trainer.model):
            trainer.fts_prefix = PrefixState()
        trainer.train()
    if len(times) < WARMUP_STEPS + 2:
        raise RuntimeError("the dry run ended before its measured steps")
    measured_s = times[-1] - times[WARMUP_STEPS]
    measured_tokens = tokens[-1] - tokens[WARMUP_STEPS]
    n_steps = len(times) - 1 - WARMUP_STEPS
    step_times = sorted(b - a for a, b in zip(times[WARMUP_STEPS:], times[WARMUP_STEPS + 1:]))
    peak = torch.cuda.max_memory_allocated() / 1e9 if cuda else rss.peak
    result = {
        "model": model_id, "source": source, "method": method, "device": "cuda" if cuda else "cpu",
        "batch_size": cfg.train.batch_size, "seq_len": cfg.data.max_seq_len, "lora_rank": cfg.lora.r,
        "steps": n_steps, "warmup_steps": WARMUP_STEPS,
        "tokens_per_s": round(measured_tokens / measured_s, 1) if measured_s > 0 else None,
        "step_s": round(measured_s / n_steps, 4),
        "step_s_p50": round(step_times[len(step_times) // 2], 4),
        "step_s_max": round(step_times[-1], 4),
        # one step taking several times the median: something else ran meanwhile, the figure is unsteady
        "unsteady": step_times[-1] > UNSTEADY_RATIO * step_times[len(step_times) // 2],
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "mean_tokens": max(1, round(summary["tokens"] / max(1, summary["rows"]))),
        "rows": summary["rows_kept"],
        # what every run pays once: loading the model and data, building the trainer, and the imports
        # when this process was cold (a training child always is: use dry_run_in_child for the UI)
        "overhead_s": round(times[0] - t_start, 2),
        "import_s": round(t_imported - t_start, 2),
        "cold": cold,
        "peak_memory_gb": round(peak, 3),
        "peak_memory_kind": "cuda max_memory_allocated" if cuda else "process RSS",
        "threads": torch.get_num_threads(),
        "measured_at": now_iso(),
    }
    if save:
        save_calibration(result)
    return result


def dry_run_md(r: dict) -> str:
    """One line for people: what a dry run measured."""
    return (f"Measured on this machine: **{r['tokens_per_s']:,.0f} tokens/s** ({r['step_s']:.3f} s/step at batch "
            f"{r['batch_size']}, {r['threads']} threads), {r['overhead_s']:.1f} s to start, peak memory "
            f"{r['peak_memory_gb']:.2f} GB ({r['peak_memory_kind']}), {r['mean_tokens']} tokens per example."
            + (f" **Unsteady:** the slowest step took {r['step_s_max'] / r['step_s_p50']:.0f}x the median (load "
               f"{r.get('load_avg_1m')}): other work shares this machine, so run it again when it is quieter."
               if r.get("unsteady") else ""))


def dry_run_in_child(timeout_s: float = 600, **kw) -> dict:
    """dry_run() in a fresh Python process, like training: a crash or OOM cannot take the caller
    down, memory is the child's own, and overhead_s includes the cold imports a real run pays."""
    cmd = [sys.executable, "-m", "finetune", "calibrate", "dry-run", "--json"]
    for k, v in kw.items():
        if v is not None:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    root = str(Path(__file__).resolve().parents[2])
    from ..paths import home

    # The child runs in the package folder: give it the caller's home, not a ./finetune_home of its own.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
               FINETUNE_HOME=str(home()))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=root, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ValueError(f"dry run failed: {tail[0][:400]}")
    out = json.loads(lines[-1])
    if "error" in out:
        raise ValueError(f"dry run failed: {out['error']}")
    return out


# ---------------------------------------------------------------------------------------------
# The stored calibration


def _calibration_file() -> Path:
    from ..paths import home

    return home() / "calibration.json"


def save_calibration(result: dict, keep: int = 20) -> None:
    """Append a dry run to FINETUNE_HOME/calibration.json ({model: [runs, oldest first]})."""
    from ..paths import atomic_write_json, read_json

    doc = read_json(_calibration_file(), default={}) or {}
    doc[result["model"]] = (list(doc.get(result["model"]) or []) + [result])[-keep:]
    atomic_write_json(_calibration_file(), doc)


def load_calibration(model_id: str, before: str | None = None) -> dict | None:
    """The latest dry run of this model on this machine (measured before `before`, an ISO time, if
    given and there is one), or None."""
    from ..paths import read_json

    runs = (read_json(_calibration_file(), default={}) or {}).get(model_id) or []
    earlier = [r for r in runs if before and r.get("measured_at", "") <= before]
    return (earlier or runs or [None])[-1]


def calibration_fields(cal: dict | None) -> dict:
    """The PlanRequest fields a dry run fills."""
    if not cal or not cal.get("tokens_per_s"):
        return {}
    return {"measured_tokens_per_s": float(cal["tokens_per_s"]),
            "measured_overhead_s": float(cal.get("overhead_s") or 0),
            "mean_tokens": int(cal["mean_tokens"])}


# ---------------------------------------------------------------------------------------------
# Predicted vs actual


def plan_request_for_run(cfg, status: dict, calibration: dict | None = None):
    """The PlanRequest that describes a run that already happened (its own data, steps and settings)."""
    from .common import METHODS, PlanRequest

    summary = status.get("data_summary") or {}
    rows = int(summary.get("rows_kept") or summary.get("rows") or 0)
    if rows <= 0:
        raise ValueError("the run has no data summary (rows, tokens): it never started training")
    mean_tokens = max(1, round((summary.get("tokens") or 0) / max(1, summary.get("rows") or rows)))
    t = cfg.train
    steps = int(status.get("step") or 0)
    if steps <= 0:
        raise ValueError("the run did not complete a step")
    steps_per_epoch = max(1, math.ceil(rows / t.batch_size) // t.grad_accum)
    epochs = min(100.0, steps / steps_per_epoch)
    # rsLoRA and continued pretraining compute as LoRA, ORPO and KTO as DPO: the planner's tables know only those
    method = {"rslora": "lora", "cpt": "lora", "orpo": "dpo", "kto": "dpo"}.get(t.method, t.method)
    fields = dict(model=cfg.model.model_id, method=method if method in METHODS else "lora", examples=rows,
                  mean_tokens=mean_tokens, seq_len=max(16, int(cfg.data.max_seq_len)), batch_size=int(t.batch_size),
                  epochs=epochs, lora_rank=int(cfg.lora.r), gradient_checkpointing=bool(t.gradient_checkpointing),
                  hardware="local", dataset=cfg.data.source)
    if calibration:
        fields.update({k: v for k, v in calibration_fields(calibration).items() if k != "mean_tokens"})
    return PlanRequest(**fields)


def _err(pred: float | None, actual: float | None) -> float | None:
    if pred is None or not actual:
        return None
    return round(100.0 * (pred - actual) / actual, 1)


def predicted_vs_actual(run_id: str, calibration: dict | None = None) -> dict:
    """What plan() predicts for a finished run, uncalibrated and calibrated, vs its measured duration.

    `calibration` defaults to the stored dry run of the run's model (None if there is none).
    """
    from ..paths import read_json
    from ..runs import load_config, read_status, run_dir
    from .recommend import plan

    st = read_status(run_id)
    if st.get("state") not in ("completed", "stopped"):
        raise ValueError(f"run {run_id} is {st.get('state')}: only finished runs can be compared")
    actual = st.get("duration_s")
    if not actual:
        raise ValueError(f"run {run_id} has no duration_s in status.json")
    cfg = load_config(run_id)
    cal = calibration if calibration is not None else load_calibration(cfg.model.model_id, st.get("started"))
    p0 = plan(plan_request_for_run(cfg, st))
    p1 = plan(plan_request_for_run(cfg, st, cal)) if cal else None
    train_s = st.get("train_runtime_s")
    tokens = p0["time"]["tokens"]
    out = {
        "run_id": run_id, "model": cfg.model.model_id, "method": cfg.train.method, "hardware": "local",
        "steps": st.get("step"), "batch_size": cfg.train.batch_size, "tokens": tokens,
        "actual_s": round(float(actual), 2), "actual_train_s": round(float(train_s), 2) if train_s else None,
        "actual_tokens_per_s": round(tokens / train_s, 1) if train_s else None,
        "predicted_s": p0["time"]["seconds"], "predicted_tokens_per_s": p0["time"]["tokens_per_s"],
        "error_pct": _err(p0["time"]["seconds"], actual),
        "predicted_calibrated_s": p1["time"]["seconds"] if p1 else None,
        "calibrated_error_pct": _err(p1["time"]["seconds"], actual) if p1 else None,
        "calibration": ({k: cal.get(k) for k in ("tokens_per_s", "overhead_s", "mean_tokens", "batch_size",
                                                   "measured_at")} if cal else None),
        "calibrated_before_run": bool(cal and st.get("started") and cal.get("measured_at", "") <= st["started"]),
    }
    out["calibration_file"] = str(run_dir(run_id) / "calibration.json")
    out["recorded"] = bool(read_json(run_dir(run_id) / "calibration.json", default=None))
    return out


def record_calibration(run_id: str, calibration: dict | None = None) -> dict:
    """predicted_vs_actual(), also written to runs/<id>/calibration.json (only when asked)."""
    from ..paths import atomic_write_json

    out = predicted_vs_actual(run_id, calibration)
    out["recorded"] = True
    atomic_write_json(out["calibration_file"], out)
    return out


def comparison_md(r: dict) -> str:
    """A predicted_vs_actual() result as a small Markdown table."""
    from .common import fmt_seconds

    rows = [("uncalibrated", r["predicted_s"], r["error_pct"])]
    if r.get("predicted_calibrated_s") is not None:
        when = "before" if r.get("calibrated_before_run") else "after"
        rows.append((f"calibrated (dry run {when} the run)", r["predicted_calibrated_s"], r["calibrated_error_pct"]))
    lines = [f"#### How far off was the plan? Latest completed run `{r['run_id']}`",
             f"{r['steps']} steps, {r['tokens']:,} tokens, {r.get('actual_tokens_per_s') or 0:,.0f} tokens/s", "",
             "| estimate | predicted | actual | off by |", "|---|---|---|---|"]
    lines += [f"| {name} | {fmt_seconds(pred)} | {fmt_seconds(r['actual_s'])} | {err:+.0f}% |"
              for name, pred, err in rows]
    if r.get("recorded"):
        lines += ["", f"Saved to `{r['calibration_file']}`."]
    return "\n".join(lines)


def latest_comparison_md(record: bool = False) -> str:
    """comparison_md() of the newest completed run (recorded into its folder if asked), or why not."""
    rid = latest_finished_run()
    if not rid:
        return "No completed run yet: train one, then see here how far off the plan was."
    try:
        return comparison_md(record_calibration(rid) if record else predicted_vs_actual(rid))
    except (ValueError, OSError) as e:
        return f"Cannot compare {rid}: {e}"


def latest_finished_run() -> str | None:
    """The newest completed run, or None."""
    from ..runs import list_runs

    for r in list_runs():
        # a merge trained nothing to check; a GRPO run's time is mostly generation, not training steps
        if r["state"] == "completed" and not r.get("merged_from") and r.get("method") != "grpo":
            return r["run_id"]
    return None


def dataset_facts(source: str, model_id: str | None = None) -> dict:
    """What the planner needs to know about a dataset: examples, kind, labels/preferences and mean tokens
    per example as training sees them (the model's tokenizer and chat template, when it loads offline;
    else an approximation)."""
    from ..data import load_prepared, token_stats

    train, _val, kind = load_prepared(source)
    mean, approximate = None, True
    if model_id and kind in ("messages", "prompt_completion", "text"):
        try:
            from ..modeling import load_tokenizer
            from ..tokenize import tokenize_rows

            _rows, summary = tokenize_rows(load_tokenizer(model_id), train, kind)
            mean, approximate = summary["tokens"] / max(1, summary["rows"]), False
        except Exception:  # a Hub tokenizer offline, an odd template: count approximately
            mean = None
    if mean is None:
        mean = token_stats(train, kind).get("mean") or 1
    return {"source": source, "examples": len(train), "kind": kind, "has_preferences": kind == "preference",
            "has_labels": kind != "text", "mean_tokens": max(1, round(mean)), "approximate": approximate}


def recommended_train(model_id: str, source: str, method: str = "lora", *, seq_len: int = 512,
                      batch_size: int = 8, batch_fixed: bool = False) -> dict:
    """The Plan's learning rate, epochs, gradient accumulation and batch size for this model on this
    dataset (what `finetune train` uses when they are not given), with the plan's reason for each."""
    from .common import PlanRequest
    from .recommend import plan, train_settings

    facts = dataset_facts(source, model_id)
    task_type = "chat" if facts["kind"] == "messages" else "instruction"
    p = plan(PlanRequest(model=model_id, method=method, task_type=task_type, examples=facts["examples"],
                         mean_tokens=facts["mean_tokens"], has_preferences=facts["has_preferences"],
                         seq_len=max(16, seq_len), batch_size=batch_size, batch_fixed=batch_fixed,
                         dataset=source))
    s, why = train_settings(p), {h["name"]: h["rationale"] for h in p["hyperparameters"]}
    return {"learning_rate": s["learning_rate"], "epochs": float(s["epochs"]), "grad_accum": s["grad_accum"],
            "batch_size": s["batch_size"],
            "why": {"learning_rate": why["learning_rate"], "epochs": why["num_train_epochs"],
                    "grad_accum": why["gradient_accumulation_steps"],
                    "batch_size": why["per_device_train_batch_size"]}}
