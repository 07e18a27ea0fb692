"""GRPO's parts without training: the reward functions, prompt-row detection, config validation, the
reward file (allowed locally, refused in public mode), the preflight of a GRPO run, the Plan's figures.

Run: `python -m pytest tests/test_rewards.py -q` (a few seconds; no model is trained).
"""

import json

import pytest

from finetune.config import ConfigError, GrpoConfig, build_run_config
from finetune.data.common import DatasetError
from finetune.data.prompts import prompt_rows
from finetune.rewards import (RewardError, build_rewards, exact_reward, json_reward, last_number, length_reward,
                              load_reward_file, numeric_reward, parse_weights)


def test_exact_and_numeric_against_the_reference():
    comps = ["Paris.", "  paris ", "Lyon", [{"role": "assistant", "content": "PARIS!"}]]
    assert exact_reward(comps, answer=["Paris"] * 4) == [1.0, 1.0, 0.0, 1.0]
    assert exact_reward(["x"]) == [None]  # no reference: cannot score
    assert last_number("It costs $1,234.50 in total, not 7") == 7.0
    assert last_number("The answer is 1,234.50") == 1234.5 and last_number("none") is None
    got = numeric_reward(["The total is 1,234.", "so 1234.0", "#### 42", "about 1233", "no idea"],
                         answer=["1234", "1234", "The answer: #### 42", "1234", "3"])
    assert got == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert numeric_reward(["5"], answer=["no number here"]) == [None]


def test_format_json_and_length():
    funcs, weights = build_rewards(GrpoConfig(reward="format", format_regex=r"^Answer: \d+$"))
    assert funcs[0].__name__ == "format" and weights is None
    assert funcs[0](["Answer: 12", "answer: 12", "Answer: twelve"]) == [1.0, 0.0, 0.0]
    schema = {"type": "object", "required": ["name", "age"], "properties": {"age": {"type": "integer"}}}
    j = json_reward(schema)
    scores = j(['{"name": "a", "age": 3}', 'Sure: ```json\n{"name": "a", "age": "3"}\n```', '{"name": "a"}',
                "not json", "[1, 2]"])
    assert scores[0] == 1.0 and 0.5 < scores[1] < 1.0 and 0.5 < scores[2] < 1.0 and scores[3] == 0.0
    assert scores[4] == 0.5  # valid JSON, wrong type: no other check can pass
    assert json_reward(None)(['{"a": 1}', "{a: 1}"]) == [1.0, 0.0]
    ln = length_reward(5, 10)
    assert ln(["abc", "abcdefg", "a" * 15, "a" * 30]) == pytest.approx([0.6, 1.0, 2 / 3, 1 / 3])


def test_weights_and_names_are_checked():
    funcs, weights = build_rewards(GrpoConfig(reward="exact,length", reward_weights="1, 0.5"))
    assert [f.__name__ for f in funcs] == ["exact", "length"] and weights == [1.0, 0.5]
    with pytest.raises(RewardError, match="2 weights for 1"):
        parse_weights("1,2", 1)
    with pytest.raises(ConfigError, match="grpo.reward: unknown reward 'bleu'"):
        GrpoConfig(reward="exact,bleu")
    with pytest.raises(ConfigError, match="grpo.reward_weights"):
        GrpoConfig(reward="exact", reward_weights="1,2")
    with pytest.raises(ConfigError, match="grpo.format_regex: is not a valid regular expression"):
        GrpoConfig(reward="format", format_regex="(unclosed")
    with pytest.raises(ConfigError, match="grpo.json_schema: is not valid JSON"):
        GrpoConfig(reward="json", json_schema="{type: object}")
    with pytest.raises(ConfigError, match="grpo.num_generations"):
        GrpoConfig(num_generations=1)
    with pytest.raises(ConfigError, match="train.batch_size: GRPO's batch counts sampled answers"):
        from finetune.config import to_grpo_config
        to_grpo_config(build_run_config(overrides={"train": {"method": "grpo", "batch_size": 6},
                                                   "grpo": {"num_generations": 4}}), "/tmp/x")


def test_reward_file_locally_and_refused_in_public_mode(tmp_path, monkeypatch):
    f = tmp_path / "my_rewards.py"
    f.write_text("def reward_has_yes(completions, **kw):\n    return [float('yes' in str(c)) for c in completions]\n"
                 "def helper():\n    return 1\n")
    funcs = load_reward_file(str(f))
    assert [fn.__name__ for fn in funcs] == ["reward_has_yes"] and funcs[0](["yes", "no"]) == [1.0, 0.0]
    funcs, weights = build_rewards(GrpoConfig(reward="length", reward_file=str(f), reward_weights="1,2"))
    assert [fn.__name__ for fn in funcs] == ["length", "reward_has_yes"] and weights == [1.0, 2.0]
    (tmp_path / "none.py").write_text("x = 1\n")
    with pytest.raises(RewardError, match="defines no function"):
        load_reward_file(str(tmp_path / "none.py"))
    monkeypatch.setenv("SPACE_ID", "someone/space")
    marker = tmp_path / "ran"
    f.write_text(f"open({str(marker)!r}, 'w').write('ran')\ndef reward_x(completions, **kw):\n    return [0.0]\n")
    with pytest.raises(RewardError, match="grpo.reward_file: custom reward code is not allowed on a public app"):
        load_reward_file(str(f))
    assert not marker.exists()  # the file's code never ran


