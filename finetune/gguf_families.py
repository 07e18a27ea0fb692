"""What differs between model families in a GGUF file: architecture name, metadata, tensor fix-ups.

    family_of(cfg)                    -> Family  (GGUFError naming the model type when not covered)
    FAMILIES                          -> {"llama": ..., "qwen2": ..., ...}  (HF model_type -> Family)

Written from llama.cpp's convert_hf_to_gguf.py (LlamaModel, Qwen2Model, Qwen3Model, Gemma2Model,
Gemma3Model, Phi3MiniModel), in our own code:
- Llama/Mistral/SmolLM: Q and K rows permuted from HF's rotate-half into llama.cpp's interleaved
  rotary layout; no other family needs this (their llama.cpp graphs use NEOX rotary).
- Gemma 2/3: every RMSNorm weight is stored as (1 + w) (Gemma's norm multiplies by 1 + w); the
  embedding is stored unscaled (llama.cpp scales by sqrt(hidden) at run time); head size goes in
  key_length/value_length; Gemma 2's soft-capping and sliding window go in the metadata.
- Phi-3: qkv_proj and gate_up_proj stay fused (attn_qkv, ffn_up), as llama.cpp expects.
- Qwen3 (and Gemma 3): q_norm/k_norm become attn_q_norm/attn_k_norm.
- Tied embeddings: no `output` tensor; llama.cpp then uses token_embd for the output.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class GGUFError(ValueError):
    """An export that cannot be done, with a message that says what and why."""


@dataclass(frozen=True)
class Family:
    arch: str                      # gguf.MODEL_ARCH member name
    label: str
    permute_qk: bool = False
    norm_shift: float = 0.0
    head_dims: bool = False        # write key_length/value_length
    extras: tuple = field(default=())  # names of extra metadata writers below


FAMILIES: dict[str, Family] = {
    "llama": Family("LLAMA", "Llama", permute_qk=True),
    "mistral": Family("LLAMA", "Mistral", permute_qk=True),
    "qwen2": Family("QWEN2", "Qwen2"),
    "qwen3": Family("QWEN3", "Qwen3", head_dims=True),
    "gemma2": Family("GEMMA2", "Gemma 2", norm_shift=1.0, head_dims=True, extras=("softcap", "sliding")),
    "gemma3_text": Family("GEMMA3", "Gemma 3", norm_shift=1.0, head_dims=True, extras=("sliding",)),
    "phi3": Family("PHI3", "Phi-3", extras=("phi3",)),
}


def family_of(cfg: dict) -> Family:
    mt = cfg.get("model_type")
    if mt == "gemma3" and isinstance(cfg.get("text_config"), dict):
        raise GGUFError("GGUF export: Gemma 3 with a vision tower is not covered; export a text-only Gemma 3 "
                        "(model_type gemma3_text)")
    fam = FAMILIES.get(mt)
    if fam is None:
        raise GGUFError(f"GGUF export covers {', '.join(sorted({f.label for f in FAMILIES.values()}))}; "
                        f"this model is {mt!r}")
    return fam


def rope_theta(cfg: dict, default: float) -> float:
    rope = cfg.get("rope_parameters") or {}
    if "full_attention" in rope and isinstance(rope["full_attention"], dict):
        rope = rope["full_attention"]
    kind = rope.get("rope_type") or (cfg.get("rope_scaling") or {}).get("rope_type") or "default"
    if kind != "default":
        raise GGUFError(f"GGUF export: rope scaling {kind!r} is not handled here")
    return float(rope.get("rope_theta") or cfg.get("rope_theta") or default)


def head_dim(cfg: dict) -> int:
    return int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])


def write_metadata(writer, fam: Family, cfg: dict) -> None:
    """The architecture's hyper-parameters, as llama.cpp's converter writes them."""
    n_head = cfg["num_attention_heads"]
    hd = head_dim(cfg)
    writer.add_context_length(int(cfg.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(cfg.get("num_key_value_heads") or n_head)
    writer.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    writer.add_rope_freq_base(rope_theta(cfg, 1_000_000.0 if fam.arch == "GEMMA3" else 10_000.0))
    writer.add_vocab_size(cfg["vocab_size"])
    if fam.permute_qk or fam.arch == "PHI3":
        writer.add_rope_dimension_count(int(hd * float(cfg.get("partial_rotary_factor") or 1.0)))
    if fam.head_dims or hd != cfg["hidden_size"] // n_head:
        writer.add_key_length(hd)
        writer.add_value_length(hd)
    if "softcap" in fam.extras:
        if cfg.get("attn_logit_softcapping"):
            writer.add_attn_logit_softcapping(float(cfg["attn_logit_softcapping"]))
        if cfg.get("final_logit_softcapping"):
            writer.add_final_logit_softcapping(float(cfg["final_logit_softcapping"]))
    if "sliding" in fam.extras and cfg.get("sliding_window"):
        writer.add_sliding_window(int(cfg["sliding_window"]))
    if "phi3" in fam.extras:
        writer.add_rope_scaling_orig_ctx_len(int(cfg.get("original_max_position_embeddings")
                                                 or cfg.get("max_position_embeddings", 4096)))
        writer.add_sliding_window(int(cfg.get("sliding_window") or cfg.get("max_position_embeddings", 4096)))


def permute_rotary(w, n_head: int):
    """HF rotate-half rows -> llama.cpp interleaved pairs (what transformers' GGUF loader undoes)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def fix_tensor(fam: Family, cfg: dict, gguf_name: str, data):
    """Apply the family's changes to one tensor (numpy, float32) named the llama.cpp way."""
    n_head = cfg["num_attention_heads"]
    if fam.permute_qk and gguf_name.endswith("attn_q.weight"):
        return permute_rotary(data, n_head)
    if fam.permute_qk and gguf_name.endswith("attn_k.weight"):
        return permute_rotary(data, cfg.get("num_key_value_heads") or n_head)
    if fam.norm_shift and gguf_name.endswith("norm.weight"):
        return data + fam.norm_shift
    return data
