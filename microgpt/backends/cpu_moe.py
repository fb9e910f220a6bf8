"""The C backend's mixture-of-experts kernels (csrc/moe.c), through cffi.

    moe_permute_forward / _backward       gather each routed row's token / scatter-add back
    grouped_matmul_forward / _backward    one linear map per expert over its rows, one call
    moe_combine_forward / _backward       the router-weighted sum of each token's k rows

Rows are sorted by expert (nn/moe.py builds the plan: token_index, offsets); the reference
(backends/reference.py, "mixture of experts") is the specification. Each binding checks
dtypes, contiguity, shapes and the plan itself (ids in range, offsets nondecreasing from 0
to R) before any pointer reaches C. float64 inputs take the reference path, as everywhere in
this backend.

The grouped matmul has three rungs (csrc/moe.c): v1_loop, the per-expert loop over the
threaded GEMM; v2_tiled, one task list of (expert, row block) products shared by the threads;
v3_packed, each expert's operand packed once per call and shared by its tasks, dw threaded
over output tiles; production is v3. RUNGS and rung() expose them one by one for tests and
benchmarks.
"""
import numpy as np

from ..errors import ShapeError
from . import cpu_checks as check
from . import reference as _ref
from .cpu_lib import fp as _fp
from .cpu_lib import ip as _ip
from .cpu_lib import lib


def _ids(op, token_index, num_tokens, rows):
    check.array(op, "token_index", token_index)
    if token_index.dtype != np.int64 or token_index.shape != (rows,):
        raise ShapeError(f"{op}: token_index must be int64 of shape ({rows},), got "
                         f"{token_index.dtype} {token_index.shape}")
    if rows and (token_index.min() < 0 or token_index.max() >= num_tokens):
        raise ShapeError(f"{op}: token_index must lie in [0, {num_tokens}), got "
                         f"[{token_index.min()}, {token_index.max()}]")


def _offsets(op, offsets, experts, rows):
    check.array(op, "offsets", offsets)
    if offsets.dtype != np.int64 or offsets.shape != (experts + 1,):
        raise ShapeError(f"{op}: offsets must be int64 of shape ({experts + 1},), got {offsets.dtype} "
                         f"{offsets.shape}")
    if offsets[0] != 0 or offsets[-1] != rows or np.any(np.diff(offsets) < 0):
        raise ShapeError(f"{op}: offsets must rise from 0 to R={rows} (an expert's rows in order), "
                         f"got {offsets.tolist()}")


def _matrix(op, name, a, ndim=2):
    check.array(op, name, a)
    if a.ndim != ndim:
        raise ShapeError(f"{op}: {name} must have {ndim} axes, got shape {a.shape}")


def moe_permute_forward(x, token_index):
    op = "moe_permute_forward"
    is32 = check.floats(op, x=x)
    _matrix(op, "x", x)
    _ids(op, token_index, x.shape[0], token_index.shape[0] if token_index.ndim == 1 else -1)
    if not is32:
        return _ref.moe_permute_forward(x, token_index)
    out = np.empty((token_index.shape[0], x.shape[1]), dtype=np.float32)
    lib.moe_permute_forward(_fp(out), _fp(x), _ip(token_index), x.shape[0], token_index.shape[0], x.shape[1])
    return out


def moe_permute_backward(dout, token_index, num_tokens):
    op = "moe_permute_backward"
    is32 = check.floats(op, dout=dout)
    _matrix(op, "dout", dout)
    num_tokens = check.integer(op, "num_tokens", num_tokens, low=0)
    _ids(op, token_index, num_tokens, dout.shape[0])
    if not is32:
        return _ref.moe_permute_backward(dout, token_index, num_tokens)
    dx = np.empty((num_tokens, dout.shape[1]), dtype=np.float32)
    lib.moe_permute_backward(_fp(dx), _fp(dout), _ip(token_index), num_tokens, dout.shape[0], dout.shape[1])
    return dx


