"""LoRA (finetune/lora.py, peft_io.py, qlora.py) against PEFT + PyTorch autograd.

The oracle: our base exported to a Hugging Face directory (interop.export_hf), our adapter
saved in PEFT's format and loaded by `peft.PeftModel.from_pretrained`; PEFT's logits must
equal ours (float32, rel. < 1e-4) with the adapter merged and unmerged, and the gradient of
every adapter matrix must equal torch autograd's through PEFT on the same inputs and loss.
"""
import json
import shutil

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
    # the codes' error bound (|W - W~| <= d / 2) is tested with the formats (test_quantize*)


# --- trained token rows (finetune/tokens.py): PEFT's trainable_token_indices ------------------

NEW_ROWS = [261, 262, 299]              # two adjacent rows and one apart: the runs of W'


def with_token_rows(family, targets="q,v", tied=None, seed=0):
    from microgpt.finetune import tokens
    extra = dict(n_kv_head=2) if family == "llama" else {}
    if tied is not None:
        extra["tie_embeddings"] = tied
    model = GPT(GPTConfig(family=family, vocab_size=V, block_size=32, n_layer=2, n_head=4,
                          n_embd=32, **extra), seed=seed)
    lora.apply_lora(model, lora.target_modules(model.config, targets), rank=4, alpha=8.0, seed=seed)
    tokens.train_token_rows(model, NEW_ROWS)
    rng = np.random.default_rng(seed + 7)
    for _, p in lora.trainable_parameters(model):                # moved away from their start
        p.data = (p.numpy() + rng.normal(0, 0.2, p.shape)).astype(np.float32)
    return model


def base_of(model):
    config = model.config
    base = GPT(GPTConfig(**{k: getattr(config, k) for k in config.__dataclass_fields__}))
    base.load_state_dict(lora.base_state(model))
    return base


@pytest.mark.parametrize("family, tied", [("llama", False), ("llama", True), ("gpt2", True)])
def test_token_rows_logits_and_gradients_equal_peft(tmp_path, family, tied, one_torch_thread):
    import peft
    import torch
    import transformers

    from microgpt.finetune import tokens
    from microgpt.interop import export_hf
    model = with_token_rows(family, "q,v" if family == "llama" else "q,o", tied)
    config = peft_io.adapter_config(model)
    assert config["trainable_token_indices"] == (NEW_ROWS if tied else
                                                 {"embed_tokens": NEW_ROWS, "lm_head": NEW_ROWS})
    export_hf(base_of(model), tokenizer(), tmp_path / "base")
    peft_io.save_adapter(model, tmp_path / "adapter")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter", is_trainable=True)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, V, (2, 12))
    ids[0, :4] = NEW_ROWS + [NEW_ROWS[0]]                     # the new rows are read...
    targets = rng.integers(0, V, (2, 12))
    targets[1, :3] = NEW_ROWS                                 # ...and predicted
    logits, loss = model(ids, targets)
    loss.backward()
    out = theirs(input_ids=torch.tensor(ids))
    their_loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, V),
                                                   torch.tensor(targets).reshape(-1))
    their_loss.backward()
    assert relative(logits.numpy(), out.logits.detach().numpy()) < 1e-4
    grads = {n.replace("base_model.model.", "").replace(".default", ""): p.grad.numpy()
             for n, p in theirs.named_parameters() if p.requires_grad}
    ours = dict(lora.trainable_parameters(model))
    assert set(grads) == set(ours)
    assert any(n.endswith("token_adapter.trainable_tokens_delta") for n in ours)
    for name, p in ours.items():
        assert relative(p.backend.to_numpy(p.grad), grads[name]) < 1e-4, name
    for name, p in model.named_parameters():                 # the tables stay frozen
        assert (p.grad is not None) == lora.is_adapter_name(name), name
    # merged: PEFT's merge_adapter against ours, and the plain model back for the decoders
    theirs.merge_adapter()
    with torch.no_grad():
        merged_theirs = theirs(input_ids=torch.tensor(ids)).logits.numpy()
    lora.merge(model)
    tokens.merge_and_unwrap(model)
    assert not tokens.token_wrappers(model)
    merged, _ = model(ids)
    assert relative(merged.numpy(), merged_theirs) < 1e-4
    assert relative(merged.numpy(), logits.numpy()) < 1e-4
    # and our loader reads the adapter back to the same model
    again = base_of(with_token_rows(family, "q,v" if family == "llama" else "q,o", tied))
    peft_io.load_adapter(again, tmp_path / "adapter", merge=True)
    assert relative(again(ids)[0].numpy(), logits.numpy()) < 1e-5


