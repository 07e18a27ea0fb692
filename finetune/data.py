"""The dataset engine: load a file, detect its format, convert it to TRL's forms, check and split it.

Pipeline (each step is a plain function the UI, the CLI, the API and the tests all call):

    load_records(source)          -> list[dict]          JSONL, JSON, CSV, TSV, Parquet, TXT, builtin:demo, hub:...
    detect_format(records)        -> Detection           alpaca, messages, sharegpt, text, prompt_completion,
                                                         preference, kto, classification (or "unknown")
    to_canonical(records)         -> (rows, kind)        TRL forms: messages, prompt_completion, text, preference, kto
    clean_report(rows, kind)      -> issues              whitespace, empty fields, role order, duplicates, PII, ...
    token_stats(rows, kind)       -> length statistics
    split_records(rows)           -> (train, validation) seeded, optionally stratified
    trained_token_share(rows)     -> share of tokens that carry loss (finetune.tokenize's masking)
    inspect_dataset(source)       -> one JSON-serialisable summary for the Data tab (+ field stats,
                                     labels, size requirement, trained share, mapping hint)
    prepare_dataset(source)       -> train.jsonl, validation.jsonl, meta.json written atomically;
                                     optional PII masking (mask_pii_rows) and dedupe (dedupe_rows)
    load_prepared(dir_or_source)  -> (train, validation, kind)

Sources: files, "builtin:demo", "hub:<id>[:config][:split]" (hub_source builds one), and datasets
prepared earlier (a folder with meta.json, or its name under FINETUNE_HOME/datasets).

Every problem with the input is a DatasetError whose message names the file, the line or row and the
field, so a user never meets `KeyError: 'text'`. torch/transformers/datasets are imported inside the
functions that need them, so importing this module is cheap.

Try it: `python -c "from finetune.data import inspect_dataset as i; print(i('builtin:demo'))"`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

FORMATS = ("alpaca", "messages", "sharegpt", "text", "prompt_completion", "preference", "kto",
           "classification")
KINDS = ("messages", "prompt_completion", "text", "preference", "kto")
MAX_FILE_BYTES = 200 * 1024 * 1024
SUPPORTED_EXTENSIONS = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".txt")
DEFAULT_VAL_RATIO = 0.1
DEFAULT_SEED = 42
NEAR_DUP_THRESHOLD = 0.9
GENERATED_KEY = "_generated"  # "paraphrase" or "self-instruct" on rows made by finetune.augment
SFT_MIN_EXAMPLES = 1000  # the planner's decision tree: SFT wants 1,000+ examples (finetune/plan.py)
LORA_MIN_EXAMPLES = 100  # below this even a LoRA adapter mostly memorises

# The canonical field names of each format; `mapping` keys must be among these.
FORMAT_FIELDS: dict[str, tuple[str, ...]] = {
    "alpaca": ("instruction", "input", "output", "system", "history"),
    "messages": ("messages", "tools"),
    "sharegpt": ("conversations", "system", "tools"),
    "text": ("text",),
    "prompt_completion": ("prompt", "completion"),
    "preference": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion", "label"),
    "classification": ("text", "label"),
}

# Column names seen in the wild for each canonical field, tried in order when no mapping is given.
_ALIASES: dict[str, dict[str, tuple[str, ...]]] = {
    "alpaca": {"instruction": ("instruction",), "input": ("input", "context"),
               "output": ("output", "response"), "system": ("system",), "history": ("history",)},
    "messages": {"messages": ("messages", "conversations", "conversation", "chat"),
                 "tools": ("tools",)},
    "sharegpt": {"conversations": ("conversations", "conversation", "messages"),
                 "system": ("system",), "tools": ("tools",)},
    "text": {"text": ("text", "content")},
    "prompt_completion": {"prompt": ("prompt", "question"),
                          "completion": ("completion", "response", "answer")},
    "preference": {"prompt": ("prompt", "question"), "chosen": ("chosen",),
                   "rejected": ("rejected",)},
    "kto": {"prompt": ("prompt",), "completion": ("completion",), "label": ("label",)},
    "classification": {"text": ("text", "sentence", "content"), "label": ("label",)},
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    "alpaca": ("instruction", "output"),
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "text": ("text",),
    "prompt_completion": ("prompt", "completion"),
    "preference": ("chosen", "rejected"),
    "kto": ("prompt", "completion", "label"),
    "classification": ("text", "label"),
}
_KIND_OF = {"alpaca": "messages", "messages": "messages", "sharegpt": "messages", "text": "text",
            "prompt_completion": "prompt_completion", "preference": "preference", "kto": "kto",
            "classification": "prompt_completion"}

_ROLE_MAP = {
    "system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
    "bot": "assistant", "model": "assistant", "tool": "tool", "function": "tool",
    "observation": "tool", "ipython": "tool", "function_call": "assistant",
}


class DatasetError(ValueError):
    """One clear message naming file, line/row and field. str(e) is the full human message.

    `DatasetError("invalid JSON (Expecting ',')", file="data.jsonl", line=7)` reads
    "data.jsonl line 7: invalid JSON (Expecting ',')". `.detail` keeps the message without location.
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 row: int | None = None, field: str | None = None, rule: str | None = None):
        self.detail = message
        self.file = file
        self.line = line
        self.row = row
        self.field = field
        # Which clean_report rule a skipped row counts under (inspect_dataset shows them as issues).
        self.rule = rule
        where = []
        if file:
            f = str(file)
            where.append(f if f.startswith(("hub:", "builtin:"))
                         else os.path.basename(f.rstrip("/")) or f)
        if line is not None:
            where.append(f"line {line}")
        elif row is not None:
            where.append(f"row {row}")
        prefix = " ".join(where)
        if field:
            prefix = f"{prefix}, field '{field}'" if prefix else f"field '{field}'"
        super().__init__(f"{prefix}: {message}" if prefix else message)


class _RowError(Exception):
    """A problem in one record, raised deep in a converter and given its row number by the caller."""

    def __init__(self, field: str | None, message: str, rule: str = "invalid_row"):
        super().__init__(message)
        self.field = field
        self.message = message
        self.rule = rule


# =============================================================================================
# Loading


def load_records(source: str, *, max_bytes: int | None = None) -> list[dict]:
    """Read a dataset into a list of dicts.

    source: a local file (.jsonl/.ndjson, .json, .csv, .tsv, .parquet, .txt), "builtin:demo", or
    "hub:<dataset_id>[:config][:split]" (needs the network). Content is sniffed when the extension
    is missing or wrong (a .json file holding JSON lines loads as JSONL).
    """
    limit = MAX_FILE_BYTES if max_bytes is None else int(max_bytes)
    source = str(source).strip() if source is not None else ""
    if not source:
        raise DatasetError("no dataset given: pick a file, 'builtin:demo' or 'hub:<dataset id>'")
    if source.startswith("builtin:"):
        from .builtin import DEMO_DATASET_ID, demo_records
        if source != DEMO_DATASET_ID:
            raise DatasetError(f"unknown built-in dataset {source!r}; the built-in dataset is "
                               f"{DEMO_DATASET_ID!r}")
        return [dict(r) for r in demo_records()]
    from .sources import check_source, resolve_local  # hub ids, bare names, public-mode paths

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
        train, val, _ = load_prepared(str(path))
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
    text = _decode(path.read_bytes(), name)
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


