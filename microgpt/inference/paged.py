"""A paged KV cache and the decoding forward pass over it.

    cache = PagedKVCache(model.config, num_blocks=256, block_size=16)
    decoder = PagedDecoder(model, cache)
    cache.add(7); cache.add(9)                               # two sequences, any ids
    plan = cache.plan([(7, 5), (9, 1)])                       # 5 prompt tokens of 7, 1 token of 9
    logits = decoder.forward(ids, plan)                      # ids (6,) -> (2, V): each one's last
    cache.release(7)                                          # its blocks are free at once

Why pages. The concatenating cache (nn.KVCache) keeps one (B, NKV, T, HS) array per layer and
copies it whole to append a position: O(T) per token, and every row of a batch must sit at
the same position. Here each layer's keys live in one pool of fixed-size blocks,
(num_blocks, NKV, block_size, HS), and each sequence owns a *block table*: position j is in
block table[j // block_size] at offset j % block_size. Appending writes one row into its slot
(paged_cache_write); a sequence that needs more room takes one free block; a finished one
gives its blocks back. Sequences of any lengths share the pool, which is what lets a server
add and drop requests at every step (serve/scheduler.py), the way vLLM does.

One forward pass, many sequences: the new tokens of every scheduled sequence are laid end to
end, N rows in all (a decode step gives one row per sequence, a prefill chunk many), and
every kernel but attention treats the rows alike — linear, norms, MLP do not care which
sequence a row is from. Attention is paged_attention_forward: row n, at position positions[n],
attends to positions 0 .. positions[n] of its own sequence through that sequence's table
(repeated for each of its rows). Positions enter as the GPT-2 table rows wpe[positions] or as
RoPE angles cos/sin[positions] gathered per row. The logits are computed only for the rows
whose sequence wants a next token (plan.last_rows).

Same answer alone or in a crowd. A row's arithmetic must not depend on what else is in the
call, or a request's greedy text would change with the server's load. Attention, norms,
activations and embeddings are computed row by row in a fixed order already. The linear
kernel is not: it has two paths (csrc/matmul.c:linear_forward), a streaming one for up to
LINEAR_ROWS rows (what decoding one token needs; each weight read once for all rows) and the
packed GEMM above that, and the two round differently. So each row is given one path by what
it is, never by how many rows share the call: a prompt token ("prefill" row) always goes
through the GEMM, padded with zero rows to at least LINEAR_ROWS + 1; a generated token
("decode" row: its index in the sequence is past the prompt, also when it is recomputed after
a preemption) and the LM head always through the streaming path, by the kernel
linear_rows_forward: that path for any number of rows, all of a step's decode rows in one call,
so each weight is read once per step (the first version cut them into calls of LINEAR_ROWS rows
and read the weights 8 times at 32 rows: 84 % of a 32-row step, benchmarks/results/serve.md).
Within each path every row's sums run in one order for any number of rows (a test checks that
for the shapes here), so tests/test_paged_cache.py can ask for bit-identical greedy output.
The padding costs little where it applies: a prompt is many rows anyway.

A plan of decode rows only (every step after the prompts, in generate and in the server) runs
as one C call on the C backend: csrc/decode_step.c is this loop over the same kernels in the
same order (backends/cpu_decode.py DecodeStep describes the weights to it once), so its logits
are the loop's bit for bit; the loop itself stays the specification and runs every other plan
(prompt rows, more decode rows than the integer dots take, other backends, unusual weights).
"""
from dataclasses import dataclass

import numpy as np

from .. import backends
from ..errors import ConfigError
from ..quantize.layers import QuantizedWeight
from .decode import Decoder, cpu_decode

try:
    from ..backends import cpu_quant
except ImportError:             # the C extension is not built: no C step either
    cpu_quant = None

I64 = np.dtype(np.int64)
LINEAR_ROWS = 4            # csrc/matmul.c LINEAR_ROWS_MAX: the streaming path's largest row count


@dataclass
class StepPlan:
    """Where the N new rows of one forward pass go (host int64 arrays). Rows are laid out
    prefill rows first (num_prefill of them), then decode rows; order maps the caller's ids,
    given item after item, to that layout (laid_out = ids[order])."""
    positions: np.ndarray        # (N,) each row's position in its sequence
    slots: np.ndarray            # (N,) block * block_size + offset: where its k, v are written
    tables: np.ndarray           # (N, MB) its sequence's block table, padded with block 0
    last_rows: np.ndarray        # (S,) the row of each planned sequence's last new token
    sequences: list              # (S,) the sequence ids, in plan order
    order: np.ndarray            # (N,) caller's row index of each laid-out row
    num_prefill: int             # rows [0, num_prefill) are prompt tokens


