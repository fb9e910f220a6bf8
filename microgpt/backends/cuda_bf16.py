"""bf16 mixed precision on the CUDA backend: bf16 copies for the matmuls, float32 for the rest.

Mixed precision as every modern run trains (issue 19): the master weights, the optimizer's
moments, the activations between layers, softmax / norm statistics, the loss and every
gradient stay float32; only the operands of the matrix products are rounded to bf16, and
the tensor cores (cuda/matmul_bf16.cu) multiply them with float32 accumulation into a
float32 result. So:

  forward   y  = bf16(x) @ bf16(w)^T + b                       (float32 y)
  dX        dx = bf16(dy) @ bf16(w)                            (float32 dx)
  dW        dw = bf16(dy)^T @ bf16(x), summed in float32 over the rows (float32 dw, which
            the autograd then adds into the float32 parameter gradient)

Why no loss scaling: bf16 keeps float32's 8 exponent bits, so every gradient float32 can
hold (down to ~1e-38) is representable in bf16 too; fp16's 5 exponent bits flush gradients
under ~6e-8 to zero, which is what loss scaling is for. bf16 pays in precision instead:
8 significant bits, a unit roundoff u = 2^-8 (each rounding moves a value by at most u of
itself), the bounds tests/test_cuda_bf16.py derives from.

How it is switched on: `with matmul_precision("bf16"):` makes the cuda backend's
linear_forward, linear_backward, matmul_forward and matmul_backward run as above (the
trainer's --dtype bf16 wraps each step's forward and backward, and evaluation, in it), and
attention_forward / attention_backward run on the tensor cores too (cuda/attention_bf16.cu:
bf16 q, k, v, dout and P, dS; float32 softmax statistics, outputs and gradients) when the
head size is 64; MICROGPT_BF16_ATTENTION=0 keeps the float32 attention kernels.
Inside one such scope the bf16 copy of a weight is made once and reused (a layer's forward
and its dX product read it, in every micro-batch of the step): the cache is keyed by the
weight's DeviceArray and emptied when a scope is entered or left, so an optimizer update,
which happens outside the scope, is never hidden by a stale copy.
Outside a scope nothing changes: float32 products, float32 kernels.

The loss-parity bound (fixed before any GPU run, used by tests/test_cuda_bf16_train.py and
benchmarks/bench_gpu_bf16.py): every step's loss within LOSS_GAP_BOUND = 2u = 2^-7 of the float32
run's, relative (0.085 nats at GPT-2's initial ln 50304 = 10.8). Where that size comes from:
at equal weights a row's loss moves by (p - onehot(y)) . dz, dz the logits' error; each
product on the path adds a norm-wise relative error of about sqrt(2/3) u (the RMS of the
bound of tests/test_cuda_bf16.py), independent errors add in quadrature, so GPT-2's 73
products (4 linear layers and attention's 2 a block, and the head) give rho ~ 8.5 sqrt(2/3) u
~ 0.03 on the logits, and the mean over N = 8192 rows of errors of random sign is
~ rho s_z / sqrt(N) ~ 2e-4 (s_z ~ 0.6 the RMS logit at init). Over
the steps the runs' weights part: AdamW moves each weight by about lr sign(g), and bf16
gradients flip the sign of the smallest components, as rounding alone did between our
float32 run and PyTorch's (3.9e-3 at the loss spike of step 9, benchmarks/results/gpu.md).
2u allows about 20 times that: the two losses agree to within two units of bf16's own
resolution at that loss.

On the device a bf16 array is a DeviceArray of dtype uint16 holding the bit patterns
(NumPy has no bf16 type); to_bf16 / to_float32 convert (round to nearest even; exact).
"""
import contextlib
import os

import numpy as np

from ..errors import DTypeError, ShapeError
from . import cuda_runtime as rt
from .cuda_runtime import DeviceArray, call, empty, on_device, require_f32

BF16 = np.dtype(np.uint16)            # the storage of bf16 values: their 16 bits
UNIT_ROUNDOFF = 2.0 ** -8             # u: bf16 keeps 8 significant bits
LOSS_GAP_BOUND = 2 * UNIT_ROUNDOFF    # per step, relative to the float32 run's loss (see above)
PRECISIONS = ("float32", "bf16")
ATTENTION = os.environ.get("MICROGPT_BF16_ATTENTION", "1") != "0"   # attention on tensor cores in a bf16 scope
_state = {"precision": "float32", "weights": {}}


def active():
    """True inside a matmul_precision("bf16") scope."""
    return _state["precision"] == "bf16"


@contextlib.contextmanager
def matmul_precision(precision):
    """Run the matrix products of the cuda backend in `precision` ("bf16" or "float32") inside
    the block; the bf16 weight cache is emptied on entry and exit (scopes may nest)."""
    if precision not in PRECISIONS:
        raise DTypeError(f"matmul precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    before = _state["precision"]
    _state["precision"] = precision
    _state["weights"] = {}
    try:
        yield
    finally:
        _state["precision"] = before
        _state["weights"] = {}


def to_bf16(x):
    """float32 DeviceArray -> uint16 DeviceArray of its bf16 bits (round to nearest, ties to even)."""
    x = on_device(x)
    require_f32("to_bf16", x)
    out = empty(x.shape, BF16)
    if out.size:
        call("f32_to_bf16", rt.ffi.cast("uint16_t*", out.addr), rt.ffi.cast("float*", x.addr), x.size)
    return out


def to_float32(x16):
    """uint16 DeviceArray of bf16 bits -> float32 DeviceArray (exact)."""
    if not isinstance(x16, DeviceArray) or x16.dtype != BF16:
        raise DTypeError("to_float32: expects a uint16 DeviceArray of bf16 bits")
    out = empty(x16.shape, np.float32)
    if out.size:
        call("bf16_to_f32", rt.ffi.cast("float*", out.addr), rt.ffi.cast("uint16_t*", x16.addr), x16.size)
    return out


def weight_bf16(w):
    """The bf16 copy of weight w, made once per matmul_precision scope."""
    cache = _state["weights"]
    hit = cache.get(id(w))
    if hit is not None and hit[0] is w:
        return hit[1]
    w16 = to_bf16(w)
    cache[id(w)] = (w, w16)            # holding w keeps its id (and memory) from being reused
    return w16


def operand(x, is_weight=False):
    """x as bf16 for a product: a bf16 array as it is, a weight through the scope's cache,
    anything else converted now."""
    if x.dtype == BF16:
        return x
    return weight_bf16(x) if is_weight else to_bf16(x)


def gemm(out, a16, b16, bias, m, n, k, trans_a, trans_b, batch=1, sa=0, sb=0, sc=0):
    """out[z] (m, n) float32 = op(a16[z]) @ op(b16[z]) + bias on the tensor cores (matmul_bf16),
    for z < batch, the operands sa / sb / sc elements apart (0: one matrix for every z)."""
    if max(m, n, k) >= 2 ** 31:
        raise ShapeError(f"matmul_bf16: a dimension of ({m}, {n}, {k}) exceeds 2^31")
    cast = rt.ffi.cast
    bias_ptr = rt.ffi.NULL if bias is None else cast("float*", bias.addr)
    for z in range(batch):                     # one launch a product (batched products are rare here)
        call("matmul_bf16", cast("float*", out.addr + 4 * z * sc), cast("uint16_t*", a16.addr + 2 * z * sa),
             cast("uint16_t*", b16.addr + 2 * z * sb), bias_ptr, m, n, k, int(trans_a), int(trans_b))

