"""The C attention (csrc/attention_naive.c, csrc/attention.c) against the NumPy reference, and its memory bound.

Oracle: backends/reference.py's attention_forward/backward in float64 (it builds the whole
T x T matrix; the C kernel never does). Shapes are drawn by hypothesis so that they cross and
miss every tile size (blocks of 64 keys and 64 queries, 16-float vectors): T from 1 to 150,
head sizes 1, 3, 17, 64 and others, grouped-query heads (NKV any divisor of NH), and fewer
queries than keys (the KV-cache case, down to Tq = 1, which has its own row path for Tq < 8).
Every SIMD path this CPU has (AVX-512, AVX2, portable) and 1 and 2 threads run. Each rung of
the ladder (v1_naive, v2_flash) is also called straight through cffi, as the matmul rungs are,
and the production entry point is checked to be v2 on finite inputs and v1 on the others
(tests/test_kernel_special_values.py has the NaN/inf patterns). The memory check reads the
workspace the binding allocates (it must grow linearly in T) and, independently, the peak of
Python-visible memory with tracemalloc over T = 1024 and 4096. Bad arguments must raise a
MicrogptError.
"""
import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import assert_close
from microgpt.backends import reference as ref
from microgpt.errors import MicrogptError

cpu = pytest.importorskip("microgpt.backends.cpu")
pytestmark = pytest.mark.skipif(not cpu.AVAILABLE, reason="C kernels not built")

TOL = dict(atol=2e-5, rtol=2e-4)
PATHS = [p for p in ("scalar", "avx2", "avx512") if cpu.AVAILABLE and cpu.lib.microgpt_set_simd_path(p.encode())]
if cpu.AVAILABLE:
    cpu.lib.microgpt_set_simd_path(b"")


def inputs(rng, B, NH, NKV, Tq, Tk, HS, scale=1.0):
    q = rng.standard_normal((B, NH, Tq, HS)) * scale
    k = rng.standard_normal((B, NKV, Tk, HS)) * scale
    v = rng.standard_normal((B, NKV, Tk, HS))
    dout = rng.standard_normal((B, NH, Tq, HS))
    return q, k, v, dout


def check_against_reference(q, k, v, dout, path="", threads=None):
    """C forward and backward (float32) against the float64 reference on the same values."""
    f32 = [x.astype(np.float32) for x in (q, k, v, dout)]
    q, k, v, dout = [x.astype(np.float64) for x in f32]      # the reference sees the same values
    out_ref, lse_ref = ref.attention_forward(q, k, v)
    grads_ref = ref.attention_backward(dout, q, k, v, out_ref, lse_ref)
    before = cpu.get_num_threads()
    assert cpu.lib.microgpt_set_simd_path(path.encode())
    try:
        if threads:
            cpu.set_num_threads(threads)
        out, lse = cpu.attention_forward(*f32[:3])
        grads = cpu.attention_backward(f32[3], *f32[:3], out, lse)
    finally:
        cpu.lib.microgpt_set_simd_path(b"")
        cpu.set_num_threads(before)
    assert out.dtype == lse.dtype == np.float32
    assert_close(out, out_ref, **TOL, what=f"out [{path}]")
    assert_close(lse, lse_ref, **TOL, what=f"lse [{path}]")
    for name, g, g_ref in zip(("dq", "dk", "dv"), grads, grads_ref):
        assert g.dtype == np.float32
        # gradients sum many terms: scale the tolerance by the gradient's size
        assert_close(g, g_ref, atol=TOL["atol"] * max(1.0, np.abs(g_ref).max()), rtol=TOL["rtol"],
                     what=f"{name} [{path}]")


@st.composite
def attention_shapes(draw, max_tq=150):
    NKV = draw(st.integers(1, 3))
    NH = NKV * draw(st.integers(1, 3))
    Tq = draw(st.integers(1, max_tq))
    Tk = Tq + draw(st.sampled_from([0, 0, 1, 17, 64, 100]))
    HS = draw(st.sampled_from([1, 3, 16, 17, 33, 64, 80]))
    return draw(st.integers(1, 2)), NH, NKV, Tq, Tk, HS


