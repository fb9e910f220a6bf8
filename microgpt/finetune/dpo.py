"""Direct preference optimization (Rafailov et al. 2023): preferences without a reward model.

    L = mean over pairs -log sigma(beta [(lp_c - ref_c) - (lp_r - ref_r)])

lp = sum of log pi_theta over the response tokens only (rl_common.Sequences masks the
prompt), ref the same under the frozen reference (the SFT model), computed once before the
first step and cached: the reference never changes, so each step is one forward and backward
of the policy over the pair batch (chosen and rejected rows interleaved in one batch).
beta (lp - ref) is the implicit reward; each step logs both rewards' means, their margin and
the share of pairs ranked right, beside the loss, to metrics.jsonl.

Full fine-tuning or LoRA (lora_rank > 0: finetune/lora.py wraps q,v by default, and the
merged model is what is saved).
"""
import time
from dataclasses import dataclass

import numpy as np

from ..train import checkpoint as ckpt
from .rl_common import AlignmentError, check_same_architecture, clip_and_step, dpo_loss, reference_logprobs, \
    sequence_logprobs
from .reward import pair_sequences


@dataclass
class DPOOptions:
    beta: float = 0.1
    lr: float = 1e-5
    epochs: int = 1
    batch_size: int = 8             # pairs per step
    max_steps: int = 0
    weight_decay: float = 0.0
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: str = "q,v"
    seed: int = 0

    def __post_init__(self):
        if not self.beta > 0:
            raise AlignmentError(f"beta must be > 0, got {self.beta}")


def cached_reference(reference, pairs, batch_size=32):
    """(ref_chosen, ref_rejected): (N,) float64 sequence log-probs of every pair, once."""
    seqs = pair_sequences(pairs)
    token = reference_logprobs(reference, seqs, batch_size)
    total = token.sum(axis=1)
    return total[0::2], total[1::2]


def train_dpo(policy, reference, pairs, options, run_dir=None, log=print, reference_cache=None):
    """DPO on `pairs` (EncodedPair); returns {"steps", "losses", "seconds", "last"}."""
    from . import lora as lora_lib
    from ..train.optim import AdamW
    o = options
    check_same_architecture(policy, reference)
    started = time.time()
    ref_c, ref_r = reference_cache if reference_cache is not None else cached_reference(reference, pairs)
    if len(ref_c) != len(pairs):
        raise AlignmentError(f"the reference cache holds {len(ref_c)} pairs, the data {len(pairs)}")
    if o.lora_rank:
        lora_lib.apply_lora(policy, lora_lib.target_modules(policy.config, o.lora_targets),
                            o.lora_rank, o.lora_alpha, 0.0, seed=o.seed)
    params = lora_lib.trainable_parameters(policy)
    optimizer = AdamW(params, o.weight_decay)
    rng = np.random.default_rng(o.seed)
    step, losses, stats = 0, [], {}
    policy.train()
    for _ in range(o.epochs):
        order = rng.permutation(len(pairs))
        for s in range(0, len(order), o.batch_size):
            index = order[s:s + o.batch_size]
            seqs = pair_sequences([pairs[k] for k in index])
            lp = sequence_logprobs(policy, seqs)
            loss, stats = dpo_loss(lp[0::2], lp[1::2], ref_c[index], ref_r[index], o.beta)
            loss.backward()
            norm = clip_and_step(optimizer, params, o.lr)
            step += 1
            losses.append(loss.item())
            record = {"step": step, "loss": losses[-1], **stats, "grad_norm": norm,
                      "elapsed_s": round(time.time() - started, 3)}
            if run_dir:
                ckpt.append_metrics(run_dir, record)
            if o.max_steps and step >= o.max_steps:
                break
        if o.max_steps and step >= o.max_steps:
            break
    if o.lora_rank:
        lora_lib.merge(policy)              # the saved policy is the merged model
    log(f"dpo: {step} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}, accuracy "
        f"{stats.get('accuracy', float('nan')):.2f}, margin {stats.get('margin', float('nan')):.3f}")
    return {"steps": step, "losses": losses, "seconds": time.time() - started, "last": stats}
