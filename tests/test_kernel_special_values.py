"""NaN, +-inf, huge and tiny values through every kernel of the contract, on every backend.

backends/reference.py is the specification, special values included: for every output
element of every kernel, a backend must give the class of value the reference gives on the
same inputs -- finite, NaN, +inf or -inf -- so a kernel may neither hide a NaN the reference
propagates nor make one where the reference's answer is finite. Inputs are random float32
arrays with a few elements replaced by values drawn from SPECIALS (hypothesis picks the kinds,
how many, and the seed). They stay away from the float32 overflow threshold: a product of two
huge values (1e60) overflows in any order of evaluation, a huge times an ordinary one (1e30)
in none, so the expected classes do not hang on how a kernel orders its sums.

"The reference on the same inputs" is two evaluations, and an element passes if it has the
class of either: the reference run as NumPy runs it on the float32 inputs, and the reference
run in float64 on the same values (then rounded to float32). They differ only where the
answer hangs on rounding: an intermediate that overflows float32 but not float64 (gelu_backward
squares x: at x = 1e30 NumPy's float32 x * x makes 0 * inf = NaN of a gradient that is 1; a
float32 kernel rightly gives 1), or a factor too small for float32 times inf (silu_backward at
x = -100 with dout = inf: e^-100 * inf in float64, 0 * inf in float32). Elementwise kernels
(ELEMENTWISE: each output one formula of one or two input elements) must also give the
float64 evaluation's finite values; that catches gelu_backward(-1e5) = -1.4e-3 where the
answer is 0.

That holds for attention and cross_entropy_backward too, where the reference spells out what
a fast formula could blur: query i (at position p = Tk - Tq + i) sees keys 0 .. p only, so a
NaN or inf in a key or value it cannot see must not reach it through 0 * NaN -- the same
query decoded with a KV cache never has that key -- and a row whose target is ignore_index
has a gradient of exactly 0. tests/test_reference_special.py checks the reference itself
there, against one call per query.

The CUDA mock (tests/cuda_mock.py) computes every kernel with reference.py itself, so on
"cuda-mock" the oracle is reference.py exactly as NumPy runs it: that run checks that the CUDA
binding's own logic -- broadcast strides, reduction plans, index handling -- hides or adds no
NaN/inf. The real CUDA kernels run under "cuda-gpu" (marked gpu, skipped without a GPU)
against the same oracle as the C kernels. The reference backend itself is the oracle, so it
is not a backend under test here.
"""
import contextlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import cuda_mock
from conftest import assert_close
from microgpt.backends import KERNELS, cuda, cuda_runtime as rt, reference as ref

SPECIALS = {
    "nan": [np.nan], "inf": [np.inf], "-inf": [-np.inf],
    "huge": [1e30, -1e30],              # squares overflow, sums of a few do not
    "large": [1e5, -1e5],               # finite everywhere, saturates tanh, exp and sigmoid
    "tiny": [1e-30, -1e-30],            # squares underflow to 0
    "subnormal": [1e-40, -1e-40],
    "zero": [0.0, -0.0],
}
ELEMENTWISE = {"asarray", "to_numpy", "zeros", "full", "accumulate", "add", "sub", "mul", "div", "neg",
               "pow_scalar", "exp", "log", "sqrt", "tanh", "relu_forward", "relu_backward", "gelu_forward",
               "gelu_backward", "silu_forward", "silu_backward"}
F32 = np.float32


def cpu_backend():
    from microgpt.backends import cpu
    if not cpu.AVAILABLE:
        pytest.skip("C kernels not built")
    return cpu


@contextlib.contextmanager
def backend(name):
    """The backend module to test; the CUDA mock is installed only inside the with-block."""
    if name == "cpu":
        yield cpu_backend()
    elif name == "cuda-mock":
        with pytest.MonkeyPatch.context() as mp:
            cuda_mock.install(mp)
            yield cuda
    else:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(rt, "POISON", True)
            yield cuda


BACKENDS = ["cpu", "cuda-mock", pytest.param("cuda-gpu", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not rt.AVAILABLE, reason=f"no CUDA: {rt.UNAVAILABLE_REASON}")])]