def _saved_dataset_dir(name: str) -> Path | None:
    """FINETUNE_HOME/datasets/<name> when `name` is the bare name of a prepared dataset."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or ".." in name:
        return None
    from .paths import datasets_dir
    cand = datasets_dir() / name
    return cand if (cand / "meta.json").is_file() else None


def saved_datasets() -> list[dict]:
    """The prepared datasets under FINETUNE_HOME/datasets, newest first: [{"name", "dir", "kind",
    "format", "rows_train", "rows_validation", "created"}]. Folders without a readable meta.json
    (half-written, or not ours) are left out."""
    from .paths import datasets_dir
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


def _decode(data: bytes, name: str) -> str:
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
        ds = datasets.load_dataset(dataset_id, config, split=split)
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


def _type_name(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


# =============================================================================================
# Detection


@dataclass
class Detection:
    format: str  # one of FORMATS, or "unknown"
    confidence: float  # share of rows matching the winning schema, 0..1
    evidence: list[str]  # human-readable reasons
    columns: list[str]
    # Canonical field -> source column actually used (e.g. {"output": "response"}); empty for unknown.
    mapping: dict[str, str] = field(default_factory=dict)


def _present(row: dict, key: str) -> bool:
    return row.get(key) is not None


def _first_present(row: dict, names: Iterable[str]) -> str | None:
    for n in names:
        if row.get(n) is not None:
            return n
    return None


def _as_list(v: Any) -> Any:
    # CSV and some Parquet exports store conversations as JSON text.
    if isinstance(v, str) and v.lstrip().startswith("["):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def _conversation_style(v: Any) -> str | None:
    v = _as_list(v)
    if not isinstance(v, list) or not v or not isinstance(v[0], dict):
        return None
    if "from" in v[0] and "value" in v[0]:
        return "sharegpt"
    if "role" in v[0]:
        return "messages"
    return None


def _is_bool_label(v: Any) -> bool:
    return isinstance(v, bool) or (isinstance(v, str) and v.strip().lower() in ("true", "false"))


def _row_format(row: dict) -> tuple[str | None, dict[str, str]]:
    """The most specific format one row fits, and the columns that make it fit."""
    if _present(row, "chosen") and _present(row, "rejected"):
        p = _first_present(row, _ALIASES["preference"]["prompt"])
        return "preference", ({"prompt": p} if p else {})
    if _present(row, "prompt") and _present(row, "completion") and _present(row, "label") \
            and _is_bool_label(row["label"]):
        return "kto", {}
    for key in ("messages", "conversations", "conversation", "chat"):
        if _present(row, key):
            style = _conversation_style(row[key])
            if style == "messages":
                return "messages", {"messages": key}
            if style == "sharegpt":
                return "sharegpt", {"conversations": key}
    if _present(row, "instruction"):
        out = _first_present(row, _ALIASES["alpaca"]["output"])
        if out:
            inp = _first_present(row, _ALIASES["alpaca"]["input"])
            return "alpaca", {"output": out, **({"input": inp} if inp else {})}
    p = _first_present(row, _ALIASES["prompt_completion"]["prompt"])
    c = _first_present(row, _ALIASES["prompt_completion"]["completion"])
    if p and c:
        return "prompt_completion", {"prompt": p, "completion": c}
    t = _first_present(row, _ALIASES["classification"]["text"])
    if t and _present(row, "label") and not isinstance(row["label"], (list, dict)):
        return "classification", {"text": t}
    if _present(row, "role") and _present(row, "content"):
        return None, {}
    t = _first_present(row, _ALIASES["text"]["text"])
    if t and isinstance(row[t], str):
        return "text", {"text": t}
    return None, {}


def _describe(fmt: str, cols: dict[str, str]) -> str:
    def q(*names: str) -> str:
        return " and ".join(f"'{n}'" for n in names)
    if fmt == "alpaca":
        return f"have {q('instruction', cols.get('output', 'output'))}"
    if fmt == "messages":
        return f"have {q(cols.get('messages', 'messages'))} as a list of role/content messages"
    if fmt == "sharegpt":
        return f"have {q(cols.get('conversations', 'conversations'))} as a list of from/value turns"
    if fmt == "text":
        return f"have a {q(cols.get('text', 'text'))} string"
    if fmt == "prompt_completion":
        return f"have {q(cols.get('prompt', 'prompt'), cols.get('completion', 'completion'))}"
    if fmt == "preference":
        return "have " + q(*([cols["prompt"]] if cols.get("prompt") else []), "chosen", "rejected")
    if fmt == "kto":
        return "have 'prompt', 'completion' and a true/false 'label'"
    if fmt == "classification":
        return f"have {q(cols.get('text', 'text'), 'label')} (a non-boolean label)"
    return "match"


def _columns(records: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    last = None
    for r in records:
        keys = r.keys()
        if keys == last:  # most files have the same keys on every row: skip the merge
            continue
        for k in keys:
            seen.setdefault(k, None)
        last = keys
    return list(seen)


def detect_format(records: list[dict]) -> Detection:
    """Tell which of FORMATS the records are in, how sure we are, and why."""
    columns = _columns(records)
    n = len(records)
    if n == 0:
        return Detection("unknown", 0.0, ["no rows"], columns)
    counts: dict[str, int] = {}
    maps: dict[str, dict[str, str]] = {}
    odd: dict[str | None, list[int]] = {}
    fmts: list[str | None] = []
    for r in records:
        fmt, cols = _row_format(r)
        fmts.append(fmt)
        if fmt is not None:
            counts[fmt] = counts.get(fmt, 0) + 1
            maps.setdefault(fmt, cols)
    if not counts:
        if "role" in columns and "content" in columns:
            ev = ["rows look like single chat messages (role, content); put each conversation's "
                  "messages in a list under a 'messages' key, one conversation per row"]
        else:
            ev = [f"no known schema; columns found: {', '.join(columns) or '(none)'}",
                  "supported formats: " + ", ".join(FORMATS)]
        return Detection("unknown", 0.0, ev, columns)
    # Ties go to the more specific format, in _row_format's order of preference.
    order = ["preference", "kto", "messages", "sharegpt", "alpaca", "prompt_completion",
             "classification", "text"]
    best = max(counts, key=lambda f: (counts[f], -order.index(f)))
    for i, f in enumerate(fmts, 1):
        if f != best:
            odd.setdefault(f, []).append(i)
    conf = counts[best] / n
    evidence = [f"{counts[best]}/{n} rows {_describe(best, maps[best])}"]
    for f, rows in odd.items():
        label = f"match {f}" if f else "match no known format"
        evidence.append(f"{len(rows)} row{'s' if len(rows) != 1 else ''} {label}: "
                        f"{_row_list(rows)} (keys: {', '.join(list(records[rows[0] - 1])[:8])})")
    mapping = {k: v for k, v in maps[best].items() if k != v}
    for k, v in mapping.items():
        evidence.append(f"using column '{v}' as '{k}'")
    return Detection(best, round(conf, 4), evidence, columns, dict(maps[best]))


def _row_list(rows: list[int], k: int = 5) -> str:
    head = ", ".join(str(r) for r in rows[:k])
    return f"rows {head}" + (f" and {len(rows) - k} more" if len(rows) > k else "")


# =============================================================================================
# Conversion to TRL's forms


def to_canonical(records: list[dict], fmt: str | None = None, mapping: dict[str, str] | None = None,
                 *, source: str = "", on_error: Literal["raise", "skip"] = "raise",
                 return_skipped: bool = False):
    """Convert records to TRL's canonical forms. Returns (rows, kind).

    kind is one of KINDS. With on_error="skip" bad rows are dropped instead of raising; pass
    return_skipped=True to get (rows, kind, skipped) where skipped is a list of DatasetError (one
    per dropped row, with .row and .field). mapping: {canonical field of fmt: source column}.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    name = os.path.basename(source) if source and not source.startswith(("builtin:", "hub:")) \
        else (source or None)
    if fmt is not None and fmt not in FORMATS:
        raise DatasetError(f"unknown format {fmt!r}; supported formats: {', '.join(FORMATS)}",
                           file=name, field="format")
    columns = _columns(records)
    if mapping:
        mapping = {k: v for k, v in mapping.items() if v}
        records = _apply_mapping(records, mapping, fmt, columns, name)
    det = None
    if fmt is None:
        det = detect_format(records)
        if det.format == "unknown":
            raise DatasetError(f"could not tell the dataset format; columns found: "
                               f"{', '.join(columns) or '(none)'}. Supported formats: "
                               f"{', '.join(FORMATS)}. Pick a format and map the columns.",
                               file=name)
        fmt = det.format
    cols = _resolve_columns(records, fmt, det)
    convert = _CONVERTERS[fmt]
    rows: list[dict] = []
    origin: list[int] = []  # 1-based record number of each converted row, for later messages
    skipped: list[DatasetError] = []
    with _gc_paused():
        for i, rec in enumerate(records, 1):
            try:
                row = convert(rec, cols)
                if GENERATED_KEY in rec:  # rows made by finetune.augment keep their marker
                    row[GENERATED_KEY] = rec[GENERATED_KEY]
                rows.append(row)
                origin.append(i)
            except _RowError as e:
                err = DatasetError(e.message, file=name, row=i, field=e.field, rule=e.rule)
                if on_error == "raise":
                    raise err from None
                skipped.append(err)
    kind = _KIND_OF[fmt]
    if kind in ("preference", "prompt_completion", "kto") and rows:
        bad = _mixed_form_rows(rows, cols.get("prompt", "prompt"))
        if bad:
            msg, idx = bad
            if on_error == "raise":
                raise DatasetError(msg, file=name, row=origin[idx[0]],
                                   field=cols.get("prompt", "prompt"), rule="invalid_row")
            drop = set(idx)
            for j in idx:
                skipped.append(DatasetError(msg, file=name, row=origin[j],
                                            field=cols.get("prompt", "prompt"), rule="invalid_row"))
            rows = [r for j, r in enumerate(rows) if j not in drop]
            skipped.sort(key=lambda e: e.row or 0)
    if return_skipped:
        return rows, kind, skipped
    return rows, kind


def _apply_mapping(records: list[dict], mapping: dict[str, str], fmt: str | None,
                   columns: list[str], name: str | None) -> list[dict]:
    allowed = set(FORMAT_FIELDS[fmt]) if fmt else {f for fs in FORMAT_FIELDS.values() for f in fs}
    for canon, src in mapping.items():
        if canon not in allowed:
            fields = ", ".join(FORMAT_FIELDS[fmt]) if fmt else ", ".join(sorted(allowed))
            raise DatasetError(f"mapping names '{canon}', which is not a field of "
                               f"{fmt or 'any format'} (fields: {fields})", file=name, field=canon)
        if src not in columns:
            raise DatasetError(f"mapping: column '{src}' not found; columns: {', '.join(columns)}",
                               file=name, field=canon)
    out = []
    for r in records:
        new = {k: v for k, v in r.items() if k not in mapping}
        for canon, src in mapping.items():
            if src in r:
                new[canon] = r[src]
        out.append(new)
    return out


def _resolve_columns(records: list[dict], fmt: str, det: Detection | None) -> dict[str, str]:
    if det is not None and det.format == fmt:
        cols = dict(det.mapping)
    else:
        cols = {}
    # Fill the rest from aliases, preferring the canonical name itself.
    sample = records[:1000]
    for canon, names in _ALIASES[fmt].items():
        if canon in cols and cols[canon]:
            continue
        for n in names:
            if any(n in r for r in sample):
                cols[canon] = n
                break
        else:
            cols[canon] = canon
    return cols


def _get_str(rec: dict, col: str, canon: str, *, required: bool, allow_empty: bool = False) -> str:
    v = rec.get(col)
    if v is None:
        if required:
            raise _RowError(col, "missing" if col not in rec else "is null", "invalid_row")
        return ""
    if isinstance(v, bool) or isinstance(v, (dict, list)):
        raise _RowError(col, f"expected a string, got {_type_name(v)}", "invalid_row")
    if isinstance(v, (int, float)):
        if isinstance(v, float) and math.isnan(v):
            if required:
                raise _RowError(col, "is empty (NaN)", "empty_field")
            return ""
        v = str(v)  # numeric answers ("42") are common in CSV/Parquet exports
    if not isinstance(v, str):
        raise _RowError(col, f"expected a string, got {type(v).__name__}", "invalid_row")
    if required and not allow_empty and not v.strip():
        raise _RowError(col, "is empty", "empty_field")
    return v


def _content_text(v: Any, where: str) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, list):  # multimodal content parts: keep the text ones
        parts = []
        for p in v:
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str):
                parts.append(p["text"])
            elif isinstance(p, str):
                parts.append(p)
            else:
                kind = p.get("type") if isinstance(p, dict) else _type_name(p)
                raise _RowError(where, f"content part of type {kind!r} is not supported (text only)",
                                "invalid_row")
        return "".join(parts)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    raise _RowError(where, f"content must be a string, got {_type_name(v)}", "invalid_row")


