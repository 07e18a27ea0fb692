"""The app as an agent sees it: the real `mcp` client (streamable HTTP at /gradio_api/mcp/) against
the real app on a free loopback port. Tools are the contract API names, described for an agent,
free-text fields are strings (not enums), every result parses as JSON, a run started through MCP
is followed with `status` to the end, and no result or error names a server folder."""

import asyncio
import json
import time

import pytest


@pytest.fixture(scope="module")
def mcp_url(tiny_model_dir):
    from conftest import serve_app

    demo, url = serve_app(mcp_server=True)
    yield url + "gradio_api/mcp/"
    demo.close()


def _with_session(url: str, work):
    """Run `await work(session)` in one initialised MCP client session."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def main():
        async with streamable_http_client(url) as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await work(session)

    return asyncio.run(main())


def _call(url: str, tool: str, **args):
    return _with_session(url, lambda s: s.call_tool(tool, args))


def _json(result):
    assert not result.isError, result.content
    assert len(result.content) == 1 and result.content[0].type == "text"
    return json.loads(result.content[0].text)  # JSON, not Python repr


def test_tools_are_the_contract_names_with_free_text_fields(mcp_url):
    from ui.mcp_tools import TOOLS

    tools = {t.name: t for t in _with_session(mcp_url, lambda s: s.list_tools()).tools}
    assert set(tools) == set(TOOLS)  # no UI-internal event such as runs_frame_1
    for name, tool in tools.items():
        assert tool.description.startswith(TOOLS[name]) and "Returns" in tool.description
        assert not {"fts_profile", "fts_token", "fts_request"} & set(tool.inputSchema["properties"])
    for name, field in (("plan", "model"), ("train", "model"), ("train", "data"), ("inspect_dataset", "source"),
                        ("status", "run_id"), ("evaluate", "run_id"), ("train", "learning_rate")):
        schema = tools[name].inputSchema["properties"][field]
        assert schema["type"] == "string" and "enum" not in schema, (name, field, schema)
    runs = tools["compare"].inputSchema["properties"]["runs"]
    assert runs["type"] == "array" and "enum" not in runs["items"]
    assert "enum" in tools["train"].inputSchema["properties"]["method"]  # closed choices stay closed


def test_plan_returns_json_for_any_model_id(mcp_url, tiny_model_dir):
    plan = _json(_call(mcp_url, "plan", model="builtin:tiny-chat", task="answer questions", examples=460))
    assert plan["method"] and plan["vram_gb"] > 0 and plan["reasons"]
    local = _json(_call(mcp_url, "plan", model=str(tiny_model_dir), task="", examples=460))  # a local folder: not a listed choice
    assert local["model"] == str(tiny_model_dir) and local["vram_gb"] > 0


def test_a_run_started_through_mcp_is_followed_to_the_end(mcp_url):
    run_id = _json(_call(mcp_url, "train", model="builtin:tiny-chat", data="builtin:demo", method="lora",
                         learning_rate="2e-3", epochs=1, batch_size=8, max_seq_len=128, lora_r=8, max_steps=3))
    assert isinstance(run_id, str) and run_id
    deadline, st = time.time() + 600, {}  # generous: the CPU may be shared
    while time.time() < deadline:
        st = _json(_call(mcp_url, "status", run_id=run_id))
        if st["state"] in ("completed", "failed", "stopped"):
            break
        time.sleep(1)
    assert st["state"] == "completed", st.get("error")
    assert st["step"] == st["total_steps"] == 3 and st["progress"] == 100.0
    assert run_id in [r["run_id"] for r in _json(_call(mcp_url, "runs"))]


def test_an_error_names_no_server_folder(mcp_url, home):
    import tempfile

    result = _call(mcp_url, "status", run_id="nope")
    assert result.isError
    text = " ".join(c.text for c in result.content)
    assert "no run 'nope'" in text
    assert str(home) not in text and tempfile.gettempdir() not in text, text


def test_inspect_names_an_upload_by_its_file_name(mcp_url, tmp_path):
    from gradio_client import Client, handle_file

    f = tmp_path / "my_rows.jsonl"
    f.write_text("\n".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(20)) + "\n")
    url = mcp_url.removesuffix("gradio_api/mcp/")
    info = Client(url, verbose=False).predict(handle_file(str(f)), "", "auto", "", "builtin:tiny-chat",
                                              api_name="/inspect_dataset")
    assert info["source"] == "my_rows.jsonl" and info["rows"] == 20


def test_public_results_name_no_server_folder(monkeypatch, home):
    from finetune import access
    from ui.mcp_tools import _json_text

    value = {"run_dir": str(home / "runs" / "r1"), "note": "see http://127.0.0.1:7860/tmp/x"}
    assert json.loads(_json_text(value)) == value  # locally the owner's agent gets real paths
    monkeypatch.setattr(access, "public_mode", lambda: True)
    assert json.loads(_json_text(value)) == {"run_dir": "runs/r1", "note": "see http://127.0.0.1:7860/tmp/x"}


def test_server_folders_are_left_out_of_what_a_visitor_reads(home):
    import tempfile
    from pathlib import Path

    from finetune.sources import hide_server_paths, upload_roots

    upload = upload_roots()[0] / ("ab" * 20) / "my rows.jsonl"
    tmp = Path(tempfile.gettempdir()).resolve()
    assert hide_server_paths(f"{upload}: line 3 is not JSON") == "my rows.jsonl: line 3 is not JSON"
    assert hide_server_paths(f"see {home / 'runs' / 'r1' / 'adapter'}") == "see runs/r1/adapter"
    assert hide_server_paths(f"cannot read {tmp / 'pytest-x' / 'p0' / 'data.csv'}") == "cannot read data.csv"
    assert hide_server_paths("http://127.0.0.1:7860/tmp/x and hub:org/name") == "http://127.0.0.1:7860/tmp/x and hub:org/name"
    from finetune.sources import hide_server_paths_in  # results (merge, sweep_status): every string in them

    got = hide_server_paths_in({"plan": {"data": str(home / "datasets" / "mine")}, "sources": [{"data": str(upload)}],
                                "n": 3, "ok": True})
    assert got == {"plan": {"data": "datasets/mine"}, "sources": [{"data": "my rows.jsonl"}], "n": 3, "ok": True}
