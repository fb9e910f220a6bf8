"""Pipeline parallelism: the layers split into stages, micro-batches in a 1F1B schedule.

Stage s of pp holds a contiguous run of blocks (np.array_split of the n_layer blocks); the
first stage also holds the embeddings, the last the final norm, the LM head and the loss.
A batch of rows is cut into M micro-batches. Stage s receives each micro-batch's activation
(B/M, T, C) from stage s - 1, runs its blocks and sends the result to stage s + 1; in the
backward it receives the gradient of its output from s + 1 and sends the gradient of its
input to s - 1. The messages are MPI point-to-point (Isend / Recv, a tag per micro-batch
and direction).

1F1B (one forward, one backward): stage s first runs pp - s - 1 forwards (warm-up), then
alternates one forward and one backward, then drains the remaining backwards. A stage so
holds at most pp - s micro-batches' activations (GPipe, all forwards then all backwards,
holds M), and the schedule finishes in the same time as GPipe's:

    step time = (M + pp - 1) (t_f + t_b)       (t_f, t_b: one micro-batch on one stage)
    bubble    = (pp - 1) / (M + pp - 1)         the share of the step a stage sits idle

so more micro-batches shrink the bubble. The measured bubble is the time a stage spends
blocked in Recv over the step's time (`Pipeline.stats`).

Sends are non-blocking and every receive names its sender, so no order of arrival can
deadlock; a stage waits for its sends only at the end of the step, when the arrays they
read may be freed.

The loss is the weighted mean of the micro-batches' losses, w_m = kept targets of m / kept
targets of the batch, which is the whole batch's mean loss (the same targets, the same
weights); the last stage backpropagates w_m loss_m, so the gradients add up to those of
one process's loss on the whole batch.

Tied embeddings: the first stage's token table and the last stage's LM head are one
Parameter in one process. Here each of the two stages holds a copy; after the backward the
two gradients are summed between them (distributed.py, the `embed` group), so both copies
take the same update and stay equal. The gradient norm counts the first stage's copy only.
Dropout draws its masks in another order than one process (each stage draws for its own
layers, micro-batch by micro-batch), so with dropout > 0 a pipeline trains the same model
in distribution, not bit for bit.
"""
import collections
import time

import numpy as np

from .. import ops_fused
from ..tensor import Tensor, no_grad


def stage_layers(n_layer, pp):
    """[[layer indices] of each stage]: np.array_split's contiguous runs."""
    return [list(map(int, a)) for a in np.array_split(np.arange(n_layer), pp)]


def stage_parameter_names(model, stage, pp):
    """The single-process names of the parameters stage `stage` holds, in model order."""
    family, n_layer = model.config.family, model.config.n_layer
    layers = set(stage_layers(n_layer, pp)[stage])
    first, last = stage == 0, stage == pp - 1
    block_prefix = "transformer.h." if family == "gpt2" else "model.layers."
    embeddings = ("transformer.wte.", "transformer.wpe.", "model.embed_tokens.")
    head = ("transformer.ln_f.", "model.norm.", "lm_head.")
    tied = {"transformer.wte.weight", "model.embed_tokens.weight"} if model.config.tie_embeddings else set()
    names = []
    for name, _ in model.named_parameters():
        if name.startswith(block_prefix):
            owned = int(name[len(block_prefix):].split(".")[0]) in layers
        elif name.startswith(embeddings):
            owned = first or (last and name in tied)
        else:
            owned = last and name.startswith(head)
        if owned:
            names.append(name)
    return names


