"""The mixture-of-experts model (nn/moe.py): config checks, the layer against transformers'
own MoE blocks and against its Python-loop rung, float64 gradient checks through the router
(away from top-k ties), the auxiliary losses against their formulas, training, KV-cache
decoding, and a diverging router stopped with a clear error."""
import numpy as np
import pytest
import torch

from microgpt.errors import ConfigError
from microgpt.gradcheck import gradcheck
from microgpt.nn import GPT, GPTConfig
from microgpt.nn.moe import MoEMLP, RouterError, top_k
from microgpt.tensor import Tensor

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def moe_config(**overrides):
    fields = dict(family="llama", vocab_size=61, block_size=16, n_layer=2, n_head=2, n_embd=24, n_experts=4,
                  n_experts_per_token=2, moe_hidden=20)
    fields.update(overrides)
    return GPTConfig(**fields)


@pytest.mark.parametrize("fields,message", [
    (dict(n_experts=4, n_experts_per_token=5), "n_experts_per_token=5 .top-k. is more than n_experts=4"),
    (dict(n_experts=-1), "n_experts must be an integer >= 0"),
    (dict(n_experts=4, n_experts_per_token=0), "n_experts_per_token must be a positive integer"),
    (dict(n_experts=4, moe_every=0), "moe_every must be a positive integer"),
    (dict(n_experts=4, moe_hidden=0), "moe_hidden must be a positive integer"),
    (dict(n_experts=4, router_aux_loss_coef=-0.1), "router_aux_loss_coef must be a finite number >= 0"),
    (dict(n_experts=4, router_z_loss_coef=float("nan")), "router_z_loss_coef must be a finite number"),
    (dict(n_experts=4, moe_norm_topk_prob="yes"), "moe_norm_topk_prob must be True or False"),
])
def test_bad_moe_configs_are_refused_by_name(fields, message):
    with pytest.raises(ConfigError, match=message):
        GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8, **fields)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_config_flag_turns_any_model_into_an_moe_model(family):
    dense = GPT(GPTConfig(family=family, vocab_size=30, block_size=8, n_layer=4, n_head=2, n_embd=16))
    moe = GPT(GPTConfig(family=family, vocab_size=30, block_size=8, n_layer=4, n_head=2, n_embd=16, n_experts=4,
                        moe_every=2))
    assert not dense.moe_layers() and dense.router_stats() is None
    assert [type(b.mlp) is MoEMLP for b in moe.blocks] == [False, True, False, True]    # (i + 1) % 2 == 0
    names = dict(moe.named_parameters())
    prefix = "transformer.h.1.mlp" if family == "gpt2" else "model.layers.1.mlp"
    assert names[f"{prefix}.gate.weight"].shape == (4, 16)
    hidden = moe.config.mlp_hidden
    assert names[f"{prefix}.experts.gate_proj"].shape == (4, hidden, 16)
    assert names[f"{prefix}.experts.down_proj"].shape == (4, 16, hidden)


def _hf_block(kind, layer, norm_topk_prob):
    """transformers' MoE block of the same shape, holding our layer's weights."""
    c, e, i, k = layer.gate.weight.shape[1], layer.n_experts, layer.experts.gate_proj.shape[1], layer.top_k
    if kind == "qwen3_moe":
        from transformers import Qwen3MoeConfig
        from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock
        block = Qwen3MoeSparseMoeBlock(Qwen3MoeConfig(hidden_size=c, num_experts=e, num_experts_per_tok=k,
                                                      moe_intermediate_size=i, norm_topk_prob=norm_topk_prob))
    else:
        from transformers import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
        block = MixtralSparseMoeBlock(MixtralConfig(hidden_size=c, num_local_experts=e, num_experts_per_tok=k,
                                                    intermediate_size=i))
    ex = layer.experts
    with torch.no_grad():
        block.gate.weight.copy_(torch.tensor(layer.gate.weight.numpy()))
        block.experts.gate_up_proj.copy_(torch.tensor(np.concatenate([ex.gate_proj.numpy(), ex.up_proj.numpy()], 1)))
        block.experts.down_proj.copy_(torch.tensor(ex.down_proj.numpy()))
    return block.eval()


