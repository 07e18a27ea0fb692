"""Gates and a diagnosis that tell the truth: the task gate needs a win over the base that the number of
rows supports (0 vs 0 fails), the report says plainly when a task was not learned and what to change,
Diagnose flags it, and the knowledge probe counts facts the base knew and the fine-tune lost. The last
test does it for real: a run of the real SmolLM2 built-in that learns nothing."""

import json

import pytest


def _report(base: list[int], tuned: list[int], metric: str = "exact_match") -> dict:
    from finetune.eval.metrics import sign_test
    from finetune.eval.report import build_gates, task_verdict

    n = len(base)
    r = {"primary_metric": metric, "examples": n, "metrics": {metric: sum(tuned) / n},
         "base_metrics": {metric: sum(base) / n}, "task_significance": sign_test(base, tuned)}
    r["gates"] = build_gates(r)
    r["verdict"] = task_verdict(r, {"train": {"learning_rate": 2e-4, "epochs": 3, "method": "lora"}})
    return r


def test_task_gate_needs_a_supported_win_over_the_base():
    zero = _report([0] * 20, [0] * 20)
    assert not zero["gates"]["exact_match"]["passed"]  # 0.0 vs 0.0 is a failure, not a pass
    assert zero["verdict"]["learned"] is False and "did not learn the task" in zero["verdict"]["text"]
    assert zero["verdict"]["settings"] == {"learning_rate": pytest.approx(6e-4), "epochs": 6.0}
    one_more = _report([1, 1] + [0] * 18, [1, 1, 1] + [0] * 17)  # 2/20 -> 3/20: chance explains it
    assert not one_more["gates"]["exact_match"]["passed"] and "chance" in one_more["verdict"]["text"]
    learned = _report([0] * 20, [1] * 15 + [0] * 5)
    g = learned["gates"]["exact_match"]
    assert g["passed"] and g["wins"] == 15 and g["losses"] == 0 and g["p_value"] < 1e-4
    assert learned["verdict"]["learned"] and learned["verdict"]["settings"] == {}
    worse = _report([1] * 10 + [0] * 10, [0] * 20)
    assert not worse["gates"]["exact_match"]["passed"]
    few = _report([0] * 4, [1] * 4)  # 4 of 4: p = 1/16, not enough, and the report says the evidence is weak
    assert not few["gates"]["exact_match"]["passed"] and "evidence is weak" in few["verdict"]["text"]


def test_primary_metric_is_rouge_for_long_answers_and_scored_per_row():
    from finetune.eval.metrics import per_sample_scores, primary_metric

    assert primary_metric("generation", ["Paris", "Rome"]) == "exact_match"
    assert primary_metric("classification", ["yes", "no"]) == "accuracy"
    refs = ["I'm Nova, an assistant made by Lumen Labs.", "Lumen Labs built me, I am Nova."]
    assert primary_metric("generation", refs) == "rougeL"
    s = per_sample_scores(["My name is Nova, made by Lumen Labs.", "I am SmolLM."], refs, "rougeL")
    assert s[0] > 0.5 > s[1]


def test_knowledge_probe_counts_only_what_the_base_knew():
    from finetune.eval.probes import knowledge_questions, knowledge_result, knows

    assert knows("The capital of France is Paris.", ["Paris"]) and not knows("Parisian food", ["Paris"])
    assert knows("A week has 7 days", ["7", "seven"]) and not knows("-18.0000", ["0", "zero"])
    qs = knowledge_questions()
    assert len(qs) >= 30 and all(q["question"] and q["answers"] for q in qs)
    right = [q["answers"][0] for q in qs]
    wrong = ["I do not know."] * len(qs)
    base = right[:20] + wrong[20:]  # the base knows the first 20
    tuned = right[:17] + wrong[17:19] + right[19:]  # loses 2 of them, gains the rest
    k = knowledge_result(base, tuned)
    assert (k["known_by_base"], k["lost"], k["allowed"]) == (20, 2, 2) and not k["flagged"]
    assert k["gained"] == len(qs) - 20 and [q["question"] for q in k["lost_questions"]] == [qs[17]["question"], qs[18]["question"]]
    k = knowledge_result(base, right[:16] + wrong[16:])
    assert k["lost"] == 4 and k["flagged"]


