"""UI guards: memory refusal before launch, server paths refused on a public Space, clear errors."""

import gradio as gr
import pytest


def test_a_run_that_will_not_fit_is_refused_before_launch(home):
    """The memory estimate is part of preflight (finetune.preflight): one clear error, no run folder."""
    from ui import train_tab

    before = sorted((home / "runs").iterdir()) if (home / "runs").exists() else []
    with pytest.raises(gr.Error, match=r"train\.batch_size: the memory estimate is .* lower the batch size"):
        train_tab.train_api("meta-llama/Llama-3.1-70B-Instruct", "builtin:demo", "full", "2e-5", 1, 8, 256, 16)
    assert (sorted((home / "runs").iterdir()) if (home / "runs").exists() else []) == before


def test_typed_server_paths_are_refused_on_a_space(monkeypatch, home, tmp_path):
    from finetune.paths import datasets_dir
    from ui.render import check_source

    secret = tmp_path / "secret.txt"
    secret.write_text("do not show")
    assert check_source(str(secret)) == str(secret)  # locally, your own files are yours
    monkeypatch.setenv("SPACE_ID", "someone/fine-tune-studio")
    with pytest.raises(gr.Error, match="upload the file"):
        check_source(str(secret))
    with pytest.raises(gr.Error):
        check_source("/etc/passwd")
    assert check_source(str(secret), uploaded=True) == str(secret)
    assert check_source("builtin:demo") == "builtin:demo"
    assert check_source("my-saved-set") == "my-saved-set"
    saved = datasets_dir() / "x"
    assert check_source(str(saved)) == str(saved)


def test_empty_number_fields_give_a_clear_error(tiny_model_dir):
    from ui import train_tab

    with pytest.raises(gr.Error, match="Learning rate is empty"):
        train_tab.train_api("builtin:tiny-chat", "builtin:demo", "lora", None, 1, 8, 256, 16)
    with pytest.raises(gr.Error, match="no-such-run"):
        train_tab.status_api("no-such-run")


def test_user_errors_are_one_log_line_not_a_traceback(caplog):
    from ui.render import user_errors

    @user_errors
    def handler(x):
        if x == "engine":
            raise ValueError("data.jsonl line 3: invalid JSON")
        raise gr.Error("No run selected.")

    for arg, text in (("engine", "line 3"), ("ui", "No run selected")):
        with caplog.at_level("WARNING", logger="fine_tune_studio"), pytest.raises(gr.Error) as exc:
            handler(arg)
        assert text in exc.value.message and exc.value.print_exception is False  # Gradio prints no traceback
        assert [r.getMessage() for r in caplog.records][-1] == f"handler: {exc.value.message}"


def test_api_only_endpoints_need_no_hidden_components():
    from ui import build_demo

    demo = build_demo()
    # A button may start hidden (Evaluate shows "Apply to Train tab" only for a flagged issue), but no
    # hidden component may carry a public endpoint: API-only endpoints go through gr.api.
    hidden = {b._id for b in demo.blocks.values() if isinstance(b, gr.Button) and b.visible is False}
    carried = [d.api_name for d in demo.fns.values()
               if any(t[0] in hidden for t in d.targets) and d.api_visibility != "private"]
    assert carried == []
    names = {d.api_name for d in demo.fns.values()}
    assert {"status", "runs"} <= names
