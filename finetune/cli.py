"""The command line: `finetune COMMAND ...` or `python -m finetune COMMAND ...` (the same program).

Commands: plan, calibrate, data {inspect,prepare,augment}, train, status, stop, runs, eval, diagnose,
compare, votes {export}.
`finetune --help` lists them, `finetune COMMAND --help` their options. Every command takes `--json`
and then prints exactly one JSON object on stdout (errors too: {"error": ...}, exit code 2); logs,
trainer lines and warnings go to stderr. Without --json it prints a readable summary (tables for
metrics, answers, issues and runs). A user's mistake is one line on stderr, never a traceback.

`train` takes every field of the run config as an option, generated from the config dataclasses
(finetune/config.py): the fields of TrainConfig by name (--save-steps, --grad-accum, ...), the other
sections' fields prefixed by the section (--lora-r, --lora-dropout, --data-val-ratio, ...), with the
field's help text, type and Literal choices. --model, --data, --lr and --max-seq-len are short names.

Paths on the command line are made absolute here, at the edge, so a run started from any folder
finds its data and model (the training child runs elsewhere). Each command only parses its
arguments and calls one engine function.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

# The config section whose fields need no prefix, and short names kept for the most used fields.
MAIN_SECTION = "train"
SHORT_NAMES = {("model", "model_id"): "--model", ("data", "source"): "--data",
               ("train", "learning_rate"): "--lr", ("data", "max_seq_len"): "--max-seq-len",
               ("grpo", "reward"): "--reward", ("grpo", "reward_file"): "--reward-file",
               ("grpo", "reward_weights"): "--reward-weights"}
_CFG = "cfg__"  # argparse dest prefix of generated options: cfg__<section>__<field>


# ---------------------------------------------------------------------------------------------
# Options generated from the config dataclasses


def config_sections() -> list[tuple[str, type]]:
    """(name, dataclass) of every section of RunConfig, in order; sections added later appear too."""
    from .config import RunConfig

    hints = typing.get_type_hints(RunConfig)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(RunConfig) if dataclasses.is_dataclass(hints[f.name])]


def option_name(section: str, name: str) -> str:
    flag = name if section == MAIN_SECTION or name.startswith(section + "_") else f"{section}_{name}"
    return "--" + flag.replace("_", "-")


def _none_or(conv):
    def parse(s: str):
        return None if s.strip().lower() in ("", "none", "null") else conv(s)
    parse.__name__ = getattr(conv, "__name__", "value")  # argparse names the type in its errors
    return parse


def _type_kwargs(tp) -> dict:
    """argparse keyword arguments for a field annotation: type, choices, metavar, or a bool switch."""
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0] if len(args) == 1 else str
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = list(typing.get_args(tp))
        return {"type": _none_or(type(choices[0])) if optional else type(choices[0]), "choices": choices
                + ([None] if optional else []), "metavar": "{" + ",".join(map(str, choices)) + "}"}
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin in (list, tuple):
        inner = (typing.get_args(tp) or (str,))[0]
        return {"type": inner if inner in (int, float, str) else str, "nargs": "*"}
    conv = tp if tp in (int, float, str) else str
    return {"type": _none_or(conv) if optional else conv, "metavar": {int: "N", float: "NUM"}.get(conv, "TEXT")}


def add_config_options(p: argparse.ArgumentParser) -> None:
    """One option per field of every config section (see the module docstring)."""
    for section, cls in config_sections():
        g = p.add_argument_group(f"{section} settings ({cls.__name__})")
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            flags = [option_name(section, f.name)]
            if (section, f.name) in SHORT_NAMES:
                flags.insert(0, SHORT_NAMES[(section, f.name)])
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            helptext = f.metadata.get("help", "") + f" (default: {default})"
            g.add_argument(*flags, dest=f"{_CFG}{section}__{f.name}", default=argparse.SUPPRESS,
                           help=helptext.replace("%", "%%"), **_type_kwargs(hints[f.name]))


def config_from_args(a: argparse.Namespace):
    """The RunConfig the options describe: the model's defaults, then every option given, built
    through the dataclasses (so validated) in one go."""
    from .builtin import DEMO_DATASET_ID, TINY_CHAT_ID
    from .config import build_run_config

    overrides: dict[str, dict[str, Any]] = {}
    for key, value in vars(a).items():
        if key.startswith(_CFG):
            section, name = key[len(_CFG):].split("__", 1)
            overrides.setdefault(section, {})[name] = value
    model = _abs_if_path(overrides.get("model", {}).pop("model_id", None) or TINY_CHAT_ID)
    data = _abs_if_path(overrides.get("data", {}).pop("source", None) or DEMO_DATASET_ID)
    cfg = build_run_config(model, data, overrides)
    if getattr(a, "name", None):
        cfg = dataclasses.replace(cfg, name=a.name)
    return cfg


# ---------------------------------------------------------------------------------------------
# Paths at the edge


def _abs_if_path(value: str | None) -> str | None:
    """An existing local path, made absolute (the training child and the engine may run in another
    folder); builtin:, hub: and bare names of saved datasets pass through unchanged."""
    if not value or str(value).startswith(("builtin:", "hub:")):
        return value
    p = Path(value).expanduser()
    return str(p.resolve()) if p.exists() else value


def _out_dir(out: str | None) -> tuple[str | None, str | None]:
    """--out NAME saves under FINETUNE_HOME/datasets/NAME (where a bare --data NAME finds it from any
    folder); --out PATH (with a slash, or not a plain name) writes there. Returns (out_dir, name)."""
    from .paths import is_safe_name

    if out is None:
        return None, None
    if is_safe_name(out, 100):
        return None, out
    return str(Path(out).expanduser().resolve()), None


def _kv(items: list[str] | None) -> dict[str, str]:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise ValueError(f"--map {it!r}: expected FIELD=COLUMN, e.g. instruction=question")
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip()
    return out


# ---------------------------------------------------------------------------------------------
# Commands: parse, call one engine function, return a dict


def cmd_plan(a) -> dict:
    from .plan import PlanRequest, plan

    req = PlanRequest(model=a.model, method=a.method, seq_len=a.seq_len, batch_size=a.batch_size,
                      hardware=a.hardware, examples=a.examples, task=a.task or "",
                      has_preferences=a.preferences, **({"task_type": a.task_type} if a.task_type else {}))
    return plan(req)


def cmd_calibrate(a) -> dict:
    from .plan import calibrate

    if a.cal_cmd == "dry-run":
        return calibrate.dry_run(_abs_if_path(a.model), _abs_if_path(a.data), a.method, a.steps, a.seq_len,
                                 a.batch_size, a.lora_rank)
    run_id = a.run_id or calibrate.latest_finished_run()
    if not run_id:
        raise ValueError("no completed run yet: train one first")
    return calibrate.record_calibration(run_id) if a.record else calibrate.predicted_vs_actual(run_id)


def cmd_data(a) -> dict:
    from . import data

    path = _abs_if_path(a.path)
    if a.data_cmd == "inspect":
        return data.inspect_dataset(path, fmt=a.format, mapping=_kv(a.map) or None,
                                    tokenizer=_tokenizer_for(a.model), max_seq_len=a.max_seq_len)
    out_dir, name = _out_dir(a.out)
    if a.data_cmd == "augment":
        return data.augment_dataset(path, out_dir, name=name, method=a.method, n=a.n, seed=a.seed,
                                    model=_abs_if_path(a.model))
    return data.prepare_dataset(path, out_dir, name=name, val_ratio=a.val_ratio, seed=a.seed, fmt=a.format,
                                mapping=_kv(a.map) or None, on_error="raise" if a.strict else "skip",
                                mask_pii=a.mask_pii, dedupe=a.dedupe)


def _tokenizer_for(model: str | None):
    if not model:
        return None
    from .modeling import load_tokenizer

    return load_tokenizer(_abs_if_path(model))


def cmd_train(a) -> dict:
    from . import runs

    if a.run or a.spare:  # the child process (a spare one learns its run from stdin)
        from .paths import read_json
        from .train import serve_spare, train_run

        code = serve_spare(a.spare) if a.spare else train_run(a.run, resume=a.resume, own_process=True)
        if code:
            raise SystemExit(code)
        return read_json(f"{a.run}/status.json", {}) if a.run else {}
    if getattr(a, "in_job", False):  # inside a Hugging Face Job (see jobs.py)
        from .jobs import run_in_job

        code = run_in_job(a.config_json, a.hub_repo, a.hub_data)
        if code:
            raise SystemExit(code)
        return {"state": "completed"}
    if a.resume_id:
        runs.start_run(a.resume_id, resume=True)
        return {"run_id": a.resume_id, "state": "queued", "resumed": True}
    where = _where(a)
    cfg = config_from_args(a)
    if where == "local" and cfg.train.num_processes <= 1:
        runs.warm_spare()  # the training child's imports overlap the checks below
    cfg = _plan_defaults(cfg, a, where)  # a run on Hugging Face Jobs learns with the same settings
    if where == "hf-jobs":
        from .jobs import submit

        if not a.flavor:
            raise ValueError("--flavor: Hugging Face Jobs need a flavor (e.g. a10g-small); see the Train tab's list")
        return {"run_id": submit(cfg, flavor=a.flavor, timeout=a.timeout, image=a.image)}
    _warn_memory(cfg)
    run_id = runs.start_training(cfg)
    note = runs.read_status(run_id).get("memory_note")
    if note:
        print(f"note: {note}", file=sys.stderr)
    if a.wait:
        st = runs.wait(run_id, timeout_s=a.timeout_s)
        return runs.status_summary(run_id) | {"state": st.get("state")}
    return {"run_id": run_id, "state": "queued", "run_dir": str(runs.run_dir(run_id))}


PLANNED_FIELDS = ("learning_rate", "epochs", "grad_accum")
PLANNED_METHODS = ("lora", "rslora", "dora", "qlora")


def _plan_defaults(cfg, a: argparse.Namespace, where: str = "local"):
    """A run whose learning rate, epochs and gradient accumulation were not given takes the Plan's for
    this model and dataset (size of the model, optimizer steps on this data), and its batch size too
    unless --batch-size was given or the run goes to Hugging Face Jobs (the Plan sized it for this machine;
    small data: a smaller batch, more updates per epoch); says so on stderr.
    builtin:tiny-chat keeps its own demo settings; a run with --max-steps keeps its step count."""
    from .builtin import TINY_CHAT_ID
    from .plan.calibrate import recommended_train

    given = [f for f in PLANNED_FIELDS if f"{_CFG}train__{f}" in vars(a)]
    t = cfg.train
    if given or cfg.model.model_id == TINY_CHAT_ID or t.method not in PLANNED_METHODS or t.max_steps > 0:
        return cfg
    batch_fixed = f"{_CFG}train__batch_size" in vars(a) or where != "local"  # given, or sized for another machine
    try:
        rec = recommended_train(cfg.model.model_id, cfg.data.source, t.method, seq_len=cfg.data.max_seq_len,
                                batch_size=t.batch_size, batch_fixed=batch_fixed)
    except (ValueError, OSError) as e:  # a model the planner cannot size offline, data it cannot read yet
        print(f"note: keeping the default settings; the planner could not advise ({e})", file=sys.stderr)
        return cfg
    fields = PLANNED_FIELDS + (() if batch_fixed else ("batch_size",))
    for f in fields:
        print(f"plan: {f} {rec[f]:g} ({rec['why'][f]})", file=sys.stderr)
    return dataclasses.replace(cfg, train=dataclasses.replace(t, **{f: rec[f] for f in fields}))


def _warn_memory(cfg) -> None:
    """Say on stderr when the estimate says the run will not fit here (it still starts)."""
    from .plan import estimate_run_memory

    try:
        m = estimate_run_memory(cfg.model.model_id, cfg.train.method, cfg.data.max_seq_len, cfg.train.batch_size,
                                cfg.lora.r, cfg.train.gradient_checkpointing)
    except ValueError:  # a model the planner cannot size offline
        return
    if not m["fits"]:
        print(f"note: estimated {m['vram_gb']:.1f} GB at batch {cfg.train.batch_size} will not fit in the "
              f"{m['usable_gb']} GB usable here: the checks before the run trim the batch (more accumulation, the "
              "same effective batch) or refuse the run", file=sys.stderr)


def cmd_status(a) -> dict:
    from . import runs

    st = runs.status_summary(a.run_id)
    if st.get("remote") and st.get("follower"):  # reattach to a Hugging Face job with this shell's token
        from .jobs import ensure_follower

        if ensure_follower(a.run_id):
            st = runs.status_summary(a.run_id)
    if not a.events:
        st.pop("events", None)
    return st


def cmd_stop(a) -> dict:
    from . import jobs, runs  # noqa: F401 -- jobs registers how to stop a run on Hugging Face Jobs

    return runs.stop_run(a.run_id, force=a.force)


def cmd_runs(a) -> dict:
    from . import runs

    if a.action == "delete":
        if not a.run_id:
            raise ValueError("runs delete: which run? (runs delete RUN_ID)")
        return runs.delete_run(a.run_id)
    return {"runs": runs.list_runs()}


def cmd_eval(a) -> dict:
    from .evaluate import evaluate_run

    return evaluate_run(a.run_id, max_examples=a.max_examples, max_new_tokens=a.max_new_tokens, seed=a.seed,
                        benchmarks=[_abs_if_path(b) for b in a.benchmark or []], judge=a.judge,
                        benchmark_limit=a.benchmark_limit)


def cmd_diagnose(a) -> dict:
    from .eval.diagnose import diagnose_run

    return diagnose_run(a.run_id)


def cmd_compare(a) -> dict:
    from .compare import compare_models, compare_runs, read_prompts

    prompts = read_prompts(_abs_if_path(a.prompts)) if a.prompts else None
    out = compare_models((["base"] if a.base else []) + list(a.run_ids), prompts,
                         max_new_tokens=a.max_new_tokens, seed=a.seed)
    out["runs"] = compare_runs(a.run_ids)
    return out


def cmd_votes(a) -> dict:
    from .votes import export_votes

    return export_votes(_abs_if_path(a.out))


def add_eval_parsers(sub, js) -> None:
    """eval, diagnose, compare and votes (issue 11)."""
    s = sub.add_parser("eval", parents=[js], help="base vs fine-tuned: perplexity, task metrics, probes, gates")
    s.add_argument("run_id")
    s.add_argument("--max-examples", type=int, default=200)
    s.add_argument("--max-new-tokens", type=int, default=32)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--benchmark", action="append", metavar="TASK", help="also score base and fine-tuned on TASK: "
                   "builtin:NAME, a JSONL ({question, choices, answer} or {prompt, answer} rows), an lm-eval task "
                   "YAML or an lm-eval task name (repeatable)")
    s.add_argument("--benchmark-limit", type=int, default=None, metavar="N", help="score at most N rows of each "
                   "benchmark (default: every row of a file, 500 of a standard lm-eval task)")
    s.add_argument("--judge", metavar="MODEL", help="a judge model (folder, Hub id or builtin:...) compares base and "
                   "fine-tuned answers pairwise, both orders; its win rate joins the report")
    s.set_defaults(fn=cmd_eval)
    s = sub.add_parser("diagnose", parents=[js], help="flag overfitting, underfitting, instability, forgetting, "
                       "mode collapse, out of memory")
    s.add_argument("run_id")
    s.set_defaults(fn=cmd_diagnose)
    s = sub.add_parser("compare", parents=[js], help="the base and up to 4 runs answering the same prompts")
    s.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    s.add_argument("--base", action="store_true", help="include the base model")
    s.add_argument("--prompts", default=None, help="a file: one prompt per line, or JSONL with 'prompt'")
    s.add_argument("--max-new-tokens", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_compare)
    s = sub.add_parser("votes", help="blind A/B votes")
    vsub = s.add_subparsers(dest="votes_cmd", required=True, metavar="SUBCOMMAND")
    v = vsub.add_parser("export", parents=[js], help="write the votes as a prompt/chosen/rejected dataset")
    v.add_argument("--out", default=None, help="the JSONL file (default: FINETUNE_HOME/datasets/ab-votes.jsonl)")
    s.set_defaults(fn=cmd_votes)


# ---------------------------------------------------------------------------------------------
# The parser


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error comes back to main() (which answers in JSON under --json)."""

    def error(self, message):
        raise _UsageError(f"{self.prog}: {message}")


