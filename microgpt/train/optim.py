"""AdamW with decoupled weight decay, calling the backend's fused `adamw_update` per parameter.

For each parameter p with gradient g, at optimizer step t (counting from 1):

    m = b1 m + (1 - b1) g                   first moment (exp_avg)
    v = b2 v + (1 - b2) g^2                 second moment (exp_avg_sq)
    p = p - lr (wd p + m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps))

The decay term wd * p is *decoupled* (Loshchilov & Hutter): it shrinks the weights
directly instead of being added to g, so Adam's per-coordinate scaling does not weaken it.
Which parameters decay is a rule on their names and shapes (`decays`): matrices of linear
layers do; biases and norm gains (1-D) never do; embedding tables (wte, wpe,
embed_tokens) do only with decay_embeddings=True. The whole update is one kernel call per
parameter (`adamw_update`, in place on p, m and v), fused in C/CUDA where those backends
are active.

Before the update the trainer hands in a gradient *scale* (gradient accumulation's 1/K
times the clipping factor) rather than rescaling every gradient first: the scale is
applied by one multiply by a Python scalar inside `step`.

`grad_norm` computes the global L2 norm sqrt(sum over params of sum g^2) in float64 on
the host, parameter by parameter in a fixed order, so it is deterministic.
"""
import math

import numpy as np

from .. import backends
from ..errors import CheckpointError, ConfigError

EMBEDDING_SUFFIXES = ("wte.weight", "wpe.weight", "embed_tokens.weight")


def decays(name, param, decay_embeddings=False):
    """Whether weight decay applies to this parameter."""
    if len(param.shape) < 2:
        return False                       # biases, LayerNorm/RMSNorm gains
    if name.endswith(EMBEDDING_SUFFIXES):
        return decay_embeddings
    return True


def grad_norm(params):
    """Global L2 norm of the gradients of `params` (a float; nan/inf if any grad is).

    Every per-parameter sum of squares is launched first and copied to the host after, so
    on a GPU the loop queues work and the first copy is the only wait.
    """
    sums = []
    for p in params:
        if p.grad is not None:
            b, g = backends.get(p.device), p.grad
            sums.append((b, b.sum(b.mul(g, g), tuple(range(len(g.shape))), False)))
    total = sum(float(np.asarray(b.to_numpy(s), dtype=np.float64)) for b, s in sums)
    return math.sqrt(total) if math.isfinite(total) else float("nan")


class AdamW:
    """AdamW over a model's named parameters. `step(lr, grad_scale)` updates in place."""

    def __init__(self, named_parameters, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8,
                 decay_embeddings=False):
        self.params = list(named_parameters)           # [(name, Parameter)]
        if not self.params:
            raise ConfigError("AdamW needs at least one parameter")
        names = [n for n, _ in self.params]
        if len(set(names)) != len(names):
            raise ConfigError("AdamW got duplicate parameter names")
        self.weight_decay = float(weight_decay)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.eps = float(eps)
        self.decay = {n: decays(n, p, decay_embeddings) for n, p in self.params}
        self.t = 0                                     # completed updates
        self.m, self.v = {}, {}
        for name, p in self.params:
            b = backends.get(p.device)
            self.m[name] = b.zeros(p.shape, p.dtype)
            self.v[name] = b.zeros(p.shape, p.dtype)

    def step(self, lr, grad_scale=1.0):
        """One update of every parameter that has a gradient; grads are multiplied by grad_scale."""
        self.t += 1
        for name, p in self.params:
            if p.grad is None:
                continue
            b = backends.get(p.device)
            g = p.grad
            if grad_scale != 1.0:
                g = b.mul(g, float(grad_scale))            # a Python scalar broadcasts
            wd = self.weight_decay if self.decay[name] else 0.0
            b.adamw_update(p.data, g, self.m[name], self.v[name], float(lr), self.beta1,
                           self.beta2, self.eps, wd, self.t)

    def zero_grad(self):
        for _, p in self.params:
            p.zero_grad()

    # --- saving and restoring ---------------------------------------------------------------

    def state_tensors(self):
        """{"exp_avg.NAME": array, "exp_avg_sq.NAME": array} on the host, for safetensors."""
        out = {}
        for name, p in self.params:
            b = backends.get(p.device)
            out[f"exp_avg.{name}"] = np.ascontiguousarray(b.to_numpy(self.m[name]))
            out[f"exp_avg_sq.{name}"] = np.ascontiguousarray(b.to_numpy(self.v[name]))
        return out

    def load_state_tensors(self, tensors, t):
        """Restore moments saved by state_tensors and the update count t."""
        expected = {f"{kind}.{n}" for n, _ in self.params for kind in ("exp_avg", "exp_avg_sq")}
        if set(tensors) != expected:
            missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
            raise CheckpointError(f"optimizer state does not match the model: missing "
                                  f"{missing[:4]}, unexpected {extra[:4]}")
        for name, p in self.params:
            b = backends.get(p.device)
            for kind, store in (("exp_avg", self.m), ("exp_avg_sq", self.v)):
                array = tensors[f"{kind}.{name}"]
                if tuple(array.shape) != tuple(p.shape) or array.dtype != np.dtype(p.dtype):
                    raise CheckpointError(f"optimizer {kind} of {name}: {array.dtype}{array.shape} "
                                          f"does not match the parameter {p.dtype}{tuple(p.shape)}")
                store[name] = b.asarray(array, array.dtype)
        if not isinstance(t, int) or t < 0:
            raise CheckpointError(f"optimizer step count must be a non-negative int, got {t!r}")
        self.t = t
