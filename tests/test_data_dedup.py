"""Tests for microgpt.data.dedup: the C kernels against the Python specification, LSH
parameters against datasketch's, and near-duplicate recall/precision on planted pairs with
known Jaccard similarity."""
import random

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from microgpt.data import dedup
from microgpt.data.dedup import (DedupConfig, ExactDedup, NearDedup, lsh_params, permutations,
                                 shingle_hashes, shingle_hashes_reference, signatures,
                                 signatures_reference)
from microgpt.errors import ConfigError

needs_c = pytest.mark.skipif(dedup._minhash is None, reason="microgpt.data._minhash not built")

texty = st.text(alphabet=st.sampled_from(list("abcXYZ019_ .,;\n-") + ["é", "日", "\u00a0", "😀"]),
                max_size=200)


@needs_c
@settings(max_examples=200, deadline=None)
@given(texty, st.integers(1, 9))
def test_c_shingles_match_reference(text, k):
    data = text.encode("utf-8")
    assert shingle_hashes(data, k).tolist() == shingle_hashes_reference(data, k)


@needs_c
@settings(max_examples=60, deadline=None)
@given(st.lists(texty, min_size=1, max_size=6), st.integers(1, 70), st.integers(1, 6),
       st.integers(0, 2 ** 32))
def test_c_signatures_match_reference(texts, num_perm, k, seed):
    a, b = permutations(num_perm, seed)
    data = [t.encode("utf-8") for t in texts]
    np.testing.assert_array_equal(signatures(data, a, b, k), signatures_reference(data, a, b, k))


def test_shingle_definition_by_hand():
    # words are lowercased ASCII runs and non-ASCII bytes; punctuation separates
    assert shingle_hashes_reference(b"Hello, WORLD!", 1) == shingle_hashes_reference(b"hello world", 1)
    assert len(shingle_hashes_reference(b"a b c d e f", 5)) == 2
    assert len(shingle_hashes_reference(b"a b", 5)) == 1          # shorter than k: one shingle
    assert shingle_hashes_reference(b" ,.; ", 5) == []
    sig = signatures_reference([b""], *permutations(8, 0), 5)
    assert (sig == 0xFFFFFFFF).all()


def test_permutations_deterministic_and_odd():
    a1, b1 = permutations(64, 3)
    a2, b2 = permutations(64, 3)
    assert (a1 == a2).all() and (b1 == b2).all() and (a1 & np.uint64(1)).all()
    assert not (permutations(64, 4)[0] == a1).all()


def test_lsh_params_match_datasketch():
    lsh = pytest.importorskip("datasketch.lsh")
    for t, p in [(0.8, 128), (0.5, 64), (0.9, 256), (0.7, 100), (0.95, 32)]:
        assert lsh_params(t, p) == lsh._optimal_param(t, p, 0.5, 0.5), (t, p)


# ---- planted near-duplicates -------------------------------------------------------------

VOCAB = [f"w{i}" for i in range(20000)]


def _jaccard(x, y, k=5):
    a = set(shingle_hashes_reference(x.encode(), k))
    b = set(shingle_hashes_reference(y.encode(), k))
    return len(a & b) / len(a | b)


def _variant(words, target, rnd, k=5):
    """Copy of words with m single-word replacements spaced >= k apart, where
    J = (S - m*k) / (S + m*k) for S shingles, i.e. m = S(1-J) / (k(1+J))."""
    s = len(words) - k + 1
    m = round(s * (1 - target) / (k * (1 + target)))
    slots = rnd.sample(range(k, len(words) - k, k), m)
    out = list(words)
    for pos in slots:
        out[pos] = f"new{rnd.randrange(10 ** 9)}"
    return " ".join(out)


def test_near_dup_recall_and_precision_on_planted_pairs():
    rnd = random.Random(0)
    bases = [[rnd.choice(VOCAB) for _ in range(rnd.randrange(300, 600))] for _ in range(150)]
    high = [_variant(w, 0.95, rnd) for w in bases[:75]]
    low = [_variant(w, 0.5, rnd) for w in bases[75:]]
    jh = [_jaccard(" ".join(w), v) for w, v in zip(bases, high)]
    jl = [_jaccard(" ".join(w), v) for w, v in zip(bases[75:], low)]
    assert 0.93 < np.mean(jh) < 0.97 and 0.45 < np.mean(jl) < 0.55   # planted as intended
    near = NearDedup(DedupConfig(threshold=0.8, num_perm=128, seed=1))
    twins = near.check_batch([" ".join(w) for w in bases] + high + low)
    assert twins[:150] == [None] * 150                       # unrelated bases all kept
    found_high = [t for t in twins[150:225]]
    assert found_high == list(range(75))                     # every 0.95 copy found, right twin
    assert twins[225:] == [None] * 75                        # every 0.5 copy kept
    assert len(near) == 225 and near.index_bytes() > 225 * 128 * 4


def test_minhash_estimate_is_unbiased():
    rnd = random.Random(1)
    a, b = permutations(256, 0)
    errors = []
    for target in (0.3, 0.6, 0.9):
        for _ in range(10):
            words = [rnd.choice(VOCAB) for _ in range(400)]
            x, y = " ".join(words), _variant(words, target, rnd)
            sig = signatures([x.encode(), y.encode()], a, b, 5)
            est = np.mean(sig[0] == sig[1])
            j = _jaccard(x, y)
            errors.append((est - j) / np.sqrt(j * (1 - j) / 256))
    assert abs(np.mean(errors)) < 1.0 and np.std(errors) < 1.6   # standard errors


def test_batches_equal_one_at_a_time():
    rnd = random.Random(2)
    base = [[rnd.choice(VOCAB) for _ in range(200)] for _ in range(20)]
    docs = [" ".join(w) for w in base] + [_variant(w, 0.9, rnd) for w in base[:10]]
    rnd.shuffle(docs)
    whole = NearDedup(DedupConfig()).check_batch(docs)
    single = NearDedup(DedupConfig())
    assert [single.check_batch([d])[0] for d in docs] == whole


def test_exact_dedup():
    ex = ExactDedup()
    assert [ex.seen(t) for t in ["a", "b", "a", "a\n", "b"]] == [False, False, True, False, True]
    assert len(ex) == 3 and ex.index_bytes() > 0


def test_config_validation():
    for bad in [dict(threshold=1.0), dict(num_perm=0), dict(shingle=0),
                dict(bands=4), dict(bands=20, rows=10)]:
        with pytest.raises(ConfigError):
            DedupConfig(**bad)
    for bad in (0, -1, 65, 2.5):
        with pytest.raises(ConfigError):
            signatures([b"a b"], *permutations(4, 0), bad)
        with pytest.raises(ConfigError):
            shingle_hashes(b"a b", bad)
    with pytest.raises(ConfigError):
        signatures([b"a"], np.zeros(4, np.uint64), np.zeros(3, np.uint64), 5)
    near = NearDedup(DedupConfig(bands=16, rows=8))
    assert (near.bands, near.rows) == (16, 8)
