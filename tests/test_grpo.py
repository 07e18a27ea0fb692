"""GRPO end to end on a CPU: `finetune train --method grpo --reward ...` through the CLI and the training
child, TRL's GRPOTrainer sampling answers from the real SmolLM2-135M-Instruct and the tiny model.

- A toy verifiable task the real model improves on within a few steps: "answer in a few words", scored
  by the length reward (full reward up to 30 characters). SmolLM2 answers at length, so the first
  steps score low; seeded, the mean reward of the last steps is clearly above the first steps'.
- The reference answer reaches the reward functions (numeric and exact are scored, not None), the
  events carry reward, reward per function, completion length and KL next to the loss, and the
  adapter is saved.
- A reward file is refused in public mode before anything runs; bad rewards are one line naming the setting.

Run: `python -m pytest tests/test_grpo.py -q` (about five minutes on 2 busy CPU cores). Measured: the mean
reward per step went 0.43, 0.45, 0.56, 0.84, 0.86, 0.98 (answers 25 -> 8 tokens).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

QUESTIONS = ["What colour is the sky on a clear day?", "Name a fruit that is yellow.", "What is the capital of Italy?",
             "Which animal says moo?", "What do bees make?", "Name the largest ocean.",
             "What is frozen water called?", "Which planet do we live on?"]


def _cli(*args, env=None, cwd=ROOT):
    e = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "finetune", *args], cwd=cwd, env=e, capture_output=True,
                          text=True, timeout=900)


def _events(run_dir: str) -> list[dict]:
    lines = (Path(run_dir) / "events.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if x.strip()]


@pytest.mark.slow
def test_grpo_reward_rises_on_the_real_model(tmp_path, smollm2_dir):
    data = tmp_path / "short.jsonl"
    data.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in QUESTIONS))
    out = _cli("train", "--model", "builtin:smollm2-135m-instruct", "--data", str(data), "--method", "grpo",
               "--reward", "length", "--grpo-length-max-chars", "30", "--grpo-num-generations", "4",
               "--grpo-max-completion-len", "32", "--grpo-beta", "0.02", "--batch-size", "8", "--lr", "1e-3",
               "--lora-r", "16", "--max-steps", "6", "--logging-steps", "1", "--save-steps", "100",
               "--warmup-ratio", "0", "--lr-scheduler", "constant", "--seed", "3", "--data-val-ratio", "0",
               "--wait", "--timeout-s", "850", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout)
    assert res["state"] == "completed", res.get("error")
    ev = [e for e in _events(res["run_dir"]) if e.get("reward") is not None]
    assert len(ev) == 6
    for e in ev:  # the live view's numbers, next to the loss
        assert e["loss"] is not None and set(e["rewards"]) == {"length"} and e["completion_len"] > 0
        assert e["kl"] is not None
    rewards = [e["reward"] for e in ev]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    print(f"GRPO length reward per step: {[round(r, 3) for r in rewards]}; first 3 {first:.3f} -> last 3 {last:.3f}")
    assert last > first + 0.1, rewards
    lengths = [e["completion_len"] for e in ev]
    assert sum(lengths[-3:]) < sum(lengths[:3])  # shorter answers are what the reward asked for
    run = Path(res["run_dir"])
    assert (run / "adapter" / "adapter_config.json").exists()
    st = json.loads((run / "status.json").read_text())
    assert st["reward"] == ev[-1]["reward"] and st["data_summary"]["generations_per_prompt"] == 4


def test_grpo_reference_reaches_the_rewards(tmp_path, tiny_model_dir):
    data = tmp_path / "sums.jsonl"
    rows = [{"question": f"What is {a} + {b}? Answer with the number.", "solution": str(a + b)}
            for a in range(1, 5) for b in range(1, 4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = _cli("train", "--data", str(data), "--method", "grpo", "--reward", "numeric,exact,format",
               "--reward-weights", "1,0.5,0.2", "--grpo-format-regex", r"\d", "--grpo-num-generations", "2",
               "--grpo-max-completion-len", "8", "--batch-size", "4", "--max-steps", "2", "--logging-steps", "1",
               "--save-steps", "100", "--wait", "--timeout-s", "500", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout)
    assert res["state"] == "completed", res.get("error")
    cfg = json.loads((Path(res["run_dir"]) / "config.json").read_text())
    assert cfg["grpo"]["reward"] == "numeric,exact,format" and cfg["grpo"]["reward_weights"] == "1,0.5,0.2"
    ev = [e for e in _events(res["run_dir"]) if e.get("reward") is not None]
    assert ev and set(ev[-1]["rewards"]) == {"numeric", "exact", "format"}
    for e in ev:  # scored against the reference: a number, never None (None = the column did not arrive)
        assert all(isinstance(v, float) for v in e["rewards"].values()), e


def test_cli_refusals_are_one_line(tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"prompt": "hi"}) + "\n" + json.dumps({"prompt": "bye"}) + "\n")
    rf = tmp_path / "r.py"
    marker = tmp_path / "ran"
    rf.write_text(f"open({str(marker)!r}, 'w').write('x')\ndef reward_a(completions, **kw):\n    return [1.0]\n")
    out = _cli("train", "--data", str(data), "--method", "grpo", "--reward", "length", "--reward-file", str(rf),
               "--batch-size", "4", "--json", env={"FINETUNE_PUBLIC": "1"})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "custom reward code is not allowed on a public app" in json.loads(out.stdout)["error"]
    assert not marker.exists()
    out = _cli("train", "--data", str(data), "--method", "grpo", "--reward", "exact", "--batch-size", "4", "--json")
    assert out.returncode == 2 and "grpo.reward: exact compare with a reference answer" in json.loads(out.stdout)["error"]
    out = _cli("train", "--method", "grpo", "--reward", "bleu", "--json")
    assert out.returncode == 2 and "unknown reward 'bleu'" in json.loads(out.stdout)["error"]


def test_grpo_continues_a_finished_sft_run(tmp_path, tiny_model_dir):
    """GRPO after SFT: the SFT run's adapter trains on, its frozen copy is the KL reference."""
    sft = json.loads(_cli("train", "--max-steps", "2", "--save-steps", "100", "--eval-steps", "0", "--max-seq-len", "64",
                          "--lora-r", "4", "--wait", "--timeout-s", "500", "--json").stdout)
    assert sft["state"] == "completed", sft.get("error")
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Say {w}."}) + "\n" for w in ("hi", "yes", "no", "ok")))
    out = _cli("train", "--data", str(data), "--method", "grpo", "--init-from-run", sft["run_id"], "--reward", "length",
               "--grpo-beta", "0.1", "--grpo-num-generations", "2", "--grpo-max-completion-len", "6", "--batch-size",
               "4", "--max-steps", "1", "--logging-steps", "1", "--lora-r", "4", "--wait", "--timeout-s", "500", "--json")
    res = json.loads(out.stdout)
    assert res["state"] == "completed", res.get("error") or out.stderr[-2000:]
    adapter = Path(res["run_dir"]) / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4  # the SFT run's adapter, trained on
    assert not (adapter / "ref").exists()  # only the trained adapter is saved, not the frozen reference
    assert [e for e in _events(res["run_dir"]) if e.get("kl") is not None]
