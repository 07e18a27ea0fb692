"""GGUF files of merged models for the common families, and their check.

    write_gguf(merged_dir, "out.gguf", "q4_k_m")  -> {"path", "family", "types": {...}, "fallbacks": [...]}
    export_gguf(merged_dir, "out.gguf", "q8_0")   -> Path (the same, for callers that want the path)
    check_gguf(merged_dir, "out.gguf")           -> {"method", "max_abs_diff", "argmax_agreement", ...}

Families (finetune/gguf_families.py): Llama (incl. SmolLM), Mistral, Qwen2, Qwen3, Gemma 2/3, Phi-3.
Types: f16, bf16, q8_0 and q4_k_m. 1-D tensors (norms, biases) stay f32. q4_k_m follows llama.cpp's
choice: Q4_K for most matrices, Q6_K for `output` (or `token_embd` when the output is tied to it)
and for attn_v / ffn_down (and Phi-3's fused attn_qkv) in the layers llama.cpp's use_more_bits picks;
a matrix whose row size is not a multiple of 256 falls back to q8_0 (row a multiple of 32) or f16,
and the result lists each fallback. Q4_K/Q6_K come from finetune/kquants.py; the rest from gguf.
The byte-level BPE tokenizer is written as a "gpt2" tokenizer with its merges and chat template.
The check loads the file back with transformers (`gguf_file=`) and compares logits with the merged
model; where transformers cannot read it, it compares gguf's dequantized tensors with the weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .gguf_families import GGUFError, family_of, fix_tensor, write_metadata

QTYPES = ("f16", "bf16", "q8_0", "q4_k_m")
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3")
__all__ = ["GGUFError", "QTYPES", "SUPPORTED", "write_gguf", "export_gguf", "check_gguf", "prompt_ids", "encode_tensor"]


def _tokenizer_fields(writer, model_dir: Path) -> None:
    import gguf

    tj = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or not _byte_level(tj.get("pre_tokenizer")):
        kind = "BPE without a ByteLevel pre-tokenizer (SentencePiece style)" if model.get("type") == "BPE" \
            else model.get("type")
        raise GGUFError(f"GGUF export writes byte-level BPE tokenizers (GPT-2 style: Llama 3, SmolLM, Qwen, "
                        f"Phi-3.5+) only; this one is {kind}")
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
    writer.add_tokenizer_pre(_pre_tokenizer(vocab))
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


def _byte_level(pre) -> bool:
    if not isinstance(pre, dict):
        return False
    return pre.get("type") == "ByteLevel" or any(_byte_level(p) for p in pre.get("pretokenizers") or [])


def _pre_tokenizer(vocab: dict) -> str:
    """llama.cpp's pre-tokenizer name (it picks a regex by this name; 'default' is GPT-2's)."""
    if "<|begin_of_text|>" in vocab:
        return "llama-bpe"
    if "<|im_start|>" in vocab and "<|endoftext|>" in vocab and len(vocab) > 150_000:
        return "qwen2"
    if "<|im_start|>" in vocab and len(vocab) <= 49_200:
        return "smollm"
    return "default"


def _use_more_bits(i: int, n: int) -> bool:
    # llama.cpp llama_tensor_get_type: the first and last eighth of the layers, and every third between
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def q4_k_m_type(name: str, n_layers: int, tied: bool) -> str:
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        return "Q6_K"
    parts = name.split(".")
    if parts[0] == "blk" and parts[2] in ("attn_v", "ffn_down", "attn_qkv"):
        return "Q6_K" if _use_more_bits(int(parts[1]), n_layers) else "Q4_K"
    return "Q4_K"


def encode_tensor(name: str, data, qtype: str, n_layers: int, tied: bool, fallbacks: list):
    """One tensor -> (array, gguf type name) for the chosen file type."""
    import gguf
    import numpy as np

    if data.ndim == 1:
        return data.astype(np.float32), "F32"
    if qtype == "f16":
        return data.astype(np.float16), "F16"
    if qtype == "bf16":
        return gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.BF16), "BF16"
    want = "Q8_0" if qtype == "q8_0" else q4_k_m_type(name, n_layers, tied)
    row = data.shape[-1]
    if want in ("Q4_K", "Q6_K") and row % 256:
        got = "Q8_0" if row % 32 == 0 else "F16"
        fallbacks.append(f"{name}: row of {row} is not a multiple of 256, written {got.lower()} instead of "
                         f"{want.lower()}")
        want = got
    if want == "Q8_0" and row % 32:
        fallbacks.append(f"{name}: row of {row} is not a multiple of 32, written f16 instead of q8_0")
        want = "F16"
    if want == "F16":
        return data.astype(np.float16), "F16"
    if want == "Q8_0":
        return gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.Q8_0), "Q8_0"
    from .kquants import quantize_q4_k, quantize_q6_k

    return (quantize_q4_k if want == "Q4_K" else quantize_q6_k)(data), want


_FILE_TYPES = {"f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0", "q4_k_m": "MOSTLY_Q4_K_M"}


def _tensors(model_dir: Path):
    """(HF name, float32 numpy array) for every weight in the folder's safetensors shards."""
    from safetensors import safe_open

    shards = sorted(model_dir.glob("*.safetensors"))
    if not shards:
        raise GGUFError(f"{model_dir}: no safetensors weights to export")
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            for hf_name in f.keys():
                yield hf_name, f.get_tensor(hf_name).float().numpy()


