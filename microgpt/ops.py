"""Every differentiable op: a forward that calls backend kernels, and its hand-written backward.

Each op follows one pattern:

    be = backend of the inputs' device
    out = be.<kernel>_forward(inputs...)          # maybe with a cache for backward
    def backward(dout):                           # dout = dLoss/dout, same shape as out
        _send(x, be.<kernel>_backward(dout, ...)) # dLoss/dx, added into x.grad
    return Tensor._from_op(out, parents, backward, name)

Ops never touch array elements themselves: all math goes through the backend, which is
what lets the same op run on NumPy, on our C kernels or on CUDA. Broadcasting follows NumPy;
its backward sums the gradient back down to each input's shape (`sum_to_shape`).

Every op is registered in OPS (op_registry.py) by the @op decorator; the test suite
enumerates OPS and fails if any op lacks a gradient check. The fused ops (layer_norm,
attention, cross_entropy ...) live in ops_fused.py, which builds on this file: import the
names from the module that defines them (`from microgpt import ops, ops_fused`).
"""
import builtins

import numpy as np

from .errors import DTypeError, ShapeError
from .op_registry import _send, op
from .tensor import Tensor


# --- helpers ------------------------------------------------------------------------------------

def _tensor(x, like=None):
    """Wrap Python numbers and arrays as constant tensors matching `like`'s dtype and device."""
    if isinstance(x, Tensor):
        return x
    if like is not None:
        return Tensor(np.asarray(x, dtype=like.dtype), device=like.device)
    return Tensor(x)


def _pair(a, b, name):
    """Two operands of a binary op: same dtype, same device, broadcastable shapes."""
    a = _tensor(a, like=b if isinstance(b, Tensor) else None)
    b = _tensor(b, like=a)
    if a.dtype != b.dtype:
        raise DTypeError(f"{name}: dtypes differ ({a.dtype} and {b.dtype}); convert one with .to(dtype=...)")
    if a.device != b.device:
        raise DTypeError(f"{name}: tensors on different devices ({a.device} and {b.device})")
    try:
        np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ShapeError(f"{name}: shapes {a.shape} and {b.shape} do not broadcast") from None
    return a, b


def _axes(axis, ndim):
    """Normalize an axis argument (None, int, tuple) to a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    for ax in axes:
        if not -ndim <= ax < builtins.max(ndim, 1):
            raise ShapeError(f"axis {ax} is out of range for a tensor with {ndim} dims")
    return tuple(sorted(ax % builtins.max(ndim, 1) for ax in axes))


def _kept_shape(shape, axes):
    """The shape a reduction over `axes` has with keepdims=True."""
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


# --- elementwise binary (broadcasting) ----------------------------------------------------------

@op
def add(a, b):
    a, b = _pair(a, b, "add")
    be = a.backend

    def backward(dout):
        _send(a, be.sum_to_shape(dout, a.shape))
        _send(b, be.sum_to_shape(dout, b.shape))
    return Tensor._from_op(be.add(a.data, b.data), (a, b), backward, "add")


@op
def sub(a, b):
    a, b = _pair(a, b, "sub")
    be = a.backend

    def backward(dout):
        _send(a, be.sum_to_shape(dout, a.shape))
        _send(b, be.sum_to_shape(be.neg(dout), b.shape))
    return Tensor._from_op(be.sub(a.data, b.data), (a, b), backward, "sub")


@op
def mul(a, b):
    a, b = _pair(a, b, "mul")
    be = a.backend

    def backward(dout):
        # d(ab)/da = b,  d(ab)/db = a
        _send(a, be.sum_to_shape(be.mul(dout, b.data), a.shape))
        _send(b, be.sum_to_shape(be.mul(dout, a.data), b.shape))
    return Tensor._from_op(be.mul(a.data, b.data), (a, b), backward, "mul")


@op
def div(a, b):
    a, b = _pair(a, b, "div")
    be = a.backend
    out = be.div(a.data, b.data)

    def backward(dout):
        # d(a/b)/da = 1/b,  d(a/b)/db = -a/b^2 = -out/b
        _send(a, be.sum_to_shape(be.div(dout, b.data), a.shape))
        _send(b, be.sum_to_shape(be.neg(be.div(be.mul(dout, out), b.data)), b.shape))
    return Tensor._from_op(out, (a, b), backward, "div")


# --- elementwise unary ------------------------------------------------------------------------

@op
def neg(a):
    be = a.backend
    return Tensor._from_op(be.neg(a.data), (a,), lambda dout: _send(a, be.neg(dout)), "neg")


@op
def pow(a, exponent):   # noqa: A001 - mirrors the ** operator
    """a ** p for a constant Python number p."""
    if isinstance(exponent, Tensor) or not np.isscalar(exponent):
        raise DTypeError("pow: the exponent must be a Python number (a ** p); "
                         "for a tensor exponent use exp(p * log(a))")
    p = float(exponent)
    be = a.backend

    def backward(dout):
        # d(a^p)/da = p a^(p-1)
        _send(a, be.mul(dout, be.mul(be.full((), p, a.dtype), be.pow_scalar(a.data, p - 1))))
    return Tensor._from_op(be.pow_scalar(a.data, p), (a,), backward, "pow")


@op
def exp(a):
    be = a.backend
    out = be.exp(a.data)
    return Tensor._from_op(out, (a,), lambda dout: _send(a, be.mul(dout, out)), "exp")   # (e^a)' = e^a


@op
def log(a):
    be = a.backend
    return Tensor._from_op(be.log(a.data), (a,), lambda dout: _send(a, be.div(dout, a.data)), "log")


@op
def sqrt(a):
    be = a.backend
    out = be.sqrt(a.data)

    def backward(dout):
        # (sqrt a)' = 1 / (2 sqrt a)
        _send(a, be.div(dout, be.mul(be.full((), 2.0, a.dtype), out)))
    return Tensor._from_op(out, (a,), backward, "sqrt")


@op
def tanh(a):
    be = a.backend
    out = be.tanh(a.data)

    def backward(dout):
        # (tanh a)' = 1 - tanh(a)^2
        _send(a, be.mul(dout, be.sub(be.full((), 1.0, a.dtype), be.mul(out, out))))
    return Tensor._from_op(out, (a,), backward, "tanh")


@op
def relu(x):
    be = x.backend
    return Tensor._from_op(be.relu_forward(x.data), (x,),
                           lambda dout: _send(x, be.relu_backward(dout, x.data)), "relu")


@op
def gelu(x):
    """GELU with GPT-2's tanh approximation."""
    be = x.backend
    return Tensor._from_op(be.gelu_forward(x.data), (x,),
                           lambda dout: _send(x, be.gelu_backward(dout, x.data)), "gelu")


