"""GGUF export: the `gguf` package's reader validates every file we write (every type, both
families), and llama.cpp (llama-cpp-python, marked slow: its build takes minutes) runs them:
F32 gives our greedy tokens and logits within 1e-3, Q8_0 / Q4_0 our own quantized model's."""
import numpy as np
import pytest

from microgpt import GPT, GPTConfig
from microgpt.interop.gguf_export import GGUFError, export_gguf, llama_permute, llama_unpermute
from microgpt.quantize.model import quantize_model
from microgpt.tokenizer import Tokenizer

gguf = pytest.importorskip("gguf")

CONFIGS = {
    "gpt2": dict(family="gpt2", vocab_size=288, block_size=64, n_layer=2, n_head=2, n_embd=64),
    "llama": dict(family="llama", vocab_size=288, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                  tie_embeddings=False),
}


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train(["def f(x):\n    return x + 1\n" * 40], 256 + 30)


def _model(family, seed=0):
    np.random.seed(seed)
    return GPT(GPTConfig(**CONFIGS[family])).eval()


@pytest.mark.parametrize("family", sorted(CONFIGS))
@pytest.mark.parametrize("ftype", ["f32", "f16", "q8_0", "q4_0"])
def test_the_gguf_reader_validates_every_file(tmp_path, tokenizer, family, ftype):
    model = _model(family)
    path = export_gguf(model, tokenizer, str(tmp_path / "m.gguf"), ftype)
    reader = gguf.GGUFReader(path)
    fields = {f.name: f for f in reader.fields.values()}
    assert bytes(fields["general.architecture"].parts[-1]).decode() == family
    assert fields["tokenizer.ggml.model"] and fields["tokenizer.ggml.merges"]
    tensors = {t.name: t for t in reader.tensors}
    # per block: gpt2 two LayerNorms and four Linears, each weight + bias; llama two RMSNorms and
    # seven matrices; then the embeddings, the final norm and the head
    expected = 12 * 2 + 5 if family == "gpt2" else 9 * 2 + 3
    assert len(tensors) == expected
    name = "blk.0.ffn_up.weight"
    want = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0"}[ftype]
    assert tensors[name].tensor_type.name == want
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"
    # the values read back: dequantized, they are our matrix (Q types: its quantized form)
    ours = _ffn_up(model, family)
    got = gguf.quants.dequantize(tensors[name].data, tensors[name].tensor_type).reshape(ours.shape)
    tol = {"f32": 0, "f16": 1e-3, "q8_0": 0.01, "q4_0": 0.1}[ftype]
    np.testing.assert_allclose(got, ours, atol=tol * np.abs(ours).max() + 1e-7)


def _ffn_up(model, family):
    if family == "gpt2":
        return model.blocks[0].mlp.c_fc.weight.numpy().T if model.blocks[0].mlp.c_fc.weight_layout == "in_out" \
            else model.blocks[0].mlp.c_fc.weight.numpy()
    return model.blocks[0].mlp.up_proj.weight.numpy()


def test_the_llama_permutation_is_undone_by_its_inverse():
    w = np.arange(8 * 3 * 2, dtype=np.float32).reshape(16, 3)
    np.testing.assert_array_equal(llama_unpermute(llama_permute(w, 2), 2), w)
    assert not np.array_equal(llama_permute(w, 2), w)


def test_unsupported_models_are_refused(tmp_path, tokenizer):
    np.random.seed(0)
    model = GPT(GPTConfig(**{**CONFIGS["llama"], "qk_norm": True})).eval()
    with pytest.raises(GGUFError, match="qk_norm"):
        export_gguf(model, tokenizer, str(tmp_path / "m.gguf"))
    assert not (tmp_path / "m.gguf").exists()
    model = _model("gpt2")
    quantize_model(model, "int4", 64)
    with pytest.raises(GGUFError, match="group 64"):
        export_gguf(model, tokenizer, str(tmp_path / "m.gguf"), "q4_0")
    assert list(tmp_path.iterdir()) == []


# --- llama.cpp runs the files ---------------------------------------------------------------------

def _llama(path, n_ctx=64):
    llama_cpp = pytest.importorskip("llama_cpp")
    return llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_threads=2, logits_all=True, verbose=False)


def _greedy_ours(model, prompt, n):
    from microgpt.inference.decode import Decoder
    dec = Decoder(model)
    logits = [dec.step(np.array([prompt]))[0]]
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits[-1])))
        if len(out) == n:
            break
        logits.append(dec.step(np.array([[out[-1]]]))[0])
    return out, np.array(logits)


def _greedy_llama(llm, prompt, n):
    llm.reset()
    llm.eval(prompt)
    out, logits = [], []
    for _ in range(n):
        row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        logits.append(row)
        out.append(int(np.argmax(row)))
        if len(out) == n:
            break
        llm.eval([out[-1]])
    return out, np.array(logits)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_llama_cpp_runs_our_f32_export_token_for_token(tmp_path, tokenizer, family):
    model = _model(family, seed=3)
    path = export_gguf(model, tokenizer, str(tmp_path / "m.gguf"), "f32")
    prompt = [5, 17, 99, 3, 200, 41]
    ours, our_logits = _greedy_ours(model, prompt, 32)
    theirs, their_logits = _greedy_llama(_llama(path), prompt, 32)
    assert theirs == ours
    np.testing.assert_allclose(their_logits, our_logits, atol=1e-3, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(CONFIGS))
@pytest.mark.parametrize("ftype,scheme", [("q8_0", "int8"), ("q4_0", "int4")])
def test_llama_cpp_on_q8_0_and_q4_0_agrees_with_our_quantized_kernels(tmp_path, tokenizer, family, ftype, scheme):
    model = _model(family, seed=4)
    quantize_model(model, scheme, 32)
    path = export_gguf(model, tokenizer, str(tmp_path / "m.gguf"), ftype)
    llm = _llama(path)
    agree = 0
    prompts = [[int(t) for t in np.random.default_rng(s).integers(0, 280, 8)] for s in range(8)]
    for prompt in prompts:
        ours, _ = _greedy_ours(model, prompt, 16)
        theirs, _ = _greedy_llama(llm, prompt, 16)
        agree += ours == theirs
    # llama.cpp multiplies Q8_0 weights by activations it quantizes to 8 bits itself (we keep
    # them float32), so a near tie may break the other way: "most prompts"
    assert agree >= 6, f"{agree} of {len(prompts)} prompts gave the same 16 greedy tokens"
