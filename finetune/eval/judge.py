"""LLM-as-judge: a judge model compares the base model's and the fine-tuned model's answers pairwise.

Each held-out prompt is judged twice with the answers' positions swapped (base as A, then fine-tuned
as A), with the fixed RUBRIC. The verdict is read from the judge's next-token logits for the letters
"A" and "B" (so a tiny judge that cannot write a sentence still gives a verdict), less the judge's
mean preference for position A over all its calls (small judges say "A" to nearly everything): a
pair counts as a win or a loss only when both orders agree, otherwise as a tie. Identical answers are a tie. win_rate = (wins + ties / 2) / n.

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
    """The token ids a judge may give its verdict with: "A" and " A" where each is one token (a
    byte-level tokenizer may split " A" into a space and "A": the space says nothing, so it is left out)."""
    ids = []
    for text in (letter, " " + letter):
        enc = tok(text, add_special_tokens=False)["input_ids"]
        if len(enc) == 1 and enc[0] not in ids:
            ids.append(enc[0])
    if not ids:  # no single token: the letter's own last token
        enc = tok(letter, add_special_tokens=False)["input_ids"]
        ids = enc[-1:]
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


def calibrate(probs: list[float]) -> tuple[list[float], float]:
    """P(A) with the judge's mean preference for position A taken out (its mean log-odds over every
    call, both orders of every pair, is moved to 0: "calibrate before use", Zhao et al. 2021). A
    judge that answers "A" whatever it reads gives no verdict either way; one that reads the answers
    keeps its ordering of them."""
    eps = 1e-6
    logits = [math.log(max(p, eps) / max(1 - p, eps)) for p in probs]
    bias = sum(logits) / len(logits) if logits else 0.0
    return [1 / (1 + math.exp(-(x - bias))) for x in logits], bias


def verdict_of(p_base_first: float, p_tuned_first: float, identical: bool) -> str:
    """win/loss/tie for the fine-tuned model from the two orders' (calibrated) P(A)."""
    if identical:
        return "tie"
    first, second = _side(p_base_first, "base", "finetuned"), _side(p_tuned_first, "finetuned", "base")
    if first == second == "finetuned":
        return "win"
    if first == second == "base":
        return "loss"
    return "tie"


def _side(p_a: float, a: str, b: str) -> str:
    """Which answer one order prefers: A's, B's, or neither (P(A) exactly one half)."""
    return a if p_a > 0.5 else b if p_a < 0.5 else "neither"


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
    raw = prefer_a(model, tok, texts)
    probs, bias = calibrate(raw)
    pairs, counts = [], {"win": 0, "loss": 0, "tie": 0}
    for i, (p, b, t) in enumerate(zip(prompts, base, tuned)):
        p1, p2 = probs[2 * i], probs[2 * i + 1]
        v = verdict_of(p1, p2, normalize_answer(b) == normalize_answer(t))
        counts[v] += 1
        pairs.append({"prompt": p, "base": b, "finetuned": t, "verdict": v, "orders": [
            {"a": "base", "b": "finetuned", "p_a_raw": round(raw[2 * i], 4), "p_a": round(p1, 4),
             "prefers": _side(p1, "base", "finetuned")},
            {"a": "finetuned", "b": "base", "p_a_raw": round(raw[2 * i + 1], 4), "p_a": round(p2, 4),
             "prefers": _side(p2, "finetuned", "base")}]})
    n = len(pairs)
    a_share = sum(x >= 0.5 for x in raw) / len(raw)
    return {"win_rate": (counts["win"] + counts["tie"] / 2) / n, "wins": counts["win"], "losses": counts["loss"],
            "ties": counts["tie"], "n": n, "judge_model": jm, "rubric": RUBRIC,
            "position_bias": {"prefers_a": round(a_share, 4), "mean_log_odds_a": round(bias, 4),
                              "consistent": sum(v["verdict"] != "tie" for v in pairs)},
            "method": "pairwise, both orders, verdict from the logits of 'A' and 'B' with the judge's mean "
                      "position preference taken out; a win or loss only when both orders agree",
            "pairs": pairs}
