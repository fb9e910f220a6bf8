"""The C backend's matrix products: matmul (batched, broadcast) and linear, through cffi.

All products run on csrc/matmul.c's production rung (matmul_forward = v4, threaded): the
bindings only validate (cpu_checks.py), allocate and pick strides, choosing among

  b without a real batch    one (rows of every batch) x K @ K x N product: a's batch folds
                            into M, the best case for the micro-kernel;
  a without a real batch    matmul_forward_batched with a's stride 0 (broadcast, no copy);
  other broadcasts          materialized with np.broadcast_to + a copy, then batched;
  backward                  da = dout @ b^T and db = a^T @ dout as transposed products
                            (packing absorbs the transposes), summed to each input's shape.

float64 inputs go to backends/reference.py after the same checks. Imported by cpu.py only
when the C kernels are built.
"""
import numpy as np

from ..errors import ShapeError
from . import cpu_checks as check
from . import reference as _ref
from .cpu_lib import fp as _fp
from .cpu_lib import ffi, lib
from .cpu_lib import opt as _opt


# --- matmul and linear ----------------------------------------------------------------------------

def _gemm(out, a, b, M, N, K, trans_a, trans_b, batch=1, strides=(0, 0, 0)):
    """out = op(a) @ op(b), or `batch` of them `strides` (out, a, b) apart; no bias."""
    if batch == 1:
        lib.matmul_forward(_fp(out), _fp(a), _fp(b), ffi.NULL, M, N, K, trans_a, trans_b)
    else:
        lib.matmul_forward_batched(_fp(out), _fp(a), _fp(b), ffi.NULL, batch, *strides,
                                   M, N, K, trans_a, trans_b)


def _matmul_shapes(op, a, b):
    """Batch shape of a @ b (NumPy broadcasting), or ShapeError."""
    check.min_ndim(op, "a", a, 2)
    check.min_ndim(op, "b", b, 2)
    if a.shape[-1] != b.shape[-2]:
        raise ShapeError(f"{op}: a {a.shape} @ b {b.shape}: inner sizes {a.shape[-1]} != {b.shape[-2]}")
    try:
        return np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise ShapeError(f"{op}: batch dims of a {a.shape} and b {b.shape} do not broadcast") from None


