"""The fine-tuning planner: method, memory, time, cost and a ready-to-run TRL config, before training.

`plan(PlanRequest(...))` walks the fine-tuning decision tree (prompting -> data -> hardware, from
the fine-tuning-specialist seed), estimates memory for every method on the chosen hardware, time and
cost on every Hugging Face Space tier, picks hyperparameters from the conservative / balanced /
aggressive presets, lists risks with mitigations, and renders the "FINE-TUNING PLAN" report, a YAML
for `trl sft --config` / `trl dpo --config`, and an equivalent Python script.

Pure and fast: no gradio, no torch, no network; the model registry (assets/models.json) and tier
table (assets/hardware_tiers.json) are read once. Try it:

    python -m finetune.plan meta-llama/Llama-3.1-8B-Instruct t4-small

The memory model (DESIGN.md section 4), in bytes:
    weights      16-bit: 2 per parameter; QLoRA: 0.52 per block linear weight (NF4 + double-quantised
                 absmax), embeddings, lm_head and norms stay 16-bit; full fine-tuning keeps fp32
                 master weights: 4 per parameter.
    trainable    fp32 weights + fp32 grads of the adapter: 8 per trainable parameter (PEFT keeps
                 adapters in fp32 even on a bf16 base); full fine-tuning adds fp32 grads, 4. LoRA trains r*(d_in+d_out) per adapted
                 linear; we adapt all linear layers of every block.
    optimizer    AdamW m and v: 8 per trainable parameter (fp32), 2 with an 8-bit optimizer.
    activations  per layer 34*s*b*h (Korthikanti et al. 2022, flash attention: no s^2 term); with
                 gradient checkpointing only each layer's input (2*s*b*h) plus one layer recomputed
                 in full during backward.
    logits       4*b*s*V (fp32 logits for the loss).
    overhead     CUDA context, cuBLAS workspaces and allocator slack, about 0.5 GB (0.3 GB on CPU).
So full fine-tuning costs 16 bytes/parameter before activations, LoRA about 2 + 16*(LoRA share).

Calibration: Unsloth publishes "absolute minimum" VRAM (QLoRA / LoRA): 7B 5/19 GB, 8B 6/22,
14B 8.5/33, 70B 41/164. Those figures are reproduced (tests/test_plan.py, within 25%) by the
settings in `UNSLOTH_MINIMUM`: batch 1, a short 512-token sequence, rank 16 on all linear layers,
gradient checkpointing on, and the 8-bit AdamW that Unsloth's notebooks use. Longer sequences and
larger batches add the activation and logit terms on top.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .builtin import BUILDER_VERSION, DEMO_DATASET_ID, TINY_CHAT_CONFIG, TINY_CHAT_ID
from .config import BUILTIN_DEMO_REASON, BUILTIN_DEMO_TRAIN
from .hardware import get_tier, list_tiers, tier_names, tiers_meta, usable_memory_gb

MODELS_FILE = Path(__file__).with_name("assets") / "models.json"

METHODS = ("full", "lora", "qlora", "dora", "prefix", "dpo")
PEFT_METHODS = ("lora", "qlora", "dora", "prefix", "dpo")
TASK_TYPES = ("chat", "instruction", "classification", "extraction", "summarisation", "code", "preference")
PRIORITIES = ("quality", "speed", "cost")

GB = 1e9
# bytes per NF4 linear weight: 4 bits + an fp8 absmax per 64 weights + an fp32 absmax per 256 blocks.
NF4_BYTES = 0.52
PREFIX_VIRTUAL_TOKENS = 20
SFT_MIN_EXAMPLES = 1000      # the decision tree's threshold for supervised fine-tuning
FULL_FT_MIN_EXAMPLES = 10000  # below this, full fine-tuning rarely beats LoRA and forgets more
CUDA_OVERHEAD_GB = 0.5
CPU_OVERHEAD_GB = 0.3

# Settings that reproduce Unsloth's "absolute minimum" VRAM table (see module docstring).
UNSLOTH_MINIMUM = dict(seq_len=512, batch_size=1, lora_rank=16, gradient_checkpointing=True,
                       optimizer="adamw_8bit")

# Assumed model FLOPs utilisation on a GPU. QLoRA dequantises every weight on every matmul
# (bitsandbytes), DoRA recomputes weight norms; both run well below plain LoRA.
GPU_MFU = {"full": 0.40, "lora": 0.35, "qlora": 0.25, "dora": 0.25, "prefix": 0.35, "dpo": 0.30}
# Fixed GPU cost per micro-batch: ~10 ms of Python/optimizer work plus ~2 ms of kernel launches
# per layer (forward, backward, recompute). Irrelevant at 8B, decisive for builtin:tiny-chat.
GPU_STEP_OVERHEAD_S = 0.010
GPU_LAYER_OVERHEAD_S = 0.002
MULTI_GPU_EFFICIENCY = 0.9  # per-GPU efficiency once gradients are all-reduced / shards gathered
# Inference: generated tokens per second for a batch of concurrent requests (KV cache ignored).
SERVE_BATCH = 32
SERVE_BANDWIDTH_UTIL = 0.6
SERVE_MFU = 0.4

PRESETS = {
    "conservative": {"learning_rate": 1e-5, "num_train_epochs": 1, "per_device_train_batch_size": 1,
                     "lora_r": 8, "warmup_ratio": 0.10},
    "balanced": {"learning_rate": 2e-4, "num_train_epochs": 3, "per_device_train_batch_size": 4,
                 "lora_r": 16, "warmup_ratio": 0.03},
    "aggressive": {"learning_rate": 5e-4, "num_train_epochs": 5, "per_device_train_batch_size": 8,
                   "lora_r": 64, "warmup_ratio": 0.01},
}
PRIORITY_PRESET = {"quality": "balanced", "speed": "aggressive", "cost": "conservative"}
# Learning rates that suit each method, per preset: adapters take ~10x the rate of full weights,
# and DPO moves a policy that is already good, so it uses far smaller steps.
METHOD_LR = {
    "full": {"conservative": 1e-5, "balanced": 2e-5, "aggressive": 5e-5},
    "dpo": {"conservative": 5e-7, "balanced": 5e-6, "aggressive": 5e-5},
    "prefix": {"conservative": 1e-3, "balanced": 1e-2, "aggressive": 3e-2},
}

TARGET_MODULES = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
}
LLAMA_LIKE = {"llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "gemma", "gemma2",
              "gemma3", "gemma3_text", "olmo", "olmo2", "granite", "smollm3", "cohere", "starcoder2", "phi3"}


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class PlanRequest:
    """What the user wants to fine-tune, on what, with what data. Help text feeds the UI labels."""

    model: str = _f(TINY_CHAT_ID, "Base model: a Hub id, a local folder with config.json, or builtin:tiny-chat.")
    method: Literal["auto", "full", "lora", "qlora", "dora", "prefix", "dpo"] = _f(
        "auto", "Training method; auto follows the decision tree.")
    task: str = _f("", "What the fine-tuned model should do, in your words.")
    task_type: Literal["chat", "instruction", "classification", "extraction", "summarisation", "code",
                       "preference"] = _f("instruction", "Kind of task; sets data format and metrics.")
    examples: int = _f(1000, "Number of training examples (or preference pairs) you have.")
    mean_tokens: int | None = _f(None, "Mean tokens per example; default half of seq_len.")
    has_labels: bool = _f(True, "Do you have target outputs for your inputs?")
    has_preferences: bool = _f(False, "Do you have preference pairs (chosen / rejected answers)?")
    prompting_sufficient: bool = _f(False, "Does a well-written prompt already do the task well enough?")
    hardware: str = _f("local", "Hardware tier name (e.g. t4-small, a100-large) or local for this machine.")
    seq_len: int = _f(512, "Maximum tokens per training example (max_length).")
    batch_size: int = _f(4, "Examples per device per step you would like; reduced if it does not fit.")
    epochs: float | None = _f(None, "Passes over the data; default from the preset and data size.")
    priority: Literal["quality", "speed", "cost"] = _f("quality", "What matters most.")
    budget_usd: float | None = _f(None, "Spending limit for training, in US dollars.")
    budget_h: float | None = _f(None, "Time limit for training, in hours.")
    lora_rank: int | None = _f(None, "LoRA rank r; default from the preset.")
    gradient_checkpointing: bool = _f(True, "Recompute activations in backward: less memory, ~+30% time.")
    params_b: float | None = _f(None, "Model size in billions of parameters, for models the planner does not know.")
    dataset: str = _f("", "Dataset for the generated config: a Hub id, a local file, or builtin:demo.")
    measured_tokens_per_s: float | None = _f(
        None, "Training tokens/s measured on this machine by a dry run (finetune.calibrate.dry_run); "
        "replaces the assumed MFU in the local time estimate.")
    measured_overhead_s: float | None = _f(
        None, "Fixed seconds every run pays on this machine (imports, loading model and data), from a dry run.")

    def __post_init__(self):
        def need(cond: bool, name: str, msg: str):
            if not cond:
                raise ValueError(f"{name}: {msg} (got {getattr(self, name)!r})")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        need(isinstance(self.model, str) and self.model.strip() != "", "model", "give a model id or path")
        self.model = self.model.strip()
        need(self.method in ("auto",) + METHODS, "method", f"must be one of auto, {', '.join(METHODS)}")
        need(isinstance(self.task, str), "task", "must be text")
        need(self.task_type in TASK_TYPES, "task_type", f"must be one of {', '.join(TASK_TYPES)}")
        need(is_int(self.examples) and self.examples >= 0, "examples", "must be a whole number >= 0")
        need(self.mean_tokens is None or (is_int(self.mean_tokens) and self.mean_tokens >= 1),
             "mean_tokens", "must be a whole number >= 1, or empty")
        for name in ("has_labels", "has_preferences", "prompting_sufficient", "gradient_checkpointing"):
            need(isinstance(getattr(self, name), bool), name, "must be true or false")
        need(isinstance(self.hardware, str) and self.hardware in tier_names(), "hardware",
             f"unknown tier; choose one of {', '.join(tier_names())}")
        need(is_int(self.seq_len) and 16 <= self.seq_len <= 1_048_576, "seq_len",
             "must be a whole number between 16 and 1048576")
        need(is_int(self.batch_size) and 1 <= self.batch_size <= 4096, "batch_size",
             "must be a whole number between 1 and 4096")
        need(self.epochs is None or (is_num(self.epochs) and 0 < self.epochs <= 100), "epochs",
             "must be a number in (0, 100], or empty")
        need(self.priority in PRIORITIES, "priority", f"must be one of {', '.join(PRIORITIES)}")
        need(self.budget_usd is None or (is_num(self.budget_usd) and self.budget_usd >= 0), "budget_usd",
             "must be a number >= 0, or empty")
        need(self.budget_h is None or (is_num(self.budget_h) and self.budget_h > 0), "budget_h",
             "must be a number > 0, or empty")
        need(self.lora_rank is None or (is_int(self.lora_rank) and 1 <= self.lora_rank <= 1024), "lora_rank",
             "must be a whole number between 1 and 1024, or empty")
        need(self.params_b is None or (is_num(self.params_b) and 0 < self.params_b <= 5000), "params_b",
             "must be a number of billions in (0, 5000], or empty")
        need(isinstance(self.dataset, str), "dataset", "must be text")
        tps = self.measured_tokens_per_s
        need(tps is None or (is_num(tps) and tps > 0),
             "measured_tokens_per_s", "must be a number > 0, or empty")
        need(self.measured_overhead_s is None or (is_num(self.measured_overhead_s) and self.measured_overhead_s >= 0),
             "measured_overhead_s", "must be a number >= 0, or empty")


# ---------------------------------------------------------------------------------------------
# Model specs


@functools.lru_cache(maxsize=1)
def _registry() -> dict[str, dict]:
    doc = json.loads(MODELS_FILE.read_text())
    by_id: dict[str, dict] = {}
    raw = {m["id"]: m for m in doc["models"]}
    for m in doc["models"]:
        entry = dict(m)
        if entry.get("prequantized_4bit"):
            base = raw[entry["base"]]
            entry = {**base, **entry, "aliases": []}
        entry = _derive(entry, source="registry")
        for key in [m["id"], *m.get("aliases", [])]:
            by_id[key.lower()] = entry
    by_id[TINY_CHAT_ID] = _tiny_chat_spec()
    return by_id


def registry_models() -> list[dict]:
    """All registry entries (one per model, aliases folded), for pickers."""
    seen, out = set(), []
    for spec in _registry().values():
        if spec["id"] not in seen:
            seen.add(spec["id"])
            out.append(dict(spec))
    return out


def _tiny_chat_spec() -> dict:
    c = TINY_CHAT_CONFIG
    spec = {
        "id": TINY_CHAT_ID, "name": "tiny-chat (built-in, random init)", "family": c["model_type"],
        "layers": c["num_hidden_layers"], "hidden": c["hidden_size"], "intermediate": c["intermediate_size"],
        "heads": c["num_attention_heads"], "kv_heads": c["num_key_value_heads"], "vocab": c["vocab_size"],
        "context": c["max_position_embeddings"], "tie_embeddings": c["tie_word_embeddings"],
        "licence": "apache-2.0", "gated": False,
        "notes": "Randomly initialised demo model: training it shows the pipeline works, not quality.",
    }
    return _derive(spec, source="builtin")


def _linears(spec: dict) -> list[tuple[int, int]]:
    """(d_in, d_out) of every linear layer in one block (what LoRA adapts)."""
    h, i = spec["hidden"], spec["intermediate"]
    hd = spec.get("head_dim") or h // spec["heads"]
    q, kv = spec["heads"] * hd, spec["kv_heads"] * hd
    fam = spec.get("family", "llama")
    gated = spec.get("gated_mlp", fam in LLAMA_LIKE)
    if fam == "phi3":  # fused projections: one qkv_proj and one gate_up_proj
        return [(h, q + 2 * kv), (q, h), (h, 2 * i), (i, h)]
    attn = [(h, q), (h, kv), (h, kv), (q, h)]
    mlp = [(h, i), (h, i), (i, h)] if gated else [(h, i), (i, h)]
    return attn + mlp


def _derive(spec: dict, source: str) -> dict:
    """Add parameter splits that the memory model needs, computed from the architecture."""
    s = dict(spec)
    s.setdefault("family", "llama")
    s.setdefault("head_dim", s["hidden"] // s["heads"])
    s.setdefault("tie_embeddings", False)
    s.setdefault("prequantized_4bit", False)
    s.setdefault("gated", False)
    s.setdefault("licence", "unknown")
    lin = _linears(s)
    L, h, V = s["layers"], s["hidden"], s["vocab"]
    s["params_linear"] = L * sum(a * b for a, b in lin)
    s["params_embedding"] = V * h * (1 if s["tie_embeddings"] else 2)
    s["params_norm"] = L * 2 * h + h
    s["lora_params_per_rank"] = L * sum(a + b for a, b in lin)
    s["dora_magnitude_params"] = L * sum(b for _, b in lin)
    s["max_linear_params"] = max(a * b for a, b in lin)
    s["params_computed"] = s["params_linear"] + s["params_embedding"] + s["params_norm"]
    s.setdefault("params", s["params_computed"])
    s["source"] = source
    s["target_modules"] = TARGET_MODULES.get(s["family"], TARGET_MODULES["llama"] if s["family"] in LLAMA_LIKE
                                             else "all-linear")
    return s


def _shape_from_params(params_b: float, model_id: str) -> dict:
    """A Llama-3-like shape with about params_b billion parameters, for models we cannot inspect.

    Llama-style blocks hold ~13 h^2 weights (GQA attention 2.5 h^2, SwiGLU MLP 3 x 3.5 h^2) and
    depth grows with width (h/L ~ 110); embeddings use a 128k vocabulary (the common case today).
    """
    n = params_b * 1e9
    V = 128256
    h = 1024
    for _ in range(50):  # fixed point of n = 13 h^3 / 110 + 2 V h
        h = max(256.0, ((n - 2 * V * h) * 110 / 13) ** (1 / 3)) if n > 2 * V * h else 256.0
    h = max(256, int(round(h / 128)) * 128)
    L = max(2, round(h / 110))
    heads = max(1, h // 128)
    spec = {"id": model_id, "name": f"{model_id} (~{params_b:g}B, shape estimated)", "family": "llama",
            "layers": L, "hidden": h, "intermediate": int(round(3.5 * h / 256)) * 256, "heads": heads,
            "kv_heads": max(1, heads // 4), "vocab": V, "context": 8192, "tie_embeddings": False,
            "notes": "Architecture unknown: shape estimated from the parameter count you gave."}
    s = _derive(spec, source="params_b")
    # Rescale the block weights so the total matches what the user said exactly.
    scale = max(0.05, (n - s["params_embedding"] - s["params_norm"]) / s["params_linear"])
    s["params_linear"] = int(s["params_linear"] * scale)
    s["params_computed"] = s["params_linear"] + s["params_embedding"] + s["params_norm"]
    s["params"] = int(n)
    return s


def _spec_from_config(cfg: dict, model_id: str, source: str) -> dict:
    """Read a transformers config.json (also GPT-2 style key names, and text_config of VLMs)."""
    c = cfg.get("text_config") or cfg

    def g(*keys, default=None):
        for k in keys:
            if c.get(k) is not None:
                return c[k]
        return default

    h = g("hidden_size", "n_embd", "d_model")
    L = g("num_hidden_layers", "n_layer", "num_layers")
    heads = g("num_attention_heads", "n_head")
    if not (h and L and heads):
        raise ValueError(f"unknown model {model_id}: its config.json has no hidden size, layers or heads; "
                         "give its size (params_b)")
    qc = cfg.get("quantization_config") or {}
    spec = {
        "id": model_id, "name": model_id, "family": cfg.get("model_type", "llama"),
        "layers": L, "hidden": h, "intermediate": g("intermediate_size", "n_inner", "ffn_dim", default=4 * h) or 4 * h,
        "heads": heads, "kv_heads": g("num_key_value_heads", default=heads),
        "vocab": g("vocab_size", default=32000),
        "context": g("max_position_embeddings", "n_positions", "max_seq_len", default=2048),
        "tie_embeddings": bool(cfg.get("tie_word_embeddings", c.get("tie_word_embeddings", False))),
        "prequantized_4bit": bool(qc.get("load_in_4bit") or qc.get("_load_in_4bit")),
    }
    if g("head_dim"):
        spec["head_dim"] = g("head_dim")
    if c.get("num_local_experts") or c.get("num_experts"):
        spec["notes"] = "Mixture-of-experts: only dense parameters are modelled; memory is underestimated."
    return _derive(spec, source=source)


def _cached_hub_config(model_id: str) -> dict | None:
    """config.json from the local Hugging Face cache, if this model was downloaded before (no network)."""
    if "/" not in model_id or model_id.startswith(("/", ".")):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        path = try_to_load_from_cache(model_id, "config.json")
    except Exception:  # malformed ids raise HFValidationError
        return None
    if isinstance(path, str) and os.path.isfile(path):
        return json.loads(Path(path).read_text())
    return _hub_config(model_id)


def _hub_config(model_id: str) -> dict | None:
    """config.json from the Hub (the user named this model), unless offline. A few KB, no weights."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return None
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(model_id, "config.json", etag_timeout=5)
        return json.loads(Path(path).read_text())
    except Exception:  # no network, gated without a token, no such repo: ask for the size instead
        return None


