"""Benchmarks for Evaluate: the same task scored on the base and on the fine-tuned model.

A benchmark is named by one of:
  - `builtin:NAME`: a JSONL file shipped in finetune/assets/benchmarks/ (BUILTIN_BENCHMARKS);
  - a JSONL file of `{question, choices, answer}` rows (answer = index of the right choice): multiple
    choice, scored by the log-likelihood of each choice after the question (accuracy, and accuracy
    with the log-likelihood divided by the choice's length in characters, as lm-eval's acc_norm);
  - a JSONL file of `{prompt, answer}` rows: generation, greedy, scored by exact match after
    normalisation (case, spaces, end punctuation) and by whether the answer contains the reference;
  - an lm-eval task YAML file, or an lm-eval task name (`hellaswag`): run through lm-evaluation-harness
    (finetune/eval/harness.py) on the very model object we loaded. Standard tasks need the Hub for their
    data; offline they fail with a clear error.

Custom JSONL tasks never touch the network: they are scored with our own log-likelihood code
(scoring.token_nll, the same pass perplexity uses) and our own greedy generation (modeling.generate),
on the same loaded model as the rest of the evaluation, base (adapter disabled) and fine-tuned alike.

On a public Space only built-in benchmarks and uploaded files are read (`check_benchmark`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .harness import BenchmarkError

BENCH_DIR = Path(__file__).resolve().parent.parent / "assets" / "benchmarks"
BUILTIN_BENCHMARKS = {
    "builtin:capitals-mc": "capitals-mc.jsonl",  # multiple choice: world capitals among obvious distractors
    "builtin:opposites-parity-gen": "opposites-parity-gen.jsonl",  # generation: antonyms and even/odd
}
MAX_ROWS_READ = 20000
LM_EVAL_DEFAULT_LIMIT = 500  # rows of a standard lm-eval task when no limit is given (hellaswag has 10042)
_TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


@dataclass
class Benchmark:
    name: str  # the key in the report: the built-in's name, the file's stem, or the lm-eval task
    kind: str  # "multiple_choice", "generation", "lm_eval_yaml", "lm_eval_task"
    source: str  # what the user named (a built-in id, a file name, a task name): never a server path
    path: str | None = None
    rows: list[dict] = field(default_factory=list)


def check_benchmark(spec: str, *, public: bool | None = None) -> str:
    """Raise BenchmarkError if this benchmark may not be read here; return it stripped.

    Public mode: built-in benchmarks and uploaded files only (no server paths, no Hub task downloads)."""
    from ..caller import public_mode
    from ..sources import upload_roots

    s = (spec or "").strip()
    if not s:
        raise BenchmarkError("benchmark: empty name; give builtin:NAME, a .jsonl or .yaml file, or an lm-eval task")
    if s.startswith("builtin:"):
        if s not in BUILTIN_BENCHMARKS:
            raise BenchmarkError(f"benchmark {s!r}: unknown built-in; the built-in benchmarks are "
                                 + ", ".join(BUILTIN_BENCHMARKS))
        return s
    if public is None:
        public = public_mode()
    if public:
        p = Path(s).expanduser()
        if p.suffix.lower() in (".yaml", ".yml"):  # a task YAML may name server files and Python functions
            raise BenchmarkError(f"benchmark {p.name!r}: on a public Space upload a .jsonl benchmark; lm-eval task "
                                 "YAML files run only on a private app")
        try:
            rp = p.resolve()
        except (OSError, RuntimeError):
            rp = p
        if not any(rp == r or rp.is_relative_to(r) for r in upload_roots()):
            raise BenchmarkError(f"benchmark {p.name or s!r}: on a public Space pick a built-in benchmark ("
                                 + ", ".join(BUILTIN_BENCHMARKS) + ") or upload a .jsonl file; server paths and "
                                 "Hub tasks are not read")
    return s


def load_benchmark(spec: str) -> Benchmark:
    """Read and validate one benchmark (rows of a JSONL file; a YAML or a task name as given)."""
    s = check_benchmark(spec)
    if s.startswith("builtin:"):
        path = BENCH_DIR / BUILTIN_BENCHMARKS[s]
        return _jsonl(path, s.split(":", 1)[1], s)
    p = Path(s).expanduser()
    if p.suffix.lower() in (".jsonl", ".json", ".yaml", ".yml") or "/" in s or "\\" in s:
        if not p.is_file():
            raise BenchmarkError(f"benchmark {p.name!r}: no such file")
        if p.suffix.lower() in (".yaml", ".yml"):
            return Benchmark(_yaml_task_name(p), "lm_eval_yaml", p.name, str(p))
        return _jsonl(p, p.stem, p.name)
    if not _TASK_NAME.match(s):
        raise BenchmarkError(f"benchmark {s[:80]!r}: not a file, a built-in or an lm-eval task name")
    return Benchmark(s, "lm_eval_task", s)


def _yaml_task_name(p: Path) -> str:
    """The `task:` of an lm-eval YAML (read as text: such files may hold !function tags)."""
    m = re.search(r"^task:\s*['\"]?([^'\"\s#]+)", p.read_text(encoding="utf-8", errors="replace"), re.M)
    if not m:
        raise BenchmarkError(f"benchmark {p.name!r}: an lm-eval task YAML needs a top-level `task:` name")
    return m.group(1)


def _jsonl(path: Path, name: str, source: str) -> Benchmark:
    rows: list[dict] = []
    kinds = set()
    with open(path, encoding="utf-8") as fh:
        for no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if len(rows) >= MAX_ROWS_READ:
                break
            where = f"benchmark {source!r} line {no}"
            try:
                r = json.loads(line)
            except ValueError as exc:
                raise BenchmarkError(f"{where}: not valid JSON ({exc.msg})") from None
            kind, row = _row(r, where)
            kinds.add(kind)
            rows.append(row)
    if not rows:
        raise BenchmarkError(f"benchmark {source!r}: no rows")
    if len(kinds) > 1:
        raise BenchmarkError(f"benchmark {source!r}: mixes multiple-choice rows ({{question, choices, answer}}) and "
                             "generation rows ({prompt, answer}); use one kind per file")
    return Benchmark(name, kinds.pop(), source, str(path), rows)


def _row(r, where: str) -> tuple[str, dict]:
    if not isinstance(r, dict):
        raise BenchmarkError(f"{where}: each line must be a JSON object")
    if "choices" in r or "question" in r:
        q, ch, a = r.get("question"), r.get("choices"), r.get("answer")
        if not isinstance(q, str) or not q.strip():
            raise BenchmarkError(f"{where}: 'question' must be a non-empty string")
        if not isinstance(ch, list) or len(ch) < 2 or not all(isinstance(c, str) and c.strip() for c in ch):
            raise BenchmarkError(f"{where}: 'choices' must be a list of at least two non-empty strings")
        if isinstance(a, bool) or not isinstance(a, int) or not 0 <= a < len(ch):
            raise BenchmarkError(f"{where}: 'answer' must be the index (0 to {len(ch) - 1}) of the right choice, "
                                 f"got {a!r}")
        return "multiple_choice", {"question": q, "choices": ch, "answer": a}
    p, a = r.get("prompt"), r.get("answer")
    if isinstance(p, str) and p.strip() and isinstance(a, (str, int, float)) and not isinstance(a, bool) \
            and str(a).strip():
        return "generation", {"prompt": p, "answer": str(a)}
    raise BenchmarkError(f"{where}: expected {{question, choices, answer}} (multiple choice) or {{prompt, answer}} "
                         f"(generation); found keys {sorted(r)[:8]}")


# ---------------------------------------------------------------------------------------------
# Scoring one model


def mc_examples(tok, rows: list[dict], max_seq_len: int = 1024) -> tuple[list[dict], list[tuple[int, int]]]:
    """(examples with only the choice's tokens labelled, (row, choice) per example).

    A chat model reads the question as a user turn and the choice as the start of its answer; a model
    without a chat template reads "Question: ...\\nAnswer:" and " choice" (lm-eval's usual form)."""
    chat = getattr(tok, "chat_template", None) is not None
    examples, index = [], []
    for i, r in enumerate(rows):
        if chat:
            ctx = tok.apply_chat_template([{"role": "user", "content": r["question"]}], tokenize=False,
                                          add_generation_prompt=True)
            ctx_ids = tok(ctx, add_special_tokens=False)["input_ids"]
        else:
            ctx_ids = tok(f"Question: {r['question']}\nAnswer:")["input_ids"]
        for j, c in enumerate(r["choices"]):
            cont = tok(c if chat else " " + c, add_special_tokens=False)["input_ids"]
            ids = (ctx_ids + cont)[-max_seq_len:]
            n = min(len(cont), len(ids))
            examples.append({"input_ids": ids, "labels": [-100] * (len(ids) - n) + ids[len(ids) - n:]})
            index.append((i, j))
    return examples, index


def score_multiple_choice(model, tok, rows: list[dict]) -> dict:
    from .scoring import token_nll

    examples, index = mc_examples(tok, rows)
    nll = token_nll(model, examples, batch_size=8)
    ll: dict[int, list[float]] = {}
    for (i, j), (s, _) in zip(index, nll):
        ll.setdefault(i, []).append(-s)
    picks, picks_norm = [], []
    for i, r in enumerate(rows):
        lls = ll[i]
        norm = [v / max(1, len(c)) for v, c in zip(lls, r["choices"])]
        picks.append(max(range(len(lls)), key=lls.__getitem__))
        picks_norm.append(max(range(len(norm)), key=norm.__getitem__))
    n = len(rows)
    acc = sum(p == r["answer"] for p, r in zip(picks, rows)) / n
    acc_norm = sum(p == r["answer"] for p, r in zip(picks_norm, rows)) / n
    return {"metric": "acc", "value": acc, "acc_norm": acc_norm, "n": n, "picks": picks}


def score_generation(model, tok, rows: list[dict], *, max_new_tokens: int = 32, stops=None, seed: int = 0) -> dict:
    from ..modeling import generate
    from .metrics import exact_match, normalize_answer

    chat = getattr(tok, "chat_template", None) is not None
    prompts = [[{"role": "user", "content": r["prompt"]}] if chat else r["prompt"] for r in rows]
    answers = generate(model, tok, prompts, max_new_tokens=max_new_tokens, seed=seed, eos_token_ids=stops)
    refs = [r["answer"] for r in rows]
    em = sum(exact_match(a, b) for a, b in zip(answers, refs)) / len(rows)
    contains = sum(bool(re.search(r"(?<!\w)" + re.escape(normalize_answer(b)) + r"(?!\w)", normalize_answer(a)))
                   for a, b in zip(answers, refs)) / len(rows)
    return {"metric": "exact_match", "value": em, "contains": contains, "n": len(rows), "answers": answers}


def score_benchmark(model, tok, bench: Benchmark, *, limit: int | None = None, max_new_tokens: int = 32,
                    stops=None, seed: int = 0) -> dict:
    """One model's result on one benchmark: {metric, value, n, ...}."""
    if bench.kind == "lm_eval_task":
        limit = limit or LM_EVAL_DEFAULT_LIMIT
    rows = bench.rows[:limit] if limit else bench.rows
    if bench.kind == "multiple_choice":
        return score_multiple_choice(model, tok, rows)
    if bench.kind == "generation":
        return score_generation(model, tok, rows, max_new_tokens=max_new_tokens, stops=stops, seed=seed)
    from .harness import run_lm_eval

    return run_lm_eval(model, tok, bench, limit=limit)


def benchmarks_report(benches: list[Benchmark], base: dict, tuned: dict) -> dict:
    """{task: {base, tuned, metric, n, delta, kind, source, ...}} from the two sides' results."""
    out = {}
    for b in benches:
        rb, rt = base[b.name], tuned[b.name]
        entry = {"base": rb["value"], "tuned": rt["value"], "metric": rt["metric"], "n": rt["n"],
                 "delta": rt["value"] - rb["value"], "kind": b.kind, "source": b.source}
        for extra in ("acc_norm", "contains"):
            if extra in rt:
                entry[extra] = {"base": rb.get(extra), "tuned": rt[extra]}
        if "answers" in rt:
            entry["samples"] = [{"prompt": r["prompt"], "reference": r["answer"], "base": x, "tuned": y}
                                for r, x, y in zip(b.rows, rb["answers"], rt["answers"])][:5]
        out[b.name] = entry
    return out


def load_benchmarks(specs) -> list[Benchmark]:
    """Every named benchmark, read and checked before any model loads; names made unique."""
    out: list[Benchmark] = []
    for s in specs or []:
        b = load_benchmark(s)
        base, k = b.name, 2
        while any(o.name == b.name for o in out):
            b.name, k = f"{base}-{k}", k + 1
        out.append(b)
    return out
