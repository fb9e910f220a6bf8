"""Every kernel of the CUDA backend against the NumPy reference, on random inputs with odd sizes.

Each test runs twice: on "mock" (tests/cuda_mock.py stands in for the library, so the
binding's own logic — broadcast strides, reduction plans, gemm flags, indexing — is checked
on any machine, CI included) and on "gpu" (the real kernels; marked `gpu`, skipped without
a GPU, run by benchmarks/gpu_check.sh with `pytest -m gpu`). Outputs are poisoned (every new
device array starts as NaN bytes) so an element a kernel forgot to write fails the check.
Errors are norm-wise, ||ours - ref|| / ||ref||, against the reference in float64 on the same
float32-rounded inputs: < 1e-5 for float32, < 1e-2 for the bf16 tensor-core matmul rung.
"""
import numpy as np
import pytest

from microgpt.backends import KERNELS, cuda, cuda_matmul, cuda_runtime as rt, reference as ref
from microgpt.errors import BackendError, DTypeError, ShapeError

TOL = 1e-5
CHECKED = set()     # kernels some test below compares with the reference


def rand(rng, *shape, scale=1.0):
    """float32-representable random values as float64 (the reference's input)."""
    return (rng.standard_normal(shape) * scale).astype(np.float32).astype(np.float64)


def close(cu, ours, expected, tol=TOL, name=""):
    got = cu.to_numpy(ours).astype(np.float64) if isinstance(ours, rt.DeviceArray) else np.asarray(ours, np.float64)
    expected = np.asarray(expected, np.float64)
    assert got.shape == expected.shape, f"{name}: shape {got.shape} != {expected.shape}"
    assert np.all(np.isfinite(got) == np.isfinite(expected)), f"{name}: unwritten or non-finite elements"
    denom = max(np.linalg.norm(expected), 1e-30)
    err = np.linalg.norm(got - expected) / denom if expected.size else 0.0
    if not err < tol:
        worst = np.argsort(np.abs(got - expected).reshape(-1))[-3:]
        raise AssertionError(f"{name}: rel. error {err:.2e} >= {tol:.0e}; worst got "
                             f"{got.reshape(-1)[worst]} want {expected.reshape(-1)[worst]}")


def dev(cu, x):
    return cu.asarray(x, np.int64 if np.asarray(x).dtype.kind in "iu" else np.float32)


# --- arrays and elementwise ------------------------------------------------------------------------

def test_transfer_and_creation(cu):
    CHECKED.update({"asarray", "to_numpy", "zeros", "full", "accumulate"})
    rng = np.random.default_rng(0)
    x = rand(rng, 3, 5, 7)
    close(cu, dev(cu, x), x)
    ids = rng.integers(-5, 5, size=(4, 3))
    assert np.array_equal(cu.to_numpy(dev(cu, ids)), ids)
    close(cu, cu.zeros((2, 3), np.float32), np.zeros((2, 3)))
    close(cu, cu.full((5,), 2.5, np.float32), np.full(5, 2.5))
    assert np.array_equal(cu.to_numpy(cu.full((3,), 7, np.int64)), [7, 7, 7])
    dst = dev(cu, x)
    cu.accumulate(dst, dev(cu, x[0]))
    close(cu, dst, x + x[0])
    with pytest.raises(DTypeError):
        cu.asarray(x, np.float64)


@pytest.mark.parametrize("sa,sb", [((5, 7), (5, 7)), ((3, 1, 7), (4, 1)), ((1,), (2, 3)), ((), (4, 5)),
                                   ((6, 1, 3, 1), (5, 1, 2)), ((1031,), ())])
def test_binary_broadcasting(cu, sa, sb):
    CHECKED.update({"add", "sub", "mul", "div"})
    rng = np.random.default_rng(1)
    a, b = rand(rng, *sa), rand(rng, *sb) + 3.0
    for name in ("add", "sub", "mul", "div"):
        close(cu, getattr(cu, name)(dev(cu, a), dev(cu, b)), getattr(ref, name)(a, b), name=name)
    close(cu, cu.mul(dev(cu, a), 0.5), a * 0.5)
    close(cu, cu.sub(2.0, dev(cu, a)), 2.0 - a)


