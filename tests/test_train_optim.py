"""AdamW: the update against an independent formula (and torch.optim.AdamW where installed),
which parameters decay, the global gradient norm, saving and restoring the moments."""
import numpy as np
import pytest

from microgpt.errors import CheckpointError
from microgpt.nn import GPT, GPTConfig
from microgpt.train.optim import AdamW, decays, grad_norm


def _tiny(family="gpt2"):
    return GPT(GPTConfig(family=family, vocab_size=37, block_size=8, n_layer=1, n_head=2,
                         n_embd=8), seed=3)


def _grads(model, seed):
    rng = np.random.default_rng(seed)
    for _, p in model.named_parameters():
        p.grad = rng.standard_normal(p.shape).astype(np.float32)


def _oracle(p, g, m, v, t, lr, b1, b2, eps, wd):
    """Loshchilov & Hutter's AdamW in float64, written out independently."""
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    p = p * (1 - lr * wd) - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return p, m, v


def test_update_matches_the_formula_over_several_steps():
    model = _tiny()
    opt = AdamW(model.named_parameters(), weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    state = {n: (p.numpy().astype(np.float64), 0.0, 0.0) for n, p in model.named_parameters()}
    for t, (lr, scale) in enumerate([(1e-2, 1.0), (5e-3, 0.5), (2e-3, 0.25)], start=1):
        _grads(model, t)
        grads = {n: p.grad.astype(np.float64) * scale for n, p in model.named_parameters()}
        opt.step(lr, grad_scale=scale)
        for name, p in model.named_parameters():
            wd = 0.1 if opt.decay[name] else 0.0
            state[name] = _oracle(*[state[name][0]], grads[name], state[name][1], state[name][2],
                                  t, lr, 0.9, 0.95, 1e-8, wd)
            np.testing.assert_allclose(p.numpy(), state[name][0], rtol=2e-5, atol=2e-6,
                                       err_msg=name)


def test_matches_torch_adamw():
    torch = pytest.importorskip("torch")
    model = _tiny()
    params = {n: torch.tensor(p.numpy().copy(), requires_grad=True) for n, p in model.named_parameters()}
    opt = AdamW(model.named_parameters(), weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    groups = [{"params": [params[n] for n in params if opt.decay[n]], "weight_decay": 0.1},
              {"params": [params[n] for n in params if not opt.decay[n]], "weight_decay": 0.0}]
    ref = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    for t in range(1, 4):
        _grads(model, t)
        for n, p in model.named_parameters():
            params[n].grad = torch.tensor(p.grad)
        opt.step(1e-2)
        ref.step()
    for n, p in model.named_parameters():
        np.testing.assert_allclose(p.numpy(), params[n].detach().numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=n)


def test_decay_applies_to_matrices_only_by_default():
    gpt = dict(_tiny().named_parameters())
    opt = AdamW(gpt.items())
    assert opt.decay["transformer.h.0.attn.c_attn.weight"]
    assert opt.decay["transformer.h.0.mlp.c_proj.weight"]
    assert not opt.decay["transformer.h.0.attn.c_attn.bias"]
    assert not opt.decay["transformer.h.0.ln_1.weight"]
    assert not opt.decay["transformer.wte.weight"] and not opt.decay["transformer.wpe.weight"]
    assert decays("transformer.wte.weight", gpt["transformer.wte.weight"], decay_embeddings=True)
    llama = dict(_tiny("llama").named_parameters())
    assert not decays("model.embed_tokens.weight", llama["model.embed_tokens.weight"])
    assert not decays("model.norm.weight", llama["model.norm.weight"])
    assert decays("model.layers.0.self_attn.q_proj.weight",
                  llama["model.layers.0.self_attn.q_proj.weight"])


def test_grad_norm_and_non_finite():
    model = _tiny()
    _grads(model, 0)
    expected = np.sqrt(sum(np.sum(p.grad.astype(np.float64) ** 2) for p in model.parameters()))
    assert grad_norm(model.parameters()) == pytest.approx(expected, rel=1e-6)
    model.parameters()[2].grad[0] = np.nan
    assert np.isnan(grad_norm(model.parameters()))
    model.parameters()[2].grad[0] = np.inf
    assert not np.isfinite(grad_norm(model.parameters()))


def test_state_round_trip_and_mismatch():
    model = _tiny()
    opt = AdamW(model.named_parameters())
    _grads(model, 1)
    opt.step(1e-2)
    saved = opt.state_tensors()
    other = AdamW(_tiny().named_parameters())
    other.load_state_tensors(saved, opt.t)
    assert other.t == 1
    for k in saved:
        np.testing.assert_array_equal(other.state_tensors()[k], saved[k])
    with pytest.raises(CheckpointError, match="missing"):
        other.load_state_tensors({k: v for k, v in list(saved.items())[1:]}, 1)
    bad = dict(saved)
    key = next(iter(bad))
    bad[key] = np.zeros((3, 3), np.float32)
    with pytest.raises(CheckpointError, match="does not match"):
        other.load_state_tensors(bad, 1)
