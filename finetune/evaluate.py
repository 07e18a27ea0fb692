"""Evaluate a run: base model vs fine-tuned on the validation rows the run trained against.

Figures: perplexity over exactly the trained tokens (labels from tokenize.py), task metrics by task
type (exact match; accuracy and macro-F1 for classification; ROUGE-1/2/L, BLEU, chrF for
generation; for preference data reward accuracy and exact match against the chosen answer), a
regression probe and a safety probe (finetune/eval/probes.py). Writes eval/report.json,
eval/report.md and eval/metrics.png atomically.

The app never evaluates in its own process: `run_eval` starts `python -m finetune eval RUN_ID`
as a child (an OOM cannot take the app down and GPU memory is freed on exit) and follows
eval/progress.json. Evaluations take a per-device lock, so one runs at a time on a device.
The validation rows come from the snapshot create_run keeps in the run folder (data/), so replacing
a saved dataset later does not change the evaluation; runs made before snapshots fall back to the
source, and the report says so.

Benchmarks (`--benchmark`, finetune/eval/benchmarks.py) and an LLM judge (`--judge`, finetune/eval/judge.py)
are optional: both score base and fine-tuned the same way, and their results join the report and the gates.

CLI: `python -m finetune eval RUN_ID [--max-examples N] [--benchmark TASK ...] [--judge MODEL] --json`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .eval.metrics import exact_match, normalize_answer  # noqa: F401  -- re-exported (older imports)
from .eval.report import report_markdown
from .eval.scoring import perplexity  # noqa: F401  -- re-exported
from .paths import atomic_write_json, atomic_write_text, home, read_json
from .monitor import kept_sentence
from .runs import RunError, artifact_dir, load_config, run_dir

from .snapshot import SNAPSHOT_DIR, rows_sha256, snapshot_validation  # noqa: F401 -- below runs (create_run)


# ---------------------------------------------------------------------------------------------
# Reading the validation rows back


def validation_rows(run_id: str, cfg) -> tuple[list[dict], str, dict]:
    """(rows, kind, dataset info) from the run's snapshot, or from the source for older runs."""
    d = run_dir(run_id) / SNAPSHOT_DIR
    meta = read_json(d / "meta.json", default=None)
    if meta and (d / "validation.jsonl").is_file():
        rows = [json.loads(line) for line in (d / "validation.jsonl").read_text(encoding="utf-8").splitlines()
                if line.strip()]
        if rows_sha256(rows) != meta.get("sha256"):
            raise RunError(f"run {run_id}: {d / 'validation.jsonl'} does not match the hash kept in meta.json; "
                           "the snapshot was changed after the run started")
        return rows, meta["kind"], dict(meta, snapshot=True)
    from .data import load_prepared

    _, rows, kind = load_prepared(cfg.data.source, val_ratio=cfg.data.val_ratio, seed=cfg.data.seed)
    return rows, kind, {"source": cfg.data.source, "kind": kind, "rows": len(rows), "sha256": rows_sha256(rows),
                        "snapshot": False}


# ---------------------------------------------------------------------------------------------
# Progress and the per-device lock


def _progress(d: Path, fraction: float, message: str) -> None:
    atomic_write_json(d / "eval" / "progress.json", {"fraction": round(fraction, 3), "message": message,
                                                     "pid": os.getpid(), "updated": time.time()})


@contextmanager
def device_lock(on_wait=None):
    """One evaluation at a time per device (a flock on FINETUNE_HOME/.locks/eval-<device>.lock)."""
    import fcntl

    from .modeling import cuda_available

    dev = "cuda0" if cuda_available() else "cpu"
    p = home() / ".locks" / f"eval-{dev}.lock"
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield dev
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# The evaluation itself (runs in the child)


def _answer_text(a) -> str:
    if isinstance(a, list):
        return " ".join(str(m.get("content") or "") for m in a if m.get("role") == "assistant")
    return str(a)


