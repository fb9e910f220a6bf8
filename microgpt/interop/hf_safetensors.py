"""Reading and writing safetensors files ourselves: memory-mapped, one tensor at a time, bf16 too.

The format, as the safetensors library writes it (every number little-endian):

    bytes 0..8        N, an unsigned 64-bit integer: the length of the header
    bytes 8..8+N      the header, UTF-8 JSON (padded with spaces to a multiple of 8 bytes):
                        {"NAME": {"dtype": "F32", "shape": [768, 2304],
                                  "data_offsets": [BEGIN, END]},
                         ...,
                         "__metadata__": {"format": "pt"}}       (optional, str -> str)
    bytes 8+N..       the data: tensor NAME is bytes [BEGIN, END) of this part, row-major
                      (C order), END - BEGIN = prod(shape) * itemsize, the tensors packed
                      without holes or overlaps.

Why not the safetensors library's own loader: its NumPy API returns copies (`load_file`
reads the whole file into memory), and NumPy has no bfloat16 for it to return. Parsing the
header is twenty lines, and then every tensor is a `np.frombuffer` view of one read-only
`mmap` of the file: nothing is read until it is used, and a caller that copies a tensor into
a model and drops the view never holds the model twice.

bfloat16 is the top half of a float32: the same sign and 8-bit exponent, a 7-bit mantissa.
Widening is exact, a shift into the high half of a 32-bit word:

    f32_bits = bf16_bits << 16          (u16.astype(np.uint32) << 16).view(np.float32)

Narrowing rounds to nearest, ties to even, on the 16 bits dropped:

    bf16_bits = (f32_bits + 0x7FFF + ((f32_bits >> 16) & 1)) >> 16

(a NaN is kept a quiet NaN: the rounding could carry a NaN whose payload sits in the low bits
into the exponent and make it inf). float16 is NumPy's own float16.

Everything that can be wrong with a file is checked when its header is read, before a single
tensor is used: a header that is not JSON or not this layout, a dtype we cannot widen, a
tensor whose byte range does not fit its shape, or runs past the end of a truncated file.
Each is a one-line CheckpointError naming the file (and the tensor).
"""
import json
import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np

from ..errors import CheckpointError
from ..fileio import atomic_write

HEADER_LIMIT = 100 * 1024 * 1024      # the library's own cap on a header: refuse a garbage length

# dtype code -> (NumPy dtype of the stored bits, itemsize). BF16's bits are read as uint16.
DTYPES = {"F32": (np.dtype("<f4"), 4), "F16": (np.dtype("<f2"), 2), "BF16": (np.dtype("<u2"), 2),
          "F64": (np.dtype("<f8"), 8)}
# Integer and 8-bit float codes exist in the format; none of them is a weight we can load.
KNOWN_CODES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "I64", "I32", "I16", "I8",
               "U64", "U32", "U16", "U8", "BOOL")
WRITE_CODES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", "bfloat16": "BF16"}


@dataclass(frozen=True)
class TensorInfo:
    """One entry of a header: where a tensor's bytes are and what they hold."""
    name: str
    dtype: str                   # the format's code: F32, F16, BF16, ...
    shape: tuple
    begin: int                   # byte offsets into the data part, [begin, end)
    end: int


# --- bfloat16 <-> float32 ------------------------------------------------------------------------

def bf16_bits_to_float32(bits):
    """uint16 array of bfloat16 bits -> a new float32 array (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16_bits(x):
    """float32 array -> uint16 array of bfloat16 bits, rounded to nearest, ties to even."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FC0), rounded)


# --- reading -------------------------------------------------------------------------------------

def _bad(path, problem):
    return CheckpointError(f"{path}: {problem}")


def read_header(path):
    """({name: TensorInfo}, metadata dict, data start offset) of safetensors file `path`,
    every entry checked against the format and against the file's size."""
    if not os.path.isfile(path):
        raise _bad(path, "missing")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise _bad(path, f"truncated: {size} bytes, too short for a safetensors header; "
                             f"download or export the file again")
        (length,) = struct.unpack("<Q", prefix)
        if length > HEADER_LIMIT or 8 + length > size:
            raise _bad(path, f"truncated or not safetensors: the header claims {length} bytes but the "
                             f"file has {size}; download or export the file again")
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(path, f"the safetensors header is not valid JSON ({exc}); the file is corrupt") from None
    if not isinstance(header, dict):
        raise _bad(path, "the safetensors header is not a JSON object; the file is corrupt")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise _bad(path, "the safetensors __metadata__ is not an object; the file is corrupt")
    data_size = size - 8 - length
    entries = {name: _entry(path, name, value, data_size) for name, value in header.items()}
    return entries, metadata, 8 + length


