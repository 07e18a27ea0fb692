"""Compare tab, Chat: a multi-turn chat with the base model and up to three runs side by side, streamed,
with a button per column that keeps that answer (and the conversation so far) as a training row.

APIs: `chat` (streams {models, answers, histories, done}; gradio_client's submit() iterates the partial
outputs) and `chat_save_row` (appends {"messages": [...]} to datasets/NAME.jsonl). Engine: finetune/chat.py.
"""

from __future__ import annotations

import json

import gradio as gr

from .render import run_choices, user_errors

COLUMNS = 4  # the base and three runs


def _stream_errors(gen):
    """Engine errors in a streaming handler become one clear gr.Error (as render.user_errors does)."""
    try:
        yield from gen
    except gr.Error:
        raise
    except (ValueError, OSError, TypeError, RuntimeError) as exc:
        raise gr.Error(str(exc).strip() or type(exc).__name__, duration=None, print_exception=False) from None


def _selection(models) -> list[str]:
    """The chosen models, each run checked against the caller (a run someone else owns reads as missing)."""
    from finetune import access

    from .guard import current

    if isinstance(models, str):
        text = models.strip()
        models = json.loads(text) if text.startswith("[") else [m for m in text.replace(",", " ").split() if m]
    out = [str(m).strip() for m in (models or []) if str(m).strip()]
    for m in out:
        if m != "base":
            access.check_run(current(), m)
    return out


def chat_api(message: str, history: str = "{}", models: str = "base", system: str = "", temperature: float = 0.0,
             top_p: float = 1.0, max_new_tokens: float = 128, seed: float = 0) -> dict:
    """Each chosen model ("base" and up to three run ids, comma-separated or a JSON list) answers `message`
    after its own history (JSON: {model: [{role, content}, ...]}); streamed (the `chat` API). Yields
    {models, answers, histories, done}; pass the last `histories` back as `history` for the next turn."""
    from finetune.chat import chat_stream

    def run():
        yield from chat_stream(_selection(models), message, history or {}, system=system or "",
                               temperature=float(temperature or 0), top_p=float(top_p or 1.0),
                               max_new_tokens=int(max_new_tokens or 128), seed=int(seed or 0))

    yield from _stream_errors(run())


@user_errors
def chat_save_row_api(dataset: str, messages: str, system: str = "") -> dict:
    """Append one training row {"messages": [...]} (a conversation ending with the answer to keep; JSON)
    to the saved dataset NAME.jsonl, created if missing (the `chat_save_row` API). Returns {dataset, rows}."""
    from finetune import access
    from finetune.chat import dataset_file, save_row

    from .guard import current, dataset_name_for_caller

    ident = current()
    name = dataset_file((dataset or "").strip() or (f"{ident.username}-chat" if ident.public else "chat-rows"))
    name = dataset_name_for_caller(name, "chat")  # public: never another visitor's dataset
    out = save_row(name, messages or "[]", system or "")
    if ident.public:
        access.set_dataset_owner(name, ident)
    out.pop("path", None)  # a server path: the name is what the Train tab's dataset field takes
    return out


def _bots(models: list[str], histories: dict, answers: dict | None = None, message: str = "") -> list:
    out = []
    for i in range(COLUMNS):
        if i >= len(models):
            out.append(gr.skip())
            continue
        m = models[i]
        shown = list(histories.get(m) or [])
        if answers is not None and message:
            shown += [{"role": "user", "content": message}, {"role": "assistant", "content": answers.get(m) or "…"}]
        out.append(gr.Chatbot(value=shown, label=m))
    return out


def chat_send(message: str, models, state: dict, system: str, temperature: float, top_p: float, max_new: float, seed: float):
    """The Send button: stream every column, then keep the histories in the page's state."""
    yield from _stream_errors(_send_steps(message, models, state, system, temperature, top_p, max_new, seed))


