"""Every op's backward against float64 central differences, on shapes drawn by hypothesis.

CHECKS maps each op in OPS (ops.py and ops_fused.py register there) to the test that checks
it; test_every_op_is_checked fails when an op is added without a gradient check. Shapes
include size-1 dims, broadcasting, non-square matrices and transposed (permuted) inputs;
values are drawn from a seeded rng.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

from microgpt import ops, ops_fused, ops_moe
from microgpt.gradcheck import GradcheckError, gradcheck
from microgpt.nn import rope_tables
from microgpt.op_registry import OPS, _send
from microgpt.tensor import Tensor

pytestmark = pytest.mark.usefixtures("reference_backend")
CHECKS = {}
seeds = st.integers(0, 2**31 - 1)
small_shapes = array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)


def checks(*names):
    def register(test):
        for name in names:
            CHECKS[name] = test
        return test
    return register


def t64(rng, shape, low=None, high=None):
    values = rng.standard_normal(shape) if low is None else rng.uniform(low, high, shape)
    return Tensor(values, dtype=np.float64, requires_grad=True)


def broadcast_partner(shape, data):
    """A shape that broadcasts against `shape`: some dims set to 1, maybe fewer leading dims."""
    drop = data.draw(st.integers(0, len(shape) - 1))
    return tuple(1 if data.draw(st.booleans()) else n for n in shape[drop:])


def test_every_op_is_checked():
    missing = sorted(set(OPS) - set(CHECKS))
    assert not missing, f"ops without a gradient check: {missing}"


def test_gradcheck_catches_a_wrong_backward():
    def wrong_square(x):
        be = x.backend
        return Tensor._from_op(be.mul(x.data, x.data), (x,), lambda d: _send(x, d), "wrong")
    with pytest.raises(GradcheckError, match="out of tolerance"):
        gradcheck(wrong_square, [Tensor(np.array([1.5, -2.0]), dtype=np.float64, requires_grad=True)])


@checks("add", "sub", "mul", "div")
@given(st.data(), small_shapes, seeds)
def test_binary_broadcasting(data, shape, seed):
    rng = np.random.default_rng(seed)
    other = broadcast_partner(shape, data)
    a, b = t64(rng, shape), t64(rng, other)
    if data.draw(st.booleans()):
        a, b = b, a
    gradcheck(ops.add, [a, b])
    gradcheck(ops.sub, [a, b])
    gradcheck(ops.mul, [a, b])
    b_away_from_zero = Tensor(np.sign(b.numpy()) * (0.5 + np.abs(b.numpy())), dtype=np.float64, requires_grad=True)
    gradcheck(ops.div, [a, b_away_from_zero])
    gradcheck(lambda x: 2.0 * x - 1.0 / (x * x + 1.0), [a], name="scalars")


@checks("neg", "exp", "tanh", "relu", "gelu", "silu", "log", "sqrt", "pow")
@given(small_shapes, seeds, st.sampled_from([-1.5, 0.5, 2.0, 3.0]))
def test_unary(shape, seed, exponent):
    rng = np.random.default_rng(seed)
    x, positive = t64(rng, shape), t64(rng, shape, 0.5, 2.0)
    for fn in (ops.neg, ops.exp, ops.tanh, ops.relu, ops.gelu, ops.silu):
        gradcheck(fn, [x])
    gradcheck(ops.log, [positive])
    gradcheck(ops.sqrt, [positive])
    gradcheck(lambda v: v ** exponent, [positive], name=f"pow {exponent}")


def draw_axis(data, ndim):
    return data.draw(st.one_of(st.none(), st.integers(-ndim, ndim - 1),
                               st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).map(tuple)))


@checks("sum", "mean", "max")
@given(st.data(), small_shapes, seeds, st.booleans())
def test_reductions(data, shape, seed, keepdims):
    rng = np.random.default_rng(seed)
    x = t64(rng, shape)
    axis = draw_axis(data, len(shape))
    gradcheck(lambda v: ops.sum(v, axis, keepdims), [x], name="sum")
    gradcheck(lambda v: ops.mean(v, axis, keepdims), [x], name="mean")
    gradcheck(lambda v: ops.max(v, axis, keepdims), [x], name="max")


@checks("reshape", "permute")
@given(st.data(), small_shapes, seeds)
def test_shapes(data, shape, seed):
    rng = np.random.default_rng(seed)
    x = t64(rng, shape)
    order = data.draw(st.permutations(range(len(shape))))
    gradcheck(lambda v: ops.reshape(v, tuple(shape[i] for i in order)), [x], name="reshape")
    gradcheck(lambda v: ops.reshape(v, (-1,)), [x], name="reshape -1")
    gradcheck(lambda v: ops.permute(v, tuple(order)), [x], name="permute")
    gradcheck(lambda v: ops.transpose(v, 0, -1) * 3.0, [x], name="transpose")


@checks("getitem")
@given(st.data(), array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=5), seeds)
def test_getitem(data, shape, seed):
    rng = np.random.default_rng(seed)
    x = t64(rng, shape)
    start = data.draw(st.integers(0, shape[0] - 1))
    step = data.draw(st.integers(1, 2))
    gradcheck(lambda v: v[start::step], [x], name="slice")
    gradcheck(lambda v: v[:, -1], [x], name="int index")
    repeated = rng.integers(0, shape[0], size=data.draw(st.integers(1, 6)))   # repeats accumulate
    gradcheck(lambda v: v[repeated], [x], name="integer array")
    gradcheck(lambda v: v[..., None, 0], [x], name="ellipsis/None")


@checks("concatenate")
@given(st.data(), small_shapes, seeds)
def test_concatenate_split_stack(data, shape, seed):
    rng = np.random.default_rng(seed)
    axis = data.draw(st.integers(0, len(shape) - 1))
    other = tuple(n + 1 if i == axis else n for i, n in enumerate(shape))
    a, b = t64(rng, shape), t64(rng, other)
    gradcheck(lambda p, q: ops.concatenate([p, q, p], axis), [a, b], name="concatenate")
    sizes = [shape[axis], other[axis]]
    gradcheck(lambda p, q: ops.split(ops.concatenate([p, q], axis), sizes, axis)[1] * 2.0, [a, b], name="split")
    gradcheck(lambda p: ops.stack([p, p * 2.0], axis), [a], name="stack")


@checks("matmul")
@given(st.data(), seeds)
def test_matmul(data, seed):
    rng = np.random.default_rng(seed)
    n, k, m = (data.draw(st.integers(1, 5)) for _ in range(3))
    batch = data.draw(array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=3))
    other = tuple(1 if data.draw(st.booleans()) else d for d in batch)
    a, b = t64(rng, batch + (n, k)), t64(rng, other + (k, m))
    gradcheck(ops.matmul, [a, b])
    transposed = t64(rng, batch + (k, n))     # a transposed (permuted) operand
    gradcheck(lambda p, q: ops.matmul(ops.transpose(p), q), [transposed, b], name="matmul of a^T")


@checks("linear")
@given(st.data(), seeds, st.booleans())
def test_linear(data, seed, with_bias):
    rng = np.random.default_rng(seed)
    lead = data.draw(array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=4))
    c, oc = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
    x, w = t64(rng, lead + (c,)), t64(rng, (oc, c))
    inputs = [x, w, t64(rng, (oc,))] if with_bias else [x, w]
    gradcheck(ops.linear, inputs)


@checks("linear")
@given(st.data(), seeds, st.booleans())
def test_linear_with_the_weight_stored_in_out(data, seed, with_bias):
    """GPT-2's Conv1D layout: w (in, out), y = x w + b, dw in w's own layout."""
    rng = np.random.default_rng(seed)
    lead = data.draw(array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=4))
    c, oc = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
    x, w = t64(rng, lead + (c,)), t64(rng, (c, oc))
    inputs = [x, w, t64(rng, (oc,))] if with_bias else [x, w]
    gradcheck(lambda x, w, *b: ops.linear(x, w, *b, w_in_out=True), inputs, name="linear, w (in, out)")


@checks("softmax", "log_softmax")
@given(st.data(), small_shapes, seeds)
def test_softmax_family(data, shape, seed):
    rng = np.random.default_rng(seed)
    x = t64(rng, shape)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    gradcheck(lambda v: ops_fused.softmax(v, axis), [x], name="softmax")
    gradcheck(lambda v: ops_fused.log_softmax(v, axis), [x], name="log_softmax")


@checks("cross_entropy")
@given(st.data(), seeds, st.booleans())
def test_cross_entropy(data, seed, weighted):
    rng = np.random.default_rng(seed)
    lead = data.draw(array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=4))
    vocab = data.draw(st.integers(1, 7))
    logits = t64(rng, lead + (vocab,))
    targets = rng.integers(0, vocab, size=lead)
    targets[rng.random(lead) < 0.3] = -100                       # masked / ignored targets
    weights = rng.uniform(0.1, 2.0, size=lead) if weighted else None
    gradcheck(lambda v: ops_fused.cross_entropy(v, targets, -100, weights), [logits])


@checks("kl_div")
@given(st.data(), seeds, st.floats(0.5, 4.0))
def test_kl_div(data, seed, temperature):
    """The student's gradient; the teacher is a constant target (its own Tensor gets none)."""
    rng = np.random.default_rng(seed)
    lead = data.draw(array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=4))
    vocab = data.draw(st.integers(1, 7))
    student, teacher = t64(rng, lead + (vocab,)), rng.standard_normal(lead + (vocab,)) * 2
    gradcheck(lambda s: ops_fused.kl_div(s, teacher, temperature), [student])


