"""What the alignment stages share: their losses, GAE, sequence log-probs, batches, rollouts.

Every loss here is built from the autograd ops (ops.py, ops_fused.py), so each one's gradient
is those ops' gradients; tests/test_align_losses.py checks the values and gradients against
PyTorch autograd of the same formulas and TRL. Notation: sigma the logistic function,
log sigma(x) = min(x, 0) - log(1 + e^-|x|) (stable for any x).

    Bradley-Terry (reward model)  L = mean -log sigma(r_c - r_r)
    DPO                           L = mean -log sigma(beta [(lp_c - ref_c) - (lp_r - ref_r)])
                                  lp = sum of log pi(token) over the response tokens
    PPO clipped surrogate         L = mean_t -min(rho_t A_t, clip(rho_t, 1-eps, 1+eps) A_t),
                                  rho_t = exp(lp_t - lp_old_t)
    PPO clipped value loss        L = 1/2 mean_t max((V_t - R_t)^2, (V_old_t + clip(V_t - V_old_t,
                                  -eps_v, eps_v) - R_t)^2)
    entropy                       H_t = -sum_v p_v log p_v
    k3 KL (GRPO)                  KL_t ~= e^(ref_t - lp_t) - (ref_t - lp_t) - 1   (>= 0, unbiased)

min/max/clip are taken by choosing, per element on the host, which branch is active: the
active branch's term carries the gradient and an inactive or clipped one is a constant, which
is exactly the (sub)gradient PyTorch's torch.min/torch.clamp give (where the two branches are
equal the gradients are too, so ties do not matter).

GAE (Schulman et al. 2016) over one response of T tokens, V_T = 0 after the last:
    delta_t = r_t + gamma V_{t+1} - V_t,   A_t = sum_{l>=0} (gamma lambda)^l delta_{t+l}
computed backwards, A_t = delta_t + gamma lambda A_{t+1}; returns R_t = A_t + V_t.
"""
import numpy as np

from .. import ops
from ..errors import MicrogptError
from ..ops_fused import log_softmax, token_logprobs
from ..tensor import Tensor

IGNORE = -100


class AlignmentError(MicrogptError, ValueError):
    """Bad alignment input: what is wrong and what to do (named step, file or checkpoint)."""


def const(values, like):
    """A constant Tensor of like's dtype and device (no gradient)."""
    return Tensor(np.asarray(values, dtype=like.dtype), device=like.device)


def log_sigmoid(x):
    """log sigma(x) = min(x, 0) - log(1 + exp(-|x|)), stable for any x.

    The branch (x >= 0 or not) is chosen on the host and enters as constants: min(x, 0) =
    x (1 - m) and |x| = x s, with m = [x >= 0] and s = 2m - 1. Written with relu instead,
    the kinks of min and |.| at 0 would give a gradient of 0 at x = 0, where the true one
    is 1/2 -- and x = 0 is exactly DPO's first step (policy == reference)."""
    m = (x.numpy() >= 0).astype(np.float64)
    return x * const(1.0 - m, x) - ops.log(ops.exp(-(x * const(2.0 * m - 1.0, x))) + 1.0)


def masked_mean(x, mask):
    """sum(x * mask) / sum(mask), mask a host array of 0/1 (at least one 1)."""
    mask = np.asarray(mask, dtype=np.float64)
    return (x * const(mask, x)).sum() * (1.0 / max(float(mask.sum()), 1.0))


# --- the losses ------------------------------------------------------------------------------

def bradley_terry_loss(chosen_rewards, rejected_rewards):
    """mean -log sigma(r_c - r_r) over the pairs; (B,) Tensors."""
    return -log_sigmoid(chosen_rewards - rejected_rewards).mean()


def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta):
    """(loss, stats): policy_* (B,) Tensors of sequence log-probs, reference_* (B,) arrays.

    stats: the implicit rewards beta (lp - ref) of chosen and rejected, their margin and
    the share of pairs whose chosen reward is higher (as TRL logs them)."""
    ref_c = const(reference_chosen, policy_chosen)
    ref_r = const(reference_rejected, policy_chosen)
    logits = (policy_chosen - ref_c) - (policy_rejected - ref_r)
    loss = -log_sigmoid(logits * float(beta)).mean()
    chosen = beta * (policy_chosen.numpy() - np.asarray(reference_chosen))
    rejected = beta * (policy_rejected.numpy() - np.asarray(reference_rejected))
    stats = {"reward_chosen": float(chosen.mean()), "reward_rejected": float(rejected.mean()),
             "margin": float((chosen - rejected).mean()),
             "accuracy": float((chosen > rejected).mean())}
    return loss, stats