def test_unary_and_activations(cu):
    names = ["neg", "exp", "log", "sqrt", "tanh", "relu_forward", "gelu_forward", "silu_forward"]
    CHECKED.update(names + ["pow_scalar", "relu_backward", "gelu_backward", "silu_backward"])
    rng = np.random.default_rng(2)
    x = rand(rng, 37, 11)
    pos = np.abs(x) + 0.1
    for name in names:
        inp = pos if name in ("log", "sqrt") else x
        close(cu, getattr(cu, name)(dev(cu, inp)), getattr(ref, name)(inp), name=name)
    close(cu, cu.pow_scalar(dev(cu, pos), 1.7), ref.pow_scalar(pos, 1.7))
    dout = rand(rng, 37, 11)
    for name in ("relu_backward", "gelu_backward", "silu_backward"):
        close(cu, getattr(cu, name)(dev(cu, dout), dev(cu, x)), getattr(ref, name)(dout, x), name=name)


# --- reductions and shapes ----------------------------------------------------------------------------

@pytest.mark.parametrize("shape,axes", [((7, 13), (1,)), ((7, 13), (0,)), ((3, 5, 33), (0, 2)),
                                        ((4, 3, 5, 2), (1, 2)), ((9,), (0,)), ((2, 70000, 2), (0,)),
                                        ((3, 4), ())])
def test_sum_max(cu, shape, axes):
    CHECKED.update({"sum", "max", "max_backward"})
    rng = np.random.default_rng(3)
    a = rand(rng, *shape)
    for keep in (False, True):
        close(cu, cu.sum(dev(cu, a), axes, keep), ref.sum(a, axes, keep), name=f"sum {axes} {keep}")
        close(cu, cu.max(dev(cu, a), axes, keep), ref.max(a, axes, keep), name=f"max {axes} {keep}")
    a = np.round(a)                                   # ties: the gradient is split among them
    out = ref.max(a, axes, False)
    dout = rand(rng, *out.shape)
    close(cu, cu.max_backward(dev(cu, dout), dev(cu, a), dev(cu, out), axes), ref.max_backward(dout, a, out, axes))


@pytest.mark.parametrize("gshape,shape", [((4, 3, 5), (5,)), ((4, 3, 5), (3, 1)), ((4, 3, 5), (1, 3, 5)),
                                          ((2, 3), (2, 3)), ((6, 1, 5), (1, 1, 5))])
def test_sum_to_shape_and_broadcast(cu, gshape, shape):
    CHECKED.update({"sum_to_shape", "broadcast_to"})
    rng = np.random.default_rng(4)
    g = rand(rng, *gshape)
    close(cu, cu.sum_to_shape(dev(cu, g), shape), ref.sum_to_shape(g, shape))
    a = rand(rng, *shape)
    close(cu, cu.broadcast_to(dev(cu, a), gshape), ref.broadcast_to(a, gshape))


def test_reshape_permute_concatenate(cu):
    CHECKED.update({"reshape", "permute", "concatenate"})
    rng = np.random.default_rng(5)
    a = rand(rng, 2, 3, 5, 7)
    r = cu.reshape(dev(cu, a), (6, -1))
    close(cu, r, a.reshape(6, 35))
    for axes in ((0, 2, 1, 3), (3, 2, 1, 0), (1, 0, 3, 2)):
        close(cu, cu.permute(dev(cu, a), axes), ref.permute(a, axes), name=str(axes))
    parts = [rand(rng, 2, n, 3) for n in (1, 4, 2)]
    close(cu, cu.concatenate([dev(cu, p) for p in parts], 1), ref.concatenate(parts, 1))
    ids = [rng.integers(0, 9, size=(2, 3)) for _ in range(2)]
    assert np.array_equal(cu.to_numpy(cu.concatenate([dev(cu, i) for i in ids], 0)), np.concatenate(ids))
    with pytest.raises(ShapeError):
        cu.reshape(dev(cu, a), (4, 4))


