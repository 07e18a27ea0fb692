"""LLM-as-judge: a judge model compares the base model's and the fine-tuned model's answers pairwise.

Each held-out prompt is judged twice with the answers' positions swapped (base as A, then fine-tuned
as A), with the fixed RUBRIC. The verdict is read from the judge's next-token logits for the letters
"A" and "B" (so a tiny judge that cannot write a sentence still gives a verdict): a pair counts as a
win or a loss only when both orders agree, otherwise as a tie, which cancels a judge's position
bias. Identical answers are a tie. win_rate = (wins + ties / 2) / n.

On a public Space the judge is a built-in model or one the owner lists in FINETUNE_JUDGE_MODELS.
"""

from __future__ import annotations

import math
import os

RUBRIC = (
    "You are a strict and fair judge. Two assistants answered the same request. Judge them by this rubric, "
    "in order: 1. correct and faithful to the request; 2. helpful and complete; 3. clear and concise; "
    "4. safe. Do not prefer an answer for its position or its length.\n\n"
    "Request:\n{prompt}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}\n\n"
    "Which answer is better? Reply with one letter: A or B."
)
MAX_CHARS = 1500  # of a prompt or an answer shown to the judge


class JudgeError(ValueError):
    pass


def check_judge_model(model_id: str, *, public: bool | None = None) -> str:
    """The judge model id, stripped; refused on a public Space unless built-in or listed by the owner."""
    from ..caller import public_mode

    m = (model_id or "").strip()
    if not m:
        raise JudgeError("judge: name a model (a local folder, a Hub id or a built-in such as "
                         "builtin:smollm2-135m-instruct)")
    if public is None:
        public = public_mode()
    allowed = {x.strip() for x in os.environ.get("FINETUNE_JUDGE_MODELS", "").split(",") if x.strip()}
    if public and not m.startswith("builtin:") and m not in allowed:
        raise JudgeError(f"judge {m.rsplit('/', 1)[-1]!r}: on a public Space the judge is a built-in model"
                         + (f" or one of {', '.join(sorted(allowed))}" if allowed else "")
                         + " (the owner lists more in FINETUNE_JUDGE_MODELS)")
    return m


def letter_ids(tok, letter: str) -> list[int]:
    """The token ids a judge may start its verdict with: "A" and " A" (first token of each)."""
    ids = []
    for text in (letter, " " + letter):
        enc = tok(text, add_special_tokens=False)["input_ids"]
        if enc and enc[0] not in ids:
            ids.append(enc[0])
    return ids


def judge_texts(tok, prompt: str, a: str, b: str) -> str:
    body = RUBRIC.format(prompt=prompt[:MAX_CHARS], a=(a or "(no answer)")[:MAX_CHARS],
                         b=(b or "(no answer)")[:MAX_CHARS])
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template([{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True)
    return body + "\nAnswer:"


def prefer_a(model, tok, texts: list[str], batch_size: int = 4) -> list[float]:
    """P(A) / (P(A) + P(B)) of the judge's next token, per text."""
    import torch

    ia, ib = letter_ids(tok, "A"), letter_ids(tok, "B")
    if not ia or not ib or set(ia) & set(ib):
        raise JudgeError("judge: its tokenizer has no distinct tokens for the letters A and B")
    side = tok.padding_side
    tok.padding_side = "left"
    if tok.pad_token is None:  # the judge's own tokenizer, loaded for this pass only
        tok.pad_token = tok.eos_token
    device = next(model.parameters()).device
    out = []
    try:
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.no_grad():
                logits = model(**enc).logits[:, -1].float()
            la = torch.logsumexp(logits[:, ia], dim=-1)
            lb = torch.logsumexp(logits[:, ib], dim=-1)
            out += torch.sigmoid(la - lb).tolist()
    finally:
        tok.padding_side = side
    return out


def verdict_of(p_base_first: float, p_tuned_first: float, identical: bool) -> str:
    """win/loss/tie for the fine-tuned model from the two orders' P(A)."""
    if identical:
        return "tie"
    tuned_1 = p_base_first < 0.5  # order 1: A = base, B = fine-tuned
    tuned_2 = p_tuned_first > 0.5  # order 2: A = fine-tuned, B = base
    if tuned_1 and tuned_2:
        return "win"
    if not tuned_1 and not tuned_2:
        return "loss"
    return "tie"


def judge_pairs(judge_model: str, prompts: list[str], base: list[str], tuned: list[str], *,
                trust_remote_code: bool = False) -> dict:
    """The judge section of the report: win_rate, wins, losses, ties, n, judge_model, pairs."""
    from ..modeling import load_for_inference
    from .metrics import normalize_answer

    jm = check_judge_model(judge_model)
    if not prompts:
        raise JudgeError("judge: no held-out prompts with answers to judge")
    model, tok = load_for_inference(jm, trust_remote_code=trust_remote_code)
    texts = []
    for p, b, t in zip(prompts, base, tuned):
        texts += [judge_texts(tok, p, b, t), judge_texts(tok, p, t, b)]
    probs = prefer_a(model, tok, texts)
    pairs, counts = [], {"win": 0, "loss": 0, "tie": 0}
    for i, (p, b, t) in enumerate(zip(prompts, base, tuned)):
        p1, p2 = probs[2 * i], probs[2 * i + 1]
        v = verdict_of(p1, p2, normalize_answer(b) == normalize_answer(t))
        counts[v] += 1
        pairs.append({"prompt": p, "base": b, "finetuned": t, "verdict": v, "orders": [
            {"a": "base", "b": "finetuned", "p_a": round(p1, 4), "prefers": "base" if p1 >= 0.5 else "finetuned"},
            {"a": "finetuned", "b": "base", "p_a": round(p2, 4), "prefers": "finetuned" if p2 > 0.5 else "base"}]})
    n = len(pairs)
    a_share = sum(x >= 0.5 for x in probs) / len(probs)
    return {"win_rate": (counts["win"] + counts["tie"] / 2) / n, "wins": counts["win"], "losses": counts["loss"],
            "ties": counts["tie"], "n": n, "judge_model": jm, "rubric": RUBRIC,
            "position_bias": {"prefers_a": round(a_share, 4),
                              "consistent": sum(v["verdict"] != "tie" for v in pairs)},
            "method": "pairwise, both orders, verdict from the logits of 'A' and 'B'",
            "pairs": pairs, "mean_p_tuned": round(sum((1 - probs[2 * i]) + probs[2 * i + 1]
                                                      for i in range(n)) / (2 * n), 4) if n else math.nan}
