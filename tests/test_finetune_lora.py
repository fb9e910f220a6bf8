"""LoRA (finetune/lora.py, peft_io.py, qlora.py) against PEFT + PyTorch autograd.

The oracle: our base exported to a Hugging Face directory (interop.export_hf), our adapter
saved in PEFT's format and loaded by `peft.PeftModel.from_pretrained`; PEFT's logits must
equal ours (float32, rel. < 1e-4) with the adapter merged and unmerged, and the gradient of
every adapter matrix must equal torch autograd's through PEFT on the same inputs and loss.
"""
import numpy as np
import pytest

from microgpt import GPT, GPTConfig
from microgpt.errors import CheckpointError, ConfigError
from microgpt.finetune import lora, peft_io, qlora
from microgpt.tokenizer import Tokenizer

V = 300


def tiny(family, seed=0):
    extra = dict(n_kv_head=2) if family == "llama" else {}
    return GPT(GPTConfig(family=family, vocab_size=V, block_size=32, n_layer=2, n_head=4,
                         n_embd=32, **extra), seed=seed)


def tokenizer():
    return Tokenizer.bytes_level()          # 259 ids in a model of 300 rows (padded, as Qwen's)


def with_adapter(family, targets, seed=0):
    model = tiny(family)
    lora.apply_lora(model, lora.target_modules(model.config, targets), rank=4, alpha=8.0, seed=seed)
    rng = np.random.default_rng(seed + 7)
    for _, p in lora.trainable_parameters(model):                # B != 0, else nothing to check
        p.data = rng.normal(0, 0.2, p.shape).astype(np.float32)
    return model


def relative(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def peft_model(model, tmp_path):
    import peft
    import torch
    import transformers

    from microgpt.interop import export_hf
    base = tiny(model.config.family)
    base.load_state_dict(lora.base_state(model))
    export_hf(base, tokenizer(), tmp_path / "base")
    peft_io.save_adapter(model, tmp_path / "adapter")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    return peft.PeftModel.from_pretrained(hf, tmp_path / "adapter", is_trainable=True)


@pytest.mark.parametrize("family, targets", [("llama", "q,k,v,o,up,down,gate"), ("llama", "q,v"),
                                             ("gpt2", "q,o,up,down")])
def test_logits_and_adapter_gradients_equal_peft(tmp_path, family, targets, one_torch_thread):
    import torch
    model = with_adapter(family, targets)
    theirs = peft_model(model, tmp_path)
    ids = np.random.default_rng(1).integers(0, V, (2, 12))
    targets_ids = np.random.default_rng(2).integers(0, V, (2, 12))
    logits, loss = model(ids, targets_ids)
    loss.backward()
    out = theirs(input_ids=torch.tensor(ids), labels=None)
    their_loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, V),
                                                   torch.tensor(targets_ids).reshape(-1))
    their_loss.backward()
    assert relative(logits.numpy(), out.logits.detach().numpy()) < 1e-4
    grads = {n.replace("base_model.model.", "").replace(".default", ""): p.grad.numpy()
             for n, p in theirs.named_parameters() if p.requires_grad}
    ours = dict(lora.trainable_parameters(model))
    assert set(grads) == set(ours)
    for name, p in ours.items():
        assert relative(p.backend.to_numpy(p.grad), grads[name]) < 1e-4, name
    # merged: PEFT's merge_and_unload against ours
    lora.merge(model)
    merged_logits, _ = model(ids)
    theirs.merge_adapter()
    with torch.no_grad():
        merged_theirs = theirs(input_ids=torch.tensor(ids)).logits.numpy()
    assert relative(merged_logits.numpy(), merged_theirs) < 1e-4
    assert relative(merged_logits.numpy(), logits.numpy()) < 1e-4
    lora.unmerge(model)
    again, _ = model(ids)
    assert relative(again.numpy(), logits.numpy()) < 1e-5


