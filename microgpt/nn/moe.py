"""The mixture-of-experts MLP: a router picks k of E SwiGLU experts for every token.

    probs   = softmax(x W_router^T)                  (N, E), N = B * T tokens
    chosen  = top-k(probs)                           (N, k) expert ids, ties to the lower id
    weights = probs[chosen]                          (N, k), renormalized to sum 1 when
              / sum(probs[chosen])                   norm_topk_prob (Mixtral always; Qwen3-MoE
                                                     by its config flag): softmax over the top-k
    out[n]  = sum_j weights[n, j] expert_{chosen[n, j]}(x[n])   [+ shared_expert(x[n])]
    expert_e(x) = down_e(silu(gate_e x) * up_e x)    Llama's SwiGLU, one per expert

Dropless routing: every (token, expert) pair is computed, however uneven the load; there is
no capacity factor and no token is ever dropped (the dropped-token count in the router
statistics is 0 by construction and is reported to say so). The N * k pairs are sorted by
expert into R = N * k rows, so each expert's rows are contiguous (the routing plan:
token_index, offsets), and three kernels run all experts at once (ops_moe.py):
moe_permute (gather tokens into rows), grouped_linear (each expert's matrices over its own
rows, 3 calls per layer), moe_combine (the weighted sum back into tokens). forward_loop is
the same layer as a per-expert Python loop over the ordinary ops, as transformers and
minimind write it: the first rung, kept for tests and benchmarks/bench_moe.py.

Gradients: top-k is piecewise constant, so the plan gets none; the router learns through
the weights (a gather of its softmax, differentiable), and through the auxiliary losses:

    aux (Switch Transformer / Mixtral): E * sum_e f_e P_e, f_e = (tokens sent to e) / N,
        P_e = mean_n probs[n, e]. It is k at a perfectly even load and grows as the router
        concentrates; f_e is a count (no gradient), P_e carries it.
    z-loss (ST-MoE): mean_n logsumexp(router logits_n)^2, which keeps the logits small.

GPT.forward adds router_aux_loss_coef * aux + router_z_loss_coef * z, each averaged over the
MoE layers, to the training loss. After each forward the layer keeps `stats` (tokens per
expert, aux, z, dropped = 0) for the trainer's metrics.jsonl. A router whose probabilities are
not finite raises RouterError (the trainer adds the step).

Parameters, named as Qwen3-MoE's checkpoints name them (interop maps Mixtral's):
    gate.weight            (E, C)        the router (no bias)
    experts.gate_proj      (E, I, C)     stacked per expert, each (out, in) as nn.Linear
    experts.up_proj        (E, I, C)
    experts.down_proj      (E, C, I)
    shared_expert.*        a SwiGLU of hidden n_shared_experts * I, seen by every token
"""
import numpy as np

from .. import ops, ops_fused, ops_moe
from ..errors import MicrogptError
from ..tensor import Tensor
from .layers import INIT_STD, Linear, SwiGLU, normal_parameter
from .module import Module


class RouterError(MicrogptError, FloatingPointError):
    """The router's probabilities are NaN or infinite: training diverged."""


class Experts(Module):
    """E SwiGLU experts' weights, stacked: one (E, out, in) Parameter per projection."""

    def __init__(self, n_experts, dim, hidden, rng, proj_std, dtype=np.float32, init=True):
        self.gate_proj = normal_parameter(rng, (n_experts, hidden, dim), INIT_STD, dtype, init)
        self.up_proj = normal_parameter(rng, (n_experts, hidden, dim), INIT_STD, dtype, init)
        self.down_proj = normal_parameter(rng, (n_experts, dim, hidden), proj_std, dtype, init)


