"""Compression: weight-only int8 / int4 quantization, GGUF's block layouts, distillation, pruning.

    formats.py    the int8 / int4 formats (quantize, pack, dequantize) and their error bounds
    layers.py     QuantizedLinear: a Linear whose weight is int8 / int4 (forward: ops.quantized_linear)
    model.py      quantize_model, and saving / loading a quantized checkpoint (safetensors + JSON)
    distill.py    knowledge distillation: KL(teacher || student) at temperature T mixed with CE
    prune.py      magnitude and 2:4 pruning of Linear weights
The kernels are csrc/quant.c and cuda/quant.cu (backends: linear_q8_forward ...); GGUF export
and import are microgpt/interop/gguf_export.py and gguf_import.py.
"""
from .formats import SCHEMES, QuantizeError

__all__ = ["SCHEMES", "QuantizeError"]