def model_spec(model_id: str, params_b: float | None = None) -> dict:
    """Architecture numbers for a model: registry, local folder, HF cache, or params_b.

    Raises ValueError("unknown model X: give its size ...") when none of those can answer offline.
    """
    key = model_id.strip()
    spec = _registry().get(key.lower()) or _registry().get(key)
    if spec is not None:
        return dict(spec)
    cfg_path = Path(key).expanduser() / "config.json"
    if cfg_path.is_file():
        return _spec_from_config(json.loads(cfg_path.read_text()), key, source="local config.json")
    if key.startswith("builtin:"):
        raise ValueError(f"unknown model {key}: the built-in model is {TINY_CHAT_ID}")
    cfg = _cached_hub_config(key)
    if cfg is not None:
        return _spec_from_config(cfg, key, source="Hugging Face Hub config.json")
    if params_b:
        return _shape_from_params(params_b, key)
    m = re.search(r"(?<![\d.])(\d+(?:\.\d+)?)\s*[bB](?![a-zA-Z])", key)
    hint = f" (its name suggests {m.group(1)}B: set params_b={m.group(1)})" if m else ""
    raise ValueError(f"unknown model {key}: give its size (params_b, in billions of parameters){hint}")


# ---------------------------------------------------------------------------------------------
# Memory


