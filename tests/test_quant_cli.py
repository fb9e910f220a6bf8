"""`microgpt quantize` end to end on a small saved model; bad input
is one line and exit status 2, with nothing written."""
import copy
import json

import numpy as np
import pytest

from microgpt import GPT, GPTConfig, cli
from microgpt.quantize.model import load_quantized
from microgpt.tokenizer import Tokenizer


@pytest.fixture
def model_dir(tmp_path):
    """A model-only checkpoint directory, the files the quantizer copies."""
    np.random.seed(0)
    config = GPTConfig(family="llama", vocab_size=288, block_size=32, n_layer=1, n_head=2, n_kv_head=2, n_embd=64)
    model = GPT(config)
    from microgpt.quantize.model import write_tensors
    d = tmp_path / "ckpt"
    d.mkdir()
    write_tensors(str(d / "model.safetensors"), model.state_dict())
    (d / "config.json").write_text(json.dumps({"microgpt": config.to_dict()}))
    Tokenizer.train(["def f(x): return x\n" * 30], 256 + 20).save(str(d / "tokenizer.bpe"))
    return d, model


def test_quantize_writes_a_loadable_directory(model_dir, tmp_path, capsys, monkeypatch):
    d, model = model_dir
    from microgpt.train import checkpoint
    monkeypatch.setattr(checkpoint, "load_model", lambda path, device="cpu": (model, None, {}))
    assert cli.main(["quantize", str(d), "--scheme", "int4", "--group", "32", "--out", str(tmp_path / "q")]) == 0
    assert "7." in capsys.readouterr().out                     # "... x smaller"
    loaded, tok, _ = load_quantized(str(tmp_path / "q"))
    assert loaded.quantization["scheme"] == "int4" and tok.vocab_size > 256


def test_bad_requests_exit_2_and_write_nothing(model_dir, tmp_path, capsys, monkeypatch):
    d, model = model_dir
    from microgpt.train import checkpoint
    monkeypatch.setattr(checkpoint, "load_model", lambda path, device="cpu": (model, None, {}))
    assert cli.main(["quantize", str(d), "--scheme", "int8", "--group", "48", "--out", str(tmp_path / "q")]) == 2
    assert "does not divide" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("scheme,flag,head", [("int4", [], "int8"), ("int4", ["--head", "fp32"], False),
                                              ("int4", ["--head"], "int4"), ("int4", ["--head", "int8"], "int8"),
                                              ("int8", [], "int8"), ("int8", ["--head", "fp32"], False)])
def test_quantize_head_choice(model_dir, tmp_path, capsys, monkeypatch, scheme, flag, head):
    d, model = model_dir
    from microgpt.train import checkpoint
    monkeypatch.setattr(checkpoint, "load_model", lambda path, device="cpu": (copy.deepcopy(model), None, {}))
    out = tmp_path / "q"
    assert cli.main(["quantize", str(d), "--scheme", scheme, "--out", str(out)] + flag) == 0
    assert f"LM head {head or 'fp32'}" in capsys.readouterr().out
    loaded, _, _ = load_quantized(str(out))
    assert loaded.quantization["head"] == head
