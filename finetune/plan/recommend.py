"""The recommendation: method choice (the fine-tuning decision tree), hyperparameters from the
conservative / balanced / aggressive presets, risks with mitigations, dataset requirements, the
evaluation plan, readiness, and plan(), which puts them together with the estimates and exports.
"""

from __future__ import annotations

import math

from ..builtin import TINY_CHAT_ID
from ..config import BUILTIN_DEMO_REASON, BUILTIN_DEMO_TRAIN
from ..data.common import SFT_MIN_EXAMPLES  # the decision tree's threshold for supervised fine-tuning
from ..hardware import get_tier, list_tiers, tiers_meta, usable_memory_gb
from .common import GB, METHODS, PREFIX_VIRTUAL_TOKENS, PlanRequest, _hours, _slug
from .estimate import (
    default_optimizer,
    max_fit,
    plan_shards,
    calibrated_time,
    estimate_memory,
    estimate_time,
    planned_backend,
    inference_cost_per_1m,
)
from . import grpo as grpo_plan
from .export import render_python_script, render_report_md, render_trl_config, render_yaml
from .specs import model_spec

FULL_FT_MIN_EXAMPLES = 10000  # below this, full fine-tuning rarely beats LoRA and forgets more

PRESETS = {
    "conservative": {"learning_rate": 1e-5, "num_train_epochs": 1, "per_device_train_batch_size": 1,
                     "lora_r": 8, "warmup_ratio": 0.10},
    "balanced": {"learning_rate": 2e-4, "num_train_epochs": 3, "per_device_train_batch_size": 4,
                 "lora_r": 16, "warmup_ratio": 0.03},
    "aggressive": {"learning_rate": 5e-4, "num_train_epochs": 5, "per_device_train_batch_size": 8,
                   "lora_r": 64, "warmup_ratio": 0.01},
}
# Adapter learning rates by model size (see _lr_for_size): the presets' rates suit ~8B models.
LR_REFERENCE_PARAMS = 8e9
LR_SIZE_EXPONENT = 0.4
LR_SCALE_MIN, LR_SCALE_MAX = 0.5, 5.0
SIZE_SCALED_METHODS = ("lora", "rslora", "dora", "qlora")  # supervised adapters (measured on LoRA)
# Optimizer steps a small task needs before it is learned, measured on builtin:smollm2-135m-instruct
# at 1e-3 (bench/real_tasks.py): a persona answered 12/12 held-out questions after 50 steps; short
# fixed-form answers (a label, JSON fields) reach a training loss under 0.01 in ~35. More steps than
# needed only overfit: 92 steps on identity questions alone made the model forget what it knew.
MIN_STEPS = {"classification": 40, "extraction": 40, "default": 60}
MAX_EPOCHS_FOR_STEPS = 20
PRIORITY_PRESET = {"quality": "balanced", "speed": "aggressive", "cost": "conservative"}
# Learning rates that suit each method, per preset: adapters take ~10x the rate of full weights,
# and DPO moves a policy that is already good, so it uses far smaller steps.
METHOD_LR = {
    "full": {"conservative": 1e-5, "balanced": 2e-5, "aggressive": 5e-5},
    "dpo": {"conservative": 5e-7, "balanced": 5e-6, "aggressive": 5e-5},
    "prefix": {"conservative": 1e-3, "balanced": 1e-2, "aggressive": 3e-2},
}


def _method_row(spec: dict, tier: dict, req: PlanRequest, m: str, lora_rank: int,
                load_in_4bit: bool | None = None) -> dict:
    """Memory of one method at the requested batch and length, and the largest batch / length that fit."""
    device = tier["device"]
    capacity = usable_memory_gb(tier) * GB
    four_bit = load_in_4bit if load_in_4bit is not None else (
        m == "qlora" or (spec.get("prequantized_4bit", False) and m != "full"))
    optimizer = default_optimizer("qlora" if four_bit else m, device)
    kw = dict(device=device, load_in_4bit=four_bit, optimizer=optimizer)
    shards = plan_shards(spec, m, req.seq_len, req.batch_size, lora_rank, req.gradient_checkpointing, tier,
                     optimizer, four_bit)
    kw["backend"] = planned_backend("qlora" if four_bit else m, tier, shards)
    est = estimate_memory(spec, m, req.seq_len, req.batch_size, lora_rank, req.gradient_checkpointing,
                          shards=shards, **kw)
    static_b = est["static_gb"] * GB
    per_tok = est["per_token_mb"] * 1e6
    notes = []
    applicable = True
    if spec.get("prequantized_4bit") and m == "full":
        applicable = False
        notes.append(f"weights are pre-quantised to 4-bit: fully fine-tune its base {spec.get('base')} instead")
    elif spec.get("prequantized_4bit") and m != "qlora":
        notes.append("pre-quantised 4-bit weights: adapters train on the 4-bit base (as QLoRA)")
    if four_bit and device != "cuda":
        notes.append("bitsandbytes 4-bit on CPU is slow; prefer LoRA when it fits")
    if shards > 1:
        notes.append(f"weights, grads and optimizer state sharded over {shards} GPUs (FSDP)")
    if m == "dpo":
        notes.append(("QLoRA" if four_bit else "LoRA") + "-DPO: reference = base with adapter disabled; "
                     "chosen+rejected = 2x tokens")
    if m == "prefix":
        notes.append(f"{PREFIX_VIRTUAL_TOKENS} virtual tokens per layer; not in the trl CLI, use the script")
    fits = applicable and est["total_gb"] * GB <= capacity
    no_gc = est["total_gb"]
    if req.gradient_checkpointing:
        no_gc = estimate_memory(spec, m, req.seq_len, req.batch_size, lora_rank, False, shards=shards,
                                **kw)["total_gb"]
    return {
        "vram_gb": est["total_gb"],
        "breakdown": est["breakdown"],
        "trainable_params": est["trainable_params"],
        "fits": bool(fits),
        "max_batch_size": max_fit(static_b, per_tok, capacity, req.seq_len, 4096) if applicable else 0,
        "max_seq_len": max_fit(static_b, per_tok, capacity, req.batch_size, spec["context"]) if applicable else 0,
        "fits_without_gc": bool(applicable and no_gc * GB <= capacity),
        "sharded_over": shards,
        "load_in_4bit": bool(four_bit),
        "optimizer": optimizer,
        "applicable": applicable,
        "notes": notes,
    }


