"""The CUDA backend: every kernel of the contract on DeviceArray, through cffi.

Layout of the binding (sources in cuda/, the C ABI in cuda/microgpt_cuda.h):
  cuda_runtime.py      library loading, checked calls, the caching memory pool, DeviceArray
  cuda_create.py       creation and transfer: asarray, to_numpy, zeros, full
  cuda_elementwise.py  broadcasting arithmetic, unary functions, activations, accumulate
  cuda_reduce.py       sum, max, max_backward, sum_to_shape
  cuda_shape.py        broadcast_to, reshape, permute, concatenate (strided copies)
  cuda_index.py        getitem and getitem_backward
  cuda_matmul.py       matmul and linear
  cuda_moe.py          mixture of experts: row permutation, grouped matmul, weighted combine
  cuda_bf16.py         bf16 mixed precision: conversions, the tensor-core products, the scope
  cuda.py              (this file) the fused transformer kernels, and the backend module
                       itself: every contract name, AVAILABLE / UNAVAILABLE_REASON / NAME,
                       and a few CUDA-only helpers
Every function has the name, signature and meaning of its twin in reference.py; arrays
stay on the GPU for a whole training step (host copies happen only in asarray/to_numpy
and in rare getitem cases; the index checks of
embedding/cross-entropy are read lazily at the next copy to the host, see
cuda_runtime.check_flag).

Rungs used in production, switchable for comparison (benchmarks/gpu_check.py does):
  MATMUL     see cuda_matmul.py; environment MICROGPT_CUDA_MATMUL.
  ATTENTION  "v2_flash" or "v1_naive"; environment MICROGPT_CUDA_ATTENTION.
float32 only for arithmetic (the reference's float64 gradient checks stay on the CPU).
"""
import math
import os

import numpy as np

from ..errors import DTypeError, ShapeError
from . import cuda_bf16, cuda_runtime as rt
from .cuda_create import asarray, full, to_numpy, zeros
from .cuda_elementwise import (accumulate, add, div, exp, gelu_backward, gelu_forward, log, mul, neg, pow_scalar,
                               relu_backward, relu_forward, silu_backward, silu_forward, sqrt, sub, tanh)
from .cuda_index import getitem, getitem_backward
from .cuda_matmul import linear_backward, linear_forward, linear_rows_forward, matmul_backward, matmul_forward
from .cuda_moe import (grouped_matmul_backward, grouped_matmul_forward, moe_combine_backward,
                       moe_combine_forward, moe_permute_backward, moe_permute_forward)
from .cuda_reduce import max, max_backward, sum, sum_to_shape  # noqa: A004 - the contract's names
from .cuda_runtime import (AVAILABLE, UNAVAILABLE_REASON, DeviceArray, bad_flag, call, device_name, empty,
                           on_device, require_f32, synchronize)
from .cuda_shape import broadcast_to, concatenate, permute, reshape

__all__ = [
    "NAME", "AVAILABLE", "UNAVAILABLE_REASON", "DeviceArray", "device_name", "synchronize", "grad_norm", "memory_stats",
    "attention_bf16_forward", "attention_bf16_backward",
    # the contract (backends/__init__.py KERNELS), in its order
    "asarray", "to_numpy", "zeros", "full", "accumulate",
    "add", "sub", "mul", "div", "neg", "pow_scalar", "exp", "log", "sqrt", "tanh",
    "relu_forward", "relu_backward", "gelu_forward", "gelu_backward", "silu_forward", "silu_backward",
    "sum", "max", "max_backward", "sum_to_shape", "broadcast_to", "reshape", "permute", "getitem",
    "getitem_backward", "concatenate",
    "matmul_forward", "matmul_backward", "linear_forward", "linear_rows_forward", "linear_backward",
    "softmax_forward", "softmax_backward", "log_softmax_forward", "log_softmax_backward",
    "cross_entropy_forward", "cross_entropy_backward", "kl_div_forward", "kl_div_backward",
    "embedding_forward", "embedding_backward",
    "layer_norm_forward", "layer_norm_backward", "rms_norm_forward", "rms_norm_backward",
    "rope_forward", "rope_backward", "attention_forward", "attention_backward", "adamw_update",
    "paged_cache_write", "paged_attention_forward",
    "dequantize_q8", "dequantize_q4", "linear_q8_forward", "linear_q4_forward",
    "moe_permute_forward", "moe_permute_backward", "grouped_matmul_forward", "grouped_matmul_backward",
    "moe_combine_forward", "moe_combine_backward",
]

