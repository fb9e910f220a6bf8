"""backends/cpu_decode.py: the decoder's C calls without per-call checks give the same bits as
cpu.py's checked bindings (the oracle: the same kernels through the checked path), and fall
back to the checked binding (its result or its error) for anything unusual."""
import numpy as np
import pytest

from microgpt import backends
from microgpt.errors import MicrogptError
from microgpt.inference.paged import PagedDecoder, PagedKVCache
from microgpt.nn import GPT, GPTConfig
from microgpt.quantize.model import quantize_model
from microgpt.tensor import no_grad

cpu = pytest.importorskip("microgpt.backends.cpu")
cpu_decode = pytest.importorskip("microgpt.backends.cpu_decode")
if backends.get("cpu") is not cpu:
    pytest.skip("the C backend is not built", allow_module_level=True)

RNG = np.random.default_rng(0)
FAST = cpu_decode.DecodeKernels(cpu)


def _f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _same(a, b):
    if isinstance(a, tuple):
        for x, y in zip(a, b):
            _same(x, y)
        return
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


def test_each_kernel_gives_the_checked_bindings_bits():
    x, w, b = _f32(3, 37), _f32(37), _f32(37)
    _same(FAST.layer_norm_forward(x, w, b, 1e-5), cpu.layer_norm_forward(x, w, b, 1e-5))
    _same(FAST.layer_norm_forward(x, w, None, 1e-5), cpu.layer_norm_forward(x, w, None, 1e-5))
    _same(FAST.rms_norm_forward(x, w, 1e-6), cpu.rms_norm_forward(x, w, 1e-6))
    _same(FAST.gelu_forward(x), cpu.gelu_forward(x))
    _same(FAST.silu_forward(x), cpu.silu_forward(x))
    table, ids = _f32(11, 5), np.array([[3, 0, 10]], np.int64)
    _same(FAST.embedding_forward(ids, table), cpu.embedding_forward(ids, table))
    many = RNG.integers(0, 11, size=20).astype(np.int64)
    _same(FAST.embedding_forward(many, table), cpu.embedding_forward(many, table))
    for w_in_out in (False, True):
        wm = _f32(37, 13) if w_in_out else _f32(13, 37)
        bias = _f32(13)
        fn = FAST.rows_linear(wm, bias, w_in_out)
        _same(fn(x), cpu.linear_rows_forward(x, wm, bias, w_in_out))
        _same(FAST.rows_linear(wm, None, w_in_out)(x[:1]), cpu.linear_rows_forward(x[:1], wm, None, w_in_out))


def test_paged_kernels_give_the_checked_bindings_bits():
    nb, nkv, bs, hs, nh = 6, 2, 4, 8, 4
    caches = [np.zeros((nb, nkv, bs, hs), np.float32) for _ in range(4)]
    k, v, slots = _f32(3, nkv, hs), _f32(3, nkv, hs), np.array([1, 6, 13], np.int64)
    FAST.paged_cache_write(caches[0], caches[1], k, v, slots)
    cpu.paged_cache_write(caches[2], caches[3], k, v, slots)
    _same(caches[0], caches[2])
    _same(caches[1], caches[3])
    q = _f32(3, nh, hs)
    tables = np.array([[0, 1, 2], [1, 0, 0], [3, 2, 0]], np.int64)
    positions = np.array([9, 2, 5], np.int64)
    _same(FAST.paged_attention_forward(q, caches[0], caches[1], tables, positions),
          cpu.paged_attention_forward(q, caches[2], caches[3], tables, positions))


def test_unusual_arguments_take_the_checked_binding():
    x, w = _f32(2, 16), _f32(16)
    strided = _f32(2, 32)[:, ::2]                       # not contiguous: cpu.py's error
    with pytest.raises(MicrogptError, match="C-contiguous"):
        FAST.rms_norm_forward(strided, w, 1e-6)
    x64 = x.astype(np.float64)                          # float64: cpu.py's reference path
    _same(FAST.rms_norm_forward(x64, w.astype(np.float64), 1e-6), cpu.rms_norm_forward(x64, w.astype(np.float64), 1e-6))
    with pytest.raises(MicrogptError):                  # a weight of the wrong width: cpu.py's error
        FAST.layer_norm_forward(x, _f32(15), None, 1e-5)
    with pytest.raises(MicrogptError):                  # an id outside the table is never read
        FAST.embedding_forward(np.array([11], np.int64), _f32(11, 4))
    with pytest.raises(MicrogptError):
        FAST.embedding_forward(np.full(20, -1, np.int64), _f32(11, 4))
    fn = FAST.rows_linear(_f32(8, 16), None, False)
    with pytest.raises(MicrogptError):                  # an input of the wrong width
        fn(_f32(1, 15))
    with pytest.raises(MicrogptError):                  # a bias of the wrong length, refused at binding
        FAST.rows_linear(_f32(8, 16), _f32(7), False)
    assert cpu_decode.for_decoder(cpu, np.float64) is None
    from microgpt.backends import reference
    assert cpu_decode.for_decoder(reference, np.float32) is None


def _decode(model, fast, monkeypatch, steps=6):
    """Greedy ids and every step's logits of the paged decoder, with or without the fast kernels."""
    if not fast:
        monkeypatch.setattr(cpu_decode, "for_decoder", lambda be, dtype: None)
    decoder = PagedDecoder(model, PagedKVCache.for_batch(model, 2))
    if not fast:
        monkeypatch.undo()
    assert (decoder.kernels is not None) == fast
    ids = np.array([[1, 5, 7, 2], [3, 3, 9, 4]], np.int64)
    out = []
    with no_grad():
        logits = decoder.step(ids)
        for _ in range(steps):
            out.append(logits)
            logits = decoder.step(np.argmax(logits, axis=-1)[:, None].astype(np.int64))
    return out


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("scheme", [None, "int8", "int4"])
def test_the_paged_decoder_gives_the_same_bits_with_the_fast_kernels(family, scheme, monkeypatch):
    extra = {"qk_norm": True} if family == "llama" else {}
    config = GPTConfig(family=family, vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=64, **extra)
    model = GPT(config, seed=1).eval()
    if scheme is not None:
        quantize_model(model, scheme, 32)
    for a, b in zip(_decode(model, True, monkeypatch), _decode(model, False, monkeypatch)):
        _same(a, b)
