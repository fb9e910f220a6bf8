"""bf16 on the CUDA backend: the conversions, the tensor-core GEMM in its four layouts, and the
linear layer inside matmul_precision("bf16") (cuda/matmul_bf16.cu, backends/cuda_bf16.py).

Each test runs on "mock" (tests/cuda_mock.py: the kernels' arithmetic in NumPy, any machine)
and on "gpu" (the real kernels; marked gpu, run by benchmarks/gpu_check.sh). Outputs are
poisoned (new device arrays start as NaN bytes), so an unwritten element fails.

Oracles. The conversions against PyTorch's bf16 (round to nearest, ties to even), bit for
bit. The products against float64 NumPy products, with tolerances derived from bf16's format:
8 significant bits (7 stored), so rounding moves a value x to x (1 + d) with |d| <= u = 2^-8.

  - against the float64 product of the *bf16-rounded* inputs, only float32 accumulation
    is left: each of the K additions rounds by at most 2^-24 of the running sum, which for
    random signs grows like sqrt(K) 2^-24 of the result, 2e-6 at K = 1000: TOL_ACCUM =
    1e-5, the float32 kernels' own tolerance.
  - against the float64 product of the *unrounded* inputs: the error of c_ij is
    sum_k a_ik b_kj (d_ik + e_kj + d_ik e_kj). With independent rounding errors of mean
    zero, E||dC||^2 = sum_ijk (a_ik b_kj)^2 E(d + e + de)^2 <= 2 u^2 (1 + u)^2 sum_ijk (a_ik b_kj)^2,
    and for inputs of independent random signs E||C||^2 = sum_ijk (a_ik b_kj)^2: so
    ||dC|| / ||C|| <= sqrt(2) u (1 + u) = 5.5e-3 in mean square (measured ~3e-3: |d| is
    u / sqrt(3) in RMS, not u). TOL_INPUTS = 2u = 7.8e-3 leaves room for the spread of a
    small matrix's norm around its mean.
"""
import numpy as np
import pytest

import cuda_mock
from microgpt.backends import cuda, cuda_bf16, cuda_runtime as rt, reference as ref

torch = pytest.importorskip("torch")

U = 2.0 ** -8                       # bf16 unit roundoff
TOL_ACCUM = 1e-5
TOL_INPUTS = 2 * U


def torch_bf16_bits(x):
    """PyTorch's round-to-nearest-even float32 -> bf16, as uint16 bit patterns (the oracle)."""
    t = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(torch.bfloat16)
    return t.view(torch.int16).numpy().view(np.uint16)


def bf16_values(x):
    """The float64 values of x rounded to bf16 (through PyTorch)."""
    return torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(torch.bfloat16).double().numpy()


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    assert np.isfinite(got).all(), "unwritten or non-finite elements"
    return np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30)


# --- conversions -----------------------------------------------------------------------------------

def special_floats():
    f = np.float32
    ties = np.array([0x3F808000, 0x3F818000, 0xBF808000, 0x3F80C000, 0x3F807FFF, 0x00008000, 0x00018000],
                    np.uint32).view(np.float32)            # exact halfway cases (even/odd below), near-ties
    return np.concatenate([ties, np.array([0.0, -0.0, np.inf, -np.inf, np.finfo(f).max, -np.finfo(f).max,
                                           np.finfo(f).tiny, np.finfo(f).tiny / 3, 1e-45, 3.3895e38,
                                           65504.0, 1.0, -1.0, 1 / 3], np.float32)])


def test_f32_to_bf16_rounds_to_nearest_even_as_torch(cu):
    rng = np.random.default_rng(0)
    x = np.concatenate([special_floats(),
                        (rng.standard_normal(4099) * np.exp(rng.uniform(-30, 30, 4099))).astype(np.float32),
                        rng.integers(0, 2 ** 32, 4099, dtype=np.uint64).astype(np.uint32).view(np.float32)])
    finite = ~np.isnan(x)
    got = cu.to_numpy(cuda_bf16.to_bf16(cu.asarray(x, np.float32)))
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got[finite], torch_bf16_bits(x[finite]))
    back = (got.astype(np.uint32) << 16).view(np.float32)
    assert np.isnan(back[~finite]).all(), "a NaN must stay NaN (never round to inf)"


def test_bf16_to_f32_is_exact_for_every_bit_pattern(cu):
    bits = np.arange(2 ** 16, dtype=np.uint32).astype(np.uint16)
    x16 = rt.upload(bits, np.uint16)
    got = cu.to_numpy(cuda_bf16.to_float32(x16))
    want = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).float().numpy()
    same = np.isnan(want)
    assert np.array_equal(np.isnan(got), same)
    np.testing.assert_array_equal(got[~same].view(np.uint32), want[~same].view(np.uint32))


# --- the GEMM --------------------------------------------------------------------------------------

# awkward sizes: tile edges (M, N not multiples of 128), K not a multiple of 32 or of 8
# (the guarded, element-by-element staging), one row, aligned GPT-like sizes, and few tiles
# with a long K (split-K on a GPU: aligned and guarded chunks)
SHAPES = [(1, 1, 1), (7, 5, 3), (129, 131, 40), (64, 200, 48), (130, 72, 264), (256, 128, 96), (33, 257, 1),
          (64, 200, 2048), (70, 90, 1030)]


