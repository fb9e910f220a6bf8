"""ROUGE-1, ROUGE-2 and ROUGE-L F1 of one prediction against one target, as Google's
rouge-score package computes them (its RougeScorer, rouge_types rouge1/rouge2/rougeL).

    rouge(target, prediction, stem=False) -> {"rouge1": Score, "rouge2": ..., "rougeL": ...}

Tokens (Lin 2004's convention, rouge-score's tokenize.py): lowercase, every run of
characters outside [a-z0-9] becomes a space (so accented letters and other scripts are
dropped), split; with stemming, tokens longer than 3 characters go through the Porter
stemmer (porter.py, NLTK's variant).

    ROUGE-N:  overlap = sum_g min(count_target(g), count_prediction(g))   over n-grams g
              P = overlap / max(#prediction n-grams, 1),  R = overlap / max(#target n-grams, 1)
    ROUGE-L:  L = length of the longest common subsequence of the two token lists
              P = L / len(prediction),  R = L / len(target)     (0 if either is empty)
    F1 = 2 P R / (P + R), 0 when P + R = 0.

A corpus score is the mean of the per-pair F1 (rouge-score's BootstrapAggregator reports
a resampled median of the same per-pair scores; `mean_rouge` keeps the plain mean).
"""
import functools
import re
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List

from . import porter

TYPES = ("rouge1", "rouge2", "rougeL")
_NON_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")
_SPACES = re.compile(r"\s+")
_VALID = re.compile(r"^[a-z0-9]+$")
_stem = functools.lru_cache(maxsize=1 << 16)(porter.stem)    # a corpus repeats its words


@dataclass
class Score:
    precision: float
    recall: float
    fmeasure: float


def tokenize(text: str, stem=False) -> List[str]:
    tokens = _SPACES.split(_NON_ALPHANUMERIC.sub(" ", text.lower()))
    if stem:
        tokens = [_stem(t) if len(t) > 3 else t for t in tokens]
    return [t for t in tokens if _VALID.match(t)]


def _f1(precision, recall):
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _ngram_score(target, prediction, n):
    t = Counter(tuple(target[i:i + n]) for i in range(len(target) - n + 1))
    p = Counter(tuple(prediction[i:i + n]) for i in range(len(prediction) - n + 1))
    overlap = sum(min(count, p[g]) for g, count in t.items())
    precision = overlap / max(sum(p.values()), 1)
    recall = overlap / max(sum(t.values()), 1)
    return Score(precision, recall, _f1(precision, recall))


def lcs_length(a, b):
    """Longest common subsequence by the row-by-row dynamic program, O(len(a) len(b)) time
    and O(len(b)) memory: row[j] = LCS(a[:i], b[:j])."""
    if len(b) > len(a):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0                               # LCS(a[:i-1], b[:j-1])
        for j, y in enumerate(b, 1):
            above = row[j]
            row[j] = diagonal + 1 if x == y else (above if above > row[j - 1] else row[j - 1])
            diagonal = above
    return row[-1]


def _lcs_score(target, prediction):
    if not target or not prediction:
        return Score(0, 0, 0)
    length = lcs_length(target, prediction)
    precision, recall = length / len(prediction), length / len(target)
    return Score(precision, recall, _f1(precision, recall))


def rouge_tokens(target: List[str], prediction: List[str]) -> Dict[str, Score]:
    return {"rouge1": _ngram_score(target, prediction, 1),
            "rouge2": _ngram_score(target, prediction, 2),
            "rougeL": _lcs_score(target, prediction)}


def rouge(target: str, prediction: str, stem=False) -> Dict[str, Score]:
    return rouge_tokens(tokenize(target, stem), tokenize(prediction, stem))


def mean_rouge(targets, predictions, stem=False) -> Dict[str, float]:
    """The mean F1 of each type over the pairs; per-pair scores are in `rouge`."""
    if len(targets) != len(predictions):
        from ..errors import ConfigError
        raise ConfigError(f"ROUGE: {len(predictions)} predictions for {len(targets)} targets")
    totals = dict.fromkeys(TYPES, 0.0)
    for target, prediction in zip(targets, predictions):
        for name, score in rouge(target, prediction, stem).items():
            totals[name] += score.fmeasure
    return {name: total / max(len(targets), 1) for name, total in totals.items()}
