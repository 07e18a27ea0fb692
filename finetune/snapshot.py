"""The validation snapshot a run keeps (runs/<id>/data/): the validation rows copied at creation with
their sha256, so that replacing a saved dataset later does not change the evaluation. Called by
runs.create_run, read by evaluate.validation_rows; below both, so neither imports the other for it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .paths import atomic_write_json, atomic_write_text

SNAPSHOT_DIR = "data"



def rows_sha256(rows: list[dict]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps(r, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n")
    return h.hexdigest()


def snapshot_validation(cfg, folder: Path) -> dict | None:
    """Copy the run's validation rows into folder/data/ with their hash. Best effort: a source that
    cannot be read now fails the training child with a clear message anyway."""
    from .data import load_prepared

    try:
        _, val, kind = load_prepared(cfg.data.source, val_ratio=cfg.data.val_ratio, seed=cfg.data.seed)
    except Exception:  # noqa: BLE001
        return None
    d = Path(folder) / SNAPSHOT_DIR
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(d / "validation.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in val))
    meta = {"source": cfg.data.source, "kind": kind, "rows": len(val), "sha256": rows_sha256(val),
            "val_ratio": cfg.data.val_ratio, "seed": cfg.data.seed}
    atomic_write_json(d / "meta.json", meta)
    return meta
