"""Quality filters: named document rules with thresholds, and boilerplate line removal.

    text, removed = strip_boilerplate(text, cfg)     # line-level, C4 style
    verdict = check_quality(text, cfg)               # None, or (rule_name, "why")

The rules follow Gopher (Rae et al. 2021, appendix A) and C4 (Raffel et al. 2020), which
FineWeb (Penedo et al. 2024) also applies; defaults are Gopher's published values. Words are `text.split()`,
lines are `text.split("\\n")`, "non-empty lines" ignore blank ones. A document is dropped by
the FIRST rule it fails, checked cheapest first in the order of RULES:

  word_count         min_words <= words <= max_words                       (Gopher 50..100k)
  mean_word_length   min <= mean len(word) <= max                          (Gopher 3..10)
  alpha_fraction     alphabetic chars / non-whitespace chars >= min        (0.5)
  symbol_word_ratio  ("#" + "..." + "…" occurrences) / words <= max        (Gopher 0.1)
  bullet_lines       lines starting with a bullet / non-empty lines <= max (Gopher 0.9)
  ellipsis_lines     lines ending in "..." or "…" / non-empty lines <= max (Gopher 0.3)
  lorem_ipsum        the text contains "lorem ipsum" (C4 drops the page)
  dup_lines          repeated lines (2nd, 3rd ... occurrence) / non-empty lines <= max (0.3)
  dup_line_chars     chars in repeated lines / chars in non-empty lines <= max (0.2)
  top_ngram          for n = 2, 3, 4: chars covered by the most frequent word n-gram
                     (count * its length in chars, only when it occurs twice or more)
                     / chars in words <= (0.20, 0.18, 0.16)
  dup_ngram          for n = 5..10: chars of the words covered by some repeated occurrence
                     (not the first) of an n-gram / chars in words <= (0.15, 0.14, ... 0.10)

Boilerplate lines (cookie banners, "please enable JavaScript") are removed rather than the
whole page, as C4 does; unlike C4 we match whole phrases, not every line with the word
"javascript", so prose and code about JavaScript survive.

The two n-gram rules take most of the time; they are computed by a C kernel (csrc/minhash.c,
ngram_repetition, one hash table per n) whose specification is ngram_fractions_reference
here, NumPy over 64-bit word ids (one stable sort per n). The fallback, when the C module is
not built, uses Python's hash of each word as its id, only for equality, so decisions do not
depend on PYTHONHASHSEED except through a 2^-64 collision.
"""
import re
from collections import Counter
from dataclasses import dataclass, fields
from typing import Optional, Tuple

import numpy as np

from ..errors import ConfigError

try:
    from . import _minhash          # also holds the C n-gram statistics (csrc/minhash.c)
except ImportError:
    _minhash = None

# Both start with a literal "\n" or "." so the regex engine scans quickly; the line break of
# one match is not shared with the next line, hence the look-ahead for the trailing one.
_BULLET_LINE = re.compile("\n[ \t]*[•\\-*·‣–●▪◦➢→]")
_ELLIPSIS_LINE = re.compile(r"(?:\.\.\.|…)[ \t]*(?=\n)")
_BOILERPLATE = re.compile(
    r"(?i)\b(?:(?:please )?(?:enable|turn on|activate) javascript"
    r"|javascript (?:is|must be|has been) (?:disabled|enabled|required|turned off)"
    r"|(?:requires?|needs?) javascript (?:to|in order)"
    r"|(?:this|our) (?:web ?)?site uses cookies|we use cookies|uses? cookies to"
    r"|accept (?:all )?cookies|cookie (?:policy|settings|preferences|consent)"
    r"|by (?:continuing to (?:use|browse)|using) (?:this|our) (?:web ?)?site)")
