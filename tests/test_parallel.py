"""Several processes on one machine: two CPU ranks (gloo) through `accelerate launch` on the demo model.

Checks the run folder is the same as a single process's (one writer: every step logged once), the
adapter loads, Stop reaches both ranks through the shared decision, and `kill -9` of the launcher
takes the ranks with it. Preset checks and the choice of preset are unit tests.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CPU = {"device": "cpu", "gpu_count": 0}


def _cfg(**train):
    from finetune.config import default_run_config

    base = dict(max_steps=4, epochs=1.0, eval_steps=0, save_steps=2, logging_steps=1, num_processes=2)
    base.update(train)
    return default_run_config("builtin:tiny-chat", "builtin:demo", **base)


def _gone(pids, timeout_s=30.0) -> bool:
    from finetune.runs import pid_alive

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if not any(pid_alive(int(p)) for p in pids):
            return True
        time.sleep(0.2)
    return False


def _wait_for(run_id, cond, timeout_s=240.0) -> dict:
    from finetune.runs import read_status

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        st = read_status(run_id)
        if cond(st):
            return st
        assert st["state"] in ("queued", "running", "stopping"), st
        time.sleep(0.3)
    raise AssertionError(f"timed out: {read_status(run_id)}")


def test_two_cpu_processes_train_one_run_folder(tiny_model_dir):
    from peft import PeftModel

    from finetune.modeling import load_model
    from finetune.runs import read_events, read_status, run_dir, start_training, wait

    run_id = start_training(_cfg())
    st = wait(run_id, timeout_s=400)
    d = run_dir(run_id)
    assert st["state"] == "completed", (st.get("error"), (d / "train.log").read_text()[-3000:])
    assert st["world_size"] == 2 and st["launch"]["preset"] == "ddp" and "gloo" in st["launch"]["reason"]
    assert len(set(st["rank_pids"])) == 2 and st["pid"] not in st["rank_pids"]  # the launcher stands for the run
    assert st["step"] == 4 and st["total_steps"] == 4
    events, _ = read_events(run_id)
    steps = [e["step"] for e in events if e.get("loss") is not None]
    assert steps == [1, 2, 3, 4]  # one writer: each step once
    assert all(math.isfinite(e["loss"]) for e in events if e.get("loss") is not None)
    # Data parallel for real: each step consumed 2 ranks x 8 rows of the 414 training rows.
    assert events[0]["epoch"] == pytest.approx(1 / math.ceil(414 / 16), abs=1e-3)
    assert {"README.md", "adapter", "checkpoints", "config.json", "data", "events.jsonl", "status.json",
            "train.log"} == {p.name for p in d.iterdir()}  # data/: the validation snapshot create_run keeps
    assert (d / "checkpoints" / "checkpoint-4" / "trainer_state.json").exists()
    model = PeftModel.from_pretrained(load_model("builtin:tiny-chat"), str(d / "adapter"))
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())


def test_stop_reaches_every_rank_and_kill9_of_the_launcher_takes_them_along(tiny_model_dir):
    from finetune.runs import last_checkpoint, read_status, run_dir, start_training, stop_run, wait

    # Clean stop: the ranks agree on the step, save, and the run ends `stopped` with its adapter.
    run_id = start_training(_cfg(max_steps=5000, save_steps=5000))
    st = _wait_for(run_id, lambda s: (s.get("step") or 0) >= 2 and len(s.get("rank_pids") or []) == 2)
    ranks = st["rank_pids"]
    stop_run(run_id)
    st = wait(run_id, timeout_s=120)
    assert st["state"] == "stopped", st
    assert (run_dir(run_id) / "adapter" / "adapter_config.json").exists()
    assert last_checkpoint(run_id) is not None
    assert _gone(ranks + [st["pid"]])

    # kill -9 of the launcher alone: torchrun starts ranks in sessions of their own, PDEATHSIG ends them.
    run_id = start_training(_cfg(max_steps=5000, save_steps=5000))
    st = _wait_for(run_id, lambda s: (s.get("step") or 0) >= 1 and len(s.get("rank_pids") or []) == 2)
    os.kill(int(st["pid"]), signal.SIGKILL)
    assert _gone(st["rank_pids"], timeout_s=20), "a rank outlived its launcher"
    # The ranks die with their launcher's first thread; the launcher's other threads may still be
    # exiting for a moment (its /proc state not yet Z): the run is failed once it is gone too.
    assert _gone([st["pid"]], timeout_s=20), "the launcher did not exit after kill -9"
    assert read_status(run_id)["state"] == "failed"


def test_presets_that_cannot_run_here_say_why():
    from finetune.parallel import ParallelError, check_preset, deepspeed_installed

    with pytest.raises(ParallelError, match="needs CUDA GPUs.*only ddp"):
        check_preset("fsdp", 2, CPU)
    gpu2 = {"device": "cuda", "gpu_count": 2, "gpu_memory_gb": 80}
    if not deepspeed_installed():
        for p in ("zero2", "zero3", "zero3-offload"):
            with pytest.raises(ParallelError, match="needs DeepSpeed, which is not installed.*pip install deepspeed"):
                check_preset(p, 2, gpu2)
    with pytest.raises(ParallelError, match="num_processes: 4 processes but this machine has 2 GPUs"):
        check_preset("ddp", 4, gpu2)
    check_preset("fsdp", 2, gpu2)
    check_preset("ddp", 2, gpu2)


def test_presets_are_valid_accelerate_configs():
    from accelerate.commands.config.config_args import load_config_from_file

    from finetune.parallel import PRESETS, preset_path

    kinds = {}
    for name in PRESETS:
        c = load_config_from_file(str(preset_path(name)))
        kinds[name] = c.distributed_type.value
        if name.startswith("zero"):
            assert c.deepspeed_config["zero_stage"] == int(name[4])
            assert (c.deepspeed_config["offload_optimizer_device"] == "cpu") == name.endswith("offload")
    assert kinds == {"ddp": "MULTI_GPU", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED", "zero3-offload": "DEEPSPEED",
                     "fsdp": "FSDP"}


def test_launch_command_and_cpu_choice(tmp_path):
    from finetune.parallel import choose_preset, launch_command

    cfg = _cfg()
    assert choose_preset(_cfg(num_processes=1), CPU)[0] is None
    cmd, launch = launch_command(tmp_path, cfg, resume=True, hw=CPU)
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--config_file") + 1].endswith("assets/accelerate/ddp.yaml")
    assert cmd[cmd.index("--num_processes") + 1] == "2" and cmd[cmd.index("--mixed_precision") + 1] == "no"
    assert cmd[-5:] == ["finetune", "train", "--run", str(tmp_path), "--resume"]
    assert launch == {"preset": "ddp", "num_processes": 2, "reason": launch["reason"]} and "CPU" in launch["reason"]


def test_cli_refuses_a_gpu_preset_on_cpu_before_any_run_folder(home):
    runs_before = set(os.listdir(home / "runs")) if (home / "runs").exists() else set()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "finetune", "train", "--num-processes", "2", "--accelerate-preset",
                        "fsdp", "--max-steps", "2", "--json"], capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    assert "needs CUDA GPUs" in json.loads(r.stdout)["error"]
    runs_after = set(os.listdir(home / "runs")) if (home / "runs").exists() else set()
    assert runs_after == runs_before


def test_config_fields_validate():
    from finetune.config import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match="train.num_processes"):
        TrainConfig(num_processes=0)
    with pytest.raises(ConfigError, match="train.accelerate_preset"):
        TrainConfig(accelerate_preset="zero9")


def test_train_api_refuses_more_processes_than_cores(home):
    import gradio as gr

    from ui import train_tab

    before = set(os.listdir(home / "runs")) if (home / "runs").exists() else set()
    with pytest.raises(gr.Error, match="num_processes"):
        train_tab.train_api("builtin:tiny-chat", "builtin:demo", "lora", 2e-3, 1, 8, 256, 16, num_processes=999)
    assert (set(os.listdir(home / "runs")) if (home / "runs").exists() else set()) == before


def test_planner_divides_what_each_preset_shards():
    from finetune.plan import estimate_memory, model_spec

    spec = model_spec("meta-llama/Llama-3.1-8B-Instruct")
    est = {p: estimate_memory(spec, "full", 2048, 1, shards=8, preset=p)
           for p in ("ddp", "zero2", "zero3", "zero3-offload", "fsdp")}
    b = {p: e["breakdown"] for p, e in est.items()}
    assert b["ddp"] == estimate_memory(spec, "full", 2048, 1)["breakdown"]  # nothing sharded
    assert b["zero2"]["weights"] == b["ddp"]["weights"]  # ZeRO-2 keeps the weights whole
    assert b["zero2"]["optimizer"] == pytest.approx(b["ddp"]["optimizer"] / 8, rel=1e-2)
    assert b["zero2"]["trainable_and_grads"] == pytest.approx(b["ddp"]["trainable_and_grads"] / 8, rel=1e-2)
    assert b["zero3"] == b["fsdp"] and b["zero3"]["weights"] == pytest.approx(b["ddp"]["weights"] / 8, rel=1e-2)
    assert b["zero3-offload"]["optimizer"] == 0 and est["zero3-offload"]["cpu_offload_gb"] == pytest.approx(b["zero3"]["optimizer"] + b["zero3"]["weights"] - b["zero3-offload"]["weights"], abs=0.01)
    assert b["zero3"]["activations"] == b["ddp"]["activations"]  # activations are per process, never sharded
    totals = [est[p]["total_gb"] for p in ("ddp", "zero2", "zero3", "zero3-offload")]
    assert totals == sorted(totals, reverse=True)


def test_auto_preset_follows_the_memory_estimate(monkeypatch):
    from finetune import parallel
    from finetune.config import default_run_config

    def cfg(model, method, n):
        c = default_run_config(model, "builtin:demo", method=method, num_processes=n, batch_size=1)
        c.data.max_seq_len = 2048
        return c

    h100x8 = {"device": "cuda", "gpu_count": 8, "gpu_memory_gb": 80, "bf16": True}
    preset, why = parallel.choose_preset(cfg("meta-llama/Llama-3.1-8B-Instruct", "lora", 8), h100x8)
    assert preset == "ddp" and "fits" in why
    monkeypatch.setattr(parallel, "deepspeed_installed", lambda: False)
    preset, why = parallel.choose_preset(cfg("meta-llama/Llama-3.1-8B-Instruct", "full", 8), h100x8)
    assert preset == "fsdp" and "more than" in why and "8 GPUs" in why
    monkeypatch.setattr(parallel, "deepspeed_installed", lambda: True)  # the lightest sharding that fits
    preset, why = parallel.choose_preset(cfg("meta-llama/Llama-3.1-8B-Instruct", "full", 8), h100x8)
    assert preset == "zero2"
    cmd, launch = parallel.launch_command("/tmp/run", cfg("meta-llama/Llama-3.1-8B-Instruct", "full", 8), hw=h100x8)
    assert cmd[cmd.index("--config_file") + 1].endswith("zero2.yaml") and cmd[cmd.index("--mixed_precision") + 1] == "bf16"
