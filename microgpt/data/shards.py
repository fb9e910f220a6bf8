"""Token shards: the on-disk format pre-training reads, its writer, reader and validation.

A shard is one file: a 32-byte little-endian header, then the token ids, nothing else.

    offset  size  field
    0       8     magic        b"MGPTTOK\\0"
    8       4     version      uint32, currently 1
    12      4     itemsize     uint32, 2 (uint16 ids) or 4 (uint32 ids)
    16      8     num_tokens   uint64, how many ids follow
    24      8     vocab_size   uint64, every id is < vocab_size

so a shard's size is exactly 32 + itemsize * num_tokens bytes, and the ids start on a
32-byte boundary where `np.memmap` can map them without a copy. uint16 is chosen whenever
the vocabulary fits (GPT-2's 50257 does), halving the disk and page-cache footprint.

`ShardWriter` takes token arrays of any length and cuts them into shards of a fixed
number of tokens, so memory stays bounded by one shard whatever the corpus size; each
shard is written atomically (temporary file, fsync, rename). `open_shard` maps a shard
read-only and checks it: a wrong magic or version, a size that disagrees with its header,
or (optionally, chunk by chunk) an id outside the vocabulary raises ShardError naming the
file and what to do.

A prepared data directory holds `train_NNNNNN.bin`, `val_NNNNNN.bin`, the tokenizer file
and `meta.json`; `list_shards(directory, split)` finds one split's shards in order.
"""
import glob
import os
import struct

import numpy as np

from ..errors import MicrogptError
from ..fileio import atomic_write, write_json

MAGIC = b"MGPTTOK\0"
VERSION = 1
HEADER = struct.Struct("<8sIIQQ")        # magic, version, itemsize, num_tokens, vocab_size
HEADER_SIZE = HEADER.size                # 32 bytes
DEFAULT_SHARD_TOKENS = 1 << 24           # 16M tokens: 32 MiB as uint16
_DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}
_CHECK_CHUNK = 1 << 22                   # ids scanned per step when checking the vocabulary


class ShardError(MicrogptError, ValueError):
    """A token shard that is missing, malformed, or does not match its vocabulary."""


def dtype_for_vocab(vocab_size):
    """The smallest shard dtype that holds every id below vocab_size."""
    if not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
        raise ShardError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    if vocab_size <= 1 << 16:
        return _DTYPES[2]
    if vocab_size <= 1 << 32:
        return _DTYPES[4]
    raise ShardError(f"vocab_size {vocab_size} does not fit in uint32 shards")


def write_shard(path, tokens, vocab_size):
    """Write one shard atomically: header + ids, to a temporary file, fsync, rename."""
    dtype = dtype_for_vocab(vocab_size)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ShardError(f"tokens must be a 1-D array, got shape {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ShardError(f"token ids must lie in [0, {vocab_size}); got min {tokens.min()} "
                         f"max {tokens.max()} for {path}")
    with atomic_write(path, "wb") as f:
        f.write(HEADER.pack(MAGIC, VERSION, dtype.itemsize, tokens.size, vocab_size))
        f.write(tokens.astype(dtype, copy=False).tobytes())


