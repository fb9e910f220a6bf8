"""linear_rows_forward (csrc/matmul.c, cuda/linear_rows.cu): linear_forward's streaming path for
any number of rows, the kernel the paged decoder runs a step's decode rows through.

Two properties: it computes x @ w^T + b (against the float64 NumPy reference, both weight
layouts, shapes with every edge of the tiles: rows and channels not multiples of 4, columns
not multiples of 16 or 64), and it is batch-invariant: the rows of one M-row call are bit for
bit the one-row calls, and the first 4 rows are linear_forward's few-rows path. The second is
what lets a greedy request give the same text alone or among 31 others (test_paged_cache.py).
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microgpt.backends import cpu
from microgpt.backends import reference as ref

pytestmark = pytest.mark.skipif(not cpu.AVAILABLE, reason="the C library is not built")


def operands(rng, rows, C, OC, bias, w_in_out):
    x = rng.standard_normal((rows, C)).astype(np.float32)
    w = rng.standard_normal((C, OC) if w_in_out else (OC, C)).astype(np.float32)
    b = rng.standard_normal(OC).astype(np.float32) if bias else None
    return x, w, b


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 37), st.integers(1, 200), st.integers(1, 150), st.booleans(), st.booleans(),
       st.integers(0, 2**31))
def test_against_reference_and_batch_invariant(rows, C, OC, bias, w_in_out, seed):
    x, w, b = operands(np.random.default_rng(seed), rows, C, OC, bias, w_in_out)
    got = cpu.linear_rows_forward(x, w, b, w_in_out)
    want = ref.linear_forward(x.astype(np.float64), w.astype(np.float64),
                              None if b is None else b.astype(np.float64), w_in_out)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.sqrt(C))
    alone = np.concatenate([cpu.linear_rows_forward(x[n:n + 1], w, b, w_in_out) for n in range(rows)])
    assert np.array_equal(got, alone), "a row's bits depend on how many rows share the call"
    few = cpu.linear_forward(x[:4], w, b, w_in_out)
    assert np.array_equal(got[:4], few), "differs from linear_forward's few-rows path"


@pytest.mark.parametrize("w_in_out", [False, True])
@pytest.mark.parametrize("C,OC", [(384, 1152), (384, 1536), (1536, 384), (384, 8192)])
def test_model_shapes_batch_invariant(C, OC, w_in_out):
    """The small preset's layers (qkv, fc, proj, LM head) at 1 .. 32 rows, threaded."""
    x, w, b = operands(np.random.default_rng(C + OC), 32, C, OC, True, w_in_out)
    full = cpu.linear_rows_forward(x, w, b, w_in_out)
    for m in (1, 3, 4, 5, 17, 32):
        assert np.array_equal(cpu.linear_rows_forward(x[:m], w, b, w_in_out), full[:m]), m


def test_shapes_and_dtypes():
    rng = np.random.default_rng(0)
    x, w, b = operands(rng, 6, 8, 5, True, False)
    assert cpu.linear_rows_forward(x.reshape(2, 3, 8), w, b).shape == (2, 3, 5)
    got = cpu.linear_rows_forward(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64))
    assert got.dtype == np.float64
    with pytest.raises(Exception):
        cpu.linear_rows_forward(x, w.T.copy(), b)            # (C, OC) without w_in_out
