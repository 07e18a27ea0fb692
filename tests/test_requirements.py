"""Pins: requirements.txt (the Space: common set + unsloth) agrees with requirements-cpu.txt, the
pinned set satisfies unsloth 2026.10.9's own limits, and the Space settings agree with the README."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _pins(name):
    out = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            pkg, ver = re.split(r"==", line)
            out[pkg.strip().lower()] = ver.strip()
    return out


def test_space_requirements_are_the_cpu_set_plus_unsloth():
    cpu, space = _pins("requirements-cpu.txt"), _pins("requirements.txt")
    assert {k: v for k, v in space.items() if k != "unsloth"} == cpu
    assert space["unsloth"] == "2026.10.9"


def test_pins_satisfy_unsloth_limits():
    from packaging.version import Version

    cpu = _pins("requirements-cpu.txt")
    assert Version(cpu["transformers"]) <= Version("5.17.0")
    assert Version(cpu["trl"]) <= Version("1.15.0") and cpu["trl"] != "1.15.0"  # 1.15.0 needs Triton
    assert Version(cpu["datasets"]) < Version("5")
    assert Version(cpu["torch"]) < Version("2.15")
    assert Version(cpu["gradio"]) >= Version("6.16")


def test_installed_versions_match_the_pins():
    from importlib.metadata import version

    for pkg, ver in _pins("requirements-cpu.txt").items():
        installed = version(pkg).split("+")[0]
        assert installed == ver, f"{pkg}: installed {installed}, pinned {ver}"


def test_space_settings_agree_with_readme():
    space = yaml.safe_load((ROOT / "space.yaml").read_text())
    front = (ROOT / "README.md").read_text().split("---")[1]
    readme = yaml.safe_load(front)
    for key in ("sdk", "sdk_version", "app_file", "hf_oauth", "python_version"):
        assert str(readme[key]) == str(space[key]), key
    assert str(space["sdk_version"]) == _pins("requirements-cpu.txt")["gradio"]
