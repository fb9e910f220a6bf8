"""Tensor parallelism (Megatron-style): one model's matrices split across the ranks of a group.

A Transformer block is two "column then row" pairs: attention (q, k, v projections, then
the output projection) and the MLP (the up projections, then the down projection). Split
the first matrix of a pair by its output rows and the second by its input columns, and the
pair needs one sum across the group at its end and nothing in between:

    y = x W1^T             W1 (H, C) split by rows: rank r holds W1[H_r], computes y[:, H_r]
    z = act(y) W2^T        W2 (C, H) split by columns: rank r computes act(y[:, H_r]) W2[:, H_r]^T,
                           a partial sum of z;  z = sum over r (one allreduce)

act is elementwise (GELU, SwiGLU's silu(gate) * up) and attention is per head, so the
hidden units (H) and the heads are what ranks split: rank r of tp owns n_head / tp query
heads, n_kv_head / tp key/value heads and mlp_hidden / tp hidden units. The two collective
nodes are each other's transpose:

    copy_to_group     forward: identity          backward: allreduce of the gradient
    reduce_from_group forward: allreduce         backward: identity

copy_to_group sits after each norm that feeds a column-parallel matrix (the norm's output
is replicated, but each rank's backward only reaches the heads/units it owns, so the
gradient of the replicated activation is the sum over ranks); reduce_from_group ends each
row-parallel matrix, whose bias is then added once. So a block costs one allreduce of
(B, T, C) per pair in the forward and one per pair in the backward: 2 + 2 per block.

GQA: query head h reads key/value head h // (n_head / n_kv_head), so giving rank r the
query heads [r nh/tp, (r+1) nh/tp) and the kv heads [r nkv/tp, (r+1) nkv/tp) keeps every
query head beside its kv head when tp divides n_kv_head. When n_kv_head < tp (say 1 kv head,
tp 2) the kv heads would have to be replicated on the ranks that share them and their
gradients summed over those ranks: an extra allreduce per block of the kv projections'
gradient, and weights the ranks must keep in step. We refuse that case (a ConfigError
saying so) rather than carry the second code path: with tp <= n_kv_head, as in every
Llama-3 model (8 kv heads) on up to 8 GPUs of a node, it never arises.

Vocabulary parallelism: the token table (V, C) and the LM head (V, C; the same Parameter when
tied) are split by rows into contiguous vocabulary ranges [v_r, v_{r+1}). The embedding looks
up the ids that fall in its range, zeros the rest, and sums over ranks (reduce_from_group);
the LM head gives each rank the logits of its range, and cross-entropy is computed without
ever gathering the (B T, V) logits:

    m   = max over ranks of the local max           (allreduce MAX)
    s   = sum over ranks of sum_v exp(l_v - m)      (allreduce SUM)
    l_y = the target's logit, from the rank that holds it, 0 elsewhere (allreduce SUM)
    loss_n = log s + m - l_y ;  dloss/dl_v = exp(l_v - m) / s - [v == y]

Parameters that every rank of the group holds whole (norm gains, row-parallel biases, wpe)
get the whole gradient on every rank and stay equal without any exchange, except qk-norm's
per-head gains (Qwen3): they are shared by all heads, so each rank's gradient covers only its
heads and the group sums it (`partial_grads`).

Where the sums fall differs from one process (a matmul's k-sum split in two partial sums),
so results agree with one process to float32 rounding (~1e-7 relative), not bit for bit.
Every allreduce is a reduce-scatter then an allgather (distributed.Comm), so each rank of the
group gets the same bits and the replicated activations and weights never drift apart.
"""
import numpy as np

from ..errors import ConfigError
from ..ops import linear
from ..ops_fused import embedding
from ..tensor import Tensor
from ..op_registry import _send


# --- the two collective nodes ----------------------------------------------------------------

def copy_to_group(x, comm):
    """Identity forward; the backward sums the gradient over the group."""
    be = x.backend

    def backward(dout):
        _send(x, be.asarray(comm.allreduce(be.to_numpy(dout), "tp"), x.dtype))
    return Tensor._from_op(x.data, (x,), backward, "tp_copy")


