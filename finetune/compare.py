"""Compare: the base model and up to four runs answering the same prompts, and runs side by side.

`compare_models` generates with the same greedy decoding, stop ids and seed for every model and
times each one. `compare_runs` reads the runs' folders: overlaid loss curves, a metrics table (from
status.json and eval/report.json) and a diff of their configs. "base" names the base model of the
first run.

CLI: `python -m finetune compare RUN_ID [RUN_ID ...] [--base] --prompts FILE --json` (FILE: one
prompt per line, or JSONL with a "prompt" field). Without prompts, the first run's validation
prompts are used.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .runs import RunError, artifact_dir, load_config

MAX_RUNS = 4
MAX_PROMPTS = 64


def read_prompts(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise RunError(f"{path}: no such prompts file")
    prompts = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise RunError(f"{path} line {n}: invalid JSON ({e})") from None
            if not isinstance(obj.get("prompt"), str):
                raise RunError(f"{path} line {n}: field 'prompt' is missing or not text")
            prompts.append(obj["prompt"])
        else:
            prompts.append(line)
    if not prompts:
        raise RunError(f"{path}: no prompts found")
    return prompts


def validation_prompts(run_id: str, n: int = 8) -> list[str]:
    """The first n validation prompts the run trained against (any kind, preference included)."""
    from .evaluate import validation_rows
    from .tokenize import prompt_and_reference

    rows, kind, _ = validation_rows(run_id, load_config(run_id))
    out = []
    for r in rows[: n * 2]:
        if kind == "preference":
            p = r.get("prompt")
        else:
            pr = prompt_and_reference(r, kind)
            p = pr[0] if pr else None
        if isinstance(p, list):
            p = next((m.get("content") for m in reversed(p) if m.get("role") == "user"), None)
        if isinstance(p, str) and p.strip():
            out.append(p)
    return out[:n]


def check_models(models: list[str]) -> list[str]:
    from .runs import run_dir

    if isinstance(models, str):
        models = [models]
    out = []
    for m in models or []:
        m = str(m).strip()
        if m and m not in out:
            out.append(m)
    runs = [m for m in out if m != "base"]
    if not runs:
        raise RunError("choose at least one run (\"base\" alone has no model to name)")
    if len(runs) > MAX_RUNS:
        raise RunError(f"compare takes at most {MAX_RUNS} runs besides the base, got {len(runs)}")
    for r in runs:
        run_dir(r)  # a clear error for an unknown id
        if artifact_dir(r) is None:
            raise RunError(f"run {r} has no trained adapter or model yet")
    return out


def load_run_model(run: str):
    """(model, tokenizer) of a run for answering: its base with the adapter on (a PeftModel, whose
    disable_adapter() gives the base), or its fully fine-tuned weights."""
    from .modeling import load_for_inference

    cfg = load_config(run)
    return load_for_inference(cfg.model.model_id, str(artifact_dir(run)), trust_remote_code=cfg.model.trust_remote_code,
                              load_in_4bit=cfg.train.method == "qlora")


def load_base_model(run: str):
    """(model, tokenizer) of a run's base model alone (for a full fine-tune, whose base is other weights)."""
    from .modeling import load_for_inference

    cfg = load_config(run)
    return load_for_inference(cfg.model.model_id, None, trust_remote_code=cfg.model.trust_remote_code)


class _Loader:
    """Loads each model once; "base" is the first run's base (with its adapter off when it has one)."""

    def __init__(self, runs: list[str]):
        self.first = runs[0]
        self.cache: dict[str, tuple] = {}

    def answers(self, model: str, prompts: list, *, max_new_tokens: int, seed: int) -> tuple[list[str], float]:
        from contextlib import nullcontext

        from .modeling import generate

        run = self.first if model == "base" else model
        if run not in self.cache:
            self.cache.clear()  # one fine-tuned model in memory at a time
            self.cache[run] = load_run_model(run)
        mdl, tok = self.cache[run]
        ctx = nullcontext()
        if model == "base":
            if hasattr(mdl, "disable_adapter"):
                ctx = mdl.disable_adapter()
            else:  # a full fine-tune: its base is a different set of weights
                mdl, tok = load_base_model(run)
        inputs = [[{"role": "user", "content": p}] if tok.chat_template is not None else p for p in prompts]
        t0 = time.perf_counter()
        with ctx:
            out = generate(mdl, tok, inputs, max_new_tokens=max_new_tokens, seed=seed)
        return out, time.perf_counter() - t0


