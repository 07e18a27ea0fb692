"""The physics of a fine-tune: memory, FLOPs, time and serving cost (DESIGN.md section 4).

The memory model, in bytes:
    weights      16-bit: 2 per parameter; QLoRA: 0.52 per block linear weight (NF4 + double-quantised
                 absmax), embeddings, lm_head and norms stay 16-bit; full fine-tuning keeps fp32
                 master weights: 4 per parameter.
    trainable    fp32 weights + fp32 grads of the adapter: 8 per trainable parameter (PEFT keeps
                 adapters in fp32 even on a bf16 base); full fine-tuning adds fp32 grads, 4. LoRA trains
                 r*(d_in+d_out) per adapted linear; we adapt all linear layers of every block.
    optimizer    AdamW m and v: 8 per trainable parameter (fp32), 2 with an 8-bit optimizer.
    activations  per layer 34*s*b*h (Korthikanti et al. 2022, flash attention: no s^2 term); with
                 gradient checkpointing only each layer's input (2*s*b*h) plus one layer recomputed
                 in full during backward.
    logits       4*b*s*V (fp32 logits for the loss).
    overhead     CUDA context, cuBLAS workspaces and allocator slack, about 0.5 GB (0.3 GB on CPU).
So full fine-tuning costs 16 bytes/parameter before activations, LoRA about 2 + 16*(LoRA share).

The backend that will run changes two terms (`backend=`, see `planned_backend`):
    "trl"      transformers + PEFT under TRL: the loss upcasts the whole b*s*V logits to fp32 (4*V
               bytes per token) and gradient checkpointing keeps every layer's input on the device.
    "unsloth"  Unsloth on one CUDA GPU (LoRA / QLoRA): chunked cross-entropy never holds more than
               UNSLOTH_CE_CHUNK_TOKENS rows of logits, and its offloaded gradient checkpointing moves
               the layer inputs to CPU RAM, so the GPU holds one layer's activations plus two inputs in
               flight. For 4-bit runs the input embedding table is offloaded to the CPU too
               (FastLanguageModel's offload_embedding; not possible when it is tied to lm_head).

Calibration: Unsloth publishes "absolute minimum" VRAM (QLoRA / LoRA) at sequence length 2048 and
batch 1: 7B 5/19 GB, 8B 6/22, 14B 8.5/33, 70B 41/164. The unsloth backend at `UNSLOTH_MINIMUM`
(rank 16 on all linear layers, gradient checkpointing, 8-bit AdamW) reproduces every row within 25%,
Qwen2.5-14B (1.56B embedding parameters) included (tests/test_plan.py).
"""

from __future__ import annotations

from ..hardware import get_tier, usable_memory_gb
from .common import ACCELERATE_PRESETS, GB, METHODS, PREFIX_VIRTUAL_TOKENS

# bytes per NF4 linear weight: 4 bits + an fp8 absmax per 64 weights + an fp32 absmax per 256 blocks.
NF4_BYTES = 0.52
CUDA_OVERHEAD_GB = 0.5
CPU_OVERHEAD_GB = 0.3

# Settings of Unsloth's "absolute minimum" VRAM table (see module docstring).
UNSLOTH_MINIMUM = dict(seq_len=2048, batch_size=1, lora_rank=16, gradient_checkpointing=True,
                       optimizer="adamw_8bit", backend="unsloth")
UNSLOTH_CE_CHUNK_TOKENS = 512  # rows of fp32 logits (and their grads) alive at once in the chunked loss
UNSLOTH_METHODS = ("lora", "qlora")  # what the studio runs through Unsloth (finetune.config.UNSLOTH_METHODS)
BACKENDS = ("trl", "unsloth")
RUN_METHOD_AS = {"rslora": "lora", "cpt": "lora", "orpo": "dpo", "kto": "dpo", "grpo": "lora"}  # trainer method -> planner method

