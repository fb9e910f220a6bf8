"""The CUDA backend's matrix products: matmul (batched, broadcast) and linear, through cffi.

Every product is one call of matmul.cu's batched launcher, out[z] = op(a[z]) @ op(b[z]) + bias,
with the transposes, the bias and the batch strides chosen here:

  one shared right matrix   a's batch folds into the rows: one (batch x M, K) @ (K, N);
  otherwise                 the batch runs on gridDim.z, stride 0 for an operand with one
                            matrix (broadcast, no copy), a broadcast copy for partial ones;
  linear                    x @ w^T with B transposed and the bias in the epilogue, or for a
                            weight stored (in, out) (w_in_out, GPT-2's Conv1D) x @ w with B
                            as it is: the gemm reads either operand transposed, so the
                            second layout needs no kernel of its own;
  backward                  da = dout @ b^T and db = a^T @ dout as transposed products,
                            summed to each input's shape.

Which rung runs is switchable for comparison (the tests run both): MATMUL, from the
environment MICROGPT_CUDA_MATMUL, is "v6_warptile" (production) or "v2_coalesced" (the simple
fallback), the two rungs of matmul_forward_batched. float32 arrays in and out; inside
cuda_bf16.matmul_precision("bf16") every product here runs on the bf16 tensor-core kernel
instead (operands rounded to bf16, float32 accumulation and result: see cuda_bf16.py).
"""
import math
import os

import numpy as np

from ..errors import ShapeError
from . import cuda_bf16, cuda_runtime as rt
from .cuda_create import zeros
from .cuda_reduce import sum as sum_axes
from .cuda_reduce import sum_to_shape
from .cuda_runtime import call, empty, on_device, require_f32, view
from .cuda_shape import broadcast_to

MATMUL = os.environ.get("MICROGPT_CUDA_MATMUL", "v6_warptile")
MATMUL_RUNGS = ("v6_warptile", "v2_coalesced")
_GEMM_BATCH = 65535     # gridDim.z: at most this many products per launch


def _gemm(out, a, b, bias, m, n, k, transa, transb, batch=1, sa=0, sb=0, sc=0, weight=None):
    """out[z] = op(a[z]) @ op(b[z]) (+ bias) with the chosen rung; z split into grid-sized chunks.
    Inside cuda_bf16.matmul_precision("bf16") the operands go to bf16 (weight: "a" or "b",
    the operand that is a layer's weight, converted once per scope) and the tensor cores."""
    if cuda_bf16.active():
        a16, b16 = cuda_bf16.operand(a, weight == "a"), cuda_bf16.operand(b, weight == "b")
        cuda_bf16.gemm(out, a16, b16, bias, m, n, k, transa, transb, batch, sa, sb, sc)
        return
    if MATMUL not in MATMUL_RUNGS:
        raise ShapeError(f"MICROGPT_CUDA_MATMUL={MATMUL!r}: choose one of {', '.join(MATMUL_RUNGS)}")
    if max(m, n, k) >= 2 ** 31:
        raise ShapeError(f"matmul: a dimension of ({m}, {n}, {k}) exceeds 2^31")
    cast = rt.ffi.cast
    bias_ptr = rt.ffi.NULL if bias is None else bias.ptr
    for z0 in range(0, batch, _GEMM_BATCH):
        zs = min(_GEMM_BATCH, batch - z0)
        call(f"matmul_forward_batched_{MATMUL}", cast("float*", out.addr + 4 * z0 * sc),
             cast("float*", a.addr + 4 * z0 * sa), cast("float*", b.addr + 4 * z0 * sb), bias_ptr,
             zs, sc, sa, sb, m, n, k, transa, transb)


def _batch_operand(x, batch, rows, cols):
    """(array, stride) of operand x for a batched product: stride 0 when x has one matrix,
    rows*cols when its batch axes equal `batch`, else a broadcast copy."""
    own = x.shape[:-2]
    if math.prod(own) == 1:
        return x, 0
    if (1,) * (len(batch) - len(own)) + own == batch:
        return x, rows * cols
    return broadcast_to(x, batch + (rows, cols)), rows * cols


def matmul_forward(a, b):
    a, b = on_device(a), on_device(b)
    require_f32("matmul_forward", a, b)
    if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2]:
        raise ShapeError(f"matmul_forward: shapes {a.shape} and {b.shape} do not multiply")
    try:
        batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise ShapeError(f"matmul_forward: batch dims of {a.shape} and {b.shape} do not broadcast") from None
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    out = empty(batch + (m, n), np.float32)
    if out.size == 0:
        return out
    if k == 0:
        return zeros(out.shape, np.float32)
    nb = math.prod(batch)
    a, sa = _batch_operand(a, batch, m, k)
    b, sb = _batch_operand(b, batch, k, n)
    if sb == 0 and sa != 0:              # one shared right matrix: fold the batch into rows
        _gemm(out, a, b, None, nb * m, n, k, 0, 0)
    else:
        _gemm(out, a, b, None, m, n, k, 0, 0, nb, sa, sb, m * n)
    return out