def gemm_case(cu, rng, m, n, k, trans_a, trans_b, with_bias):
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32) if with_bias else None
    a16, b16 = cuda_bf16.to_bf16(cu.asarray(a, np.float32)), cuda_bf16.to_bf16(cu.asarray(b, np.float32))
    out = rt.empty((m, n), np.float32)
    cuda_bf16.gemm(out, a16, b16, None if bias is None else cu.asarray(bias, np.float32), m, n, k, trans_a, trans_b)
    got = cu.to_numpy(out)

    def op(x, transposed):
        return x.T if transposed else x
    rounded = op(bf16_values(a), trans_a) @ op(bf16_values(b), trans_b)
    exact = op(a.astype(np.float64), trans_a) @ op(b.astype(np.float64), trans_b)
    if bias is not None:
        rounded, exact = rounded + bias, exact + bias
    return got, rounded, exact


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 0), (1, 1)])
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_bf16_gemm_against_float64(cu, m, n, k, trans_a, trans_b):
    rng = np.random.default_rng(m * 1000 + n * 10 + k + 7 * trans_a + 3 * trans_b)
    got, rounded, exact = gemm_case(cu, rng, m, n, k, trans_a, trans_b, with_bias=(m + n) % 2 == 0)
    assert rel_err(got, rounded) < TOL_ACCUM, "against the product of the bf16-rounded inputs"
    if k >= 16:           # the norm-wise bound needs a few terms per element to hold in mean square
        assert rel_err(got, exact) < TOL_INPUTS, "against the product of the float32 inputs"


def test_bf16_gemm_rounding_is_visible_and_bounded(cu):
    """The result is not the float32 product (the inputs really were rounded) and its error
    against it sits where the derivation puts it: between u / 10 and sqrt(2) u (1 + u)."""
    rng = np.random.default_rng(3)
    got, _, exact = gemm_case(cu, rng, 192, 160, 256, 0, 1, with_bias=False)
    err = rel_err(got, exact)
    assert U / 10 < err < np.sqrt(2) * U * (1 + U)


def test_rung_and_alias_agree(cu):
    rng = np.random.default_rng(4)
    m, n, k = 70, 90, 64
    a16 = cuda_bf16.to_bf16(cu.asarray(rng.standard_normal((m, k)), np.float32))
    b16 = cuda_bf16.to_bf16(cu.asarray(rng.standard_normal((k, n)), np.float32))
    outs = []
    for name in ("matmul_bf16_v1_mma", "matmul_bf16"):
        out = rt.empty((m, n), np.float32)
        rt.call(name, rt.ffi.cast("float*", out.addr), rt.ffi.cast("uint16_t*", a16.addr),
                rt.ffi.cast("uint16_t*", b16.addr), rt.ffi.NULL, m, n, k, 0, 0)
        outs.append(cu.to_numpy(out))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_k_zero_gives_the_bias(cu):
    bias = np.arange(5, dtype=np.float32)
    out = rt.empty((3, 5), np.float32)
    empty = rt.empty((3, 0), np.uint16)
    cuda_bf16.gemm(out, empty, rt.empty((0, 5), np.uint16), cu.asarray(bias, np.float32), 3, 5, 0, 0, 0)
    np.testing.assert_array_equal(cu.to_numpy(out), np.broadcast_to(bias, (3, 5)))


# --- the linear layer and matmul in bf16 ----------------------------------------------------------

@pytest.mark.parametrize("w_in_out", [False, True])
def test_linear_in_bf16_scope(cu, w_in_out):
    rng = np.random.default_rng(5)
    x, dout = rng.standard_normal((3, 11, 40)), rng.standard_normal((3, 11, 24))
    w = rng.standard_normal((40, 24) if w_in_out else (24, 40))
    b = rng.standard_normal(24)
    xd, wd, bd, dd = (cu.asarray(v, np.float32) for v in (x, w, b, dout))
    with cuda_bf16.matmul_precision("bf16"):
        y = cu.to_numpy(cu.linear_forward(xd, wd, bd, w_in_out))
        dx, dw, db = (cu.to_numpy(t) for t in cu.linear_backward(dd, xd, wd, True, w_in_out))
    xr, wr, dr = bf16_values(x), bf16_values(w), bf16_values(dout)
    assert rel_err(y, ref.linear_forward(xr, wr, b, w_in_out)) < TOL_ACCUM
    want_dx, want_dw, want_db = ref.linear_backward(dr, xr, wr, True, w_in_out)
    assert rel_err(dx, want_dx) < TOL_ACCUM
    assert rel_err(dw, want_dw) < TOL_ACCUM
    assert rel_err(db, ref.linear_backward(dout, x, w, True, w_in_out)[2]) < TOL_ACCUM   # float32 sum
    # outside the scope: float32 again
    assert rel_err(cu.to_numpy(cu.linear_forward(xd, wd, bd, w_in_out)), ref.linear_forward(x, w, b, w_in_out)) < 1e-5