@checks("token_logprobs")
@given(st.data(), seeds)
def test_token_logprobs(data, seed):
    rng = np.random.default_rng(seed)
    lead = data.draw(array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=4))
    vocab = data.draw(st.integers(1, 7))
    logits = t64(rng, lead + (vocab,))
    targets = rng.integers(0, vocab, size=lead)
    targets[rng.random(lead) < 0.3] = -100                       # ignored positions give 0
    # gradcheck projects the output on a random direction itself (and the C-backend re-run in
    # test_cpu_gradcheck.py does it in float32), so the op's own output is checked directly.
    gradcheck(lambda v: ops_fused.token_logprobs(v, targets), [logits])


@checks("embedding")
@given(st.data(), seeds)
def test_embedding(data, seed):
    rng = np.random.default_rng(seed)
    num, dim = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 4))
    ids = rng.integers(0, num, size=data.draw(array_shapes(min_dims=1, max_dims=2, max_side=5)))
    gradcheck(lambda w: ops_fused.embedding(ids, w), [t64(rng, (num, dim))])


@checks("dropout")
@given(small_shapes, seeds, st.sampled_from([0.0, 0.1, 0.5]))
def test_dropout(shape, seed, p):
    rng = np.random.default_rng(seed)
    # A fresh generator per call draws the same mask, so finite differences see one function.
    gradcheck(lambda v: ops_fused.dropout(v, p, np.random.default_rng(seed)), [t64(rng, shape)])


