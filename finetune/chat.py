"""Chat playground: a multi-turn chat with the base model and up to three runs side by side, each
column answering the same user message with its own history, streamed token by token.

    for state in chat_stream(["base", RUN_ID], "Hello", {}, temperature=0):
        print(state["answers"])            # grows as tokens arrive; state["done"] on the last one
    save_row("my-chats", state["histories"][RUN_ID])   # a {"messages": [...]} row in datasets/my-chats.jsonl

Prompts go through the base model's chat template (add_generation_prompt) and generation stops at
its end-of-turn tokens (modeling.stop_token_ids). "base" is the base of the first run chosen (its
adapter switched off); every run must be on that base. Models stay loaded between turns (at most the
base and three runs, freed when the selection changes); one lock serialises loading and generation.
"""

from __future__ import annotations

import json
import os
import queue
import re
import threading
from contextlib import nullcontext
from typing import Iterator

from .runs import RunError

MAX_RUNS = 3
ROLES = ("system", "user", "assistant")
_LOCK = threading.Lock()  # not an RLock: Gradio may step a generator from different threads
_SAVE_LOCK = threading.Lock()
_CACHE: dict[str, tuple] = {}  # run id -> (model, tokenizer); "base:<run>" for a full fine-tune's base
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def limits() -> dict:
    """Caps on one turn: max new tokens and message length (characters); tighter on a public Space."""
    from .caller import public_mode

    pub = public_mode()
    return {"max_new_tokens": int(os.environ.get("FINETUNE_CHAT_MAX_NEW_TOKENS", 256 if pub else 2048)),
            "max_message_chars": int(os.environ.get("FINETUNE_CHAT_MAX_CHARS", 2000 if pub else 20000)),
            "max_turns": 20 if pub else 200}


def check_selection(models) -> list[str]:
    """The chosen models ("base" and up to three runs on one base), in order, checked."""
    from .compare import check_models
    from .runs import load_config

    models = check_models(models)
    runs = [m for m in models if m != "base"]
    if len(runs) > MAX_RUNS:
        raise RunError(f"chat takes the base and at most {MAX_RUNS} runs, got {len(runs)} runs")
    base = load_config(runs[0]).model.model_id
    for r in runs[1:]:
        other = load_config(r).model.model_id
        if other != base:
            raise RunError(f"run {r} was trained on {other}, not {base} like {runs[0]}: chat with runs of one base model")
    return models