def _send_steps(message, models, state, system, temperature, top_p, max_new, seed):
    state = state or {}
    models = _selection(models)
    past = state.get("histories") or {}
    yield *_bots(models, past, {}, message), state, gr.skip(), "Answering…"
    last = None
    for last in chat_api(message, json.dumps(past), models, system, temperature, top_p, max_new, seed):
        if not last["done"]:
            yield *_bots(last["models"], past, last["answers"], message), state, gr.skip(), gr.skip()
    hist = {**past, **last["histories"]}
    yield *_bots(last["models"], hist), {"models": last["models"], "histories": hist}, "", "Done: save a good answer below its column."


def _saver(i: int):
    def chat_save(state: dict, dataset: str, system: str):  # named for guard.PRIVATE_ACTIONS
        return _save(i, state, dataset, system)

    return chat_save


def _save(i: int, state: dict, dataset: str, system: str):
    models = (state or {}).get("models") or []
    if i >= len(models):
        raise gr.Error("Ask something first: this column has no answer yet.")
    msgs = ((state or {}).get("histories") or {}).get(models[i]) or []
    r = chat_save_row_api(dataset, json.dumps(msgs), system)
    return f"Saved the answer of **{models[i]}** as a training row: **{r['rows']}** row(s) in `{r['dataset']}`."


def _columns(models):
    models = [m for m in (models if isinstance(models, list) else [models]) if m] or ["base"]
    return [gr.Column(visible=i < len(models)) for i in range(COLUMNS)] + [
        gr.Chatbot(label=models[i] if i < len(models) else f"model {i + 1}") for i in range(COLUMNS)]


def build(run_box) -> None:
    with gr.Accordion("Chat: talk to the base and up to 3 runs side by side", open=True):
        with gr.Row():
            models = gr.Dropdown(["base"] + run_choices(), value=["base"], multiselect=True, max_choices=COLUMNS,
                                 allow_custom_value=True, label="Models: base and up to 3 runs of one base model", scale=3)
            system = gr.Textbox(label="System prompt (optional)", scale=3)
        with gr.Row():
            temp = gr.Slider(0, 2, value=0, step=0.05, label="Temperature (0 = greedy)")
            top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="Top p")
            max_new = gr.Slider(1, 1024, value=128, step=1, label="Max new tokens")
            seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
        cols, bots, saves = [], [], []
        with gr.Row():
            for i in range(COLUMNS):
                with gr.Column(visible=i == 0) as col:
                    bots.append(gr.Chatbot(label="base" if i == 0 else f"model {i + 1}", height=320,
                                           elem_id=f"chat-col-{i}"))
                    saves.append(gr.Button("Save this answer as a training row", size="sm", elem_id=f"chat-save-{i}"))
                cols.append(col)
        with gr.Row():
            msg = gr.Textbox(placeholder="Type a message and press Send", show_label=False, scale=5, elem_id="chat-msg")
            send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
            clear = gr.Button("Clear", scale=1)
        dataset = gr.Textbox(value="chat-rows", label="Dataset the saved rows go to (a name: datasets/NAME.jsonl)")
        note = gr.Markdown(elem_id="chat-note")
        state = gr.State({})
    run_box.change(lambda r: gr.Dropdown(choices=["base"] + run_choices(), value=["base", r] if r else gr.skip()),
                   run_box, models, api_visibility="private")
    models.focus(lambda: gr.Dropdown(choices=["base"] + run_choices()), None, models, api_visibility="private")
    models.change(_columns, models, cols + bots, api_visibility="private")
    send.click(chat_send, [msg, models, state, system, temp, top_p, max_new, seed], bots + [state, msg, note],
               api_visibility="private")
    clear.click(lambda: [gr.Chatbot(value=[])] * COLUMNS + [{}, "", ""], None, bots + [state, msg, note],
                api_visibility="private")
    for i, btn in enumerate(saves):
        btn.click(_saver(i), [state, dataset, system], note, api_visibility="private")
    gr.api(chat_api, api_name="chat")
    gr.api(chat_save_row_api, api_name="chat_save_row")