WHERE = ("local", "hf-jobs")  # --backend values that say where to train, not how to load the model


def _add_where_to_backend(s: argparse.ArgumentParser) -> None:
    """One --backend for both meanings: the generated train.backend (auto, transformers: how the
    model is loaded) and where the run trains (local, or hf-jobs: Hugging Face Jobs, needs HF_TOKEN
    and --flavor)."""
    act = s._option_string_actions["--backend"]
    act.choices = list(act.choices) + list(WHERE)
    act.metavar = "{" + ",".join(map(str, act.choices)) + "}"
    act.help = (act.help or "") + "; local or hf-jobs: where to train (hf-jobs: Hugging Face Jobs, needs HF_TOKEN and --flavor)"


def _where(a: argparse.Namespace) -> str:
    """'local' or 'hf-jobs', taking a where-value out of --backend so the config never sees it."""
    key = f"{_CFG}train__backend"
    value = getattr(a, key, None)
    if value in WHERE:
        delattr(a, key)
        return value
    return "local"


def build_parser() -> argparse.ArgumentParser:
    from .builtin import DEMO_DATASET_ID, TINY_CHAT_ID
    from .config import METHODS
    from .plan import TASK_TYPES

    p = _Parser(prog="finetune", description="Fine-Tune Studio: plan, prepare data, train, "
                                "evaluate and compare fine-tunes (also: python -m finetune).")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    js = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's own default must not overwrite `--json` given before the subcommand.
    js.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON object on stdout")

    s = sub.add_parser("plan", parents=[js], help="recommend a method and estimate memory, time and cost")
    s.add_argument("--model", default=TINY_CHAT_ID, help="a Hub id, a local folder or builtin:tiny-chat")
    s.add_argument("--method", default="auto", choices=["auto", *METHODS])
    s.add_argument("--seq-len", type=int, default=512)
    s.add_argument("--batch-size", type=int, default=4)
    s.add_argument("--hardware", default="local", help="a hardware tier (t4-small, a100-large, ...) or local")
    s.add_argument("--examples", type=int, default=1000)
    s.add_argument("--task", default="", help="what the model should do, in your words")
    s.add_argument("--task-type", default=None, choices=TASK_TYPES)
    s.add_argument("--preferences", action="store_true", help="preference pairs are available")
    s.set_defaults(fn=cmd_plan)

    s = sub.add_parser("calibrate", help="measure this machine with a dry run; check the plan against a run")
    csub = s.add_subparsers(dest="cal_cmd", required=True, metavar="SUBCOMMAND")
    d = csub.add_parser("dry-run", parents=[js], help="measure tokens/s and peak memory with a few real steps")
    d.add_argument("--model", "--model-id", default=TINY_CHAT_ID)
    d.add_argument("--data", "--source", default=DEMO_DATASET_ID)
    d.add_argument("--method", default="lora", choices=METHODS)
    d.add_argument("--steps", type=int, default=8)
    d.add_argument("--seq-len", type=int)
    d.add_argument("--batch-size", type=int)
    d.add_argument("--lora-rank", type=int)
    d = csub.add_parser("check", parents=[js], help="predicted vs actual duration of a finished run")
    d.add_argument("run_id", nargs="?", help="default: the newest completed run")
    d.add_argument("--record", action="store_true", help="also write runs/<id>/calibration.json")
    s.set_defaults(fn=cmd_calibrate)

    s = sub.add_parser("data", help="inspect, prepare or augment a dataset")
    dsub = s.add_subparsers(dest="data_cmd", required=True, metavar="SUBCOMMAND")
    out_help = ("a plain NAME saves under FINETUNE_HOME/datasets/NAME (then --data NAME works from any folder); "
                "a PATH writes that folder. Default: datasets/<name of the source>%s")
    for name, helptext in (("inspect", "format, issues, token statistics and quality score"),
                           ("prepare", "convert, clean and split into train/validation (a saved dataset)")):
        d = dsub.add_parser(name, parents=[js], help=helptext)
        d.add_argument("path", help="a file, a prepared folder or saved name, builtin:demo or hub:<id>")
        d.add_argument("--format", default=None, help="skip detection: alpaca, messages, sharegpt, text, ...")
        d.add_argument("--map", action="append", metavar="FIELD=COLUMN",
                       help="read a format's FIELD from COLUMN, e.g. --map instruction=question (repeatable)")
        if name == "inspect":
            d.add_argument("--model", default=None, help="count tokens with this model's tokenizer")
            d.add_argument("--max-seq-len", type=int, default=None, help="flag rows longer than this")
        else:
            d.add_argument("--out", default=None, metavar="NAME|PATH", help=out_help % "")
            d.add_argument("--val-ratio", type=float, default=0.1)
            d.add_argument("--seed", type=int, default=42)
            d.add_argument("--strict", action="store_true",
                           help="refuse the file at its first invalid row (by default invalid rows are dropped "
                                "and listed: row, file line, field, problem)")
            d.add_argument("--drop-invalid", action="store_true",
                           help="the default (kept for older scripts): drop invalid rows and list them")
            d.add_argument("--mask-pii", action="store_true", help="replace e-mails, phones and keys")
            d.add_argument("--dedupe", choices=["exact", "near"], default=None, help="drop duplicate rows")
    d = dsub.add_parser("augment", parents=[js], help="add paraphrased or self-instruct rows (marked _generated)")
    d.add_argument("path", help="a prepared folder or saved name, or any source")
    d.add_argument("--out", default=None, metavar="NAME|PATH", help=out_help % "-aug")
    d.add_argument("--method", default="paraphrase", choices=["paraphrase", "self_instruct"])
    d.add_argument("--n", type=int, default=50, help="rows to add")
    d.add_argument("--seed", type=int, default=42)
    d.add_argument("--model", default=TINY_CHAT_ID, help="the generator for self_instruct")
    s.set_defaults(fn=cmd_data)

    s = sub.add_parser("train", parents=[js], help="start a training run (returns its id at once)",
                       description="Start a training run. Every run config field is an option; unset "
                       "ones take the model's defaults (builtin:tiny-chat has its own demo defaults); for "
                       "adapters on other models, an unset learning rate, epochs and gradient accumulation "
                       "come from the Plan for this model and dataset (printed on stderr).")
    s.add_argument("--name", default=None, help="a name for the run (part of its id)")
    s.add_argument("--wait", action="store_true", help="wait until the run ends")
    s.add_argument("--timeout-s", type=float, default=3600, help="with --wait: give up after this long")
    s.add_argument("--resume-id", default=None, help="resume this run from its last complete checkpoint")
    s.add_argument("--flavor", default=None, help="hf-jobs: the hardware flavor, e.g. a10g-small")
    s.add_argument("--timeout", default="2h", help="hf-jobs: the job's time limit (90m, 2h, 3600)")
    s.add_argument("--image", default=None, help="hf-jobs: an image with Fine-Tune Studio installed (default: this "
                   "Space's, FINETUNE_JOBS_IMAGE, else the stock PyTorch image with this code installed in the job)")
    s.add_argument("--in-job", action="store_true", help=argparse.SUPPRESS)  # inside a Hugging Face Job
    s.add_argument("--config-json", default=None, help=argparse.SUPPRESS)
    s.add_argument("--hub-repo", default=None, help=argparse.SUPPRESS)
    s.add_argument("--hub-data", default=None, help=argparse.SUPPRESS)
    s.add_argument("--run", default=None, help=argparse.SUPPRESS)  # the child process
    s.add_argument("--spare", default=None, help=argparse.SUPPRESS)  # a child waiting for its run (runs.warm_spare)
    s.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    add_config_options(s)
    _add_where_to_backend(s)
    s.set_defaults(fn=cmd_train)

    for name, fn, helptext in (("status", cmd_status, "a run's state, step, total steps and latest loss"),
                               ("stop", cmd_stop, "stop a run cleanly (it saves first)")):
        s = sub.add_parser(name, parents=[js], help=helptext)
        s.add_argument("run_id")
        if name == "stop":
            s.add_argument("--force", action="store_true", help="kill it now (no final save)")
        if name == "status":
            s.add_argument("--events", action="store_true", help="include the logged events")
        s.set_defaults(fn=fn)
    add_eval_parsers(sub, js)
    s = sub.add_parser("runs", parents=[js], help="list runs, or `runs delete RUN_ID`")
    s.add_argument("action", nargs="?", choices=["list", "delete"], default="list")
    s.add_argument("run_id", nargs="?", default=None)
    s.set_defaults(fn=cmd_runs)
    from .hub_cli import add_commands  # push, deploy, data push

    add_commands(sub, js)
    from . import merge_cli  # merge RUN_ID RUN_ID ... (adapter merging)

    merge_cli.add_commands(sub, js)
    from .sweep_cli import add_commands as add_sweep  # hyperparameter search

    add_sweep(sub, js)
    from .export_cli import add_commands as add_export  # export

    add_export(sub, js)
    return p