def test_matmul_in_bf16_scope(cu):
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((2, 3, 9, 16)), rng.standard_normal((3, 16, 10))
    with cuda_bf16.matmul_precision("bf16"):
        got = cu.to_numpy(cu.matmul_forward(cu.asarray(a, np.float32), cu.asarray(b, np.float32)))
    assert rel_err(got, bf16_values(a) @ bf16_values(b)) < TOL_ACCUM


def test_weight_copy_made_once_per_scope_and_never_stale(monkeypatch):
    mock = cuda_mock.install(monkeypatch)
    rng = np.random.default_rng(7)
    x, w = rng.standard_normal((4, 8)), rng.standard_normal((6, 8))
    xd, wd = cuda.asarray(x, np.float32), cuda.asarray(w, np.float32)
    with cuda_bf16.matmul_precision("bf16"):
        cuda.linear_forward(xd, wd, None)
        mock.calls.clear()
        cuda.linear_forward(xd, wd, None)
        assert mock.calls.count("f32_to_bf16") == 1          # x only: w's copy is reused
    cuda.adamw_update(wd, cuda.asarray(np.ones_like(w), np.float32), cuda.zeros(w.shape, np.float32),
                      cuda.zeros(w.shape, np.float32), 0.5, 0.9, 0.95, 1e-8, 0.0, 1)   # w changes in place
    w_now = cuda.to_numpy(wd).astype(np.float64)
    with cuda_bf16.matmul_precision("bf16"):
        got = cuda.to_numpy(cuda.linear_forward(xd, wd, None))
    assert rel_err(got, bf16_values(x) @ bf16_values(w_now).T) < TOL_ACCUM


def test_precision_must_be_known():
    with pytest.raises(Exception, match="bf16"):
        with cuda_bf16.matmul_precision("fp8"):
            pass


# --- attention forward on the tensor cores ---------------------------------------------------------

@pytest.mark.parametrize("b,nh,nkv,tq,tk", [(1, 1, 1, 1, 1), (2, 4, 2, 70, 70), (1, 2, 1, 33, 130),
                                            (2, 2, 2, 129, 129), (1, 3, 1, 64, 64), (1, 2, 2, 200, 257)])
def test_attention_bf16_forward_against_the_reference(cu, b, nh, nkv, tq, tk):
    """out within 2u of the reference on the bf16-rounded inputs (P is rounded to bf16 for the
    P V product, each weight by at most u: the GEMM's argument with one rounded operand), lse
    within float32 summation error (the scores are exact products of bf16 values)."""
    rng = np.random.default_rng(b * 100 + tq + tk)
    q = rng.standard_normal((b, nh, tq, 64)).astype(np.float32)
    k, v = (rng.standard_normal((b, nkv, tk, 64)).astype(np.float32) for _ in range(2))
    for segments in ([None, rng.integers(0, 3, (b, tk)).cumsum(axis=1) // 20] if tq == tk else [None]):
        out, lse = cu.attention_bf16_forward(*(cu.asarray(x, np.float32) for x in (q, k, v)), segments)
        want_out, want_lse = ref.attention_forward(bf16_values(q), bf16_values(k), bf16_values(v), segments)
        assert rel_err(cu.to_numpy(out), want_out) < TOL_INPUTS
        assert rel_err(cu.to_numpy(lse), want_lse) < TOL_ACCUM


def test_attention_bf16_forward_needs_head_size_64(cu):
    x = cu.asarray(np.ones((1, 1, 4, 32)), np.float32)
    with pytest.raises(Exception, match="64"):
        cu.attention_bf16_forward(x, x, x)


@pytest.mark.parametrize("b,nh,nkv,tq,tk", [(1, 1, 1, 1, 1), (2, 4, 2, 70, 70), (1, 2, 1, 33, 130),
                                            (1, 2, 2, 129, 129), (1, 2, 2, 100, 257)])
def test_attention_bf16_backward_against_the_reference(cu, b, nh, nkv, tq, tk):
    """dq, dk, dv within 2u of the reference backward on the bf16-rounded inputs: each is a
    product with one operand (P or dS) rounded to bf16 in the kernel, the GEMM's argument."""
    rng = np.random.default_rng(b * 1000 + tq + tk)
    q = rng.standard_normal((b, nh, tq, 64)).astype(np.float32)
    k, v = (rng.standard_normal((b, nkv, tk, 64)).astype(np.float32) for _ in range(2))
    dout = rng.standard_normal(q.shape).astype(np.float32)
    for segments in ([None, rng.integers(0, 3, (b, tk)).cumsum(axis=1) // 20] if tq == tk else [None]):
        rq, rk, rv, rd = (bf16_values(x) for x in (q, k, v, dout))
        out, lse = ref.attention_forward(rq, rk, rv, segments)
        got = cu.attention_bf16_backward(*(cu.asarray(x, np.float32) for x in (dout, q, k, v, out, lse)), segments)
        want = ref.attention_backward(rd, rq, rk, rv, out, lse, segments)
        for name, g, w in zip(("dq", "dk", "dv"), got, want):
            assert rel_err(cu.to_numpy(g), w) < TOL_INPUTS, name
