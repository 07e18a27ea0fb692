"""Tests for the planner (finetune/plan/) and hardware tiers (finetune/hardware.py).

Offline and fast: no model is loaded. Memory estimates are checked against published anchors
(Unsloth's minimum-VRAM table, the QLoRA paper), the decision tree against its documented branches,
and the generated TRL config against the fields of the installed trl. Run:

    python -m pytest tests/test_plan.py -q -s     # -s prints the estimate vs anchor table
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from finetune.builtin import TINY_CHAT_CONFIG, TINY_CHAT_ID
from finetune.hardware import detect_hardware, get_tier, list_tiers
from finetune.plan import (
    GPU_LAYER_OVERHEAD_S,
    GPU_STEP_OVERHEAD_S,
    METHODS,
    UNSLOTH_MINIMUM,
    PlanRequest,
    estimate_memory,
    estimate_time,
    flops_per_token,
    model_spec,
    plan,
    registry_models,
)

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------
# Registry


REQUIRED_MODELS = [
    "meta-llama/Llama-3.2-1B-Instruct", "meta-llama/Llama-3.2-3B-Instruct", "meta-llama/Llama-3.1-8B-Instruct",
    "meta-llama/Llama-3.1-70B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct",
    "Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-14B-Instruct", "Qwen/Qwen2.5-72B-Instruct", "Qwen/Qwen3-0.6B",
    "Qwen/Qwen3-4B", "Qwen/Qwen3-8B", "mistralai/Mistral-7B-v0.3", "google/gemma-2-2b-it", "google/gemma-2-9b-it",
    "microsoft/Phi-3.5-mini-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-360M-Instruct",
    "HuggingFaceTB/SmolLM2-1.7B-Instruct", "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
    "unsloth/Llama-3.2-1B-Instruct-bnb-4bit", TINY_CHAT_ID,
]


@pytest.mark.parametrize("model_id", REQUIRED_MODELS)
def test_registry_has_model(model_id):
    spec = model_spec(model_id)
    for key in ("params", "layers", "hidden", "intermediate", "heads", "kv_heads", "vocab", "context",
                "licence", "gated"):
        assert key in spec, key


def test_registry_architecture_reproduces_published_parameter_counts():
    # The architecture numbers are right if they add up to the published parameter count
    # (small differences: qkv biases of Qwen2.5, the extra norms of Gemma 2).
    models = [m for m in registry_models() if m["source"] == "registry" and not m["prequantized_4bit"]]
    assert len(models) >= 15
    for m in models:
        assert abs(m["params_computed"] / m["params"] - 1) < 0.01, m["id"]


def test_unsloth_variant_points_to_base():
    spec = model_spec("unsloth/Llama-3.2-1B-Instruct-bnb-4bit")
    base = model_spec(spec["base"])
    assert spec["prequantized_4bit"] is True
    assert spec["params_computed"] == base["params_computed"]


def test_tiny_chat_spec_from_builtin_config():
    c = TINY_CHAT_CONFIG
    h, i, L, V = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    kv = c["num_key_value_heads"] * h // c["num_attention_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    expected = L * per_layer + 2 * V * h + h  # untied embeddings and lm_head, final norm
    assert model_spec(TINY_CHAT_ID)["params"] == expected


def test_lora_params_match_peft_count_for_llama3_8b():
    # PEFT reports 41,943,040 trainable parameters for Llama-3-8B, r=16 on all linear layers.
    spec = model_spec("meta-llama/Llama-3.1-8B-Instruct")
    assert estimate_memory(spec, "lora", 512, 1, 16)["trainable_params"] == 41_943_040


def test_unknown_model_asks_for_size_and_params_b_works():
    with pytest.raises(ValueError, match="unknown model someone/mystery-13b: give its size"):
        model_spec("someone/mystery-13b")
    spec = model_spec("someone/mystery-13b", params_b=13)
    assert abs(spec["params"] - 13e9) < 1e6
    assert abs(spec["params_computed"] / 13e9 - 1) < 0.01
    out = plan(PlanRequest(model="someone/mystery-13b", params_b=13, hardware="a100-large"))
    assert out["model_spec"]["source"] == "params_b"


def test_local_config_json_is_read():
    with tempfile.TemporaryDirectory() as d:
        cfg = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
               "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 5000,
               "max_position_embeddings": 1024, "tie_word_embeddings": True}
        (Path(d) / "config.json").write_text(json.dumps(cfg))
        spec = model_spec(d)
        assert spec["source"] == "local config.json"
        assert spec["params"] == 4 * (4 * 256 * 256 + 3 * 256 * 688 + 2 * 256) + 5000 * 256 + 256
        assert plan(PlanRequest(model=d))["fits"] is True


# ---------------------------------------------------------------------------------------------
# Memory: published anchors

# Unsloth requirements page, "absolute minimum" VRAM at sequence length 2048, batch 1:
# (QLoRA 4-bit GB, LoRA 16-bit GB). The 14B row is held against two 14B models: Phi-3-medium
# (32k vocabulary) and Qwen2.5-14B (152k vocabulary, 1.56B embedding parameters).
UNSLOTH_TABLE = [
    ("mistralai/Mistral-7B-v0.3", 5.0, 19.0),
    ("meta-llama/Llama-3.1-8B", 6.0, 22.0),
    ("microsoft/Phi-3-medium-4k-instruct", 8.5, 33.0),
    ("Qwen/Qwen2.5-14B-Instruct", 8.5, 33.0),
    ("meta-llama/Llama-3.1-70B", 41.0, 164.0),
]


@pytest.mark.parametrize("model_id,qlora_gb,lora_gb", UNSLOTH_TABLE)
def test_memory_within_25_percent_of_unsloth_minimum(model_id, qlora_gb, lora_gb):
    spec = model_spec(model_id)
    assert UNSLOTH_MINIMUM["seq_len"] == 2048 and UNSLOTH_MINIMUM["batch_size"] == 1
    q = estimate_memory(spec, "qlora", **UNSLOTH_MINIMUM)["total_gb"]
    lo = estimate_memory(spec, "lora", **UNSLOTH_MINIMUM)["total_gb"]
    print(f"\n{model_id:38s} QLoRA {q:6.1f} GB vs {qlora_gb:5.1f} ({q / qlora_gb - 1:+.0%})   "
          f"LoRA {lo:6.1f} GB vs {lora_gb:5.1f} ({lo / lora_gb - 1:+.0%})")
    assert abs(q / qlora_gb - 1) <= 0.25
    assert abs(lo / lora_gb - 1) <= 0.25


def test_memory_models_the_backend():
    """TRL's loss holds the whole fp32 logits and every layer's checkpoint on the GPU; Unsloth's chunked
    loss and offloaded checkpointing do not, which matters most for long rows and large vocabularies."""
    from finetune.plan import planned_backend

    spec = model_spec("Qwen/Qwen2.5-14B-Instruct")
    kw = dict(seq_len=4096, batch_size=2, lora_rank=16, gradient_checkpointing=True, optimizer="adamw_8bit")
    trl = estimate_memory(spec, "qlora", **kw, backend="trl")
    uns = estimate_memory(spec, "qlora", **kw, backend="unsloth")
    assert trl["breakdown"]["logits"] == pytest.approx(4 * 152064 * 4096 * 2 / 1e9, rel=0.01)
    assert uns["breakdown"]["logits"] == pytest.approx(4 * 152064 * 512 / 1e9, rel=0.01)  # one chunk
    assert uns["breakdown"]["activations"] < trl["breakdown"]["activations"] / 3
    assert uns["total_gb"] < trl["total_gb"] - 5
    cpu = estimate_memory(spec, "lora", **kw, device="cpu", backend="unsloth")  # no Unsloth without CUDA
    assert cpu["backend"] == "trl" and cpu["breakdown"]["logits"] > 0
    t4 = {"name": "t4-small", "device": "cuda", "gpu_count": 1}
    assert planned_backend("qlora", t4) == "unsloth" and planned_backend("dora", t4) == "trl"
    assert planned_backend("lora", {"name": "l4x4", "device": "cuda", "gpu_count": 4}) == "trl"
    assert planned_backend("lora", {"name": "cpu-basic", "device": "cpu", "gpu_count": 0}) == "trl"


def test_qlora_paper_65b_fits_in_48gb():
    spec = model_spec("huggyllama/llama-65b")
    est = estimate_memory(spec, "qlora", 512, 1, 16, True)  # planner defaults: paged 8-bit AdamW
    assert est["total_gb"] < 48
    # a 65B model known only by its size behaves the same
    est2 = estimate_memory(model_spec("someone/llama-65b-like", params_b=65), "qlora", 512, 1, 16, True)
    assert est2["total_gb"] < 48
    out = plan(PlanRequest(model="huggyllama/llama-65b", hardware="l40sx1", batch_size=1))
    assert out["method"] == "qlora" and out["fits"] is True


def test_full_finetune_is_16_to_18_bytes_per_parameter():
    spec = model_spec("meta-llama/Llama-3.1-8B-Instruct")
    b = estimate_memory(spec, "full", 512, 1)["breakdown"]
    per_param = (b["weights"] + b["trainable_and_grads"] + b["optimizer"]) * 1e9 / spec["params_computed"]
    assert 15.99 <= per_param <= 18.01  # breakdown figures are rounded to MB


def test_qlora_base_is_about_half_a_byte_per_linear_weight():
    spec = model_spec("meta-llama/Llama-3.1-8B-Instruct")
    w = estimate_memory(spec, "qlora", 512, 1)["breakdown"]["weights"] * 1e9
    expected = 0.52 * spec["params_linear"] + 2 * (spec["params_embedding"] + spec["params_norm"])
    assert abs(w / expected - 1) < 0.01


def test_memory_grows_with_batch_and_length_and_checkpointing_saves():
    spec = model_spec("Qwen/Qwen2.5-7B-Instruct")
    a = estimate_memory(spec, "lora", 512, 1)["total_gb"]
    assert estimate_memory(spec, "lora", 1024, 1)["total_gb"] > a
    assert estimate_memory(spec, "lora", 512, 4)["total_gb"] > a
    assert estimate_memory(spec, "lora", 2048, 4, gradient_checkpointing=False)["total_gb"] > \
        estimate_memory(spec, "lora", 2048, 4, gradient_checkpointing=True)["total_gb"]
    # DPO runs chosen and rejected together: twice the tokens of LoRA SFT
    assert estimate_memory(spec, "dpo", 512, 4)["total_gb"] > estimate_memory(spec, "lora", 512, 4)["total_gb"]


def test_feasibility_max_batch_and_length_are_tight():
    out = plan(PlanRequest(model="meta-llama/Llama-3.1-8B-Instruct", hardware="a10g-large", seq_len=2048,
                           batch_size=2))
    spec = model_spec("meta-llama/Llama-3.1-8B-Instruct")
    cap = 24.0
    assert set(out["feasibility"]) == set(METHODS)
    row = out["feasibility"]["qlora"]
    b = row["max_batch_size"]
    assert b >= 1
    # a10g-large is one CUDA GPU: QLoRA runs through Unsloth there, and the planner models that backend
    u = dict(backend="unsloth")
    assert estimate_memory(spec, "qlora", 2048, b, 16, **u)["total_gb"] <= cap + 0.01
    assert estimate_memory(spec, "qlora", 2048, b + 1, 16, **u)["total_gb"] > cap - 0.01
    s = row["max_seq_len"]
    assert estimate_memory(spec, "qlora", s, 2, 16, **u)["total_gb"] <= cap + 0.01
    assert out["feasibility"]["full"]["fits"] is False


# ---------------------------------------------------------------------------------------------
# Time and cost


def test_flops_per_token_follow_6n_and_4n_rules():
    spec = model_spec("meta-llama/Llama-3.1-8B-Instruct")
    n = spec["params_computed"]
    attn = 12 * spec["layers"] * spec["heads"] * spec["head_dim"] * 512
    assert flops_per_token(spec, "full", 512, gradient_checkpointing=False) == pytest.approx(6 * n + attn)
    lora = flops_per_token(spec, "lora", 512, 16, gradient_checkpointing=False)
    assert lora == pytest.approx(4 * n + 6 * 41_943_040 + attn)
    assert flops_per_token(spec, "lora", 512, 16, True) > lora


def test_time_and_cost_are_consistent():
    spec = model_spec("meta-llama/Llama-3.1-8B-Instruct")
    t = estimate_time(spec, "qlora", 1e7, "l4x1", 512, batch_size=4)
    tier = get_tier("l4x1")
    compute_s = 1e7 * t["flops_per_token"] / (tier["peak_tflops"] * 1e12 * t["mfu"])
    steps_s = 1e7 / (4 * 512) * (GPU_STEP_OVERHEAD_S + GPU_LAYER_OVERHEAD_S * spec["layers"])
    assert steps_s < 0.05 * compute_s  # per-step overhead is noise for an 8B model
    expected_h = (compute_s + steps_s) / 3600
    assert t["hours"] == pytest.approx(expected_h, rel=1e-3)
    assert t["cost_usd"] == pytest.approx(t["hours"] * tier["price_usd_per_h"], rel=1e-2)
    assert 0.2 <= t["mfu"] <= 0.4
    # the same work is faster on an H100 than on a T4
    assert estimate_time(spec, "qlora", 1e7, "h100")["hours"] < estimate_time(spec, "qlora", 1e7, "t4-small")["hours"]


# ---------------------------------------------------------------------------------------------
# Decision tree


def test_preference_pairs_choose_dpo():
    out = plan(PlanRequest(model="Qwen/Qwen2.5-1.5B-Instruct", has_preferences=True, hardware="l4x1"))
    assert out["method"] == "dpo"
    assert any("DPO" in r or "Preference" in r for r in out["reasons"])
    assert out["dataset_requirements"]["format"] == "preference"


def test_few_examples_choose_lora():
    out = plan(PlanRequest(model="Qwen/Qwen2.5-1.5B-Instruct", examples=200, hardware="a100-large"))
    assert out["method"] == "lora"
    assert any("few examples" in r.lower() for r in out["reasons"])


def test_no_labels_mentions_synthetic_data():
    out = plan(PlanRequest(model="Qwen/Qwen2.5-1.5B-Instruct", has_labels=False, hardware="l4x1"))
    assert any("synthetic" in r.lower() for r in out["reasons"])
    assert out["dataset_requirements"]["synthetic_needed"] is True


def test_small_gpu_with_8b_chooses_qlora():
    out = plan(PlanRequest(model="meta-llama/Llama-3.1-8B-Instruct", hardware="t4-small"))
    assert out["method"] == "qlora"
    assert out["fits"] is True
    assert out["trl_config"]["load_in_4bit"] is True
    assert any("fp16" == h["name"] for h in out["hyperparameters"])  # T4 has no bf16


def test_prompting_sufficient_says_prompting():
    out = plan(PlanRequest(prompting_sufficient=True))
    assert out["method"] == "prompting"
    assert "prompting" in out["reasons"][0].lower()
    assert out["training_method"] in METHODS  # the fallback is still planned


def test_cluster_with_lots_of_data_goes_full_with_parallelism():
    out = plan(PlanRequest(model="Qwen/Qwen2.5-7B-Instruct", hardware="a100x8", examples=50_000))
    assert out["method"] == "full"
    assert out["parallelism"] == "fsdp"
    assert "--num_processes 8" in out["trl_command"]


def test_too_big_for_tier_says_so_and_points_to_a_bigger_one():
    out = plan(PlanRequest(model="meta-llama/Llama-3.1-70B-Instruct", hardware="t4-small"))
    assert out["fits"] is False
    assert any("larger tier" in r for r in out["reasons"])
    assert any(t["fits"] for t in out["tiers"])


def test_prequantized_model_trains_adapters_only():
    out = plan(PlanRequest(model="unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit", hardware="l4x1", examples=20_000))
    assert out["method"] == "qlora"
    assert out["feasibility"]["full"]["applicable"] is False


def test_explicit_method_is_respected_with_warnings():
    out = plan(PlanRequest(model="Qwen/Qwen2.5-0.5B-Instruct", method="full", examples=100, hardware="l4x1"))
    assert out["method"] == "full"
    assert any("Warning" in r for r in out["reasons"])


def test_budget_is_checked():
    out = plan(PlanRequest(model="meta-llama/Llama-3.1-8B-Instruct", hardware="a100-large", examples=100_000,
                           budget_usd=1.0))
    assert out["within_budget"] is False
    assert any("Over budget" in r for r in out["reasons"])


def test_batch_shrinks_to_what_fits_and_accumulation_compensates():
    out = plan(PlanRequest(model="meta-llama/Llama-3.1-8B-Instruct", hardware="t4-small", batch_size=64,
                           seq_len=2048))
    hp = {h["name"]: h["value"] for h in out["hyperparameters"]}
    assert hp["per_device_train_batch_size"] < 64
    assert hp["per_device_train_batch_size"] <= out["feasibility"]["qlora"]["max_batch_size"]
    assert out["fits"] is True


# ---------------------------------------------------------------------------------------------
# Output shape, report, configs


def test_plan_output_is_complete_and_json_serialisable():
    out = plan(PlanRequest(task="Answer support tickets", examples=3000, hardware="l4x1",
                           model="Qwen/Qwen2.5-7B-Instruct"))
    json.dumps(out)
    for key in ("method", "reasons", "vram_gb", "vram_breakdown", "fits", "feasibility", "time_h", "cost_usd",
                "tiers", "hyperparameters", "presets", "risks", "dataset_requirements", "evaluation_plan",
                "readiness", "report_md", "trl_config_yaml", "python_script"):
        assert key in out, key
    assert set(out["vram_breakdown"]) == {"weights", "trainable_and_grads", "optimizer", "activations", "logits",
                                          "overhead"}
    assert {r["risk"] for r in out["risks"]} >= {"overfitting", "underfitting", "catastrophic forgetting",
                                                 "out of memory (OOM)", "mode collapse"}
    assert all(r["mitigation"] for r in out["risks"])
    assert {h["name"] for h in out["hyperparameters"]} >= {"learning_rate", "num_train_epochs",
                                                           "per_device_train_batch_size", "lora_r", "warmup_steps"}
    assert all(h["rationale"] for h in out["hyperparameters"])
    assert set(out["presets"]) == {"conservative", "balanced", "aggressive"}
    assert out["presets"]["balanced"]["learning_rate"] == 2e-4
    names = {t["name"] for t in out["tiers"]}
    assert {"local", "cpu-basic", "t4-small", "l4x1", "a10g-large", "a100-large", "h100"} <= names
    assert all("inference_usd_per_1m_tokens" in t for t in out["tiers"])
    assert 0 <= out["readiness"] <= 100
    md = out["report_md"]
    for section in ("FINE-TUNING PLAN", "FINE-TUNING CONFIG", "VRAM Required", "Est. Duration", "Readiness",
                    "Task analysis", "Dataset requirements", "Training configuration", "Hyperparameters",
                    "Evaluation plan", "Commands", "Plan Complete"):
        assert section in md, section


def test_priority_picks_presets():
    quality = plan(PlanRequest(priority="quality", examples=3000))
    cost = plan(PlanRequest(priority="cost", examples=3000))
    assert quality["preset"] == "balanced" and cost["preset"] == "conservative"
    hq = {h["name"]: h["value"] for h in quality["hyperparameters"]}
    hc = {h["name"]: h["value"] for h in cost["hyperparameters"]}
    assert hq["lora_r"] == 16 and hc["lora_r"] == 8
    assert hq["warmup_steps"] == 0.03 and hc["warmup_steps"] == 0.10


def test_exported_warmup_is_whole_steps_rounded_down_as_our_trainer_does():
    # transformers rounds a ratio up (ceil): a short run would lose one of its few updates to a
    # one-step warmup. The exported config and script carry whole steps of the planned run instead:
    # `trl sft --config` trains on all rows, the script on what its 10% hold-out leaves.
    def whole(n_train, hp, n_dev):
        b, ga, ep = (hp["per_device_train_batch_size"], hp["gradient_accumulation_steps"], hp["num_train_epochs"])
        return int(math.ceil(ep * math.ceil(math.ceil(n_train / (b * n_dev)) / ga)) * hp["warmup_steps"])

    for examples in (60, 3000, 40_000):
        out = plan(PlanRequest(priority="cost", examples=examples))
        hp = {h["name"]: h["value"] for h in out["hyperparameters"]}
        n_dev = get_tier(PlanRequest().hardware).get("gpu_count") or 1  # local: this machine's GPUs
        yaml_steps, script_steps = whole(examples, hp, n_dev), whole(examples - -(-examples // 10), hp, n_dev)
        assert out["trl_config"]["warmup_steps"] == yaml_steps and isinstance(yaml_steps, int), examples
        assert f"warmup_steps: {yaml_steps}" in out["trl_config_yaml"]
        assert f"warmup_steps={script_steps}," in out["python_script"], out["python_script"]
        assert hp["warmup_steps"] == 0.10  # the plan itself still shows the preset's ratio
    assert script_steps < yaml_steps  # 40,000 rows: the hold-out shows


@pytest.fixture(scope="module")
def trl_fields():
    import trl

    def names(cls):
        return {f.name for f in dataclasses.fields(cls)}

    common = names(trl.ScriptArguments) | names(trl.ModelConfig)
    return {"sft": common | names(trl.SFTConfig), "dpo": common | names(trl.DPOConfig),
            "SFTConfig": names(trl.SFTConfig), "DPOConfig": names(trl.DPOConfig)}


CONFIG_CASES = [
    PlanRequest(),
    PlanRequest(model="meta-llama/Llama-3.1-8B-Instruct", hardware="t4-small"),
    PlanRequest(model="Qwen/Qwen2.5-0.5B-Instruct", hardware="a100-large", examples=50_000),
    PlanRequest(model="Qwen/Qwen2.5-1.5B-Instruct", method="dora", hardware="l4x1"),
    PlanRequest(model="Qwen/Qwen2.5-1.5B-Instruct", has_preferences=True, hardware="l4x1"),
    PlanRequest(model="Qwen/Qwen2.5-72B-Instruct", hardware="a100x8"),
    PlanRequest(model="microsoft/Phi-3.5-mini-instruct", method="prefix", hardware="a10g-large"),
]


@pytest.mark.parametrize("req", CONFIG_CASES, ids=lambda r: f"{r.model.split('/')[-1]}-{r.method}-{r.hardware}")
def test_trl_yaml_keys_are_real_trl_fields(req, trl_fields):
    out = plan(req)
    cfg = yaml.safe_load(out["trl_config_yaml"])
    kind = "dpo" if out["training_method"] == "dpo" else "sft"
    unknown = set(cfg) - trl_fields[kind]
    assert not unknown, unknown
    for key in ("model_name_or_path", "dataset_name", "learning_rate", "num_train_epochs",
                "per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "use_peft",
                "output_dir"):
        assert key in cfg, key
    if out["training_method"] in ("lora", "qlora", "dora", "dpo"):
        assert cfg["use_peft"] is True and cfg["lora_r"] >= 1 and cfg["lora_target_modules"]


@pytest.mark.parametrize("req", CONFIG_CASES, ids=lambda r: f"{r.model.split('/')[-1]}-{r.method}-{r.hardware}")
def test_python_script_is_valid_and_uses_real_fields(req, trl_fields):
    out = plan(req)
    tree = ast.parse(out["python_script"])
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    config_calls = [c for c in calls if c.func.id in ("SFTConfig", "DPOConfig")]
    assert len(config_calls) == 1
    call = config_calls[0]
    kwargs = {k.arg for k in call.keywords}
    assert kwargs <= trl_fields[call.func.id], kwargs - trl_fields[call.func.id]


def test_cpu_yaml_parses_with_trl_parser():
    # The real thing: trl's own parser builds ScriptArguments, SFTConfig and ModelConfig from the YAML.
    from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser

    out = plan(PlanRequest(dataset="some/dataset", hardware="cpu-basic"))
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(out["trl_config_yaml"])
    script_args, train_args, model_args = TrlParser((ScriptArguments, SFTConfig, ModelConfig)) \
        .parse_args_and_config(["--config", f.name])
    Path(f.name).unlink()
    assert script_args.dataset_name == "some/dataset"
    assert train_args.use_cpu is True
    assert model_args.use_peft is True and model_args.lora_r == out["trl_config"]["lora_r"]


# ---------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize("field,value", [
    ("model", ""), ("method", "magic"), ("task_type", "poetry"), ("examples", -1), ("examples", 1.5),
    ("mean_tokens", 0), ("has_labels", "yes"), ("hardware", "tpu-v5"), ("seq_len", 8), ("batch_size", 0),
    ("epochs", 0), ("priority", "fun"), ("budget_usd", -5), ("budget_h", 0), ("lora_rank", 0),
    ("params_b", -1), ("gradient_checkpointing", None), ("measured_tokens_per_s", 0),
    ("measured_overhead_s", -1.0),
])
def test_validation_names_the_field(field, value):
    with pytest.raises(ValueError) as e:
        PlanRequest(**{field: value})
    assert str(e.value).startswith(f"{field}:")


def test_calibration_replaces_the_assumed_throughput_on_this_machine_only():
    from finetune.plan import calibrated_time

    base = PlanRequest(examples=400, mean_tokens=20, epochs=10, batch_size=8, seq_len=256)
    out = plan(base)
    assert out["calibrated"] is False and out["time"]["seconds"] > 0
    cal = plan(PlanRequest(**{**base.__dict__, "measured_tokens_per_s": 4000.0, "measured_overhead_s": 6.0}))
    assert cal["calibrated"] and cal["time"]["calibrated"] and cal["time"]["tokens"] == 400 * 20 * 10
    assert cal["time_s"] == pytest.approx(80_000 / 4000 + 6, abs=0.1)
    t = cal["time"]
    assert t["mfu"] == pytest.approx(4000 * t["flops_per_token"] / (t["peak_tflops"] * 1e12), rel=0.01)
    assert cal["tiers"][0]["name"] == "local" and cal["tiers"][0]["calibrated"]
    assert cal["tiers"][1:] == [dict(t, calibrated=False) for t in out["tiers"][1:]]
    t = calibrated_time(out["time"], get_tier("t4-small"), 1000.0)
    assert t["cost_usd"] == pytest.approx(t["hours"] * get_tier("t4-small")["price_usd_per_h"], abs=1e-4)


def test_views_for_the_tab():
    from finetune.plan import write_plan_files
    from ui.plan_view import MEMORY_PARTS, details_md, memory_rows, tier_points, tier_rows, train_settings

    out = plan(PlanRequest(model="meta-llama/Llama-3.1-8B-Instruct", hardware="t4-small"))
    rows = memory_rows(out)
    assert len(rows) == len(METHODS) * len(MEMORY_PARTS) and "qlora ←" in {r["method"] for r in rows}
    full = sum(r["GB"] for r in rows if r["method"] == "full")
    assert full == pytest.approx(out["feasibility"]["full"]["vram_gb"], rel=0.02)
    pts = tier_points(out)
    offered = [t for t in out["tiers"] if t["available"]]
    assert all((p["hours"] is None) == (not t["fits"]) for p, t in zip(pts, offered))
    assert {r["tier"] for r in tier_rows(out)} == {t["name"] for t in out["tiers"]}
    settings = train_settings(out)
    assert {k: settings[k] for k in ("method", "learning_rate", "epochs", "batch_size", "max_seq_len", "lora_rank")} == {"method": "qlora", "learning_rate": out["hyperparameters_dict"]["learning_rate"],
                                   "epochs": out["hyperparameters_dict"]["num_train_epochs"],
                                   "batch_size": out["hyperparameters_dict"]["per_device_train_batch_size"],
                                   "max_seq_len": 512, "lora_rank": out["hyperparameters_dict"]["lora_r"]}
    # the rest of what the plan sets (dropout, target modules, ...) goes to the Train tab as well
    assert settings["lora_dropout"] == out["hyperparameters_dict"]["lora_dropout"]
    assert train_settings(plan(PlanRequest(prompting_sufficient=True))) is None
    md = details_md(out)
    assert "#### Risks" in md and "#### Evaluation plan" in md and "Readiness" in md
    paths = write_plan_files(out, ROOT / ".pytest-plan-files")
    try:
        assert Path(paths["report_md"]).read_text() == out["report_md"]
        assert Path(paths["python_script"]).read_text() == out["python_script"]
    finally:
        import shutil
        shutil.rmtree(ROOT / ".pytest-plan-files")


def test_builtin_model_gets_its_demo_settings():
    from finetune.config import BUILTIN_DEMO_TRAIN

    hp = plan(PlanRequest(model=TINY_CHAT_ID))["hyperparameters_dict"]
    assert hp["learning_rate"] == BUILTIN_DEMO_TRAIN["learning_rate"]
    assert hp["num_train_epochs"] == BUILTIN_DEMO_TRAIN["epochs"]
    assert plan(PlanRequest(model=TINY_CHAT_ID, epochs=2))["hyperparameters_dict"]["num_train_epochs"] == 2


def test_small_real_model_on_a_small_task_gets_enough_steps_and_a_higher_rate():
    """Issue 15: 90 rows x 3 epochs at batch 4 (~60 steps) at 2e-4 taught SmolLM2-135M nothing. The plan
    now scales an adapter's rate with the model's size and gives a small task enough optimizer steps."""
    from finetune.builtin import SMOLLM2_ID
    from finetune.plan.recommend import MIN_STEPS

    def hp(model, task_type="chat", n=90, **kw):
        p = plan(PlanRequest(model=model, task_type=task_type, examples=n, seq_len=256, batch_size=4, **kw))
        h = p["hyperparameters_dict"]
        why = {x["name"]: x["rationale"] for x in p["hyperparameters"]}
        per_epoch = -(-n // (h["per_device_train_batch_size"] * h["gradient_accumulation_steps"]))
        return h, per_epoch * h["num_train_epochs"], why

    small, small_steps, why = hp(SMOLLM2_ID)
    big, big_steps, big_why = hp("meta-llama/Llama-3.1-8B-Instruct")
    assert small["learning_rate"] >= 5e-4 and small["learning_rate"] > 2 * big["learning_rate"]
    assert big["learning_rate"] == 2e-4  # the balanced preset suits ~8B models unchanged
    assert "0.13B model" in why["learning_rate"] and "small models need larger steps" in why["learning_rate"]
    assert small_steps >= MIN_STEPS["default"] and big_steps >= MIN_STEPS["default"]
    assert "69 optimizer steps" in why["num_train_epochs"]
    # fewer rows: more epochs, so that the optimizer still takes the steps the task needs, and says so
    few, few_steps, few_why = hp(SMOLLM2_ID, n=30)
    assert few["num_train_epochs"] > small["num_train_epochs"] and few_steps >= MIN_STEPS["default"]
    assert "optimizer steps per epoch" in few_why["num_train_epochs"] and "updates" in few_why["num_train_epochs"]
    # a label set (short fixed answers) needs fewer updates; epochs set by the user are kept
    label, label_steps, label_why = hp(SMOLLM2_ID, "classification", n=30)
    assert MIN_STEPS["classification"] <= label_steps < few_steps
    assert hp(SMOLLM2_ID, epochs=2)[0]["num_train_epochs"] == 2
    # a 70B model takes smaller steps than the preset, and large data keeps its few epochs
    assert hp("meta-llama/Llama-3.1-70B-Instruct", hardware="a100-large")[0]["learning_rate"] < 2e-4
    many = plan(PlanRequest(model=SMOLLM2_ID, examples=60_000))["hyperparameters_dict"]
    assert many["num_train_epochs"] == 1


def test_estimate_memory_rejects_unknown_method():
    with pytest.raises(ValueError, match="method"):
        estimate_memory(model_spec(TINY_CHAT_ID), "magic", 128, 1)


# ---------------------------------------------------------------------------------------------
# Hardware


def test_tiers_table():
    tiers = {t["name"]: t for t in list_tiers()}
    for name in ("cpu-basic", "cpu-upgrade", "t4-small", "t4-medium", "l4x1", "l4x4", "l40sx1", "l40sx4",
                 "a10g-small", "a10g-large", "a10g-largex2", "a10g-largex4", "a100-large", "h100", "h100x8"):
        assert name in tiers, name
    assert tiers["cpu-basic"]["price_usd_per_h"] == 0
    assert tiers["t4-small"]["peak_tflops"] == 65 and tiers["t4-small"]["bf16"] is False
    assert tiers["l4x4"]["gpu_count"] == 4 and tiers["l4x4"]["gpu_memory_gb"] == 24
    meta = json.loads((ROOT / "finetune/assets/hardware_tiers.json").read_text())
    assert meta["prices_taken"] and meta["source"]
    with pytest.raises(ValueError, match="hardware: unknown tier"):
        get_tier("tpu-v5")


def test_detect_hardware_describes_this_machine():
    hw = detect_hardware()
    assert hw["name"] == "local" and hw["device"] in ("cpu", "cuda")
    assert hw["ram_gb"] > 0 and hw["peak_tflops"] and hw["peak_tflops"] > 0
    if hw["device"] == "cpu":
        assert {"avx512_bf16", "amx", "cpu_cores"} <= set(hw["cpu"])
    assert get_tier("local")["name"] == "local"
    from finetune.hardware import describe

    text = describe(hw)
    assert ("CUDA" in text) if hw["device"] == "cuda" else (f"{hw['vcpu']} cores" in text and "bf16" in text)


def test_import_is_light():
    code = "import sys, finetune.plan; print('torch' in sys.modules, 'gradio' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert r.stdout.split() == ["False", "False"]


def test_unknown_hub_model_reads_its_config_from_the_hub(tmp_path):
    """Online, an unregistered Hub id is sized from its config.json (served here by a loopback Hub)."""
    import http.server
    import subprocess
    import sys
    import threading

    config = {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
              "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000,
              "max_position_embeddings": 2048, "tie_word_embeddings": False}
    body = json.dumps(config).encode()

    class Hub(http.server.BaseHTTPRequestHandler):
        def _answer(self, with_body):
            if not self.path.endswith("/resolve/main/config.json"):
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", '"abc"')
            self.send_header("X-Repo-Commit", "0" * 40)
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_HEAD(self):
            self._answer(False)

        def do_GET(self):
            self._answer(True)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = dict(os.environ, HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}", HF_HUB_OFFLINE="0",
                   HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_XET="1")
        code = ("import json; from finetune.plan import model_spec; "
                "s = model_spec('someone/tiny-llama-like'); print(json.dumps([s['layers'], s['hidden'], s['params']]))")
        out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-1500:]
        layers, hidden, params = json.loads(out.stdout.strip().splitlines()[-1])
        assert (layers, hidden) == (22, 2048) and 1.0e9 < params < 1.2e9  # TinyLlama-1.1B's shape
    finally:
        server.shutdown()
