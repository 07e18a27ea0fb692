"""Evaluate, compare and vote on real runs of the built-in model, through the same child processes
the app uses: a short SFT run beats its base on exact match and perplexity; its blind A/B votes
export as a preference dataset that trains a DPO run; the DPO run evaluates and compares."""

import json

import pytest

SFT_STEPS = 40


@pytest.fixture(scope="module")
def sft_run(tiny_model_dir):
    from finetune.config import default_run_config
    from finetune.runs import start_training, wait

    cfg = default_run_config(max_steps=SFT_STEPS, eval_steps=20, save_steps=SFT_STEPS)
    run_id = start_training(cfg)
    st = wait(run_id, timeout_s=900)
    assert st["state"] == "completed", st.get("error")
    return run_id


@pytest.mark.slow
def test_sft_run_beats_base_in_child_eval_and_diagnoses(sft_run):
    from finetune.eval.diagnose import diagnose_run
    from finetune.evaluate import run_eval
    from finetune.runs import run_dir

    seen = []
    r = run_eval(sft_run, max_examples=24, max_new_tokens=8, on_progress=lambda f, m: seen.append((f, m)))
    print("exact match", r["base_metrics"]["exact_match"], "->", r["metrics"]["exact_match"],
          "perplexity", r["base_perplexity"], "->", r["perplexity"])
    assert r["metrics"]["exact_match"] > r["base_metrics"]["exact_match"]
    assert r["perplexity"] < r["base_perplexity"] / 10
    assert r["gates"]["perplexity"]["passed"] and r["gates"]["exact_match"]["passed"]
    assert {"rouge1", "rouge2", "rougeL", "bleu", "chrf"} <= set(r["metrics"])
    assert r["dataset"]["snapshot"] and r["dataset"]["rows"] >= 24 and len(r["dataset"]["sha256"]) == 64
    assert 2 in r["decoding"]["eos_token_ids"] and r["decoding"]["seed"] == 0
    assert r["regression"]["general_text_perplexity"]["base"] > 0 and r["safety"]["prompts"] == 16
    assert r["provenance"]["libraries"]["torch"] and r["provenance"]["config"]["train"]["max_steps"] == SFT_STEPS
    assert seen and seen[-1][0] == 1.0  # progress came from the child
    d = run_dir(sft_run) / "eval"
    assert json.loads((d / "report.json").read_text())["metrics"] == r["metrics"]
    assert "## Gates" in (d / "report.md").read_text() and (d / "metrics.png").stat().st_size > 1000
    diag = diagnose_run(sft_run)
    assert diag["evaluated"] and isinstance(diag["flags"], list)
    assert all(set(f) == {"issue", "evidence", "suggestion", "settings"} for f in diag["flags"])


@pytest.mark.slow
def test_votes_train_a_dpo_run_that_evaluates_and_compares(sft_run, tmp_path):
    from finetune.compare import compare_models, compare_runs
    from finetune.config import default_run_config
    from finetune.evaluate import run_eval
    from finetune.paths import read_json
    from finetune.runs import start_training, wait
    from finetune.votes import ab_pair, export_votes, vote, votes_dir

    cmp = compare_models(["base", sft_run], ["Is 42 even or odd?", "Opposite of fast?"], max_new_tokens=8)
    assert [r["prompt"] for r in cmp["rows"]] == ["Is 42 even or odd?", "Opposite of fast?"]
    assert set(cmp["latency"]) == {"base", sft_run} and cmp["decoding"]["seed"] == 0
    assert cmp["rows"][0]["answers"]["base"] != cmp["rows"][0]["answers"][sft_run]

    prompts = [f"Is {n} even or odd?" for n in (11, 24, 37, 58, 63, 90, 105, 212)]
    for p in prompts:
        pair = ab_pair(["base", sft_run], p, max_new_tokens=8)
        assert set(pair) == {"pair_id", "a", "b"} and sft_run not in json.dumps(pair)
        hidden = read_json(votes_dir() / "pairs" / f"{pair['pair_id']}.json")  # server side only
        vote(pair["pair_id"], "A" if hidden["a_model"] == sft_run else "B")
    out = export_votes(str(tmp_path / "votes.jsonl"))
    assert out["rows"] >= len(prompts)

    cfg = default_run_config("builtin:tiny-chat", out["path"], method="dpo", max_steps=3, batch_size=4,
                             eval_steps=0, save_steps=3)
    cfg.data.val_ratio = 0.25
    dpo = start_training(cfg)
    st = wait(dpo, timeout_s=600)
    assert st["state"] == "completed", st.get("error")

    r = run_eval(dpo, max_examples=8, max_new_tokens=8)
    assert r["task_type"] == "preference" and r["primary_metric"] == "reward_accuracy"
    assert 0 <= r["metrics"]["reward_accuracy"] <= 1 and 0 <= r["base_metrics"]["reward_accuracy"] <= 1
    assert r["metrics"]["exact_match"] is not None and r["metrics"]["implicit_reward_accuracy"] is not None
    assert r["perplexity"] > 0 and "reward_accuracy" in r["gates"]

    c = compare_models(["base", dpo, sft_run], None, max_new_tokens=8)  # the DPO run's own validation prompts
    assert c["rows"] and all(set(x["answers"]) == {"base", dpo, sft_run} for x in c["rows"])
    runs = compare_runs([sft_run, dpo])
    assert {x["run"] for x in runs["curves"]} == {sft_run, dpo}
    assert any(d["setting"] == "train.method" and d[dpo] == "dpo" for d in runs["config_diff"])
    assert {m["run"] for m in runs["metrics"]} == {sft_run, dpo} and all("perplexity" in m for m in runs["metrics"])
