"""The CUDA backend's shape bookkeeping: broadcast_to, reshape, permute, concatenate, and
the stride arithmetic that elementwise math and indexing share.

Each contract function has the name, signature and meaning of its twin in reference.py and
works on DeviceArray (host arrays passed in are uploaded). DeviceArray is always
C-contiguous, so reshape is a view and every other change of shape is one strided copy
(shape.cu strided_copy): the output's sizes, and for each output axis the element stride
it walks in the input (0 along a broadcast axis).
"""
import builtins
import math

import numpy as np

from ..errors import DTypeError, ShapeError
from .cuda_create import shape_arg
from .cuda_runtime import call, empty, on_device, view


def contiguous_strides(shape):
    """Element strides of a C-contiguous array of `shape`."""
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def broadcast_strides(shape, op_shape):
    """Element strides of a contiguous operand of op_shape seen through broadcast `shape`:
    its own strides, right-aligned, and 0 along every axis where it has size 1."""
    op_shape = (1,) * (len(shape) - len(op_shape)) + tuple(op_shape)
    own = contiguous_strides(op_shape)
    return [0 if n == 1 else s for n, s in zip(op_shape, own)]


def normalize_axes(axes, ndim):
    """Sorted non-negative axes (None: all of them); ShapeError when out of range or repeated."""
    if axes is None:
        return tuple(range(ndim))
    if isinstance(axes, (int, np.integer)):
        axes = (axes,)
    out = []
    for ax in axes:
        if not -ndim <= ax < ndim:
            raise ShapeError(f"axis {ax} is out of range for {ndim} dimensions")
        out.append(int(ax) % ndim)
    if len(set(out)) != len(out):
        raise ShapeError(f"repeated axis in {tuple(axes)}")
    return tuple(sorted(out))


def strided_copy(a, sizes, strides, offset):
    """A new contiguous array of `sizes` whose element i is a[offset + sum_d i_d strides_d]."""
    out = empty(sizes, a.dtype)
    if out.size:
        if len(sizes) > 8:
            raise ShapeError(f"more than 8 axes ({sizes}) in a strided copy")
        call("strided_copy", out.ptr, a.ptr, a.dtype.itemsize, len(sizes), list(sizes), list(strides), offset, out.size)
    return out


def broadcast_to(a, shape):
    a = on_device(a)
    shape = tuple(int(n) for n in shape)
    try:
        ok = np.broadcast_shapes(a.shape, shape) == shape
    except ValueError:
        ok = False
    if not ok:
        raise ShapeError(f"broadcast_to: {a.shape} does not broadcast to {shape}")
    return strided_copy(a, shape, broadcast_strides(shape, a.shape), 0)


def reshape(a, shape):
    a = on_device(a)
    shape = shape_arg(shape)
    if shape.count(-1) > 1:
        raise ShapeError(f"reshape: more than one -1 in {shape}")
    if -1 in shape:
        known = math.prod(n for n in shape if n != -1)
        if known == 0 or a.size % known:
            raise ShapeError(f"reshape: cannot reshape {a.shape} into {shape}")
        shape = tuple(a.size // known if n == -1 else n for n in shape)
    if math.prod(shape) != a.size or any(n < 0 for n in shape):
        raise ShapeError(f"reshape: cannot reshape {a.shape} into {shape}")
    return view(a, shape)


def permute(a, axes):
    a = on_device(a)
    axes = tuple(int(ax) % a.ndim if a.ndim else ax for ax in axes)
    if sorted(axes) != list(range(a.ndim)):
        raise ShapeError(f"permute: {axes} is not a permutation of {a.ndim} axes")
    strides = contiguous_strides(a.shape)
    return strided_copy(a, tuple(a.shape[i] for i in axes), tuple(strides[i] for i in axes), 0)


def concatenate(arrays, axis):
    arrays = [on_device(x) for x in arrays]
    if not arrays:
        raise ShapeError("concatenate: needs at least one array")
    first = arrays[0]
    if first.ndim == 0:
        raise ShapeError("concatenate: zero-dimensional arrays cannot be concatenated")
    axis = normalize_axes((axis,), first.ndim)[0]
    for x in arrays[1:]:
        if x.dtype != first.dtype:
            raise DTypeError(f"concatenate: mixed dtypes {first.dtype} and {x.dtype}")
        if x.ndim != first.ndim or any(x.shape[i] != first.shape[i] for i in range(x.ndim) if i != axis):
            raise ShapeError(f"concatenate: shapes {first.shape} and {x.shape} differ off axis {axis}")
    shape = list(first.shape)
    shape[axis] = builtins.sum(x.shape[axis] for x in arrays)
    out = empty(tuple(shape), first.dtype)
    strides = contiguous_strides(out.shape)
    start = 0
    for x in arrays:       # each input is written into its slab of out: a strided scatter
        if x.size:
            call("strided_scatter", out.ptr, x.ptr, x.dtype.itemsize, x.ndim, list(x.shape), list(strides),
                 start * strides[axis], x.size)
        start += x.shape[axis]
    return out
