"""The C backend as the decoder sees it: the kernels one decoded token runs, bound without the
per-call argument checks (inference/decode.py and paged.py use it; nothing else should).

    be = cpu_decode.DecodeKernels(cpu)        # every name is cpu's; the ones below skip checks
    fn = be.rows_linear(w, b, w_in_out)       # a weight's streaming product, checked once: fn(x)

Why. Decoding one token of the "small" shape (6 layers x 384 channels) runs ~80 kernel calls;
many of them (a norm of 384 values, the cache write of one row, the attention of one query)
do 1-5 us of arithmetic, and cpu.py's bindings check every argument of every call (dtypes,
shapes, index ranges, memory overlap): 3-20 us apiece, measured ~0.3-0.5 ms a token, a fifth of
an int4 step at 2 threads. The decoder's arguments are not a user's: the weights are checked
here once, when the decoder is built (shapes against each other and the config, dtypes,
contiguity), and every activation is a fresh C-contiguous float32 array that a kernel (or
NumPy arithmetic on two of them) just made, of the shape the config fixes. So each call
below checks only what can vary between calls, cheaply (the dtype and contiguity of its data
arguments; a call that fails that goes to cpu.py's checked function, which computes it or
raises), and calls the *same C kernel with the same arguments* as cpu.py would: the results
are bit-identical (tests/test_decode_fast.py runs both).

What is still checked at every call: token ids (an id outside the table would read outside
it: they come from callers, so embedding_forward range-checks them, for a few rows as Python
ints), and slots / block tables / positions, which index the cache: those come from
inference/paged.py's PagedKVCache.plan, which builds them from its own block tables, so they
are trusted here only when the decoder passes a plan that cache made (paged.py does).
"""
import numpy as np

from . import cpu_matmul
from .cpu_lib import ffi, lib
from .cpu_lib import fp as _fp
from .cpu_lib import ip as _ip

F32, I64 = np.dtype(np.float32), np.dtype(np.int64)
_NULL = ffi.NULL if ffi is not None else None


def _plain(x, dtype=F32):
    """A C-contiguous ndarray of dtype: what a kernel's output always is."""
    return type(x) is np.ndarray and x.dtype == dtype and x.flags.c_contiguous