@given(attention_shapes(), st.integers(0, 2**31 - 1), st.sampled_from([0.5, 1.0, 3.0]))
def test_matches_reference_every_path(shape, seed, scale):
    rng = np.random.default_rng(seed)
    args = inputs(rng, *shape, scale=scale)
    for path in PATHS:
        check_against_reference(*args, path=path)


@given(attention_shapes(max_tq=9), st.integers(0, 2**31 - 1))
def test_few_queries_every_path(shape, seed):
    """Tq < 8 takes the row path (KV-cache decoding); 8 and 9 the tiled one."""
    args = inputs(np.random.default_rng(seed), *shape)
    for path in PATHS:
        check_against_reference(*args, path=path)


@pytest.mark.parametrize("shape", [
    (1, 1, 1, 1, 1, 1),          # one query, one key, one channel
    (1, 4, 2, 1, 200, 64),       # decode: one new query against a long cache, GQA
    (2, 4, 2, 5, 150, 17),       # a few queries (the row path), odd head size
    (1, 3, 1, 7, 40, 3),         # the most queries the row path takes, tiny heads
    (2, 6, 1, 64, 64, 64),       # exactly one tile, multi-query attention
    (1, 2, 2, 65, 65, 64),       # one past a tile
    (2, 3, 3, 130, 190, 17),     # queries are the last 130 of 190 positions
    (1, 2, 1, 300, 300, 3),      # several blocks, odd head size
    (1, 2, 1, 70, 75, 200),      # a head wider than any register tile
    (1, 4, 1, 200, 260, 32),     # one kv head, one batch: the backward splits key blocks
    (1, 1, 1, 300, 320, 64),     # one head: the forward splits query blocks across threads
    (1, 1, 1, 5, 4000, 64),      # one head, few queries: the row path splits rows
])
@pytest.mark.parametrize("threads", [1, 2])
def test_named_shapes(shape, threads):
    check_against_reference(*inputs(np.random.default_rng(sum(shape)), *shape), threads=threads)


def test_large_scores_stay_finite():
    """Scores near +-80 (softmax saturates, a naive exp overflows): still the reference's answer."""
    check_against_reference(*inputs(np.random.default_rng(7), 1, 2, 1, 70, 90, 8, scale=5.0))


def test_float64_takes_the_reference_path():
    q, k, v, dout = inputs(np.random.default_rng(3), 1, 2, 1, 5, 7, 4)
    out, lse = cpu.attention_forward(q, k, v)
    out_ref, lse_ref = ref.attention_forward(q, k, v)
    assert np.array_equal(out, out_ref) and np.array_equal(lse, lse_ref)
    for g, g_ref in zip(cpu.attention_backward(dout, q, k, v, out, lse),
                        ref.attention_backward(dout, q, k, v, out, lse)):
        assert np.array_equal(g, g_ref)


# --- the ladder: each rung straight through cffi ------------------------------------------------------

RUNGS = ["attention_{}_v1_naive", "attention_{}_v2_flash", "attention_{}"]   # the last: production


def call_rung(rung, q, k, v, dout):
    """out, lse, dq, dk, dv of one rung (float32 arrays), with the production workspace sizes."""
    B, NH, Tq, HS = q.shape
    NKV, Tk = k.shape[1], k.shape[2]
    fp, sizes = cpu._fp, (B, NH, NKV, Tq, Tk, HS)
    out, lse = np.empty_like(q), np.empty((B, NH, Tq), np.float32)
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    work = np.empty(cpu.lib.attention_forward_workspace(B, NH, Tq, Tk, HS), np.float32)
    assert getattr(cpu.lib, rung.format("forward"))(fp(out), fp(lse), fp(work), work.size, fp(q), fp(k), fp(v),
                                                    cpu.ffi.NULL, *sizes) == 0
    work = np.empty(cpu.lib.attention_backward_workspace(B, NH, NKV, Tq, Tk, HS), np.float32)
    assert getattr(cpu.lib, rung.format("backward"))(fp(dq), fp(dk), fp(dv), fp(work), work.size, fp(dout), fp(q),
                                                     fp(k), fp(v), fp(out), fp(lse), cpu.ffi.NULL, *sizes) == 0
    return out, lse, dq, dk, dv


