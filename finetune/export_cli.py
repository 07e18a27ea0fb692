"""`finetune export`: a run's merged weights and/or GGUF (+ Ollama Modelfile) in a local folder.

    python -m finetune export RUN_ID [--merged] [--gguf f16|bf16|q8_0|q4_k_m] --out DIR [--json]

Prints export_run's result: {"out", "files", "agreement", "modelfile", ...}. No Hub account needed.
"""

from __future__ import annotations

import argparse

from .gguf_export import QTYPES


def cmd_export(a) -> dict:
    from .export import export_run
    from .hub_cli import stderr_progress

    return export_run(a.run_id, a.out, merged=a.merged, gguf=a.gguf, check=not a.no_check, system=a.system,
                      progress=stderr_progress)


def add_commands(sub, js: argparse.ArgumentParser) -> None:
    """Add `export` to the main parser's subcommands (`sub`)."""
    s = sub.add_parser("export", parents=[js], help="write a run's merged weights and/or a GGUF + Ollama Modelfile")
    s.add_argument("run_id")
    s.add_argument("--merged", action="store_true", help="write merged safetensors (+ tokenizer, config) in OUT/merged")
    s.add_argument("--gguf", choices=list(QTYPES), default=None, help="write a GGUF of this type and a Modelfile")
    s.add_argument("--out", required=True, help="the folder to write into (created if needed)")
    s.add_argument("--system", default=None, help="a system prompt for the Modelfile")
    s.add_argument("--no-check", action="store_true", help="skip loading the files back to compare them")
    s.set_defaults(fn=cmd_export)