# --- the arguments of a call -------------------------------------------------------------------------

class Arr:
    """A float array argument: uploaded to the backend; `mutated` if the kernel writes it in place."""
    def __init__(self, x, mutated=False):
        self.x, self.mutated = np.asarray(x, F32), mutated


class Ids:
    """An integer array argument (ids, targets): uploaded as int64, never spoiled."""
    def __init__(self, x):
        self.x = np.asarray(x, np.int64)


class Spoiler:
    """Puts up to `count` special values (of the drawn kinds) into copies of arrays."""
    def __init__(self, rng, kinds, count):
        self.rng, self.count = rng, count
        self.values = np.array([v for kind in sorted(kinds) for v in SPECIALS[kind]], F32)

    def __call__(self, x, scale=1.0, avoid=()):
        """x times scale, with up to `count` of its elements special (none of the kinds in avoid)."""
        x = (np.asarray(x, np.float64) * scale).astype(F32)
        values = self.values[~np.isin(self.values, np.array([v for kind in avoid for v in SPECIALS[kind]], F32))]
        n = self.rng.integers(0, self.count + 1)
        if x.size and n and values.size:
            flat = x.reshape(-1)
            flat[self.rng.integers(0, x.size, n)] = self.rng.choice(values, n)
        return x

    def scalar(self):
        return float(self.rng.choice(self.values))


def normal(rng, *shape):
    return rng.standard_normal(shape).astype(F32)


# --- one call per kernel: name -> builder(rng, spoil) -> list of arguments ----------------------------

def _binary(rng, spoil):
    return [Arr(spoil(normal(rng, 3, 4, 5))), Arr(spoil(normal(rng, 4, 1)))]


def _unary(rng, spoil):
    return [Arr(spoil(normal(rng, 4, 7), scale=3.0))]


def _pointwise_backward(rng, spoil):
    return [Arr(spoil(normal(rng, 4, 7))), Arr(spoil(normal(rng, 4, 7), scale=3.0))]


def _max_backward(rng, spoil):
    a = spoil(np.round(normal(rng, 3, 4, 5)))        # rounded: ties, which share the gradient
    axes = (1,) if rng.random() < 0.5 else (0, 2)
    with np.errstate(all="ignore"):
        out = ref.max(a, axes, False)
    return [Arr(spoil(normal(rng, *out.shape))), Arr(a), Arr(out), axes]


def _softmax_backward(forward):
    def build(rng, spoil):
        x = spoil(normal(rng, 3, 9), scale=3.0)
        with np.errstate(all="ignore"):
            out = getattr(ref, forward)(x)
        return [Arr(spoil(normal(rng, 3, 9))), Arr(out)]
    return build


def _targets(rng, n, v):
    targets = rng.integers(0, v, n)
    targets[rng.random(n) < 0.3] = -100
    return targets


def _cross_entropy_backward(rng, spoil):
    logits, targets = spoil(normal(rng, 6, 11), scale=3.0), _targets(rng, 6, 11)
    with np.errstate(all="ignore"):
        lse = ref.cross_entropy_forward(logits, targets, -100)[1]
    return [Arr(spoil(normal(rng, 6))), Arr(logits), Ids(targets), Arr(lse), -100]


def _kl_div_backward(rng, spoil):
    student, teacher = spoil(normal(rng, 6, 11), scale=3.0), spoil(normal(rng, 6, 11), scale=3.0)
    with np.errstate(all="ignore"):
        _, student_lse, teacher_lse = ref.kl_div_forward(student, teacher, 2.0)
    return [Arr(spoil(normal(rng, 6))), Arr(student), Arr(teacher), Arr(student_lse), Arr(teacher_lse), 2.0]

def _layer_norm_backward(rng, spoil):
    x, w = spoil(normal(rng, 5, 12)), spoil(normal(rng, 12))
    has_bias = bool(rng.random() < 0.5)
    with np.errstate(all="ignore"):
        _, mean, rstd = ref.layer_norm_forward(x, w, None, 1e-5)
    return [Arr(spoil(normal(rng, 5, 12))), Arr(x), Arr(w), Arr(mean), Arr(rstd), has_bias]