@pytest.mark.parametrize("rung", RUNGS)
@given(attention_shapes(max_tq=90), st.integers(0, 2**31 - 1))
def test_rungs_match_reference(rung, shape, seed):
    q, k, v, dout = [x.astype(np.float32) for x in inputs(np.random.default_rng(seed), *shape)]
    out_ref, lse_ref = ref.attention_forward(*(x.astype(np.float64) for x in (q, k, v)))
    out, lse, *grads = call_rung(rung, q, k, v, dout)
    assert_close(out, out_ref, **TOL, what=f"{rung} out")
    assert_close(lse, lse_ref, **TOL, what=f"{rung} lse")
    grads_ref = ref.attention_backward(*(x.astype(np.float64) for x in (dout, q, k, v)), out_ref, lse_ref)
    for name, g, g_ref in zip(("dq", "dk", "dv"), grads, grads_ref):
        assert_close(g, g_ref, atol=TOL["atol"] * max(1.0, np.abs(g_ref).max()), rtol=TOL["rtol"],
                     what=f"{rung} {name}")


def test_production_is_v2_then_v1_where_v2_is_not_finite():
    """Finite inputs: the production result is v2's, bit for bit. A NaN value at a key that early
    queries cannot see: v2's diagonal tile multiplies it by their zero probabilities (0 * NaN), so
    production hands the call to v1, which keeps those queries finite."""
    rng = np.random.default_rng(11)
    q, k, v, dout = [x.astype(np.float32) for x in inputs(rng, 1, 2, 1, 40, 40, 16)]
    production, flash = call_rung(RUNGS[2], q, k, v, dout), call_rung(RUNGS[1], q, k, v, dout)
    for got, want in zip(production, flash):
        assert np.array_equal(got, want)
    v[0, 0, 20, 3] = np.nan                          # seen by queries 20 .. 39 only
    production, flash, naive = (call_rung(r, q, k, v, dout) for r in (RUNGS[2], RUNGS[1], RUNGS[0]))
    assert np.isnan(flash[0][0, :, :20]).any()       # why the fallback exists
    for got, want in zip(production, naive):
        assert np.array_equal(got, want, equal_nan=True)
    out = production[0]
    assert np.isfinite(out[0, :, :20]).all() and np.isnan(out[0, :, 20:, 3]).all()


def test_naive_refuses_a_short_workspace():
    q = np.ones((1, 1, 4, 8), np.float32)
    out, lse, work, fp = np.empty_like(q), np.empty((1, 1, 4), np.float32), np.empty(3, np.float32), cpu._fp
    assert cpu.lib.attention_forward_v1_naive(fp(out), fp(lse), fp(work), 3, fp(q), fp(q), fp(q),
                                              cpu.ffi.NULL, 1, 1, 1, 4, 4, 8) == -1
    dq, dk, dv = np.empty_like(q), np.empty_like(q), np.empty_like(q)
    assert cpu.lib.attention_backward_v1_naive(fp(dq), fp(dk), fp(dv), fp(work), 7, fp(q), fp(q), fp(q), fp(q),
                                               fp(out), fp(lse), cpu.ffi.NULL, 1, 1, 1, 4, 4, 8) == -1


# --- memory: linear in T ---------------------------------------------------------------------------

def test_workspace_is_linear_in_T():
    """The only scratch the kernel gets is what the binding allocates from these sizes."""
    B, NH, NKV, HS = 8, 6, 2, 64
    threads = cpu.get_num_threads()
    for T in (1024, 4096, 16384):
        fwd = cpu.lib.attention_forward_workspace(B, NH, T, T, HS)
        bwd = cpu.lib.attention_backward_workspace(B, NH, NKV, T, T, HS)
        # per thread: a few (T, HS) panels plus fixed 64 x 64 tiles — never T * T
        assert fwd <= threads * (2 * T * HS + 3 * 64 * 64 + 256) + 16, (T, fwd)
        assert bwd <= threads * (10 * T * HS + 2 * T + 2 * 64 * 64 + 32) + 16, (T, bwd)
    # one (batch, kv-head) pair on several threads: each thread also holds a copy of dq
    T = 4096
    assert cpu.lib.attention_backward_workspace(1, NH, 1, T, T, HS) <= \
        threads * (10 * T * HS + 2 * T + 2 * 64 * 64 + 32 + NH * T * HS) + 16
    grow = cpu.lib.attention_backward_workspace(B, NH, NKV, 4096, 4096, HS) / \
        cpu.lib.attention_backward_workspace(B, NH, NKV, 1024, 1024, HS)
    assert grow < 4.1


