"""Quantized weight formats: a float matrix W (OC, C) as small integers and a few scales.

    W[o, c] ~ d[o, c // group] * q[o, c]          one scale d per `group` inputs of a row

int8 (weight-only, symmetric absmax): d = max |W| over the group / 127, q = round(W / d) in
    [-127, 127], one int8 per weight. group = C gives one scale per output channel (the
    default: 8.0 bits + 32 per row); group = 32 is exactly GGUF's Q8_0 block (8.5 bits a weight).
    Error: |W - d q| <= d / 2 per element (round to nearest), i.e. at most absmax / 254.
int4 (groups of 32 / 64 / 128 along the input): Q4_0's rule. Let m be the group's value of
    largest magnitude, *with its sign*; d = m / -8 and q = clamp(floor(W / d + 8.5), 0, 15) - 8,
    so m itself lands exactly on -8 and the other values on -8 ... 7. Stored as q + 8 in a
    nibble, two per byte, by 32-element blocks: byte j of a block holds element j (low nibble)
    and j + 16 (high) — GGUF's Q4_0 layout, so group 32 is Q4_0 bit for bit (4.5 bits a weight
    with fp16 scales; groups of 64 / 128 share one scale over 2 / 4 blocks: 4.25 / 4.125 bits).
    Error: |W - d q| <= |d| / 2 except where a value near -m clamps at 7 instead of 8: <= |d|.

Why symmetric int4 and no zero point (Q4_1's min + scale). A zero point pays off when a group's
values sit off-centre; trained weight matrices are centred on zero to well within one step
(the bias of a group is a fraction of its spread), so a zero point buys little accuracy while
costing 16 more bits per group (5.0 instead of 4.5 bits a weight at group 32) and an extra add
per dequantized value. The sign trick gives the 16th level to the side the largest value is
on, which is where a symmetric [-7, 7] grid would waste it. Measured in
benchmarks/results/quantize.md (val perplexity at each group size).

Scales are rounded to float16 before q is computed (and q computed with the rounded scale), so
a checkpoint can store them as float16 and a GGUF Q8_0 / Q4_0 block holds them exactly; in
memory and in the kernels they are float32. Sources: ggml's block layouts as the `gguf`
package's quants.py (Q8_0, Q4_0 classes) reads and writes them.

Bad input: a group that does not divide C, or (int4) is not a multiple of 32, is refused with a
QuantizeError naming the layer (we do not pad: a padded matrix would not be the layer's shape,
and every model shape we build has C a multiple of 32).
"""
import numpy as np

from ..errors import MicrogptError

QBLOCK = 32                 # the int4 packing block (Q4_0's), and Q8_0's block
SCHEMES = ("int8", "int4")
INT4_GROUPS = (32, 64, 128)


class QuantizeError(MicrogptError):
    """A quantization request that cannot be honoured (bad group, already quantized ...)."""


def bits_of(scheme):
    if scheme not in SCHEMES:
        raise QuantizeError(f"unknown quantization scheme {scheme!r}: choose one of {', '.join(SCHEMES)}")
    return 8 if scheme == "int8" else 4


def check_group(scheme, group, in_features, where="a layer"):
    """The group size to use for a layer of `in_features` inputs (None: the scheme's default)."""
    if group is None or group == 0:
        group = in_features if scheme == "int8" else QBLOCK
    group = int(group)
    if group < 1 or in_features % group:
        raise QuantizeError(f"{where}: group {group} does not divide its {in_features} inputs; "
                            f"choose a group that divides {in_features} (we do not pad)")
    if scheme == "int4" and group % QBLOCK:
        raise QuantizeError(f"{where}: int4 groups are multiples of {QBLOCK} (32, 64, 128), not {group}")
    return group


def _fp16_scales(d):
    return d.astype(np.float16).astype(np.float32)


def quantize_int8(w, group):
    """(q int8 (OC, C), d float32 (OC, C // group)) with W ~ d q (see the module docstring)."""
    w = np.asarray(w, dtype=np.float32)
    oc, c = w.shape
    blocks = w.reshape(oc, c // group, group)
    d = _fp16_scales(np.abs(blocks).max(axis=2) / 127.0)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, 0.0, 1.0 / d).astype(np.float32)
    q = np.clip(np.rint(blocks * inv[:, :, None]), -127, 127).astype(np.int8)
    return q.reshape(oc, c), d


def pack_int4(q):
    """(OC, C) values in [-8, 7] -> (OC, C // 2) bytes, Q4_0's nibble order per 32-block."""
    oc, c = q.shape
    u = (q.astype(np.int16) + 8).astype(np.uint8).reshape(oc, c // QBLOCK, QBLOCK)
    return (u[:, :, :QBLOCK // 2] | (u[:, :, QBLOCK // 2:] << np.uint8(4))).reshape(oc, c // 2)


def unpack_int4(packed):
    """The inverse of pack_int4: (OC, C // 2) bytes -> (OC, C) int8 values in [-8, 7]."""
    oc, half = packed.shape
    blocks = packed.reshape(oc, half // (QBLOCK // 2), QBLOCK // 2)
    low = (blocks & 0x0F).astype(np.int8) - 8
    high = (blocks >> 4).astype(np.int8) - 8
    return np.concatenate([low, high], axis=2).reshape(oc, 2 * half)


def quantize_int4(w, group):
    """(packed uint8 (OC, C // 2), d float32 (OC, C // group)) with W ~ d q (module docstring)."""
    w = np.asarray(w, dtype=np.float32)
    oc, c = w.shape
    blocks = w.reshape(oc, c // group, group)
    at = np.abs(blocks).argmax(axis=2)[:, :, None]
    signed_max = np.take_along_axis(blocks, at, axis=2)[:, :, 0]
    d = _fp16_scales(signed_max / -8.0)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, 0.0, 1.0 / d).astype(np.float32)
    q = np.clip(np.floor(blocks * inv[:, :, None] + np.float32(8.5)), 0, 15).astype(np.int16) - 8
    return pack_int4(q.reshape(oc, c).astype(np.int8)), d


def quantize(w, scheme, group):
    """(w_q, w_scale) of matrix w in `scheme` with `group` (already checked)."""
    return quantize_int8(w, group) if scheme == "int8" else quantize_int4(w, group)


def dequantize(w_q, w_scale, scheme, group):
    """The float32 matrix a quantized one stands for (NumPy; the kernels have their own)."""
    q = w_q if scheme == "int8" else unpack_int4(w_q)
    oc, c = q.shape
    return (q.reshape(oc, c // group, group).astype(np.float32) * w_scale[:, :, None]).reshape(oc, c)


def bytes_per_weight(scheme, group, fp16_scales=True):
    """Storage cost of one weight, scales included."""
    scale_bits = 16 if fp16_scales else 32
    return ((8 if scheme == "int8" else 4) + scale_bits / group) / 8