def matmul_backward(dout, a, b):
    # da = dout @ b^T,  db = a^T @ dout, each summed to its operand's shape
    dout, a, b = on_device(dout), on_device(a), on_device(b)
    require_f32("matmul_backward", dout, a, b)
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    batch = dout.shape[:-2]
    if dout.shape[-2:] != (m, n):
        raise ShapeError(f"matmul_backward: dout {dout.shape} does not fit {a.shape} @ {b.shape}")
    nb = math.prod(batch)
    if dout.size == 0 or k == 0:
        return zeros(a.shape, np.float32), zeros(b.shape, np.float32)
    a_full, sa = _batch_operand(a, batch, m, k)
    b_full, sb = _batch_operand(b, batch, k, n)
    da = empty(batch + (m, k), np.float32)
    if sb == 0:
        _gemm(da, dout, b_full, None, nb * m, k, n, 0, 1)
    else:
        _gemm(da, dout, b_full, None, m, k, n, 0, 1, nb, m * n, sb, m * k)
    if sb == 0 and sa != 0:              # shared b: one product over all batch rows
        db = empty(b.shape, np.float32)
        _gemm(db, a_full, dout, None, k, n, nb * m, 1, 0)
    else:
        db = sum_to_shape(_batched_tn(a_full, dout, sa, batch, m, k, n), b.shape)
    return sum_to_shape(da, a.shape), db


def _batched_tn(a, dout, sa, batch, m, k, n):
    """a[z]^T @ dout[z] for every z of the batch: (batch..., k, n)."""
    db = empty(batch + (k, n), np.float32)
    _gemm(db, a, dout, None, k, n, m, 1, 0, math.prod(batch), sa, m * n, k * n)
    return db


def _linear_sizes(op, x, w, w_in_out):
    """(OC, C) of a linear layer: w is (OC, C), or (C, OC) with w_in_out."""
    if w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[0 if w_in_out else 1]:
        raise ShapeError(f"{op}: input {x.shape} does not fit weight {w.shape} "
                         f"({'in, out' if w_in_out else 'out, in'})")
    return (w.shape[1], w.shape[0]) if w_in_out else w.shape


def linear_forward(x, w, b, w_in_out=False):
    # out = x @ w^T + b: one gemm with B transposed and the bias added in its epilogue;
    # w_in_out (w stored (C, OC)): the same gemm with B as it is
    x, w = on_device(x), on_device(w)
    require_f32("linear_forward", x, w)
    w_in_out = bool(w_in_out)
    oc, c = _linear_sizes("linear_forward", x, w, w_in_out)
    if b is not None:
        b = on_device(b)
        require_f32("linear_forward", b)
        if b.shape != (oc,):
            raise ShapeError(f"linear_forward: bias {b.shape} does not fit weight {w.shape}")
    rows = math.prod(x.shape[:-1])
    out = empty(x.shape[:-1] + (oc,), np.float32)
    if out.size == 0:
        return out
    if c == 0:
        return broadcast_to(b, out.shape) if b is not None else zeros(out.shape, np.float32)
    _gemm(out, x, w, b, rows, oc, c, 0, 0 if w_in_out else 1, weight="b")
    return out


def linear_rows_forward(x, w, b, w_in_out=False):
    # linear_forward with each row's result independent of the row count (cuda/linear_rows.cu:
    # one owner per output element, a fixed order over C), for batch-invariant decoding
    x, w = on_device(x), on_device(w)
    require_f32("linear_rows_forward", x, w)
    w_in_out = bool(w_in_out)
    oc, c = _linear_sizes("linear_rows_forward", x, w, w_in_out)
    if b is not None:
        b = on_device(b)
        require_f32("linear_rows_forward", b)
        if b.shape != (oc,):
            raise ShapeError(f"linear_rows_forward: bias {b.shape} does not fit weight {w.shape}")
    out = empty(x.shape[:-1] + (oc,), np.float32)
    if out.size:
        call("linear_rows_forward", out.ptr, x.ptr, w.ptr, rt.ffi.NULL if b is None else b.ptr, int(w_in_out),
             math.prod(x.shape[:-1]), c, oc)
    return out


def linear_backward(dout, x, w, has_bias, w_in_out=False):
    # w (OC, C):            dx = dout @ w,    dw = dout^T @ x over all rows
    # w_in_out, w (C, OC):  dx = dout @ w^T,  dw = x^T @ dout (in w's own layout)
    # db = column sums of dout
    dout, x, w = on_device(dout), on_device(x), on_device(w)
    require_f32("linear_backward", dout, x, w)
    w_in_out = bool(w_in_out)
    oc, c = _linear_sizes("linear_backward", x, w, w_in_out)
    rows = math.prod(x.shape[:-1])
    if dout.shape != x.shape[:-1] + (oc,):
        raise ShapeError(f"linear_backward: dout {dout.shape} does not fit input {x.shape}, weight {w.shape}")
    dx = empty(x.shape, np.float32)
    dw = empty(w.shape, np.float32)
    if rows == 0 or oc == 0 or c == 0:
        dx, dw = zeros(x.shape, np.float32), zeros(w.shape, np.float32)
    else:
        dout_op, x_op = dout, x
        if cuda_bf16.active():              # each converted once for its two products
            dout_op, x_op = cuda_bf16.to_bf16(dout), cuda_bf16.to_bf16(x)
        if w_in_out:
            _gemm(dx, dout_op, w, None, rows, c, oc, 0, 1, weight="b")
            _gemm(dw, x_op, dout_op, None, c, oc, rows, 1, 0)
        else:
            _gemm(dx, dout_op, w, None, rows, c, oc, 0, 0, weight="b")
            _gemm(dw, dout_op, x_op, None, oc, c, rows, 1, 0)
    db = None
    if has_bias:
        db = sum_axes(view(dout, (rows, oc)), (0,), False) if rows else zeros((oc,), np.float32)
    return dx, dw, db
