"""Local export: merged safetensors, GGUF for each family and type, Ollama Modelfile, the CLI end to end.

Each family is a tiny random model built from its transformers config (hidden size 256, so the
K-quants apply) with the tiny-chat's byte-level BPE tokenizer, written as GGUF and loaded back with
transformers' gguf_file= loader: f16/bf16 logits close, q8_0 close, q4_k_m judged by argmax agreement.
The Q4_K/Q6_K quantizers are checked by round trip through gguf's own dequantizers.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


# --- quantizers ---------------------------------------------------------------------------------

def test_k_quants_round_trip_through_gguf_dequantize():
    import gguf
    import numpy as np

    from finetune.kquants import quantize_q4_k, quantize_q6_k

    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 512)).astype(np.float32)
    x[1] = 0.0
    x[2, :256] = -0.5  # a constant block
    x[3] *= 100.0
    q40 = gguf.quants.dequantize(gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q4_0),
                                 gguf.GGMLQuantizationType.Q4_0)
    base_err = np.sqrt(((x - q40) ** 2).mean())
    for fn, t, bytes_per_block, limit in ((quantize_q4_k, gguf.GGMLQuantizationType.Q4_K, 144, 0.08),
                                          (quantize_q6_k, gguf.GGMLQuantizationType.Q6_K, 210, 0.02)):
        q = fn(x)
        assert q.dtype == np.uint8 and q.shape == (16, 2 * bytes_per_block)
        y = gguf.quants.dequantize(q, t)
        assert y.shape == x.shape
        for r in (0, 4, 5, 15):  # relative error per row, as llama.cpp's own quantizers reach
            assert np.sqrt(((x[r] - y[r]) ** 2).mean() / (x[r] ** 2).mean()) < limit, (t.name, r)
        assert np.abs(y[1]).max() == 0.0
        assert np.allclose(y[2, :256], -0.5, atol=2e-3)
        assert np.sqrt(((x[3] - y[3]) ** 2).mean() / (x[3] ** 2).mean()) < limit  # scale-free
        assert np.sqrt(((x - y) ** 2).mean()) < base_err  # better than gguf's Q4_0 at 4.5 bits
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize_q4_k(np.zeros((2, 128), np.float32))


def test_q4_k_m_picks_llama_cpp_types():
    from finetune.gguf_export import q4_k_m_type

    assert q4_k_m_type("output.weight", 8, tied=False) == "Q6_K"
    assert q4_k_m_type("token_embd.weight", 8, tied=True) == "Q6_K"
    assert q4_k_m_type("token_embd.weight", 8, tied=False) == "Q4_K"
    assert q4_k_m_type("blk.0.attn_v.weight", 8, tied=False) == "Q6_K"  # first eighth
    assert q4_k_m_type("blk.1.attn_v.weight", 8, tied=False) == "Q4_K"
    assert q4_k_m_type("blk.3.ffn_down.weight", 8, tied=False) == "Q6_K"  # (3 - 1) % 3 == 2
    assert q4_k_m_type("blk.7.ffn_down.weight", 8, tied=False) == "Q6_K"  # last eighth
    assert q4_k_m_type("blk.2.attn_q.weight", 8, tied=False) == "Q4_K"


# --- families -----------------------------------------------------------------------------------

def _config(family: str, vocab: int):
    import transformers as T

    common = dict(vocab_size=vocab, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  initializer_range=0.1, pad_token_id=3, eos_token_id=2, bos_token_id=None)
    return {
        "llama": lambda: T.LlamaConfig(**common, tie_word_embeddings=True),
        "mistral": lambda: T.MistralConfig(**common, sliding_window=None, tie_word_embeddings=False),
        "qwen2": lambda: T.Qwen2Config(**common, tie_word_embeddings=False),
        "qwen3": lambda: T.Qwen3Config(**common, head_dim=64, tie_word_embeddings=True),
        "gemma2": lambda: T.Gemma2Config(**common, head_dim=64),
        "gemma3": lambda: T.Gemma3TextConfig(**common, head_dim=64, sliding_window=64),
        "phi3": lambda: T.Phi3Config(**common, tie_word_embeddings=False),
    }[family]()


@pytest.fixture(scope="module")
def family_dir(tiny_model_dir, tmp_path_factory):
    made = {}

    def make(family: str) -> Path:
        if family not in made:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(_config(family, len(tok))).eval()
            with torch.no_grad():  # norms away from their init (1 or 0), so a missed +1 or permutation shows
                for name, p in model.named_parameters():
                    if p.ndim == 1:
                        p.add_(torch.randn_like(p) * 0.2)
            d = tmp_path_factory.mktemp(family)
            model.save_pretrained(d)
            tok.save_pretrained(d)
            made[family] = d
        return made[family]

    return make


FAMILY_TYPES = [("llama", "f16"), ("llama", "bf16"), ("llama", "q8_0"), ("llama", "q4_k_m"),
                ("mistral", "f16"), ("mistral", "q4_k_m"), ("qwen2", "q8_0"), ("qwen2", "q4_k_m"),
                ("qwen3", "f16"), ("qwen3", "q4_k_m"), ("gemma2", "f16"), ("gemma2", "q4_k_m"),
                ("gemma3", "bf16"), ("gemma3", "q4_k_m"), ("phi3", "f16"), ("phi3", "q4_k_m")]


@pytest.mark.parametrize("family,qtype", FAMILY_TYPES)
def test_family_gguf_reads_back(family_dir, family, qtype):
    import gguf

    from finetune.gguf_export import check_gguf, check_gguf_weights, write_gguf

    d = family_dir(family)
    info = write_gguf(d, d / f"m-{qtype}.gguf", qtype)
    assert info["fallbacks"] == []  # every matrix row is 256 wide
    reader = gguf.GGUFReader(info["path"])
    arch = reader.fields["general.architecture"].contents()
    assert arch == {"llama": "llama", "mistral": "llama", "gemma3": "gemma3"}.get(family, family)
    names = {t.name for t in reader.tensors}
    tied = family in ("llama", "qwen3", "gemma2", "gemma3")
    assert ("output.weight" in names) == (not tied)
    if family in ("qwen3", "gemma3"):
        assert "blk.0.attn_q_norm.weight" in names and "blk.0.attn_k_norm.weight" in names
    if family == "phi3":
        assert "blk.0.attn_qkv.weight" in names and "blk.0.attn_q.weight" not in names
    kinds = {t.tensor_type.name for t in reader.tensors if len(t.shape) > 1}
    assert kinds == {"f16": {"F16"}, "bf16": {"BF16"}, "q8_0": {"Q8_0"}, "q4_k_m": {"Q4_K", "Q6_K"}}[qtype]
    import torch

    ids = torch.randint(0, reader.fields["llama.vocab_size" if arch == "llama" else f"{arch}.vocab_size"].contents(),
                        (4, 32), generator=torch.Generator().manual_seed(1))
    r = check_gguf(d, info["path"], input_ids=ids)
    print(family, qtype, {k: v for k, v in r.items() if k != "method"})
    assert r["method"].startswith("transformers"), r
    scale = r["logit_scale"]
    if qtype in ("f16", "bf16", "q8_0"):
        assert r["argmax_agreement"] >= (0.97 if qtype == "f16" else 0.9), r
        assert r["max_abs_diff"] < (0.01 if qtype == "f16" else 0.08) * scale, r
    else:  # random tiny models have small top-1 margins (4-bit noise flips many; the real SmolLM2 is judged in
        # test_real_smollm2_q4_k_m): here the file must equal the merged model with each matrix quantized the same way
        sim = _simulated_logits(d, info["path"], ids)
        got = _gguf_logits(d, info["path"], ids)
        assert (got - sim).abs().max() < 1e-3 * scale
        assert (got.argmax(-1) == sim.argmax(-1)).float().mean() >= 0.99
    w = check_gguf_weights(d, info["path"])
    assert w["tensors"] >= 10 and w["max_rel_diff"] < {"f16": 1e-3, "bf16": 1e-2, "q8_0": 1e-2, "q4_k_m": 0.2}[qtype]


def _simulated_logits(d, path, ids):
    """The merged model with every matrix replaced by what the GGUF's type makes of it (quantize + gguf's own
    dequantize, in HF layout: quantization is along rows, so llama.cpp's row permutation does not change it)."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    from finetune.gguf_export import encode_tensor
    from finetune.gguf_families import family_of

    cfg = json.loads((d / "config.json").read_text())
    arch = getattr(gguf.MODEL_ARCH, family_of(cfg).arch)
    names = gguf.get_tensor_name_map(arch, cfg["num_hidden_layers"])
    stored = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
    model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32).eval()
    n = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            base, _, suffix = name.rpartition(".")
            g = names.get_name(base)
            if p.ndim != 2 or g is None or f"{g}.{suffix}" not in stored:
                continue
            arr, kind = encode_tensor(f"{g}.{suffix}", p.numpy(), "q4_k_m", cfg["num_hidden_layers"],
                                      "output.weight" not in stored, [])
            assert kind == stored[f"{g}.{suffix}"]
            deq = gguf.quants.dequantize(arr, getattr(gguf.GGMLQuantizationType, kind)).reshape(p.shape)
            p.copy_(torch.from_numpy(deq.astype("float32")))
            n += 1
        assert n >= 10
        return model(input_ids=ids).logits