@pytest.mark.parametrize("index", [(slice(None), 1), (Ellipsis, slice(1, 6, 2)), (1, None, slice(None, None, -1)),
                                   (np.array([3, 0, 3, -1]),), (np.array([[1, 2], [0, 0]]), slice(None)),
                                   (slice(None), np.array([0, 2])), (-1,), (slice(2, 4), slice(None), 0)])
def test_getitem_and_backward(cu, index):
    CHECKED.update({"getitem", "getitem_backward"})
    rng = np.random.default_rng(6)
    a = rand(rng, 5, 4, 7)
    out = ref.getitem(a, index)
    close(cu, cu.getitem(dev(cu, a), index), out)
    dout = rand(rng, *out.shape)
    close(cu, cu.getitem_backward(dev(cu, dout), a.shape, index), ref.getitem_backward(dout, a.shape, index))


# --- linear algebra -----------------------------------------------------------------------------------

@pytest.mark.parametrize("rung", cuda_matmul.MATMUL_RUNGS)
@pytest.mark.parametrize("sa,sb", [((37, 19), (19, 41)), ((3, 5, 129), (129, 7)), ((2, 1, 6, 8), (3, 8, 5)),
                                   ((1, 33, 64), (4, 64, 130)), ((130, 260), (260, 132))])
def test_matmul(cu, monkeypatch, rung, sa, sb):
    CHECKED.update({"matmul_forward", "matmul_backward"})
    monkeypatch.setattr(cuda_matmul, "MATMUL", rung)
    rng = np.random.default_rng(7)
    a, b = rand(rng, *sa), rand(rng, *sb)
    out = ref.matmul_forward(a, b)
    close(cu, cu.matmul_forward(dev(cu, a), dev(cu, b)), out)
    dout = rand(rng, *out.shape)
    da, db = cu.matmul_backward(dev(cu, dout), dev(cu, a), dev(cu, b))
    rda, rdb = ref.matmul_backward(dout, a, b)
    close(cu, da, rda, name="da")
    close(cu, db, rdb, name="db")


def test_paged_kernels(cu):
    """paged_cache_write then paged_attention_forward (GQA, sequences of different lengths over
    scattered blocks) against the reference; tests/test_paged_attention.py checks more shapes."""
    CHECKED.update({"paged_cache_write", "paged_attention_forward"})
    rng = np.random.default_rng(10)
    nb, nkv, nh, bs, hs, n = 7, 2, 4, 4, 8, 5
    kc, vc = rand(rng, 2, nb, nkv, bs, hs)
    k, v = rand(rng, 2, n, nkv, hs)
    slots = rng.permutation(nb * bs)[:n].astype(np.int64)
    want_k, want_v = kc.copy(), vc.copy()
    ref.paged_cache_write(want_k, want_v, k, v, slots)
    dk, dv = dev(cu, kc), dev(cu, vc)
    cu.paged_cache_write(dk, dv, dev(cu, k), dev(cu, v), dev(cu, slots))
    close(cu, dk, want_k, name="k_cache")
    close(cu, dv, want_v, name="v_cache")
    q = rand(rng, n, nh, hs)
    tables = np.stack([rng.permutation(nb)[:3] for _ in range(n)]).astype(np.int64)
    positions = np.array([0, 3, 4, 9, 11], np.int64)
    close(cu, cu.paged_attention_forward(dev(cu, q), dk, dv, dev(cu, tables), dev(cu, positions)),
          ref.paged_attention_forward(q, want_k, want_v, tables, positions))


@pytest.mark.parametrize("w_in_out", [False, True])
@pytest.mark.parametrize("xshape,oc,bias", [((2, 17, 33), 65, True), ((1, 1, 5), 3, False), ((32, 384), 1152, True),
                                            ((3, 1030), 5, True)])
