"""The Gradio API, driven with gradio_client against the real app on a free port:
plan -> inspect_dataset -> prepare_dataset -> train -> status (until completed) -> evaluate -> compare."""

import json
import time

import pytest


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def test_api_names_are_the_contract(client):
    names = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert {"/plan", "/inspect_dataset", "/prepare_dataset", "/train", "/status", "/stop", "/runs",
            "/evaluate", "/compare", "/diagnose", "/ab_pair", "/vote", "/export_votes"} <= names


def test_readme_names_only_real_parameters(client):
    """The README's endpoint table is what a client codes against: every snake_case name in an
    endpoint's parameter column is one of that endpoint's parameters (it said lora_rank for lora_r)."""
    import re
    from pathlib import Path

    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    values = {"q4_k_m", "q8_0", "dare_linear", "task_arithmetic"}  # choices named in the table, not parameters
    rows, wrong = 0, []
    for line in (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8").splitlines():
        m = re.match(r"\| `(/[a-z_]+)` \| ([^|]*)\|", line)
        if not m:
            continue
        rows += 1
        assert m.group(1) in api, f"README documents {m.group(1)}, which the app does not serve"
        names = {p["parameter_name"] for p in api[m.group(1)]["parameters"]}
        wrong += [(m.group(1), w) for w in sorted(set(re.findall(r"`?\b([a-z][a-z0-9]*(?:_[a-z0-9]+)+)\b", m.group(2))))
                  if w not in names and w not in values]
    assert rows >= 10 and wrong == [], wrong


def test_full_loop_through_the_api(client, app_url):
    plan = client.predict("builtin:tiny-chat", "auto", "instruction", "answer short questions", 460, False,
                          "local", 256, 8, "quality", api_name="/plan")
    assert plan["method"] in ("lora", "full", "dora", "qlora", "prefix") and plan["vram_gb"] > 0 and plan["reasons"]

    info = client.predict(None, "builtin:demo", "auto", "", "builtin:tiny-chat", api_name="/inspect_dataset")
    assert info["format"] == "alpaca" and info["kind"] == "messages" and info["rows"] > 300

    prepared = client.predict(None, "builtin:demo", "auto", "", 0.1, 42, "demo-split", api_name="/prepare_dataset")
    assert prepared["rows_validation"] > 0 and prepared["dir"].endswith("demo-split")

    with pytest.raises(Exception, match="learning_rate"):
        client.predict("builtin:tiny-chat", "builtin:demo", "lora", -1.0, 1, 8, 256, 16, api_name="/train")

    run_id = client.predict("builtin:tiny-chat", prepared["dir"], "lora", 2e-3, 3, 8, 256, 16, api_name="/train")
    assert isinstance(run_id, str) and run_id
    deadline, st = time.time() + 900, {}  # a generous limit: the CPU may be shared
    seen_running = False
    while time.time() < deadline:
        st = client.predict(run_id, api_name="/status")
        seen_running |= st["state"] == "running"
        if st["state"] in ("completed", "failed", "stopped"):
            break
        time.sleep(1)
    assert st["state"] == "completed", st.get("error")
    assert st["progress"] == 100.0 and st["step"] == st["total_steps"] and st["events"]
    assert run_id in [r["run_id"] for r in client.predict(api_name="/runs")]

    report = client.predict(run_id, 48, api_name="/evaluate")
    assert report["base"]["exact_match"] is not None and report["finetuned"]["perplexity"] < report["base"]["perplexity"]

    assert {"metrics", "base_metrics", "gates", "regression", "safety", "report_md", "report_json"} <= set(report)
    assert report["metrics"]["perplexity"] == report["perplexity"] < report["base_perplexity"]

    diag = client.predict(run_id, api_name="/diagnose")
    assert diag["run_id"] == run_id and all(set(f) == {"issue", "evidence", "suggestion", "settings"}
                                            for f in diag["flags"])

    cmp = client.predict(["base", run_id], "What is the capital of France?\nIs 42 even or odd?", 8, 0,
                         api_name="/compare")
    assert [r["prompt"] for r in cmp["rows"]] == ["What is the capital of France?", "Is 42 even or odd?"]
    assert all(set(r["answers"]) == {"base", run_id} for r in cmp["rows"]) and set(cmp["latency"]) == {"base", run_id}

    # Blind A/B: the reply holds the two answers and a random id, nothing that names a model
    pair = client.predict(["base", run_id], "Is 42 even or odd?", api_name="/ab_pair")
    assert set(pair) == {"pair_id", "a", "b"} and run_id not in json.dumps(pair) and "base" not in pair["pair_id"]
    voted = client.predict(pair["pair_id"], "A", api_name="/vote")
    assert voted["choice"] == "A" and {voted["a_model"], voted["b_model"]} == {"base", run_id}
    with pytest.raises(Exception, match="already"):
        client.predict(pair["pair_id"], "B", api_name="/vote")
    # gradio_client downloads any returned dict with a "path" key; ask for the server's path as it is
    from gradio_client import Client

    exported = Client(app_url, verbose=False, download_files=False).predict(api_name="/export_votes")
    assert exported["rows"] >= 1 and exported["path"].endswith(".jsonl")


def test_stop_through_the_api(client):
    run_id = client.predict("builtin:tiny-chat", "builtin:demo", "lora", 2e-3, 50, 8, 256, 16, api_name="/train")
    deadline = time.time() + 120
    while time.time() < deadline and (client.predict(run_id, api_name="/status").get("step") or 0) < 2:
        time.sleep(0.5)
    client.predict(run_id, api_name="/stop")
    deadline, st = time.time() + 120, {}
    while time.time() < deadline:
        st = client.predict(run_id, api_name="/status")
        if st["state"] in ("stopped", "completed", "failed"):
            break
        time.sleep(0.5)
    assert st["state"] == "stopped" and st["artifact"] and st["resumable"]


def test_reattach_to_a_run_from_a_new_session(client, app_url):
    """A page reload is a new session: with only the run id (kept in BrowserState), the status and
    the runs table of a run started elsewhere come back."""
    from gradio_client import Client

    run_id = client.predict("builtin:tiny-chat", "builtin:demo", "lora", 2e-3, 1, 8, 256, 16, api_name="/train")
    fresh = Client(app_url, verbose=False)
    deadline, st = time.time() + 300, {}
    while time.time() < deadline:
        st = fresh.predict(run_id, api_name="/status")
        if st["state"] in ("completed", "failed", "stopped"):
            break
        time.sleep(1)
    assert st["state"] == "completed", st.get("error")
    assert st["run_id"] == run_id and st["backend"] == "transformers" and st["queue_position"] is None
    assert st["events"] and st["step"] == st["total_steps"]
    row = [r for r in fresh.predict(api_name="/runs") if r["run_id"] == run_id][0]
    assert row["state"] == "completed" and row["method"] == "lora"
