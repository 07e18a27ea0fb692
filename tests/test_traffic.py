"""Light and heavy work kept apart: the heavy gate (finetune.workgate) on its own, then in the real
app through gradio_client: a light call completes while a heavy call is held, the waiting call is
told why, and one visitor cannot queue a second heavy call. No timings are asserted."""

import json
import threading
import time

import pytest

from finetune.workgate import BusyError, HeavyGate


def _wait_until(cond, what: str, limit_s: float = 120):
    deadline = time.time() + limit_s
    while not cond():
        if time.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def test_gate_is_first_come_first_served_and_bounded():
    gate = HeavyGate(slots=1, max_waiting=2, per_visitor=1)
    release_a = gate.acquire("a", "job a")
    order, told = [], []

    def worker(visitor):
        release = gate.acquire(visitor, f"job {visitor}", on_wait=lambda n, v=visitor: told.append((v, n)))
        order.append(visitor)
        release()

    threads = [threading.Thread(target=worker, args=(v,)) for v in ("b", "c")]
    threads[0].start()
    _wait_until(lambda: gate.snapshot()["waiting"] == 1, "b to wait")
    threads[1].start()
    _wait_until(lambda: gate.snapshot()["waiting"] == 2, "c to wait")
    with pytest.raises(BusyError, match="busy"):
        gate.acquire("d", "job d")  # one running, two waiting: the line is full
    assert gate.snapshot() == {"running": 1, "waiting": 2, "slots": 1}
    release_a()
    for t in threads:
        t.join(30)
    assert order == ["b", "c"] and ("b", 1) in told and ("c", 2) in told
    assert gate.snapshot() == {"running": 0, "waiting": 0, "slots": 1}


def test_gate_limits_each_visitor():
    gate = HeavyGate(slots=2, max_waiting=8, per_visitor=1)
    release = gate.acquire("alice", "prepare")
    with pytest.raises(BusyError, match="already have 1 heavy request"):
        gate.acquire("alice", "evaluate")
    gate.acquire("bob", "evaluate")()  # someone else is not held back
    release()
    gate.acquire("alice", "evaluate")()  # and alice may go again once hers is done


def test_small_sources_are_decided_by_size(tmp_path, monkeypatch):
    from finetune.workgate import is_small_source

    big, small = tmp_path / "big.jsonl", tmp_path / "small.jsonl"
    small.write_text('{"text": "hi"}\n')
    with open(big, "wb") as f:  # sparse: its size counts, nothing is read
        f.truncate(2 * 1024 * 1024)
    monkeypatch.setenv("FINETUNE_SMALL_SOURCE_MB", "1")
    assert is_small_source("builtin:demo") and is_small_source(str(small))
    assert not is_small_source(str(big)) and not is_small_source("hub:someone/data")


@pytest.fixture
def held_gate(monkeypatch, tiny_model_dir):
    """The app with one heavy slot, that slot held by the test, and room for one waiting call."""
    import finetune.workgate as wg
    from conftest import serve_app

    monkeypatch.setattr(wg, "_GATE", HeavyGate(slots=1, max_waiting=1, per_visitor=1))
    release = wg.heavy_gate().acquire("test", "a heavy job held by the test")
    demo, url = serve_app()
    try:
        yield url, release
    finally:
        demo.close()