class BlockPool:
    """Free-list allocator of block ids 0 .. num_blocks - 1."""

    def __init__(self, num_blocks):
        self.num_blocks = num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))      # pop() hands out low ids first
        self.peak_used = 0

    @property
    def num_free(self):
        return len(self._free)

    @property
    def num_used(self):
        return self.num_blocks - len(self._free)

    def allocate(self, count):
        """count block ids, or None (and nothing taken) when fewer are free."""
        if count > len(self._free):
            return None
        taken = [self._free.pop() for _ in range(count)]
        self.peak_used = max(self.peak_used, self.num_used)
        return taken

    def release(self, blocks):
        self._free.extend(reversed(blocks))


class PagedKVCache:
    """Per layer one key pool and one value pool (num_blocks, NKV, block_size, HS) on the
    model's backend; per sequence a block table and a length (positions held)."""

    def __init__(self, config, num_blocks, block_size=16, device="cpu", dtype=np.float32):
        if num_blocks < 1 or block_size < 1:
            raise ConfigError(f"a paged cache needs num_blocks >= 1 and block_size >= 1, got "
                              f"{num_blocks} and {block_size}")
        self.config, self.block_size, self.num_blocks = config, block_size, num_blocks
        self.be = backends.get(device)
        shape = (num_blocks, config.n_kv_head, block_size, config.head_size)
        self.keys = [self.be.zeros(shape, np.dtype(dtype)) for _ in range(config.n_layer)]
        self.values = [self.be.zeros(shape, np.dtype(dtype)) for _ in range(config.n_layer)]
        self.bytes_per_block = 2 * config.n_layer * int(np.prod(shape[1:])) * np.dtype(dtype).itemsize
        self.pool = BlockPool(num_blocks)
        self.tables, self.lengths = {}, {}

    @classmethod
    def for_batch(cls, model, batch_size, block_size=16, positions=None):
        """Room for batch_size sequences of `positions` each (default and at most the model's
        whole context)."""
        positions = min(positions or model.config.block_size, model.config.block_size)
        per_sequence = -(-positions // block_size)
        return cls(model.config, batch_size * per_sequence, block_size, model.device, model.dtype)

    # --- sequences ---------------------------------------------------------------------------

    def add(self, seq):
        if seq in self.tables:
            raise ValueError(f"sequence {seq!r} is already in the cache")
        self.tables[seq], self.lengths[seq] = [], 0

    def __contains__(self, seq):
        return seq in self.tables

    def blocks_needed(self, seq, new_tokens):
        """Blocks seq must take before it can hold new_tokens more positions."""
        need = -(-(self.lengths[seq] + new_tokens) // self.block_size)
        return max(0, need - len(self.tables[seq]))

    def reserve(self, seq, new_tokens):
        """Take the blocks for new_tokens more positions; False (nothing taken) if too few are free."""
        count = self.blocks_needed(seq, new_tokens)
        if count == 0:
            return True
        blocks = self.pool.allocate(count)
        if blocks is None:
            return False
        self.tables[seq].extend(blocks)
        return True

    def release(self, seq):
        """Forget seq and free its blocks (finished, cancelled or preempted)."""
        if seq in self.tables:
            self.pool.release(self.tables.pop(seq))
            del self.lengths[seq]

    # --- one forward pass -----------------------------------------------------------------------

    def plan(self, items):
        """items [(seq, n_new, n_prompt)]: n_new tokens of seq, the first n_prompt of them prompt
        tokens. Lays the rows out, and advances each length by n_new (the forward about to run
        writes those positions). Each seq must have reserved its room."""
        rows = []                       # (is_prompt, caller index, position, slot, table)
        last_caller, bs, at = [], self.block_size, 0
        for seq, n, n_prompt in items:
            start, table = self.lengths[seq], self.tables[seq]
            if -(-(start + n) // bs) > len(table):
                raise ValueError(f"sequence {seq!r} has not reserved room for {n} more positions")
            for i, p in enumerate(range(start, start + n)):
                rows.append((i < n_prompt, at + i, p, table[p // bs] * bs + p % bs, table))
            at += n
            last_caller.append(at - 1)
            self.lengths[seq] = start + n
        rows.sort(key=lambda r: not r[0])               # stable: prompt rows first
        width = max(len(r[4]) for r in rows)
        tables = np.zeros((len(rows), width), I64)
        for r, row in enumerate(rows):
            tables[r, :len(row[4])] = row[4]
        order = np.array([r[1] for r in rows], I64)
        where = np.empty(len(rows), I64)
        where[order] = np.arange(len(rows))
        return StepPlan(np.array([r[2] for r in rows], I64), np.array([r[3] for r in rows], I64), tables,
                        where[np.array(last_caller, I64)], [item[0] for item in items], order,
                        sum(1 for r in rows if r[0]))


class PagedDecoder(Decoder):
    """decode.Decoder's weights and pieces, attention over a PagedKVCache.

    forward(ids, plan) runs any mix of sequences; step(ids) is the lockstep interface of
    Decoder.step (ids (B, T) -> (B, V), row b its own sequence) that Engine uses."""

    def __init__(self, model, cache=None, batch_invariant=True):
        super().__init__(model)
        self.paged = cache if cache is not None else PagedKVCache.for_batch(model, 1)
        # False: every row through linear_forward (the packed GEMM above LINEAR_ROWS rows), whose
        # rounding depends on the batch, for callers that re-score their samples (RL rollouts)
        self.batch_invariant = batch_invariant
        self._rows = 0                    # lockstep rows added by step()
        self._num_prefill = 0
        self._position = 0
        self._bind_streamed()
        if not self.gpt2:
            self.cos, self.sin = model.rotary.slice(0, self.config.block_size, model.device, model.dtype)
        # the decode rows' whole step in one C call (csrc/decode_step.c, the same kernels in the
        # same order as forward's loop below); None where the weights or backend are not its kind
        self.c_step = cpu_decode.DecodeStep.build(self) if cpu_decode is not None else None

    @property
    def position(self):
        return self._position

    def _rope(self, x, cos, sin):
        """RoPE on x (N, n, HS), row r rotated by its own angles cos/sin[r] (N, HS/2): the
        kernel takes (B, n, T, HS) with a table per T, so the rows go on the T axis."""
        be = self.be
        n, heads, hs = x.shape
        x = be.reshape(be.permute(x, (1, 0, 2)), (1, heads, n, hs))
        x = be.rope_forward(x, cos, sin)
        return be.permute(be.reshape(x, (heads, n, hs)), (1, 0, 2))

    # --- linear layers with one path per kind of row (see the module docstring) ----------------

    def _streamed(self, x, *wb):
        """x (N, C) through the streaming path, all N rows in one call: linear_rows_forward
        streams each weight row once for every row (not once per LINEAR_ROWS of them), and
        gives each row the bits of a one-row call. On the C backend each weight's call was
        bound once (_bind_streamed: its checks and pointers made at build), the same kernel."""
        fn = self._stream.get(id(wb[0]))
        if fn is not None:
            return fn(x)
        return self.be.linear_rows_forward(x, *wb)

    def _bind_streamed(self):
        """{id(weight): fn(x)} for every weight the streaming path takes, where the backend binds
        a weight once (backends/cpu_decode.py's rows_linear; a quantized weight's own prepared
        kernel); empty elsewhere, and _streamed calls the backend each time."""
        self._stream = {}
        if self.kernels is None:
            return
        raw = self.kernels
        weights = [wb for w in self.layers for wb in w.values()          # _wb's (w, b, w_in_out)
                   if type(wb) is tuple and len(wb) == 3 and type(wb[2]) is bool]
        weights.append((self.lm_head, None, False))
        for w, b, w_in_out in weights:
            if type(w) is QuantizedWeight:
                self._stream[id(w)] = lambda x, w=w, b=b: w.linear(raw, x, b)
            elif type(w) is np.ndarray:
                self._stream[id(w)] = raw.rows_linear(w, b, w_in_out)

    def _packed(self, x, *wb):
        """x (N, C) through the GEMM path: padded with zero rows to LINEAR_ROWS + 1 if shorter."""
        be, n = self.be, x.shape[0]
        if n > LINEAR_ROWS:
            return be.linear_forward(x, *wb)
        pad = be.zeros((LINEAR_ROWS + 1 - n, x.shape[1]), x.dtype)
        out = be.linear_forward(be.concatenate([x, pad], 0), *wb)
        return be.getitem(out, (slice(0, n),))

    def _linear(self, x, *wb):
        """linear_forward(x, *wb) (wb: a layer's weight arguments, decode.py's _wb), each row by
        its kind's path."""
        be, n, p = self.be, x.shape[0], self._num_prefill
        if not self.batch_invariant:
            return be.linear_forward(x, *wb)
        if p == 0:
            return self._streamed(x, *wb)
        if p == n:
            return self._packed(x, *wb)
        return be.concatenate([self._packed(be.getitem(x, (slice(0, p),)), *wb),
                               self._streamed(be.getitem(x, (slice(p, n),)), *wb)], 0)

    def _mlp(self, x, w):
        be = self.be
        if self.gpt2:
            return self._linear(be.gelu_forward(self._linear(x, *w["fc"])), *w["proj"])
        gate = be.silu_forward(self._linear(x, *w["gate"]))
        return self._linear(be.mul(gate, self._linear(x, *w["up"])), *w["down"])

    def _paged_attention(self, x, w, layer, plan, rotary):
        be, cfg = self.be, self.config
        nh, nkv, hs = cfg.n_head, cfg.n_kv_head, cfg.head_size
        n = x.shape[0]
        if self.gpt2:
            heads = be.reshape(self._linear(x, *w["qkv"]), (n, nh + 2 * nkv, hs))
            every = slice(None)
            q = be.getitem(heads, (every, slice(0, nh)))
            k = be.getitem(heads, (every, slice(nh, nh + nkv)))
            v = be.getitem(heads, (every, slice(nh + nkv, nh + 2 * nkv)))
        else:
            q = be.reshape(self._linear(x, *w["q"]), (n, nh, hs))
            k = be.reshape(self._linear(x, *w["k"]), (n, nkv, hs))
            if w["q_norm"] is not None:
                q = be.rms_norm_forward(q, *w["q_norm"])[0]
                k = be.rms_norm_forward(k, *w["k_norm"])[0]
            q, k = self._rope(q, *rotary), self._rope(k, *rotary)
            v = be.reshape(self._linear(x, *w["v"]), (n, nkv, hs))
        cache = self.paged
        be.paged_cache_write(cache.keys[layer], cache.values[layer], k, v, plan.slots)
        y = be.paged_attention_forward(q, cache.keys[layer], cache.values[layer], plan.tables, plan.positions)
        return self._linear(be.reshape(y, (n, nh * hs)), *w["out"])

    def forward(self, ids, plan):
        """ids (N,) int64, the new tokens laid out by plan -> logits (S, V) host array, one row
        per planned sequence (its last new token)."""
        be = self.be
        ids = np.ascontiguousarray(np.asarray(ids, dtype=I64)[plan.order])
        step = self.c_step
        if (step is not None and plan.num_prefill == 0
                and (not step.quantized or ids.shape[0] <= cpu_quant.INTDOT_MAX_ROWS)):
            logits = step(ids, plan)
            if logits is not None:             # None: an id out of range; the loop below says so
                return logits
        self._num_prefill = plan.num_prefill
        ids = be.asarray(ids, I64)
        positions = be.asarray(plan.positions, I64)
        x = be.embedding_forward(ids, self.wte)                                  # (N, C)
        rotary = None
        if self.gpt2:
            x = be.add(x, be.embedding_forward(positions, self.wpe))
        else:
            rotary = (be.getitem(self.cos, (plan.positions,)), be.getitem(self.sin, (plan.positions,)))
        for layer, w in enumerate(self.layers):
            x = be.add(x, self._paged_attention(self._norm(x, w["ln_1"]), w, layer, plan, rotary))
            x = be.add(x, self._mlp(self._norm(x, w["ln_2"]), w))
        x = be.getitem(x, (plan.last_rows,))                                     # (S, C)
        if not self.batch_invariant:
            return be.to_numpy(be.linear_forward(self._norm(x, self.norm_f), self.lm_head, None))
        return be.to_numpy(self._streamed(self._norm(x, self.norm_f), self.lm_head, None))

    def step(self, ids):
        """Lockstep: ids (B, T) at the next T positions of sequences 0 .. B-1 -> (B, V)."""
        ids = np.ascontiguousarray(ids, dtype=I64)
        b, t = ids.shape
        if self._position + t > self.config.block_size:
            raise ValueError(f"positions up to {self._position + t} exceed block_size {self.config.block_size}")
        for row in range(self._rows, b):
            self.paged.add(row)
        self._rows = max(self._rows, b)
        for row in range(b):
            if not self.paged.reserve(row, t):
                raise ValueError(f"the paged cache of {self.paged.num_blocks} blocks is full")
        kind = t if t > 1 else 0          # a multi-token step is a prompt, a single token generated
        logits = self.forward(ids.reshape(-1), self.paged.plan([(row, t, kind) for row in range(b)]))
        self._position += t
        return logits