NAME = "cuda"
ATTENTION = os.environ.get("MICROGPT_CUDA_ATTENTION", "v2_flash")


# --- softmax family ----------------------------------------------------------------------------------

def _rows(name, x):
    x = on_device(x)
    require_f32(name, x)
    if x.ndim == 0:
        raise ShapeError(f"{name}: needs at least one axis")
    return x, math.prod(x.shape[:-1]), x.shape[-1]


def _row_kernel(name, x):
    x, n, c = _rows(name, x)
    out = empty(x.shape, np.float32)
    call(name, out.ptr, x.ptr, n, c)
    return out


def _row_backward(name, dout, out):
    out, n, c = _rows(name, out)
    dout = on_device(dout)
    if dout.shape != out.shape:
        raise ShapeError(f"{name}: dout {dout.shape} and out {out.shape} differ")
    dx = empty(out.shape, np.float32)
    call(name, dx.ptr, dout.ptr, out.ptr, n, c)
    return dx


def softmax_forward(x):
    return _row_kernel("softmax_forward", x)


def softmax_backward(dout, out):
    return _row_backward("softmax_backward", dout, out)


def log_softmax_forward(x):
    return _row_kernel("log_softmax_forward", x)


def log_softmax_backward(dout, out):
    return _row_backward("log_softmax_backward", dout, out)


def _targets(name, targets, n):
    targets = on_device(targets, np.int64)
    if targets.dtype != np.int64 or targets.shape != (n,):
        raise ShapeError(f"{name}: targets must be int64 of shape ({n},), got {targets.dtype} {targets.shape}")
    return targets


def cross_entropy_forward(logits, targets, ignore_index):
    logits = on_device(logits)
    require_f32("cross_entropy_forward", logits)
    if logits.ndim != 2:
        raise ShapeError(f"cross_entropy_forward: logits must be (N, V), got {logits.shape}")
    n, v = logits.shape
    targets = _targets("cross_entropy_forward", targets, n)
    losses, lse = empty((n,), np.float32), empty((n,), np.float32)
    if n:
        flag = bad_flag("cross_entropy_forward", f"a target outside [0, {v}) that is not ignore_index")
        call("cross_entropy_forward", losses.ptr, lse.ptr, flag, logits.ptr, targets.ptr, int(ignore_index), n, v)
    return losses, lse


def cross_entropy_backward(dlosses, logits, targets, lse, ignore_index):
    logits, lse = on_device(logits), on_device(lse)
    n, v = logits.shape
    targets = _targets("cross_entropy_backward", targets, n)
    dlosses = on_device(dlosses)
    require_f32("cross_entropy_backward", logits, lse, dlosses)
    if dlosses.shape != (n,):
        dlosses = broadcast_to(dlosses, (n,))
    dlogits = empty((n, v), np.float32)
    if n:
        call("cross_entropy_backward", dlogits.ptr, dlosses.ptr, logits.ptr, targets.ptr, lse.ptr, int(ignore_index),
             n, v)
    return dlogits


# Distillation's KL (cuda/crossentropy.cu): one block per row, as cross_entropy's.
def _kl_arrays(name, student, teacher, temperature):
    if not float(temperature) > 0 or not math.isfinite(float(temperature)):
        raise ShapeError(f"{name}: temperature must be finite and > 0, got {temperature}")
    student, teacher = on_device(student), on_device(teacher)
    require_f32(name, student, teacher)
    if student.ndim != 2 or teacher.shape != student.shape:
        raise ShapeError(f"{name}: student and teacher logits must be (N, V) of one shape, got "
                         f"{student.shape} and {teacher.shape}")
    return student, teacher


def kl_div_forward(student, teacher, temperature):
    student, teacher = _kl_arrays("kl_div_forward", student, teacher, temperature)
    n, v = student.shape
    losses, student_lse, teacher_lse = (empty((n,), np.float32) for _ in range(3))
    if n:
        call("kl_div_forward", losses.ptr, student_lse.ptr, teacher_lse.ptr, student.ptr, teacher.ptr,
             float(temperature), n, v)
    return losses, student_lse, teacher_lse


