"""Engine basics: lazy imports, the built-in model, configs, token masks and the run folder helpers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_import_finetune_is_light():
    code = ("import sys, finetune, finetune.config, finetune.runs, finetune.cli, finetune.data, finetune.plan, "
            "finetune.tokenize, finetune.evaluate, finetune.compare, finetune.train\n"
            "print(sorted(m for m in ('gradio', 'torch', 'unsloth', 'transformers', 'trl', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_engine_never_imports_gradio():
    offenders = [p.name for p in (ROOT / "finetune").rglob("*.py")
                 if any(line.strip().startswith(("import gradio", "from gradio")) for line in p.read_text().splitlines())]
    assert offenders == []


def test_builtin_model_is_deterministic_and_cached(tiny_model_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from finetune import builtin

    meta = json.loads((tiny_model_dir / "builtin.json").read_text())
    assert 500_000 < meta["parameters"] < 10_000_000
    monkeypatch.setenv("FINETUNE_HOME", str(tmp_path))
    monkeypatch.delenv("FINETUNE_MODELS_DIR", raising=False)  # a fresh build under the new home
    other = builtin.ensure_tiny_chat()
    assert other.parent == tmp_path / "models"
    assert other != tiny_model_dir
    a, b = load_file(tiny_model_dir / "model.safetensors"), load_file(other / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert (tiny_model_dir / "tokenizer.json").read_text() == (other / "tokenizer.json").read_text()


def test_demo_dataset_shape():
    from finetune.builtin import demo_records

    rows = demo_records()
    assert 300 <= len(rows) <= 800
    assert rows == demo_records()
    assert all(set(r) == {"instruction", "input", "output"} and r["output"] for r in rows)


def test_config_validation_names_the_field():
    from finetune.config import ConfigError, DataConfig, RunConfig, TrainConfig

    with pytest.raises(ConfigError, match="train.learning_rate"):
        TrainConfig(learning_rate=-1)
    with pytest.raises(ConfigError, match="train.method"):
        TrainConfig(method="magic")
    with pytest.raises(ConfigError, match="data.max_seq_len"):
        DataConfig(max_seq_len=3)
    with pytest.raises(ConfigError, match="train.bogus"):
        RunConfig.from_dict({"train": {"bogus": 1}})
    cfg = RunConfig()
    assert RunConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_sft_and_peft_translation():
    from finetune.config import RunConfig, TrainConfig, to_peft_config, to_sft_config

    cfg = RunConfig(train=TrainConfig(method="dora", learning_rate=1e-4, epochs=2, batch_size=3, warmup_ratio=0.1))
    args = to_sft_config(cfg, "/tmp/x")
    assert args.learning_rate == 1e-4 and args.per_device_train_batch_size == 3 and args.num_train_epochs == 2
    assert args.max_length == cfg.data.max_seq_len and args.use_cpu
    peft_cfg = to_peft_config(cfg)
    assert peft_cfg.use_dora and peft_cfg.r == 16
    assert to_peft_config(RunConfig(train=TrainConfig(method="full"))) is None
    assert type(to_peft_config(RunConfig(train=TrainConfig(method="prefix")))).__name__ == "PrefixTuningConfig"


def test_masks_train_only_assistant_turns(tiny_tokenizer):
    from finetune.tokenize import IGNORE, render_trained_tokens, tokenize_row

    row = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Is 12 even?"},
                        {"role": "assistant", "content": "even"}, {"role": "user", "content": "13?"},
                        {"role": "assistant", "content": "odd"}]}
    t = tokenize_row(tiny_tokenizer, row, "messages")
    trained = tiny_tokenizer.decode([i for i, lab in zip(t["input_ids"], t["labels"]) if lab != IGNORE])
    assert trained.replace("\n", "") == "even<|im_end|>odd<|im_end|>"
    pieces = render_trained_tokens(tiny_tokenizer, row, "messages")
    assert "".join(p for p, _ in pieces) == tiny_tokenizer.apply_chat_template(row["messages"], tokenize=False)
    pc = tokenize_row(tiny_tokenizer, {"prompt": "Q: hi", "completion": " there"}, "prompt_completion")
    assert pc["labels"][0] == IGNORE and pc["labels"][-1] == tiny_tokenizer.eos_token_id
    assert tokenize_row(tiny_tokenizer, row, "messages", max_seq_len=8)["truncated"]


def test_run_folder_is_atomic_and_listed(home):
    from finetune.config import RunConfig
    from finetune.runs import RunError, create_run, list_runs, read_events, read_status, run_dir

    run_id = create_run(RunConfig(name="unit"))
    d = run_dir(run_id)
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "data", "events.jsonl", "status.json"]
    assert sorted(p.name for p in (d / "data").iterdir()) == ["meta.json", "validation.jsonl"]  # the eval snapshot
    assert not any(p.name.endswith(".creating") for p in d.parent.iterdir())
    assert read_status(run_id)["state"] == "queued"
    with open(d / "events.jsonl", "a") as f:
        f.write('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')  # a half-written last line is not read
    events, offset = read_events(run_id)
    assert events == [{"step": 1, "loss": 2.0}] and offset > 0
    assert run_id in [r["run_id"] for r in list_runs()]
    with pytest.raises(RunError):
        run_dir("../etc")


def test_eval_report_table_survives_any_model_output():
    from finetune.evaluate import exact_match, report_markdown

    garbage = "x\u2028y|z\x0b\r\nw"
    r = {"run_id": "r", "model": "m", "method": "lora", "examples": 1,
         "base": {"perplexity": 900.0, "exact_match": 0.0}, "finetuned": {"perplexity": 2.0, "exact_match": 1.0},
         "delta": {"perplexity": -898.0, "exact_match": 1.0},
         "samples": [{"prompt": "Q?", "reference": "Paris", "base": garbage, "finetuned": "Paris"}]}
    last = report_markdown(r).strip().splitlines()[-1]
    assert last.startswith("| Q?") and last.count(" | ") == 3 and "\\|" in last
    assert exact_match(" Paris. ", "paris") and not exact_match("Lyon", "Paris")
