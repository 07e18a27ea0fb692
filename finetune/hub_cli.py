"""The Hub's CLI commands, kept apart from cli.py so that its parser can change freely:

    python -m finetune push RUN_ID --repo OWNER/NAME [--public] [--merged] [--gguf q8_0] --json
    python -m finetune data push DIR --repo OWNER/NAME [--public] --json
    python -m finetune deploy --space OWNER/NAME [--private] --json

Each prints one JSON object with `url`, `commit` and `files`. The token comes from HF_TOKEN or
`hf auth login` (huggingface_hub's own lookup); it is never printed.
"""

from __future__ import annotations

import argparse


def cmd_push(a) -> dict:
    from .hub import push_run

    return push_run(a.run_id, a.repo, private=not a.public, merged=a.merged, gguf=a.gguf,
                    progress=stderr_progress)


def cmd_data_push(a) -> dict:
    from .hub import push_dataset

    return push_dataset(a.path, a.repo, private=not a.public, progress=stderr_progress)


def cmd_deploy(a) -> dict:
    from .hub import deploy_space

    return deploy_space(a.space, private=a.private, root=a.root)


def stderr_progress(frac: float, msg: str) -> None:
    import sys

    print(f"[{int(frac * 100):3d}%] {msg}", file=sys.stderr, flush=True)


def add_commands(sub, js: argparse.ArgumentParser) -> None:
    """Add push, deploy and `data push` to the main parser's subcommands (`sub`)."""
    s = sub.add_parser("push", parents=[js], help="push a run's adapter (or model), card, eval report to the Hub")
    s.add_argument("run_id")
    s.add_argument("--repo", required=True, help="OWNER/NAME of the model repo (created private unless --public)")
    s.add_argument("--public", action="store_true", help="make a new repo public (default: private)")
    s.add_argument("--merged", action="store_true", help="also push merged weights (safetensors) in merged/")
    s.add_argument("--gguf", choices=["f16", "bf16", "q8_0", "q4_k_m"], default=None,
                   help="also push a GGUF file (Llama, Mistral, Qwen2/3, Gemma 2/3, Phi-3)")
    s.set_defaults(fn=cmd_push)

    s = sub.add_parser("deploy", parents=[js], help="create or update the Space with the app's files")
    s.add_argument("--space", required=True, help="OWNER/NAME of the Space")
    s.add_argument("--private", action="store_true", help="make a new Space private")
    s.add_argument("--root", default=None, help=argparse.SUPPRESS)  # the app's folder (tests)
    s.set_defaults(fn=cmd_deploy)

    data = sub.choices.get("data")
    dsub = next((act for act in getattr(data, "_actions", []) if isinstance(act, argparse._SubParsersAction)), None)
    if dsub is not None:
        d = dsub.add_parser("push", parents=[js], help="push a prepared dataset to a Hub dataset repo with a card")
        d.add_argument("path", help="a prepared dataset folder (or a saved dataset's name)")
        d.add_argument("--repo", required=True, help="OWNER/NAME of the dataset repo (created private unless --public)")
        d.add_argument("--public", action="store_true")
        d.set_defaults(fn=cmd_data_push)
