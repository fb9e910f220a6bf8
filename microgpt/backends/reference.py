"""The reference backend: every kernel of the contract in plain NumPy.

This file is the *specification*. Each function states its formula and computes it in the
most direct NumPy, in the dtype it is given (float32 for training, float64 for gradient
checks). The C and CUDA kernels are tested against these functions, so clarity wins over
speed everywhere here — attention, for instance, builds the whole (T, T) score matrix.

Shape alphabet: N rows, V vocab, B batch, T time, C channels, NH query heads,
NKV key/value heads, HS head size.
"""
import numpy as np

AVAILABLE = True
NAME = "reference"
GELU_SCALE = np.sqrt(2.0 / np.pi)   # GPT-2's tanh approximation of GELU


# --- arrays: creation, transfer, bookkeeping ---------------------------------------------

def _contiguous(a):
    """A C-contiguous ndarray; unlike np.ascontiguousarray it keeps 0-d arrays 0-d."""
    return np.asarray(a, order="C")


def asarray(host_array, dtype):
    return np.array(host_array, dtype=dtype, copy=True, order="C")


def to_numpy(a):
    return np.asarray(a)


def zeros(shape, dtype):
    return np.zeros(shape, dtype=dtype)


def full(shape, value, dtype):
    return np.full(shape, value, dtype=dtype)


def accumulate(dst, src):
    dst += src


# --- elementwise ---------------------------------------------------------------------------
# NumPy ufuncs turn 0-d arrays into scalars; np.asarray keeps every result an ndarray, so
# accumulate() can always add in place.

def add(a, b):
    return np.asarray(np.add(a, b))


def sub(a, b):
    return np.asarray(np.subtract(a, b))


def mul(a, b):
    return np.asarray(np.multiply(a, b))


def div(a, b):
    return np.asarray(np.divide(a, b))


def neg(a):
    return np.asarray(np.negative(a))


def pow_scalar(a, p):
    return np.asarray(np.power(a, a.dtype.type(p)))


def exp(a):
    return np.asarray(np.exp(a))


def log(a):
    return np.asarray(np.log(a))


def sqrt(a):
    return np.asarray(np.sqrt(a))


def tanh(a):
    return np.asarray(np.tanh(a))


def relu_forward(x):
    return np.maximum(x, 0)


def relu_backward(dout, x):
    return dout * (x > 0)


def gelu_forward(x):
    # gelu(x) = 0.5 x (1 + tanh(s (x + 0.044715 x^3))),  s = sqrt(2/pi)
    inner = GELU_SCALE * (x + 0.044715 * x ** 3)
    return (0.5 * x * (1.0 + np.tanh(inner))).astype(x.dtype)


def gelu_backward(dout, x):
    # d/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) s (1 + 3 * 0.044715 x^2),  t = tanh(s (x + 0.044715 x^3))
    t = np.tanh(GELU_SCALE * (x + 0.044715 * x ** 3))
    local = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_SCALE * (1.0 + 3 * 0.044715 * x * x)
    return (dout * local).astype(x.dtype)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def silu_forward(x):
    # silu(x) = x * sigmoid(x)
    return x * _sigmoid(x)


def silu_backward(dout, x):
    # d/dx = sigmoid(x) (1 + x (1 - sigmoid(x)))
    s = _sigmoid(x)
    return dout * s * (1.0 + x * (1.0 - s))


# --- reductions and shapes -----------------------------------------------------------------

def sum(a, axes, keepdims):   # noqa: A001 - the contract's name
    return np.asarray(np.sum(a, axis=axes, keepdims=keepdims), dtype=a.dtype)


def max(a, axes, keepdims):   # noqa: A001
    return np.asarray(np.max(a, axis=axes, keepdims=keepdims), dtype=a.dtype)


def max_backward(dout, a, out, axes):
    # The gradient flows to every position equal to the maximum, split evenly among ties.
    out_kept = np.expand_dims(out, axes) if out.ndim < a.ndim else out
    dout_kept = np.expand_dims(dout, axes) if dout.ndim < a.ndim else dout
    is_max = (a == out_kept)
    ties = np.sum(is_max, axis=axes, keepdims=True)
    return (is_max * (dout_kept / ties)).astype(a.dtype)