def ppo_policy_loss(logprobs, old_logprobs, advantages, mask, clip):
    """(loss, clip fraction): the clipped surrogate, a masked mean over tokens.

    logprobs (B, T) Tensor; old_logprobs, advantages, mask (B, T) host arrays."""
    old, adv = np.asarray(old_logprobs, np.float64), np.asarray(advantages, np.float64)
    mask = np.asarray(mask, np.float64)
    ratio = ops.exp(logprobs - const(old, logprobs))
    r = ratio.numpy().astype(np.float64)
    clipped = np.clip(r, 1.0 - clip, 1.0 + clip)
    unclipped_active = r * adv <= clipped * adv          # min(.) picks the unclipped term
    inside = (r >= 1.0 - clip) & (r <= 1.0 + clip)       # the clipped term moves with r here
    live = unclipped_active | inside
    per_token = -(ratio * const(adv * live, ratio)) - const(~live * clipped * adv, ratio)
    clip_fraction = float(((~inside) * mask).sum() / max(mask.sum(), 1.0))
    return masked_mean(per_token, mask), clip_fraction


def ppo_value_loss(values, old_values, returns, mask, clip):
    """1/2 masked mean of max((V - R)^2, (V_old + clip(V - V_old) - R)^2)."""
    old, ret = np.asarray(old_values, np.float64), np.asarray(returns, np.float64)
    v = values.numpy().astype(np.float64)
    v_clipped = old + np.clip(v - old, -clip, clip)
    use_clipped = (v_clipped - ret) ** 2 > (v - ret) ** 2
    moving = ~use_clipped | (np.abs(v - old) <= clip)    # the chosen term still depends on V
    diff = values - const(ret, values)
    per_token = diff * diff * const(moving, values) + const(~moving * (v_clipped - ret) ** 2, values)
    return masked_mean(per_token, mask) * 0.5


def entropy(logits):
    """(B, T) Tensor: -sum_v p log p of each position's distribution."""
    logp = log_softmax(logits)
    return -(ops.exp(logp) * logp).sum(axis=-1)


def k3_kl(logprobs, reference_logprobs):
    """(B, T) Tensor: e^(ref - lp) - (ref - lp) - 1, the k3 estimator of KL(pi || ref)."""
    delta = const(reference_logprobs, logprobs) - logprobs
    return ops.exp(delta) - delta - 1.0


def gae(rewards, values, mask, gamma, lam):
    """(advantages, returns), each (B, T): GAE over each row's masked tokens (contiguous,
    the response); values after a row's last token count as 0."""
    rewards, values = np.asarray(rewards, np.float64), np.asarray(values, np.float64)
    mask = np.asarray(mask, bool)
    advantages = np.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        running, next_value = 0.0, 0.0
        for t in range(rewards.shape[1] - 1, -1, -1):
            if not mask[b, t]:
                continue
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            running = delta + gamma * lam * running
            advantages[b, t] = running
            next_value = values[b, t]
    return advantages, (advantages + values) * mask


def whiten(x, mask, shift_mean=True):
    """(x - mean) / std over the masked entries (InstructGPT's advantage whitening)."""
    x, mask = np.asarray(x, np.float64), np.asarray(mask, bool)
    mean, std = x[mask].mean(), x[mask].std()
    out = (x - mean) / (std + 1e-8) if shift_mean else x / (std + 1e-8)
    return out * mask


def group_advantages(rewards, group_size, eps=1e-4):
    """GRPO: (r - mean of its group) / (std of its group + eps); rewards in groups of G."""
    r = np.asarray(rewards, np.float64).reshape(-1, group_size)
    return ((r - r.mean(1, keepdims=True)) / (r.std(1, keepdims=True) + eps)).reshape(-1)


# --- sequences: prompt + response, right-padded ------------------------------------------------

