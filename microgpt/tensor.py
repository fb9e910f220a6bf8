"""Tensor: an array plus the bookkeeping of reverse-mode automatic differentiation.

A Tensor holds `data` (a NumPy array on the CPU, a DeviceArray on CUDA), its `grad`, and —
when it was produced by an op while gradients are on — its parent tensors and a backward
closure. It knows no math and no device: every computation lives in ops.py and ops_fused.py,
which call the backend that serves the tensor's device (and import this module, so the
operator sugar at the end reaches ops.py only at call time). This is micrograd's shape, over
arrays:

    loss.backward()  =  sort the graph topologically, then walk it from the loss backwards,
                        calling each node's closure with the node's gradient; a closure adds
                        its contribution into its parents' gradients (chain rule).

Notable choices:
- Gradients *accumulate*: a tensor used twice receives both contributions, and calling
  backward() twice without zeroing adds up (as in PyTorch); `zero_grad` is the caller's job.
- Like PyTorch, backward() frees the graph as it goes (closures and non-leaf gradients are
  dropped once used), so activations are released early and peak memory stays low. A freed
  node keeps a marker instead of its closure, so a second backward() through it raises
  GraphError rather than silently computing nothing (or only part of the gradient).
- float32 is the default dtype; float64 works end to end (the gradient checks use it).
  Mixing dtypes in one op is an error rather than a silent upcast.
"""
import contextlib

import numpy as np

from . import backends
from .errors import DTypeError, GraphError, ShapeError

DEFAULT_DTYPE = np.float32
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_grad_enabled = True


