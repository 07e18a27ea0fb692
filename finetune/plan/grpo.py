"""What the planner knows about GRPO (method grpo, finetune/grpo.py): its memory, its time, and when
to recommend it.

A GRPO step samples G answers per prompt (generation: one decoding step per answer token, each
reading every weight once, so bound by memory bandwidth or per-step overhead, not FLOPs), scores
them, then trains LoRA on prompt + answer tokens of all G answers. With beta > 0 the KL term needs
the reference model's log-probs: one more forward pass per token, and no extra memory with LoRA (the
reference is the base with the adapter switched off). Memory is LoRA training at batch x (prompt +
answer) tokens plus the KV cache of one generation batch.

`apply(req, spec, tier, out)` runs at the end of plan(): it always adds `out["grpo"]` (does GRPO fit
this task, why, its settings, memory and time here), adds a reason when the task is verifiable, and
when GRPO is the chosen method replaces the SFT-shaped time, memory and command with GRPO's.
"""

from __future__ import annotations

import re

from .common import GB, PlanRequest, _hours
from ..hardware import get_tier, usable_memory_gb
from .estimate import estimate_memory, estimate_time

# Per decoding step (one new token for the whole generation batch): Python, sampling and kernel
# launches in transformers' generate, which dominate small models (per layer, plus a fixed part).
DECODE_OVERHEAD_S = {"cuda": (0.004, 0.0004), "cpu": (0.006, 0.0015)}
DECODE_BANDWIDTH_UTIL = 0.5
VERIFIABLE = re.compile(r"\b(math|arithmetic|numbers?|numeric|calculat\w*|sums?|count\w*|json|schema|regex|format\w*|"
                        r"extract\w*|classif\w*|label\w*|verif\w*|unit tests?|sql|exact answers?|gsm8k)\b", re.I)
VERIFIABLE_TASK_TYPES = ("extraction", "classification", "code")


