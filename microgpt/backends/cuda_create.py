"""The CUDA backend's array creation and transfer: asarray, to_numpy, zeros, full.

Each function has the name, signature and meaning of its twin in reference.py. Arrays are
DeviceArray (cuda_runtime.py); asarray copies a host array onto the device (or a
DeviceArray into a new one), to_numpy copies back, zeros and full fill new arrays with one
memset or one fill kernel.
"""
import numpy as np

from ..errors import DTypeError
from . import cuda_runtime as rt
from .cuda_runtime import DeviceArray, call, download, empty, upload


def shape_arg(shape):
    """A shape given as an int or a sequence of ints, as a tuple of Python ints."""
    return (int(shape),) if np.isscalar(shape) else tuple(int(n) for n in shape)


def asarray(host_array, dtype):
    if isinstance(host_array, DeviceArray):
        if dtype is not None and np.dtype(dtype) != host_array.dtype:
            raise DTypeError(f"asarray: cannot convert a {host_array.dtype} DeviceArray to {np.dtype(dtype)} "
                             "on the device")
        out = empty(host_array.shape, host_array.dtype)
        if out.nbytes:
            call("cuda_memcpy_d2d", out.ptr, host_array.ptr, out.nbytes)
        return out
    return upload(host_array, dtype)


def to_numpy(a):
    return download(a) if isinstance(a, DeviceArray) else np.asarray(a)


def zeros(shape, dtype):
    out = empty(shape if isinstance(shape, tuple) else shape_arg(shape), dtype)
    if out.nbytes:
        call("cuda_memset", out.ptr, 0, out.nbytes)
    return out


def full(shape, value, dtype):
    out = empty(shape if isinstance(shape, tuple) else shape_arg(shape), dtype)
    if out.dtype == np.float32:
        call("fill_f32", rt.ffi.cast("float*", out.addr), float(value), out.size)
    else:
        call("fill_i64", rt.ffi.cast("int64_t*", out.addr), int(value), out.size)
    return out
