"""Chat playground: streamed multi-turn answers of the base and runs, saved rows, the chat API."""

import json

import pytest

import conftest  # noqa: F401  (offline, home folder)


@pytest.fixture(scope="module")
def chat_run(tiny_model_dir):
    from finetune.config import default_run_config
    from finetune.runs import start_training, wait

    run_id = start_training(default_run_config(max_steps=2, eval_steps=2, save_steps=2))
    st = wait(run_id, timeout_s=900)
    assert st["state"] == "completed", st.get("error")
    return run_id


def _last(gen):
    states = list(gen)
    return states, states[-1]


def test_streaming_yields_partials_and_ends_with_the_greedy_answer(chat_run):
    from finetune.chat import chat_stream
    from finetune.compare import load_run_model
    from finetune.modeling import generate

    states, last = _last(chat_stream(["base", chat_run], "Name a colour.", {}, max_new_tokens=24))
    assert last["done"] and last["models"] == ["base", chat_run]
    partial = [s["answers"][chat_run] for s in states if not s["done"] and s["answers"][chat_run]]
    assert len(set(partial)) > 2  # the run's answer grew token by token
    assert all(len(a) <= len(b) for a, b in zip(partial, partial[1:]))
    mdl, tok = load_run_model(chat_run)
    want = generate(mdl, tok, [[{"role": "user", "content": "Name a colour."}]], max_new_tokens=24)[0]
    assert last["answers"][chat_run] == want
    with mdl.disable_adapter():
        base = generate(mdl, tok, [[{"role": "user", "content": "Name a colour."}]], max_new_tokens=24)[0]
    assert last["answers"]["base"] == base
    assert last["histories"][chat_run] == [{"role": "user", "content": "Name a colour."},
                                           {"role": "assistant", "content": want}]


def test_second_turn_goes_through_the_chat_template_with_its_history(chat_run, monkeypatch):
    from finetune import chat, modeling

    seen = []
    real = modeling.render_prompt
    monkeypatch.setattr(modeling, "render_prompt", lambda tok, msgs: seen.append(msgs) or real(tok, msgs))
    hist = {chat_run: [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]}
    _, last = _last(chat.chat_stream([chat_run], "And then?", json.dumps(hist), system="Be brief.", max_new_tokens=8))
    assert seen[-1] == [{"role": "system", "content": "Be brief."}, *hist[chat_run], {"role": "user", "content": "And then?"}]
    mdl, tok = chat._CACHE[chat_run]
    text = real(tok, seen[-1])
    assert "Hello there" in text and "Be brief." in text and text.index("Hello there") < text.index("And then?")
    assert text.endswith(tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                                 add_generation_prompt=True).split("x")[-1])
    assert len(last["histories"][chat_run]) == 4


def test_sampling_is_reproducible_with_a_seed_and_bad_input_is_named(chat_run):
    from finetune.chat import chat_stream
    from finetune.runs import RunError

    a = list(chat_stream([chat_run], "Tell me", {}, temperature=1.2, top_p=0.9, seed=7, max_new_tokens=16))[-1]
    b = list(chat_stream([chat_run], "Tell me", {}, temperature=1.2, top_p=0.9, seed=7, max_new_tokens=16))[-1]
    assert a["answers"] == b["answers"]
    for kwargs, words in (({"message": " "}, "message"), ({"histories": "{bad"}, "history"),
                          ({"histories": {chat_run: [{"role": "robot", "content": "x"}]}}, "history"),
                          ({"max_new_tokens": 0}, "max_new_tokens")):
        args = {"message": "hi", "histories": {}, **kwargs}
        with pytest.raises(RunError, match=words):
            list(chat_stream([chat_run], args["message"], args["histories"], max_new_tokens=kwargs.get("max_new_tokens", 4)))


def test_save_row_appends_a_messages_row_that_inspect_reads(chat_run):
    import subprocess
    import sys

    from finetune.chat import save_row
    from finetune.paths import datasets_dir
    from finetune.runs import RunError

    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert save_row("chat-test", msgs, system="Be kind.")["rows"] == 1
    r = save_row("chat-test.jsonl", json.dumps(msgs + [{"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}]))
    assert r["rows"] == 2 and r["dataset"] == "chat-test.jsonl"
    rows = [json.loads(x) for x in (datasets_dir() / "chat-test.jsonl").read_text().splitlines()]
    assert rows[0]["messages"][0] == {"role": "system", "content": "Be kind."} and len(rows[1]["messages"]) == 4
    for bad, words in (("../x", "dataset name"), ("a/b", "dataset name")):
        with pytest.raises(RunError, match=words):
            save_row(bad, msgs)
    with pytest.raises(RunError, match="assistant"):
        save_row("chat-test", msgs[:1])
    out = subprocess.run([sys.executable, "-m", "finetune", "data", "inspect", "chat-test.jsonl", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rep = json.loads(out.stdout)
    assert rep["format"] == "messages" and rep["rows"] == 2
    # The name the save returns is a training source (Train tab, finetune train --data chat-test).
    from finetune.config import default_run_config
    from finetune.preflight import preflight, resolve_source

    assert resolve_source("chat-test") == resolve_source("chat-test.jsonl") == str(datasets_dir() / "chat-test.jsonl")
    found = preflight(default_run_config("builtin:tiny-chat", "chat-test", max_steps=1))
    assert found["data"]["kind"] == "messages" and found["data"]["trained_tokens_sample"] > 0


def test_a_streamed_chat_holds_its_heavy_slot_until_the_last_item():
    import gradio as gr

    from finetune.workgate import heavy_gate
    from ui import traffic

    def chat(message: str):
        for i in range(3):
            yield heavy_gate().snapshot()["running"]

    with gr.Blocks() as demo:
        gr.api(chat, api_name="chat")
    traffic.route(demo)
    fn = next(f for f in demo.fns.values() if f.api_name == "chat").fn
    before = heavy_gate().snapshot()["running"]
    assert list(fn("hi")) == [before + 1] * 3  # held while streaming (a plain wrapper would have let go at once)
    assert heavy_gate().snapshot()["running"] == before
