"""The command line: `python -m finetune {plan,calibrate,data,train,status,stop,eval,compare,runs} ... [--json]`.

Every command prints one JSON object with --json (errors too: {"error": ...}, exit code 2), and a
short human summary without it. The function signatures of the engine are the CLI: each command
only parses arguments and calls one engine function.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _kv(items: list[str] | None) -> dict[str, str]:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise ValueError(f"--map {it!r}: expected column=field")
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def cmd_plan(a) -> dict:
    from .plan import PlanRequest, plan

    req = PlanRequest(model=a.model, method=a.method, seq_len=a.seq_len, batch_size=a.batch_size,
                      hardware=a.hardware, examples=a.examples, task=a.task or "",
                      has_preferences=a.preferences, **({"task_type": a.task_type} if a.task_type else {}))
    return plan(req)


def _tokenizer_for(model: str | None):
    if not model:
        return None
    from .modeling import load_tokenizer

    return load_tokenizer(model)


def cmd_data(a) -> dict:
    from . import data

    if a.data_cmd == "augment":
        return data.augment_dataset(a.path, a.out, method=a.method, n=a.n, seed=a.seed, model=a.model)
    if a.data_cmd == "inspect":
        return data.inspect_dataset(a.path, fmt=a.format, mapping=_kv(a.map) or None,
                                    tokenizer=_tokenizer_for(a.model), max_seq_len=a.max_seq_len)
    return data.prepare_dataset(a.path, a.out, val_ratio=a.val_ratio, seed=a.seed, fmt=a.format,
                                mapping=_kv(a.map) or None)


def cmd_train(a) -> dict:
    from . import runs

    if a.run:  # the child process
        from .train import train_run

        code = train_run(a.run, resume=a.resume)
        from .paths import read_json

        st = read_json(f"{a.run}/status.json", {})
        if code:
            raise SystemExit(code)
        return st
    if a.resume_id:
        runs.start_run(a.resume_id, resume=True)
        return {"run_id": a.resume_id, "state": "queued", "resumed": True}
    from .config import default_run_config

    cfg = default_run_config(a.model, a.data, learning_rate=a.lr, epochs=a.epochs, max_steps=a.max_steps,
                             batch_size=a.batch_size, method=a.method)
    if a.max_seq_len:
        cfg.data.max_seq_len = a.max_seq_len
        cfg.data.__post_init__()
    run_id = runs.start_training(cfg)
    if a.wait:
        st = runs.wait(run_id, timeout_s=a.timeout_s)
        return runs.status_summary(run_id) | {"state": st.get("state")}
    return {"run_id": run_id, "state": "queued", "run_dir": str(runs.run_dir(run_id))}


def cmd_calibrate(a) -> dict:
    from .plan import calibrate

    if a.cal_cmd == "dry-run":
        return calibrate.dry_run(a.model, a.data, a.method, a.steps, a.seq_len, a.batch_size, a.lora_rank)
    run_id = a.run_id or calibrate.latest_finished_run()
    if not run_id:
        raise ValueError("no completed run yet")
    return calibrate.record_calibration(run_id) if a.record else calibrate.predicted_vs_actual(run_id)


def cmd_status(a) -> dict:
    from . import runs

    st = runs.status_summary(a.run_id)
    if not a.events:
        st.pop("events", None)
    return st


def cmd_stop(a) -> dict:
    from . import runs

    return runs.stop_run(a.run_id, force=a.force)


def cmd_runs(a) -> dict:
    from . import runs

    return {"runs": runs.list_runs()}


def cmd_eval(a) -> dict:
    from .evaluate import evaluate_run

    return evaluate_run(a.run_id, max_examples=a.max_examples)


def cmd_compare(a) -> dict:
    from .compare import compare_run, read_prompts

    return compare_run(a.run_id, read_prompts(a.prompts) if a.prompts else None, max_new_tokens=a.max_new_tokens)


def build_parser() -> argparse.ArgumentParser:
    from .builtin import DEMO_DATASET_ID, TINY_CHAT_ID

    p = argparse.ArgumentParser(prog="python -m finetune", description="Fine-Tune Studio engine")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    sub = p.add_subparsers(dest="cmd", required=True)
    js = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's own default must not overwrite `--json` given before the subcommand.
    js.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON object")

    s = sub.add_parser("plan", parents=[js], help="recommend a method and estimate memory, time and cost")
    s.add_argument("--model", default=TINY_CHAT_ID)
    s.add_argument("--method", default="auto", choices=["auto", "full", "lora", "qlora", "dora", "prefix", "dpo"])
    s.add_argument("--seq-len", type=int, default=512)
    s.add_argument("--batch-size", type=int, default=4)
    s.add_argument("--hardware", default="local")
    s.add_argument("--examples", type=int, default=1000)
    s.add_argument("--task", default="")
    s.add_argument("--task-type", default=None)
    s.add_argument("--preferences", action="store_true", help="preference pairs are available")
    s.set_defaults(fn=cmd_plan)

    s = sub.add_parser("calibrate", help="measure this machine with a dry run; check the plan against a run")
    csub = s.add_subparsers(dest="cal_cmd", required=True)
    d = csub.add_parser("dry-run", parents=[js], help="measure tokens/s and peak memory with a few real steps")
    d.add_argument("--model", "--model-id", default=TINY_CHAT_ID)
    d.add_argument("--data", "--source", default=DEMO_DATASET_ID)
    d.add_argument("--method", default="lora")
    d.add_argument("--steps", type=int, default=8)
    d.add_argument("--seq-len", type=int)
    d.add_argument("--batch-size", type=int)
    d.add_argument("--lora-rank", type=int)
    d = csub.add_parser("check", parents=[js], help="predicted vs actual duration of a finished run")
    d.add_argument("run_id", nargs="?")
    d.add_argument("--record", action="store_true", help="also write runs/<id>/calibration.json")
    s.set_defaults(fn=cmd_calibrate)

    s = sub.add_parser("data", help="inspect or prepare a dataset")
    dsub = s.add_subparsers(dest="data_cmd", required=True)
    for name in ("inspect", "prepare"):
        d = dsub.add_parser(name, parents=[js])
        d.add_argument("path")
        d.add_argument("--format", default=None)
        d.add_argument("--map", action="append", metavar="COLUMN=FIELD")
        if name == "inspect":
            d.add_argument("--model", default=None, help="count tokens with this model's tokenizer")
            d.add_argument("--max-seq-len", type=int, default=None)
        else:
            d.add_argument("--out", default=None)
            d.add_argument("--val-ratio", type=float, default=0.1)
            d.add_argument("--seed", type=int, default=42)
    d = dsub.add_parser("augment", parents=[js], help="add paraphrased or self-instruct rows (marked _generated)")
    d.add_argument("path")
    d.add_argument("--out", default=None)
    d.add_argument("--method", default="paraphrase", choices=["paraphrase", "self_instruct"])
    d.add_argument("--n", type=int, default=50)
    d.add_argument("--seed", type=int, default=42)
    d.add_argument("--model", default=TINY_CHAT_ID, help="the generator for self_instruct")
    s.set_defaults(fn=cmd_data)

    s = sub.add_parser("train", parents=[js], help="start a training run (returns its id at once)")
    s.add_argument("--model", default=TINY_CHAT_ID)
    s.add_argument("--data", default=DEMO_DATASET_ID)
    s.add_argument("--method", default="lora", choices=["lora", "qlora", "dora", "full", "prefix", "dpo"])
    s.add_argument("--lr", type=float, default=None)
    s.add_argument("--epochs", type=float, default=None)
    s.add_argument("--max-steps", type=int, default=None)
    s.add_argument("--batch-size", type=int, default=None)
    s.add_argument("--max-seq-len", type=int, default=None)
    s.add_argument("--wait", action="store_true", help="wait until the run ends")
    s.add_argument("--timeout-s", type=float, default=3600)
    s.add_argument("--resume-id", default=None, help="resume this run from its last complete checkpoint")
    s.add_argument("--run", default=None, help=argparse.SUPPRESS)  # the child process
    s.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    s.set_defaults(fn=cmd_train)

    for name, fn, helptext in (("status", cmd_status, "a run's state, step, total steps and latest loss"),
                               ("stop", cmd_stop, "stop a run cleanly (it saves first)"),
                               ("eval", cmd_eval, "base vs fine-tuned perplexity and exact match"),
                               ("compare", cmd_compare, "base and fine-tuned answers side by side")):
        s = sub.add_parser(name, parents=[js], help=helptext)
        s.add_argument("run_id")
        if name == "stop":
            s.add_argument("--force", action="store_true", help="kill it now (no final save)")
        if name == "status":
            s.add_argument("--events", action="store_true", help="include the logged events")
        if name == "eval":
            s.add_argument("--max-examples", type=int, default=200)
        if name == "compare":
            s.add_argument("--prompts", default=None, help="a file: one prompt per line, or JSONL with 'prompt'")
            s.add_argument("--max-new-tokens", type=int, default=64)
        s.set_defaults(fn=fn)
    s = sub.add_parser("runs", parents=[js], help="list runs")
    s.set_defaults(fn=cmd_runs)
    return p


def _human(obj: Any) -> str:
    if isinstance(obj, dict):
        if "report_md" in obj:
            return obj["report_md"]
        keys = [k for k in obj if not isinstance(obj[k], (list, dict))]
        return "\n".join(f"{k}: {obj[k]}" for k in keys) or json.dumps(obj, indent=2, default=str)
    return str(obj)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    want_json = getattr(args, "json", False)
    try:
        result = args.fn(args)
    except SystemExit:
        raise
    except Exception as exc:  # one clear line, never a traceback, for a user's mistake
        from .train import redact

        msg = redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        if want_json:
            print(json.dumps({"error": msg}))
        print(f"error: {msg}", file=sys.stderr)
        return 2
    print(json.dumps(result, default=str) if want_json else _human(result))
    return 0