# Assumed model FLOPs utilisation on a GPU. QLoRA dequantises every weight on every matmul
# (bitsandbytes), DoRA recomputes weight norms; both run well below plain LoRA.
GPU_MFU = {"full": 0.40, "lora": 0.35, "qlora": 0.25, "dora": 0.25, "prefix": 0.35, "dpo": 0.30, "grpo": 0.35}
# Fixed GPU cost per micro-batch: ~10 ms of Python/optimizer work plus ~2 ms of kernel launches
# per layer (forward, backward, recompute). Irrelevant at 8B, decisive for builtin:tiny-chat.
GPU_STEP_OVERHEAD_S = 0.010
GPU_LAYER_OVERHEAD_S = 0.002
MULTI_GPU_EFFICIENCY = 0.9  # per-GPU efficiency once gradients are all-reduced / shards gathered
# Inference: generated tokens per second for a batch of concurrent requests (KV cache ignored).
SERVE_BATCH = 32
SERVE_BANDWIDTH_UTIL = 0.6
SERVE_MFU = 0.4


# ---------------------------------------------------------------------------------------------
# Memory


def default_optimizer(method: str, device: str = "cuda") -> str:
    # QLoRA's recipe pairs 4-bit weights with a paged 8-bit optimizer; bitsandbytes optimizers need CUDA.
    return "paged_adamw_8bit" if method == "qlora" and device == "cuda" else "adamw_torch"


def trainable_params(spec: dict, method: str, lora_rank: int = 16) -> int:
    if method == "full":
        return int(spec["params_computed"])
    if method == "prefix":
        return PREFIX_VIRTUAL_TOKENS * spec["layers"] * 2 * spec["hidden"]
    n = lora_rank * spec["lora_params_per_rank"]
    if method == "dora":
        n += spec["dora_magnitude_params"]
    return int(n)


def planned_backend(method: str, tier: dict, shards: int = 1) -> str:
    """The backend finetune.train will use for this method on this tier: Unsloth on one CUDA GPU for
    LoRA and QLoRA (the Space installs it; locally only when it is installed), else TRL."""
    if tier.get("device") != "cuda" or method not in UNSLOTH_METHODS or shards > 1 or (tier.get("gpu_count") or 0) > 1:
        return "trl"
    if tier.get("name") == "local":
        import importlib.util

        return "unsloth" if importlib.util.find_spec("unsloth") is not None else "trl"
    return "unsloth"