def reduce_from_group(x, comm):
    """Sum over the group forward; the backward hands the gradient through."""
    be = x.backend
    out = be.asarray(comm.allreduce(be.to_numpy(x.data), "tp"), x.dtype)
    return Tensor._from_op(out, (x,), lambda dout: _send(x, dout), "tp_reduce")


# --- the pieces that replace the model's own ---------------------------------------------------

class _ShardedModule:
    """Marks the replacement modules; they keep the parameter names (weight, bias) of the
    modules they replace, so the model's named_parameters() are the single-process names."""


def _module_types():
    from ..nn.module import Module

    class RowParallelLinear(Module, _ShardedModule):
        """y = sum over ranks of x_r W_r^T, then + b (the bias once, after the sum)."""

        def __init__(self, weight, bias, comm):
            self.weight, self.bias, self.comm = weight, bias, comm

        def forward(self, x):
            y = reduce_from_group(linear(x, self.weight, None), self.comm)
            return y + self.bias if self.bias is not None else y

    class VocabParallelEmbedding(Module, _ShardedModule):
        """Rows [start, start + n) of the token table: looks up the ids in that range, zeros
        the others, and sums over the group."""

        def __init__(self, weight, start, comm):
            self.weight, self.start, self.comm = weight, start, comm

        def forward(self, ids):
            ids = np.asarray(ids)
            local = ids - self.start
            inside = (local >= 0) & (local < self.weight.shape[0])
            rows = embedding(np.where(inside, local, 0), self.weight)     # (B, T, C)
            mask = Tensor(inside[..., None].astype(self.weight.dtype), device=self.weight.device)
            return reduce_from_group(rows * mask, self.comm)

    return RowParallelLinear, VocabParallelEmbedding


def vocab_parallel_cross_entropy(logits, targets, start, comm, ignore_index=-100, weights=None):
    """The mean next-token loss of logits split by vocabulary (this rank: ids [start,
    start + V_r)); the same scalar on every rank. Mirrors ops_fused.cross_entropy's
    weighting: sum_n w_n loss_n / sum_n w_n over rows whose target is not ignored."""
    be = logits.backend
    v_local = logits.shape[-1]
    rows_shape = logits.shape[:-1]
    y = np.asarray(targets.numpy() if isinstance(targets, Tensor) else targets).reshape(-1)
    kept = y != ignore_index
    weight = kept.astype(np.float64)
    if weights is not None:
        w = np.asarray(weights.numpy() if isinstance(weights, Tensor) else weights, np.float64)
        weight = weight * w.reshape(-1)
    total = weight.sum()
    scale = weight / total if total > 0 else weight * 0
    flat = be.to_numpy(logits.data).reshape(-1, v_local).astype(np.float64)
    local_max = flat.max(axis=1)
    m = comm.allreduce_max(local_max, "tp")
    e = np.exp(flat - m[:, None])
    s = comm.allreduce(e.sum(axis=1), "tp")
    local_y = y - start
    mine = kept & (local_y >= 0) & (local_y < v_local)
    rows = np.arange(y.size)
    target_logit = np.zeros(y.size)
    target_logit[mine] = flat[rows[mine], local_y[mine]]
    target_logit = comm.allreduce(target_logit, "tp")
    losses = np.log(s) + m - target_logit
    loss = np.float64((losses * scale).sum()).astype(logits.dtype)

    def backward(dout):
        d = e / s[:, None]
        d[rows[mine], local_y[mine]] -= 1.0
        d *= (scale * float(np.asarray(be.to_numpy(dout))))[:, None]
        _send(logits, be.asarray(d.astype(logits.dtype).reshape(*rows_shape, v_local), logits.dtype))
    return Tensor._from_op(be.asarray(np.asarray(loss), logits.dtype), (logits,), backward,
                           "vocab_parallel_cross_entropy")


# --- splitting a built model -------------------------------------------------------------------

