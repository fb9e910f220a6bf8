"""Corpus BLEU as sacrebleu computes it by default: 13a tokenization, exp smoothing, 4-grams.

    corpus_bleu(hypotheses, [references_1, references_2, ...]).score     # 0..100

Papineni et al. 2002. For each order n = 1..4, over the whole corpus:

    p_n = sum_segments sum_{g in n-grams(hyp)} min(count_hyp(g), max_r count_ref_r(g))
          / sum_segments (number of n-grams in hyp)                     ("clipped precision")
    BP  = 1 if c >= r else exp(1 - r / c)      c: total hypothesis length, r: the total of each
                                               segment's reference length closest to its
                                               hypothesis (a tie goes to the shorter one)
    BLEU = 100 * BP * exp(mean_n log p_n)

Smoothing "exp" (mteval-v13a's, sacrebleu's default): the k-th order whose clipped count is
zero gets p_n = 1 / (2^k * total_n) instead of 0. An order with no hypothesis n-gram at all
ends the product there (the mean is still over all 4 orders, as sacrebleu does: its
precisions for the missing orders stay 0 and log 0 is taken as -9999999999), and a corpus
with no match of any order scores 0.

13a tokenization (mteval-v13a.pl, as sacrebleu's tokenizer_13a.py writes it): drop
"<skipped>", join "-\\n" hyphenations, newlines to spaces, unescape &quot; &amp; &lt; &gt;, then
split off every punctuation character except a period or comma between digits, and a dash
after a digit. Segments are right-stripped first.
"""
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import List, Sequence

from ..errors import ConfigError

MAX_ORDER = 4

# The punctuation classes of mteval-v13a: { to ~, [ to `, space to &, ( to +, : to @, and /.
_PUNCTUATION = re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])")
_PERIOD_COMMA_AFTER = re.compile(r"([^0-9])([\.,])")     # split unless preceded by a digit
_PERIOD_COMMA_BEFORE = re.compile(r"([\.,])([^0-9])")    # split unless followed by a digit
_DASH_AFTER_DIGIT = re.compile(r"([0-9])(-)")


def tokenize_13a(line: str) -> List[str]:
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = (line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                .replace("&gt;", ">"))
    line = f" {line} "
    line = _PUNCTUATION.sub(r" \1 ", line)
    line = _PERIOD_COMMA_AFTER.sub(r"\1 \2 ", line)
    line = _PERIOD_COMMA_BEFORE.sub(r" \1 \2", line)
    line = _DASH_AFTER_DIGIT.sub(r"\1 \2 ", line)
    return line.split()


def _ngrams(tokens, max_order):
    counts = Counter()
    for n in range(1, max_order + 1):
        for i in range(len(tokens) - n + 1):
            counts[tuple(tokens[i:i + n])] += 1
    return counts


@dataclass
class BLEUScore:
    score: float
    correct: List[int]
    total: List[int]
    precisions: List[float]
    brevity_penalty: float
    sys_len: int
    ref_len: int

    def to_dict(self):
        return dict(self.__dict__)


def _closest_length(hyp_len, ref_lens):
    best_diff, best = None, None
    for length in ref_lens:
        diff = abs(hyp_len - length)
        if best_diff is None or diff < best_diff or (diff == best_diff and length < best):
            best_diff, best = diff, length
    return best


def segment_statistics(hypothesis: str, references: Sequence[str], max_order=MAX_ORDER):
    """[hyp_len, ref_len, correct_1..N, total_1..N] of one segment (sacrebleu's layout)."""
    ref_counts, ref_lens = Counter(), []
    for ref in references:
        tokens = tokenize_13a(ref.rstrip())
        ref_lens.append(len(tokens))
        for gram, count in _ngrams(tokens, max_order).items():
            if count > ref_counts[gram]:
                ref_counts[gram] = count                  # clip by the largest reference count
    hyp = tokenize_13a(hypothesis.rstrip())
    correct, total = [0] * max_order, [0] * max_order
    for gram, count in _ngrams(hyp, max_order).items():
        total[len(gram) - 1] += count
        if gram in ref_counts:
            correct[len(gram) - 1] += min(count, ref_counts[gram])
    return [len(hyp), _closest_length(len(hyp), ref_lens)] + correct + total


def bleu_from_statistics(correct, total, sys_len, ref_len, max_order=MAX_ORDER):
    brevity = 1.0
    if sys_len < ref_len:
        brevity = math.exp(1 - ref_len / sys_len) if sys_len > 0 else 0.0
    precisions = [0.0] * max_order
    if not any(correct):
        return BLEUScore(0.0, list(correct), list(total), precisions, brevity, sys_len, ref_len)
    smooth = 1.0
    for n in range(max_order):
        if total[n] == 0:
            break
        if correct[n] == 0:
            smooth *= 2                                   # "exp" smoothing
            precisions[n] = 100.0 / (smooth * total[n])
        else:
            precisions[n] = 100.0 * correct[n] / total[n]
    log_sum = sum(math.log(p) if p > 0 else -9999999999 for p in precisions)
    score = brevity * math.exp(log_sum / max_order)
    return BLEUScore(score, list(correct), list(total), precisions, brevity, sys_len, ref_len)


def _reference_rows(hypotheses, references):
    """references as sacrebleu takes them: a list of streams, each one reference per segment
    (None where a segment has fewer references)."""
    if isinstance(references, str) or not all(len(s) == len(hypotheses) for s in references):
        raise ConfigError("BLEU: give the references as a list of streams, each with one "
                          "reference per hypothesis")
    return [[s[i] for s in references if s[i] is not None] for i in range(len(hypotheses))]


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
                max_order=MAX_ORDER) -> BLEUScore:
    stats = [0] * (2 + 2 * max_order)
    for hyp, refs in zip(hypotheses, _reference_rows(hypotheses, references)):
        for i, value in enumerate(segment_statistics(hyp, refs, max_order)):
            stats[i] += value
    return bleu_from_statistics(stats[2:2 + max_order], stats[2 + max_order:], stats[0],
                                stats[1], max_order)