def _clean_message(m: Any, where: str, role_key: str = "role", content_key: str = "content") -> dict:
    if not isinstance(m, dict):
        raise _RowError(where, f"expected a message object, got {_type_name(m)}", "invalid_row")
    raw_role = m.get(role_key)
    if not isinstance(raw_role, str) or raw_role.strip().lower() not in _ROLE_MAP:
        raise _RowError(f"{where}.{role_key}", f"unknown role {raw_role!r}; expected one of "
                        "system, user, assistant, tool (or human, gpt, function_call, observation)",
                        "invalid_row")
    raw_role = raw_role.strip().lower()
    role = _ROLE_MAP[raw_role]
    content = _content_text(m.get(content_key), f"{where}.{content_key}")
    msg: dict[str, Any] = {"role": role, "content": content}
    for k, v in m.items():
        if k in (role_key, content_key, "role", "content") or v is None:
            continue
        if role_key == "from" and k in ("from", "value"):
            continue
        msg[k] = v
    if raw_role == "function_call" and "tool_calls" not in msg:
        # ShareGPT keeps a call as JSON text: turn it into an OpenAI-style tool call.
        try:
            call = json.loads(content)
        except ValueError:
            call = None
        if isinstance(call, dict) and "name" in call:
            args = call.get("arguments", {})
            msg = {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": call["name"], "arguments": args}}]}
    return msg


def _check_conversation(msgs: list[dict], col: str, *, need_final_assistant: bool = True) -> None:
    """Role order: system first (optional), then user/assistant alternating, tool replies after a
    tool call, ending with the assistant. Raises _RowError(rule='role_order')."""
    if not msgs:
        raise _RowError(col, "empty conversation", "empty_field")
    prev = None
    started = False
    for i, m in enumerate(msgs):
        role = m["role"]
        where = f"{col}[{i}]"
        if role == "system":
            if started:
                raise _RowError(where, "system message after the conversation started", "role_order")
        elif role == "user":
            if prev == "user":
                raise _RowError(where, "two user messages in a row", "role_order")
            started = True
        elif role == "assistant":
            if not started:
                raise _RowError(where, "conversation starts with the assistant, not the user",
                                "role_order")
            if prev == "assistant" and not msgs[i - 1].get("tool_calls"):
                raise _RowError(where, "two assistant messages in a row", "role_order")
            started = True
        elif role == "tool":
            if prev not in ("assistant", "tool") or (prev == "assistant"
                                                     and not msgs[i - 1].get("tool_calls")):
                raise _RowError(where, "tool message without a preceding assistant tool call",
                                "role_order")
        if role != "system" and not m["content"].strip() and not m.get("tool_calls"):
            raise _RowError(f"{where}.content", f"empty {role} message", "empty_field")
        prev = role
    if not started:
        raise _RowError(col, "no user or assistant messages", "role_order")
    if need_final_assistant and msgs[-1]["role"] != "assistant":
        raise _RowError(f"{col}[{len(msgs) - 1}]", f"conversation ends with a {msgs[-1]['role']} "
                        "message; it must end with the assistant's reply", "role_order")


def _message_list(v: Any, col: str, role_key: str = "role", content_key: str = "content") -> list:
    v = _as_list(v)
    if v is None:
        raise _RowError(col, "missing", "invalid_row")
    if not isinstance(v, list):
        raise _RowError(col, f"expected a list of messages, got {_type_name(v)}", "invalid_row")
    return [_clean_message(m, f"{col}[{i}]", role_key, content_key) for i, m in enumerate(v)]


def _conv_alpaca(rec: dict, cols: dict) -> dict:
    instruction = _get_str(rec, cols["instruction"], "instruction", required=False)
    inp = _get_str(rec, cols["input"], "input", required=False)
    output = _get_str(rec, cols["output"], "output", required=True)
    if not instruction.strip() and not inp.strip():
        field_ = cols["instruction"]
        raise _RowError(field_, "is empty (and there is no input)" if field_ in rec else "missing",
                        "empty_field" if field_ in rec else "invalid_row")
    system = _get_str(rec, cols["system"], "system", required=False)
    msgs: list[dict] = []
    if system.strip():
        msgs.append({"role": "system", "content": system})
    history = rec.get(cols["history"])
    if history:
        if not isinstance(history, list):
            raise _RowError(cols["history"], f"expected a list of [instruction, output] pairs, got "
                            f"{_type_name(history)}", "invalid_row")
        for j, pair in enumerate(history):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2
                    and all(isinstance(x, str) for x in pair)):
                raise _RowError(f"{cols['history']}[{j}]", "expected a pair of strings "
                                "[instruction, output]", "invalid_row")
            msgs.append({"role": "user", "content": pair[0]})
            msgs.append({"role": "assistant", "content": pair[1]})
    user = instruction + ("\n\n" + inp if inp.strip() and instruction.strip() else inp)
    msgs.append({"role": "user", "content": user})
    msgs.append({"role": "assistant", "content": output})
    return {"messages": msgs}


def _conv_messages(rec: dict, cols: dict) -> dict:
    col = cols["messages"]
    msgs = _message_list(rec.get(col), col)
    _check_conversation(msgs, col)
    out: dict[str, Any] = {"messages": msgs}
    tools = rec.get(cols.get("tools", "tools"))
    if tools:
        out["tools"] = _as_list(tools)
    return out


def _conv_sharegpt(rec: dict, cols: dict) -> dict:
    col = cols["conversations"]
    msgs = _message_list(rec.get(col), col, "from", "value")
    system = rec.get(cols.get("system", "system"))
    if isinstance(system, str) and system.strip() and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": system})
    _check_conversation(msgs, col)
    out: dict[str, Any] = {"messages": msgs}
    tools = rec.get(cols.get("tools", "tools"))
    if tools:
        out["tools"] = _as_list(tools)
    return out


def _conv_text(rec: dict, cols: dict) -> dict:
    return {"text": _get_str(rec, cols["text"], "text", required=True)}


def _str_or_msgs(rec: dict, col: str, *, default_role: str, required: bool = True) -> Any:
    v = _as_list(rec.get(col))
    if isinstance(v, list):
        msgs = [_clean_message(m, f"{col}[{i}]") for i, m in enumerate(v)]
        if required and not msgs:
            raise _RowError(col, "empty message list", "empty_field")
        for i, m in enumerate(msgs):
            if m["role"] != "system" and not m["content"].strip() and not m.get("tool_calls"):
                raise _RowError(f"{col}[{i}].content", f"empty {m['role']} message", "empty_field")
        return msgs
    if isinstance(v, dict):
        return [_clean_message(v, col)]
    return _get_str(rec, col, col, required=required)


def _conv_prompt_completion(rec: dict, cols: dict) -> dict:
    prompt = _str_or_msgs(rec, cols["prompt"], default_role="user")
    completion = _str_or_msgs(rec, cols["completion"], default_role="assistant")
    prompt, completion = _unify(prompt, completion, cols)
    if isinstance(prompt, list):
        _check_conversation(prompt + completion, f"{cols['prompt']}+{cols['completion']}")
    return {"prompt": prompt, "completion": completion}


def _unify(prompt: Any, completion: Any, cols: dict, key: str = "completion") -> tuple[Any, Any]:
    # TRL wants both sides in the same form: promote a string side to a one-message list.
    if isinstance(prompt, list) and isinstance(completion, str):
        completion = [{"role": "assistant", "content": completion}]
    elif isinstance(prompt, str) and isinstance(completion, list):
        prompt = [{"role": "user", "content": prompt}]
    return prompt, completion


def _conv_kto(rec: dict, cols: dict) -> dict:
    out = _conv_prompt_completion(rec, {"prompt": cols["prompt"], "completion": cols["completion"]})
    label = rec.get(cols["label"])
    if isinstance(label, str) and label.strip().lower() in ("true", "false", "1", "0"):
        label = label.strip().lower() in ("true", "1")
    elif isinstance(label, int) and not isinstance(label, bool) and label in (0, 1):
        label = bool(label)
    if not isinstance(label, bool):
        raise _RowError(cols["label"], f"expected true or false, got {label!r}", "invalid_row")
    out["label"] = label
    return out


def _conv_classification(rec: dict, cols: dict) -> dict:
    text = _get_str(rec, cols["text"], "text", required=True)
    label = rec.get(cols["label"])
    if label is None:
        raise _RowError(cols["label"], "missing", "invalid_row")
    if isinstance(label, (list, dict)):
        raise _RowError(cols["label"], f"expected a single label, got {_type_name(label)}",
                        "invalid_row")
    label_s = str(label).strip() if not isinstance(label, bool) else str(label).lower()
    if not label_s:
        raise _RowError(cols["label"], "is empty", "empty_field")
    return {"prompt": text, "completion": label_s}


def _conv_preference(rec: dict, cols: dict) -> dict:
    chosen = _str_or_msgs(rec, cols["chosen"], default_role="assistant")
    rejected = _str_or_msgs(rec, cols["rejected"], default_role="assistant")
    pcol = cols.get("prompt", "prompt")
    if rec.get(pcol) is not None:
        prompt = _str_or_msgs(rec, pcol, default_role="user")
    else:
        prompt, chosen, rejected = _extract_prompt(chosen, rejected, cols)
    if isinstance(prompt, list) or isinstance(chosen, list) or isinstance(rejected, list):
        prompt = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        chosen = chosen if isinstance(chosen, list) else [{"role": "assistant", "content": chosen}]
        rejected = rejected if isinstance(rejected, list) else \
            [{"role": "assistant", "content": rejected}]
        _check_conversation(prompt + chosen, f"{pcol}+{cols['chosen']}")
        _check_conversation(prompt + rejected, f"{pcol}+{cols['rejected']}")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _extract_prompt(chosen: Any, rejected: Any, cols: dict) -> tuple[Any, Any, Any]:
    """Implicit-prompt preference rows: the shared beginning of chosen and rejected is the prompt."""
    if isinstance(chosen, list) and isinstance(rejected, list):
        k = 0
        while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
            k += 1
        if k == 0:
            raise _RowError(cols["chosen"], "no 'prompt' field and 'chosen'/'rejected' share no "
                            "leading messages to use as the prompt", "invalid_row")
        return chosen[:k], chosen[k:], rejected[k:]
    if isinstance(chosen, str) and isinstance(rejected, str):
        k = 0
        n = min(len(chosen), len(rejected))
        while k < n and chosen[k] == rejected[k]:
            k += 1
        if k > 0 and chosen[k - 1] == " ":  # same rule as TRL's extract_prompt
            k -= 1
        if not chosen[:k].strip():
            raise _RowError(cols["chosen"], "no 'prompt' field and 'chosen'/'rejected' share no "
                            "common beginning to use as the prompt", "invalid_row")
        return chosen[:k], chosen[k:], rejected[k:]
    raise _RowError(cols["chosen"], "'chosen' and 'rejected' must both be strings or both be "
                    "message lists", "invalid_row")


