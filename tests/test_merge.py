"""Adapter merging on real runs of the built-in model: two short LoRA runs on different data (an
rsLoRA run on builtin:demo, a LoRA run on builtin:persona) merge with TIES into a new run that loads,
generates and evaluates (`finetune eval` in its own process); linear with weights 1,0 gives exactly
the first adapter's logits; refusals name the run and the reason; the CLI prints one JSON object;
the `merge` API makes a run, and in public mode a visitor cannot merge runs they do not own."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_public import _client, _error, public_app  # noqa: F401 -- the public app fixture

ROOT = Path(__file__).resolve().parent.parent
STEPS = 30


@pytest.fixture(scope="module")
def two_runs(tiny_model_dir):
    from finetune.config import default_run_config
    from finetune.runs import start_training, wait

    ids = []
    for method, data in (("rslora", "builtin:demo"), ("lora", "builtin:persona")):
        cfg = default_run_config(source=data, method=method, max_steps=STEPS, eval_steps=STEPS, save_steps=STEPS)
        cfg.lora.r, cfg.lora.alpha = 8, 16  # rsLoRA scales by alpha/sqrt(r) = 5.7, LoRA by alpha/r = 2
        ids.append(start_training(cfg))
    for run_id in ids:
        st = wait(run_id, timeout_s=900)
        assert st["state"] == "completed", st.get("error")
    return ids


def _logits(run_id: str, text: str = "What is the capital of France?"):
    import torch

    from finetune.modeling import load_for_inference
    from finetune.runs import artifact_dir, load_config

    model, tok = load_for_inference(load_config(run_id).model.model_id, str(artifact_dir(run_id)))
    with torch.no_grad():
        return model(**tok(text, return_tensors="pt")).logits


def test_ties_merge_loads_generates_and_evaluates(two_runs):
    from finetune.merge import merge_runs
    from finetune.modeling import generate, load_for_inference
    from finetune.paths import read_json
    from finetune.runs import list_runs, load_config, read_status, run_dir

    a, b = two_runs
    res = merge_runs([a, b], method="ties", density=0.5, name="ties-ab")
    rid = res["run_id"]
    print("TIES merge took", res["duration_s"], "s:", res["summary"])
    d = run_dir(rid)
    assert {p.name for p in d.iterdir()} == {"adapter", "config.json", "status.json", "merge.json", "data",
                                            "events.jsonl", "README.md"}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json"} <= {p.name for p in (d / "adapter").iterdir()}
    assert res["combination_type"] == "ties" and res["weights"] == [1.0, 1.0] and res["density"] == 0.5
    st = read_status(rid)
    assert st["state"] == "completed" and st["merged_from"] == [a, b]
    meta = read_json(d / "merge.json")
    assert [s["run_id"] for s in meta["sources"]] == [a, b] and meta["method"] == "ties" and meta["seed"] == 0
    cfg = load_config(rid)
    assert cfg.train.method == "lora" and cfg.lora.r == cfg.lora.alpha == 8 and cfg.name == "ties-ab"
    assert next(r for r in list_runs() if r["run_id"] == rid)["merged_from"] == [a, b]
    # both sources' validation rows, interleaved: demo and persona are both chat rows
    assert res["eval_data"]["from_runs"] == [a, b] and "interleaved" in res["eval_data"]["how"]
    assert res["eval_data"]["rows"] > 0

    model, tok = load_for_inference(cfg.model.model_id, str(d / "adapter"))
    out = generate(model, tok, [[{"role": "user", "content": "Who are you?"}]], max_new_tokens=8)
    assert len(out) == 1 and isinstance(out[0], str)
    merged, first, second = _logits(rid), _logits(a), _logits(b)
    assert not (merged - first).abs().max() < 1e-4 and not (merged - second).abs().max() < 1e-4

    p = subprocess.run([sys.executable, "-m", "finetune", "eval", rid, "--max-examples", "8", "--max-new-tokens", "8",
                        "--json"], capture_output=True, text=True, cwd=ROOT, env=dict(os.environ), timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    report = json.loads(p.stdout)
    assert report["run_id"] == rid and report["examples"] == 8 and report["perplexity"] > 0
    assert report["dataset"]["snapshot"] and report["dataset"]["from_runs"] == [a, b]
    assert (d / "eval" / "report.json").is_file()


def test_linear_with_weights_1_0_is_the_first_adapter(two_runs):
    """Exact: PEFT folds the first run's rsLoRA scaling (alpha/sqrt(r)) into the merged weights, and the
    merged adapter must then scale by 1 (a wrong rsLoRA flag would scale it by sqrt(r))."""
    from finetune.merge import merge_runs

    a, b = two_runs
    res = merge_runs([a, b], method="linear", weights="1, 0")
    assert res["combination_type"] == "linear" and res["weights"] == [1.0, 0.0]
    assert any("rsLoRA" in n for n in res["notes"])
    merged, first, second = _logits(res["run_id"]), _logits(a), _logits(b)
    assert (merged - first).abs().max() < 1e-4
    assert (merged - second).abs().max() > 1e-3


@pytest.fixture
def copy_run():
    """copy_run(src, new, config=, status=, adapter=): a copy of a run folder under another id, with
    edits to its config, status or adapter config; removed after the test (no stray completed runs)."""
    from finetune.paths import atomic_write_json, read_json, runs_dir

    made = []

    def copy(src: str, new: str, config=None, status=None, adapter=None) -> str:
        d = runs_dir() / new
        shutil.copytree(runs_dir() / src, d)
        made.append(d)
        for name, edit in (("config.json", config), ("status.json", status), ("adapter/adapter_config.json", adapter)):
            if edit:
                obj = read_json(d / name)
                edit(obj)
                atomic_write_json(d / name, obj)
        return new

    yield copy
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


def test_refusals_name_the_run_and_the_reason(two_runs, copy_run):
    from finetune.merge import MergeError, merge_runs
    from finetune.runs import RunError

    a, b = two_runs
    other_base = copy_run(b, "x-other-base", config=lambda c: c["model"].update(model_id="builtin:smollm2-135m-instruct"))
    stopped = copy_run(b, "x-stopped", status=lambda s: s.update(state="stopped"))
    full = copy_run(b, "x-full", config=lambda c: c["train"].update(method="full"))
    dora = copy_run(b, "x-dora", adapter=lambda c: c.update(use_dora=True))
    fewer = copy_run(b, "x-fewer-layers", adapter=lambda c: c.update(target_modules=["q_proj", "v_proj"]))
    cases = [
        (([a, other_base], "ties"), "different base models"),
        (([a, stopped], "ties"), "x-stopped is stopped, not completed"),
        (([a, full], "ties"), "x-full is a full fine-tune"),
        (([a, dora], "ties"), "x-dora is a DoRA adapter"),
        (([a, a], "ties"), "listed twice"),
        (([a], "ties"), "two or more"),
        (([a, fewer], "ties"), "adapt different layers"),
        (([a, "no-such-run"], "ties"), "no run 'no-such-run'"),
        (([a, b], "average"), "method: choose one of"),
    ]
    for (ids, method), message in cases:
        with pytest.raises((MergeError, RunError), match=message):
            merge_runs(ids, method=method)
    with pytest.raises(MergeError, match="3 value"):
        merge_runs([a, b], method="linear", weights=[0.3, 0.3, 0.4])
    with pytest.raises(MergeError, match="all are 0"):
        merge_runs([a, b], method="linear", weights="0,0")
    with pytest.raises(MergeError, match="density"):
        merge_runs([a, b], method="dare", density=1.5)
    with pytest.raises(MergeError, match="not a number"):
        merge_runs([a, b], method="linear", weights="1,x")


def test_plan_falls_back_when_ranks_differ():
    from finetune.config import RunConfig
    from finetune.merge import Source, merge_plan

    def src(r):
        return Source(f"r{r}", RunConfig(), Path("."), {"r": r, "lora_alpha": 2 * r, "target_modules": ["q_proj"]})

    lin = merge_plan([src(8), src(16)], "linear", None, None)
    assert lin["combination_type"] == "cat" and lin["rank"] == 24 and lin["weights"] == [0.5, 0.5]
    assert "different LoRA ranks (8, 16)" in lin["notes"][0] and "cat" in lin["notes"][0]
    ties = merge_plan([src(8), src(16)], "ties", None, 0.3)
    assert ties["combination_type"] == "ties_svd" and ties["rank"] == 16 and ties["density"] == 0.3
    assert merge_plan([src(8), src(8)], "dare", None, None)["combination_type"] == "dare_ties"
    assert merge_plan([src(8), src(8)], "dare_linear", None, None)["combination_type"] == "dare_linear"


def test_cli_json_contract(two_runs):
    a, b = two_runs

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "finetune", "merge", *args, "--json"], capture_output=True,
                              text=True, cwd=ROOT, env=dict(os.environ), timeout=600)

    p = cli(a, b, "--method", "dare", "--weights", "0.6,0.4", "--density", "0.7", "--name", "cli-dare", "--seed", "3")
    assert p.returncode == 0, p.stderr[-2000:]
    assert len(p.stdout.strip().splitlines()) == 1
    out = json.loads(p.stdout)
    assert "cli-dare" in out["run_id"] and out["sources"][0]["run_id"] == a
    assert (out["method"], out["combination_type"], out["weights"], out["density"], out["seed"]) == \
        ("dare", "dare_ties", [0.6, 0.4], 0.7, 3)
    from finetune.runs import read_status

    assert read_status(out["run_id"])["state"] == "completed"
    bad = cli(a, "--method", "ties")
    assert bad.returncode == 2 and "two or more" in json.loads(bad.stdout)["error"]
    assert "Traceback" not in bad.stderr


def test_merge_through_the_api(two_runs, app_url, copy_run):
    from gradio_client import Client

    a, b = two_runs
    client = Client(app_url, verbose=False)
    res = client.predict([a, b], "linear", "0.5, 0.5", 0.5, "api-linear", api_name="/merge")
    assert res["combination_type"] == "linear" and res["density"] is None and "api-linear" in res["run_id"]
    st = client.predict(res["run_id"], api_name="/status")
    assert st["state"] == "completed" and st["merged_from"] == [a, b]
    assert res["run_id"] in [r["run_id"] for r in client.predict(api_name="/runs")]
    with pytest.raises(Exception, match="different base models"):
        client.predict([a, copy_run(b, "x-api-other-base", config=lambda c: c["model"].update(
            model_id="builtin:smollm2-135m-instruct"))], "ties", "", 0.5, "", api_name="/merge")


def test_public_visitors_merge_only_their_own_runs(two_runs, public_app):  # noqa: F811
    a, b = two_runs
    args = ([a, b], "ties", "", 0.5, "")
    assert "Log in" in _error(_client(public_app).predict, *args, api_name="/merge")
    # alice may merge (she owns the Space) but these runs are not hers: they read as missing
    assert "no run" in _error(_client(public_app, "hf_alice_write").predict, *args, api_name="/merge")


@pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
                    reason="Debian's chromium is not installed (.ci/run installs it)")
def test_merge_panel_in_chromium(two_runs, app_url, home):
    """Compare tab, "Merge runs": pick the two runs (the weights field fills with TIES's defaults), merge,
    read the summary, and find the new run selected in the Evaluate tab. Screenshot: FINETUNE_HOME/screenshots
    (and FINETUNE_SHOTS_DIR when set)."""
    from playwright.sync_api import expect

    from conftest import chromium_page

    a, b = two_runs
    with chromium_page(app_url, height=1400) as page:
        page.get_by_role("tab", name="Compare").click()
        page.get_by_text("Merge runs: combine finished LoRA adapters").click()
        runs = page.locator("input[aria-label='Runs to merge (in order)']")
        for r in (a, b):
            runs.click()
            runs.fill(r)
            runs.press("Enter")
        expect(page.get_by_label("Weights, one per run (comma-separated)")).to_have_value("1, 1", timeout=30_000)
        page.get_by_label("Name (optional)").fill("ui-ties")
        page.get_by_role("button", name="Merge", exact=True).click()
        summary = page.locator("#merge-summary")
        expect(summary).to_contain_text("New run", timeout=300_000)
        text = summary.inner_text()
        assert "TIES" in text and "ui-ties" in text and a in text and b in text
        new_id = text.split("New run", 1)[1].split(":", 1)[0].strip(" `")
        summary.scroll_into_view_if_needed()
        for folder in (home / "screenshots", Path(os.environ.get("FINETUNE_SHOTS_DIR") or home / "screenshots")):
            folder.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(folder / "x20c-merge.png"), full_page=True)
        page.get_by_role("tab", name="Evaluate").click()
        expect(page.locator("input[aria-label='Run']").last).to_have_value(new_id, timeout=30_000)
