"""Owners of the C objects of csrc/bpe_*.c (module `_bpe`, built by bpe_build.py).

Each class holds one C pointer under `ffi.gc`, so it is freed with the Python object, and
checks the C return codes (-1 out of memory, -2 bad arguments). Calls go through cffi's
API mode, which releases the GIL: encoders are read-only after construction, so one
Encoder may encode on many threads at once. Nothing here validates user input: bpe.py and
train.py do, before a byte reaches C.
"""
import numpy as np

from ..errors import BackendError
from .patterns import class_table

try:
    from ._bpe import ffi, lib
except ImportError as exc:  # pragma: no cover - a build problem, reported plainly
    raise BackendError(
        "the tokenizer's C core (microgpt.tokenizer._bpe) is not built: run "
        "`pip install -e . --no-build-isolation` from the repository root, or "
        f"`python microgpt/tokenizer/bpe_build.py` ({exc})") from None

# Output buffers are written by C before they are read: skip cffi's zero fill.
_alloc = ffi.new_allocator(should_clear_after_alloc=False)


def _check(code, what):
    if code == -1:
        raise MemoryError(f"bpe: out of memory in {what}")
    if code < 0:
        raise BackendError(f"bpe: {what} rejected its arguments (code {code}); this is a bug")
    return code


def _classes():
    """The class table as a C pointer; the table itself is cached for the process."""
    return ffi.from_buffer("uint8_t[]", class_table())


def split(data, native):
    """Chunk end offsets of UTF-8 `data` under a built-in pattern (for tests and tools)."""
    ends = _alloc("int64_t[]", max(len(data), 1))
    n = _check(lib.bpe_split(_classes(), native, data, len(data), ends, len(data)), "bpe_split")
    return ffi.unpack(ends, n)


MAX_CALL_BYTES = 2**31 - 1       # C indexes a chunk's bytes with int32: bpe.py checks


class Encoder:
    """tokens[i] is the byte string of id i (dense, all 256 single bytes present, unique).

    merges None: tiktoken's rule (ids are ranks). Otherwise Hugging Face's: an int32 array
    of shape (m, 3), row k = (left id, right id, id of their concatenation) of the merge of
    rank k, each pair once; whole_chunks: a chunk that is itself a token is that token."""

    def __init__(self, tokens, native, merges=None, whole_chunks=True):
        blob = b"".join(tokens)
        offsets = np.zeros(len(tokens) + 1, np.int64)
        np.cumsum([len(t) for t in tokens], out=offsets[1:])
        self._cls = _classes()                     # C keeps a pointer into this table
        self.native = native
        if merges is None:
            ptr = lib.bpe_encoder_new(blob, ffi.from_buffer("int64_t[]", offsets), len(tokens),
                                      self._cls, native)
        else:
            merges = np.ascontiguousarray(merges, np.int32).reshape(-1, 3)
            ptr = lib.bpe_encoder_new_merges(
                blob, ffi.from_buffer("int64_t[]", offsets), len(tokens),
                ffi.from_buffer("int32_t[]", merges), len(merges), int(whole_chunks),
                self._cls, native)
        if ptr == ffi.NULL:
            raise MemoryError("bpe_encoder_new failed: out of memory or an invalid vocabulary")
        self._ptr = ffi.gc(ptr, lib.bpe_encoder_free)

    def encode(self, data, as_array=False):
        """UTF-8 bytes -> ids (a list, or a uint32 array), split by the pattern in C."""
        out = _alloc("int32_t[]", max(len(data), 1))       # never more ids than bytes
        n = _check(lib.bpe_encode(self._ptr, data, len(data), out), "bpe_encode")
        return _ids(out, n, as_array)

    def encode_chunks(self, data, ends, as_array=False):
        """UTF-8 bytes already split: chunk k ends at ends[k] (int64 array)."""
        out = _alloc("int32_t[]", max(len(data), 1))
        n = _check(lib.bpe_encode_chunks(self._ptr, data, ffi.from_buffer("int64_t[]", ends),
                                         len(ends), out), "bpe_encode_chunks")
        return _ids(out, n, as_array)


def _ids(out, n, as_array):
    """The first n ids of a C buffer as a list, or as a uint32 array (a copy: `out` is
    sized for the worst case, one id per byte). A list of 10^6 ints costs about as much
    as encoding them; the array skips that."""
    if as_array:
        return np.frombuffer(ffi.buffer(out, 4 * n), np.int32).astype(np.uint32)
    return ffi.unpack(out, n)


class Counter:
    """Unique chunks and how often each was seen, accumulated over many blocks of text."""

    def __init__(self):
        ptr = lib.bpe_counter_new()
        if ptr == ffi.NULL:
            raise MemoryError("bpe_counter_new: out of memory")
        self._ptr = ffi.gc(ptr, lib.bpe_counter_free)
        self._cls = _classes()

    def add_text(self, data, native):
        _check(lib.bpe_counter_add_text(self._ptr, self._cls, native, data, len(data)),
               "bpe_counter_add_text")

    def add_chunks(self, data, ends):
        _check(lib.bpe_counter_add_chunks(self._ptr, data, ffi.from_buffer("int64_t[]", ends),
                                          len(ends)), "bpe_counter_add_chunks")

    def __len__(self):
        return lib.bpe_counter_size(self._ptr)


class Trainer:
    """The merge loop over a Counter's chunks; `step(k)` makes up to k merges."""

    def __init__(self, counter):
        ptr = lib.bpe_trainer_new(counter._ptr)
        if ptr == ffi.NULL:
            raise MemoryError("bpe_trainer_new: out of memory")
        self._ptr = ffi.gc(ptr, lib.bpe_trainer_free)

    def step(self, max_merges):
        """-> list of (left id, right id, count) for the merges made (empty: none left)."""
        pairs = _alloc("int32_t[]", 2 * max_merges)
        counts = _alloc("int64_t[]", max_merges)
        n = _check(lib.bpe_trainer_step(self._ptr, max_merges, pairs, counts), "bpe_trainer_step")
        flat = ffi.unpack(pairs, 2 * n)
        return list(zip(flat[0::2], flat[1::2], ffi.unpack(counts, n)))
