"""The numbers of a report: accuracy, length-normalized accuracy, exact match, their standard
errors, and the averages over subjects.

    acc       = mean_i [argmax_j ll_ij == gold_i]
    acc_norm  = mean_i [argmax_j ll_ij / len(choice_ij) == gold_i]     len: characters of the
                choice text (lm-eval's definition: ConfigurableTask.process_results divides by
                len(choice), the choice string without its leading space)
    argmax takes the first of equal values, as numpy's does.
    chance    = mean_i 1 / k_i   (k_i: the number of choices): beside every accuracy, since
                "25%" means nothing on MMLU and everything on a 2-way task.

Standard error by the bootstrap: resample the per-example scores with replacement B times
(seeded), SE = the standard deviation of the B means. Micro average: every example counts
once; macro: the mean of the per-subject means (MMLU's convention).

GSM8K's answer extraction and normalization (lm-eval's gsm8k task: filters "strict-match" and
"flexible-extract", metric exact_match with ignore_case and regexes_to_ignore):
  strict     the first "#### N" in the completion (N: -?[0-9.,]+)
  flexible   the last number-looking run "(-?[$0-9.,]{2,})|(-?[0-9]+)"
  both sides then lose ",", "$", everything through "#### ", a trailing ".", and are
  lowercased; no match is the string "[invalid]", which equals no reference.
"""
import re
from typing import Dict, List, Sequence

import numpy as np

STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")
INVALID = "[invalid]"


def choose(logprobs: Sequence[float], choices: Sequence[str]):
    """(argmax of log-likelihoods, argmax of log-likelihood per character)."""
    ll = np.asarray(logprobs, dtype=np.float64)
    lengths = np.array([float(len(c)) for c in choices])
    return int(np.argmax(ll)), int(np.argmax(ll / lengths))


def extract(text: str, pattern=STRICT, group=0) -> str:
    """lm-eval's RegexFilter: findall, pick match `group` (-1: the last), first non-empty
    capture of it, stripped; INVALID when nothing matches."""
    found = pattern.findall(text)
    if not found:
        return INVALID
    match = found[group]
    if isinstance(match, tuple):
        match = next((m for m in match if m), INVALID)
    return match.strip()


def normalize_answer(text: str) -> str:
    for pattern in IGNORE:
        text = re.sub(pattern, "", text)
    return text.lower()


def gsm8k_scores(completion: str, reference: str) -> Dict[str, float]:
    gold = normalize_answer(reference)
    strict = extract(completion, STRICT, 0)
    flexible = extract(completion, FLEXIBLE, -1)
    return {"exact_match_strict": float(normalize_answer(strict) == gold),
            "exact_match_flexible": float(normalize_answer(flexible) == gold),
            "extracted_strict": strict, "extracted_flexible": flexible}


def exact_or_contains(completion: str, answers: Sequence[str], contains=False) -> float:
    """1.0 when the stripped completion equals (or contains) one of the answers."""
    text = completion.strip()
    return float(any((a.strip() in text) if contains else (a.strip() == text) for a in answers))


def bootstrap_se(values: Sequence[float], resamples=1000, seed=0) -> float:
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return 0.0
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    return float(means.std())


def summarize(per_example: List[dict], metrics: Sequence[str], resamples=1000, seed=0) -> dict:
    """{metric: {micro, macro, se, chance?, by_subject}} from per-example records."""
    out = {}
    subjects = sorted({e.get("subject", "") for e in per_example})
    for name in metrics:
        values = [e[name] for e in per_example]
        entry = {"micro": float(np.mean(values)) if values else float("nan"),
                 "se": bootstrap_se(values, resamples, seed), "n": len(values)}
        if len(subjects) > 1:
            by = {s: float(np.mean([e[name] for e in per_example if e.get("subject", "") == s]))
                  for s in subjects}
            entry["by_subject"] = by
            entry["macro"] = float(np.mean(list(by.values())))
        if per_example and "choices" in per_example[0]:
            entry["chance"] = float(np.mean([1.0 / len(e["choices"]) for e in per_example]))
        out[name] = entry
    return out
