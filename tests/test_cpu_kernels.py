"""The C backend against the NumPy reference, kernel by kernel, on hypothesis-drawn shapes.

Every matmul rung (v1 naive ... v4 threaded) is called straight through cffi on sizes 1..300
per dimension (no multiple of any tile), with both transposes and a bias, and on every
SIMD micro-kernel this CPU has (AVX-512, AVX2, portable C). Every other kernel goes through
backends/cpu.py and is compared with backends/reference.py: forward, and backward with a
random upstream gradient, in float32, with tolerances atol + rtol*|ref| (assert_close prints
the worst elements). Each kernel also runs once at a size past the threading threshold and
on 1 and 2 threads. The float64 path must equal the reference exactly.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

from conftest import assert_close
from microgpt.backends import reference as ref

cpu = pytest.importorskip("microgpt.backends.cpu")
pytestmark = pytest.mark.skipif(not cpu.AVAILABLE, reason="C kernels not built")

RUNGS = ["matmul_forward_v1_naive", "matmul_forward_v2_blocked", "matmul_forward_v3_packed",
         "matmul_forward_v4_threaded", "matmul_forward"]
seeds = st.integers(0, 2**31 - 1)
dims = st.integers(1, 300)
shapes = array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=9)
F32 = dict(atol=2e-5, rtol=2e-4)


def supported_paths():
    paths = []
    for name in ("scalar", "avx2", "avx512"):
        if cpu.lib.microgpt_set_simd_path(name.encode()):
            paths.append(name)
    cpu.lib.microgpt_set_simd_path(b"")
    return paths


def rand(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def f64(z):
    """z in float64 (None stays None): the reference's input."""
    return None if z is None else z.astype(np.float64)


def call_rung(name, a, b, M, N, K, ta, tb, bias=None):
    out = np.full((M, N), np.nan, np.float32)        # every element must be written
    getattr(cpu.lib, name)(cpu._fp(out), cpu._fp(a), cpu._fp(b), cpu._opt(bias), M, N, K, ta, tb)
    return out


# --- matmul: every rung, every SIMD path --------------------------------------------------------

@given(dims, dims, dims, st.booleans(), st.booleans(), st.booleans(), seeds)
def test_matmul_rungs(M, N, K, ta, tb, with_bias, seed):
    rng = np.random.default_rng(seed)
    a = rand(rng, *((K, M) if ta else (M, K)))
    b = rand(rng, *((N, K) if tb else (K, N)))
    bias = rand(rng, N) if with_bias else None
    expected = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
    if with_bias:
        expected += bias
    tol = dict(atol=1e-5 * K + 1e-5, rtol=1e-4)
    for path in supported_paths():
        assert cpu.lib.microgpt_set_simd_path(path.encode())
        try:
            for name in RUNGS:
                if name == "matmul_forward_v1_naive" and path != "scalar":
                    continue   # the naive rung has no SIMD path: checked once
                assert_close(call_rung(name, a, b, M, N, K, int(ta), int(tb), bias), expected,
                             what=f"{name} [{path}] M={M} N={N} K={K} ta={ta} tb={tb} bias={with_bias}", **tol)
        finally:
            cpu.lib.microgpt_set_simd_path(b"")


def test_matmul_large_threaded(threads):
    rng = np.random.default_rng(1)
    M, N, K = 517, 3100, 401            # several KC passes, a second NC panel, ragged edges
    a, b = rand(rng, M, K), rand(rng, K, N)
    got = call_rung("matmul_forward", a, b, M, N, K, 0, 0)
    assert_close(got, a.astype(np.float64) @ b, atol=1e-3, rtol=1e-4, what="matmul 517x3100x401")


@st.composite
def batched_pair(draw):
    """Two operand shapes whose batch dims broadcast: equal, missing, size-1, or mixed."""
    M, K, N = draw(st.integers(1, 40)), draw(st.integers(1, 40)), draw(st.integers(1, 40))
    batch = draw(array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=3))
    def variant():
        kind = draw(st.sampled_from(["same", "none", "ones"]))
        return batch if kind == "same" else (() if kind == "none" else tuple(1 for _ in batch))
    return variant() + (M, K), variant() + (K, N)