def routing_plan(chosen, n_experts):
    """(token_index (R,), offsets (E + 1,), order (R,)) of the top-k choices chosen (N, k):
    the pairs sorted by expert (stable, so each expert's rows keep token order); row r is
    pair order[r] of the flattened (N * k) choices, token order[r] // k."""
    k = chosen.shape[1]
    flat = chosen.reshape(-1)
    order = np.argsort(flat, kind="stable")
    counts = np.bincount(flat, minlength=n_experts)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return (order // k).astype(np.int64), offsets, order.astype(np.int64)


def top_k(probs, k):
    """(N, k) expert ids of the k largest probabilities per row, largest first; equal values
    go to the lower id (a stable sort)."""
    return np.argsort(-probs, axis=-1, kind="stable")[:, :k]


class MoEMLP(Module):
    """Routed SwiGLU experts (see the module docstring); forward(x (B, T, C)) -> (B, T, C)."""

    def __init__(self, config, rng, proj_std, dtype=np.float32, init=True):
        c, e = config.n_embd, config.n_experts
        self.n_experts, self.top_k = e, config.n_experts_per_token
        self.norm_topk_prob = config.moe_norm_topk_prob
        self.gate = Linear(c, e, bias=False, rng=rng, dtype=dtype, init=init)
        self.experts = Experts(e, c, config.moe_hidden, rng, proj_std, dtype, init)
        self.shared_expert = (SwiGLU(c, config.n_shared_experts * config.moe_hidden, False, 0.0, rng, proj_std,
                                     dtype, init) if config.n_shared_experts else None)
        self.stats, self.aux_loss, self.z_loss = None, None, None

    def route(self, flat):
        """(probs (N, E), logits, chosen (N, k) host ids, weights (N, k) Tensor) for tokens flat (N, C)."""
        logits = self.gate(flat)
        probs = ops_fused.softmax(logits)
        host = probs.numpy()
        if not np.all(np.isfinite(host)):
            raise RouterError(f"the MoE router's probabilities are NaN or infinite "
                              f"({int(np.sum(~np.isfinite(host)))} of {host.size}): training diverged; "
                              f"lower the learning rate or raise router_z_loss_coef")
        chosen = top_k(host, self.top_k)
        n = host.shape[0]
        weights = probs[np.arange(n)[:, None], chosen]                   # (N, k), differentiable
        if self.norm_topk_prob:
            weights = weights / weights.sum(axis=-1, keepdims=True)
        return probs, logits, chosen, weights

    def forward(self, x):
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        n = flat.shape[0]
        probs, logits, chosen, weights = self.route(flat)
        token_index, offsets, order = routing_plan(chosen, self.n_experts)
        row_weights = weights.reshape(-1)[order]                         # (R,), in row order
        rows = ops_moe.moe_permute(flat, token_index)
        ex = self.experts
        hidden = (ops.silu(ops_moe.grouped_linear(rows, ex.gate_proj, offsets))
                  * ops_moe.grouped_linear(rows, ex.up_proj, offsets))
        out = ops_moe.moe_combine(ops_moe.grouped_linear(hidden, ex.down_proj, offsets), row_weights,
                                  token_index, n)
        if self.shared_expert is not None:
            out = out + self.shared_expert(flat)
        self._record(probs, logits, np.diff(offsets), n)
        return out.reshape(*shape)

    def forward_loop(self, x):
        """The same layer as a Python loop over the experts with the ordinary ops (gather the
        expert's tokens, three linears, scatter back): the first rung of forward."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        n = flat.shape[0]
        probs, logits, chosen, weights = self.route(flat)
        out, ex = None, self.experts
        for e in range(self.n_experts):
            tokens, slot = np.nonzero(chosen == e)
            if tokens.size == 0:
                continue
            xe = flat[tokens]
            h = ops.silu(ops.linear(xe, ex.gate_proj[e])) * ops.linear(xe, ex.up_proj[e])
            contribution = ops_moe.moe_combine(ops.linear(h, ex.down_proj[e]), weights[tokens, slot],
                                               tokens.astype(np.int64), n)
            out = contribution if out is None else out + contribution
        if self.shared_expert is not None:
            out = out + self.shared_expert(flat)
        self._record(probs, logits, np.bincount(chosen.reshape(-1), minlength=self.n_experts), n)
        return out.reshape(*shape)

    def _record(self, probs, logits, counts, n):
        """The router statistics, and (training) the auxiliary losses as graph nodes."""
        self.stats = {"tokens_per_expert": [int(c) for c in counts], "dropped_tokens": 0}
        self.aux_loss = self.z_loss = None
        if not self.training:
            return
        fraction = Tensor(np.asarray(counts, np.float64) / n, dtype=probs.dtype, device=probs.device)   # f_e
        mean_prob = probs.sum(axis=0) * (1.0 / n)                            # P_e
        self.aux_loss = (mean_prob * fraction).sum() * float(self.n_experts)
        lse = (logits - ops_fused.log_softmax(logits))[:, 0]                 # logsumexp per token
        self.z_loss = (lse * lse).sum() * (1.0 / n)
        self.stats.update(aux_loss=float(self.aux_loss.numpy()), z_loss=float(self.z_loss.numpy()))
