"""Take a run's result away: its adapter (or full model) folder as one zip file.

`artifact_zip(run_id, out_dir)` writes `<run_id>-adapter.zip` (or `-model.zip`) atomically and reuses
it while the folder is unchanged. The UI passes a folder its web server may serve (the system temp
folder), which matters on a Space where runs live under /data.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from .runs import RunError, artifact_dir


def artifact_zip(run_id: str, out_dir: str | os.PathLike) -> Path:
    art = artifact_dir(run_id)
    if art is None:
        raise RunError(f"run {run_id} has no adapter or model yet: it is written when the run completes or stops")
    files = sorted(p for p in art.rglob("*") if p.is_file())
    stamp = max((p.stat().st_mtime_ns for p in files), default=0)
    out = Path(out_dir) / run_id
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{run_id}-{art.name}.zip"
    if target.exists() and target.stat().st_mtime_ns >= stamp:
        return target
    tmp = target.with_suffix(".zip.tmp")
    # adapters are already compact float tensors: storing beats deflating them (much faster, ~same size)
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
        for p in files:
            z.write(p, f"{run_id}/{art.name}/{p.relative_to(art).as_posix()}")
    os.replace(tmp, target)
    return target
