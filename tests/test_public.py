"""Public mode through gradio_client, with SPACE_ID set (the app as a public Space).

Identities are injected the way an API client logs in: gradio_client's `oauth_token=` (the token
Gradio hands to `gr.OAuthToken` parameters), which the app checks with the Hub's whoami against the
test Hub. alice owns the Space, bob is on FINETUNE_ALLOWED_USERS, carol is logged in but not
allowed, and an anonymous visitor has no token. The owner's HF_TOKEN secret is set and must never
be used for a visitor's Hub load.
"""

import time

import pytest


@pytest.fixture
def public_app(fake_hub, monkeypatch, tiny_model_dir):
    import gradio.oauth as go
    from huggingface_hub import constants

    from conftest import serve_app

    fake_hub.add_user("carol", "hf_carol_write")
    for k, v in {"SPACE_ID": "alice/studio", "SYSTEM": "spaces", "FINETUNE_ALLOWED_USERS": "bob",
                 "HF_TOKEN": "hf_alice_write", "HF_HUB_DISABLE_IMPLICIT_TOKEN": "0",
                 "FINETUNE_MAX_TRAININGS": "3"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", False)  # restored after lock_down_hub
    # Real (not mocked) OAuth routes, as on a Space; the provider is never contacted without a login.
    for k, v in {"OAUTH_CLIENT_ID": "test", "OAUTH_CLIENT_SECRET": "test", "OAUTH_SCOPES": "openid profile write-repos",
                 "OPENID_PROVIDER_URL": fake_hub.url}.items():
        monkeypatch.setattr(go, k, v)
    import gradio.http_server

    monkeypatch.setattr(gradio.http_server, "get_space", lambda: None)  # no Spaces hot-reloader (needs `spaces`)
    demo, url = serve_app()
    try:
        yield url
    finally:
        demo.close()


def _client(url, token=None):
    from gradio_client import Client

    return Client(url, verbose=False, oauth_token=token)


def _error(fn, *args, **kw) -> str:
    with pytest.raises(Exception) as e:
        fn(*args, **kw)
    return str(e.value)


TRAIN_ARGS = ("builtin:tiny-chat", "builtin:demo", "lora", 2e-3, 50, 8, 256, 16)


def test_anonymous_may_plan_and_inspect_but_not_train(public_app, fake_hub):
    from huggingface_hub import HfApi

    anon = _client(public_app)
    plan = anon.predict("builtin:tiny-chat", "auto", "instruction", "answer short questions", 460, False,
                        "local", 256, 8, "quality", api_name="/plan")
    assert plan["vram_gb"] > 0
    info = anon.predict(None, "builtin:demo", "auto", "", "builtin:tiny-chat", api_name="/inspect_dataset")
    assert info["rows"] > 300
    assert "Log in" in _error(anon.predict, *TRAIN_ARGS, api_name="/train")
    assert "Log in" in _error(anon.predict, "x", "alice/x", api_name="/push")
    assert anon.predict(api_name="/runs") == []

    # dataset sources are checked in the engine: no hub: paths, no typed server paths
    for bad in ("hub:/tmp/x", "hub:../x", "hub:../../etc", "hub:a/b/../../c"):
        assert "not a Hub dataset id" in _error(anon.predict, None, bad, "auto", "", "builtin:tiny-chat",
                                                api_name="/inspect_dataset"), bad
    assert "typed server paths" in _error(anon.predict, None, "/etc/passwd", "auto", "", "builtin:tiny-chat",
                                          api_name="/inspect_dataset")

    # a visitor's Hub load never borrows the owner's HF_TOKEN secret: alice's private dataset stays closed
    api = HfApi(token="hf_alice_write")
    api.create_repo("alice/private-ds", repo_type="dataset", private=True)
    api.upload_file(path_or_fileobj=b'{"instruction": "hi", "output": "there"}\n', path_in_repo="train.jsonl",
                    repo_id="alice/private-ds", repo_type="dataset")
    fake_hub.requests.clear()
    msg = _error(anon.predict, None, "hub:alice/private-ds", "auto", "", "builtin:tiny-chat",
                 api_name="/inspect_dataset")
    assert "alice/private-ds" in msg
    assert fake_hub.requests and all(tok is None for _, _, tok in fake_hub.requests), fake_hub.requests


def test_allowlist_ownership_and_limits(public_app):
    alice, bob, carol = (_client(public_app, t) for t in ("hf_alice_write", "hf_bob_write", "hf_carol_write"))
    assert "not on this Space's allowlist" in _error(carol.predict, *TRAIN_ARGS, api_name="/train")
    assert "Log in" in _error(_client(public_app, "hf_forged").predict, *TRAIN_ARGS, api_name="/train")

    run_id = alice.predict(*TRAIN_ARGS, api_name="/train")
    try:
        # the home folder is shared with earlier tests (a Jobs test leaves a run of bob's): compare by id
        assert run_id in [r["run_id"] for r in alice.predict(api_name="/runs")]
        assert alice.predict(run_id, api_name="/status")["run_id"] == run_id
        # bob is allowed to train, but alice's run does not exist for him
        bobs = bob.predict(api_name="/runs")
        assert run_id not in [r["run_id"] for r in bobs]
        from finetune.paths import read_json, runs_dir

        assert all(read_json(runs_dir() / r["run_id"] / "config.json")["owner"] == "bob" for r in bobs)
        assert "no run" in _error(bob.predict, run_id, api_name="/status")
        assert "no run" in _error(bob.predict, run_id, api_name="/stop")
        assert "no run" in _error(bob.predict, run_id, 8, api_name="/evaluate")
        assert "no run" in _error(bob.predict, run_id, "alice/x", api_name="/push")
        assert "no run" in _error(_client(public_app).predict, run_id, api_name="/status")
        # one training per user at a time
        assert "already have a training running" in _error(alice.predict, *TRAIN_ARGS, api_name="/train")
        st = alice.predict(run_id, api_name="/stop")
        assert st["state"] in ("stopping", "stopped", "failed", "completed")
    finally:
        from finetune.runs import stop_run, wait

        stop_run(run_id, force=True)
        wait(run_id, timeout_s=60)

    from finetune.runs import load_config

    assert load_config(run_id).owner == "alice"


def test_refusals_reach_the_browser_as_gr_error(public_app):
    """The same guard wraps UI events: an anonymous click on Train shows the login message."""
    from conftest import chromium_page

    with chromium_page(public_app) as page:
        page.get_by_role("tab", name="Train").click()
        page.get_by_role("button", name="Start training").click()
        page.get_by_text("Log in with your Hugging Face account to train").first.wait_for(timeout=30000)
        assert page.get_by_role("button", name="Sign in with Hugging Face").count() >= 1 or \
            page.get_by_text("Sign in").count() >= 1


def test_every_endpoint_but_plan_inspect_status_runs_needs_a_login(public_app):
    """Endpoints added by any issue are closed to anonymous visitors unless listed as open."""
    from ui.guard import OPEN_APIS

    anon = _client(public_app)
    named = anon.view_api(return_format="dict", print_info=False)["named_endpoints"]
    dummy = {"string": "x", "number": 1, "integer": 1, "boolean": False}
    checked = []
    for name, info in named.items():
        import re

        if re.sub(r"_\d+$", "", name.strip("/")) in OPEN_APIS or name.startswith("/_"):  # /_check_login_status: Gradio's LoginButton
            continue
        args = []
        for p in info["parameters"]:
            t = (p.get("type") or {}).get("type")
            args.append(p["parameter_default"] if p.get("parameter_has_default") else dummy.get(t))
        msg = _error(anon.predict, *args, api_name=name)
        assert "Log in" in msg, (name, msg)
        checked.append(name)
    assert {"/train", "/stop", "/evaluate", "/compare", "/push"} <= set(checked)


def test_space_id_without_oauth_still_serves_public_mode(monkeypatch, tiny_model_dir):
    """SPACE_ID set on a machine that is not a Space (no SYSTEM=spaces, no OAuth app): Gradio's mocked
    login would need this machine's own HF login and fail at start-up, so the app serves without the
    LoginButton, still in public mode: a visitor plans but cannot train, and nothing is logged as a
    traceback for the refusal."""
    from gradio_client import Client

    from conftest import serve_app

    monkeypatch.setenv("SPACE_ID", "alice/studio")
    monkeypatch.delenv("SYSTEM", raising=False)
    demo, url = serve_app()
    try:
        import gradio as gr

        assert not any(isinstance(b, gr.LoginButton) for b in demo.blocks.values())
        c = Client(url, verbose=False)
        plan = c.predict("builtin:tiny-chat", "auto", "instruction", "answer short questions", 460, False,
                         "local", 256, 8, "quality", api_name="/plan")
        assert plan["method"]
        with pytest.raises(Exception, match="Log in"):
            c.predict("builtin:tiny-chat", "builtin:demo", "lora", 2e-3, 1, 8, 256, 16, api_name="/train")
    finally:
        demo.close()
