"""The CLI contract: every command prints one JSON object with --json; bad input exits 2 with a
one-line message naming the file and line."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "finetune", *args], cwd=ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=300)


def test_plan_json():
    out = _cli("plan", "--model", "meta-llama/Llama-3.1-8B-Instruct", "--method", "qlora", "--seq-len", "512",
               "--batch-size", "1", "--hardware", "t4-small", "--examples", "2000", "--json")
    assert out.returncode == 0, out.stderr
    p = json.loads(out.stdout)
    for key in ("method", "reasons", "vram_gb", "vram_breakdown", "fits", "time_h", "cost_usd", "hyperparameters",
                "report_md", "trl_config_yaml"):
        assert key in p
    assert p["method"] == "qlora" and 4 < p["vram_gb"] < 10


def test_data_inspect_and_prepare(tmp_path):
    out = _cli("data", "inspect", "builtin:demo", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["format"] == "alpaca" and info["confidence"] == 1.0 and "token_stats" in info
    out = _cli("data", "prepare", "builtin:demo", "--out", str(tmp_path / "demo"), "--val-ratio", "0.2", "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert Path(res["train_path"]).exists() and res["rows_validation"] > 80


def test_bad_file_exits_2_naming_file_and_line(tmp_path):
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{oops\n')
    out = _cli("data", "inspect", str(bad), "--json")
    assert out.returncode == 2
    err = json.loads(out.stdout)["error"]
    assert "broken.jsonl" in err and "line 2" in err
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_data_augment_paraphrase(tmp_path):
    out = _cli("data", "augment", "builtin:demo", "--out", str(tmp_path / "aug"), "--n", "10", "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["kept"] == 10 and res["method"] == "paraphrase"
    rows = [json.loads(line) for line in (tmp_path / "aug" / "train.jsonl").read_text().splitlines()]
    assert sum(1 for r in rows if r.get("_generated") == "paraphrase") == 10


def test_json_flag_before_the_command():
    out = _cli("--json", "runs")
    assert out.returncode == 0 and isinstance(json.loads(out.stdout)["runs"], list)