def test_linear_rows(cu, xshape, oc, bias, w_in_out):
    """linear_rows_forward against the reference, and batch-invariant: its rows are the one-row calls."""
    CHECKED.add("linear_rows_forward")
    rng = np.random.default_rng(9)
    x, w = rand(rng, *xshape), rand(rng, *((xshape[-1], oc) if w_in_out else (oc, xshape[-1])))
    b = rand(rng, oc) if bias else None
    db = None if b is None else dev(cu, b)
    got = cu.linear_rows_forward(dev(cu, x), dev(cu, w), db, w_in_out)
    close(cu, got, ref.linear_forward(x, w, b, w_in_out))
    rows = x.reshape(-1, xshape[-1])
    alone = np.concatenate([cu.to_numpy(cu.linear_rows_forward(dev(cu, rows[n:n + 1]), dev(cu, w), db, w_in_out))
                            for n in range(rows.shape[0])])
    assert np.array_equal(cu.to_numpy(got).reshape(alone.shape), alone)


@pytest.mark.parametrize("w_in_out", [False, True])
@pytest.mark.parametrize("rung", cuda_matmul.MATMUL_RUNGS)
@pytest.mark.parametrize("xshape,oc,bias", [((2, 17, 33), 65, True), ((130, 64), 96, False), ((1, 1, 5), 3, True),
                                            ((257, 768), 131, True), ((4, 515, 64), 96, True), ((3, 1030), 5, True)])
def test_linear(cu, monkeypatch, rung, xshape, oc, bias, w_in_out):
    """The last two shapes take the split-K path of v6 (few output tiles, K >= 1024);
    w_in_out: the weight stored (C, OC), GPT-2's Conv1D layout, dw in that layout too."""
    CHECKED.update({"linear_forward", "linear_backward"})
    monkeypatch.setattr(cuda_matmul, "MATMUL", rung)
    rng = np.random.default_rng(8)
    x, w = rand(rng, *xshape), rand(rng, *((xshape[-1], oc) if w_in_out else (oc, xshape[-1])))
    b = rand(rng, oc) if bias else None
    close(cu, cu.linear_forward(dev(cu, x), dev(cu, w), None if b is None else dev(cu, b), w_in_out),
          ref.linear_forward(x, w, b, w_in_out))
    dout = rand(rng, *xshape[:-1], oc)
    got = cu.linear_backward(dev(cu, dout), dev(cu, x), dev(cu, w), bias, w_in_out)
    want = ref.linear_backward(dout, x, w, bias, w_in_out)
    for g, r, name in zip(got, want, ("dx", "dw", "db")):
        if r is None:
            assert g is None
        else:
            close(cu, g, r, name=name)


RUNGS = ["matmul_forward_v1_naive", "matmul_forward_v2_coalesced", "matmul_forward_v3_smem",
         "matmul_forward_v4_regblock", "matmul_forward_v5_vectorized", "matmul_forward_v6_warptile",
         "matmul_forward_v7_bf16_tc"]


PLAIN_LAYOUT = {"matmul_forward_v3_smem", "matmul_forward_v4_regblock", "matmul_forward_v5_vectorized",
                "matmul_forward_v7_bf16_tc"}      # these rungs refuse transposed operands


def call_rung(cu, rung, a, b, bias, m, n, k, ta, tb):
    """out = op(a) @ op(b) + bias by one rung of matmul.cu, called straight through cffi."""
    out, da, db = rt.empty((m, n), np.float32), dev(cu, a), dev(cu, b)     # named: alive during the call
    dbias = None if bias is None else dev(cu, bias)
    rt.call(rung, out.ptr, da.ptr, db.ptr, rt.ffi.NULL if dbias is None else dbias.ptr, m, n, k, ta, tb)
    return out


@pytest.mark.parametrize("rung", RUNGS + ["matmul_forward"])
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (37, 41, 19), (128, 256, 64), (131, 129, 130)])
def test_matmul_ladder(cu, rung, m, n, k):
    rng = np.random.default_rng(9)
    a, b, bias = rand(rng, m, k), rand(rng, k, n), rand(rng, n)
    tol = 1e-2 if "bf16" in rung else TOL                                   # bf16 operands: 1e-2
    close(cu, call_rung(cu, rung, a, b, None, m, n, k, 0, 0), a @ b, tol=tol, name=rung)
    close(cu, call_rung(cu, rung, a, b, bias, m, n, k, 0, 0), a @ b + bias, tol=tol, name=rung + " + bias")


