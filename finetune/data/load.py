"""Read a dataset source into a list of dicts, with errors that name the file and line.

Files (.jsonl/.ndjson, .json, .csv, .tsv, .parquet, .txt; content is sniffed when the extension is
missing or wrong), "builtin:demo", "hub:<id>[:config][:split]" (hub_source builds one), and
datasets prepared earlier (a folder with meta.json, or its bare name under FINETUNE_HOME/datasets:
never the working folder). Source checks (hub ids, bare names, public-mode paths) live in
finetune/sources.py and run first.

Try it: `python -c "from finetune.data import load_records as l; print(len(l('builtin:demo')))"`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Any

from .common import KINDS, MAX_FILE_BYTES, SUPPORTED_EXTENSIONS, DatasetError, _gc_paused, _type_name

# =============================================================================================
# Loading


def load_records(source: str, *, max_bytes: int | None = None) -> list[dict]:
    """Read a dataset into a list of dicts.

    source: a local file (.jsonl/.ndjson, .json, .csv, .tsv, .parquet, .txt), "builtin:demo",
    "builtin:persona", or
    "hub:<dataset_id>[:config][:split]" (needs the network). Content is sniffed when the extension
    is missing or wrong (a .json file holding JSON lines loads as JSONL).
    """
    limit = MAX_FILE_BYTES if max_bytes is None else int(max_bytes)
    source = str(source).strip() if source is not None else ""
    if not source:
        raise DatasetError("no dataset given: pick a file, 'builtin:demo' or 'hub:<dataset id>'")
    if source.startswith("builtin:"):
        from ..builtin import BUILTIN_DATASETS
        if source not in BUILTIN_DATASETS:
            raise DatasetError(f"unknown built-in dataset {source!r}; the built-in datasets are "
                               + ", ".join(repr(d) for d in BUILTIN_DATASETS))
        return [dict(r) for r in BUILTIN_DATASETS[source]()]
    from ..sources import check_source, resolve_local  # hub ids, bare names, public-mode paths

    check_source(source)
    if source.startswith("hub:"):
        return _load_hub(source)

    path = resolve_local(source)
    name = Path(source).name or source
    if path is None:
        raise DatasetError("no saved dataset by that name under the home folder's datasets/ (a file in the "
                           "working folder needs a path such as ./" + source + ")", file=name)
    if not path.exists():
        raise DatasetError(f"file not found (looked at {path.resolve()})", file=name)
    if path.is_dir() and (path / "meta.json").is_file():
        # A dataset prepared earlier: its rows are already canonical; read both splits.
        train, val, _ = read_prepared(path)
        return _require_rows(train + val, name)
    if path.is_dir():
        raise DatasetError("is a folder, not a file; pick one data file "
                           f"({', '.join(SUPPORTED_EXTENSIONS)})", file=name)
    size = path.stat().st_size
    if size == 0:
        raise DatasetError("file is empty (0 bytes)", file=name)
    if size > limit:
        raise DatasetError(f"file is {_human_bytes(size)}, over the limit of {_human_bytes(limit)}",
                           file=name)
    with open(path, "rb") as f:
        head = f.read(4)
    ext = path.suffix.lower()
    if ext == ".parquet" or head == b"PAR1":
        return _require_rows(_load_parquet(path, name), name)
    if ext in (".xlsx", ".xls", ".zip", ".gz", ".arrow", ".pdf", ".docx"):
        raise DatasetError(f"unsupported file type '{ext}'; supported: "
                           f"{', '.join(SUPPORTED_EXTENSIONS)} (export spreadsheets as CSV)", file=name)
    text = decode_text(path.read_bytes(), name)
    if not text.strip():
        raise DatasetError("file has only whitespace, no rows", file=name)
    stripped = text.lstrip()
    looks_json = stripped[:1] in ("{", "[")
    if ext in (".jsonl", ".ndjson", ".json") or (looks_json and ext not in (".csv", ".tsv", ".txt")):
        if not looks_json:
            raise DatasetError(f"does not look like JSON (starts with {stripped[:20]!r})", file=name,
                               line=_line_of(text, len(text) - len(stripped)))
        rows = _load_json_or_jsonl(text, name, prefer_lines=ext in (".jsonl", ".ndjson"))
    elif ext in (".csv", ".tsv"):
        # Trust the header over the extension: tab-separated files are often saved as .csv.
        header = text.split("\n", 1)[0]
        delimiter = "\t" if ext == ".tsv" else ","
        if delimiter not in header:
            delimiter = "," if delimiter == "\t" and "," in header else \
                ("\t" if "\t" in header else delimiter)
        rows = _load_csv(text, name, delimiter)
    elif ext == ".txt":
        rows = _load_txt(text)
    else:
        what = f"file type '{ext}'" if ext else "a file without an extension"
        raise DatasetError(f"unsupported {what} and the content is not JSON; supported: "
                           f"{', '.join(SUPPORTED_EXTENSIONS)}", file=name)
    return _require_rows(rows, name)


def read_prepared(folder: str | os.PathLike) -> tuple[list[dict], list[dict], str]:
    """(train_rows, validation_rows, kind) of a prepared folder (train.jsonl, validation.jsonl,
    meta.json), checked: a missing file or an unknown kind is a DatasetError naming the file."""
    p = Path(folder)
    meta_path = p / "meta.json"
    if not meta_path.is_file():
        raise DatasetError("folder has no meta.json; prepare the dataset first or pick a data "
                           "file", file=str(p))
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise DatasetError(f"meta.json is not valid JSON ({e})", file=str(meta_path)) from None
    kind = meta.get("kind")
    if kind not in KINDS:
        raise DatasetError(f"unknown kind {kind!r} in meta.json", file=str(meta_path),
                           field="kind")
    out = []
    for fname in ("train.jsonl", "validation.jsonl"):
        fp = p / fname
        if not fp.is_file():
            raise DatasetError("missing from the prepared folder", file=str(fp))
        text = decode_text(fp.read_bytes(), fname)
        out.append(_load_jsonl(text, fname) if text.strip() else [])
    return out[0], out[1], kind


def saved_datasets() -> list[dict]:
    """The prepared datasets under FINETUNE_HOME/datasets, newest first: [{"name", "dir", "kind",
    "format", "rows_train", "rows_validation", "created"}]. Folders without a readable meta.json
    (half-written, or not ours) are left out."""
    from ..paths import datasets_dir
    out = []
    for d in datasets_dir().iterdir():
        if d.name.startswith(".") or not (d / "meta.json").is_file():
            continue
        try:
            meta = json.loads((d / "meta.json").read_text(encoding="utf-8"))
        except ValueError:
            continue
        counts = meta.get("counts", {})
        out.append({"name": d.name, "dir": str(d), "kind": meta.get("kind"),
                    "format": meta.get("format"), "rows_train": counts.get("train"),
                    "rows_validation": counts.get("validation"), "created": meta.get("created", "")})
    out.sort(key=lambda m: (m["created"], m["name"]), reverse=True)
    return out


def hub_source(dataset_id: str, config: str | None = None, split: str | None = None) -> str:
    """"hub:<id>[:config][:split]" from separate fields (the Dataset tab's Hub inputs)."""
    dataset_id = (dataset_id or "").strip()
    if dataset_id.startswith("hub:"):
        dataset_id = dataset_id[4:]
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?", dataset_id):
        raise DatasetError(f"Hub dataset id {dataset_id!r} should look like owner/name",
                           field="dataset_id")
    config, split = (config or "").strip(), (split or "").strip()
    for what, v in (("config", config), ("split", split)):
        if ":" in v:
            raise DatasetError(f"{what} {v!r} must not contain ':'", field=what)
    return f"hub:{dataset_id}:{config}:{split or 'train'}"


def _require_rows(rows: list[dict], name: str) -> list[dict]:
    if not rows:
        raise DatasetError("no rows found", file=name)
    return rows


def _human_bytes(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def decode_text(data: bytes, name: str) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DatasetError("file is UTF-16 encoded; save it as UTF-8", file=name)
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DatasetError(f"binary file (NUL byte at byte offset {nul}); expected a UTF-8 text file",
                           file=name, line=data.count(b"\n", 0, nul) + 1)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DatasetError(f"not valid UTF-8 (byte 0x{data[e.start]:02x} at byte offset {e.start}, "
                           f"column {col}); save the file as UTF-8", file=name, line=line) from None


def _load_json_or_jsonl(text: str, name: str, *, prefer_lines: bool) -> list[dict]:
    first = text.lstrip()[:1]
    if prefer_lines and first == "{":
        return _load_jsonl(text, name)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if first == "{" and e.msg.startswith("Extra data"):
            # A .json file that is really JSON lines: one object per line.
            return _load_jsonl(text, name)
        raise DatasetError(f"invalid JSON ({e.msg}) at column {e.colno}", file=name,
                           line=e.lineno) from None
    return _json_to_rows(obj, name)


def _load_jsonl(text: str, name: str) -> list[dict]:
    rows = []
    loads = json.loads
    with _gc_paused():
        for n, line in enumerate(text.splitlines(), 1):
            try:
                obj = loads(line)
            except json.JSONDecodeError as e:
                if not line.strip():
                    continue
                raise DatasetError(f"invalid JSON ({e.msg} at column {e.colno})", file=name,
                                   line=n) from None
            if not isinstance(obj, dict):
                raise DatasetError(f"expected a JSON object per line, got {_type_name(obj)}",
                                   file=name, line=n)
            rows.append(obj)
    return rows


def _json_to_rows(obj: Any, name: str) -> list[dict]:
    if isinstance(obj, list):
        for i, item in enumerate(obj, 1):
            if not isinstance(item, dict):
                raise DatasetError(f"array item {i} is {_type_name(item)}; expected an array of "
                                   "objects", file=name, row=i)
        return obj
    if isinstance(obj, dict):
        lists = {k: v for k, v in obj.items() if isinstance(v, list)}
        if len(obj) == 1 and lists and all(isinstance(x, dict) for x in next(iter(lists.values()))):
            # {"data": [{...}, ...]}: a wrapper object around the rows.
            return _json_to_rows(next(iter(lists.values())), name)
        if lists and len(lists) == len(obj):
            lengths = {k: len(v) for k, v in lists.items()}
            if len(set(lengths.values())) > 1:
                detail = ", ".join(f"'{k}' has {n}" for k, n in lengths.items())
                raise DatasetError(f"object of columns with unequal lengths ({detail})", file=name)
            keys = list(lists)
            return [dict(zip(keys, vals)) for vals in zip(*lists.values())]
        bad = [k for k, v in obj.items() if not isinstance(v, list)]
        raise DatasetError("a single JSON object; expected an array of objects or an object of "
                           f"equal-length columns (key '{bad[0]}' is {_type_name(obj[bad[0]])})",
                           file=name, field=bad[0])
    raise DatasetError(f"JSON {_type_name(obj)}; expected an array of objects or an object of "
                       "equal-length columns", file=name)


def _load_csv(text: str, name: str, delimiter: str) -> list[dict]:
    # The default limit (128 KB per cell) rejects long documents; the file size limit still holds.
    csv.field_size_limit(2**31 - 1)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as e:
        raise DatasetError(f"could not read the header ({e})", file=name, line=1) from None
    header = [h.strip() for h in header]
    if not any(header):
        raise DatasetError("empty header row", file=name, line=1)
    for i, h in enumerate(header):
        if not h:
            raise DatasetError(f"column {i + 1} of the header has no name", file=name, line=1)
        if header.index(h) != i:
            raise DatasetError(f"duplicate column name '{h}' in the header", file=name, line=1,
                               field=h)
    rows = []
    width = len(header)
    try:
        for values in reader:
            if not values or (len(values) == 1 and not values[0].strip() and width > 1):
                continue
            if len(values) != width:
                raise DatasetError(f"{len(values)} fields, expected {width} (header: "
                                   f"{', '.join(header)})", file=name, line=reader.line_num)
            rows.append(dict(zip(header, values)))
    except csv.Error as e:
        raise DatasetError(f"malformed CSV ({e})", file=name, line=reader.line_num) from None
    return rows


def _load_txt(text: str) -> list[dict]:
    # Blank-line separated blocks that span several lines are paragraphs (documents); otherwise
    # every non-empty line is its own row.
    blocks = [b.strip() for b in re.split(r"\n\s*\n", text) if b.strip()]
    if len(blocks) > 1 and any("\n" in b for b in blocks):
        return [{"text": b} for b in blocks]
    return [{"text": line.strip()} for line in text.splitlines() if line.strip()]


def _load_parquet(path: Path, name: str) -> list[dict]:
    try:
        import pyarrow.parquet as pq
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several unrelated types for a damaged file
        raise DatasetError(f"could not read Parquet ({type(e).__name__}: {e})", file=name) from None
    return table.to_pylist()


_SPLIT_NAMES = {"train", "test", "validation", "valid", "dev", "eval"}


def _load_hub(source: str) -> list[dict]:
    parts = source[len("hub:"):].split(":")
    dataset_id, config, split = parts[0], None, "train"
    if not dataset_id:
        raise DatasetError("empty Hub dataset id; write hub:<owner>/<name>[:config][:split]")
    if len(parts) == 2:
        if parts[1].split("[")[0] in _SPLIT_NAMES:
            split = parts[1]
        else:
            config = parts[1] or None
    elif len(parts) >= 3:
        config, split = parts[1] or None, parts[2] or "train"
    offline = [v for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
               if os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")]
    try:
        import datasets
        from ..caller import request_hub_token  # a visitor's own token or none, never the owner's

        ds = datasets.load_dataset(dataset_id, config, split=split, token=request_hub_token())
    except Exception as e:
        if offline:
            why = (f"offline ({'=1, '.join(offline)}=1), and it is not in the local cache; connect "
                   "to the network or upload the file instead")
        elif "connect" in str(e).lower() or "resolve" in str(e).lower():
            why = "the Hub cannot be reached (no network?); upload the file instead"
        else:
            why = f"{type(e).__name__}: {str(e)[:300]}"
        raise DatasetError(f"could not load '{dataset_id}' (config {config!r}, split {split!r}) "
                           f"from the Hub: {why}", file=source) from None
    if hasattr(ds, "keys") and not hasattr(ds, "to_list"):  # a DatasetDict: no split was chosen
        raise DatasetError(f"choose a split: {', '.join(ds.keys())}", file=source, field="split")
    return _require_rows(ds.to_list(), source)