def read_header(path):
    """(itemsize, num_tokens, vocab_size) of a shard, after checking magic, version and size."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(HEADER_SIZE)
    except FileNotFoundError:
        raise ShardError(f"{path}: no such shard") from None
    if len(raw) < HEADER_SIZE:
        raise ShardError(f"{path}: {size} bytes is too short for a shard header "
                         f"({HEADER_SIZE} bytes); re-run `microgpt data prepare`")
    magic, version, itemsize, num_tokens, vocab_size = HEADER.unpack(raw)
    if magic != MAGIC:
        raise ShardError(f"{path}: not a microgpt token shard (magic {magic!r}, "
                         f"expected {MAGIC!r}); re-run `microgpt data prepare`")
    if version != VERSION:
        raise ShardError(f"{path}: shard format version {version}, this microgpt reads version "
                         f"{VERSION}; re-run `microgpt data prepare`")
    if itemsize not in _DTYPES:
        raise ShardError(f"{path}: token size {itemsize} bytes in the header; must be 2 or 4")
    expected = HEADER_SIZE + itemsize * num_tokens
    if size != expected:
        raise ShardError(f"{path}: file is {size} bytes but its header announces {num_tokens} "
                         f"tokens ({expected} bytes); the shard is truncated or corrupt, "
                         f"re-run `microgpt data prepare`")
    if vocab_size < 1 or (itemsize == 2 and vocab_size > 1 << 16):
        raise ShardError(f"{path}: vocab_size {vocab_size} in the header cannot be stored "
                         f"in {itemsize}-byte ids")
    return itemsize, num_tokens, vocab_size


def open_shard(path, vocab_size=None, check_ids=False):
    """Map a shard read-only as a 1-D uint16/uint32 array, after validating it.

    vocab_size, if given, must equal the shard's; check_ids scans every id (chunk by chunk,
    so memory stays small) and rejects any >= the vocabulary size.
    """
    itemsize, num_tokens, shard_vocab = read_header(path)
    if vocab_size is not None and shard_vocab != vocab_size:
        raise ShardError(f"{path}: shard was written for a vocabulary of {shard_vocab} ids, "
                         f"but the tokenizer/model has {vocab_size}; prepare the data again "
                         f"with this tokenizer")
    if num_tokens == 0:
        return np.zeros(0, dtype=_DTYPES[itemsize])
    tokens = np.memmap(path, dtype=_DTYPES[itemsize], mode="r", offset=HEADER_SIZE,
                       shape=(num_tokens,))
    if check_ids:
        for start in range(0, num_tokens, _CHECK_CHUNK):
            chunk_max = int(tokens[start:start + _CHECK_CHUNK].max())
            if chunk_max >= shard_vocab:
                where = start + int(np.argmax(tokens[start:start + _CHECK_CHUNK] >= shard_vocab))
                raise ShardError(f"{path}: token id {int(tokens[where])} at position {where} is "
                                 f"outside the vocabulary of {shard_vocab}; the shard is corrupt")
    return tokens


def shard_name(split, index):
    return f"{split}_{index:06d}.bin"


def list_shards(directory, split):
    """The shards of one split ("train" or "val") in `directory`, in order."""
    if split not in ("train", "val"):
        raise ShardError(f"split must be 'train' or 'val', got {split!r}")
    if not os.path.isdir(directory):
        raise ShardError(f"{directory}: no such data directory; create it with "
                         f"`microgpt data prepare`")
    paths = sorted(glob.glob(os.path.join(glob.escape(directory), f"{split}_[0-9]*.bin")))
    if not paths:
        raise ShardError(f"{directory}: no {split} shards ({split}_000000.bin ...); create them "
                         f"with `microgpt data prepare`")
    return paths


class ShardWriter:
    """Append token arrays; every `shard_tokens` ids become one shard file.

    Memory holds at most one shard's worth of ids (plus the array being appended).
    `close()` writes the remainder and returns the list of shard paths written.
    """

    def __init__(self, directory, split, vocab_size, shard_tokens=DEFAULT_SHARD_TOKENS):
        if shard_tokens < 1:
            raise ShardError(f"shard_tokens must be >= 1, got {shard_tokens}")
        self.directory, self.split = directory, split
        self.vocab_size, self.shard_tokens = vocab_size, int(shard_tokens)
        self.dtype = dtype_for_vocab(vocab_size)
        self.paths = []
        self.num_tokens = 0
        self._buffer = np.empty(self.shard_tokens, dtype=self.dtype)
        self._filled = 0
        os.makedirs(directory, exist_ok=True)

    def write(self, tokens):
        tokens = np.asarray(tokens)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ShardError(f"token ids must lie in [0, {self.vocab_size}), got "
                             f"{tokens.min()}..{tokens.max()}")
        while tokens.size:
            take = min(tokens.size, self.shard_tokens - self._filled)
            self._buffer[self._filled:self._filled + take] = tokens[:take]
            self._filled += take
            self.num_tokens += take
            tokens = tokens[take:]
            if self._filled == self.shard_tokens:
                self._flush()

    def pending(self):
        """The ids buffered but not yet written (a view; valid until the next write)."""
        return self._buffer[:self._filled]

    def take_tail(self, count):
        """Remove and return the last `count` buffered ids (used to carve a val split)."""
        count = min(count, self._filled)
        tail = self._buffer[self._filled - count:self._filled].copy()
        self._filled -= count
        self.num_tokens -= count
        return tail

    def _flush(self):
        path = os.path.join(self.directory, shard_name(self.split, len(self.paths)))
        write_shard(path, self._buffer[:self._filled], self.vocab_size)
        self.paths.append(path)
        self._filled = 0

    def close(self):
        if self._filled or not self.paths:
            self._flush()
        return self.paths


# --- preparing a corpus ------------------------------------------------------------------

def is_val_document(index, val_fraction):
    """Document `index` goes to val when floor((i + 1) f) > floor(i f): exactly a fraction
    f of the documents, evenly spread through the stream, independent of their content."""
    return int((index + 1) * val_fraction) > int(index * val_fraction)


def prepare(documents, out_dir, tokenizer, val_fraction=0.01, shard_tokens=DEFAULT_SHARD_TOKENS,
            batch_bytes=1 << 22, total_bytes=None, progress=True, extra_meta=None):
    """Tokenize `documents` (Document objects) into train/val shards under `out_dir`.

    Each document becomes <|endoftext|> followed by its ordinary tokens (special-token text
    inside a document is encoded as plain text), so documents are separated by the EOT id.
    Documents are gathered into groups of ~batch_bytes of text, encoded together, and
    streamed to the two writers: memory is bounded by one group plus one shard per split.
    If fewer than 1/val_fraction documents arrive (val would be empty), the last
    val_fraction of the train tokens becomes the val split instead.
    Writes meta.json last (with `extra_meta` merged in); returns its dict.
    """
    from tqdm import tqdm

    if not 0.0 <= val_fraction < 1.0:
        raise ShardError(f"val_fraction must be in [0, 1), got {val_fraction}")
    vocab_size, eot = tokenizer.vocab_size, tokenizer.eot_id
    os.makedirs(out_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(glob.escape(out_dir), "*_[0-9]*.bin")) + \
            [os.path.join(out_dir, "meta.json")]:
        if os.path.exists(stale):
            os.remove(stale)         # a half-finished earlier run must not mix in
    writers = {s: ShardWriter(out_dir, s, vocab_size, shard_tokens) for s in ("train", "val")}
    text_bytes = {"train": 0, "val": 0}
    docs = {"train": 0, "val": 0}
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenizing",
               disable=not progress, dynamic_ncols=True)
    group, group_bytes, index = [], 0, 0

    def flush():
        texts = [doc.text for _, doc in group]
        for (split, _), ids in zip(group, tokenizer.encode_batch(texts, disallowed_special=())):
            writers[split].write(np.asarray([eot] + list(ids), dtype=np.int64))
        group.clear()

    for doc in documents:
        split = "val" if val_fraction > 0 and is_val_document(index, val_fraction) else "train"
        size = len(doc.text.encode("utf-8", "surrogatepass"))
        index += 1
        docs[split] += 1
        text_bytes[split] += size
        group.append((split, doc))
        group_bytes += size
        bar.update(size)
        if group_bytes >= batch_bytes:
            flush()
            group_bytes = 0
    flush()
    bar.close()
    if index == 0:
        raise ShardError("no documents to prepare: the inputs are empty")
    if val_fraction > 0 and writers["val"].num_tokens == 0:
        tail = writers["train"].take_tail(max(1, int(writers["train"].num_tokens * val_fraction)))
        writers["val"].write(tail)
    paths = {s: w.close() for s, w in writers.items()}
    meta = {
        "format": "microgpt-token-shards", "version": VERSION,
        "vocab_size": vocab_size, "eot_id": eot, "dtype": str(dtype_for_vocab(vocab_size)),
        "documents": docs, "text_bytes": text_bytes,
        "tokens": {s: w.num_tokens for s, w in writers.items()},
        "shards": {s: [os.path.basename(p) for p in ps] for s, ps in paths.items()},
        "val_fraction": val_fraction,
    }
    meta.update(extra_meta or {})
    write_json(os.path.join(out_dir, "meta.json"), meta)
    return meta
