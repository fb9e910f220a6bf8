"""The Llama family's variants (Llama 1/2/3, Qwen2, Qwen3) against transformers, and decoding.

- transformers builds a random-init model of each variant from a small config (no download);
  its weights, every one redrawn (tests/hf_helpers.py), are copied into our GPT by name, and
  the logits on random ids agree: float32 max rel. error < 1e-4; float64 < 1e-12 with
  transformers made to compute in float64 throughout (its rotary angles and RMSNorms run in
  float32 otherwise) on its own rotary frequencies; 32 greedy tokens of our KV-cache
  generation (decode.py and GPT.forward) equal transformers' generate;
- our rope_scaling frequencies equal transformers' own ROPE_INIT_FUNCTIONS;
- decode.py equals GPT.forward over a whole sequence for every option, and knows every
  GPTConfig field;
- the options' shapes, names and config errors (gpt2 refuses them, a bad rope_scaling, a
  sliding window shorter than the context).
"""
import dataclasses

import numpy as np
import pytest

from microgpt.errors import ConfigError
from microgpt.inference.decode import CONFIG_FIELDS, Decoder
from microgpt.inference.engine import Engine
from microgpt.inference.sampling import SamplingConfig
from microgpt.nn import GPT, GPTConfig, rope_inv_freq, rope_tables
from microgpt.tensor import no_grad

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


def relative_error(ours, theirs):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30)


# --- our own checks: shapes, names, errors -------------------------------------------------------

def tiny(**fields):
    base = dict(family="llama", vocab_size=29, block_size=16, n_layer=2, n_head=4, n_kv_head=2,
                n_embd=16)
    return GPTConfig(**{**base, **fields})


def test_head_dim_apart_from_width_sets_the_projection_shapes():
    config = tiny(head_dim=6, qk_norm=True)
    assert config.head_size == 6
    params = {name: p.shape for name, p in GPT(config).named_parameters()}
    attn = "model.layers.0.self_attn."
    assert params[attn + "q_proj.weight"] == (4 * 6, 16)
    assert params[attn + "k_proj.weight"] == params[attn + "v_proj.weight"] == (2 * 6, 16)
    assert params[attn + "o_proj.weight"] == (16, 4 * 6)
    assert params[attn + "q_norm.weight"] == params[attn + "k_norm.weight"] == (6,)
    assert tiny(n_embd=18, n_head=4, head_dim=4).head_size == 4      # width need not divide
    with pytest.raises(ConfigError, match="even head size"):
        tiny(head_dim=5)
    with pytest.raises(ConfigError, match="or set head_dim"):
        tiny(n_embd=18)


def test_bias_flags_put_biases_on_the_named_projections_only():
    def biases(**fields):
        return sorted(name.split(".")[-2] for name, _ in GPT(tiny(n_layer=1, **fields)).named_parameters()
                      if name.endswith(".bias"))
    assert biases() == []
    assert biases(qkv_bias=True) == ["k_proj", "q_proj", "v_proj"]                 # Qwen2
    assert biases(attn_out_bias=True) == ["o_proj"]
    assert biases(bias=True) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                 "v_proj"]
    assert biases(bias=True, qkv_bias=False, attn_out_bias=False) == ["down_proj", "gate_proj", "up_proj"]


@pytest.mark.parametrize("fields,words", [
    (dict(head_dim=4), "head_dim=4"), (dict(qkv_bias=False), "qkv_bias=False"),
    (dict(attn_out_bias=False), "attn_out_bias=False"), (dict(qk_norm=True), "qk_norm=True"),
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope_scaling"),
    (dict(sliding_window=64), "sliding_window=64")])
def test_gpt2_refuses_the_llama_options(fields, words):
    base = dict(family="gpt2", vocab_size=29, block_size=16, n_layer=1, n_head=2, n_embd=16)
    GPTConfig(**base, head_dim=8, qkv_bias=True, attn_out_bias=True)     # what gpt2 has anyway
    with pytest.raises(ConfigError, match=f"family='gpt2' does not take {words}.*use family='llama'"):
        GPTConfig(**base, **fields)