def _feasibility(spec: dict, tier: dict, req: PlanRequest, lora_rank: int) -> dict:
    """One row per method (see _method_row). DPO's row is LoRA-DPO on a 16-bit base."""
    return {m: _method_row(spec, tier, req, m, lora_rank) for m in METHODS}


def _choose_method(req: PlanRequest, spec: dict, tier: dict, feas: dict) -> tuple[str, str, list[str]]:
    """The decision tree. Returns (method, training_method, reasons); method may be "prompting",
    in which case training_method is what to do if prompting turns out not to be enough."""
    reasons: list[str] = []
    cap = usable_memory_gb(tier)
    where = f"{tier['name']} ({cap:.0f} GB usable {'GPU memory' if tier['device'] == 'cuda' else 'RAM'})"
    prompting = False

    if req.method != "auto":
        m = req.method
        reasons.append(f"Method {m} chosen by you (auto would follow the decision tree).")
        if m == "dpo" and not (req.has_preferences or req.task_type == "preference"):
            reasons.append("Warning: DPO needs preference pairs (prompt, chosen, rejected); you said you have none.")
        if m != "dpo" and req.has_preferences and not req.has_labels:
            reasons.append("Warning: you have preference pairs but no labels; DPO would use them directly.")
        if m == "full" and req.examples < SFT_MIN_EXAMPLES:
            reasons.append(f"Warning: full fine-tuning on {req.examples} examples tends to overfit and forget; "
                           "LoRA is safer with few examples.")
        if not feas[m]["fits"]:
            reasons.append(f"Warning: {m} needs about {feas[m]['vram_gb']:.1f} GB and does not fit on {where}.")
        return m, m, reasons

    # 1. Is the task achievable with prompting?
    if req.prompting_sufficient:
        prompting = True
        reasons.append("Prompting is sufficient for this task: use prompting (cheaper, nothing to train or "
                       "host). The rest of this plan is the fallback if prompting falls short.")
    else:
        reasons.append("Prompting is not sufficient: fine-tune.")

    # 2. What data is there?
    peft_only = False
    if req.has_preferences or req.task_type == "preference":
        reasons.append(f"Preference pairs available ({req.examples}): Direct Preference Optimisation (DPO) "
                       "learns from chosen vs rejected answers without a reward model.")
        if req.examples < SFT_MIN_EXAMPLES:
            reasons.append(f"Only {req.examples} pairs: expect a modest shift; aim for 1,000+ pairs.")
        family = "dpo"
    elif not req.has_labels:
        reasons.append("No labelled data: generate synthetic data (distil answers from a stronger model, then "
                       "filter them) for supervised fine-tuning, or collect preference pairs with blind A/B "
                       "votes in Compare and train with DPO (RLHF-style).")
        family = "sft"
        peft_only = req.examples < SFT_MIN_EXAMPLES
    elif req.examples >= SFT_MIN_EXAMPLES:
        reasons.append(f"{req.examples} labelled examples (>= {SFT_MIN_EXAMPLES}): supervised fine-tuning (SFT).")
        family = "sft"
    else:
        reasons.append(f"Few examples ({req.examples} < {SFT_MIN_EXAMPLES} labelled): LoRA (a small adapter "
                       "overfits less than full fine-tuning) or few-shot prompting with the best examples.")
        family = "sft"
        peft_only = True

    # 3. Hardware constraints.
    prequant = spec.get("prequantized_4bit", False)
    if prequant:
        reasons.append("Model weights are pre-quantised to 4-bit: adapters only (QLoRA).")
    if family == "dpo":
        if feas["dpo"]["fits"] and not prequant:
            reasons.append(f"LoRA-DPO needs {feas['dpo']['vram_gb']:.1f} GB and fits on {where}.")
            return ("prompting" if prompting else "dpo"), "dpo", reasons
        reasons.append(f"LoRA-DPO needs {feas['dpo']['vram_gb']:.1f} GB: load the base in 4-bit (QLoRA-DPO).")
        return ("prompting" if prompting else "dpo"), "dpo", reasons

    n_gpu = tier.get("gpu_count") or 0
    full_ok = not peft_only and not prequant and feas["full"]["fits"]
    lora_ok = feas["lora"]["fits"] and not prequant
    big_data = req.examples >= FULL_FT_MIN_EXAMPLES
    if n_gpu > 1 and full_ok and big_data and req.priority == "quality":
        reasons.append(f"Cluster ({n_gpu} GPUs): full fine-tuning with parallelism (FSDP shards weights, "
                       f"gradients and optimizer state); {feas['full']['vram_gb']:.1f} GB per GPU.")
        m = "full"
    elif lora_ok:
        if full_ok and big_data and req.priority == "quality":
            reasons.append(f"Good memory: full fine-tuning fits ({feas['full']['vram_gb']:.1f} GB on {where}) and "
                           f"{req.examples} examples justify updating every weight.")
            m = "full"
        else:
            if not full_ok:
                extra = ""
            elif not big_data:
                extra = (f"; full fine-tuning would fit too, but below {FULL_FT_MIN_EXAMPLES} examples it rarely "
                         "pays for its forgetting risk and checkpoint size")
            else:
                extra = f"; full fine-tuning would fit too, but LoRA is faster and cheaper ({req.priority} first)"
            shard = (f" per GPU when sharded over {feas['lora']['sharded_over']} GPUs (FSDP)"
                     if feas["lora"]["sharded_over"] > 1 else "")
            reasons.append(f"Good memory: LoRA needs {feas['lora']['vram_gb']:.1f} GB{shard} and fits on "
                           f"{where}{extra}.")
            m = "lora"
    elif feas["qlora"]["fits"]:
        if prequant:
            reasons.append(f"QLoRA needs {feas['qlora']['vram_gb']:.1f} GB and fits on {where}.")
        else:
            reasons.append(f"Limited memory: LoRA needs {feas['lora']['vram_gb']:.1f} GB, more than {where}; "
                           f"QLoRA (4-bit base) needs {feas['qlora']['vram_gb']:.1f} GB and fits.")
        if tier["device"] != "cuda":
            reasons.append("Note: 4-bit training on a CPU is slow; a GPU tier is much faster.")
        m = "qlora"
    else:
        reasons.append(f"Even QLoRA needs {feas['qlora']['vram_gb']:.1f} GB, more than {where}: choose a larger "
                       "tier (see the tiers table) or shorten seq_len / lower batch_size.")
        m = "qlora"
    return ("prompting" if prompting else m), m, reasons


