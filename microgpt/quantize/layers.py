"""QuantizedLinear: a Linear whose weight is held in int8 or int4 (formats.py), and the one
hook decoding needs.

A quantized model is the same GPT with some Linear modules swapped for QuantizedLinear: same
attribute names, same call (forward(x) -> x W^T + b), so GPT.forward, evaluation, training
of the remaining parameters and the generation engine run on it unchanged. The weight lives in
a QuantizedWeight (plain arrays: w_q, w_scale), which is not a Parameter: model.parameters()
lists only the float parameters left (norms, embeddings, biases), so an optimizer never
touches the frozen integers, and gradients still flow *through* the layer to its input
(ops.quantized_linear's backward), which is what adapters trained beside it need.

Decoding (inference/decode.py) reads each layer's weights once and calls
`be.linear_forward(x, w, b, w_in_out)`; for a quantized layer `w` is the QuantizedWeight and
DecodeBackend below routes the call to the quantized kernel (linear_q8_forward /
linear_q4_forward). Everything else passes through to the backend untouched.
"""
import numpy as np

from .. import ops
from ..nn.module import Module, Parameter
from . import formats


class QuantizedWeight:
    """The int8 / int4 form of one (OC, C) weight matrix: w_q, w_scale (float32), bits, group."""
    __slots__ = ("w_q", "w_scale", "bits", "group", "out_features", "in_features", "_fast")

    def __init__(self, w_q, w_scale, bits, group):
        # contiguous: a transposed source (GPT-2's in_out layout) would otherwise leave a strided
        # view that every kernel call copies or refuses
        self.w_q, self.w_scale = np.ascontiguousarray(w_q), np.ascontiguousarray(w_scale, dtype=np.float32)
        self.bits, self.group = int(bits), int(group)
        self.out_features = w_q.shape[0]
        self.in_features = w_q.shape[1] * (1 if self.bits == 8 else 2)
        self._fast = None      # (kernel, w_q, w_scale, fn): the C kernel with this weight checked once

    @property
    def scheme(self):
        return "int8" if self.bits == 8 else "int4"

    @property
    def shape(self):
        return (self.out_features, self.in_features)

    @property
    def nbytes(self):
        """Bytes of the weight as stored on disk: the integers and float16 scales."""
        return self.w_q.nbytes + self.w_scale.size * 2

    def dequantize(self):
        return formats.dequantize(self.w_q, self.w_scale, self.scheme, self.group)

    def linear(self, be, x, b):
        kernel = be.linear_q8_forward if self.bits == 8 else be.linear_q4_forward
        fast = self._fast
        if fast is None or fast[0] is not kernel or fast[1] is not self.w_q or fast[2] is not self.w_scale:
            fast = self._fast = (kernel, self.w_q, self.w_scale, _prepare(kernel, self))
        if fast[3] is not None:
            return fast[3](x, b)
        return kernel(x, self.w_q, self.w_scale, b, self.group)


def _prepare(kernel, qweight):
    """The C backend's kernel with qweight's arrays checked once (cpu_quant.prepared), when
    kernel is that backend's; None (call kernel itself) for every other backend."""
    try:
        from ..backends import cpu_quant
    except ImportError:            # the C extension is not built
        return None
    name = {cpu_quant.linear_q8_forward: "linear_q8_forward",
            cpu_quant.linear_q4_forward: "linear_q4_forward"}.get(kernel)
    return None if name is None else cpu_quant.prepared(name, qweight.w_q, qweight.w_scale, qweight.group)


class QuantizedLinear(Module):
    """y = x W^T + b with W a QuantizedWeight; built from a Linear by from_linear."""

    def __init__(self, qweight, bias=None):
        self.qweight = qweight
        self.bias = bias
        self.in_features, self.out_features = qweight.in_features, qweight.out_features

    @classmethod
    def from_linear(cls, linear, scheme, group):
        w = linear.weight.numpy()
        if getattr(linear, "weight_layout", "out_in") == "in_out":       # GPT-2 Conv1D storage
            w = w.T
        if not np.isfinite(w).all():
            raise formats.QuantizeError("a weight holds NaN or inf values: nothing to quantize")
        w_q, w_scale = formats.quantize(w, scheme, group)
        bias = None if linear.bias is None else Parameter(linear.bias.numpy().copy())
        return cls(QuantizedWeight(w_q, w_scale, formats.bits_of(scheme), group), bias)

    # What decode.py reads of a layer (its _wb): weight.data and weight_layout. Here weight.data
    # is the QuantizedWeight, which DecodeBackend.linear_forward recognizes.
    weight_layout = "out_in"

    @property
    def weight(self):
        return _WeightView(self.qweight)

    def forward(self, x):
        q = self.qweight
        return ops.quantized_linear(x, q.w_q, q.w_scale, q.bits, q.group, self.bias)


class _WeightView:
    """linear.weight of a QuantizedLinear: .data is the QuantizedWeight, .shape its (OC, C)."""
    __slots__ = ("data",)

    def __init__(self, qweight):
        self.data = qweight

    @property
    def shape(self):
        return self.data.shape


class DecodeBackend:
    """A backend module seen through decoding's eyes: linear_forward with a QuantizedWeight runs
    the quantized kernel; every other name is the backend's own (looked up once, then cached)."""

    def __init__(self, be):
        self._be = be

    def __getattr__(self, name):
        value = getattr(self._be, name)
        setattr(self, name, value)
        return value

    def linear_forward(self, x, w, b=None, w_in_out=False):
        if type(w) is QuantizedWeight:
            return w.linear(self._be, x, b)
        return self._be.linear_forward(x, w, b, w_in_out)

    def linear_rows_forward(self, x, w, b=None, w_in_out=False):
        """The paged decoder's streaming path (decode rows, LM head): the quantized kernel also
        here, which reads each quantized weight once for all the rows of the call."""
        if type(w) is QuantizedWeight:
            return w.linear(self._be, x, b)
        return self._be.linear_rows_forward(x, w, b, w_in_out)


def is_quantized(model):
    return any(type(m) is QuantizedLinear for _, m in model.named_modules())