@op
def silu(x):
    """x * sigmoid(x), the gate of Llama's SwiGLU."""
    be = x.backend
    return Tensor._from_op(be.silu_forward(x.data), (x,),
                           lambda dout: _send(x, be.silu_backward(dout, x.data)), "silu")


# --- reductions ---------------------------------------------------------------------------------

@op
def sum(x, axis=None, keepdims=False):   # noqa: A001
    axes = _axes(axis, x.ndim)
    be = x.backend

    def backward(dout):
        # every summed element receives the gradient of its sum
        _send(x, be.broadcast_to(be.reshape(dout, _kept_shape(x.shape, axes)), x.shape))
    return Tensor._from_op(be.sum(x.data, axes, keepdims), (x,), backward, "sum")


@op
def mean(x, axis=None, keepdims=False):
    axes = _axes(axis, x.ndim)
    count = int(np.prod([x.shape[i] for i in axes], dtype=np.int64))
    if count == 0:
        raise ShapeError(f"mean over empty axes {axes} of shape {x.shape}")
    be = x.backend
    inv = be.full((), 1.0 / count, x.dtype)

    def backward(dout):
        _send(x, be.broadcast_to(be.reshape(be.mul(dout, inv), _kept_shape(x.shape, axes)), x.shape))
    return Tensor._from_op(be.mul(be.sum(x.data, axes, keepdims), inv), (x,), backward, "mean")


@op
def max(x, axis=None, keepdims=False):   # noqa: A001
    axes = _axes(axis, x.ndim)
    if any(x.shape[i] == 0 for i in axes):
        raise ShapeError(f"max over an empty axis of shape {x.shape}")
    be = x.backend
    out = be.max(x.data, axes, keepdims)

    def backward(dout):
        kept = _kept_shape(x.shape, axes)
        _send(x, be.max_backward(be.reshape(dout, kept), x.data, be.reshape(out, kept), axes))
    return Tensor._from_op(out, (x,), backward, "max")


# --- shapes -------------------------------------------------------------------------------------

@op
def reshape(x, *shape):
    shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    try:
        new_shape = np.empty(x.shape, dtype=np.bool_).reshape(shape).shape   # resolves -1, checks size
    except ValueError:
        raise ShapeError(f"reshape: cannot reshape {x.shape} into {shape}") from None
    be = x.backend
    return Tensor._from_op(be.reshape(x.data, new_shape), (x,),
                           lambda dout: _send(x, be.reshape(dout, x.shape)), "reshape")


