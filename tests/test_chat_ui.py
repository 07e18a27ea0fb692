"""Chat playground through the app: gradio_client streams `chat`, and Chromium sees the answer grow
and saves it as a training row."""

import json
import shutil

import pytest

import conftest  # noqa: F401  (offline, home folder)
from test_chat import chat_run  # noqa: F401  (a 2-step run of the tiny model, once per module)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_chat_api_streams_partial_outputs_and_saves_a_row(app_url, chat_run):  # noqa: F811
    from gradio_client import Client

    from finetune.paths import datasets_dir

    client = Client(app_url, verbose=False)
    assert {"/chat", "/chat_save_row"} <= set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    job = client.submit("Say something.", "{}", f"base, {chat_run}", "", 0, 1, 40, 0, api_name="/chat")
    last = job.result(timeout=600)
    outs = job.outputs()
    assert len(outs) > 2 and not outs[0]["done"] and last["done"]
    grown = [o["answers"][chat_run] for o in outs if o["answers"].get(chat_run)]
    assert len(set(grown)) > 1  # partial answers arrived before the whole one
    # the next turn takes the histories back
    nxt = client.predict("And more?", json.dumps(last["histories"]), chat_run, "", 0, 1, 8, 0, api_name="/chat")
    assert [m["role"] for m in nxt["histories"][chat_run]] == ["user", "assistant", "user", "assistant"]
    r = client.predict("api-chat", json.dumps(nxt["histories"][chat_run]), "Be brief.", api_name="/chat_save_row")
    assert r["rows"] == 1 and r["dataset"] == "api-chat.jsonl"
    row = json.loads((datasets_dir() / "api-chat.jsonl").read_text())
    assert row["messages"][0]["role"] == "system" and row["messages"][-1]["content"] == nxt["answers"][chat_run]
    with pytest.raises(Exception, match="dataset name"):
        client.predict("../../etc/x", json.dumps(nxt["histories"][chat_run]), "", api_name="/chat_save_row")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_chat_streams_in_the_browser_and_saves_a_row(app_url, chat_run, home):  # noqa: F811
    from playwright.sync_api import expect

    from conftest import chromium_page
    from finetune.paths import datasets_dir

    with chromium_page(app_url, height=1400) as page:
        page.get_by_role("tab", name="Compare").click()
        models = page.locator("input[aria-label='Models: base and up to 3 runs of one base model']")
        models.click()
        models.fill(chat_run)
        models.press("Enter")
        expect(page.locator("#chat-col-1")).to_be_visible(timeout=30_000)
        page.evaluate("""() => {
            window.__chatLens = [];
            const col = document.querySelector('#chat-col-1');
            new MutationObserver(() => {
                const bots = col.querySelectorAll('.bot, [data-testid="bot"]');
                const t = bots.length ? bots[bots.length - 1].textContent : '';
                if (window.__chatLens[window.__chatLens.length - 1] !== t.length) window.__chatLens.push(t.length);
            }).observe(col, {subtree: true, childList: true, characterData: true});
        }""")
        page.locator("#chat-msg textarea").fill("Tell me a story.")
        page.locator("#chat-send").click()
        expect(page.locator("#chat-note")).to_contain_text("Done", timeout=300_000)
        lens = [n for n in page.evaluate("() => window.__chatLens") if n > 1]
        assert len(set(lens)) > 2, lens  # the answer grew in several steps, not in one
        page.locator("#chat-save-1").click()
        expect(page.locator("#chat-note")).to_contain_text("Saved the answer", timeout=60_000)
        d = home / "screenshots"
        d.mkdir(exist_ok=True)
        page.screenshot(path=str(d / "chat.png"), full_page=True)
        shutil.os.makedirs("/tmp/shots", exist_ok=True)
        page.screenshot(path="/tmp/shots/x19b-chat.png", full_page=True)
    rows = [json.loads(x) for x in (datasets_dir() / "chat-rows.jsonl").read_text().splitlines()]
    assert rows[-1]["messages"][0] == {"role": "user", "content": "Tell me a story."}
    assert rows[-1]["messages"][-1]["role"] == "assistant" and rows[-1]["messages"][-1]["content"].strip()


def test_chat_and_save_row_as_mcp_tools(chat_run):  # noqa: F811
    from conftest import serve_app
    from test_mcp import _call, _json

    demo, url = serve_app(mcp_server=True)
    try:
        mcp = url + "gradio_api/mcp/"
        out = _json(_call(mcp, "chat", message="Hi", history="{}", models=chat_run, system="", temperature=0,
                          top_p=1, max_new_tokens=8, seed=0))
        assert out["done"] and out["histories"][chat_run][0] == {"role": "user", "content": "Hi"}
        saved = _json(_call(mcp, "chat_save_row", dataset="mcp-chat", messages=json.dumps(out["histories"][chat_run]),
                            system=""))
        assert saved == {"dataset": "mcp-chat.jsonl", "rows": 1}
    finally:
        demo.close()