@checks("layer_norm", "rms_norm")
@given(st.data(), array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5), seeds, st.booleans())
def test_norms(data, shape, seed, with_bias):
    rng = np.random.default_rng(seed)
    c = shape[-1]
    x, w = t64(rng, shape), t64(rng, (c,))
    inputs = [x, w, t64(rng, (c,))] if with_bias else [x, w]
    if c > 1:   # with one channel, layer_norm's output is the constant bias: nothing to check in x
        gradcheck(lambda *v: ops_fused.layer_norm(*v, eps=1e-5), inputs, name="layer_norm")
    gradcheck(lambda v, g: ops_fused.rms_norm(v, g, eps=1e-6), [x, w], name="rms_norm")


ROPE_SCALINGS = [None, {"rope_type": "linear", "factor": 4.0},
                 {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 16}]


@checks("rope")
@given(st.data(), seeds, st.sampled_from(ROPE_SCALINGS))
def test_rope(data, seed, scaling):
    rng = np.random.default_rng(seed)
    b, nh, t = (data.draw(st.integers(1, 3)) for _ in range(3))
    hs = 2 * data.draw(st.integers(1, 4))
    cos, sin = rope_tables(t, hs, 10000.0, np.float64, scaling)    # scaled tables: same rotation
    gradcheck(lambda v: ops_fused.rope(v, cos, sin), [t64(rng, (b, nh, t, hs))])


