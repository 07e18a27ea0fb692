"""Hyperparameter search (finetune/sweep.py): a real 3-trial study on builtin:tiny-chat + builtin:demo
through the CLI, where the third trial (a learning rate of 1e-7, which cannot lower the validation
loss) is pruned by the median pruner inside its training child; the CLI's JSON contract, the study
folder, `--show`, the budget arithmetic, "Use the best" and the Gradio API.

Run: `python -m pytest tests/test_sweep.py -q -p no:cacheprovider` (about two minutes on 2 CPU cores).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOOD = "learning_rate=0.002,epochs=1,lora_r=16,lora_alpha_x=2,lora_dropout=0.05"
GOOD2 = "learning_rate=0.003,epochs=1,lora_r=8,lora_alpha_x=2,lora_dropout=0.0"
BAD = "learning_rate=1e-7,epochs=1,lora_r=8,lora_alpha_x=2,lora_dropout=0.0"


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-m", "finetune", *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)  # exactly one JSON object on stdout


@pytest.fixture(scope="module")
def study(tiny_model_dir):
    return _cli("sweep", "--model", "builtin:tiny-chat", "--data", "builtin:demo", "--trials", "3",
                "--lr-range", "1e-7,5e-3", "--epochs-range", "1,1", "--rank-choices", "8,16",
                "--try", GOOD, "--try", GOOD2, "--try", BAD, "--json")


@pytest.mark.slow
def test_three_trials_one_pruned(study):
    from finetune.runs import read_status, run_dir

    assert set(study) >= {"study_id", "trials", "best"} and study["state"] == "completed"
    trials = study["trials"]
    assert [t["state"] for t in trials] == ["complete", "complete", "pruned"], trials
    assert [t["params"]["learning_rate"] for t in trials] == [0.002, 0.003, 1e-7]
    eval_steps = study["plan"]["eval_steps"]
    for t in trials:
        st = read_status(t["run_id"])
        assert st["study_id"] == study["study_id"] and st["trial_number"] == t["number"]
        assert (run_dir(t["run_id"]) / "adapter" / "adapter_config.json").exists()  # every trial ends saved
        assert t["intermediate"], t  # validation loss reported at each evaluation
    pruned = trials[2]
    st = read_status(pruned["run_id"])
    # stopped cleanly at the first evaluation the pruner may act on, long before the end of its epoch
    assert st["state"] == "stopped" and st["pruned"] and pruned["pruned_at_step"] == eval_steps
    assert pruned["steps"] == eval_steps < pruned["total_steps"]
    assert "median" in pruned["reason"]
    for t in trials[:2]:
        st = read_status(t["run_id"])
        assert st["state"] == "completed" and st["step"] == st["total_steps"] == t["total_steps"]
        assert t["value"] == pytest.approx(st["best_eval_loss"], rel=1e-5)
        # the pruned trial's loss at that step was worse than both finished trials'
        assert pruned["intermediate"][str(eval_steps)] > t["intermediate"][str(eval_steps)]
    best = min(trials[:2], key=lambda t: t["value"])
    assert study["best"]["run_id"] == best["run_id"] and study["best"]["value"] == best["value"]
    assert study["importance"] is None  # needs 3 complete trials


def test_study_folder_and_show(study, home):
    d = home / "studies" / study["study_id"]
    assert {"study.json", "optuna.journal"} <= {p.name for p in d.iterdir()}
    shown = _cli("sweep", "--show", study["study_id"], "--json")
    assert shown["trials"] == study["trials"] and shown["best"] == study["best"]
    listed = _cli("sweep", "--list", "--json")["studies"]
    assert any(s["study_id"] == study["study_id"] and s["done"] == 3 for s in listed)
    import optuna

    from finetune.sweep_trial import load_optuna_study

    states = [t.state for t in load_optuna_study(d).get_trials()]
    assert states == [optuna.trial.TrialState.COMPLETE] * 2 + [optuna.trial.TrialState.PRUNED]


def test_use_the_best_fills_the_train_fields(study):
    from finetune.runs import load_config
    from ui.sweep_panel import best_values

    keys = [("train", "learning_rate"), ("train", "epochs"), ("lora", "r"), ("lora", "alpha"), ("lora", "dropout"),
            ("train", "batch_size"), ("train", "eval_steps")]
    values = best_values(study["study_id"], keys)
    cfg = load_config(study["best"]["run_id"])
    p = study["best"]["params"]
    assert float(values[0]) == p["learning_rate"] == cfg.train.learning_rate
    assert values[1:5] == [p["epochs"], p["lora_r"], p["lora_alpha"], p["lora_dropout"]]
    assert values[5:] == [cfg.train.batch_size, study["plan"]["eval_steps"]]


def test_budget_becomes_trials_and_length():
    from finetune.sweep import StudyError, choose_budget

    # no budget: the trials asked at the Plan's length
    assert choose_budget(5, None, per_epoch_s=10, overhead_s=20, epochs=3)[:2] == (5, 1.0)
    # 10 min of 50 s trials: 12 full-length trials
    assert choose_budget(None, 600, per_epoch_s=10, overhead_s=20, epochs=3)[:2] == (12, 1.0)
    # 10 trials of 50 s asked in 300 s: each shortened to a third of the Plan's length (20 + 10 s)
    n, scale, why = choose_budget(10, 300, per_epoch_s=10, overhead_s=20, epochs=3)
    assert n == 10 and scale == pytest.approx(1 / 3) and "shortened" in why
    n, scale, _ = choose_budget(None, 100, per_epoch_s=100, overhead_s=10, epochs=3)
    assert scale == 0.1 and n == 2  # 100 s holds two trials at a tenth of the Plan's length (40 s each)
    with pytest.raises(StudyError, match="less than one trial"):
        choose_budget(None, 30, per_epoch_s=100, overhead_s=10, epochs=3)


def test_plan_study_says_what_the_budget_bought(tiny_model_dir):
    from finetune.sweep import StudyError, plan_study

    p = plan_study("builtin:tiny-chat", "builtin:demo", budget_min=3, budget_usd=5)
    assert 1 <= p["n_trials"] and p["budget_s"] == 180 and p["length_scale"] <= 1
    assert any("no hourly price" in n for n in p["notes"])  # local: dollars set no limit
    s = p["space"]
    assert s["learning_rate"]["low"] < 2e-3 < s["learning_rate"]["high"] and s["learning_rate"]["log"]
    assert 16 in s["lora_r"]["choices"] and p["pruner"]["kind"] == "median"
    priced = plan_study("builtin:tiny-chat", "builtin:demo", budget_usd=0.05, hardware="t4-small")
    assert priced["budget_s"] < 600 and any("/h is" in n for n in priced["notes"])
    with pytest.raises(StudyError, match="objective"):
        plan_study("builtin:tiny-chat", "builtin:demo", objective="accuracy_typo")
    with pytest.raises(StudyError, match="trials"):
        plan_study("builtin:tiny-chat", "builtin:demo", trials=0)


def test_plan_study_says_when_the_plan_made_the_batch_smaller(tiny_model_dir, tmp_path):
    # A model that is not the demo's gets the Plan's settings; on 60 rows the Plan halves the batch
    # (more updates per epoch) and the study's notes and base say so rather than trimming it silently.
    from finetune.builtin import demo_records
    from finetune.sweep import plan_study

    data = tmp_path / "small.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in demo_records()[:60]))
    p = plan_study(str(tiny_model_dir), str(data), trials=2)
    base = p["base"]
    assert base["batch_size"] < 8 and base["batch_size"] == p["base_config"]["train"]["batch_size"]
    note = p["notes"][0]
    assert f"batch {base['batch_size']}: asked: 8" in note and "optimizer steps per epoch" in note, note
    assert f"gradient accumulation {base['grad_accum']}:" in note, note


def test_sweep_api(study, app_url):
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    names = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert {"/sweep", "/sweep_status", "/sweep_stop"} <= names
    got = client.predict(study["study_id"], api_name="/sweep_status")
    assert got["study_id"] == study["study_id"] and [t["state"] for t in got["trials"]] == \
        ["complete", "complete", "pruned"]
    with pytest.raises(Exception, match="at most 100"):
        client.predict("builtin:tiny-chat", "builtin:demo", 1000, 0, 0, "local", "eval_loss", api_name="/sweep")
    with pytest.raises(Exception, match="less than one trial"):  # 1 s cannot hold a trial: nothing starts
        client.predict("builtin:tiny-chat", "builtin:demo", 0, 1 / 60, 0, "local", "eval_loss", api_name="/sweep")
    with pytest.raises(Exception, match="no study"):
        client.predict("no-such-study", api_name="/sweep_status")


@pytest.mark.skipif(not __import__("shutil").which("chromium"), reason="Debian's chromium is not installed")
def test_search_panel_in_the_browser(study, app_url, home):
    """The Train tab's Search: pick the study, see its trials (one pruned) and plots, and "Use the best"
    fills the Train tab's fields (epochs 20 -> the best trial's 1)."""
    from playwright.sync_api import expect

    from conftest import chromium_page

    shots = Path(os.environ.get("FTS_SHOTS", str(home / "screenshots")))
    shots.mkdir(parents=True, exist_ok=True)
    with chromium_page(app_url, height=1400) as page:
        page.get_by_role("tab", name="Train").click()
        epochs = page.get_by_label("Epochs", exact=True)
        expect(epochs).to_have_value("20", timeout=30_000)
        page.get_by_text("Search: hyperparameters within a budget").click()
        panel = page.locator("#train-sweep")
        box = panel.get_by_label("Study")
        box.click()
        box.fill(study["study_id"])
        box.press("Enter")
        table = page.locator("#sweep-trials")
        expect(table).to_contain_text("pruned", timeout=60_000)
        expect(page.locator("#sweep-summary")).to_contain_text("completed")
        expect(panel.locator(".vega-embed").first).to_be_visible(timeout=30_000)
        panel.scroll_into_view_if_needed()
        page.wait_for_timeout(1000)
        panel.screenshot(path=str(shots / "x20b-search.png"))
        page.get_by_role("button", name="Use the best").click()
        expect(epochs).to_have_value("1", timeout=30_000)
        page.get_by_text("More settings (all applied to the run)").click()
        expect(page.get_by_label("Eval steps", exact=True)).to_have_value(str(study["plan"]["eval_steps"]))
        page.screenshot(path=str(shots / "x20b-train-filled.png"), full_page=True)


def test_background_search_stops_cleanly(tiny_model_dir):
    """--no-wait: the driver runs as a child process of its own; --stop stops the running trial (saved)
    and the study ends `stopped` with no further trial."""
    import time

    from finetune.runs import read_status, run_dir
    from finetune.sweep import read_study

    started = _cli("sweep", "--trials", "3", "--epochs-range", "2,2", "--no-prune", "--no-wait", "--json")
    sid = started["study_id"]
    assert started["state"] in ("queued", "running") and started["trials"] == []
    deadline, doc = time.time() + 300, {}
    while time.time() < deadline:  # wait until the first trial trains
        doc = read_study(sid)
        if doc["trials"] and (read_status(doc["trials"][0]["run_id"]).get("step") or 0) > 0:
            break
        time.sleep(0.5)
    assert doc["state"] == "running", doc
    assert _cli("sweep", "--stop", sid, "--json")["state"] == "stopping"
    while time.time() < deadline and read_study(sid)["state"] not in ("stopped", "completed", "failed"):
        time.sleep(0.5)
    doc = read_study(sid)
    assert doc["state"] == "stopped" and [t["state"] for t in doc["trials"]] == ["stopped"], doc
    st = read_status(doc["trials"][0]["run_id"])
    assert st["state"] == "stopped" and st["step"] < st["total_steps"]
    assert (run_dir(st["run_id"]) / "adapter").is_dir()


def test_importance_once_three_trials_are_complete():
    import optuna

    from finetune.sweep_run import param_importance, suggest

    space = {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}, "epochs": {"low": 1, "high": 3, "step": 0.5},
             "lora_r": {"choices": [8, 16]}, "lora_alpha_x": {"choices": [1, 2, 4]},
             "lora_dropout": {"low": 0.0, "high": 0.2}}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(4):
        t = study.ask()
        p = suggest(t, space)
        if i == 2:
            assert param_importance(study) is None  # 2 complete so far
        study.tell(t, p["learning_rate"] * 100 + p["lora_dropout"])
    imp = param_importance(study)
    assert set(imp) == {"learning_rate", "epochs", "lora_r", "lora_alpha", "lora_dropout"}
    assert sum(imp.values()) == pytest.approx(1.0, abs=0.01)


def test_study_writes_do_not_undo_each_other(home, monkeypatch):
    # The driver (trials, importance) and the app (stop) both rewrite study.json: each write is a
    # read-modify-write under the study's lock, so a stop is not turned back into "running" by the
    # driver's next write, and no trial is lost when two writers meet.
    import threading

    from finetune.sweep import read_study, stop_study, update_study, write_study
    from finetune.sweep_run import _update_trial
    from finetune.sweep_trial import study_dir

    import finetune.sweep

    monkeypatch.setattr(finetune.sweep, "_driver_alive", lambda *a: True)  # this process plays the driver
    sid = "race-test"
    d = study_dir(sid, must_exist=False)
    d.mkdir(parents=True)
    write_study(d, {"study_id": sid, "state": "running", "driver_pid": os.getpid(), "direction": "minimize",
                    "trials": [{"number": 0, "state": "running", "value": None}]})
    assert stop_study(sid)["state"] == "stopping" and (d / "STOP").exists()
    doc = _update_trial(d, 0, state="complete", value=0.5)  # the driver's next write
    assert doc["state"] == "stopping" and doc["best"]["value"] == 0.5
    assert read_study(sid)["trials"][0]["state"] == "complete"

    def add(first: int) -> None:
        for i in range(first, first + 40):
            update_study(d, lambda doc, i=i: doc["trials"].append({"number": i, "state": "complete", "value": 1.0}))

    workers = [threading.Thread(target=add, args=(k,)) for k in (1, 41)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(t["number"] for t in read_study(sid)["trials"]) == list(range(81))

    update_study(d, lambda doc: (d / "STOP").unlink(), state="stopped")  # the driver's end
    assert stop_study(sid)["state"] == "stopped" and not (d / "STOP").exists()  # an ended study: no new STOP
