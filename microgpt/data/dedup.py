"""Deduplication: exact (hash of the normalized text) and near-duplicate (MinHash + LSH).

    exact = ExactDedup();            exact.seen(text) -> True for the 2nd, 3rd ... copy
    near = NearDedup(DedupConfig()); near.check_batch(texts) -> [None | index of the kept twin]

MinHash (Broder 1997): for a random hash function h, P(min h(A) == min h(B)) = J(A, B), the
Jaccard similarity |A ∩ B| / |A ∪ B| of the two shingle sets; with P independent functions,
the fraction of equal signature entries estimates J with standard error sqrt(J(1-J)/P).

LSH banding (Leskovec, Rajaraman, Ullman, "Mining of Massive Datasets", ch. 3): cut the P
entries into b bands of r rows; two documents become candidates when some band is equal in
all r rows, which happens with probability  P_cand(s) = 1 - (1 - s^r)^b  for similarity s.
`lsh_params` picks (b, r), b*r <= P, minimizing the weighted areas of the two mistakes
around the target threshold t:  false positives ∫_0^t P_cand(s) ds  and false negatives
∫_t^1 (1 - P_cand(s)) ds  (weights 0.5/0.5), the same objective datasketch uses, so the
benchmark can give both libraries the same (b, r).

A candidate is confirmed only when its estimated Jaccard (equal entries / P) is >= t, which
removes most of banding's false positives. Only documents that are kept enter the index, so
the first document of each cluster is its representative, and cleaning the output again
finds nothing more to remove. Memory: P*4 bytes of signature plus b band keys (r*4-byte
bytes objects in b dicts) per kept document; `index_bytes()` reports it.

The hashing definitions (words, shingles, multiply-add-shift permutations) are written in
csrc/minhash.h; the C module microgpt.data._minhash computes them, and the *_reference
functions below are their executable specification (and the fallback when C is not built).
"""
import functools
import hashlib
import re
import sys
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ConfigError

try:
    from . import _minhash
except ImportError:            # not compiled: the NumPy reference is used instead
    _minhash = None

_M64 = (1 << 64) - 1
_FNV_OFFSET, _FNV_PRIME = 0xcbf29ce484222325, 0x100000001b3
_SHINGLE_MUL = 0x9E3779B97F4A7C15
_WORD = re.compile(rb"[0-9A-Za-z_\x80-\xff]+")


@dataclass
class DedupConfig:
    exact: bool = True
    near: bool = True
    threshold: float = 0.8        # target Jaccard similarity of word shingles
    num_perm: int = 128
    shingle: int = 5              # words per shingle
    seed: int = 0
    bands: int = 0                # 0: chosen by lsh_params from threshold and num_perm
    rows: int = 0

    def __post_init__(self):
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"dedup.threshold must lie in (0, 1), got {self.threshold}")
        if not 1 <= self.num_perm <= 4096:
            raise ConfigError(f"dedup.num_perm must be in 1..4096, got {self.num_perm}")
        if not 1 <= self.shingle <= 64:
            raise ConfigError(f"dedup.shingle must be in 1..64 words, got {self.shingle}")
        if (self.bands == 0) != (self.rows == 0) or self.bands * self.rows > self.num_perm \
                or self.bands < 0 or self.rows < 0:
            raise ConfigError(f"dedup.bands and rows must both be 0 (automatic) or positive "
                              f"with bands*rows <= num_perm={self.num_perm}")


def _area(y: np.ndarray, ds: float) -> float:
    """Trapezoid rule on an evenly spaced grid: ds * (y_0/2 + y_1 + ... + y_n/2)."""
    return float(ds * (y.sum() - 0.5 * (y[0] + y[-1]))) if len(y) > 1 else 0.0


