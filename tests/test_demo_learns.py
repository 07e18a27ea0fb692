"""The headline promise: one default LoRA run of builtin:tiny-chat on builtin:demo, through the same
child process the app uses, lifts exact match on the validation split by at least 50 points."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_default_run_lifts_exact_match_by_50_points(tiny_model_dir):
    env = dict(os.environ)
    run = subprocess.run([sys.executable, "-m", "finetune", "train", "--wait", "--json"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    st = json.loads(run.stdout)
    assert st["state"] == "completed", st.get("error")
    ev = subprocess.run([sys.executable, "-m", "finetune", "eval", st["run_id"], "--json"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stderr[-2000:]
    report = json.loads(ev.stdout)
    print("default run:", st.get("duration_s"), "s; exact match", report["base"]["exact_match"], "->",
          report["finetuned"]["exact_match"])
    assert report["examples"] >= 40
    assert report["delta"]["exact_match"] >= 0.5
    assert report["finetuned"]["perplexity"] < report["base"]["perplexity"] / 10
    assert report["perplexity"] == report["finetuned"]["perplexity"] and report["metrics"]["exact_match"] >= 0.5
    assert report["gates"]["exact_match"]["passed"] and report["gates"]["perplexity"]["passed"]
    d = Path(st["run_dir"])
    assert (d / "eval" / "report.json").exists() and "exact match" in (d / "eval" / "report.md").read_text()
    compare = subprocess.run([sys.executable, "-m", "finetune", "compare", st["run_id"], "--base", "--json"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
    cmp = json.loads(compare.stdout)
    assert cmp["models"] == ["base", st["run_id"]]
    assert cmp["rows"] and all(r["answers"]["base"] != r["answers"][st["run_id"]] for r in cmp["rows"][:3])