def vocab_ranges(vocab_size, tp):
    """[(start, stop)] of each rank's vocabulary rows (np.array_split's sizes)."""
    edges = np.cumsum([0] + [len(a) for a in np.array_split(np.arange(vocab_size), tp)])
    return [(int(edges[r]), int(edges[r + 1])) for r in range(tp)]


def check_tp(gpt_config, tp):
    """ConfigError unless the model splits over tp ranks (see the module docstring)."""
    c = gpt_config
    wrong = [f"{name}={value}" for name, value in (("n_head", c.n_head), ("n_kv_head", c.n_kv_head),
                                                   ("mlp_hidden", c.mlp_hidden)) if value % tp]
    if wrong:
        raise ConfigError(f"--tp {tp} must divide the heads and the MLP width, but {', '.join(wrong)}"
                          f" (key/value heads are split, not replicated: use --tp <= n_kv_head)")
    if c.vocab_size < tp:
        raise ConfigError(f"--tp {tp} is larger than the vocabulary ({c.vocab_size})")


class TensorParallel:
    """Splits a full GPT in place for rank `comm.rank` of a tensor-parallel group.

    After `shard(model)`, `specs[name] = (full_shape, axis, indices)` says which slice of
    the single-process parameter `name` this rank holds (indices along axis); names absent
    from specs are held whole. `partial_grads` names the whole-held parameters whose gradient
    must be summed over the group (qk-norm gains). `loss` is the vocabulary-parallel
    cross-entropy, installed as the model's loss so GPT.forward's callers are unchanged.
    """

    def __init__(self, comm):
        self.comm, self.tp, self.rank = comm, comm.size, comm.rank
        self.specs, self.partial_grads = {}, []

    def _take(self, module, attr, name, axis, indices):
        from ..nn.module import Parameter
        p = getattr(module, attr)
        full = p.numpy()
        self.specs[name] = (tuple(full.shape), axis, np.asarray(indices, np.int64))
        piece = Parameter(np.ascontiguousarray(np.take(full, indices, axis=axis)), dtype=p.dtype,
                          device=p.device)
        setattr(module, attr, piece)
        return piece

    def _split_linear(self, prefix, module, rows):
        """Column-parallel: keep output rows `rows` of W (and of b)."""
        self._take(module, "weight", prefix + ".weight", 0, rows)
        if module.bias is not None:
            self._take(module, "bias", prefix + ".bias", 0, rows)

    def _row_parallel(self, prefix, parent, attr, cols):
        """Row-parallel: keep input columns `cols` of W; the bias stays whole."""
        row_linear, _ = _module_types()
        module = getattr(parent, attr)
        weight = self._take(module, "weight", prefix + ".weight", 1, cols)
        setattr(parent, attr, row_linear(weight, module.bias, self.comm))

    def _copy_after(self, norm):
        """The norm's output enters column-parallel matrices: copy_to_group after it."""
        forward, comm = norm.forward, self.comm
        norm.forward = lambda x: copy_to_group(forward(x), comm)

    def shard(self, model):
        config = model.config
        check_tp(config, self.tp)
        tp, r, hs = self.tp, self.rank, config.head_size
        nh, nkv, hidden = config.n_head, config.n_kv_head, config.mlp_hidden
        heads = lambda n: np.arange(r * n // tp, (r + 1) * n // tp)        # noqa: E731
        rows_of = lambda hh: (hh[:, None] * hs + np.arange(hs)).reshape(-1)  # noqa: E731
        q_rows, kv_rows = rows_of(heads(nh)), rows_of(heads(nkv))
        units = heads(hidden)
        gpt2 = config.family == "gpt2"
        for i, block in enumerate(model.blocks):
            base = f"transformer.h.{i}" if gpt2 else f"model.layers.{i}"
            attn = block.attn if gpt2 else block.self_attn
            attn.n_head, attn.n_kv_head = nh // tp, nkv // tp
            if gpt2:
                c_attn_rows = np.concatenate([q_rows, nh * hs + kv_rows, (nh + nkv) * hs + kv_rows])
                self._split_linear(f"{base}.attn.c_attn", attn.c_attn, c_attn_rows)
                self._row_parallel(f"{base}.attn.c_proj", attn, "c_proj", q_rows)
                self._split_linear(f"{base}.mlp.c_fc", block.mlp.c_fc, units)
                self._row_parallel(f"{base}.mlp.c_proj", block.mlp, "c_proj", units)
                self._copy_after(block.ln_1)
                self._copy_after(block.ln_2)
            else:
                self._split_linear(f"{base}.self_attn.q_proj", attn.q_proj, q_rows)
                self._split_linear(f"{base}.self_attn.k_proj", attn.k_proj, kv_rows)
                self._split_linear(f"{base}.self_attn.v_proj", attn.v_proj, kv_rows)
                self._row_parallel(f"{base}.self_attn.o_proj", attn, "o_proj", q_rows)
                if attn.qk_norm:
                    self.partial_grads += [f"{base}.self_attn.q_norm.weight",
                                           f"{base}.self_attn.k_norm.weight"]
                self._split_linear(f"{base}.mlp.gate_proj", block.mlp.gate_proj, units)
                self._split_linear(f"{base}.mlp.up_proj", block.mlp.up_proj, units)
                self._row_parallel(f"{base}.mlp.down_proj", block.mlp, "down_proj", units)
                self._copy_after(block.input_layernorm)
                self._copy_after(block.post_attention_layernorm)
        self._split_vocabulary(model)
        self._install_loss(model)
        return self

    def _split_vocabulary(self, model):
        _, vocab_embedding = _module_types()
        config = model.config
        self.start, stop = vocab_ranges(config.vocab_size, self.tp)[self.rank]
        rows = np.arange(self.start, stop)
        group, table_name = ((model.transformer, "wte") if config.family == "gpt2"
                             else (model.model, "embed_tokens"))
        prefix = ("transformer.wte" if config.family == "gpt2" else "model.embed_tokens")
        table = getattr(group, table_name)
        weight = self._take(table, "weight", prefix + ".weight", 0, rows)
        setattr(group, table_name, vocab_embedding(weight, self.start, self.comm))
        if config.tie_embeddings:
            model.lm_head.weight = weight                # one Parameter under two names again
        else:
            self._take(model.lm_head, "weight", "lm_head.weight", 0, rows)
        self._copy_after(model.transformer.ln_f if config.family == "gpt2" else model.model.norm)

    def _install_loss(self, model):
        """GPT.forward with the vocabulary-parallel loss: the logits it returns are this rank's
        vocabulary range, the loss the whole vocabulary's."""
        forward, start, comm = model.forward, self.start, self.comm

        def tp_forward(idx, targets=None, kv_cache=None, ignore_index=-100, loss_weights=None,
                       last_only=False):
            logits, _ = forward(idx, None, kv_cache, ignore_index, None, last_only)
            loss = None
            if targets is not None:
                loss = vocab_parallel_cross_entropy(logits, targets, start, comm, ignore_index,
                                                    loss_weights)
            return logits, loss
        model.forward = tp_forward
        self.loss = lambda logits, targets, ignore_index=-100, weights=None: \
            vocab_parallel_cross_entropy(logits, targets, start, comm, ignore_index, weights)

    def shard_array(self, name, full):
        """This rank's piece of a single-process array of parameter `name` (for moments)."""
        if name not in self.specs:
            return full
        _, axis, indices = self.specs[name]
        return np.ascontiguousarray(np.take(full, indices, axis=axis))



def assemble(pieces):
    """The single-process array from the pieces of every rank of a group: [(array, spec)],
    spec = (full_shape, axis, indices) or None for an array each rank holds whole."""
    first, spec = pieces[0]
    if spec is None:
        return first
    shape, axis, _ = spec
    full = np.empty(shape, first.dtype)
    for piece, (_, _, indices) in pieces:
        index = [slice(None)] * len(shape)
        index[axis] = indices
        full[tuple(index)] = piece
    return full