def _grouped_check(op, x, w, offsets):
    _matrix(op, "x", x)
    _matrix(op, "w", w, 3)
    if w.shape[2] != x.shape[1]:
        raise ShapeError(f"{op}: x {x.shape} does not fit expert weights {w.shape} (E, OC, C)")
    _offsets(op, offsets, w.shape[0], x.shape[0])
    return x.shape[0], w.shape[0], w.shape[2], w.shape[1]


def _grouped_forward(c_fn, x, w, offsets):
    op = "grouped_matmul_forward"
    is32 = check.floats(op, x=x, w=w)
    rows, experts, c, oc = _grouped_check(op, x, w, offsets)
    if not is32:
        return _ref.grouped_matmul_forward(x, w, offsets)
    out = np.empty((rows, oc), dtype=np.float32)
    c_fn(_fp(out), _fp(x), _fp(w), _ip(offsets), rows, experts, c, oc)
    return out


def _grouped_backward(c_fn, dout, x, w, offsets):
    op = "grouped_matmul_backward"
    is32 = check.floats(op, dout=dout, x=x, w=w)
    rows, experts, c, oc = _grouped_check(op, x, w, offsets)
    check.shape(op, "dout", dout, (rows, oc))
    if not is32:
        return _ref.grouped_matmul_backward(dout, x, w, offsets)
    dx = np.empty_like(x)
    dw = np.empty_like(w)
    c_fn(_fp(dx), _fp(dw), _fp(dout), _fp(x), _fp(w), _ip(offsets), rows, experts, c, oc)
    return dx, dw


def grouped_matmul_forward(x, w, offsets):
    return _grouped_forward(lib.grouped_matmul_forward, x, w, offsets)


def grouped_matmul_backward(dout, x, w, offsets):
    return _grouped_backward(lib.grouped_matmul_backward, dout, x, w, offsets)


def moe_combine_forward(y, weights, token_index, num_tokens):
    op = "moe_combine_forward"
    is32 = check.floats(op, y=y, weights=weights)
    _matrix(op, "y", y)
    check.shape(op, "weights", weights, (y.shape[0],))
    num_tokens = check.integer(op, "num_tokens", num_tokens, low=0)
    _ids(op, token_index, num_tokens, y.shape[0])
    if not is32:
        return _ref.moe_combine_forward(y, weights, token_index, num_tokens)
    out = np.empty((num_tokens, y.shape[1]), dtype=np.float32)
    lib.moe_combine_forward(_fp(out), _fp(y), _fp(weights), _ip(token_index), num_tokens, y.shape[0],
                            y.shape[1])
    return out


def moe_combine_backward(dout, y, weights, token_index):
    op = "moe_combine_backward"
    is32 = check.floats(op, dout=dout, y=y, weights=weights)
    _matrix(op, "y", y)
    _matrix(op, "dout", dout)
    check.shape(op, "weights", weights, (y.shape[0],))
    if dout.shape[1] != y.shape[1]:
        raise ShapeError(f"{op}: dout {dout.shape} and y {y.shape} differ in channels")
    _ids(op, token_index, dout.shape[0], y.shape[0])
    if not is32:
        return _ref.moe_combine_backward(dout, y, weights, token_index)
    dy = np.empty_like(y)
    dweights = np.empty_like(weights)
    lib.moe_combine_backward(_fp(dy), _fp(dweights), _fp(dout), _fp(y), _fp(weights), _ip(token_index),
                             dout.shape[0], y.shape[0], y.shape[1])
    return dy, dweights


# The grouped matmul's rungs, callable one by one (tests and benchmarks).
RUNGS = ("v1_loop", "v2_tiled", "v3_packed")


def rung(kernel, name):
    """grouped_matmul_forward / grouped_matmul_backward on one rung, same arguments."""
    c_fn = getattr(lib, f"{kernel}_{name}")
    if kernel == "grouped_matmul_forward":
        return lambda x, w, offsets: _grouped_forward(c_fn, x, w, offsets)
    return lambda dout, x, w, offsets: _grouped_backward(c_fn, dout, x, w, offsets)
