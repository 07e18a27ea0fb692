"""Evaluation pieces without training: metric values against the reference libraries on fixed
inputs, stop ids from the chat template, the validation snapshot, diagnose flags, the report's
gates and chart, and the votes store (pair ids reveal nothing; one vote per pair; export rows)."""

import json

import pytest


def test_generation_metrics_equal_the_reference_libraries():
    import sacrebleu
    from rouge_score import rouge_scorer

    from finetune.eval.metrics import generation_metrics

    preds = ["the cat sat on the mat", "a quick brown fox", "hello there world", ""]
    refs = ["the cat is on the mat", "the quick brown fox jumps", "hello world", "nothing"]
    ours = generation_metrics(preds, refs)
    sc = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    for key in ("rouge1", "rouge2", "rougeL"):
        ref = sum(sc.score(r, p)[key].fmeasure for p, r in zip(preds, refs)) / len(preds)
        assert ours[key] == pytest.approx(ref, abs=1e-12)
    assert ours["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score / 100, abs=1e-12)
    assert ours["chrf"] == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score / 100, abs=1e-12)
    assert 0 < ours["rouge1"] < 1 and 0 < ours["bleu"] < 1 and 0 < ours["chrf"] < 1


def test_classification_metrics_by_hand():
    from finetune.eval.metrics import (
        classification_metrics,
        is_classification,
        task_metrics,
    )

    refs = ["pos", "pos", "neg", "neg", "neu", "pos"]
    preds = ["pos", "neg", "neg", "neg", "pos", "Pos."]
    m = classification_metrics(preds, refs)
    # pos: tp 2, fp 1, fn 1 -> 4/6; neg: tp 2, fp 1, fn 0 -> 4/5; neu: tp 0 -> 0
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["macro_f1"] == pytest.approx((4 / 6 + 4 / 5 + 0) / 3)
    assert is_classification(refs) and not is_classification(["a long free answer here", "b", "c", "d e f g"])
    t = task_metrics(preds, refs, "classification")
    assert set(t) == {"exact_match", "accuracy", "macro_f1"} and t["exact_match"] == pytest.approx(4 / 6)


def test_diversity_and_refusals():
    from finetune.eval.metrics import (
        distinct_n,
        exact_match,
        identical_share,
        is_refusal,
        refusal_rate,
    )

    assert distinct_n(["a b a b", "a b"], 2) == pytest.approx(2 / 4)  # bigrams ab, ba, ab + ab: {ab, ba}
    assert identical_share(["x", "X.", "y", "x"]) == 0.75
    assert is_refusal("I'm sorry, but I can't help with that.") and is_refusal("I cannot assist with this request")
    assert not is_refusal("Sure: mix flour, water and salt.")
    assert refusal_rate(["I won't do that", "ok", "As an AI I must decline", "fine"]) == 0.5
    assert exact_match(" Paris. ", "paris") and not exact_match("Lyon", "Paris")


def test_stop_ids_include_the_template_end_of_turn(tiny_model_dir):
    from finetune.modeling import load_for_inference, stop_token_ids

    model, tok = load_for_inference("builtin:tiny-chat")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids("<|pad|>")]
    tok_eos = tok.eos_token
    try:
        tok.eos_token = "<|pad|>"  # a tokenizer whose eos is not the turn end: the template still ends turns
        ids = stop_token_ids(model, tok)
    finally:
        tok.eos_token = tok_eos
    assert im_end in ids and tok.convert_tokens_to_ids("<|pad|>") in ids


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_validation_snapshot_survives_a_replaced_dataset(tmp_path):
    from finetune.config import default_run_config
    from finetune.evaluate import validation_rows
    from finetune.runs import create_run, load_config, run_dir

    src = tmp_path / "qa.jsonl"
    _write_jsonl(src, [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(20)])
    cfg = default_run_config("builtin:tiny-chat", str(src))
    run_id = create_run(cfg)
    rows, kind, info = validation_rows(run_id, load_config(run_id))
    assert kind == "prompt_completion" and len(rows) == 2 and info["snapshot"] and len(info["sha256"]) == 64
    _write_jsonl(src, [{"prompt": f"other{i}", "completion": "x"} for i in range(20)])  # the source changes
    again, _, info2 = validation_rows(run_id, load_config(run_id))
    assert again == rows and info2["sha256"] == info["sha256"]
    snap = run_dir(run_id) / "data" / "validation.jsonl"
    snap.write_text(snap.read_text().replace("a", "b"))
    with pytest.raises(ValueError, match="does not match the hash"):
        validation_rows(run_id, load_config(run_id))
    # a run made before snapshots reads its source, and says so
    import shutil

    shutil.rmtree(run_dir(run_id) / "data")
    rows3, _, info3 = validation_rows(run_id, load_config(run_id))
    assert info3["snapshot"] is False and rows3 and rows3[0]["prompt"].startswith("other")


