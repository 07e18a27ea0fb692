"""Benchmarks and the LLM judge in Evaluate (issue 20): custom multiple-choice and generation JSONL
tasks and an lm-eval task YAML with local data, scored offline on base and fine-tuned; a judge (the
real SmolLM2 built-in) compares answers in both orders; the report keys, gates and CLI flags; public
Space limits. A run of the tiny built-in model is trained once for the module.

Run: `python -m pytest tests/test_benchmarks.py -q -p no:cacheprovider` (a few minutes on 2 cores).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MC = [{"question": f"What is the capital of {c}?", "choices": ["banana", cap, "seven", "blue"], "answer": 1}
      for c, cap in (("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Egypt", "Cairo"),
                     ("Germany", "Berlin"), ("Spain", "Madrid"))]
GEN = [{"prompt": "What is the opposite of hot?", "answer": "cold"}, {"prompt": "Is 7 even or odd?", "answer": "odd"},
       {"prompt": "Opposite of fast?", "answer": "slow"}, {"prompt": "Is 12 even or odd?", "answer": "even"}]


def _jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _yaml_task(tmp: Path) -> str:
    data = _jsonl(tmp / "yaml_rows.jsonl", MC)
    p = tmp / "capitals_yaml.yaml"
    p.write_text("task: capitals_yaml\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                 f"    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
                 "doc_to_text: \"Question: {{question}}\\nAnswer:\"\ndoc_to_choice: choices\n"
                 "doc_to_target: answer\nmetric_list:\n  - metric: acc\n")
    return str(p)


@pytest.fixture(scope="module")
def run_id(tiny_model_dir):
    from finetune.config import default_run_config
    from finetune.runs import start_training, wait

    cfg = default_run_config(max_steps=30, eval_steps=0, save_steps=30)
    rid = start_training(cfg)
    st = wait(rid, timeout_s=900)
    assert st["state"] == "completed", st.get("error")
    return rid


def test_benchmark_files_are_read_and_checked(tmp_path, monkeypatch):
    from finetune.eval.benchmarks import BenchmarkError, load_benchmark, load_benchmarks

    mc = load_benchmark(_jsonl(tmp_path / "mc.jsonl", MC))
    assert (mc.kind, mc.name, len(mc.rows), mc.source) == ("multiple_choice", "mc", 6, "mc.jsonl")
    assert load_benchmark(_jsonl(tmp_path / "gen.jsonl", GEN)).kind == "generation"
    assert load_benchmark("builtin:capitals-mc").kind == "multiple_choice"
    assert load_benchmark(_yaml_task(tmp_path)).kind == "lm_eval_yaml"
    assert load_benchmark("arc_easy").kind == "lm_eval_task"
    assert [b.name for b in load_benchmarks([str(tmp_path / "mc.jsonl")] * 2)] == ["mc", "mc-2"]
    bad = {"answer 9": [dict(MC[0], answer=9)], "choices": [dict(MC[0], choices=["x"])],
           "mixes": MC[:1] + GEN[:1], "expected": [{"text": "hello"}]}
    for msg, rows in bad.items():
        with pytest.raises(BenchmarkError, match=msg.split()[0]):
            load_benchmark(_jsonl(tmp_path / "bad.jsonl", rows))
    (tmp_path / "broken.jsonl").write_text(json.dumps(MC[0]) + "\n{oops\n")
    with pytest.raises(BenchmarkError, match="line 2"):
        load_benchmark(str(tmp_path / "broken.jsonl"))
    with pytest.raises(BenchmarkError, match="unknown built-in"):
        load_benchmark("builtin:nope")
    with pytest.raises(BenchmarkError, match="no such file"):
        load_benchmark(str(tmp_path / "missing.jsonl"))


def test_public_space_reads_only_builtin_or_uploaded_benchmarks_and_allowed_judges(tmp_path, monkeypatch):
    from finetune.eval.benchmarks import BenchmarkError, check_benchmark
    from finetune.eval.judge import JudgeError, check_judge_model

    up = tmp_path / "uploads"
    up.mkdir()
    monkeypatch.setenv("FINETUNE_UPLOAD_ROOTS", str(up))
    f = _jsonl(up / "mine.jsonl", MC)
    assert check_benchmark("builtin:capitals-mc", public=True) == "builtin:capitals-mc"
    assert check_benchmark(f, public=True) == f
    for spec in ("/etc/passwd", str(tmp_path / "x.jsonl"), "arc_easy"):
        with pytest.raises(BenchmarkError, match="public Space") as e:
            check_benchmark(spec, public=True)
        assert str(tmp_path) not in str(e.value)
    with pytest.raises(BenchmarkError, match="YAML"):
        check_benchmark(str(up / "task.yaml"), public=True)
    assert check_judge_model("builtin:smollm2-135m-instruct", public=True)
    with pytest.raises(JudgeError, match="public Space"):
        check_judge_model("/srv/models/secret-judge", public=True)
    monkeypatch.setenv("FINETUNE_JUDGE_MODELS", "HuggingFaceTB/SmolLM2-360M-Instruct")
    assert check_judge_model("HuggingFaceTB/SmolLM2-360M-Instruct", public=True)
    assert check_judge_model("/srv/models/any", public=False) == "/srv/models/any"


def test_a_verdict_counts_only_when_both_orders_agree():
    from finetune.eval.bench_report import extra_gates
    from finetune.eval.judge import calibrate, verdict_of

    # P(A) with base first, P(A) with fine-tuned first
    assert verdict_of(0.2, 0.8, False) == "win"
    assert verdict_of(0.8, 0.2, False) == "loss"
    assert verdict_of(0.9, 0.9, False) == "tie"  # always "A": position bias, cancelled
    assert verdict_of(0.1, 0.9, True) == "tie"  # identical answers
    assert verdict_of(0.5, 0.5, False) == "tie"
    # a judge that says "A" to everything gives no verdict once its position preference is taken out
    probs, bias = calibrate([0.99] * 4)
    assert bias > 4 and probs == [pytest.approx(0.5)] * 4 and verdict_of(*probs[:2], False) == "tie"
    # one that reads the answers keeps its ordering: fine-tuned preferred in both orders, under a bias to A
    probs, _ = calibrate([0.9, 0.999, 0.9, 0.999])
    assert verdict_of(probs[0], probs[1], False) == "win"
    g = extra_gates({"benchmarks": {"a": {"delta": 0.1}, "b": {"delta": -0.2}}, "judge": {"win_rate": 0.4}})
    assert not g["benchmark_regression"]["passed"] and g["benchmark_regression"]["task"] == "b"
    assert not g["judge_win_rate"]["passed"]
    g = extra_gates({"benchmarks": {"a": {"delta": -0.01}}, "judge": {"win_rate": 0.5}})
    assert g["benchmark_regression"]["passed"] and g["judge_win_rate"]["passed"]


def test_real_smollm2_gets_an_obvious_multiple_choice_task_right(smollm2_dir):
    """Chance is 25%: a scoring bug (wrong tokens scored, choices misaligned) falls to about that."""
    from finetune.eval.benchmarks import load_benchmark, score_benchmark
    from finetune.modeling import load_for_inference

    model, tok = load_for_inference("builtin:smollm2-135m-instruct")
    r = score_benchmark(model, tok, load_benchmark("builtin:capitals-mc"))
    print("SmolLM2 capitals-mc acc", r["value"], "acc_norm", r["acc_norm"])
    assert r["n"] == 16 and r["value"] >= 0.75, r
    g = score_benchmark(model, tok, load_benchmark("builtin:opposites-parity-gen"), max_new_tokens=12)
    print("SmolLM2 opposites-parity-gen exact", g["value"], "contains", g["contains"], g["answers"][:6])
    assert 0 <= g["value"] <= g["contains"] <= 1 and g["contains"] > 0


def test_eval_scores_benchmarks_and_the_judge_on_base_and_tuned(run_id, tmp_path):
    from finetune.evaluate import evaluate_run
    from finetune.runs import run_dir

    mc, gen = _jsonl(tmp_path / "caps.jsonl", MC), _jsonl(tmp_path / "words.jsonl", GEN)
    r = evaluate_run(run_id, max_examples=6, max_new_tokens=8, probes=False,
                     benchmarks=[mc, gen, _yaml_task(tmp_path)], judge="builtin:smollm2-135m-instruct")
    b = r["benchmarks"]
    print(json.dumps({k: {x: v[x] for x in ("metric", "base", "tuned", "delta", "n")} for k, v in b.items()}))
    assert list(b) == ["caps", "words", "capitals_yaml"]
    assert (b["caps"]["metric"], b["words"]["metric"], b["capitals_yaml"]["metric"]) == ("acc", "exact_match", "acc")
    assert b["caps"]["n"] == 6 and b["words"]["n"] == 4 and b["capitals_yaml"]["n"] == 6
    for v in b.values():
        assert 0 <= v["base"] <= 1 and 0 <= v["tuned"] <= 1 and v["delta"] == pytest.approx(v["tuned"] - v["base"])
    assert len(b["words"]["samples"]) == 4 and {"base", "tuned", "reference"} <= set(b["words"]["samples"][0])
    j = r["judge"]
    print("judge", {k: j[k] for k in ("win_rate", "wins", "losses", "ties", "n", "position_bias")})
    assert j["judge_model"] == "builtin:smollm2-135m-instruct" and j["n"] == 6 == len(j["pairs"])
    assert j["wins"] + j["losses"] + j["ties"] == 6
    assert j["win_rate"] == pytest.approx((j["wins"] + j["ties"] / 2) / 6)
    for p in j["pairs"]:  # both orders judged, positions swapped
        assert [(o["a"], o["b"]) for o in p["orders"]] == [("base", "finetuned"), ("finetuned", "base")]
        assert all(0 <= o["p_a"] <= 1 for o in p["orders"]) and p["verdict"] in ("win", "loss", "tie")
    assert {"benchmark_regression", "judge_win_rate"} <= set(r["gates"])
    saved = json.loads((run_dir(run_id) / "eval" / "report.json").read_text())
    assert saved["benchmarks"]["caps"]["tuned"] == b["caps"]["tuned"] and saved["judge"]["n"] == 6
    md = (run_dir(run_id) / "eval" / "report.md").read_text()
    assert "## Benchmarks" in md and "## Judge" in md and "| caps | acc |" in md


def test_a_standard_task_offline_fails_with_a_clear_error(run_id):
    from finetune.eval.benchmarks import BenchmarkError
    from finetune.evaluate import evaluate_run

    with pytest.raises(BenchmarkError, match="Hub") as e:
        evaluate_run(run_id, max_examples=2, max_new_tokens=2, probes=False, benchmarks=["arc_easy"])
    assert "offline" in str(e.value) and "Traceback" not in str(e.value)


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "finetune", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)


def test_cli_benchmark_and_judge_flags(run_id, tmp_path):
    gen = _jsonl(tmp_path / "words.jsonl", GEN)
    out = _cli("eval", run_id, "--max-examples", "4", "--max-new-tokens", "6", "--benchmark", "builtin:capitals-mc",
               "--benchmark", gen, "--judge", "builtin:tiny-chat", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    assert set(r["benchmarks"]) == {"capitals-mc", "words"} and r["benchmarks"]["capitals-mc"]["n"] == 16
    assert r["judge"]["judge_model"] == "builtin:tiny-chat" and r["judge"]["n"] == 4
    assert 0 <= r["judge"]["win_rate"] <= 1
    bad = _cli("eval", run_id, "--benchmark", str(tmp_path / "nope.jsonl"), "--json")
    assert bad.returncode == 2 and "nope.jsonl" in json.loads(bad.stdout)["error"] and "Traceback" not in bad.stderr
