"""The Hub from the command line (child processes against the test Hub), the token grep, the MCP
endpoint, and the engine's source and access rules."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "hf_" + "Qx7Tok" * 6  # distinctive: grep for it everywhere afterwards


def _cli(args, env, timeout=600):
    p = subprocess.run([sys.executable, "-m", "finetune", *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=timeout)
    return p


def test_cli_push_data_push_deploy_and_the_token_never_lands(fake_hub, tmp_path, home):
    """A real training child and three CLI pushes run with a distinctive token; it appears in no file
    under the home folder, the run folder, the logs, nor in any stdout/stderr."""
    from conftest import hub_env

    fake_hub.add_user("tess", TOKEN)
    env = hub_env(fake_hub.url, tmp_path) | {"HF_TOKEN": TOKEN}
    outputs = []
    p = _cli(["train", "--max-steps", "2", "--epochs", "1", "--wait", "--json"], env)
    outputs += [p.stdout, p.stderr]
    assert p.returncode == 0, p.stderr[-2000:]
    run = json.loads(p.stdout)
    assert run["state"] == "completed", run.get("error")
    run_id = run["run_id"]

    p = _cli(["push", run_id, "--repo", "tess/cli-adapter", "--json"], env)
    outputs += [p.stdout, p.stderr]
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(p.stdout)
    assert set(res) >= {"url", "commit", "files"} and "adapter_model.safetensors" in res["files"]
    assert res["commit"] == fake_hub.repo("tess/cli-adapter").head.oid and fake_hub.repo("tess/cli-adapter").private
    assert "[ 60%]" in p.stderr  # progress goes to stderr, the JSON alone to stdout

    p = _cli(["push", run_id, "--repo", "tess/bad--name", "--json"], env)
    outputs += [p.stdout, p.stderr]
    assert p.returncode == 2 and "repo: name 'bad--name'" in json.loads(p.stdout)["error"]

    p = _cli(["data", "prepare", "builtin:demo", "--out", str(tmp_path / "ds"), "--json"], env)
    assert p.returncode == 0, p.stderr[-2000:]
    p = _cli(["data", "push", str(tmp_path / "ds"), "--repo", "tess/cli-data", "--json"], env)
    outputs += [p.stdout, p.stderr]
    assert p.returncode == 0, p.stderr[-2000:]
    assert "train.jsonl" in json.loads(p.stdout)["files"]

    p = _cli(["deploy", "--space", "tess/cli-space", "--json"], env)
    outputs += [p.stdout, p.stderr]
    assert p.returncode == 0, p.stderr[-2000:]
    dep = json.loads(p.stdout)
    assert "app.py" in dep["files"] and not any(f.startswith("tests/") for f in dep["files"])

    p = _cli(["push", run_id, "--repo", "alice/not-yours", "--json"], env)  # 403: tess may not write there
    outputs += [p.stdout, p.stderr]
    assert p.returncode == 2 and "no write permission for 'alice'" in json.loads(p.stdout)["error"]

    for text in outputs:
        assert TOKEN not in text
    for root in (home, tmp_path):
        for f in Path(root).rglob("*"):
            if f.is_file() and "hf_home" not in f.parts:  # hf_home: the test's own HF cache, not ours
                assert TOKEN.encode() not in f.read_bytes(), f
    for repo, rtype in (("tess/cli-adapter", "model"), ("tess/cli-data", "dataset"), ("tess/cli-space", "space")):
        for path, data in fake_hub.files(repo, rtype).items():
            assert TOKEN.encode() not in data, (repo, path)


def test_mcp_server_lists_the_endpoints_as_tools(tiny_model_dir):
    import socket
    import urllib.request

    from ui import build_demo

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = build_demo()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        mcp_server=True)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/gradio_api/mcp/schema", timeout=60) as r:
            schema = json.loads(r.read())
            tools = {t["name"]: t for t in schema}
    finally:
        demo.close()
    assert {"plan", "inspect_dataset", "train", "status", "stop", "runs", "evaluate", "compare", "push"} <= set(tools)
    props = tools["push"]["inputSchema"]["properties"]
    assert {"run_id", "repo"} <= set(props) and not {"fts_profile", "fts_token"} & set(props)


def test_app_launches_with_mcp_server():
    src = (ROOT / "app.py").read_text()
    assert "mcp_server=True" in src


@pytest.mark.parametrize("bad", ["hub:/tmp/x", "hub:../x", "hub:", "hub:x", "hub:a/b/c", "hub:a/..", "hub:a/b:c:d:e",
                                 "hub:a/b:../x", "hub:-a/b"])
def test_hub_sources_must_be_hub_ids(bad):
    from finetune.sources import SourceError, check_source

    with pytest.raises(SourceError):
        check_source(bad)


def test_good_hub_sources_and_bare_names(monkeypatch, tmp_path):
    from finetune.data import DatasetError, load_records
    from finetune.sources import check_hub_source, check_source

    assert check_hub_source("hub:org/name:cfg:train") == ("org/name", "cfg", "train")
    assert check_hub_source("hub:org/name::validation") == ("org/name", None, "validation")
    assert check_source("hub:tatsu-lab/alpaca") == "hub:tatsu-lab/alpaca"
    # a bare name never reads the working folder
    (tmp_path / "secret.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match="no saved dataset"):
        load_records("secret.jsonl")
    assert load_records("./secret.jsonl")[0]["instruction"] == "a"  # locally, a path is fine


def test_public_mode_refuses_typed_paths_but_not_uploads_or_saved(monkeypatch, tmp_path, home):
    from finetune import access
    from finetune.sources import SourceError, check_source

    monkeypatch.setenv("SPACE_ID", "alice/studio")
    assert access.public_mode()
    with pytest.raises(SourceError, match="typed server paths"):
        check_source("/etc/passwd")
    with pytest.raises(SourceError):
        check_source(str(home / "runs" / ".." / ".." / "x.jsonl"))
    up = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(up))
    assert check_source(str(up / "abc" / "data.jsonl"))
    assert check_source(str(home / "datasets" / "mine"))
    assert check_source("mine") == "mine"


def test_public_mode_switches(monkeypatch):
    from finetune import access

    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("FINETUNE_PUBLIC", raising=False)
    access.set_listen_address("127.0.0.1")
    assert not access.public_mode()
    access.set_listen_address("0.0.0.0")
    assert access.public_mode()
    access.set_listen_address("::1")
    assert not access.public_mode()
    access.set_listen_address(None)


def test_allowlist_and_limits(monkeypatch):
    from finetune import access

    monkeypatch.setenv("SPACE_ID", "Alice/studio")
    monkeypatch.setenv("FINETUNE_ALLOWED_USERS", " bob , carol")
    assert access.allowed_users() == {"alice", "bob", "carol"}
    anon, dave = access.Identity(None, public=True), access.Identity("dave", public=True)
    for ident in (anon, dave):
        for action in ("train", "evaluate", "compare", "push", "stop", "resume", "some_new_endpoint"):
            with pytest.raises(access.AccessError):  # a new endpoint's action is protected too
                access.require(ident, action)
        access.require(ident, None)  # open: plan, inspect
    access.require(access.Identity("alice", public=True), "push")
    access.require(access.Identity("bob", public=True), "some_new_endpoint")
    monkeypatch.setenv("FINETUNE_MAX_MODEL_B", "1")
    with pytest.raises(access.AccessError, match="up to 1B"):
        access.check_training_limits(access.Identity("bob", public=True), "meta-llama/Llama-3.1-8B-Instruct")
    access.check_training_limits(access.Identity("bob", public=True), "builtin:tiny-chat")
    # the owner's secret serves only the owner's pushes; visitors' loads get no token at all
    monkeypatch.setenv("HF_TOKEN", "hf_owner_secret")
    assert access.hub_token(access.Identity("bob", public=True)) is False
    assert access.hub_token(access.Identity("bob", public=True), for_push=True) is False
    assert access.hub_token(access.Identity("alice", public=True), for_push=True) == "hf_owner_secret"
    assert access.child_env(access.Identity("bob", public=True))["HF_TOKEN"] == ""
    assert access.child_env(access.Identity("bob", "hf_bob", public=True))["HF_TOKEN"] == "hf_bob"


def test_model_card_keeps_user_text_literal_and_paths_out(tiny_model_dir, home):
    """Names come from users (an upload's file name): the card is not a template, and holds no path."""
    from huggingface_hub import ModelCard

    from finetune.config import default_run_config
    from finetune.hub import model_card
    from finetune.runs import create_run

    cfg = default_run_config("builtin:tiny-chat", str(home / "datasets" / "{{ 7*7 }}.jsonl"))
    run_id = create_run(cfg)
    card = model_card(run_id, "alice/x")
    # literal, not rendered: no "49" in place of the expression (the run id's timestamp may hold a 49)
    assert "{{ 7*7 }}.jsonl" in card and "49.jsonl" not in card
    assert str(home) not in card and "base_model:" not in card  # builtin: no Hub id to name
    assert ModelCard(card).data.library_name == "peft"


def test_hub_modules_import_light():
    code = ("import sys, finetune.hub, finetune.access, finetune.sources, finetune.gguf_export, finetune.hub_cli\n"
            "print(sorted(m for m in ('gradio', 'torch', 'transformers', 'peft', 'huggingface_hub', 'gguf', 'PIL')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
