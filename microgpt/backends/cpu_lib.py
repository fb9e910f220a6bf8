"""The compiled C kernels (module _cpu, built by cpu_build.py from csrc/) and the cffi
pointer helpers every C binding passes its arrays through.

Importing this module never fails: when _cpu is not built, AVAILABLE is False and
UNAVAILABLE_REASON says how to build it (backends.get("cpu") then falls back to the reference).
"""
import os

# Idle OpenMP workers sleep instead of spinning (read once, when libgomp loads with _cpu). On a
# shared or busy machine a spinning worker holds a core that the thread it waits for needs: a
# baby-preset step measured 11x slower with spinning than sleeping under load. Costs a few
# microseconds per parallel region when the machine is idle; OMP_WAIT_POLICY=active opts out.
# The decoding commands (generate, chat, serve) add a short spin first: cli.openmp_environment.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
try:
    from ._cpu import ffi, lib
    AVAILABLE, UNAVAILABLE_REASON = True, ""
except ImportError as exc:      # not compiled
    ffi = lib = None
    AVAILABLE = False
    UNAVAILABLE_REASON = f"the C kernels are not built ({exc}); run `pip install -e .`"


def fp(x):
    """A float* to the data of float32 ndarray x (no copy)."""
    return ffi.from_buffer("float[]", x)


def ip(x):
    """An int64_t* to the data of int64 ndarray x (no copy)."""
    return ffi.from_buffer("int64_t[]", x)


def opt(x):
    """fp(x), or NULL for None (an optional array such as a bias)."""
    return ffi.NULL if x is None else fp(x)