def _gguf_logits(d, path, ids):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    # transformers' GGUF reader drops Qwen3's head_dim; its own reader for the others (Mistral reads as Llama)
    kw = {"config": AutoConfig.from_pretrained(str(d))} if "qwen3" in str(d) else {}
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                 **kw).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_gemma_norms_shifted_and_llama_qk_permuted(family_dir):
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    from finetune.gguf_export import check_gguf_weights, write_gguf

    for family, hf, gg in (("gemma2", "model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight"),
                           ("llama", "model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight")):
        d = family_dir(family)
        info = write_gguf(d, d / "m-f32check.gguf", "f16")
        w = load_file(str(d / "model.safetensors"))[hf]
        t = next(t for t in gguf.GGUFReader(info["path"]).tensors if t.name == gg)
        got = np.asarray(t.data, dtype=np.float32).reshape(w.shape)
        if family == "gemma2":
            assert np.allclose(got, w + 1.0, atol=1e-2)
        else:
            assert not np.allclose(got, w, atol=1e-2) and np.allclose(np.sort(got, 0), np.sort(w, 0), atol=1e-2)
        weights = check_gguf_weights(d, info["path"])
        assert weights["tensors"] > 5 and weights["max_rel_diff"] < 1e-2


def test_unsupported_family_and_type_say_so(tmp_path):
    from finetune.gguf_export import GGUFError, write_gguf

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(GGUFError, match="covers .*Gemma 2.*this model is 'gpt2'"):
        write_gguf(tmp_path, tmp_path / "x.gguf", "f16")
    with pytest.raises(GGUFError, match="q3_k.*choose one of f16, bf16, q8_0, q4_k_m"):
        write_gguf(tmp_path, tmp_path / "x.gguf", "q3_k")