@given(batched_pair(), seeds)
def test_matmul_forward_backward(shapes_ab, seed):
    rng = np.random.default_rng(seed)
    a, b = rand(rng, *shapes_ab[0]), rand(rng, *shapes_ab[1])
    out = cpu.matmul_forward(a, b)
    assert_close(out, ref.matmul_forward(a.astype(np.float64), b.astype(np.float64)),
                 what="matmul_forward", **F32)
    dout = rand(rng, *out.shape)
    got = cpu.matmul_backward(dout, a, b)
    want = ref.matmul_backward(*(x.astype(np.float64) for x in (dout, a, b)))
    for g, w, name in zip(got, want, ("da", "db")):
        assert_close(g, w, what=f"matmul_backward {name}", atol=1e-4, rtol=1e-4)


@given(shapes, st.integers(1, 70), st.booleans(), seeds, st.booleans())
def test_linear(lead, OC, bias, seed, w_in_out):
    """w_in_out: the weight stored (C, OC), GPT-2's Conv1D layout (its own few-rows path and
    the packed product reading w untransposed); dw comes back in that layout."""
    rng = np.random.default_rng(seed)
    C = lead[-1]
    x, w = rand(rng, *lead), rand(rng, *((C, OC) if w_in_out else (OC, C)))
    b = rand(rng, OC) if bias else None
    assert_close(cpu.linear_forward(x, w, b, w_in_out), ref.linear_forward(f64(x), f64(w), f64(b), w_in_out),
                 what="linear_forward", **F32)
    dout = rand(rng, *(lead[:-1] + (OC,)))
    got = cpu.linear_backward(dout, x, w, bias, w_in_out)
    want = ref.linear_backward(f64(dout), f64(x), f64(w), bias, w_in_out)
    for g, want_g, name in zip(got, want, ("dx", "dw", "db")):
        if want_g is None:
            assert g is None
        else:
            assert_close(g, want_g, what=f"linear_backward {name}", atol=1e-4, rtol=1e-4)


# --- row kernels ------------------------------------------------------------------------------------

def check_pair(fwd, bwd, x, rng, what, tol=F32):
    """forward(x) and backward(dout, forward(x)) against the reference in float64."""
    out = getattr(cpu, fwd)(x)
    assert_close(out, getattr(ref, fwd)(x.astype(np.float64)), what=what + " forward", **tol)
    dout = rand(rng, *x.shape)
    want = getattr(ref, bwd)(dout.astype(np.float64), out.astype(np.float64))
    assert_close(getattr(cpu, bwd)(dout, out), want, what=what + " backward", **tol)


@given(shapes, seeds, st.floats(0.1, 30))
def test_softmax_family(shape, seed, scale):
    rng = np.random.default_rng(seed)
    x = rand(rng, *shape) * np.float32(scale)
    check_pair("softmax_forward", "softmax_backward", x, rng, "softmax")
    check_pair("log_softmax_forward", "log_softmax_backward", x, rng, "log_softmax",
               tol=dict(atol=1e-4, rtol=2e-4))


@given(st.integers(1, 40), st.integers(1, 300), seeds, st.floats(0, 1))
def test_cross_entropy(N, V, seed, ignored):
    rng = np.random.default_rng(seed)
    logits = rand(rng, N, V) * 3
    targets = rng.integers(0, V, N)
    targets[rng.random(N) < ignored] = -100
    losses, lse = cpu.cross_entropy_forward(logits, targets, -100)
    want_losses, want_lse = ref.cross_entropy_forward(logits.astype(np.float64), targets, -100)
    assert_close(losses, want_losses, what="cross_entropy losses", atol=1e-5, rtol=1e-5)
    assert_close(lse, want_lse, what="cross_entropy lse", atol=1e-5, rtol=1e-5)
    dlosses = rand(rng, N)
    want = ref.cross_entropy_backward(dlosses.astype(np.float64), logits.astype(np.float64),
                                      targets, want_lse, -100)
    assert_close(cpu.cross_entropy_backward(dlosses, logits, targets, lse, -100), want,
                 what="cross_entropy_backward", **F32)


@given(shapes, st.integers(1, 50), st.integers(1, 40), seeds)
def test_embedding(ids_shape, V, C, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, ids_shape)                 # small V: repeated ids must accumulate
    weight = rand(rng, V, C)
    assert_close(cpu.embedding_forward(ids, weight), ref.embedding_forward(ids, weight),
                 what="embedding_forward", atol=0, rtol=0)
    dout = rand(rng, *(ids_shape + (C,)))
    want = ref.embedding_backward(dout.astype(np.float64), ids, V)
    assert_close(cpu.embedding_backward(dout, ids, V), want, what="embedding_backward", **F32)


