"""The reward model: a GPT backbone and a scalar head on the last real token, Bradley-Terry.

    r(prompt, response) = w . h_last + b       h_last = GPT.forward(..., return_hidden=True)'s
                                               final-norm output at the row's last non-pad token
    L = mean over pairs of -log sigma(r(x, y_chosen) - r(x, y_rejected))

Not a forked GPT: RewardModel holds the GPT (its LM head unused) and a Linear(C, 1), so it
loads any policy checkpoint as its starting point (InstructGPT starts the RM from the SFT
model). Saved as a checkpoint of the backbone (config.json, model.safetensors, tokenizer)
plus reward_head.safetensors beside it; load_reward_model reads both, and refuses a directory
without the head.

train_reward_model runs epochs of shuffled minibatches of pairs (each pair's two sequences in
one forward), logs loss / accuracy / margin per step to metrics.jsonl and reports the pair
accuracy on held-out pairs: the share whose chosen response scores higher.
"""
import os
import time
from dataclasses import dataclass

import numpy as np

from ..nn.layers import Linear
from ..nn.module import Module
from ..tensor import no_grad
from ..train import checkpoint as ckpt
from .rl_common import AlignmentError, Sequences, bradley_terry_loss, clip_and_step

HEAD_FILE = "reward_head.safetensors"


class RewardModel(Module):
    def __init__(self, gpt, seed=0):
        self.gpt = gpt
        rng = np.random.default_rng(seed)
        self.head = Linear(gpt.config.n_embd, 1, bias=True, rng=rng, std=1.0 / np.sqrt(gpt.config.n_embd),
                           dtype=gpt.dtype)

    @property
    def config(self):
        return self.gpt.config

    def forward(self, ids, last):
        """ids (B, T), last (B,) index of each row's last real token -> rewards (B,) Tensor."""
        _, _, hidden = self.gpt(ids, return_hidden=True)
        rows = hidden[np.arange(len(last)), np.asarray(last, np.int64)]     # (B, C)
        return self.head(rows).reshape(len(last))

    def score(self, seqs, batch_size=32):
        """Rewards (B,) as a host array, no graph (for PPO's rollouts and evaluation)."""
        out = []
        was_training = self.training
        self.eval()
        with no_grad():
            for s in range(0, len(seqs.ids), batch_size):
                ids, last = seqs.ids[s:s + batch_size], seqs.last[s:s + batch_size]
                out.append(self(ids[:, :int(last.max()) + 1], last).numpy().astype(np.float64))
        self.train(was_training)
        return np.concatenate(out)


def pair_sequences(pairs):
    """Sequences of [chosen_0, rejected_0, chosen_1, ...] from EncodedPair objects."""
    prompts, responses = [], []
    for p in pairs:
        prompts += [p.prompt, p.prompt]
        responses += [p.chosen, p.rejected]
    return Sequences(prompts, responses)


def pair_accuracy(model, pairs, batch_size=32):
    """Share of pairs whose chosen response gets the higher reward."""
    if not pairs:
        return float("nan")
    rewards = model.score(pair_sequences(pairs), batch_size * 2)
    return float((rewards[0::2] > rewards[1::2]).mean())


@dataclass
class RewardOptions:
    epochs: int = 1
    batch_size: int = 16            # pairs per step
    lr: float = 1e-4
    weight_decay: float = 0.0
    seed: int = 0
    max_steps: int = 0              # 0 = the epochs decide


def train_reward_model(model, train_pairs, val_pairs, options, run_dir=None, log=print):
    """Bradley-Terry training; returns {"steps", "train_loss", "val_accuracy", "seconds"}."""
    from ..train.optim import AdamW
    if not train_pairs:
        raise AlignmentError("no preference pair left to train the reward model on")
    o = options
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = AdamW(params, o.weight_decay)
    rng = np.random.default_rng(o.seed)
    step, started, loss_value = 0, time.time(), float("nan")
    model.train()
    for _ in range(o.epochs):
        order = rng.permutation(len(train_pairs))
        for s in range(0, len(order), o.batch_size):
            batch = [train_pairs[k] for k in order[s:s + o.batch_size]]
            seqs = pair_sequences(batch)
            rewards = model(seqs.ids, seqs.last)
            loss = bradley_terry_loss(rewards[0::2], rewards[1::2])
            loss.backward()
            norm = clip_and_step(optimizer, params, o.lr)
            step += 1
            loss_value = loss.item()
            r = rewards.numpy()
            record = {"step": step, "loss": loss_value, "accuracy": float((r[0::2] > r[1::2]).mean()),
                      "margin": float((r[0::2] - r[1::2]).mean()), "grad_norm": norm,
                      "elapsed_s": round(time.time() - started, 3)}
            if run_dir:
                ckpt.append_metrics(run_dir, record)
            if o.max_steps and step >= o.max_steps:
                break
        if o.max_steps and step >= o.max_steps:
            break
    accuracy = pair_accuracy(model, val_pairs, o.batch_size)
    if run_dir:
        ckpt.append_metrics(run_dir, {"step": step, "val_accuracy": accuracy})
    log(f"reward model: {step} steps, last loss {loss_value:.4f}, held-out pair accuracy "
        f"{accuracy:.3f} ({len(val_pairs)} pairs)")
    return {"steps": step, "train_loss": loss_value, "val_accuracy": accuracy,
            "seconds": time.time() - started}


def save_reward_model(run_dir, model, tokenizer, step):
    weights = {"weight": model.head.weight.numpy(), "bias": model.head.bias.numpy()}
    checkpoint = ckpt.Checkpoint(step, model.gpt.config.to_dict(), model.gpt.state_dict(), tokenizer,
                                 extra_files={HEAD_FILE: lambda p: ckpt.save_tensors(p, weights)})
    return ckpt.save(run_dir, checkpoint, keep=1)


def load_reward_model(path, device="cpu"):
    """(RewardModel, tokenizer) of a directory save_reward_model wrote."""
    resolved = ckpt.resolve(path)
    head = os.path.join(resolved, HEAD_FILE)
    if not os.path.isfile(head):
        raise AlignmentError(f"{path}: not a reward model (no {HEAD_FILE}); train one with "
                             f"`microgpt finetune reward`")
    gpt, tokenizer, _ = ckpt.load_model(resolved, device)
    model = RewardModel(gpt)
    tensors = ckpt.load_tensors(head)
    model.head.weight = type(model.head.weight)(tensors["weight"])
    model.head.bias = type(model.head.bias)(tensors["bias"])
    return model, tokenizer

