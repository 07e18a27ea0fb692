"""The CLI contract: every command prints exactly one JSON object on stdout with --json (logs go to
stderr); bad input exits 2 with a one-line message naming the file and line; config options are
generated from the dataclasses and land in the run's config.json; relative paths work from any
folder; plain output is a readable summary.

Run: `python -m pytest tests/test_cli.py -q` (test_every_command_from_another_folder trains a few
steps of the built-in model, evaluates and compares it: about a minute).
"""

import dataclasses
import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args, cwd=ROOT):
    # From another folder the package is found through PYTHONPATH (installed, `finetune` works too:
    # tests/test_packaging.py).
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "finetune", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _json(out) -> dict:
    """stdout must be exactly one JSON object (json.loads fails on anything else)."""
    assert out.returncode == 0, out.stderr[-2000:]
    obj = json.loads(out.stdout)
    assert isinstance(obj, dict)
    return obj


def test_plan_json():
    out = _cli("plan", "--model", "meta-llama/Llama-3.1-8B-Instruct", "--method", "qlora", "--seq-len", "512",
               "--batch-size", "1", "--hardware", "t4-small", "--examples", "2000", "--json")
    p = _json(out)
    for key in ("method", "reasons", "vram_gb", "vram_breakdown", "fits", "time_h", "cost_usd", "hyperparameters",
                "report_md", "trl_config_yaml"):
        assert key in p
    assert p["method"] == "qlora" and 4 < p["vram_gb"] < 10


def test_help_lists_every_command():
    out = _cli("--help")
    assert out.returncode == 0
    for cmd in ("plan", "calibrate", "data", "train", "status", "stop", "runs", "eval", "diagnose", "compare", "votes"):
        assert f"\n    {cmd} " in out.stdout or f"\n    {cmd}\n" in out.stdout, cmd
    assert "FIELD=COLUMN" in _cli("data", "inspect", "--help").stdout


def test_data_inspect_and_prepare(tmp_path):
    info = _json(_cli("data", "inspect", "builtin:demo", "--json"))
    assert info["format"] == "alpaca" and info["confidence"] == 1.0 and "token_stats" in info
    res = _json(_cli("data", "prepare", "builtin:demo", "--out", str(tmp_path / "demo"), "--val-ratio", "0.2",
                     "--json"))
    assert Path(res["train_path"]).exists() and res["rows_validation"] > 80
    plain = _cli("data", "inspect", str(ROOT / "tests" / "data" / "ds_pii.jsonl"))
    assert plain.returncode == 0 and "Issues:" in plain.stdout and "pii" in plain.stdout
    assert "rule" in plain.stdout and not plain.stdout.lstrip().startswith("{")