# ---------------------------------------------------------------------------------------------
# Output


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as exc:  # e.g. an unknown option or a value outside the choices
        return _fail(f"{exc} (see --help)", "--json" in argv, 2)
    want_json = getattr(args, "json", False)
    try:
        with _stdout_to_stderr():  # only the result below goes to stdout
            result = args.fn(args)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        return _fail("interrupted", want_json, 130)
    except Exception as exc:  # one clear line, never a traceback, for a user's mistake
        from .train import redact

        text = " ".join(str(exc).split())
        return _fail(redact(text or type(exc).__name__), want_json, 2)
    from .show import human

    try:
        print(json.dumps(result, default=str) if want_json else human(args, result), flush=True)
    except BrokenPipeError:  # `finetune ... | head`: the reader left; no traceback for that
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _fail(msg: str, want_json: bool, code: int) -> int:
    if want_json:
        print(json.dumps({"error": msg}))
    print(f"error: {msg}", file=sys.stderr)
    return code


class _stdout_to_stderr:
    """Send everything written to stdout (Python prints and C libraries alike, through fd 1) to
    stderr while a command runs, so --json output is exactly one object."""

    def __enter__(self):
        sys.stdout.flush()
        self._saved_fd = os.dup(1)
        os.dup2(2, 1)
        self._saved = sys.stdout
        sys.stdout = sys.stderr

    def __exit__(self, *exc):
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout = self._saved
        os.dup2(self._saved_fd, 1)
        os.close(self._saved_fd)
