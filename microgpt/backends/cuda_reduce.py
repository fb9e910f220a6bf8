"""The CUDA backend's reductions: sum, max, the gradient of max, and sum_to_shape (the
gradient of broadcasting).

Each function has the name, signature and meaning of its twin in reference.py and works on
DeviceArray. The reduced axes, when adjacent, make the array an (outer, R, inner) block and
one kernel (reduce.cu reduce_axes) reduces the middle; otherwise a permute first moves them
to the end, so the block is (kept, R, 1). A permute is also taken when outer exceeds the
65535 blocks of a grid's y axis and inner > 1.
"""
import math

from ..errors import ShapeError
from .cuda_create import zeros
from .cuda_elementwise import binary, div, mul
from .cuda_runtime import call, empty, on_device, require_f32, view
from .cuda_shape import normalize_axes, permute


def _reduce(a, axes, keepdims, is_max):
    a = on_device(a)
    name = "max" if is_max else "sum"
    require_f32(name, a)
    axes = normalize_axes(axes, a.ndim)
    kept = tuple(1 if i in axes else n for i, n in enumerate(a.shape))
    shape = kept if keepdims else tuple(n for i, n in enumerate(a.shape) if i not in axes)
    reduced = math.prod(a.shape[i] for i in axes)
    if reduced == 0:
        if is_max:
            raise ShapeError(f"max: zero-size reduction over axes {axes} of {a.shape}")
        return zeros(shape, a.dtype)
    out = empty(shape, a.dtype)
    if out.size == 0:
        return out
    adjacent = not axes or axes == tuple(range(axes[0], axes[-1] + 1))
    outer = math.prod(a.shape[:axes[0]]) if axes else a.size
    inner = math.prod(a.shape[axes[-1] + 1:]) if axes else 1
    if not adjacent or (outer > 65535 and inner > 1):
        rest = tuple(i for i in range(a.ndim) if i not in axes)
        a = permute(a, rest + axes)
        outer, inner = out.size, 1
    call("reduce_axes", out.ptr, a.ptr, outer, reduced, inner, int(is_max))
    return out


def sum(a, axes, keepdims):   # noqa: A001 - the contract's name
    return _reduce(a, axes, keepdims, False)


def max(a, axes, keepdims):   # noqa: A001
    return _reduce(a, axes, keepdims, True)


def max_backward(dout, a, out, axes):
    # is_max = (a == out), split dout evenly among ties: is_max * dout / count(is_max)
    a = on_device(a)
    axes = normalize_axes(axes, a.ndim)
    kept = tuple(1 if i in axes else n for i, n in enumerate(a.shape))
    out, dout = on_device(out), on_device(dout)
    out = view(out, kept) if out.ndim < a.ndim else out
    dout = view(dout, kept) if dout.ndim < a.ndim else dout
    is_max = binary(a, out, "equal")
    ties = sum(is_max, axes, True)
    return mul(is_max, div(dout, ties))


def sum_to_shape(g, shape):
    g = on_device(g)
    shape = tuple(int(n) for n in shape)
    extra = g.ndim - len(shape)
    if extra < 0:
        raise ShapeError(f"sum_to_shape: {g.shape} has fewer axes than {shape}")
    axes = tuple(range(extra)) + tuple(extra + i for i, n in enumerate(shape) if n == 1 and g.shape[extra + i] != 1)
    if not axes:
        return g
    return view(sum(g, axes, True), shape)