_BOILERPLATE_GATE = ("javascript", "cookie", "by continuing", "by using")
_BOILERPLATE_MAX_LINE = 300          # longer lines are prose that mentions the words
_LOREM = re.compile(r"(?i)lorem ipsum")
_NON_ALPHA = re.compile(r"[\W\d_]+")
_SPACE = re.compile(r"\s+")
_ASCII_SPACE = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"        # what str.isspace() accepts in ASCII
_ASCII_NON_ALPHA = bytes(c for c in range(128) if not chr(c).isalpha())
_BLANK_RUNS = re.compile("\n{3,}")
_UNICODE_SPACE = re.compile("[\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")
_MUL = np.uint64(0x9E3779B97F4A7C15)      # odd 64-bit multiplier for the n-gram polynomial


@dataclass
class FilterConfig:
    """Thresholds of the quality rules; a rule listed in `disabled` is skipped."""
    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    min_alpha_fraction: float = 0.5
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines: float = 0.9
    max_ellipsis_lines: float = 0.3
    max_dup_lines: float = 0.3
    max_dup_line_chars: float = 0.2
    max_top_ngram: Tuple[float, ...] = (0.20, 0.18, 0.16)                 # n = 2, 3, 4
    max_dup_ngram: Tuple[float, ...] = (0.15, 0.14, 0.13, 0.12, 0.11, 0.10)  # n = 5..10
    strip_boilerplate: bool = True
    disabled: Tuple[str, ...] = ()

    def __post_init__(self):
        self.max_top_ngram = tuple(self.max_top_ngram)
        self.max_dup_ngram = tuple(self.max_dup_ngram)
        self.disabled = tuple(self.disabled)
        for f in fields(self):
            value = getattr(self, f.name)
            values = value if isinstance(value, tuple) and f.name != "disabled" else (value,)
            if f.name.endswith(("lines", "chars", "fraction", "ngram", "ratio")):
                if any(not 0.0 <= v <= 1.0 for v in values):
                    raise ConfigError(f"filters.{f.name} must lie in [0, 1], got {value!r}")
        if len(self.max_top_ngram) > 3 or len(self.max_dup_ngram) > 6:
            raise ConfigError("max_top_ngram holds at most 3 limits (n = 2, 3, 4) and "
                              "max_dup_ngram at most 6 (n = 5 .. 10)")
        if not 0 <= self.min_words <= self.max_words:
            raise ConfigError(f"need 0 <= min_words <= max_words, got {self.min_words}, "
                              f"{self.max_words}")
        if not 0 < self.min_mean_word_length <= self.max_mean_word_length:
            raise ConfigError("need 0 < min_mean_word_length <= max_mean_word_length")
        unknown = set(self.disabled) - set(RULES)
        if unknown:
            raise ConfigError(f"unknown rules in filters.disabled: {sorted(unknown)}; "
                              f"rules are {list(RULES)}")


def strip_boilerplate(text: str, cfg: FilterConfig) -> Tuple[str, int]:
    """Text without boilerplate lines, and how many characters were removed."""
    if not cfg.strip_boilerplate:
        return text, 0
    lowered = text.lower()                  # gate: every pattern holds one of these words
    if not any(word in lowered for word in _BOILERPLATE_GATE) or not _BOILERPLATE.search(text):
        return text, 0
    kept = [line for line in text.split("\n")
            if len(line) > _BOILERPLATE_MAX_LINE or not _BOILERPLATE.search(line)]
    out = _BLANK_RUNS.sub("\n\n", "\n".join(kept)).strip("\n")
    return out, len(text) - len(out)


class _Doc:
    """Statistics shared by several rules, computed once and only when asked for."""

    def __init__(self, text):
        self.text = text
        self.words = text.split()
        self._lines = None
        self._ngram = None
        self._fractions = None
        self._dup_lines = None

    @property
    def ngram_arrays(self):
        """(ids, lens): 64-bit id and length of every word."""
        if self._ngram is None:
            n = len(self.words)
            ids = np.fromiter(map(hash, self.words), dtype=np.int64, count=n).view(np.uint64)
            self._ngram = ids, np.fromiter(map(len, self.words), dtype=np.int64, count=n)
        return self._ngram

    @property
    def lines(self):
        if self._lines is None:
            self._lines = [line for line in self.text.split("\n") if line.strip()]
        return self._lines