def _lr_for_size(lr: float, params: float, why: str) -> tuple[float, str]:
    """An adapter's learning rate for the model's size: the presets are tuned for ~8B models, and
    smaller models need larger steps (a 135M model learns a 90-row task at 1e-3 and nothing at 2e-4),
    larger ones smaller: x (8B / size)^0.4, between x0.5 and x5, rounded to 1, 2, 3 or 5 x 10^k."""
    scale = min(LR_SCALE_MAX, max(LR_SCALE_MIN, (LR_REFERENCE_PARAMS / max(1.0, params)) ** LR_SIZE_EXPONENT))
    if abs(scale - 1) < 0.15:
        return lr, why + f"; suits this {params / 1e9:.1f}B model"
    new = _nice(lr * scale)
    return new, why + (f"; x{scale:.1f} for a {params / 1e9:.2g}B model ({lr:g} suits ~8B): "
                       + ("small models need larger steps to learn in few updates" if scale > 1 else
                          "large models move further per step and forget more at high rates"))


def _nice(x: float) -> float:
    """The nearest of 1, 2, 3, 5 x 10^k below x: a rate people recognise, never above the computed one."""
    k = math.floor(math.log10(x) + 1e-9)  # 1e-3 may come out as 10^-2.9999999
    return float(f"{max(m for m in (1, 2, 3, 5) if m * 10 ** k <= x * 1.0001)}e{k}")


def _epochs_for_steps(epochs: float, why: str, n: int, eff_batch: int, task_type: str) -> tuple[float, str]:
    """Enough passes for the optimizer steps a task needs: a small dataset at a normal batch gives only a
    few steps per epoch, and a few dozen updates teach nothing whatever the epoch count says."""
    per_epoch = max(1, math.ceil(n / eff_batch))
    need = MIN_STEPS.get(task_type, MIN_STEPS["default"])
    steps = per_epoch * epochs
    if steps >= need:
        return epochs, why + f"; {steps:g} optimizer steps ({per_epoch} per epoch at effective batch {eff_batch})"
    more = min(MAX_EPOCHS_FOR_STEPS, math.ceil(need / per_epoch))
    kind = ("short fixed-form answers" if task_type in ("classification", "extraction")
            else f"{'an' if task_type[0] in 'aeiou' else 'a'} {task_type} task")
    return float(more), (f"{n} examples at effective batch {eff_batch} are {per_epoch} optimizer steps per epoch; "
                         f"{kind} needs about {need} updates to be learned, so {more} epochs "
                         f"({per_epoch * more} steps; {epochs:g} would give {steps:g}); watch validation loss")


