"""GGUF export of merged Llama-family models (f16 and q8_0) with the `gguf` package, and its check.

    export_gguf(merged_dir, "out.gguf", "q8_0")   -> Path   (llama.cpp's tensor names and layout)
    check_gguf(merged_dir, "out.gguf")           -> {"max_abs_diff", "argmax_agreement", ...}

llama.cpp's converter is a script in the llama.cpp repo, not part of the `gguf` package, so the few
steps it takes for the llama architecture are done here: tensor names from gguf's own name map, the
Q/K rows permuted into llama.cpp's rotary layout (transformers' GGUF loader undoes exactly this),
1-D tensors (norms) kept in f32, everything else f16 or q8_0, and the byte-level BPE tokenizer
written as a "gpt2" tokenizer with its merges and chat template. The check loads the file back with
transformers' `gguf_file=` and compares logits with the merged model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SUPPORTED = ("llama", "mistral")
QTYPES = ("f16", "q8_0")


class GGUFError(ValueError):
    pass


def _permute(w, n_head: int, n_head_kv: int | None):
    # llama.cpp convert_hf_to_gguf.py LlamaModel.permute: HF's rotate-half layout -> interleaved pairs
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tokenizer_fields(writer, model_dir: Path) -> None:
    import gguf

    tj = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise GGUFError(f"GGUF export writes byte-level BPE tokenizers only; this one is {model.get('type')}")
    vocab: dict[str, int] = dict(model["vocab"])
    special = {}
    for t in tj.get("added_tokens") or []:
        vocab[t["content"]] = t["id"]
        special[t["id"]] = t.get("special", False)
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    for tok, i in vocab.items():
        tokens[i] = tok
        types[i] = gguf.TokenType.CONTROL if special.get(i) else (gguf.TokenType.USER_DEFINED if i in special
                                                                  else gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    cfg = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8")) \
        if (model_dir / "tokenizer_config.json").exists() else {}
    ids = {}
    for key in ("bos_token", "eos_token", "pad_token"):
        tok = cfg.get(key)
        tok = tok.get("content") if isinstance(tok, dict) else tok
        if tok in vocab:
            ids[key] = vocab[tok]
    if "bos_token" not in ids and "eos_token" in ids:
        # transformers' GGUF tokenizer reader needs a BOS id whenever an EOS id is present
        ids["bos_token"] = ids["eos_token"]
        writer.add_add_bos_token(False)
    for key, add in (("bos_token", writer.add_bos_token_id), ("eos_token", writer.add_eos_token_id),
                     ("pad_token", writer.add_pad_token_id)):
        if key in ids:
            add(ids[key])
    template = cfg.get("chat_template")
    if not template and (model_dir / "chat_template.jinja").exists():
        template = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    if template:
        writer.add_chat_template(template)


def export_gguf(model_dir: str | os.PathLike, out_path: str | os.PathLike, qtype: str = "q8_0") -> Path:
    """Write a merged Llama-family model folder (safetensors) as one GGUF file."""
    import gguf
    import numpy as np
    from safetensors import safe_open

    if qtype not in QTYPES:
        raise GGUFError(f"gguf: {qtype!r} is not supported; choose one of {', '.join(QTYPES)}")
    model_dir, out_path = Path(model_dir), Path(out_path)
    cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    arch = cfg.get("model_type")
    if arch not in SUPPORTED:
        raise GGUFError(f"GGUF export covers the Llama family ({', '.join(SUPPORTED)}); this model is {arch!r}")
    n_layers, n_head = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_head
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    rope = cfg.get("rope_parameters") or {}
    rope_theta = float(rope.get("rope_theta") or cfg.get("rope_theta") or 10000.0)
    if (rope.get("rope_type") or "default") != "default":
        raise GGUFError(f"GGUF export: rope scaling {rope.get('rope_type')!r} is not handled here")

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    try:
        writer.add_name(model_dir.name if arch == "llama" else f"{arch} {model_dir.name}")
        writer.add_context_length(cfg.get("max_position_embeddings", 2048))
        writer.add_embedding_length(cfg["hidden_size"])
        writer.add_block_count(n_layers)
        writer.add_feed_forward_length(cfg["intermediate_size"])
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_kv)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(rope_theta)
        writer.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
        writer.add_vocab_size(cfg["vocab_size"])
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if qtype == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)
        _tokenizer_fields(writer, model_dir)
        shards = sorted(model_dir.glob("*.safetensors"))
        if not shards:
            raise GGUFError(f"{model_dir}: no safetensors weights to export")
        seen = set()
        for shard in shards:
            with safe_open(str(shard), framework="pt") as f:
                for hf_name in f.keys():
                    base, _, suffix = hf_name.rpartition(".")
                    gname = names.get_name(base)
                    if gname is None:
                        if "rotary_emb" in hf_name:
                            continue
                        raise GGUFError(f"GGUF export: no llama.cpp name for tensor {hf_name}")
                    data = f.get_tensor(hf_name).float().numpy()
                    if gname.endswith("attn_q"):
                        data = _permute(data, n_head, n_head)
                    elif gname.endswith("attn_k"):
                        data = _permute(data, n_head, n_kv)
                    full = f"{gname}.{suffix}"
                    seen.add(full)
                    if data.ndim == 1:
                        writer.add_tensor(full, data.astype(np.float32))
                    elif qtype == "q8_0" and data.shape[-1] % 32 == 0:
                        q = gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
                        writer.add_tensor(full, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
                    else:
                        writer.add_tensor(full, data.astype(np.float16))
        if "token_embd.weight" not in seen:
            raise GGUFError("GGUF export: the model has no token embeddings (model.embed_tokens.weight)")
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out_path)
    except BaseException:
        try:
            writer.close()
        except Exception:
            pass
        tmp.unlink(missing_ok=True)
        raise
    return out_path


def check_gguf(merged_dir: str | os.PathLike, gguf_path: str | os.PathLike, input_ids=None) -> dict:
    """Load the GGUF back with transformers (gguf_file=) and compare its logits with the merged model's."""
    import torch
    from transformers import AutoModelForCausalLM

    gguf_path = Path(gguf_path)
    ref = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32).eval()
    got = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                               dtype=torch.float32).eval()
    if input_ids is None:
        g = torch.Generator().manual_seed(0)
        input_ids = torch.randint(0, ref.config.vocab_size, (2, 24), generator=g)
    with torch.no_grad():
        a, b = ref(input_ids=input_ids).logits, got(input_ids=input_ids).logits
    scale = float(a.abs().max())
    return {"max_abs_diff": float((a - b).abs().max()), "logit_scale": scale,
            "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
            "size_bytes": gguf_path.stat().st_size}
