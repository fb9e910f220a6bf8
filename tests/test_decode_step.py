"""csrc/decode_step.c: a plan of decode rows in one C call gives the Python loop's logits bit for
bit (the oracle: inference/paged.py's PagedDecoder.forward, the same kernels called one by one
from Python), on both families and every option the decoder handles, float and quantized weights,
one sequence and several at different positions; and it steps aside where it does not apply."""
import numpy as np
import pytest

from microgpt import backends
from microgpt.errors import MicrogptError
from microgpt.inference.engine import Engine
from microgpt.inference.paged import PagedDecoder, PagedKVCache
from microgpt.inference.sampling import SamplingConfig
from microgpt.nn import GPT, GPTConfig
from microgpt.quantize.model import quantize_model
from microgpt.tensor import no_grad

cpu = pytest.importorskip("microgpt.backends.cpu")
cpu_decode = pytest.importorskip("microgpt.backends.cpu_decode")
cpu_quant = pytest.importorskip("microgpt.backends.cpu_quant")
if backends.get("cpu") is not cpu:
    pytest.skip("the C backend is not built", allow_module_level=True)

CONFIGS = {
    "gpt2": dict(family="gpt2", vocab_size=97, block_size=48, n_layer=2, n_head=4, n_embd=64),
    "gpt2-nobias-gqa": dict(family="gpt2", vocab_size=50, block_size=40, n_layer=2, n_head=4, n_kv_head=2,
                            n_embd=64, bias=False, tie_embeddings=False),
    "gpt2-in-out": dict(family="gpt2", vocab_size=70, block_size=40, n_layer=1, n_head=2, n_embd=64,
                        linear_layout="in_out"),
    "llama-gqa": dict(family="llama", vocab_size=90, block_size=48, n_layer=2, n_head=4, n_kv_head=2, n_embd=64),
    # Qwen-like: qk_norm, biases, head_dim apart from C / NH, llama3 rope scaling
    "qwen3": dict(family="llama", vocab_size=80, block_size=40, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                  head_dim=32, qk_norm=True, qkv_bias=True, attn_out_bias=True, rope_theta=100.0,
                  rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
}
# quantize_model(scheme, group, head)
SCHEMES = {"fp32": None, "int8 head fp32": ("int8", None, "fp32"), "int8": ("int8", None, "default"),
           "int8 g32 head int8": ("int8", 32, "int8"), "int4": ("int4", 32, "default"),
           "int4 g64 head same": ("int4", 64, "same")}


def _model(name, scheme, seed=0):
    model = GPT(GPTConfig(**CONFIGS[name]), seed=seed).eval()
    # non-zero norm weights and biases, so a swapped or skipped one changes the logits
    rng = np.random.default_rng(seed + 1)
    for pname, p in model.named_parameters():
        if p.data.ndim == 1:
            p.data[...] = (1.0 if "norm" in pname or "ln" in pname else 0.0) + 0.3 * rng.standard_normal(p.data.shape)
    if SCHEMES[scheme] is not None:
        quantize_model(model, *SCHEMES[scheme])
    return model


def _pair(model, sequences, batch_invariant=True):
    """Two decoders over caches of their own: one with the C step, one with the Python loop."""
    fast = PagedDecoder(model, PagedKVCache(model.config, 64, block_size=4), batch_invariant)
    slow = PagedDecoder(model, PagedKVCache(model.config, 64, block_size=4), batch_invariant)
    slow.c_step = None
    for decoder in (fast, slow):
        for seq in range(sequences):
            decoder.paged.add(seq)
    return fast, slow


def _run(decoder, items, ids):
    for seq, n, _ in items:
        assert decoder.paged.reserve(seq, n)
    with no_grad():
        return decoder.forward(np.asarray(ids, np.int64), decoder.paged.plan(items))


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize("batch_invariant", [True, False])
def test_the_c_step_gives_the_python_loops_bits(name, scheme, batch_invariant):
    """batch_invariant=False (RL rollouts): the float layers through linear_forward on both sides."""
    model = _model(name, scheme)
    fast, slow = _pair(model, 3, batch_invariant)
    assert fast.c_step is not None, "the C step did not take this model"
    c_step, answered = fast.c_step, []

    def counted(ids, plan):
        logits = c_step(ids, plan)
        answered.append(logits is not None)
        return logits
    fast.c_step = counted
    fast.c_step.quantized = c_step.quantized
    v, rng = model.config.vocab_size, np.random.default_rng(7)
    # three prompts of different lengths (prompt rows: the Python loop on both sides) ...
    prompts = [rng.integers(0, v, size=n).tolist() for n in (5, 1, 9)]
    items = [(s, len(p), len(p)) for s, p in enumerate(prompts)]
    flat = [t for p in prompts for t in p]
    np.testing.assert_array_equal(_run(fast, items, flat), _run(slow, items, flat))
    # ... then decode steps of all three (the C step on one side), and of two of them
    for step in range(12):
        seqs = [0, 1, 2] if step % 3 else [2, 0]
        ids = rng.integers(0, v, size=len(seqs)).tolist()
        items = [(s, 1, 0) for s in seqs]
        a, b = _run(fast, items, ids), _run(slow, items, ids)
        assert a.shape == (len(seqs), v) and a.dtype == np.float32
        np.testing.assert_array_equal(a, b)
    assert answered == [True] * 12                                # every decode step was the C step's
    for layer in range(model.config.n_layer):                     # the same cache, written alike
        np.testing.assert_array_equal(fast.paged.keys[layer], slow.paged.keys[layer])
        np.testing.assert_array_equal(fast.paged.values[layer], slow.paged.values[layer])


def test_greedy_generation_is_the_same_text_with_and_without_the_c_step(monkeypatch):
    model = _model("llama-gqa", "int4")
    greedy = SamplingConfig(temperature=0)
    prompts = [[3, 1, 4, 1, 5], [9, 2]]
    with_step = Engine(model).generate_ids(prompts, 20, greedy, stop_ids=())
    monkeypatch.setattr(cpu_decode.DecodeStep, "build", classmethod(lambda cls, decoder: None))
    without = Engine(model).generate_ids(prompts, 20, greedy, stop_ids=())
    assert [c.ids for c in with_step] == [c.ids for c in without]


def test_an_id_outside_the_vocabulary_is_the_checked_paths_error():
    model = _model("gpt2", "fp32")
    fast, slow = _pair(model, 1)
    _run(fast, [(0, 2, 2)], [1, 2])
    with pytest.raises(MicrogptError):
        _run(fast, [(0, 1, 0)], [model.config.vocab_size])


def test_more_decode_rows_than_the_integer_dots_take_run_the_python_loop():
    model = _model("gpt2", "int8")
    rows = cpu_quant.INTDOT_MAX_ROWS + 2
    fast, slow = _pair(model, rows)
    calls = []
    step = fast.c_step
    fast.c_step = lambda ids, plan: calls.append(len(ids)) or step(ids, plan)
    fast.c_step.quantized = True
    items = [(s, 1, 1) for s in range(rows)]
    ids = list(range(rows))
    np.testing.assert_array_equal(_run(fast, items, ids), _run(slow, items, ids))
    items = [(s, 1, 0) for s in range(rows)]
    np.testing.assert_array_equal(_run(fast, items, ids), _run(slow, items, ids))
    assert calls == []                                  # the GEMM path's rows: not the C step's
    items = items[:4]
    np.testing.assert_array_equal(_run(fast, items, ids[:4]), _run(slow, items, ids[:4]))
    assert calls == [4]


def test_a_weight_the_c_step_does_not_take_keeps_the_python_loop():
    model = _model("gpt2", "int8")
    block = model.blocks[0]
    q = block.attn.c_attn.qweight
    q.w_scale = q.w_scale.astype(np.float64)            # float64 scales: the checked kernels' path
    decoder = PagedDecoder(model, PagedKVCache(model.config, 16, block_size=4))
    assert decoder.c_step is None


def test_the_workspace_is_checked_by_the_kernel():
    model = _model("gpt2", "fp32")
    fast, _ = _pair(model, 1)
    _run(fast, [(0, 3, 3)], [1, 2, 3])
    assert fast.paged.reserve(0, 1)
    plan = fast.paged.plan([(0, 1, 0)])
    ids = np.array([4], np.int64)
    lib, ffi = cpu_decode.lib, cpu_decode.ffi
    need = lib.decode_step_workspace(fast.c_step.model, 1, 1, plan.tables.shape[1])
    short = np.empty(need - 1, np.float32)
    logits = np.full((1, model.config.vocab_size), 7.0, np.float32)
    fp = lambda a: ffi.from_buffer("float[]", a)          # noqa: E731
    ip = lambda a: ffi.from_buffer("int64_t[]", a)         # noqa: E731
    status = lib.decode_step(fp(logits), fp(short), short.size, fast.c_step.model, ip(ids), ip(plan.positions),
                             ip(plan.slots), ip(plan.tables), ip(plan.last_rows), 1, 1, plan.tables.shape[1])
    assert status == -1 and (logits == 7.0).all()


@pytest.mark.parametrize("name", ["gpt2-in-out", "qwen3"])
@pytest.mark.parametrize("scheme", ["fp32", "int4"])
def test_many_rows_not_batch_invariant_take_the_gemm_in_both(name, scheme):
    """8 sequences (more rows than the streaming path's 4: linear_forward's GEMM) through the C
    step and the loop of a batch_invariant=False decoder: the same bits, a different rounding
    from the batch-invariant decoder's streaming path (so the GEMM really ran)."""
    model = _model(name, scheme)
    rows = 8
    fast, slow = _pair(model, rows, batch_invariant=False)
    steady, _ = _pair(model, rows)
    rng = np.random.default_rng(3)
    v = model.config.vocab_size
    prompts = [rng.integers(0, v, size=n).tolist() for n in range(2, 2 + rows)]
    items = [(s, len(p), len(p)) for s, p in enumerate(prompts)]
    flat = [t for p in prompts for t in p]
    for decoder in (fast, slow, steady):
        _run(decoder, items, flat)
    differs = False
    for _ in range(4):
        ids = rng.integers(0, v, size=rows).tolist()
        items = [(s, 1, 0) for s in range(rows)]
        a, b, c = _run(fast, items, ids), _run(slow, items, ids), _run(steady, items, ids)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-4)
        differs |= not np.array_equal(a, c)
    assert differs or scheme != "fp32"