@functools.lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int) -> Tuple[int, int]:
    """(bands, rows) minimizing 0.5*false-positive area + 0.5*false-negative area."""
    ds = 1.0 / 2000
    below = np.linspace(0.0, threshold, int(round(threshold / ds)) + 1)
    above = np.linspace(threshold, 1.0, int(round((1.0 - threshold) / ds)) + 1)
    best, best_cost = (1, 1), np.inf
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = _area(1.0 - (1.0 - below ** r) ** b, threshold / (len(below) - 1))
            fn = _area((1.0 - above ** r) ** b, (1.0 - threshold) / (len(above) - 1))
            cost = 0.5 * fp + 0.5 * fn
            if cost < best_cost:
                best, best_cost = (b, r), cost
    return best


def permutations(num_perm: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """The P multiply-add-shift parameters: a odd, b any, both uint64, from the seed."""
    rng = np.random.Generator(np.random.PCG64(seed))
    a = rng.integers(0, 2 ** 64, size=num_perm, dtype=np.uint64, endpoint=False) | np.uint64(1)
    b = rng.integers(0, 2 ** 64, size=num_perm, dtype=np.uint64, endpoint=False)
    return a, b


def _mix64(x: int) -> int:
    x ^= x >> 30
    x = (x * 0xbf58476d1ce4e5b9) & _M64
    x ^= x >> 27
    x = (x * 0x94d049bb133111eb) & _M64
    return x ^ (x >> 31)


def shingle_hashes_reference(text: bytes, shingle: int) -> List[int]:
    """The shingle hashes of csrc/minhash.h, in plain Python integers."""
    ids = []
    for word in _WORD.findall(text):
        h = _FNV_OFFSET
        for c in word.lower():                  # bytes.lower() changes ASCII A-Z only
            h = ((h ^ c) * _FNV_PRIME) & _M64
        ids.append(h)
    width = min(shingle, len(ids))
    out = []
    for i in range(max(len(ids) - shingle + 1, 1) if ids else 0):
        h = 0
        for j in range(width):
            h = (h * _SHINGLE_MUL + ids[i + j]) & _M64
        out.append(_mix64(h))
    return out


def signatures_reference(texts: Sequence[bytes], a: np.ndarray, b: np.ndarray,
                         shingle: int) -> np.ndarray:
    """(D, P) uint32 signatures: min over shingles of hi32(a*x + b mod 2^64)."""
    sig = np.full((len(texts), len(a)), 0xFFFFFFFF, dtype=np.uint32)
    for d, text in enumerate(texts):
        xs = np.array(shingle_hashes_reference(text, shingle), dtype=np.uint64)
        if len(xs):
            values = (xs[:, None] * a[None, :] + b[None, :]) >> np.uint64(32)   # (S, P)
            sig[d] = values.min(axis=0).astype(np.uint32)
    return sig


def _check_shingle(shingle):
    if not isinstance(shingle, (int, np.integer)) or not 1 <= shingle <= 64:
        raise ConfigError(f"shingle must be an integer in 1..64 words, got {shingle!r}")


def shingle_hashes(text: bytes, shingle: int) -> np.ndarray:
    """Shingle hashes of one UTF-8 document, by the C kernel (or the reference)."""
    _check_shingle(shingle)
    if _minhash is None:
        return np.array(shingle_hashes_reference(text, shingle), dtype=np.uint64)
    cap = len(text) // 2 + 1
    out = np.empty(cap, dtype=np.uint64)
    ffi = _minhash.ffi
    n = _minhash.lib.minhash_shingles(ffi.cast("uint64_t *", out.ctypes.data), cap, text,
                                      len(text), shingle)
    if n < 0:
        raise MemoryError("minhash_shingles could not allocate its scratch buffer")
    return out[:n].copy()


def signatures(texts: Sequence[bytes], a: np.ndarray, b: np.ndarray, shingle: int) -> np.ndarray:
    """(D, P) uint32 MinHash signatures of UTF-8 documents."""
    _check_shingle(shingle)
    if _minhash is None:
        return signatures_reference(texts, a, b, shingle)
    if not (a.dtype == b.dtype == np.uint64 and a.shape == b.shape and a.flags.c_contiguous
            and b.flags.c_contiguous):
        raise ConfigError("permutation parameters must be two C-contiguous uint64 arrays "
                          "of equal length")
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    blob = b"".join(texts)
    sig = np.empty((len(texts), len(a)), dtype=np.uint32)
    ffi, lib = _minhash.ffi, _minhash.lib
    rc = lib.minhash_signatures(
        ffi.cast("uint32_t *", sig.ctypes.data), blob,
        ffi.cast("int64_t *", offsets.ctypes.data), ffi.cast("uint64_t *", a.ctypes.data),
        ffi.cast("uint64_t *", b.ctypes.data), len(texts), len(a), shingle)
    if rc != 0:
        raise MemoryError("minhash_signatures could not allocate its scratch buffer")
    return sig


class ExactDedup:
    """Remembers a 64-bit BLAKE2b digest of every text seen (8 bytes of key per document)."""

    def __init__(self):
        self._seen = set()

    @staticmethod
    def digest(text: str) -> int:
        return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"),
                                              digest_size=8).digest(), "little")

    def seen(self, text: str) -> bool:
        """True when an identical text came before; otherwise remember it and return False."""
        key = self.digest(text)
        if key in self._seen:
            return True
        self._seen.add(key)
        return False

    def __len__(self):
        return len(self._seen)

    def index_bytes(self) -> int:
        return sys.getsizeof(self._seen) + 32 * len(self._seen)   # set table + int objects