@pytest.mark.parametrize("rung", RUNGS + ["matmul_forward"])
@pytest.mark.parametrize("ta,tb", [(1, 0), (0, 1), (1, 1)])
def test_matmul_ladder_transposes(cu, rung, ta, tb):
    """One signature for every rung: the rungs without transposed loads say so, the rest compute."""
    m, n, k = 37, 41, 19
    rng = np.random.default_rng(10)
    a, b, bias = rand(rng, *((k, m) if ta else (m, k))), rand(rng, *((n, k) if tb else (k, n))), rand(rng, n)
    if rung in PLAIN_LAYOUT:
        with pytest.raises(BackendError, match=rung):
            call_rung(cu, rung, a, b, bias, m, n, k, ta, tb)
        return
    want = (a.T if ta else a) @ (b.T if tb else b) + bias
    close(cu, call_rung(cu, rung, a, b, bias, m, n, k, ta, tb), want, name=f"{rung} ta={ta} tb={tb}")


# --- fused kernels --------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(7, 13), (2, 3, 1000), (1, 1)])
def test_softmax_family(cu, shape):
    names = ("softmax", "log_softmax")
    CHECKED.update({f"{n}_{d}" for n in names for d in ("forward", "backward")})
    rng = np.random.default_rng(10)
    x, dout = rand(rng, *shape, scale=3.0), rand(rng, *shape)
    for name in names:
        out = getattr(ref, f"{name}_forward")(x)
        close(cu, getattr(cu, f"{name}_forward")(dev(cu, x)), out, name=name)
        close(cu, getattr(cu, f"{name}_backward")(dev(cu, dout), dev(cu, out)),
              getattr(ref, f"{name}_backward")(dout, out), name=name + " backward")


@pytest.mark.parametrize("n,v", [(9, 7), (33, 1001), (2, 50257)])
def test_cross_entropy(cu, n, v):
    CHECKED.update({"cross_entropy_forward", "cross_entropy_backward"})
    rng = np.random.default_rng(11)
    logits = rand(rng, n, v, scale=2.0)
    targets = rng.integers(0, v, size=n)
    targets[::3] = -100
    losses, lse = ref.cross_entropy_forward(logits, targets, -100)
    got_losses, got_lse = cu.cross_entropy_forward(dev(cu, logits), dev(cu, targets), -100)
    close(cu, got_losses, losses, name="losses")
    close(cu, got_lse, lse, name="lse")
    dl = rand(rng, n)
    close(cu, cu.cross_entropy_backward(dev(cu, dl), dev(cu, logits), dev(cu, targets), got_lse, -100),
          ref.cross_entropy_backward(dl, logits, targets, lse, -100))
    targets[1] = v                        # reported at the next copy to the host
    with pytest.raises(ShapeError, match="cross_entropy_forward"):
        cu.to_numpy(cu.cross_entropy_forward(dev(cu, logits), dev(cu, targets), -100)[0])
    cu.to_numpy(cu.cross_entropy_forward(dev(cu, logits), dev(cu, targets - targets), -100)[0])   # cleared


@pytest.mark.parametrize("n,v,temperature", [(9, 7, 1.0), (33, 1001, 2.0), (2, 50257, 0.5)])
def test_kl_div(cu, n, v, temperature):
    CHECKED.update({"kl_div_forward", "kl_div_backward"})
    rng = np.random.default_rng(17)
    student, teacher = rand(rng, n, v, scale=2.0), rand(rng, n, v, scale=3.0)
    losses, student_lse, teacher_lse = ref.kl_div_forward(student, teacher, temperature)
    got = cu.kl_div_forward(dev(cu, student), dev(cu, teacher), temperature)
    for g, want, name in zip(got, (losses, student_lse, teacher_lse), ("losses", "student_lse", "teacher_lse")):
        close(cu, g, want, name=name)
    dl = rand(rng, n)
    close(cu, cu.kl_div_backward(dev(cu, dl), dev(cu, student), dev(cu, teacher), got[1], got[2], temperature),
          ref.kl_div_backward(dl, student, teacher, student_lse, teacher_lse, temperature))

