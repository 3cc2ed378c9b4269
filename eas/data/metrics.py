"""Answer normalisation and the text scores shared by the task metrics (no nltk, no sklearn).

Normalisation follows the VQA convention the AID/Slake evaluations use: lower-case, punctuation
removed, the articles a/an/the dropped, whitespace collapsed. Tokens are whitespace-separated
words of the normalised text, so the word-level scores (F1, BLEU-1) suit English answers.
"""
from __future__ import annotations

import math
import re
from collections import Counter

_ARTICLES = frozenset({"a", "an", "the"})
# Apostrophes join ("don't" -> "dont") so both spellings of a contraction meet; a decimal point
# or thousands comma between digits stays inside the number; other punctuation separates words,
# so "x-ray" and "x ray" normalise alike.
_APOSTROPHE = re.compile(r"['\u2019]")
_PUNCT = re.compile(r"(?!(?<=\d)[.,](?=\d))[^\w\s]|_")


def normalize_answer(text: str) -> str:
    text = _APOSTROPHE.sub("", str(text).lower())
    words = _PUNCT.sub(" ", text).split()
    return " ".join(w for w in words if w not in _ARTICLES)


def answer_tokens(text: str) -> list[str]:
    return normalize_answer(text).split()


def exact_match(prediction: str, gold: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(gold)


def contains_answer(prediction: str, gold: str) -> bool:
    """'gt in pred' on whole words: the gold words appear contiguously in the prediction.

    Word-level rather than raw substring so that gold "no" is not found inside "normal" or
    "nodule", which a character test would count as hits.
    """
    gold_words, pred_words = answer_tokens(gold), answer_tokens(prediction)
    n = len(gold_words)
    if n == 0:
        return False
    return any(pred_words[i:i + n] == gold_words for i in range(len(pred_words) - n + 1))


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = answer_tokens(prediction), answer_tokens(gold)
    if not pred or not ref:
        return float(pred == ref)
    overlap = sum((Counter(pred) & Counter(ref)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def bleu1(prediction: str, gold: str) -> float:
    """Sentence BLEU with unigrams only: clipped unigram precision times the brevity penalty."""
    pred, ref = answer_tokens(prediction), answer_tokens(gold)
    if not pred or not ref:
        return 0.0
    clipped = sum((Counter(pred) & Counter(ref)).values())
    brevity = 1.0 if len(pred) > len(ref) else math.exp(1.0 - len(ref) / len(pred))
    return brevity * clipped / len(pred)


def percent(hits: float, total: int) -> float | None:
    """100 * hits / total, or None for an empty category (no number is better than a fake 0)."""
    return 100.0 * hits / total if total else None


def task_scores(hits: float, n: int, breakdown: dict[str, tuple[float, int]], metric: str) -> dict:
    """The one result shape every task scorer returns, so the tuning pipeline never special-cases a task.

    {"accuracy": percent of the n scored examples (None when n is 0), "n": n,
     "metric": what `accuracy` counts, in words,
     "breakdown": {name: {"percent": ..., "n": examples behind it}}} - the task's own categories or
    secondary scores, from (summed per-example score in 0..1, count) pairs.
    """
    return {"accuracy": percent(hits, n), "n": n, "metric": metric,
            "breakdown": {name: {"percent": percent(total, count), "n": count}
                          for name, (total, count) in breakdown.items()}}