@given(shapes, seeds, st.booleans(), st.sampled_from([1e-5, 1e-2]))
def test_norms(shape, seed, bias, eps):
    rng = np.random.default_rng(seed)
    C = shape[-1]
    x, w = rand(rng, *shape) * 2 + 0.5, rand(rng, C)
    b = rand(rng, C) if bias else None
    got = cpu.layer_norm_forward(x, w, b, eps)
    want = ref.layer_norm_forward(f64(x), f64(w), f64(b), eps)
    for g, wv, name in zip(got, want, ("out", "mean", "rstd")):
        assert_close(g, wv, what=f"layer_norm_forward {name}", atol=1e-4, rtol=1e-4)
    dout = rand(rng, *shape)
    # dx carries rstd as a factor: a row of nearly equal values (tiny variance) amplifies
    # float32 rounding by rstd, so dx is compared in units of (1 + rstd) per row.
    row_scale = 1.0 + want[2][..., None]
    got = cpu.layer_norm_backward(dout, x, w, got[1], got[2], bias)
    want = ref.layer_norm_backward(f64(dout), f64(x), f64(w), want[1], want[2], bias)
    got, want = (got[0] / row_scale,) + got[1:], (want[0] / row_scale,) + want[1:]
    for g, wv, name in zip(got, want, ("dx", "dw", "db")):
        if wv is None:
            assert g is None
        else:
            assert_close(g, wv, what=f"layer_norm_backward {name}", atol=2e-4, rtol=2e-4)
    out, rstd = cpu.rms_norm_forward(x, w, eps)
    want = ref.rms_norm_forward(f64(x), f64(w), eps)
    assert_close(out, want[0], what="rms_norm out", atol=1e-4, rtol=1e-4)
    assert_close(rstd, want[1], what="rms_norm rstd", atol=1e-4, rtol=1e-4)
    row_scale = 1.0 + want[1][..., None]
    got = cpu.rms_norm_backward(dout, x, w, rstd)
    want = ref.rms_norm_backward(f64(dout), f64(x), f64(w), want[1])
    got, want = (got[0] / row_scale, got[1]), (want[0] / row_scale, want[1])
    for g, wv, name in zip(got, want, ("dx", "dw")):
        assert_close(g, wv, what=f"rms_norm_backward {name}", atol=2e-4, rtol=2e-4)


@given(array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=4), st.integers(1, 9),
       st.integers(1, 12), seeds)
def test_rope(lead, T, half, seed):
    rng = np.random.default_rng(seed)
    x = rand(rng, *(lead + (T, 2 * half)))
    angles = rng.uniform(-4, 4, (T, half))
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    assert_close(cpu.rope_forward(x, cos, sin), ref.rope_forward(f64(x), f64(cos), f64(sin)),
                 what="rope_forward", **F32)
    assert_close(cpu.rope_backward(x, cos, sin), ref.rope_backward(f64(x), f64(cos), f64(sin)),
                 what="rope_backward", **F32)


@given(shapes, seeds, st.floats(0.1, 12))
def test_activations(shape, seed, scale):
    rng = np.random.default_rng(seed)
    x, dout = rand(rng, *shape) * np.float32(scale), rand(rng, *shape)
    for name in ("gelu", "silu"):
        fwd, bwd = getattr(cpu, name + "_forward"), getattr(cpu, name + "_backward")
        assert_close(fwd(x), getattr(ref, name + "_forward")(x.astype(np.float64)),
                     what=name + "_forward", atol=1e-6, rtol=2e-6 * 10)
        want = getattr(ref, name + "_backward")(dout.astype(np.float64), x.astype(np.float64))
        assert_close(bwd(dout, x), want, what=name + "_backward", atol=1e-5, rtol=1e-5)