def _hyperparameters(req: PlanRequest, spec: dict, tier: dict, method: str, feas_row: dict,
                     effective_examples: int) -> tuple[list[dict], dict, str]:
    preset_name = PRIORITY_PRESET[req.priority]
    p = PRESETS[preset_name]
    hp: list[dict] = []
    cfg: dict = {}

    def add(name, value, why):
        hp.append({"name": name, "value": value, "rationale": why})
        cfg[name] = value

    lr_table = METHOD_LR.get("full" if method == "full" else method)
    lr = lr_table[preset_name] if lr_table else p["learning_rate"]
    why = f"{preset_name} preset ({req.priority} first)"
    if method == "full":
        why += "; full fine-tuning takes ~10x smaller steps than adapters to limit forgetting"
    elif method == "dpo":
        why += "; DPO nudges an already-trained policy, so steps are small"
    elif method == "prefix":
        why += "; prefix tuning trains only virtual tokens and tolerates high rates"
    elif preset_name == "conservative":
        lr = 5e-5  # 1e-5 barely moves a freshly initialised (zero) LoRA B matrix
        why += "; 1e-5 is a full fine-tuning rate, LoRA needs ~5e-5 to move at all"
    demo = req.model == TINY_CHAT_ID and method in ("lora", "dora")
    if demo:  # the random demo model needs its own settings (finetune.config.BUILTIN_DEMO_TRAIN)
        lr, why = BUILTIN_DEMO_TRAIN["learning_rate"], BUILTIN_DEMO_REASON
    elif method in SIZE_SCALED_METHODS:  # adapters on supervised data: the step size depends on the model's size
        lr, why = _lr_for_size(lr, spec["params"], why)
    add("learning_rate", lr, why)

    n = effective_examples
    fit_b = max(1, feas_row["max_batch_size"])
    b = min(req.batch_size, fit_b)
    target = 16 if n >= SFT_MIN_EXAMPLES else 8
    n_dev = tier.get("gpu_count") or 1
    ga = max(1, round(target / (b * n_dev)))
    # keep at least ~20 optimizer steps per epoch on small data, or warmup and logging mean nothing
    while ga > 1 and n / (b * n_dev * ga) < 20:
        ga //= 2
    asked_b = b
    # Small data: smaller batches, down to 4, rather than more epochs for the same updates, where the epochs
    # come from the number of updates the data needs (below), not from the user, the demo or a cap.
    steps_decide = (req.epochs is None and not demo and method != "dpo" and req.priority != "speed"
                    and not req.batch_fixed)
    while steps_decide and ga == 1 and b > 4 and n / (b * n_dev) < 20:
        b = max(4, b // 2)
    if req.epochs is not None:
        epochs, why = req.epochs, "set by you"
    elif demo:
        epochs, why = BUILTIN_DEMO_TRAIN["epochs"], "the demo model learns the demo set in ~20 passes"
    else:
        epochs = p["num_train_epochs"]
        why = f"{preset_name} preset"
        if n >= 50_000:
            epochs, why = 1, f"{n} examples: one pass is enough and avoids memorising"
        elif n >= 10_000:
            epochs, why = min(epochs, 2), f"{n} examples: at most two passes"
        elif n < 300 and method != "dpo":
            epochs, why = max(epochs, 3), f"only {n} examples: a few passes are needed to learn, watch val loss"
        if method == "dpo":
            epochs, why = min(epochs, 2 if n < 5000 else 1), "DPO over-optimises quickly: 1-2 epochs"
        if req.priority == "speed":
            epochs, why = min(epochs, 1 if n >= 1000 else 2), why + "; capped for speed"
        elif method != "dpo":
            epochs, why = _epochs_for_steps(epochs, why, n, b * n_dev * ga, req.task_type)
    add("num_train_epochs", epochs, why)

    why = f"asked: {req.batch_size}"
    if asked_b < req.batch_size:
        why += f"; only {fit_b} fit{'s' if fit_b == 1 else ''} in memory at max_length {req.seq_len}"
    if b < asked_b:
        why += (f"; {n} examples: batch {b} gives {math.ceil(n / (b * n_dev))} optimizer steps per epoch "
                f"(at {asked_b}: {math.ceil(n / (asked_b * n_dev))}), fewer epochs for the same number of updates")
    add("per_device_train_batch_size", b, why)
    add("gradient_accumulation_steps", ga,
        f"effective batch {b * ga * n_dev} (target {target}): stable gradients without more memory")

    if method not in ("full", "prefix"):
        r = req.lora_rank or p["lora_r"]
        why = "set by you" if req.lora_rank else f"{preset_name} preset"
        if not req.lora_rank and n < 1000 and r > 16:
            r, why = 16, f"{n} examples cannot use a high rank; 16 overfits less"
        add("lora_r", r, why)
        add("lora_alpha", 2 * r, "alpha = 2r: the usual scale, keeps the update size stable across ranks")
        drop = 0.05 if n < 200 else 0.0
        add("lora_dropout", drop, "a little dropout for so few examples" if drop else
            "none: its random masks cost 15-25% of a CPU step; the validation loss's early stop and "
            "best-step choice guard against overfitting")
        add("lora_target_modules", spec["target_modules"],
            "all linear layers: matches full fine-tuning quality far better than attention-only")
        if method == "dora":
            add("use_dora", True, "DoRA: magnitude + direction; a little better than LoRA at low rank, slower")
    add("warmup_steps", p["warmup_ratio"],
        f"{preset_name} preset: {p['warmup_ratio']:.0%} of steps warm up (a ratio < 1)")
    add("lr_scheduler_type", "linear", "decays to zero after the warmup (TRL's default); cosine holds a high rate "
        "longer and ended 9% higher in answer loss on the demo (3 seeds)")
    add("max_length", req.seq_len, "your seq_len; longer examples are truncated")
    gc = req.gradient_checkpointing
    if tier["device"] != "cuda" and gc and feas_row.get("fits_without_gc"):
        gc, why = False, "off: memory allows it, and on CPU recomputation costs ~+50% time"
    else:
        why = "on: trades ~30% compute for a large cut in activation memory" if gc else "off: faster, more memory"
    add("gradient_checkpointing", gc, why)
    if tier["device"] == "cuda":
        if tier.get("bf16", True):
            add("bf16", True, f"{tier.get('gpu') or 'GPU'} supports bf16: fp32 range, half the memory")
        else:
            add("fp16", True, f"{tier.get('gpu')} has no bf16: fp16 mixed precision with loss scaling")
    else:
        if tier.get("bf16"):
            add("bf16", True, "CPU has avx512_bf16/AMX: bf16 autocast is faster")
        else:
            add("bf16", False, "CPU lacks avx512_bf16/AMX: bf16 would be emulated and slower, use fp32")
        add("use_cpu", True, "no GPU found")
    optim = feas_row["optimizer"]
    add("optim", optim, "paged 8-bit AdamW: QLoRA's recipe, saves optimizer memory" if "8bit" in optim
        else "AdamW (torch)")
    if method == "qlora":
        add("load_in_4bit", True, "NF4 base weights (QLoRA) to fit in memory")
    if method == "dpo":
        add("beta", 0.1, "DPO's default KL strength: higher stays closer to the base model")
        if feas_row.get("load_in_4bit"):
            add("load_in_4bit", True, "4-bit base (QLoRA-DPO): LoRA-DPO does not fit in 16-bit"
                if not spec.get("prequantized_4bit") else "the weights are pre-quantised to 4-bit")
    return hp, cfg, preset_name


def _risks(req: PlanRequest, method: str, cfg: dict, feas_row: dict, n: int) -> list[dict]:
    lr, epochs = cfg.get("learning_rate", 2e-4), cfg.get("num_train_epochs", 1)
    risks = []

    def add(name, level, symptom, mitigation):
        risks.append({"risk": name, "level": level, "symptom": symptom, "mitigation": mitigation})

    over = "high" if (n < 500 and epochs >= 3) or (method == "full" and n < SFT_MIN_EXAMPLES) else (
        "medium" if n < 2000 or epochs >= 3 else "low")
    add("overfitting", over, "validation loss rises while training loss falls",
        "hold out 10% for validation, evaluate every epoch and keep the best checkpoint; more or more "
        "diverse data, fewer epochs, LoRA dropout")
    under = "high" if epochs <= 1 and n < 1000 else ("medium" if lr <= 2e-5 and method != "full" else "low")
    add("underfitting", under, "loss stays high, outputs look like the base model",
        "more steps or epochs, a higher learning rate, a higher LoRA rank")
    forget = "high" if method == "full" and lr > 2e-5 else ("medium" if method == "full" or lr >= 5e-4 else "low")
    add("catastrophic forgetting", forget, "the model loses general abilities it had",
        "lower learning rate, fewer epochs, LoRA instead of full, mix in some general instruction data, "
        "run a regression check on general prompts")
    headroom = feas_row.get("headroom_gb", 0)
    oom = "certain" if not feas_row["fits"] else ("high" if headroom < 1 else "low")
    add("out of memory (OOM)", oom, "CUDA out of memory at the first steps or on the longest batch",
        f"per_device_train_batch_size {max(1, feas_row['max_batch_size'])} or less, a shorter max_length, "
        "gradient checkpointing, 4-bit base (QLoRA), a larger tier")
    collapse = "medium" if method == "dpo" or n < 300 else "low"
    add("mode collapse", collapse, "repetitive, same-y outputs, shorter and shorter answers",
        "diverse prompts and answers, de-duplicate the data, sampling temperature at evaluation; for DPO "
        "a larger beta and 1-2 epochs")
    return risks


_FORMATS = {
    "chat": ("chatml", "messages: [{role, content}, ...] (conversational)"),
    "instruction": ("alpaca", "instruction / input / output (or prompt / completion)"),
    "classification": ("alpaca", "instruction / input / output, output = one label from a fixed set"),
    "extraction": ("alpaca", "instruction / input / output, output = JSON with the fields"),
    "summarisation": ("alpaca", "instruction / input (document) / output (summary)"),
    "code": ("chatml", "messages with the code answer, or prompt / completion"),
    "preference": ("preference", "prompt / chosen / rejected"),
}
_MIN_EXAMPLES = {"chat": 1000, "instruction": 1000, "classification": 500, "extraction": 500,
                 "summarisation": 1000, "code": 2000, "preference": 1000}
_METRICS = {
    "chat": ["win rate vs the base model (blind A/B in Compare)", "LLM-as-judge score on held-out prompts"],
    "instruction": ["exact match / ROUGE-L on held-out instructions", "win rate vs the base model"],
    "classification": ["accuracy", "macro F1 (per-class recall shows imbalance)"],
    "extraction": ["field-level exact match", "valid-JSON rate"],
    "summarisation": ["ROUGE-L", "faithfulness spot-check by a human"],
    "code": ["pass@1 on unit tests", "exact match / BLEU on held-out solutions"],
    "preference": ["reward accuracy (chosen log-prob margin > 0)", "win rate vs the base model"],
}


def _dataset_requirements(req: PlanRequest, method: str, mean_tokens: int) -> dict:
    task_type = "preference" if method == "dpo" else req.task_type
    fmt, layout = _FORMATS[task_type]
    minimum = _MIN_EXAMPLES[task_type]
    checks = ["no empty or truncated answers; de-duplicate near-identical rows",
              f"examples fit in max_length {req.seq_len} tokens (mean about {mean_tokens})",
              "the chat template matches the model; loss only on the answer tokens",
              "hold out 10% (at least 50 rows) for validation, never seen in training"]
    if task_type == "classification":
        checks.append("labels balanced or weighted; every label appears in validation")
    if task_type == "preference":
        checks.append("chosen and rejected differ in quality, not just length")
    if not req.has_labels and method != "dpo":
        checks.append("synthetic answers filtered by a judge or rules before training")
    return {
        "format": fmt, "columns": layout,
        "minimum_examples": minimum,
        "have": req.examples,
        "enough": req.examples >= minimum,
        "validation_split": 0.1,
        "synthetic_needed": not req.has_labels and method != "dpo",
        "quality_checks": checks,
    }


def _evaluation_plan(req: PlanRequest, method: str) -> dict:
    task_type = "preference" if method == "dpo" else req.task_type
    return {
        "metrics": ["perplexity / validation loss"] + _METRICS[task_type],
        "test_set": "the 10% held-out split (same distribution), plus 20-50 general prompts as a regression check",
        "baseline": "the base model on the same prompts (zero-shot, and few-shot with 3 training examples)",
        "regression": "general prompts answered before and after: flag answers that got worse",
    }


def _readiness(req: PlanRequest, spec: dict, fits: bool, data: dict, within_budget: bool | None) -> int:
    score = 0
    score += 15 if spec["source"] != "params_b" else 8
    score += 25 if fits else 0
    score += round(15 * min(1.0, req.examples / max(1, data["minimum_examples"])))
    score += 10 if req.dataset.strip() else 0
    score += 15 if (req.has_labels or req.has_preferences) else 5
    score += 10 if within_budget is not False else 0
    score += 10 if req.task.strip() else 0
    return int(max(0, min(100, score)))


def plan(req: PlanRequest) -> dict:
    """Plan a fine-tune (see module docstring). Returns a JSON-serialisable dict."""
    spec = model_spec(req.model, req.params_b)
    tier = get_tier(req.hardware)
    mean_tokens = min(req.mean_tokens or max(1, req.seq_len // 2), req.seq_len)
    rank_guess = req.lora_rank or PRESETS[PRIORITY_PRESET[req.priority]]["lora_r"]
    feas = _feasibility(spec, tier, req, rank_guess)
    method, tm, reasons = _choose_method(req, spec, tier, feas)
    if req.model == TINY_CHAT_ID:
        reasons.append("builtin:tiny-chat is randomly initialised: a run shows the pipeline works, not quality.")
    if req.params_b and spec["source"] != "params_b":
        reasons.append(f"params_b={req.params_b:g} ignored: {req.model} is known ({spec['params'] / 1e9:.2f}B).")
    if req.mean_tokens and req.mean_tokens > req.seq_len:
        reasons.append(f"mean_tokens {req.mean_tokens} exceeds seq_len {req.seq_len}: examples will be truncated.")

    n = req.examples
    if n == 0 and not req.has_labels and tm != "dpo":
        n = SFT_MIN_EXAMPLES
        reasons.append(f"Planning for {n} synthetic examples (you have none yet).")
    row = dict(feas[tm])
    if tm == "dpo" and (not row["fits"] or spec.get("prequantized_4bit")):
        row = _method_row(spec, tier, req, "dpo", rank_guess, load_in_4bit=True)
    capacity = usable_memory_gb(tier)
    hp, cfg, preset_name = _hyperparameters(req, spec, tier, tm, row, n)
    # Memory with the settings actually chosen (batch may have shrunk, rank may differ, 4-bit DPO).
    load_4bit = bool(cfg.get("load_in_4bit")) or None
    shards = plan_shards(spec, tm, req.seq_len, cfg["per_device_train_batch_size"], cfg.get("lora_r", 16),
                     cfg["gradient_checkpointing"], tier, cfg["optim"], load_4bit)
    backend = planned_backend("qlora" if load_4bit else tm, tier, shards)
    mem = estimate_memory(spec, tm, req.seq_len, cfg["per_device_train_batch_size"], cfg.get("lora_r", 16),
                          cfg["gradient_checkpointing"], load_in_4bit=load_4bit, optimizer=cfg["optim"],
                          device=tier["device"], shards=shards, backend=backend)
    if backend == "unsloth":
        reasons.append("Memory is estimated for Unsloth (it runs LoRA/QLoRA on one CUDA GPU here): chunked "
                       "cross-entropy and gradient checkpointing offloaded to CPU RAM.")
    fits = row["applicable"] and mem["total_gb"] <= capacity

    epochs = cfg["num_train_epochs"]
    tokens = n * mean_tokens * epochs * (2 if tm == "dpo" else 1)
    time = estimate_time(spec, tm, tokens, tier, req.seq_len, cfg.get("lora_r", 16), cfg["gradient_checkpointing"],
                         mean_tokens=mean_tokens, batch_size=cfg["per_device_train_batch_size"],
                         load_in_4bit=bool(load_4bit))
    calibrate = req.measured_tokens_per_s is not None
    if calibrate and tier["name"] == "local":
        assumed = time["tokens_per_s"]
        time = calibrated_time(time, tier, req.measured_tokens_per_s, req.measured_overhead_s or 0.0)
        reasons.append(f"Time on this machine is calibrated: a dry run measured {req.measured_tokens_per_s:,.0f} "
                       f"tokens/s (the uncalibrated model assumed {assumed:,.0f}) plus "
                       f"{req.measured_overhead_s or 0:.0f} s to start: {_hours(time['hours'])} in all.")
    elif calibrate:
        reasons.append("The dry-run calibration applies to this machine (hardware local) only; "
                       f"{tier['name']} keeps the uncalibrated estimate.")

    # Every tier: does the chosen method fit, how long, how much, and what serving costs.
    tiers_out = []
    opt_method = "qlora" if load_4bit else tm
    for t in list_tiers(include_local=True):
        # the chosen tier's checkpointing choice applies to tiers of its kind (CPU vs GPU)
        gc = cfg["gradient_checkpointing"] if t["device"] == tier["device"] else req.gradient_checkpointing
        sh = plan_shards(spec, tm, req.seq_len, cfg["per_device_train_batch_size"], cfg.get("lora_r", 16),
                     gc, t, default_optimizer(opt_method, t["device"]), load_4bit)
        e = estimate_memory(spec, tm, req.seq_len, cfg["per_device_train_batch_size"], cfg.get("lora_r", 16),
                            gc, load_in_4bit=load_4bit,
                            optimizer=default_optimizer(opt_method, t["device"]), device=t["device"], shards=sh,
                            backend=planned_backend(opt_method, t, sh))
        tt = estimate_time(spec, tm, tokens, t, req.seq_len, cfg.get("lora_r", 16), gc,
                           mean_tokens=mean_tokens, batch_size=cfg["per_device_train_batch_size"],
                           load_in_4bit=bool(load_4bit))
        if calibrate and t["name"] == "local":
            tt = calibrated_time(tt, t, req.measured_tokens_per_s, req.measured_overhead_s or 0.0)
        tiers_out.append({
            "name": t["name"], "label": t.get("label", t["name"]), "available": t.get("available", True),
            "hardware": "this machine" if t["name"] == "local" else (t.get("gpu") or "CPU"),
            "price_usd_per_h": t.get("price_usd_per_h", 0.0), "vram_gb": e["total_gb"],
            "fits": bool(row["applicable"] and e["total_gb"] <= usable_memory_gb(t)),
            "hours": tt["hours"], "cost_usd": tt["cost_usd"], "calibrated": tt["calibrated"],
            "inference_usd_per_1m_tokens": inference_cost_per_1m(spec, t),
        })
    # Tiers worth recommending: fit, still offered, and finish within the time budget (or a day).
    max_h = req.budget_h or 24.0
    fitting = [t for t in tiers_out if t["fits"] and t["available"] and t["name"] != "local"
               and t["hours"] <= max_h]
    cheapest = min(fitting, key=lambda t: (t["cost_usd"], t["hours"]), default=None)
    fastest = min(fitting, key=lambda t: (t["hours"], t["cost_usd"]), default=None)
    if cheapest:
        reasons.append(f"Cheapest tier that fits: {cheapest['name']} (${cheapest['cost_usd']:.2f}, "
                       f"{_hours(cheapest['hours'])}); fastest: {fastest['name']} ({_hours(fastest['hours'])}, "
                       f"${fastest['cost_usd']:.2f}).")

    within_budget = None
    if req.budget_usd is not None or req.budget_h is not None:
        over = []
        if req.budget_usd is not None and time["cost_usd"] > req.budget_usd:
            over.append(f"${time['cost_usd']:.2f} > budget ${req.budget_usd:g}")
        if req.budget_h is not None and time["hours"] > req.budget_h:
            over.append(f"{_hours(time['hours'])} > budget {req.budget_h:g} h")
        within_budget = not over
        if over:
            ok = [t for t in fitting if (req.budget_usd is None or t["cost_usd"] <= req.budget_usd)
                  and (req.budget_h is None or t["hours"] <= req.budget_h)]
            alt = (f"; within budget on {ok[0]['name']}" if ok else
                   "; no tier fits the budget: fewer epochs, fewer examples or a shorter max_length")
            reasons.append("Over budget: " + ", ".join(over) + alt + ".")
        else:
            reasons.append("Within budget.")

    row["headroom_gb"] = round(capacity - mem["total_gb"], 2)
    row["fits"] = fits
    row["max_batch_size"] = cfg["per_device_train_batch_size"] if fits else row["max_batch_size"]
    data = _dataset_requirements(req, tm, mean_tokens)
    risks = _risks(req, tm, cfg, row, n)
    output_dir = f"runs/{_slug(req.model)}-{tm}"
    n_gpu = tier.get("gpu_count") or 0
    # The exported config and script get the warmup in whole steps, rounded down as our trainer does
    # (transformers rounds a ratio up: a short run would throw one of its few updates away). Their
    # warmup is still transformers' (its first step at rate 0; ours learns at 1/(w+1)): one step differs.
    # `trl sft --config` trains on the whole train split; the script holds 10% out first.
    yaml_cfg = dict(cfg, warmup_steps=_whole_warmup_steps(cfg, n, max(1, n_gpu)))
    script_cfg = dict(cfg, warmup_steps=_whole_warmup_steps(cfg, n - math.ceil(0.1 * n), max(1, n_gpu)))
    trl_cfg, notes = render_trl_config(req, spec, tm, yaml_cfg, output_dir)
    launch = ""
    if n_gpu > 1:
        launch = f" --accelerate_config {'fsdp2' if shards > 1 else 'multi_gpu'} --num_processes {n_gpu}"
        if shards > 1 and trl_cfg.get("load_in_4bit"):
            trl_cfg["bnb_4bit_quant_storage"] = "bfloat16"  # FSDP can only shard 4-bit weights stored as bf16
    command = ("python train.py" if tm == "prefix" else
               f"trl {'dpo' if tm == 'dpo' else 'sft'} --config plan.yaml{launch}")
    header = [f"Fine-Tune Studio plan: {req.model}, {tm}. Run: {command}"]
    header += notes
    yaml_text = render_yaml(trl_cfg, header)
    script = render_python_script(req, spec, tm, script_cfg, output_dir)

    out = {
        "model": req.model,
        "model_spec": {k: spec[k] for k in ("id", "name", "family", "params", "layers", "hidden", "intermediate",
                                            "heads", "kv_heads", "head_dim", "vocab", "context", "licence",
                                            "gated", "prequantized_4bit", "source") if k in spec},
        "hardware": tier["name"],
        "device": tier["device"],
        "usable_memory_gb": round(capacity, 2),
        "method": method,
        "training_method": tm,
        "reasons": reasons,
        "vram_gb": mem["total_gb"],
        "vram_breakdown": mem["breakdown"],
        "backend": backend,
        "trainable_params": mem["trainable_params"],
        "fits": bool(fits),
        "feasibility": feas,
        "time_h": time["hours"],
        "time_s": time["seconds"],
        "calibrated": bool(time["calibrated"]),
        "cost_usd": time["cost_usd"],
        "time": time,
        "within_budget": within_budget,
        "tiers": tiers_out,
        "prices": tiers_meta(),
        "preset": preset_name,
        "presets": PRESETS,
        "hyperparameters": hp,
        "hyperparameters_dict": cfg,
        "risks": risks,
        "dataset_requirements": data,
        "evaluation_plan": _evaluation_plan(req, tm),
        "trl_command": command,
        "parallelism": ("fsdp" if shards > 1 else "ddp") if n_gpu > 1 else "none",
        "trl_config": trl_cfg,
        "trl_config_yaml": yaml_text,
        "python_script": script,
    }
    grpo_plan.apply(req, spec, tier, out)  # GRPO's memory, time and fit (finetune/plan/grpo.py)
    out["readiness"] = _readiness(req, spec, out["fits"], data, within_budget)
    out["report_md"] = render_report_md(req, spec, out)
    return out


def _whole_warmup_steps(cfg: dict, n_train: int, n_devices: int) -> int:
    """The plan's warmup ratio as whole optimizer steps of the planned run, rounded down (0: none)."""
    ratio = float(cfg.get("warmup_steps") or 0)
    if ratio >= 1:
        return int(ratio)
    batches = math.ceil(max(1, n_train) / (cfg["per_device_train_batch_size"] * n_devices))
    per_epoch = max(1, math.ceil(batches / cfg["gradient_accumulation_steps"]))
    return int(math.ceil(cfg["num_train_epochs"] * per_epoch) * ratio)


def train_settings(p: dict) -> dict | None:
    """The run settings a plan recommends (the Train tab's fields, "Use this plan"), or None when the
    advice is to prompt rather than train."""
    if p.get("method") == "prompting":
        return None
    cfg = p.get("hyperparameters_dict") or {}
    mods = cfg.get("lora_target_modules", "all-linear")
    return {"method": p["training_method"], "learning_rate": cfg.get("learning_rate"),
            "epochs": cfg.get("num_train_epochs"), "batch_size": cfg.get("per_device_train_batch_size"),
            "max_seq_len": cfg.get("max_length"), "lora_rank": cfg.get("lora_r", 16),
            "lora_alpha": cfg.get("lora_alpha", 2 * cfg.get("lora_r", 16)), "lora_dropout": cfg.get("lora_dropout", 0.05),
            "target_modules": ",".join(mods) if isinstance(mods, (list, tuple)) else str(mods),
            "grad_accum": cfg.get("gradient_accumulation_steps", 1), "warmup_ratio": cfg.get("warmup_steps", 0.03),
            "lr_scheduler": cfg.get("lr_scheduler_type", "linear"),
            "gradient_checkpointing": bool(cfg.get("gradient_checkpointing", False))}