def _default_optimizer(method: str, device: str = "cuda") -> str:
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


def _memory_parts(spec: dict, method: str, lora_rank: int, gradient_checkpointing: bool,
                  load_in_4bit: bool | None, optimizer: str | None, device: str, shards: int):
    """Static bytes (independent of batch and length) and bytes per token in flight (b*s)."""
    if load_in_4bit is None:
        load_in_4bit = method == "qlora" or (spec.get("prequantized_4bit", False) and method != "full")
    optimizer = optimizer or _default_optimizer(method, device)
    opt_bytes = 2 if "8bit" in optimizer else 8
    n_lin, n_rest = spec["params_linear"], spec["params_embedding"] + spec["params_norm"]
    if method == "full":
        weights = 4 * (n_lin + n_rest)  # fp32 master weights; bf16 autocast casts on the fly
    elif load_in_4bit:
        weights = NF4_BYTES * n_lin + 2 * n_rest
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
    if shards > 1:  # FSDP / ZeRO-3 shards weights, grads and optimizer state across GPUs
        static = {k: v / shards for k, v in static.items()}
    h, L, V = spec["hidden"], spec["layers"], spec["vocab"]
    per_layer_full = 34 * h
    act = (2 * h * L + per_layer_full) if gradient_checkpointing else per_layer_full * L
    per_token = {"activations": act, "logits": 4 * V}
    overhead = (CUDA_OVERHEAD_GB if device == "cuda" else CPU_OVERHEAD_GB) * GB
    if method == "dora":
        # PEFT's DoRA materialises W + BA (fp32) per layer to take its column norms.
        overhead += 4 * spec["max_linear_params"]
    static["overhead"] = overhead
    return static, per_token