def test_prompt_rows_detect_prompts_and_references():
    rows, info = prompt_rows([{"question": "2+2?", "solution": "4"}, {"question": "3+3?", "solution": 6}])
    assert info["with_reference"] and rows[1] == {"prompt": [{"role": "user", "content": "3+3?"}], "answer": "6"}
    rows, info = prompt_rows([{"prompt": "Say hi"}, {"prompt": [{"role": "user", "content": "Say bye"}]}])
    assert not info["with_reference"] and rows[0] == {"prompt": [{"role": "user", "content": "Say hi"}]}
    rows, _ = prompt_rows([{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}])
    assert rows[0] == {"prompt": [{"role": "user", "content": "q"}], "answer": "a"}
    rows, _ = prompt_rows([{"instruction": "Add", "input": "1 and 2", "output": "3", "system": "Be short."}])
    assert rows[0]["prompt"][0]["role"] == "system" and rows[0]["prompt"][1]["content"] == "Add\n\n1 and 2"
    with pytest.raises(DatasetError, match="row 2.*no reference answer"):
        prompt_rows([{"prompt": "a", "answer": "1"}, {"prompt": "b"}], "mix.jsonl")
    with pytest.raises(DatasetError, match="bad.jsonl row 1: no prompt"):
        prompt_rows([{"text": "just text"}], "bad.jsonl")


def test_preflight_of_a_grpo_run(tmp_path, tiny_model_dir, monkeypatch):
    from finetune.preflight import PreflightError, preflight

    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Say {i}"}) + "\n" for i in range(20)))
    cfg = build_run_config(source=str(data), overrides={"train": {"method": "grpo", "batch_size": 4},
                                                        "grpo": {"reward": "length"}})
    got = preflight(cfg)["data"]
    assert got["kind"] == "prompt" and got["rewards"] == ["length"] and not got["with_reference"]
    cfg = build_run_config(source=str(data), overrides={"train": {"method": "grpo", "batch_size": 4},
                                                        "grpo": {"reward": "exact"}})
    with pytest.raises(PreflightError, match="grpo.reward: exact compare with a reference answer"):
        preflight(cfg)
    rf = tmp_path / "r.py"
    rf.write_text("def reward_a(completions, **kw):\n    return [1.0 for _ in completions]\n")
    cfg = build_run_config(source=str(data), overrides={"train": {"method": "grpo", "batch_size": 4},
                                                        "grpo": {"reward": "length", "reward_file": str(rf)}})
    monkeypatch.setenv("SPACE_ID", "someone/space")
    with pytest.raises(PreflightError, match="grpo.reward_file: custom reward code is not allowed"):
        preflight(cfg)


def test_plan_knows_grpo_memory_time_and_fit():
    from finetune.plan import PlanRequest, plan

    base = dict(model="HuggingFaceTB/SmolLM2-135M-Instruct", method="grpo", examples=200, seq_len=256, hardware="t4-small",
                grpo_generations=8, grpo_completion_len=128)
    p = plan(PlanRequest(**base))
    g = p["grpo"]["estimate"]
    assert p["training_method"] == "grpo" and p["time_s"] == g["seconds"] and g["generation_s"] > 0
    assert g["completions"] == 200 * 8  # one epoch of 200 prompts, 8 answers each
    assert "finetune train" in p["trl_command"] and "--method grpo" in p["trl_command"]
    more = plan(PlanRequest(**{**base, "grpo_generations": 16}))
    longer = plan(PlanRequest(**{**base, "grpo_completion_len": 512}))
    kl = plan(PlanRequest(**{**base, "grpo_beta": 0.04}))
    assert more["time_s"] > p["time_s"] and longer["time_s"] > p["time_s"] and longer["vram_gb"] > p["vram_gb"]
    assert kl["time_s"] > p["time_s"] and kl["vram_gb"] == p["vram_gb"]  # LoRA: the reference is the adapter off
    assert "reference model: none (beta = 0)" in " ".join(p["reasons"])
    math_task = plan(PlanRequest(model="HuggingFaceTB/SmolLM2-135M-Instruct", examples=2000,
                                 task="Solve grade-school math word problems; the answer is a number"))
    assert math_task["grpo"]["recommended"] and math_task["training_method"] != "grpo"  # SFT first
    assert any("GRPO fits" in r and "SFT (LoRA) first" in r for r in math_task["reasons"])
    chat = plan(PlanRequest(model="HuggingFaceTB/SmolLM2-135M-Instruct", task="Chat in a warm persona", task_type="chat"))
    assert not chat["grpo"]["recommended"] and not any("GRPO fits" in r for r in chat["reasons"])
