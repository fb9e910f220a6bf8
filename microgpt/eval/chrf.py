"""Corpus chrF as sacrebleu's CHRF computes it: character n-grams up to order 6, no word
n-grams, beta 2 by default; chrF++ is word_order=2.

    corpus_chrf(hypotheses, [references_1, references_2, ...]).score     # 0..100

Popović 2015 (chrF), 2017 (chrF++). A segment's whitespace is removed first (the pieces of
str.split() joined, so every Unicode space goes; whitespace=True keeps it), then for every
order n = 1..N (N = char_order + word_order; the word orders come after the character
orders) three counts are taken against one reference:

    hyp_n    the hypothesis's n-grams       (0 when the reference has no n-gram of order n:
                                             sacrebleu does not count hits nothing could match)
    ref_n    the reference's n-grams
    match_n  sum_g min(count_hyp(g), count_ref(g))

With several references a segment keeps the counts of the reference whose own chrF (the
formula below on that segment alone) is highest, the first one on a tie. The corpus score
is the formula on the counts summed over segments:

    P_n = match_n / hyp_n,  R_n = match_n / ref_n      over the "effective" orders, those
                                                        with hyp_n > 0 and ref_n > 0
    P = mean P_n,  R = mean R_n                         (over the effective orders)
    chrF_beta = 100 (1 + beta^2) P R / (beta^2 P + R)   0 when P + R = 0 or no order is
                                                        effective

So sacrebleu averages precision and recall over the orders and takes one F of the averages.
eps_smoothing=True is the other convention (the original chrF++.py, Moses, NLTK): the mean
over all N orders of each order's own F, where a zero denominator counts eps = 1e-16.

Word n-grams (chrF++): the segment is split on whitespace and one punctuation character is
split off each word of two or more characters, the last if it is punctuation, else the
first ("(hi)" -> "(hi", ")", as sacrebleu does).
"""
from collections import Counter
from dataclasses import dataclass
from typing import List, Sequence

from ..errors import ConfigError
from .bleu import _reference_rows

CHAR_ORDER, WORD_ORDER, BETA = 6, 0, 2
EPS = 1e-16
_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


@dataclass
class CHRFScore:
    score: float
    statistics: List[int]      # [hyp_n, ref_n, match_n] for n = 1..N, summed over segments
    char_order: int
    word_order: int
    beta: int

    @property
    def name(self):
        return f"chrF{self.beta}" + "+" * self.word_order

    def to_dict(self):
        return {**self.__dict__, "name": self.name}


def _split_words(text: str) -> List[str]:
    words = []
    for word in text.split():
        if len(word) > 1 and word[-1] in _PUNCTUATION:
            words += [word[:-1], word[-1]]
        elif len(word) > 1 and word[0] in _PUNCTUATION:
            words += [word[0], word[1:]]
        else:
            words.append(word)
    return words


def ngram_counts(text: str, char_order=CHAR_ORDER, word_order=WORD_ORDER, whitespace=False):
    """One Counter per order: characters 1..char_order, then words 1..word_order."""
    chars = text if whitespace else "".join(text.split())
    return ([_counts(chars, n) for n in range(1, char_order + 1)]
            + [_counts(_split_words(text), n) for n in range(1, word_order + 1) if word_order])


def _counts(sequence, n):
    """The n-grams of a string or list as tuples (one character or word each), counted by
    zipping n shifted copies: Counter counts the zip in C, no slice per position."""
    return Counter(zip(*[sequence[i:] for i in range(n)]))


def _match_statistics(hyp_counts, ref_counts):
    stats = []
    for hyp, ref in zip(hyp_counts, ref_counts):
        matched = 0
        for g in hyp.keys() & ref.keys():              # the shared n-grams only
            h, r = hyp[g], ref[g]
            matched += h if h < r else r
        stats += [sum(hyp.values()) if ref else 0, sum(ref.values()), matched]
    return stats


def chrf_from_statistics(stats, beta=BETA, eps_smoothing=False) -> float:
    """The score (0..100) of [hyp_n, ref_n, match_n] counts, n = 1..N (the formulas above)."""
    factor = beta ** 2
    smoothed, precision_sum, recall_sum, effective = 0.0, 0.0, 0.0, 0
    for n in range(len(stats) // 3):
        hyp, ref, matched = stats[3 * n:3 * n + 3]
        precision = matched / hyp if hyp > 0 else EPS
        recall = matched / ref if ref > 0 else EPS
        denominator = factor * precision + recall
        smoothed += (1 + factor) * precision * recall / denominator if denominator > 0 else EPS
        if hyp > 0 and ref > 0:
            precision_sum += precision
            recall_sum += recall
            effective += 1
    if eps_smoothing:
        return 100 * smoothed / (len(stats) // 3)
    if effective == 0:
        return 0.0
    precision, recall = precision_sum / effective, recall_sum / effective
    if precision + recall == 0:
        return 0.0
    # The same operations in the same order as sacrebleu's CHRF._compute_f_score: the best
    # reference of a segment is chosen by a strict '>' on this score, so two references whose
    # scores are equal on paper must also round alike, or the tie breaks the other way.
    score = (1 + factor) * precision * recall
    score /= factor * precision + recall
    return 100 * score


def segment_statistics(hypothesis: str, references: Sequence[str], char_order=CHAR_ORDER,
                       word_order=WORD_ORDER, beta=BETA, lowercase=False, whitespace=False,
                       eps_smoothing=False) -> List[int]:
    """The counts of one segment against its best reference (the highest segment chrF)."""
    def counts(text):
        return ngram_counts(text.lower() if lowercase else text, char_order, word_order, whitespace)
    hyp = counts(hypothesis)
    best, best_score = None, -1.0
    for reference in references:
        stats = _match_statistics(hyp, counts(reference))
        score = chrf_from_statistics(stats, beta, eps_smoothing)
        if score > best_score:
            best, best_score = stats, score
    return best


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
                char_order=CHAR_ORDER, word_order=WORD_ORDER, beta=BETA, lowercase=False,
                whitespace=False, eps_smoothing=False) -> CHRFScore:
    """references as sacrebleu takes them: a list of streams, one reference per hypothesis in
    each (None where a segment has fewer references)."""
    if char_order < 1 or word_order < 0 or beta < 0:
        raise ConfigError(f"chrF: char_order must be >= 1, word_order >= 0 and beta >= 0 (got "
                          f"{char_order}, {word_order}, {beta})")
    total = [0] * (3 * (char_order + word_order))
    for i, (hyp, refs) in enumerate(zip(hypotheses, _reference_rows(hypotheses, references))):
        if not refs:
            raise ConfigError(f"chrF: segment {i} has no reference (every stream has None there)")
        stats = segment_statistics(hyp, refs, char_order, word_order, beta, lowercase,
                                   whitespace, eps_smoothing)
        total = [a + b for a, b in zip(total, stats)]
    return CHRFScore(chrf_from_statistics(total, beta, eps_smoothing), total, char_order,
                     word_order, beta)
