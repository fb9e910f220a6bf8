"""PPO with a KL penalty (the InstructGPT recipe), and the rollouts GRPO shares.

One iteration:
  1. rollout   sample a response to each of a batch of prompts through the batched KV-cache
               engine (inference/engine.py's generate_ids, temperature 1), then one forward
               of the policy (token log-probs lp_old and values V_old), of the frozen
               reference (ref) and the reward: the trained reward model's score of the
               whole sequence (finetune/reward.py) or a rule (a verifier function)
  2. rewards   per response token r_t = -kl_coef (lp_old_t - ref_t), plus the score at the
               last token
  3. GAE       advantages A and returns R = A + V_old (rl_common.gae, gamma, lambda);
               A whitened over the batch's response tokens
  4. update    `epochs` passes over shuffled minibatches:
                   L = L_clip(rho, A) + vf_coef L_value(V, V_old, R) - ent_coef H
               (rl_common's clipped surrogate, clipped value loss, entropy), one AdamW step each
  5. KL        fixed kl_coef, or adaptive (Ziegler et al. 2019): with the measured KL,
               kl_coef *= 1 + clip(KL / target - 1, -0.2, 0.2) * batch / horizon

The value head is a Linear(C, 1) on the policy's own final hidden states (one backbone, one
forward gives logits and values). Everything is logged per iteration to metrics.jsonl:
reward mean/std, KL (mean over tokens of lp - ref, summed per response), clip fraction, value
loss, policy loss, entropy, response length, kl_coef. A reward that is not finite (a user
verifier's NaN) stops the run with an error naming the iteration, before any update.
"""
import time
from dataclasses import dataclass

import numpy as np

from ..nn.layers import Linear
from ..nn.module import Module
from ..tensor import no_grad
from ..tokenizer.chat import encode_chat, stop_token_ids
from ..train import checkpoint as ckpt
from .rl_common import AlignmentError, Sequences, check_finite, check_same_architecture, clip_and_step, \
    entropy, gae, masked_mean, ppo_policy_loss, ppo_value_loss, reference_logprobs, token_logprobs_of, whiten


class PolicyWithValue(Module):
    def __init__(self, gpt, seed=0):
        self.gpt = gpt
        rng = np.random.default_rng(seed)
        self.value_head = Linear(gpt.config.n_embd, 1, bias=True, rng=rng, std=0.01, dtype=gpt.dtype)

    @property
    def config(self):
        return self.gpt.config

    def forward(self, seqs):
        """(token log-probs (B, L-1), logits (B, L-1, V), values (B, L-1)) Tensors; the value
        at t is the state's before target t (the hidden state at input position t)."""
        logprobs, logits, hidden = token_logprobs_of(self.gpt, seqs, with_hidden=True)
        b, t = seqs.ids.shape[0], seqs.ids.shape[1] - 1
        return logprobs, logits, self.value_head(hidden).reshape(b, t)


@dataclass
class Rollout:
    prompts: list           # prompt messages
    seqs: Sequences
    texts: list             # decoded responses
    scores: np.ndarray      # (B,) the reward of each whole response
    old_logprobs: np.ndarray
    ref_logprobs: np.ndarray
    old_values: np.ndarray = None


def rollout(policy_gpt, reference, tokenizer, prompts, reward_fn, max_new_tokens, seed, step,
            samples=1, temperature=1.0):
    """Sample `samples` responses per prompt and score them; see the module docstring."""
    from ..inference.engine import Engine
    from ..inference.sampling import SamplingConfig
    stops = stop_token_ids(tokenizer)
    ids = [encode_chat(tokenizer, p, add_generation_prompt=True)[0] for p in prompts]
    room = policy_gpt.config.block_size - max(len(i) for i in ids)
    if room < 1:
        raise AlignmentError(f"a prompt of {max(len(i) for i in ids)} tokens fills the context "
                             f"({policy_gpt.config.block_size}); shorten the prompts")
    ids = [i for i in ids for _ in range(samples)]
    prompts = [p for p in prompts for _ in range(samples)]
    # batch_invariant=False: the samples are re-scored below by the training forward, so no row
    # needs the server's alone-or-in-a-crowd rounding, and the float layers take the GEMM
    outs = Engine(policy_gpt, tokenizer, batch_invariant=False).generate_ids(
        ids, min(max_new_tokens, room), SamplingConfig(temperature=temperature), seed, stops)
    responses = [o.ids if o.ids else [stops[-1]] for o in outs]
    texts = [tokenizer.decode([i for i in r if i not in stops]) for r in responses]
    seqs = Sequences(ids, responses)
    scores = np.asarray(reward_fn(prompts, seqs, texts), np.float64)
    check_finite(scores, "reward of rollout", step)
    with no_grad():
        old = reference_logprobs(policy_gpt, seqs)
    ref = reference_logprobs(reference, seqs)
    return Rollout(prompts, seqs, texts, scores, old, ref)


def host_entropy(logits, mask):
    """rl_common.entropy's masked mean on a host array (B, T, V), without a graph."""
    z = logits.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    h = -(np.exp(logp) * logp).sum(-1)
    return float((h * mask).sum() / max(float(mask.sum()), 1.0))