@op
def permute(x, *axes):
    axes = tuple(axes[0]) if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
    if sorted(a % builtins.max(x.ndim, 1) for a in axes) != list(range(x.ndim)):
        raise ShapeError(f"permute: {axes} is not a permutation of the {x.ndim} axes of {x.shape}")
    axes = tuple(a % x.ndim for a in axes)
    be = x.backend
    moved = [a for a in axes if x.shape[a] != 1]
    if moved == sorted(moved):
        # Only size-1 axes move (e.g. (B, 1, NH, HS) -> (B, NH, 1, HS) when decoding one
        # token): the elements keep their memory order, so this is a reshape, not a copy.
        return reshape(x, tuple(x.shape[a] for a in axes))
    inverse = tuple(np.argsort(axes))
    return Tensor._from_op(be.permute(x.data, axes), (x,),
                           lambda dout: _send(x, be.permute(dout, inverse)), "permute")


def transpose(x, axis0=-2, axis1=-1):
    """Swap two axes (a permute)."""
    axes = list(range(x.ndim))
    axes[axis0], axes[axis1] = axes[axis1], axes[axis0]
    return permute(x, tuple(axes))


def _host_index(index):
    """Indices as plain Python/NumPy objects (tensors of ids become int64 arrays)."""
    if isinstance(index, tuple):
        return tuple(_host_index(i) for i in index)
    if isinstance(index, Tensor):
        return np.asarray(index.numpy(), dtype=np.int64)
    if isinstance(index, list):
        return np.asarray(index, dtype=np.int64)
    return index


@op
def getitem(x, index):
    """x[index] for ints, slices, None, Ellipsis and integer arrays (as NumPy)."""
    index = _host_index(index)
    try:
        out_shape = np.empty(x.shape, dtype=np.bool_)[index].shape
    except (IndexError, TypeError, ValueError) as exc:
        raise ShapeError(f"getitem: index {index!r} does not fit shape {x.shape}: {exc}") from None
    be = x.backend
    out = be.getitem(x.data, index)
    assert tuple(out.shape) == out_shape
    return Tensor._from_op(out, (x,), lambda dout: _send(x, be.getitem_backward(dout, x.shape, index)),
                           "getitem")


@op
def concatenate(tensors, axis=0):
    tensors = list(tensors)
    if not tensors:
        raise ShapeError("concatenate: needs at least one tensor")
    first = tensors[0]
    axis = _axes(axis, first.ndim)[0]
    for t in tensors[1:]:
        if t.dtype != first.dtype or t.device != first.device:
            raise DTypeError(f"concatenate: mixed dtypes/devices {first.dtype}/{first.device} and "
                             f"{t.dtype}/{t.device}")
        if t.ndim != first.ndim or any(t.shape[i] != first.shape[i] for i in range(t.ndim) if i != axis):
            raise ShapeError(f"concatenate: shapes {first.shape} and {t.shape} differ off axis {axis}")
    be = first.backend
    bounds = np.cumsum([0] + [t.shape[axis] for t in tensors])

    def backward(dout):
        for t, start, stop in zip(tensors, bounds[:-1], bounds[1:]):
            if t.requires_grad:
                piece = (slice(None),) * axis + (slice(int(start), int(stop)),)
                _send(t, be.getitem(dout, piece))
    return Tensor._from_op(be.concatenate([t.data for t in tensors], axis), tensors, backward, "concatenate")


