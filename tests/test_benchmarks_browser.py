"""Evaluate tab's benchmarks and judge, in headless Chromium and through the Gradio API: pick a
built-in benchmark and a judge, evaluate, read the results table; the `evaluate` API takes the same
optional inputs after its old two (old callers keep working). The run has a real, untrained LoRA
adapter (no training needed). Screenshot: /tmp/shots/x20d-evaluate-benchmarks.png.
"""

import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir):
    from conftest import untrained_lora_run

    return untrained_lora_run(10)


def test_evaluate_api_takes_benchmarks_and_a_judge(app_url, lora_run):
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    r = client.predict(lora_run, 3, ["builtin:capitals-mc"], None, "", "builtin:tiny-chat", api_name="/evaluate")
    assert r["benchmarks"]["capitals-mc"]["metric"] == "acc" and r["benchmarks"]["capitals-mc"]["n"] == 16
    assert r["judge"]["n"] == 3 and {"benchmark_regression", "judge_win_rate"} <= set(r["gates"])
    with pytest.raises(Exception, match="not a file, a built-in or an lm-eval task name"):
        client.predict(lora_run, 3, [], None, "no such task!", "", api_name="/evaluate")
    with pytest.raises(Exception, match="not in the list of choices"):  # Gradio checks the built-in names
        client.predict(lora_run, 3, ["builtin:nope"], None, "", "", api_name="/evaluate")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_evaluate_tab_runs_a_benchmark_and_a_judge(app_url, lora_run):
    from playwright.sync_api import expect

    from conftest import chromium_page

    with chromium_page(app_url, height=1400) as page:
        page.get_by_role("tab", name="Evaluate").click()
        run = page.locator("input[aria-label='Run']").last
        run.fill(lora_run)
        run.press("Enter")
        page.get_by_label("Max examples").fill("4")
        page.get_by_text("Benchmarks and judge (optional)").click()
        bench = page.locator("input[aria-label='Built-in benchmarks']")
        bench.click()
        bench.fill("builtin:capitals-mc")
        bench.press("Enter")
        judge = page.locator("input[aria-label='Judge model']")
        judge.click()
        judge.fill("builtin:tiny-chat")
        judge.press("Enter")
        page.keyboard.press("Escape")
        page.get_by_role("button", name="Evaluate", exact=True).click()
        table = page.locator("#eval-bench-table")
        expect(page.get_by_role("heading", name="Judge", exact=True)).to_be_visible(timeout=300_000)
        expect(page.get_by_role("heading", name="Benchmarks", exact=True)).to_be_visible()
        expect(table).to_contain_text("judge: builtin:tiny-chat", timeout=30_000)
        expect(table).to_contain_text("capitals-mc")
        Path("/tmp/shots").mkdir(exist_ok=True)
        page.locator("#eval-bench").scroll_into_view_if_needed()
        page.screenshot(path="/tmp/shots/x20d-evaluate-benchmarks.png", full_page=True)
