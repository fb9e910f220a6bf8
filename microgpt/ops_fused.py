"""The fused ops: one graph node each, with a hand-derived backward (as in llm.c).

softmax, log_softmax, cross_entropy, token_logprobs, kl_div, embedding, dropout, layer_norm, rms_norm, rope and
causal self-attention are each one idea, so each is one node: the forward kernel returns
what the backward needs (mean and rstd for layer_norm, the row logsumexp for attention and
cross_entropy) and the backward kernel turns dout into input gradients in one call. The
formulas live beside the kernels in backends/reference.py; this file checks arguments and
wires forward to backward. The ops register in op_registry.OPS beside ops.py's; this file
imports ops.py for the primitives it is built from, never the other way round.
"""
import numpy as np

from .errors import DTypeError, ShapeError
from .op_registry import _send, op
from .ops import transpose
from .tensor import Tensor


def _same_dtype(name, *tensors):
    first = tensors[0]
    for t in tensors[1:]:
        if t is not None and (t.dtype != first.dtype or t.device != first.device):
            raise DTypeError(f"{name}: inputs differ in dtype/device ({first.dtype}/{first.device} "
                             f"and {t.dtype}/{t.device})")


def _ids(ids, name, limit, device):
    """Integer ids as (host copy or None, backend int64 array); host ids are range-checked."""
    if isinstance(ids, Tensor):
        if np.issubdtype(ids.dtype, np.floating):
            raise DTypeError(f"{name}: ids must be integers, got {ids.dtype}")
        if ids.device != device:
            raise DTypeError(f"{name}: ids on {ids.device}, weights on {device}")
        return None, ids.data
    host = np.asarray(ids)
    if not np.issubdtype(host.dtype, np.integer):
        raise DTypeError(f"{name}: ids must be integers, got {host.dtype}")
    return host, None if limit is None else _upload_ids(host, name, limit, device)


def _upload_ids(host, name, limit, device):
    if host.size and (host.min() < 0 or host.max() >= limit):
        raise ShapeError(f"{name}: ids must lie in [0, {limit}), got range [{host.min()}, {host.max()}]")
    from . import backends
    return backends.get(device).asarray(host, np.int64)


# --- softmax family -------------------------------------------------------------------------------

@op
def softmax(x, axis=-1):
    if axis % x.ndim != x.ndim - 1:      # the kernel works on the last axis; move axis there
        return transpose(softmax(transpose(x, axis, -1)), axis, -1)
    be = x.backend
    out = be.softmax_forward(x.data)
    return Tensor._from_op(out, (x,), lambda dout: _send(x, be.softmax_backward(dout, out)), "softmax")


@op
def log_softmax(x, axis=-1):
    if axis % x.ndim != x.ndim - 1:
        return transpose(log_softmax(transpose(x, axis, -1)), axis, -1)
    be = x.backend
    out = be.log_softmax_forward(x.data)
    return Tensor._from_op(out, (x,), lambda dout: _send(x, be.log_softmax_backward(dout, out)),
                           "log_softmax")


