"""Qwen3-MoE and Mixtral in and out: transformers builds random-init models from small configs,
save_pretrained writes them, we load them and compare (float32 logits within rel 1e-4, greedy
tokens identical), export ours back and transformers loads that (same logits); config.json and
weights that do not fit are refused by name; `microgpt inspect` shows the experts."""
import json

import numpy as np
import pytest
import torch

from hf_helpers import redraw_parameters
from microgpt.errors import CheckpointError, ConfigError
from microgpt.interop.hf import export_hf, load_pretrained
from microgpt.nn.moe import MoEMLP

pytestmark = pytest.mark.usefixtures("one_torch_thread")
VOCAB = 97
BASE = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)


def hf_moe(kind, seed=0, **overrides):
    import transformers
    if kind == "qwen3_moe":
        fields = dict(BASE, head_dim=8, num_experts=6, num_experts_per_tok=2, moe_intermediate_size=12)
        config_class, model_class = transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM
    else:
        fields = dict(BASE, num_local_experts=5, num_experts_per_tok=2)
        config_class, model_class = transformers.MixtralConfig, transformers.MixtralForCausalLM
    config = config_class(**{**fields, **overrides})
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return redraw_parameters(model_class(config).eval(), seed + 1)


CASES = [("qwen3_moe", {}), ("qwen3_moe", {"norm_topk_prob": True}), ("qwen3_moe", {"decoder_sparse_step": 2}),
         ("qwen3_moe", {"num_experts_per_tok": 1, "tie_word_embeddings": True}), ("mixtral", {}),
         ("mixtral", {"num_experts_per_tok": 3})]


def _logits(hf, ids):
    with torch.no_grad():
        return hf(torch.tensor(ids)).logits.numpy()


@pytest.mark.parametrize("kind,overrides", CASES)
def test_logits_and_greedy_tokens_equal_transformers(tmp_path, kind, overrides):
    hf = hf_moe(kind, **overrides)
    hf.save_pretrained(tmp_path / "hf")
    ours = load_pretrained(str(tmp_path / "hf"))
    step = overrides.get("decoder_sparse_step", 1)
    assert [isinstance(b.mlp, MoEMLP) for b in ours.blocks] == [(i + 1) % step == 0 for i in range(3)]
    ids = np.random.default_rng(1).integers(0, VOCAB, (2, 11))
    theirs = _logits(hf, ids)
    got = ours(ids)[0].numpy()
    assert np.abs(got - theirs).max() / np.abs(theirs).max() < 1e-4
    prompt = ids[:1, :4]
    with torch.no_grad():
        want = hf.generate(torch.tensor(prompt), max_new_tokens=12, do_sample=False, pad_token_id=0)[0, 4:].tolist()
    cache, tokens = ours.new_kv_cache(), []
    logits = ours(prompt, kv_cache=cache)[0]
    for _ in range(12):
        tokens.append(int(np.argmax(logits.numpy()[0, -1])))
        logits = ours(np.array([[tokens[-1]]]), kv_cache=cache)[0]
    assert tokens == want


@pytest.mark.parametrize("kind,overrides", CASES[:2] + CASES[4:5])
def test_our_export_loads_back_in_transformers_and_here(tmp_path, kind, overrides):
    import transformers
    hf = hf_moe(kind, **overrides)
    hf.save_pretrained(tmp_path / "hf")
    ours = load_pretrained(str(tmp_path / "hf"))
    export_hf(ours, None, str(tmp_path / "out"))
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["model_type"] == kind
    back, info = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = np.random.default_rng(2).integers(0, VOCAB, (1, 9))
    np.testing.assert_allclose(_logits(back.eval(), ids), _logits(hf, ids), rtol=1e-5, atol=1e-5)
    again = load_pretrained(str(tmp_path / "out"))
    assert again.config == ours.config
    np.testing.assert_array_equal(again(ids)[0].numpy(), ours(ids)[0].numpy())


def test_a_model_trained_here_exports_as_qwen3_moe(tmp_path):
    from microgpt.nn import GPT, GPTConfig
    model = GPT(GPTConfig(family="llama", vocab_size=VOCAB, block_size=32, n_layer=2, n_head=2, n_embd=16,
                          qk_norm=True, n_experts=4, n_experts_per_token=2, moe_hidden=8, tie_embeddings=False))
    export_hf(model, None, str(tmp_path / "out"))
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "qwen3_moe"
    with pytest.raises(ConfigError, match="n_shared_experts=1"):
        export_hf(GPT(GPTConfig(family="llama", vocab_size=VOCAB, block_size=8, n_layer=1, n_head=2, n_embd=16,
                                qk_norm=True, n_experts=4, n_shared_experts=1)), None, str(tmp_path / "shared"))


def test_expert_counts_that_do_not_match_the_checkpoint_are_refused(tmp_path):
    hf_moe("mixtral").save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["num_local_experts"] = 4                  # the file holds 5 experts per layer
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"gate.weight. has shape \(5, 32\), the config.json model needs \(4,"):
        load_pretrained(str(tmp_path / "hf"))
    config["num_local_experts"], config["num_experts_per_tok"] = 5, 6
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="n_experts_per_token=6 .top-k. is more than n_experts=5"):
        load_pretrained(str(tmp_path / "hf"))


def test_dense_layers_by_index_are_refused_by_name(tmp_path):
    hf_moe("qwen3_moe", mlp_only_layers=[0]).save_pretrained(tmp_path / "hf")
    with pytest.raises(ConfigError, match="mlp_only_layers"):
        load_pretrained(str(tmp_path / "hf"))


def test_inspect_shows_the_experts_and_pairs_every_expert_tensor(tmp_path):
    from microgpt.interop.inspector import inspect_checkpoint
    hf_moe("mixtral").save_pretrained(tmp_path / "hf")
    text = inspect_checkpoint(str(tmp_path / "hf")).format()
    assert "experts: 5 per MoE layer in 3 of 3 layers, top-2, expert hidden 40" in text
    assert "block_sparse_moe.experts.4.w2.weight" in text
    assert "UNEXPECTED" not in text and "MISSING" not in text