class Pipeline:
    """Runs this rank's stage of `model` over micro-batches (see the module docstring).

    comm: the pipeline group (rank = stage). loss: (logits, targets, ignore_index, weights)
    -> scalar Tensor, the cross-entropy (vocabulary-parallel under tensor parallelism).
    """

    def __init__(self, model, comm, micro_batches, loss=None):
        self.model, self.comm, self.micro_batches = model, comm, int(micro_batches)
        self.stage, self.pp = comm.rank, comm.size
        self.first, self.last = self.stage == 0, self.stage == self.pp - 1
        self.layers = stage_layers(model.config.n_layer, self.pp)[self.stage]
        self.loss_fn = loss or (lambda logits, y, ignore, w: ops_fused.cross_entropy(logits, y, ignore, w))
        self.stats = {"wait_s": 0.0, "step_s": 0.0, "steps": 0}

    # --- one stage's work on one micro-batch --------------------------------------------------

    def _embed(self, ids):
        m, t = self.model, ids.shape[1]
        if m.config.family == "gpt2":
            tr = m.transformer
            return tr.drop(tr.wte(ids) + tr.wpe(np.arange(t)))
        return m.model.embed_tokens(ids)

    def _blocks(self, x, t):
        m = self.model
        rotary = None if m.config.family == "gpt2" else m.rotary.slice(0, t, m.device, m.dtype)
        blocks = m.blocks
        for layer in self.layers:
            x = blocks[layer](x, rotary, None, layer)
        return x

    def _head(self, x, y, ignore_index, weights):
        m = self.model
        norm = m.transformer.ln_f if m.config.family == "gpt2" else m.model.norm
        return self.loss_fn(m.lm_head(norm(x)), y, ignore_index, weights)

    def _stage_forward(self, ids, x, y, ignore_index=-100, weights=None):
        """The stage's output: an activation, or on the last stage the loss."""
        if self.first:
            x = self._embed(ids)
        x = self._blocks(x, ids.shape[1])
        return self._head(x, y, ignore_index, weights) if self.last else x

    # --- messages ------------------------------------------------------------------------------

    def _recv(self, shape, source, tag, label="pp"):
        start = time.perf_counter()
        array = self.comm.recv(shape, self.model.dtype, source, tag, label)
        if label == "pp":                              # training steps only: the bubble
            self.stats["wait_s"] += time.perf_counter() - start
        return array

    def _activation_shape(self, ids):
        return (ids.shape[0], ids.shape[1], self.model.config.n_embd)

    # --- the schedule ----------------------------------------------------------------------------

    def forward_backward(self, x, y, weights=None):
        """Forward and backward of rows (x, y) in 1F1B over micro-batches; the gradients land in
        the stage's parameters. Returns the batch's mean loss on the last stage, else None."""
        step_start = time.perf_counter()
        M = self.micro_batches
        xs, ys = np.array_split(x, M), np.array_split(y, M)
        ws = np.array_split(weights, M) if weights is not None else [None] * M
        kept = [float(((yy != -100) * (1.0 if ww is None else ww)).sum()) for yy, ww in zip(ys, ws)]
        total = sum(kept)
        share = [k / total if total > 0 else 0.0 for k in kept]
        inflight, sends, losses = collections.deque(), [], []
        be = self.model.lm_head.weight.backend if self.last else None

        def forward(m):
            inp = None
            if not self.first:
                inp = Tensor(self._recv(self._activation_shape(xs[m]), self.stage - 1, 2 * m),
                             requires_grad=True)
            out = self._stage_forward(xs[m], inp, ys[m], -100, ws[m])
            if self.last:
                losses.append(out.item())
            else:
                sends.append(self.comm.isend(out.numpy(), self.stage + 1, 2 * m, "pp"))
            inflight.append((inp, out))

        def backward(m):
            inp, out = inflight.popleft()
            if self.last:
                out.backward(be.full((), share[m], out.dtype))
            else:
                out.backward(self._recv(out.shape, self.stage + 1, 2 * m + 1))
            if not self.first:
                sends.append(self.comm.isend(np.ascontiguousarray(inp.backend.to_numpy(inp.grad)), self.stage - 1,
                                             2 * m + 1, "pp"))

        warmup = min(self.pp - self.stage - 1, M)
        for m in range(warmup):
            forward(m)
        for m in range(M - warmup):
            forward(m + warmup)
            backward(m)
        for m in range(M - warmup, M):
            backward(m)
        self.comm.wait_all(sends)
        self.stats["step_s"] += time.perf_counter() - step_start
        self.stats["steps"] += 1
        return float(np.dot(share, losses)) if self.last else None

    def forward_only(self, x, y, ignore_index=-100):
        """The loss of rows (x, y) as one micro-batch, no graph (evaluation); the last stage
        returns it, the others None."""
        with no_grad():
            inp = None
            if not self.first:
                inp = Tensor(self._recv(self._activation_shape(x), self.stage - 1, 0, "pp_eval"))
            out = self._stage_forward(x, inp, y, ignore_index)
            if self.last:
                return out.item()
            self.comm.wait_all([self.comm.isend(out.numpy(), self.stage + 1, 0, "pp_eval")])
            return None

    def bubble(self):
        """(measured, textbook) bubble fractions over the steps run so far."""
        measured = self.stats["wait_s"] / self.stats["step_s"] if self.stats["step_s"] else float("nan")
        return measured, (self.pp - 1) / (self.micro_batches + self.pp - 1)