def test_bad_file_exits_2_naming_file_and_line(tmp_path):
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{oops\n')
    out = _cli("data", "inspect", str(bad), "--json")
    assert out.returncode == 2
    err = json.loads(out.stdout)["error"]
    assert "broken.jsonl" in err and "line 2" in err
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_bad_config_value_is_one_line_and_no_run(home):
    before = set(os.listdir(home / "runs")) if (home / "runs").exists() else set()
    out = _cli("train", "--lora-r", "0", "--json")
    assert out.returncode == 2 and "lora.r" in json.loads(out.stdout)["error"]
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = _cli("train", "--method", "bogus", "--json")  # a usage error is one JSON object too
    assert out.returncode == 2 and "invalid choice" in json.loads(out.stdout)["error"]
    assert "lora" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert (set(os.listdir(home / "runs")) if (home / "runs").exists() else set()) == before


def test_map_is_field_equals_column(tmp_path):
    f = tmp_path / "qa.csv"
    f.write_text("question,reply\nWhat is 2+2?,4\nName a colour.,Blue\n")
    info = _json(_cli("data", "inspect", str(f), "--format", "alpaca", "--map", "instruction=question",
                      "--map", "output=reply", "--json"))
    assert info["format"] == "alpaca" and info["rows_valid"] == 2


def test_data_augment_paraphrase(tmp_path):
    res = _json(_cli("data", "augment", "builtin:demo", "--out", str(tmp_path / "aug"), "--n", "10", "--json"))
    assert res["kept"] == 10 and res["method"] == "paraphrase"
    rows = [json.loads(line) for line in (tmp_path / "aug" / "train.jsonl").read_text().splitlines()]
    assert sum(1 for r in rows if r.get("_generated") == "paraphrase") == 10


def test_prepare_and_augment_save_names_in_the_same_place(home, tmp_path):
    res = _json(_cli("data", "prepare", "builtin:demo", "--out", "cli-split", "--json", cwd=tmp_path))
    assert Path(res["dir"]) == home / "datasets" / "cli-split" and not (tmp_path / "cli-split").exists()
    aug = _json(_cli("data", "augment", "cli-split", "--n", "5", "--json", cwd=tmp_path))
    assert Path(aug["dir"]).parent == home / "datasets"


def test_json_flag_before_the_command():
    out = _cli("--json", "runs")
    assert isinstance(_json(out)["runs"], list)


# ---------------------------------------------------------------------------------------------
# Options generated from the config dataclasses


def test_every_config_field_is_a_train_option():
    from finetune import cli

    help_text = _cli("train", "--help").stdout
    parser = cli.build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    flags = {s for a in train._actions for s in a.option_strings}
    for section, cls in cli.config_sections():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            flag = cli.option_name(section, f.name)
            assert flag in flags, flag
            if typing.get_origin(hints[f.name]) is typing.Literal:
                assert all(str(c) in help_text for c in typing.get_args(hints[f.name]))
    for flag in ("--save-steps", "--eval-steps", "--grad-accum", "--warmup-ratio", "--lora-dropout", "--lora-r",
                 "--model", "--data", "--method", "--lr", "--epochs", "--max-steps", "--batch-size", "--max-seq-len"):
        assert flag in flags, flag
    assert "Save a resumable checkpoint every this many steps." in " ".join(help_text.split())


def test_options_round_trip_into_config_json(home):
    from finetune import cli, runs

    args = cli.build_parser().parse_args(
        ["train", "--save-steps", "7", "--eval-steps", "3", "--grad-accum", "2", "--warmup-ratio", "0.2",
         "--lora-dropout", "0.1", "--lora-r", "4", "--lora-alpha", "8", "--lora-target-modules", "q_proj,v_proj",
         "--lr", "0.001", "--max-steps", "5", "--epochs", "2", "--batch-size", "3", "--max-seq-len", "64",
         "--method", "dora", "--lr-scheduler", "linear", "--gradient-checkpointing", "--data-val-ratio", "0.2",
         "--data-seed", "7", "--seed", "9", "--weight-decay", "0.01", "--name", "round-trip"])
    cfg = cli.config_from_args(args)
    run_id = runs.create_run(cfg)
    saved = json.loads((home / "runs" / run_id / "config.json").read_text())
    assert saved["train"]["save_steps"] == 7
    assert {k: saved["train"][k] for k in ("eval_steps", "grad_accum", "warmup_ratio", "learning_rate", "max_steps",
                                           "epochs", "batch_size", "method", "lr_scheduler", "gradient_checkpointing",
                                           "seed", "weight_decay")} == {
        "eval_steps": 3, "grad_accum": 2, "warmup_ratio": 0.2, "learning_rate": 0.001, "max_steps": 5, "epochs": 2.0,
        "batch_size": 3, "method": "dora", "lr_scheduler": "linear", "gradient_checkpointing": True, "seed": 9,
        "weight_decay": 0.01}
    assert saved["lora"] == {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": "q_proj,v_proj",
                             "num_virtual_tokens": 16}
    assert saved["data"] == {"source": "builtin:demo", "val_ratio": 0.2, "seed": 7, "max_seq_len": 64}
    assert saved["name"] == "round-trip" and "round-trip" in run_id
    assert runs.load_config(run_id) == cfg  # and back into the dataclasses


# ---------------------------------------------------------------------------------------------
# The whole loop through the command line, from a folder that is not the repository


@pytest.mark.slow
def test_every_command_from_another_folder(tmp_path, tiny_model_dir):
    work = tmp_path / "somewhere"
    work.mkdir()
    (work / "mine.jsonl").write_text((ROOT / "tests" / "data" / "ds_alpaca.jsonl").read_text())
    (work / "prompts.txt").write_text("What is the capital of France?\nName a primary colour.\n")
    prepared = _json(_cli("data", "prepare", "mine.jsonl", "--out", "./my_split", "--json", cwd=work))
    assert Path(prepared["dir"]) == work / "my_split"

    # A relative --data path, the training child running in another folder: it must find it.
    res = _json(_cli("train", "--data", "my_split", "--max-steps", "2", "--save-steps", "2", "--eval-steps", "1",
                     "--max-seq-len", "64", "--lora-r", "4", "--wait", "--timeout-s", "500", "--json", cwd=work))
    assert res["state"] == "completed", res.get("error")
    run_id = res["run_id"]
    cfg = json.loads((Path(res["run_dir"]) / "config.json").read_text())
    assert cfg["data"]["source"] == str(work / "my_split") and cfg["train"]["save_steps"] == 2
    assert cfg["lora"]["r"] == 4 and cfg["train"]["max_steps"] == 2

    st = _json(_cli("status", run_id, "--json", cwd=work))
    assert st["state"] == "completed" and st["step"] == 2
    assert _json(_cli("stop", run_id, "--json", cwd=work))["state"] == "completed"  # nothing to stop
    assert run_id in [r["run_id"] for r in _json(_cli("runs", "--json", cwd=work))["runs"]]
    ev = _json(_cli("eval", run_id, "--max-examples", "4", "--json", cwd=work))
    assert "perplexity" in ev["finetuned"] and ev["samples"]
    # the task gate is named by the primary metric: ROUGE-L here, since these answers are sentences
    assert ev["primary_metric"] == "rougeL" and "rougeL" in ev["gates"] and ev["report_md"].endswith("report.md")
    cmp_ = _json(_cli("compare", run_id, "--base", "--prompts", "prompts.txt", "--max-new-tokens", "4", "--json",
                      cwd=work))
    assert [r["prompt"] for r in cmp_["rows"]] == ["What is the capital of France?", "Name a primary colour."]
    assert cmp_["models"] == ["base", run_id] and set(cmp_["latency"]) == {"base", run_id}
    diag = _json(_cli("diagnose", run_id, "--json", cwd=work))
    assert diag["run_id"] == run_id and isinstance(diag["flags"], list)
    votes = _json(_cli("votes", "export", "--out", "votes.jsonl", "--json", cwd=work))
    assert votes["path"] == str(work / "votes.jsonl")
    assert votes["rows"] == len((work / "votes.jsonl").read_text().splitlines())
    check = _json(_cli("calibrate", "check", run_id, "--json", cwd=work))
    assert check["run_id"] == run_id and check["predicted_s"] > 0
    dry = _json(_cli("calibrate", "dry-run", "--steps", "1", "--json", cwd=work))  # trainer logs go to stderr
    assert dry["tokens_per_s"] > 0

    # Plain output: readable tables, not JSON.
    table = _cli("runs", cwd=work).stdout
    assert table.splitlines()[0].split()[:3] == ["run_id", "state", "method"] and run_id in table
    plain = _cli("eval", run_id, "--max-examples", "4", cwd=work).stdout
    assert "metric" in plain and "perplexity" in plain and "exact_match" in plain and "Samples:" in plain
    plain = _cli("compare", run_id, "--prompts", "prompts.txt", "--max-new-tokens", "4", cwd=work).stdout
    assert "prompt" in plain.splitlines()[0] and "capital of France" in plain


def test_prepare_drops_and_lists_invalid_rows_by_default_and_strict_refuses(tmp_path):
    """Like the Dataset tab: one empty cell costs one row, listed by row, file line, field and problem."""
    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "faq.csv").write_text("instruction,output\nWhat is 2+2?,4\nName a colour,\n"
                                  "Capital of Peru?,Lima\nSay hi,hi\nOpposite of up?,down\n")
    res = _json(_cli("data", "prepare", "faq.csv", "--out", "./faq_split", "--json", cwd=work))
    assert res["rows_train"] + res["rows_validation"] == 4
    assert res["cleaning"]["skipped_rows"] == [{"row": 2, "line": 3, "field": "output", "problem": "is empty"}]
    plain = _cli("data", "prepare", "faq.csv", "--out", "./faq_plain", cwd=work)
    assert plain.returncode == 0 and "1 row(s) dropped" in plain.stdout
    assert "output" in plain.stdout and "is empty" in plain.stdout
    strict = _cli("data", "prepare", "faq.csv", "--out", "./faq_strict", "--strict", "--json", cwd=work)
    assert strict.returncode == 2 and not (work / "faq_strict").exists()
    err = json.loads(strict.stdout)["error"]
    assert "faq.csv" in err and "row 2" in err and "'output'" in err
