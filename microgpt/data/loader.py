"""The batch loader: memory-mapped token shards in, (B, T) int64 input/target batches out.

Each shard of n tokens is cut into (n - 1) // T non-overlapping *windows* of T + 1 tokens
(window i starts at i * T; its first T ids are the inputs x, its last T the targets y, so
y[t] = x[t + 1]). Windows never cross a shard boundary, and shards are only memory-mapped,
so a corpus larger than RAM trains with a resident set of a few batches.

Order: the loader walks an endless stream of windows. Epoch e visits all W windows once,
in the order of a permutation drawn from NumPy's PCG64 seeded with (seed, e) — or in file
order with shuffle=False, as evaluation uses. Batch k is windows k*B ... k*B + B - 1 of the
stream (a batch may straddle two epochs). The whole state is therefore one integer, the
number of windows consumed: `state_dict()` saves it, `load_state_dict()` restores it, and
the batches that follow are the ones an uninterrupted run would have seen, bit for bit.
"""
import numpy as np

from .shards import ShardError, list_shards, open_shard


class DataLoader:
    """Batches of (x, y), each (B, T) int64, from one split of a prepared data directory.

    directory: a directory made by `microgpt data prepare` (or pass `paths` explicitly).
    vocab_size: if given, every shard must have been written for this vocabulary.
    check_ids: scan every id once at open time and reject any outside the vocabulary.
    """

    def __init__(self, directory=None, split="train", batch_size=8, block_size=128, seed=0,
                 shuffle=True, vocab_size=None, check_ids=True, paths=None):
        if batch_size < 1 or block_size < 1:
            raise ShardError(f"batch_size and block_size must be >= 1, got {batch_size}, "
                             f"{block_size}")
        if paths is None:
            paths = list_shards(directory, split)
        if not paths:
            raise ShardError("no shard paths given")
        self.paths = list(paths)
        self.batch_size, self.block_size = int(batch_size), int(block_size)
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self.shards = [open_shard(p, vocab_size=vocab_size, check_ids=check_ids) for p in paths]
        counts = np.array([max(len(s) - 1, 0) // self.block_size for s in self.shards], np.int64)
        self.num_windows = int(counts.sum())
        self.num_tokens = int(sum(len(s) for s in self.shards))
        if self.num_windows == 0:
            raise ShardError(f"{split} split has {self.num_tokens} tokens in {len(paths)} shard(s): "
                             f"too few for one window of block_size + 1 = {self.block_size + 1} "
                             f"tokens; use a smaller block_size or more data")
        # window w lives in shard s where starts[s] <= w < starts[s + 1]
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self.position = 0          # windows consumed so far, across epochs
        self._perm_epoch, self._perm = None, None

    # --- order ---------------------------------------------------------------------------

    def _order(self, epoch):
        """The window ids of one epoch, in visiting order."""
        if not self.shuffle:
            return None
        if self._perm_epoch != epoch:
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
            self._perm = rng.permutation(self.num_windows)
            self._perm_epoch = epoch
        return self._perm

    def _window_ids(self, start, count):
        """Window ids at stream positions start ... start + count - 1."""
        ids = np.empty(count, dtype=np.int64)
        filled = 0
        while filled < count:
            epoch, offset = divmod(start + filled, self.num_windows)
            take = min(count - filled, self.num_windows - offset)
            order = self._order(epoch)
            if order is None:
                ids[filled:filled + take] = np.arange(offset, offset + take)
            else:
                ids[filled:filled + take] = order[offset:offset + take]
            filled += take
        return ids

    def _gather(self, window_ids):
        """(x, y) int64 (len(window_ids), T) for the given windows."""
        T = self.block_size
        rows = np.empty((len(window_ids), T + 1), dtype=np.int64)
        shard_of = np.searchsorted(self._starts, window_ids, side="right") - 1
        for row, (w, s) in enumerate(zip(window_ids, shard_of)):
            begin = int(w - self._starts[s]) * T
            rows[row] = self.shards[s][begin:begin + T + 1]
        return rows[:, :-1].copy(), rows[:, 1:].copy()

    # --- iteration -----------------------------------------------------------------------

    def next_batch(self):
        """The next (x, y) batch, each (B, T) int64; advances the position by B windows."""
        ids = self._window_ids(self.position, self.batch_size)
        self.position += self.batch_size
        return self._gather(ids)

    def __iter__(self):
        while True:
            yield self.next_batch()

    @property
    def epoch(self):
        """Fractional epochs consumed."""
        return self.position / self.num_windows

    def state_dict(self):
        return {"position": int(self.position), "seed": self.seed, "shuffle": self.shuffle,
                "num_windows": self.num_windows, "batch_size": self.batch_size,
                "block_size": self.block_size}

    def load_state_dict(self, state):
        """Resume at a saved position; the data and window layout must be the same."""
        for key in ("seed", "shuffle", "num_windows", "block_size"):
            if key in state and state[key] != getattr(self, key):
                raise ShardError(f"loader state was saved with {key}={state[key]!r} but this "
                                 f"loader has {getattr(self, key)!r}; the data or config changed")
        position = state.get("position")
        if not isinstance(position, int) or position < 0:
            raise ShardError(f"loader state position must be a non-negative int, got {position!r}")
        self.position = position
