"""What a Hugging Face Job runs on, and how this project gets into it (used by finetune/jobs.py).

Three cases, said in the run's status as `job_image` and `job_image_why`:
- an image named by the user (`--image`, FINETUNE_JOBS_IMAGE): it has Fine-Tune Studio installed, the
  job runs `python -m finetune train --in-job ...` as it is;
- on a Space: the Space's own image (`hf.co/spaces/$SPACE_ID`), the same code as the app;
- a local app with only a token: the stock `pytorch/pytorch` image for the pinned torch. The app
  builds a wheel of the code it is running (`build_wheel`, the finetune package as imported, so
  uncommitted edits travel too) and uploads it with the pinned requirements beside the data, under
  `fts/` in the run's private data repo; the job downloads both with the `hf` CLI, pip-installs them
  (the image's torch already meets the torch pin) and then runs the same command.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shlex
import zipfile
from pathlib import Path

# torch 2.13.0's Linux wheel on PyPI depends on cuda-toolkit 13.0.3 and nvidia-cudnn-cu13 9.x: the
# stock image with the same torch, CUDA and cuDNN (pytorch/pytorch tags: TORCH-cudaX.Y-cudnnN-runtime).
STOCK_CUDA = "13.0"
STOCK_CUDNN = "9"
INSTALL_DIR = "fts"  # in the data repo: the wheel and requirements.txt
DIST_NAME = "fine_tune_studio"
PKG_DIR = Path(__file__).resolve().parent
ROOT = PKG_DIR.parent


class ImageError(ValueError):
    """The job cannot be given this project (no pinned requirements found)."""


def pinned_requirements(gpu: bool) -> list[str]:
    """The pins the app runs with: requirements.txt (the Space's set, with unsloth) for a GPU flavor,
    requirements-cpu.txt (the common set) for a CPU one; from the installed package's metadata when
    the app runs from a pip install rather than from the repository."""
    path = ROOT / ("requirements.txt" if gpu else "requirements-cpu.txt")
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
    else:
        from importlib.metadata import PackageNotFoundError, requires

        try:
            lines = requires("fine-tune-studio") or []
        except PackageNotFoundError:
            lines = []
    pins = [ln.split("#", 1)[0].strip() for ln in lines]
    pins = [p for p in pins if p and not p.startswith("-")]
    if not pins:
        raise ImageError(f"No pinned requirements found ({path.name} is missing and Fine-Tune Studio is not "
                         "installed as a package): set FINETUNE_JOBS_IMAGE to an image that has it installed")
    return pins


def pin_of(pins: list[str], name: str) -> str:
    """The exact version pinned for a package ('torch' -> '2.13.0')."""
    for p in pins:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*==\s*([^\s;]+)", p)
        if m and m.group(1).lower().replace("_", "-") == name:
            return m.group(2)
    raise ImageError(f"the requirements pin no exact version of {name}")


def stock_image(pins: list[str]) -> str:
    return f"pytorch/pytorch:{pin_of(pins, 'torch')}-cuda{STOCK_CUDA}-cudnn{STOCK_CUDNN}-runtime"


def choose_image(image: str | None = None) -> tuple[str, str, bool]:
    """(image, why, install): install says whether the job must install this project first."""
    if image:
        return image.strip(), "--image: an image with Fine-Tune Studio installed", False
    if os.environ.get("FINETUNE_JOBS_IMAGE"):
        return (os.environ["FINETUNE_JOBS_IMAGE"].strip(),
                "FINETUNE_JOBS_IMAGE is set: an image with Fine-Tune Studio installed", False)
    if os.environ.get("SPACE_ID"):
        return f"hf.co/spaces/{os.environ['SPACE_ID']}", "this Space's own image: the same code as the app", False
    pins = pinned_requirements(gpu=False)
    return (stock_image(pins), f"no Space and no FINETUNE_JOBS_IMAGE: the stock PyTorch image for the pinned torch "
            f"{pin_of(pins, 'torch')} (CUDA {STOCK_CUDA}); the job installs this Fine-Tune Studio (a wheel built "
            "here from the running code) and the pinned requirements, uploaded beside the data", True)


def _package_files() -> list[Path]:
    return sorted(p for p in PKG_DIR.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo"))


def build_wheel(dest: Path) -> Path:
    """A wheel (PEP 427) of the finetune package as this process runs it, version `X.Y.Z+<content hash>`.
    Written directly (a wheel is a zip with a dist-info folder): no setuptools or build step is needed
    on the user's machine, and the same code always gives the same file."""
    from . import __version__

    files = [(p.relative_to(ROOT).as_posix(), p.read_bytes()) for p in _package_files()]
    digest = hashlib.sha256(b"".join(n.encode() + b"\0" + hashlib.sha256(b).digest() for n, b in files))
    version = f"{__version__}+{digest.hexdigest()[:10]}"
    info = f"{DIST_NAME}-{version}.dist-info"
    files += [
        (f"{info}/METADATA", f"Metadata-Version: 2.1\nName: fine-tune-studio\nVersion: {version}\n"
                             "Summary: Fine-Tune Studio engine and CLI, built for a Hugging Face Job\n".encode()),
        (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: finetune.job_image\nRoot-Is-Purelib: true\n"
                          b"Tag: py3-none-any\n"),
        (f"{info}/entry_points.txt", b"[console_scripts]\nfinetune = finetune.cli:main\n"),
        (f"{info}/top_level.txt", b"finetune\n"),
    ]
    record = [f"{n},sha256={base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b'=').decode()},{len(b)}"
              for n, b in files]
    files.append((f"{info}/RECORD", ("\n".join(record + [f"{info}/RECORD,,"]) + "\n").encode()))
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f"{DIST_NAME}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files:
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
    return out


def install_files(dest: Path, gpu: bool) -> dict[str, Path]:
    """What the app uploads beside the data: {path in the data repo: local file}."""
    wheel = build_wheel(dest)
    req = dest / "requirements.txt"
    req.write_text("\n".join(pinned_requirements(gpu)) + "\n", encoding="utf-8")
    return {f"{INSTALL_DIR}/{wheel.name}": wheel, f"{INSTALL_DIR}/requirements.txt": req}


def install_command(train_cmd: list[str], data_repo: str, wheel_name: str, hub_pin: str) -> list[str]:
    """The stock image's command: get the hf CLI, fetch the wheel and the pins from the private data repo
    (the token is the job's HF_TOKEN secret), install them, then run the same training command."""
    local = "fts-install"
    files = [f"{INSTALL_DIR}/requirements.txt", f"{INSTALL_DIR}/{wheel_name}"]
    script = "\n".join([
        "set -e",
        f"pip install --no-cache-dir --quiet {shlex.quote('huggingface-hub==' + hub_pin)}",
        f"hf download {shlex.quote(data_repo)} {' '.join(files)} --repo-type dataset --local-dir {local}",
        f"pip install --no-cache-dir --quiet -r {local}/{files[0]} {local}/{files[1]}",
        "exec " + shlex.join(train_cmd),
    ])
    return ["bash", "-c", script]
