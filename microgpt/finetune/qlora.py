"""QLoRA: LoRA over a frozen base stored in int8 or int4, in the compression issue's format.

The base weights are the engine's one quantized Linear (microgpt/quantize/: formats.py for
the codes, layers.py for QuantizedWeight / QuantizedLinear, the kernels in csrc/quant.c):

    int8, group g (default: the whole row)   W[o, c] ~ d[o, c // g] q[o, c],  q in [-127, 127]
    int4, group g in 32 / 64 / 128           the same with q in [-8, 7], two per byte (Q4_0)

A LoRA layer over such a base computes

    y = quantized_linear(x; q, d) + b  +  s * B (A dropout(x))          s = alpha / r

with ops.quantized_linear running the int8 / int4 kernel forward (no float copy of W) and,
backward, sending dx = dout W~ (W~ dequantized for that call only) to the layers below; the
codes and scales are not Parameters, so no gradient or optimizer state exists for them, and
the adapters A, B train exactly as over a float base — over W~ instead of W. The adapter
files (PEFT's format) are the same as plain LoRA's: only the base differs.

quantize_model converts every frozen Linear inside the Transformer blocks: the LoRA bases
(LoRALinear.quantized) and the plain ones (swapped for a QuantizedLinear, bias frozen).
Embeddings, norms and the LM head stay in float, as in QLoRA. Every layer's group is checked
first (formats.check_group: a group that does not divide a layer's inputs, or an int4 group
that is not a multiple of 32, is a QuantizeError naming the layer), so nothing is converted
half-way.
"""
from ..nn.layers import Linear
from ..quantize import formats
from ..quantize.layers import QuantizedLinear, QuantizedWeight
from .lora import LoRALinear, _parent_and_name

SCHEMES = formats.SCHEMES


def out_in(linear):
    """A Linear's (or LoRA base's) weight as a host (out, in) array, whichever layout it holds."""
    weight = linear.weight.numpy()
    return weight.T if getattr(linear, "weight_layout", "out_in") == "in_out" else weight


def _in_blocks(name):
    return ".h." in f".{name}" or ".layers." in f".{name}"


def _targets(model):
    """(dotted name, module) of the blocks' frozen Linears and LoRA bases, in model order."""
    found = []
    for name, module in model.named_modules():
        if not name or not _in_blocks(name) or name[:-1].endswith((".lora_A", ".lora_B")):
            continue
        if isinstance(module, LoRALinear) and module.quantized is None:
            found.append((name[:-1], module))
        elif type(module) is Linear and not module.weight.requires_grad:
            found.append((name[:-1], module))
    return found


def quantize_model(model, scheme="int8", group=None):
    """Store the blocks' frozen weights in `scheme` (int8 | int4) with `group` inputs per
    scale (None: int8 one scale per row, int4 32). Returns (float bytes before, bytes after)
    of the weights converted (after: the integers and float16 scales, QuantizedWeight.nbytes)."""
    bits = formats.bits_of(scheme)
    targets = _targets(model)
    groups = {name: formats.check_group(scheme, group, out_in(m).shape[1], name)
              for name, m in targets}                        # every check first: all or nothing
    before = after = 0
    for name, module in targets:
        w = out_in(module)
        before += w.nbytes
        w_q, w_scale = formats.quantize(w, scheme, groups[name])
        qweight = QuantizedWeight(w_q, w_scale, bits, groups[name])
        after += qweight.nbytes
        if isinstance(module, LoRALinear):
            module.quantized = qweight
            module.weight = None                     # the float base is gone: codes only
        else:
            bias = module.bias
            if bias is not None:
                bias.requires_grad = False
            parent, attr = _parent_and_name(model, name)
            replacement = QuantizedLinear(qweight, bias)
            replacement.float_layout = getattr(module, "weight_layout", "out_in")
            setattr(parent, attr, replacement)
    return before, after


# --- checkpoints of a QLoRA run -------------------------------------------------------------
# model.safetensors holds the base as the floats the codes stand for (W~ = d q, in each
# layer's own layout), so generate / eval / chat / PEFT read the model the adapters were
# trained over; CODES_FILE beside it holds the codes and scales themselves, which a resume
# loads back as they were (re-quantizing W~ would give the same codes in all but corner
# cases of tiny fp16 scales; loading them makes the resume exact by construction).

CODES_FILE = "qlora_base.safetensors"


def quantized_layers(model):
    """(dotted name, layer, QuantizedWeight) of every quantized base, in model order."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear) and module.quantized is not None:
            found.append((name[:-1], module, module.quantized))
        elif type(module) is QuantizedLinear:
            found.append((name[:-1], module, module.qweight))
    return found


def float_weights(model):
    """{NAME.weight: float32 host array} of W~ for every quantized base, in the layout the float
    layer held (LoRA bases keep theirs; a plain layer's is recorded as float_layout)."""
    out = {}
    for name, module, q in quantized_layers(model):
        w = q.dequantize()
        layout = module.weight_layout if isinstance(module, LoRALinear) else \
            getattr(module, "float_layout", "out_in")
        out[f"{name}.weight"] = w.T.copy() if layout == "in_out" else w
    return out


def code_tensors(model):
    """{NAME.weight.q, NAME.weight.scale (fp16: exact, formats.py)} for CODES_FILE."""
    out = {}
    for name, _, q in quantized_layers(model):
        out[f"{name}.weight.q"] = q.w_q
        out[f"{name}.weight.scale"] = q.w_scale.astype("float16")
    return out


def load_codes(model, tensors, where):
    """Put CODES_FILE's codes back into the model's quantized layers (same names, shapes)."""
    from ..errors import CheckpointError
    for name, _, q in quantized_layers(model):
        try:
            w_q, scale = tensors[f"{name}.weight.q"], tensors[f"{name}.weight.scale"]
        except KeyError:
            raise CheckpointError(f"{where}: {CODES_FILE} lacks the codes of {name}; "
                                  f"resume from another checkpoint") from None
        if w_q.shape != q.w_q.shape or w_q.dtype != q.w_q.dtype or scale.shape != q.w_scale.shape:
            raise CheckpointError(f"{where}: {CODES_FILE}'s {name} does not match the run's "
                                  f"quantization ({w_q.dtype} {w_q.shape} vs {q.w_q.dtype} "
                                  f"{q.w_q.shape})")
        q.w_q, q.w_scale = w_q, scale.astype("float32")