def token_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, last):
    """r_t = -kl_coef (lp_t - ref_t) on response tokens, + score at each row's last one."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    rows = np.arange(len(scores))
    rewards[rows, last - 1] += scores            # position t predicts token t + 1
    return rewards, kl


class AdaptiveKL:
    """kl_coef that follows a target KL (Ziegler et al. 2019); target None = fixed."""

    def __init__(self, coef, target=None, horizon=10000):
        self.coef, self.target, self.horizon = float(coef), target, horizon

    def update(self, kl, batch):
        if self.target:
            error = float(np.clip(kl / self.target - 1.0, -0.2, 0.2))
            self.coef *= 1.0 + error * batch / self.horizon


@dataclass
class PPOOptions:
    iterations: int = 20
    prompts_per_iteration: int = 16
    epochs: int = 2
    minibatch: int = 8
    lr: float = 1e-5
    clip: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 0.1
    ent_coef: float = 0.0
    gamma: float = 1.0
    lam: float = 0.95
    kl_coef: float = 0.05
    kl_target: float = 0.0          # 0 = fixed kl_coef
    kl_horizon: int = 10000
    max_new_tokens: int = 8
    seed: int = 0


def train_ppo(policy, reference, tokenizer, prompts, reward_fn, options, run_dir=None, log=print):
    """PPO; policy a PolicyWithValue; returns {"iterations", "losses", "rewards", "seconds"}."""
    from ..train.optim import AdamW
    o = options
    check_same_architecture(policy.gpt, reference)
    params = [(n, p) for n, p in policy.named_parameters() if p.requires_grad]
    optimizer = AdamW(params, 0.0)
    kl_control = AdaptiveKL(o.kl_coef, o.kl_target or None, o.kl_horizon)
    rng = np.random.default_rng(o.seed)
    started, losses, reward_means = time.time(), [], []
    for it in range(1, o.iterations + 1):
        batch = [prompts[k] for k in rng.choice(len(prompts), o.prompts_per_iteration, replace=False)]
        ro = rollout(policy.gpt, reference, tokenizer, batch, reward_fn, o.max_new_tokens,
                     o.seed * 100003 + it, it)
        mask = ro.seqs.response_mask
        with no_grad():
            ro.old_values = policy(ro.seqs)[2].numpy().astype(np.float64) * mask
        rewards, kl = token_rewards(ro.scores, ro.old_logprobs, ro.ref_logprobs, mask,
                                    kl_control.coef, ro.seqs.last)
        advantages, returns = gae(rewards, ro.old_values, mask, o.gamma, o.lam)
        advantages = whiten(advantages, mask)
        stats = {"policy_loss": [], "value_loss": [], "entropy": [], "clip_fraction": [], "loss": []}
        for _ in range(o.epochs):
            order = rng.permutation(len(batch))
            for s in range(0, len(order), o.minibatch):
                i = order[s:s + o.minibatch]
                part = Sequences.__new__(Sequences)
                part.ids, part.response_mask, part.last = ro.seqs.ids[i], mask[i], ro.seqs.last[i]
                logprobs, logits, values = policy(part)
                pg, clip_fraction = ppo_policy_loss(logprobs, ro.old_logprobs[i], advantages[i], mask[i], o.clip)
                vf = ppo_value_loss(values, ro.old_values[i], returns[i], mask[i], o.value_clip)
                loss = pg + vf * o.vf_coef
                if o.ent_coef:
                    ent = masked_mean(entropy(logits), mask[i])
                    loss = loss - ent * o.ent_coef
                    ent_value = ent.item()
                else:                   # not in the loss, still logged: the same H on the host
                    ent_value = host_entropy(logits.numpy(), mask[i])
                loss.backward()
                clip_and_step(optimizer, params, o.lr)
                for name, value in (("policy_loss", pg.item()), ("value_loss", vf.item()),
                                    ("clip_fraction", clip_fraction), ("loss", loss.item()),
                                    ("entropy", ent_value)):
                    stats[name].append(value)
        kl_mean = float(kl.sum(1).mean())
        kl_control.update(kl_mean, len(batch))
        losses.append(stats["loss"][0])
        reward_means.append(float(ro.scores.mean()))
        record = {"step": it, **{k: float(np.mean(v)) for k, v in stats.items()},
                  "reward_mean": reward_means[-1], "reward_std": float(ro.scores.std()),
                  "kl": kl_mean, "kl_coef": kl_control.coef,
                  "response_length": float(mask.sum(1).mean()),
                  "elapsed_s": round(time.time() - started, 3)}
        if run_dir:
            ckpt.append_metrics(run_dir, record)
        if it == 1 or it == o.iterations or it % 10 == 0:
            log(f"ppo {it}: reward {record['reward_mean']:.3f} kl {kl_mean:.4f} "
                f"loss {record['loss']:.4f} clip {record['clip_fraction']:.3f}")
    return {"iterations": o.iterations, "losses": losses, "rewards": reward_means,
            "seconds": time.time() - started}
