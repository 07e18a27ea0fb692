"""More training rows from the ones you have: rule-based paraphrases and self-instruct generation.

    paraphrase_rows(rows, kind, n, seed)        deterministic rewrites of the prompt side only (answers
                                                stay exactly as written): synonym swaps from a small
                                                table, instruction templates, casing/punctuation/space
                                                variants; seeded, so the same call gives the same rows
    self_instruct_rows(rows, kind, n, seed, model)
                                                a few-shot prompt of k seed rows asks a model for one new
                                                instruction/answer pair; parse_pair() keeps only outputs
                                                that parse into a sensible pair
    augment_dataset(source, out_dir, method=...)
                                                either of the above, deduplicated (exact + MinHash near
                                                duplicates) against the existing rows and each other,
                                                written as a prepared dataset folder (atomic, like
                                                finetune.data.prepare_dataset); generated rows carry
                                                "_generated": "paraphrase" | "self-instruct" and go to
                                                the training split only, so validation stays real

Try it: `python -c "from finetune.data import augment_dataset as a; print(a('builtin:demo', n=20))"`.
With builtin:tiny-chat (random weights) self-instruct outputs are noise: they are rejected and counted.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any, Literal

from ..paths import is_safe_name
from .common import DEFAULT_SEED, GENERATED_KEY, DatasetError, _display_name, _norm, _row_text, _slug
from .prepare import load_prepared, write_prepared
from .quality import find_near_duplicates

METHODS = ("paraphrase", "self_instruct")
MAX_N = 5000

# Pairs of interchangeable words in instructions (both directions are used). Kept small and safe:
# verbs and adjectives of the request, never content words an answer may depend on.
_SYNONYMS = [("give", "provide"), ("list", "enumerate"), ("explain", "describe"), ("write", "compose"),
             ("short", "brief"), ("big", "large"), ("small", "little"), ("quick", "fast"),
             ("help", "assist"), ("show", "display"), ("use", "employ"),
             ("make", "create"), ("find", "locate"), ("choose", "pick"), ("begin", "start"),
             ("tell", "inform"), ("simple", "easy"), ("example", "instance"), ("method", "approach"),
             ("name", "state"), ("classify", "categorise"), ("summarise", "sum up"),
             ("correct", "right"), ("opposite", "antonym"), ("city", "town"), ("idea", "notion")]
_SWAP: dict[str, str] = {}
for _a, _b in _SYNONYMS:
    _SWAP.setdefault(_a, _b)
    _SWAP.setdefault(_b, _a)
_SWAP_RE = re.compile(r"\b(" + "|".join(sorted(map(re.escape, _SWAP), key=len, reverse=True)) + r")\b",
                      re.IGNORECASE)
# Framings that keep the request's meaning; questions and commands take different ones.
_TEMPLATES = ["Task: {x}", "{x} Thanks.", "Could you help with this? {x}", "Here is a request. {x}",
              "Help me out: {x}", "Answer the following. {x}", "Please {x}"]
_QUESTION_TEMPLATES = ["Quick question: {x}", "I have a question. {x}", "{x} Thanks.",
                       "Could you help with this? {x}", "Question: {x}", "Answer the following. {x}"]


def _keep_case(src: str, word: str) -> str:
    if src.isupper() and len(src) > 1:
        return word.upper()
    return word[:1].upper() + word[1:] if src[:1].isupper() else word


def _synonyms(text: str, rng: random.Random) -> str:
    hits = list(_SWAP_RE.finditer(text))
    if not hits:
        return text
    chosen = {m.start() for m in rng.sample(hits, k=max(1, rng.randint(1, len(hits))))}
    return _SWAP_RE.sub(lambda m: _keep_case(m.group(), _SWAP[m.group().lower()])
                        if m.start() in chosen else m.group(), text)


def _template(text: str, rng: random.Random) -> str:
    x = text.strip()
    t = rng.choice(_QUESTION_TEMPLATES if x.endswith("?") else _TEMPLATES)
    if t.startswith("Please") and x[:1].isupper() and not x[:2].isupper():
        x = x[0].lower() + x[1:]
    return t.format(x=x)


def _surface(text: str, rng: random.Random) -> str:
    """Casing, punctuation and whitespace variants (never changes the words)."""
    x = " ".join(text.split()) if "\n" not in text else text.strip()
    choice = rng.randrange(3)
    if choice == 0 and x[-1:] in ".!":
        return x[:-1]
    if choice == 1 and x[-1:].isalnum():
        return x + "."
    return x[:1].lower() + x[1:] if x[:1].isupper() else x[:1].upper() + x[1:]


def paraphrase_text(text: str, rng: random.Random) -> str:
    """One rewrite of the first paragraph (the instruction; an input below it is left as is): at
    least one word-level change (synonyms, then maybe a template), maybe a surface variant."""
    head, sep, rest = text.partition("\n\n")
    out = head
    if rng.random() < 0.7:
        out = _synonyms(out, rng)
    if out == head or rng.random() < 0.5:  # a template always changes the words
        out = _template(out, rng)
    if rng.random() < 0.4:
        out = _surface(out, rng)
    return out + sep + rest


def _prompt_ref(row: dict, kind: str) -> tuple[Any, str] | None:
    """(container, key) of the text to rewrite: the last user turn, the prompt, or the text."""
    if kind == "messages":
        users = [m for m in row["messages"] if m.get("role") == "user" and isinstance(m.get("content"), str)]
        return (users[-1], "content") if users else None
    if kind == "text":
        return row, "text"
    p = row.get("prompt")
    if isinstance(p, str):
        return row, "prompt"
    if isinstance(p, list):
        users = [m for m in p if m.get("role") == "user" and isinstance(m.get("content"), str)]
        return (users[-1], "content") if users else None
    return None


def paraphrase_rows(rows: list[dict], kind: str, n: int, seed: int = DEFAULT_SEED) -> list[dict]:
    """Up to n * 3 candidate rewrites (the caller deduplicates and keeps n)."""
    rng = random.Random(seed)
    usable = [r for r in rows if _prompt_ref(r, kind) is not None and not r.get(GENERATED_KEY)]
    if not usable:
        raise DatasetError(f"no rows with a prompt to paraphrase (kind {kind})", field="method")
    out = []
    for _ in range(n * 3):
        row = json.loads(json.dumps(rng.choice(usable)))  # a deep copy; the source row stays as is
        box, key = _prompt_ref(row, kind)
        box[key] = paraphrase_text(box[key], rng)
        row[GENERATED_KEY] = "paraphrase"
        out.append(row)
    return out


# --- self-instruct ------------------------------------------------------------------------------

_LABELS = r"(?:instruction|question|prompt|task|input|q)"
_ANSWERS = r"(?:answer|response|output|completion|a)"
_PAIR_RE = re.compile(rf"^\s*(?:\d+[.)]\s*)?{_LABELS}\s*[:：]\s*(?P<q>.+?)\s*\n+\s*{_ANSWERS}\s*[:：]\s*(?P<a>.+?)\s*"
                      rf"(?=\n\s*{_LABELS}\s*[:：]|\Z)", re.IGNORECASE | re.DOTALL)


def _pair_of(row: dict, kind: str) -> tuple[str, str] | None:
    if kind == "messages":
        msgs = row["messages"]
        users = [m for m in msgs if m["role"] == "user"]
        if msgs and msgs[-1]["role"] == "assistant" and users:
            return str(users[-1]["content"]), str(msgs[-1]["content"])
        return None
    if kind == "prompt_completion" and isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
        return row["prompt"], row["completion"]
    return None


def few_shot_prompt(seeds: list[tuple[str, str]]) -> str:
    shots = "\n\n".join(f"Instruction: {q.strip()}\nAnswer: {a.strip()}" for q, a in seeds)
    return ("Here are examples of instructions with their answers.\n\n" + shots
            + "\n\nWrite one new example, different from these, in exactly the same format "
              "(a line starting with 'Instruction:' and a line starting with 'Answer:').")


def _looks_like_text(s: str) -> bool:
    letters = sum(c.isalpha() for c in s)
    words = re.findall(r"[A-Za-z]{2,}", s)
    return letters >= 0.5 * len(s.replace(" ", "")) and len(words) >= 1 and "\ufffd" not in s


def parse_pair(output: str) -> tuple[str, str] | None:
    """An (instruction, answer) pair from a model's output, or None when it does not parse.

    Accepts "Instruction: ... / Answer: ..." (and Question/Q/Input, Response/Output/A), a JSON
    object with instruction/question/prompt and output/answer/response, and an output that
    continues right after "Instruction:". Rejects empty, too short or long, repeated and garbled
    fields."""
    text = (output or "").strip()
    if not text:
        return None
    q = a = None
    j = text[text.find("{"): text.rfind("}") + 1] if "{" in text else ""
    if j:
        try:
            obj = json.loads(j)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            q = next((obj[k] for k in ("instruction", "question", "prompt") if isinstance(obj.get(k), str)), None)
            a = next((obj[k] for k in ("output", "answer", "response") if isinstance(obj.get(k), str)), None)
    if q is None or a is None:
        m = _PAIR_RE.search(text) or _PAIR_RE.search("Instruction: " + text)
        if not m:
            return None
        q, a = m.group("q"), m.group("a")
    q, a = " ".join(q.split()), a.strip()
    if not (3 <= len(q) <= 2000 and 1 <= len(a) <= 4000) or q.lower() == a.lower():
        return None
    if not (_looks_like_text(q) and (_looks_like_text(a) or re.fullmatch(r"[-+]?\d[\d.,]*", a))):
        return None
    if re.search(rf"^\s*{_LABELS}\s*:", a, re.IGNORECASE | re.MULTILINE):
        return None  # the answer swallowed a second example
    return q, a


def _generate(model_id: str, prompts: list, max_new_tokens: int) -> list[str]:
    """The model's greedy answers (tests replace this to feed canned outputs)."""
    from ..modeling import generate, load_for_inference
    model, tok = load_for_inference(model_id)
    if getattr(tok, "chat_template", None):
        prompts = [[{"role": "user", "content": p}] for p in prompts]
    return generate(model, tok, prompts, max_new_tokens=max_new_tokens)