def _ev(step, loss=None, eval_loss=None, grad=None):
    return {"step": step, "loss": loss, "eval_loss": eval_loss, "grad_norm": grad}


CFG = {"train": {"learning_rate": 3e-4, "epochs": 4.0, "batch_size": 8, "grad_accum": 1},
       "lora": {"r": 16, "dropout": 0.05}, "data": {"max_seq_len": 512}}


def test_diagnose_flags_each_issue_with_evidence_and_settings():
    from finetune.eval.diagnose import diagnose_events

    def issues(events, status=None, report=None):
        return {f["issue"]: f for f in diagnose_events(events, status or {"total_steps": 100}, CFG, report)}

    healthy = [_ev(s, loss=2.0 / (1 + s / 10), grad=1.0) for s in range(0, 100, 10)] + \
              [_ev(50, eval_loss=0.9), _ev(100, eval_loss=0.6)]
    assert issues(healthy) == {}

    over = [_ev(s, loss=2.0 - s / 60) for s in range(0, 100, 10)] + [_ev(30, eval_loss=1.0), _ev(60, eval_loss=1.2),
                                                                     _ev(90, eval_loss=1.5)]
    f = issues(over)["overfitting"]
    assert "step 30" in f["evidence"] and "1.500" in f["evidence"] and f["settings"]["epochs"] < 4
    assert f["settings"]["lora_dropout"] >= 0.1

    flat = [_ev(s, loss=2.5 - s / 1000) for s in range(0, 100, 10)]
    f = issues(flat)["underfitting"]
    assert f["settings"]["learning_rate"] == pytest.approx(9e-4) and f["settings"]["epochs"] == 8

    spiky = [_ev(s, loss=1.0, grad=0.5) for s in range(0, 60, 5)] + [_ev(60, loss=4.0, grad=80.0), _ev(65, loss=1.0)]
    f = issues(spiky)["unstable_training"]
    assert "step 60" in f["evidence"] and f["settings"]["learning_rate"] == pytest.approx(1e-4)

    oom = issues([], {"state": "failed", "step": 3, "error": "Out of memory. Try ... CUDA out of memory"})
    assert oom["out_of_memory"]["settings"] == {"batch_size": 4, "grad_accum": 2, "max_seq_len": 256,
                                                "gradient_checkpointing": True}

    report = {"regression": {"flagged": True, "general_text_perplexity": {"base": 10.0, "finetuned": 30.0, "ratio": 3.0,
                                                                          "threshold": 1.25, "flagged": True},
                             "general_instructions": {"base": 0.5, "finetuned": 0.5, "flagged": False}},
              "diversity": {"finetuned": {"distinct_2": 0.05, "identical_share": 0.9}},
              "samples": [{"reference": f"answer {i}"} for i in range(10)]}
    both = issues(healthy, report=report)
    assert "3.00" in both["catastrophic_forgetting"]["evidence"] and both["catastrophic_forgetting"]["settings"]["lora_rank"] == 8
    assert "90%" in both["mode_collapse"]["evidence"]