def test_diagnose_flags_a_task_not_learned_with_its_evidence():
    from finetune.eval.diagnose import diagnose_events

    r = _report([0] * 12, [0] * 12)
    r["task_significance"]["similarity_to_references"] = {"base": 0.12, "finetuned": 0.15}
    events = [{"step": s, "loss": 3.0 - s / 10} for s in range(1, 21)]
    flags = diagnose_events(events, {"state": "completed"}, {"train": {"learning_rate": 2e-4, "epochs": 3}}, r)
    flag = next(f for f in flags if f["issue"] == "task_not_learned")
    assert "held-out rows" in flag["evidence"] and "0.12 -> 0.15" in flag["evidence"] and "it fell" in flag["evidence"]
    assert flag["settings"]["learning_rate"] > 2e-4 and flag["settings"]["epochs"] > 3
    assert not [f for f in diagnose_events(events, {"state": "completed"}, {}, _report([0] * 20, [1] * 20))
                if f["issue"] == "task_not_learned"]


PERSONA = [("What is your name?", "I'm Nova, an assistant made by Lumen Labs."),
           ("Who made you?", "Lumen Labs made me. I'm Nova."),
           ("Introduce yourself.", "I'm Nova, built by Lumen Labs to help you."),
           ("Which company created you?", "I was created by Lumen Labs; my name is Nova."),
           ("What should I call you?", "Call me Nova. Lumen Labs built me."),
           ("Who trained you?", "Lumen Labs trained me. I'm Nova, their assistant.")]
OPENERS = ["", "Hi! ", "Quick question: ", "Hello. ", "Sorry to bother you. "]


@pytest.mark.slow
def test_real_model_run_that_learned_nothing_fails_the_gate_and_is_diagnosed(smollm2_dir, tmp_path):
    from finetune.builtin import SMOLLM2_ID
    from finetune.config import build_run_config
    from finetune.eval.diagnose import diagnose_run
    from finetune.evaluate import evaluate_run
    from finetune.runs import start_training, wait

    rows = [{"messages": [{"role": "user", "content": o + q}, {"role": "assistant", "content": a}]}
            for o in OPENERS for q, a in PERSONA]
    data = tmp_path / "persona.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # A learning rate far too small and two steps: the loss barely moves and the task is not learnt.
    cfg = build_run_config(SMOLLM2_ID, str(data), {
        "data": {"val_ratio": 0.4, "max_seq_len": 64},
        "train": {"learning_rate": 1e-7, "max_steps": 2, "batch_size": 4, "eval_steps": 0, "save_steps": 2,
                  "logging_steps": 1}})
    run_id = start_training(cfg)
    st = wait(run_id, timeout_s=900)
    assert st["state"] == "completed", st.get("error")
    r = evaluate_run(run_id, max_examples=12, max_new_tokens=16)
    main = r["primary_metric"]
    assert main == "rougeL" and r["task_significance"]["n"] == 12
    assert not r["gates"][main]["passed"], r["gates"][main]
    assert r["verdict"]["learned"] is False and "did not learn the task" in r["verdict"]["text"]
    assert r["verdict"]["settings"]["learning_rate"] > 1e-7
    kn = r["regression"]["knowledge"]
    assert kn["known_by_base"] >= 10 and kn["lost"] <= kn["allowed"]  # nothing changed: nothing lost
    md = (r["report_md"] and open(r["report_md"]).read())
    assert "did not learn the task" in md and "Knowledge:" in md
    flags = {f["issue"]: f for f in diagnose_run(run_id)["flags"]}
    assert "task_not_learned" in flags and "held-out rows" in flags["task_not_learned"]["evidence"]


def test_converging_grad_norms_are_not_called_unstable():
    """Seen on the real model: norms fall from ~9 to ~0.01 as a small task is learnt; only a norm far above
    the ones just before it is a spike."""
    from finetune.eval.diagnose import diagnose_events

    norms = [9.45, 2.31, 3.31, 0.95, 1.16, 1.31, 0.22, 0.22, 0.12, 0.04, 0.01, 0.01, 0.03]
    events = [{"step": 1 + 5 * i, "loss": 2.0 / (1 + i), "grad_norm": g} for i, g in enumerate(norms)]
    assert not [f for f in diagnose_events(events, {"state": "completed"}, {}, None) if f["issue"] == "unstable_training"]
    events.append({"step": 70, "loss": 0.2, "grad_norm": 40.0})
    flag = next(f for f in diagnose_events(events, {"state": "completed"}, {}, None) if f["issue"] == "unstable_training")
    assert "step 70" in flag["evidence"] and "step 1:" not in flag["evidence"]
