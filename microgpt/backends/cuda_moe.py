"""The CUDA backend's mixture-of-experts kernels (cuda/moe.cu), on DeviceArray.

Same names, arguments and meaning as backends/reference.py's "mixture of experts" section.
The routing plan (token_index, offsets) is built on the host by nn/moe.py, which needs the
router's choices there anyway (top-k, then a sort by expert); a host plan is checked here
before upload, so no kernel is given an id outside its arrays (a plan already on the device
was made from a checked one).
"""
import numpy as np

from ..errors import ShapeError
from .cuda_runtime import DeviceArray, call, empty, on_device, require_f32


def _plan(op, name, a, length, upper=None, offsets=False):
    """A routing array (host or device) as a device int64 array of `length`, checked on the host."""
    if not isinstance(a, DeviceArray):
        host = np.asarray(a)
        if host.dtype != np.int64 or host.shape != (length,):
            raise ShapeError(f"{op}: {name} must be int64 of shape ({length},), got {host.dtype} {host.shape}")
        if offsets:
            if host[0] != 0 or host[-1] != upper or np.any(np.diff(host) < 0):
                raise ShapeError(f"{op}: offsets must rise from 0 to R={upper}, got {host.tolist()}")
        elif length and (host.min() < 0 or host.max() >= upper):
            raise ShapeError(f"{op}: {name} must lie in [0, {upper}), got [{host.min()}, {host.max()}]")
    a = on_device(a, np.int64)
    if a.dtype != np.int64 or a.shape != (length,):
        raise ShapeError(f"{op}: {name} must be int64 of shape ({length},), got {a.dtype} {a.shape}")
    return a


def _matrix(op, name, a, ndim=2):
    a = on_device(a)
    require_f32(op, a)
    if a.ndim != ndim:
        raise ShapeError(f"{op}: {name} must have {ndim} axes, got shape {a.shape}")
    return a


def moe_permute_forward(x, token_index):
    op = "moe_permute_forward"
    x = _matrix(op, "x", x)
    rows = int(np.shape(token_index)[0])
    token_index = _plan(op, "token_index", token_index, rows, x.shape[0])
    out = empty((rows, x.shape[1]), np.float32)
    call(op, out.ptr, x.ptr, token_index.ptr, x.shape[0], rows, x.shape[1])
    return out


def moe_permute_backward(dout, token_index, num_tokens):
    op = "moe_permute_backward"
    dout = _matrix(op, "dout", dout)
    num_tokens = int(num_tokens)
    token_index = _plan(op, "token_index", token_index, dout.shape[0], num_tokens)
    dx = empty((num_tokens, dout.shape[1]), np.float32)
    call(op, dx.ptr, dout.ptr, token_index.ptr, num_tokens, dout.shape[0], dout.shape[1])
    return dx


def _grouped(op, x, w, offsets):
    x, w = _matrix(op, "x", x), _matrix(op, "w", w, 3)
    if w.shape[2] != x.shape[1]:
        raise ShapeError(f"{op}: x {x.shape} does not fit expert weights {w.shape} (E, OC, C)")
    offsets = _plan(op, "offsets", offsets, w.shape[0] + 1, x.shape[0], offsets=True)
    return x, w, offsets


def grouped_matmul_forward(x, w, offsets):
    op = "grouped_matmul_forward"
    x, w, offsets = _grouped(op, x, w, offsets)
    out = empty((x.shape[0], w.shape[1]), np.float32)
    call(op, out.ptr, x.ptr, w.ptr, offsets.ptr, x.shape[0], w.shape[0], w.shape[2], w.shape[1])
    return out


def grouped_matmul_backward(dout, x, w, offsets):
    op = "grouped_matmul_backward"
    x, w, offsets = _grouped(op, x, w, offsets)
    dout = _matrix(op, "dout", dout)
    if dout.shape != (x.shape[0], w.shape[1]):
        raise ShapeError(f"{op}: dout {dout.shape} must be {(x.shape[0], w.shape[1])}")
    dx, dw = empty(x.shape, np.float32), empty(w.shape, np.float32)
    call(op, dx.ptr, dw.ptr, dout.ptr, x.ptr, w.ptr, offsets.ptr, x.shape[0], w.shape[0], w.shape[2], w.shape[1])
    return dx, dw


def moe_combine_forward(y, weights, token_index, num_tokens):
    op = "moe_combine_forward"
    y, weights = _matrix(op, "y", y), _matrix(op, "weights", weights, 1)
    if weights.shape != (y.shape[0],):
        raise ShapeError(f"{op}: weights {weights.shape} must be ({y.shape[0]},)")
    num_tokens = int(num_tokens)
    token_index = _plan(op, "token_index", token_index, y.shape[0], num_tokens)
    out = empty((num_tokens, y.shape[1]), np.float32)
    call(op, out.ptr, y.ptr, weights.ptr, token_index.ptr, num_tokens, y.shape[0], y.shape[1])
    return out


def moe_combine_backward(dout, y, weights, token_index):
    op = "moe_combine_backward"
    dout, y = _matrix(op, "dout", dout), _matrix(op, "y", y)
    weights = _matrix(op, "weights", weights, 1)
    if weights.shape != (y.shape[0],) or dout.shape[1] != y.shape[1]:
        raise ShapeError(f"{op}: dout {dout.shape}, y {y.shape} and weights {weights.shape} do not fit")
    token_index = _plan(op, "token_index", token_index, y.shape[0], dout.shape[0])
    dy, dweights = empty(y.shape, np.float32), empty(weights.shape, np.float32)
    call(op, dy.ptr, dweights.ptr, dout.ptr, y.ptr, weights.ptr, token_index.ptr, dout.shape[0], y.shape[0],
         y.shape[1])
    return dy, dweights
