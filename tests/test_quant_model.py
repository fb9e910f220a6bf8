"""A quantized model is a model: GPT.forward, the decoding engine and training of what is left
run on it; quantized checkpoints load back bit for bit; bad requests are refused whole."""
import numpy as np
import pytest

from microgpt import GPT, GPTConfig
from microgpt.inference.decode import Decoder
from microgpt.nn.module import Parameter
from microgpt.quantize import formats
from microgpt.quantize.layers import QuantizedLinear
from microgpt.quantize.model import load_quantized, quantize_model, save_quantized, weight_bytes

CONFIGS = {
    "gpt2": GPTConfig(family="gpt2", vocab_size=96, block_size=32, n_layer=2, n_head=2, n_embd=64),
    "llama": GPTConfig(family="llama", vocab_size=96, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                       tie_embeddings=False),
}


def _model(family, seed=0):
    np.random.seed(seed)
    return GPT(CONFIGS[family]).eval()


@pytest.mark.parametrize("family", sorted(CONFIGS))
@pytest.mark.parametrize("scheme,group,head", [("int8", None, False), ("int8", 32, True), ("int4", 32, False),
                                                ("int4", 64, True)])
def test_quantized_forward_is_the_dequantized_models_forward(family, scheme, group, head):
    model = _model(family)
    ids = np.random.default_rng(1).integers(0, 96, (2, 11))
    quantize_model(model, scheme, group, head)
    assert any(type(m) is QuantizedLinear for _, m in model.named_modules())
    # the oracle: a float model holding exactly the dequantized weights
    oracle = _model(family)
    for prefix, module in model.named_modules():
        if type(module) is QuantizedLinear:
            target = oracle
            for part in prefix.rstrip(".").split("."):
                target = getattr(target, part)
            w = module.qweight.dequantize()
            # a new Parameter: the LM head of a tied model must not change the embedding too
            target.weight = Parameter((w.T if target.weight_layout == "in_out" else w).copy())
    got = model(ids)[0].numpy()
    np.testing.assert_allclose(got, oracle(ids)[0].numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", sorted(CONFIGS))
@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("kernels", ["float", "production"])
def test_decoding_uses_the_quantized_kernels_and_matches_forward(family, scheme, kernels, monkeypatch):
    """float: the quantized kernels replaced by their float definition (reference.py), so decoding
    must equal the full forward pass to float rounding. production: on the C backend the decoder
    rounds the activations to int8 per 32-block (quant.c's integer-dot entry, up to 8 rows), which
    moves a logit by ~2^-8 of the activations' scale: within 1e-2 here, same argmax."""
    model = _model(family)
    quantize_model(model, scheme, 32, head=True)
    assert Decoder.supports(model)
    if kernels == "float":
        from microgpt import backends
        from microgpt.backends import reference as ref
        be = backends.get()
        for name in ("linear_q8_forward", "linear_q4_forward"):
            monkeypatch.setattr(be, name, getattr(ref, name))
    ids = np.random.default_rng(2).integers(0, 96, (1, 9))
    decoder = Decoder(model)
    first = decoder.step(ids[:, :5])
    rest = [decoder.step(ids[:, t:t + 1]) for t in range(5, 9)]
    full = model(ids)[0].numpy()
    tol = 1e-4 if kernels == "float" else 1e-2
    np.testing.assert_allclose(first, full[:, 4], rtol=tol, atol=tol)
    for t, logits in zip(range(5, 9), rest):
        np.testing.assert_allclose(logits, full[:, t], rtol=tol, atol=tol)
        assert logits.argmax() == full[:, t].argmax()


def test_gradients_flow_through_quantized_layers_to_the_float_parameters():
    model = _model("llama").train()
    quantize_model(model, "int4", 32)
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.endswith("proj.weight") for n in names)        # the integers are not parameters
    ids = np.random.default_rng(3).integers(0, 96, (2, 8))
    _, loss = model(ids, targets=ids)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and np.isfinite(g).all() for g in grads.values())
    assert np.abs(grads["model.layers.0.input_layernorm.weight"]).sum() > 0


def test_memory_is_4x_and_7x_smaller():
    model = _model("gpt2")
    quantize_model(model, "int8")
    held, full = weight_bytes(model)
    assert full / held > 3.9
    model = _model("gpt2")
    quantize_model(model, "int4", 32)
    held, full = weight_bytes(model)
    assert full / held > 7.0