def _mixed_form_rows(rows: list[dict], field_name: str) -> tuple[str, list[int]] | None:
    """Rows whose prompt is a string while most are message lists, or the reverse.

    TRL picks one code path per dataset, so one form must hold for every row."""
    is_list = [isinstance(r["prompt"], list) for r in rows]
    n_list = sum(is_list)
    if n_list in (0, len(rows)):
        return None
    majority = n_list >= len(rows) - n_list
    idx = [j for j, x in enumerate(is_list) if x != majority]
    form, other = ("a string", "message lists") if majority else ("a message list", "strings")
    return f"is {form} while most rows use {other}; use one form for the whole dataset", idx


_CONVERTERS = {
    "alpaca": _conv_alpaca, "messages": _conv_messages, "sharegpt": _conv_sharegpt,
    "text": _conv_text, "prompt_completion": _conv_prompt_completion,
    "preference": _conv_preference, "kto": _conv_kto, "classification": _conv_classification,
}


# =============================================================================================
# Text views of canonical rows (for duplicates, PII, whitespace and token counts)


def _msgs_text(msgs: list[dict], skip_system: bool = False) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in msgs
                     if not (skip_system and m["role"] == "system"))


def _part_text(v: Any, skip_system: bool = False) -> str:
    return _msgs_text(v, skip_system) if isinstance(v, list) else str(v)


def _row_text(row: dict, kind: str, skip_system: bool = False) -> str:
    if kind == "messages":
        return _msgs_text(row["messages"], skip_system)
    if kind == "text":
        return row["text"]
    if kind == "prompt_completion":
        return _part_text(row["prompt"], skip_system) + "\n" + _part_text(row["completion"])
    if kind == "kto":
        return (_part_text(row["prompt"], skip_system) + "\n" + _part_text(row["completion"])
                + f"\nlabel: {row['label']}")
    if kind == "preference":
        return (_part_text(row["prompt"], skip_system) + "\nchosen: " + _part_text(row["chosen"])
                + "\nrejected: " + _part_text(row["rejected"]))
    raise DatasetError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}", field="kind")


_KIND_FIELDS = {"messages": ("messages",), "text": ("text",),
                "prompt_completion": ("prompt", "completion"), "kto": ("prompt", "completion"),
                "preference": ("prompt", "chosen", "rejected")}


def _fields(row: dict, kind: str) -> Iterable[tuple[str, str, str]]:
    """(field label, text, role) for every text field of a canonical row."""
    for key in _KIND_FIELDS[kind]:
        v = row.get(key)
        if isinstance(v, list):
            for i, m in enumerate(v):
                if isinstance(m, dict):
                    yield f"{key}[{i}].content", m.get("content") or "", \
                        ("tool_call" if m.get("tool_calls") else m.get("role", ""))
        elif v is not None:
            yield key, str(v), key


# =============================================================================================
# Cleaning report

_REPEATED_WS = re.compile(r"(?<=\S)[ \t]{2,}(?=\S)|\n{4,}")
_PII = re.compile(
    r"(?P<email>\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b)"
    r"|(?P<secret>\bhf_[A-Za-z0-9]{30,}\b|\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"
    r"|\bAKIA[0-9A-Z]{16}\b|\bgh[pousr]_[A-Za-z0-9]{36,}\b|\bgithub_pat_[A-Za-z0-9_]{40,}"
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}|-----BEGIN [A-Z ]*PRIVATE KEY-----)"
    r"|(?P<phone>(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,5}"
    r"(?![\w-]))"
)
_PII_NAMES = {"email": "email address", "secret": "API key or secret", "phone": "phone number"}
_RULE_ORDER = ("invalid_row", "empty_field", "role_order", "whitespace", "exact_duplicate",
               "near_duplicate", "too_long", "pii", "train_val_overlap")


def _snip(s: str, n: int = 40) -> str:
    s = s.replace("\n", "\\n")
    return s if len(s) <= n else s[: n - 1] + "…"


def _mask(kind: str, s: str) -> str:
    # Never repeat a secret in a report that may be shown or logged.
    if kind == "email":
        user, _, domain = s.partition("@")
        return f"{user[:1]}***@{domain}"
    if kind == "secret":
        return s[:4] + "…" + f"({len(s)} chars)"
    return s[:3] + "…" + s[-2:]


class _Tally:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}
        self.extra: dict[str, dict] = {}

    def add(self, rule: str, example: str) -> None:
        self.counts[rule] = self.counts.get(rule, 0) + 1
        ex = self.examples.setdefault(rule, [])
        if len(ex) < 3:
            ex.append(example)

    def issues(self, total: int) -> list[dict]:
        out = []
        for rule in sorted(self.counts, key=lambda r: (_RULE_ORDER.index(r)
                                                       if r in _RULE_ORDER else 99, r)):
            n = self.counts[rule]
            item = {"rule": rule, "count": n, "examples": self.examples.get(rule, []),
                    "message": _rule_message(rule, n, total, self.extra.get(rule, {}))}
            item.update(self.extra.get(rule, {}))
            out.append(item)
        return out


def _rule_message(rule: str, n: int, total: int, extra: dict) -> str:
    rows = f"{n} row{'s' if n != 1 else ''}"
    share = f" ({n / total:.1%})" if total else ""
    return {
        "invalid_row": f"{rows}{share} cannot be used (missing field or wrong type) and were skipped",
        "empty_field": f"{rows}{share} have an empty field",
        "role_order": f"{rows}{share} have messages in an order a chat template cannot train on",
        "whitespace": f"{rows}{share} have leading/trailing or repeated whitespace",
        "exact_duplicate": f"{rows}{share} repeat an earlier row exactly",
        "near_duplicate": f"{rows}{share} are near-duplicates (Jaccard ≥ {NEAR_DUP_THRESHOLD}) "
                          "of an earlier row",
        "too_long": f"{rows}{share} are longer than {extra.get('max_seq_len')} tokens; "
                    f"{extra.get('truncated_token_share', 0):.1%} of all tokens would be cut",
        "pii": f"{rows}{share} contain an email address, phone number or secret",
        "train_val_overlap": f"{rows} of the validation rows also appear in the training rows",
    }.get(rule, f"{rows}{share}")


_SECRET_MARKERS = ("hf_", "sk-", "AKIA", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_",
                   "xoxa-", "xoxb-", "xoxp-", "xoxr-", "xoxs-", "PRIVATE KEY")


def _pii_candidates(texts: list[str]) -> set[int]:
    """Rows that might hold PII, found with cheap scans of all text at once; the full regex then
    runs on these rows only (it would cost seconds on 100k rows)."""
    from bisect import bisect_right
    sep = "\n\x00\n"
    big = sep.join(texts)
    starts = []
    pos = 0
    for s in texts:
        starts.append(pos)
        pos += len(s) + len(sep)
    hits: set[int] = set()

    def mark(offset: int) -> None:
        hits.add(bisect_right(starts, offset) - 1)

    for marker in ("@",) + _SECRET_MARKERS:
        k = big.find(marker)
        while k >= 0:
            mark(k)
            k = big.find(marker, k + 1)
    # Phone numbers: 9+ digits within 20 characters. On bytes with numpy, because a regex over
    # all text costs ~0.5 s per 100k rows; "replace" keeps one byte per character, so offsets hold.
    import numpy as np
    raw = np.frombuffer(big.encode("ascii", "replace"), dtype=np.uint8)
    digits = np.flatnonzero((raw >= 48) & (raw <= 57))
    if len(digits) >= 9:
        dense = digits[:-8][(digits[8:] - digits[:-8]) < 20]
        if len(dense):
            rows = np.searchsorted(np.asarray(starts), dense, side="right") - 1
            hits.update(np.unique(rows).tolist())
    return hits


class _gc_paused:
    """Pause the cyclic garbage collector while building many small containers: its repeated full
    passes over a growing heap otherwise cost more than the work itself on 100k rows."""

    def __enter__(self):
        import gc
        self.was = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc):
        import gc
        if self.was:
            gc.enable()


def clean_report(rows: list[dict], kind: str, *, tokenizer=None, max_seq_len: int | None = None,
                 validation: list[dict] | None = None) -> list[dict]:
    """Find problems in canonical rows. Returns [{"rule", "count", "examples", "message", ...}]
    for the rules that fire: whitespace, empty_field, role_order, exact_duplicate, near_duplicate,
    too_long (needs tokenizer and max_seq_len), pii, train_val_overlap (needs validation)."""
    lengths = None
    if tokenizer is not None and max_seq_len:
        lengths, _ = _token_lengths(rows, kind, tokenizer)
    return _clean(rows, kind, lengths=lengths, max_seq_len=max_seq_len, validation=validation)


def _clean(rows: list[dict], kind: str, *,
           lengths: list[int] | Callable[[], list[int]] | None = None,
           max_seq_len: int | None = None, validation: list[dict] | None = None,
           tally: _Tally | None = None, row_numbers: list[int] | None = None) -> list[dict]:
    if kind not in KINDS:
        raise DatasetError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}", field="kind")
    t = tally or _Tally()
    with _gc_paused():
        return _clean_rows(rows, kind, t, lengths, max_seq_len, validation, row_numbers)