class NearDedup:
    """MinHash LSH index over the kept documents; see the module docstring."""

    def __init__(self, cfg: DedupConfig):
        self.cfg = cfg
        self.bands, self.rows = (cfg.bands, cfg.rows) if cfg.bands else \
            lsh_params(cfg.threshold, cfg.num_perm)
        self.a, self.b = permutations(cfg.num_perm, cfg.seed)
        self._tables = [dict() for _ in range(self.bands)]
        self._sigs = np.empty((1024, cfg.num_perm), dtype=np.uint32)   # grows by doubling
        self._count = 0
        self._need = int(np.ceil(cfg.threshold * cfg.num_perm - 1e-9))  # equal entries needed

    def __len__(self):
        return self._count

    def check_batch(self, texts: Sequence[str]) -> List[Optional[int]]:
        """For each text in order: None (kept, and indexed) or the index of its kept twin."""
        encoded = [t.encode("utf-8", "surrogatepass") for t in texts]
        sigs = signatures(encoded, self.a, self.b, self.cfg.shingle)
        return [self._check(row) for row in sigs]

    def _check(self, row: np.ndarray) -> Optional[int]:
        width = self.rows * 4
        blob = row[:self.bands * self.rows].tobytes()
        keys = [blob[i * width:(i + 1) * width] for i in range(self.bands)]
        for table, key in zip(self._tables, keys):
            bucket = table.get(key)
            if bucket is None:
                continue
            for twin in (bucket,) if isinstance(bucket, int) else bucket:
                if np.count_nonzero(self._sigs[twin] == row) >= self._need:
                    return twin
        self._insert(row, keys)
        return None

    def _insert(self, row, keys):
        if self._count == len(self._sigs):
            self._sigs = np.concatenate([self._sigs, np.empty_like(self._sigs)])
        self._sigs[self._count] = row
        for table, key in zip(self._tables, keys):
            bucket = table.get(key)        # an int for one document, a list for several
            if bucket is None:
                table[key] = self._count
            elif isinstance(bucket, int):
                table[key] = [bucket, self._count]
            else:
                bucket.append(self._count)
        self._count += 1

    def index_bytes(self) -> int:
        """Signatures of the kept documents plus the band tables (dicts and their keys)."""
        tables = sum(sys.getsizeof(t) for t in self._tables)
        keys = sum(len(t) for t in self._tables) * (33 + self.rows * 4 + 32)
        return self._count * self.cfg.num_perm * 4 + tables + keys