class Sequences:
    """A batch of prompt + response id lists, right-padded to one length.

    ids (B, L); response_mask (B, L-1) marks the positions whose *target* ids[:, 1:] is a
    response token, so token_logprobs(logits[:, :-1], targets) lines up with it; last (B,)
    the index of each row's last real token (a reward head reads it)."""

    def __init__(self, prompts, responses, pad_id=0):
        rows = [list(p) + list(r) for p, r in zip(prompts, responses)]
        length = max(len(r) for r in rows)
        self.ids = np.full((len(rows), length), pad_id, np.int64)
        self.response_mask = np.zeros((len(rows), length - 1), bool)
        for b, (p, r) in enumerate(zip(prompts, responses)):
            self.ids[b, :len(p) + len(r)] = rows[b]
            self.response_mask[b, len(p) - 1:len(p) + len(r) - 1] = True
        self.last = np.array([len(r) - 1 for r in rows], np.int64)

    @property
    def targets(self):
        return np.where(self.response_mask, self.ids[:, 1:], IGNORE)


def token_logprobs_of(model, seqs, with_hidden=False):
    """(B, L-1) Tensor of log pi(target) (0 off the response), the logits, [hidden]."""
    out = model(seqs.ids[:, :-1], return_hidden=with_hidden)
    logits = out[0]
    logprobs = token_logprobs(logits, seqs.targets, IGNORE)
    return (logprobs, logits, out[2]) if with_hidden else (logprobs, logits)


def sequence_logprobs(model, seqs):
    """(B,) Tensor: the sum of log pi over each row's response tokens."""
    logprobs, _ = token_logprobs_of(model, seqs)
    return logprobs.sum(axis=1)


def reference_logprobs(model, seqs, batch_size=32):
    """(B, L-1) float64 host array of a frozen model's token log-probs, in batches."""
    from ..tensor import no_grad
    out = []
    with no_grad():
        for start in range(0, len(seqs.ids), batch_size):
            part = _rows(seqs, slice(start, start + batch_size))
            out.append(token_logprobs_of(model, part)[0].numpy().astype(np.float64))
    return np.concatenate(out)


def _rows(seqs, index):
    part = Sequences.__new__(Sequences)
    part.ids, part.response_mask, part.last = seqs.ids[index], seqs.response_mask[index], seqs.last[index]
    return part


def check_same_architecture(policy, reference, what="reference"):
    """A reference (or reward) model must be the policy's shape: same config and parameters."""
    a, b = policy.config.to_dict(), reference.config.to_dict()
    differ = [k for k in a if a[k] != b.get(k)]
    if differ:
        raise AlignmentError(f"the {what} model does not match the policy's architecture "
                             f"({', '.join(f'{k}: {a[k]} vs {b.get(k)}' for k in differ[:4])}); "
                             f"give the checkpoint the policy was fine-tuned from")


def check_same_tokenizer(policy_tokenizer, other_tokenizer, what="reward model"):
    """Ids mean the same text only when the tokenizers are the same."""
    probe = "a=3, b=7. What is b? <|im_start|>assistant\n7<|im_end|>"
    same = (policy_tokenizer.vocab_size == other_tokenizer.vocab_size
            and policy_tokenizer.encode(probe, allowed_special="all")
            == other_tokenizer.encode(probe, allowed_special="all"))
    if not same:
        raise AlignmentError(f"the {what}'s tokenizer differs from the policy's (vocabulary "
                             f"{other_tokenizer.vocab_size} vs {policy_tokenizer.vocab_size}); "
                             f"train the {what} from the policy's checkpoint")


def check_finite(values, what, step):
    values = np.asarray(values, np.float64)
    if not np.all(np.isfinite(values)):
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise AlignmentError(f"step {step}: {what} {bad} is {values[bad]} (not finite); nothing "
                             f"was trained on it. Fix the verifier so it returns a finite number")


def clip_and_step(optimizer, params, lr, max_norm=1.0):
    """Clip the global gradient norm to max_norm and take one AdamW step; the norm."""
    from ..train.optim import grad_norm
    norm = grad_norm([p for _, p in params])
    if not np.isfinite(norm):
        optimizer.zero_grad()
        return norm
    optimizer.step(lr, min(1.0, max_norm / (norm + 1e-6)))
    optimizer.zero_grad()
    return norm