@op
def cross_entropy(logits, targets, ignore_index=-100, weights=None):
    """Mean next-token loss: sum_n w_n loss_n / sum_n w_n over rows whose target is not ignored.

    logits (..., V); targets: integer ids of shape logits.shape[:-1]; weights: optional
    per-token floats of that shape (SFT masks). With every row ignored the loss is 0.
    """
    vocab = logits.shape[-1]
    rows_shape = logits.shape[:-1]
    host_targets = np.asarray(targets.numpy() if isinstance(targets, Tensor) else targets)
    if not np.issubdtype(host_targets.dtype, np.integer):
        raise DTypeError(f"cross_entropy: targets must be integers, got {host_targets.dtype}")
    if host_targets.shape != rows_shape:
        raise ShapeError(f"cross_entropy: targets {host_targets.shape} do not match logits {logits.shape}")
    kept = host_targets != ignore_index
    if np.any(kept & ((host_targets < 0) | (host_targets >= vocab))):
        raise ShapeError(f"cross_entropy: targets must lie in [0, {vocab}) or equal ignore_index={ignore_index}")
    weight = kept.astype(np.float64)
    if weights is not None:
        weights = np.asarray(weights.numpy() if isinstance(weights, Tensor) else weights, dtype=np.float64)
        if weights.shape != rows_shape:
            raise ShapeError(f"cross_entropy: weights {weights.shape} do not match targets {rows_shape}")
        weight = weight * weights
    total = weight.sum()
    scale_host = (weight / total if total > 0 else weight * 0).reshape(-1)
    be = logits.backend
    n = scale_host.size
    flat_logits = be.reshape(logits.data, (n, vocab))
    flat_targets = be.asarray(host_targets.reshape(-1).astype(np.int64), np.int64)
    scale = be.asarray(scale_host, logits.dtype)
    losses, lse = be.cross_entropy_forward(flat_logits, flat_targets, ignore_index)
    loss = be.sum(be.mul(losses, scale), (0,), False)

    def backward(dout):
        dlosses = be.mul(scale, dout)     # d(sum_n s_n loss_n)/dloss_n = s_n
        dlogits = be.cross_entropy_backward(dlosses, flat_logits, flat_targets, lse, ignore_index)
        _send(logits, be.reshape(dlogits, logits.shape))
    return Tensor._from_op(loss, (logits,), backward, "cross_entropy")


@op
def token_logprobs(logits, targets, ignore_index=-100):
    """log p(target) at every position: logits (..., V), targets (...) -> (...), 0 where ignored.

    The per-token log-likelihood that preference and RL losses are built from (DPO's
    sequence log-probs, PPO's ratios). It is -cross_entropy's per-row loss, so it reuses its
    kernels: logp_n = z_n[t_n] - lse(z_n), and d logp_n / dz_n = onehot(t_n) - softmax(z_n),
    which is cross_entropy_backward with the upstream gradient negated.
    """
    vocab = logits.shape[-1]
    rows_shape = logits.shape[:-1]
    host_targets = np.asarray(targets.numpy() if isinstance(targets, Tensor) else targets)
    if not np.issubdtype(host_targets.dtype, np.integer):
        raise DTypeError(f"token_logprobs: targets must be integers, got {host_targets.dtype}")
    if host_targets.shape != rows_shape:
        raise ShapeError(f"token_logprobs: targets {host_targets.shape} do not match logits {logits.shape}")
    kept = host_targets != ignore_index
    if np.any(kept & ((host_targets < 0) | (host_targets >= vocab))):
        raise ShapeError(f"token_logprobs: targets must lie in [0, {vocab}) or equal "
                         f"ignore_index={ignore_index}")
    be = logits.backend
    n = int(np.prod(rows_shape, dtype=np.int64))
    flat_logits = be.reshape(logits.data, (n, vocab))
    flat_targets = be.asarray(host_targets.reshape(-1).astype(np.int64), np.int64)
    losses, lse = be.cross_entropy_forward(flat_logits, flat_targets, ignore_index)
    out = be.reshape(be.neg(losses), rows_shape)

    def backward(dout):
        dlosses = be.neg(be.reshape(dout, (n,)))
        dlogits = be.cross_entropy_backward(dlosses, flat_logits, flat_targets, lse, ignore_index)
        _send(logits, be.reshape(dlogits, logits.shape))
    return Tensor._from_op(out, (logits,), backward, "token_logprobs")


