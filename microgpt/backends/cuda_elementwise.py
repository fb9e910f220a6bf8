"""The CUDA backend's elementwise math: arithmetic with NumPy broadcasting, the unary
functions, the activations and their gradients, and accumulate (dst += src in place).

Each function has the name, signature and meaning of its twin in reference.py (read that
file for the formulas) and works on DeviceArray (host arrays passed in are uploaded).

Broadcasting: the output's shape is NumPy's broadcast shape; each operand gets element
strides aligned to it, 0 along axes it is stretched over (cuda_shape.broadcast_strides).
Neighbouring axes along which both operands are contiguous are merged, so equal shapes
reach the GPU as one flat axis and take the contiguous fast path of elementwise.cu.
A Python scalar operand goes to binary_scalar_op instead, with no array for it at all.
"""
import numpy as np

from ..errors import DTypeError, ShapeError
from .cuda_runtime import DeviceArray, call, empty, on_device, require_f32
from .cuda_shape import broadcast_strides

BINARY = {"add": 0, "sub": 1, "mul": 2, "div": 3, "equal": 4}     # elementwise.cu's op codes
UNARY = {"neg": 0, "exp": 1, "log": 2, "sqrt": 3, "tanh": 4, "pow": 5}


def is_scalar(x):
    return isinstance(x, (int, float, np.number)) or (isinstance(x, np.ndarray) and x.ndim == 0)


def merge_axes(shape, sa, sb):
    """Drop size-1 axes, merge neighbours contiguous in both operands: (sizes, sa, sb)."""
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


def binary_into(out, a, b, op):
    """out = a <op> b, a and b broadcast to out's shape."""
    sizes, sa, sb = merge_axes(out.shape, broadcast_strides(out.shape, a.shape), broadcast_strides(out.shape, b.shape))
    if len(sizes) > 8:
        raise ShapeError(f"{op}: more than 8 non-mergeable broadcast axes ({out.shape})")
    call("binary_op", out.ptr, a.ptr, b.ptr, len(sizes), sizes, sa, sb, out.size, BINARY[op])


def binary(a, b, op):
    """a <op> b for op in BINARY, either of them possibly a scalar."""
    if is_scalar(b) and isinstance(a, DeviceArray):
        require_f32(op, a)
        out = empty(a.shape, a.dtype)
        call("binary_scalar_op", out.ptr, a.ptr, float(b), a.size, BINARY[op], 0)
        return out
    if is_scalar(a) and isinstance(b, DeviceArray):
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
        binary_into(out, a, b, op)
    return out


def accumulate(dst, src):
    if not isinstance(dst, DeviceArray):
        raise DTypeError("accumulate: dst must be a DeviceArray")
    if is_scalar(src):
        call("binary_scalar_op", dst.ptr, dst.ptr, float(src), dst.size, BINARY["add"], 0)
        return
    src = on_device(src)
    require_f32("accumulate", dst, src)
    if np.broadcast_shapes(dst.shape, src.shape) != dst.shape:
        raise ShapeError(f"accumulate: {src.shape} does not broadcast to {dst.shape}")
    binary_into(dst, dst, src, "add")


def add(a, b):
    return binary(a, b, "add")


def sub(a, b):
    return binary(a, b, "sub")


def mul(a, b):
    return binary(a, b, "mul")


def div(a, b):
    return binary(a, b, "div")


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


# --- activations (activation.cu): out = f(x), dx = dout * f'(x) ----------------------------------

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