def _entry(path, name, value, data_size):
    """One header entry as a TensorInfo, or a CheckpointError naming the file and tensor."""
    where = f"tensor {name!r}"
    if not isinstance(value, dict):
        raise _bad(path, f"{where}: the header entry is not an object; the file is corrupt")
    code, shape, offsets = value.get("dtype"), value.get("shape"), value.get("data_offsets")
    if code not in KNOWN_CODES:
        raise _bad(path, f"{where}: unknown dtype {code!r}; the file is corrupt")
    if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
        raise _bad(path, f"{where}: shape {shape!r} is not a list of sizes; the file is corrupt")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        raise _bad(path, f"{where}: data_offsets {offsets!r} is not [begin, end]; the file is corrupt")
    begin, end = offsets
    itemsize = DTYPES[code][1] if code in DTYPES else None
    if itemsize is not None and end - begin != int(np.prod(shape, dtype=np.int64)) * itemsize:
        raise _bad(path, f"{where}: {end - begin} bytes do not hold shape {tuple(shape)} of {code}; "
                         f"the file is corrupt")
    if end > data_size:
        raise _bad(path, f"{where}: truncated: its data ends at byte {end} of the data part, which "
                         f"holds {data_size}; download or export the file again")
    return TensorInfo(name, code, tuple(shape), begin, end)


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


CHUNK_BYTES = 4 << 20       # read_into's strips (its one buffer) ...
TRANSPOSED_ROWS = 16        # ... and its strips when writing into a transposed view


def _convert(code, stored, out):
    """Write stored values (of dtype `code`, BF16 as uint16 bits) into the float array `out`."""
    if code == "BF16" and out.dtype == np.float32:
        bits = out.view(np.uint32)
        bits[...] = stored               # zero-extended to 32 bits ...
        bits <<= 16                      # ... and shifted into the high half: exact
    elif code == "BF16":
        out[...] = bf16_bits_to_float32(stored)
    else:
        out[...] = stored                # F32 copied, F16 / F64 converted, element by element


