"""`python -m finetune ...`: see finetune/cli.py.

`train` (the training child, and the CLI that waits for a run) ends with os._exit once its output
and logs are flushed: after torch, transformers, TRL and datasets were imported, the interpreter's
own clean-up takes seconds (1-5 s measured on 2 cores) and frees nothing a run still needs (the
run folder is written and closed by then)."""

import logging
import os
import sys

from .cli import main

try:
    code = main()
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if not isinstance(exc.code, (int, type(None))):
        print(exc.code, file=sys.stderr)
if sys.argv[1:2] == ["train"]:
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code or 0)
sys.exit(code)