class DecodeKernels:
    """cpu.py seen through the decoder: the names below without per-call checks, every other
    name cpu.py's own (looked up once, then cached on the instance)."""

    def __init__(self, be):
        self._be = be
        self._work = np.empty(0, np.float32)      # paged attention's scratch, grown on demand

    def __getattr__(self, name):
        value = getattr(self._be, name)
        setattr(self, name, value)
        return value

    # --- per-call kernels ---------------------------------------------------------------------

    def layer_norm_forward(self, x, w, b, eps):
        c = x.shape[-1] if type(x) is np.ndarray and x.ndim else -1
        if not (_plain(x) and _plain(w) and w.shape == (c,) and (b is None or (_plain(b) and b.shape == (c,)))):
            return self._be.layer_norm_forward(x, w, b, eps)
        out, stats = np.empty_like(x), np.empty((2,) + x.shape[:-1], F32)
        lib.layer_norm_forward(_fp(out), _fp(stats[0]), _fp(stats[1]), _fp(x), _fp(w),
                               _NULL if b is None else _fp(b), eps, x.size // c, c)
        return out, stats[0], stats[1]

    def rms_norm_forward(self, x, w, eps):
        c = x.shape[-1] if type(x) is np.ndarray and x.ndim else -1
        if not (_plain(x) and _plain(w) and w.shape == (c,)):
            return self._be.rms_norm_forward(x, w, eps)
        out, rstd = np.empty_like(x), np.empty(x.shape[:-1], F32)
        lib.rms_norm_forward(_fp(out), _fp(rstd), _fp(x), _fp(w), eps, x.size // c, c)
        return out, rstd

    def gelu_forward(self, x):
        if not _plain(x):
            return self._be.gelu_forward(x)
        out = np.empty_like(x)
        lib.gelu_forward(_fp(out), _fp(x), x.size)
        return out

    def silu_forward(self, x):
        if not _plain(x):
            return self._be.silu_forward(x)
        out = np.empty_like(x)
        lib.silu_forward(_fp(out), _fp(x), x.size)
        return out

    def embedding_forward(self, ids, weight):
        if not (_plain(ids, I64) and _plain(weight) and weight.ndim == 2):
            return self._be.embedding_forward(ids, weight)
        v, c = weight.shape
        if ids.size <= 8:
            if not all(0 <= i < v for i in ids.ravel().tolist()):
                return self._be.embedding_forward(ids, weight)       # raises the checked error
        elif ids.size and (int(ids.min()) < 0 or int(ids.max()) >= v):
            return self._be.embedding_forward(ids, weight)
        out = np.empty(ids.shape + (c,), F32)
        lib.embedding_forward(_fp(out), _ip(ids), _fp(weight), ids.size, v, c)
        return out

    def paged_cache_write(self, k_cache, v_cache, k, v, slots):
        """Trusts slots (a PagedKVCache.plan's); checks the data arrays' kind only."""
        nb, nkv, bs, hs = k_cache.shape
        if not (_plain(k) and _plain(v) and _plain(slots, I64) and k.shape == v.shape and k.ndim == 3
                and k.shape[1:] == (nkv, hs) and slots.shape == k.shape[:1]):
            return self._be.paged_cache_write(k_cache, v_cache, k, v, slots)
        lib.paged_cache_write(_fp(k_cache), _fp(v_cache), _fp(k), _fp(v), _ip(slots), k.shape[0], nkv, nb, bs, hs)
        return None

    def paged_attention_forward(self, q, k_cache, v_cache, block_tables, positions):
        """Trusts block_tables and positions (a PagedKVCache.plan's)."""
        nb, nkv, bs, hs = k_cache.shape
        if not (_plain(q) and q.ndim == 3 and q.shape[2] == hs and q.shape[1] % nkv == 0
                and _plain(block_tables, I64) and _plain(positions, I64) and block_tables.ndim == 2
                and block_tables.shape[0] == q.shape[0] and positions.shape == q.shape[:1]):
            return self._be.paged_attention_forward(q, k_cache, v_cache, block_tables, positions)
        n, nh = q.shape[0], q.shape[1]
        mb = block_tables.shape[1]
        need = lib.paged_attention_workspace(mb, bs)
        if self._work.size < need:
            self._work = np.empty(need, F32)
        work = self._work
        out = np.empty_like(q)
        if lib.paged_attention_forward(_fp(out), _fp(work), work.size, _fp(q), _fp(k_cache), _fp(v_cache),
                                       _ip(block_tables), _ip(positions), n, nh, nkv, nb, bs, mb, hs):
            return self._be.paged_attention_forward(q, k_cache, v_cache, block_tables, positions)
        return out

    # --- a weight checked once ----------------------------------------------------------------

    def rows_linear(self, w, b=None, w_in_out=False):
        """fn(x) = linear_rows_forward(x, w, b, w_in_out) (matmul.c's streaming path, each row
        the bits of a one-row call) with w and b checked now and their pointers made once."""
        be = self._be
        if not (_plain(w) and w.ndim == 2 and (b is None or _plain(b))):
            return lambda x: be.linear_rows_forward(x, w, b, w_in_out)
        c, oc = (w.shape[0], w.shape[1]) if w_in_out else (w.shape[1], w.shape[0])
        cpu_matmul._linear_check("linear_rows_forward", np.empty((1, c), F32), w, b, w_in_out)  # b's shape
        if c == 0:
            return lambda x: be.linear_rows_forward(x, w, b, w_in_out)
        w_ptr, b_ptr, flag = _fp(w), (_NULL if b is None else _fp(b)), int(bool(w_in_out))
        rows_forward = lib.linear_rows_forward

        def run(x):
            if not (_plain(x) and x.ndim and x.shape[-1] == c):
                return be.linear_rows_forward(x, w, b, w_in_out)
            out = np.empty(x.shape[:-1] + (oc,), F32)
            rows_forward(_fp(out), _fp(x), w_ptr, b_ptr, flag, x.size // c, c, oc)
            return out
        return run


def for_decoder(be, dtype):
    """DecodeKernels over be when be is the C backend and the model float32, else None."""
    from . import cpu
    if be is not cpu or np.dtype(dtype) != F32 or lib is None:
        return None
    return DecodeKernels(be)
