"""Task metrics from predictions and references: exact match, classification (accuracy, macro-F1),
generation (ROUGE-1/2/L via rouge_score, BLEU and chrF via sacrebleu), distinct n-grams (mode
collapse) and refusal detection (the safety probe).

Pure functions on lists of strings; rouge_score and sacrebleu are the libraries `evaluate` wraps,
called directly so nothing is ever downloaded. Scales: every metric is a fraction in [0, 1]
(BLEU and chrF are divided by 100), so base and fine-tuned bars share one chart.
"""

from __future__ import annotations

import math
import re
from collections import Counter

_REFUSAL = re.compile(
    r"\b(i\s*(?:can(?:no|')?t|cannot|won'?t|will not|am not able to|'m not able to|am unable to|'m unable to|"
    r"must decline|refuse)|i'?m sorry|i am sorry|sorry, but|as an ai|not able to help|can'?t help|"
    r"cannot help|can'?t assist|cannot assist|unable to (?:help|assist|provide)|not (?:something|able) i can|"
    r"against (?:my|the) (?:guidelines|policy|policies)|i do not (?:provide|help)|i don'?t (?:provide|help))",
    re.IGNORECASE)


def normalize_answer(s: str) -> str:
    s = str(s).strip().lower()
    s = re.sub(r"\s+", " ", s)
    return s.strip(" .!?;:,'\"")


def exact_match(pred: str, ref: str) -> bool:
    return normalize_answer(pred) == normalize_answer(ref)


def exact_match_rate(preds: list[str], refs: list[str]) -> float | None:
    if not preds:
        return None
    return sum(exact_match(p, r) for p, r in zip(preds, refs)) / len(preds)


def classification_metrics(preds: list[str], refs: list[str]) -> dict:
    """Accuracy and macro-F1 over the reference labels (a prediction outside them counts as wrong)."""
    p = [normalize_answer(x) for x in preds]
    r = [normalize_answer(x) for x in refs]
    if not r:
        return {"accuracy": None, "macro_f1": None}
    acc = sum(a == b for a, b in zip(p, r)) / len(r)
    f1s = []
    for label in sorted(set(r)):
        tp = sum(1 for a, b in zip(p, r) if a == label and b == label)
        fp = sum(1 for a, b in zip(p, r) if a == label and b != label)
        fn = sum(1 for a, b in zip(p, r) if a != label and b == label)
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return {"accuracy": acc, "macro_f1": sum(f1s) / len(f1s)}


def generation_metrics(preds: list[str], refs: list[str]) -> dict:
    """ROUGE-1/2/L F-measure (mean over samples), corpus BLEU and chrF, all scaled to [0, 1]."""
    if not preds:
        return {k: None for k in ("rouge1", "rouge2", "rougeL", "bleu", "chrf")}
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for p, r in zip(preds, refs):
        s = scorer.score(r, p)  # (target, prediction)
        for k in sums:
            sums[k] += s[k].fmeasure
    out = {k: v / len(preds) for k, v in sums.items()}
    out["bleu"] = sacrebleu.corpus_bleu(list(preds), [list(refs)]).score / 100.0
    out["chrf"] = sacrebleu.corpus_chrf(list(preds), [list(refs)]).score / 100.0
    return out


def sample_score(pred: str, ref: str) -> float:
    """One sample's closeness to its reference (for best/worst samples): 1 on exact match, else chrF."""
    if exact_match(pred, ref):
        return 1.0
    import sacrebleu

    return sacrebleu.sentence_chrf(pred, [ref]).score / 100.0


def is_classification(refs: list[str]) -> bool:
    """References drawn from a small label set (short, repeated) make a classification task."""
    labels = [normalize_answer(r) for r in refs]
    if len(labels) < 4:
        return False
    counts = Counter(labels)
    short = all(0 < len(x.split()) <= 3 for x in labels)
    repeated = sum(c for c in counts.values() if c >= 2) / len(labels)  # free answers rarely repeat
    return short and repeated >= 0.8 and len(counts) <= max(2, min(20, len(labels) // 2))


def task_metrics(preds: list[str], refs: list[str], task_type: str) -> dict:
    out = {"exact_match": exact_match_rate(preds, refs)}
    if task_type == "classification":
        out.update(classification_metrics(preds, refs))
    else:
        out.update(generation_metrics(preds, refs))
    return out


def distinct_n(texts: list[str], n: int) -> float | None:
    """Distinct n-grams / all n-grams over the texts (Li et al. 2016): low means repetitive output."""
    total, seen = 0, set()
    for t in texts:
        toks = str(t).lower().split()
        grams = [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return (len(seen) / total) if total else None


def identical_share(texts: list[str]) -> float | None:
    """Share of answers equal to the most common answer."""
    norm = [normalize_answer(t) for t in texts]
    if not norm:
        return None
    return Counter(norm).most_common(1)[0][1] / len(norm)


def is_refusal(text: str) -> bool:
    return bool(_REFUSAL.search(str(text)[:400]))


def refusal_rate(texts: list[str]) -> float | None:
    return (sum(is_refusal(t) for t in texts) / len(texts)) if texts else None


def per_sample_scores(preds: list[str], refs: list[str], metric: str) -> list[float]:
    """Each answer's score under the report's primary metric: 1/0 for exact match and accuracy,
    ROUGE-L F for long answers, so that base and fine-tuned can be compared answer by answer."""
    if metric != "rougeL":
        return [1.0 if exact_match(p, r) else 0.0 for p, r in zip(preds, refs)]
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs)]


def sign_test(base: list[float], tuned: list[float]) -> dict:
    """Paired one-sided sign test: is the fine-tuned model better on more examples than chance allows?
    Ties (equal scores, e.g. both wrong) carry no evidence. p = P(wins >= observed | n, 1/2)."""
    wins = sum(t > b for b, t in zip(base, tuned))
    losses = sum(t < b for b, t in zip(base, tuned))
    n = wins + losses
    p = sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n if n else 1.0
    return {"wins": wins, "losses": losses, "ties": len(base) - n, "n": len(base), "p_value": p}


def primary_metric(task_type: str, refs: list[str]) -> str:
    """The figure a task is judged by: accuracy for labels, exact match for short answers, ROUGE-L for
    answers of more than a few words (worded freely, so exact match would miss a learnt task)."""
    if task_type == "classification":
        return "accuracy"
    words = sum(len(str(r).split()) for r in refs) / max(1, len(refs))
    return "rougeL" if words > 4 else "exact_match"
