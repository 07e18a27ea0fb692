"""Your own data, start to finish, in a real browser (issue 9): headless Chromium through Playwright.

Uploads a CSV with one bad row, prepares it dropping that row (the warning names its line), sees the
shared Dataset picker switch to the prepared split and the Train tab say what it will train, trains a
few steps, checks the loss chart's legend is fully visible, reloads mid-run and checks both lines
still have a stroke colour, then downloads the adapter zip. Screenshots of the Train and Plan tabs go
to FINETUNE_HOME/screenshots for a person to look at.
"""

import io
import re
import shutil
import zipfile

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")

QA = [("What is the capital of France?", "Paris"), ("What is 2 + 2?", "4"), ("Name a primary colour.", "Red"),
      ("What is the opposite of hot?", "Cold"), ("How many legs has a spider?", "Eight"),
      ("What do bees make?", "Honey"), ("What is frozen water called?", "Ice"), ("Which planet is red?", "Mars")]


def _csv(tmp_path):
    lines = ["question,answer"]
    for i in range(4):
        lines += [f'"{q} ({i})",{a}' for q, a in QA]
    lines.insert(7, "\"This row has no answer\",")  # line 8 of the file (after the header): the one bad row
    p = tmp_path / "my_qa.csv"
    p.write_text("\n".join(lines) + "\n")
    return p


def _shot(page, home, name):
    d = home / "screenshots"
    d.mkdir(exist_ok=True)
    page.screenshot(path=str(d / f"{name}.png"), full_page=True)


def _strokes(page) -> list[str]:
    return [p.get_attribute("stroke") or "" for p in page.locator("#loss-plot .mark-line path").all()]


def _coloured(stroke: str) -> bool:
    return stroke.lower() not in ("", "none", "transparent") and not stroke.lower().startswith("rgba(0, 0, 0, 0")


@pytest.mark.slow
def test_upload_prepare_train_reload_download(app_url, home, tmp_path):
    from playwright.sync_api import expect

    from conftest import chromium_page

    with chromium_page(app_url, height=1200) as page:
        page.get_by_role("tab", name="Dataset").click()
        page.locator("#dataset-upload input[type=file]").set_input_files(str(_csv(tmp_path)))
        picker = page.locator("#dataset-picker input")
        expect(picker).to_have_value(re.compile(r"my_qa\.csv$"), timeout=60_000)

        page.locator("#prepare-name textarea, #prepare-name input").first.fill("my-qa")
        page.get_by_role("button", name="Prepare and save split").click()
        expect(page.get_by_text(re.compile(r"Dropped 1 invalid row\(s\): line 8 \(answer\): is empty"))).to_be_visible(
            timeout=60_000)
        expect(picker).to_have_value(re.compile(r"/my-qa$"), timeout=30_000)

        page.get_by_role("tab", name="Train").click()
        will = page.locator("#train-will-train")
        expect(will).to_contain_text("my-qa", timeout=30_000)
        expect(will).to_contain_text("32 rows")  # 33 data lines, the bad one dropped
        page.get_by_text("More settings (all applied to the run)").click()
        for label, value in (("Max steps", "150"), ("Eval steps", "4"), ("Logging steps", "1"), ("Save steps", "100")):
            box = page.get_by_label(label, exact=True)
            box.fill(value)
            box.press("Tab")
        page.get_by_role("button", name="Start training").click()

        # mid-run, once a validation point exists: the legend shows both entries inside the chart
        val_card = page.locator("#train-metrics-grid > div").nth(1)
        expect(val_card).not_to_contain_text("n/a", timeout=300_000)
        expect(page.locator("#train-progress progress")).to_be_visible()
        labels = page.locator("#loss-plot .role-legend-label text")
        expect(labels).to_have_count(2, timeout=30_000)
        assert [t.text_content() for t in labels.all()] == ["training loss", "validation loss"]
        chart = page.locator("#loss-plot").bounding_box()
        for t in labels.all():
            b = t.bounding_box()
            assert b and b["width"] > 0 and chart["y"] <= b["y"] and b["y"] + b["height"] <= chart["y"] + chart["height"], \
                "a legend entry is cut off"
        _shot(page, home, "train-running")

        # reload while the run goes on (150 steps: still running on a fast machine, whose tiny steps take
        # milliseconds): it reattaches and both lines keep a stroke colour
        assert page.locator("#train-progress .fts-state").inner_text() == "running"  # mid-run, not after
        page.reload()
        page.get_by_role("tab", name="Train").click()
        expect(page.locator("#train-progress")).to_contain_text("step", timeout=60_000)
        expect(page.locator("#loss-plot .mark-line path")).to_have_count(2, timeout=60_000)
        strokes = _strokes(page)
        assert len(strokes) == 2 and all(_coloured(s) for s in strokes), strokes
        assert strokes[0] != strokes[1]

        expect(page.locator("#train-progress .fts-state")).to_have_text("completed", timeout=600_000)
        strokes = _strokes(page)
        assert len(strokes) == 2 and all(_coloured(s) for s in strokes), strokes
        expect(page.locator("#train-progress progress")).to_have_attribute("value", "100.0")
        button = page.locator("#train-download")
        expect(button).to_be_visible(timeout=30_000)
        expect(page.locator("#runs-table")).to_contain_text("completed", timeout=30_000)
        _shot(page, home, "train")
        with page.expect_download(timeout=60_000) as dl:
            button.click()
        data = open(dl.value.path(), "rb").read()
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        assert any(n.endswith("adapter/adapter_model.safetensors") for n in names), names
        assert any(n.endswith("adapter/adapter_config.json") for n in names)

        page.get_by_role("tab", name="Plan").click()
        expect(page.get_by_text("Recommended:")).to_be_visible(timeout=30_000)
        _shot(page, home, "plan")