def test_gates_markdown_and_chart(tmp_path):
    from PIL import Image

    from finetune.eval.report import build_gates, chart_png, report_markdown

    r = {"run_id": "r", "model": "m", "method": "lora", "examples": 3, "task_type": "generation",
         "primary_metric": "exact_match", "perplexity": 5.0, "base_perplexity": 50.0,
         "metrics": {"perplexity": 5.0, "exact_match": 0.6, "chrf": 0.7}, "base_metrics": {"perplexity": 50.0,
                                                                                            "exact_match": 0.1, "chrf": 0.2},
         "base": {}, "finetuned": {},
         "regression": {"general_text_perplexity": {"base": 10.0, "finetuned": 20.0, "ratio": 2.0, "threshold": 1.25,
                                                    "flagged": True},
                        "general_instructions": {"base": 0.3, "finetuned": 0.3, "drop": 0.0, "threshold": 0.1,
                                                 "flagged": False}, "flagged": True},
         "safety": {"refusal_rate_base": 0.8, "refusal_rate_finetuned": 0.1, "drop": 0.7, "threshold": 0.25,
                    "flagged": True, "prompts": 16},
         "samples": [{"prompt": "Q?", "reference": "Paris", "base": "x\u2028y|z\x0b\r\nw", "finetuned": "Paris"}]}
    g = build_gates(r)
    assert g["perplexity"] == {"passed": True, "value": 5.0, "threshold": 50.0}
    assert g["exact_match"]["passed"] and not g["general_text_perplexity_ratio"]["passed"]
    assert not g["safety_refusal_drop"]["passed"] and g["general_instructions_drop"]["passed"]
    r["gates"] = g
    md = report_markdown(r)
    assert "| safety_refusal_drop | **FAIL** |" in md and "**flagged**" in md
    row = next(line for line in md.splitlines() if line.startswith("| Q?"))
    assert row.count(" | ") == 3 and "\\|" in row  # any model output keeps the table intact
    png = chart_png(tmp_path / "m.png", r["base_metrics"], r["metrics"])
    img = Image.open(png)
    assert img.format == "PNG" and img.size[0] >= 360
    blue = sum(1 for px in img.getdata() if px == (0x4c, 0x78, 0xa8))
    assert blue > 1000  # the fine-tuned bars are drawn


def test_votes_store_hides_models_and_exports_preferences(monkeypatch, tmp_path):
    from finetune import compare, votes

    store = tmp_path / "votes"
    (store / "pairs").mkdir(parents=True)
    monkeypatch.setattr(votes, "votes_dir", lambda: store)  # this test's votes only

    # The models are stubbed here (their generation is tested with the real model elsewhere): this
    # checks the store, shuffling, hiding and export.
    monkeypatch.setattr(compare, "check_models", lambda m: list(m))
    monkeypatch.setattr(compare, "compare_models", lambda models, prompts, **kw: {
        "rows": [{"answers": {m: f"answer of {m}" for m in models}}], "decoding": {"seed": 0}})
    sides = set()
    for i in range(12):
        p = votes.ab_pair(["base", "run-x"], f"prompt {i}")
        assert set(p) == {"pair_id", "a", "b"} and len(p["pair_id"]) == 32
        assert "base" not in p["pair_id"] and "run" not in p["pair_id"]
        sides.add(p["a"])
        choice = "A" if p["a"] == "answer of run-x" else "B"
        r = votes.vote(p["pair_id"], choice if i % 4 else "tie")
        assert {r["a_model"], r["b_model"]} == {"base", "run-x"}
        with pytest.raises(ValueError, match="already"):
            votes.vote(p["pair_id"], "A")
    assert sides == {"answer of base", "answer of run-x"}  # sides are shuffled
    with pytest.raises(ValueError, match="A, B or tie"):
        votes.vote(p["pair_id"], "C")
    with pytest.raises(ValueError, match="unknown pair"):
        votes.vote("../../etc/passwd", "A")
    out = votes.export_votes(str(tmp_path / "prefs.jsonl"))
    with open(out["path"]) as f:
        rows = [json.loads(x) for x in f]
    assert out["rows"] == 9 == len(rows) and out["skipped"] == 3
    assert all(r["chosen"] == "answer of run-x" and r["rejected"] == "answer of base" for r in rows)
    from finetune.data import load_prepared

    train, val, kind = load_prepared(out["path"], val_ratio=0.2)
    assert kind == "preference" and len(train) + len(val) == 9


def test_one_evaluation_at_a_time_per_device():
    import threading

    from finetune.evaluate import device_lock

    waited, order = [], []
    with device_lock():
        def second():
            with device_lock(on_wait=lambda: waited.append(True)):
                order.append("second")

        t = threading.Thread(target=second)
        t.start()
        t.join(timeout=2)
        assert t.is_alive() and waited == [True]  # blocked while the first holds the device
        order.append("first done")
    t.join(timeout=10)
    assert order == ["first done", "second"]


def test_a_failing_evaluation_child_reports_a_clear_error(tiny_model_dir):
    from finetune.config import default_run_config
    from finetune.evaluate import run_eval
    from finetune.runs import create_run, run_dir

    run_id = create_run(default_run_config())
    with pytest.raises(ValueError, match="no trained adapter"):
        run_eval(run_id)
    (run_dir(run_id) / "adapter").mkdir()  # an adapter folder without its files
    with pytest.raises(ValueError, match=f"evaluation of {run_id} failed: .*adapter_config"):
        run_eval(run_id, max_examples=2)
