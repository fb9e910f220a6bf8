"""The CUDA backend's indexing: getitem and its backward (scatter) on DeviceArray.

- Basic indices (ints, slices with any step, None, Ellipsis) become one strided copy
  (shape.cu strided_copy) over the view's sizes, strides and offset; the backward writes
  dout into that view of a zeroed array (strided_scatter: a view's elements are distinct).
- One integer array on the first axis, the other axes whole (`a[ids]`, `a[ids, :]`), is a
  row gather (gather_rows); its backward a scatter-add (scatter_add_rows), so repeated ids
  accumulate as np.add.at does.
- Any other indexing (several index arrays, boolean masks) takes a documented host round
  trip: it is rare and never in a training step's hot path.
Index arrays arrive as host NumPy arrays (ops.getitem passes them so) and are checked on
the host; DeviceArray indices are copied to the host first.
"""
import builtins
import math

import numpy as np

from ..errors import ShapeError
from .cuda_runtime import DeviceArray, bad_flag, call, download, empty, on_device, upload
from .cuda_create import zeros
from .cuda_shape import contiguous_strides, strided_copy


def _basic_view(shape, index):
    """(sizes, strides, offset) of a[index] for basic indices, or None if index is not basic."""
    if not isinstance(index, tuple):
        index = (index,)
    if any(not (isinstance(i, (int, np.integer, slice)) or i is None or i is Ellipsis) for i in index):
        return None
    if builtins.sum(i is Ellipsis for i in index) > 1:
        raise ShapeError("getitem: more than one Ellipsis")
    used = builtins.sum(1 for i in index if i is not None and i is not Ellipsis)
    if used > len(shape):
        raise ShapeError(f"getitem: too many indices ({used}) for shape {shape}")
    if Ellipsis in index:
        at = index.index(Ellipsis)
        index = index[:at] + (slice(None),) * (len(shape) - used) + index[at + 1:]
    else:
        index = index + (slice(None),) * (len(shape) - used)
    strides = contiguous_strides(shape)
    sizes, out_strides, offset, axis = [], [], 0, 0
    for i in index:
        if i is None:
            sizes.append(1)
            out_strides.append(0)
            continue
        n, s = shape[axis], strides[axis]
        if isinstance(i, slice):
            start, stop, step = i.indices(n)
            sizes.append(len(range(start, stop, step)))
            out_strides.append(s * step)
            offset += start * s
        else:
            k = int(i)
            if not -n <= k < n:
                raise ShapeError(f"getitem: index {k} is out of bounds for axis {axis} with size {n}")
            offset += (k % n) * s
        axis += 1
    return tuple(sizes), tuple(out_strides), offset


def _row_index(shape, index):
    """Host int64 ids when index is one integer array on axis 0 (rest full slices), else None."""
    if not isinstance(index, tuple):
        index = (index,)
    if not index or not isinstance(index[0], (np.ndarray, list)):
        return None
    if any(not (isinstance(i, slice) and i == slice(None)) for i in index[1:]) or not shape:
        return None
    ids = np.asarray(index[0])
    if ids.dtype.kind not in "iu":
        return None
    if ids.size and (ids.min() < -shape[0] or ids.max() >= shape[0]):
        raise ShapeError(f"getitem: index out of bounds for axis 0 with size {shape[0]}")
    return np.where(ids < 0, ids + shape[0], ids).astype(np.int64)


def getitem(a, index):
    a = on_device(a)
    basic = _basic_view(a.shape, index)
    if basic is not None:
        return strided_copy(a, *basic)
    ids = _row_index(a.shape, index)
    if ids is not None:
        width = math.prod(a.shape[1:])
        out = empty(ids.shape + a.shape[1:], a.dtype)
        if out.size:
            device_ids = upload(ids, np.int64)
            flag = bad_flag("getitem", "an index out of range")
            call("gather_rows", out.ptr, flag, a.ptr, device_ids.ptr, ids.size, a.shape[0], width, a.dtype.itemsize)
        return out
    # Rare indexing (several index arrays, masks): host round trip, see the module docstring.
    return upload(download(a)[_host_index(index)], a.dtype)


def _host_index(index):
    if isinstance(index, tuple):
        return tuple(_host_index(i) for i in index)
    return download(index) if isinstance(index, DeviceArray) else index


def getitem_backward(dout, shape, index):
    dout = on_device(dout)
    shape = tuple(int(n) for n in shape)
    da = zeros(shape, dout.dtype)
    basic = _basic_view(shape, index)
    if basic is not None:
        sizes, strides, offset = basic
        if tuple(sizes) != dout.shape:
            raise ShapeError(f"getitem_backward: dout {dout.shape} does not fit index result {sizes}")
        if dout.size:
            call("strided_scatter", da.ptr, dout.ptr, dout.dtype.itemsize, len(sizes), list(sizes), list(strides),
                 offset, dout.size)
        return da
    ids = _row_index(shape, index)
    if ids is not None and dout.dtype == np.float32:
        if dout.shape != ids.shape + shape[1:]:
            raise ShapeError(f"getitem_backward: dout {dout.shape} does not fit index result {ids.shape + shape[1:]}")
        if dout.size:
            device_ids = upload(ids, np.int64)
            flag = bad_flag("getitem_backward", "an index out of range")
            call("scatter_add_rows", da.ptr, flag, dout.ptr, device_ids.ptr, ids.size, shape[0], math.prod(shape[1:]))
        return da
    host = np.zeros(shape, dtype=dout.dtype)          # rare indexing: host round trip
    np.add.at(host, _host_index(index), download(dout))
    return upload(host, dout.dtype)
