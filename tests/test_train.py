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

import pytest


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
    assert sorted(p.name for p in d.iterdir()) == ["README.md", "adapter", "checkpoints", "config.json", "data",
                                                   "events.jsonl", "status.json"]  # data/: the validation snapshot
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
    _assert_speed_fields(st)


def _assert_speed_fields(st):
    """Threads chosen by timing the first steps, phases and MFU recorded (issue 17)."""
    from finetune.modeling import process_cores
    from finetune.speed import ROUNDS, WARMUP_STEPS, thread_candidates

    cores = process_cores()[0]
    assert 1 <= st["threads"] <= cores and st["threads_why"]
    if len(thread_candidates(cores)) > 1 and st["step"] >= WARMUP_STEPS + ROUNDS * len(thread_candidates(cores)):
        assert ("the fastest in the last measured steps" in st["threads_why"]
                or "slower trial steps on fewer threads were skipped" in st["threads_why"])
        assert "µs/token" in st["threads_why"]
    phases = st["phases_s"]
    assert {"setup", "imports", "model_load", "data", "trainer_setup", "train", "final_eval", "save"} <= set(phases)
    assert all(v >= 0 for v in phases.values()) and phases["train"] > 0
    assert 0 < st["mfu"] < 1 and st["tokens_per_s"] > 0


def test_stop_file_stops_cleanly_and_resume_finishes(tiny_model_dir):
    from finetune.runs import create_run, read_status, run_dir

    import threading

    from finetune.paths import read_json

    cfg = _cfg(max_steps=12, save_steps=2, eval_steps=0)
    run_id = create_run(cfg)
    d = run_dir(run_id)

    def stop_after_first_step():  # as the Stop button does, while training runs
        if _wait_for(lambda: (read_json(d / "status.json", {}) or {}).get("step", 0) >= 1, every=0.05):
            (d / "STOP").write_text("test")

    threading.Thread(target=stop_after_first_step, daemon=True).start()
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
    from finetune.runs import read_status

    phases = read_status(res["run_id"])["phases_s"]  # a process of its own: its start-up counts too
    assert phases["start_and_imports"] > 0 and phases["imports"] > 0 and phases["train"] > 0
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
    from finetune.runs import CHILDREN, last_checkpoint, list_runs, read_status, start_training, wait

    run_id = start_training(default_run_config(max_steps=400, save_steps=2, eval_steps=0))
    deadline = time.time() + 120
    while time.time() < deadline and last_checkpoint(run_id) is None:
        time.sleep(0.3)
    assert last_checkpoint(run_id) is not None
    os.killpg(CHILDREN[run_id].pid, signal.SIGKILL)  # as the OOM killer would
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


def test_second_plain_stop_does_not_kill_and_force_stop_does(tiny_model_dir):
    import time

    from finetune.runs import CHILDREN, read_status, start_training, stop_run, wait

    run_id = start_training(_cfg(max_steps=100000, eval_steps=0, save_steps=100000))
    proc = CHILDREN[run_id]
    assert stop_run(run_id)["state"] == "stopping"
    assert stop_run(run_id)["state"] == "stopping"  # a double click only asks again
    time.sleep(0.5)
    assert proc.poll() is None or read_status(run_id)["state"] == "stopped"
    if proc.poll() is None:  # still loading or mid-step: force is the explicit kill
        st = stop_run(run_id, force=True)
        assert st["state"] == "stopped" and "force" in st["error"] and proc.poll() is not None
    assert wait(run_id, timeout_s=60)["state"] == "stopped"


def test_stop_while_loading_ends_stopped_without_training(tiny_model_dir):
    from finetune.runs import create_run, read_status, run_dir

    run_id = create_run(_cfg(max_steps=50))
    (run_dir(run_id) / "STOP").write_text("before the first step")
    _run(_cfg(), run_id=run_id)
    st = read_status(run_id)
    assert st["state"] == "stopped" and not st["resumable"] and not _events(run_id)


def test_non_finite_loss_is_caught_between_logging_steps(tiny_model_dir, monkeypatch):
    import transformers

    from finetune.runs import last_checkpoint, read_status, run_dir

    original, calls = transformers.Trainer.training_step, {"n": 0}

    def poisoned(self, *args, **kwargs):  # one NaN micro-batch at step 5; logging happens every 4 steps only
        calls["n"] += 1
        loss = original(self, *args, **kwargs)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(transformers.Trainer, "training_step", poisoned)
    run_id, code = _run(_cfg(max_steps=12, save_steps=1, eval_steps=0, logging_steps=4))
    st = read_status(run_id)
    assert code == 1 and st["state"] == "failed" and "loss became nan at step 5" in st["error"]
    assert st["step"] <= 5 and st["bad_from_step"] == 5
    names = sorted(p.name for p in (run_dir(run_id) / "checkpoints").iterdir())
    assert "checkpoint-5" not in names and last_checkpoint(run_id).endswith("checkpoint-4")


