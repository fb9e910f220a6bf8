"""The layers a Transformer is built from: Linear, Embedding, norms, dropout, the two MLPs.

Initialization follows GPT-2: weights ~ N(0, 0.02), biases 0, norm gains 1. The residual
output projections (c_proj, o_proj, down_proj) are scaled further by the GPT model, which
knows the depth. Every layer draws from a numpy Generator passed in, so a seed fixes a model.

init=False skips the draws: the weight matrices are np.empty, whatever the memory held. That
is for a model about to be loaded (GPT(config, init=False), which marks every parameter
uninitialized until something writes it): drawing 124M normals only to overwrite them costs
seconds, and for a large matrix the OS hands np.empty's pages over on their first write, so a
loader writing into them allocates the model once. Biases and norm gains stay 0 and 1 (a few
vectors: nothing to save).
"""
import numpy as np

from .. import ops, ops_fused
from ..errors import ConfigError
from .module import Module, Parameter

INIT_STD = 0.02


def normal_parameter(rng, shape, std, dtype, init=True, transposed=False):
    """A Parameter of N(0, std^2) draws, or (init=False) of uninitialized memory to be overwritten.
    The array is new, so the Parameter takes it as it is (Parameter(array) would copy it, and
    copying an np.empty array writes every page it was meant to leave untouched).
    transposed: the Parameter holds the transpose of `shape`, drawn as `shape` (so a seed
    gives a Linear the same map in either weight layout)."""
    if not init:
        return Parameter.wrap(np.empty(shape[::-1] if transposed else shape, dtype), requires_grad=True)
    array = rng.normal(0.0, std, size=shape).astype(dtype)
    return Parameter.wrap(np.ascontiguousarray(array.T) if transposed else array, requires_grad=True)


WEIGHT_LAYOUTS = ("out_in", "in_out")


class Linear(Module):
    """y = x W^T + b with W of shape (out_features, in_features): weight_layout "out_in",
    PyTorch's nn.Linear. weight_layout "in_out" holds the same map stored transposed,
    (in_features, out_features), y = x W + b: GPT-2's Conv1D, so a GPT-2 checkpoint's matrices
    can be used as the file holds them (interop/hf.py maps them, copying nothing). Every
    kernel reads either layout (ops.linear's w_in_out) and the gradient comes back in the
    weight's own, so the optimizer, clipping and checkpoints never ask which one it is."""

    def __init__(self, in_features, out_features, bias=True, rng=None, std=INIT_STD, dtype=np.float32,
                 init=True, weight_layout="out_in"):
        if weight_layout not in WEIGHT_LAYOUTS:
            raise ConfigError(f"weight_layout must be one of {WEIGHT_LAYOUTS}, got {weight_layout!r}")
        rng = rng if rng is not None else np.random.default_rng(0)
        self.weight_layout = weight_layout
        self.weight = normal_parameter(rng, (out_features, in_features), std, dtype, init,
                                       transposed=weight_layout == "in_out")
        self.bias = Parameter(np.zeros(out_features, dtype=dtype)) if bias else None

    def forward(self, x):
        return ops.linear(x, self.weight, self.bias, self.weight_layout == "in_out")


class Embedding(Module):
    """A table of num_embeddings vectors; forward(ids) looks rows up."""

    def __init__(self, num_embeddings, dim, rng=None, std=INIT_STD, dtype=np.float32, init=True):
        rng = rng if rng is not None else np.random.default_rng(0)
        self.weight = normal_parameter(rng, (num_embeddings, dim), std, dtype, init)

    def forward(self, ids):
        return ops_fused.embedding(ids, self.weight)


class LayerNorm(Module):
    def __init__(self, dim, bias=True, eps=1e-5, dtype=np.float32):
        self.weight = Parameter(np.ones(dim, dtype=dtype))
        self.bias = Parameter(np.zeros(dim, dtype=dtype)) if bias else None
        self.eps = eps

    def forward(self, x):
        return ops_fused.layer_norm(x, self.weight, self.bias, self.eps)


class RMSNorm(Module):
    def __init__(self, dim, eps=1e-6, dtype=np.float32):
        self.weight = Parameter(np.ones(dim, dtype=dtype))
        self.eps = eps

    def forward(self, x):
        return ops_fused.rms_norm(x, self.weight, self.eps)


class Dropout(Module):
    """Inverted dropout with masks drawn from a shared, seeded Generator; off in eval()."""

    def __init__(self, p, rng):
        self.p, self.rng = float(p), rng

    def forward(self, x):
        return ops_fused.dropout(x, self.p, self.rng, self.training)


class MLP(Module):
    """GPT-2's feed-forward block: c_proj(gelu(c_fc(x))), hidden size 4C."""

    def __init__(self, dim, hidden, bias, dropout, rng, proj_std, dtype=np.float32, init=True,
                 weight_layout="out_in"):
        self.c_fc = Linear(dim, hidden, bias, rng, dtype=dtype, init=init, weight_layout=weight_layout)
        self.c_proj = Linear(hidden, dim, bias, rng, std=proj_std, dtype=dtype, init=init,
                             weight_layout=weight_layout)
        self.dropout = Dropout(dropout, rng)

    def forward(self, x):
        return self.dropout(self.c_proj(ops.gelu(self.c_fc(x))))


class SwiGLU(Module):
    """Llama's feed-forward block: down_proj(silu(gate_proj(x)) * up_proj(x))."""

    def __init__(self, dim, hidden, bias, dropout, rng, proj_std, dtype=np.float32, init=True,
                 weight_layout="out_in"):
        self.gate_proj = Linear(dim, hidden, bias, rng, dtype=dtype, init=init, weight_layout=weight_layout)
        self.up_proj = Linear(dim, hidden, bias, rng, dtype=dtype, init=init, weight_layout=weight_layout)
        self.down_proj = Linear(hidden, dim, bias, rng, std=proj_std, dtype=dtype, init=init,
                                weight_layout=weight_layout)
        self.dropout = Dropout(dropout, rng)

    def forward(self, x):
        return self.dropout(self.down_proj(ops.silu(self.gate_proj(x)) * self.up_proj(x)))