def test_embedding(cu):
    CHECKED.update({"embedding_forward", "embedding_backward"})
    rng = np.random.default_rng(12)
    weight, ids = rand(rng, 23, 13), rng.integers(0, 23, size=(3, 17))
    close(cu, cu.embedding_forward(dev(cu, ids), dev(cu, weight)), ref.embedding_forward(ids, weight))
    dout = rand(rng, 3, 17, 13)
    close(cu, cu.embedding_backward(dev(cu, dout), dev(cu, ids), 23), ref.embedding_backward(dout, ids, 23))
    with pytest.raises(ShapeError, match="embedding_forward"):
        cu.to_numpy(cu.embedding_forward(dev(cu, ids + 23), dev(cu, weight)))


@pytest.mark.parametrize("shape,bias", [((5, 7, 33), True), ((300, 768), False), ((1, 3), True)])
def test_norms(cu, shape, bias):
    CHECKED.update({"layer_norm_forward", "layer_norm_backward", "rms_norm_forward", "rms_norm_backward"})
    rng = np.random.default_rng(13)
    x, w, dout = rand(rng, *shape) + 0.5, rand(rng, shape[-1]), rand(rng, *shape)
    b = rand(rng, shape[-1]) if bias else None
    out, mean, rstd = ref.layer_norm_forward(x, w, b, 1e-5)
    got = cu.layer_norm_forward(dev(cu, x), dev(cu, w), None if b is None else dev(cu, b), 1e-5)
    for g, r, name in zip(got, (out, mean, rstd), ("out", "mean", "rstd")):
        close(cu, g, r, name=name)
    want = ref.layer_norm_backward(dout, x, w, mean, rstd, bias)
    got = cu.layer_norm_backward(dev(cu, dout), dev(cu, x), dev(cu, w), got[1], got[2], bias)
    for g, r, name in zip(got, want, ("dx", "dw", "db")):
        if r is None:
            assert g is None
        else:
            close(cu, g, r, name=name)
    out, rstd = ref.rms_norm_forward(x, w, 1e-5)
    got = cu.rms_norm_forward(dev(cu, x), dev(cu, w), 1e-5)
    close(cu, got[0], out)
    close(cu, got[1], rstd)
    for g, r in zip(cu.rms_norm_backward(dev(cu, dout), dev(cu, x), dev(cu, w), got[1]),
                    ref.rms_norm_backward(dout, x, w, rstd)):
        close(cu, g, r)


def test_rope(cu):
    CHECKED.update({"rope_forward", "rope_backward"})
    rng = np.random.default_rng(14)
    x = rand(rng, 2, 3, 11, 10)
    theta = rng.uniform(0, 6, size=(11, 5))
    cos, sin = np.cos(theta).astype(np.float32).astype(np.float64), np.sin(theta).astype(np.float32).astype(np.float64)
    close(cu, cu.rope_forward(dev(cu, x), dev(cu, cos), dev(cu, sin)), ref.rope_forward(x, cos, sin))
    close(cu, cu.rope_backward(dev(cu, x), dev(cu, cos), dev(cu, sin)), ref.rope_backward(x, cos, sin))


@pytest.mark.parametrize("rung", ["v2_flash", "v1_naive"])
@pytest.mark.parametrize("b,nh,nkv,tq,tk,hs", [(2, 4, 2, 67, 67, 16), (1, 3, 3, 1, 130, 64), (1, 2, 1, 65, 129, 33),
                                               (2, 2, 2, 128, 128, 64), (1, 2, 2, 40, 40, 128), (1, 1, 1, 5, 9, 80)])
