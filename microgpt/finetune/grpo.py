"""GRPO (Shao et al. 2024, DeepSeekMath): PPO's clipped surrogate without a value head.

One iteration draws `group` responses to each of a batch of prompts (finetune/ppo.py's
rollout, the batched engine), scores each with the reward function (a rule: the verifier of
the synthetic task, preference.rule_reward), and gives every token of a response the
group-normalized advantage of its response:

    A_i = (r_i - mean(r_group)) / (std(r_group) + eps)        (rl_common.group_advantages)

    L = mean_t [ -min(rho_t A, clip(rho_t, 1-eps, 1+eps) A) + beta KL3_t ]
    KL3_t = e^(ref_t - lp_t) - (ref_t - lp_t) - 1             (k3: >= 0, unbiased for KL(pi||ref))

The mean is over all response tokens of the batch (a token-level mean, as DAPO and TRL's
default loss_type do; the original averages per response first). A group whose rewards are
all equal has A = 0 and teaches nothing but the KL term; the share of such groups is logged.
"""
import time
from dataclasses import dataclass

import numpy as np

from ..train import checkpoint as ckpt
from .ppo import rollout
from .rl_common import Sequences, check_same_architecture, clip_and_step, group_advantages, k3_kl, \
    masked_mean, ppo_policy_loss, token_logprobs_of


@dataclass
class GRPOOptions:
    iterations: int = 20
    prompts_per_iteration: int = 8
    group: int = 8
    epochs: int = 1
    minibatch: int = 32
    lr: float = 1e-5
    clip: float = 0.2
    beta: float = 0.04
    max_new_tokens: int = 8
    temperature: float = 1.0
    seed: int = 0


def train_grpo(policy, reference, tokenizer, prompts, reward_fn, options, run_dir=None, log=print):
    """GRPO on a GPT; returns {"iterations", "losses", "rewards", "seconds"}."""
    from ..train.optim import AdamW
    o = options
    check_same_architecture(policy, reference)
    params = [(n, p) for n, p in policy.named_parameters() if p.requires_grad]
    optimizer = AdamW(params, 0.0)
    rng = np.random.default_rng(o.seed)
    started, losses, reward_means = time.time(), [], []
    for it in range(1, o.iterations + 1):
        batch = [prompts[k] for k in rng.choice(len(prompts), o.prompts_per_iteration, replace=False)]
        ro = rollout(policy, reference, tokenizer, batch, reward_fn, o.max_new_tokens,
                     o.seed * 100003 + it, it, samples=o.group, temperature=o.temperature)
        mask = ro.seqs.response_mask
        advantages = group_advantages(ro.scores, o.group)[:, None] * mask
        stats = {"loss": [], "policy_loss": [], "kl": [], "clip_fraction": []}
        for _ in range(o.epochs):
            order = rng.permutation(len(ro.scores))
            for s in range(0, len(order), o.minibatch):
                i = order[s:s + o.minibatch]
                part = Sequences.__new__(Sequences)
                part.ids, part.response_mask, part.last = ro.seqs.ids[i], mask[i], ro.seqs.last[i]
                logprobs, _ = token_logprobs_of(policy, part)
                pg, clip_fraction = ppo_policy_loss(logprobs, ro.old_logprobs[i], advantages[i], mask[i], o.clip)
                kl = masked_mean(k3_kl(logprobs, ro.ref_logprobs[i]), mask[i])
                loss = pg + kl * o.beta
                loss.backward()
                clip_and_step(optimizer, params, o.lr)
                for name, value in (("loss", loss.item()), ("policy_loss", pg.item()), ("kl", kl.item()),
                                    ("clip_fraction", clip_fraction)):
                    stats[name].append(value)
        groups = ro.scores.reshape(-1, o.group)
        losses.append(stats["loss"][0])
        reward_means.append(float(ro.scores.mean()))
        record = {"step": it, **{k: float(np.mean(v)) for k, v in stats.items()},
                  "reward_mean": reward_means[-1], "reward_std": float(ro.scores.std()),
                  "flat_groups": float((groups.std(1) == 0).mean()),
                  "response_length": float(mask.sum(1).mean()),
                  "elapsed_s": round(time.time() - started, 3)}
        if run_dir:
            ckpt.append_metrics(run_dir, record)
        if it == 1 or it == o.iterations or it % 10 == 0:
            log(f"grpo {it}: reward {record['reward_mean']:.3f} kl {record['kl']:.4f} "
                f"loss {record['loss']:.4f} flat groups {record['flat_groups']:.2f}")
    return {"iterations": o.iterations, "losses": losses, "rewards": reward_means,
            "seconds": time.time() - started}
