"""The spare training child: `finetune train` starts it before its checks, so the child's imports
overlap them, then hands it the run through its stdin (finetune.runs.warm_spare)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "finetune", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_cli_run_is_trained_by_the_spare_child(home, tiny_model_dir):
    out = _cli("train", "--model", "builtin:tiny-chat", "--data", "builtin:demo", "--max-steps", "2", "--wait",
               "--json", "--name", "spare")
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout)
    assert res["state"] == "completed"
    st = json.loads((Path(res["run_dir"]) / "status.json").read_text())
    # The spare imported before it had a run, then waited for it; nothing was imported after.
    assert {"imports", "waiting_for_run", "train"} <= set(st["phases_s"])
    log = (Path(res["run_dir"]) / "train.log").read_text()
    assert "train_runtime" in log  # the child's output went to the run's log


def test_spare_without_a_run_exits_and_leaves_nothing(home, tmp_path):
    from finetune import runs

    before = set(os.listdir(home / "runs")) if (home / "runs").exists() else set()
    runs.SPARES.clear()
    runs.warm_spare()
    proc = runs.SPARES.pop()
    wait_log = Path(proc.args[-1])
    assert wait_log.exists()
    proc.stdin.close()  # the parent gave up (a failed check, or it exited)
    assert proc.wait(timeout=300) == 0
    assert not wait_log.exists()
    assert (set(os.listdir(home / "runs")) if (home / "runs").exists() else set()) == before


def test_a_failed_check_leaves_no_run_and_the_spare_ends(home, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n{"oops"\n')
    before = set(os.listdir(home / "runs")) if (home / "runs").exists() else set()
    t0 = time.time()
    out = _cli("train", "--model", "builtin:tiny-chat", "--data", str(bad), "--json")
    assert out.returncode == 2 and "bad.jsonl" in json.loads(out.stdout)["error"]
    assert (set(os.listdir(home / "runs")) if (home / "runs").exists() else set()) == before
    # The spare it started reads end-of-input once the CLI is gone, and exits.
    deadline = time.time() + 120
    while time.time() < deadline:
        ps = subprocess.run(["pgrep", "-f", "finetune train --spare"], capture_output=True, text=True).stdout.split()
        alive = [p for p in ps if Path(f"/proc/{p}").exists() and os.stat(f"/proc/{p}").st_ctime >= t0 - 1]
        if not alive:
            break
        time.sleep(1)
    assert not alive
