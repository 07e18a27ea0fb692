"""Runs on Hugging Face Jobs, end to end against loopback servers: tests/fake_jobs.py runs each job as
a local process with its own empty home, talking only to tests/fake_hub.py, so everything the app
shows (state, steps, loss, the adapter) can only have come back through the Hub.

Covers: submit (token as a secret, data pushed as a private dataset), follow (mirrored status and
events), a job that completes and whose adapter comes back and evaluates, a local app with only a
token (the stock image, this project installed from a wheel the app uploads), cancel through Stop,
and the errors: unknown flavor, no credits, a failed job with its last log lines, a timeout.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "hf_alice_write"


@pytest.fixture
def jobs(fake_hub, tmp_path, monkeypatch):
    from tests.fake_jobs import FakeJobs

    fj = FakeJobs(fake_hub, platform_env={"FINETUNE_JOBS_PUSH_S": "1"}, tmp_root=tmp_path / "jobs")
    url = fj.start()
    monkeypatch.setenv("FINETUNE_JOBS_ENDPOINT", url)
    monkeypatch.setenv("FINETUNE_JOBS_IMAGE", "hf.co/spaces/alice/fine-tune-studio")
    monkeypatch.setenv("FINETUNE_JOBS_POLL_S", "0.5")
    try:
        yield fj
    finally:
        fj.stop()


def _cfg(**train):
    from finetune.config import default_run_config

    base = dict(max_steps=4, epochs=1.0, eval_steps=0, save_steps=2, logging_steps=1)
    base.update(train)
    return default_run_config("builtin:tiny-chat", "builtin:demo", **base)


def _wait(run_id, cond, timeout_s=300.0) -> dict:
    from finetune.runs import read_status

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        st = read_status(run_id)
        if cond(st):
            return st
        time.sleep(0.3)
    from finetune.runs import run_dir

    raise AssertionError(f"timed out: {read_status(run_id)}\n{(run_dir(run_id) / 'train.log').read_text()[-3000:]}")


def _final(st):
    return st.get("state") in ("completed", "failed", "stopped")


def _no_token_in(folder: Path):
    for p in folder.rglob("*"):
        if p.is_file():
            assert TOKEN.encode() not in p.read_bytes(), f"token written to {p}"


def test_job_completes_and_its_adapter_comes_back(jobs, fake_hub, tmp_path, tiny_model_dir):
    from peft import PeftModel

    from finetune.builtin import demo_records
    from finetune.jobs import submit
    from finetune.modeling import load_model
    from finetune.runs import read_events, run_dir, status_summary

    data = tmp_path / "mine.jsonl"  # a local file: it must travel as a private Hub dataset
    data.write_text("\n".join(json.dumps(r) for r in demo_records()[:120]) + "\n")
    cfg = _cfg()
    cfg.data.source = str(data)
    t0 = time.time()
    run_id = submit(cfg, flavor="cpu-basic", timeout="30m", token=TOKEN)
    assert time.time() - t0 < 10  # at once: the follower does the slow part
    seen = _wait(run_id, lambda s: s.get("job_stage") in ("SCHEDULING", "RUNNING", "COMPLETED") or _final(s))
    st = _wait(run_id, _final)
    d = run_dir(run_id)
    assert st["state"] == "completed", (st.get("error"), (d / "train.log").read_text()[-3000:])
    assert seen.get("job_id")

    # The job ran the CLI with the run config, the token only as a secret.
    spec = jobs.specs[-1]
    assert spec["spaceId"] == "alice/fine-tune-studio" and spec["flavor"] == "cpu-basic"
    assert spec["command"][:4] == ["python", "-m", "finetune", "train"] and spec["timeoutSeconds"] == 1800
    assert spec["secrets"] == {"HF_TOKEN": TOKEN}
    assert TOKEN not in json.dumps(spec["environment"]) and TOKEN not in json.dumps(spec["command"])
    job_home = jobs.jobs[st["job_id"]]["home"]
    assert not str(job_home).startswith(os.environ["FINETUNE_HOME"])

    # Data went up as a private dataset, results as a private model repo.
    data_repo = fake_hub.repo(st["data_repo"], "dataset")
    assert data_repo.private and "mine.jsonl" in data_repo.head.files
    out = fake_hub.repo(st["hub_repo"])
    assert out.private and {"status.json", "events.jsonl", "adapter/adapter_config.json"} <= set(out.head.files)
    assert len(out.commits) > 2  # pushed as it went, not once at the end

    # Mirrored into the local run folder like a local run.
    summ = status_summary(run_id)
    assert summ["job_stage"] == "COMPLETED" and summ["job_url"].endswith(st["job_id"]) and summ["step"] == 4
    events, _ = read_events(run_id)
    assert [e["step"] for e in events if e.get("loss") is not None] == [1, 2, 3, 4]
    assert summ["artifact"] == str(d / "adapter")
    model = PeftModel.from_pretrained(load_model("builtin:tiny-chat"), str(d / "adapter"))
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())
    assert (d / "README.md").exists()
    _no_token_in(d)

    # The CLI shows the job fields.
    r = subprocess.run([sys.executable, "-m", "finetune", "status", run_id, "--json"], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    got = json.loads(r.stdout)
    assert {"job_id", "job_stage", "job_url"} <= set(got) and got["state"] == "completed"


def test_stop_cancels_the_job(jobs, tiny_model_dir):
    from finetune.jobs import submit
    from finetune.runs import run_dir, stop_run

    run_id = submit(_cfg(max_steps=5000, save_steps=5000), flavor="cpu-basic", token=TOKEN)
    st = _wait(run_id, lambda s: (s.get("step") or 0) >= 1 or _final(s))
    assert st["state"] == "running" and st["job_stage"] == "RUNNING", st
    stop_run(run_id)
    st = _wait(run_id, _final)
    assert st["state"] == "stopped" and st["job_stage"] == "CANCELED", st
    job = jobs.jobs[st["job_id"]]
    assert job["stage"] == "CANCELED" and job["proc"].poll() is not None
    # Cancel reached the job as SIGTERM: it stopped cleanly and pushed its adapter, which came back.
    assert "adapter last pushed came back" in st["error"]
    assert (run_dir(run_id) / "adapter" / "adapter_model.safetensors").exists()


def test_errors_say_what_happened(jobs, home, tiny_model_dir):
    from finetune.jobs import JobsError, submit

    from finetune.paths import runs_dir

    runs_before = set(os.listdir(runs_dir()))
    with pytest.raises(JobsError, match="unknown flavor 'h1000'.*cpu-basic"):
        submit(_cfg(), flavor="h1000", token=TOKEN)
    with pytest.raises(JobsError, match="need your token"):
        submit(_cfg(), flavor="cpu-basic", token=None)
    assert set(os.listdir(runs_dir())) == runs_before  # refused before any run folder

    jobs.credits = False
    run_id = submit(_cfg(), flavor="cpu-basic", token=TOKEN)
    st = _wait(run_id, _final)
    assert st["state"] == "failed" and st["error"].startswith("No credits") and "402" in st["error"]
    jobs.credits = True

    bad = _cfg()
    bad.model.model_id = "alice/no-such-model"  # fails inside the job
    run_id = submit(bad, flavor="cpu-basic", token=TOKEN)
    st = _wait(run_id, _final)
    assert st["state"] == "failed" and st["job_stage"] == "ERROR", st
    assert "The Hugging Face job failed" in st["error"] and "Last log lines:" in st["error"]
    assert "no-such-model" in st["error"]

    jobs.timeout_scale = 0.05  # a 2-minute limit passes in 6 s
    run_id = submit(_cfg(max_steps=5000, save_steps=5000), flavor="cpu-basic", timeout="2m", token=TOKEN)
    st = _wait(run_id, _final)
    assert st["state"] == "failed" and "timeout" in st["error"] and "--timeout" in st["error"], st


def test_cli_backend_hf_jobs_prints_the_run_id_at_once(jobs, fake_hub, tmp_path, tiny_model_dir):
    from finetune.runs import read_status, stop_run

    env = dict(os.environ, HF_TOKEN=TOKEN)
    r = subprocess.run([sys.executable, "-m", "finetune", "train", "--backend", "hf-jobs", "--flavor", "cpu-basic",
                        "--timeout", "1h", "--max-steps", "5000", "--json"], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) == {"run_id"}
    st = _wait(out["run_id"], lambda s: s.get("job_id") or _final(s))
    assert st.get("job_id") and st["timeout_s"] == 3600
    r = subprocess.run([sys.executable, "-m", "finetune", "stop", out["run_id"], "--json"], capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    st = _wait(out["run_id"], _final)
    assert st["state"] == "stopped" and st["job_stage"] == "CANCELED"
    r = subprocess.run([sys.executable, "-m", "finetune", "train", "--backend", "hf-jobs", "--flavor", "x9",
                        "--json"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "unknown flavor 'x9'" in json.loads(r.stdout)["error"]


def test_local_app_with_only_a_token_installs_its_own_wheel_on_the_stock_image(jobs, fake_hub, monkeypatch,
                                                                                tiny_model_dir):
    """No Space, no FINETUNE_JOBS_IMAGE: the job runs on the stock PyTorch image and installs the wheel
    the app built from its running code (uploaded beside the data with the pins); the job's code comes
    from that wheel, not from the checkout, and its adapter comes back."""
    from peft import PeftModel

    from finetune.job_image import stock_image, pinned_requirements
    from finetune.modeling import load_model
    from finetune.runs import run_dir

    monkeypatch.delenv("FINETUNE_JOBS_IMAGE")
    monkeypatch.delenv("SPACE_ID", raising=False)
    env = dict(os.environ, HF_TOKEN=TOKEN)
    r = subprocess.run([sys.executable, "-m", "finetune", "train", "--backend", "hf-jobs", "--flavor", "cpu-basic",
                        "--timeout", "30m", "--max-steps", "4", "--save-steps", "2", "--eval-steps", "0",
                        "--logging-steps", "1", "--json"], capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    run_id = json.loads(r.stdout)["run_id"]
    st = _wait(run_id, _final)
    d = run_dir(run_id)
    assert st["state"] == "completed", (st.get("error"), (d / "train.log").read_text()[-3000:])
    image = stock_image(pinned_requirements(gpu=False))
    assert st["job_image"] == image == "pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime"
    assert "stock PyTorch image" in st["job_image_why"] and "wheel built here" in st["job_image_why"]

    spec = jobs.specs[-1]
    assert spec["dockerImage"] == image and "spaceId" not in spec and spec["command"][:2] == ["bash", "-c"]
    script = spec["command"][2]
    assert "exec python -m finetune train --in-job" in script and st["job_wheel"] in script
    assert spec["secrets"] == {"HF_TOKEN": TOKEN}
    assert TOKEN not in json.dumps(spec["environment"]) and TOKEN not in json.dumps(spec["command"])

    # The wheel and the pins went up beside the data, in the private data repo.
    data = fake_hub.repo(st["data_repo"], "dataset")
    assert data.private and {f"fts/{st['job_wheel']}", "fts/requirements.txt"} <= set(data.head.files)
    assert st["job_wheel"].startswith("fine_tune_studio-0.1.0+") and st["job_wheel"].endswith("-py3-none-any.whl")

    # Inside the job: the pins were met, the wheel was installed into the job's own site folder, and
    # the training ran from there.
    job = jobs.jobs[st["job_id"]]
    site = job["home"] / "image" / "site"
    pip_calls = [json.loads(ln) for ln in (site.parent / "pip.log").read_text().splitlines()]
    assert [c["wheels"] for c in pip_calls] == [[], [st["job_wheel"]]] and not any(c["unmet"] for c in pip_calls)
    assert "torch==2.13.0" in pip_calls[1]["requirements"]
    assert (site / "finetune" / "jobs.py").read_bytes() == (ROOT / "finetune" / "jobs.py").read_bytes()
    log = job["log"].read_text()
    assert f"Fine-Tune Studio 0.1.0 from {site / 'finetune'}: run " in log, log[-3000:]

    model = PeftModel.from_pretrained(load_model("builtin:tiny-chat"), str(d / "adapter"))
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())
    _no_token_in(d)
    assert TOKEN not in log


def test_image_choice_and_the_wheel(monkeypatch, tmp_path):
    """Which image, and why: --image, then FINETUNE_JOBS_IMAGE, then the Space's own, then the stock
    image (whose tag follows the torch pin); the wheel is the running code, the same bytes each time."""
    import zipfile

    from finetune.job_image import build_wheel, choose_image, install_files

    monkeypatch.setenv("FINETUNE_JOBS_IMAGE", "me/img:1")
    monkeypatch.setenv("SPACE_ID", "alice/fts")
    assert choose_image("you/img:2")[0::2] == ("you/img:2", False)
    assert choose_image()[0::2] == ("me/img:1", False) and "FINETUNE_JOBS_IMAGE" in choose_image()[1]
    monkeypatch.delenv("FINETUNE_JOBS_IMAGE")
    assert choose_image() == ("hf.co/spaces/alice/fts", "this Space's own image: the same code as the app", False)
    monkeypatch.delenv("SPACE_ID")
    image, why, install = choose_image()
    torch_pin = next(ln for ln in (ROOT / "requirements-cpu.txt").read_text().splitlines() if ln.startswith("torch=="))
    assert install and image == f"pytorch/pytorch:{torch_pin[7:]}-cuda13.0-cudnn9-runtime" and "torch 2.13.0" in why

    a, b = build_wheel(tmp_path / "a"), build_wheel(tmp_path / "b")
    assert a.name == b.name and a.read_bytes() == b.read_bytes()
    names = zipfile.ZipFile(a).namelist()
    assert "finetune/jobs.py" in names and not any("__pycache__" in n for n in names)
    gpu = install_files(tmp_path / "gpu", gpu=True)["fts/requirements.txt"].read_text().split()
    cpu = install_files(tmp_path / "cpu", gpu=False)["fts/requirements.txt"].read_text().split()
    assert "unsloth==2026.10.9" in gpu and not any(p.startswith("unsloth") for p in cpu)
    assert "torch==2.13.0" in cpu and "trackio==0.43.0" in cpu


def test_timeout_parsing():
    from finetune.jobs import JobsError, parse_timeout

    assert parse_timeout("2h") == 7200 and parse_timeout("90m") == 5400 and parse_timeout(3600) == 3600
    for bad in ("soon", "10s", "9d"):
        with pytest.raises(JobsError, match="--timeout"):
            parse_timeout(bad)


def test_train_tab_flavor_picker_and_jobs_api(jobs, fake_hub, tiny_model_dir):
    from gradio_client import Client

    from conftest import serve_app
    from ui import jobs_panel

    # The picker: every Jobs flavor, with the planner's time and cost for this config.
    dd = jobs_panel.flavors_api("builtin:tiny-chat", "builtin:demo", "lora", 2e-3, 1, 8, 256, 16, TOKEN)
    labels = {value: label for label, value in dd.choices}
    assert set(labels) == {"cpu-basic", "cpu-upgrade", "t4-small", "a10g-largex2"}
    assert labels["t4-small"].startswith("t4-small: 1x T4 16 GB, $0.40/h, ~") and "$" in labels["t4-small"][30:]
    assert "2x A10G" in labels["a10g-largex2"] and dd.value in ("t4-small", "a10g-largex2")

    demo, url = serve_app()
    try:
        client = Client(url, verbose=False)
        run_id = client.predict("builtin:tiny-chat", "builtin:demo", "lora", 2e-3, 1, 8, 256, 16, "cpu-basic", "1h",
                                TOKEN, api_name="/train_jobs")
        st = _wait(run_id, lambda s: s.get("job_id") or _final(s))
        assert st.get("job_id") and jobs.specs[-1]["secrets"] == {"HF_TOKEN": TOKEN}
        client.predict(run_id, api_name="/stop")
        st = _wait(run_id, _final)
        assert st["state"] == "stopped" and st["job_stage"] == "CANCELED"
        shown = client.predict(run_id, api_name="/status")
        assert shown["job_id"] == st["job_id"] and shown["job_url"].endswith(st["job_id"])
    finally:
        demo.close()


@pytest.mark.skipif(not __import__("shutil").which("chromium"), reason="Debian's chromium is not installed")
def test_jobs_panel_in_the_browser(jobs, fake_hub, tiny_model_dir):
    """The panel next to Start training: ↻ lists the flavors with time and cost, the button starts a job,
    and the Train view shows the job like a run."""
    import re

    from playwright.sync_api import expect

    from conftest import chromium_page, serve_app
    from finetune.runs import list_runs, stop_run

    demo, url = serve_app()
    try:
        with chromium_page(url) as page:
            page.get_by_role("tab", name="Train").click()
            page.get_by_text("Run on Hugging Face Jobs").first.click()
            page.get_by_role("button", name="↻", exact=True).click()
            flavor = page.get_by_label("Flavor")
            expect(flavor).to_have_value(re.compile(r"^(t4-small|a10g-largex2): .*\$\d"), timeout=60_000)
            flavor.click()
            expect(page.get_by_role("option", name=re.compile(r"^cpu-basic: 2 vCPU, \$0\.01.h, ~"))).to_be_visible()
            page.get_by_role("option", name=re.compile(r"^cpu-basic")).click()
            page.get_by_label("HF token (optional)").fill(TOKEN)
            page.get_by_role("button", name="Run on Hugging Face Jobs", exact=True).click()
            expect(page.get_by_text(re.compile(r"Hugging Face job \w+ on cpu-basic"))).to_be_visible(timeout=90_000)
            run_id = next(r["run_id"] for r in list_runs())
            stop_run(run_id)
            _wait(run_id, _final)
    finally:
        demo.close()


from test_public import _client, _error, public_app  # noqa: E402,F401  -- the public Space fixture


def test_public_space_jobs_need_a_login_and_use_the_callers_own_token(public_app, jobs):
    from finetune.runs import load_config

    args = ("builtin:tiny-chat", "builtin:demo", "lora", 2e-3, 1, 8, 256, 16, "cpu-basic", "1h", "")
    assert "Log in" in _error(_client(public_app).predict, *args, api_name="/train_jobs")
    assert "allowlist" in _error(_client(public_app, "hf_carol_write").predict, *args, api_name="/train_jobs")
    bob = _client(public_app, "hf_bob_write")
    run_id = bob.predict(*args, api_name="/train_jobs")
    st = _wait(run_id, lambda s: s.get("job_id") or _final(s))
    # bob's job runs on bob's account with bob's token, never the Space owner's HF_TOKEN secret
    assert st.get("job_id") and jobs.jobs[st["job_id"]]["owner"] == "bob"
    assert jobs.specs[-1]["secrets"] == {"HF_TOKEN": "hf_bob_write"}
    assert load_config(run_id).owner == "bob"
    assert "no run" in _error(_client(public_app, "hf_alice_write").predict, run_id, api_name="/stop")
    bob.predict(run_id, api_name="/stop")
    assert _wait(run_id, _final)["state"] == "stopped"
