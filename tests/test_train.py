"""Training on the real tiny model: LoRA weights change, events and files land, stop/resume/NaN work.

Runs `train_run` in this process for speed and determinism; `test_cli_child_process_run` covers the
child-process path the app uses.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent


def _cfg(**train):
    from finetune.config import default_run_config

    base = dict(max_steps=6, epochs=1.0, eval_steps=3, save_steps=3, logging_steps=1)
    base.update(train)
    return default_run_config("builtin:tiny-chat", "builtin:demo", **base)


def _run(cfg, resume=False, run_id=None):
    from finetune.runs import create_run, run_dir
    from finetune.train import train_run

    run_id = run_id or create_run(cfg)
    code = train_run(run_dir(run_id), resume=resume)
    return run_id, code


def _events(run_id):
    from finetune.runs import read_events

    return read_events(run_id)[0]


def test_lora_run_trains_and_writes_the_run_folder(tiny_model_dir):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    from finetune.modeling import load_model
    from finetune.runs import read_status, run_dir

    run_id, code = _run(_cfg())
    d = run_dir(run_id)
    st = read_status(run_id)
    assert code == 0 and st["state"] == "completed", st.get("error")
    assert st["step"] == 6 and st["total_steps"] == 6
    assert sorted(p.name for p in d.iterdir()) == ["README.md", "adapter", "checkpoints", "config.json",
                                                   "events.jsonl", "status.json"]
    assert sorted(p.name for p in (d / "checkpoints").iterdir() if p.is_dir()) == ["checkpoint-3", "checkpoint-6"]
    events = _events(run_id)
    losses = [e["loss"] for e in events if e.get("loss") is not None]
    assert len(losses) >= 6 and all(math.isfinite(x) for x in losses)
    assert any(e.get("eval_loss") is not None for e in events)
    assert set(events[0]) >= {"step", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_s", "elapsed_s"}
    weights = load_file(d / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # lora_B starts at zero: it moved
    model = PeftModel.from_pretrained(load_model("builtin:tiny-chat"), str(d / "adapter"))
    out = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(out).all()
    assert json.loads((d / "config.json").read_text())["train"]["max_steps"] == 6


def test_stop_file_stops_cleanly_and_resume_finishes(tiny_model_dir):
    from finetune.runs import create_run, read_status, run_dir

    cfg = _cfg(max_steps=12, save_steps=2, eval_steps=0)
    run_id = create_run(cfg)
    (run_dir(run_id) / "STOP").write_text("test")  # seen at the end of the first step
    run_id, code = _run(cfg, run_id=run_id)
    st = read_status(run_id)
    assert code == 0 and st["state"] == "stopped" and st["step"] < 12
    assert st["resumable"] and (run_dir(run_id) / "adapter").is_dir()
    assert not (run_dir(run_id) / "STOP").exists()
    run_id, code = _run(cfg, resume=True, run_id=run_id)
    st = read_status(run_id)
    assert code == 0 and st["state"] == "completed" and st["step"] == 12
    steps = [e["step"] for e in _events(run_id) if e.get("loss") is not None]
    assert max(steps) == 12


def test_non_finite_loss_fails_and_keeps_last_checkpoint(tiny_model_dir, monkeypatch):
    import transformers

    from finetune.runs import last_checkpoint, read_status, run_dir

    original, calls = transformers.Trainer.training_step, {"n": 0}

    def poisoned(self, *args, **kwargs):  # the loss turns NaN at the 4th step, as a diverging run does
        calls["n"] += 1
        loss = original(self, *args, **kwargs)
        return loss * float("nan") if calls["n"] >= 4 else loss

    monkeypatch.setattr(transformers.Trainer, "training_step", poisoned)
    run_id, code = _run(_cfg(max_steps=8, save_steps=1, eval_steps=0))
    st = read_status(run_id)
    assert code == 1 and st["state"] == "failed"
    assert "became nan at step 4" in st["error"] and "learning rate" in st["error"]
    assert not (run_dir(run_id) / "adapter").exists()
    assert last_checkpoint(run_id).endswith("checkpoint-3") and st["resumable"]


def test_bad_dataset_fails_with_a_clear_error(tiny_model_dir, tmp_path):
    from finetune.runs import read_status, run_dir

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": ')
    cfg = _cfg()
    cfg.data.source = str(bad)
    run_id, code = _run(cfg)
    st = read_status(run_id)
    assert code == 1 and st["state"] == "failed"
    assert "bad.jsonl" in st["error"] and "line 2" in st["error"]
    assert sorted(p.name for p in run_dir(run_id).iterdir()) == ["config.json", "events.jsonl", "status.json"]


def test_cli_child_process_run(tiny_model_dir):
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-m", "finetune", "train", "--max-steps", "3", "--wait", "--json"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["state"] == "completed" and res["step"] == 3 and res["progress"] == 100.0
    st = subprocess.run([sys.executable, "-m", "finetune", "status", res["run_id"], "--json"], cwd=ROOT, env=env,
                        capture_output=True, text=True, check=True)
    assert json.loads(st.stdout)["state"] == "completed"
    bad = subprocess.run([sys.executable, "-m", "finetune", "status", "no-such-run", "--json"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "no-such-run" in json.loads(bad.stdout)["error"]


def test_killed_child_is_marked_failed_and_resumable(tiny_model_dir):
    import signal
    import time

    from finetune.config import default_run_config
    from finetune.runs import _PROCS, last_checkpoint, list_runs, read_status, start_training, wait

    run_id = start_training(default_run_config(max_steps=400, save_steps=2, eval_steps=0))
    deadline = time.time() + 120
    while time.time() < deadline and last_checkpoint(run_id) is None:
        time.sleep(0.3)
    assert last_checkpoint(run_id) is not None
    os.killpg(_PROCS[run_id].pid, signal.SIGKILL)  # as the OOM killer would
    st = wait(run_id, timeout_s=30)
    assert st["state"] == "failed" and "unexpectedly" in st["error"] and st["resumable"]
    assert [r for r in list_runs() if r["run_id"] == run_id][0]["resumable"]
    assert read_status(run_id)["state"] == "failed"


def test_dpo_on_preference_pairs(tiny_model_dir, tmp_path):
    from finetune.runs import read_status, run_dir

    rows = [{"prompt": f"Is {n} even or odd?", "chosen": "even" if n % 2 == 0 else "odd",
             "rejected": "odd" if n % 2 == 0 else "even"} for n in range(40)]
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = _cfg(method="dpo", max_steps=3, eval_steps=0, save_steps=3, learning_rate=1e-3)
    cfg.data.source = str(path)
    run_id, code = _run(cfg)
    st = read_status(run_id)
    assert code == 0 and st["state"] == "completed", st.get("error")
    assert (run_dir(run_id) / "adapter" / "adapter_config.json").exists()
    assert any(e.get("loss") is not None and math.isfinite(e["loss"]) for e in _events(run_id))


def test_token_never_reaches_the_run_folder(tiny_model_dir):
    from finetune.runs import run_dir, start_training, wait

    token = "hf_" + "Zq9" * 12
    run_id = start_training(_cfg(max_steps=2, eval_steps=0, save_steps=2), env={"HF_TOKEN": token})
    st = wait(run_id, timeout_s=600)
    assert st["state"] == "completed", st.get("error")
    for p in run_dir(run_id).rglob("*"):
        if p.is_file():
            assert token.encode() not in p.read_bytes(), p


def test_second_stop_kills_a_run_that_does_not_stop(tiny_model_dir):
    from finetune.runs import read_status, start_training, stop_run, wait

    run_id = start_training(_cfg(max_steps=100000, eval_steps=0, save_steps=100000))
    assert stop_run(run_id)["state"] == "stopping"  # the child may still be loading: it cannot see STOP yet
    st = stop_run(run_id)
    assert st["state"] == "stopped" and "force" in st["error"]
    assert wait(run_id, timeout_s=30)["state"] == "stopped" and read_status(run_id)["state"] == "stopped"
