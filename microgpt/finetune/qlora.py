"""QLoRA-style: LoRA over a frozen base stored in int8, dequantized on the fly.

Per output channel (row o of W, shape (out, in)), symmetric:

    scale_o = max_c |W[o, c]| / 127          (1 where the row is all zeros)
    q[o, c] = round(W[o, c] / scale_o)       int8 in [-127, 127]
    W~[o, c] = q[o, c] * scale_o             |W - W~| <= scale_o / 2 per element

The base then takes 1 byte per weight plus 4 per row instead of 4 per weight. Each forward
rebuilds W~ in float (a temporary the size of one layer) and runs the ordinary linear; the
base is frozen, so no gradient reaches W~, while dx flows through it to the layers below and
the adapters train as in plain LoRA. (The quantization issue's int8/int4 matmul kernels,
which would skip the temporary, can replace dequantize() when they land.)

quantize_model converts every frozen Linear inside the Transformer blocks (LoRA bases and
plain ones alike); embeddings, norms and the LM head stay in float, as in QLoRA.
"""
import numpy as np

from .. import ops
from ..nn.layers import Linear
from ..nn.module import Module
from ..tensor import Tensor
from .lora import LoRALinear, _parent_and_name


class Int8Weight:
    """A weight matrix as int8 codes and one float32 scale per row."""

    def __init__(self, codes, scales):
        self.codes, self.scales = codes, scales

    @classmethod
    def quantize(cls, weight):
        weight = np.asarray(weight, np.float32)
        peak = np.abs(weight).max(axis=1)
        scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        codes = np.clip(np.rint(weight / scales[:, None]), -127, 127).astype(np.int8)
        return cls(codes, scales)

    @property
    def shape(self):
        return self.codes.shape

    @property
    def nbytes(self):
        return self.codes.nbytes + self.scales.nbytes

    def dequantize(self, backend=None, dtype=np.float32):
        host = (self.codes.astype(np.float32) * self.scales[:, None]).astype(dtype)
        return host if backend is None else backend.asarray(host, dtype)


class Int8Linear(Module):
    """A frozen Linear whose weight is an Int8Weight (its bias, if any, a frozen Parameter)."""

    def __init__(self, linear):
        self.quantized = Int8Weight.quantize(out_in(linear))
        self.bias = linear.bias
        if self.bias is not None:
            self.bias.requires_grad = False

    def forward(self, x):
        weight = Tensor.wrap(self.quantized.dequantize(x.backend, x.dtype))
        return ops.linear(x, weight, self.bias)


def out_in(linear):
    """A Linear's (or LoRA base's) weight as a host (out, in) array, whichever layout it holds."""
    weight = linear.weight.numpy()
    return weight.T if getattr(linear, "weight_layout", "out_in") == "in_out" else weight


def quantize_model(model):
    """Store every frozen Linear of the blocks in int8 (LoRA bases keep their adapters).
    Returns (float bytes before, bytes after) of the weights converted."""
    before = after = 0
    for name, module in list(model.named_modules()):
        if ".h." not in f".{name}" and ".layers." not in f".{name}":
            continue
        if isinstance(module, LoRALinear) and module.quantized is None:
            before += module.weight.numpy().nbytes
            module.quantized = Int8Weight.quantize(out_in(module))
            module.weight = None                 # the float base is gone: int8 only
            after += module.quantized.nbytes
        elif type(module) is Linear and not module.weight.requires_grad and \
                not _inside_lora(model, name[:-1]):
            before += module.weight.numpy().nbytes
            parent, attr = _parent_and_name(model, name[:-1])
            replacement = Int8Linear(module)
            setattr(parent, attr, replacement)
            after += replacement.quantized.nbytes
    return before, after


def _inside_lora(model, dotted):
    """Whether `dotted` names lora_A / lora_B of a LoRALinear (those stay float)."""
    return dotted.endswith((".lora_A", ".lora_B"))
