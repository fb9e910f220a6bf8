"""Throw bad arguments at every C binding: a clear MicrogptError, or a right answer — never a crash.

For each kernel backed by C, a valid float32 call is built, then one argument at a time is
spoiled (in float32, and the shape spoils in float64 too): another dtype (int32, float16,
complex, mixed float64), a non-contiguous view, a shape with one dimension changed or dropped,
an empty array, a plain list, ids out of range, non-finite or non-numeric scalars, and (for the
in-place AdamW) arrays that overlap or are read-only. The oracle: the call either raises a
MicrogptError (ShapeError is a ValueError, DTypeError a TypeError) or — when the spoiled call
is still legal, e.g. softmax of another shape — returns what the reference returns. A crash of
the C code would kill pytest itself.
"""
import numpy as np
import pytest

from microgpt.backends import reference as ref
from microgpt.errors import MicrogptError

cpu = pytest.importorskip("microgpt.backends.cpu")
pytestmark = pytest.mark.skipif(not cpu.AVAILABLE, reason="C kernels not built")


def f(*shape):
    return np.random.default_rng(sum(shape) + len(shape)).standard_normal(shape).astype(np.float32)


def valid_calls():
    """kernel name -> keyword arguments of one valid float32 call (in signature order)."""
    ids = np.array([[0, 3, 1], [4, 4, 2]])
    return {
        "matmul_forward": dict(a=f(2, 3, 4), b=f(4, 5)),
        "matmul_backward": dict(dout=f(2, 3, 5), a=f(2, 3, 4), b=f(4, 5)),
        "linear_forward": dict(x=f(2, 3, 4), w=f(6, 4), b=f(6)),
        "linear_backward": dict(dout=f(2, 3, 6), x=f(2, 3, 4), w=f(6, 4), has_bias=True),
        "softmax_forward": dict(x=f(3, 7)),
        "softmax_backward": dict(dout=f(3, 7), out=f(3, 7)),
        "log_softmax_forward": dict(x=f(3, 7)),
        "log_softmax_backward": dict(dout=f(3, 7), out=f(3, 7)),
        "cross_entropy_forward": dict(logits=f(4, 9), targets=np.array([0, 8, -100, 3]), ignore_index=-100),
        "cross_entropy_backward": dict(dlosses=f(4), logits=f(4, 9), targets=np.array([0, 8, -100, 3]),
                                       lse=f(4), ignore_index=-100),
        "embedding_forward": dict(ids=ids, weight=f(5, 8)),
        "embedding_backward": dict(dout=f(2, 3, 8), ids=ids, num_embeddings=5),
        "layer_norm_forward": dict(x=f(3, 8), w=f(8), b=f(8), eps=1e-5),
        "layer_norm_backward": dict(dout=f(3, 8), x=f(3, 8), w=f(8), mean=f(3), rstd=np.abs(f(3)),
                                    has_bias=True),
        "rms_norm_forward": dict(x=f(3, 8), w=f(8), eps=1e-5),
        "rms_norm_backward": dict(dout=f(3, 8), x=f(3, 8), w=f(8), rstd=np.abs(f(3))),
        "rope_forward": dict(x=f(2, 5, 8), cos=f(5, 4), sin=f(5, 4)),
        "rope_backward": dict(dout=f(2, 5, 8), cos=f(5, 4), sin=f(5, 4)),
        "gelu_forward": dict(x=f(3, 5)),
        "gelu_backward": dict(dout=f(3, 5), x=f(3, 5)),
        "silu_forward": dict(x=f(3, 5)),
        "silu_backward": dict(dout=f(3, 5), x=f(3, 5)),
        "adamw_update": dict(param=f(3, 5), grad=f(3, 5), m=f(3, 5), v=np.abs(f(3, 5)), lr=1e-3,
                             beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, step=1),
    }