def _memory_parts(spec: dict, method: str, lora_rank: int, gradient_checkpointing: bool,
                  load_in_4bit: bool | None, optimizer: str | None, device: str, shards: int,
                  backend: str = "trl", preset: str | None = None):
    """Static bytes (independent of batch and length) and bytes per token in flight (b*s), and the
    bytes an offloading preset keeps in CPU RAM instead."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: must be one of {', '.join(BACKENDS)} (got {backend!r})")
    unsloth = backend == "unsloth" and device == "cuda"
    if load_in_4bit is None:
        load_in_4bit = method == "qlora" or (spec.get("prequantized_4bit", False) and method != "full")
    optimizer = optimizer or default_optimizer(method, device)
    opt_bytes = 2 if "8bit" in optimizer else 8
    n_lin, n_rest = spec["params_linear"], spec["params_embedding"] + spec["params_norm"]
    if method == "full":
        weights = 4 * (n_lin + n_rest)  # fp32 master weights; bf16 autocast casts on the fly
    elif load_in_4bit:
        weights = NF4_BYTES * n_lin + 2 * n_rest
        if unsloth and not spec.get("tie_embeddings"):  # offload_embedding: the input table lives on the CPU
            weights -= 2 * spec["params_embedding"] / 2
    else:
        weights = 2 * (n_lin + n_rest)
    n_train = trainable_params(spec, method, lora_rank)
    static = {
        "weights": weights,
        # full: the fp32 weights are already counted above, add their fp32 grads; adapters: fp32
        # weights + fp32 grads.
        "trainable_and_grads": (4 if method == "full" else 8) * n_train,
        "optimizer": opt_bytes * n_train,
    }
    h, L, V = spec["hidden"], spec["layers"], spec["vocab"]
    offloaded = 0.0
    if preset is not None:
        # An accelerate preset (finetune/parallel.py) divides exactly the parts it shards over the
        # `shards` processes: ZeRO-2 optimizer state and gradients, ZeRO-3/FSDP everything; ZeRO-3
        # offload then keeps the optimizer state in CPU RAM and streams weights in a layer or two at a time.
        info = ACCELERATE_PRESETS[preset]
        if shards > 1:
            static = {k: (v / shards if k in info["shards"] else v) for k, v in static.items()}
        for k in info["offload"]:
            keep = min(1.0, 2 / max(1, L)) if k == "weights" else 0.0
            offloaded += static[k] * (1 - keep)
            static[k] *= keep
    elif shards > 1:  # FSDP / ZeRO-3 shards weights, grads and optimizer state across GPUs
        static = {k: v / shards for k, v in static.items()}
    per_layer_full = 34 * h
    if unsloth and gradient_checkpointing:  # layer inputs offloaded to CPU RAM; two in flight
        act = per_layer_full + 2 * 2 * h
    else:
        act = (2 * h * L + per_layer_full) if gradient_checkpointing else per_layer_full * L
    per_token = {"activations": act, "logits": 0 if unsloth else 4 * V}
    if unsloth:
        static["logits"] = 4 * V * UNSLOTH_CE_CHUNK_TOKENS  # one chunk, whatever the batch and length
    overhead = (CUDA_OVERHEAD_GB if device == "cuda" else CPU_OVERHEAD_GB) * GB
    if method == "dora":
        # PEFT's DoRA materialises W + BA (fp32) per layer to take its column norms.
        overhead += 4 * spec["max_linear_params"]
    static["overhead"] = overhead
    return static, per_token, offloaded


def estimate_memory(spec: dict, method: str, seq_len: int, batch_size: int, lora_rank: int = 16,
                    gradient_checkpointing: bool = True, *, load_in_4bit: bool | None = None,
                    optimizer: str | None = None, device: str = "cuda", shards: int = 1,
                    backend: str = "trl", preset: str | None = None) -> dict:
    """Peak training memory per device in GB, with a breakdown (see module docstring).

    `preset` (ddp, zero2, zero3, zero3-offload, fsdp) divides what that accelerate preset shards over
    `shards` processes; without it, shards > 1 means everything is sharded (FSDP).

    method "dpo" is LoRA-DPO: the reference model is the base with the adapter switched off, so it
    costs nothing extra, but chosen and rejected answers go through together (twice the tokens).
    """
    if method not in METHODS:
        raise ValueError(f"method: must be one of {', '.join(METHODS)} (got {method!r})")
    static, per_token, offloaded = _memory_parts(spec, method, lora_rank, gradient_checkpointing, load_in_4bit,
                                                 optimizer, device, shards, backend=backend, preset=preset)
    tokens = batch_size * seq_len * (2 if method == "dpo" else 1)
    parts = {k: v for k, v in static.items() if k != "overhead"}
    for k, v in per_token.items():
        parts[k] = parts.get(k, 0) + v * tokens
    parts["overhead"] = static["overhead"]
    breakdown = {k: round(v / GB, 3) for k, v in parts.items()}
    return {
        "total_gb": round(sum(parts.values()) / GB, 2),
        "breakdown": breakdown,
        "static_gb": round(sum(static.values()) / GB, 3),
        "per_token_mb": round(sum(per_token.values()) * (2 if method == "dpo" else 1) / 1e6, 4),
        "trainable_params": trainable_params(spec, method, lora_rank),
        "backend": backend if device == "cuda" else "trl",
        **({"cpu_offload_gb": round(offloaded / GB, 3)} if offloaded else {}),
    }


def max_fit(static_b: float, per_token_b: float, capacity_b: float, other: int, limit: int) -> int:
    """Largest x with static + per_token*x*other <= capacity (memory is linear in b*s)."""
    if capacity_b <= static_b:
        return 0
    return int(min(limit, (capacity_b - static_b) // (per_token_b * other)))


# ---------------------------------------------------------------------------------------------
# Time and cost


def flops_per_token(spec: dict, method: str, seq_len: int, lora_rank: int = 16,
                    gradient_checkpointing: bool = True) -> float:
    """Training FLOPs per token: 6N full; 4N_frozen + 6N_trainable for adapters; +2N recompute with
    gradient checkpointing; attention 12*L*d*T (T = tokens attended); DPO adds the reference forward."""
    n = spec["params_computed"]
    attn = 12 * spec["layers"] * spec["heads"] * spec["head_dim"] * seq_len
    if method == "full":
        f = 6 * n
    else:
        n_train = trainable_params(spec, method, lora_rank)
        f = 4 * n + 6 * n_train
    if gradient_checkpointing:
        f += 2 * n
        attn *= 4 / 3
    if method == "dpo":
        f += 2 * n  # reference log-probs: a forward pass with the adapter disabled
    return float(f + attn)


def _cpu_mfu(spec: dict) -> float:
    # PyTorch on CPU reaches a good share of peak only on large matmuls; small models spend their
    # time in Python, kernel launches and elementwise ops. Measured on 2 EPYC vCPUs (torch 2.13,
    # LoRA, batch 4 x 128): builtin:tiny-chat (h=128) ~4%, a SmolLM2-135M shape (h=576) ~30%.
    return max(0.02, min(0.4, 0.3 * (spec["hidden"] / 576) ** 1.25))


def estimate_time(spec: dict, method: str, tokens: float, tier: str | dict, seq_len: int = 512,
                  lora_rank: int = 16, gradient_checkpointing: bool = True, *, mean_tokens: int | None = None,
                  batch_size: int = 4, load_in_4bit: bool = False, gpus: int | None = None) -> dict:
    """Hours and dollars to train on `tokens` tokens (already multiplied by epochs) on a tier.

    Compute time at an assumed MFU, plus a fixed cost per micro-batch on a GPU (kernel launches,
    Python, optimizer bookkeeping) that dominates for tiny models and vanishes for large ones.
    """
    t = get_tier(tier) if isinstance(tier, str) else tier
    attended = mean_tokens or seq_len
    fpt = flops_per_token(spec, method, attended, lora_rank, gradient_checkpointing)
    n_gpu = t["gpu_count"] if gpus is None else gpus
    step_overhead_s = 0.0
    if t.get("gpu_count"):
        mfu = GPU_MFU[method]
        if load_in_4bit:
            mfu = min(mfu, GPU_MFU["qlora"])
        peak = t["peak_tflops"] * 1e12 * n_gpu * (MULTI_GPU_EFFICIENCY if n_gpu > 1 else 1.0)
        step_overhead_s = GPU_STEP_OVERHEAD_S + GPU_LAYER_OVERHEAD_S * spec["layers"]
    else:
        mfu = _cpu_mfu(spec)
        peak = t["peak_tflops"] * 1e12
        n_gpu = 0
    micro_steps = tokens / max(1, batch_size * attended * max(1, n_gpu))
    tokens_per_s = peak * mfu / fpt
    seconds = (tokens / tokens_per_s if tokens else 0.0) + micro_steps * step_overhead_s
    if seconds:
        tokens_per_s = tokens / seconds
    hours = seconds / 3600
    return {
        "flops_per_token": fpt,
        "tokens": int(tokens),
        "total_flops": fpt * tokens,
        "mfu": mfu,
        "peak_tflops": round(peak / 1e12, 2),
        "tokens_per_s": round(tokens_per_s, 1),
        "hours": round(hours, 4),
        "seconds": round(seconds, 1),
        "cost_usd": round(hours * float(t.get("price_usd_per_h") or 0.0), 4),
        "gpus": n_gpu,
        "calibrated": False,
    }


def calibrated_time(est: dict, tier: dict, tokens_per_s: float, overhead_s: float = 0.0) -> dict:
    """An estimate_time() result redone from a measured throughput (a dry run on this machine)."""
    seconds = (est["tokens"] / tokens_per_s if est["tokens"] else 0.0) + (overhead_s or 0.0)
    peak = est["peak_tflops"] * 1e12
    return dict(est, tokens_per_s=round(float(tokens_per_s), 1), seconds=round(seconds, 1),
                hours=round(seconds / 3600, 4),
                mfu=round(tokens_per_s * est["flops_per_token"] / peak, 4) if peak else None,
                cost_usd=round(seconds / 3600 * float(tier.get("price_usd_per_h") or 0.0), 4),
                calibrated=True, overhead_s=round(float(overhead_s or 0.0), 2))


def inference_cost_per_1m(spec: dict, tier: dict) -> float | None:
    """Rough USD per 1M generated tokens serving SERVE_BATCH concurrent requests on a tier.

    Decoding is bound by reading the weights once per step (bandwidth) or by FLOPs, whichever is
    slower; 16-bit weights if they fit in 80% of memory, else 4-bit, else None (does not fit).
    """
    n = spec["params_computed"]
    if tier.get("gpu_count"):
        mem = tier["gpu_memory_gb"] * tier["gpu_count"] * GB
        bw = tier["memory_bandwidth_gbs"] * tier["gpu_count"] * GB
        peak = tier["peak_tflops"] * tier["gpu_count"] * 1e12
    else:
        mem = tier.get("ram_gb", 0) * GB
        bw = min(100, 5 * tier.get("vcpu", 1)) * GB  # ~5 GB/s of DRAM bandwidth per vCPU, capped
        peak = tier["peak_tflops"] * 1e12
    full = 2 * n
    q4 = NF4_BYTES * spec["params_linear"] + 2 * (spec["params_embedding"] + spec["params_norm"])
    weight_bytes = full if full <= 0.8 * mem else (q4 if q4 <= 0.8 * mem else None)
    if weight_bytes is None:
        return None
    step = max(weight_bytes / (bw * SERVE_BANDWIDTH_UTIL), 2 * n * SERVE_BATCH / (peak * SERVE_MFU))
    tps = SERVE_BATCH / step
    return round(float(tier.get("price_usd_per_h") or 0.0) / (tps * 3600) * 1e6, 4)


def plan_shards(spec: dict, method: str, seq_len: int, batch_size: int, lora_rank: int, gc: bool, tier: dict,
            optimizer: str | None = None, load_in_4bit: bool | None = None) -> int:
    """GPUs to shard the model over: 1 (plain data parallel) when a full copy fits on each GPU, else
    all of them (FSDP). Full fine-tuning on several GPUs is always sharded: replicas waste memory."""
    n_gpu = tier.get("gpu_count") or 0
    if n_gpu <= 1:
        return 1
    if method == "full":
        return n_gpu
    est = estimate_memory(spec, method, seq_len, batch_size, lora_rank, gc, device="cuda",
                          optimizer=optimizer, load_in_4bit=load_in_4bit)
    return 1 if est["total_gb"] <= usable_memory_gb(tier) else n_gpu


def estimate_run_memory(model: str, method: str, seq_len: int, batch_size: int, lora_rank: int = 16,
                        gradient_checkpointing: bool = False, hardware: str = "local",
                        params_b: float | None = None) -> dict:
    """The one figure a run needs before it starts: peak memory per device for these settings on
    this hardware, and whether it fits ({"vram_gb", "usable_gb", "fits", "hardware"}). The same
    model as plan()'s row for the method, without the rest of the plan. ValueError for a model the
    planner cannot size (an unknown Hub id offline) or a method it does not model."""
    from .specs import model_spec

    spec = model_spec(model, params_b)
    tier = get_tier(hardware)
    # The trainer's methods on the planner's: rsLoRA and continued pretraining cost what LoRA costs;
    # ORPO and KTO put two completions per row through the model, as LoRA-DPO does.
    method = RUN_METHOD_AS.get(method, method)
    four_bit = method == "qlora" or (spec.get("prequantized_4bit", False) and method != "full")
    optimizer = default_optimizer("qlora" if four_bit else method, tier["device"])
    shards = plan_shards(spec, method, seq_len, batch_size, lora_rank, gradient_checkpointing, tier, optimizer,
                     four_bit)
    est = estimate_memory(spec, method, seq_len, batch_size, lora_rank, gradient_checkpointing,
                          load_in_4bit=four_bit, optimizer=optimizer, device=tier["device"], shards=shards,
                          backend=planned_backend("qlora" if four_bit else method, tier, shards))
    usable = usable_memory_gb(tier)
    return {"vram_gb": est["total_gb"], "usable_gb": round(usable, 2), "fits": est["total_gb"] <= usable,
            "hardware": tier["name"]}
