"""Batches of tokenized conversations: padded rows, or packed rows with document masking.

Padded: one conversation per row, padded to the longest in the batch (not to the context,
which would only add padding); padding targets are IGNORE, so they cost compute and teach
nothing. On a length-skewed set most of a row is padding.

Packed: conversations are laid end to end in rows of block_size positions (first fit, in
the order the epoch draws them), so almost every position is a real token. Two things keep
them apart, as if each ran alone:

    segment_ids[b, t]   which conversation position t belongs to (1, 2, ...; 0 = padding);
                        the attention lets query i see key j only when j <= i and the
                        segment ids are equal (ops_fused.attention's segment_ids)
    position_ids[b, t]  the position *within* its conversation, restarting at 0, for the
                        learned position table or RoPE

and the first target of each conversation is predicted from its own first token, never from
the previous conversation's last (targets come from the conversation's own ids). Padding
at a row's end is segment 0, a document of its own whose targets are all IGNORE. So a packed
batch's loss and gradients are those of its conversations run one at a time, weighted by
their assistant-token counts (tests/test_finetune_sft.py checks it, both families, full and
LoRA with trained token rows).

SFTBatches draws the examples of each epoch in a permutation of (seed, epoch), so its state
is (epoch, position) and a resumed run continues with the same batches, bit for bit.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import ConfigError
from .data import IGNORE


@dataclass
class Batch:
    x: np.ndarray                          # (B, T) input ids (padding: 0)
    y: np.ndarray                          # (B, T) targets, IGNORE where nothing is learned
    segment_ids: Optional[np.ndarray]      # (B, T) packed only: conversation per position
    position_ids: Optional[np.ndarray]     # (B, T) packed only: position within it
    tokens: int                            # real (non-padding) positions

    def __iter__(self):                    # `x, y = batch`, as the pre-training loader's
        return iter((self.x, self.y))


def padded_batch(examples):
    """One example per row, padded to the longest."""
    width = max(len(e) for e in examples)
    x = np.zeros((len(examples), width), np.int64)
    y = np.full((len(examples), width), IGNORE, np.int64)
    for row, e in enumerate(examples):
        x[row, :len(e)], y[row, :len(e)] = e.inputs, e.targets
    return Batch(x, y, None, None, sum(len(e) for e in examples))


def pack_rows(lengths, block_size):
    """First fit: [[indices into lengths] per row], each row's total <= block_size, in order."""
    rows, room = [], []
    for k, n in enumerate(lengths):
        if n > block_size:
            raise ConfigError(f"an example of {n} positions does not fit rows of {block_size}")
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(k)
                room[r] -= n
                break
        else:
            rows.append([k])
            room.append(block_size - n)
    return rows


def packed_batch(examples, rows, block_size):
    """Rows of examples laid end to end with their segment and position ids."""
    shape = (len(rows), block_size)
    x, y = np.zeros(shape, np.int64), np.full(shape, IGNORE, np.int64)
    segments, positions = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    for r, members in enumerate(rows):
        at = 0
        for s, k in enumerate(members, 1):
            e, n = examples[k], len(examples[k])
            x[r, at:at + n], y[r, at:at + n] = e.inputs, e.targets
            segments[r, at:at + n], positions[r, at:at + n] = s, np.arange(n)
            at += n
    return Batch(x, y, segments, positions, int((segments > 0).sum()))


class SFTBatches:
    """Batches of batch_size rows from a list of Examples, epoch after epoch.

    padded: batch_size examples per batch. packed: examples drawn in order until they fill
    batch_size rows of block_size positions (the last example that does not fit opens the
    next batch)."""

    def __init__(self, examples, batch_size, block_size, seed, shuffle=True, packed=False):
        if not examples:
            raise ConfigError("no training examples: every conversation was skipped or dropped")
        self.examples, self.batch_size, self.block_size = examples, batch_size, block_size
        self.seed, self.shuffle, self.packed = seed, shuffle, packed
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self):
        if not self.shuffle:
            return np.arange(len(self.examples))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.examples))

    def _draw(self):
        if self.position >= len(self._order):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation()
        k = int(self._order[self.position])
        self.position += 1
        return k

    def next_batch(self):
        if not self.packed:
            return padded_batch([self.examples[self._draw()] for _ in range(self.batch_size)])
        chosen, room = [], [self.block_size] * self.batch_size
        rows = [[] for _ in range(self.batch_size)]
        while True:
            state = (self.epoch, self.position, self._order)
            k = self._draw()
            n = len(self.examples[k])
            fit = next((r for r, free in enumerate(room) if n <= free), None)
            if fit is None:
                if not chosen:
                    raise ConfigError(f"an example of {n} positions does not fit rows of "
                                      f"{self.block_size}")
                self.epoch, self.position, self._order = state      # it opens the next batch
                break
            rows[fit].append(len(chosen))
            chosen.append(self.examples[k])
            room[fit] -= n
        return packed_batch(chosen, [r for r in rows if r], self.block_size)

    @property
    def num_batches(self):
        """Batches per epoch (padded) or an estimate (packed), for evaluation's count."""
        if not self.packed:
            return -(-len(self.examples) // self.batch_size)
        total = sum(len(e) for e in self.examples)
        return max(1, -(-total // (self.batch_size * self.block_size)))

    def state_dict(self):
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state):
        self.epoch = int(state["epoch"])
        self._order = self._permutation()
        self.position = int(state["position"])
