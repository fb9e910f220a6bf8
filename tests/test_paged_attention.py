"""The paged KV cache kernels: paged_cache_write and paged_attention_forward.

Oracles: backends/reference.py (the specification) on awkward shapes, and the existing causal
attention_forward on the same keys laid out contiguously: a sequence scattered over random
blocks must attend exactly as the contiguous one does, query by query. Each backend (C, the
CUDA binding over the NumPy mock) is checked; the real CUDA kernels run under the gpu mark.
"""
import numpy as np
import pytest

import cuda_mock
from conftest import assert_close
from microgpt.backends import cuda, cuda_runtime as rt, reference as ref
from microgpt.errors import ShapeError

F32 = np.float32


def _cpu():
    from microgpt.backends import cpu
    if not cpu.AVAILABLE:
        pytest.skip("C kernels not built")
    return cpu


@pytest.fixture(params=["cpu", "cuda-mock", pytest.param("cuda-gpu", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not rt.AVAILABLE, reason="no CUDA")])])
def be(request, monkeypatch):
    if request.param == "cpu":
        return _cpu()
    if request.param == "cuda-mock":
        cuda_mock.install(monkeypatch)
    return cuda


def _scatter(rng, k, v, nb, bs):
    """Lay out k, v (NKV, T, HS) of one sequence over random distinct blocks of a fresh pool."""
    nkv, t, hs = k.shape
    used = -(-t // bs)
    table = rng.permutation(nb)[:used]
    kc, vc = rng.standard_normal((2, nb, nkv, bs, hs)).astype(F32)     # garbage elsewhere
    for j in range(t):
        kc[table[j // bs], :, j % bs], vc[table[j // bs], :, j % bs] = k[:, j], v[:, j]
    return kc, vc, table


@pytest.mark.parametrize("nh,nkv,t,hs,bs", [(4, 2, 37, 16, 8), (3, 3, 5, 7, 1), (2, 1, 64, 64, 16),
                                            (6, 2, 1, 3, 4), (4, 4, 130, 32, 32)])
def test_equals_causal_attention_over_the_contiguous_sequence(be, nh, nkv, t, hs, bs):
    rng = np.random.default_rng(t * hs)
    q = rng.standard_normal((1, nh, t, hs)).astype(F32)
    k, v = rng.standard_normal((2, 1, nkv, t, hs)).astype(F32)
    expected = ref.attention_forward(q, k, v)[0][0]                    # (NH, T, HS)
    kc, vc, table = _scatter(rng, k[0], v[0], nb=-(-t // bs) + 3, bs=bs)
    mb = len(table) + 1
    tables = np.zeros((t, mb), np.int64)
    tables[:, :len(table)] = table
    queries = np.ascontiguousarray(np.swapaxes(q[0], 0, 1))             # (T, NH, HS): query n at position n
    got = be.to_numpy(be.paged_attention_forward(be.asarray(queries, F32), be.asarray(kc, F32),
                                                 be.asarray(vc, F32), be.asarray(tables, np.int64),
                                                 be.asarray(np.arange(t), np.int64)))
    assert_close(np.swapaxes(got, 0, 1), expected, atol=2e-5, rtol=2e-5, what="paged vs causal attention")


def test_many_sequences_of_different_lengths_in_one_call(be):
    rng = np.random.default_rng(3)
    nb, nkv, bs, hs, nh, mb = 40, 2, 4, 16, 4, 9
    kc, vc = rng.standard_normal((2, nb, nkv, bs, hs)).astype(F32)
    n = 11
    tables = rng.integers(0, nb, (n, mb))
    positions = rng.integers(0, mb * bs, n)
    q = rng.standard_normal((n, nh, hs)).astype(F32)
    expected = ref.paged_attention_forward(q, kc, vc, tables, positions)
    got = be.to_numpy(be.paged_attention_forward(be.asarray(q, F32), be.asarray(kc, F32), be.asarray(vc, F32),
                                                 be.asarray(tables, np.int64), be.asarray(positions, np.int64)))
    assert_close(got, expected, atol=2e-5, rtol=2e-5, what="paged attention vs reference")
    # a row's answer does not depend on the other rows of the call (bit for bit)
    alone = be.to_numpy(be.paged_attention_forward(be.asarray(q[4:5], F32), be.asarray(kc, F32),
                                                   be.asarray(vc, F32), be.asarray(tables[4:5], np.int64),
                                                   be.asarray(positions[4:5], np.int64)))
    assert np.array_equal(alone[0], got[4])


def test_cache_write_equals_the_reference(be):
    rng = np.random.default_rng(4)
    nb, nkv, bs, hs, n = 6, 2, 4, 5, 9
    kc, vc = rng.standard_normal((2, nb, nkv, bs, hs)).astype(F32)
    k, v = rng.standard_normal((2, n, nkv, hs)).astype(F32)
    slots = rng.permutation(nb * bs)[:n]
    want_k, want_v = kc.copy(), vc.copy()
    ref.paged_cache_write(want_k, want_v, k, v, slots)
    dk, dv = be.asarray(kc, F32), be.asarray(vc, F32)
    assert be.paged_cache_write(dk, dv, be.asarray(k, F32), be.asarray(v, F32), be.asarray(slots, np.int64)) is None
    assert np.array_equal(be.to_numpy(dk), want_k) and np.array_equal(be.to_numpy(dv), want_v)
    for i, s in enumerate(slots):                                   # and the reference means what it says
        assert np.array_equal(want_k[s // bs, :, s % bs], k[i]) and np.array_equal(want_v[s // bs, :, s % bs], v[i])


def test_float64_takes_the_reference_path():
    cpu = _cpu()
    rng = np.random.default_rng(5)
    kc, vc = rng.standard_normal((2, 3, 1, 2, 4))
    q = rng.standard_normal((2, 2, 4))
    tables, positions = np.array([[2, 0, 1], [1, 1, 1]]), np.array([5, 0])
    got = cpu.paged_attention_forward(q, kc, vc, tables, positions)
    assert got.dtype == np.float64
    assert np.array_equal(got, ref.paged_attention_forward(q, kc, vc, tables, positions))


def test_bad_indices_are_refused_before_any_c_runs():
    cpu = _cpu()
    kc = np.zeros((3, 1, 2, 4), F32)
    q = np.zeros((1, 2, 4), F32)
    with pytest.raises(ShapeError, match="block_tables"):
        cpu.paged_attention_forward(q, kc, kc.copy(), np.array([[3]]), np.array([0]))
    with pytest.raises(ShapeError, match="positions"):
        cpu.paged_attention_forward(q, kc, kc.copy(), np.array([[0]]), np.array([2]))    # MB * BS = 2
    with pytest.raises(ShapeError, match="multiple"):
        cpu.paged_attention_forward(np.zeros((1, 3, 4), F32), np.zeros((3, 2, 2, 4), F32),
                                    np.zeros((3, 2, 2, 4), F32), np.array([[0]]), np.array([0]))
    row = np.zeros((1, 1, 4), F32)
    with pytest.raises(ShapeError, match="slots"):
        cpu.paged_cache_write(kc, kc.copy(), row, row.copy(), np.array([6]))
    two = np.zeros((2, 1, 4), F32)
    with pytest.raises(ShapeError, match="repeat"):
        cpu.paged_cache_write(kc, kc.copy(), two, two.copy(), np.array([1, 1]))


def test_cuda_flags_bad_indices(monkeypatch):
    cuda_mock.install(monkeypatch)
    kc = cuda.asarray(np.zeros((3, 1, 2, 4), F32), F32)
    out = cuda.paged_attention_forward(cuda.asarray(np.zeros((1, 2, 4), F32), F32), kc, kc,
                                       cuda.asarray(np.array([[7]]), np.int64), cuda.asarray(np.array([0]), np.int64))
    with pytest.raises(ShapeError, match="paged_attention_forward"):
        cuda.to_numpy(out)


@pytest.mark.parametrize("hs", [32, 64, 128, 48])
def test_nan_and_far_apart_scores_behave_as_the_reference(hs):
    """The fixed head sizes (32, 64, 128) take their own loop with a vector exp: a NaN key still
    turns exactly the outputs of the pairs that see it NaN, and scores hundreds apart (weights
    that underflow to 0) still give the reference's outputs; 48 is the general loop."""
    be = _cpu()
    rng = np.random.default_rng(hs)
    nb, nkv, bs, nh = 8, 2, 4, 4
    kc, vc = rng.standard_normal((2, nb, nkv, bs, hs)).astype(F32)
    tables = np.array([[0, 1, 2, 3], [0, 1, 2, 3], [3, 2, 0, 0]], np.int64)
    positions = np.array([3, 12, 9], np.int64)
    q = (30 * rng.standard_normal((3, nh, hs))).astype(F32)          # scores far apart
    assert_close(be.paged_attention_forward(q, kc, vc, tables, positions),
                 ref.paged_attention_forward(q, kc, vc, tables, positions), atol=2e-5, rtol=2e-5,
                 what="far-apart scores")
    kc[1, 0, 2, 5] = np.nan                     # block 1, kv head 0: positions 4-7 of rows 0-1
    got = be.paged_attention_forward(q, kc, vc, tables, positions)
    want = ref.paged_attention_forward(q, kc, vc, tables, positions)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[1, :2]).all() and not np.isnan(got[0]).any() and not np.isnan(got[2]).any()
    assert_close(np.nan_to_num(got), np.nan_to_num(want), atol=2e-5, rtol=2e-5, what="the pairs without NaN")