@pytest.mark.parametrize("kind,norm", [("qwen3_moe", False), ("qwen3_moe", True), ("mixtral", True)])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_the_layer_equals_transformers_moe_block(kind, norm, k):
    config = moe_config(n_experts=6, n_experts_per_token=k, moe_norm_topk_prob=norm)
    layer = GPT(config, seed=k).blocks[0].mlp
    layer.eval()
    x = np.random.default_rng(k).standard_normal((3, 7, config.n_embd)).astype(np.float32)
    ours = layer(Tensor(x)).numpy()
    with torch.no_grad():
        theirs = _hf_block(kind, layer, norm)(torch.tensor(x)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shared", [0, 1])
def test_the_grouped_layer_equals_its_loop_rung_forward_and_backward(shared):
    config = moe_config(n_experts=8, n_shared_experts=shared)
    layer = GPT(config, seed=3).blocks[1].mlp
    x = np.random.default_rng(0).standard_normal((2, 9, config.n_embd)).astype(np.float32)
    results = []
    for forward in (layer.forward, layer.forward_loop):
        for p in layer.parameters():
            p.zero_grad()
        xt = Tensor(x, requires_grad=True)
        out = forward(xt)
        loss = (out * Tensor(np.linspace(-1, 1, out.size).reshape(out.shape).astype(np.float32))).sum() \
            + layer.aux_loss + layer.z_loss
        loss.backward()
        results.append([out.numpy(), np.array(xt.grad)] + [np.array(p.grad) for p in layer.parameters()])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _untied(rng, layer, x):
    """True when every token's k-th and (k+1)-th router probabilities are far apart, so a
    finite-difference step cannot change which experts are chosen."""
    logits = x.reshape(-1, x.shape[-1]) @ layer.gate.weight.numpy().T
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ranked = np.sort(probs, axis=-1)[:, ::-1]
    gaps = ranked[:, :-1] - ranked[:, 1:]
    return gaps[:, :layer.top_k].min() > 1e-3


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_float64_gradients_through_the_router_and_experts(reference_backend, norm, seed):
    config = moe_config(n_experts=5, n_experts_per_token=2, n_shared_experts=1, moe_hidden=6, n_embd=8,
                        moe_norm_topk_prob=norm)
    layer = MoEMLP(config, np.random.default_rng(seed), 0.02, np.float64)
    rng = np.random.default_rng(100 + seed)
    with_scale = layer.gate.weight.numpy() * 40          # a router sharp enough to matter
    layer.gate.weight.data[...] = with_scale
    x = rng.standard_normal((2, 3, 8))
    while not _untied(rng, layer, x):
        x = rng.standard_normal((2, 3, 8))
    projection = Tensor(rng.standard_normal((2, 3, 8)))

    def loss(x, *params):
        out = layer(x)
        return (out * projection).sum() + layer.aux_loss * 0.3 + layer.z_loss * 0.2

    params = [layer.gate.weight, layer.experts.gate_proj, layer.experts.up_proj, layer.experts.down_proj,
              layer.shared_expert.gate_proj.weight]
    gradcheck(loss, [Tensor(x, dtype=np.float64, requires_grad=True), *params])


def test_the_aux_and_z_losses_follow_their_formulas():
    config = moe_config(n_experts=4, n_experts_per_token=2)
    layer = GPT(config, seed=2).blocks[0].mlp
    x = np.random.default_rng(1).standard_normal((4, 5, config.n_embd)).astype(np.float32)
    layer(Tensor(x))
    logits = x.reshape(-1, config.n_embd).astype(np.float64) @ layer.gate.weight.numpy().T.astype(np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    chosen = top_k(probs, 2)
    counts = np.bincount(chosen.reshape(-1), minlength=4)
    aux = 4 * np.sum(counts / 20 * probs.mean(0))                  # E * sum_e f_e P_e
    lse = np.log(np.exp(logits).sum(-1))
    np.testing.assert_allclose(float(layer.aux_loss.numpy()), aux, rtol=1e-5)
    np.testing.assert_allclose(float(layer.z_loss.numpy()), np.mean(lse ** 2), rtol=1e-5)
    assert layer.stats["tokens_per_expert"] == counts.tolist() and layer.stats["dropped_tokens"] == 0
    # transformers' Mixtral/Qwen3-MoE load-balancing loss of one layer is the same number
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
    theirs = load_balancing_loss_func((torch.tensor(logits),), 4, 2)
    np.testing.assert_allclose(float(theirs), aux, rtol=1e-5)


def test_the_training_loss_adds_the_router_losses_with_their_coefficients():
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 61, (2, 10))
    losses = {}
    for aux, z in ((0.0, 0.0), (0.5, 0.0), (0.0, 0.25)):
        model = GPT(moe_config(router_aux_loss_coef=aux, router_z_loss_coef=z), seed=1)
        losses[aux, z] = float(model(idx, idx)[1].numpy())
        stats = model.router_stats()
    ce = losses[0.0, 0.0]
    np.testing.assert_allclose(losses[0.5, 0.0] - ce, 0.5 * np.mean(_layer_values(idx, "aux_loss")), rtol=1e-4)
    np.testing.assert_allclose(losses[0.0, 0.25] - ce, 0.25 * np.mean(_layer_values(idx, "z_loss")), rtol=1e-4)
    assert len(stats["tokens_per_expert"]) == 2 and all(sum(t) == 40 for t in stats["tokens_per_expert"])


def _layer_values(idx, name):
    model = GPT(moe_config(), seed=1)
    model(idx, idx)
    return [float(getattr(m, name).numpy()) for m in model.moe_layers()]


def test_an_moe_model_trains():
    from microgpt.train.optim import AdamW
    rng = np.random.default_rng(0)
    model = GPT(moe_config(n_layer=2, n_experts=4), seed=0)
    optim = AdamW(list(model.named_parameters()), weight_decay=0.0)
    data = rng.integers(0, 61, (4, 12))
    first = None
    for _ in range(25):
        _, loss = model(data[:, :-1], data[:, 1:])
        model.zero_grad()
        loss.backward()
        optim.step(3e-3)
        first = float(loss.numpy()) if first is None else first
    assert float(loss.numpy()) < first - 0.5


def test_kv_cache_decoding_equals_the_full_forward():
    model = GPT(moe_config(n_layer=2, n_experts=4, n_shared_experts=1), seed=4)
    model.eval()
    ids = np.random.default_rng(2).integers(0, 61, (1, 9))
    full = model(ids)[0].numpy()
    cache = model.new_kv_cache()
    steps = [model(ids[:, :4], kv_cache=cache)[0].numpy()]
    steps += [model(ids[:, t:t + 1], kv_cache=cache)[0].numpy() for t in range(4, 9)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-4, atol=1e-5)


def test_generation_runs_an_moe_model():
    from microgpt.inference.decode import Decoder
    from microgpt.inference.engine import Engine
    model = GPT(moe_config(), seed=5)
    model.eval()
    assert not Decoder.supports(model)              # the fast path is dense-only: GPT.forward decodes
    from microgpt.inference.sampling import SamplingConfig
    out = Engine(model).generate_ids([[1, 2, 3]], max_new_tokens=6, sampling=SamplingConfig(temperature=0.0))
    ids = [1, 2, 3]                                 # the same greedy tokens without a cache
    for _ in range(6):
        ids.append(int(np.argmax(model(np.array([ids]))[0].numpy()[0, -1])))
    assert out[0].ids == ids[3:]


def test_a_diverging_router_stops_with_a_router_error():
    model = GPT(moe_config(), seed=0)
    model.blocks[0].mlp.gate.weight.data[0, 0] = np.nan
    with pytest.raises(RouterError, match="router's probabilities are NaN or infinite"):
        model(np.zeros((1, 4), np.int64))
