"""Tests for microgpt.data.filters: every rule on a hand-made document that fails it and one
that passes it, and the n-gram statistics against a plain-Python oracle."""
import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from microgpt.data import filters as F
from microgpt.data.filters import RULES, FilterConfig, check_quality, strip_boilerplate
from microgpt.errors import ConfigError

VOCAB = ("river mountain quiet garden window yellow ancient between whisper market "
         "thunder pillow silver harbor meadow lantern crystal forest valley candle ocean "
         "morning journey village orchard balcony compass feather glacier horizon").split()


def prose(n_words=120, seed=0):
    """Natural-looking text with no repeated 5-grams: random words, sentences, lines."""
    rnd = random.Random(seed)
    words = [rnd.choice(VOCAB) for _ in range(n_words)]
    lines, line = [], []
    for i, w in enumerate(words):
        line.append(w.capitalize() if not line else w)
        if len(line) == 12 or i == n_words - 1:
            lines.append(" ".join(line) + ".")
            line = []
    return "\n".join(lines)


GOOD = prose()
CFG = FilterConfig()


def verdict(text, **overrides):
    out = check_quality(text, FilterConfig(**overrides))
    return out[0] if out else None


def test_good_document_passes_every_rule():
    assert check_quality(GOOD, CFG) is None


# (rule, a document that fails exactly that rule first)
FAILING = [
    ("word_count", "too short to be a document."),
    ("word_count", prose(200, 1), ),   # with max_words lowered below
    ("mean_word_length", " ".join(["a an to of"] * 30)),
    ("mean_word_length", " ".join(["incomprehensibilities"] * 60)),
    ("alpha_fraction", " ".join(f"{i} {i * 7} {i * 13}.5 word" for i in range(40))),
    ("symbol_word_ratio", "\n".join(f"# {w} heading" for w in VOCAB * 2)),
    ("bullet_lines", "\n".join(f"• {' '.join(VOCAB[i:i + 5])}" for i in range(20))),
    ("ellipsis_lines", "\n".join(prose(12, i) + ".." for i in range(10))),
    ("lorem_ipsum", GOOD + "\nLorem ipsum dolor sit amet."),
    ("dup_lines", "\n".join([prose(12, 0)] * 5 + [prose(12, i) for i in range(1, 7)])),
    ("top_ngram", " ".join(["quiet garden"] * 20 + [prose(60, 2)])),
    ("dup_ngram", " ".join([prose(20, 3)] * 2 + [prose(60, 4)])),
]


@pytest.mark.parametrize("rule,text", FAILING)
def test_each_rule_rejects_its_positive(rule, text):
    overrides = {"max_words": 150} if len(text.split()) == 200 else {}
    assert verdict(text, **overrides) == rule
    # ... and with that rule disabled the document is no longer rejected by it
    assert verdict(text, disabled=(rule,), **overrides) != rule


def test_dup_line_chars_separately():
    long_line = " ".join(VOCAB)          # one long repeated line, many short unique ones
    text = "\n".join([long_line, long_line] + [f"{w} {v}." for w in VOCAB[:6] for v in VOCAB[:3]])
    assert verdict(text, disabled=("top_ngram", "dup_ngram")) == "dup_line_chars"


def test_thresholds_move_the_decision():
    text = FAILING[4][1]
    assert verdict(text) == "alpha_fraction"
    assert verdict(text, min_alpha_fraction=0.1) != "alpha_fraction"


def test_boilerplate_lines_removed_not_the_page():
    page = "\n".join(["We use cookies to improve your experience. Accept all cookies",
                      GOOD, "", "", "Please enable JavaScript to view the comments.",
                      "Cookie policy | Terms"])
    out, removed = strip_boilerplate(page, CFG)
    assert out == GOOD and removed == len(page) - len(GOOD)
    keep = "JavaScript is a language; this page explains cookies in HTTP headers."
    assert strip_boilerplate(keep, CFG) == (keep, 0)
    assert strip_boilerplate(page, FilterConfig(strip_boilerplate=False)) == (page, 0)
    assert strip_boilerplate(out, CFG) == (out, 0)           # idempotent


def _oracle_dup_ngram_fraction(words, n):
    """Chars of words covered by a non-first occurrence of some n-gram / chars of words."""
    seen, covered = set(), [False] * len(words)
    for i in range(len(words) - n + 1):
        gram = tuple(words[i:i + n])
        if gram in seen:
            for j in range(i, i + n):
                covered[j] = True
        seen.add(gram)
    return sum(len(w) for w, c in zip(words, covered) if c) / sum(map(len, words))


