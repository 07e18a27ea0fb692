"""Dataset source checks, done in the engine so that the UI, the API, the CLI and the child agree.

    check_source("hub:org/name:config:split")   -> the source, or SourceError
    resolve_local(source)                       -> Path of a file or saved dataset it may read

Rules:
  - `hub:` takes only a valid Hub dataset id, `org/name[:config[:split]]`. `hub:/tmp/x` and
    `hub:../x` are refused: `datasets.load_dataset` would read a server folder for them.
  - A bare name (no slash) means a saved dataset under the home folder's datasets/, never a file in
    the working directory.
  - In public mode (caller.public_mode) a typed server path is refused. Only saved datasets and
    files Gradio received as uploads (its upload folder) may be read.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

_HUB_ID = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,40}[A-Za-z0-9])?/[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}(?:\[[0-9:%]{1,20}\])?$")  # config or split (split may slice)
_BARE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class SourceError(ValueError):
    """A dataset source that may not be read, with the rule it broke."""


def check_hub_source(source: str) -> tuple[str, str | None, str | None]:
    """(dataset id, config, split) of `hub:org/name[:config[:split]]`, or SourceError."""
    body = source[len("hub:"):]
    parts = body.split(":")
    rid = parts[0]
    if not _HUB_ID.match(rid) or ".." in rid or "--" in rid:
        raise SourceError(f"{source}: not a Hub dataset id; write hub:<owner>/<name>[:config][:split] "
                          "(letters, digits, '-', '_', '.'; no paths)")
    if len(parts) > 3:
        raise SourceError(f"{source}: too many ':' parts; write hub:<owner>/<name>[:config][:split]")
    for p in parts[1:]:
        if p and not _PART.match(p):
            raise SourceError(f"{source}: config/split {p!r} may hold only letters, digits, '.', '_', '-', '+'")
    config = parts[1] or None if len(parts) > 1 else None
    split = parts[2] or None if len(parts) > 2 else None
    return rid, config, split


def upload_roots() -> list[Path]:
    """Where Gradio keeps uploaded files (GRADIO_TEMP_DIR, else <tmp>/gradio)."""
    roots = [os.environ.get("GRADIO_TEMP_DIR") or str(Path(tempfile.gettempdir()) / "gradio")]
    roots += [r for r in os.environ.get("FINETUNE_UPLOAD_ROOTS", "").split(os.pathsep) if r]
    return [Path(r).resolve() for r in roots]


def _under(path: Path, roots: list[Path]) -> bool:
    try:
        rp = path.resolve()
    except (OSError, RuntimeError):
        return False
    return any(rp == r or rp.is_relative_to(r) for r in roots)


def check_source(source: str, *, public: bool | None = None) -> str:
    """Raise SourceError if this source may not be read here; return it stripped otherwise."""
    from .caller import public_mode
    from .paths import datasets_dir

    src = (source or "").strip()
    if not src or src.startswith("builtin:"):
        return src
    if src.startswith("hub:"):
        check_hub_source(src)
        return src
    if public is None:
        public = public_mode()
    if _BARE.match(src) and ".." not in src:
        return src  # a saved dataset's name: resolve_local looks only under datasets/
    if public and not _under(Path(src).expanduser(), [datasets_dir().resolve()] + upload_roots()):
        raise SourceError(f"{Path(src).name or src}: on a public Space, upload the file or pick a saved dataset; "
                          "typed server paths are not read")
    return src


def resolve_local(source: str) -> Path | None:
    """The path a non-hub, non-builtin source names: a bare name only under datasets/; else None."""
    from .paths import datasets_dir

    src = check_source(source)
    if _BARE.match(src) and ".." not in src and "/" not in src:
        cand = datasets_dir() / src
        return cand if cand.exists() else None
    return Path(src).expanduser()


_START = r"(?<![\w.:/-])"  # a path starts here, not inside a URL or a longer path


def hide_server_paths_in(obj):
    """A JSON-like result (dicts, lists, strings) with hide_server_paths applied to every string in it."""
    if isinstance(obj, str):
        return hide_server_paths(obj)
    if isinstance(obj, dict):
        return {k: hide_server_paths_in(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [hide_server_paths_in(v) for v in obj]
    return obj


def hide_server_paths(text: str) -> str:
    """`text` without the server's own folders, for anything a visitor reads (results, errors, MCP
    tool output): an upload by its file name, a file of the home folder by its place in it
    (runs/<id>/...), built-in models as models/..., any other temporary file by its name."""
    from .paths import home, models_dir

    for root in upload_roots():  # <root>/<hash>/<the uploaded file's name>
        text = re.sub(_START + re.escape(str(root)) + r"/[^/\s'\"]+/", "", text)
    for root, label in ((models_dir(), "models/"), (home(), "")):
        text = re.sub(_START + re.escape(str(root)) + r"(?:/|\b)", label, text)
    tmp = re.escape(str(Path(tempfile.gettempdir()).resolve()))
    return re.sub(_START + tmp + r"/(?:[^\s'\"]*/)?([^\s'\"/]+)", r"\1", text)
