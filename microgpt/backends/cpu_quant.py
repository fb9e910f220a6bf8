"""The C backend's weight-only quantized linear layers (csrc/quant.c), through cffi.

    linear_q8_forward / linear_q4_forward   out = x @ W^T + b, W stored in int8 / int4
    prepared                                the decoder's form: integer dots, weight checked once
    dequantize_q8 / dequantize_q4           W itself, float32

Which kernel runs for a product of N rows (every leading axis of x flattened):
  N <= GEMV_MAX_ROWS (decoding)   quant.c's matrix-vector rung for this CPU: each weight row is
                                  read once, as 1 or 0.5 bytes per weight, and dequantized in
                                  registers (the float block rungs v5 / v4); prepared() below,
                                  the decoder's path, multiplies integers instead (v8 / v6),
                                  up to INTDOT_MAX_ROWS rows (a short prompt's prefill too).
  more rows (prefill, training)   dequantize W once into a float32 matrix, then the packed,
                                  threaded GEMM of matmul.c: one pass over W (1/N of the product's
                                  work) buys the GEMM's register blocking, which the
                                  matrix-vector loop lacks.
The formats are microgpt/quantize/formats.py's; the reference (backends/reference.py) is the
specification. float64 inputs take the reference path, as everywhere in this backend.
"""
import numpy as np

from ..errors import DTypeError, ShapeError
from . import cpu_checks as check
from . import cpu_matmul
from . import reference as _ref
from .cpu_lib import fp as _fp
from .cpu_lib import ffi, lib
from .cpu_lib import opt as _opt

GEMV_MAX_ROWS = 8       # above this many rows: dequantize once + GEMM (see the docstring)
# prepared() (the decoder's path) keeps the integer dots up to more rows: a short prompt's
# prefill. Dequantizing W costs ~1 ns a weight (a float32 matrix written, 8x the int4 bytes),
# a fixed price the GEMM must earn back, while the integer dots cost ~45-60 ps a weight a row
# (the row's weights stay in L1 across the N rows). Measured on GPT-2-124M's 2304 x 768 and
# 768 x 3072 int4 layers (1 and 2 threads, min of 5, load ~4): integer dots 1.2-1.7 ms
# against dequantize + GEMM 2.1-2.7 ms at 16 rows, a toss-up at 32 (2.7-4.5 against 2.5-13),
# so the cut sits between: 24. llama.cpp runs small batches on its integer dots too.
INTDOT_MAX_ROWS = 24


def _bytes(x, kind):
    return ffi.from_buffer(kind, x)