@contextlib.contextmanager
def no_grad():
    """Inside this block ops record no graph (inference, optimizer steps)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled():
    return _grad_enabled


def _to_array(data, dtype, device):
    """Turn user data (nested lists, NumPy arrays, scalars) into a backend array."""
    from_python = not hasattr(data, "shape")          # lists and Python numbers
    if from_python or isinstance(data, np.generic):
        data = np.asarray(data)
    if isinstance(data, np.ndarray):
        if dtype is None:
            # NumPy float arrays keep their dtype; Python floats and bools become float32,
            # integers int64 (token ids).
            if np.issubdtype(data.dtype, np.integer):
                dtype = np.int64
            elif data.dtype in _FLOAT_DTYPES and not from_python:
                dtype = data.dtype
            else:
                dtype = DEFAULT_DTYPE
        return backends.get(device or "cpu").asarray(data, np.dtype(dtype))
    if dtype is not None and np.dtype(dtype) != data.dtype:
        raise DTypeError(f"Tensor: data of dtype {data.dtype} given with dtype={np.dtype(dtype)}; "
                         "convert it with .to(dtype=...) instead")
    return data   # already a backend array (e.g. a DeviceArray)


def _freed(grad):
    """What a non-leaf holds in place of its backward closure once backward() has used it."""
    raise GraphError("internal: a freed backward closure was called")


class Tensor:
    """An n-dimensional array that remembers how it was computed."""

    __slots__ = ("data", "grad", "requires_grad", "_parents", "_backward", "_op",
                 "_grad_owned", "__weakref__")
    __array_priority__ = 1000   # so `ndarray + Tensor` calls Tensor.__radd__

    def __init__(self, data, requires_grad=False, dtype=None, device=None):
        self.data = _to_array(data, dtype, device)
        if requires_grad and self.data.dtype not in _FLOAT_DTYPES:
            raise DTypeError(f"only float32/float64 tensors can require gradients, not {self.data.dtype}")
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._parents = ()
        self._backward = None
        self._op = "leaf"
        self._grad_owned = False

    @classmethod
    def wrap(cls, data, requires_grad=False):
        """A tensor around an existing backend array, without copying it."""
        out = cls.__new__(cls)
        out.data, out.grad, out.requires_grad = data, None, bool(requires_grad)
        out._parents, out._backward, out._op, out._grad_owned = (), None, "leaf", False
        return out

    @classmethod
    def _from_op(cls, data, parents, backward, op):
        """The output of an op: tracked only if gradients are on and a parent needs one."""
        out = cls.__new__(cls)
        out.data, out.grad, out._op, out._grad_owned = data, None, op, False
        out.requires_grad = _grad_enabled and any(p.requires_grad for p in parents)
        out._parents = tuple(parents) if out.requires_grad else ()
        out._backward = backward if out.requires_grad else None
        return out

    # --- properties ------------------------------------------------------------------------
    @property
    def shape(self):
        return self.data.shape      # a tuple on every backend

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        return int(np.prod(self.data.shape, dtype=np.int64))

    @property
    def device(self):
        return backends.device_of(self.data)

    @property
    def backend(self):
        return backends.get(self.device)

    def __len__(self):
        return self.shape[0]

    def __repr__(self):
        flag = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor(shape={self.shape}, dtype={self.dtype}, device={self.device!r}{flag}, op={self._op})"

    # --- conversion ----------------------------------------------------------------------------
    def numpy(self):
        """The data as a host NumPy array (a copy for device tensors)."""
        return self.backend.to_numpy(self.data)

    def item(self):
        if self.size != 1:
            raise ShapeError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.numpy().reshape(()).item()

    def detach(self):
        """The same data, cut from the graph."""
        return Tensor.wrap(self.data)

    def to(self, device=None, dtype=None):
        """A copy on another device and/or with another float dtype (self if nothing changes)."""
        device = device or self.device
        dtype = np.dtype(dtype) if dtype is not None else self.dtype
        if device == self.device and dtype == self.dtype:
            return self
        host = self.backend.to_numpy(self.data)
        return Tensor.wrap(backends.get(device).asarray(host, dtype), requires_grad=self.requires_grad)

    # --- autograd ----------------------------------------------------------------------------
    def _accumulate(self, grad):
        """Add an incoming gradient; called by the backward closures of this tensor's children."""
        if tuple(grad.shape) != self.shape:
            raise ShapeError(f"internal: gradient of shape {tuple(grad.shape)} for a tensor of "
                             f"shape {self.shape} (from op {self._op})")
        if self.grad is None:
            # Keep the incoming array without copying; it may be shared with a sibling,
            # so it is never modified in place until we own a private copy.
            self.grad, self._grad_owned = grad, False
        elif not self._grad_owned:
            self.grad, self._grad_owned = self.backend.add(self.grad, grad), True
        else:
            self.backend.accumulate(self.grad, grad)

    def zero_grad(self):
        self.grad, self._grad_owned = None, False

    def backward(self, grad=None):
        """Compute d(self)/d(leaf) for every leaf that requires a gradient, into leaf.grad."""
        if not self.requires_grad:
            raise ShapeError("backward() on a tensor that does not require gradients "
                             "(no input had requires_grad=True, or it was made under no_grad())")
        if grad is None:
            if self.size != 1:
                raise ShapeError(f"backward() on a non-scalar tensor of shape {self.shape} needs an "
                                 "explicit gradient of the same shape")
            grad = self.backend.full(self.shape, 1.0, self.dtype)
        elif isinstance(grad, Tensor):
            grad = grad.data
        if tuple(grad.shape) != self.shape:
            raise ShapeError(f"backward(): gradient shape {tuple(grad.shape)} differs from the "
                             f"tensor's shape {self.shape}")
        order = self._topological_order()
        if any(node._backward is _freed for node in order):
            raise GraphError("backward() through the graph a second time: the first backward() "
                             "freed it. Compute the loss again (a new forward pass) before "
                             "calling backward() again")
        self._accumulate(grad)
        for node in reversed(order):
            if node._backward is not None and node.grad is not None:
                node._backward(node.grad)
            if node._parents:      # a non-leaf: free its closure (and the arrays it holds)
                node._backward, node._parents = _freed, ()
                node.grad, node._grad_owned = None, False

    def _topological_order(self):
        """Nodes ordered so that every node comes after all of its parents (iterative DFS)."""
        order, visited, stack = [], set(), [(self, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if id(node) in visited:
                continue
            visited.add(id(node))
            stack.append((node, True))
            stack.extend((parent, False) for parent in node._parents if id(parent) not in visited)
        return order

    # --- operators: thin forwards to ops.py ----------------------------------------------------
    # The one import that points up: ops.py is built on Tensor (it imports this module at its
    # top), so the sugar reaches it at call time through _ops(), never at import time.
    def __add__(self, other):       return _ops().add(self, other)
    def __radd__(self, other):      return _ops().add(other, self)
    def __sub__(self, other):       return _ops().sub(self, other)
    def __rsub__(self, other):      return _ops().sub(other, self)
    def __mul__(self, other):       return _ops().mul(self, other)
    def __rmul__(self, other):      return _ops().mul(other, self)
    def __truediv__(self, other):   return _ops().div(self, other)
    def __rtruediv__(self, other):  return _ops().div(other, self)
    def __neg__(self):              return _ops().neg(self)
    def __pow__(self, exponent):    return _ops().pow(self, exponent)
    def __matmul__(self, other):    return _ops().matmul(self, other)
    def __getitem__(self, index):   return _ops().getitem(self, index)

    def sum(self, axis=None, keepdims=False):   return _ops().sum(self, axis, keepdims)
    def mean(self, axis=None, keepdims=False):  return _ops().mean(self, axis, keepdims)
    def max(self, axis=None, keepdims=False):   return _ops().max(self, axis, keepdims)
    def reshape(self, *shape):                  return _ops().reshape(self, *shape)
    def permute(self, *axes):                   return _ops().permute(self, *axes)
    def transpose(self, axis0=-2, axis1=-1):    return _ops().transpose(self, axis0, axis1)
    def exp(self):                              return _ops().exp(self)
    def log(self):                              return _ops().log(self)
    def sqrt(self):                             return _ops().sqrt(self)
    def tanh(self):                             return _ops().tanh(self)
    def relu(self):                             return _ops().relu(self)

    @property
    def T(self):
        return _ops().transpose(self, -2, -1)


_ops_module = None


def _ops():
    """The ops module, for the operator sugar above: imported on the first call, then kept
    here (an import statement per call would cost ~1 us, a tenth of a small op).
    tests/test_import_graph.py allows this one upward import, and only inside a function."""
    global _ops_module
    if _ops_module is None:
        from . import ops
        _ops_module = ops
    return _ops_module

