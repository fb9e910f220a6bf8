"""The CUDA library's runtime side: loading it, checking every call, device memory, DeviceArray.

- The library (_microgpt_cuda.so, built by cuda_build.py) is opened with cffi in ABI mode;
  its cdef is the CDEF block of cuda/microgpt_cuda.h (copied beside the library at build).
  When it is missing, or no GPU answers, AVAILABLE is False and UNAVAILABLE_REASON says why;
  importing this module never fails for that.
- call(name, *args) runs one launcher and turns a non-zero return into BackendError naming
  the kernel and CUDA's message. Kernels run asynchronously on the default stream, so an
  error inside a kernel surfaces at the next call that synchronizes (a copy to the host);
  the message then names that call and CUDA's reason.
- Memory comes from a caching pool (sizes rounded up to 1.25x steps), as in PyTorch:
  cudaFree synchronizes the device, so freed blocks are kept for reuse. DeviceArray owns a
  reference to its _Block; when the last array viewing a block is garbage-collected the
  block returns to the pool. With POISON on (MICROGPT_CUDA_POISON=1 or set by tests), every
  new array is filled with 0xFF bytes (NaN as float32) so an unwritten element shows up.
- DeviceArray: .shape tuple, .dtype NumPy dtype, .ndim, .size, .nbytes, .device == "cuda".
  Always C-contiguous; reshape makes a view sharing the block. It refuses np.asarray()
  (a silent host copy would hide a device-agnosticism bug): use to_numpy.
Dtypes on the device: float32 for arithmetic, int64 for indices (4- and 8-byte bookkeeping).
"""
import math
import os

import numpy as np

from ..errors import BackendError, DTypeError, ShapeError

try:
    import cffi
except ImportError:   # pragma: no cover - cffi is a runtime dependency
    cffi = None

HERE = os.path.dirname(os.path.abspath(__file__))
LIBRARY = os.environ.get("MICROGPT_CUDA_LIB", os.path.join(HERE, "_microgpt_cuda.so"))
# the cdef written beside the library (cuda_build.py), else the header's CDEF block
CDEF_FILES = (os.path.splitext(LIBRARY)[0] + ".cdef",
              os.path.join(os.path.dirname(os.path.dirname(HERE)), "cuda", "microgpt_cuda.h"))
# int8 / uint8: the weights of quantized layers (cuda.py linear_q8_forward ...); uint16: bf16
# bit patterns, the operands of the tensor-core products (cuda_bf16.py)
DTYPES = (np.dtype(np.float32), np.dtype(np.int64), np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.uint16))
POISON = os.environ.get("MICROGPT_CUDA_POISON", "0") == "1"

ffi = lib = None
AVAILABLE = False
UNAVAILABLE_REASON = ""


def _read_cdef():
    for path in CDEF_FILES:
        if os.path.exists(path):
            with open(path) as f:
                text = f.read()
            if "/* CDEF BEGIN */" in text:
                text = text.split("/* CDEF BEGIN */", 1)[1].split("/* CDEF END */", 1)[0]
            return text
    raise OSError(f"no cdef found (looked for {', '.join(CDEF_FILES)})")


def _open():
    """Open the library and ask for a device; returns (ffi, lib, reason)."""
    if os.environ.get("MICROGPT_CUDA", "1") == "0":
        return None, None, "disabled by MICROGPT_CUDA=0"
    if cffi is None:
        return None, None, "cffi is not installed"
    if not os.path.exists(LIBRARY):
        return None, None, (f"{LIBRARY} is not built (needs nvcc: python -m microgpt.backends.cuda_build, "
                            "or pip install -e . on a machine with nvcc)")
    try:
        the_ffi = cffi.FFI()
        the_ffi.cdef(_read_cdef())
        the_lib = the_ffi.dlopen(LIBRARY)
    except (OSError, cffi.CDefError) as exc:
        return None, None, f"cannot load {LIBRARY}: {exc}"
    count = the_ffi.new("int*")
    rc = the_lib.cuda_device_count(count)
    if rc != 0:
        return None, None, f"no usable GPU: {the_ffi.string(the_lib.cuda_error_string(rc)).decode()}"
    if count[0] == 0:
        return None, None, "no CUDA device found"
    return the_ffi, the_lib, ""


ffi, lib, UNAVAILABLE_REASON = _open()
AVAILABLE = lib is not None


def error_message(rc):
    return ffi.string(lib.cuda_error_string(rc)).decode()


def call(name, *args):
    """Run launcher `name` of the library; raise BackendError on any CUDA error."""
    if lib is None:
        raise BackendError(f"cuda backend is not available: {UNAVAILABLE_REASON}")
    rc = getattr(lib, name)(*args)
    if rc != 0:
        raise BackendError(f"CUDA error in {name}: {error_message(rc)} (code {rc})")


def synchronize():
    """Wait for every queued kernel; raises if one of them failed."""
    call("cuda_synchronize")


def device_name():
    buf = ffi.new("char[256]")
    call("cuda_device_name", buf, 256)
    return ffi.string(buf).decode()


# --- the caching pool -----------------------------------------------------------------------------