def test_attention(cu, monkeypatch, rung, b, nh, nkv, tq, tk, hs):
    CHECKED.update({"attention_forward", "attention_backward"})
    monkeypatch.setattr(cuda, "ATTENTION", rung)
    rng = np.random.default_rng(15)
    q, k, v = rand(rng, b, nh, tq, hs), rand(rng, b, nkv, tk, hs), rand(rng, b, nkv, tk, hs)
    out, lse = ref.attention_forward(q, k, v)
    got_out, got_lse = cu.attention_forward(dev(cu, q), dev(cu, k), dev(cu, v))
    close(cu, got_out, out, name="out")
    close(cu, got_lse, lse, name="lse")
    dout = rand(rng, *out.shape)
    want = ref.attention_backward(dout, q, k, v, out, lse)
    got = cu.attention_backward(dev(cu, dout), dev(cu, q), dev(cu, k), dev(cu, v), got_out, got_lse)
    for g, r, name in zip(got, want, ("dq", "dk", "dv")):
        close(cu, g, r, name=name)


# Document masking: (lengths of the documents, padding -1 at the end, B, NH, NKV, HS); the same
# row in every batch row but the last, which is reversed. Crosses and misses the 64 x 64 tiles.
# (Documents of one token have dq = 0 exactly, all rounding: a longer one gives dq its norm.)
SEGMENTED = [([1] * 30 + [40], 0, 1, 2, 1, 8), ([150], 0, 2, 2, 2, 16), ([5, 64, 1, 30, 63, 2], 5, 2, 6, 2, 17),
             ([64, 64, 64], 0, 1, 2, 1, 64), ([2, 1, 3], 1, 2, 4, 2, 3), ([40, 7], 50, 1, 3, 1, 128)]


@pytest.mark.parametrize("rung", ["v2_flash", "v1_naive"])
@pytest.mark.parametrize("lengths,pad,b,nh,nkv,hs", SEGMENTED)
def test_attention_with_segments(cu, monkeypatch, rung, lengths, pad, b, nh, nkv, hs):
    monkeypatch.setattr(cuda, "ATTENTION", rung)
    row = np.concatenate([np.repeat(np.arange(len(lengths)), lengths), np.full(pad, -1)])
    seg = np.repeat(row[None], b, axis=0)
    seg[-1] = seg[-1][::-1]
    t = seg.shape[1]
    rng = np.random.default_rng(17)
    q, k, v, dout = rand(rng, b, nh, t, hs), rand(rng, b, nkv, t, hs), rand(rng, b, nkv, t, hs), rand(rng, b, nh, t, hs)
    out, lse = ref.attention_forward(q, k, v, seg)
    got_out, got_lse = cu.attention_forward(dev(cu, q), dev(cu, k), dev(cu, v), seg)
    close(cu, got_out, out, name="out")
    close(cu, got_lse, lse, name="lse")
    want = ref.attention_backward(dout, q, k, v, out, lse, seg)
    got = cu.attention_backward(dev(cu, dout), dev(cu, q), dev(cu, k), dev(cu, v), got_out, got_lse, seg)
    for g, r, name in zip(got, want, ("dq", "dk", "dv")):
        close(cu, g, r, name=name)


def test_adamw(cu):
    CHECKED.add("adamw_update")
    rng = np.random.default_rng(16)
    p, g, m, v = rand(rng, 1001), rand(rng, 1001), rand(rng, 1001) * 0.1, np.abs(rand(rng, 1001)) * 0.01
    dp, dg, dm, dv = (dev(cu, x) for x in (p, g, m, v))
    for step in (1, 2, 3):
        ref.adamw_update(p, g, m, v, 1e-3, 0.9, 0.95, 1e-8, 0.1, step)
        cu.adamw_update(dp, dg, dm, dv, 1e-3, 0.9, 0.95, 1e-8, 0.1, step)
    for ours, want in ((dp, p), (dm, m), (dv, v)):
        close(cu, ours, want)


def test_grad_norm(cu):
    rng = np.random.default_rng(17)
    xs = [rand(rng, 333), rand(rng, 7, 9)]
    got = cu.grad_norm([dev(cu, x) for x in xs])
    assert abs(got - np.sqrt(sum(np.sum(x * x) for x in xs))) < 1e-4 * got


