"""The CUDA backend's array kernels: creation, transfer, elementwise math with NumPy
broadcasting, reductions over axes, and shape bookkeeping (reshape, permute, getitem ...).

Each function has the name, signature and meaning of its twin in reference.py (read that
file for the formulas) and works on DeviceArray (host arrays passed in are uploaded).

Broadcasting: the output's shape is NumPy's broadcast shape; each operand gets element
strides aligned to it, 0 along axes it is stretched over. Neighbouring axes along which
both operands are contiguous are merged, so equal shapes reach the GPU as one flat axis
and take the contiguous fast path.
Reductions: the reduced axes, when adjacent, make the array an (outer, R, inner) block
and one kernel reduces the middle; otherwise a permute first moves them to the end.
getitem and getitem_backward live in cuda_index.py.
"""
import builtins
import math

import numpy as np

from ..errors import DTypeError, ShapeError
from . import cuda_runtime as rt
from .cuda_runtime import DeviceArray, call, download, empty, on_device, require_f32, upload, view

BINARY = {"add": 0, "sub": 1, "mul": 2, "div": 3, "equal": 4}
UNARY = {"neg": 0, "exp": 1, "log": 2, "sqrt": 3, "tanh": 4, "pow": 5}


def contiguous_strides(shape):
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


# --- arrays: creation, transfer, bookkeeping ---------------------------------------------------------

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
    out = empty(shape if isinstance(shape, tuple) else _shape_arg(shape), dtype)
    if out.nbytes:
        call("cuda_memset", out.ptr, 0, out.nbytes)
    return out


def full(shape, value, dtype):
    out = empty(shape if isinstance(shape, tuple) else _shape_arg(shape), dtype)
    if out.dtype == np.float32:
        call("fill_f32", rt.ffi.cast("float*", out.addr), float(value), out.size)
    else:
        call("fill_i64", rt.ffi.cast("int64_t*", out.addr), int(value), out.size)
    return out


def _shape_arg(shape):
    return (int(shape),) if np.isscalar(shape) else tuple(int(n) for n in shape)


def accumulate(dst, src):
    if not isinstance(dst, DeviceArray):
        raise DTypeError("accumulate: dst must be a DeviceArray")
    if _is_scalar(src):
        call("binary_scalar_op", dst.ptr, dst.ptr, float(src), dst.size, BINARY["add"], 0)
        return
    src = on_device(src)
    require_f32("accumulate", dst, src)
    if np.broadcast_shapes(dst.shape, src.shape) != dst.shape:
        raise ShapeError(f"accumulate: {src.shape} does not broadcast to {dst.shape}")
    _binary_into(dst, dst, src, "add")


# --- elementwise ---------------------------------------------------------------------------------------

def _is_scalar(x):
    return isinstance(x, (int, float, np.number)) or (isinstance(x, np.ndarray) and x.ndim == 0)


def _operand_strides(shape, op_shape):
    """Element strides of a contiguous operand of op_shape seen through broadcast `shape`."""
    op_shape = (1,) * (len(shape) - len(op_shape)) + tuple(op_shape)
    own = contiguous_strides(op_shape)
    return [0 if n == 1 else s for n, s in zip(op_shape, own)]


def _merge_axes(shape, sa, sb):
    """Drop size-1 axes, merge neighbours contiguous in both operands."""
    dims = [(n, a, b) for n, a, b in zip(shape, sa, sb) if n != 1]
    merged = []
    for n, a, b in dims:
        if merged:
            pn, pa, pb = merged[-1]
            if pa == a * n and pb == b * n:
                merged[-1] = (pn * n, a, b)
                continue
        merged.append((n, a, b))
    if not merged:
        merged = [(1, 0, 0)]
    return [m[0] for m in merged], [m[1] for m in merged], [m[2] for m in merged]


def _binary_into(out, a, b, op):
    sizes, sa, sb = _merge_axes(out.shape, _operand_strides(out.shape, a.shape), _operand_strides(out.shape, b.shape))
    if len(sizes) > 8:
        raise ShapeError(f"{op}: more than 8 non-mergeable broadcast axes ({out.shape})")
    call("binary_op", out.ptr, a.ptr, b.ptr, len(sizes), sizes, sa, sb, out.size, BINARY[op])


