"""Chat playground on a public Space: logins, ownership of runs and saved rows, caps per turn."""

import json

import conftest  # noqa: F401  (offline, home folder)
from test_chat import chat_run  # noqa: F401
from test_public import _client, _error, public_app  # noqa: F401


def test_public_chat_needs_a_login_owns_its_rows_and_caps_a_turn(public_app, chat_run):  # noqa: F811
    from finetune.paths import atomic_write_json, datasets_dir, read_json
    from finetune.runs import run_dir

    row = json.dumps([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}])
    anon, carol = _client(public_app), _client(public_app, "hf_carol_write")
    assert "Log in" in _error(anon.predict, "hi", "{}", chat_run, "", 0, 1, 8, 0, api_name="/chat")
    assert "allowlist" in _error(carol.predict, "x", row, "", api_name="/chat_save_row")
    alice, bob = _client(public_app, "hf_alice_write"), _client(public_app, "hf_bob_write")
    assert "no run" in _error(bob.predict, "hi", "{}", chat_run, "", 0, 1, 8, 0, api_name="/chat")  # not bob's run
    cfg = run_dir(chat_run) / "config.json"
    atomic_write_json(cfg, {**read_json(cfg), "owner": "alice"})
    assert "256" in _error(alice.predict, "hi", "{}", chat_run, "", 0, 1, 1000, 0, api_name="/chat")
    assert "2000" in _error(alice.predict, "x" * 2001, "{}", chat_run, "", 0, 1, 8, 0, api_name="/chat")
    out = alice.predict("hi", "{}", chat_run, "", 0, 1, 8, 0, api_name="/chat")
    assert out["done"] and out["histories"][chat_run][-1]["role"] == "assistant"
    r = alice.predict("alice-notes", row, "", api_name="/chat_save_row")
    assert r == {"dataset": "alice-notes.jsonl", "rows": 1}  # no server path
    assert "exists already" in _error(bob.predict, "alice-notes", row, "", api_name="/chat_save_row")
    assert "dataset name" in _error(bob.predict, "/etc/passwd", row, "", api_name="/chat_save_row")
    assert bob.predict("", row, "", api_name="/chat_save_row")["dataset"] == "bob-chat.jsonl"
    assert len((datasets_dir() / "alice-notes.jsonl").read_text().splitlines()) == 1