def split(x, sizes, axis=0):
    """Cut x along axis into pieces of the given sizes (or into `sizes` equal pieces)."""
    axis = _axes(axis, x.ndim)[0]
    if isinstance(sizes, (int, np.integer)):
        if sizes <= 0 or x.shape[axis] % sizes:
            raise ShapeError(f"split: axis {axis} of size {x.shape[axis]} does not split into {sizes} parts")
        sizes = [x.shape[axis] // sizes] * sizes
    if builtins.sum(int(n) for n in sizes) != x.shape[axis]:
        raise ShapeError(f"split: sizes {list(sizes)} do not add up to {x.shape[axis]} (axis {axis})")
    starts = np.cumsum([0] + list(sizes))
    return [getitem(x, (slice(None),) * axis + (slice(int(s), int(s + n)),)) for s, n in zip(starts, sizes)]


def stack(tensors, axis=0):
    """Join tensors of one shape along a new axis."""
    tensors = list(tensors)
    if not tensors:
        raise ShapeError("stack: needs at least one tensor")
    axis = axis % (tensors[0].ndim + 1)
    expanded = [reshape(t, t.shape[:axis] + (1,) + t.shape[axis:]) for t in tensors]
    return concatenate(expanded, axis)


# --- linear algebra -----------------------------------------------------------------------------

@op
def matmul(a, b):
    """a @ b over the last two axes; leading (batch) axes broadcast."""
    if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
        raise DTypeError("matmul: both operands must be Tensors")
    if a.dtype != b.dtype or a.device != b.device:
        raise DTypeError(f"matmul: operands differ ({a.dtype} on {a.device}, {b.dtype} on {b.device})")
    if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2]:
        raise ShapeError(f"matmul: shapes {a.shape} and {b.shape} do not multiply "
                         "(both need >= 2 dims and a.shape[-1] == b.shape[-2])")
    try:
        np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise ShapeError(f"matmul: batch dims of {a.shape} and {b.shape} do not broadcast") from None
    be = a.backend

    def backward(dout):
        da, db = be.matmul_backward(dout, a.data, b.data)
        _send(a, da)
        _send(b, db)
    return Tensor._from_op(be.matmul_forward(a.data, b.data), (a, b), backward, "matmul")


@op
def linear(x, weight, bias=None, w_in_out=False):
    """x @ weight^T + bias, the fully connected layer; weight is (out, in) as in PyTorch, or
    with w_in_out (in, out) as GPT-2's Conv1D stores it, and then x @ weight + bias. The
    layout is only how the same map is stored: each kernel reads either, and the gradient
    of weight comes back in weight's own layout."""
    w_in_out = bool(w_in_out)
    if weight.ndim != 2 or x.shape[-1] != weight.shape[0 if w_in_out else 1]:
        raise ShapeError(f"linear: input {x.shape} does not fit weight {weight.shape} "
                         f"({'in, out' if w_in_out else 'out, in'})")
    out_features = weight.shape[1 if w_in_out else 0]
    if bias is not None and bias.shape != (out_features,):
        raise ShapeError(f"linear: bias {bias.shape} does not fit weight {weight.shape}")
    if x.dtype != weight.dtype or (bias is not None and bias.dtype != x.dtype):
        raise DTypeError(f"linear: dtypes differ (input {x.dtype}, weight {weight.dtype})")
    be = x.backend
    parents = (x, weight) if bias is None else (x, weight, bias)

    def backward(dout):
        if not weight.requires_grad and (bias is None or not bias.requires_grad):
            # a frozen layer (LoRA's base): dx only, not the dW matmul nobody reads. dx is
            # dout @ W with W the (out, in) map: a linear layer of dout whose weight is w read
            # in the other layout.
            _send(x, be.linear_forward(dout, weight.data, None, not w_in_out))
            return
        dx, dw, db = be.linear_backward(dout, x.data, weight.data, bias is not None, w_in_out)
        _send(x, dx)
        _send(weight, dw)
        if bias is not None:
            _send(bias, db)
    return Tensor._from_op(be.linear_forward(x.data, weight.data, None if bias is None else bias.data, w_in_out),
                           parents, backward, "linear")


@op
def quantized_linear(x, w_q, w_scale, bits, group, bias=None):
    """x @ W^T + bias for a weight held in int8 / int4 (microgpt/quantize/formats.py):
    W[o, c] = w_scale[o, c // group] * q[o, c], q in w_q (int8 (OC, C), or int4 packed two per
    byte, uint8 (OC, C / 2)). w_q and w_scale are backend arrays, not Tensors: the quantized
    weight is frozen (no gradient: adapters train beside it), so backward only sends
        dx = dout @ W      (W dequantized once for the call)     and db = sum of dout rows."""
    if bits not in (8, 4):
        raise ShapeError(f"quantized_linear: bits must be 8 or 4, not {bits}")
    be = x.backend
    if isinstance(w_scale, np.ndarray) and w_scale.dtype != x.dtype:
        w_scale = w_scale.astype(x.dtype)            # a few scales: float64 checks of a float32 model
    forward = be.linear_q8_forward if bits == 8 else be.linear_q4_forward
    parents = (x,) if bias is None else (x, bias)

    def backward(dout):
        w = (be.dequantize_q8 if bits == 8 else be.dequantize_q4)(w_q, w_scale, group)
        _send(x, be.matmul_forward(dout, w))
        if bias is not None:
            _send(bias, be.sum_to_shape(dout, bias.shape))
    out = forward(x.data, w_q, w_scale, None if bias is None else bias.data, group)
    return Tensor._from_op(out, parents, backward, "quantized_linear")