def _decode_seconds(spec: dict, tier: dict, completions: int, completion_len: int, gen_batch: int) -> float:
    n = spec["params_computed"]
    cuda = bool(tier.get("gpu_count"))
    if cuda:
        bw = tier["memory_bandwidth_gbs"] * GB
        peak = tier["peak_tflops"] * 1e12
    else:
        bw = min(100, 5 * tier.get("vcpu", 1)) * GB
        peak = (tier.get("peak_tflops") or 0.1) * 1e12
    fixed, per_layer = DECODE_OVERHEAD_S["cuda" if cuda else "cpu"]
    step = max(2 * n / (bw * DECODE_BANDWIDTH_UTIL), 2 * n * gen_batch / (peak * 0.3)) + fixed + per_layer * spec["layers"]
    batches = -(-completions // max(1, gen_batch))
    return batches * completion_len * step


def grpo_estimate(spec: dict, tier: dict | str, *, prompts: int, epochs: float, prompt_len: int, completion_len: int,
                  generations: int, batch_size: int, grad_accum: int = 1, beta: float = 0.0, lora_rank: int = 16,
                  gradient_checkpointing: bool = False) -> dict:
    """Memory (GB) and time (s, h, $) of a GRPO run: generation + LoRA training (+ reference pass)."""
    t = get_tier(tier) if isinstance(tier, str) else tier
    seq = prompt_len + completion_len
    device = t["device"]
    mem = estimate_memory(spec, "lora", seq, batch_size, lora_rank, gradient_checkpointing, device=device)
    gen_batch = batch_size * grad_accum  # TRL generates a whole step's answers at once
    kv = 2 * spec["layers"] * spec["kv_heads"] * spec["head_dim"] * 2 * gen_batch * seq
    total_gb = round(mem["total_gb"] + kv / GB, 2)
    completions = int(prompts * epochs * generations)
    trained_tokens = completions * seq
    train = estimate_time(spec, "lora", trained_tokens, t, seq, lora_rank, gradient_checkpointing,
                          mean_tokens=seq, batch_size=batch_size)
    train_s = train["seconds"] * (1 + (2 / 6 if beta > 0 else 0.0))  # reference forward: ~2N of ~6N per token
    gen_s = _decode_seconds(spec, t, completions, completion_len, gen_batch)
    seconds = train_s + gen_s
    hours = seconds / 3600
    return {"vram_gb": total_gb, "kv_cache_gb": round(kv / GB, 3), "training_gb": mem["total_gb"],
            "reference_model": "none (beta = 0)" if beta <= 0 else "the base with the adapter switched off (no extra "
                                                                  "memory, one more forward pass per token)",
            "completions": completions, "trained_tokens": trained_tokens, "generation_s": round(gen_s, 1),
            "training_s": round(train_s, 1), "seconds": round(seconds, 1), "hours": round(hours, 4),
            "cost_usd": round(hours * float(t.get("price_usd_per_h") or 0.0), 4),
            "fits": total_gb <= usable_memory_gb(t)}


def verifiable(req: PlanRequest) -> list[str]:
    """Why the task's answers can be checked by a program (empty when nothing says so)."""
    why = []
    words = sorted({m.group(0).lower() for m in VERIFIABLE.finditer(req.task or "")})
    if words:
        why.append(f"the task mentions {', '.join(words[:4])}")
    if req.task_type in VERIFIABLE_TASK_TYPES:
        why.append(f"{req.task_type} answers can be compared with a reference")
    return why


def _settings(req: PlanRequest) -> dict:
    g = max(2, req.grpo_generations)
    return {"num_generations": g, "max_completion_len": req.grpo_completion_len, "beta": req.grpo_beta,
            "batch_size": g * max(1, req.batch_size // g), "prompt_len": min(req.seq_len, req.mean_tokens or max(16, req.seq_len // 2))}


def apply(req: PlanRequest, spec: dict, tier: dict, out: dict) -> dict:
    s = _settings(req)
    n = max(1, req.examples)
    epochs = float(req.epochs or 1.0)
    r = (out.get("hyperparameters_dict") or {}).get("lora_r", req.lora_rank or 16)
    est = grpo_estimate(spec, tier, prompts=n, epochs=epochs, prompt_len=s["prompt_len"],
                        completion_len=s["max_completion_len"], generations=s["num_generations"],
                        batch_size=s["batch_size"], beta=s["beta"], lora_rank=r)
    why = verifiable(req)
    chosen = out.get("training_method") == "grpo"
    fits_task = bool(why) or chosen
    reasons = []
    if why:
        reasons.append(f"GRPO fits: {'; '.join(why)}, so a program can score answers (exact/numeric match, a format "
                       "regex, valid JSON) and reinforcement learning can improve on them without more labels.")
        reasons.append("Train SFT (LoRA) first so the model already answers in the expected form, then GRPO from "
                       "that model: with rewards that are all 0 at the start, GRPO learns nothing.")
    elif chosen:
        reasons.append("GRPO chosen by you: make sure the rewards can tell good answers from bad ones (a verifiable "
                       "task: a number, JSON, a format); open-ended chat is better served by SFT or DPO.")
    reasons.append(f"GRPO cost: {s['num_generations']} answers per prompt x {s['max_completion_len']} tokens; "
                   f"{est['completions']:,} answers in {epochs:g} epoch(s) of {n:,} prompts: generation "
                   f"{_hours(est['generation_s'] / 3600)}, training {_hours(est['training_s'] / 3600)} on {tier['name']}; "
                   f"{est['vram_gb']:.2f} GB (KV cache {est['kv_cache_gb']:.2f} GB); reference model: "
                   f"{est['reference_model']}.")
    out["grpo"] = {"recommended": fits_task, "reasons": reasons, "settings": s, "estimate": est}
    if why and not chosen:
        out["reasons"].append(reasons[0] + " " + reasons[1])
    if chosen:
        out["reasons"] += reasons
        out.update(vram_gb=est["vram_gb"], fits=bool(est["fits"]), time_s=est["seconds"], time_h=est["hours"],
                   cost_usd=est["cost_usd"], trl_command=(
                       f"finetune train --model {req.model} --method grpo --reward numeric "
                       f"--grpo-num-generations {s['num_generations']} --grpo-max-completion-len "
                       f"{s['max_completion_len']} --batch-size {s['batch_size']}"))
        out["time"] = {**out.get("time", {}), "hours": est["hours"], "seconds": est["seconds"],
                       "cost_usd": est["cost_usd"]}
        for t in out.get("tiers", []):
            tt = get_tier(t["name"])
            e = grpo_estimate(spec, tt, prompts=n, epochs=epochs, prompt_len=s["prompt_len"],
                              completion_len=s["max_completion_len"], generations=s["num_generations"],
                              batch_size=s["batch_size"], beta=s["beta"], lora_rank=r)
            t.update(vram_gb=e["vram_gb"], fits=bool(e["fits"]), hours=e["hours"], cost_usd=e["cost_usd"])
    return out