def _clean_rows(rows: list[dict], kind: str, t: _Tally,
                lengths: list[int] | Callable[[], list[int]] | None,
                max_seq_len: int | None, validation: list[dict] | None,
                row_numbers: list[int] | None) -> list[dict]:
    # Examples name rows as the user numbers them in the source, even after bad rows were dropped.
    def rn(i: int) -> int:
        return row_numbers[i - 1] if row_numbers else i

    texts = [_row_text(r, kind) for r in rows]
    pii_rows = _pii_candidates(texts)
    for i, row in enumerate(rows, 1):
        ws = empty = pii = None
        check_pii = (i - 1) in pii_rows
        for label, text, role in _fields(row, kind):
            if not text or text[0].isspace() or text[-1].isspace():
                if not text.strip():
                    if empty is None and role != "tool_call":
                        empty = f"row {rn(i)}: {label} is empty"
                    continue
                if ws is None:
                    side = "leading" if text[0].isspace() else "trailing"
                    ws = f"row {rn(i)}: {label} has {side} whitespace ({_snip(text.strip(), 30)!r})"
            # Substring tests first: the regex alone would cost a lookbehind at every character.
            if ws is None and ("  " in text or "\t\t" in text or "\n\n\n\n" in text) \
                    and _REPEATED_WS.search(text):
                ws = f"row {rn(i)}: {label} has repeated whitespace ({_snip(text, 30)!r})"
            if check_pii and pii is None:
                for m in _PII.finditer(text):
                    what = m.lastgroup
                    if what == "phone" and sum(c.isdigit() for c in m.group()) < 9:
                        continue
                    pii = f"row {rn(i)}: {_PII_NAMES[what]} {_mask(what, m.group())} in {label}"
                    break
        if empty:
            t.add("empty_field", empty)
        if ws:
            t.add("whitespace", ws)
        if pii:
            t.add("pii", pii)
        msgs = row.get("messages") if kind == "messages" else None
        if msgs is None and kind in ("prompt_completion", "kto") and isinstance(row.get("prompt"), list):
            msgs = row["prompt"] + row["completion"]
        if msgs:
            try:
                _check_conversation(msgs, "messages")
            except _RowError as e:
                if e.rule == "role_order":
                    t.add("role_order", f"row {rn(i)}: {e.field}: {e.message}")

    first: dict[str, int] = {}
    dup_rows: set[int] = set()
    for i, s in enumerate(texts):
        j = first.setdefault(s, i)
        if j != i:
            dup_rows.add(i)
            t.add("exact_duplicate", f"row {rn(i + 1)} repeats row {rn(j + 1)} ({_snip(s)!r})")
    keep = [i for i in range(len(rows)) if i not in dup_rows]
    # A system prompt shared by every row would make unrelated rows look alike: leave it out.
    near_texts = [_row_text(rows[i], kind, skip_system=True) for i in keep]
    for a, b, sim in _near_duplicates(near_texts):
        ra, rb = rn(keep[a] + 1), rn(keep[b] + 1)
        t.add("near_duplicate", f"row {ra} ≈ row {rb} (similarity {sim:.2f}): "
                                f"{_snip(near_texts[a], 30)!r}")

    if lengths is not None and max_seq_len:
        if callable(lengths):
            lengths = lengths()
        total = sum(lengths)
        cut = 0
        for i, n in enumerate(lengths, 1):
            if n > max_seq_len:
                cut += n - max_seq_len
                t.add("too_long", f"row {rn(i)}: {n} tokens > {max_seq_len}")
        if "too_long" in t.counts:
            t.extra["too_long"] = {"max_seq_len": max_seq_len,
                                   "truncated_token_share": round(cut / total, 4) if total else 0.0}

    if validation:
        train_keys = {_norm(s) for s in texts}
        for i, r in enumerate(validation, 1):
            s = _row_text(r, kind)
            if _norm(s) in train_keys:
                t.add("train_val_overlap", f"validation row {i} is also in training: {_snip(s)!r}")
    return t.issues(len(rows))


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


# --- near duplicates: MinHash signatures (datasketch's affine32 scheme) + LSH banding ----------

_NUM_PERM = 64
_MINHASH_SEED = 1
_WORD_RE = re.compile(r"\w+")
_M64 = (1 << 64) - 1


def _shingle_hashes(texts: list[str]):
    """Hash each text's word 3-shingles to uint32 (texts of 1-2 words give one shingle).

    Returns (hashes, row_of_hash) as numpy arrays. Words become vocabulary ids so the hashes are the
    same in every process (Python's str hash is salted per process)."""
    import numpy as np
    from collections import defaultdict
    from itertools import count
    # Ids from 1 in order of first appearance (0 marks "no word"); map() keeps the loop in C.
    vocab: defaultdict[str, int] = defaultdict(count(1).__next__)
    word_id = vocab.__getitem__
    findall = _WORD_RE.findall
    flat: list[int] = []
    lens = []
    for s in texts:
        ws = findall(s.lower())
        flat.extend(map(word_id, ws))
        lens.append(len(ws))
    lens_a = np.asarray(lens, dtype=np.int64)
    ends = np.cumsum(lens_a)
    starts = ends - lens_a
    a = np.zeros(len(flat) + 2, dtype=np.uint64)
    a[:len(flat)] = np.array(flat, dtype=np.int64)
    n = len(flat)
    row = np.repeat(np.arange(len(texts)), lens_a)
    pos = np.arange(n)
    end_of = ends[row]
    # A shingle starts at every position with two more words in its row, and short rows (1-2
    # words) get one shingle from their first word with missing neighbours set to 0.
    valid = (pos + 2 < end_of) | ((pos == starts[row]) & (lens_a[row] < 3))
    p = pos[valid]
    r = row[valid]
    e = end_of[valid]
    x0 = a[p]
    x1 = np.where(p + 1 < e, a[np.minimum(p + 1, n + 1)], 0)
    x2 = np.where(p + 2 < e, a[np.minimum(p + 2, n + 1)], 0)
    with np.errstate(over="ignore"):
        h = (x0 * np.uint64(0x9E3779B97F4A7C15)) ^ (x1 * np.uint64(0xC2B2AE3D27D4EB4F)) \
            ^ (x2 * np.uint64(0x165667B19E3779F9))
        h = (h ^ (h >> np.uint64(32))) & np.uint64(0xFFFFFFFF)
    return h.astype(np.uint32), r