# --- Modelfile ----------------------------------------------------------------------------------

@pytest.mark.parametrize("marker,fmt,stop", [
    ("<|im_start|>{{ role }}", "chatml", "<|im_end|>"), ("<|start_header_id|>", "llama3", "<|eot_id|>"),
    ("[INST] {{ x }} [/INST]", "mistral", "[INST]"), ("<start_of_turn>model", "gemma", "<end_of_turn>"),
    ("<|user|>\n{{ x }}<|end|><|assistant|>", "phi3", "<|end|>"), ("{{ x }}", "unknown", None)])
def test_modelfile_names_template_and_stops(tmp_path, marker, fmt, stop):
    from finetune.modelfile import write_modelfile

    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": marker, "eos_token": "</e>"}))
    r = write_modelfile(tmp_path, tmp_path / "run-q4_k_m.gguf", system="You are terse.")
    text = Path(r["path"]).read_text()
    assert r["format"] == fmt and "FROM ./run-q4_k_m.gguf" in text and 'SYSTEM """You are terse."""' in text
    assert 'PARAMETER stop "</e>"' in text
    if stop:
        assert f"# Chat template: {fmt}" in text and 'TEMPLATE """{{- range .Messages }}' in text
        assert f"PARAMETER stop {json.dumps(stop)}" in text
    else:
        assert "Chat template: unknown" in text and "TEMPLATE" not in text