class SafetensorsReader:
    """One safetensors file, its header parsed and checked, its data memory-mapped on demand.

        with SafetensorsReader(path) as f:
            f.tensors["lm_head.weight"].shape        # from the header: nothing read yet
            w = f.float32("lm_head.weight")          # float32, a read-only view for F32 data,
                                                     # a new array for F16/BF16/F64
            model_param[...] = w; del w              # copy it out before close()
            f.read_into("lm_head.weight", out)       # or straight into an array (no temporary)
            w = f.mapped("lm_head.weight")           # or, F32: the file's own bytes, writable
                                                     # copy-on-write (outlives close())
    """

    def __init__(self, path):
        self.path = path
        self.tensors, self.metadata, self._data_start = read_header(path)
        self._file = self._map = None          # the read-only mapping (raw, float32)
        self._private = None                   # the copy-on-write one (mapped)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _mapping(self):
        if self._map is None:
            self._file = open(self.path, "rb")
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        return self._map

    def raw(self, name):
        """The stored array as it is in the file (BF16 as uint16 bits): a read-only view."""
        info = self.tensors[name]
        if info.dtype not in DTYPES:
            raise _bad(self.path, f"tensor {name!r} has dtype {info.dtype}; only floating-point weights "
                                  f"(F32, F16, BF16, F64) can be loaded")
        stored, itemsize = DTYPES[info.dtype]
        count = (info.end - info.begin) // itemsize
        if count == 0:
            return np.zeros(info.shape, dtype=stored)
        flat = np.frombuffer(self._mapping(), dtype=stored, count=count,
                             offset=self._data_start + info.begin)
        return flat.reshape(info.shape)

    def float32(self, name):
        """Tensor `name` as float32: widened from F16/BF16 (a new array), or a view for F32."""
        info, raw = self.tensors[name], self.raw(name)
        if info.dtype == "BF16":
            return bf16_bits_to_float32(raw)
        if info.dtype == "F32":
            return raw
        return raw.astype(np.float32)

    def mapped(self, name):
        """Tensor `name` as a writable float32 array that *is* the file's bytes, or None when it
        cannot be one (stored as another dtype, or at an offset float32 cannot be aligned to).

        It is a view of a private, copy-on-write mapping of the file (one per reader, kept
        alive by its views, not by the reader: close() leaves it to them). Nothing is read or
        copied now: a page comes from the page cache when first read, and a write (training)
        copies just that page into this process, never into the file. transformers loads the
        same way. The file must then stay as it is while the array lives: replacing it (a
        rename, as fileio.atomic_write and export do) is safe, rewriting it in place is not."""
        info = self.tensors[name]
        if info.dtype != "F32" or info.begin == info.end or (self._data_start + info.begin) % 4:
            return None
        if self._private is None:
            with open(self.path, "rb") as f:
                self._private = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        flat = np.frombuffer(self._private, dtype=np.float32, count=(info.end - info.begin) // 4,
                             offset=self._data_start + info.begin)
        return flat.reshape(info.shape)

    def read_into(self, name, out):
        """Write tensor `name` into `out`, a float array of its shape and any strides (hf.py
        passes a parameter's own array, seen transposed for GPT-2's Conv1D), widened on the
        way: BF16 into float32 in place, out's bits = stored << 16.

        The bytes are read (not mapped), a strip of rows at a time, into one small buffer that
        each strip reuses, and go from there into `out`: no temporary of the tensor's size,
        and no file pages mapped into this process (a memory-mapped copy maps whole folios
        of the page cache around every page it touches, neighbours' pages included). A
        strip is about CHUNK_BYTES, or TRANSPOSED_ROWS rows where `out` is a transposed view
        (a strip that narrow keeps the strided writes in cache: about twice the speed)."""
        info = self.tensors[name]
        if info.dtype not in DTYPES:
            raise _bad(self.path, f"tensor {name!r} has dtype {info.dtype}; only floating-point weights "
                                  f"(F32, F16, BF16, F64) can be loaded")
        if out.shape != info.shape:
            raise _bad(self.path, f"tensor {name!r} has shape {info.shape}, not the {out.shape} it is "
                                  f"read into")
        stored = DTYPES[info.dtype][0]
        if info.end == info.begin:
            return
        if not info.shape:                                     # a scalar: one row of one value
            out, shape = out.reshape(1), (1,)
        else:
            shape = info.shape
        row_bytes = (info.end - info.begin) // shape[0]
        rows = max(1, CHUNK_BYTES // row_bytes) if out.flags.c_contiguous else TRANSPOSED_ROWS
        buffer = np.empty(min(rows, shape[0]) * row_bytes, dtype=np.uint8)
        with open(self.path, "rb", buffering=0) as f:          # unbuffered: each read one system call
            f.seek(self._data_start + info.begin)
            for first in range(0, shape[0], rows):
                last = min(first + rows, shape[0])
                strip = memoryview(buffer)[:(last - first) * row_bytes]
                if f.readinto(strip) != len(strip):
                    raise _bad(self.path, f"tensor {name!r}: the file ended before its data did (it changed "
                                          f"since its header was read); download or export it again")
                values = np.frombuffer(strip, dtype=stored).reshape((last - first,) + shape[1:])
                _convert(info.dtype, values, out[first:last])

    def release(self, name):
        """Tell the kernel the pages of tensor `name` may leave this process's memory (after
        it was copied out), so a model loads without also keeping its file's pages resident."""
        if self._map is None or not hasattr(self._map, "madvise"):
            return
        info = self.tensors[name]
        start = self._data_start + info.begin
        aligned = start - start % mmap.PAGESIZE
        length = self._data_start + info.end - aligned
        if length > 0:
            try:
                self._map.madvise(mmap.MADV_DONTNEED, aligned, length)
            except (OSError, ValueError):
                pass                          # only advice: a kernel that refuses it changes nothing

    def close(self):
        if self._map is not None:
            self._map.close()
            self._file.close()
            self._map = self._file = None
        self._private = None                 # unmapped when the last array viewing it is gone


# --- writing -------------------------------------------------------------------------------------

def _code_of(dtype):
    key = "bfloat16" if dtype == "bfloat16" else np.dtype(dtype)
    if key not in WRITE_CODES:
        raise CheckpointError(f"cannot write dtype {dtype!r} to safetensors: use float32, float16 or "
                              f"bfloat16")
    return WRITE_CODES[key]


def _stored(array, code):
    """array converted to the bytes of dtype `code`, C-contiguous (one tensor's copy at most)."""
    if code == "BF16":
        return float32_to_bf16_bits(np.asarray(array, dtype=np.float32))
    return np.ascontiguousarray(array, dtype=DTYPES[code][0])


def header_bytes(shapes, code, metadata=None):
    """The 8-byte length and the padded JSON header for tensors {name: shape}, all of one
    dtype, laid out in the order given; returns (bytes, data size)."""
    header, offset = {}, 0
    itemsize = DTYPES[code][1]
    for name, shape in shapes.items():
        nbytes = int(np.prod(shape, dtype=np.int64)) * itemsize
        header[name] = {"dtype": code, "shape": [int(d) for d in shape],
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)              # the data part starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text, offset


def write_safetensors(path, tensors, dtype=np.float32, metadata=None):
    """Write {name: array} to `path` atomically as `dtype` (float32, float16 or "bfloat16"),
    converting and writing one tensor at a time: never a serialized copy of the whole set.
    A value may be anything with a .shape that np.asarray turns into the array (hf.py passes
    parameters that reach the host only when their turn comes)."""
    code = _code_of(dtype)
    prefix, _ = header_bytes({name: tuple(a.shape) for name, a in tensors.items()}, code, metadata)
    with atomic_write(path, "wb") as f:
        f.write(prefix)
        for array in tensors.values():
            f.write(memoryview(_stored(array, code).reshape(-1).view(np.uint8)))
