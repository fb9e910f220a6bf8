"""QLoRA (finetune/qlora.py): LoRA over a base held as the compression issue's QuantizedWeight.

The oracle is plain LoRA over the dequantized base W~ = d q (formats.dequantize): the QLoRA
model's logits must equal it (float32), and the adapters' gradients must equal PyTorch
autograd's through PEFT over a Hugging Face export of that W~ base. Then an SFT run over an
int8 and an int4 base trains, resumes bit for bit, and a group that does not fit is refused.
"""
import copy

import numpy as np
import pytest

from microgpt.finetune import lora, qlora
from microgpt.finetune.sft import SFTOptions, finetune
from microgpt.quantize import formats
from microgpt.quantize.layers import QuantizedLinear
from test_finetune_lora import V, peft_model, relative, with_adapter
from test_finetune_sft import assert_resumes_bit_exact, chat_file, losses_of, sft_config

CASES = [("llama", "q,v", "int8", None), ("llama", "q,k,v,o,up,down,gate", "int4", 32),
         ("gpt2", "q,o", "int4", 32), ("gpt2", "q,o,up,down", "int8", 32)]


def dequantized_twin(model, scheme, group):
    """A float LoRA model whose block weights are the W~ that quantize_model will hold."""
    twin = copy.deepcopy(model)
    for name, module in twin.named_modules():
        w = getattr(module, "weight", None)
        if not name or w is None or not (".h." in f".{name}" or ".layers." in f".{name}") \
                or lora.is_adapter_name(f"{name}weight") or len(w.shape) != 2:
            continue
        layout = getattr(module, "weight_layout", "out_in")
        host = qlora.out_in(module)
        g = formats.check_group(scheme, group, host.shape[1])
        deq = formats.dequantize(*formats.quantize(host, scheme, g), scheme, g)
        w.data = w.backend.asarray(deq.T.copy() if layout == "in_out" else deq, np.float32)
    return twin


@pytest.mark.parametrize("family, targets, scheme, group", CASES)
def test_qlora_logits_equal_lora_over_the_dequantized_base(family, targets, scheme, group):
    model = with_adapter(family, targets)
    twin = dequantized_twin(model, scheme, group)
    before, after = qlora.quantize_model(model, scheme, group)
    assert after < (0.3 if scheme == "int8" else 0.16) * before
    assert all(m.quantized is not None for _, m in lora.lora_layers(model))
    # nothing float left in the blocks but norms, biases and the adapters (the non-targets
    # are QuantizedLinear)
    for name, p in model.named_parameters():
        if len(p.shape) == 2 and (".h." in name or ".layers." in name):
            assert lora.is_adapter_name(name), name
    ids = np.random.default_rng(1).integers(0, V, (2, 12))
    assert relative(model(ids)[0].numpy(), twin(ids)[0].numpy()) < 1e-5


@pytest.mark.parametrize("family, targets, scheme, group", CASES[:3])
def test_qlora_adapter_gradients_equal_torch_over_the_dequantized_base(
        tmp_path, family, targets, scheme, group, one_torch_thread):
    import torch
    model = with_adapter(family, targets)
    theirs = peft_model(dequantized_twin(model, scheme, group), tmp_path)
    qlora.quantize_model(model, scheme, group)
    ids = np.random.default_rng(1).integers(0, V, (2, 12))
    targets_ids = np.random.default_rng(2).integers(0, V, (2, 12))
    logits, loss = model(ids, targets_ids)
    loss.backward()
    out = theirs(input_ids=torch.tensor(ids))
    torch.nn.functional.cross_entropy(out.logits.reshape(-1, V),
                                      torch.tensor(targets_ids).reshape(-1)).backward()
    assert relative(logits.numpy(), out.logits.detach().numpy()) < 1e-4
    grads = {n.replace("base_model.model.", "").replace(".default", ""): p.grad.numpy()
             for n, p in theirs.named_parameters() if p.requires_grad}
    ours = dict(lora.trainable_parameters(model))
    assert set(grads) == set(ours) and ours
    for name, p in ours.items():
        assert relative(p.backend.to_numpy(p.grad), grads[name]) < 1e-4, name
    for name, p in model.named_parameters():              # the frozen rest has no gradient
        assert p.grad is None or lora.is_adapter_name(name), name


