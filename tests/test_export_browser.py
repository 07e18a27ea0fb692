"""The Export panel in headless Chromium: pick a run, merged + GGUF, Export, see the agreement and the
downloads. Screenshots go to FINETUNE_HOME/screenshots (and /tmp/shots when that folder exists)."""

import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def adapter_run(tiny_model_dir):
    from conftest import untrained_lora_run

    return untrained_lora_run(4, nonzero=True)


@pytest.fixture(scope="module")
def page(app_url):
    from conftest import chromium_page

    with chromium_page(app_url, height=1400) as pg:
        yield pg


def test_export_panel_shows_agreement_and_downloads(page, home, adapter_run):
    from playwright.sync_api import expect

    page.reload()
    page.get_by_role("tab", name="Evaluate").click()
    page.get_by_text("Export (merged weights, GGUF for llama.cpp / Ollama)").click()
    run = page.locator("#export-run input")
    run.fill(adapter_run)
    run.press("Enter")
    page.get_by_label("Merged safetensors").check()
    gguf = page.locator("#export-panel input[aria-label='GGUF type']")
    gguf.fill("q8_0")
    gguf.press("Enter")
    page.locator("#export-button").click()
    result = page.locator("#export-result")
    expect(result).to_contain_text("top-1 agreement", timeout=300_000)
    expect(result).to_contain_text("Ollama Modelfile: template chatml")
    files = page.locator("#export-files")
    expect(files).to_contain_text(f"{adapter_run}-q8_0", timeout=30_000)  # shown as NAME .gguf
    expect(files).to_contain_text("Modelfile")
    expect(files).to_contain_text("model .safetensors")
    assert "/tmp/" not in result.inner_text() and str(home) not in result.inner_text()  # no server paths
    page.locator("#export-panel").scroll_into_view_if_needed()
    for d in [home / "screenshots"] + ([Path("/tmp/shots")] if Path("/tmp/shots").is_dir() else []):
        d.mkdir(exist_ok=True)
        page.locator("#export-panel").screenshot(path=str(d / "x19a-export.png"))


def test_export_through_the_api(app_url, adapter_run):
    """gradio_client: the `export` API returns the result (names, no server paths) and the files."""
    from gradio_client import Client

    res, files = Client(app_url, verbose=False).predict(adapter_run, False, "f16", "Be brief.", api_name="/export")
    assert res["run_id"] == adapter_run and res["modelfile"] == "Modelfile" and "/" not in res["out"]
    assert res["agreement"]["gguf"]["argmax_agreement"] >= 0.95 and "merged" not in res["agreement"]
    names = sorted(Path(f["path"] if isinstance(f, dict) else f).name for f in files)
    assert names == sorted([f"{adapter_run}-f16.gguf", "Modelfile"])
    text = Path(next(f["path"] if isinstance(f, dict) else f for f in files
                     if Path(f["path"] if isinstance(f, dict) else f).name == "Modelfile")).read_text()
    assert 'SYSTEM """Be brief."""' in text