def compare_models(models: list[str], prompts: list[str] | None = None, *, max_new_tokens: int = 64,
                   seed: int = 0) -> dict:
    """Answers of each model ("base" or a run id) to the same prompts, with latency per model."""
    from .modeling import set_threads

    models = check_models(models)
    runs = [m for m in models if m != "base"]
    if not prompts:
        prompts = validation_prompts(runs[0])
    prompts = [p.strip() for p in prompts if isinstance(p, str) and p.strip()][:MAX_PROMPTS]
    if not prompts:
        raise RunError("no prompts to compare: type some, or pick a run whose validation rows have prompts")
    set_threads()
    loader = _Loader(runs)
    answers, latency = {}, {}
    # the base first, then each run: a run's adapter is loaded once for all prompts
    for m in sorted(models, key=lambda x: x != "base"):
        answers[m], secs = loader.answers(m, prompts, max_new_tokens=max_new_tokens, seed=seed)
        latency[m] = {"total_s": round(secs, 3), "per_prompt_s": round(secs / len(prompts), 4)}
    rows = [{"prompt": p, "answers": {m: answers[m][i] for m in models}} for i, p in enumerate(prompts)]
    return {"models": models, "prompts": prompts, "rows": rows, "latency": latency,
            "decoding": {"do_sample": False, "max_new_tokens": max_new_tokens, "seed": seed},
            "base_model": load_config(runs[0]).model.model_id}


def compare_run(run_id: str, prompts: list[str] | None = None, *, max_new_tokens: int = 64) -> dict:
    """One run against its base: rows of {prompt, base, finetuned} (the single-run shape)."""
    r = compare_models(["base", run_id], prompts, max_new_tokens=max_new_tokens)
    return {"run_id": run_id, "model": r["base_model"], "latency": r["latency"],
            "rows": [{"prompt": x["prompt"], "base": x["answers"]["base"], "finetuned": x["answers"][run_id]}
                     for x in r["rows"]]}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def compare_runs(run_ids: list[str]) -> dict:
    """Loss curves, a metrics table and the config settings that differ, for up to four runs."""
    from .paths import read_json
    from .runs import read_events, read_status, run_dir

    ids = [r for r in _dedupe(run_ids) if r != "base"]
    if not ids:
        raise RunError("choose at least one run")
    if len(ids) > MAX_RUNS:
        raise RunError(f"compare takes at most {MAX_RUNS} runs, got {len(ids)}")
    curves, table, configs = [], [], {}
    for r in ids:
        d = run_dir(r)
        events, _ = read_events(r)
        for e in events:
            for key, series in (("loss", "training loss"), ("eval_loss", "validation loss")):
                if e.get(key) is not None and e.get("step") is not None:
                    curves.append({"run": r, "step": e["step"], "value": e[key], "series": series})
        st = read_status(r)
        rep = read_json(d / "eval" / "report.json", default=None) or {}
        row = {"run": r, "state": st.get("state"), "steps": st.get("step"), "final_loss": st.get("loss"),
               "eval_loss": st.get("eval_loss"), "duration_s": st.get("duration_s")}
        for k, v in (rep.get("metrics") or {}).items():
            row[k] = v
        if rep and not rep.get("metrics"):  # an older report
            row["perplexity"] = (rep.get("finetuned") or {}).get("perplexity")
            row["exact_match"] = (rep.get("finetuned") or {}).get("exact_match")
        table.append(row)
        configs[r] = _flatten(read_json(d / "config.json", default={}) or {})
    keys = sorted({k for c in configs.values() for k in c})
    diff = [{"setting": k, **{r: configs[r].get(k) for r in ids}} for k in keys
            if len({json.dumps(configs[r].get(k), sort_keys=True) for r in ids}) > 1]
    return {"runs": ids, "curves": curves, "metrics": table, "config_diff": diff}


def _dedupe(xs) -> list[str]:
    if isinstance(xs, str):
        xs = [xs]
    out = []
    for x in xs or []:
        x = str(x).strip()
        if x and x not in out:
            out.append(x)
    return out