def check_messages(messages, where: str = "history") -> list[dict]:
    """A list of {"role", "content"} turns (system, user, assistant), as plain dicts."""
    if isinstance(messages, str):
        try:
            messages = json.loads(messages) if messages.strip() else []
        except ValueError as e:
            raise RunError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(messages, list):
        raise RunError(f"{where}: expected a list of {{role, content}} messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise RunError(f"{where}[{i}]: expected {{\"role\": system|user|assistant, \"content\": text}}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def check_histories(histories, models: list[str]) -> dict[str, list[dict]]:
    """Each model's own history: a dict model -> messages (JSON text accepted); missing ones start empty."""
    if isinstance(histories, str):
        try:
            histories = json.loads(histories) if histories.strip() else {}
        except ValueError as e:
            raise RunError(f"history: not valid JSON ({e})") from None
    if histories is None:
        histories = {}
    if not isinstance(histories, dict):
        raise RunError("history: expected an object mapping each model (\"base\" or a run id) to its messages")
    cap = limits()["max_turns"] * 2
    out = {}
    for m in models:
        h = check_messages(histories.get(m) or [], f"history[{m!r}]")
        if len(h) > cap:
            raise RunError(f"history[{m!r}]: {len(h)} messages, at most {cap}; press Clear to start again")
        total, most = sum(len(x["content"]) for x in h), limits()["max_message_chars"] * cap
        if total > most:  # each turn within the message cap: a whole history within cap x turns
            raise RunError(f"history[{m!r}]: {total} characters, at most {most}; press Clear to start again")
        out[m] = [x for x in h if x["role"] != "system"]
    return out


def _keep_only(keys: set[str]) -> None:
    """Free cached models the selection no longer needs."""
    gone = [k for k in _CACHE if k not in keys]
    for k in gone:
        del _CACHE[k]
    if gone:
        import gc

        gc.collect()


def _model_for(name: str, first: str):
    """(model, tokenizer, context) for "base" or a run; base shares the first run's weights when it
    has an adapter (the context switches the adapter off)."""
    from .compare import load_base_model, load_run_model

    run = first if name == "base" else name
    if run not in _CACHE:
        _CACHE[run] = load_run_model(run)
    mdl, tok = _CACHE[run]
    if name != "base":
        return mdl, tok, nullcontext
    if hasattr(mdl, "disable_adapter"):
        return mdl, tok, mdl.disable_adapter
    key = f"base:{first}"
    if key not in _CACHE:
        _CACHE[key] = load_base_model(first)
    return (*_CACHE[key], nullcontext)


def _needed(models: list[str], first: str) -> set[str]:
    keys = {m for m in models if m != "base"} | {first}
    if "base" in models:
        keys.add(f"base:{first}")  # kept if present (a full fine-tune's base); never loaded for nothing
    return keys


class _TokenQueue:
    """A generate() streamer (transformers' BaseStreamer protocol) that hands new token ids to a queue."""

    def __init__(self):
        self.q: queue.Queue = queue.Queue()
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # the first call carries the prompt
            self.prompt_seen = True
            return
        self.q.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self.q.put(None)


def stream_answer(model, tok, messages: list[dict], *, temperature: float = 0.0, top_p: float = 1.0,
                  max_new_tokens: int = 128, seed: int = 0) -> Iterator[str]:
    """The assistant's answer to messages, yielded as it grows (each a longer text); the last text is
    the whole answer, stripped, as modeling.generate decodes it. temperature 0 = greedy."""
    import torch

    from .modeling import render_prompt, stop_token_ids

    if getattr(tok, "chat_template", None) is None:
        raise RunError("this model's tokenizer has no chat template, so it cannot chat; use Compare's prompts instead")
    try:
        text = render_prompt(tok, messages)
    except Exception as e:  # noqa: BLE001 -- a template that refuses e.g. a system turn
        raise RunError(f"the chat template refused these messages: {e}") from None
    device = next(model.parameters()).device
    enc = tok(text, return_tensors="pt", add_special_tokens=False).to(device)
    streamer, cancel, errors = _TokenQueue(), threading.Event(), []

    class Cancel:  # a StoppingCriteria: stop when the reader went away
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

    from transformers import StoppingCriteriaList

    kwargs = dict(**enc, max_new_tokens=int(max_new_tokens), pad_token_id=tok.pad_token_id,
                  eos_token_id=stop_token_ids(model, tok) or None, streamer=streamer,
                  stopping_criteria=StoppingCriteriaList([Cancel()]))
    if temperature and temperature > 0:
        kwargs.update(do_sample=True, temperature=float(temperature), top_p=float(top_p or 1.0), top_k=0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    torch.manual_seed(int(seed))

    def work():
        try:
            with torch.no_grad():
                model.generate(**kwargs)
        except Exception as e:  # noqa: BLE001 -- reported to the reader below
            errors.append(e)
        finally:
            streamer.end()

    th = threading.Thread(target=work, name="chat-generate", daemon=True)
    th.start()
    ids: list[int] = []
    shown = ""
    try:
        while (new := streamer.q.get()) is not None:
            ids += new
            now = tok.decode(ids, skip_special_tokens=True)
            if now.strip() and not now.endswith("\ufffd") and now != shown:  # no half-decoded character
                shown = now
                yield now.lstrip()
    finally:
        cancel.set()
        th.join()
    if errors:
        raise RunError(f"generation failed: {errors[0]}")
    yield tok.decode(ids, skip_special_tokens=True).strip()


def chat_stream(models, message: str, histories=None, *, system: str = "", temperature: float = 0.0,
                top_p: float = 1.0, max_new_tokens: int = 128, seed: int = 0) -> Iterator[dict]:
    """Each chosen model answers `message` after its own history, one column after the other, streamed.

    Yields {"models", "answers": {model: text so far}, "histories": {model: messages}, "done"}; the
    histories gain the user turn and the answer once a column is finished."""
    from .modeling import set_threads

    lim = limits()
    models = check_selection(models)
    if not isinstance(message, str) or not message.strip():
        raise RunError("type a message first")
    if len(message) > lim["max_message_chars"]:
        raise RunError(f"message: {len(message)} characters, at most {lim['max_message_chars']}")
    if not isinstance(system or "", str) or len(system or "") > lim["max_message_chars"]:
        raise RunError(f"system prompt: text of at most {lim['max_message_chars']} characters")
    max_new = int(max_new_tokens or 0)
    if not 1 <= max_new <= lim["max_new_tokens"]:
        raise RunError(f"max_new_tokens must be between 1 and {lim['max_new_tokens']}, got {max_new_tokens}")
    if not 0 <= float(temperature or 0) <= 5 or not 0 < float(top_p or 1.0) <= 1:
        raise RunError("temperature must be between 0 and 5, top_p above 0 and at most 1")
    hist = check_histories(histories, models)
    first = [m for m in models if m != "base"][0]
    answers = {m: "" for m in models}
    if not _LOCK.acquire(timeout=600):
        raise RunError("the chat models are busy with another conversation; try again in a minute")
    try:
        set_threads()
        _keep_only(_needed(models, first))
        for m in models:
            mdl, tok, ctx = _model_for(m, first)
            convo = ([{"role": "system", "content": system}] if (system or "").strip() else []) + hist[m] + [
                {"role": "user", "content": message}]
            with ctx():
                for text in stream_answer(mdl, tok, convo, temperature=float(temperature or 0),
                                          top_p=float(top_p or 1.0), max_new_tokens=max_new, seed=int(seed or 0)):
                    answers[m] = text
                    yield {"models": models, "answers": dict(answers), "histories": hist, "done": False}
            hist = {**hist, m: hist[m] + [{"role": "user", "content": message}, {"role": "assistant", "content": answers[m]}]}
    finally:
        _LOCK.release()
    yield {"models": models, "answers": answers, "histories": hist, "done": True,
           "decoding": {"temperature": float(temperature or 0), "top_p": float(top_p or 1.0),
                        "max_new_tokens": max_new, "seed": int(seed or 0)}}


def dataset_file(name: str) -> str:
    """The file name a chat dataset is saved as under datasets/ (NAME.jsonl); the name is checked."""
    name = (name or "").strip()
    if not name.endswith(".jsonl"):
        name += ".jsonl"
    if not _NAME.match(name) or ".." in name:
        raise RunError(f"dataset name {name!r}: use letters, digits, '.', '_' or '-' (no folders), at most 100 characters")
    return name


def save_row(dataset: str, messages, system: str = "") -> dict:
    """Append one {"messages": [...]} training row (the conversation ending with the answer to keep)
    to datasets/NAME.jsonl, created if missing; returns {dataset, path, rows}."""
    from .paths import atomic_write_text, datasets_dir

    msgs = check_messages(messages, "messages")
    if (system or "").strip() and not any(m["role"] == "system" for m in msgs):
        msgs = [{"role": "system", "content": system}] + msgs
    if not msgs or msgs[-1]["role"] != "assistant" or not msgs[-1]["content"].strip():
        raise RunError("messages: the row must end with the assistant's answer (ask something first)")
    if not any(m["role"] == "user" for m in msgs):
        raise RunError("messages: the row needs at least one user turn")
    name = dataset_file(dataset)
    path = datasets_dir() / name
    with _SAVE_LOCK:  # read, append, replace: a reader never sees half a line
        old = path.read_text(encoding="utf-8") if path.is_file() else ""
        if old and not old.endswith("\n"):
            old += "\n"
        atomic_write_text(path, old + json.dumps({"messages": msgs}, ensure_ascii=False) + "\n")
        rows = sum(1 for line in (old.splitlines() + ["x"]) if line.strip())
    return {"dataset": name, "path": str(path), "rows": rows}