def estimate_memory(spec: dict, method: str, seq_len: int, batch_size: int, lora_rank: int = 16,
                    gradient_checkpointing: bool = True, *, load_in_4bit: bool | None = None,
                    optimizer: str | None = None, device: str = "cuda", shards: int = 1) -> dict:
    """Peak training memory per device in GB, with a breakdown (see module docstring).

    method "dpo" is LoRA-DPO: the reference model is the base with the adapter switched off, so it
    costs nothing extra, but chosen and rejected answers go through together (twice the tokens).
    """
    if method not in METHODS:
        raise ValueError(f"method: must be one of {', '.join(METHODS)} (got {method!r})")
    static, per_token = _memory_parts(spec, method, lora_rank, gradient_checkpointing, load_in_4bit,
                                      optimizer, device, shards)
    tokens = batch_size * seq_len * (2 if method == "dpo" else 1)
    parts = {**{k: v for k, v in static.items() if k != "overhead"},
             **{k: v * tokens for k, v in per_token.items()}, "overhead": static["overhead"]}
    breakdown = {k: round(v / GB, 3) for k, v in parts.items()}
    return {
        "total_gb": round(sum(parts.values()) / GB, 2),
        "breakdown": breakdown,
        "static_gb": round(sum(static.values()) / GB, 3),
        "per_token_mb": round(sum(per_token.values()) * (2 if method == "dpo" else 1) / 1e6, 4),
        "trainable_params": trainable_params(spec, method, lora_rank),
    }


def _max_fit(static_b: float, per_token_b: float, capacity_b: float, other: int, limit: int) -> int:
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


# ---------------------------------------------------------------------------------------------
# The plan


def _hours(h: float) -> str:
    """A duration for people: minutes under an hour, hours under two days, then days."""
    if h * 3600 < 90:
        return f"{h * 3600:.0f} s"
    if h < 1:
        return f"{h * 60:.1f} min" if h * 60 < 10 else f"{h * 60:.0f} min"
    return f"{h:.1f} h" if h < 48 else f"{h / 24:.1f} days"