@pytest.mark.parametrize("scheme,group", [("int8", None), ("int4", 64)])
def test_a_saved_quantized_checkpoint_loads_back_bit_for_bit(tmp_path, scheme, group):
    model = _model("gpt2")
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text('{"microgpt": %s}' % __import__("json").dumps(model.config.to_dict()))
    quantize_model(model, scheme, group, head=True)
    _write_tokenizer(src / "tokenizer.bpe")
    save_quantized(model, str(tmp_path / "q"), str(src))
    loaded, _, _ = load_quantized(str(tmp_path / "q"))
    for (name, a), (_, b) in zip(sorted(_quantized(model).items()), sorted(_quantized(loaded).items())):
        assert a.w_q.tobytes() == b.w_q.tobytes() and a.w_scale.tobytes() == b.w_scale.tobytes(), name
    ids = np.arange(10).reshape(1, 10)
    np.testing.assert_array_equal(model(ids)[0].numpy(), loaded(ids)[0].numpy())
    assert loaded.quantization["scheme"] == scheme


def _write_tokenizer(path):
    from microgpt.tokenizer import Tokenizer
    Tokenizer.train(["abc abd " * 50], 256 + 4).save(str(path))


def _quantized(model):
    return {p: m.qweight for p, m in model.named_modules() if type(m) is QuantizedLinear}


def test_bad_requests_are_refused_and_leave_the_model_alone():
    model = _model("gpt2")
    before = {n: p.numpy().copy() for n, p in model.named_parameters()}
    with pytest.raises(formats.QuantizeError, match="does not divide"):
        quantize_model(model, "int8", 48)
    with pytest.raises(formats.QuantizeError, match="multiples of 32"):
        quantize_model(model, "int4", 16)
    assert {n: p.numpy() for n, p in model.named_parameters()}.keys() == before.keys()
    quantize_model(model, "int8")
    with pytest.raises(formats.QuantizeError, match="already quantized"):
        quantize_model(model, "int4", 32)


@pytest.mark.parametrize("scheme,head,want", [
    ("int4", "default", (8, 32)), ("int8", "default", (8, 32)), ("int8", "fp32", None), ("int4", "fp32", None),
    ("int4", False, None),
    ("int4", "int8", (8, 32)), ("int8", "int8", (8, 32)), ("int4", "same", (4, 64)), ("int4", True, (4, 64))])
def test_the_lm_head_by_choice_int8_by_default(scheme, head, want):
    model = _model("gpt2")                       # tied: the head is quantized as a copy
    table = model.transformer.wte.weight.numpy().copy()
    config = quantize_model(model, scheme, 64, head=head)
    got = None if type(model.lm_head) is not QuantizedLinear else (model.lm_head.qweight.bits,
                                                                   model.lm_head.qweight.group)
    assert got == want
    assert config["head"] == (False if want is None else ("int8" if want[0] == 8 else "int4"))
    assert ("lm_head" in config["layers"]) == (want is not None)
    np.testing.assert_array_equal(model.transformer.wte.weight.numpy(), table)   # the embedding untouched
    if want is not None:        # quantized from the embedding's values: int8's (int4's) bound per group
        bits, group = want
        w = table.reshape(table.shape[0], -1, group)
        m = np.abs(w).max(axis=2, keepdims=True)
        # int8: half a step of d = m / 127 (+ the fp16 rounding of d: 127 * 2^-11 steps); int4
        # (Q4_0: d = m / 8, the far side clipped at 7): one step
        bound = m / 127 * 0.57 if bits == 8 else m / 8 * 1.01
        err = np.abs(model.lm_head.qweight.dequantize().reshape(w.shape) - w)
        assert (err <= bound + 1e-7).all()


def test_an_unknown_head_choice_is_refused_and_changes_nothing():
    model = _model("gpt2")
    with pytest.raises(formats.QuantizeError, match="LM head"):
        quantize_model(model, "int4", 32, head="int2")
    assert not any(type(m) is QuantizedLinear for _, m in model.named_modules())


def test_an_int4_export_writes_the_int8_head_as_q8_0_and_a_float_head_as_f32(tmp_path):
    gguf = pytest.importorskip("gguf")
    from microgpt.interop.gguf_export import export_gguf
    from microgpt.tokenizer import Tokenizer
    tok = Tokenizer.train(["def f(x):\n    return x + 1\n" * 40], 256 + 20)
    types = {}
    for head in ("default", "fp32"):
        model = _model("gpt2")
        quantize_model(model, "int4", 32, head=head)
        path = export_gguf(model, tok, str(tmp_path / f"{head}.gguf"), "q4_0")
        reader = gguf.GGUFReader(path)
        types[head] = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["default"]["output.weight"] == "Q8_0" and types["default"]["blk.0.ffn_up.weight"] == "Q4_0"
    assert types["fp32"]["output.weight"] == "F32"
