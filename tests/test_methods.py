"""Every training method trains a few steps on the real tiny model: loss finite, trained parameters
moved, the expected files land. Also: precision and backend choices, QLoRA on the CPU, DPO on top of
a finished SFT run's adapter, report_to=tensorboard and trackio, and the `gpu` tests (Unsloth, QLoRA on CUDA,
fp16 with a loss scaler) that run only where a CUDA GPU is present.

Runs `train_run` in this process (fast, and the trainer object can be inspected).
"""

import json
import math
from pathlib import Path

import pytest


def _cfg(method, source="builtin:demo", **train):
    from finetune.config import default_run_config

    base = dict(method=method, max_steps=3, epochs=1.0, eval_steps=0, save_steps=3, logging_steps=1)
    base.update(train)
    return default_run_config("builtin:tiny-chat", source, **base)


def _train(cfg, monkeypatch):
    """Run train_run in-process; return (run_id, status, events, {param: (before, after)})."""
    from finetune import train as train_mod
    from finetune.runs import create_run, read_events, read_status, run_dir

    seen = {}
    original = train_mod.make_trainer

    def spy(*args, **kwargs):
        trainer = original(*args, **kwargs)
        seen["trainer"] = trainer
        seen["before"] = {n: p.detach().float().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        return trainer

    monkeypatch.setattr(train_mod, "make_trainer", spy)
    run_id = create_run(cfg)
    code = train_mod.train_run(run_dir(run_id))
    st = read_status(run_id)
    assert code == 0 and st["state"] == "completed", st.get("error")
    after = {n: p.detach().float() for n, p in seen["trainer"].model.named_parameters() if n in seen["before"]}
    moved = [n for n in seen["before"] if not seen["before"][n].equal(after[n])]
    return run_id, st, read_events(run_id)[0], moved, seen["trainer"]


def _check_common(run_id, st, events, moved, artifact="adapter"):
    from finetune.runs import run_dir

    d = run_dir(run_id)
    losses = [e["loss"] for e in events if e.get("loss") is not None]
    assert losses and all(math.isfinite(x) for x in losses)
    assert moved, "no trained parameter changed"
    assert all(e.get("memory_gb") for e in events if e.get("loss") is not None)
    assert st["backend"] == "transformers" and "CPU" in st["backend_why"]
    assert {"README.md", artifact, "checkpoints", "config.json", "events.jsonl", "status.json"} <= {
        p.name for p in d.iterdir()}
    return d


def _prefs(tmp_path, n=24):
    rows = [{"prompt": f"Is {k} even or odd?", "chosen": "even" if k % 2 == 0 else "odd",
             "rejected": "odd" if k % 2 == 0 else "even"} for k in range(n)]
    p = tmp_path / "prefs.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    return str(p)


@pytest.mark.parametrize("method", ["lora", "rslora", "dora", "qlora"])
def test_lora_family_trains(method, tiny_model_dir, monkeypatch):
    run_id, st, events, moved, trainer = _train(_cfg(method), monkeypatch)
    d = _check_common(run_id, st, events, moved)
    ac = json.loads((d / "adapter" / "adapter_config.json").read_text())
    assert ac["use_rslora"] is (method == "rslora") and ac["use_dora"] is (method == "dora")
    import torch

    # The adapter learns in fp32 whatever the frozen base is stored in (bf16 where autocast runs in bf16);
    # QLoRA's adapters follow TRL's choice for 4-bit models (bf16 with bf16 autocast), as on a GPU.
    if method != "qlora":
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters() if p.requires_grad)
    if st["precision"] == "bf16" and method != "qlora":
        base = [p for n, p in trainer.model.named_parameters() if "lora_" not in n and p.dim() == 2]
        assert base and all(p.dtype == torch.bfloat16 for p in base)
    assert any("lora_B" in n for n in moved)
    if method == "dora":
        assert any("lora_magnitude_vector" in n for n in moved)
    if method == "qlora":  # the base really is 4-bit NF4 on this CPU
        import bitsandbytes as bnb

        linears = [m for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        assert linears and linears[0].weight.quant_type == "nf4"


def test_full_fine_tuning_keeps_fp32_master_weights(tiny_model_dir, monkeypatch):
    import torch

    run_id, st, events, moved, trainer = _train(_cfg("full", learning_rate=1e-4), monkeypatch)
    d = _check_common(run_id, st, events, moved, artifact="model")
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert (d / "model" / "config.json").exists() and not (d / "adapter").exists()
    assert any("embed_tokens" in n for n in moved) and any("mlp" in n for n in moved)


def test_prefix_tuning_trains(tiny_model_dir, monkeypatch):
    run_id, st, events, moved, _ = _train(_cfg("prefix"), monkeypatch)
    d = _check_common(run_id, st, events, moved)
    assert json.loads((d / "adapter" / "adapter_config.json").read_text())["peft_type"] == "PREFIX_TUNING"
    assert any("prompt_encoder" in n for n in moved)


def test_continued_pretraining_on_plain_text(tiny_model_dir, monkeypatch, tmp_path):
    text = tmp_path / "corpus.txt"
    # One long paragraph per line: longer than max_seq_len, so it must be split into blocks, not cut.
    text.write_text("\n".join(("The river runs to the sea and the sea returns as rain. " * 12).strip()
                              for _ in range(12)))
    cfg = _cfg("cpt", str(text))
    cfg.data.max_seq_len = 64
    run_id, st, events, moved, trainer = _train(cfg, monkeypatch)
    _check_common(run_id, st, events, moved)
    summ = st["data_summary"]
    assert summ["trained_share"] == 1.0 and summ["blocks"] > summ["rows"]
    ds = trainer.train_dataset
    assert all(len(x) <= 64 for x in ds["input_ids"])


def test_cpt_refuses_instruction_data(tiny_model_dir):
    from finetune.runs import create_run, read_status, run_dir
    from finetune.train import train_run

    run_id = create_run(_cfg("cpt"))
    assert train_run(run_dir(run_id)) == 1
    assert "plain text" in read_status(run_id)["error"]


@pytest.mark.parametrize("method", ["dpo", "orpo", "kto"])
def test_preference_methods_train(method, tiny_model_dir, monkeypatch, tmp_path):
    cfg = _cfg(method, _prefs(tmp_path), learning_rate=1e-3, batch_size=4)
    run_id, st, events, moved, trainer = _train(cfg, monkeypatch)
    d = _check_common(run_id, st, events, moved)
    assert (d / "adapter" / "adapter_config.json").exists()
    want = {"dpo": "DPOTrainer", "orpo": "ORPOTrainer", "kto": "KTOTrainer"}[method]
    assert want in [c.__name__ for c in type(trainer).__mro__]  # under our mixins (guard, thread tuning)


def test_kto_on_labelled_rows(tiny_model_dir, monkeypatch, tmp_path):
    rows = [{"prompt": f"Is {k} even or odd?", "completion": ("even" if k % 2 == 0 else "odd"), "label": True}
            for k in range(12)] + [{"prompt": f"Is {k} even or odd?", "completion": ("odd" if k % 2 == 0 else "even"),
                                    "label": False} for k in range(12)]
    p = tmp_path / "kto.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    run_id, st, events, moved, _ = _train(_cfg("kto", str(p), learning_rate=1e-3, batch_size=4), monkeypatch)
    _check_common(run_id, st, events, moved)


def test_dpo_continues_a_finished_sft_adapter(tiny_model_dir, monkeypatch, tmp_path):
    from safetensors.torch import load_file

    from finetune.runs import create_run, read_status, run_dir
    from finetune.train import train_run

    sft_id, _, _, _, _ = _train(_cfg("lora", max_steps=2, save_steps=2), monkeypatch)
    sft = load_file(run_dir(sft_id) / "adapter" / "adapter_model.safetensors")
    cfg = _cfg("dpo", _prefs(tmp_path), learning_rate=1e-3, init_from_run=sft_id)
    run_id, st, events, moved, trainer = _train(cfg, monkeypatch)
    d = _check_common(run_id, st, events, moved)
    assert "ref" in trainer.model.peft_config  # the SFT adapter's frozen copy is the reference
    dpo = load_file(d / "adapter" / "adapter_model.safetensors")
    assert set(dpo) == set(sft)  # the same adapter, continued (only the trained one is saved)
    assert any(not dpo[k].equal(sft[k]) for k in sft)
    assert not (d / "adapter" / "ref").exists()
    bad = _cfg("dpo", _prefs(tmp_path), init_from_run="no-such-run")
    bad_id = create_run(bad)
    assert train_run(run_dir(bad_id)) == 1 and "train.init_from_run" in read_status(bad_id)["error"]


def test_report_to_tensorboard_writes_event_files(tiny_model_dir, monkeypatch):
    run_id, st, events, moved, _ = _train(_cfg("lora", max_steps=2, save_steps=2, report_to="tensorboard"),
                                          monkeypatch)
    from finetune.runs import run_dir

    assert list((run_dir(run_id) / "tb").rglob("events.out.tfevents.*"))


def test_report_to_trackio_keeps_local_records_in_the_run_folder(tiny_model_dir, tmp_path):
    """trackio, local-first and offline: the training child (as the app and the CLI start it) keeps
    trackio's database in the run's trackio/ folder, one run named by the run id in the
    fine-tune-studio project, with the losses of events.jsonl; no Space, nothing under HF_HOME."""
    import os
    import subprocess
    import sys

    from finetune.config import TRACKIO_PROJECT
    from finetune.runs import create_run, read_events, read_status, run_dir

    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKIO_")}
    env["HF_HOME"] = str(tmp_path / "hf_home")  # trackio's default home: it must stay unused
    run_id = create_run(_cfg("lora", max_steps=3, save_steps=3, report_to="trackio"))
    d = run_dir(run_id)
    r = subprocess.run([sys.executable, "-m", "finetune", "train", "--run", str(d)], env=env, capture_output=True,
                       text=True, timeout=600)
    st = read_status(run_id)
    assert r.returncode == 0 and st["state"] == "completed", (st.get("error"), r.stderr[-3000:])
    assert (d / "trackio" / f"{TRACKIO_PROJECT}.db").is_file()
    assert not (Path(env["HF_HOME"]) / "trackio").exists()
    assert "space" not in (r.stdout + r.stderr).lower()

    # Read back through trackio's own storage, pointed at the run folder.
    read = ("import json, sys; from trackio.sqlite_storage import SQLiteStorage as S; "
            "print(json.dumps({'runs': S.get_runs(sys.argv[1]), 'logs': S.get_logs(sys.argv[1], sys.argv[2])}, "
            "default=str))")
    r = subprocess.run([sys.executable, "-c", read, TRACKIO_PROJECT, run_id], capture_output=True, text=True,
                       env=dict(env, TRACKIO_DIR=str(d / "trackio")), timeout=120)
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert run_id in got["runs"]
    logged = [row for row in got["logs"] if "train/loss" in row]
    ours = [e for e in read_events(run_id)[0] if e.get("loss") is not None]
    assert [row["train/global_step"] for row in logged] == [e["step"] for e in ours] == [1, 2, 3]
    assert [round(row["train/loss"], 4) for row in logged] == [round(e["loss"], 4) for e in ours]


def test_precision_and_backend_choices():
    from finetune.config import ConfigError, RunConfig, TrainConfig, choose_backend, precision_plan

    t4 = {"device": "cuda", "bf16": False}
    a100 = {"device": "cuda", "bf16": True}
    amx_cpu = {"device": "cpu", "bf16": True}
    old_cpu = {"device": "cpu", "bf16": False}
    lora, full = RunConfig(), RunConfig(train=TrainConfig(method="full"))
    p = precision_plan(lora, t4)
    assert p["fp16"] and not p["bf16"] and p["weights_dtype"] == "float16" and "scaler" in p["why"]
    p = precision_plan(full, t4)
    assert p["fp16"] and p["weights_dtype"] == "float32" and "master" in p["why"]
    assert precision_plan(lora, a100)["weights_dtype"] == "bfloat16" and precision_plan(full, a100)["bf16"]
    assert precision_plan(lora, amx_cpu) == {"precision": "bf16", "weights_dtype": "bfloat16", "bf16": True,
                                             "fp16": False, "why": "the CPU has AMX or avx512_bf16"}
    assert precision_plan(full, amx_cpu)["weights_dtype"] == "float32"  # fp32 master weights
    assert precision_plan(lora, old_cpu)["precision"] == "fp32" and precision_plan(lora, old_cpu)["weights_dtype"] == "float32"
    forced = RunConfig(train=TrainConfig(precision="bf16"))  # emulated bf16 autocast: the weights stay fp32
    assert precision_plan(forced, old_cpu)["bf16"] and precision_plan(forced, old_cpu)["weights_dtype"] == "float32"
    with pytest.raises(ConfigError, match="train.precision"):
        precision_plan(RunConfig(train=TrainConfig(precision="fp16")), old_cpu)
    assert choose_backend(lora, a100, True)[0] == "unsloth"
    assert choose_backend(lora, a100, False) == ("transformers", "transformers + PEFT on the GPU (unsloth is not installed)")
    assert choose_backend(RunConfig(train=TrainConfig(method="dora")), a100, True)[0] == "transformers"
    assert choose_backend(RunConfig(train=TrainConfig(backend="transformers")), a100, True)[0] == "transformers"
    assert choose_backend(lora, old_cpu, True)[0] == "transformers"


def test_sft_args_follow_the_precision_plan():
    from finetune.config import RunConfig, to_sft_config

    args = to_sft_config(RunConfig(), "/tmp/x", prec={"bf16": True, "fp16": False})
    assert args.bf16 and not args.fp16 and args.train_sampling_strategy == "group_by_length"
    assert not args.gradient_checkpointing and args.per_device_eval_batch_size == 2 * args.per_device_train_batch_size


def test_unsloth_kwargs_keep_its_fast_path():
    from finetune.config import RunConfig, TrainConfig, to_unsloth_peft_kwargs

    kw = to_unsloth_peft_kwargs(RunConfig(train=TrainConfig(method="rslora", gradient_checkpointing=True)))
    assert kw["lora_dropout"] == 0 and kw["bias"] == "none" and kw["use_rslora"]
    assert kw["use_gradient_checkpointing"] == "unsloth" and "q_proj" in kw["target_modules"]


# ---- CUDA only (skipped without a GPU) ---------------------------------------------------------


@pytest.mark.gpu
def test_unsloth_backend_on_cuda(tiny_model_dir, monkeypatch):
    pytest.importorskip("unsloth")
    cfg = _cfg("lora")
    cfg.data.max_seq_len = 128
    run_id, st, events, moved, trainer = _train(cfg, monkeypatch)
    assert st["backend"] == "unsloth" and "Unsloth" in st["backend_why"]
    assert moved and all(math.isfinite(e["loss"]) for e in events if e.get("loss") is not None)
    assert all(m.p == 0 for m in trainer.model.modules() if type(m).__name__ == "Dropout" and hasattr(m, "p")
               and "lora" in type(m).__module__)


@pytest.mark.gpu
def test_qlora_on_cuda(tiny_model_dir, monkeypatch):
    import bitsandbytes as bnb
    import torch

    cfg = _cfg("qlora", backend="transformers")
    run_id, st, events, moved, trainer = _train(cfg, monkeypatch)
    linears = [m for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linears and linears[0].weight.device.type == "cuda"
    assert moved and torch.cuda.max_memory_allocated() > 0


@pytest.mark.gpu
def test_fp16_autocast_uses_a_loss_scaler(tiny_model_dir, monkeypatch):
    import torch

    cfg = _cfg("lora", precision="fp16", backend="transformers")
    run_id, st, events, moved, trainer = _train(cfg, monkeypatch)
    assert st["precision"] == "fp16" and trainer.args.fp16
    assert trainer.accelerator.scaler is not None  # fp16 without a scaler underflows
    base = [p for n, p in trainer.model.named_parameters() if "lora_" not in n]
    assert base[0].dtype == torch.float16
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters() if p.requires_grad)
    full = _cfg("full", precision="fp16", backend="transformers", learning_rate=1e-5)
    _, st, _, moved, trainer = _train(full, monkeypatch)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # fp32 master weights
    assert trainer.accelerator.scaler is not None and moved


def test_length_grouping_only_where_padding_would_be_costly():
    from finetune.config import RunConfig, to_sft_config
    from finetune.train import GROUP_BY_LENGTH_MIN_WASTE, padding_waste

    assert padding_waste([20] * 16, 8) == 0.0
    assert padding_waste([10, 100] * 16, 8) > GROUP_BY_LENGTH_MIN_WASTE
    args = to_sft_config(RunConfig(), "/tmp/x", prec={"bf16": False, "fp16": False, "group_by_length": False})
    assert args.train_sampling_strategy == "random"


def test_demo_batches_are_random_because_padding_is_cheap(tiny_model_dir, monkeypatch):
    run_id, st, events, moved, trainer = _train(_cfg("lora", max_steps=2, save_steps=2), monkeypatch)
    summ = st["data_summary"]
    assert summ["random_batch_padding"] < 0.25 and summ["batching"].startswith("random")
    assert trainer.args.train_sampling_strategy == "random"
    assert st["threads"] >= 1 and st["threads_why"]


def test_a_short_run_has_no_warmup_step_at_rate_zero(tiny_model_dir, monkeypatch, tmp_path):
    """transformers rounds a warmup ratio up and its first warmup step learns at rate 0: a 1-step run
    with warmup 0.5 changed nothing, and any warmup cost an update. Rounded down, a short run has no
    warmup and learns; a long run keeps its warmup (3 of 100 steps at 3%), whose first step learns at
    1/4 of the rate; after it the schedule is transformers' own; the saved arguments keep the ratio."""
    run_id, st, events, moved, trainer = _train(_cfg("lora", max_steps=1, save_steps=1, warmup_ratio=0.5), monkeypatch)
    assert any("lora_B" in n for n in moved), "the only step learned nothing"
    assert trainer.args.warmup_steps == 0.5
    # In a real trainer: 4 steps at 0.5 warm up for 2 (rates 1/3, 2/3 of the peak), then decay linearly
    _, _, events, _, trainer = _train(_cfg("lora", max_steps=4, save_steps=4, warmup_ratio=0.5), monkeypatch)
    peak = trainer.args.learning_rate
    rates = [e["learning_rate"] / peak for e in events if e.get("learning_rate") is not None]
    assert rates == pytest.approx([1 / 3, 2 / 3, 1.0, 0.5]), rates

    import torch
    from transformers import TrainingArguments, get_scheduler

    from finetune.schedule import WarmupSchedule

    class Base:  # transformers' own scheduler, where ours does not apply
        def create_scheduler(self, num_training_steps, optimizer=None):
            return ("transformers", self.args.get_warmup_steps(num_training_steps))

    def stepped(opt, sched, steps):  # the rate of each optimiser step
        out = []
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    def rates(kind, ratio, steps):
        t = type("T", (WarmupSchedule, Base), {})()
        t.lr_scheduler, t.optimizer = None, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        t.args = TrainingArguments(output_dir=str(tmp_path), warmup_steps=ratio, lr_scheduler_type=kind,
                                   use_cpu=True, report_to="none")
        sched = t.create_scheduler(steps)
        assert t.args.warmup_steps == ratio
        return sched if isinstance(sched, tuple) else stepped(t.optimizer, sched, steps)

    assert rates("linear", 0.03, 8) == ("transformers", 0) and rates("linear", 0.03, 33) == ("transformers", 0)
    assert rates("linear", 0.03, 34)[:2] == [0.5, 1.0]
    for kind in ("linear", "cosine", "constant_with_warmup"):
        got = rates(kind, 0.03, 100)
        assert got[:4] == [0.25, 0.5, 0.75, 1.0], kind
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        ref = stepped(opt, get_scheduler(kind, opt, num_warmup_steps=3, num_training_steps=100), 100)
        assert ref[0] == 0.0 and got[3:] == pytest.approx(ref[3:]), kind
    assert rates("linear", 5, 8)[:6] == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0])  # given in steps
    assert rates("constant", 0.5, 8) == ("transformers", 4)  # no warmup in that schedule: transformers' own
