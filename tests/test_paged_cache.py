"""The paged KV cache (inference/paged.py): block bookkeeping, the decoding forward over it
against GPT.forward, and the one-path-per-row rule that makes a row's result batch-independent."""
import numpy as np
import pytest

from microgpt import backends
from microgpt.inference.paged import LINEAR_ROWS, BlockPool, PagedDecoder, PagedKVCache
from microgpt.nn import GPT, GPTConfig
from microgpt.tensor import no_grad


def _model(family):
    config = GPTConfig(family=family, vocab_size=53, block_size=40, n_layer=2, n_head=4,
                       n_kv_head=2 if family == "llama" else None, n_embd=32,
                       qk_norm=family == "llama")
    return GPT(config, seed=5).eval()


def test_block_pool_hands_out_and_takes_back():
    pool = BlockPool(4)
    a = pool.allocate(3)
    assert sorted(a) == [0, 1, 2] and pool.num_free == 1 and pool.allocate(2) is None and pool.num_free == 1
    pool.release(a)
    assert pool.num_used == 0 and pool.peak_used == 3 and sorted(pool.allocate(4)) == [0, 1, 2, 3]


def test_reserve_plan_release():
    cache = PagedKVCache(_model("gpt2").config, num_blocks=5, block_size=4)
    cache.add("a"), cache.add("b")
    assert cache.reserve("a", 6) and len(cache.tables["a"]) == 2
    assert cache.reserve("b", 9) and not cache.reserve("a", 9)      # would need 1 more, 0 free
    plan = cache.plan([("a", 6, 6), ("b", 1, 0)])
    assert plan.positions.tolist() == list(range(6)) + [0] and plan.num_prefill == 6
    table = cache.tables["a"]
    assert plan.slots[:6].tolist() == [table[p // 4] * 4 + p % 4 for p in range(6)]
    assert plan.last_rows.tolist() == [5, 6] and cache.lengths == {"a": 6, "b": 1}
    with pytest.raises(ValueError, match="reserved"):
        cache.plan([("a", 3, 0)])
    cache.release("a")
    assert cache.pool.num_free == 2 and "a" not in cache


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_paged_decoding_matches_the_model_forward(family):
    model = _model(family)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, 53, n).tolist() for n in (7, 1, 12)]
    cache = PagedKVCache(model.config, num_blocks=20, block_size=4)
    decoder = PagedDecoder(model, cache)
    for i, p in enumerate(prompts):
        cache.add(i)
        cache.reserve(i, len(p) + 3)
    with no_grad():
        logits = decoder.forward(np.concatenate(prompts), cache.plan([(i, len(p), len(p)) for i, p in
                                                                      enumerate(prompts)]))
        for i, p in enumerate(prompts):
            want = model(np.array([p]))[0].numpy()[0, -1]
            np.testing.assert_allclose(logits[i], want, atol=1e-4, rtol=1e-4)
        nxt = [int(np.argmax(r)) for r in logits]
        logits = decoder.forward(np.array(nxt), cache.plan([(i, 1, 0) for i in range(3)]))
        for i, p in enumerate(prompts):
            want = model(np.array([p + [nxt[i]]]))[0].numpy()[0, -1]
            np.testing.assert_allclose(logits[i], want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shape", [(32, 96), (96, 32), (53, 32), (128, 32)])
def test_each_linear_path_gives_a_row_the_same_bits_at_any_row_count(shape):
    """What PagedDecoder's rule rests on: within the streaming path (<= LINEAR_ROWS rows) and
    within the GEMM path (more rows) a row's result does not depend on the row count."""
    be = backends.get("cpu")
    rng = np.random.default_rng(0)
    w = rng.standard_normal((shape[1], shape[0])).astype(np.float32)
    b = rng.standard_normal(shape[1]).astype(np.float32)
    x = rng.standard_normal((70, shape[0])).astype(np.float32)
    one = [be.linear_forward(np.ascontiguousarray(x[i:i + 1]), w, b)[0] for i in range(8)]
    for n in range(2, LINEAR_ROWS + 1):
        assert np.array_equal(be.linear_forward(np.ascontiguousarray(x[:n]), w, b), np.stack(one[:n]))
    full = be.linear_forward(x, w, b)
    for n in (LINEAR_ROWS + 1, 8, 17, 33):
        assert np.array_equal(be.linear_forward(np.ascontiguousarray(x[:n]), w, b), full[:n])