def _signatures(hashes, rows, n_rows: int, num_perm: int = _NUM_PERM):
    """MinHash signature per row, exactly what datasketch.MinHash (affine32) computes from the same
    32-bit input hashes, vectorised over all rows at once. Returns (sig[rows_with_words], row_ids)."""
    import numpy as np
    from datasketch import MinHash
    from datasketch.minhash import _fmix
    a, b = MinHash(num_perm=num_perm, seed=_MINHASH_SEED).permutations
    if len(hashes) == 0:
        return np.zeros((0, num_perm), dtype=np.uint32), np.zeros(0, dtype=np.int64)
    hv = _fmix(hashes.astype(np.uint32), 32)
    seg = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    row_ids = rows[seg]
    sig = np.empty((len(seg), num_perm), dtype=np.uint32)
    # Small chunks keep the (shingles x permutations) temporary in the CPU cache: 4-6x faster
    # than one big array on 100k rows.
    step = max(1, (1 << 16) // num_perm)
    k = 0
    while k < len(seg):
        lo = seg[k]
        k2 = max(k + 1, int(np.searchsorted(seg, lo + step, side="left")))
        hi = seg[k2] if k2 < len(seg) else len(hv)
        with np.errstate(over="ignore"):
            phv = hv[lo:hi, None] * a[None, :] + b[None, :]
        sig[k:k2] = np.minimum.reduceat(phv, seg[k:k2] - lo, axis=0)
        k = k2
    return sig, row_ids


def _near_duplicates(texts: list[str], threshold: float = NEAR_DUP_THRESHOLD
                     ) -> list[tuple[int, int, float]]:
    """(later row, earlier row, estimated Jaccard) for rows whose word 3-shingle sets are at least
    `threshold` similar. MinHash LSH with datasketch's permutations and band/row parameters;
    banding runs in numpy because inserting 100k sketches one by one into MinHashLSH alone takes
    seconds. Candidates are checked against the full signature, so only estimated matches count."""
    if len(texts) < 2:
        return []
    import numpy as np
    from datasketch import MinHashLSH
    with _gc_paused():
        hashes, rows = _shingle_hashes(texts)
    sig, row_ids = _signatures(hashes, rows, len(texts))
    if len(row_ids) < 2:
        return []
    # Weights favour recall: every candidate is verified below, so false positives cost only time.
    lsh = MinHashLSH(threshold=threshold, num_perm=_NUM_PERM, weights=(0.05, 0.95))
    n_bands, r = lsh.b, lsh.r
    best: dict[int, tuple[int, float]] = {}
    sig64 = sig.astype(np.uint64)
    idx = np.arange(len(row_ids))
    for band in range(n_bands):
        cols = sig64[:, band * r:(band + 1) * r]
        with np.errstate(over="ignore"):
            key = np.zeros(len(cols), dtype=np.uint64)
            for c in range(r):
                key = (key * np.uint64(0x100000001B3)) ^ cols[:, c]
        _, first, inv = np.unique(key, return_index=True, return_inverse=True)
        partner = first[inv]
        cand = idx[partner != idx]
        if len(cand) == 0:
            continue
        sim = (sig[cand] == sig[partner[cand]]).mean(axis=1)
        for i, p, s in zip(cand.tolist(), partner[cand].tolist(), sim.tolist()):
            if s >= threshold and (i not in best or s > best[i][1]):
                best[i] = (p, s)
    out = [(int(row_ids[i]), int(row_ids[p]), s) for i, (p, s) in best.items()]
    out.sort()
    return out


# =============================================================================================
# Token lengths and statistics

_TOKENIZERS: dict[str, Any] = {}


def _get_tokenizer(tokenizer):
    if tokenizer is None or not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    key = str(tokenizer)
    if key not in _TOKENIZERS:
        from transformers import AutoTokenizer

        from .builtin import resolve_model
        _TOKENIZERS[key] = AutoTokenizer.from_pretrained(resolve_model(key))
    return _TOKENIZERS[key]


def _length_texts(rows: list[dict], kind: str, tok) -> tuple[list[str], list[int], bool]:
    """The strings a trainer would tokenize, one or two per row (preference: chosen and rejected),
    with the row each belongs to and whether they are chat-template renderings."""
    template = getattr(tok, "chat_template", None) if tok is not None else None
    eos = (getattr(tok, "eos_token", None) or "") if tok is not None else ""
    convs: list[list[dict]] = []
    owner: list[int] = []
    texts: list[str] = []
    if kind == "messages":
        convs = [r["messages"] for r in rows]
        owner = list(range(len(rows)))
    elif kind == "text":
        texts = [r["text"] + eos for r in rows]
        owner = list(range(len(rows)))
    else:
        pairs = (("chosen", "rejected") if kind == "preference" else ("completion",))
        for i, r in enumerate(rows):
            for key in pairs:
                if isinstance(r["prompt"], list):
                    convs.append(r["prompt"] + r[key])
                else:
                    texts.append(r["prompt"] + r[key] + eos)
                owner.append(i)
    if convs:
        return _render(convs, tok if template else None), owner, bool(template)
    return texts, owner, False


def _render(convs: list[list[dict]], tok) -> list[str]:
    if tok is None:
        return [_msgs_text(c) for c in convs]
    try:
        out = tok.apply_chat_template(convs, tokenize=False)
        if isinstance(out, list) and len(out) == len(convs):
            return out
    except Exception:  # one odd row must not stop the whole count; retry row by row below
        pass
    res = []
    for c in convs:
        try:
            res.append(tok.apply_chat_template(c, tokenize=False))
        except Exception:
            res.append(_msgs_text(c))
    return res


# Set to False to count with one plain batch encode of every text (bench/bench_data.py measures both).
FAST_TOKEN_COUNT = True
# Where a text may be cut into pieces that tokenize on their own: single spaces (the space starts
# the next piece, as byte-level BPE pre-tokenizers attach it to the following word), and, tried
# first, single newlines too. Rows with whitespace runs are encoded whole.
_PIECE_PATTERNS = (re.compile(r" ?[^ \n]+|\n"), re.compile(r" ?[^ ]+"))
_ODD_WS = ("  ", " \n", "\n ", "\n\n", "\t", "\r", "\x0b", "\x0c", "\x85", "\xa0", "\u3000")


def _count_tokens(tok, texts: list[str], add_special_tokens: bool) -> list[int]:
    # The Rust tokenizer directly: no Python lists of ids, and it uses every core.
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None and (backend.truncation is not None or backend.padding is not None):
        backend = None  # left configured by an earlier call; counts would be cut or padded
    if backend is not None and FAST_TOKEN_COUNT and len(texts) >= 2000:
        counts = _count_by_pieces(backend, texts, add_special_tokens)
        if counts is not None:
            return counts
    return _count_whole(tok, backend, texts, add_special_tokens)


def _count_whole(tok, backend, texts: list[str], add_special_tokens: bool) -> list[int]:
    out: list[int] = []
    step = 8192
    for k in range(0, len(texts), step):
        part = texts[k:k + step]
        if backend is not None:
            encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch  # no offsets
            out.extend(len(e) for e in encode(part, add_special_tokens=add_special_tokens))
        else:
            ids = tok(part, add_special_tokens=add_special_tokens, return_attention_mask=False,
                      truncation=False)["input_ids"]
            out.extend(len(x) for x in ids)
    return out


def _piece_countable(backend) -> bool:
    """Byte-level BPE (GPT-2, Llama 3, Qwen, the built-in model): tokens never cross a pre-token
    boundary, so a text's count is the sum of its pieces' counts. Added tokens that swallow the
    spaces around them (lstrip/rstrip) or BPE dropout would break that."""
    try:
        if type(backend.model).__name__ != "BPE" or getattr(backend.model, "dropout", None):
            return False
        if "ByteLevel" not in repr(backend.pre_tokenizer):
            return False
        return not any(t.lstrip or t.rstrip or t.single_word
                       for t in backend.get_added_tokens_decoder().values())
    except Exception:  # an unfamiliar tokenizer: count the plain way
        return False


def _count_by_pieces(backend, texts: list[str], add_special_tokens: bool) -> list[int] | None:
    """Exact token counts from the counts of unique pieces (words with their leading space).

    Natural text repeats a small vocabulary of words, so encoding each unique piece once and
    summing does a fraction of the tokenizer's work (3-4x fewer CPU seconds on the bench's chat
    rows). A sample of whole texts is encoded the plain way and must agree exactly, else None
    (the caller then counts every text whole)."""
    if not _piece_countable(backend):
        return None
    encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
    extra = backend.num_special_tokens_to_add(False) if add_special_tokens else 0
    odd = [i for i, s in enumerate(texts) if not s or s[-1] == " " or any(w in s for w in _ODD_WS)]
    odd_set = set(odd)
    step = max(1, len(texts) // 200)
    sample = [i for i in range(0, len(texts), step) if i not in odd_set][:200]
    truth = [len(e) for e in encode([texts[i] for i in sample], add_special_tokens=add_special_tokens)]
    for pattern in _PIECE_PATTERNS:
        findall = pattern.findall
        if [sum(len(e) for e in encode(findall(texts[i]), add_special_tokens=False)) + extra
                for i in sample] != truth:
            continue  # this tokenizer joins pieces across these boundaries: try coarser ones
        with _gc_paused():
            pieces = [None if i in odd_set else findall(s) for i, s in enumerate(texts)]
            vocab_set: set[str] = set()
            for p in pieces:
                if p is not None:
                    vocab_set.update(p)
            vocab = list(vocab_set)
            lookup = dict(zip(vocab, (len(e) for e in encode(vocab, add_special_tokens=False))))
            get = lookup.__getitem__
            counts = [sum(map(get, p)) + extra if p is not None else 0 for p in pieces]
        if odd:
            for i, n in zip(odd, _count_whole(None, backend, [texts[i] for i in odd],
                                              add_special_tokens)):
                counts[i] = n
        return counts
    return None


def _token_lengths(rows: list[dict], kind: str, tokenizer=None) -> tuple[list[int], bool]:
    """Tokens per row (preference: the longer of prompt+chosen and prompt+rejected), and whether
    they are approximate (no tokenizer: characters / 4)."""
    tok = _get_tokenizer(tokenizer)
    texts, owner, chat = _length_texts(rows, kind, tok)
    if tok is None:
        counts = [math.ceil(len(s) / 4) for s in texts]
    else:
        unique = list(dict.fromkeys(texts))  # repeated rows are tokenized once
        n = _count_tokens(tok, unique, add_special_tokens=not chat)
        lookup = dict(zip(unique, n))
        counts = [lookup[s] for s in texts]
    lengths = [0] * len(rows)
    for o, c in zip(owner, counts):
        if c > lengths[o]:
            lengths[o] = c
    return lengths, tok is None


def token_stats(rows: list[dict], kind: str, tokenizer=None) -> dict:
    """{"count", "total", "mean", "p50", "p95", "max", "histogram": {"edges", "counts"},
    "approximate"}. Without a tokenizer, tokens are estimated as characters / 4."""
    lengths, approx = _token_lengths(rows, kind, tokenizer)
    return _stats(lengths, approx)


def _stats(lengths: list[int], approximate: bool) -> dict:
    import numpy as np
    if not lengths:
        return {"count": 0, "total": 0, "mean": 0.0, "p50": 0, "p95": 0, "max": 0,
                "histogram": {"edges": [], "counts": []}, "approximate": approximate}
    arr = np.asarray(lengths, dtype=np.int64)
    lo, hi = int(arr.min()), int(arr.max())
    width = max(1, math.ceil((hi - lo + 1) / 20))  # whole-token bins read better than 10.1..11.1
    edges = np.arange(lo, hi + width + 1, width)
    counts, edges = np.histogram(arr, bins=edges)
    return {
        "count": int(len(arr)), "total": int(arr.sum()), "mean": round(float(arr.mean()), 1),
        "p50": int(np.percentile(arr, 50)), "p95": int(np.percentile(arr, 95)), "max": hi,
        "histogram": {"edges": [int(e) for e in edges], "counts": counts.tolist()},
        "approximate": approximate,
    }


# =============================================================================================
# Split


def split_records(rows: list[dict], val_ratio: float = DEFAULT_VAL_RATIO, seed: int = DEFAULT_SEED,
                  stratify_key: str | None = None) -> tuple[list[dict], list[dict]]:
    """Seeded split into (train, validation), both in their original order.

    At least one validation row when val_ratio > 0 and there are 2+ rows; with stratify_key each
    value of that field keeps its share in both parts."""
    if not isinstance(val_ratio, (int, float)) or not 0 <= val_ratio < 1:
        raise DatasetError(f"val_ratio must be at least 0 and below 1, got {val_ratio!r}",
                           field="val_ratio")
    n = len(rows)
    if n == 0 or val_ratio == 0:
        return list(rows), []
    n_val = min(n - 1, max(1, round(n * val_ratio))) if n >= 2 else 0
    rng = random.Random(seed)
    if stratify_key is None:
        order = list(range(n))
        rng.shuffle(order)
        val_idx = set(order[:n_val])
    else:
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            v = r.get(stratify_key)
            key = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
            groups.setdefault(key, []).append(i)
        # Largest-remainder allocation so the shares add up to exactly n_val.
        quotas = {k: len(g) * n_val / n for k, g in groups.items()}
        take = {k: int(q) for k, q in quotas.items()}
        rest = n_val - sum(take.values())
        for k in sorted(groups, key=lambda k: (-(quotas[k] - take[k]), k))[:rest]:
            take[k] += 1
        val_idx = set()
        for k in sorted(groups):
            g = groups[k][:]
            rng.shuffle(g)
            val_idx.update(g[:take[k]])
    train = [r for i, r in enumerate(rows) if i not in val_idx]
    val = [r for i, r in enumerate(rows) if i in val_idx]
    return train, val


# =============================================================================================
# Inspect, prepare, load


def inspect_dataset(source: str, *, fmt: str | None = None, mapping: dict | None = None,
                    tokenizer=None, max_seq_len: int | None = None,
                    max_bytes: int | None = None, min_examples: int | None = None) -> dict:
    """Everything the Data tab shows about a dataset, JSON-serialisable.

    Keys: source, format, confidence, evidence, kind, rows (records read), rows_valid (rows that
    convert), columns, mapping, issues, token_stats, preview (first 3 canonical rows),
    quality_score (0-100), quality_reasons, field_stats (chars per field), labels (classification
    and KTO label counts, else None), requirement ({min_examples, have, reason}) and
    meets_requirement, trained_tokens (share of tokens that carry loss, with a tokenizer) and
    hint (how to map columns when the format is unknown). Unreadable input raises DatasetError; a
    readable file in no known format returns format "unknown" with the columns found.
    tokenizer: a tokenizer object, a model id/path, or None (token counts are then estimated).
    min_examples: the size the plan needs (default SFT_MIN_EXAMPLES, the decision tree's 1,000).
    """
    records = load_records(source, max_bytes=max_bytes)
    name = _display_name(source)
    columns = _columns(records)
    if mapping:
        mapping = {k: v for k, v in mapping.items() if v}
        records = _apply_mapping(records, mapping, fmt, columns, name)
    det = detect_format(records)
    if fmt is not None:
        if fmt not in FORMATS:
            raise DatasetError(f"unknown format {fmt!r}; supported formats: {', '.join(FORMATS)}",
                               file=name, field="format")
        fits = sum(1 for r in records if _row_format(r)[0] == fmt)
        evidence = [f"format set to {fmt}; {fits}/{len(records)} rows fit it on their own"]
        if det.format not in (fmt, "unknown"):
            evidence.append(f"detection would have said {det.format} ({det.confidence:.0%})")
        confidence = round(fits / len(records), 4)
    else:
        fmt, confidence, evidence = det.format, det.confidence, det.evidence
    result: dict[str, Any] = {
        "source": str(source), "format": fmt, "confidence": confidence, "evidence": evidence,
        "kind": None, "rows": len(records), "rows_valid": 0, "columns": columns,
        "mapping": {}, "issues": [], "token_stats": None,
        "preview": [], "quality_score": 0, "quality_reasons": [],
        "field_stats": {}, "labels": None, "trained_tokens": None, "hint": None,
    }
    if fmt == "unknown":
        result["preview"] = _jsonable(_truncate(records[:3]))
        result["quality_reasons"] = list(det.evidence) + [
            "pick a format and map its fields to your columns"]
        result["hint"] = mapping_hint(records, columns)
        result.update(_requirement(0, min_examples))
        return result
    # The columns each canonical field was read from, so the UI can prefill its mapping controls.
    resolved = _resolve_columns(records, fmt, det)
    result["mapping"] = {k: v for k, v in resolved.items() if v in columns}
    if mapping:
        result["mapping"].update(mapping)
    rows, kind, skipped = to_canonical(records, fmt, source=name or "", on_error="skip",
                                       return_skipped=True)
    tally = _Tally()
    for e in skipped:
        tally.add(e.rule or "invalid_row", f"row {e.row}: {e.field + ': ' if e.field else ''}"
                                           f"{e.detail}")
    tok = _get_tokenizer(tokenizer)
    dropped = {e.row for e in skipped}
    origin = [i for i in range(1, len(records) + 1) if i not in dropped]
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=1) as pool:
        # The Rust tokenizer releases the GIL, so counting tokens in a thread overlaps with the
        # pure-Python checks below; _clean waits for the lengths only at its too_long step.
        pending = pool.submit(_token_lengths, rows, kind, tok)
        issues = _clean(rows, kind, lengths=(lambda: pending.result()[0]) if tok is not None
                        else None, max_seq_len=max_seq_len, tally=tally, row_numbers=origin)
        lengths, approx = pending.result()
    stats = _stats(lengths, approx)
    labels = _label_counts(rows, fmt, kind)
    score, reasons = _quality(len(records), len(rows), confidence, issues, stats, max_seq_len,
                              labels)
    result.update({"kind": kind, "rows_valid": len(rows), "issues": issues, "token_stats": stats,
                   "preview": _jsonable(_truncate(rows[:3])), "quality_score": score,
                   "quality_reasons": reasons, "field_stats": field_stats(rows, kind),
                   "labels": labels})
    result.update(_requirement(len(rows), min_examples))
    if tok is not None:
        result["trained_tokens"] = trained_token_share(rows, kind, tok, max_seq_len=max_seq_len)
    return result


def mapping_hint(records: list[dict], columns: list[str] | None = None) -> str:
    """One sentence for an "unknown" dataset: the columns found and a mapping to try."""
    columns = columns if columns is not None else _columns(records)
    sample = records[:200]
    texty = [c for c in columns if sum(isinstance(r.get(c), str) for r in sample) > len(sample) / 2]
    found = ", ".join(columns) or "(none)"
    if len(texty) >= 2:
        example = (f"e.g. format prompt_completion with prompt={texty[0]}, "
                   f"completion={texty[1]}")
    elif len(texty) == 1:
        example = f"e.g. format text with text={texty[0]}"
    else:
        example = "e.g. instruction=<question column>, output=<answer column>"
    return (f"Columns found: {found}. Pick a format and map its fields to these columns "
            f"(field=column), {example}.")


def field_stats(rows: list[dict], kind: str) -> dict[str, dict]:
    """Characters per field (per role for chats): {"field": {"count", "mean_chars", "max_chars",
    "empty_share"}}."""
    acc: dict[str, list[int]] = {}
    empty: dict[str, int] = {}
    for row in rows:
        for _, text, role in _fields(row, kind):
            n = len(text.strip())
            acc.setdefault(role, []).append(n)
            if n == 0:
                empty[role] = empty.get(role, 0) + 1
    out = {}
    for role, ns in acc.items():
        out[role] = {"count": len(ns), "mean_chars": round(sum(ns) / len(ns), 1),
                     "max_chars": max(ns), "empty_share": round(empty.get(role, 0) / len(ns), 4)}
    return out


def _label_counts(rows: list[dict], fmt: str, kind: str) -> dict | None:
    key = "completion" if fmt == "classification" else ("label" if kind == "kto" else None)
    if key is None:
        return None
    counts: dict[str, int] = {}
    for r in rows:
        v = r.get(key)
        v = str(v).lower() if isinstance(v, bool) else str(v)
        counts[v] = counts.get(v, 0) + 1
    return {"field": "label", "counts": dict(sorted(counts.items(), key=lambda kv: -kv[1]))}


def _requirement(n_rows: int, min_examples: int | None) -> dict:
    need = SFT_MIN_EXAMPLES if min_examples is None else int(min_examples)
    if need < 0:
        raise DatasetError(f"min_examples must be 0 or more, got {min_examples!r}",
                           field="min_examples")
    ok = n_rows >= need
    if ok:
        reason = f"{n_rows} usable rows ≥ {need} needed"
    elif n_rows >= LORA_MIN_EXAMPLES:
        reason = (f"{n_rows} usable rows < {need} needed; enough for a small LoRA adapter "
                  f"(minimum {LORA_MIN_EXAMPLES}), or add rows (augmentation helps)")
    else:
        reason = (f"{n_rows} usable rows < {need} needed, and below the LoRA minimum of "
                  f"{LORA_MIN_EXAMPLES}: collect or generate more data")
    return {"meets_requirement": ok,
            "requirement": {"min_examples": need, "have": n_rows, "reason": reason}}


TRAINED_SHARE_WARN = 0.05


def trained_token_share(rows: list[dict], kind: str, tokenizer, *, max_seq_len: int | None = None,
                        max_rows: int = 2000) -> dict:
    """How many tokens carry loss, through finetune.tokenize.tokenize_rows (the trainer's own
    masking). Datasets over max_rows are measured on evenly spaced rows; when that sample trains
    nothing, every row is checked before saying so. status: ok, low (< 5%), none, or
    not_applicable (preference/KTO rows are not trained by SFT)."""
    from .tokenize import TokenizeError, tokenize_rows
    tok = _get_tokenizer(tokenizer)
    base = {"rows": len(rows), "rows_checked": 0, "sampled": False, "tokens": 0,
            "trained_tokens": 0, "share": None, "rows_without_trained_tokens": 0}
    if kind not in ("messages", "prompt_completion", "text"):
        return {**base, "status": "not_applicable",
                "message": f"{kind} rows are trained by DPO/KTO, not by masking tokens"}
    step = max(1, math.ceil(len(rows) / max_rows))
    sample = rows[::step]
    try:
        _, summ = tokenize_rows(tok, sample, kind, max_seq_len)
        if summ["trained_tokens"] == 0 and step > 1:
            sample, step = rows, 1
            _, summ = tokenize_rows(tok, rows, kind, max_seq_len)
    except TokenizeError as e:
        return {**base, "status": "none", "share": 0.0,
                "message": f"no token would be trained: {e}"}
    share = summ["trained_share"]
    out = {**base, "rows_checked": len(sample), "sampled": step > 1, "tokens": summ["tokens"],
           "trained_tokens": summ["trained_tokens"], "share": round(share, 4),
           "rows_without_trained_tokens": summ["rows_without_trained_tokens"],
           "notes": summ["notes"]}
    where = f" (measured on {len(sample)} of {len(rows)} rows)" if step > 1 else ""
    if summ["trained_tokens"] == 0:
        cut = f" within max_seq_len {max_seq_len}" if max_seq_len else ""
        out.update(status="none", message=(
            f"no token would be trained{cut}: every label is masked. Rows must end with an "
            "assistant answer (or a completion) that fits in the sequence length"))
    elif share < TRAINED_SHARE_WARN:
        out.update(status="low", message=(
            f"only {share:.1%} of tokens are trained{where}; most compute goes to prompts. "
            "Shorter prompts/system messages or a longer max_seq_len help"))
    else:
        out.update(status="ok", message=f"{share:.1%} of tokens are trained{where}")
    if summ["rows_without_trained_tokens"] and out["status"] != "none":
        out["message"] += (f"; {summ['rows_without_trained_tokens']} rows train nothing and "
                           "will be skipped")
    return out


def _quality(n_records: int, n_rows: int, confidence: float, issues: list[dict], stats: dict,
             max_seq_len: int | None, labels: dict | None = None) -> tuple[int, list[str]]:
    """A 0-100 score with one reason per deduction, so the number is never a mystery."""
    score = 100.0
    reasons = []
    counts = {i["rule"]: i["count"] for i in issues}
    total = max(1, n_records)

    def deduct(points: float, why: str) -> None:
        nonlocal score
        points = round(points)
        if points > 0:
            score -= points
            reasons.append(f"-{points}: {why}")

    if confidence < 1:
        deduct((1 - confidence) * 40, f"only {confidence:.0%} of rows share one format")
    bad = counts.get("invalid_row", 0) + counts.get("empty_field", 0) + counts.get("role_order", 0)
    if bad:
        deduct(min(40, 100 * bad / total), f"{bad} rows are unusable or have empty fields")
    weights = {"exact_duplicate": (50, 25, "exact duplicates"),
               "near_duplicate": (30, 15, "near-duplicates"),
               "whitespace": (10, 5, "whitespace problems"),
               "too_long": (40, 20, f"longer than max_seq_len ({max_seq_len})")}
    for rule, (w, cap, what) in weights.items():
        if counts.get(rule):
            deduct(min(cap, max(1, w * counts[rule] / total)), f"{counts[rule]} rows: {what}")
    if counts.get("pii"):
        deduct(min(20, 5 + 50 * counts["pii"] / total),
               f"{counts['pii']} rows contain personal data or secrets")
    if n_rows < 10:
        deduct(30, f"only {n_rows} usable rows; fine-tuning needs at least tens, ideally hundreds")
    elif n_rows < 100:
        deduct(10, f"{n_rows} usable rows is small; a few hundred or more works better")
    if stats.get("count") and stats.get("mean", 0) < 3:
        deduct(10, "rows are very short (under 3 tokens on average)")
    if labels and len(labels["counts"]) > 1:
        c = list(labels["counts"].values())
        if max(c) >= 10 * min(c):
            deduct(5, f"labels are imbalanced ({max(c)} vs {min(c)} rows)")
    elif labels and n_rows >= 10:
        deduct(10, "every row has the same label; nothing to tell apart")
    if not reasons:
        reasons.append("no problems found")
    return max(0, min(100, int(score))), reasons


def _truncate(obj: Any, n: int = 300) -> Any:
    if isinstance(obj, str):
        return obj if len(obj) <= n else obj[:n] + "…"
    if isinstance(obj, list):
        return [_truncate(x, n) for x in obj]
    if isinstance(obj, dict):
        return {k: _truncate(v, n) for k, v in obj.items()}
    return obj


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str, ensure_ascii=False))


