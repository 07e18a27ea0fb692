"""Best checkpoint and early stopping on the real tiny model (issue 9).

A deliberately high, constant learning rate makes validation loss fall and then rise again, so the
lowest one comes before the last step. The run must keep that step's adapter (proved by training a
second run that ends exactly at that step: same weights), stop early after `patience` worse
evaluations, and say which step it kept in the status, the model card and the evaluation report.
"""

import math


def _cfg(**train):
    from finetune.config import default_run_config

    base = dict(max_steps=24, eval_steps=2, save_steps=100, logging_steps=2, learning_rate=0.5,
                lr_scheduler="constant", warmup_ratio=0.0)
    return default_run_config("builtin:tiny-chat", "builtin:demo", **(base | train))


def _train(cfg):
    import os

    from finetune.runs import create_run, read_events, read_status, run_dir
    from finetune.train import train_run

    run_id = create_run(cfg)
    # One core: the thread count is then fixed, not measured on the first steps (on a busy machine two
    # runs may measure differently, and sums over other thread counts differ in the last bits).
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    try:
        assert train_run(run_dir(run_id)) == 0, read_status(run_id).get("error")
    finally:
        os.sched_setaffinity(0, cores)
    return run_id, read_status(run_id), read_events(run_id)[0]


def test_keeps_the_lowest_validation_loss_and_stops_early(tiny_model_dir):
    import torch
    from safetensors.torch import load_file

    from finetune.runs import run_dir

    run_id, st, events = _train(_cfg(early_stopping_patience=2))
    evals = [(e["step"], e["eval_loss"]) for e in events if e.get("eval_loss") is not None]
    best_step, best_loss = min(evals, key=lambda x: (x[1], x[0]))
    assert st["state"] == "completed" and st["best_step"] == best_step
    assert math.isclose(st["best_eval_loss"], best_loss, rel_tol=1e-5)
    assert st["kept_step"] == best_step < st["step"], (evals, st)  # an earlier step was kept
    # patience 2: exactly two evaluations after the best one, then it stopped (before max_steps)
    assert st["early_stopped"] is True and st["step"] == best_step + 2 * 2 < 24
    d = run_dir(run_id)
    assert not (d / "checkpoints" / "best").exists()  # moved into adapter/, nothing left over
    card = (d / "README.md").read_text()
    assert f"weights kept from step {best_step}" in card and "stopped early" in card

    # The kept adapter is the one that existed at best_step: a run that stops there has the same weights.
    ref_id, ref_st, _ = _train(_cfg(max_steps=best_step, keep_best=False))
    assert ref_st["kept_step"] == best_step == ref_st["step"]
    kept = load_file(d / "adapter" / "adapter_model.safetensors")
    ref = load_file(run_dir(ref_id) / "adapter" / "adapter_model.safetensors")
    assert kept.keys() == ref.keys()
    assert all(torch.allclose(kept[k], ref[k], atol=1e-6) for k in kept), max(float((kept[k] - ref[k]).abs().max()) for k in kept)
    assert (d / "adapter" / "tokenizer_config.json").exists()  # loadable on its own, like a last-step adapter


def test_keep_best_off_keeps_the_last_step(tiny_model_dir):
    _run_id, st, events = _train(_cfg(keep_best=False, max_steps=6))
    assert st["kept_step"] == st["step"] == 6
    assert st["best_step"] is not None  # still reported, just not used


def test_report_says_which_step_was_kept():
    from finetune.evaluate import report_markdown
    from finetune.monitor import kept_sentence

    s = kept_sentence({"kept_step": 10, "step": 14, "best_eval_loss": 3.0471, "best_step": 10})
    assert s == "weights kept from step 10, the lowest validation loss (3.0471); the last step was 14"
    r = {"run_id": "r", "model": "m", "method": "lora", "examples": 1, "kept": s, "samples": [],
         "base": {"exact_match": 0, "perplexity": 2}, "finetuned": {"exact_match": 1, "perplexity": 1},
         "delta": {"exact_match": 1, "perplexity": -1}}
    assert s in report_markdown(r)


def test_early_stopping_fields_validate():
    import pytest

    from finetune.config import ConfigError, TrainConfig, help_for

    with pytest.raises(ConfigError, match="train.early_stopping_patience"):
        TrainConfig(early_stopping_patience=-1)
    assert "evaluations" in help_for(TrainConfig, "early_stopping_patience")
    assert "lowest validation loss" in help_for(TrainConfig, "keep_best")
