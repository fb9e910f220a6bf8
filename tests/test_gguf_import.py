"""GGUF import: our exports read back (GPT-2 and Llama, F32 / F16 / Q8_0 / Q4_0) give the same
logits as the model written (the float types) or the same quantized bytes and scales as our own
quantized model (Q8_0 / Q4_0, kept quantized), the tokenizer encodes as the one written, and
what import cannot read is an error naming it. The oracle is the model that was exported."""
import numpy as np
import pytest

from microgpt import GPT, GPTConfig
from microgpt.interop.gguf_export import GGUFError, export_gguf
from microgpt.quantize.layers import QuantizedLinear
from microgpt.quantize.model import quantize_model
from microgpt.tensor import no_grad
from microgpt.tokenizer import Tokenizer

gguf = pytest.importorskip("gguf")
from microgpt.interop.gguf_import import describe_gguf, import_gguf  # noqa: E402

CONFIGS = {
    "gpt2": dict(family="gpt2", vocab_size=300, block_size=48, n_layer=2, n_head=2, n_embd=64),
    "llama": dict(family="llama", vocab_size=300, block_size=48, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                  mlp_hidden=160, tie_embeddings=False, rope_theta=5e5),
}
TEXT = "def f(x):\n    return x + 1\n# a comment, café\n"


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train([TEXT * 30], 256 + 30)


def _model(family, seed=0):
    return GPT(GPTConfig(**CONFIGS[family]), seed=seed).eval()


def _logits(model, ids):
    with no_grad():
        return model(np.array([ids]))[0].numpy()[0]           # (T, V)


IDS = [5, 17, 99, 3, 200, 41, 280, 0, 7]


@pytest.mark.parametrize("family", sorted(CONFIGS))
@pytest.mark.parametrize("ftype,atol", [("f32", 1e-5), ("f16", None)])
def test_a_float_export_imports_to_the_same_logits(tmp_path, tokenizer, family, ftype, atol):
    model = _model(family)
    path = export_gguf(model, tokenizer, str(tmp_path / "m.gguf"), ftype)
    back, tok, info = import_gguf(path)
    assert back.config.family == family and info["quantized"] == []
    for field in ("vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd", "mlp_hidden",
                  "tie_embeddings", "bias", "norm_eps", "rope_theta"):
        assert getattr(back.config, field) == getattr(model.config, field), field
    want, got = _logits(model, IDS), _logits(back, IDS)
    if ftype == "f32":
        np.testing.assert_allclose(got, want, atol=atol, rtol=0)
    else:           # the weights rounded to fp16: the model written, its matrices rounded, is the oracle
        rounded = _model(family)
        for name, p in rounded.named_parameters():
            if p.data.ndim == 2 and "wte" not in name and "wpe" not in name and "embed" not in name \
                    and name != "lm_head.weight":
                p.data = p.data.astype(np.float16).astype(np.float32)
        np.testing.assert_allclose(got, _logits(rounded, IDS), atol=1e-5, rtol=0)
        assert np.abs(got - want).max() < 0.05


@pytest.mark.parametrize("family", sorted(CONFIGS))
@pytest.mark.parametrize("ftype,scheme", [("q8_0", "int8"), ("q4_0", "int4")])
def test_a_q8_0_or_q4_0_export_imports_the_same_quantized_bytes(tmp_path, tokenizer, family, ftype, scheme):
    model = _model(family, seed=1)
    quantize_model(model, scheme, 32)
    path = export_gguf(model, tokenizer, str(tmp_path / "m.gguf"), ftype)
    back, _, info = import_gguf(path)
    ours = {n: m for n, m in model.named_modules() if type(m) is QuantizedLinear}
    theirs = {n: m for n, m in back.named_modules() if type(m) is QuantizedLinear}
    assert sorted(ours) == sorted(theirs) and len(ours) == len(info["quantized"]) > 0
    for name, q in ours.items():
        t = theirs[name].qweight
        assert (t.bits, t.group) == (q.qweight.bits, 32)
        assert t.w_q.dtype == q.qweight.w_q.dtype
        np.testing.assert_array_equal(t.w_q, q.qweight.w_q, err_msg=name)        # bit for bit
        np.testing.assert_array_equal(t.w_scale, q.qweight.w_scale, err_msg=name)
    np.testing.assert_allclose(_logits(back, IDS), _logits(model, IDS), atol=1e-5, rtol=0)
    # and decoding runs on the imported quantized model through the quantized kernels: the same
    # bits as decoding the model that was exported (an int4 model's int8 head too, kept as Q8_0)
    from microgpt.inference.decode import Decoder
    if scheme == "int4":
        assert "lm_head." in theirs and back.quantization["head"] == "int8"
    np.testing.assert_array_equal(Decoder(back).step(np.array([IDS]))[0], Decoder(model).step(np.array([IDS]))[0])


