"""The alignment losses (finetune/rl_common.py) against PyTorch autograd of the same formulas.

TRL 1.16's DPOTrainer computes its loss inside `_compute_loss(model, inputs)` of a built
trainer, with no function that takes log-prob tensors, so the DPO and Bradley-Terry oracles are
PyTorch autograd of TRL's formula (its sigmoid loss: -logsigmoid(beta * logits)). GAE is checked
against the direct O(T^2) sum, PPO's terms against a PyTorch implementation (torch.min/max/clamp
as TRL's PPOTrainer writes them), and the reward and value heads by finite differences.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from microgpt.finetune import rl_common as rl
from microgpt.gradcheck import gradcheck
from microgpt.nn import GPT, GPTConfig
from microgpt.tensor import Tensor


def t64(values):
    return Tensor(np.asarray(values, np.float64), dtype=np.float64, requires_grad=True)


@pytest.mark.parametrize("seed", range(4))
def test_dpo_loss_and_gradient_equal_torch(seed):
    rng = np.random.default_rng(seed)
    pc, pr, rc, rr = (rng.normal(-20, 5, 6) for _ in range(4))
    pc[0], pr[0] = 80.0, -80.0                              # saturated sigmoid: still finite
    beta = 0.1
    a, b = t64(pc), t64(pr)
    loss, stats = rl.dpo_loss(a, b, rc, rr, beta)
    loss.backward()
    ta, tb = (torch.tensor(v, requires_grad=True) for v in (pc, pr))
    logits = (ta - torch.tensor(rc)) - (tb - torch.tensor(rr))
    tl = -F.logsigmoid(beta * logits).mean()
    tl.backward()
    assert abs(loss.item() - tl.item()) < 1e-12
    np.testing.assert_allclose(a.grad, ta.grad.numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(b.grad, tb.grad.numpy(), rtol=1e-10, atol=1e-14)
    chosen, rejected = beta * (pc - rc), beta * (pr - rr)
    assert stats["accuracy"] == pytest.approx((chosen > rejected).mean())
    assert stats["margin"] == pytest.approx((chosen - rejected).mean())


def test_dpo_loss_on_identical_logprobs_is_log_2():
    lp = np.array([-3.0, -5.0])
    loss, _ = rl.dpo_loss(t64(lp), t64(lp), lp, lp, 0.1)
    assert loss.item() == pytest.approx(np.log(2))


@pytest.mark.parametrize("seed", range(3))
def test_bradley_terry_equals_torch(seed):
    rng = np.random.default_rng(seed)
    c, r = rng.normal(0, 3, 8), rng.normal(0, 3, 8)
    a, b = t64(c), t64(r)
    loss = rl.bradley_terry_loss(a, b)
    loss.backward()
    ta, tb = (torch.tensor(v, requires_grad=True) for v in (c, r))
    tl = -F.logsigmoid(ta - tb).mean()
    tl.backward()
    assert abs(loss.item() - tl.item()) < 1e-12
    np.testing.assert_allclose(a.grad, ta.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(b.grad, tb.grad.numpy(), rtol=1e-10)


def test_log_sigmoid_gradcheck():
    x = t64(np.array([-30.0, -2.0, -0.1, 0.0, 0.3, 4.0, 25.0]))
    gradcheck(lambda v: rl.log_sigmoid(v).sum(), [x])


def test_dpo_gradient_at_policy_equal_reference():
    # step 1 of every DPO run: the policy is the reference, the logits are exactly 0, and
    # d loss / d lp_c = -beta sigma(0) / B = -beta / (2 B) (not 0: a kink there would stall DPO)
    lp_c, lp_r = np.array([-3.0, -4.0]), np.array([-5.0, -2.0])
    a, b = t64(lp_c), t64(lp_r)
    loss, _ = rl.dpo_loss(a, b, lp_c, lp_r, 0.1)
    loss.backward()
    np.testing.assert_allclose(a.grad, [-0.025, -0.025])
    np.testing.assert_allclose(b.grad, [0.025, 0.025])


def _gae_direct(rewards, values, mask, gamma, lam):
    """A_t = sum_{l >= 0} (gamma lam)^l delta_{t+l} over the row's response tokens, O(T^2)."""
    out = np.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        pos = np.flatnonzero(mask[b])
        v = np.append(values[b, pos], 0.0)
        delta = rewards[b, pos] + gamma * v[1:] - v[:-1]
        for i in range(len(pos)):
            out[b, pos[i]] = sum((gamma * lam) ** k * delta[i + k] for k in range(len(pos) - i))
    return out


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0), (0.5, 0.0)])
def test_gae_equals_the_direct_sum(gamma, lam):
    rng = np.random.default_rng(1)
    rewards, values = rng.normal(size=(4, 9)), rng.normal(size=(4, 9))
    mask = np.zeros((4, 9), bool)
    for b, (s, e) in enumerate([(0, 9), (2, 7), (4, 5), (1, 8)]):
        mask[b, s:e] = True
    adv, ret = rl.gae(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(adv, _gae_direct(rewards, values, mask, gamma, lam), atol=1e-12)
    np.testing.assert_allclose(ret, (adv + values) * mask, atol=1e-12)


def _torch_ppo(lp, old, adv, v, old_v, ret, mask, clip, vclip):
    ratio = torch.exp(lp - old)
    pg = torch.max(-adv * ratio, -adv * torch.clamp(ratio, 1 - clip, 1 + clip))
    pg = (pg * mask).sum() / mask.sum()
    v_clipped = old_v + torch.clamp(v - old_v, -vclip, vclip)
    vf = 0.5 * (torch.max((v - ret) ** 2, (v_clipped - ret) ** 2) * mask).sum() / mask.sum()
    return pg, vf


@pytest.mark.parametrize("seed", range(5))
def test_ppo_loss_terms_equal_torch(seed):
    rng = np.random.default_rng(seed)
    shape = (3, 7)
    lp, old = rng.normal(-2, 1, shape), rng.normal(-2, 1, shape)   # ratios far from 1: clipping
    adv, ret = rng.normal(size=shape), rng.normal(size=shape)
    v, old_v = rng.normal(size=shape), rng.normal(size=shape)
    mask = (rng.random(shape) < 0.7).astype(np.float64)
    mask[0, 0] = 1
    a, val = t64(lp), t64(v)
    pg, clip_fraction = rl.ppo_policy_loss(a, old, adv, mask, 0.2)
    vf = rl.ppo_value_loss(val, old_v, ret, mask, 0.2)
    (pg + vf).backward()
    tlp, tv = torch.tensor(lp, requires_grad=True), torch.tensor(v, requires_grad=True)
    tpg, tvf = _torch_ppo(tlp, *(torch.tensor(x) for x in (old, adv)), tv,
                          *(torch.tensor(x) for x in (old_v, ret, mask)), 0.2, 0.2)
    (tpg + tvf).backward()
    assert abs(pg.item() - tpg.item()) < 1e-12 and abs(vf.item() - tvf.item()) < 1e-12
    np.testing.assert_allclose(a.grad, tlp.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(val.grad, tv.grad.numpy(), atol=1e-12)
    ratio = np.exp(lp - old)
    outside = (ratio < 0.8) | (ratio > 1.2)
    assert clip_fraction == pytest.approx((outside * mask).sum() / mask.sum())


def test_entropy_and_k3_equal_torch():
    rng = np.random.default_rng(3)
    logits, lp, ref = rng.normal(size=(2, 3, 5)), rng.normal(-1, 1, (2, 3)), rng.normal(-1, 1, (2, 3))
    x, a = t64(logits), t64(lp)
    h, k3 = rl.entropy(x), rl.k3_kl(a, ref)
    (h.sum() + k3.sum()).backward()
    tx, ta = torch.tensor(logits, requires_grad=True), torch.tensor(lp, requires_grad=True)
    th = torch.distributions.Categorical(logits=tx).entropy()
    d = torch.tensor(ref) - ta
    tk = torch.exp(d) - d - 1
    (th.sum() + tk.sum()).backward()
    np.testing.assert_allclose(h.numpy(), th.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(k3.numpy(), tk.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(a.grad, ta.grad.numpy(), atol=1e-12)
    assert (k3.numpy() >= 0).all()


def test_group_advantages_and_whiten():
    r = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    adv = rl.group_advantages(r, 3)
    np.testing.assert_allclose(adv[:3], (r[:3] - r[:3].mean()) / (r[:3].std() + 1e-4))
    assert np.all(adv[3:] == 0)                             # a flat group teaches nothing
    mask = np.array([[1, 1, 0], [1, 0, 0]], bool)
    w = rl.whiten(np.array([[1.0, 2.0, 9.0], [3.0, 5.0, 5.0]]), mask)
    assert abs(w[mask].mean()) < 1e-9 and abs(w[mask].std() - 1) < 1e-6 and np.all(w[~mask] == 0)


def _tiny_gpt(dtype=np.float64):
    config = GPTConfig(family="llama", vocab_size=11, block_size=12, n_layer=1, n_head=2, n_embd=8)
    return GPT(config, seed=0, dtype=dtype)


def test_reward_and_value_heads_gradcheck(reference_backend):
    from microgpt.finetune.ppo import PolicyWithValue
    from microgpt.finetune.reward import RewardModel
    rm = RewardModel(_tiny_gpt())
    ids = np.array([[1, 2, 3, 4, 0], [5, 6, 7, 0, 0]])
    last = np.array([3, 2])
    weights = np.array([0.7, -1.3])
    gradcheck(lambda w, b: (rm(ids, last) * Tensor(weights)).sum(),
              [rm.head.weight, rm.head.bias], name="reward head")
    gradcheck(lambda w: (rm(ids, last) * Tensor(weights)).sum(),
              [rm.gpt.model.norm.weight], name="reward backbone")
    policy = PolicyWithValue(_tiny_gpt())
    seqs = rl.Sequences([[1, 2], [3]], [[4, 5, 6], [7]])
    coef = np.random.default_rng(0).normal(size=seqs.response_mask.shape)
    gradcheck(lambda w, b: (policy(seqs)[2] * Tensor(coef)).sum(),
              [policy.value_head.weight, policy.value_head.bias], name="value head")


def test_sequence_logprobs_equal_torch_log_softmax():
    gpt = _tiny_gpt()
    seqs = rl.Sequences([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]])
    lp = rl.sequence_logprobs(gpt, seqs).numpy()
    logits, _ = gpt(seqs.ids[:, :-1])
    logp = torch.log_softmax(torch.tensor(logits.numpy()), -1).numpy()
    want = [sum(logp[b, t, seqs.ids[b, t + 1]] for t in np.flatnonzero(seqs.response_mask[b]))
            for b in range(2)]
    np.testing.assert_allclose(lp, want, rtol=1e-12)
    assert seqs.response_mask.sum(1).tolist() == [2, 3]