def _word_count(d, c):
    n = len(d.words)
    if n < c.min_words:
        return f"{n} words < {c.min_words}"
    if n > c.max_words:
        return f"{n} words > {c.max_words}"
    return None


def _mean_word_length(d, c):
    if not d.words:
        return None
    mean = sum(map(len, d.words)) / len(d.words)
    if not c.min_mean_word_length <= mean <= c.max_mean_word_length:
        return (f"mean word length {mean:.2f} outside "
                f"[{c.min_mean_word_length}, {c.max_mean_word_length}]")
    return None


def _alpha_fraction(d, c):
    if d.text.isascii():               # bytes.translate counts at GB/s; regex for the rest
        data = d.text.encode("ascii")
        nonspace = len(data.translate(None, _ASCII_SPACE))
        alpha = len(data.translate(None, _ASCII_NON_ALPHA))
    else:
        nonspace = len(_SPACE.sub("", d.text))
        alpha = len(_NON_ALPHA.sub("", d.text))
    if nonspace == 0:
        return None
    frac = alpha / nonspace
    return f"alphabetic fraction {frac:.2f} < {c.min_alpha_fraction}" \
        if frac < c.min_alpha_fraction else None


def _symbol_word_ratio(d, c):
    if not d.words:
        return None
    symbols = d.text.count("#") + d.text.count("...") + d.text.count("…")
    ratio = symbols / len(d.words)
    return f"symbol/word ratio {ratio:.3f} > {c.max_symbol_word_ratio}" \
        if ratio > c.max_symbol_word_ratio else None


def _line_count(d, pattern):
    """Lines matching a pattern anchored at a line break of "\n" + text + "\n"."""
    return len(pattern.findall("\n" + d.text + "\n")) / len(d.lines) if d.lines else 0.0


def _bullet_lines(d, c):
    frac = _line_count(d, _BULLET_LINE)
    return f"bullet lines {frac:.2f} > {c.max_bullet_lines}" if frac > c.max_bullet_lines else None


def _ellipsis_lines(d, c):
    frac = _line_count(d, _ELLIPSIS_LINE)
    return f"ellipsis lines {frac:.2f} > {c.max_ellipsis_lines}" \
        if frac > c.max_ellipsis_lines else None


def _lorem_ipsum(d, c):
    return "contains 'lorem ipsum'" if _LOREM.search(d.text) else None


def _dup_line_stats(d):
    """(repeated lines / lines, chars in repeated lines / chars in lines), non-empty lines."""
    if d._dup_lines is None:
        counts = Counter(d.lines)
        total_chars = sum(map(len, d.lines))
        dup_lines = len(d.lines) - len(counts)
        dup_chars = total_chars - sum(map(len, counts))
        d._dup_lines = dup_lines / max(len(d.lines), 1), dup_chars / max(total_chars, 1)
    return d._dup_lines


def _dup_lines(d, c):
    frac, _ = _dup_line_stats(d)
    return f"duplicate lines {frac:.2f} > {c.max_dup_lines}" if frac > c.max_dup_lines else None


def _dup_line_chars(d, c):
    _, frac = _dup_line_stats(d)
    return f"chars in duplicate lines {frac:.2f} > {c.max_dup_line_chars}" \
        if frac > c.max_dup_line_chars else None


def _ngram_ids(ids, n, prev):
    """64-bit ids of every word n-gram: g_n[i] = g_(n-1)[i] * MUL + id[i + n - 1] (mod 2^64)."""
    m = len(ids) - n + 1
    return prev[:m] * _MUL + ids[n - 1:n - 1 + m]


def _runs(grams):
    """Sort once: (order, starts of runs of equal values in sorted order, run lengths);
    the sort is stable, so order[starts[g]] is the first position of n-gram group g."""
    order = np.argsort(grams, kind="stable")
    ordered = grams[order]
    first = np.ones(len(grams), dtype=bool)
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    return order, starts, np.diff(starts, append=len(grams))