def write_gguf(model_dir: str | os.PathLike, out_path: str | os.PathLike, qtype: str = "q8_0") -> dict:
    """Write a merged model folder (safetensors + tokenizer) as one GGUF file; see the module doc."""
    import gguf

    if qtype not in QTYPES:
        raise GGUFError(f"gguf: {qtype!r} is not supported; choose one of {', '.join(QTYPES)}")
    model_dir, out_path = Path(model_dir), Path(out_path)
    cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    fam = family_of(cfg)
    n_layers = cfg["num_hidden_layers"]
    tied = bool(cfg.get("tie_word_embeddings", fam.arch.startswith("GEMMA")))
    arch = getattr(gguf.MODEL_ARCH, fam.arch)
    names = gguf.get_tensor_name_map(arch, n_layers)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[arch])
    types: dict[str, int] = {}
    fallbacks: list[str] = []
    try:
        writer.add_name(f"{cfg.get('model_type')} {model_dir.name}")
        write_metadata(writer, fam, cfg)
        writer.add_file_type(getattr(gguf.LlamaFileType, _FILE_TYPES[qtype]))
        _tokenizer_fields(writer, model_dir)
        seen = set()
        for hf_name, data in _tensors(model_dir):
            base, _, suffix = hf_name.rpartition(".")
            gname = names.get_name(base)
            if gname is None:
                if "rotary_emb" in hf_name:
                    continue
                raise GGUFError(f"GGUF export ({fam.label}): no llama.cpp name for tensor {hf_name}")
            full = f"{gname}.{suffix}"
            if full == "output.weight" and tied:
                continue  # tied: llama.cpp uses token_embd for the output
            seen.add(full)
            arr, kind = encode_tensor(full, fix_tensor(fam, cfg, full, data), qtype, n_layers, tied, fallbacks)
            raw = None if kind in ("F32", "F16") else getattr(gguf.GGMLQuantizationType, kind)
            writer.add_tensor(full, arr, raw_dtype=raw)
            types[kind] = types.get(kind, 0) + 1
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
    return {"path": str(out_path), "family": fam.label, "arch": gguf.MODEL_ARCH_NAMES[arch], "qtype": qtype,
            "types": types, "fallbacks": fallbacks, "size_bytes": out_path.stat().st_size}


def export_gguf(model_dir: str | os.PathLike, out_path: str | os.PathLike, qtype: str = "q8_0") -> Path:
    """write_gguf, returning the file's path."""
    return Path(write_gguf(model_dir, out_path, qtype)["path"])

PROMPTS = ("The capital of France is", "def add(a, b):\n    return", "Once upon a time, a small robot")


