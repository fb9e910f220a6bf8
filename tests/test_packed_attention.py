"""Packing without contamination: document-masked attention (segment_ids) and per-document positions.

Oracles, each independent of the path it judges:
  - each document run alone: the same attention (or the same GPT) on the document's tokens by
    themselves, in a row of their own: outputs, and gradients, must be the packed row's;
  - PyTorch's scaled_dot_product_attention with an explicit block-diagonal causal mask;
  - backends/reference.py in float64 for the C kernels (every rung, through cffi, on shapes that
    cross and miss its tiles: documents of 1 token, a whole row one document, GQA, head sizes
    that are not a multiple of 16, rows shorter than the row path's 8) and for the CUDA binding
    over tests/cuda_mock.py.
The float64 gradient check is tests/test_gradcheck.py::test_attention_with_segments; NaN and inf
staying inside their document, tests/test_kernel_special_values.py.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import cuda_mock
from conftest import assert_close
from microgpt import backends, ops_fused
from microgpt.backends import cuda
from microgpt.backends import reference as ref
from microgpt.errors import MicrogptError, ShapeError
from microgpt.nn import GPT, GPTConfig, positions_from_segments
from microgpt.tensor import Tensor

cpu = pytest.importorskip("microgpt.backends.cpu")
needs_c = pytest.mark.skipif(not cpu.AVAILABLE, reason="C kernels not built")
TOL = dict(atol=2e-5, rtol=2e-4)


def packed(lengths, pad=0, batch=1):
    """segment_ids (batch, T) of documents of these lengths numbered 0, 1, ..., then `pad` padding (-1)."""
    row = np.concatenate([np.repeat(np.arange(len(lengths)), lengths), np.full(pad, -1)]).astype(np.int64)
    return np.repeat(row[None], batch, axis=0)


def inputs(rng, B, NH, NKV, T, HS, dtype=np.float64):
    q, dout = (rng.standard_normal((B, NH, T, HS)).astype(dtype) for _ in range(2))
    k, v = (rng.standard_normal((B, NKV, T, HS)).astype(dtype) for _ in range(2))
    return q, k, v, dout


# --- the reference: packed equals alone, and equals torch with a block-diagonal mask --------------------

def test_positions_restart_per_document():
    seg = np.array([[0, 0, 0, 1, 1, 2, -1, -1], [5, 5, 5, 5, 5, 5, 5, 5]])
    np.testing.assert_array_equal(positions_from_segments(seg),
                                  [[0, 1, 2, 0, 1, 0, 0, 1], list(range(8))])
    # ids need not be contiguous: a document's tokens count on wherever they stand
    np.testing.assert_array_equal(positions_from_segments(np.array([[3, 3, 1, 3, 1]])), [[0, 1, 0, 2, 1]])
    with pytest.raises(ShapeError):
        positions_from_segments(np.zeros(4, np.int64))


def test_reference_packed_row_equals_each_document_alone():
    rng = np.random.default_rng(0)
    seg = packed([3, 1, 5, 2], pad=2)
    q, k, v, dout = inputs(rng, 1, 4, 2, seg.shape[1], 8)
    out, lse = ref.attention_forward(q, k, v, seg)
    dq, dk, dv = ref.attention_backward(dout, q, k, v, out, lse, seg)
    for doc in np.unique(seg):
        at = np.flatnonzero(seg[0] == doc)
        part = [x[:, :, at] for x in (q, k, v, dout)]
        out_d, lse_d = ref.attention_forward(*part[:3])
        grads_d = ref.attention_backward(part[3], *part[:3], out_d, lse_d)
        np.testing.assert_allclose(out[:, :, at], out_d, atol=1e-12)
        np.testing.assert_allclose(lse[:, :, at], lse_d, atol=1e-12)
        for g, g_d in zip((dq, dk, dv), grads_d):
            np.testing.assert_allclose(g[:, :, at], g_d, atol=1e-12)


def test_reference_equals_torch_with_a_block_diagonal_causal_mask():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    seg = np.stack([packed([4, 4, 1, 7])[0], packed([9], pad=7)[0]])
    q, k, v, dout = inputs(rng, 2, 4, 4, seg.shape[1], 6)
    out, lse = ref.attention_forward(q, k, v, seg)
    grads = ref.attention_backward(dout, q, k, v, out, lse, seg)
    t = np.arange(seg.shape[1])
    mask = (t[None, :] <= t[:, None]) & (seg[:, :, None] == seg[:, None, :])       # (B, T, T)
    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    o = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=torch.tensor(mask[:, None]))
    o.backward(torch.tensor(dout))
    np.testing.assert_allclose(out, o.detach().numpy(), atol=1e-12)
    for g, want in zip(grads, (tq.grad, tk.grad, tv.grad)):
        np.testing.assert_allclose(g, want.numpy(), atol=1e-12)


# --- C: every rung against the reference -----------------------------------------------------------------

RUNGS = ["attention_{}_v1_naive", "attention_{}_v2_flash", "attention_{}"]    # the last: production
# (lengths of the documents, padding, B, NH, NKV, HS): what crosses and misses the 64 x 64 tiles
SHAPES = {
    "documents of one token": ([1] * 70, 0, 1, 2, 1, 8),
    "the whole row one document": ([150], 0, 2, 2, 2, 16),
    "GQA, HS 17, ragged": ([5, 64, 1, 30, 63, 2], 5, 2, 6, 2, 17),
    "tile-sized documents": ([64, 64, 64], 0, 1, 2, 1, 64),
    "shorter than the row path": ([2, 1, 3], 1, 2, 4, 2, 3),
    "padding half the row": ([40, 7], 50, 1, 3, 1, 24),
}


def call_rung(rung, q, k, v, dout, seg):
    B, NH, T, HS = q.shape
    NKV, fp = k.shape[1], cpu._fp
    seg32 = np.ascontiguousarray(seg, dtype=np.int32)
    sp = cpu.ffi.from_buffer("int32_t[]", seg32)
    sizes = (B, NH, NKV, T, T, HS)
    out, lse = np.empty_like(q), np.empty((B, NH, T), np.float32)
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    work = np.empty(cpu.lib.attention_forward_workspace(B, NH, T, T, HS), np.float32)
    assert getattr(cpu.lib, rung.format("forward"))(fp(out), fp(lse), fp(work), work.size, fp(q), fp(k), fp(v),
                                                    sp, *sizes) == 0
    work = np.empty(cpu.lib.attention_backward_workspace(B, NH, NKV, T, T, HS), np.float32)
    assert getattr(cpu.lib, rung.format("backward"))(fp(dq), fp(dk), fp(dv), fp(work), work.size, fp(dout), fp(q),
                                                     fp(k), fp(v), fp(out), fp(lse), sp, *sizes) == 0
    return out, lse, dq, dk, dv


def check(got, q, k, v, dout, seg, what):
    q, k, v, dout = (x.astype(np.float64) for x in (q, k, v, dout))
    out_ref, lse_ref = ref.attention_forward(q, k, v, seg)
    grads_ref = ref.attention_backward(dout, q, k, v, out_ref, lse_ref, seg)
    for name, g, want in zip(("out", "lse", "dq", "dk", "dv"), got, (out_ref, lse_ref, *grads_ref)):
        assert_close(g, want, atol=TOL["atol"] * max(1.0, np.abs(want).max()), rtol=TOL["rtol"],
                     what=f"{what} {name}")


@needs_c
@pytest.mark.parametrize("rung", RUNGS)
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_c_rungs_match_the_reference(rung, shape):
    lengths, pad, B, NH, NKV, HS = SHAPES[shape]
    seg = packed(lengths, pad, B)
    seg[-1] = seg[-1][::-1].copy() if B > 1 else seg[-1]          # a second row laid out otherwise
    q, k, v, dout = inputs(np.random.default_rng(len(shape)), B, NH, NKV, seg.shape[1], HS, np.float32)
    check(call_rung(rung, q, k, v, dout, seg), q, k, v, dout, seg, f"{rung} {shape}")


@needs_c
@given(st.integers(0, 2**31 - 1), st.lists(st.integers(1, 80), min_size=1, max_size=6),
       st.integers(0, 20), st.sampled_from([(1, 1), (2, 1), (4, 2), (3, 3)]), st.sampled_from([1, 5, 16, 33]),
       st.booleans())
def test_c_binding_matches_the_reference(seed, lengths, pad, heads, hs, shuffled):
    """Drawn documents through cpu.attention_forward/backward (1 and 2 threads); ids may come
    in any order and beyond int32 (the binding relabels them)."""
    rng = np.random.default_rng(seed)
    seg = packed(lengths, pad, 2)
    if shuffled:                                   # same documents, unsorted ids, some beyond int32
        seg = np.array([7, 2**40, -3, 11, 2, 5, 9])[np.where(seg < 0, 6, seg % 6)]
    q, k, v, dout = inputs(rng, 2, heads[0], heads[1], seg.shape[1], hs, np.float32)
    before = cpu.get_num_threads()
    try:
        for threads in (1, 2):
            cpu.set_num_threads(threads)
            out, lse = cpu.attention_forward(q, k, v, seg)
            got = (out, lse, *cpu.attention_backward(dout, q, k, v, out, lse, seg))
            check(got, q, k, v, dout, seg, f"{threads} threads")
    finally:
        cpu.set_num_threads(before)


@needs_c
def test_c_without_segments_is_unchanged():
    """segment_ids=None is plain causal attention, bit for bit what the kernel gave before."""
    q, k, v, dout = inputs(np.random.default_rng(3), 2, 4, 2, 100, 32, np.float32)
    out, lse = cpu.attention_forward(q, k, v)
    one = packed([100], 0, 2)                       # one document: the same mask
    out1, lse1 = cpu.attention_forward(q, k, v, one)
    np.testing.assert_allclose(out1, out, atol=1e-6)
    for g, g1 in zip(cpu.attention_backward(dout, q, k, v, out, lse),
                     cpu.attention_backward(dout, q, k, v, out1, lse1, one)):
        np.testing.assert_allclose(g1, g, atol=1e-5)


# --- CUDA: the binding over the NumPy mock ------------------------------------------------------------

@pytest.mark.parametrize("rung", ["v1_naive", "v2_flash"])
def test_cuda_binding_passes_the_segments(monkeypatch, rung):
    mock = cuda_mock.install(monkeypatch)
    monkeypatch.setattr(cuda, "ATTENTION", rung)
    seg = np.stack([packed([3, 9, 1], 2)[0], packed([15])[0]])
    seg[1, 0] = 2**35                               # beyond int32: relabelled, still its own document
    q, k, v, dout = inputs(np.random.default_rng(4), 2, 4, 2, 15, 12, np.float32)
    up = [cuda.asarray(x, np.float32) for x in (q, k, v, dout)]
    out, lse = cuda.attention_forward(*up[:3], seg)
    grads = cuda.attention_backward(up[3], *up[:3], out, lse, seg)
    got = [cuda.to_numpy(x) for x in (out, lse, *grads)]
    check(got, q, k, v, dout, seg, f"cuda {rung}")
    assert f"attention_forward_{rung}" in mock.calls and f"attention_backward_{rung}" in mock.calls
    with pytest.raises(ShapeError):
        cuda.attention_forward(*up[:3], seg[:, :5])


# --- the op's arguments ---------------------------------------------------------------------------

def test_bad_segment_ids_are_clear_errors():
    q = Tensor(np.ones((1, 2, 4, 8)))
    with pytest.raises(MicrogptError, match="Tq = Tk"):
        ops_fused.attention(q, Tensor(np.ones((1, 2, 6, 8))), Tensor(np.ones((1, 2, 6, 8))), np.zeros((1, 6), int))
    with pytest.raises(MicrogptError, match=r"\(B, T\)"):
        ops_fused.attention(q, q, q, np.zeros((1, 5), int))
    with pytest.raises(MicrogptError, match="integers"):
        ops_fused.attention(q, q, q, np.zeros((1, 4)))


# --- through the whole GPT: packed equals each conversation alone --------------------------------------

FAMILIES = {
    "gpt2": dict(family="gpt2"),
    "llama": dict(family="llama", n_kv_head=1, rope_theta=500.0),
}


def tiny(family):
    return GPTConfig(**FAMILIES[family], vocab_size=31, block_size=32, n_layer=2, n_head=2, n_embd=16)


def randomized(config, dtype):
    model = GPT(config, seed=5, dtype=dtype)
    rng = np.random.default_rng(6)
    for _, p in model.named_parameters():
        p.data = (p.data + rng.normal(0, 0.3, p.shape)).astype(dtype)
    return model


def loss_of(model, ids, weights, **kwargs):
    """A loss that reaches every logit: sum(logits * weights); returns (logits, {name: grad})."""
    model.zero_grad()
    logits, _ = model(ids, **kwargs)
    (logits * Tensor(weights.astype(logits.dtype))).sum().backward()
    return logits.numpy(), {name: p.grad.copy() for name, p in model.named_parameters()}


@pytest.mark.parametrize("backend_name", ["reference", "cpu"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_gpt_packed_row_equals_each_conversation_alone(family, backend_name):
    if backend_name == "cpu" and not cpu.AVAILABLE:
        pytest.skip("C kernels not built")
    dtype = np.float64 if backend_name == "reference" else np.float32
    tol = dict(atol=1e-10, rtol=1e-10) if dtype == np.float64 else dict(atol=2e-5, rtol=2e-4)
    rng = np.random.default_rng(7)
    seg = np.stack([packed([5, 1, 9, 7], 2)[0], packed([12, 12])[0]])          # (2, 24)
    ids = rng.integers(0, 31, seg.shape)
    weights = rng.standard_normal(seg.shape + (31,))
    with backends.using(backend_name):
        model = randomized(tiny(family), dtype)
        logits, grads = loss_of(model, ids, weights, segment_ids=seg)
        alone_grads = {name: np.zeros_like(g) for name, g in grads.items()}
        for row in range(seg.shape[0]):
            for doc in np.unique(seg[row]):
                at = np.flatnonzero(seg[row] == doc)
                logits_d, grads_d = loss_of(model, ids[row:row + 1, at], weights[row:row + 1, at])
                assert_close(logits[row, at], logits_d[0], **tol, what=f"{family} logits of document {doc}")
                for name, g in grads_d.items():
                    alone_grads[name] += g
    for name, g in grads.items():
        assert_close(g, alone_grads[name], atol=tol["atol"] * max(1.0, np.abs(g).max()), rtol=tol["rtol"],
                     what=f"{family} gradient of {name}")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_gpt_position_ids_alone_shift_positions(family, reference_backend):
    """position_ids without segments: a row whose positions are 3 .. 10 gives, at each token, the
    logits a row of 11 tokens gives at positions 3 .. 10 when the tokens before cannot be seen
    (here: they are another document)."""
    model = randomized(tiny(family), np.float64)
    ids = np.random.default_rng(8).integers(0, 31, (1, 11))
    seg = packed([3, 8])
    shifted, _ = model(ids[:, 3:], position_ids=np.arange(3, 11)[None])
    both, _ = model(ids, segment_ids=seg, position_ids=np.arange(11)[None])
    np.testing.assert_allclose(shifted.numpy()[0], both.numpy()[0, 3:], atol=1e-12)


def test_gpt_refuses_segments_it_cannot_use(reference_backend):
    model = randomized(tiny("llama"), np.float64)
    ids = np.zeros((2, 6), np.int64)
    with pytest.raises(ShapeError, match="KV cache"):
        model(ids, kv_cache=model.new_kv_cache(), segment_ids=np.zeros((2, 6), np.int64))
    with pytest.raises(ShapeError, match=r"\(B, T\)"):
        model(ids, segment_ids=np.zeros((2, 5), np.int64))
    with pytest.raises(ShapeError, match="block_size"):
        model(ids, position_ids=np.full((2, 6), 32))
