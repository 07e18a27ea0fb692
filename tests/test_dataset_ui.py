"""The Dataset tab: its handlers with bad files (clear gr.Error naming the file and line, never a
crash), the mapping controls, the rendered report, and a headless-Chromium run that uploads a JSONL
file, presses Inspect and sees the format, the highlighted trained tokens and the histogram.

Run: `python -m pytest tests/test_dataset_ui.py -q`. Screenshots go to FINETUNE_HOME/screenshots.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gradio as gr
import pytest

from ui import dataset_tab as T

DATA = Path(__file__).parent / "data"
CHROMIUM = "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else shutil.which("chromium")


def _error(fn, *args) -> str:
    with pytest.raises(gr.Error) as e:
        fn(*args)
    return str(e.value.message if hasattr(e.value, "message") else e.value)


@pytest.mark.parametrize("name, content, expected", [
    ("broken.jsonl", '{"text": "a"}\n{"text": "b"}\n{"text": "c",,}\n', "broken.jsonl line 3: invalid JSON"),
    ("ragged.csv", "prompt,completion\na,b\nc,d,e\n", "ragged.csv line 3: 3 fields, expected 2"),
    ("latin1.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', "latin1.jsonl line 2: not valid UTF-8"),
    ("array.json", '[\n {"prompt": "a", "completion": "b"},\n {"prompt": "c" "completion": "d"}\n]',
     "array.json line 3: invalid JSON"),
    ("empty.jsonl", "", "empty.jsonl: file is empty"),
])
def test_inspect_and_prepare_handlers_turn_bad_files_into_clear_errors(tmp_path, tiny_model_dir, name, content, expected):
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert _error(T.inspect_api, str(p), "", "auto", "", "builtin:tiny-chat").startswith(expected)
    assert _error(T.prepare_api, str(p), "", "auto", "", 0.1, 42, "x").startswith(expected)


def test_handlers_bad_rows_mapping_and_missing_source(tmp_path, tiny_model_dir):
    p = tmp_path / "rows.jsonl"
    p.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": ""}\n')
    assert "rows.jsonl row 2, field 'completion': is empty" in _error(T.prepare_api, str(p), "", "auto", "", 0.1, 42, "",
                                                                      False, "none", "", 0, True)  # strict
    assert "write field=column" in _error(T.inspect_api, str(p), "", "auto", "prompt", "builtin:tiny-chat")
    assert "column 'nope' not found" in _error(T.inspect_api, str(p), "", "auto", "prompt=nope", "builtin:tiny-chat")
    assert "Choose builtin:demo" in _error(T.inspect_api, None, "", "auto", "", "builtin:tiny-chat")
    assert "could not load" in _error(T.augment_api, None, "hub:x/y", "paraphrase", 5, 1, "", "")


def test_mapping_controls_for_unknown_format_and_override():
    info = {"format": "unknown", "columns": ["question_text", "reply_text"], "mapping": {},
            "hint": "Columns found: question_text, reply_text. Pick a format ..."}
    hint, acc, *boxes = T.mapping_controls(info, "auto")
    assert "Format not recognised" in hint and "Choose a format above first" in hint and acc.open
    assert all(b.visible is False for b in boxes)
    hint, acc, *boxes = T.mapping_controls(info, "prompt_completion")
    assert [b.label for b in boxes if b.visible] == ["prompt", "completion"]
    assert boxes[0].choices == [("", ""), ("question_text", "question_text"), ("reply_text", "reply_text")]
    vals = ["question_text", "reply_text"] + [""] * (len(boxes) - 2)
    assert T.mapping_text(info, "prompt_completion", *vals) == "prompt=question_text, completion=reply_text"


def test_render_inspection_report_histogram_and_trained_tokens(tiny_model_dir):
    info = T.inspect_api(None, "builtin:demo", "auto", "", "builtin:tiny-chat", 0, 100)
    report, spans, hist = T.render_inspection(info, "builtin:tiny-chat")
    assert "Format: **alpaca**" in report and "Quality score" in report and "#### Fields" in report
    assert "✅ **Size:**" in report and "of tokens are trained" in report
    assert {s[1] for s in spans} >= {"trained", "masked"}
    assert hist.value["data"] and sum(r[1] for r in hist.value["data"]) == info["rows_valid"]


def test_prepare_handler_cleans_and_refuses_untrainable(tmp_path, tiny_model_dir):
    res = T.prepare_api(str(DATA / "ds_pii.jsonl"), "", "auto", "", 0.0, 1, "pii-clean", True, "exact",
                        "builtin:tiny-chat", 0)
    assert res["cleaning"]["pii_masked"]["rows"] == 3 and res["cleaning"]["duplicates_removed"]["exact"] == 1
    assert res["dir"] in T.dataset_choices()
    long = tmp_path / "long.jsonl"
    long.write_text("".join(json.dumps({"prompt": "word " * 100, "completion": "y"}) + "\n" for _ in range(3)))
    msg = _error(T.prepare_api, str(long), "", "auto", "", 0.0, 1, "", False, "none", "builtin:tiny-chat", 8)
    assert msg.startswith("long.jsonl: refusing to save: no token would be trained")


# ---------------------------------------------------------------------------------------------
# The browser


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_browser_upload_inspect_shows_format_trained_tokens_and_histogram(app_url, home, tmp_path):
    from playwright.sync_api import expect

    from conftest import chromium_page

    upload = tmp_path / "my_chats.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"The sum is {2 * i}."}]} for i in range(40)]
    upload.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with chromium_page(app_url, height=1100) as page:
        page.get_by_role("tab", name="Dataset").click()
        page.locator("#dataset-upload input[type=file]").set_input_files(str(upload))
        expect(page.locator("#dataset-upload").get_by_text("my_chats.jsonl")).to_be_visible(timeout=30_000)
        page.get_by_role("button", name="Inspect", exact=True).click()
        report = page.locator("#dataset-report")
        expect(report).to_contain_text("Format: messages", timeout=60_000)
        expect(report).to_contain_text("40 rows")
        expect(report).to_contain_text("of tokens are trained")
        preview = page.locator("#trained-preview")
        expect(preview).to_contain_text("The sum is 0.", timeout=30_000)
        trained = preview.locator(".token.highlighted", has_text="The sum is 0.")
        expect(trained.first).to_be_visible()
        expect(trained.first).to_contain_text("trained")  # the span's category label
        colours = preview.locator(".token.highlighted").evaluate_all(
            "els => [...new Set(els.map(e => getComputedStyle(e).backgroundColor))]")
        assert len(colours) >= 2, colours  # trained and masked tokens look different
        expect(page.locator("#token-hist .mark-rect path").first).to_be_visible(timeout=30_000)
        shots = home / "screenshots"
        shots.mkdir(exist_ok=True)
        page.screenshot(path=str(shots / "dataset_tab.png"), full_page=True)
