"""The reference's special values where its fast formula and its meaning could part.

backends/reference.py is the oracle of tests/test_kernel_special_values.py, so its NaN/inf
patterns are checked here against an independent oracle of its own:
  - attention: query i at position p = Tk - Tq + i against keys 0 .. p alone (Tq = 1,
    Tk = p + 1: the KV-cache call, in which nothing is masked, so the masking code is not
    involved), gradients the sums of those calls' gradients. The full (Tq, Tk) call must give
    the same class of value per element and, where finite, the same values;
  - cross_entropy_backward: a row whose target is ignore_index is exactly 0.
"""
import numpy as np
import pytest

from conftest import assert_close
from microgpt.backends import reference as ref


def per_query_attention(q, k, v, dout):
    """out, lse, dq, dk, dv: each query by a call of its own against the keys it sees."""
    tq, tk = q.shape[2], k.shape[2]
    out, lse = np.empty_like(q), np.empty(q.shape[:3], q.dtype)
    dq, dk, dv = np.empty_like(q), np.zeros_like(k), np.zeros_like(v)
    with np.errstate(all="ignore"):
        for i in range(tq):
            seen, row = tk - tq + i + 1, slice(i, i + 1)
            q_i, k_i, v_i = q[:, :, row], k[:, :, :seen], v[:, :, :seen]
            out[:, :, row], lse[:, :, row] = ref.attention_forward(q_i, k_i, v_i)
            dq_i, dk_i, dv_i = ref.attention_backward(dout[:, :, row], q_i, k_i, v_i, out[:, :, row], lse[:, :, row])
            dq[:, :, row] = dq_i
            dk[:, :, :seen] += dk_i
            dv[:, :, :seen] += dv_i
    return out, lse, dq, dk, dv


def classes(x):
    """0 finite, 1 NaN, 2 +inf, 3 -inf, element by element."""
    return np.select([np.isnan(x), np.isposinf(x), np.isneginf(x)], [1, 2, 3], 0)


def test_nan_value_reaches_only_the_queries_that_see_it():
    """A NaN in v at position 5 of 16 makes exactly the outputs of queries 5..15 NaN (the
    full-matrix P @ V gave all 16: 0 * NaN for the queries that cannot see it)."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 2, 16, 8)) for _ in range(3))
    v[0, 1, 5, 3] = np.nan
    with np.errstate(all="ignore"):
        out, lse = ref.attention_forward(q, k, v)
    assert np.isnan(out[0, 1]).any(axis=-1).tolist() == [False] * 5 + [True] * 11
    assert np.isnan(out[0, 1, 5:, 3]).all() and np.isfinite(np.delete(out[0, 1], 3, axis=-1)).all()
    assert np.isfinite(out[0, 0]).all() and np.isfinite(lse).all()


# (q shape, k/v shape): one head each, grouped heads, fewer queries than keys
SHAPES = [((1, 2, 16, 8), (1, 2, 16, 8)), ((2, 4, 16, 5), (2, 2, 16, 5)), ((1, 4, 11, 8), (1, 2, 16, 8))]


@pytest.mark.parametrize("shape_q,shape_kv", SHAPES)
@pytest.mark.parametrize("where", ["q", "k", "v", "dout"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_attention_matches_per_query_calls(shape_q, shape_kv, where, value):
    """Forward and backward of the full call against the per-query calls, with one special
    value at query 5 (in q or dout) or at the key in its position (in k or v)."""
    rng = np.random.default_rng(1)
    arrays = {"q": rng.standard_normal(shape_q), "k": rng.standard_normal(shape_kv),
              "v": rng.standard_normal(shape_kv), "dout": rng.standard_normal(shape_q)}
    at = 5 if where in ("q", "dout") else shape_kv[2] - shape_q[2] + 5
    arrays[where][0, 1, at, 2] = value
    q, k, v, dout = arrays["q"], arrays["k"], arrays["v"], arrays["dout"]
    expected = per_query_attention(q, k, v, dout)
    with np.errstate(all="ignore"):
        out, lse = ref.attention_forward(q, k, v)
        got = (out, lse) + ref.attention_backward(dout, q, k, v, out, lse)
    for name, g, e in zip(["out", "lse", "dq", "dk", "dv"], got, expected):
        np.testing.assert_array_equal(classes(g), classes(e), err_msg=f"{name}: NaN/inf pattern")
        finite = np.isfinite(e)
        assert_close(g[finite], e[finite], atol=1e-12, rtol=1e-10, what=name)


def test_attention_unchanged_for_finite_inputs():
    """No special values: the full call equals the per-query calls (the fast path alone)."""
    rng = np.random.default_rng(2)
    q, dout = rng.standard_normal((2, 4, 9, 6)), rng.standard_normal((2, 4, 9, 6))
    k, v = rng.standard_normal((2, 2, 13, 6)), rng.standard_normal((2, 2, 13, 6))
    out, lse = ref.attention_forward(q, k, v)
    got = (out, lse) + ref.attention_backward(dout, q, k, v, out, lse)
    for name, g, e in zip(["out", "lse", "dq", "dk", "dv"], got, per_query_attention(q, k, v, dout)):
        assert_close(g, e, atol=1e-12, rtol=1e-10, what=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_backward_ignored_rows_are_exactly_zero(dtype):
    """An ignored row is 0 even where its logits, lse or dloss are NaN/inf (dloss 0 times NaN
    left NaN); a kept row with a NaN logit stays NaN."""
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((4, 6)).astype(dtype)
    targets = np.array([2, -100, -100, 4])
    logits[1, 3], logits[2, 0], logits[3, 1] = np.nan, np.inf, np.nan
    with np.errstate(all="ignore"):
        lse = ref.cross_entropy_forward(logits, targets, -100)[1]
        dlogits = ref.cross_entropy_backward(np.array([1.0, np.nan, 2.0, 1.0], dtype), logits, targets, lse, -100)
    assert dlogits.dtype == dtype
    np.testing.assert_array_equal(dlogits[1:3], 0)
    assert np.isfinite(dlogits[0]).all() and np.isnan(dlogits[3]).all()