def _shards(spec: dict, method: str, seq_len: int, batch_size: int, lora_rank: int, gc: bool, tier: dict,
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


def _method_row(spec: dict, tier: dict, req: PlanRequest, m: str, lora_rank: int,
                load_in_4bit: bool | None = None) -> dict:
    """Memory of one method at the requested batch and length, and the largest batch / length that fit."""
    device = tier["device"]
    capacity = usable_memory_gb(tier) * GB
    four_bit = load_in_4bit if load_in_4bit is not None else (
        m == "qlora" or (spec.get("prequantized_4bit", False) and m != "full"))
    optimizer = _default_optimizer("qlora" if four_bit else m, device)
    kw = dict(device=device, load_in_4bit=four_bit, optimizer=optimizer)
    shards = _shards(spec, m, req.seq_len, req.batch_size, lora_rank, req.gradient_checkpointing, tier,
                     optimizer, four_bit)
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
        "max_batch_size": _max_fit(static_b, per_tok, capacity, req.seq_len, 4096) if applicable else 0,
        "max_seq_len": _max_fit(static_b, per_tok, capacity, req.batch_size, spec["context"]) if applicable else 0,
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
    add("learning_rate", lr, why)

    n = effective_examples
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
    add("num_train_epochs", epochs, why)

    fit_b = max(1, feas_row["max_batch_size"])
    want_b = req.batch_size
    b = min(want_b, fit_b)
    why = f"you asked for {want_b}"
    if b < want_b:
        why += f"; only {fit_b} fit{'s' if fit_b == 1 else ''} in memory at max_length {req.seq_len}"
    add("per_device_train_batch_size", b, why)

    target = 16 if n >= SFT_MIN_EXAMPLES else 8
    n_dev = tier.get("gpu_count") or 1
    ga = max(1, round(target / (b * n_dev)))
    # keep at least ~20 optimizer steps per epoch on small data, or warmup and logging mean nothing
    while ga > 1 and n / (b * n_dev * ga) < 20:
        ga //= 2
    add("gradient_accumulation_steps", ga,
        f"effective batch {b * ga * n_dev} (target {target}): stable gradients without more memory")

    if method not in ("full", "prefix"):
        r = req.lora_rank or p["lora_r"]
        why = "set by you" if req.lora_rank else f"{preset_name} preset"
        if not req.lora_rank and n < 1000 and r > 16:
            r, why = 16, f"{n} examples cannot use a high rank; 16 overfits less"
        add("lora_r", r, why)
        add("lora_alpha", 2 * r, "alpha = 2r: the usual scale, keeps the update size stable across ranks")
        drop = 0.1 if n < 1000 else 0.05
        add("lora_dropout", drop, "more dropout on small data" if n < 1000 else "light regularisation")
        add("lora_target_modules", spec["target_modules"],
            "all linear layers: matches full fine-tuning quality far better than attention-only")
        if method == "dora":
            add("use_dora", True, "DoRA: magnitude + direction; a little better than LoRA at low rank, slower")
    add("warmup_steps", p["warmup_ratio"],
        f"{preset_name} preset: {p['warmup_ratio']:.0%} of steps warm up (a ratio < 1)")
    add("lr_scheduler_type", "cosine", "decays smoothly to zero; the common choice for fine-tuning")
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


def _model_path_for_config(model_id: str) -> str:
    if model_id == TINY_CHAT_ID:
        # Where finetune.builtin builds it (no side effects here: the folder may not exist yet).
        home = os.environ.get("FINETUNE_HOME") or "finetune_home"
        return str(Path(home) / "models" / f"tiny-chat-v{BUILDER_VERSION}")
    return model_id


def _trl_config(req: PlanRequest, spec: dict, method: str, cfg: dict, output_dir: str) -> tuple[dict, list[str]]:
    """Keys for `trl sft|dpo --config`: ScriptArguments + SFTConfig/DPOConfig + ModelConfig fields only."""
    c: dict = {"model_name_or_path": _model_path_for_config(req.model)}
    if method == "full":
        # fp32 master weights with bf16/fp16 autocast: what the memory estimate assumes, and the
        # only stable choice for fp16 (the grad scaler refuses fp16 parameters).
        c["dtype"] = "float32"
    elif cfg.get("bf16"):
        c["dtype"] = "bfloat16"
    elif cfg.get("fp16"):
        c["dtype"] = "float16"
    else:
        c["dtype"] = "float32"
    c["dataset_name"] = req.dataset if req.dataset and req.dataset != DEMO_DATASET_ID else "YOUR_DATASET"
    c["output_dir"] = output_dir
    for k in ("learning_rate", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
              "max_length", "gradient_checkpointing", "warmup_steps", "lr_scheduler_type", "optim"):
        c[k] = cfg[k]
    for k in ("bf16", "fp16", "use_cpu", "beta"):
        if k in cfg:
            c[k] = cfg[k]
    peft = method in ("lora", "qlora", "dora", "dpo")
    c["use_peft"] = peft
    if peft:
        c["lora_r"], c["lora_alpha"], c["lora_dropout"] = cfg["lora_r"], cfg["lora_alpha"], cfg["lora_dropout"]
        c["lora_target_modules"] = cfg["lora_target_modules"]
        if method == "dora":
            c["use_dora"] = True
    if cfg.get("load_in_4bit") or (spec.get("prequantized_4bit") and peft):
        c["load_in_4bit"] = True
        c["bnb_4bit_quant_type"] = "nf4"
        c["use_bnb_nested_quant"] = True
    c.update({"logging_steps": 10, "save_strategy": "epoch", "report_to": "none", "seed": 42})
    notes = []
    if c["dataset_name"] == "YOUR_DATASET":
        notes.append("set dataset_name to a Hub dataset id or a local folder/file before running")
    if req.model == TINY_CHAT_ID:
        notes.append("build builtin:tiny-chat first: python -m finetune.builtin")
    if method == "prefix":
        notes.append("the trl CLI has no prefix tuning: this config would fully fine-tune; use the python script")
    return c, notes


def _yaml(config: dict, header: list[str]) -> str:
    import yaml  # pyyaml is a dependency; imported here to keep module import cheap

    body = yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=100)
    return "".join(f"# {line}\n" for line in header) + body