def sum_to_shape(g, shape):
    # Broadcasting prepends axes and stretches size-1 axes; sum both back out.
    shape = tuple(shape)
    extra = g.ndim - len(shape)
    if extra:
        g = np.sum(g, axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if stretched:
        g = np.sum(g, axis=stretched, keepdims=True)
    return _contiguous(g)


def broadcast_to(a, shape):
    return _contiguous(np.broadcast_to(a, shape))


def reshape(a, shape):
    return np.reshape(a, shape)


def permute(a, axes):
    return _contiguous(np.transpose(a, axes))


def getitem(a, index):
    return _contiguous(a[index])


def getitem_backward(dout, shape, index):
    da = np.zeros(shape, dtype=dout.dtype)
    parts = index if isinstance(index, tuple) else (index,)
    if any(isinstance(part, np.ndarray) for part in parts):
        np.add.at(da, index, dout)    # integer arrays may repeat an index: accumulate every hit
    else:
        da[index] = dout              # basic indexing selects each element at most once
    return da


def concatenate(arrays, axis):
    return np.concatenate(arrays, axis=axis)


# --- linear algebra --------------------------------------------------------------------------

def matmul_forward(a, b):
    return np.matmul(a, b)


def matmul_backward(dout, a, b):
    # out = a @ b  =>  da = dout @ b^T,  db = a^T @ dout, each summed over broadcast batch dims.
    da = np.matmul(dout, np.swapaxes(b, -1, -2))
    db = np.matmul(np.swapaxes(a, -1, -2), dout)
    return sum_to_shape(da, a.shape), sum_to_shape(db, b.shape)


def linear_forward(x, w, b, w_in_out=False):
    # out = x @ w^T + b,  x (..., C), w (OC, C)  ->  out (..., OC)
    # w_in_out: the same map with w stored (C, OC), its transpose (GPT-2's Conv1D), so
    # out = x @ w + b. Which of the two matrices is "the weight" is only a storage choice.
    out = np.matmul(x, w if w_in_out else w.T)
    if b is not None:
        out += b
    return out


def linear_rows_forward(x, w, b, w_in_out=False):
    # linear_forward's map, out = x @ w^T + b (w_in_out: x @ w + b). The contract adds one
    # promise for the compiled backends: row n of out is computed from row n of x alone, in
    # an order that does not depend on how many rows share the call (batch invariance, for a
    # server whose greedy answers must not change with its load: inference/paged.py).
    return linear_forward(x, w, b, w_in_out)


def linear_backward(dout, x, w, has_bias, w_in_out=False):
    # out[n, o] = sum_c x[n, c] W[o, c] + b[o] with W (OC, C) the map, so
    #   dx[n, c] = sum_o dout[n, o] W[o, c]   ->  dx = dout @ W
    #   dW[o, c] = sum_n dout[n, o] x[n, c]   ->  dW = dout^T @ x (over all rows)
    #   db[o]    = sum_n dout[n, o]
    # w_in_out stores W^T, and dw comes out in w's own layout, (C, OC): dw = x^T @ dout,
    # dx = dout @ w^T. So an optimizer, clipping and checkpoints see one layout per parameter.
    rows_out = dout.reshape(-1, dout.shape[-1])
    rows_x = x.reshape(-1, x.shape[-1])
    if w_in_out:
        dx = np.matmul(dout, w.T)
        dw = rows_x.T @ rows_out
    else:
        dx = np.matmul(dout, w)
        dw = rows_out.T @ rows_x
    db = rows_out.sum(axis=0) if has_bias else None
    return dx, dw, db


# --- softmax family ----------------------------------------------------------------------------

def softmax_forward(x):
    # softmax(x)_i = exp(x_i - max x) / sum_j exp(x_j - max x); the shift keeps exp finite.
    shifted = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return shifted / np.sum(shifted, axis=-1, keepdims=True)


def softmax_backward(dout, out):
    # y = softmax(x): dy_i/dx_j = y_i (delta_ij - y_j)  (quotient rule on e^x_i / sum_k e^x_k), so
    #   dx_j = sum_i dout_i y_i (delta_ij - y_j) = y_j (dout_j - sum_i dout_i y_i).
    # The forward's shift by max x adds the same constant to every x_i, which softmax ignores:
    # no gradient flows through the max.
    return out * (dout - np.sum(dout * out, axis=-1, keepdims=True))


def _logsumexp(x):
    peak = np.max(x, axis=-1, keepdims=True)
    return (peak + np.log(np.sum(np.exp(x - peak), axis=-1, keepdims=True)))[..., 0]


def log_softmax_forward(x):
    return x - _logsumexp(x)[..., None]


def log_softmax_backward(dout, out):
    # out_i = x_i - lse(x) and d lse/dx_j = softmax(x)_j, so
    #   dx_j = dout_j - softmax(x)_j sum_i dout_i,  with softmax(x) = exp(out) (nothing else saved).
    return dout - np.exp(out) * np.sum(dout, axis=-1, keepdims=True)


def cross_entropy_forward(logits, targets, ignore_index):
    # loss_n = lse(logits_n) - logits_n[target_n]; rows whose target is ignore_index give 0.
    lse = _logsumexp(logits)
    kept = targets != ignore_index
    safe_targets = np.where(kept, targets, 0)
    picked = np.take_along_axis(logits, safe_targets[:, None], axis=1)[:, 0]
    losses = np.where(kept, lse - picked, 0).astype(logits.dtype)
    return losses, lse.astype(logits.dtype)


def cross_entropy_backward(dlosses, logits, targets, lse, ignore_index):
    # loss = lse(z) - z_t for one row z with target t. d lse/dz_j = e^(z_j - lse) = p_j (the
    # softmax) and d z_t/dz_j = [j == t], so dloss/dz_j = p_j - [j == t]; times the upstream dloss:
    #   dlogits = dloss (p - onehot(t)).
    # The forward's lse gives p = exp(z - lse) without a second reduction. An ignored row's loss
    # is the constant 0, so its gradient is exactly 0: chosen with np.where, as the forward does,
    # not multiplied by a dloss of 0, which would leave 0 * NaN = NaN where that row's logits
    # (which the loss never read) are not finite.
    kept = targets != ignore_index
    probs = np.exp(logits - lse[:, None])
    probs[np.arange(len(targets))[kept], targets[kept]] -= 1
    return np.where(kept[:, None], probs * dlosses[:, None], 0).astype(logits.dtype)


def kl_div_forward(student, teacher, temperature):
    # Distillation's soft loss, one row n of V logits each: with z = student / T, u = teacher / T,
    #   q = softmax(z), p = softmax(u),  kl_n = KL(p || q) = sum_v p_v (log p_v - log q_v)
    # and log p = u - lse(u), log q = z - lse(z). A teacher logit of -inf has p_v = 0, whose
    # term is 0 (the limit of p log p), chosen with np.where: 0 * (-inf) would be NaN. The test
    # is p == 0, not p > 0: a NaN p (a NaN teacher logit) fails both, and must keep its NaN.
    # Returns (losses (N,), student_lse (N,), teacher_lse (N,)): the backward rebuilds p and q
    # from the two row logsumexps, so nothing of size N x V is kept between the passes.
    z, u = student / temperature, teacher / temperature
    student_lse, teacher_lse = _logsumexp(z), _logsumexp(u)
    log_p = u - teacher_lse[:, None]
    log_q = z - student_lse[:, None]
    p = np.exp(log_p)
    with np.errstate(invalid="ignore"):       # the 0 * (-inf) that np.where then drops
        terms = p * (log_p - log_q)
    losses = np.sum(np.where(p == 0, 0, terms), axis=-1)
    return losses.astype(student.dtype), student_lse.astype(student.dtype), teacher_lse.astype(student.dtype)


def kl_div_backward(dlosses, student, teacher, student_lse, teacher_lse, temperature):
    # kl = sum_v p_v log p_v - sum_v p_v z_v + lse(z) (as sum_v p_v = 1); the first term does
    # not depend on the student, d lse(z)/dz_j = q_j, so dkl/dz_j = q_j - p_j, and z = s / T:
    #   dstudent = dloss (q - p) / T.
    # The teacher is a constant (no gradient): it is the target, as the one-hot is for
    # cross_entropy_backward, whose formula this is with p in place of the one-hot.
    q = np.exp(student / temperature - student_lse[:, None])
    p = np.exp(teacher / temperature - teacher_lse[:, None])
    return (dlosses[:, None] * (q - p) / temperature).astype(student.dtype)


# --- embedding -----------------------------------------------------------------------------------

def embedding_forward(ids, weight):
    return weight[ids]


def embedding_backward(dout, ids, num_embeddings):
    dweight = np.zeros((num_embeddings, dout.shape[-1]), dtype=dout.dtype)
    np.add.at(dweight, ids.reshape(-1), dout.reshape(-1, dout.shape[-1]))
    return dweight


# --- normalization -------------------------------------------------------------------------------

def layer_norm_forward(x, w, b, eps):
    # xhat = (x - mean) * rstd,  rstd = 1 / sqrt(var + eps);  out = xhat * w + b
    mean = np.mean(x, axis=-1)
    var = np.mean((x - mean[..., None]) ** 2, axis=-1)
    rstd = (1.0 / np.sqrt(var + eps)).astype(x.dtype)
    out = (x - mean[..., None]) * rstd[..., None] * w
    if b is not None:
        out = out + b
    return out.astype(x.dtype), mean.astype(x.dtype), rstd


def layer_norm_backward(dout, x, w, mean, rstd, has_bias):
    # One row of C values: xhat_i = (x_i - mu) r, mu = mean(x), r = (var + eps)^-1/2,
    # var = mean((x - mu)^2);  out_i = xhat_i w_i + b_i.  Let g = dL/dxhat = dout * w.
    # x_j reaches xhat_i three ways: directly (r delta_ij), through mu (-r / C) and through r:
    #   dvar/dx_j = (2/C)(x_j - mu)  (the mu term sums to 0),  dr/dx_j = -r^3 (x_j - mu) / C,
    #   so (x_i - mu) dr/dx_j = -r xhat_i xhat_j / C.  Summing g_i over the three:
    #   dx_j = r (g_j - mean(g) - xhat_j mean(g xhat)):
    # the direct gradient, minus its mean (shifting a row does not change xhat), minus its
    # component along xhat (scaling a row does not change xhat). w and b act per channel, so
    #   dw = sum over rows of dout xhat,  db = sum over rows of dout.
    xhat = (x - mean[..., None]) * rstd[..., None]
    g = dout * w
    dx = rstd[..., None] * (g - g.mean(axis=-1, keepdims=True)
                            - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    rows = tuple(range(x.ndim - 1))
    dw = np.sum(dout * xhat, axis=rows)
    db = np.sum(dout, axis=rows) if has_bias else None
    return dx.astype(x.dtype), dw.astype(x.dtype), db


def rms_norm_forward(x, w, eps):
    # out = x * rstd * w,  rstd = 1 / sqrt(mean(x^2) + eps)
    rstd = (1.0 / np.sqrt(np.mean(x * x, axis=-1) + eps)).astype(x.dtype)
    return (x * rstd[..., None] * w).astype(x.dtype), rstd


def rms_norm_backward(dout, x, w, rstd):
    # One row: xhat_i = x_i r, r = (mean(x^2) + eps)^-1/2; out_i = xhat_i w_i; g = dout * w.
    # As for layer_norm without the mean: dr/dx_j = -r^3 x_j / C, so
    #   dxhat_i/dx_j = r (delta_ij - xhat_i xhat_j / C)  and  dx = r (g - xhat mean(g xhat)):
    # the direct gradient minus its component along xhat (scaling a row leaves xhat alone).
    #   dw = sum over rows of dout xhat.
    xhat = x * rstd[..., None]
    g = dout * w
    dx = rstd[..., None] * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    dw = np.sum(dout * xhat, axis=tuple(range(x.ndim - 1)))
    return dx.astype(x.dtype), dw.astype(x.dtype)


# --- rotary position embedding ---------------------------------------------------------------------

def rope_forward(x, cos, sin):
    # Rotate each pair (x1_i, x2_i) = (x[..., i], x[..., i + HS/2]) by angle theta_{t,i}:
    #   out1 = x1 cos - x2 sin,   out2 = x2 cos + x1 sin      ("rotate_half", as in HF Llama)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def rope_backward(dout, cos, sin):
    # Per pair the forward is linear, out = R x with R = [[cos, -sin], [sin, cos]], so
    # dx = R^T dout, and R^T is the rotation by -theta:
    #   dx1 = d1 cos + d2 sin,   dx2 = d2 cos - d1 sin.
    # cos and sin are constant tables (positions, not parameters): no gradient for them.
    half = dout.shape[-1] // 2
    d1, d2 = dout[..., :half], dout[..., half:]
    return np.concatenate([d1 * cos + d2 * sin, d2 * cos - d1 * sin], axis=-1)


# --- causal self-attention ---------------------------------------------------------------------------

def _expand_kv(kv, num_heads):
    # Grouped-query attention: query head h reads key/value head h // (NH / NKV).
    return np.repeat(kv, num_heads // kv.shape[1], axis=1)


def _causal_mask(tq, tk):
    # Query i sits at position tk - tq + i and may see keys 0 .. tk - tq + i.
    return np.arange(tk)[None, :] <= (tk - tq + np.arange(tq))[:, None]


def _visible(tq, tk, segment_ids):
    """Which keys each query sees: (Tq, Tk) causal, or (B, 1, T, T) with document masking.

    Document masking (packing several documents in one row): segment_ids (B, T) names each
    token's document, and query i sees key j iff j <= i and both carry the same id. Padding
    gets an id of its own (e.g. -1): it then sees only padding, and no document sees it. A query
    always sees itself (j = i qualifies), so no row is ever empty. Ids need not be contiguous
    or sorted: equal ids are one document, wherever they stand.
    """
    causal = _causal_mask(tq, tk)
    if segment_ids is None:
        return causal
    seg = np.asarray(segment_ids)
    same = seg[:, :, None] == seg[:, None, :]                      # (B, T, T)
    return (causal & same)[:, None]                                # one mask for every head


# Why masked products need care. Query i's answer is, by definition, what it would be for that
# query alone against the keys it sees -- exactly the call a KV cache makes while decoding, which
# never holds the later keys. Computing every query at once as one (Tq, Tk) product P @ V is the
# same sum plus terms P_ij V_j with P_ij = 0 for the hidden keys j; those vanish only while V_j is
# finite, since 0 * NaN = 0 * inf = NaN. So the products below run as one fast matmul and then
# redo, for the rare output rows that came out non-finite, the sum over the visible terms alone.
# A row that came out finite had only 0 * finite = 0 extra terms, so it needs no second look.

def _masked_matmul(a, b, visible):
    """sum_k a_mk b_kn over the k with visible[m, k] only, batched over the leading axes.

    a must be 0 where hidden, or not finite there: such an entry makes its row of the matmul
    non-finite, so that row is redone without it. P = exp(-inf - lse) and dS = P (dP - D) are
    of that kind.
    """
    c = np.matmul(a, b)
    batch = c.shape[:-2]
    a, b = np.broadcast_to(a, batch + a.shape[-2:]), np.broadcast_to(b, batch + b.shape[-2:])
    visible = np.broadcast_to(visible, batch + visible.shape[-2:])    # (M, K) or per batch
    for *index, m in np.argwhere(~np.isfinite(c).all(axis=-1)):
        index = tuple(index)
        seen = visible[index + (m,)]
        c[index + (m,)] = np.matmul(a[index + (m,)][seen], b[index][seen])
    return c


def attention_forward(q, k, v, segment_ids=None):
    # S = q k^T / sqrt(HS) (causal), lse = logsumexp_j S_ij, P = exp(S - lse), out = P v.
    # With segment_ids (B, T), T = Tq = Tk, a pair of different documents is hidden too
    # (_visible): the same formula over fewer keys, so nothing below changes but the mask.
    nh, tq, hs = q.shape[1], q.shape[2], q.shape[3]
    keys, values = _expand_kv(k, nh), _expand_kv(v, nh)
    visible = _visible(tq, k.shape[2], segment_ids)
    scores = np.matmul(q, np.swapaxes(keys, -1, -2)) / np.sqrt(hs)
    scores = np.where(visible, scores, -np.inf)
    lse = _logsumexp(scores)
    probs = np.exp(scores - lse[..., None])
    return _masked_matmul(probs, values, visible).astype(q.dtype), lse.astype(q.dtype)


def attention_backward(dout, q, k, v, out, lse, segment_ids=None):
    # Forward, per head: S = s q K^T (s = 1/sqrt(HS), masked to -inf), P = softmax_rows(S),
    # out = P V. Backward through each step in turn:
    #   out = P V             dV = P^T dout,   dP = dout V^T
    #   P = softmax_rows(S)   dS_ij = P_ij (dP_ij - D_i),  D_i = sum_j P_ij dP_ij  (softmax_backward)
    #   S = s q K^T           dQ = s dS K,     dK = s dS^T Q
    # D_i needs no T x T product: dP_ij = dout_i . v_j, so
    #   D_i = sum_j P_ij (dout_i . v_j) = dout_i . (sum_j P_ij v_j) = dout_i . out_i,
    # one dot product per row, which is how the fused kernels compute it. P itself is rebuilt as
    # exp(S - lse) from the saved row logsumexp (nothing T x T was kept); masked entries have
    # P_ij = 0, hence dS_ij = 0. With grouped-query heads each key/value head serves `group`
    # query heads, so dK and dV sum over the heads of each group.
    # Each gradient is the sum of the per-query calls' gradients (see _masked_matmul): a hidden
    # pair (i, j) contributes nothing, even where dout_i, q_i, k_j, v_j or D_i is not finite. So
    # every product over the pairs is masked: P^T dout and dS^T Q by visible^T, dS K by visible.
    # dP = dout V^T is elementwise in (i, j) and reaches the gradients only through dS, whose
    # hidden entries, P_ij (dP_ij - D_i) = 0 * (a NaN maybe), those products leave out.
    b, nh, tq, hs = q.shape
    nkv = k.shape[1]
    keys, values = _expand_kv(k, nh), _expand_kv(v, nh)
    visible = _visible(tq, k.shape[2], segment_ids)     # document masking: hidden pairs as above
    scale = 1.0 / np.sqrt(hs)
    scores = np.matmul(q, np.swapaxes(keys, -1, -2)) * scale
    scores = np.where(visible, scores, -np.inf)
    probs = np.exp(scores - lse[..., None])
    visible_t = np.swapaxes(visible, -1, -2)
    dvalues = _masked_matmul(np.swapaxes(probs, -1, -2), dout, visible_t)
    dprobs = np.matmul(dout, np.swapaxes(values, -1, -2))
    dscores = probs * (dprobs - np.sum(dout * out, axis=-1, keepdims=True))
    dq = _masked_matmul(dscores, keys, visible) * scale
    dkeys = _masked_matmul(np.swapaxes(dscores, -1, -2), q, visible_t) * scale
    group = nh // nkv
    dk = dkeys.reshape(b, nkv, group, -1, hs).sum(axis=2)
    dv = dvalues.reshape(b, nkv, group, -1, hs).sum(axis=2)
    return dq.astype(q.dtype), dk.astype(q.dtype), dv.astype(q.dtype)


# --- paged KV cache: the cache write and decode attention over blocks ------------------------------
# A paged cache (inference/paged.py) keeps each layer's keys in one pool of fixed-size blocks,
# k_cache (NB, NKV, BS, HS), and a block table per sequence: position j of a sequence lives in
# block table[j // BS] at offset j % BS. Slot s = block * BS + offset names one position's row.

def paged_cache_write(k_cache, v_cache, k, v, slots):
    # k_cache[s // BS, :, s % BS, :] = k[n] (and v alike) for every new row n at slot s = slots[n];
    # k, v (N, NKV, HS); the slots are distinct. In place, like adamw_update.
    bs = k_cache.shape[2]
    blocks, offsets = slots // bs, slots % bs
    k_cache[blocks, :, offsets, :] = k          # (N, NKV, HS): the indexed axes come first
    v_cache[blocks, :, offsets, :] = v


def paged_attention_forward(q, k_cache, v_cache, block_tables, positions):
    # One query row per token, each against its own sequence's blocks: query n sits at position
    # p = positions[n] and sees keys j = 0 .. p, key j at block block_tables[n, j // BS], offset
    # j % BS. Per head h (key/value head h // (NH / NKV)), exactly attention_forward's answer for
    # that query alone against those p + 1 keys: out = softmax(q k^T / sqrt(HS)) v.
    # q (N, NH, HS), block_tables (N, MB), positions (N,); out (N, NH, HS).
    bs = k_cache.shape[2]
    out = np.empty_like(q)
    for n in range(q.shape[0]):
        seen = np.arange(int(positions[n]) + 1)
        blocks, offsets = block_tables[n, seen // bs], seen % bs
        keys = np.swapaxes(k_cache[blocks, :, offsets, :], 0, 1)[None]       # (1, NKV, p+1, HS)
        values = np.swapaxes(v_cache[blocks, :, offsets, :], 0, 1)[None]
        out[n] = attention_forward(q[n][None, :, None, :], keys, values)[0][0, :, 0, :]
    return out


# --- optimizer ------------------------------------------------------------------------------------------

def adamw_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
    # m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
    # p -= lr (wd p + mhat / (sqrt(vhat) + eps)),  mhat = m / (1 - b1^t),  vhat = v / (1 - b2^t)
    m *= beta1
    m += (1 - beta1) * grad
    v *= beta2
    v += (1 - beta2) * grad * grad
    m_hat = m / (1 - beta1 ** step)
    v_hat = v / (1 - beta2 ** step)
    param -= (lr * (weight_decay * param + m_hat / (np.sqrt(v_hat) + eps))).astype(param.dtype)


# --- weight-only quantized linear layers (formats: microgpt/quantize/formats.py) ----------------
# W (OC, C) is stored as integers q and one scale d per group of `group` consecutive inputs of a
# row: W[o, c] = d[o, c // group] * q[o, c]. int8: q = w_q int8 (OC, C), |q| <= 127. int4: q in
# [-8, 7] stored as q + 8 in a nibble, two per byte of w_q uint8 (OC, C / 2), by 32-element
# blocks as GGUF's Q4_0: byte j of a block holds element j (low nibble) and j + 16 (high).
# The kernels are "dequantize, then the float product": out = x @ W^T + b.

def dequantize_q8(w_q, w_scale, group):
    oc, c = w_q.shape
    q = w_q.reshape(oc, c // group, group).astype(w_scale.dtype)
    return (q * w_scale[:, :, None]).reshape(oc, c)


def unpack_q4(w_q):
    # (OC, C / 2) bytes -> (OC, C) int8 values in [-8, 7], by Q4_0's 32-element blocks
    oc, half = w_q.shape
    blocks = w_q.reshape(oc, half // 16, 16)
    low = (blocks & 0x0F).astype(np.int8) - 8
    high = (blocks >> 4).astype(np.int8) - 8
    return np.concatenate([low, high], axis=2).reshape(oc, 2 * half)


def dequantize_q4(w_q, w_scale, group):
    return dequantize_q8(unpack_q4(w_q), w_scale, group)


def linear_q8_forward(x, w_q, w_scale, b, group):
    return linear_forward(x, dequantize_q8(w_q, w_scale, group).astype(x.dtype), b)


def linear_q4_forward(x, w_q, w_scale, b, group):
    return linear_forward(x, dequantize_q4(w_q, w_scale, group).astype(x.dtype), b)



# The integer-dot kernels (quant.c's v6 / v7, the production decoding path) first round the
# activations as GGUF's Q8_0 does, per 32-block of a row: d = max|x| / 127, q = rint(x / d) in
# [-127, 127] (float32 arithmetic, x * (1 / d), rint to nearest even, exactly as quant.c; a block
# so small that 1 / d overflows is zero), then
# multiply integers. Their result is this reference: the product of the rounded activations
# with the dequantized weights. Rows whose C (or a group) is not a multiple of 32 are not
# rounded (those kernels take the float path).
def quantize_activations_q8(x):
    """x (..., C), C a multiple of 32 -> (q int8 (..., C), d float32 (..., C / 32))."""
    blocks = np.asarray(x, dtype=np.float32).reshape(*x.shape[:-1], x.shape[-1] // 32, 32)
    d = np.abs(blocks).max(axis=-1) / np.float32(127)
    inv = np.zeros_like(d)
    with np.errstate(over="ignore"):
        np.divide(np.float32(1), d, out=inv, where=d > 0)
    tiny = ~np.isfinite(inv)                    # max|x| < ~1e-36: 1 / d overflows; the block is 0
    d[tiny], inv[tiny] = 0, 0
    q = np.rint(blocks * inv[..., None]).astype(np.int8)
    return q.reshape(x.shape), d


def _rounded_activations(x, group):
    c = x.shape[-1]
    if c % 32 or group % 32:
        return x
    q, d = quantize_activations_q8(x)
    blocks = q.reshape(*x.shape[:-1], c // 32, 32).astype(x.dtype) * d[..., None].astype(x.dtype)
    return blocks.reshape(x.shape)


def linear_q8_forward_intdot(x, w_q, w_scale, b, group):
    return linear_q8_forward(_rounded_activations(x, group), w_q, w_scale, b, group)


def linear_q4_forward_intdot(x, w_q, w_scale, b, group):
    return linear_q4_forward(_rounded_activations(x, group), w_q, w_scale, b, group)

# --- mixture of experts: rows routed to experts (nn/moe.py) -------------------------------------
# A router sends each of N tokens to k of E experts. The N * k (token, expert) pairs, sorted by
# expert, are the R = N * k "rows" of the expert layers: row r is a copy of token token_index[r]
# (R,), and expert e owns the rows offsets[e] .. offsets[e + 1] - 1 (offsets (E + 1,), int64,
# offsets[0] = 0, nondecreasing, offsets[E] = R; an expert may own no row). Dropless: every pair
# has its row, however uneven the load. Sizes: N tokens, R rows, E experts, C / OC channels.

def moe_permute_forward(x, token_index):
    # out[r] = x[token_index[r]]: gather each row's token; x (N, C) -> out (R, C)
    return _contiguous(x[token_index])


def moe_permute_backward(dout, token_index, num_tokens):
    # out[r] = x[t_r]  =>  dx[n] = sum_{r : t_r = n} dout[r]  (each token sums its k rows)
    dx = np.zeros((num_tokens, dout.shape[1]), dtype=dout.dtype)
    np.add.at(dx, token_index, dout)
    return dx


def grouped_matmul_forward(x, w, offsets):
    # out[r] = x[r] @ w[e]^T for the rows r of expert e: one linear map per expert.
    # x (R, C), w (E, OC, C) -> out (R, OC)
    out = np.zeros((x.shape[0], w.shape[1]), dtype=x.dtype)
    for e in range(w.shape[0]):
        rows = slice(int(offsets[e]), int(offsets[e + 1]))
        out[rows] = x[rows] @ w[e].T
    return out


def grouped_matmul_backward(dout, x, w, offsets):
    # linear_backward per expert, over that expert's rows only:
    #   dx[r] = dout[r] @ w[e]                     (rows r of expert e)
    #   dw[e] = sum_{rows r of e} dout[r]^T x[r]   = dout_e^T @ x_e; 0 for an expert with no rows
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    for e in range(w.shape[0]):
        rows = slice(int(offsets[e]), int(offsets[e + 1]))
        dx[rows] = dout[rows] @ w[e]
        dw[e] = dout[rows].T @ x[rows]
    return dx, dw


def moe_combine_forward(y, weights, token_index, num_tokens):
    # out[n] = sum_{r : t_r = n} weights[r] y[r]: each token's k expert outputs, weighted by
    # its router weights; y (R, C), weights (R,) -> out (N, C). A token with no row gets 0.
    out = np.zeros((num_tokens, y.shape[1]), dtype=y.dtype)
    np.add.at(out, token_index, y * weights[:, None])
    return out


def moe_combine_backward(dout, y, weights, token_index):
    # out[n] = sum_r [t_r = n] w_r y[r]  =>  dy[r] = w_r dout[t_r],  dw_r = dout[t_r] . y[r]
    gathered = dout[token_index]
    return (gathered * weights[:, None]).astype(y.dtype), np.sum(gathered * y, axis=1).astype(y.dtype)
