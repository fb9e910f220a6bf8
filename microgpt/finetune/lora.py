"""LoRA: low-rank adapters on chosen Linear layers of the same GPT, the rest frozen.

A wrapped layer computes

    y = x W^T + b  +  s * B (A dropout(x))          A: (r, in), B: (out, r), s = alpha / r

with W and b frozen (the base) and only A and B trained. A starts as PEFT's (Kaiming
uniform with a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in))) and B at zero, so at step 0 the model
is exactly the base. use_rslora takes s = alpha / sqrt(r) (PEFT's flag of that name).

Frozen means: requires_grad=False on every base Parameter, so no gradient is computed for it
(ops.linear skips the dW matmul of a frozen weight) or stored, and the optimizer is built
over trainable_parameters() only, so it holds no moments for the base either.

Merging folds the adapter into the base weight for inference, W <- W + s B A (one matmul,
then the layer costs what a plain Linear costs); unmerge subtracts it again (equal to the
original up to float rounding). A merged layer's forward is the plain linear.

Names. A wrapped layer keeps the base's parameter names (`...q_proj.weight`, `.bias`), so
checkpoints of the base load unchanged, and adds `...q_proj.lora_A.weight` and
`...q_proj.lora_B.weight`: PEFT's names without its "base_model.model." prefix and its
adapter name (peft_io.py adds and strips them).

Targets (--lora-targets): short names of the projections. Llama family: q k v o -> q_proj
k_proj v_proj o_proj, gate up down -> gate_proj up_proj down_proj. GPT-2 family: q, k and v
live in one fused matrix, attn.c_attn, which any of them selects (PEFT's GPT-2 target
"c_attn" is the same); o -> attn.c_proj, up -> mlp.c_fc, down -> mlp.c_proj; gate does not
exist there. A target list that selects no layer is a ConfigError.

QLoRA (qlora.py): the frozen base weight held as the compression issue's QuantizedWeight
(int8 or int4, microgpt/quantize/) and run by ops.quantized_linear; the adapter above is
unchanged.
"""
import math

import numpy as np

from .. import ops
from ..errors import ConfigError
from ..nn.layers import Dropout, Linear
from ..nn.module import Module, Parameter

TARGETS = ("q", "k", "v", "o", "up", "down", "gate")
LLAMA_MODULES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
                 "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
                 "down": "mlp.down_proj"}
GPT2_MODULES = {"q": "attn.c_attn", "k": "attn.c_attn", "v": "attn.c_attn", "o": "attn.c_proj",
                "up": "mlp.c_fc", "down": "mlp.c_proj"}


class LoRALinear(Module):
    """A Linear with a frozen base (weight, bias) and a trainable rank-r adapter (lora_A, lora_B)."""

    def __init__(self, base, rank, alpha, dropout=0.0, rng=None, use_rslora=False):
        if not isinstance(rank, int) or rank < 1:
            raise ConfigError(f"LoRA rank must be a positive integer, got {rank!r}")
        # the base's layout, (out, in) or GPT-2 Conv1D's (in, out) (nn/layers.py): kept as it is
        self.weight_layout = getattr(base, "weight_layout", "out_in")
        out_features, in_features = base.weight.shape[::-1] if self.weight_layout == "in_out" else base.weight.shape
        rng = rng if rng is not None else np.random.default_rng(0)
        self.weight, self.bias = base.weight, base.bias       # the base's Parameters, frozen
        self.weight.requires_grad = False
        if self.bias is not None:
            self.bias.requires_grad = False
        dtype = base.weight.dtype
        bound = 1.0 / math.sqrt(in_features)                 # kaiming_uniform_(a=sqrt(5))
        self.lora_A = Linear(in_features, rank, bias=False, rng=rng, dtype=dtype)
        self.lora_A.weight = Parameter(rng.uniform(-bound, bound, (rank, in_features)).astype(dtype))
        self.lora_B = Linear(rank, out_features, bias=False, rng=rng, dtype=dtype)
        self.lora_B.weight = Parameter(np.zeros((out_features, rank), dtype))
        self.lora_dropout = Dropout(dropout, rng)
        self.rank, self.alpha, self.use_rslora = rank, float(alpha), bool(use_rslora)
        self.scaling = self.alpha / (math.sqrt(rank) if use_rslora else rank)
        self.merged = False
        self.quantized = None            # a quantize.layers.QuantizedWeight under QLoRA (qlora.py)

    @property
    def in_features(self):
        return self.lora_A.weight.shape[1]

    def base_forward(self, x):
        if self.quantized is not None:           # the int8 / int4 kernel; dx flows through it
            q = self.quantized
            return ops.quantized_linear(x, q.w_q, q.w_scale, q.bits, q.group, self.bias)
        return ops.linear(x, self.weight, self.bias, self.weight_layout == "in_out")

    def forward(self, x):
        y = self.base_forward(x)
        if self.merged:
            return y
        return y + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def delta(self):
        """s B A as a host array (out, in): what merging adds to W."""
        a, b = self.lora_A.weight.numpy(), self.lora_B.weight.numpy()
        return (b @ a) * np.asarray(self.scaling, a.dtype)

    def merge(self):
        if self.quantized is not None:
            raise ConfigError("cannot merge an adapter into a quantized base in place; load the "
                              "float base and apply the adapter there (sft.load_finetuned)")
        if not self.merged:
            self._add(self.delta())
            self.merged = True

    def unmerge(self):
        if self.merged:
            self._add(-self.delta())
            self.merged = False

    def _add(self, change):
        w = self.weight
        change = change.T if self.weight_layout == "in_out" else change      # into W's own layout
        w.data = w.backend.asarray(w.numpy() + change, w.dtype)


