"""The project installs as a package whose `finetune` command is `python -m finetune`, from any folder.

Builds and installs a copy of the project with pip (offline: no build isolation, no dependencies,
which are installed already), then runs the installed command from an unrelated folder.
Run: `python -m pytest tests/test_packaging.py -q`.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_pip_install_gives_the_finetune_command(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "requirements-cpu.txt"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "finetune", src / "finetune", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                    "--quiet", "--target", str(target), str(src)], check=True, capture_output=True, text=True,
                   timeout=300)
    exe = target / "bin" / "finetune"
    assert exe.is_file()
    assert (target / "finetune" / "assets" / "models.json").is_file()  # package data comes along
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(target))  # what a site-packages install provides
    installed = subprocess.run([str(exe), "plan", "--model", "meta-llama/Llama-3.1-8B-Instruct", "--hardware",
                                "t4-small", "--json"], cwd=elsewhere, env=env, capture_output=True, text=True,
                               timeout=300)
    assert installed.returncode == 0, installed.stderr
    module = subprocess.run([sys.executable, "-m", "finetune", "plan", "--model", "meta-llama/Llama-3.1-8B-Instruct",
                             "--hardware", "t4-small", "--json"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    a, b = json.loads(installed.stdout), json.loads(module.stdout)
    assert a["method"] == b["method"] and a["vram_gb"] == b["vram_gb"] and a["report_md"] == b["report_md"]
    helps = [subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120).stdout
             for cmd, cwd in (([str(exe), "--help"], elsewhere), ([sys.executable, "-m", "finetune", "--help"], ROOT))]
    assert helps[0] == helps[1] and "calibrate" in helps[0]
