"""Blind A/B votes, and their export as a preference dataset for DPO.

`ab_pair(runs, prompt)` draws two of the given models ("base" or run ids), generates both answers
with the same decoding and seed, shuffles the sides and returns only {pair_id, a, b}: the pair id
is random and which model wrote which side stays on the server (FINETUNE_HOME/votes/pairs/).
`vote(pair_id, choice)` records A, B or tie once per pair (then reveals the models);
`export_votes(out)` writes prompt/chosen/rejected JSONL rows (ties and identical answers skipped)
that the Train tab's DPO takes as they are.

CLI: `python -m finetune votes export [--out FILE] --json` prints {path, rows}.
"""

from __future__ import annotations

import json
import random
import secrets
import time
from pathlib import Path

from .paths import atomic_write_json, atomic_write_text, datasets_dir, home, read_json
from .runs import RunError

CHOICES = ("A", "B", "tie")
MAX_PROMPT_CHARS = 4000
DEFAULT_EXPORT = "ab-votes.jsonl"


def votes_dir() -> Path:
    d = home() / "votes"
    (d / "pairs").mkdir(parents=True, exist_ok=True)
    return d


def _pair_path(pair_id: str) -> Path:
    if not isinstance(pair_id, str) or not pair_id.isalnum() or not 8 <= len(pair_id) <= 64:
        raise RunError("unknown pair id: ask for a new pair")
    return votes_dir() / "pairs" / f"{pair_id}.json"


def ab_pair(runs: list[str], prompt: str, *, max_new_tokens: int = 64, seed: int = 0, owner: str = "") -> dict:
    """Two answers to one prompt from two of `runs` (shuffled, anonymous): {pair_id, a, b}."""
    from .compare import check_models, compare_models

    if not isinstance(prompt, str) or not prompt.strip():
        raise RunError("prompt: type a prompt for the two models to answer")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise RunError(f"prompt: at most {MAX_PROMPT_CHARS} characters, got {len(prompt)}")
    models = check_models(runs if not isinstance(runs, str) else [runs])
    if len(models) < 2:
        raise RunError("choose two or more models (runs, or base and a run) for a blind pair")
    rng = random.SystemRandom()
    pair = rng.sample(models, 2)  # which two, and in which order: both random
    res = compare_models(pair, [prompt.strip()], max_new_tokens=max_new_tokens, seed=seed)
    answers = res["rows"][0]["answers"]
    pair_id = secrets.token_hex(16)
    atomic_write_json(_pair_path(pair_id), {
        "pair_id": pair_id, "prompt": prompt.strip(), "a_model": pair[0], "b_model": pair[1],
        "a": answers[pair[0]], "b": answers[pair[1]], "created": time.time(), "owner": owner,
        "decoding": res["decoding"], "choice": None})
    return {"pair_id": pair_id, "a": answers[pair[0]], "b": answers[pair[1]]}


def vote(pair_id: str, choice: str, *, owner: str = "") -> dict:
    """Record A, B or tie for a pair (once); returns the choice and, now that it is cast, the models."""
    if choice not in CHOICES:
        raise RunError(f"choice: must be one of A, B or tie, got {choice!r}")
    p = _pair_path(pair_id)
    pair = read_json(p, default=None)
    if not pair or (pair.get("owner") or "") != (owner or ""):
        raise RunError("unknown pair id: ask for a new pair")
    if pair.get("choice") is not None:
        raise RunError("this pair already has a vote: ask for a new pair")
    pair["choice"], pair["voted"] = choice, time.time()
    atomic_write_json(p, pair)
    record = {k: pair[k] for k in ("pair_id", "prompt", "a_model", "b_model", "a", "b", "choice", "owner")}
    with open(votes_dir() / "votes.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
    return {"pair_id": pair_id, "choice": choice, "a_model": pair["a_model"], "b_model": pair["b_model"],
            "votes": count_votes(owner=owner)}


def _records(owner: str = "") -> list[dict]:
    p = votes_dir() / "votes.jsonl"
    if not p.exists():
        return []
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue  # a half-written last line
        if (r.get("owner") or "") == (owner or ""):
            out.append(r)
    return out


def count_votes(owner: str = "") -> int:
    return len(_records(owner))


def preference_rows(owner: str = "") -> list[dict]:
    rows = []
    for r in _records(owner):
        if r.get("choice") not in ("A", "B"):
            continue  # a tie says neither is preferred
        chosen, rejected = (r["a"], r["b"]) if r["choice"] == "A" else (r["b"], r["a"])
        if not str(chosen).strip() or not str(rejected).strip() or chosen.strip() == rejected.strip():
            continue  # DPO learns nothing from identical or empty answers
        rows.append({"prompt": r["prompt"], "chosen": chosen, "rejected": rejected})
    return rows


def export_votes(out: str | None = None, *, owner: str = "") -> dict:
    """Write the A/B votes as prompt/chosen/rejected JSONL; returns {path, rows, skipped}."""
    path = Path(out).expanduser() if out else datasets_dir() / DEFAULT_EXPORT
    if path.suffix.lower() not in (".jsonl", ".json"):
        path = path.with_suffix(".jsonl")
    rows = preference_rows(owner)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return {"path": str(path.resolve()), "rows": len(rows), "skipped": count_votes(owner) - len(rows)}