def _rounded(nbytes):
    """Pool size class: at least 512 bytes, then steps of 1.25x (bounded waste, few classes)."""
    if nbytes <= 512:
        return 512
    exp = 1 << (int(nbytes - 1).bit_length() - 1)          # the power of two below
    step = exp // 4
    return ((nbytes + step - 1) // step) * step


class _Pool:
    def __init__(self):
        self.free = {}            # size -> [address]
        self.in_use = 0
        self.cached = 0

    def take(self, nbytes):
        size = _rounded(nbytes)
        stack = self.free.get(size)
        if stack:
            self.cached -= size
            addr = stack.pop()
        else:
            addr = self._malloc(size)
        self.in_use += size
        return addr, size

    def _malloc(self, size):
        out = ffi.new("void**")
        rc = lib.cuda_malloc(out, size)
        if rc != 0:                       # out of memory: give the cache back and retry once
            self.release_cache()
            rc = lib.cuda_malloc(out, size)
            if rc != 0:
                raise BackendError(f"CUDA error in cuda_malloc({size} bytes): {error_message(rc)} "
                                   f"({self.in_use} bytes in use)")
        return int(ffi.cast("uintptr_t", out[0]))

    def give(self, addr, size):
        self.in_use -= size
        self.cached += size
        self.free.setdefault(size, []).append(addr)

    def release_cache(self):
        """Return every cached block to CUDA (synchronizes the device)."""
        for stack in self.free.values():
            for addr in stack:
                lib.cuda_free(ffi.cast("void*", addr))
        self.free.clear()
        self.cached = 0


POOL = _Pool()


class _Block:
    """One pool allocation; handed back to the pool when no array refers to it."""
    __slots__ = ("addr", "size")

    def __init__(self, nbytes):
        self.addr, self.size = POOL.take(nbytes)

    def __del__(self):
        if lib is not None and POOL is not None:
            POOL.give(self.addr, self.size)


# --- DeviceArray ------------------------------------------------------------------------------------

class DeviceArray:
    """A C-contiguous array in GPU memory (see the module docstring)."""
    __slots__ = ("block", "addr", "shape", "dtype", "size", "__weakref__")
    device = "cuda"

    def __init__(self, block, shape, dtype, addr=None):
        self.block = block
        self.addr = block.addr if addr is None else addr
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.size = math.prod(self.shape)

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def nbytes(self):
        return self.size * self.dtype.itemsize

    @property
    def ptr(self):
        return ffi.cast("void*", self.addr)

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d DeviceArray")
        return self.shape[0]

    def __repr__(self):
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype}, device='cuda')"

    def __array__(self, *args, **kwargs):
        raise BackendError("a DeviceArray lives on the GPU; copy it with backends.get('cuda').to_numpy(a)")


def empty(shape, dtype):
    """A new uninitialised array (poisoned with NaN bytes when POISON is on)."""
    dtype = np.dtype(dtype)
    if dtype not in DTYPES:
        raise DTypeError(f"the cuda backend holds float32 and int64 arrays, not {dtype}")
    shape = tuple(int(n) for n in shape)
    if any(n < 0 for n in shape):
        raise ShapeError(f"negative dimension in shape {shape}")
    out = DeviceArray(_Block(math.prod(shape) * dtype.itemsize), shape, dtype)
    if POISON and out.nbytes:
        call("cuda_memset", out.ptr, 0xFF, out.nbytes)
    return out


def view(a, shape):
    """The same block seen with another shape (same size)."""
    return DeviceArray(a.block, shape, a.dtype, a.addr)


def upload(host, dtype=None):
    """A host array (or number, or list) copied to the device. float64 becomes float32 and
    other integers int64 when dtype is None."""
    host = np.asarray(host)
    if dtype is None:
        dtype = np.float32 if host.dtype.kind == "f" else np.int64 if host.dtype.kind in "iub" else host.dtype
    dtype = np.dtype(dtype)
    if dtype not in DTYPES:
        raise DTypeError(f"the cuda backend holds float32 and int64 arrays, not {dtype}")
    host = np.asarray(host, dtype=dtype, order="C")
    out = empty(host.shape, dtype)
    if out.nbytes:
        call("cuda_memcpy_h2d", out.ptr, ffi.from_buffer(host), out.nbytes)
    return out


def download(a):
    """A DeviceArray copied to a new host NumPy array (synchronizes)."""
    host = np.empty(a.shape, dtype=a.dtype)
    if a.nbytes:
        call("cuda_memcpy_d2h", ffi.from_buffer(host), a.ptr, a.nbytes)
    check_flag()
    return host


def on_device(x, dtype=None):
    """x as a DeviceArray: DeviceArrays pass through, host data is uploaded."""
    if isinstance(x, DeviceArray):
        return x
    return upload(x, dtype)


def require_f32(name, *arrays):
    for a in arrays:
        if a.dtype != np.float32:
            raise DTypeError(f"{name}: the cuda backend computes in float32, got {a.dtype}")


# --- the out-of-range flag of the index-checking kernels ----------------------------------------------
# Kernels that read at an index (embedding, gathers, cross-entropy targets) set a device int
# instead of reading outside an array. Checking it right away would synchronize the device
# several times a step, so it is checked lazily: at the next copy to the host (which waits
# for the GPU anyway), naming every such kernel launched since the last check.

_flag = None
_pending = set()  # (kernel, what) launched since the flag was last read


def bad_flag(name="", what=""):
    """The device flag to pass to an index-checking kernel; records the launch for check_flag."""
    global _flag
    if _flag is None:
        _flag = DeviceArray(_Block(4), (1,), np.float32)   # 4 bytes, read back as an int
        call("cuda_memset", _flag.ptr, 0, 4)
    _pending.add((name, what))
    return ffi.cast("int*", _flag.addr)


def check_flag():
    """Read the flag (synchronizes) if an index-checking kernel ran; raise if one set it."""
    if not _pending:
        return
    launched = sorted(_pending)
    _pending.clear()
    value = ffi.new("int*")
    call("cuda_memcpy_d2h", value, _flag.ptr, 4)
    if value[0]:
        call("cuda_memset", _flag.ptr, 0, 4)
        kernels = [f"{name}: {what}" for name, what in launched if name]
        raise ShapeError("an index was out of range in one of: " + "; ".join(kernels))