def spoil_array(x, how):
    if how == "int32":
        return x.astype(np.int32)
    if how == "float16":
        return x.astype(np.float16)
    if how == "complex":
        return x.astype(np.complex64)
    if how == "float64":
        return x.astype(np.float64)
    if how == "strided":
        return np.repeat(x, 2, axis=-1)[..., ::2]
    if how == "transposed":
        return x.T if x.ndim > 1 else np.repeat(x, 2)[::2]
    if how == "bigger":
        return np.resize(x, x.shape[:-1] + (x.shape[-1] + 1,))
    if how == "dropped":
        return x.reshape(-1) if x.ndim > 1 else x.reshape(1, -1)[:, :0]
    if how == "empty":
        return np.zeros(x.shape[:-1] + (0,), x.dtype)
    if how == "list":
        return x.tolist()
    if how == "out_of_range":
        return x + 1000
    if how == "negative":
        return x - 1000
    raise AssertionError(how)


ARRAY_SPOILS = ["int32", "float16", "complex", "float64", "strided", "transposed", "bigger",
                "dropped", "empty", "list"]
ID_SPOILS = ["float64", "strided", "bigger", "dropped", "empty", "list", "out_of_range", "negative"]
SCALAR_SPOILS = {"nan": float("nan"), "text": "1e-3", "none": None, "array": np.ones(2), "bool": True}
CASES = [(k, name, how) for k, call in valid_calls().items() for name, value in call.items()
         for how in ((ID_SPOILS if name in ("ids", "targets") else ARRAY_SPOILS)
                     if isinstance(value, np.ndarray) else SCALAR_SPOILS)]
SHAPE_SPOILS = ("strided", "transposed", "bigger", "dropped", "empty")
CASES = [case + ("float32",) for case in CASES] + [case + ("float64",) for case in CASES
                                                    if case[2] in SHAPE_SPOILS]


def reference_answer(kernel, kwargs):
    """The reference on the same (spoiled) arguments, in float64; None if it rejects them too."""
    try:
        args = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v)
                for k, v in kwargs.items()}
        return getattr(ref, kernel)(**args)
    except Exception:   # noqa: BLE001 - the reference may reject them in any way
        return None


def as_float64(kwargs):
    return {k: v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype == np.float32 else v
            for k, v in kwargs.items()}


@pytest.mark.parametrize("kernel,name,how,precision", CASES)
def test_spoiled_argument(kernel, name, how, precision):
    kwargs = valid_calls()[kernel]
    if precision == "float64":
        kwargs = as_float64(kwargs)
    value = kwargs[name]
    kwargs[name] = spoil_array(value, how) if isinstance(value, np.ndarray) else SCALAR_SPOILS[how]
    try:
        got = getattr(cpu, kernel)(**kwargs)
    except MicrogptError as exc:
        assert kernel in str(exc) or name in str(exc), f"unhelpful message: {exc}"
        return
    # Accepted: then it must be a legal call with the reference's answer.
    if kernel == "adamw_update":
        assert how in ("float64", "nan") or name in ("lr", "beta1", "beta2", "eps", "weight_decay")
        return
    want = reference_answer(kernel, kwargs)
    assert want is not None, f"{kernel} accepted {name}={how} that the reference rejects"
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is not None:
            np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("pair", [("param", "m"), ("param", "grad"), ("m", "v"), ("grad", "v")])
def test_adamw_rejects_overlap(pair):
    kwargs = valid_calls()["adamw_update"]
    kwargs[pair[1]] = kwargs[pair[0]]
    with pytest.raises(MicrogptError, match="overlap"):
        cpu.adamw_update(**kwargs)
    buffer = f(30)
    kwargs = valid_calls()["adamw_update"]
    kwargs[pair[0]], kwargs[pair[1]] = buffer[:15].reshape(3, 5), buffer[10:25].reshape(3, 5)
    with pytest.raises(MicrogptError, match="overlap"):
        cpu.adamw_update(**kwargs)


def test_adamw_rejects_read_only():
    kwargs = valid_calls()["adamw_update"]
    kwargs["m"].flags.writeable = False
    with pytest.raises(MicrogptError, match="read-only"):
        cpu.adamw_update(**kwargs)


def test_valid_calls_match_the_reference():
    """The unspoiled calls above are legal and right, so the spoils test what they claim to."""
    for kernel, kwargs in valid_calls().items():
        if kernel == "adamw_update":
            continue
        got = getattr(cpu, kernel)(**kwargs)
        want = reference_answer(kernel, kwargs)
        got = got if isinstance(got, tuple) else (got,)
        want = want if isinstance(want, tuple) else (want,)
        for g, w in zip(got, want):
            if w is not None:
                np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-3, err_msg=kernel)