def _display_name(source: str) -> str:
    source = str(source)
    if source.startswith(("builtin:", "hub:")):
        return source
    return os.path.basename(source.rstrip("/")) or source


def _slug(text: str) -> str:
    text = str(text)
    if not text.startswith(("builtin:", "hub:")):
        text = Path(text).stem or text
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    return slug[:80] or "dataset"


def _stratify_key(fmt: str, kind: str) -> str | None:
    # Classification labels and KTO's good/bad flag should keep their shares in both splits.
    if fmt == "classification":
        return "completion"
    if kind == "kto":
        return "label"
    return None


def prepare_dataset(source: str, out_dir: str | None = None, *, val_ratio: float = DEFAULT_VAL_RATIO,
                    seed: int = DEFAULT_SEED, fmt: str | None = None, mapping: dict | None = None,
                    name: str | None = None, on_error: Literal["raise", "skip"] = "raise",
                    max_bytes: int | None = None, mask_pii: bool = False,
                    dedupe: Literal["exact", "near"] | None = None, tokenizer=None,
                    max_seq_len: int | None = None) -> dict:
    """Load, convert and split a dataset into out_dir/{train.jsonl, validation.jsonl, meta.json}.

    out_dir defaults to FINETUNE_HOME/datasets/<name or a slug of the source>. The folder appears
    whole or not at all: files are written to a temporary sibling folder that is renamed into
    place (replacing an earlier one). mask_pii replaces e-mail addresses, phone numbers and keys
    with [EMAIL], [PHONE], [SECRET]; dedupe="exact" drops repeated rows, "near" also rows at least
    NEAR_DUP_THRESHOLD similar to an earlier one. With a tokenizer, a dataset in which no token
    would be trained is refused. Returns {"dir", "train_path", "validation_path", "format", "kind",
    "rows_train", "rows_validation", "cleaning"}; meta.json holds the same "cleaning" counts.
    """
    if name is not None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name) or ".." in name:
            raise DatasetError(f"dataset name {name!r} must be letters, digits, '.', '_' or '-' "
                               "(no slashes)", field="name")
    if not isinstance(val_ratio, (int, float)) or not 0 <= val_ratio < 1:
        raise DatasetError(f"val_ratio must be at least 0 and below 1, got {val_ratio!r}",
                           field="val_ratio")
    if dedupe in ("", "none", "off"):
        dedupe = None
    if dedupe not in (None, "exact", "near"):
        raise DatasetError(f"dedupe must be 'exact', 'near' or None, got {dedupe!r}", field="dedupe")
    records = load_records(source, max_bytes=max_bytes)
    display = _display_name(source)
    if fmt is None:
        if mapping:
            mapped = _apply_mapping(records, {k: v for k, v in mapping.items() if v}, None,
                                    _columns(records), display)
            fmt_used = detect_format(mapped).format
        else:
            fmt_used = detect_format(records).format
    else:
        fmt_used = fmt
    rows, kind, skipped = to_canonical(records, fmt, mapping, source=display, on_error=on_error,
                                       return_skipped=True)
    if not rows:
        raise DatasetError("no usable rows after conversion", file=display)
    if fmt_used == "unknown":
        fmt_used = fmt or "unknown"
    cleaning: dict[str, Any] = {"skipped_invalid": len(skipped)}
    if mask_pii:
        rows, cleaning["pii_masked"] = mask_pii_rows(rows, kind)
    if dedupe:
        rows, removed = dedupe_rows(rows, kind, near=dedupe == "near")
        cleaning["duplicates_removed"] = removed
        if not rows:
            raise DatasetError("no rows left after removing duplicates", file=display)
    if tokenizer is not None:
        trained = trained_token_share(rows, kind, tokenizer, max_seq_len=max_seq_len)
        if trained["status"] == "none":
            raise DatasetError(f"refusing to save: {trained['message']}", file=display)
        cleaning["trained_share"] = trained["share"]
    strat = _stratify_key(fmt_used, kind)
    train, val = split_records(rows, val_ratio=val_ratio, seed=seed, stratify_key=strat)

    if out_dir is None:
        from .paths import datasets_dir
        out = datasets_dir() / (name or _slug(source))
    else:
        out = Path(out_dir).expanduser()
    meta = {
        "source": str(source), "format": fmt_used, "kind": kind,
        "counts": {"train": len(train), "validation": len(val), "skipped": len(skipped)},
        "seed": seed, "val_ratio": val_ratio, "stratify_key": strat,
        "mapping": dict(mapping or {}), "cleaning": cleaning,
    }
    out = write_prepared(out, train, val, meta)
    return {"dir": str(out), "train_path": str(out / "train.jsonl"),
            "validation_path": str(out / "validation.jsonl"), "format": fmt_used, "kind": kind,
            "rows_train": len(train), "rows_validation": len(val), "cleaning": cleaning}