def test_non_finite_grad_norm_is_caught(tiny_model_dir, monkeypatch):
    from finetune import train as train_mod
    from finetune.runs import last_checkpoint, read_status

    original = train_mod.NonFiniteGuard._maybe_log_save_evaluate

    def inf_norm(self, tr_loss, grad_norm, *args, **kwargs):  # an exploding gradient at step 3
        return original(self, tr_loss, float("inf") if self.state.global_step == 3 else grad_norm, *args, **kwargs)

    monkeypatch.setattr(train_mod.NonFiniteGuard, "_maybe_log_save_evaluate", inf_norm)
    run_id, code = _run(_cfg(max_steps=8, save_steps=1, eval_steps=0, logging_steps=5))
    st = read_status(run_id)
    assert code == 1 and "grad_norm became inf at step 3" in st["error"]
    assert last_checkpoint(run_id).endswith("checkpoint-2")


def _wait_for(pred, timeout=180, every=0.3):
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(every)
    return False


def test_kill_9_then_resume_reaches_the_same_final_step(tiny_model_dir):
    import signal

    from finetune.runs import CHILDREN, last_checkpoint, read_status, run_dir, start_run, start_training, wait

    run_id = start_training(_cfg(max_steps=16, save_steps=3, eval_steps=0, logging_steps=1))
    assert _wait_for(lambda: (read_status(run_id).get("step") or 0) >= 5)
    os.killpg(CHILDREN[run_id].pid, signal.SIGKILL)
    st = wait(run_id, timeout_s=30)
    assert st["state"] == "failed" and st["resumable"]
    ck_step = int(last_checkpoint(run_id).rsplit("-", 1)[1])
    logged = [e["step"] for e in _events(run_id)]
    gen = st.get("events_generation") or 0
    start_run(run_id, resume=True)
    with pytest.raises(Exception, match="already"):
        start_run(run_id, resume=True)  # a second click while it runs starts nothing
    st = wait(run_id, timeout_s=600)
    assert st["state"] == "completed" and st["step"] == 16, st.get("error")
    assert st["resumed_from_step"] == ck_step and st["events_generation"] == gen + 1
    steps = [e["step"] for e in _events(run_id) if e.get("loss") is not None]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) and steps[-1] == 16  # no step back
    assert max(logged) >= ck_step  # the kill happened after the checkpoint: those events were dropped
    assert json.loads((run_dir(run_id) / "checkpoints" / "checkpoint-16" / "trainer_state.json").read_text())[
        "global_step"] == 16


def test_queue_runs_one_at_a_time_and_survives_a_restart(tiny_model_dir):
    from finetune import runs

    first = runs.start_training(_cfg(max_steps=6, save_steps=6, eval_steps=0))
    second = runs.start_training(_cfg(max_steps=2, save_steps=2, eval_steps=0))
    st2 = runs.status_summary(second)
    assert st2["state"] == "queued" and st2["queue_position"] == 1 and st2["pid"] is None
    assert runs.read_status(first)["pid"] and second not in runs.CHILDREN
    with pytest.raises(runs.RunError, match="queue"):
        runs.start_run(second)  # already waiting
    runs._PENDING_ENV.clear()  # as after an app restart: only what is on disk remains
    assert [r for r in runs.list_runs() if r["run_id"] == second][0]["queue_position"] == 1
    st1 = runs.wait(first, timeout_s=600)
    assert st1["state"] == "completed", st1.get("error")
    # The first child launched the second when it ended (no app process was needed for that).
    assert _wait_for(lambda: runs.read_status(second).get("pid"), timeout=30)
    st2 = runs.wait(second, timeout_s=600)
    assert st2["state"] == "completed", st2.get("error")
    assert st2["started"] >= st1["finished"]


def test_stop_removes_a_waiting_run_from_the_queue_and_delete(tiny_model_dir):
    from finetune import runs

    first = runs.start_training(_cfg(max_steps=100000, save_steps=100000, eval_steps=0))
    second = runs.start_training(_cfg(max_steps=2))
    with pytest.raises(runs.RunError, match="stop it"):
        runs.delete_run(first)
    st = runs.stop_run(second)
    assert st["state"] == "stopped" and not st.get("waiting")
    runs.stop_run(first, force=True)
    assert runs.wait(first, timeout_s=30)["state"] == "stopped"
    assert runs.delete_run(second) == {"run_id": second, "deleted": True}
    assert second not in [r["run_id"] for r in runs.list_runs()]
    with pytest.raises(runs.RunError):
        runs.read_status(second)
    assert not [p for p in runs.runs_dir().iterdir() if p.name.startswith(".deleting")]


def test_poll_reads_events_incrementally(tiny_model_dir):
    from finetune.runs import append_event, create_run, poll, run_dir, update_status

    run_id = create_run(_cfg())
    d = run_dir(run_id)
    append_event(d, {"step": 1, "loss": 2.0})
    first = poll(run_id)
    assert [e["step"] for e in first["events"]] == [1] and not first["reset"]
    assert set(first["status"]) >= {"state", "step", "total_steps", "loss", "eval_loss", "queue_position", "pid",
                                    "backend"}
    append_event(d, {"step": 2, "loss": 1.5})
    with open(d / "events.jsonl", "a") as f:
        f.write('{"step": 3, "lo')  # a line still being written is not read yet
    nxt = poll(run_id, first["offset"], first["generation"])
    assert [e["step"] for e in nxt["events"]] == [2] and not nxt["reset"]
    update_status(d, events_generation=1)  # a resume rewrote the log
    again = poll(run_id, nxt["offset"], nxt["generation"])
    assert again["reset"] and [e["step"] for e in again["events"]] == [1, 2]