def kl_div_backward(dlosses, student, teacher, student_lse, teacher_lse, temperature):
    student, teacher = _kl_arrays("kl_div_backward", student, teacher, temperature)
    n, v = student.shape
    dlosses, student_lse, teacher_lse = (on_device(a) for a in (dlosses, student_lse, teacher_lse))
    require_f32("kl_div_backward", dlosses, student_lse, teacher_lse)
    if student_lse.shape != (n,) or teacher_lse.shape != (n,):
        raise ShapeError(f"kl_div_backward: student_lse and teacher_lse must be ({n},), got "
                         f"{student_lse.shape} and {teacher_lse.shape}")
    if dlosses.shape != (n,):
        dlosses = broadcast_to(dlosses, (n,))
    dstudent = empty((n, v), np.float32)
    if n:
        call("kl_div_backward", dstudent.ptr, dlosses.ptr, student.ptr, teacher.ptr, student_lse.ptr,
             teacher_lse.ptr, float(temperature), n, v)
    return dstudent


# --- embedding -----------------------------------------------------------------------------------------

def embedding_forward(ids, weight):
    ids, weight = on_device(ids, np.int64), on_device(weight)
    require_f32("embedding_forward", weight)
    if ids.dtype != np.int64 or weight.ndim != 2:
        raise ShapeError(f"embedding_forward: ids must be int64 and weight (V, C); got {ids.dtype}, {weight.shape}")
    out = empty(ids.shape + (weight.shape[1],), np.float32)
    if out.size:
        flag = bad_flag("embedding_forward", f"an id outside [0, {weight.shape[0]})")
        call("embedding_forward", out.ptr, flag, ids.ptr, weight.ptr, ids.size, *weight.shape)
    return out


def embedding_backward(dout, ids, num_embeddings):
    dout, ids = on_device(dout), on_device(ids, np.int64)
    require_f32("embedding_backward", dout)
    c = dout.shape[-1]
    if dout.shape != ids.shape + (c,):
        raise ShapeError(f"embedding_backward: dout {dout.shape} does not fit ids {ids.shape}")
    dweight = empty((int(num_embeddings), c), np.float32)
    flag = bad_flag("embedding_backward", f"an id outside [0, {num_embeddings})")
    call("embedding_backward", dweight.ptr, flag, dout.ptr, ids.ptr, ids.size, int(num_embeddings), c)
    return dweight


# --- normalization -------------------------------------------------------------------------------------

def _norm_args(name, x, w):
    x, n, c = _rows(name, x)
    w = on_device(w)
    require_f32(name, w)
    if w.shape != (c,):
        raise ShapeError(f"{name}: weight {w.shape} does not fit input {x.shape}")
    return x, w, n, c


def layer_norm_forward(x, w, b, eps):
    x, w, n, c = _norm_args("layer_norm_forward", x, w)
    if b is not None:
        b = on_device(b)
        if b.shape != (c,):
            raise ShapeError(f"layer_norm_forward: bias {b.shape} does not fit input {x.shape}")
    out = empty(x.shape, np.float32)
    mean, rstd = empty(x.shape[:-1], np.float32), empty(x.shape[:-1], np.float32)
    call("layer_norm_forward", out.ptr, mean.ptr, rstd.ptr, x.ptr, w.ptr, rt.ffi.NULL if b is None else b.ptr,
         float(eps), n, c)
    return out, mean, rstd


def layer_norm_backward(dout, x, w, mean, rstd, has_bias):
    x, w, n, c = _norm_args("layer_norm_backward", x, w)
    dout, mean, rstd = on_device(dout), on_device(mean), on_device(rstd)
    if dout.shape != x.shape:
        raise ShapeError(f"layer_norm_backward: dout {dout.shape} and x {x.shape} differ")
    dx, dw = empty(x.shape, np.float32), empty((c,), np.float32)
    db = empty((c,), np.float32) if has_bias else None
    call("layer_norm_backward", dx.ptr, dw.ptr, db.ptr if has_bias else rt.ffi.NULL, dout.ptr, x.ptr, w.ptr, mean.ptr,
         rstd.ptr, n, c)
    return dx, dw, db