def test_a_light_call_completes_while_a_heavy_call_waits(held_gate, tmp_path):
    from gradio_client import Client, handle_file

    import finetune.workgate as wg

    url, release = held_gate
    client = Client(url, verbose=False)
    heavy = client.submit(None, "builtin:demo", "auto", "", 0.1, 42, "held-split", api_name="/prepare_dataset")
    _wait_until(lambda: wg.heavy_gate().snapshot()["waiting"] == 1, "prepare_dataset to wait for the heavy slot")

    plan = client.predict("builtin:tiny-chat", "auto", "instruction", "", 460, False, "local", 256, 8, "quality",
                          api_name="/plan")
    info = client.predict(None, "builtin:demo", "auto", "", "builtin:tiny-chat", api_name="/inspect_dataset")
    assert plan["vram_gb"] > 0 and info["rows"] > 300 and not heavy.done()  # light answered; heavy still held

    big = tmp_path / "big.jsonl"  # over FINETUNE_SMALL_SOURCE_MB: a heavy inspection, refused while the line is full
    row = json.dumps({"instruction": "q" * 100, "output": "a" * 100}) + "\n"
    big.write_text(row * (9 * 1024 * 1024 // len(row)))
    with pytest.raises(Exception, match="already have 1 heavy request"):  # the same visitor: over its limit
        client.predict(handle_file(str(big)), "", "auto", "", "builtin:tiny-chat", api_name="/inspect_dataset")
    other = Client(url, verbose=False, headers={"x-forwarded-for": "10.0.0.2"})  # another visitor, behind a proxy
    with pytest.raises(Exception, match="busy"):  # one running, one waiting: the line is full
        other.predict(handle_file(str(big)), "", "auto", "", "builtin:tiny-chat", api_name="/inspect_dataset")
    assert not heavy.done()

    release()
    prepared = heavy.result(timeout=300)
    assert prepared["rows_validation"] > 0


def test_a_waiting_call_is_told_why(held_gate):
    from gradio_client import Client

    url, release = held_gate
    heavy = Client(url, verbose=False).submit(None, "builtin:demo", "auto", "", 0.1, 42, "told-split",
                                              api_name="/prepare_dataset")
    _wait_until(lambda: (heavy.status().log or ("",))[0].startswith("prepare_dataset: waiting for 1 heavy job"),
                "the waiting message")
    release()
    assert heavy.result(timeout=300)["rows_validation"] > 0


def test_unchanged_sources_are_inspected_once(tmp_path, monkeypatch, tiny_tokenizer):
    import os

    import finetune.data
    from finetune import inspect_cache

    calls = []
    real = finetune.data.inspect_dataset
    monkeypatch.setattr(finetune.data, "inspect_dataset", lambda src, **kw: calls.append(src) or real(src, **kw))
    monkeypatch.setattr(inspect_cache, "_CACHE", type(inspect_cache._CACHE)())
    f = tmp_path / "rows.jsonl"
    f.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(12)))
    first = inspect_cache.inspect_cached(str(f), tokenizer=tiny_tokenizer)
    first["rows"] = -1  # a caller changing its copy does not change the kept result
    assert inspect_cache.inspect_cached(str(f), tokenizer=tiny_tokenizer)["rows"] == 12 and len(calls) == 1
    assert inspect_cache.inspect_cached(str(f), tokenizer=None)["rows"] == 12 and len(calls) == 2  # other arguments
    with open(f, "a") as fh:
        fh.write(json.dumps({"instruction": "q", "output": "a"}) + "\n")
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert inspect_cache.inspect_cached(str(f), tokenizer=tiny_tokenizer)["rows"] == 13 and len(calls) == 3
    inspect_cache.inspect_cached("builtin:demo", tokenizer=None)
    inspect_cache.inspect_cached("builtin:demo", tokenizer=None)
    assert calls.count("builtin:demo") == 1


def test_a_big_inspection_runs_in_a_child_process(tmp_path, monkeypatch, tiny_model_dir):
    from gradio_client import Client, handle_file

    import finetune.workgate as wg
    from conftest import serve_app

    with pytest.raises(ValueError, match="missing.jsonl"):  # the child's error comes back as one line
        wg.run_child("finetune.inspect_cache", {"source": str(tmp_path / "missing.jsonl"), "model": "builtin:tiny-chat"})
    monkeypatch.setenv("FINETUNE_SMALL_SOURCE_MB", "0")  # every file is big now
    monkeypatch.setattr(wg, "_GATE", HeavyGate(slots=1, max_waiting=1, per_visitor=1))
    children = []
    real = wg.run_child
    monkeypatch.setattr(wg, "run_child", lambda *a, **kw: children.append(a[0]) or real(*a, **kw))
    f = tmp_path / "upload_me.jsonl"
    f.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(12)))
    demo, url = serve_app()
    try:
        info = Client(url, verbose=False).predict(handle_file(str(f)), "", "auto", "", "builtin:tiny-chat",
                                                  api_name="/inspect_dataset")
    finally:
        demo.close()
    assert info["rows"] == 12 and info["source"] == "upload_me.jsonl" and info["token_stats"]
    assert children == ["finetune.inspect_cache"] and wg.heavy_gate().snapshot()["running"] == 0
