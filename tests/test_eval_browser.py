"""Evaluate and Compare tabs in headless Chromium: evaluate a run (child process, progress, gates,
chart), apply a diagnose flag's settings to the Train tab in one click, compare base and run side by
side, and cast a blind A/B vote whose models the page learns only after the vote.

The run has a real, untrained LoRA adapter and made-up curves (validation loss rising while training
loss falls) so the test needs no training. Screenshots go to FINETUNE_HOME/screenshots.
"""

import json
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def overfit_run(tiny_model_dir):
    from conftest import untrained_lora_run
    from finetune.runs import run_dir

    run_id = untrained_lora_run(90)
    d = run_dir(run_id)
    events = [{"step": s, "loss": 2.0 - s / 60} for s in range(0, 100, 10)]
    events += [{"step": 30, "eval_loss": 1.0}, {"step": 60, "eval_loss": 1.2}, {"step": 90, "eval_loss": 1.5}]
    (d / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return run_id


@pytest.fixture(scope="module")
def page(app_url):
    from conftest import chromium_page

    with chromium_page(app_url, height=1200) as pg:
        yield pg


def _shot(page, home, name):
    d = home / "screenshots"
    d.mkdir(exist_ok=True)
    page.screenshot(path=str(d / f"{name}.png"), full_page=True)


def test_evaluate_then_apply_a_diagnose_flag(page, home, overfit_run):
    from playwright.sync_api import expect

    page.reload()
    page.get_by_role("tab", name="Evaluate").click()
    run = page.locator("input[aria-label='Run']").last
    run.fill(overfit_run)
    run.press("Enter")
    page.get_by_label("Max examples").fill("4")
    page.get_by_role("button", name="Evaluate", exact=True).click()
    expect(page.get_by_role("heading", name="Gates")).to_be_visible(timeout=300_000)
    expect(page.locator("img[src*='metrics']")).to_be_visible(timeout=30_000)
    apply = page.get_by_role("button", name="Apply to Train tab: overfitting")
    expect(apply).to_be_visible(timeout=60_000)
    _shot(page, home, "evaluate")
    apply.click()
    expect(page.get_by_role("tab", name="Train", selected=True)).to_be_visible(timeout=30_000)
    # 20 configured epochs, best validation at step 30 of 90: about a third of them
    expect(page.get_by_label("Epochs", exact=True)).to_have_value("6.67", timeout=30_000)


def test_compare_and_a_blind_vote(page, home, overfit_run):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Compare").click()
    models = page.locator("input[aria-label='Models: base and up to 4 runs']")
    models.click()
    models.fill(overfit_run)
    models.press("Enter")
    page.get_by_label("Prompts, one per line").fill("Is 42 even or odd?\nOpposite of fast?")
    page.get_by_label("Max new tokens").first.fill("8")
    page.get_by_role("button", name="Compare", exact=True).click()
    expect(page.get_by_text("ms/prompt")).to_be_visible(timeout=300_000)
    assert overfit_run in page.get_by_text("ms/prompt").inner_text()  # latency per model
    expect(page.get_by_text("Opposite of fast?", exact=True).locator("visible=true").first).to_be_visible()

    page.get_by_label("Prompt for a blind pair").fill("Is 7 even or odd?")
    page.get_by_role("button", name="New blind pair").click()
    expect(page.get_by_text("Which answer is better?")).to_be_visible(timeout=120_000)
    # What the browser keeps of the pair (Gradio's run history in localStorage holds each call's outputs):
    # the random id and the two answers, nothing that says which model wrote which side.
    stored = page.evaluate("() => Object.entries(localStorage).concat(Object.entries(sessionStorage))")
    calls = [c for _, v in stored if v.startswith("[") for c in json.loads(v) if isinstance(c, dict)]
    pair_calls = [c for c in calls if c.get("api_name") == "/ab_pair"]
    assert pair_calls and all(set(o) == {"pair_id", "a", "b"} for c in pair_calls for o in c["outputs"])
    assert overfit_run not in json.dumps([c["outputs"] for c in pair_calls])
    note = page.get_by_text("Which answer is better?").inner_text()
    assert overfit_run not in note and "base" not in note
    page.get_by_role("button", name="A is better").click()
    expect(page.get_by_text("Recorded")).to_be_visible(timeout=30_000)
    assert overfit_run in page.get_by_text("Recorded").inner_text()  # revealed after the vote
    page.get_by_role("button", name="Export votes as a DPO dataset").click()
    expect(page.get_by_text("preference rows")).to_be_visible(timeout=30_000)
    _shot(page, home, "compare")
