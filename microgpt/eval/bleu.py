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

Speed: every rule after the unescaping looks at two neighbouring characters at most and
treats whitespace as a non-digit, so a line's tokens are the tokens of its whitespace-split
words, each word tokenized alone between two spaces (as the line is padded). A corpus
repeats its words, so `Tokenizer13a` keeps each word's tokens for the corpus it scores:
the regular expressions run once per distinct word, not once per line. N-grams are counted
by zipping shifted copies of the token list (Counter counts an iterable in C).
"""
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import List, Sequence

from ..errors import ConfigError

MAX_ORDER = 4

# The punctuation classes of mteval-v13a: { to ~, [ to `, space to &, ( to +, : to @, and /;
# each such character c becomes " c " (a translation table: the regex sub's effect, in C).
_PUNCTUATION = "".join(chr(c) for lo, hi in ((0x7B, 0x7E), (0x5B, 0x60), (0x20, 0x26),
                                             (0x28, 0x2B), (0x3A, 0x40), (0x2F, 0x2F))
                       for c in range(lo, hi + 1))
_SPACED = str.maketrans({c: f" {c} " for c in _PUNCTUATION})
_PERIOD_COMMA_AFTER = re.compile(r"([^0-9])([\.,])")     # split unless preceded by a digit
_PERIOD_COMMA_BEFORE = re.compile(r"([\.,])([^0-9])")    # split unless followed by a digit
_DASH_AFTER_DIGIT = re.compile(r"([0-9])(-)")


def _unescape(line: str) -> str:
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = (line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                .replace("&gt;", ">"))
    return line


def _word_tokens(word: str) -> List[str]:
    """The 13a rules on one whitespace-free word, padded with a space each side."""
    text = f" {word.translate(_SPACED)} "
    if "." in text or "," in text:
        text = _PERIOD_COMMA_AFTER.sub(r"\1 \2 ", text)
        text = _PERIOD_COMMA_BEFORE.sub(r" \1 \2", text)
    if "-" in text:
        text = _DASH_AFTER_DIGIT.sub(r"\1 \2 ", text)
    return text.split()


class Tokenizer13a:
    """13a tokens of lines, each distinct word's tokens computed once (see the header)."""

    def __init__(self):
        self.words = {}

    def __call__(self, line: str) -> List[str]:
        tokens, known = [], self.words
        for word in _unescape(line).split():
            pieces = known.get(word)
            if pieces is None:
                pieces = known[word] = _word_tokens(word)
            tokens += pieces
        return tokens


def tokenize_13a(line: str) -> List[str]:
    return Tokenizer13a()(line)


def _ngrams(tokens, max_order):
    """One Counter per order n = 1..max_order of the n-gram tuples."""
    return [Counter(zip(*[tokens[i:] for i in range(n)])) for n in range(1, max_order + 1)]


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


def segment_statistics(hypothesis: str, references: Sequence[str], max_order=MAX_ORDER,
                       tokenize=None):
    """[hyp_len, ref_len, correct_1..N, total_1..N] of one segment (sacrebleu's layout)."""
    tokenize = tokenize or Tokenizer13a()
    ref_counts, ref_lens = None, []
    for ref in references:
        tokens = tokenize(ref.rstrip())
        ref_lens.append(len(tokens))
        counts = _ngrams(tokens, max_order)
        if ref_counts is None:
            ref_counts = counts
            continue
        for merged, order in zip(ref_counts, counts):
            for gram, count in order.items():
                if count > merged.get(gram, 0):
                    merged[gram] = count          # clip by the largest reference count
    hyp = tokenize(hypothesis.rstrip())
    correct = [0] * max_order
    total = [max(len(hyp) - n, 0) for n in range(max_order)]
    if ref_counts is not None:
        for n, (hyp_order, ref_order) in enumerate(zip(_ngrams(hyp, max_order), ref_counts)):
            matched = 0
            for gram, count in hyp_order.items():
                ref_count = ref_order.get(gram)
                if ref_count:
                    matched += count if count < ref_count else ref_count
            correct[n] = matched
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
    stats, tokenize = [0] * (2 + 2 * max_order), Tokenizer13a()
    for hyp, refs in zip(hypotheses, _reference_rows(hypotheses, references)):
        for i, value in enumerate(segment_statistics(hyp, refs, max_order, tokenize)):
            stats[i] += value
    return bleu_from_statistics(stats[2:2 + max_order], stats[2 + max_order:], stats[0],
                                stats[1], max_order)