@pytest.mark.parametrize("scaling,words", [
    ({"rope_type": "yarn", "factor": 4.0}, "'yarn' is not supported; the supported types are default, linear, llama3"),
    ({"rope_type": "linear"}, "'linear' needs factor"),
    ({"rope_type": "llama3", "factor": 8.0}, "needs high_freq_factor, low_freq_factor, original_max"),
    ({"rope_type": "linear", "factor": "4"}, "factor must be a number"),
    ({"rope_type": "linear", "factor": 0}, "factor must be > 0"),
    ({"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5}, "does not take partial_rotary"),
    ({**LLAMA3, "low_freq_factor": 4.0}, "low_freq_factor < high_freq_factor"),
    ({"rope_type": "linear", "type": "llama3", "factor": 2.0}, "two types"),
    ({"rope_type": "linear", "factor": 2.0, "rope_theta": 5.0}, "rope_theta=5.0 but the config says"),
    ([("rope_type", "linear")], "must be a dict")])
def test_bad_rope_scaling_is_a_config_error_naming_the_key(scaling, words):
    with pytest.raises(ConfigError, match=words):
        tiny(rope_scaling=scaling)


def test_rope_scaling_forms_that_mean_no_scaling_or_the_same_scaling():
    none = rope_tables(16, 8, 1e4, np.float64)
    for same in (None, {"rope_type": "default"}, {"type": "default", "rope_theta": 1e4}):
        np.testing.assert_array_equal(rope_tables(16, 8, 1e4, np.float64, same), none)
    old = rope_inv_freq(8, 1e4, {"type": "linear", "factor": 4.0})        # the pre-v4.45 key
    np.testing.assert_array_equal(old, rope_inv_freq(8, 1e4, {"rope_type": "linear", "factor": 4.0}))
    np.testing.assert_allclose(old, rope_inv_freq(8, 1e4) / 4.0, rtol=1e-15)


def test_llama3_scaling_has_its_three_regimes():
    # head size 16, theta 1e4: wavelengths 2 pi 1e4^(i/8) = 6.3, 19.9, 62.8, 199 ...; with a
    # context of 64 and factors 1 and 4, pair 0 is kept (< 16), 1 and 2 interpolated, 3.. divided.
    plain, scaled = rope_inv_freq(16, 1e4), rope_inv_freq(16, 1e4, LLAMA3)
    assert scaled[0] == plain[0]
    assert np.all((plain[1:3] / 8 < scaled[1:3]) & (scaled[1:3] < plain[1:3]))
    np.testing.assert_allclose(scaled[3:], plain[3:] / 8, rtol=1e-15)


def test_sliding_window_shorter_than_the_context_is_not_supported_yet():
    with pytest.raises(ConfigError, match="sliding_window is not supported yet.*block_size <= 8"):
        tiny(sliding_window=8)
    with pytest.raises(ConfigError, match="positive integer"):
        tiny(sliding_window=0)
    ids = np.random.default_rng(0).integers(0, 29, size=(1, 16))
    with no_grad():                        # a window holding the whole context changes nothing
        windowed = GPT(tiny(sliding_window=16), seed=3)(ids)[0].numpy()
        full = GPT(tiny(), seed=3)(ids)[0].numpy()
    np.testing.assert_array_equal(windowed, full)


VARIANTS = {
    "qwen3": dict(head_dim=12, qk_norm=True, rope_scaling=LLAMA3, tie_embeddings=False),
    "qwen2": dict(qkv_bias=True, rope_scaling={"rope_type": "linear", "factor": 4.0}),
    "all-biases": dict(bias=True, n_kv_head=4),
    "out-bias": dict(attn_out_bias=True, n_kv_head=1, head_dim=2),
    "window": dict(sliding_window=16, rope_theta=500000.0),
}


def randomized(config, seed=0):
    """A GPT whose every parameter is random (init leaves biases 0 and norm gains 1)."""
    model = GPT(config, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for _, p in model.named_parameters():
        p.data = p.data + rng.normal(0, 0.3, p.shape).astype(np.float32)
    return model.eval()


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_config_round_trips_through_its_dict(name):
    config = tiny(**VARIANTS[name])
    again = GPTConfig(**config.to_dict())
    assert again == config and again.to_dict() == config.to_dict()


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_decoder_equals_gpt_forward_over_a_whole_sequence(name):
    model = randomized(tiny(**VARIANTS[name]))
    assert Decoder.supports(model)
    ids = np.random.default_rng(4).integers(0, 29, size=(2, 16))
    with no_grad():
        full = model(ids)[0].numpy()                                   # (2, 16, V)
    decoder = Decoder(model)
    steps = [decoder.step(ids[:, :5])] + [decoder.step(ids[:, i:i + 1]) for i in range(5, 16)]
    np.testing.assert_allclose(np.stack(steps, axis=1), full[:, 4:], rtol=1e-5, atol=1e-5)


def test_decoder_knows_every_config_field():
    fields = {f.name for f in dataclasses.fields(GPTConfig)}
    assert fields == CONFIG_FIELDS, ("decode.py must reproduce each GPTConfig field (or "
                                     f"Decoder.supports refuse it): {sorted(fields ^ CONFIG_FIELDS)}")


def test_qk_norm_modules_replaced_send_the_engine_through_gpt_forward():
    model = randomized(tiny(qk_norm=True))
    assert Decoder.supports(model)
    model.model.layers[1].self_attn.k_norm = model.model.layers[1].self_attn.q_proj    # not an RMSNorm
    assert not Decoder.supports(model)


# --- against transformers -----------------------------------------------------------------------

HF_CASES = {
    # kind, overrides of hf_helpers.SMALL (32 wide, 4 heads of 8, 2 kv heads, 2 layers)
    "llama": ("llama", dict()),
    "llama-linear-tied-mha": ("llama", dict(num_key_value_heads=4, tie_word_embeddings=True,
                                            rope_parameters={"rope_type": "linear", "factor": 4.0})),
    # 2 heads of 16: pairs in all three regimes (see test_llama3_scaling_has_its_three_regimes)
    "llama3": ("llama", dict(num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                             rope_parameters={**LLAMA3, "rope_theta": 10000.0})),
    "llama3-tied-theta": ("llama", dict(tie_word_embeddings=True, max_position_embeddings=128,
                                        rope_parameters={**LLAMA3, "rope_theta": 500000.0})),
    "llama-biases": ("llama", dict(attention_bias=True, mlp_bias=True)),
    "qwen2": ("qwen2", dict(tie_word_embeddings=True, rope_parameters={"rope_type": "default",
                                                                       "rope_theta": 1e6})),
    "qwen3": ("qwen3", dict(head_dim=24, tie_word_embeddings=True)),
    "qwen3-scaled": ("qwen3", dict(head_dim=12, num_key_value_heads=1, attention_bias=True,
                                   rope_parameters={"rope_type": "linear", "factor": 2.0})),
}


@pytest.fixture(scope="module")
def hf():
    pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    import hf_helpers
    return torch, hf_helpers


@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_logits_equal_transformers_float32(hf, case):
    torch, helpers = hf
    kind, overrides = HF_CASES[case]
    theirs = helpers.hf_model(kind, **overrides)
    ours = helpers.gpt_from_hf(theirs)
    ids = np.random.default_rng(1).integers(0, helpers.SMALL["vocab_size"], size=(2, 48))
    with torch.no_grad():
        expected = theirs(torch.tensor(ids)).logits.numpy()
    with no_grad():
        got = ours(ids)[0].numpy()
    assert got.dtype == np.float32
    err = relative_error(got, expected)
    assert err < 1e-4, f"{case}: max rel. error {err:.3g}"
    if ours.config.rope_scaling.get("rope_type") != "default":        # the scaling is seen
        unscaled = GPT(dataclasses.replace(ours.config, rope_scaling=None))
        unscaled.load_state_dict(ours.state_dict())
        with no_grad():
            assert relative_error(unscaled.eval()(ids)[0].numpy(), expected) > 1e-2


@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_logits_equal_transformers_float64(hf, case, monkeypatch):
    """Both in float64 throughout, on transformers' own rotary frequencies
    (hf_helpers.float64_throughout): what is left is rounding."""
    torch, helpers = hf
    from microgpt.nn import attention
    kind, overrides = HF_CASES[case]
    theirs = helpers.hf_model(kind, dtype=torch.float64, **overrides)
    inv_freq = helpers.float64_throughout(theirs)
    ours = helpers.gpt_from_hf(theirs, dtype=np.float64)
    config = ours.config
    np.testing.assert_allclose(inv_freq, attention.rope_inv_freq(config.head_size, config.rope_theta,
                                                                 config.rope_scaling), rtol=1e-6)
    monkeypatch.setattr(attention, "rope_inv_freq", lambda *args: inv_freq)
    ids = np.random.default_rng(1).integers(0, helpers.SMALL["vocab_size"], size=(2, 48))
    with torch.no_grad():
        expected = theirs(torch.tensor(ids)).logits.numpy()
    with no_grad():
        got = ours(ids)[0].numpy()
    assert got.dtype == np.float64
    err = relative_error(got, expected)
    assert err < 1e-12, f"{case}: max rel. error {err:.3g}"


@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_greedy_tokens_equal_transformers(hf, case):
    torch, helpers = hf
    kind, overrides = HF_CASES[case]
    theirs = helpers.hf_model(kind, **overrides)
    theirs.generation_config.eos_token_id = None                        # always 32 tokens
    ours = helpers.gpt_from_hf(theirs)
    prompt = [int(i) for i in np.random.default_rng(2).integers(0, helpers.SMALL["vocab_size"], 8)]
    with torch.no_grad():
        out = theirs.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False,
                              pad_token_id=0)
    expected = out[0, len(prompt):].tolist()
    assert len(expected) == 32 and len(set(expected)) >= 5      # not one token over and over
    greedy = SamplingConfig(temperature=0)
    assert Decoder.supports(ours)
    for fast in (True, False):                        # decode.py, and GPT.forward's KV cache
        got = Engine(ours, fast=fast).generate_ids([prompt], 32, greedy, stop_ids=())[0].ids
        assert got == expected, f"{case} fast={fast}"


def test_rope_frequencies_equal_transformers(hf):
    torch, _ = hf
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    for head_dim, theta, scaling in ((16, 1e4, LLAMA3), (8, 5e5, LLAMA3), (64, 5e5, {**LLAMA3, "factor": 32.0}),
                                     (16, 1e4, {"rope_type": "linear", "factor": 4.0})):
        config = LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, head_dim=head_dim,
                             max_position_embeddings=256, rope_parameters={**scaling, "rope_theta": theta})
        theirs = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](config, "cpu")[0].double().numpy()
        # transformers computes the frequencies in float32
        np.testing.assert_allclose(rope_inv_freq(head_dim, theta, scaling), theirs, rtol=1e-6)