def peak_bytes(T, HS=16):
    q, k, v, dout = [x.astype(np.float32) for x in inputs(np.random.default_rng(0), 1, 1, 1, T, T, HS)]
    tracemalloc.start()
    out, lse = cpu.attention_forward(q, k, v)
    cpu.attention_backward(dout, q, k, v, out, lse)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_peak_memory_grows_linearly():
    small, large = peak_bytes(1024), peak_bytes(4096)
    assert large < 5 * small, (small, large)           # x4 in T: about x4 in bytes, not x16
    assert large < 4096 * 4096 * 4 / 8                 # far below one T x T float32 matrix


# --- bad arguments: a clear error, never a crash ------------------------------------------------

def good():
    q, k, v, dout = [x.astype(np.float32) for x in inputs(np.random.default_rng(1), 2, 4, 2, 5, 8, 6)]
    out, lse = cpu.attention_forward(q, k, v)
    return dict(dout=dout, q=q, k=k, v=v, out=out, lse=lse)


SPOILS = {
    "int32": lambda x: x.astype(np.int32),
    "float16": lambda x: x.astype(np.float16),
    "float64": lambda x: x.astype(np.float64),      # mixed with float32 arguments
    "strided": lambda x: np.repeat(x, 2, axis=-1)[..., ::2],
    "transposed": lambda x: x.T,
    "3-D": lambda x: x.reshape(-1, *x.shape[2:]) if x.ndim > 2 else x[None],
    "bigger": lambda x: np.resize(x, x.shape[:-1] + (x.shape[-1] + 1,)),
    "empty": lambda x: np.zeros(x.shape[:-1] + (0,), x.dtype),
    "list": lambda x: x.tolist(),
}


@pytest.mark.parametrize("how", sorted(SPOILS))
@pytest.mark.parametrize("name", ["dout", "q", "k", "v", "out", "lse"])
def test_spoiled_argument_raises(name, how):
    args = good()
    args[name] = SPOILS[how](args[name])
    with pytest.raises(MicrogptError):
        if name in ("q", "k", "v"):
            cpu.attention_forward(args["q"], args["k"], args["v"])
        cpu.attention_backward(**args)


@pytest.mark.parametrize("q_shape,kv_shape", [
    ((1, 3, 4, 8), (1, 2, 4, 8)),    # 3 query heads over 2 kv heads
    ((1, 2, 9, 8), (1, 2, 4, 8)),    # more queries than keys
    ((2, 2, 4, 8), (1, 2, 4, 8)),    # batch mismatch
    ((1, 2, 4, 8), (1, 2, 4, 7)),    # head size mismatch
])
def test_inconsistent_shapes_raise(q_shape, kv_shape):
    q, k = np.ones(q_shape, np.float32), np.ones(kv_shape, np.float32)
    for dtype in (np.float32, np.float64):
        with pytest.raises(MicrogptError):
            cpu.attention_forward(q.astype(dtype), k.astype(dtype), k.astype(dtype))


def test_c_refuses_a_short_workspace():
    q = np.ones((1, 1, 4, 8), np.float32)
    out, lse, work = np.empty_like(q), np.empty((1, 1, 4), np.float32), np.empty(8, np.float32)
    fp = cpu._fp
    assert cpu.lib.attention_forward(fp(out), fp(lse), fp(work), work.size, fp(q), fp(q), fp(q),
                                     cpu.ffi.NULL, 1, 1, 1, 4, 4, 8) == -1