def prompt_ids(merged_dir: Path, vocab_size: int):
    import torch

    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(merged_dir))
        rows = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
        n = min(len(r) for r in rows)
        if n >= 3 and max(max(r) for r in rows) < vocab_size:
            return torch.tensor([r[:n] for r in rows])
    except Exception:  # noqa: BLE001 - no usable tokenizer: random ids test the weights just as well
        pass
    return torch.randint(0, vocab_size, (3, 16), generator=torch.Generator().manual_seed(0))


def check_gguf(merged_dir: str | os.PathLike, gguf_path: str | os.PathLike, input_ids=None) -> dict:
    """Load the GGUF back and compare it with the merged model: logits on a few prompts and greedy tokens
    (transformers' gguf_file= loader); where transformers cannot read the family, dequantized tensors."""
    import torch
    from transformers import AutoModelForCausalLM

    merged_dir, gguf_path = Path(merged_dir), Path(gguf_path)
    ref = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32).eval()
    if input_ids is None:
        input_ids = prompt_ids(merged_dir, ref.config.vocab_size)
    note = None
    try:
        (a, ga), (b, gb) = _run(ref, input_ids), _run(_load_gguf(gguf_path), input_ids)
    except Exception as e:  # noqa: BLE001 - transformers read the metadata differently (e.g. Qwen3's head_dim)
        try:
            b, gb = _run(_load_gguf(gguf_path, ref.config), input_ids)
            a, ga = _run(ref, input_ids)
            note = (f"transformers' GGUF config reader differs here ({type(e).__name__}: {str(e)[:120]}); "
                    "tensors loaded from the GGUF with the merged model's config")
        except Exception as e2:  # noqa: BLE001 - an architecture transformers cannot read: compare weights
            out = check_gguf_weights(merged_dir, gguf_path)
            out["note"] = f"transformers could not load it back ({type(e2).__name__}: {str(e2)[:160]}); weights compared"
            return out
    n = min(len(ga), len(gb))
    return {"method": "transformers gguf_file= logits", "prompts": int(input_ids.shape[0]),
            "max_abs_diff": float((a - b).abs().max()), "mean_abs_diff": float((a - b).abs().mean()),
            "logit_scale": float(a.abs().max()),
            "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
            "greedy_match": float((ga[:n] == gb[:n]).float().mean()) if n else None,
            "size_bytes": gguf_path.stat().st_size, **({"note": note} if note else {})}


def _load_gguf(gguf_path: Path, config=None):
    import torch
    from transformers import AutoModelForCausalLM

    kw = {"config": config} if config is not None else {}
    return AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                dtype=torch.float32, **kw).eval()


def _run(model, input_ids):
    """(logits, 8 greedy tokens after the first prompt)."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
        gen = model.generate(input_ids[:1], max_new_tokens=8, do_sample=False, pad_token_id=0)
    return logits, gen[0, input_ids.shape[1]:]


def check_gguf_weights(merged_dir: str | os.PathLike, gguf_path: str | os.PathLike) -> dict:
    """gguf.GGUFReader's dequantized tensors against the merged weights (after the same family fix-ups)."""
    import gguf
    import numpy as np

    merged_dir = Path(merged_dir)
    cfg = json.loads((merged_dir / "config.json").read_text(encoding="utf-8"))
    fam = family_of(cfg)
    arch = getattr(gguf.MODEL_ARCH, fam.arch)
    names = gguf.get_tensor_name_map(arch, cfg["num_hidden_layers"])
    stored = {t.name: t for t in gguf.GGUFReader(str(gguf_path)).tensors}
    worst, rel, n = 0.0, 0.0, 0
    for hf_name, data in _tensors(merged_dir):
        base, _, suffix = hf_name.rpartition(".")
        gname = names.get_name(base)
        t = stored.get(f"{gname}.{suffix}") if gname else None
        if t is None:
            continue
        want = fix_tensor(fam, cfg, t.name, data)
        have = gguf.quants.dequantize(t.data, t.tensor_type).reshape(want.shape)
        err = float(np.abs(have - want).max())
        worst = max(worst, err)
        rel = max(rel, err / max(float(np.abs(want).max()), 1e-12))
        n += 1
    return {"method": "gguf dequantized weights", "tensors": n, "max_abs_diff": worst, "max_rel_diff": rel,
            "argmax_agreement": None, "size_bytes": Path(gguf_path).stat().st_size}