@op
def kl_div(student_logits, teacher_logits, temperature=1.0):
    """Distillation's soft loss: the mean over rows of KL(softmax(t / T) || softmax(s / T)).

    student_logits (..., V), a Tensor; teacher_logits of the same shape, a constant (a Tensor
    computed under no_grad, or an array): the target, which gets no gradient. Multiply by T^2
    to keep the gradient's size independent of T (finetune/distill.py says why). One node:
    the forward keeps only the two row logsumexps, the backward rebuilds both softmaxes.
    Equal to torch.nn.functional.kl_div(log_softmax(s / T), softmax(t / T),
    reduction="batchmean") on (N, V) rows (tests/test_distill_kl.py).
    """
    teacher = teacher_logits.data if isinstance(teacher_logits, Tensor) else teacher_logits
    if tuple(teacher.shape) != student_logits.shape or student_logits.ndim < 1:
        raise ShapeError(f"kl_div: teacher logits {tuple(teacher.shape)} do not match the student's "
                         f"{student_logits.shape}")
    if not temperature > 0:
        raise ValueError(f"kl_div: temperature must be > 0, got {temperature}")
    be = student_logits.backend
    vocab = student_logits.shape[-1]
    n = int(np.prod(student_logits.shape[:-1], dtype=np.int64))
    flat_student = be.reshape(student_logits.data, (n, vocab))
    flat_teacher = be.reshape(be.asarray(teacher, student_logits.dtype) if isinstance(teacher, np.ndarray)
                              else teacher, (n, vocab))
    losses, student_lse, teacher_lse = be.kl_div_forward(flat_student, flat_teacher, float(temperature))
    loss = be.mul(be.sum(losses, (0,), False), be.asarray(np.array(1.0 / max(n, 1)), student_logits.dtype))

    def backward(dout):
        dlosses = be.broadcast_to(be.mul(dout, be.asarray(np.array(1.0 / max(n, 1)), student_logits.dtype)),
                                  (n,))
        dstudent = be.kl_div_backward(dlosses, flat_student, flat_teacher, student_lse, teacher_lse,
                                      float(temperature))
        _send(student_logits, be.reshape(dstudent, student_logits.shape))
    return Tensor._from_op(loss, (student_logits,), backward, "kl_div")


# --- embedding and dropout ---------------------------------------------------------------------------

@op
def embedding(ids, weight):
    """weight[ids]: rows of the table; backward scatter-adds dout into the used rows."""
    if weight.ndim != 2:
        raise ShapeError(f"embedding: weight must be (num_embeddings, dim), got {weight.shape}")
    host, device_ids = _ids(ids, "embedding", weight.shape[0], weight.device)
    be = weight.backend
    out = be.embedding_forward(device_ids, weight.data)
    return Tensor._from_op(out, (weight,),
                           lambda dout: _send(weight, be.embedding_backward(dout, device_ids, weight.shape[0])),
                           "embedding")


@op
def dropout(x, p, rng, training=True):
    """Zero each element with probability p and scale the rest by 1/(1-p) (inverted dropout).

    The mask is drawn from `rng` (a numpy Generator), so a seeded run is reproducible.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    be = x.backend
    mask = be.asarray((rng.random(x.shape) >= p) / (1.0 - p), x.dtype)
    return Tensor._from_op(be.mul(x.data, mask), (x,), lambda dout: _send(x, be.mul(dout, mask)), "dropout")


# --- normalization ------------------------------------------------------------------------------------

@op
def layer_norm(x, weight, bias=None, eps=1e-5):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis."""
    if weight.shape != (x.shape[-1],) or (bias is not None and bias.shape != weight.shape):
        raise ShapeError(f"layer_norm: weight {weight.shape} must be ({x.shape[-1]},) to fit input {x.shape}")
    _same_dtype("layer_norm", x, weight, bias)
    be = x.backend
    out, mean, rstd = be.layer_norm_forward(x.data, weight.data, None if bias is None else bias.data, eps)
    parents = (x, weight) if bias is None else (x, weight, bias)

    def backward(dout):
        dx, dw, db = be.layer_norm_backward(dout, x.data, weight.data, mean, rstd, bias is not None)
        _send(x, dx)
        _send(weight, dw)
        if bias is not None:
            _send(bias, db)
    return Tensor._from_op(out, parents, backward, "layer_norm")


@op
def rms_norm(x, weight, eps=1e-6):
    """x / sqrt(mean(x^2) + eps) * weight over the last axis (Llama)."""
    if weight.shape != (x.shape[-1],):
        raise ShapeError(f"rms_norm: weight {weight.shape} must be ({x.shape[-1]},) to fit input {x.shape}")
    _same_dtype("rms_norm", x, weight)
    be = x.backend
    out, rstd = be.rms_norm_forward(x.data, weight.data, eps)

    def backward(dout):
        dx, dw = be.rms_norm_backward(dout, x.data, weight.data, rstd)
        _send(x, dx)
        _send(weight, dw)
    return Tensor._from_op(out, (x, weight), backward, "rms_norm")