def self_instruct_rows(rows: list[dict], kind: str, n: int, seed: int = DEFAULT_SEED, *,
                       model: str = "builtin:tiny-chat", k: int = 3,
                       max_new_tokens: int = 96) -> tuple[list[dict], dict]:
    """Ask `model` for n new pairs, each from a prompt of k seed rows (a seeded choice, so the
    greedy outputs differ between prompts). Returns (parsed rows, {"generated", "unparseable"})."""
    if kind not in ("messages", "prompt_completion"):
        raise DatasetError(f"self-instruct needs instruction rows (messages or prompt/completion), "
                           f"this dataset is {kind}", field="method")
    pairs = [p for p in (_pair_of(r, kind) for r in rows if not r.get(GENERATED_KEY)) if p]
    if not pairs:
        raise DatasetError("self-instruct needs rows that end with an answer to use as examples",
                           field="method")
    rng = random.Random(seed)
    k = max(1, min(int(k), len(pairs)))
    prompts = [few_shot_prompt(rng.sample(pairs, k)) for _ in range(n)]
    outputs = _generate(model, prompts, max_new_tokens)
    out, bad = [], 0
    for text in outputs:
        pair = parse_pair(text)
        if pair is None:
            bad += 1
            continue
        q, a = pair
        row = ({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
               if kind == "messages" else {"prompt": q, "completion": a})
        row[GENERATED_KEY] = "self-instruct"
        out.append(row)
    return out, {"generated": len(outputs), "unparseable": bad}


# --- the engine call ----------------------------------------------------------------------------

def _filter_new(existing: list[dict], candidates: list[dict], kind: str, n: int) -> tuple[list[dict], dict]:
    """Keep at most n candidates that are neither exact nor near duplicates of the existing rows or
    of an earlier kept candidate."""
    seen = {_norm(_row_text(r, kind)) for r in existing}
    fresh = []
    exact = 0
    for c in candidates:
        key = _norm(_row_text(c, kind))
        if key in seen:
            exact += 1
            continue
        seen.add(key)
        fresh.append(c)
    texts = [_row_text(r, kind, skip_system=True) for r in existing + fresh]
    base = len(existing)
    near = {later - base for later, _, _ in find_near_duplicates(texts) if later >= base}
    kept = [c for i, c in enumerate(fresh) if i not in near][:n]
    return kept, {"exact_duplicates": exact, "near_duplicates": len(near)}


def augment_dataset(source: str, out_dir: str | None = None, *,
                    method: Literal["paraphrase", "self_instruct"] = "paraphrase", n: int = 50,
                    seed: int = DEFAULT_SEED, model: str = "builtin:tiny-chat", k: int = 3,
                    name: str | None = None, max_new_tokens: int = 96) -> dict:
    """Add up to n generated rows to a dataset's training split and save it as a prepared folder.

    source: a prepared folder or saved name (its split is kept) or any raw source (converted and
    split with the default seed). out_dir defaults to FINETUNE_HOME/datasets/<name or
    "<source>-aug">. Returns {"dir", "method", "requested", "candidates", "kept", "unparseable",
    "exact_duplicates", "near_duplicates", "rows_train", "rows_validation", "kind", "examples",
    "message"}; with nothing kept, nothing is written and "dir" is None.
    """
    method = "self_instruct" if method in ("self-instruct", "self_instruct") else method
    if method not in METHODS:
        raise DatasetError(f"method must be one of {', '.join(METHODS)}, got {method!r}", field="method")
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_N:
        raise DatasetError(f"n must be a whole number from 1 to {MAX_N}, got {n!r}", field="n")
    if name is not None and not is_safe_name(name, 100):
        raise DatasetError(f"dataset name {name!r} must be letters, digits, '.', '_' or '-'", field="name")
    train, val, kind = load_prepared(source, seed=seed)
    if method == "paraphrase":
        candidates, stats = paraphrase_rows(train, kind, n, seed), {"unparseable": 0}
    else:
        candidates, stats = self_instruct_rows(train, kind, n, seed, model=model, k=k,
                                               max_new_tokens=max_new_tokens)
    kept, dups = _filter_new(train + val, candidates, kind, n)
    result = {"dir": None, "method": method, "requested": n,
              "candidates": stats.get("generated", len(candidates)),
              "kept": len(kept), "unparseable": stats["unparseable"], **dups, "kind": kind,
              "rows_train": len(train) + len(kept), "rows_validation": len(val),
              "examples": [_row_text(r, kind)[:200] for r in kept[:3]]}
    if not kept:
        result["message"] = (f"none of {result['candidates']} generated rows were usable "
                             f"({stats['unparseable']} did not parse, {dups['exact_duplicates']} exact "
                             f"and {dups['near_duplicates']} near duplicates); nothing was written")
        return result
    if out_dir is None:
        from ..paths import datasets_dir
        out_dir = datasets_dir() / (name or f"{_slug(source)}-aug")
    meta = {"source": str(source), "format": kind, "kind": kind,
            "counts": {"train": len(train) + len(kept), "validation": len(val), "skipped": 0,
                       "generated": len(kept)},
            "seed": seed, "augmentation": {k_: v for k_, v in result.items() if k_ not in ("dir", "examples")}}
    if method == "self_instruct":
        meta["augmentation"]["model"] = model
    out = write_prepared(out_dir, train + kept, val, meta)
    result["dir"] = str(out)
    result["message"] = (f"kept {len(kept)} of {n} requested rows ({result['candidates']} candidates: "
                         f"{stats['unparseable']} did not parse, {dups['exact_duplicates']} exact and "
                         f"{dups['near_duplicates']} near duplicates) → {_display_name(str(out))}")
    return result