def test_peft_saved_adapter_loads_into_ours(tmp_path, one_torch_thread):
    import torch
    model = with_adapter("llama", "q,v,down")
    theirs = peft_model(model, tmp_path)
    with torch.no_grad():                       # change PEFT's adapter, save it with PEFT
        for p in theirs.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    theirs.save_pretrained(tmp_path / "from_peft")
    ids = np.random.default_rng(3).integers(0, V, (1, 10))
    with torch.no_grad():
        expected = theirs(input_ids=torch.tensor(ids)).logits.numpy()
    ours = tiny("llama")
    ours.load_state_dict(lora.base_state(model))
    peft_io.load_adapter(ours, tmp_path / "from_peft")
    assert relative(ours(ids)[0].numpy(), expected) < 1e-4


def test_base_is_frozen_no_grads_no_optimizer_state():
    from microgpt.train.optim import AdamW
    model = with_adapter("llama", "q,v")
    ids = np.arange(10)[None] % V
    _, loss = model(ids, ids)
    loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == lora.is_adapter_name(name), name
    optimizer = AdamW(lora.trainable_parameters(model), 0.0, (0.9, 0.95), 1e-8)
    assert all(lora.is_adapter_name(k.split(".", 1)[1]) for k in optimizer.state_tensors())
    base = lora.base_state(model)
    optimizer.step(1e-2)
    for name, array in lora.base_state(model).items():
        assert np.array_equal(array, base[name]), name


def test_fresh_adapter_is_the_base_model():
    model, base = tiny("llama"), tiny("llama")
    lora.apply_lora(model, lora.target_modules(model.config, "q,k,v,o"), rank=8, alpha=16)
    ids = np.arange(16)[None] % V
    assert np.array_equal(model(ids)[0].numpy(), base(ids)[0].numpy())


def test_dropout_only_in_training():
    model = tiny("llama")
    lora.apply_lora(model, lora.target_modules(model.config, "q"), rank=4, alpha=8, dropout=0.5)
    for _, p in lora.trainable_parameters(model):
        p.data = np.full(p.shape, 0.3, np.float32)
    ids = np.arange(8)[None]
    model.eval()
    a, b = model(ids)[0].numpy(), model(ids)[0].numpy()
    assert np.array_equal(a, b)
    model.train()
    assert not np.array_equal(model(ids)[0].numpy(), a)


def test_bad_targets():
    model = tiny("gpt2")
    with pytest.raises(ConfigError, match="'gate' matches no layer"):
        lora.target_modules(model.config, "q,gate")
    with pytest.raises(ConfigError, match="must be some of"):
        lora.target_modules(model.config, "q,attn")
    with pytest.raises(ConfigError, match="match no Linear"):
        lora.apply_lora(model, ["self_attn.q_proj"])


def test_adapter_for_another_base_names_the_tensor(tmp_path):
    model = with_adapter("llama", "q,v")
    peft_io.save_adapter(model, tmp_path)
    wider = GPT(GPTConfig(family="llama", vocab_size=V, block_size=32, n_layer=2, n_head=4,
                          n_kv_head=2, n_embd=64))
    before = wider.state_dict()
    with pytest.raises(CheckpointError, match=r"model.layers.0.self_attn.q_proj.lora_A.weight.*shape"):
        peft_io.load_adapter(wider, tmp_path)
    assert not lora.lora_layers(wider)                        # nothing changed half-way
    assert all(np.array_equal(v, before[k]) for k, v in wider.state_dict().items())
    gpt2 = tiny("gpt2")
    with pytest.raises(CheckpointError, match="names no Linear layer"):
        peft_io.load_adapter(gpt2, tmp_path)


def test_int8_base_close_to_float_and_adapters_train():
    model = with_adapter("llama", "q,v")
    ids = np.random.default_rng(0).integers(0, V, (2, 12))
    reference = model(ids)[0].numpy()
    before, after = qlora.quantize_model(model)
    assert after < 0.3 * before
    logits, loss = model(ids, ids)
    assert relative(logits.numpy(), reference) < 0.05
    loss.backward()
    assert all(p.grad is not None for _, p in lora.trainable_parameters(model))
    for name, p in model.named_parameters():
        assert p.grad is None or lora.is_adapter_name(name)
    # per-row error bound of the int8 codes: |W - W~| <= scale / 2
    w = np.random.default_rng(5).normal(size=(7, 9)).astype(np.float32)
    q = qlora.Int8Weight.quantize(w)
    assert np.all(np.abs(q.dequantize() - w) <= q.scales[:, None] / 2 + 1e-7)
