"""Model scoring passes: token NLL on exactly the trained tokens (perplexity) and per-sequence log
probabilities (preference reward accuracy). Labels come from finetune/tokenize.py, so evaluation
scores the very tokens training learned; -100 marks tokens that are not scored.
"""

from __future__ import annotations

import math


def token_nll(model, examples: list[dict], batch_size: int = 16) -> list[tuple[float, int]]:
    """(sum of negative log-likelihood, number of scored tokens) per example (input_ids + labels)."""
    import torch

    device = next(model.parameters()).device
    out: list[tuple[float, int]] = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        width = max(len(e["input_ids"]) for e in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, e in enumerate(chunk):  # right padding: positions stay those of training
            n = len(e["input_ids"])
            ids[j, :n] = torch.tensor(e["input_ids"])
            labels[j, :n] = torch.tensor(e["labels"])
            mask[j, :n] = 1
        ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)),
                                                shift_labels.reshape(-1), ignore_index=-100, reduction="none")
        nll = nll.view(shift_labels.shape)
        scored = shift_labels != -100
        for j in range(len(chunk)):
            out.append((float(nll[j][scored[j]].sum()), int(scored[j].sum())))
    return out


def perplexity_of(nll: list[tuple[float, int]]) -> float:
    """Token-weighted perplexity: exp(total NLL / total scored tokens), not a mean of per-row values."""
    total = sum(n for _, n in nll)
    if total == 0:
        return float("nan")
    return math.exp(min(sum(s for s, _ in nll) / total, 50.0))


def perplexity(model, examples: list[dict], batch_size: int = 16) -> float:
    return perplexity_of(token_nll(model, examples, batch_size))


def text_examples(tokenizer, texts: list[str], max_seq_len: int) -> list[dict]:
    """Plain text rows scored on every token (the general-text regression probe)."""
    from ..tokenize import tokenize_rows

    ex, _ = tokenize_rows(tokenizer, [{"text": t} for t in texts], "text", max_seq_len)
    return ex


def preference_examples(tokenizer, rows: list[dict], max_seq_len: int) -> tuple[list[dict], list[dict], list[int]]:
    """(chosen examples, rejected examples, kept row indices): prompt + answer, the answer's tokens scored."""
    from ..tokenize import TokenizeError, tokenize_row

    chosen, rejected, kept = [], [], []
    for i, r in enumerate(rows):
        try:
            c = tokenize_row(tokenizer, {"prompt": r["prompt"], "completion": r["chosen"]}, "prompt_completion", max_seq_len)
            j = tokenize_row(tokenizer, {"prompt": r["prompt"], "completion": r["rejected"]}, "prompt_completion",
                             max_seq_len)
        except (TokenizeError, KeyError):
            continue
        if any(x != -100 for x in c["labels"]) and any(x != -100 for x in j["labels"]):
            chosen.append({"input_ids": c["input_ids"], "labels": c["labels"]})
            rejected.append({"input_ids": j["input_ids"], "labels": j["labels"]})
            kept.append(i)
    return chosen, rejected, kept