def test_token_rows_only_they_train_and_unmerge_restores():
    from microgpt.finetune import tokens
    from microgpt.train.optim import AdamW
    model = with_token_rows("llama", tied=False)
    table_before = model.model.embed_tokens.weight.numpy().copy()
    head_before = model.lm_head.weight.numpy().copy()
    ids = np.array([NEW_ROWS + [5, 6, 7]])
    _, loss = model(ids, np.roll(ids, -1, axis=1))
    loss.backward()
    optimizer = AdamW(lora.trainable_parameters(model), 0.0, (0.9, 0.95), 1e-8)
    names = {k.split(".", 1)[1] for k in optimizer.state_tensors()}
    assert "model.embed_tokens.token_adapter.trainable_tokens_delta" in names
    assert not any(n.endswith(("embed_tokens.weight", "lm_head.weight")) for n in names)
    delta = model.model.embed_tokens.token_adapter.trainable_tokens_delta
    assert delta.shape == (len(NEW_ROWS), 32)
    optimizer.step(1e-2)
    assert np.array_equal(model.model.embed_tokens.weight.numpy(), table_before)
    assert np.array_equal(model.lm_head.weight.numpy(), head_before)
    wrapper = model.model.embed_tokens
    wrapper.merge()
    assert np.array_equal(wrapper.weight.numpy()[NEW_ROWS], delta.numpy())
    wrapper.unmerge()
    assert np.array_equal(wrapper.weight.numpy(), table_before)
    assert tokens.token_indices(model) == {"embed_tokens": NEW_ROWS, "lm_head": NEW_ROWS}


def test_peft_trained_token_rows_load_into_ours(tmp_path, one_torch_thread):
    import peft
    import torch
    import transformers

    from microgpt.interop import export_hf
    untied = GPTConfig(family="llama", vocab_size=V, block_size=32, n_layer=2, n_head=4,
                       n_embd=32, n_kv_head=2, tie_embeddings=False)
    base = GPT(untied, seed=0)
    export_hf(base, tokenizer(), tmp_path / "base")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    theirs = peft.get_peft_model(hf, peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
        trainable_token_indices={"embed_tokens": NEW_ROWS, "lm_head": NEW_ROWS[:2]}))
    with torch.no_grad():
        for p in theirs.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    theirs.save_pretrained(tmp_path / "from_peft")
    ids = np.array([NEW_ROWS + [1, 2, 3]])
    with torch.no_grad():
        expected = theirs(input_ids=torch.tensor(ids)).logits.numpy()
    ours = GPT(untied, seed=0)
    peft_io.load_adapter(ours, tmp_path / "from_peft")
    assert relative(ours(ids)[0].numpy(), expected) < 1e-4
    other = GPT(untied, seed=0)
    other_dir = tmp_path / "bad"
    other_dir.mkdir()
    shutil.copy(tmp_path / "from_peft" / peft_io.WEIGHTS_FILE, other_dir)
    config = json.loads((tmp_path / "from_peft" / peft_io.CONFIG_FILE).read_text())
    config["trainable_token_indices"] = [1, 2]                 # 2 rows, the file holds 3
    (other_dir / peft_io.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="token_adapter.trainable_tokens_delta"):
        peft_io.load_adapter(other, other_dir)
    assert not lora.lora_layers(other)
