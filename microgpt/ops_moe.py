"""The mixture-of-experts ops: one graph node each over the kernels of backends/reference.py's
"mixture of experts" section (nn/moe.py composes them into the MoE layer).

    moe_permute(x, token_index)              (N, C) -> (R, C): row r copies token token_index[r]
    grouped_linear(x, w, offsets)            (R, C) -> (R, OC): row r times w[e]^T, e its expert
    moe_combine(y, weights, token_index, n)  (R, C) -> (N, C): each token's rows, router-weighted

The routing plan (token_index, offsets) is host data, like attention's segment ids: integer
bookkeeping chosen by the router's top-k, which gets no gradient (top-k is piecewise
constant). The gradient reaches the router through `weights` (moe_combine's second input),
which nn/moe.py computes from the router's softmax with differentiable ops.
"""
import numpy as np

from .errors import DTypeError, ShapeError
from .op_registry import _send, op
from .tensor import Tensor


def _plan(array, name, length, device):
    """A host int64 plan array of `length`, uploaded to `device`'s backend."""
    host = np.asarray(array.numpy() if isinstance(array, Tensor) else array)
    if not np.issubdtype(host.dtype, np.integer) or host.shape != (length,):
        raise ShapeError(f"{name} must be {length} integers, got {host.dtype} {host.shape}")
    from . import backends
    return backends.get(device).asarray(host.astype(np.int64), np.int64)


def _matrix(name, t):
    if t.ndim != 2:
        raise ShapeError(f"{name} must be a (rows, channels) matrix, got shape {t.shape}")


@op
def moe_permute(x, token_index):
    """x (N, C) -> (R, C) with row r = x[token_index[r]]; backward sums each token's rows."""
    _matrix("moe_permute: x", x)
    n = x.shape[0]
    rows = len(np.asarray(token_index))
    token_index = _plan(token_index, "moe_permute: token_index", rows, x.device)
    be = x.backend
    out = be.moe_permute_forward(x.data, token_index)
    return Tensor._from_op(out, (x,), lambda dout: _send(x, be.moe_permute_backward(dout, token_index, n)),
                           "moe_permute")


@op
def grouped_linear(x, w, offsets):
    """x (R, C) rows sorted by expert, w (E, OC, C) -> (R, OC): out[r] = x[r] @ w[e]^T for the
    rows offsets[e] .. offsets[e+1] - 1 of expert e, all experts in one kernel call."""
    _matrix("grouped_linear: x", x)
    if w.ndim != 3 or w.shape[2] != x.shape[1]:
        raise ShapeError(f"grouped_linear: x {x.shape} does not fit expert weights {w.shape} (E, OC, C)")
    if x.dtype != w.dtype or x.device != w.device:
        raise DTypeError(f"grouped_linear: x is {x.dtype}/{x.device}, w {w.dtype}/{w.device}")
    host = np.asarray(offsets, dtype=np.int64)
    if host.shape != (w.shape[0] + 1,) or host[0] != 0 or host[-1] != x.shape[0] or np.any(np.diff(host) < 0):
        raise ShapeError(f"grouped_linear: offsets must be {w.shape[0] + 1} row starts rising from 0 to "
                         f"{x.shape[0]}, got {host.tolist()}")
    offsets = _plan(host, "grouped_linear: offsets", w.shape[0] + 1, x.device)
    be = x.backend
    out = be.grouped_matmul_forward(x.data, w.data, offsets)

    def backward(dout):
        dx, dw = be.grouped_matmul_backward(dout, x.data, w.data, offsets)
        _send(x, dx)
        _send(w, dw)
    return Tensor._from_op(out, (x, w), backward, "grouped_linear")


@op
def moe_combine(y, weights, token_index, num_tokens):
    """y (R, C), weights (R,) -> (num_tokens, C): out[n] = sum of weights[r] y[r] over token n's rows."""
    _matrix("moe_combine: y", y)
    if weights.shape != (y.shape[0],):
        raise ShapeError(f"moe_combine: weights {weights.shape} must be ({y.shape[0]},), one per row")
    if y.dtype != weights.dtype:
        raise DTypeError(f"moe_combine: y is {y.dtype}, weights {weights.dtype}")
    token_index = _plan(token_index, "moe_combine: token_index", y.shape[0], y.device)
    be = y.backend
    out = be.moe_combine_forward(y.data, weights.data, token_index, int(num_tokens))

    def backward(dout):
        dy, dweights = be.moe_combine_backward(dout, y.data, weights.data, token_index)
        _send(y, dy)
        _send(weights, dweights)
    return Tensor._from_op(out, (y, weights), backward, "moe_combine")
