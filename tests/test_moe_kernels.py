"""The mixture-of-experts kernels (csrc/moe.c, cuda/moe.cu) against the NumPy reference, on the
loads a router really produces and the ones it rarely does: experts with no rows, every row on
one expert, one token, more experts than rows, odd channel counts (tails of the SIMD and tile
loops). The C rungs one by one and the production names; the CUDA binding on the NumPy mock
(tests/cuda_mock.py; the kernels themselves run under -m gpu). Also the reference itself
against a plain per-row loop, and the binding's refusals of a bad plan."""
import numpy as np
import pytest

from microgpt.backends import reference as ref
from microgpt.errors import ShapeError
from microgpt.nn.moe import routing_plan

cpu_moe = pytest.importorskip("microgpt.backends.cpu_moe")


def plan(rng, n, k, e, load):
    """(token_index, offsets) of n tokens routed to k of e experts: "random", "one" (every
    token's first choice expert 0; k = 1 puts every row there), "skewed" (half the experts idle)."""
    if load == "one":
        chosen = np.stack([np.concatenate([[0], rng.choice(np.arange(1, e), k - 1, replace=False)])
                           for _ in range(n)])
    elif load == "skewed":
        busy = max(k, e // 2)
        chosen = np.stack([rng.choice(busy, k, replace=False) for _ in range(n)])
    else:
        chosen = np.stack([rng.choice(e, k, replace=False) for _ in range(n)])
    token_index, offsets, _ = routing_plan(chosen, e)
    return token_index, offsets


LOADS = [(1, 1, 1, "random"), (1, 2, 8, "random"), (7, 1, 4, "one"), (13, 2, 8, "one"), (33, 2, 8, "skewed"),
         (64, 2, 8, "random"), (5, 3, 16, "skewed"), (200, 2, 4, "random")]
WIDTHS = [(1, 1), (3, 5), (17, 33), (64, 96), (129, 40)]


def _reference_by_rows(x, w, offsets):
    out = np.zeros((x.shape[0], w.shape[1]))
    for e in range(w.shape[0]):
        for r in range(offsets[e], offsets[e + 1]):
            out[r] = w[e] @ x[r]
    return out


@pytest.mark.parametrize("n,k,e,load", LOADS)
def test_routing_plan_sorts_rows_by_expert(n, k, e, load):
    rng = np.random.default_rng(n * 31 + e)
    token_index, offsets = plan(rng, n, k, e, load)
    assert token_index.shape == (n * k,) and offsets[0] == 0 and offsets[-1] == n * k
    assert np.all(np.diff(offsets) >= 0)
    assert np.array_equal(np.bincount(token_index, minlength=n), np.full(n, k))   # each token k rows
    if load == "one" and k == 1:
        assert offsets[1] == n and np.all(offsets[2:] == n)                         # all rows on expert 0


def test_the_reference_grouped_matmul_is_the_per_row_product():
    rng = np.random.default_rng(0)
    token_index, offsets = plan(rng, 9, 2, 5, "skewed")
    x, w = rng.standard_normal((18, 6)), rng.standard_normal((5, 4, 6))
    np.testing.assert_allclose(ref.grouped_matmul_forward(x, w, offsets), _reference_by_rows(x, w, offsets),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rung", ["production", *cpu_moe.RUNGS])
@pytest.mark.parametrize("n,k,e,load", LOADS)
@pytest.mark.parametrize("c,oc", WIDTHS)
def test_c_grouped_matmul_matches_the_reference(rung, n, k, e, load, c, oc):
    rng = np.random.default_rng(n + 7 * c + oc)
    token_index, offsets = plan(rng, n, k, e, load)
    r = token_index.size
    x = rng.standard_normal((r, c)).astype(np.float32)
    w = rng.standard_normal((e, oc, c)).astype(np.float32)
    dout = rng.standard_normal((r, oc)).astype(np.float32)
    fwd = cpu_moe.grouped_matmul_forward if rung == "production" else cpu_moe.rung("grouped_matmul_forward", rung)
    bwd = cpu_moe.grouped_matmul_backward if rung == "production" else cpu_moe.rung("grouped_matmul_backward", rung)
    x64, w64, d64 = x.astype(np.float64), w.astype(np.float64), dout.astype(np.float64)
    tol = dict(rtol=1e-4, atol=1e-4 * np.sqrt(max(c, oc, r)))
    np.testing.assert_allclose(fwd(x, w, offsets), ref.grouped_matmul_forward(x64, w64, offsets), **tol)
    dx, dw = bwd(dout, x, w, offsets)
    want_dx, want_dw = ref.grouped_matmul_backward(d64, x64, w64, offsets)
    np.testing.assert_allclose(dx, want_dx, **tol)
    np.testing.assert_allclose(dw, want_dw, **tol)
    idle = np.diff(offsets) == 0
    assert np.all(dw[idle] == 0)                      # an expert with no rows gets an exact 0


@pytest.mark.parametrize("n,k,e,load", LOADS)
@pytest.mark.parametrize("c", [1, 5, 64, 130])
def test_c_permute_and_combine_match_the_reference(n, k, e, load, c):
    rng = np.random.default_rng(3 * n + c)
    token_index, _ = plan(rng, n, k, e, load)
    r = token_index.size
    x = rng.standard_normal((n, c)).astype(np.float32)
    rows = rng.standard_normal((r, c)).astype(np.float32)
    weights = rng.random(r).astype(np.float32)
    dout = rng.standard_normal((n, c)).astype(np.float32)
    f64 = np.float64
    np.testing.assert_array_equal(cpu_moe.moe_permute_forward(x, token_index), ref.moe_permute_forward(x, token_index))
    np.testing.assert_allclose(cpu_moe.moe_permute_backward(rows, token_index, n),
                               ref.moe_permute_backward(rows.astype(f64), token_index, n), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cpu_moe.moe_combine_forward(rows, weights, token_index, n),
                               ref.moe_combine_forward(rows.astype(f64), weights.astype(f64), token_index, n),
                               rtol=1e-5, atol=1e-5)
    dy, dweights = cpu_moe.moe_combine_backward(dout, rows, weights, token_index)
    want_dy, want_dw = ref.moe_combine_backward(dout.astype(f64), rows.astype(f64), weights.astype(f64), token_index)
    np.testing.assert_allclose(dy, want_dy, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dweights, want_dw, rtol=1e-4, atol=1e-4 * np.sqrt(c))


def test_c_scatters_do_not_depend_on_the_thread_count():
    from microgpt.backends import cpu
    rng = np.random.default_rng(5)
    token_index, _ = plan(rng, 4096, 2, 8, "random")
    rows = rng.standard_normal((token_index.size, 384)).astype(np.float32)
    threads = cpu.get_num_threads()
    try:
        cpu.set_num_threads(1)
        one = cpu_moe.moe_permute_backward(rows, token_index, 4096)
        cpu.set_num_threads(2)
        two = cpu_moe.moe_permute_backward(rows, token_index, 4096)
    finally:
        cpu.set_num_threads(threads)
    np.testing.assert_array_equal(one, two)


def test_c_scatters_sum_each_tokens_rows_in_row_order():
    # the documented order: out[n] = ((0 + s y[r1]) + s y[r2]) + ... over n's rows r ascending,
    # which np.add.at in float32 (unbuffered, in index order) also computes: equal bits. The
    # plan has tokens with no rows, one row and many rows.
    rng = np.random.default_rng(9)
    n, c = 300, 389
    token_index = np.concatenate([rng.integers(0, n // 2, 700), np.full(40, n - 1)]).astype(np.int64)
    rng.shuffle(token_index)
    rows = rng.standard_normal((token_index.size, c)).astype(np.float32)
    weights = rng.random(token_index.size).astype(np.float32)
    want = np.zeros((n, c), np.float32)
    np.add.at(want, token_index, rows)
    np.testing.assert_array_equal(cpu_moe.moe_permute_backward(rows, token_index, n), want)
    want = np.zeros((n, c), np.float32)
    np.add.at(want, token_index, rows * weights[:, None])
    np.testing.assert_array_equal(cpu_moe.moe_combine_forward(rows, weights, token_index, n), want)


def test_a_bad_plan_is_refused_before_c():
    x = np.ones((4, 3), np.float32)
    w = np.ones((2, 5, 3), np.float32)
    with pytest.raises(ShapeError, match="offsets must rise"):
        cpu_moe.grouped_matmul_forward(x, w, np.array([0, 3, 2], np.int64))
    with pytest.raises(ShapeError, match="offsets must rise"):
        cpu_moe.grouped_matmul_forward(x, w, np.array([0, 1, 5], np.int64))
    with pytest.raises(ShapeError, match="offsets must be int64"):
        cpu_moe.grouped_matmul_forward(x, w, np.array([0, 4], np.int64))
    with pytest.raises(ShapeError, match="token_index must lie"):
        cpu_moe.moe_permute_forward(x, np.array([0, 4], np.int64))
    with pytest.raises(ShapeError, match="does not fit"):
        cpu_moe.grouped_matmul_forward(np.ones((4, 2), np.float32), w, np.array([0, 2, 4], np.int64))


@pytest.mark.parametrize("n,k,e,load", LOADS)
def test_the_cuda_binding_on_the_mock(monkeypatch, n, k, e, load):
    import cuda_mock
    cuda_mock.install(monkeypatch)
    from microgpt.backends import cuda
    rng = np.random.default_rng(n)
    token_index, offsets = plan(rng, n, k, e, load)
    r, c, oc = token_index.size, 6, 5
    x = rng.standard_normal((n, c)).astype(np.float32)
    rows = rng.standard_normal((r, c)).astype(np.float32)
    w = rng.standard_normal((e, oc, c)).astype(np.float32)
    dout = rng.standard_normal((r, oc)).astype(np.float32)
    weights = rng.random(r).astype(np.float32)
    dtok = rng.standard_normal((n, c)).astype(np.float32)
    dev = lambda a: cuda.asarray(a, a.dtype)        # noqa: E731
    host = cuda.to_numpy
    tol = dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(host(cuda.moe_permute_forward(dev(x), token_index)),
                               ref.moe_permute_forward(x, token_index), **tol)
    np.testing.assert_allclose(host(cuda.moe_permute_backward(dev(rows), dev(token_index), n)),
                               ref.moe_permute_backward(rows, token_index, n), **tol)
    np.testing.assert_allclose(host(cuda.grouped_matmul_forward(dev(rows), dev(w), offsets)),
                               ref.grouped_matmul_forward(rows, w, offsets), **tol)
    dx, dw = cuda.grouped_matmul_backward(dev(dout), dev(rows), dev(w), offsets)
    want_dx, want_dw = ref.grouped_matmul_backward(dout, rows, w, offsets)
    np.testing.assert_allclose(host(dx), want_dx, **tol)
    np.testing.assert_allclose(host(dw), want_dw, **tol)
    np.testing.assert_allclose(host(cuda.moe_combine_forward(dev(rows), dev(weights), token_index, n)),
                               ref.moe_combine_forward(rows, weights, token_index, n), **tol)
    dy, dweights = cuda.moe_combine_backward(dev(dtok), dev(rows), dev(weights), token_index)
    want_dy, want_dw = ref.moe_combine_backward(dtok, rows, weights, token_index)
    np.testing.assert_allclose(host(dy), want_dy, **tol)
    np.testing.assert_allclose(host(dweights), want_dw, **tol)
    with pytest.raises(ShapeError, match="offsets must rise"):
        cuda.grouped_matmul_forward(dev(rows), dev(w), np.zeros(e + 1, np.int64))


# v3_packed at sizes that take its threaded path (R x K x N >= 2^20) and its panel loops: a
# depth over one packed panel (C 400 > 384; an expert with over 384 rows for dw), N off the
# micro-kernel's width, row blocks cut at odd counts; loads with idle experts and one expert
# holding every row.
V3_PLANS = {
    "uneven": [0, 1, 397, 0, 77, 500, 3],       # rows per expert: idle ones, odd counts, > KC
    "all on one": [0, 0, 0, 978, 0],
    "even": [123] * 8,
}


def _plan_from_counts(counts):
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def _with_threads(n, fn):
    from microgpt.backends import cpu
    before = cpu.get_num_threads()
    try:
        cpu.set_num_threads(n)
        return fn()
    finally:
        cpu.set_num_threads(before)


@pytest.mark.parametrize("load", list(V3_PLANS))
@pytest.mark.parametrize("c,oc", [(400, 130), (96, 512)])
@pytest.mark.parametrize("threads", [1, 2])
def test_v3_packed_matches_the_reference_on_uneven_loads(load, c, oc, threads):
    offsets = _plan_from_counts(V3_PLANS[load])
    e, r = len(V3_PLANS[load]), int(offsets[-1])
    rng = np.random.default_rng(r + c)
    x = rng.standard_normal((r, c)).astype(np.float32)
    w = rng.standard_normal((e, oc, c)).astype(np.float32)
    dout = rng.standard_normal((r, oc)).astype(np.float32)
    fwd = cpu_moe.rung("grouped_matmul_forward", "v3_packed")
    bwd = cpu_moe.rung("grouped_matmul_backward", "v3_packed")
    out = _with_threads(threads, lambda: fwd(x, w, offsets))
    dx, dw = _with_threads(threads, lambda: bwd(dout, x, w, offsets))
    x64, w64, d64 = x.astype(np.float64), w.astype(np.float64), dout.astype(np.float64)
    want_dx, want_dw = ref.grouped_matmul_backward(d64, x64, w64, offsets)
    tol = dict(rtol=1e-4, atol=1e-4 * np.sqrt(max(c, oc, r)))
    np.testing.assert_allclose(out, ref.grouped_matmul_forward(x64, w64, offsets), **tol)
    np.testing.assert_allclose(dx, want_dx, **tol)
    np.testing.assert_allclose(dw, want_dw, **tol)
    assert np.all(dw[np.diff(offsets) == 0] == 0)


def test_v3_packed_gives_the_same_bits_on_1_and_2_threads_and_on_every_call():
    offsets = _plan_from_counts(V3_PLANS["uneven"])
    r = int(offsets[-1])
    rng = np.random.default_rng(11)
    x = rng.standard_normal((r, 400)).astype(np.float32)
    w = rng.standard_normal((len(V3_PLANS["uneven"]), 130, 400)).astype(np.float32)
    dout = rng.standard_normal((r, 130)).astype(np.float32)
    fwd = cpu_moe.rung("grouped_matmul_forward", "v3_packed")
    bwd = cpu_moe.rung("grouped_matmul_backward", "v3_packed")
    runs = [_with_threads(n, lambda: [fwd(x, w, offsets), *bwd(dout, x, w, offsets)]) for n in (1, 2, 2)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)