@pytest.mark.parametrize("ftype", ["q8_0", "q4_0"])
def test_dequantize_true_gives_float_weights_of_the_same_values(tmp_path, tokenizer, ftype):
    model = _model("llama", seed=2)
    path = export_gguf(model, tokenizer, str(tmp_path / "m.gguf"), ftype)
    kept, _, _ = import_gguf(path)
    floats, _, info = import_gguf(path, dequantize=True)
    assert info["quantized"] == [] and not any(type(m) is QuantizedLinear for _, m in floats.named_modules())
    np.testing.assert_allclose(_logits(floats, IDS), _logits(kept, IDS), atol=1e-5, rtol=0)
    # the file's types say what it holds
    assert info["types"]["blk.0.ffn_up.weight"] == ftype.upper()
    assert info["types"]["token_embd.weight"] == "F32"


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_the_tokenizer_imports_and_encodes_as_the_one_written(tmp_path, tokenizer, family):
    model = _model(family)
    path = export_gguf(model, tokenizer, str(tmp_path / "m.gguf"), "f32")
    _, tok, _ = import_gguf(path)
    for text in (TEXT, "x + 1 café <|endoftext|> return", "   \n\n\tdef"):
        assert tok.encode(text, allowed_special="all") == tokenizer.encode(text, allowed_special="all")
    assert tok.eot_id == tokenizer.eot_id
    assert tok.decode(tokenizer.encode(TEXT)) == TEXT
    assert import_gguf(path, tokenizer=False)[1] is None