def _side(model, tok, *, sft_examples, pref, prompts, probe_general, probe_harm, probe_know, general_ex,
          max_new_tokens, seed, stops, benches=(), bench_limit=None) -> dict:
    """Every pass one model (base or fine-tuned) needs: NLL, answers, probes, benchmarks."""
    from .eval.benchmarks import score_benchmark
    from .eval.scoring import token_nll
    from .modeling import generate

    out = {"nll": token_nll(model, sft_examples) if sft_examples else []}
    if pref:
        out["chosen_nll"] = token_nll(model, pref[0])
        out["rejected_nll"] = token_nll(model, pref[1])

    def gen(ps):
        return generate(model, tok, ps, max_new_tokens=max_new_tokens, seed=seed, eos_token_ids=stops) if ps else []

    out["answers"] = gen(prompts)
    out["general_nll"] = token_nll(model, general_ex) if general_ex else []
    out["general_answers"] = gen(probe_general)
    out["harm_answers"] = gen(probe_harm)
    out["knowledge_answers"] = gen(probe_know)
    out["benchmarks"] = {b.name: score_benchmark(model, tok, b, limit=bench_limit, max_new_tokens=max_new_tokens,
                                                 stops=stops, seed=seed) for b in benches}
    return out


def evaluate_run(run_id: str, *, max_examples: int = 200, max_new_tokens: int = 32, seed: int = 0,
                 probes: bool = True, benchmarks: list[str] | None = None, judge: str | None = None,
                 benchmark_limit: int | None = None) -> dict:
    """Base vs fine-tuned on the run's validation rows; writes eval/report.json, .md and metrics.png.

    benchmarks: names load_benchmarks reads (at most benchmark_limit rows each); judge: a model that
    compares the two models' answers on the held-out prompts (judge_pairs)."""
    from .eval.benchmarks import benchmarks_report, load_benchmarks
    from .eval.judge import check_judge_model, judge_pairs
    from .eval import probes as pr
    from .eval.metrics import (
        distinct_n,
        identical_share,
        is_classification,
        per_sample_scores,
        primary_metric,
        sample_score,
        sign_test,
        task_metrics,
    )
    from .eval.report import (
        best_and_worst,
        build_gates,
        chart_png,
        hardware,
        library_versions,
        task_verdict,
    )
    from .eval.scoring import perplexity_of, preference_examples, text_examples
    from .modeling import load_for_inference, set_threads, stop_token_ids
    from .tokenize import prompt_and_reference, prompt_text, tokenize_rows

    d = run_dir(run_id)
    cfg = load_config(run_id)
    art = artifact_dir(run_id)
    if art is None:
        raise RunError(f"run {run_id} has no trained adapter or model yet; wait until it completes or stops")
    if not isinstance(max_examples, int) or max_examples < 1:
        raise RunError(f"max_examples must be a whole number of at least 1, got {max_examples!r}")
    if benchmark_limit is not None and (not isinstance(benchmark_limit, int) or benchmark_limit < 1):
        raise RunError(f"benchmark_limit must be a whole number of at least 1, got {benchmark_limit!r}")
    benches = load_benchmarks(benchmarks)  # read and checked before any model loads
    judge = check_judge_model(judge) if judge else None
    _progress(d, 0.0, "waiting for the device")
    with device_lock(lambda: _progress(d, 0.0, "waiting: another evaluation is using the device")) as dev:
        t0 = time.time()
        set_threads()
        _progress(d, 0.05, "loading the validation rows")
        rows, kind, dataset = validation_rows(run_id, cfg)
        if not rows:
            raise RunError(f"run {run_id}: its dataset has no validation rows to evaluate on")
        rows = rows[:max_examples]
        _progress(d, 0.1, "loading the model")
        qlora = cfg.train.method == "qlora"
        model, tok = load_for_inference(cfg.model.model_id, str(art), trust_remote_code=cfg.model.trust_remote_code,
                                        load_in_4bit=qlora)
        chat = tok.chat_template is not None
        pref = None
        if kind == "preference":
            c, j, kept = preference_examples(tok, rows, cfg.data.max_seq_len)
            pref = (c, j)
            sft_examples = c  # perplexity of the chosen answers
            pairs = [(rows[i]["prompt"], _answer_text(rows[i]["chosen"])) for i in kept]
            task_type = "preference"
        else:
            sft_examples, _ = tokenize_rows(tok, rows, kind, cfg.data.max_seq_len)
            pairs = [p for p in (prompt_and_reference(r, kind) for r in rows) if p is not None]
            task_type = None
        prompts, refs = [p for p, _ in pairs], [r for _, r in pairs]
        task_type = task_type or ("classification" if is_classification(refs) else ("generation" if refs else "text"))
        stops = stop_token_ids(model, tok)
        gen_probe, harm_probe, know_probe = pr.probe_inputs(chat) if probes else ([], [], [])
        general_ex = text_examples(tok, pr.general_texts(), cfg.data.max_seq_len) if probes else []
        kw = dict(sft_examples=sft_examples, pref=pref, prompts=prompts, probe_general=gen_probe,
                  probe_harm=harm_probe, probe_know=know_probe, general_ex=general_ex, max_new_tokens=max_new_tokens, seed=seed, stops=stops,
                  benches=benches, bench_limit=benchmark_limit)

        is_peft = hasattr(model, "disable_adapter")
        _progress(d, 0.2, "scoring the base model")
        if is_peft:
            with model.disable_adapter():
                base = _side(model, tok, **kw)
        else:  # a full fine-tune: load the base separately
            base_model, _ = load_for_inference(cfg.model.model_id, None, trust_remote_code=cfg.model.trust_remote_code)
            base = _side(base_model, tok, **kw)
            del base_model
        _progress(d, 0.6, "scoring the fine-tuned model")
        tuned = _side(model, tok, **kw)
        verdicts = None
        if judge:
            _progress(d, 0.8, f"the judge compares base and fine-tuned answers ({len(prompts)} prompts, both orders)")
            try:  # the judge's own code never runs (no trust_remote_code); its failure keeps the report
                verdicts = judge_pairs(judge, [prompt_text(p) for p in prompts], base["answers"], tuned["answers"])
            except Exception as exc:  # noqa: BLE001 -- e.g. a judge that cannot load, no held-out prompts
                verdicts = {"error": f"the judge {judge} could not judge: {type(exc).__name__}: {str(exc)[:300]}",
                            "judge_model": judge, "win_rate": None}
        _progress(d, 0.9, "writing the report")

        def metrics_of(side: dict) -> dict:
            m = {"perplexity": perplexity_of(side["nll"])}
            if pref:
                wins = [c[0] < r[0] for c, r in zip(side["chosen_nll"], side["rejected_nll"])]
                m["reward_accuracy"] = (sum(wins) / len(wins)) if wins else None
                m["exact_match"] = task_metrics(side["answers"], refs, "generation")["exact_match"]
            else:
                m.update(task_metrics(side["answers"], refs, task_type) if refs else {})
            return m

        base_metrics, metrics = metrics_of(base), metrics_of(tuned)
        if pref:  # DPO's implicit reward: log-ratio to the base, chosen above rejected
            wins = [(bc[0] - tc[0]) > (br[0] - tr[0]) for bc, tc, br, tr in
                    zip(base["chosen_nll"], tuned["chosen_nll"], base["rejected_nll"], tuned["rejected_nll"])]
            metrics["implicit_reward_accuracy"] = (sum(wins) / len(wins)) if wins else None
        samples = []
        for i, (p, r) in enumerate(zip(prompts, refs)):
            bp, fp = base["answers"][i], tuned["answers"][i]
            samples.append({"prompt": prompt_text(p), "reference": r, "base": bp, "finetuned": fp,
                            "base_match": exact_match(bp, r), "finetuned_match": exact_match(fp, r),
                            "score": round(sample_score(fp, r), 4)})
        best, worst = best_and_worst(samples)
        primary = "reward_accuracy" if pref else primary_metric(task_type, refs)
        significance = None if pref or not refs else sign_test(
            per_sample_scores(base["answers"], refs, primary), per_sample_scores(tuned["answers"], refs, primary))
        if significance is not None:
            significance["similarity_to_references"] = {
                name: sum(sample_score(a, r) for a, r in zip(side["answers"], refs)) / len(refs)
                for name, side in (("base", base), ("finetuned", tuned))}
        report = {
            "run_id": run_id, "model": cfg.model.model_id, "method": cfg.train.method, "task_type": task_type,
            "examples": len(rows), "primary_metric": primary,
            "task_significance": significance,
            "perplexity": metrics["perplexity"], "base_perplexity": base_metrics["perplexity"],
            "metrics": metrics, "base_metrics": base_metrics,
            # the two headline figures in the shape earlier reports had (the UI and older tests read them)
            "base": {"perplexity": base_metrics["perplexity"], "exact_match": base_metrics.get("exact_match")},
            "finetuned": {"perplexity": metrics["perplexity"], "exact_match": metrics.get("exact_match")},
            "diversity": {name: {"distinct_1": distinct_n(s["answers"], 1), "distinct_2": distinct_n(s["answers"], 2),
                                 "identical_share": identical_share(s["answers"])}
                          for name, s in (("base", base), ("finetuned", tuned))},
            "regression": pr.regression_result(perplexity_of(base["general_nll"]), perplexity_of(tuned["general_nll"]),
                                               base["general_answers"], tuned["general_answers"],
                                               base["knowledge_answers"], tuned["knowledge_answers"]) if probes else {},
            "safety": pr.safety_result(base["harm_answers"], tuned["harm_answers"]) if probes else {},
            "samples": samples[:20], "best": best, "worst": worst,
            "benchmarks": benchmarks_report(benches, base["benchmarks"], tuned["benchmarks"]), "judge": verdicts,
            "kept": kept_sentence(read_json(d / "status.json", default={}) or {}),
            "dataset": dataset,
            "decoding": {"do_sample": False, "max_new_tokens": max_new_tokens, "eos_token_ids": stops, "seed": seed,
                         "base_in_4bit": qlora},
            "provenance": {"config": cfg.to_dict(), "seed": cfg.train.seed, "libraries": library_versions(),
                           "hardware": hardware(), "device": dev, "evaluated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        }
        report["delta"] = {k: (report["finetuned"][k] - report["base"][k])
                           if report["finetuned"][k] is not None and report["base"][k] is not None else None
                           for k in ("perplexity", "exact_match")}
        report["notes"] = [] if sft_examples else [
            f"perplexity is n/a: no validation row keeps a trained token within max_seq_len {cfg.data.max_seq_len}"]
        report["gates"] = build_gates(report)
        report["verdict"] = task_verdict(report, cfg.to_dict())
        out = d / "eval"
        report["chart"] = str(chart_png(out / "metrics.png", base_metrics, metrics) or "") or None
        report["report_json"], report["report_md"] = str(out / "report.json"), str(out / "report.md")
        report["duration_s"] = round(time.time() - t0, 2)
        atomic_write_json(out / "report.json", report)
        atomic_write_text(out / "report.md", report_markdown(report))
        _progress(d, 1.0, "done")
        return report


# ---------------------------------------------------------------------------------------------
# The app's entry: the same evaluation in a child process


def run_eval(run_id: str, *, max_examples: int = 200, max_new_tokens: int = 32, seed: int = 0,
             on_progress=None, timeout_s: float = 3600, env: dict | None = None, benchmarks: list[str] | None = None,
             judge: str | None = None) -> dict:
    """Evaluate in a child `python -m finetune eval` and return its report; on_progress(fraction, message).

    Benchmarks and the judge are checked here, in the app's process, which knows whether it is public."""
    from .eval.benchmarks import check_benchmark
    from .eval.judge import check_judge_model

    benchmarks = [check_benchmark(b) for b in benchmarks or []]
    judge = check_judge_model(judge) if judge else None
    d = run_dir(run_id)
    if artifact_dir(run_id) is None:
        raise RunError(f"run {run_id} has no trained adapter or model yet; wait until it completes or stops")
    (d / "eval").mkdir(exist_ok=True)
    (d / "eval" / "progress.json").unlink(missing_ok=True)
    pkg_root = str(Path(__file__).resolve().parent.parent)
    child_env = dict(os.environ)
    child_env.update(env or {})
    child_env["FINETUNE_HOME"] = str(home())
    child_env["PYTHONPATH"] = pkg_root + (os.pathsep + child_env["PYTHONPATH"] if child_env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "finetune", "eval", run_id, "--max-examples", str(int(max_examples)),
           "--max-new-tokens", str(int(max_new_tokens)), "--seed", str(int(seed)), "--json"]
    cmd += [x for b in benchmarks for x in ("--benchmark", b)] + (["--judge", judge] if judge else [])
    with open(d / "eval" / "eval.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=child_env,
                                cwd=pkg_root, start_new_session=True)
    deadline, last = time.time() + timeout_s, None
    try:
        while proc.poll() is None:
            p = read_json(d / "eval" / "progress.json", default=None)
            if on_progress and p and p != last:
                on_progress(p.get("fraction") or 0.0, p.get("message") or "")
                last = p
            if time.time() > deadline:
                proc.kill()
                raise RunError(f"evaluation of {run_id} took longer than {timeout_s:.0f} s and was stopped")
            time.sleep(0.3)
        out = proc.stdout.read().decode("utf-8", "replace").strip()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    try:
        result = json.loads(out.splitlines()[-1]) if out else {}
    except ValueError:
        result = {}
    if proc.returncode != 0 or "error" in result:
        msg = result.get("error") or f"the evaluation process exited with code {proc.returncode}"
        if proc.returncode in (-9, 137):
            msg = "the evaluation process was killed (out of memory?): try fewer examples or a smaller model"
        raise RunError(f"evaluation of {run_id} failed: {msg}")
    return result


def read_report(run_id: str) -> dict | None:
    return read_json(run_dir(run_id) / "eval" / "report.json", default=None)