@checks("attention")
@given(st.data(), seeds)
def test_attention(data, seed):
    rng = np.random.default_rng(seed)
    b, nkv, group = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
    tk = data.draw(st.integers(1, 5))
    tq = data.draw(st.integers(1, tk))                     # Tq < Tk: the KV-cache case
    hs = data.draw(st.integers(1, 4))
    q = t64(rng, (b, nkv * group, tq, hs))
    k, v = t64(rng, (b, nkv, tk, hs)), t64(rng, (b, nkv, tk, hs))
    gradcheck(ops_fused.attention, [q, k, v])


@given(st.data(), seeds)
def test_attention_with_segments(data, seed):
    """Document masking (packed rows): documents of 1 .. 4 tokens, maybe padding (-1) last."""
    rng = np.random.default_rng(seed)
    b, nkv, group = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
    t, hs = data.draw(st.integers(1, 7)), data.draw(st.integers(1, 4))
    lengths = [data.draw(st.integers(1, 4)) for _ in range(t)]
    segment_ids = np.repeat(np.arange(t), lengths)[:t].reshape(1, t).repeat(b, axis=0)
    segment_ids[:, t - data.draw(st.integers(0, t // 2)):] = -1
    q = t64(rng, (b, nkv * group, t, hs))
    k, v = t64(rng, (b, nkv, t, hs)), t64(rng, (b, nkv, t, hs))
    gradcheck(lambda q, k, v: ops_fused.attention(q, k, v, segment_ids), [q, k, v], name="attention segments")


@checks("quantized_linear")
@given(st.data(), seeds, st.booleans(), st.sampled_from([8, 4]))
def test_quantized_linear(data, seed, with_bias, bits):
    # the weight is frozen integers and scales (no gradient): only x and the bias are checked
    from microgpt.quantize import formats
    rng = np.random.default_rng(seed)
    lead = data.draw(array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=3))
    c, oc, group = 64, data.draw(st.integers(1, 5)), data.draw(st.sampled_from([32, 64]))
    scheme = "int8" if bits == 8 else "int4"
    w_q, w_scale = formats.quantize(rng.standard_normal((oc, c)), scheme, group)
    w_scale = w_scale.astype(np.float64)
    x = t64(rng, lead + (c,))
    if with_bias:
        gradcheck(lambda x, b: ops.quantized_linear(x, w_q, w_scale, bits, group, b), [x, t64(rng, (oc,))])
    else:
        gradcheck(lambda x: ops.quantized_linear(x, w_q, w_scale, bits, group), [x])


def _moe_plan(rng, data):
    """A routing plan drawn by hypothesis: n tokens, k of e experts each, some experts maybe idle."""
    n, e = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    k = data.draw(st.integers(1, e))
    chosen = np.stack([rng.choice(e, k, replace=False) for _ in range(n)])
    flat = chosen.reshape(-1)
    order = np.argsort(flat, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(flat, minlength=e))]).astype(np.int64)
    return n, e, (order // k).astype(np.int64), offsets


@checks("moe_permute", "grouped_linear", "moe_combine")
@given(st.data(), seeds)
def test_moe_ops(data, seed):
    rng = np.random.default_rng(seed)
    n, e, token_index, offsets = _moe_plan(rng, data)
    r, c, oc = token_index.size, data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    gradcheck(lambda x: ops_moe.moe_permute(x, token_index), [t64(rng, (n, c))])
    gradcheck(lambda x, w: ops_moe.grouped_linear(x, w, offsets), [t64(rng, (r, c)), t64(rng, (e, oc, c))])
    gradcheck(lambda y, w: ops_moe.moe_combine(y, w, token_index, n), [t64(rng, (r, c)), t64(rng, (r,))])