# --- a real run, through the CLI ------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora_run(tiny_model_dir):
    from conftest import trained_tiny_run

    return trained_tiny_run(3)


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "finetune", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_cli_export_merged_and_gguf(lora_run, tmp_path):
    out = tmp_path / "exp"
    p = _cli("export", lora_run, "--merged", "--gguf", "q4_k_m", "--out", str(out), "--system", "Be brief.", "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["out"] == str(out) and Path(r["modelfile"]).read_text().count("PARAMETER stop") >= 2
    names = {Path(f).name for f in r["files"]}
    assert {"model.safetensors", "config.json", "tokenizer.json", f"{lora_run}-q4_k_m.gguf", "Modelfile"} <= names
    assert r["template"] == "chatml" and "<|im_end|>" in r["stops"]
    assert r["agreement"]["merged"]["argmax_agreement"] == 1.0 and r["agreement"]["merged"]["max_abs_diff"] < 1e-3
    g = r["agreement"]["gguf"]
    assert g["method"].startswith("transformers") and g["argmax_agreement"] >= 0.6, g
    # tiny-chat is 128 wide: no K-quant fits its rows, and the result says which tensors fell back
    assert r["gguf"]["fallbacks"] and all("q8_0 instead of" in f for f in r["gguf"]["fallbacks"])
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(out / "merged"))  # a plain model folder, no adapter

    human = _cli("export", lora_run, "--gguf", "f16", "--out", str(tmp_path / "h"))
    assert human.returncode == 0, human.stderr
    assert "top-1 agreement 100.0%" in human.stdout and "Modelfile: template chatml" in human.stdout

    bad = _cli("export", lora_run, "--out", str(tmp_path / "none"))
    assert bad.returncode != 0 and "choose --merged and/or --gguf" in (bad.stderr + bad.stdout)
    assert "Traceback" not in bad.stderr


@pytest.mark.slow
def test_real_smollm2_q4_k_m(smollm2_dir, tmp_path):
    """The real SmolLM2-135M-Instruct as q4_k_m: its 576-wide rows take q8_0 (as llama.cpp falls back), its
    1536-wide ffn_down rows the K-quants; loaded back, its top-1 tokens agree with the model's."""
    from finetune.gguf_export import check_gguf, write_gguf
    from finetune.modelfile import write_modelfile

    info = write_gguf(smollm2_dir, tmp_path / "smollm2-q4_k_m.gguf", "q4_k_m")
    assert info["family"] == "Llama" and {"Q4_K", "Q6_K", "Q8_0"} <= set(info["types"])
    assert any(f.startswith("blk.0.attn_q.weight: row of 576") for f in info["fallbacks"])
    r = check_gguf(smollm2_dir, info["path"])
    print(f"SmolLM2-135M-Instruct q4_k_m: {info['size_bytes'] / 1e6:.1f} MB, types {info['types']}, "
          f"top-1 agreement {r['argmax_agreement']:.3f}, greedy match {r['greedy_match']:.3f}, "
          f"max logit diff {r['max_abs_diff']:.3f} (scale {r['logit_scale']:.1f})")
    assert r["method"].startswith("transformers") and r["argmax_agreement"] >= 0.7 and r["greedy_match"] >= 0.75, r
    mf = write_modelfile(smollm2_dir, info["path"])
    assert mf["format"] == "chatml" and "<|im_end|>" in mf["stops"]