def _rms_norm_backward(rng, spoil):
    x, w = spoil(normal(rng, 5, 12)), spoil(normal(rng, 12))
    with np.errstate(all="ignore"):
        rstd = ref.rms_norm_forward(x, w, 1e-5)[1]
    return [Arr(spoil(normal(rng, 5, 12))), Arr(x), Arr(w), Arr(rstd)]


def _rope(rng, spoil):
    angles = rng.uniform(-4, 4, (6, 4))
    return [Arr(spoil(normal(rng, 2, 3, 6, 8))), Arr(spoil(np.cos(angles))), Arr(spoil(np.sin(angles)))]


def _attention_shape(rng):
    """(q, k/v) shapes: grouped heads, fewer queries than keys, both of the C kernel's paths
    (rows below 8 queries, tiles from 8) and more than one 64-wide tile."""
    nkv = int(rng.integers(1, 3))
    nh = nkv * int(rng.integers(1, 3))
    tq = int(rng.choice([1, 3, 8, 16, 21, 70]))
    tk = tq + int(rng.choice([0, 0, 2, 9]))
    hs = int(rng.choice([1, 3, 16, 17]))
    b = int(rng.integers(1, 3))
    return (b, nh, tq, hs), (b, nkv, tk, hs)


# Values in q and k that would make the expected answer depend on rounding, not on the values:
#  - "large" (1e5) against ordinary values spreads a row's scores over 100 .. 1000, where the
#    reference keeps probabilities of e^-300 (NumPy runs its softmax in float64: the scale
#    1/np.sqrt(HS) is a float64 scalar) that float32 rounds to 0, and e^-300 * inf != 0 * inf;
#  - in the backward, "huge" scores (1e30): P = exp(S - lse) recomputes S, and a rounding
#    difference of one ulp of 1e30 between the caller's lse and the kernel's S is e^(+-1e23).
QK_FORWARD, QK_BACKWARD = ("large",), ("large", "huge")


def _attention_inputs(rng, spoil, avoid):
    shape_q, shape_kv = _attention_shape(rng)
    return (spoil(normal(rng, *shape_q), avoid=avoid), spoil(normal(rng, *shape_kv), avoid=avoid),
            spoil(normal(rng, *shape_kv)))


