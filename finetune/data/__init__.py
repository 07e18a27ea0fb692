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
    inspect_dataset(source)       -> one JSON-serialisable summary for the Data tab
    prepare_dataset(source)       -> train.jsonl, validation.jsonl, meta.json written atomically
    load_prepared(dir_or_source)  -> (train, validation, kind)
    augment_dataset(source)       -> more rows: paraphrases or self-instruct (a new prepared dataset)

Modules, bottom up (each imports only from the ones before it, so there are no import circles):
    common.py   constants, DatasetError, text views of canonical rows, small helpers
    load.py     readers with line-numbered errors, saved datasets, Hub sources, source safety
    formats.py  format detection and conversion to canonical rows
    tokens.py   token lengths and statistics, trained-token share
    quality.py  cleaning rules, PII, duplicates (MinHash LSH), the quality score
    prepare.py  split, inspect, prepare, write and load prepared datasets
    augment.py  paraphrases and self-instruct rows

Every problem with the input is a DatasetError whose message names the file, the line or row and the
field, so a user never meets `KeyError: 'text'`. torch/transformers/datasets are imported inside the
functions that need them, so importing this package is cheap.

Try it: `python -c "from finetune.data import inspect_dataset as i; print(i('builtin:demo'))"`.
"""

from .augment import augment_dataset
from .common import (
                     DEFAULT_SEED,
                     DEFAULT_VAL_RATIO,
                     FORMAT_FIELDS,
                     FORMATS,
                     GENERATED_KEY,
                     KINDS,
                     LORA_MIN_EXAMPLES,
                     MAX_FILE_BYTES,
                     NEAR_DUP_THRESHOLD,
                     SFT_MIN_EXAMPLES,
                     SUPPORTED_EXTENSIONS,
                     DatasetError,
)
from .formats import Detection, detect_format, to_canonical
from .load import hub_source, load_records, read_prepared, saved_datasets
from .prepare import (
                     field_stats,
                     inspect_dataset,
                     load_prepared,
                     mapping_hint,
                     prepare_dataset,
                     split_records,
                     write_prepared,
)
from .quality import clean_report, dedupe_rows, mask_pii_rows, mask_pii_text
from .tokens import TRAINED_SHARE_WARN, token_stats, trained_token_share

__all__ = [
    "DEFAULT_SEED", "DEFAULT_VAL_RATIO", "FORMAT_FIELDS", "FORMATS", "GENERATED_KEY", "KINDS",
    "LORA_MIN_EXAMPLES", "MAX_FILE_BYTES", "NEAR_DUP_THRESHOLD", "SFT_MIN_EXAMPLES",
    "SUPPORTED_EXTENSIONS", "DatasetError", "hub_source", "load_records", "read_prepared",
    "saved_datasets", "Detection", "detect_format", "to_canonical", "TRAINED_SHARE_WARN", "token_stats",
    "trained_token_share", "clean_report", "dedupe_rows", "mask_pii_rows", "mask_pii_text",
    "field_stats", "inspect_dataset", "load_prepared", "mapping_hint", "prepare_dataset",
    "split_records", "write_prepared", "augment_dataset",
]