def _python_script(req: PlanRequest, spec: dict, method: str, cfg: dict, output_dir: str) -> str:
    dpo = method == "dpo"
    peft = method in PEFT_METHODS
    four_bit = bool(cfg.get("load_in_4bit"))
    trainer, config_cls = ("DPOTrainer", "DPOConfig") if dpo else ("SFTTrainer", "SFTConfig")
    args = {k: cfg[k] for k in ("learning_rate", "num_train_epochs", "per_device_train_batch_size",
                                "gradient_accumulation_steps", "max_length", "gradient_checkpointing",
                                "warmup_steps", "lr_scheduler_type", "optim") if k in cfg}
    for k in ("bf16", "fp16", "use_cpu", "beta"):
        if k in cfg:
            args[k] = cfg[k]
    dtype = "torch.bfloat16" if cfg.get("bf16") else ("torch.float16" if cfg.get("fp16") else "torch.float32")
    load_dtype = "torch.float32" if method == "full" else dtype  # see _trl_config
    lines = [
        f'"""Fine-tune {req.model} with {method} (generated by Fine-Tune Studio\'s planner).',
        "",
        "Run: python train.py   (set DATASET first; needs torch, transformers, trl, peft"
        + (", bitsandbytes" if four_bit else "") + ")",
        '"""',
        "import torch",
        "from datasets import Dataset, load_dataset",
    ]
    if peft and method == "prefix":
        lines.append("from peft import PrefixTuningConfig")
    elif peft:
        lines.append("from peft import LoraConfig")
    if four_bit:
        lines.append("from transformers import BitsAndBytesConfig")
    lines.append(f"from trl import {config_cls}, {trainer}")
    lines.append("")
    if req.model == TINY_CHAT_ID:
        lines += ["from finetune.builtin import resolve_model", "", f'MODEL = resolve_model("{TINY_CHAT_ID}")']
    else:
        lines.append(f"MODEL = {req.model!r}")
    ds = req.dataset or "YOUR_DATASET"
    lines.append(f"DATASET = {ds!r}  # a Hub id, a .json/.jsonl/.csv/.parquet file, or builtin:demo")
    lines.append(f"OUTPUT_DIR = {output_dir!r}")
    lines += [
        "",
        "",
        "def load_rows():",
        f'    if DATASET == "{DEMO_DATASET_ID}":',
        "        from finetune.builtin import demo_records",
        "        return Dataset.from_list(demo_records())",
        '    ext = DATASET.rsplit(".", 1)[-1].lower()',
        '    if ext in ("json", "jsonl", "csv", "parquet"):',
        '        kind = "json" if ext in ("json", "jsonl") else ext',
        '        return load_dataset(kind, data_files=DATASET, split="train")',
        '    return load_dataset(DATASET, split="train")',
        "",
        "",
        "def to_prompt_completion(row):",
        '    # Alpaca rows (instruction/input/output) -> conversational prompt/completion, so the chat',
        '    # template is applied and the loss covers only the answer.',
        '    user = row["instruction"] + (("\\n\\n" + row["input"]) if row.get("input") else "")',
        '    return {"prompt": [{"role": "user", "content": user}],',
        '            "completion": [{"role": "assistant", "content": row["output"]}]}',
        "",
        "",
        "dataset = load_rows()",
        'if "instruction" in dataset.column_names and "output" in dataset.column_names:',
        "    dataset = dataset.map(to_prompt_completion, remove_columns=dataset.column_names)",
        "split = dataset.train_test_split(test_size=0.1, seed=42)",
        "",
    ]
    if method == "prefix":
        lines.append(f'peft_config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens={PREFIX_VIRTUAL_TOKENS})')
    elif peft:
        tm = cfg["lora_target_modules"]
        lines.append(
            f"peft_config = LoraConfig(r={cfg['lora_r']}, lora_alpha={cfg['lora_alpha']}, "
            f"lora_dropout={cfg['lora_dropout']}, target_modules={tm!r}, task_type=\"CAUSAL_LM\""
            + (", use_dora=True" if method == "dora" else "") + ")")
    else:
        lines.append("peft_config = None  # full fine-tuning")
    lines.append(f"model_init_kwargs = {{\"dtype\": {load_dtype}}}")
    if four_bit:
        lines.append(
            "quantization_config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=\"nf4\", "
            f"bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype={dtype})")
    arg_lines = ",\n".join(f"    {k}={v!r}" for k, v in args.items())
    lines += [
        f"args = {config_cls}(",
        "    output_dir=OUTPUT_DIR,",
        arg_lines + ",",
        '    eval_strategy="epoch",',
        '    save_strategy="epoch",',
        "    logging_steps=10,",
        '    report_to="none",',
        "    model_init_kwargs=model_init_kwargs,",
        ")",
        f"trainer = {trainer}(",
        "    model=MODEL,",
        "    args=args,",
        '    train_dataset=split["train"],',
        '    eval_dataset=split["test"],',
        "    peft_config=peft_config,",
    ]
    if four_bit:
        lines.append("    quantization_config=quantization_config,")
    lines += [")", "trainer.train()", "trainer.save_model(OUTPUT_DIR)", 'print("saved to", OUTPUT_DIR)', ""]
    return "\n".join(lines)


def _bar(pct: int, width: int = 10) -> str:
    full = round(pct / 100 * width)
    return "█" * full + "░" * (width - full)