def _segments(rng, q, k):
    """Document ids for a packed row (half the calls with Tq = Tk), else None: documents of
    1 .. 9 tokens numbered in order, sometimes padding (-1) at the end. A special value in one
    document must reach that document's queries only."""
    b, t = q.shape[0], q.shape[2]
    if t != k.shape[2] or rng.random() < 0.5:
        return None
    lengths = rng.integers(1, 10, t)
    seg = np.repeat(np.arange(t), lengths)[:t].reshape(1, t).repeat(b, axis=0)
    if rng.random() < 0.3:
        seg[:, t - int(rng.integers(0, t // 2 + 1)):] = -1
    return Ids(seg)


def _attention_forward(rng, spoil):
    q, k, v = _attention_inputs(rng, spoil, QK_FORWARD)
    seg = _segments(rng, q, k)
    return [Arr(q), Arr(k), Arr(v)] + ([] if seg is None else [seg])


def _attention_backward(rng, spoil):
    q, k, v = _attention_inputs(rng, spoil, QK_BACKWARD)
    seg = _segments(rng, q, k)
    with np.errstate(all="ignore"):                   # what the forward hands on
        out, lse = ref.attention_forward(q, k, v, None if seg is None else seg.x)
    return [Arr(spoil(normal(rng, *q.shape))), Arr(q), Arr(k), Arr(v), Arr(out), Arr(lse)] + \
        ([] if seg is None else [seg])


def _paged_cache(rng):
    """(NB, NKV, BS, HS) of a small paged cache: several blocks, grouped heads, odd sizes."""
    nkv = int(rng.integers(1, 3))
    return (int(rng.integers(3, 7)), nkv, int(rng.choice([1, 2, 4])), int(rng.choice([1, 3, 16]))), nkv


def _paged_cache_write(rng, spoil):
    (nb, nkv, bs, hs), _ = _paged_cache(rng)
    n = int(rng.integers(1, nb * bs + 1))
    slots = rng.permutation(nb * bs)[:n]
    return [Arr(spoil(normal(rng, nb, nkv, bs, hs)), mutated=True), Arr(spoil(normal(rng, nb, nkv, bs, hs)),
            mutated=True), Arr(spoil(normal(rng, n, nkv, hs))), Arr(spoil(normal(rng, n, nkv, hs))), Ids(slots)]


def _paged_attention_forward(rng, spoil):
    (nb, nkv, bs, hs), _ = _paged_cache(rng)
    nh, n, mb = nkv * int(rng.integers(1, 3)), int(rng.integers(1, 5)), int(rng.integers(1, 4))
    tables, positions = rng.integers(0, nb, (n, mb)), rng.integers(0, mb * bs, n)
    return [Arr(spoil(normal(rng, n, nh, hs), avoid=QK_FORWARD)),
            Arr(spoil(normal(rng, nb, nkv, bs, hs), avoid=QK_FORWARD)), Arr(spoil(normal(rng, nb, nkv, bs, hs))),
            Ids(tables), Ids(positions)]


def _adamw(rng, spoil):
    shape = (5, 7)
    param, grad, m = (spoil(normal(rng, *shape)) for _ in range(3))
    v = spoil(np.abs(normal(rng, *shape)) * 0.01)
    return [Arr(param, mutated=True), Arr(grad), Arr(m, mutated=True), Arr(v, mutated=True),
            1e-3, 0.9, 0.95, 1e-8, 0.1, int(rng.integers(1, 4))]


def _quant_weight(rng, bits, oc=5, c=64):
    """(w_q, w_scale) of a quantized (oc, c) weight: host integer arrays and float32 scales, group 32."""
    if bits == 8:
        return rng.integers(-127, 128, (oc, c)).astype(np.int8), np.abs(normal(rng, oc, c // 32)) * 0.01
    return rng.integers(0, 256, (oc, c // 2)).astype(np.uint8), normal(rng, oc, c // 32) * 0.01


def _linear_quant(bits):
    # x and b spoiled; the scales are finite by construction (quantize refuses non-finite weights),
    # and with an inf scale "(sum x q) d" and "sum x (q d)" may differ in NaN-ness, legitimately
    def case(rng, spoil):
        w_q, w_scale = _quant_weight(rng, bits)
        return [Arr(spoil(normal(rng, 2, 3, 64))), w_q, Arr(w_scale), Arr(spoil(normal(rng, 5))), 32]
    return case


def _dequantize(bits):
    def case(rng, spoil):
        w_q, w_scale = _quant_weight(rng, bits)
        return [w_q, Arr(spoil(w_scale)), 32]
    return case


def _linear(rng, spoil, backward):
    """linear_forward / linear_backward's arguments, the weight in a layout drawn by rng: (OC, C),
    or (C, OC) with w_in_out (GPT-2's Conv1D); x (2, 3, 6) with w (5, 6) or (6, 5)."""
    in_out = bool(rng.integers(2))
    w = Arr(spoil(normal(rng, *((6, 5) if in_out else (5, 6)))))
    if backward:
        return [Arr(spoil(normal(rng, 2, 3, 5))), Arr(spoil(normal(rng, 2, 3, 6))), w, True, in_out]
    return [Arr(spoil(normal(rng, 2, 3, 6))), w, Arr(spoil(normal(rng, 5))), in_out]



def _moe_plan(rng, n=5, k=2, e=4):
    """A routing plan of n tokens, k rows each, over e experts (some with no row): the rows
    sorted by expert, the token each copies, the experts' row offsets."""
    experts = np.stack([rng.choice(e - 1, k, replace=False) for _ in range(n)]).reshape(-1)   # expert e-1 idle
    order = np.argsort(experts, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(experts, minlength=e))]).astype(np.int64)
    return (order // k).astype(np.int64), offsets


def _grouped(rng, spoil, backward):
    token_index, offsets = _moe_plan(rng)
    r, e = token_index.size, offsets.size - 1
    x, w = Arr(spoil(normal(rng, r, 6))), Arr(spoil(normal(rng, e, 5, 6)))
    return ([Arr(spoil(normal(rng, r, 5))), x, w, Ids(offsets)] if backward else [x, w, Ids(offsets)])


def _moe_rows(rng, spoil, kernel):
    token_index, _ = _moe_plan(rng)
    r = token_index.size
    if kernel == "permute_forward":
        return [Arr(spoil(normal(rng, 5, 6))), Ids(token_index)]
    if kernel == "permute_backward":
        return [Arr(spoil(normal(rng, r, 6))), Ids(token_index), 5]
    if kernel == "combine_forward":
        return [Arr(spoil(normal(rng, r, 6))), Arr(spoil(normal(rng, r))), Ids(token_index), 5]
    return [Arr(spoil(normal(rng, 5, 6))), Arr(spoil(normal(rng, r, 6))), Arr(spoil(normal(rng, r))),
            Ids(token_index)]


CASES = {
    "linear_q8_forward": _linear_quant(8), "linear_q4_forward": _linear_quant(4),
    "dequantize_q8": _dequantize(8), "dequantize_q4": _dequantize(4),
    "asarray": lambda rng, spoil: [spoil(normal(rng, 3, 4)), F32],          # a host array, not uploaded
    "to_numpy": lambda rng, spoil: [Arr(spoil(normal(rng, 3, 4)))],
    "zeros": lambda rng, spoil: [(2, 3), F32],
    "full": lambda rng, spoil: [(2, 3), spoil.scalar(), F32],
    "accumulate": lambda rng, spoil: [Arr(spoil(normal(rng, 3, 4)), mutated=True), Arr(spoil(normal(rng, 3, 4)))],
    "add": _binary, "sub": _binary, "mul": _binary, "div": _binary,
    "neg": _unary, "exp": _unary, "log": _unary, "sqrt": _unary, "tanh": _unary,
    "pow_scalar": lambda rng, spoil: [Arr(spoil(normal(rng, 4, 7))), float(rng.choice([2.0, 3.0, 0.5, -1.0]))],
    "relu_forward": _unary, "gelu_forward": _unary, "silu_forward": _unary,
    "relu_backward": _pointwise_backward, "gelu_backward": _pointwise_backward,
    "silu_backward": _pointwise_backward,
    "sum": lambda rng, spoil: [Arr(spoil(normal(rng, 3, 4, 5))), (0, 2), bool(rng.random() < 0.5)],
    "max": lambda rng, spoil: [Arr(spoil(normal(rng, 3, 4, 5))), (1,), bool(rng.random() < 0.5)],
    "max_backward": _max_backward,
    "sum_to_shape": lambda rng, spoil: [Arr(spoil(normal(rng, 3, 4, 5))), (4, 1)],
    "broadcast_to": lambda rng, spoil: [Arr(spoil(normal(rng, 4, 1))), (3, 4, 5)],
    "reshape": lambda rng, spoil: [Arr(spoil(normal(rng, 3, 4, 5))), (12, 5)],
    "permute": lambda rng, spoil: [Arr(spoil(normal(rng, 3, 4, 5))), (2, 0, 1)],
    "getitem": lambda rng, spoil: [Arr(spoil(normal(rng, 5, 4))), (np.array([3, 0, 3, -1]), slice(1, 3))],
    "getitem_backward": lambda rng, spoil: [Arr(spoil(normal(rng, 4, 2))), (5, 4),
                                            (np.array([3, 0, 3, -1]), slice(1, 3))],
    "concatenate": lambda rng, spoil: [[Arr(spoil(normal(rng, 2, n, 3))) for n in (1, 4)], 1],
    "matmul_forward": lambda rng, spoil: [Arr(spoil(normal(rng, 2, 3, 6))), Arr(spoil(normal(rng, 6, 5)))],
    "matmul_backward": lambda rng, spoil: [Arr(spoil(normal(rng, 2, 3, 5))), Arr(spoil(normal(rng, 2, 3, 6))),
                                           Arr(spoil(normal(rng, 6, 5)))],
    "linear_forward": lambda rng, spoil: _linear(rng, spoil, False),
    "linear_rows_forward": lambda rng, spoil: _linear(rng, spoil, False),
    "linear_backward": lambda rng, spoil: _linear(rng, spoil, True),
    "softmax_forward": lambda rng, spoil: [Arr(spoil(normal(rng, 3, 9), scale=3.0))],
    "softmax_backward": _softmax_backward("softmax_forward"),
    "log_softmax_forward": lambda rng, spoil: [Arr(spoil(normal(rng, 3, 9), scale=3.0))],
    "log_softmax_backward": _softmax_backward("log_softmax_forward"),
    "cross_entropy_forward": lambda rng, spoil: [Arr(spoil(normal(rng, 6, 11), scale=3.0)), Ids(_targets(rng, 6, 11)),
                                                 -100],
    "cross_entropy_backward": _cross_entropy_backward,
    "kl_div_forward": lambda rng, spoil: [Arr(spoil(normal(rng, 6, 11), scale=3.0)),
                                          Arr(spoil(normal(rng, 6, 11), scale=3.0)), 2.0],
    "kl_div_backward": _kl_div_backward,
    "embedding_forward": lambda rng, spoil: [Ids(rng.integers(0, 7, (2, 5))), Arr(spoil(normal(rng, 7, 6)))],
    "embedding_backward": lambda rng, spoil: [Arr(spoil(normal(rng, 2, 5, 6))), Ids(rng.integers(0, 7, (2, 5))), 7],
    "layer_norm_forward": lambda rng, spoil: [Arr(spoil(normal(rng, 5, 12))), Arr(spoil(normal(rng, 12))),
                                              Arr(spoil(normal(rng, 12))), 1e-5],
    "layer_norm_backward": _layer_norm_backward,
    "rms_norm_forward": lambda rng, spoil: [Arr(spoil(normal(rng, 5, 12))), Arr(spoil(normal(rng, 12))), 1e-5],
    "rms_norm_backward": _rms_norm_backward,
    "rope_forward": _rope, "rope_backward": _rope,
    "attention_forward": _attention_forward, "attention_backward": _attention_backward,
    "paged_cache_write": _paged_cache_write, "paged_attention_forward": _paged_attention_forward,
    "adamw_update": _adamw,
    "moe_permute_forward": lambda rng, spoil: _moe_rows(rng, spoil, "permute_forward"),
    "moe_permute_backward": lambda rng, spoil: _moe_rows(rng, spoil, "permute_backward"),
    "moe_combine_forward": lambda rng, spoil: _moe_rows(rng, spoil, "combine_forward"),
    "moe_combine_backward": lambda rng, spoil: _moe_rows(rng, spoil, "combine_backward"),
    "grouped_matmul_forward": lambda rng, spoil: _grouped(rng, spoil, False),
    "grouped_matmul_backward": lambda rng, spoil: _grouped(rng, spoil, True),
}


# --- the oracle: reference.py ----------------------------------------------------------------------------

def _flat(result, args, host_args):
    """The arrays a call produced: its results (a tuple flattened, None kept) and the arrays it wrote."""
    results = list(result) if isinstance(result, tuple) else [result]
    return results + [host for arg, host in zip(args, host_args) if isinstance(arg, Arr) and arg.mutated]


def run_oracle(name, args, dtype):
    """The reference's results for float inputs cast to dtype, each cast back to float32."""
    def host(arg):
        if isinstance(arg, list):
            return [host(a) for a in arg]
        if isinstance(arg, Arr):
            return arg.x.astype(dtype)
        if isinstance(arg, Ids):
            return arg.x.copy()
        if arg is F32:
            return dtype
        if isinstance(arg, np.ndarray) and arg.dtype == F32:
            return arg.astype(dtype)
        return arg

    host_args = [host(a) for a in args]
    with np.errstate(all="ignore"):
        results = _flat(getattr(ref, name)(*host_args), args, host_args)
        return [None if r is None else np.asarray(r).astype(F32) if np.asarray(r).dtype.kind == "f" else np.asarray(r)
                for r in results]


def run_backend(be, name, args):
    def upload(arg):
        if isinstance(arg, list):
            return [upload(a) for a in arg]
        if isinstance(arg, Arr):
            return be.asarray(arg.x, F32)
        if isinstance(arg, Ids):
            return be.asarray(arg.x, np.int64)
        return arg

    device_args = [upload(a) for a in args]
    with np.errstate(all="ignore"):
        results = _flat(getattr(be, name)(*device_args), args, device_args)
        return [None if r is None else np.asarray(be.to_numpy(r)) if not isinstance(r, np.ndarray) else r
                for r in results]


def classes(x):
    """0 finite, 1 NaN, 2 +inf, 3 -inf, element by element."""
    x = np.asarray(x)
    out = np.zeros(x.shape, np.int8)
    if x.dtype.kind == "f":
        out[np.isnan(x)], out[np.isposinf(x)], out[np.isneginf(x)] = 1, 2, 3
    return out


def check_call(backend_name, be, name, args):
    """The backend's results have, element by element, the class of the oracle's in float32 or in
    float64, and elementwise kernels the float64 oracle's finite values."""
    exact = backend_name == "cuda-mock"          # the mock runs reference.py itself: compare with it as it is
    as_run = run_oracle(name, args, F32)
    wide = as_run if exact else run_oracle(name, args, np.float64)
    got = run_backend(be, name, args)
    assert len(got) == len(as_run), f"{name}: {len(got)} results, the reference gives {len(as_run)}"
    for i, (g, w32, w64) in enumerate(zip(got, as_run, wide)):
        what = f"{name} [{backend_name}] result {i}"
        if w32 is None:
            assert g is None, f"{what}: expected None"
            continue
        g = np.asarray(g)
        assert g.shape == w32.shape, f"{what}: shape {g.shape} != {w32.shape}"
        cg, c32, c64 = classes(g), classes(w32), classes(w64)
        bad = (cg != c32) & (cg != c64)
        if bad.any():
            shown = ", ".join(f"{tuple(int(j) for j in at)}: got {g[tuple(at)]!r}, expected {w32[tuple(at)]!r}"
                              + ("" if c32[tuple(at)] == c64[tuple(at)] else f" or {w64[tuple(at)]!r}")
                              for at in np.argwhere(bad)[:5])
            raise AssertionError(f"{what}: {int(bad.sum())} of {g.size} elements differ in NaN/inf "
                                 f"pattern from the reference: {shown}")
        if name in ELEMENTWISE and not exact and g.dtype.kind == "f":
            both = (cg == 0) & (c64 == 0)
            # a backward's error scales with its upstream gradient (the first argument)
            scale = 1.0 + np.abs(np.broadcast_to(args[0].x, g.shape)) if name.endswith("_backward") else 1.0
            assert_close(g[both] / np.broadcast_to(scale, g.shape)[both],
                         w64[both] / np.broadcast_to(scale, g.shape)[both],
                         atol=1e-6, rtol=1e-5, what=what + " (finite values, in units of 1 + |dout|)")


# --- the tests -------------------------------------------------------------------------------------------

kinds = st.sets(st.sampled_from(sorted(SPECIALS)), min_size=1)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("name", sorted(KERNELS))
@given(seed=st.integers(0, 2**31 - 1), kinds=kinds, count=st.integers(1, 3))
def test_special_values(backend_name, name, seed, kinds, count):
    rng = np.random.default_rng(seed)
    args = CASES[name](rng, Spoiler(rng, kinds, count))
    with backend(backend_name) as be:
        check_call(backend_name, be, name, args)


@pytest.mark.parametrize("backend_name", BACKENDS[1:])
@pytest.mark.parametrize("rung", ["v1_naive", "v2_flash"])
@pytest.mark.parametrize("name", ["attention_forward", "attention_backward"])
@given(seed=st.integers(0, 2**31 - 1), kinds=kinds, count=st.integers(1, 3))
def test_cuda_attention_rungs(backend_name, rung, name, seed, kinds, count):
    """Both CUDA rungs (the production one is v2 for head sizes up to 128, the shapes above)."""
    rng = np.random.default_rng(seed)
    args = CASES[name](rng, Spoiler(rng, kinds, count))
    with backend(backend_name) as be, pytest.MonkeyPatch.context() as mp:
        mp.setattr(cuda, "ATTENTION", rung)
        check_call(backend_name, be, name, args)


def test_every_kernel_is_covered():
    """A kernel added to the contract needs a case here."""
    assert set(CASES) == set(KERNELS), (f"without a case: {sorted(set(KERNELS) - set(CASES))}; "
                                        f"not in the contract: {sorted(set(CASES) - set(KERNELS))}")


# --- the defects that started this file (issue 10, item 1.4) -----------------------------------------------

@pytest.mark.parametrize("backend_name", BACKENDS)
def test_nan_key_reaches_every_query_that_sees_it(backend_name):
    """A NaN in key 5 of 16 makes exactly the 11 outputs of queries 5..15 NaN (the C kernel gave 0)."""
    rng = np.random.default_rng(5)
    q, k, v = (normal(rng, 1, 2, 16, 8) for _ in range(3))
    k[0, 1, 5, 3] = np.nan
    with backend(backend_name) as be, np.errstate(all="ignore"):
        out, lse = (be.to_numpy(x) for x in be.attention_forward(*(be.asarray(x, F32) for x in (q, k, v))))
        check_call(backend_name, be, "attention_forward", [Arr(q), Arr(k), Arr(v)])
    assert np.isnan(out[0, 1]).any(axis=-1).tolist() == [False] * 5 + [True] * 11
    assert np.isnan(lse[0, 1]).tolist() == [False] * 5 + [True] * 11
    assert np.isfinite(out[0, 0]).all() and np.isfinite(lse[0, 0]).all()


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_nan_value_stays_in_its_document(backend_name):
    """Packed row of documents [0, 6), [6, 11), [11, 16): a NaN value at key 2 reaches queries
    2..5 only. Tile products multiply it by other documents' zero probabilities (0 * NaN), so
    the C kernel's fast rung must not be the one that answers."""
    rng = np.random.default_rng(8)
    q, k, v = (normal(rng, 1, 2, 16, 8) for _ in range(3))
    v[0, 1, 2, 5] = np.nan
    seg = np.repeat([0, 1, 2], [6, 5, 5])[None]
    with backend(backend_name) as be, np.errstate(all="ignore"):
        out, lse = (be.to_numpy(x) for x in be.attention_forward(*(be.asarray(x, F32) for x in (q, k, v)), seg))
        check_call(backend_name, be, "attention_forward", [Arr(q), Arr(k), Arr(v), Ids(seg)])
    assert np.isnan(out[0, 1]).any(axis=-1).tolist() == [False] * 2 + [True] * 4 + [False] * 10
    assert np.isfinite(out[0, 0]).all() and np.isfinite(lse).all()


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("name,x,expected", [
    ("silu_backward", -np.inf, np.nan),       # sigmoid(-inf) (1 + x (1 - sigmoid)) = 0 * -inf (C gave -inf)
    ("silu_forward", -np.inf, np.nan),        # -inf * sigmoid(-inf) = -inf * 0 (C gave -inf)
    ("gelu_backward", -1e5, 0.0),             # exactly 0 (C gave -1.4e-3)
    ("gelu_backward", 1e30, 1.0),             # exactly 1 (NumPy's float32 reference: NaN, see above)
    ("gelu_backward", -1e30, 0.0),
    ("gelu_backward", np.inf, np.nan),        # 0.5 inf (1 - t^2) = inf * 0, as the reference
])
def test_activation_defects(backend_name, name, x, expected):
    with backend(backend_name) as be, np.errstate(all="ignore"):
        args = [be.asarray(np.full(3, x, F32), F32)]
        if name.endswith("backward"):
            args.insert(0, be.asarray(np.ones(3, F32), F32))
        got = be.to_numpy(getattr(be, name)(*args))
        if backend_name == "cuda-mock":            # reference.py itself, as NumPy runs it
            expected = getattr(ref, name)(*(np.asarray(be.to_numpy(a)) for a in args))[0]
    np.testing.assert_array_equal(got, np.full(3, expected, F32))