def _binary(a, b, op):
    if _is_scalar(b) and isinstance(a, DeviceArray):
        require_f32(op, a)
        out = empty(a.shape, a.dtype)
        call("binary_scalar_op", out.ptr, a.ptr, float(b), a.size, BINARY[op], 0)
        return out
    if _is_scalar(a) and isinstance(b, DeviceArray):
        require_f32(op, b)
        out = empty(b.shape, b.dtype)
        call("binary_scalar_op", out.ptr, b.ptr, float(a), b.size, BINARY[op], 1)
        return out
    a, b = on_device(a), on_device(b)
    require_f32(op, a, b)
    try:
        shape = np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ShapeError(f"{op}: shapes {a.shape} and {b.shape} do not broadcast") from None
    out = empty(shape, np.float32)
    if out.size:
        _binary_into(out, a, b, op)
    return out


def add(a, b):
    return _binary(a, b, "add")


def sub(a, b):
    return _binary(a, b, "sub")


def mul(a, b):
    return _binary(a, b, "mul")


def div(a, b):
    return _binary(a, b, "div")


def _unary(a, op, p=0.0):
    a = on_device(a)
    require_f32(op, a)
    out = empty(a.shape, a.dtype)
    call("unary_op", out.ptr, a.ptr, a.size, UNARY[op], float(p))
    return out


def neg(a):
    return _unary(a, "neg")


def pow_scalar(a, p):
    return _unary(a, "pow", p)


def exp(a):
    return _unary(a, "exp")


def log(a):
    return _unary(a, "log")


def sqrt(a):
    return _unary(a, "sqrt")


def tanh(a):
    return _unary(a, "tanh")


def _pointwise(name, x):
    x = on_device(x)
    require_f32(name, x)
    out = empty(x.shape, x.dtype)
    call(name, out.ptr, x.ptr, x.size)
    return out


def _pointwise_backward(name, dout, x):
    dout, x = on_device(dout), on_device(x)
    require_f32(name, dout, x)
    if dout.shape != x.shape:
        raise ShapeError(f"{name}: dout {dout.shape} and x {x.shape} differ")
    dx = empty(x.shape, x.dtype)
    call(name, dx.ptr, dout.ptr, x.ptr, x.size)
    return dx


def relu_forward(x):
    return _pointwise("relu_forward", x)


def relu_backward(dout, x):
    return _pointwise_backward("relu_backward", dout, x)


def gelu_forward(x):
    return _pointwise("gelu_forward", x)


def gelu_backward(dout, x):
    return _pointwise_backward("gelu_backward", dout, x)


def silu_forward(x):
    return _pointwise("silu_forward", x)


def silu_backward(dout, x):
    return _pointwise_backward("silu_backward", dout, x)


# --- reductions ------------------------------------------------------------------------------------------

def _norm_axes(axes, ndim):
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


def _reduce(a, axes, keepdims, is_max):
    a = on_device(a)
    name = "max" if is_max else "sum"
    require_f32(name, a)
    axes = _norm_axes(axes, a.ndim)
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
    axes = _norm_axes(axes, a.ndim)
    kept = tuple(1 if i in axes else n for i, n in enumerate(a.shape))
    out, dout = on_device(out), on_device(dout)
    out = view(out, kept) if out.ndim < a.ndim else out
    dout = view(dout, kept) if dout.ndim < a.ndim else dout
    is_max = _binary(a, out, "equal")
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


# --- shapes --------------------------------------------------------------------------------------------------

def _strided_copy(a, sizes, strides, offset):
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
    return _strided_copy(a, shape, _operand_strides(shape, a.shape), 0)


def reshape(a, shape):
    a = on_device(a)
    shape = _shape_arg(shape)
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
    return _strided_copy(a, tuple(a.shape[i] for i in axes), tuple(strides[i] for i in axes), 0)


def concatenate(arrays, axis):
    arrays = [on_device(x) for x in arrays]
    if not arrays:
        raise ShapeError("concatenate: needs at least one array")
    first = arrays[0]
    if first.ndim == 0:
        raise ShapeError("concatenate: zero-dimensional arrays cannot be concatenated")
    axis = _norm_axes((axis,), first.ndim)[0]
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
    for x in arrays:
        if x.size:
            call("strided_scatter", out.ptr, x.ptr, x.dtype.itemsize, x.ndim, list(x.shape), list(strides),
                 start * strides[axis], x.size)
        start += x.shape[axis]
    return out


__all__ = ["asarray", "to_numpy", "zeros", "full", "accumulate", "add", "sub", "mul", "div", "neg", "pow_scalar",
           "exp", "log", "sqrt", "tanh", "relu_forward", "relu_backward", "gelu_forward", "gelu_backward",
           "silu_forward", "silu_backward", "sum", "max", "max_backward", "sum_to_shape", "broadcast_to",
           "reshape", "permute", "concatenate", "contiguous_strides"]