def write_prepared(out: str | os.PathLike, train: list[dict], val: list[dict], meta: dict) -> Path:
    """Write train.jsonl, validation.jsonl and meta.json (plus a "created" time) into `out`,
    atomically: a temporary sibling folder renamed into place, the old folder restored on failure."""
    out = Path(out).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    old = None
    try:
        _write_jsonl(tmp / "train.jsonl", train)
        _write_jsonl(tmp / "validation.jsonl", val)
        meta = {**meta, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        from .paths import atomic_write_json
        atomic_write_json(tmp / "meta.json", meta)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}-{time.monotonic_ns()}")
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            os.replace(old, out)  # put the earlier version back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


_PII_TOKENS = {"email": "[EMAIL]", "phone": "[PHONE]", "secret": "[SECRET]"}


def mask_pii_text(text: str) -> tuple[str, dict[str, int]]:
    """Replace e-mail addresses, phone numbers (9+ digits) and API keys/private-key headers with
    [EMAIL], [PHONE], [SECRET]; return (text, counts per kind)."""
    counts: dict[str, int] = {}

    def sub(m: re.Match) -> str:
        what = m.lastgroup
        if what == "phone" and sum(c.isdigit() for c in m.group()) < 9:
            return m.group()
        counts[what] = counts.get(what, 0) + 1
        return _PII_TOKENS[what]

    return _PII.sub(sub, text), counts


def mask_pii_rows(rows: list[dict], kind: str) -> tuple[list[dict], dict]:
    """Masked copies of canonical rows and {"rows", "email", "phone", "secret"} counts."""
    total = {"rows": 0, "email": 0, "phone": 0, "secret": 0}
    candidates = _pii_candidates([_row_text(r, kind) for r in rows])

    def mask(v: Any, found: dict) -> Any:
        if isinstance(v, str):
            new, c = mask_pii_text(v)
            for k, n in c.items():
                found[k] = found.get(k, 0) + n
            return new
        if isinstance(v, list):
            return [mask(m, found) for m in v]
        if isinstance(v, dict):
            return {k: (mask(x, found) if k == "content" else x) for k, x in v.items()}
        return v

    out = []
    for i, row in enumerate(rows):
        if i not in candidates:
            out.append(row)
            continue
        found: dict[str, int] = {}
        new = {k: (mask(v, found) if k in _KIND_FIELDS[kind] else v) for k, v in row.items()}
        if found:
            total["rows"] += 1
            for k, n in found.items():
                total[k] += n
        out.append(new)
    return out, total


def dedupe_rows(rows: list[dict], kind: str, *, near: bool = False) -> tuple[list[dict], dict]:
    """Drop rows that repeat an earlier row exactly and, with near=True, rows whose word
    3-shingles are at least NEAR_DUP_THRESHOLD similar to an earlier kept row (the same MinHash
    test clean_report uses). Returns (kept rows in order, {"exact": n, "near": m})."""
    seen: set[str] = set()
    keep = []
    for i, r in enumerate(rows):
        t = _row_text(r, kind)
        if t not in seen:
            seen.add(t)
            keep.append(i)
    removed = {"exact": len(rows) - len(keep), "near": 0}
    if near and len(keep) > 1:
        texts = [_row_text(rows[i], kind, skip_system=True) for i in keep]
        drop = {later for later, _, _ in _near_duplicates(texts)}
        removed["near"] = len(drop)
        keep = [i for j, i in enumerate(keep) if j not in drop]
    return [rows[i] for i in keep], removed


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, default=str))
            f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def load_prepared(dir_or_source: str, *, val_ratio: float = DEFAULT_VAL_RATIO,
                  seed: int = DEFAULT_SEED) -> tuple[list[dict], list[dict], str]:
    """(train_rows, validation_rows, kind) from a prepared folder (one with meta.json), a prepared
    dataset's name under FINETUNE_HOME/datasets, or any raw source (converted, then split with
    val_ratio and seed; a prepared folder keeps its own split)."""
    src = str(dir_or_source)
    from .sources import check_source
    check_source(src)
    p = Path(src).expanduser()
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", src) and ".." not in src:
        from .paths import datasets_dir
        p = datasets_dir() / src  # a bare name is a saved dataset, never a file in the working folder
    if p.is_dir():
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
            text = _decode(fp.read_bytes(), fname)
            out.append(_load_jsonl(text, fname) if text.strip() else [])
        return out[0], out[1], kind
    records = load_records(src)
    det_fmt = detect_format(records).format
    rows, kind = to_canonical(records, source=_display_name(src))
    train, val = split_records(rows, val_ratio, seed, stratify_key=_stratify_key(det_fmt, kind))
    return train, val, kind