def ngram_fractions_reference(ids, lens, n_top, n_dup):
    """The specification of the two n-gram rules (and of csrc ngram_repetition):
    top[j], n = 2 + j: count * chars of the most frequent n-gram (ties: smallest id) / chars
    of all words, 0 when nothing repeats; dup[j], n = 5 + j: chars of the words covered by a
    non-first occurrence of some n-gram / chars of all words. Once no n-gram repeats at some
    n, none does at larger n, and the rest stay 0."""
    top, dup = [0.0] * n_top, [0.0] * n_dup
    total, nwords = int(lens.sum()), len(ids)
    grams = ids
    for n in range(2, (4 + n_dup if n_dup else 1 + n_top) + 1):
        if n > nwords or total == 0:
            break
        grams = _ngram_ids(ids, n, grams)
        is_top, is_dup = n - 2 < n_top, 5 <= n < 5 + n_dup
        if not (is_top or is_dup):
            continue
        order, starts, counts = _runs(grams)
        if len(starts) == len(grams):
            break                                   # nothing repeats, nor at larger n
        if is_top:
            best = int(np.argmax(counts))           # sorted by id: first max = smallest id
            start = order[starts[best]]
            top[n - 2] = counts[best] * int(lens[start:start + n].sum()) / total
        if is_dup:
            repeated = np.ones(len(grams), dtype=bool)
            repeated[order[starts]] = False         # the first occurrence of each n-gram
            begin = np.flatnonzero(repeated)
            # word w is covered when some repeated n-gram starts in [w - n + 1, w]
            delta = np.bincount(begin, minlength=nwords + 1) - \
                np.bincount(begin + n, minlength=nwords + 1)
            covered = np.cumsum(delta)[:nwords] > 0
            dup[n - 5] = int(lens[covered].sum()) / total
    return top, dup


def _ngram_fractions(d, c):
    """(top, dup) fractions: by the C kernel when built and the text has no non-ASCII
    whitespace (where its byte-level words equal str.split()), else by the reference."""
    if d._fractions is None:
        n_top, n_dup = len(c.max_top_ngram), len(c.max_dup_ngram)
        if _minhash is not None and not _UNICODE_SPACE.search(d.text):
            top = np.zeros(n_top)
            dup = np.zeros(n_dup)
            ffi = _minhash.ffi
            data = d.text.encode("utf-8", "surrogatepass")
            if _minhash.lib.ngram_repetition(ffi.cast("double *", top.ctypes.data),
                                             ffi.cast("double *", dup.ctypes.data),
                                             data, len(data), n_top, n_dup) < 0:
                raise MemoryError("ngram_repetition could not allocate its scratch buffers")
            d._fractions = top.tolist(), dup.tolist()
        else:
            d._fractions = ngram_fractions_reference(*d.ngram_arrays, n_top, n_dup)
    return d._fractions


def _top_ngram(d, c):
    for n, limit, frac in zip(range(2, 5), c.max_top_ngram, _ngram_fractions(d, c)[0]):
        if frac > limit:
            return f"top {n}-gram covers {frac:.2f} of chars > {limit}"
    return None


def _dup_ngram(d, c):
    for n, limit, frac in zip(range(5, 11), c.max_dup_ngram, _ngram_fractions(d, c)[1]):
        if frac > limit:
            return f"repeated {n}-grams cover {frac:.2f} of chars > {limit}"
    return None


RULES = {
    "word_count": _word_count,
    "mean_word_length": _mean_word_length,
    "alpha_fraction": _alpha_fraction,
    "symbol_word_ratio": _symbol_word_ratio,
    "bullet_lines": _bullet_lines,
    "ellipsis_lines": _ellipsis_lines,
    "lorem_ipsum": _lorem_ipsum,
    "dup_lines": _dup_lines,
    "dup_line_chars": _dup_line_chars,
    "top_ngram": _top_ngram,
    "dup_ngram": _dup_ngram,
}


def check_quality(text: str, cfg: FilterConfig) -> Optional[Tuple[str, str]]:
    """None if the document passes every enabled rule, else (rule name, explanation)."""
    doc = _Doc(text)
    for name, rule in RULES.items():
        if name in cfg.disabled:
            continue
        why = rule(doc, cfg)
        if why is not None:
            return name, why
    return None