def _report_md(req: PlanRequest, spec: dict, out: dict) -> str:
    m = out["method"]
    tm = out["training_method"]
    label = {"full": "Full", "lora": "LoRA", "qlora": "QLoRA", "dora": "DoRA", "prefix": "Prefix tuning",
             "dpo": "DPO", "prompting": "Prompting"}
    method_label = label[m] + (f" (fallback: {label[tm]})" if m == "prompting" else "")
    if tm == "dpo" and out["hyperparameters_dict"].get("load_in_4bit"):
        method_label += " on a 4-bit base"
    status = "Config Ready" if out["fits"] else "Does not fit: see hardware"
    box_w = 37

    def row(text=""):
        return "│  " + text.ljust(box_w - 2)[: box_w - 2] + "│"

    dur = _hours(out["time_h"])
    lines = [
        "# FINE-TUNING PLAN",
        "",
        "```text",
        "═" * 39,
        f"Model: {spec['name']} ({spec['params'] / 1e9:.2f}B params)",
        f"Task: {req.task or req.task_type}",
        f"Method: {method_label}",
        "═" * 39,
        "",
        "┌" + "─" * box_w + "┐",
        row("     FINE-TUNING CONFIG"),
        row(),
        row(f"Base Model: {req.model.split('/')[-1]}"),
        row(f"Method: {method_label}"),
        row(f"Task: {req.task_type}"),
        row(),
        row(f"VRAM Required: {out['vram_gb']:.1f} GB"),
        row(f"Est. Duration: {dur}"),
        row(f"Hardware: {out['hardware']}"),
        row(),
        row(f"Readiness: {_bar(out['readiness'])} {out['readiness']}%"),
        row(f"Status: [●] {status}"),
        "└" + "─" * box_w + "┘",
        "```",
        "",
        "## Decision path",
        "",
        *[f"{i}. {r}" for i, r in enumerate(out["reasons"], 1)],
        "",
        "## Task analysis",
        "",
        "| Aspect | Value |",
        "|--------|-------|",
        f"| Type | {req.task_type} |",
        f"| Base Model | {req.model} ({spec.get('licence', 'unknown')} licence{', gated' if spec.get('gated') else ''}) |",
        f"| Method | {method_label} |",
        f"| Data Size | {req.examples} examples (recommended minimum {out['dataset_requirements']['minimum_examples']}) |",
        f"| Tokens | {out['time']['tokens']:,} training tokens |",
        "",
        "## Dataset requirements",
        "",
        f"- **Format:** {out['dataset_requirements']['format']} — {out['dataset_requirements']['columns']}",
        f"- **Size:** {out['dataset_requirements']['minimum_examples']} samples minimum"
        + ("" if out["dataset_requirements"]["enough"] else f" (you have {req.examples})"),
        "- **Quality checks:**",
        *[f"  - {c}" for c in out["dataset_requirements"]["quality_checks"]],
        "",
        "## Memory and hardware",
        "",
        f"Memory on **{out['hardware']}** ({out['usable_memory_gb']:.0f} GB usable) at max_length {req.seq_len}, "
        f"batch {req.batch_size}:",
        "",
        "| Method | Memory (GB) | Fits | Max batch | Max seq len |",
        "|--------|------------:|:----:|----------:|------------:|",
        *[f"| {k}{' ←' if k == tm else ''} | {v['vram_gb']:.1f} | {'yes' if v['fits'] else 'no'} | "
          f"{v['max_batch_size']} | {v['max_seq_len']} |" for k, v in out["feasibility"].items()],
        "",
        "Breakdown for the chosen method (GB): "
        + ", ".join(f"{k} {v:.2f}" for k, v in out["vram_breakdown"].items()),
        "",
        "## Time and cost",
        "",
        f"{out['time']['tokens']:,} tokens × {out['time']['flops_per_token'] / 1e9:.2f} GFLOP/token at "
        f"{out['time']['mfu']:.0%} MFU of {out['time']['peak_tflops']} TFLOP/s → "
        f"**{dur}**, **${out['cost_usd']:.2f}** on {out['hardware']}.",
        "",
        "| Tier | Fits | Hours | Training $ | Serving $/1M tokens |",
        "|------|:----:|------:|-----------:|--------------------:|",
        *[f"| {t['name']}{'' if t['available'] else ' (retired)'} | {'yes' if t['fits'] else 'no'} | "
          f"{t['hours']:.2f} | {t['cost_usd']:.2f} | "
          f"{'—' if t['inference_usd_per_1m_tokens'] is None else format(t['inference_usd_per_1m_tokens'], '.3f')} |"
          for t in out["tiers"]],
        "",
        f"Prices from {out['prices']['source'].split(' ')[0]} (taken {out['prices']['prices_taken']}).",
        "",
        "## Training configuration",
        "",
        "```python",
        out["python_script"].rstrip(),
        "```",
        "",
        "## Hyperparameters",
        "",
        "| Parameter | Value | Rationale |",
        "|-----------|-------|-----------|",
        *[f"| {h['name']} | {h['value']} | {h['rationale']} |" for h in out["hyperparameters"]],
        "",
        "## Risks",
        "",
        "| Risk | Level | Symptom | Mitigation |",
        "|------|-------|---------|------------|",
        *[f"| {r['risk']} | {r['level']} | {r['symptom']} | {r['mitigation']} |" for r in out["risks"]],
        "",
        "## Evaluation plan",
        "",
        "- **Metrics:**",
        *[f"  - {x}" for x in out["evaluation_plan"]["metrics"]],
        f"- **Test set:** {out['evaluation_plan']['test_set']}",
        f"- **Baseline:** {out['evaluation_plan']['baseline']}",
        "",
        "## Commands",
        "",
        "```bash",
        *([] if req.model != TINY_CHAT_ID else ["python -m finetune.builtin   # build builtin:tiny-chat once"]),
        out["trl_command"] + ("   # the script above (the trl CLI has no prefix tuning)" if tm == "prefix"
                              else "   # plan.yaml = the YAML from this plan"),
        "```",
        "",
        "Fine-Tuning Status: ● Plan Complete",
        "",
    ]
    return "\n".join(lines)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text.split("/")[-1].replace("builtin:", "")).strip("-").lower()


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
    shards = _shards(spec, tm, req.seq_len, cfg["per_device_train_batch_size"], cfg.get("lora_r", 16),
                     cfg["gradient_checkpointing"], tier, cfg["optim"], load_4bit)
    mem = estimate_memory(spec, tm, req.seq_len, cfg["per_device_train_batch_size"], cfg.get("lora_r", 16),
                          cfg["gradient_checkpointing"], load_in_4bit=load_4bit, optimizer=cfg["optim"],
                          device=tier["device"], shards=shards)
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
        sh = _shards(spec, tm, req.seq_len, cfg["per_device_train_batch_size"], cfg.get("lora_r", 16),
                     gc, t, _default_optimizer(opt_method, t["device"]), load_4bit)
        e = estimate_memory(spec, tm, req.seq_len, cfg["per_device_train_batch_size"], cfg.get("lora_r", 16),
                            gc, load_in_4bit=load_4bit,
                            optimizer=_default_optimizer(opt_method, t["device"]), device=t["device"], shards=sh)
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
    trl_cfg, notes = _trl_config(req, spec, tm, cfg, output_dir)
    n_gpu = tier.get("gpu_count") or 0
    launch = ""
    if n_gpu > 1:
        launch = f" --accelerate_config {'fsdp2' if shards > 1 else 'multi_gpu'} --num_processes {n_gpu}"
        if shards > 1 and trl_cfg.get("load_in_4bit"):
            trl_cfg["bnb_4bit_quant_storage"] = "bfloat16"  # FSDP can only shard 4-bit weights stored as bf16
    command = ("python train.py" if tm == "prefix" else
               f"trl {'dpo' if tm == 'dpo' else 'sft'} --config plan.yaml{launch}")
    header = [f"Fine-Tune Studio plan: {req.model}, {tm}. Run: {command}"]
    header += notes
    yaml_text = _yaml(trl_cfg, header)
    script = _python_script(req, spec, tm, cfg, output_dir)

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
    out["readiness"] = _readiness(req, spec, fits, data, within_budget)
    out["report_md"] = _report_md(req, spec, out)
    return out


