"""Argument checks for the C backend: the edge where Python meets C.

The rule of this edge: a C kernel trusts its arguments completely (no checks in the hot
loops), so everything a caller can get wrong is checked once, in Python, before any C runs,
and no call from Python can crash the process. Every binding in cpu.py and cpu_matmul.py
passes each argument through these helpers first. They raise microgpt.errors types
(ShapeError is a ValueError, DTypeError a TypeError) with the op's name and what to do, and
they are written to be cheap (attribute reads and integer compares; no copies), because on
a small model the binding's per-call overhead is a real share of a training step.

Rules enforced:
  - arrays are numpy.ndarray, C-contiguous, not empty;
  - the float arrays of one call share one dtype: float32 (goes to C) or float64 (goes to the
    NumPy reference); anything else is a DTypeError;
  - integer ids/targets are integer arrays, converted to contiguous int64 and range-checked;
  - arrays written in place are writeable and do not overlap any other argument.
"""
import numbers

import numpy as np

from ..errors import DTypeError, ShapeError

F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
I64 = np.dtype(np.int64)


def array(op, name, x):
    """x must be a non-empty C-contiguous ndarray; returns it."""
    if not isinstance(x, np.ndarray):
        raise DTypeError(f"{op}: {name} must be a numpy.ndarray, got {type(x).__name__}")
    if not x.flags.c_contiguous:
        raise ShapeError(f"{op}: {name} (shape {x.shape}) is not C-contiguous; "
                         f"pass numpy.ascontiguousarray({name})")
    if x.size == 0:
        raise ShapeError(f"{op}: {name} is empty (shape {x.shape}); the C kernels need data")
    return x


def floats(op, **arrays):
    """Check float arrays (None values are skipped); True for float32, False for float64."""
    dtype = None
    for name, x in arrays.items():
        if x is None:
            continue
        array(op, name, x)
        if dtype is None:
            dtype, first = x.dtype, name
        elif x.dtype != dtype:
            raise DTypeError(f"{op}: {name} is {x.dtype} but {first} is {dtype}; use one dtype")
    if dtype == F32:
        return True
    if dtype == F64:
        return False
    raise DTypeError(f"{op}: arrays must be float32 (C kernels) or float64 (reference), got {dtype}")


def shape(op, name, x, expected):
    if x.shape != tuple(expected):
        raise ShapeError(f"{op}: {name} has shape {x.shape}, expected {tuple(expected)}")


def min_ndim(op, name, x, ndim):
    if x.ndim < ndim:
        raise ShapeError(f"{op}: {name} needs at least {ndim} dimensions, got shape {x.shape}")


def integer(op, name, value, low=None):
    """A Python or NumPy integer (not bool), optionally >= low; returned as int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise DTypeError(f"{op}: {name} must be an integer, got {value!r}")
    value = int(value)
    if low is not None and value < low:
        raise ShapeError(f"{op}: {name} must be >= {low}, got {value}")
    return value


def flag(op, name, value):
    """A Python or NumPy bool; returned as bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise DTypeError(f"{op}: {name} must be True or False, got {value!r}")
    return bool(value)


def real(op, name, value):
    """A finite Python or NumPy real number; returned as float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DTypeError(f"{op}: {name} must be a real number, got {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ShapeError(f"{op}: {name} must be finite, got {value}")
    return value


def ids(op, name, x, upper, ignore=None):
    """Integer ids in [0, upper) (or equal to `ignore`); returns a C-contiguous int64 array."""
    if not isinstance(x, np.ndarray):
        raise DTypeError(f"{op}: {name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype.kind not in "iu":
        raise DTypeError(f"{op}: {name} must hold integers (int64), got {x.dtype}")
    array(op, name, x)
    if x.dtype != I64:
        x = x.astype(I64)
    low, high = int(x.min()), int(x.max())
    if low < 0 or high >= upper:
        bad = (x < 0) | (x >= upper)
        if ignore is not None:
            bad &= x != ignore
        if bad.any():
            raise ShapeError(f"{op}: {name} holds {int(x[bad].flat[0])}, outside [0, {upper})"
                             + ("" if ignore is None else f" and not ignore_index {ignore}"))
    return x


def writeable(op, **arrays):
    for name, x in arrays.items():
        if not x.flags.writeable:
            raise ShapeError(f"{op}: {name} is read-only but is updated in place")


def disjoint(op, **arrays):
    """No two of the given arrays may share memory (for kernels that write in place)."""
    items = list(arrays.items())
    for i, (name, x) in enumerate(items):
        for other, y in items[i + 1:]:
            if np.may_share_memory(x, y):
                raise ShapeError(f"{op}: {name} and {other} overlap in memory; pass separate arrays")
