"""Where Fine-Tune Studio keeps its files: the home folder and atomic file writes.

FINETUNE_HOME (default ./finetune_home, or /data/finetune_home when a Space has persistent storage
at /data) holds runs/, datasets/ and models/ (the built-in models).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any


def home() -> Path:
    env = os.environ.get("FINETUNE_HOME")
    if env:
        p = Path(env)
    elif Path("/data").is_dir() and os.access("/data", os.W_OK) and os.environ.get("SPACE_ID"):
        p = Path("/data/finetune_home")
    else:
        p = Path("finetune_home")
    p = p.expanduser().resolve()
    p.mkdir(parents=True, exist_ok=True)
    return p


def _sub(name: str) -> Path:
    d = home() / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def runs_dir() -> Path:
    return _sub("runs")


def datasets_dir() -> Path:
    return _sub("datasets")


def models_dir() -> Path:
    """Built-in models; FINETUNE_MODELS_DIR shares one cache between home folders (tests, CI)."""
    env = os.environ.get("FINETUNE_MODELS_DIR")
    if env:
        d = Path(env).expanduser().resolve()
        d.mkdir(parents=True, exist_ok=True)
        return d
    return _sub("models")


# The one rule for names that become folder names (runs, saved datasets, plan folders): a letter or
# digit first, then letters, digits, '.', '_' or '-'; never '..'. Such a name cannot leave its folder.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def is_safe_name(name: Any, max_len: int = 128) -> bool:
    """True when `name` is a bare name that is safe as a folder name under the home folder."""
    return (isinstance(name, str) and len(name) <= max_len and _NAME_RE.fullmatch(name) is not None
            and ".." not in name)


def slug(text: str, max_len: int = 80, default: str = "item") -> str:
    """A safe name made from any text (runs of other characters become '-'); see is_safe_name."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-._")[:max_len].strip("-._")
    s = re.sub(r"\.{2,}", ".", s)
    return s or default


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a file so that a reader sees either the old or the whole new content, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, create: bool = False):
    """An exclusive flock on `path` (a file or a folder) for the `with` block; `create` makes a missing
    lock file. Held through one descriptor: two descriptors on one path block each other even in one process."""
    import fcntl

    fd = os.open(path, (os.O_RDWR | os.O_CREAT) if create else os.O_RDONLY, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return default
