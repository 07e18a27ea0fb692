"""Preflight: every way of starting a run is checked before its folder exists (issue 9).

Each failure gives one clear message naming the field and leaves no run folder behind; a relative
data path given from another folder is made absolute, so the child (which runs elsewhere) finds it.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run_folders(home):
    d = home / "runs"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def _cfg(model="builtin:tiny-chat", data="builtin:demo", **train):
    from finetune.config import default_run_config

    return default_run_config(model, data, **({"max_steps": 2} | train))


def _refused(cfg, home, match):
    from finetune.preflight import PreflightError
    from finetune.runs import start_training

    before = _run_folders(home)
    with pytest.raises(PreflightError, match=match) as exc:
        start_training(cfg)
    assert _run_folders(home) == before, "a refused run left a folder behind"
    assert "\n" not in str(exc.value) and "Traceback" not in str(exc.value)
    return str(exc.value)


def test_missing_data_path_is_refused_with_where_it_looked(home, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    msg = _refused(_cfg(data="my_split"), home, r"^data\.source: my_split not found")
    assert str(tmp_path / "my_split") in msg


def test_unknown_model_offline_is_refused_like_the_plan(home, tiny_model_dir):
    msg = _refused(_cfg(model="nobody-here/not-a-model-7b"), home, r"^model\.model_id: unknown model nobody-here")
    assert "offline" in msg and "OSError" not in msg


def test_data_without_trained_tokens_is_refused(home, tiny_model_dir, tmp_path):
    # every answer is cut off: the prompt alone fills max_seq_len, so no label survives
    rows = [{"prompt": "word " * 200, "completion": "yes"} for _ in range(8)]
    p = tmp_path / "long.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = _cfg(data=str(p))
    cfg.data.max_seq_len = 16
    _refused(cfg, home, r"^data\.source: no token would be trained")


def test_estimate_that_does_not_fit_is_refused(home):
    _refused(_cfg(model="meta-llama/Llama-3.1-70B-Instruct", method="full", batch_size=8), home,
             r"^train\.batch_size: the memory estimate is \d+")


def test_a_batch_that_does_not_fit_trains_in_smaller_pieces_with_the_same_effective_batch(home, monkeypatch):
    """Batch 8 (the default) where only 2 fit: batch 2 x 4 accumulation steps, said in the estimate."""
    import finetune.plan.estimate as est
    from finetune.plan import estimate_run_memory
    from finetune.preflight import PreflightError, check_memory

    model = "meta-llama/Llama-3.1-8B-Instruct"
    need = {b: estimate_run_memory(model, "lora", 2048, b)["vram_gb"] for b in (1, 2, 4, 8)}
    assert need[1] < need[2] < need[4] < need[8]
    monkeypatch.setattr(est, "usable_memory_gb", lambda tier: (need[2] + need[4]) / 2)
    cfg = _cfg(model=model, batch_size=8, grad_accum=3)
    cfg.data.max_seq_len = 2048
    found = check_memory(cfg)
    assert (cfg.train.batch_size, cfg.train.grad_accum) == (2, 12) and found["fits"] is True
    assert "training at batch 2 with 12 accumulation steps (effective batch 24, was 24)" in found["note"]
    # a batch of 6 goes to 3 x 2, then 2 x 3, 1 x 6: always the same effective batch
    monkeypatch.setattr(est, "usable_memory_gb", lambda tier: (need[1] + need[2]) / 2)
    cfg = _cfg(model=model, batch_size=6)
    cfg.data.max_seq_len = 2048
    check_memory(cfg)
    assert (cfg.train.batch_size, cfg.train.grad_accum) == (1, 6)
    # KTO keeps two rows a step (TRL refuses one): below that it is refused
    monkeypatch.undo()
    kto = {b: estimate_run_memory(model, "kto", 2048, b)["vram_gb"] for b in (1, 2)}
    monkeypatch.setattr(est, "usable_memory_gb", lambda tier: (kto[1] + kto[2]) / 2)
    cfg = _cfg(model=model, batch_size=8, method="kto")
    cfg.data.max_seq_len = 2048
    with pytest.raises(PreflightError, match="batch 8 x 2048"):
        check_memory(cfg)
    # nothing fits: refused with the figure for the batch that was asked for
    monkeypatch.setattr(est, "usable_memory_gb", lambda tier: need[1] / 2)
    cfg = _cfg(model=model, batch_size=8)
    cfg.data.max_seq_len = 2048
    with pytest.raises(PreflightError, match=rf"estimate is {need[8]:.1f} GB .* batch 8 x 2048"):
        check_memory(cfg)
    assert cfg.train.batch_size == 8


def test_a_trimmed_batch_is_said_in_the_status_and_the_train_tab(home, tiny_model_dir, monkeypatch):
    import finetune.plan.estimate as est
    from finetune.plan import estimate_run_memory
    from finetune import runs
    from finetune.runs import read_status
    from ui.train_live import metrics_html

    need = {b: estimate_run_memory("builtin:tiny-chat", "lora", 256, b)["vram_gb"] for b in (4, 8)}
    monkeypatch.setattr(est, "usable_memory_gb", lambda tier: (need[4] + need[8]) / 2)
    monkeypatch.setattr(runs, "start_run", lambda run_id, **kw: None)  # the check only: no child
    rid = runs.start_training(_cfg(batch_size=8))
    st = read_status(rid)
    assert "training at batch 4 with 2 accumulation steps (effective batch 8, was 8)" in st["memory_note"]
    assert "Memory: batch 8 x 256 tokens would need more memory" in metrics_html({"status": st})
    shutil.rmtree(runs.run_dir(rid))  # never launched: no later test's queue may find it


def test_dpo_on_instruction_rows_is_refused(home, tiny_model_dir):
    _refused(_cfg(method="dpo"), home, r"^data\.source: DPO needs preference rows")


def test_relative_paths_resolve_at_the_edge(home, tiny_model_dir, tmp_path, monkeypatch):
    from finetune.data import prepare_dataset
    from finetune.preflight import preflight

    prepare_dataset("builtin:demo", str(tmp_path / "my_split"))
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(data="my_split")
    found = preflight(cfg)
    assert cfg.data.source == str(tmp_path / "my_split") == found["data_source"]
    assert found["data"]["rows_train"] > 100 and found["data"]["trained_tokens_sample"] > 0
    assert found["memory"]["fits"] is True


def test_cli_train_from_another_folder_with_a_relative_path(home, tiny_model_dir, tmp_path):
    """The case from the issue: `train --data my_split` outside the repository trains that split."""
    from finetune.data import prepare_dataset

    prepare_dataset("builtin:demo", str(tmp_path / "my_split"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "finetune", "train", "--data", "my_split", "--max-steps", "2",
                          "--wait", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["state"] == "completed", res.get("error")
    cfg = json.loads((Path(res["run_dir"]) / "config.json").read_text())
    assert cfg["data"]["source"] == str(tmp_path / "my_split")
    # and a missing one fails before any run exists, with one line on stderr
    before = _run_folders(home)
    out = subprocess.run([sys.executable, "-m", "finetune", "train", "--data", "nope_split", "--json"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "nope_split not found" in json.loads(out.stdout)["error"]
    assert _run_folders(home) == before