def matmul_forward(a, b):
    # float64, and vectors (NumPy's 1-D rules), take the reference path
    if not check.floats("matmul_forward", a=a, b=b) or a.ndim < 2 or b.ndim < 2:
        inner = b.shape[0] if b.ndim == 1 else b.shape[-2]
        if a.shape[-1] != inner:
            raise ShapeError(f"matmul_forward: a {a.shape} @ b {b.shape}: inner sizes differ")
        return _ref.matmul_forward(a, b)
    batch = _matmul_shapes("matmul_forward", a, b)
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    out = np.empty(batch + (M, N), dtype=a.dtype)
    if b.size == K * N:                     # b has no real batch: fold a's batch into rows
        _gemm(out, a, b, out.size // N, N, K, 0, 0)
        return out
    count = out.size // (M * N)
    if a.size == M * K:                     # a has no real batch: broadcast it with stride 0
        _gemm(out, a, b, M, N, K, 0, 0, count, (M * N, 0, K * N))
        return out
    if a.shape[:-2] != batch or b.shape[:-2] != batch:
        a = np.ascontiguousarray(np.broadcast_to(a, batch + (M, K)))
        b = np.ascontiguousarray(np.broadcast_to(b, batch + (K, N)))
    _gemm(out, a, b, M, N, K, 0, 0, count, (M * N, M * K, K * N))
    return out


def matmul_backward(dout, a, b):
    # da = dout @ b^T, db = a^T @ dout, each summed back to its input's shape.
    is32 = check.floats("matmul_backward", dout=dout, a=a, b=b)
    batch = _matmul_shapes("matmul_backward", a, b)
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    check.shape("matmul_backward", "dout", dout, batch + (M, N))
    if not is32:
        return _ref.matmul_backward(dout, a, b)
    if b.size == K * N:                     # b has no real batch: all rows of a at once
        rows = dout.size // N               # (a then holds every row: the batch is a's)
        da, db = np.empty(batch + (M, K), dtype=a.dtype), np.empty((K, N), dtype=a.dtype)
        _gemm(da, dout, b, rows, K, N, 0, 1)
        _gemm(db, a, dout, K, N, rows, 1, 0)
        return _ref.sum_to_shape(da, a.shape), db.reshape(b.shape)
    count = dout.size // (M * N)
    a_full = np.ascontiguousarray(np.broadcast_to(a, batch + (M, K)))
    b_full = np.ascontiguousarray(np.broadcast_to(b, batch + (K, N)))
    da = np.empty(batch + (M, K), dtype=a.dtype)
    db = np.empty(batch + (K, N), dtype=a.dtype)
    _gemm(da, dout, b_full, M, K, N, 0, 1, count, (M * K, M * N, K * N))
    _gemm(db, a_full, dout, K, N, M, 1, 0, count, (K * N, M * K, M * N))
    return _ref.sum_to_shape(da, a.shape), _ref.sum_to_shape(db, b.shape)


def _linear_check(op, x, w, b=None, w_in_out=False):
    """(N, C, OC) of a linear layer: w is (OC, C), or (C, OC) with w_in_out."""
    check.min_ndim(op, "x", x, 1)
    check.min_ndim(op, "w", w, 2)
    C = x.shape[-1]
    OC = w.shape[-1] if w_in_out else w.shape[0]
    check.shape(op, "w", w, (C, OC) if w_in_out else (OC, C))
    if b is not None:
        check.shape(op, "b", b, (OC,))
    return int(np.prod(x.shape[:-1])), C, OC


def linear_forward(x, w, b, w_in_out=False):
    w_in_out = check.flag("linear_forward", "w_in_out", w_in_out)
    is32 = check.floats("linear_forward", x=x, w=w, b=b)
    N, C, OC = _linear_check("linear_forward", x, w, b, w_in_out)
    if not is32:
        return _ref.linear_forward(x, w, b, w_in_out)
    out = np.empty(x.shape[:-1] + (OC,), dtype=x.dtype)
    lib.linear_forward(_fp(out), _fp(x), _fp(w), _opt(b), int(w_in_out), N, C, OC)
    return out


def linear_rows_forward(x, w, b, w_in_out=False):
    """linear_forward through the C streaming path for any number of rows (csrc/matmul.c):
    each row's bits are those of a one-row call, however many rows share this one."""
    w_in_out = check.flag("linear_rows_forward", "w_in_out", w_in_out)
    is32 = check.floats("linear_rows_forward", x=x, w=w, b=b)
    N, C, OC = _linear_check("linear_rows_forward", x, w, b, w_in_out)
    if not is32:
        return _ref.linear_rows_forward(x, w, b, w_in_out)
    if C == 0:                          # no products: the bias (or zeros) in every row
        return _ref.linear_rows_forward(x, w, b, w_in_out)
    out = np.empty(x.shape[:-1] + (OC,), dtype=x.dtype)
    lib.linear_rows_forward(_fp(out), _fp(x), _fp(w), _opt(b), int(w_in_out), N, C, OC)
    return out


def linear_backward(dout, x, w, has_bias, w_in_out=False):
    has_bias = check.flag("linear_backward", "has_bias", has_bias)
    w_in_out = check.flag("linear_backward", "w_in_out", w_in_out)
    is32 = check.floats("linear_backward", dout=dout, x=x, w=w)
    N, C, OC = _linear_check("linear_backward", x, w, None, w_in_out)
    check.shape("linear_backward", "dout", dout, x.shape[:-1] + (OC,))
    if not is32:
        return _ref.linear_backward(dout, x, w, has_bias, w_in_out)
    dx, dw = np.empty(x.shape, dtype=x.dtype), np.empty(w.shape, dtype=x.dtype)
    db = np.empty(OC, dtype=x.dtype) if has_bias else None
    lib.linear_backward(_fp(dx), _fp(dw), _opt(db), _fp(dout), _fp(x), _fp(w), int(w_in_out), N, C, OC)
    return dx, dw, db