@pytest.fixture(scope="module")
def base32(tmp_path_factory):
    """A tiny trained llama of 32 channels: int4's groups of 32 fit every layer."""
    from model_dirs import our_run
    return our_run(tmp_path_factory.mktemp("base32") / "b", family="llama", max_steps=2,
                   block_size=64, n_embd=32)


@pytest.mark.parametrize("scheme, group", [("int8", 0), ("int4", 32)])
def test_qlora_run_trains_and_resumes_bit_exact(tmp_path, base32, scheme, group):
    options = SFTOptions(lora_rank=4, lora_targets="q,v,down", qlora=scheme, qlora_group=group)
    straight = assert_resumes_bit_exact(tmp_path, base32, options, data=chat_file(tmp_path))
    assert np.isfinite(straight["val_loss"])
    losses = [loss for _, loss in losses_of(tmp_path / "straight")]
    assert losses[-1] < losses[0]                             # the adapters learn
    # the checkpoint's float base is the W~ the adapters trained over
    from microgpt.quantize.model import read_tensors
    from microgpt.train.checkpoint import load_model
    codes = read_tensors(f"{straight['checkpoint']}/{qlora.CODES_FILE}")
    saved, _, _ = load_model(straight["checkpoint"])
    w = saved.state_dict()["model.layers.0.mlp.gate_proj.weight"]
    g = group or w.shape[1]
    deq = formats.dequantize(codes["model.layers.0.mlp.gate_proj.weight.q"],
                             codes["model.layers.0.mlp.gate_proj.weight.scale"].astype(np.float32),
                             scheme, g)
    assert np.array_equal(w, deq)


def test_old_qlora_flag_means_int8_and_keeps_its_hash():
    assert SFTOptions(lora_rank=2, qlora=True).qlora == "int8"
    assert SFTOptions(lora_rank=2, qlora=False).qlora == ""
    # the hash of the options as runs from before int4 stored them (qlora a bool)
    import hashlib
    import json
    old = {f: getattr(SFTOptions(lora_rank=2), f) for f in SFTOptions.__dataclass_fields__}
    old.pop("qlora_group")
    old["qlora"] = True
    digest = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    assert SFTOptions(lora_rank=2, qlora=True).hash == digest


def test_a_group_that_does_not_fit_is_refused_before_anything_is_written(tmp_path, base32):
    with pytest.raises(formats.QuantizeError, match=r"q_proj: group 48 does not divide its 32"):
        finetune(sft_config(tmp_path, base32, "bad", data=chat_file(tmp_path)),
                 SFTOptions(lora_rank=2, qlora="int4", qlora_group=48), log=lambda *a: None)
    assert not (tmp_path / "bad").exists()
    model = with_adapter("llama", "q,v")
    with pytest.raises(formats.QuantizeError, match="multiples of 32"):
        qlora.quantize_model(model, "int4", 16)
    assert not any(type(m) is QuantizedLinear for _, m in model.named_modules())   # all or nothing
    assert all(m.quantized is None for _, m in lora.lora_layers(model))


@pytest.mark.parametrize("argv, match", [
    (["--qlora", "int4", "--qlora-group", "48"], "group 48 does not divide"),
    (["--qlora", "int3"], "invalid choice"),
    (["--qlora-group", "32"], "give --qlora too")])
def test_cli_refuses_bad_qlora_flags_in_one_line(tmp_path, base32, capsys, argv, match):
    from microgpt.cli import main
    try:
        code = main(["finetune", "sft", "--init-from", base32, "--data", chat_file(tmp_path),
                     "--lora-rank", "2", "--out-dir", str(tmp_path / "run"), "--block-size", "64",
                     "--max-steps", "1", "--progress", "false", *argv])
    except SystemExit as stop:                                   # argparse's own refusal
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and match in err
    assert not (tmp_path / "run").exists()