@given(shapes, seeds, st.floats(0, 0.2))
def test_adamw(shape, seed, weight_decay):
    rng = np.random.default_rng(seed)
    param = rand(rng, *shape)
    m, v = np.zeros_like(param), np.zeros_like(param)
    want = [x.astype(np.float64) for x in (param, m, v)]
    for step in range(1, 4):
        grad = rand(rng, *shape)
        cpu.adamw_update(param, grad, m, v, 1e-2, 0.9, 0.95, 1e-8, weight_decay, step)
        ref.adamw_update(*want[:1], grad.astype(np.float64), *want[1:], 1e-2, 0.9, 0.95, 1e-8,
                         weight_decay, step)
    for got, w, name in zip((param, m, v), want, ("param", "m", "v")):
        assert_close(got, w, what=f"adamw {name}", atol=1e-5, rtol=1e-4)


# --- threading thresholds, and the float64 path --------------------------------------------------

def test_every_kernel_threaded(threads):
    """Sizes past MG_PAR_MIN, so each kernel's OpenMP branch runs, on 1 and on 2 threads."""
    rng = np.random.default_rng(threads)
    x = rand(rng, 300, 515)
    check_pair("softmax_forward", "softmax_backward", x, rng, "softmax big")
    check_pair("log_softmax_forward", "log_softmax_backward", x, rng, "log_softmax big",
               tol=dict(atol=1e-4, rtol=2e-4))
    targets = rng.integers(0, 515, 300)
    losses, lse = cpu.cross_entropy_forward(x, targets, -1)
    assert_close(losses, ref.cross_entropy_forward(x.astype(np.float64), targets, -1)[0],
                 what="cross_entropy big", atol=1e-5, rtol=1e-5)
    w, b = rand(rng, 515), rand(rng, 515)
    got = cpu.layer_norm_backward(x, x, w, *cpu.layer_norm_forward(x, w, b, 1e-5)[1:], True)
    mean, rstd = ref.layer_norm_forward(x.astype(np.float64), w, b, 1e-5)[1:]
    want = ref.layer_norm_backward(x.astype(np.float64), x, w, mean, rstd, True)
    for g, wv, name in zip(got, want, ("dx", "dw", "db")):
        assert_close(g, wv, what=f"layer_norm_backward big {name}", atol=1e-3, rtol=1e-3)
    ids = rng.integers(0, 7, 300)
    dout = rand(rng, 300, 515)
    assert_close(cpu.embedding_backward(dout, ids, 7), ref.embedding_backward(dout.astype(np.float64), ids, 7),
                 what="embedding_backward big", atol=1e-4, rtol=1e-4)
    assert_close(cpu.gelu_forward(x), ref.gelu_forward(x.astype(np.float64)), what="gelu big",
                 atol=1e-6, rtol=2e-5)
    param, grad = rand(rng, 600000), rand(rng, 600000)
    m, v = np.zeros_like(param), np.zeros_like(param)
    want = [param.astype(np.float64), m.astype(np.float64), v.astype(np.float64)]
    cpu.adamw_update(param, grad, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.1, 1)
    ref.adamw_update(want[0], grad.astype(np.float64), want[1], want[2], 1e-3, 0.9, 0.999, 1e-8, 0.1, 1)
    assert_close(param, want[0], what="adamw big", atol=1e-6, rtol=1e-5)


def test_float64_takes_the_reference_path():
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((3, 5)), rng.standard_normal(5), rng.standard_normal(5)
    assert np.array_equal(cpu.softmax_forward(x), ref.softmax_forward(x))
    for got, want in zip(cpu.layer_norm_forward(x, w, b, 1e-5), ref.layer_norm_forward(x, w, b, 1e-5)):
        assert np.array_equal(got, want)
    assert cpu.linear_forward(x, rng.standard_normal((4, 5)), None).dtype == np.float64


def test_contract_and_default():
    from microgpt import backends
    assert callable(backends.use("cpu").matmul_forward)
    assert cpu.simd_path() in ("avx512", "avx2", "scalar")


@given(st.integers(1, 5), st.integers(1, 300), st.integers(1, 300), st.booleans(), seeds)
def test_linear_forward_few_rows(rows, C, OC, bias, seed):
    """1..4 rows take the streaming matrix-vector path (decoding); 5 the packed GEMM."""
    rng = np.random.default_rng(seed)
    x, w = rand(rng, 1, rows, C), rand(rng, OC, C)
    b = rand(rng, OC) if bias else None
    want = ref.linear_forward(x.astype(np.float64), w.astype(np.float64),
                              None if b is None else b.astype(np.float64))
    assert_close(cpu.linear_forward(x, w, b), want, what=f"linear_forward {rows} rows", **F32)