# --- rotary position embedding and attention ------------------------------------------------------------

@op
def rope(x, cos, sin):
    """Rotary position embedding of x (B, NH, T, HS) with angle tables cos, sin (T, HS/2).

    cos and sin are constants (arrays or tensors on x's device); see nn.attention.rope_tables.
    """
    cos = cos.data if isinstance(cos, Tensor) else cos
    sin = sin.data if isinstance(sin, Tensor) else sin
    if x.ndim != 4 or x.shape[-1] % 2:
        raise ShapeError(f"rope: input must be (B, NH, T, HS) with even HS, got {x.shape}")
    expected = (x.shape[2], x.shape[3] // 2)
    if tuple(cos.shape) != expected or tuple(sin.shape) != expected:
        raise ShapeError(f"rope: cos/sin must be {expected} for input {x.shape}, got {tuple(cos.shape)}")
    be = x.backend
    return Tensor._from_op(be.rope_forward(x.data, cos, sin), (x,),
                           lambda dout: _send(x, be.rope_backward(dout, cos, sin)), "rope")


@op
def attention(q, k, v, segment_ids=None):
    """Fused causal scaled-dot-product attention with grouped-query heads.

    q (B, NH, Tq, HS); k, v (B, NKV, Tk, HS) with NH a multiple of NKV and Tq <= Tk (the
    queries are the last Tq positions, as when decoding with a KV cache). Saves only the row
    logsumexp for backward, never the (Tq, Tk) probabilities.

    segment_ids: None, or an integer array (B, T) with T = Tq = Tk: document masking for rows
    that pack several documents. Query i then sees key j iff j <= i and segment_ids[b, i] ==
    segment_ids[b, j], so no token attends across a document boundary. Give padding an id of
    its own (-1, say): padding then sees only padding and no document sees it. Ids are host
    data (masks, not values): they get no gradient.
    """
    if q.ndim != 4 or k.ndim != 4 or v.shape != k.shape:
        raise ShapeError(f"attention: need q (B,NH,T,HS), k and v (B,NKV,T,HS); got {q.shape}, {k.shape}, {v.shape}")
    b, nh, tq, hs = q.shape
    if k.shape[0] != b or k.shape[3] != hs or k.shape[1] == 0 or nh % k.shape[1] or tq > k.shape[2]:
        raise ShapeError(f"attention: q {q.shape} does not fit k/v {k.shape} (same B and HS, "
                         "NH a multiple of NKV, Tq <= Tk)")
    _same_dtype("attention", q, k, v)
    segment_ids = _segment_ids(segment_ids, b, tq, k.shape[2])
    be = q.backend
    out, lse = be.attention_forward(q.data, k.data, v.data, segment_ids)

    def backward(dout):
        dq, dk, dv = be.attention_backward(dout, q.data, k.data, v.data, out, lse, segment_ids)
        _send(q, dq)
        _send(k, dk)
        _send(v, dv)
    return Tensor._from_op(out, (q, k, v), backward, "attention")


def _segment_ids(segment_ids, b, tq, tk):
    """attention's segment_ids as a host int64 (B, T) array, or None; ShapeError/DTypeError."""
    if segment_ids is None:
        return None
    seg = segment_ids.numpy() if isinstance(segment_ids, Tensor) else np.asarray(segment_ids)
    if not np.issubdtype(seg.dtype, np.integer):
        raise DTypeError(f"attention: segment_ids must be integers, got {seg.dtype}")
    if tq != tk:
        raise ShapeError(f"attention: segment_ids need every position as a query (Tq = Tk), got "
                         f"Tq={tq}, Tk={tk}; decoding with a KV cache takes no segment ids")
    if seg.shape != (b, tk):
        raise ShapeError(f"attention: segment_ids must be (B, T) = {(b, tk)}, got {seg.shape}")
    return np.ascontiguousarray(seg, dtype=np.int64)