# ---------------------------------------------------------------------------------------------
# Views of a plan for the UI and files (plain rows and text; the tab only displays them)

MEMORY_PARTS = ("weights", "trainable_and_grads", "optimizer", "activations", "logits", "overhead")


def memory_rows(p: dict) -> list[dict]:
    """One row per (method, memory part) with GB, for a stacked bar chart; every part is present."""
    rows = []
    for m, row in (p.get("feasibility") or {}).items():
        bd = row.get("breakdown") or {}
        label = f"{m} ←" if m == p.get("training_method") else m
        rows += [{"method": label, "part": part, "GB": float(bd.get(part, 0.0))} for part in MEMORY_PARTS]
    return rows


def tier_rows(p: dict) -> list[dict]:
    """The tiers table: time, training cost, fit and serving cost per hardware tier."""
    return [{"tier": t["name"], "fits": "yes" if t["fits"] else "no", "time": _hours(t["hours"]),
             "training $": round(t["cost_usd"], 2), "$/h": t["price_usd_per_h"], "memory GB": t["vram_gb"],
             "serving $/1M tokens": t["inference_usd_per_1m_tokens"],
             "hours": t["hours"], "cost_usd": t["cost_usd"], "available": t["available"],
             "calibrated": t.get("calibrated", False)} for t in p.get("tiers") or []]


def tier_points(p: dict) -> list[dict]:
    """The time-vs-cost chart: every tier still offered, with the kind of hardware (CPU, T4, A100, ...);
    hours and cost are None where the plan does not fit, so the chart keeps the same series each time."""
    return [{"tier": t["name"], "hardware": t.get("hardware", t["name"]),
             "hours": t["hours"] if t["fits"] else None, "cost_usd": t["cost_usd"] if t["fits"] else None}
            for t in p.get("tiers") or [] if t["available"]]


def summary_md(p: dict) -> str:
    """The headline and the reasons, numbered."""
    fits = "fits" if p.get("fits") else "does NOT fit"
    cal = " (calibrated by a dry run)" if p.get("calibrated") else ""
    return (f"### Recommended: **{p['method']}** · {p['vram_gb']:.2f} GB ({fits} on {p['hardware']}) · "
            f"{_hours(p['time_h'])}{cal} · ${p['cost_usd']:.2f}\n\n"
            + "\n".join(f"{i}. {r}" for i, r in enumerate(p.get("reasons", []), 1)))


def fmt_seconds(seconds: float) -> str:
    return _hours(float(seconds or 0) / 3600)


def train_settings(p: dict) -> dict | None:
    """The Train tab's fields from a plan, or None when the advice is to prompt rather than train."""
    if p.get("method") == "prompting":
        return None
    cfg = p.get("hyperparameters_dict") or {}
    return {"method": p["training_method"], "learning_rate": cfg.get("learning_rate"),
            "epochs": cfg.get("num_train_epochs"), "batch_size": cfg.get("per_device_train_batch_size"),
            "max_seq_len": cfg.get("max_length"), "lora_rank": cfg.get("lora_r", 16)}


def details_md(p: dict) -> str:
    """Risks, dataset requirements, evaluation plan and readiness as Markdown."""
    def table(rows, cols):
        out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        out += ["| " + " | ".join(str(r.get(c, "")).replace("|", "\\|") for c in cols) + " |" for r in rows]
        return "\n".join(out)

    d, e = p["dataset_requirements"], p["evaluation_plan"]
    ready = p["readiness"]
    lines = [f"#### Readiness: {_bar(ready)} {ready}%", "",
             "#### Risks", table(p["risks"], ["risk", "level", "symptom", "mitigation"]), "",
             "#### Dataset requirements",
             f"- **Format:** {d['format']} ({d['columns']})",
             f"- **Size:** {d['have']} examples, recommended minimum {d['minimum_examples']} "
             f"({'enough' if d['enough'] else 'fewer than recommended'}); validation split {d['validation_split']:.0%}"]
    if d.get("synthetic_needed"):
        lines.append("- **Synthetic data needed:** you have no labelled answers yet")
    lines += [f"- {c}" for c in d["quality_checks"]]
    lines += ["", "#### Evaluation plan", f"- **Metrics:** {', '.join(e['metrics'])}",
              f"- **Test set:** {e['test_set']}", f"- **Baseline:** {e['baseline']}", f"- **Regression check:** {e['regression']}"]
    return "\n".join(lines)


def write_plan_files(p: dict, folder: str | os.PathLike | None = None) -> dict:
    """Write plan.md, plan.yaml and train.py under FINETUNE_HOME/plans/<model>-<method>/; return paths."""
    from .paths import atomic_write_text, home

    d = Path(folder) if folder else home() / "plans" / f"{_slug(p['model'])}-{p['training_method']}"
    d.mkdir(parents=True, exist_ok=True)
    out = {"report_md": d / "plan.md", "trl_config_yaml": d / "plan.yaml", "python_script": d / "train.py"}
    for key, path in out.items():
        atomic_write_text(path, p[key])
    return {k: str(v) for k, v in out.items()}


def main(argv: list[str] | None = None) -> None:
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m finetune.plan", description=__doc__.split("\n")[0])
    p.add_argument("model", nargs="?", default=TINY_CHAT_ID)
    p.add_argument("hardware", nargs="?", default="local")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    try:
        out = plan(PlanRequest(model=a.model, hardware=a.hardware))
    except ValueError as e:
        sys.exit(str(e))
    print(json.dumps(out, indent=1) if a.json else out["report_md"])


if __name__ == "__main__":
    main()
