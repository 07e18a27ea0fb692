"""lm-evaluation-harness (lm-eval, pinned) on the model object Evaluate already loaded.

An lm-eval task YAML (its data may be a local file: `dataset_path: json` with
`dataset_kwargs: {data_files: ...}`) or a registered task name (`hellaswag`, `arc_easy`, ...) is run
through `lm_eval.simple_evaluate` with an HFLM that wraps our loaded model and tokenizer, so base
(adapter disabled) and fine-tuned are scored on exactly the weights the rest of the report uses.
Standard tasks download their data from the Hub: offline they fail with a clear error.
"""

from __future__ import annotations

import os

PREFERRED = ("acc", "exact_match", "acc_norm", "f1", "bleu", "rouge1", "mcc")


class BenchmarkError(ValueError):
    """A benchmark that cannot be read or run, with what and where (re-exported by benchmarks.py)."""


def run_lm_eval(model, tok, bench, *, limit: int | None = None, batch_size: int = 8) -> dict:
    """{metric, value, n, lm_eval: {every metric}} for one task on one model."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:  # pragma: no cover -- pinned in requirements
        raise BenchmarkError(f"benchmark {bench.source!r}: lm-eval is not installed ({exc}); "
                             "pip install lm-eval==0.4.13") from None
    yaml = bench.kind == "lm_eval_yaml"
    tm = TaskManager(include_path=os.path.dirname(bench.path), include_defaults=False) if yaml else TaskManager()
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size)
    try:
        res = lm_eval.simple_evaluate(model=lm, tasks=[bench.path if yaml else bench.name], task_manager=tm,
                                      limit=limit, log_samples=False, bootstrap_iters=0, verbosity=None)
    except KeyError as exc:
        raise BenchmarkError(f"benchmark {bench.source!r}: not an lm-eval task ({' '.join(str(exc).split())[:200]})") \
            from None
    except Exception as exc:  # noqa: BLE001 -- the data load is the usual failure: say so plainly
        raise BenchmarkError(_failure(bench, exc)) from None
    return result_of(res, bench)


def _failure(bench, exc: Exception) -> str:
    from huggingface_hub import constants

    text = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("0", "", "false")
    if bench.kind == "lm_eval_task":
        return (f"benchmark {bench.source!r}: the lm-eval task could not run ({text}). Standard tasks download "
                "their data from the Hugging Face Hub" + (", and this machine is offline" if offline else "")
                + ": offline, use a JSONL benchmark or a task YAML whose data is a local file.")
    return f"benchmark {bench.source!r}: the lm-eval task YAML could not run ({text})"


def result_of(res: dict, bench) -> dict:
    results = (res or {}).get("results") or {}
    if not results:
        raise BenchmarkError(f"benchmark {bench.source!r}: lm-eval returned no results")
    name = bench.name if bench.name in results else next(iter(results))
    metrics = {k.split(",")[0]: v for k, v in results[name].items()
               if "," in k and "_stderr" not in k and isinstance(v, (int, float)) and not isinstance(v, bool)}
    metric = next((m for m in PREFERRED if m in metrics), next(iter(metrics), None))
    if metric is None:
        raise BenchmarkError(f"benchmark {bench.source!r}: lm-eval reported no numeric metric")
    counts = ((res.get("n-samples") or {}).get(name) or {})
    return {"metric": metric, "value": float(metrics[metric]), "n": int(counts.get("effective") or 0),
            "lm_eval": metrics, "task": name}