def target_modules(config, targets):
    """The module-name suffixes (e.g. "self_attn.q_proj") the short targets select, in order."""
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise ConfigError(f"LoRA targets must be some of {','.join(TARGETS)}, got "
                          f"{','.join(targets) or 'none'}")
    table = LLAMA_MODULES if config.family == "llama" else GPT2_MODULES
    missing = [t for t in targets if t not in table]
    if missing:
        raise ConfigError(f"LoRA target {missing[0]!r} matches no layer of a {config.family} "
                          f"model (it has {', '.join(sorted(table))})")
    suffixes = []
    for t in targets:
        if table[t] not in suffixes:
            suffixes.append(table[t])
    return suffixes


def _parent_and_name(model, dotted):
    parent = model
    *path, last = dotted.split(".")
    for part in path:
        parent = getattr(parent, part)
    return parent, last


def apply_lora(model, modules, rank=8, alpha=16.0, dropout=0.0, seed=0, use_rslora=False):
    """Wrap every Linear of `model` whose name ends with one of `modules` (suffixes such as
    "self_attn.q_proj", from target_modules) in a LoRALinear, and freeze every other
    parameter. Returns the wrapped names. Adapter draws come from `seed`, layer by layer."""
    rng = np.random.default_rng(seed)
    names = [name for name, module in model.named_modules()
             if isinstance(module, Linear) and name
             and any(name[:-1] == m or name[:-1].endswith("." + m) for m in modules)]
    if not names:
        raise ConfigError(f"LoRA targets {', '.join(modules)} match no Linear layer of the model")
    for p in model.parameters():
        p.requires_grad = False
    for name in names:
        parent, attr = _parent_and_name(model, name[:-1])
        setattr(parent, attr, LoRALinear(getattr(parent, attr), rank, alpha, dropout, rng, use_rslora))
    return [name[:-1] for name in names]


def lora_layers(model):
    """(name, LoRALinear) of every wrapped layer, in model order."""
    return [(name[:-1], m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


def is_adapter_name(name):
    """LoRA matrices and trained token rows (tokens.py): what the adapter file holds."""
    return ".lora_A." in name or ".lora_B." in name or ".token_adapter." in name


def trainable_parameters(model):
    """(name, Parameter) of the parameters that train: for a LoRA model, the adapters."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def adapter_state(model):
    """{our name: host array} of every adapter matrix (and trained token rows)."""
    return {n: np.array(p.numpy(), copy=True) for n, p in model.named_parameters()
            if is_adapter_name(n)}


def base_state(model):
    """{name: host array} of the base model's parameters (names as the unwrapped GPT's)."""
    return {n: np.array(p.numpy(), copy=True) for n, p in model.named_parameters()
            if not is_adapter_name(n)}


def merge(model):
    for _, layer in lora_layers(model):
        layer.merge()
    return model


def unmerge(model):
    for _, layer in lora_layers(model):
        layer.unmerge()
    return model