def _quant_check(op, w_q, w_scale, group, bits):
    check.array(op, "w_q", w_q)
    check.array(op, "w_scale", w_scale)
    want = np.int8 if bits == 8 else np.uint8
    if w_q.dtype != want:
        raise DTypeError(f"{op}: w_q must be {np.dtype(want)}, got {w_q.dtype}")
    if w_q.ndim != 2 or w_scale.ndim != 2:
        raise ShapeError(f"{op}: w_q {w_q.shape} and w_scale {w_scale.shape} must be matrices")
    oc, stored = w_q.shape
    c = stored if bits == 8 else 2 * stored
    group = check.integer(op, "group", group, low=1)
    if c % group or (bits == 4 and (group % 32 or c % 32)):
        raise ShapeError(f"{op}: group {group} does not fit {c} inputs"
                         + (" (int4 groups are multiples of 32)" if bits == 4 else ""))
    check.shape(op, "w_scale", w_scale, (oc, c // group))
    return oc, c, group


def _dequantize(op, c_fn, ref_fn, w_q, w_scale, group, bits):
    oc, c, group = _quant_check(op, w_q, w_scale, group, bits)
    if w_scale.dtype != np.float32:
        if w_scale.dtype != np.float64:
            raise DTypeError(f"{op}: w_scale must be float32 or float64, got {w_scale.dtype}")
        return ref_fn(w_q, w_scale, group)
    w = np.empty((oc, c), dtype=np.float32)
    c_fn(_fp(w), _bytes(w_q, "int8_t[]" if bits == 8 else "uint8_t[]"), _fp(w_scale), group, oc, c)
    return w


def dequantize_q8(w_q, w_scale, group):
    return _dequantize("dequantize_q8", lib.dequantize_q8, _ref.dequantize_q8, w_q, w_scale, group, 8)


def dequantize_q4(w_q, w_scale, group):
    return _dequantize("dequantize_q4", lib.dequantize_q4, _ref.dequantize_q4, w_q, w_scale, group, 4)


def _linear(op, c_fn, ref_fn, dequant, x, w_q, w_scale, b, group, bits):
    is32 = check.floats(op, x=x, w_scale=w_scale, b=b)
    oc, c, group = _quant_check(op, w_q, w_scale, group, bits)
    check.min_ndim(op, "x", x, 1)
    if x.shape[-1] != c:
        raise ShapeError(f"{op}: input {x.shape} does not fit a weight of {c} inputs")
    if b is not None:
        check.shape(op, "b", b, (oc,))
    if not is32:
        return ref_fn(x, w_q, w_scale, b, group)
    rows = x.size // c if c else 0
    if rows > GEMV_MAX_ROWS:
        return cpu_matmul.linear_forward(x, dequant(w_q, w_scale, group), b)
    out = np.empty(x.shape[:-1] + (oc,), dtype=np.float32)
    c_fn(_fp(out), _fp(x), _bytes(w_q, "int8_t[]" if bits == 8 else "uint8_t[]"), _fp(w_scale), _opt(b),
         group, rows, c, oc)
    return out


def linear_q8_forward(x, w_q, w_scale, b, group):
    return _linear("linear_q8_forward", lib.linear_q8_forward, _ref.linear_q8_forward, dequantize_q8,
                   x, w_q, w_scale, b, group, 8)


def linear_q4_forward(x, w_q, w_scale, b, group):
    return _linear("linear_q4_forward", lib.linear_q4_forward, _ref.linear_q4_forward, dequantize_q4,
                   x, w_q, w_scale, b, group, 4)



def prepared(kernel, w_q, w_scale, group):
    """The decoder's form of linear_q8_forward / linear_q4_forward (kernel: the name), with its
    weight checked once: fn(x, b) -> out, or None where the weight takes another path (float64
    scales). Up to INTDOT_MAX_ROWS rows it runs quant.c's integer-dot entry (linear_q*_forward_intdot:
    the activations rounded to int8 per 32-block, as llama.cpp's Q8_0 / Q4_0 decoding; the
    reference is reference.py's linear_q*_forward_intdot); more rows, the float GEMM. Decoding
    calls each weight ~25 times a token; the full argument checks of the kernel cost ~18 us a
    call against its ~75 us of work on the "small" shape, so the weight's checks and cffi
    pointers are made here once (quantize/layers.py's QuantizedWeight keeps fn beside its
    arrays). Each call checks only x and b, cheaply; anything unusual about them (another dtype,
    a view that is not contiguous, a wrong width) goes to the fully checked kernel, which
    computes it or raises the error a user would get without this path."""
    bits = 8 if "q8" in kernel else 4
    oc, c, group = _quant_check(kernel, w_q, w_scale, group, bits)
    if w_scale.dtype != np.float32 or not (w_q.flags.c_contiguous and w_scale.flags.c_contiguous):
        return None
    checked = linear_q8_forward if bits == 8 else linear_q4_forward
    dequant = dequantize_q8 if bits == 8 else dequantize_q4
    c_fn = getattr(lib, kernel + "_intdot")
    w_ptr, d_ptr = _bytes(w_q, "int8_t[]" if bits == 8 else "uint8_t[]"), _fp(w_scale)
    f32, ndarray = np.float32, np.ndarray

    def run(x, b):
        if (type(x) is not ndarray or x.dtype != f32 or not x.ndim or x.shape[-1] != c
                or not x.flags.c_contiguous
                or (b is not None and (type(b) is not ndarray or b.dtype != f32 or b.shape != (oc,)
                                       or not b.flags.c_contiguous))):
            return checked(x, w_q, w_scale, b, group)
        rows = x.size // c if c else 0
        if rows > INTDOT_MAX_ROWS:
            return cpu_matmul.linear_forward(x, dequant(w_q, w_scale, group), b)
        out = np.empty(x.shape[:-1] + (oc,), dtype=f32)
        c_fn(_fp(out), _fp(x), w_ptr, d_ptr, _opt(b), group, rows, c, oc)
        return out
    return run

# The rungs, callable one by one (tests and benchmarks); each needs its instruction set.
# v6 / v7 / v8 round the activations to int8 first: their reference is reference.py's *_intdot.
# v8 is int4's unsigned-nibble form, its int8 v7's with the activation side hoisted; v9 is int4
# with the activations in the nibbles' order, its int8 v8's, both with a software prefetch of the
# weights (the decoder's rung).
RUNGS = {"v1_naive": "scalar", "v2_avx2": "avx2", "v3_avx512": "avx512", "v4_blocks_avx2": "avx2",
         "v5_blocks_avx512": "avx512", "v6_intdot_avx2": "avx2", "v7_intdot_vnni": "vnni",
         "v8_unsigned_vnni": "vnni", "v9_nibble_order_vnni": "vnni"}
INTDOT_RUNGS = ("v6_intdot_avx2", "v7_intdot_vnni", "v8_unsigned_vnni", "v9_nibble_order_vnni")


def has_vnni():
    """Whether v7_intdot_vnni runs AVX-512 VNNI here (without it, it is v6)."""
    return bool(lib.quant_has_vnni())


def rung(kernel, name):
    """linear_q8_forward / linear_q4_forward on one rung: fn(x, w_q, w_scale, b, group), float32,
    any number of rows (no GEMM hand-off), for checking and racing the ladder."""
    c_fn = getattr(lib, f"{kernel}_{name}")
    bits = 8 if "q8" in kernel else 4

    def run(x, w_q, w_scale, b, group):
        oc, c, group = _quant_check(kernel, w_q, w_scale, group, bits)
        out = np.empty(x.shape[:-1] + (oc,), dtype=np.float32)
        c_fn(_fp(out), _fp(x), _bytes(w_q, "int8_t[]" if bits == 8 else "uint8_t[]"), _fp(w_scale), _opt(b),
             group, x.size // c, c, oc)
        return out
    return run
