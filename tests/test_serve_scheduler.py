"""The continuous-batching scheduler: the same greedy text alone or in a crowd, chunked
prefill, preemption by recompute, cancellation frees blocks, per-request seeds.

The oracle is the offline Engine (inference/engine.py) running each request by itself."""
import numpy as np
import pytest

from microgpt.errors import ConfigError
from microgpt.inference.engine import Engine
from microgpt.inference.sampling import SamplingConfig
from microgpt.nn import GPT, GPTConfig
from microgpt.serve.scheduler import Request, Scheduler

GREEDY = SamplingConfig(temperature=0)


def _model(family="gpt2", vocab=97, block=96):
    config = GPTConfig(family=family, vocab_size=vocab, block_size=block, n_layer=2, n_head=4,
                       n_kv_head=2 if family == "llama" else None, n_embd=32)
    model = GPT(config, seed=3)
    rng = np.random.default_rng(4)
    for _, p in model.named_parameters():
        p.data = p.data + rng.normal(0, 0.3, p.shape).astype(np.float32)
    return model.eval()


def _requests(n, vocab, seed=0, max_tokens=(1, 24), prompt=(1, 40)):
    rng = np.random.default_rng(seed)
    return [Request(f"r{i}", [int(t) for t in rng.integers(0, vocab, int(rng.integers(*prompt)))],
                    max_tokens=int(rng.integers(*max_tokens)), sampling=GREEDY) for i in range(n)]


def _run(sched, requests, cancel_after=None, max_steps=10_000):
    out = {r.request_id: [] for r in requests}
    reasons = {}
    for r in requests:
        sched.add(r)
    steps = 0
    while sched.has_work():
        steps += 1
        assert steps < max_steps, "the scheduler did not finish"
        for ev in sched.step():
            out[ev.request_id].append(ev.token)
            if ev.finish_reason:
                reasons[ev.request_id] = ev.finish_reason
        if cancel_after and steps == cancel_after[1]:
            sched.cancel(cancel_after[0])
    return out, reasons


def _alone(model, request):
    return Engine(model).generate_ids([request.prompt], request.max_tokens, GREEDY, stop_ids=())[0].ids


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_32_concurrent_greedy_requests_equal_the_offline_engine_alone(family):
    model = _model(family)
    requests = _requests(32, model.config.vocab_size, seed=1)
    sched = Scheduler(model, max_batch=32, max_step_tokens=64, block_size=8)
    out, reasons = _run(sched, requests)
    for r in requests:
        assert out[r.request_id] == _alone(model, r), r.request_id
        assert reasons[r.request_id] == "length"
    assert sched.cache.pool.num_used == 0
    assert sched.cache.pool.peak_used > 8                  # they really shared the pool


def test_preemption_by_recompute_keeps_the_greedy_text():
    model = _model("llama")
    requests = _requests(12, model.config.vocab_size, seed=2, max_tokens=(20, 40), prompt=(10, 30))
    sched = Scheduler(model, num_blocks=14, block_size=8, max_batch=12, max_step_tokens=32)
    out, _ = _run(sched, requests)
    assert sched.preemptions > 0
    for r in requests:
        assert out[r.request_id] == _alone(model, r), r.request_id
    assert sched.cache.pool.num_used == 0


def test_cancel_frees_blocks_at_once_and_others_finish():
    model = _model()
    requests = _requests(4, model.config.vocab_size, seed=3, max_tokens=(30, 40))
    sched = Scheduler(model, block_size=8, max_batch=4)
    for r in requests:
        sched.add(r)
    for _ in range(5):
        sched.step()
    used = sched.cache.pool.num_used
    held = len(sched.cache.tables["r1"])
    assert sched.cancel("r1") and sched.cache.pool.num_used == used - held > 0
    assert "r1" not in sched.cache and not sched.cancel("r1")
    while sched.has_work():
        sched.step()
    assert sched.cache.pool.num_used == 0


def test_a_seed_fixes_a_sampled_request_whatever_runs_beside_it():
    model = _model()
    sampling = SamplingConfig(temperature=1.0, top_k=20, top_p=0.9)
    mine = Request("me", [5, 6, 7], max_tokens=12, sampling=sampling, seed=42)
    alone, _ = _run(Scheduler(model), [mine])
    crowd = _requests(6, model.config.vocab_size, seed=4)
    mine2 = Request("me", [5, 6, 7], max_tokens=12, sampling=sampling, seed=42)
    together, _ = _run(Scheduler(model, max_batch=7), crowd + [mine2])
    assert alone["me"] == together["me"]


def test_stop_ids_penalties_and_context():
    model = _model(block=20)
    first = _alone(model, Request("x", [1, 2, 3], max_tokens=1))[0]
    out, reasons = _run(Scheduler(model), [Request("s", [1, 2, 3], max_tokens=9, stop_ids=(first,))])
    assert out["s"] == [first] and reasons["s"] == "stop"
    out, reasons = _run(Scheduler(model), [Request("c", list(range(15)), max_tokens=50)])
    assert len(out["c"]) == 5 and reasons["c"] == "context"
    # a huge frequency penalty forbids repeating any generated token
    out, _ = _run(Scheduler(model), [Request("p", [1], max_tokens=15, frequency_penalty=1e9)])
    assert len(set(out["p"])) == len(out["p"])


def test_bad_requests_are_refused():
    model = _model(block=20)
    sched = Scheduler(model)
    with pytest.raises(ConfigError, match="no room"):
        sched.add(Request("a", list(range(20))))
    with pytest.raises(ConfigError, match="at least one"):
        sched.add(Request("b", []))
    sched.add(Request("c", [1]))
    with pytest.raises(ConfigError, match="already"):
        sched.add(Request("c", [1]))