def _rewrite(src, dst, arch=None, retype=None):
    """A copy of the GGUF file src with its architecture renamed or one tensor's type changed."""
    reader = gguf.GGUFReader(src)
    arch_in = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    writer = gguf.GGUFWriter(dst, arch or arch_in)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        kind = field.types[0]
        name = field.name.replace(arch_in + ".", (arch or arch_in) + ".", 1)
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_array(name, field.contents())
        else:
            writer.add_key_value(name, field.contents(), kind)
    for t in reader.tensors:
        data = np.array(t.data)
        if retype and t.name == retype[0]:
            writer.add_tensor(t.name, data.astype(np.float32).astype(np.int32) if retype[1] == "I32" else data)
        elif t.tensor_type.name in ("F32", "F16"):
            writer.add_tensor(t.name, data)
        else:
            writer.add_tensor(t.name, data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def test_an_unsupported_architecture_is_refused_naming_it(tmp_path, tokenizer):
    path = export_gguf(_model("gpt2"), tokenizer, str(tmp_path / "m.gguf"), "f32")
    other = _rewrite(path, str(tmp_path / "falcon.gguf"), arch="falcon")
    with pytest.raises(GGUFError, match="architecture 'falcon' is not supported"):
        import_gguf(other)


def test_an_unsupported_tensor_type_is_refused_naming_the_tensor_and_type(tmp_path, tokenizer):
    path = export_gguf(_model("gpt2"), tokenizer, str(tmp_path / "m.gguf"), "f32")
    other = _rewrite(path, str(tmp_path / "i32.gguf"), retype=("blk.1.ffn_up.weight", "I32"))
    with pytest.raises(GGUFError, match="blk.1.ffn_up.weight is of type I32"):
        import_gguf(other)


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(GGUFError, match="not a readable GGUF file"):
        import_gguf(str(bad))


def test_describe_names_the_types(tmp_path, tokenizer):
    model = _model("llama")
    path = export_gguf(model, tokenizer, str(tmp_path / "m.gguf"), "q4_0")
    d = describe_gguf(path)
    assert d["architecture"] == "llama" and d["tokenizer"] == "gpt2" and d["vocab"] == 300
    assert d["tensor_types"]["Q4_0"] == 2 * 7 and d["keys"]["llama.block_count"] == 2


# --- microgpt inspect shows the quantization -------------------------------------------------------

def _source_run(path, model, tokenizer):
    """A checkpoint directory's config.json and tokenizer.bpe: what save_quantized copies."""
    import json

    from microgpt.train.checkpoint import hf_config
    path.mkdir()
    (path / "config.json").write_text(json.dumps(hf_config(model.config.to_dict(), tokenizer.eot_id)))
    tokenizer.save(str(path / "tokenizer.bpe"))
    return str(path)


def _cli(*argv):
    from microgpt.cli import main
    return main(list(argv))


def test_inspect_shows_the_quantization_of_a_quantized_run_and_finds_no_problem(tmp_path, tokenizer, capsys):
    from microgpt.interop.inspector import inspect_checkpoint
    from microgpt.quantize.model import save_quantized
    model = _model("gpt2")
    run = _source_run(tmp_path / "run", model, tokenizer)
    quantize_model(model, "int4", 64)
    save_quantized(model, str(tmp_path / "q4"), run)
    report = inspect_checkpoint(str(tmp_path / "q4"))
    assert report.ok, report.format()
    assert report.quantization["scheme"] == "int4" and len(report.quantization["layers"]) == 9
    text = report.format()       # an int4 model's LM head is int8 group 32 by default (quantize/model.py)
    assert "quantization: int4, 9 Linear layers (8 int4 group 64, 1 int8 group 32), LM head int8" in text
    rows = {r.name: r for r in report.rows}
    assert rows["transformer.h.0.mlp.c_fc.weight.q"].status == "quantized"
    assert rows["transformer.h.0.mlp.c_fc.weight.q"].ours == "transformer.h.0.mlp.c_fc.weight"
    assert _cli("inspect", str(tmp_path / "q4")) == 0
    assert "int4 group 64" in capsys.readouterr().out


def test_inspect_names_a_quantized_tensor_of_the_wrong_shape(tmp_path, tokenizer):
    from microgpt.interop.inspector import inspect_checkpoint
    from microgpt.quantize.model import read_tensors, save_quantized, write_tensors
    model = _model("gpt2")
    run = _source_run(tmp_path / "run", model, tokenizer)
    quantize_model(model, "int8")
    out = tmp_path / "q8"
    save_quantized(model, str(out), run)
    tensors = read_tensors(str(out / "model.safetensors"))
    name = "transformer.h.1.attn.c_proj.weight.scale"
    tensors[name] = tensors[name][:, :0].copy()
    write_tensors(str(out / "model.safetensors"), tensors)
    report = inspect_checkpoint(str(out))
    assert not report.ok
    assert any(p.check == "shape" and name in p.message for p in report.problems)


def test_inspect_shows_a_gguf_file_and_its_types(tmp_path, tokenizer, capsys):
    path = export_gguf(_model("gpt2"), tokenizer, str(tmp_path / "m.gguf"), "q8_0")
    assert _cli("inspect", path) == 0
    out = capsys.readouterr().out
    assert "GGUF file, architecture gpt2" in out and "quantization: 21 F32, 8 Q8_0 tensors" in out
    assert "layer_norm_epsilon=1e-05" in out
    assert "blk.0.attn_qkv.weight" in out and "Q8_0" in out
    falcon = _rewrite(path, str(tmp_path / "falcon.gguf"), arch="falcon")
    assert _cli("inspect", falcon) == 2
    assert "architecture 'falcon' is not supported" in capsys.readouterr().out