@pytest.mark.parametrize("shape", [(1, 64, 7, 32), (3, 96, 5, 96), (2, 256, 9, 128)])
def test_quantized_linear_and_dequantize(cu, shape):
    from microgpt.quantize import formats
    CHECKED.update({"linear_q8_forward", "linear_q4_forward", "dequantize_q8", "dequantize_q4"})
    n, c, oc, group = shape
    rng = np.random.default_rng(c)
    x, b = rand(rng, n, c), rand(rng, oc)
    for scheme, bits in (("int8", 8), ("int4", 4)):
        if scheme == "int4" and group % 32:
            continue
        w_q, w_scale = formats.quantize(rng.standard_normal((oc, c)) * 0.05, scheme, group)
        q_dev, s_dev = cu.asarray(w_q, w_q.dtype), cu.asarray(w_scale, np.float32)
        deq = getattr(ref, f"dequantize_q{bits}")(w_q, w_scale.astype(np.float64), group)
        close(cu, getattr(cu, f"dequantize_q{bits}")(q_dev, s_dev, group), deq, name=f"dequantize_q{bits}")
        close(cu, getattr(cu, f"linear_q{bits}_forward")(dev(cu, x), q_dev, s_dev, dev(cu, b), group),
              x @ deq.T + b, name=f"linear_q{bits}_forward")


@pytest.mark.parametrize("n,k,e,c,oc,load", [(1, 1, 1, 3, 5, "random"), (13, 2, 8, 17, 33, "one"),
                                              (64, 2, 8, 64, 96, "skewed"), (300, 2, 4, 129, 40, "random")])
def test_moe_kernels_on_uneven_loads(cu, n, k, e, c, oc, load):
    """Permute, grouped matmul and combine, forward and backward: experts with no rows ("skewed":
    half idle), every token's first choice on expert 0 ("one"), tile tails (17, 33, 129)."""
    from microgpt.nn.moe import routing_plan
    CHECKED.update({"moe_permute_forward", "moe_permute_backward", "grouped_matmul_forward",
                    "grouped_matmul_backward", "moe_combine_forward", "moe_combine_backward"})
    rng = np.random.default_rng(n + c)
    busy = max(k, e // 2) if load == "skewed" else e
    chosen = np.stack([rng.choice(busy, k, replace=False) for _ in range(n)])
    if load == "one":
        chosen[:, 0] = 0
        chosen[:, 1:] = np.stack([rng.choice(np.arange(1, e), k - 1, replace=False) for _ in range(n)])
    token_index, offsets, _ = routing_plan(chosen, e)
    r = token_index.size
    x, rows, w = rand(rng, n, c), rand(rng, r, c), rand(rng, e, oc, c)
    dout, weights, dtok = rand(rng, r, oc), rand(rng, r), rand(rng, n, c)
    close(cu, cu.moe_permute_forward(dev(cu, x), token_index), ref.moe_permute_forward(x, token_index),
          name="moe_permute_forward")
    close(cu, cu.moe_permute_backward(dev(cu, rows), token_index, n), ref.moe_permute_backward(rows, token_index, n),
          name="moe_permute_backward")
    close(cu, cu.grouped_matmul_forward(dev(cu, rows), dev(cu, w), offsets),
          ref.grouped_matmul_forward(rows, w, offsets), name="grouped_matmul_forward")
    for got, want, name in zip(cu.grouped_matmul_backward(dev(cu, dout), dev(cu, rows), dev(cu, w), offsets),
                               ref.grouped_matmul_backward(dout, rows, w, offsets), ("dx", "dw")):
        close(cu, got, want, name=f"grouped_matmul_backward {name}")
    close(cu, cu.moe_combine_forward(dev(cu, rows), dev(cu, weights), token_index, n),
          ref.moe_combine_forward(rows, weights, token_index, n), name="moe_combine_forward")
    for got, want, name in zip(cu.moe_combine_backward(dev(cu, dtok), dev(cu, rows), dev(cu, weights), token_index),
                               ref.moe_combine_backward(dtok, rows, weights, token_index), ("dy", "dweights")):
        close(cu, got, want, name=f"moe_combine_backward {name}")


def test_every_kernel_is_checked():
    """Runs last in this file: each contract kernel was compared with the reference above."""
    assert CHECKED, "run the whole file"
    missing = sorted(set(KERNELS) - CHECKED)
    assert not missing, f"kernels without a CUDA check: {missing}"