def rms_norm_forward(x, w, eps):
    x, w, n, c = _norm_args("rms_norm_forward", x, w)
    out, rstd = empty(x.shape, np.float32), empty(x.shape[:-1], np.float32)
    call("rms_norm_forward", out.ptr, rstd.ptr, x.ptr, w.ptr, float(eps), n, c)
    return out, rstd


def rms_norm_backward(dout, x, w, rstd):
    x, w, n, c = _norm_args("rms_norm_backward", x, w)
    dout, rstd = on_device(dout), on_device(rstd)
    if dout.shape != x.shape:
        raise ShapeError(f"rms_norm_backward: dout {dout.shape} and x {x.shape} differ")
    dx, dw = empty(x.shape, np.float32), empty((c,), np.float32)
    call("rms_norm_backward", dx.ptr, dw.ptr, dout.ptr, x.ptr, w.ptr, rstd.ptr, n, c)
    return dx, dw


# --- rotary position embedding ---------------------------------------------------------------------------

def _rope(name, x, cos, sin):
    x, cos, sin = on_device(x), on_device(cos), on_device(sin)
    require_f32(name, x, cos, sin)
    if x.ndim < 2 or x.shape[-1] % 2 or cos.shape != (x.shape[-2], x.shape[-1] // 2) or sin.shape != cos.shape:
        raise ShapeError(f"{name}: x {x.shape} needs cos/sin of shape (T, HS/2), got {cos.shape}, {sin.shape}")
    out = empty(x.shape, np.float32)
    t, hs = x.shape[-2], x.shape[-1]
    call(name, out.ptr, x.ptr, cos.ptr, sin.ptr, math.prod(x.shape[:-2]), t, hs)     # (BNH, T, HS)
    return out


def rope_forward(x, cos, sin):
    return _rope("rope_forward", x, cos, sin)


def rope_backward(dout, cos, sin):
    return _rope("rope_backward", dout, cos, sin)


# --- causal self-attention --------------------------------------------------------------------------------

def _attention_sizes(name, q, k, v):
    require_f32(name, q, k, v)
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape:
        raise ShapeError(f"{name}: q, k, v must be (B, NH, T, HS) with k, v alike; got {q.shape}, {k.shape}, {v.shape}")
    b, nh, tq, hs = q.shape
    nkv, tk = k.shape[1], k.shape[2]
    if k.shape[0] != b or k.shape[3] != hs or nkv == 0 or nh % nkv or tq > tk:
        raise ShapeError(f"{name}: q {q.shape} does not fit k/v {k.shape} (NH % NKV == 0, Tq <= Tk)")
    if ATTENTION not in ("v2_flash", "v1_naive"):
        raise ShapeError(f"MICROGPT_CUDA_ATTENTION={ATTENTION!r}: choose v2_flash or v1_naive")
    return b, nh, nkv, tq, tk, hs


_I32 = np.iinfo(np.int32)


def _segments(name, segment_ids, b, tq, tk):
    """(device array or None, pointer or NULL) of the document ids, int32 as the kernels take them.

    The device holds no int32 arrays (cuda_runtime.DTYPES), so the ids travel as their bytes
    (uint8, 4 per id) and the kernel reads them as int32_t. Ids beyond int32 are relabelled by
    rank, which keeps equality (all the kernels test), as the C binding does.
    """
    if segment_ids is None:
        return None, rt.ffi.NULL
    if isinstance(segment_ids, DeviceArray):
        segment_ids = to_numpy(segment_ids)
    seg = np.asarray(segment_ids)
    if seg.dtype.kind not in "iu":
        raise DTypeError(f"{name}: segment_ids must hold integers, got {seg.dtype}")
    if tq != tk or seg.shape != (b, tk):
        raise ShapeError(f"{name}: segment_ids must be (B, T) = {(b, tk)} with Tq = Tk, got {seg.shape} "
                         f"for Tq={tq}, Tk={tk}")
    if seg.size and (seg.min() < _I32.min or seg.max() > _I32.max):
        seg = np.unique(seg, return_inverse=True)[1].reshape(seg.shape)
    device = rt.upload(np.ascontiguousarray(seg, dtype=np.int32).view(np.uint8), np.uint8)
    return device, device.ptr


def _bf16_attention(q):
    """Inside a matmul_precision("bf16") scope, attention runs on the tensor cores too
    (attention_bf16.cu) where it can: HS = 64, and MICROGPT_BF16_ATTENTION is not 0."""
    return cuda_bf16.active() and cuda_bf16.ATTENTION and q.ndim == 4 and q.shape[-1] == 64


def attention_forward(q, k, v, segment_ids=None):
    q, k, v = on_device(q), on_device(k), on_device(v)
    if _bf16_attention(q):
        return attention_bf16_forward(q, k, v, segment_ids)
    b, nh, nkv, tq, tk, hs = _attention_sizes("attention_forward", q, k, v)
    _seg, seg_ptr = _segments("attention_forward", segment_ids, b, tq, tk)   # _seg holds the memory
    out, lse = empty(q.shape, np.float32), empty(q.shape[:3], np.float32)
    if out.size:
        call(f"attention_forward_{ATTENTION}", out.ptr, lse.ptr, q.ptr, k.ptr, v.ptr, seg_ptr, b, nh, nkv, tq, tk,
             hs)
    return out, lse


def attention_backward(dout, q, k, v, out, lse, segment_ids=None):
    q, k, v = on_device(q), on_device(k), on_device(v)
    if _bf16_attention(q):
        return attention_bf16_backward(dout, q, k, v, out, lse, segment_ids)
    dout, out, lse = on_device(dout), on_device(out), on_device(lse)
    b, nh, nkv, tq, tk, hs = _attention_sizes("attention_backward", q, k, v)
    _seg, seg_ptr = _segments("attention_backward", segment_ids, b, tq, tk)
    if dout.shape != q.shape or out.shape != q.shape or lse.shape != q.shape[:3]:
        raise ShapeError(f"attention_backward: dout {dout.shape}, out {out.shape}, lse {lse.shape} "
                         f"do not fit q {q.shape}")
    dq, dk, dv = empty(q.shape, np.float32), empty(k.shape, np.float32), empty(v.shape, np.float32)
    if q.size == 0:
        return dq, zeros(k.shape, np.float32), zeros(v.shape, np.float32)
    if ATTENTION == "v1_naive":
        call("attention_backward_v1_naive", dq.ptr, dk.ptr, dv.ptr, dout.ptr, q.ptr, k.ptr, v.ptr, out.ptr, lse.ptr,
             seg_ptr, b, nh, nkv, tq, tk, hs)
    else:
        delta = empty(lse.shape, np.float32)
        call("attention_backward_v2_flash", dq.ptr, dk.ptr, dv.ptr, delta.ptr, dout.ptr, q.ptr, k.ptr, v.ptr,
             out.ptr, lse.ptr, seg_ptr, b, nh, nkv, tq, tk, hs)
    return dq, dk, dv


def attention_bf16_forward(q, k, v, segment_ids=None):
    """(out, lse) float32 of attention_forward from q, k, v rounded to bf16, on the tensor cores
    (cuda/attention_bf16.cu; HS = 64). attention_forward calls it inside a bf16 scope."""
    q, k, v = on_device(q), on_device(k), on_device(v)
    b, nh, nkv, tq, tk, hs = _attention_sizes("attention_bf16_forward", q, k, v)
    if hs != 64:
        raise ShapeError(f"attention_bf16_forward: head size 64 only, got {hs}")
    _seg, seg_ptr = _segments("attention_bf16_forward", segment_ids, b, tq, tk)   # _seg holds the memory
    out, lse = empty(q.shape, np.float32), empty(q.shape[:3], np.float32)
    if out.size:
        q16, k16, v16 = cuda_bf16.to_bf16(q), cuda_bf16.to_bf16(k), cuda_bf16.to_bf16(v)
        call("attention_bf16_forward", out.ptr, lse.ptr, q16.ptr, k16.ptr, v16.ptr, seg_ptr, b, nh, nkv, tq, tk, hs)
    return out, lse


def attention_bf16_backward(dout, q, k, v, out, lse, segment_ids=None):
    """(dq, dk, dv) float32 of attention_backward on the tensor cores from bf16 copies of dout,
    q, k, v (cuda/attention_bf16.cu; HS = 64); out and lse from attention_bf16_forward."""
    q, k, v = on_device(q), on_device(k), on_device(v)
    dout, out, lse = on_device(dout), on_device(out), on_device(lse)
    b, nh, nkv, tq, tk, hs = _attention_sizes("attention_bf16_backward", q, k, v)
    if hs != 64:
        raise ShapeError(f"attention_bf16_backward: head size 64 only, got {hs}")
    if dout.shape != q.shape or out.shape != q.shape or lse.shape != q.shape[:3]:
        raise ShapeError(f"attention_bf16_backward: dout {dout.shape}, out {out.shape}, lse {lse.shape} "
                         f"do not fit q {q.shape}")
    _seg, seg_ptr = _segments("attention_bf16_backward", segment_ids, b, tq, tk)
    dq, dk, dv = empty(q.shape, np.float32), empty(k.shape, np.float32), empty(v.shape, np.float32)
    delta = empty(lse.shape, np.float32)
    dout16, q16, k16, v16 = (cuda_bf16.to_bf16(x) for x in (dout, q, k, v))
    call("attention_bf16_backward_v1_mma", dq.ptr, dk.ptr, dv.ptr, delta.ptr, dout.ptr, dout16.ptr, q16.ptr,
         k16.ptr, v16.ptr, out.ptr, lse.ptr, seg_ptr, b, nh, nkv, tq, tk, hs)
    return dq, dk, dv


# --- paged KV cache (paged_attention.cu) -----------------------------------------------------------------

def _paged_sizes(name, k_cache, v_cache):
    require_f32(name, k_cache, v_cache)
    if k_cache.ndim != 4 or v_cache.shape != k_cache.shape:
        raise ShapeError(f"{name}: k_cache, v_cache must be alike (NB, NKV, BS, HS); got {k_cache.shape}, "
                         f"{v_cache.shape}")
    return k_cache.shape


def paged_cache_write(k_cache, v_cache, k, v, slots):
    if not isinstance(k_cache, DeviceArray) or not isinstance(v_cache, DeviceArray):
        raise DTypeError("paged_cache_write: k_cache and v_cache must be DeviceArrays (written in place)")
    k, v, slots = on_device(k), on_device(v), on_device(slots, np.int64)
    nb, nkv, bs, hs = _paged_sizes("paged_cache_write", k_cache, v_cache)
    require_f32("paged_cache_write", k, v)
    if k.ndim != 3 or k.shape[1:] != (nkv, hs) or v.shape != k.shape or slots.shape != k.shape[:1]:
        raise ShapeError(f"paged_cache_write: k, v must be (N, {nkv}, {hs}) and slots (N,); got {k.shape}, "
                         f"{v.shape}, {slots.shape}")
    if k.size:
        flag = bad_flag("paged_cache_write", f"a slot outside [0, {nb * bs})")
        call("paged_cache_write", flag, k_cache.ptr, v_cache.ptr, k.ptr, v.ptr, slots.ptr, k.shape[0], nkv, nb, bs, hs)


def paged_attention_forward(q, k_cache, v_cache, block_tables, positions):
    q, k_cache, v_cache = on_device(q), on_device(k_cache), on_device(v_cache)
    block_tables, positions = on_device(block_tables, np.int64), on_device(positions, np.int64)
    nb, nkv, bs, hs = _paged_sizes("paged_attention_forward", k_cache, v_cache)
    require_f32("paged_attention_forward", q)
    if q.ndim != 3 or q.shape[2] != hs or q.shape[1] % nkv or block_tables.ndim != 2 \
            or block_tables.shape[0] != q.shape[0] or positions.shape != q.shape[:1]:
        raise ShapeError(f"paged_attention_forward: q (N, NH, {hs}) with NH % {nkv} == 0, block_tables (N, MB), "
                         f"positions (N,); got {q.shape}, {block_tables.shape}, {positions.shape}")
    n, nh = q.shape[0], q.shape[1]
    mb = block_tables.shape[1]
    out = empty(q.shape, np.float32)
    if out.size:
        flag = bad_flag("paged_attention_forward", f"a block outside [0, {nb}) or a position outside [0, {mb * bs})")
        call("paged_attention_forward", out.ptr, flag, q.ptr, k_cache.ptr, v_cache.ptr, block_tables.ptr,
             positions.ptr, n, nh, nkv, nb, bs, mb, hs)
    return out


# --- optimizer ------------------------------------------------------------------------------------------------

def adamw_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
    if not all(isinstance(x, DeviceArray) for x in (param, m, v)):
        raise DTypeError("adamw_update: param, m and v must be DeviceArrays (updated in place)")
    grad = on_device(grad)
    require_f32("adamw_update", param, grad, m, v)
    if not param.shape == grad.shape == m.shape == v.shape:
        raise ShapeError(f"adamw_update: shapes differ: {param.shape}, {grad.shape}, {m.shape}, {v.shape}")
    if step < 1:
        raise ShapeError(f"adamw_update: step counts from 1, got {step}")
    call("adamw_update", param.ptr, grad.ptr, m.ptr, v.ptr, float(lr), float(beta1), float(beta2), float(eps),
         float(weight_decay), int(step), param.size)


# --- CUDA-only helpers -----------------------------------------------------------------------------------------

def grad_norm(arrays):
    """sqrt(sum of squares) over several float32 arrays: one kernel each, one sync at the end."""
    total = zeros((), np.float32)
    for a in arrays:
        a = on_device(a)
        require_f32("grad_norm", a)
        call("sumsq_accumulate", total.ptr, a.ptr, a.size)
    return math.sqrt(float(rt.download(total)))


def memory_stats():
    """Bytes held by live arrays and bytes cached for reuse by the pool."""
    return {"in_use": rt.POOL.in_use, "cached": rt.POOL.cached}


# --- weight-only quantized linear (quant.cu; formats: microgpt/quantize/formats.py) ------------------

def _quant_operands(op, w_q, w_scale, group, bits):
    w_q, w_scale = on_device(w_q, np.int8 if bits == 8 else np.uint8), on_device(w_scale)
    require_f32(op, w_scale)
    oc, stored = w_q.shape
    c = stored if bits == 8 else 2 * stored
    group = int(group)
    if group < 1 or c % group or (bits == 4 and group % 32) or w_scale.shape != (oc, c // group):
        raise ShapeError(f"{op}: w_q {w_q.shape}, w_scale {w_scale.shape} and group {group} do not fit")
    return w_q, w_scale, oc, c, group


def _dequantize(op, bits, w_q, w_scale, group):
    w_q, w_scale, oc, c, group = _quant_operands(op, w_q, w_scale, group, bits)
    w = empty((oc, c), np.float32)
    if w.size:
        call(op, w.ptr, w_q.ptr, w_scale.ptr, group, oc, c)
    return w


def dequantize_q8(w_q, w_scale, group):
    return _dequantize("dequantize_q8", 8, w_q, w_scale, group)


def dequantize_q4(w_q, w_scale, group):
    return _dequantize("dequantize_q4", 4, w_q, w_scale, group)


def _linear_quant(op, bits, x, w_q, w_scale, b, group):
    x = on_device(x)
    require_f32(op, x)
    w_q, w_scale, oc, c, group = _quant_operands(op, w_q, w_scale, group, bits)
    if x.ndim < 1 or x.shape[-1] != c:
        raise ShapeError(f"{op}: input {x.shape} does not fit a weight of {c} inputs")
    if b is not None:
        b = on_device(b)
        require_f32(op, b)
        if b.shape != (oc,):
            raise ShapeError(f"{op}: bias {b.shape} does not fit {oc} outputs")
    out = empty(x.shape[:-1] + (oc,), np.float32)
    if out.size:
        call(op, out.ptr, x.ptr, w_q.ptr, w_scale.ptr, rt.ffi.NULL if b is None else b.ptr, group,
             math.prod(x.shape[:-1]), c, oc)
    return out


def linear_q8_forward(x, w_q, w_scale, b, group):
    return _linear_quant("linear_q8_forward", 8, x, w_q, w_scale, b, group)


def linear_q4_forward(x, w_q, w_scale, b, group):
    return _linear_quant("linear_q4_forward", 4, x, w_q, w_scale, b, group)