def _oracle_top_ngram_fraction(words, n):
    grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    gram, count = grams.most_common(1)[0]
    # ties: the implementation takes the first-sorted id, so compare only unambiguous tops
    return count * sum(map(len, gram)) / sum(map(len, words)), count, \
        sum(1 for c in grams.values() if c == count)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["a", "bb", "ccc", "dddd", "e"]), min_size=10, max_size=80),
       st.integers(5, 10), st.integers(2, 4))
def test_ngram_statistics_match_oracle(words, n, m):
    text = " ".join(words)
    frac = _oracle_dup_ngram_fraction(words, n)
    limits = [1.0] * 6
    limits[n - 5] = frac - 1e-9 if frac > 0 else 1.0
    cfg = FilterConfig(max_dup_ngram=tuple(max(v, 0.0) for v in limits))
    got = F._dup_ngram(F._Doc(text), cfg)
    assert (got is not None) == (frac > 0), (frac, got)
    if frac > 0:
        assert f"repeated {n}-grams cover {frac:.2f}" in got
    top, count, ties = _oracle_top_ngram_fraction(words, m)
    total = sum(map(len, words))
    smaller_exceed_1 = any(c * sum(map(len, g)) > total for k in range(2, m) for g, c in
                           Counter(tuple(words[i:i + k]) for i in range(len(words) - k + 1)).items())
    if count >= 2 and ties == 1 and top < 1.0 and not smaller_exceed_1:
        # overlapping repeats can exceed 1, and then a smaller n fires at any limit
        limits = [1.0] * 3
        limits[m - 2] = top - 1e-9
        for k in range(m - 2):           # smaller n first: keep them from firing
            limits[k] = 1.0
        got = F._top_ngram(F._Doc(text), FilterConfig(max_top_ngram=tuple(limits)))
        assert got is not None and f"top {m}-gram covers {top:.2f}" in got


def test_config_validation():
    with pytest.raises(ConfigError):
        FilterConfig(min_words=10, max_words=5)
    with pytest.raises(ConfigError):
        FilterConfig(max_dup_lines=1.5)
    with pytest.raises(ConfigError):
        FilterConfig(disabled=("no_such_rule",))
    with pytest.raises(ConfigError):
        FilterConfig(max_dup_ngram=(0.1,) * 7)
    assert set(RULES) >= {"word_count", "mean_word_length", "alpha_fraction",
                          "symbol_word_ratio", "bullet_lines", "ellipsis_lines",
                          "dup_lines", "dup_line_chars", "top_ngram", "dup_ngram", "lorem_ipsum"}


def _fnv1a(data: bytes) -> int:
    h = 0xcbf29ce484222325
    for c in data:
        h = ((h ^ c) * 0x100000001b3) & ((1 << 64) - 1)
    return h


@pytest.mark.skipif(F._minhash is None, reason="microgpt.data._minhash not built")
@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["a", "bb", "é", "ccc", "日本", "d", "\u00e9t\u00e9"]),
                max_size=90),
       st.lists(st.sampled_from([" ", "\n", "\t", "  ", " \r\n"]), min_size=1, max_size=5),
       st.integers(0, 3), st.integers(0, 6))
def test_c_ngram_kernel_matches_reference(words, seps, n_top, n_dup):
    """Same word ids on both sides (FNV-1a of the UTF-8 bytes), so even ties agree."""
    text = "".join(w + seps[i % len(seps)] for i, w in enumerate(words))
    split = text.split()
    ids = np.array([_fnv1a(w.encode()) for w in split], dtype=np.uint64)
    lens = np.array([len(w) for w in split], dtype=np.int64)
    want = F.ngram_fractions_reference(ids, lens, n_top, n_dup)
    top, dup = np.zeros(n_top), np.zeros(n_dup)
    ffi, lib = F._minhash.ffi, F._minhash.lib
    data = text.encode()
    n = lib.ngram_repetition(ffi.cast("double *", top.ctypes.data),
                             ffi.cast("double *", dup.ctypes.data), data, len(data), n_top, n_dup)
    assert n == len(split)
    np.testing.assert_allclose(top, want[0], rtol=1e-12)
    np.testing.assert_allclose(dup, want[1], rtol=1e-12)
