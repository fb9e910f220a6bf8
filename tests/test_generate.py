"""Generation: KV-cache decoding equals full recomputation, batching, sampling, stop strings."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from microgpt.errors import ConfigError
from microgpt.inference.decode import Decoder
from microgpt.inference.engine import Engine
from microgpt.inference.sampling import (SamplingConfig, apply_repetition_penalty, filter_top_k,
                                         filter_top_p, sample, softmax)
from microgpt.nn import GPT, GPTConfig, Linear
from microgpt.tensor import Tensor, no_grad
from microgpt.tokenizer import Tokenizer


def _model(family="gpt2", vocab=61, block=32):
    config = GPTConfig(family=family, vocab_size=vocab, block_size=block, n_layer=2, n_head=4,
                       n_kv_head=2 if family == "llama" else None, n_embd=32)
    model = GPT(config, seed=1)
    rng = np.random.default_rng(2)            # larger weights: sharper, more varied logits
    for _, p in model.named_parameters():
        p.data = p.data + rng.normal(0, 0.3, p.shape).astype(np.float32)
    return model


def _recompute(model, prompt, steps, sampling, seed):
    """The oracle: re-run the whole sequence through the model for every new token."""
    rng = np.random.Generator(np.random.PCG64(seed))
    ids, all_logits = list(prompt), []
    with no_grad():
        for _ in range(steps):
            logits = model.eval()(np.array([ids]))[0].numpy()[:, -1, :]
            all_logits.append(logits[0])
            ids.append(int(sample(logits, rng, sampling, [ids])[0]))
    return ids[len(prompt):], all_logits


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("sampling", [SamplingConfig(temperature=0),
                                      SamplingConfig(temperature=1.0, top_k=10, top_p=0.9,
                                                     repetition_penalty=1.3)])
def test_cached_decoding_equals_full_recomputation(family, sampling, fast):
    model = _model(family)
    prompt = [3, 14, 15, 9, 26, 5]
    expected, _ = _recompute(model, prompt, 20, sampling, seed=7)
    got = Engine(model, fast=fast).generate_ids([prompt], 20, sampling, seed=7, stop_ids=())[0]
    assert got.ids == expected and got.finish_reason == "length"


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_cached_logits_match_recomputed_logits(family):
    model = _model(family)
    prompt = [1, 2, 3]
    tokens, logits = _recompute(model, prompt, 10, SamplingConfig(temperature=0), 0)
    cache, decoder = model.new_kv_cache(1), Decoder(model)
    assert Decoder.supports(model)
    with no_grad():
        step = model(np.array([prompt]), kv_cache=cache)[0].numpy()[0, -1]
        np.testing.assert_allclose(step, logits[0], atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(decoder.step(np.array([prompt]))[0], logits[0], atol=1e-5,
                                   rtol=1e-5)
        for i, t in enumerate(tokens[:-1]):
            step = model(np.array([[t]]), kv_cache=cache)[0].numpy()[0, -1]
            np.testing.assert_allclose(step, logits[i + 1], atol=1e-5, rtol=1e-5)
            np.testing.assert_allclose(decoder.step(np.array([[t]]))[0], logits[i + 1],
                                       atol=1e-5, rtol=1e-5)


def test_modified_models_decode_through_the_model_itself():
    class Scaled(Linear):                                          # e.g. what LoRA would do
        def forward(self, x):
            return super().forward(x) * 2.0
    model = _model().eval()
    assert Decoder.supports(model) and not Decoder.supports(_model().train())
    plain = Engine(model).generate_ids([[1, 2]], 6, SamplingConfig(temperature=0), stop_ids=())
    layer = model.transformer.h[0].mlp.c_fc
    wrapped = Scaled(layer.weight.shape[1], layer.weight.shape[0])
    wrapped.weight, wrapped.bias = layer.weight, layer.bias
    model.transformer.h[0].mlp.c_fc = wrapped
    assert not Decoder.supports(model)
    expected, _ = _recompute(model, [1, 2], 6, SamplingConfig(temperature=0), 0)
    got = Engine(model).generate_ids([[1, 2]], 6, SamplingConfig(temperature=0), stop_ids=())
    assert got[0].ids == expected != plain[0].ids


@pytest.mark.parametrize("fast", [True, False])
def test_batched_prompts_of_different_lengths_equal_one_at_a_time(fast):
    model = _model()
    prompts = [[5], [7, 8, 9, 10, 11], [2, 3]]
    greedy = SamplingConfig(temperature=0)
    batched = Engine(model, fast=fast).generate_ids(prompts, 12, greedy, stop_ids=())
    for prompt, out in zip(prompts, batched):
        alone = Engine(model, fast=fast).generate_ids([prompt], 12, greedy, stop_ids=())[0]
        assert out.ids == alone.ids


def test_context_limit_and_eot_stop():
    model = _model(block=10)
    out = Engine(model).generate_ids([[1, 2, 3, 4]], 50, SamplingConfig(temperature=0),
                                     stop_ids=())[0]
    assert len(out.ids) == 10 - 4 + 1 and out.finish_reason == "context"
    first = out.ids[0]
    out = Engine(model).generate_ids([[1, 2, 3, 4]], 50, SamplingConfig(temperature=0),
                                     stop_ids=(first,))[0]
    assert out.ids == [first] and out.finish_reason == "eot"
    with pytest.raises(ConfigError, match="leaves no room"):
        Engine(model).generate_ids([list(range(10))], 5)
    with pytest.raises(ConfigError, match=r"\[0, 61\)"):
        Engine(model).generate_ids([[99]], 5)


# --- sampling against independent oracles ----------------------------------------------------

def test_top_k_top_p_and_penalty_filters():
    z = np.array([[1.0, 3.0, 2.0, 3.0, -1.0]])
    assert np.isinf(filter_top_k(z, 2)).tolist() == [[True, False, True, False, True]]
    assert np.isinf(filter_top_k(z, 3)).sum() == 2
    p = np.array([[0.5, 0.3, 0.15, 0.05]])
    np.testing.assert_allclose(filter_top_p(p, 0.75), [[0.625, 0.375, 0, 0]])
    np.testing.assert_allclose(filter_top_p(p, 0.5), [[1, 0, 0, 0]])
    np.testing.assert_allclose(filter_top_p(p, 0.81), [[0.5, 0.3, 0.15, 0]] / np.float64(0.95))
    z = np.array([[2.0, -2.0, 1.0]])
    np.testing.assert_allclose(apply_repetition_penalty(z.copy(), [[0, 1, 1]], 2.0),
                               [[1.0, -4.0, 1.0]])


def test_sampling_distribution_matches_the_filtered_softmax():
    logits = np.array([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    config = SamplingConfig(temperature=0.7, top_k=4, top_p=0.95)
    z = logits / 0.7
    z[0, 4:] = -np.inf                                             # top-4
    probs = softmax(z)
    order = np.argsort(-probs[0])
    keep = (np.cumsum(probs[0, order]) - probs[0, order]) < 0.95
    expected = np.zeros(6)
    expected[order[keep]] = probs[0, order[keep]]
    expected /= expected.sum()
    rng = np.random.Generator(np.random.PCG64(0))
    draws = np.array([sample(logits, rng, config)[0] for _ in range(20000)])
    freq = np.bincount(draws, minlength=6) / draws.size
    np.testing.assert_allclose(freq, expected, atol=0.015)
    assert freq[expected == 0].sum() == 0


def test_seed_fixes_the_output_and_greedy_is_argmax():
    model = _model()
    config = SamplingConfig(temperature=1.0)
    a = Engine(model).generate_ids([[1, 2]], 15, config, seed=3, stop_ids=())[0].ids
    b = Engine(model).generate_ids([[1, 2]], 15, config, seed=3, stop_ids=())[0].ids
    c = Engine(model).generate_ids([[1, 2]], 15, config, seed=4, stop_ids=())[0].ids
    assert a == b and a != c
    logits = np.array([[0.1, 0.9, 0.9, -1.0]])
    assert sample(logits, None, SamplingConfig(temperature=0)).tolist() == [1]
    with pytest.raises(ConfigError):
        SamplingConfig(top_p=0)


# --- text: stop strings and streaming ----------------------------------------------------------

class ScriptedModel:
    """A stand-in model that emits a fixed token script (to test the text layer exactly)."""

    def __init__(self, script, vocab):
        self.script, self.training = list(script), False
        self.config = GPTConfig(vocab_size=vocab, block_size=256, n_layer=1, n_head=1, n_embd=4)

    def new_kv_cache(self, batch):
        return {"step": 0}

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def __call__(self, idx, kv_cache=None):
        b = np.asarray(idx).shape[0]
        logits = np.zeros((b, 1, self.config.vocab_size), np.float32)
        token = self.script[min(kv_cache["step"], len(self.script) - 1)]
        logits[:, 0, token] = 100.0
        kv_cache["step"] += 1
        return Tensor(logits), None


def test_stop_strings_cut_the_text_and_are_never_streamed():
    tok = Tokenizer.bytes_level(special_tokens=("<|endoftext|>",))
    text = "héllo wörld\n\nsecond 🐍 part"
    model = ScriptedModel(list(text.encode("utf-8")), tok.vocab_size)
    pieces = []
    out = Engine(model, tok).generate(["x"], 100, SamplingConfig(temperature=0), stop=["\n\n"],
                                      on_text=lambda row, piece: pieces.append(piece))[0]
    assert out.text == "héllo wörld" and out.finish_reason == "stop"
    assert "".join(pieces) == out.text
    # without stop strings: multi-byte characters split across tokens stream whole
    pieces = []
    out = Engine(model, tok).generate(["x"], len(text.encode()), SamplingConfig(temperature=0),
                                      on_text=lambda row, piece: pieces.append(piece))[0]
    assert out.text == text and "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)


def test_end_of_text_ends_a_row_and_is_not_in_the_text():
    tok = Tokenizer.bytes_level(special_tokens=("<|endoftext|>",))
    model = ScriptedModel(list(b"abc") + [tok.eot_id], tok.vocab_size)
    out = Engine(model, tok).generate([""], 50, SamplingConfig(temperature=0))[0]
    assert out.text == "abc" and out.finish_reason == "eot" and out.ids[-1] == tok.eot_id


@given(st.lists(st.floats(-20, 20), min_size=1, max_size=40), st.floats(0.01, 1.0),
       st.integers(0, 45))
def test_filters_keep_the_smallest_sufficient_set(values, p, k):
    """Properties, on random logits: top-k keeps exactly the ids >= the k-th largest value;
    top-p keeps a set of mass >= p that no smaller prefix of the sorted ids reaches."""
    z = np.array([values])
    kept = ~np.isinf(filter_top_k(z, k))
    if 0 < k < z.shape[1]:
        kth = np.sort(z[0])[-k]
        assert kept[0].tolist() == (z[0] >= kth).tolist()
    else:
        assert kept.all()
    probs = softmax(z)
    out = filter_top_p(probs, p)
    assert np.isclose(out.sum(), 1.0)
    chosen = out[0] > 0
    assert probs[0, chosen].sum() >= min(p, 1.0) - 1e-9 or chosen.all()
    if chosen.sum() > 1:                          # dropping the least likely kept id falls short
        smallest = probs[0, chosen].min()
        assert probs[0, chosen].sum() - smallest < p + 1e-9
