"""Quantizing a whole GPT, and the quantized checkpoint: safetensors + a JSON config.

    quantize_model(model, "int4", group=32)               swaps every Linear of the blocks (and
                                                          the LM head, by `head` below) for a
                                                          QuantizedLinear, in place
    save_quantized(model, out_dir, source_dir)            writes the directory below
    load_quantized(path)                                  -> (GPT, Tokenizer, generation dict)

The directory is a checkpoint directory (resolve/load_model accept it; train/checkpoint.py
hands it here when quantization.json is present):
    config.json, tokenizer.bpe, generation_config.json   copied from the source checkpoint
    model.safetensors     every float parameter under its own name (float32), and for each
                          quantized layer NAME.weight.q (I8, or U8 packed int4) and
                          NAME.weight.scale (F16: the scales are fp16 values by construction,
                          formats.py), so a load gives back the same bits
    quantization.json     {"format": "microgpt-quantized", "version": 1, "scheme", "group",
                          "head", "layers": {NAME: {"bits", "group", "in", "out"}}}
The embedding stays float32 (a lookup reads one row a token: its size costs memory, not
time). The LM head (a tied head: a quantized copy, the embedding untouched), by `head`:
    "default"   int8 group 32 (= GGUF Q8_0), in int4 and int8 models alike
    "fp32"      float32 (False means the same)
    "int8"      int8 group 32 (per output channel where 32 does not divide C)
    "same"      the blocks' scheme and group (True means the same)
Why the head is int8 by default. Decoding reads every weight once a token, and the head is a
large share of them in small models: 8192 x 384 of the "small" preset is 12.6 MB in float32,
as much as the six int4 blocks' 6 MB twice over and more than the six int8 blocks' 10.6 MB, so
a float head kept quantized decoding short of its speed-up however fast the blocks ran
(benchmarks/results/quantize.md measures both heads, for int8 and int4). The head is also the
layer whose rounding moves the logits directly, which is why llama.cpp's own quantizer keeps the
output tensor at a higher precision (Q6_K / Q8_0) in its Q4_0 files and at Q8_0 in its Q8_0
files; int8 rounds it ~16x finer than int4 for 4x fewer bytes than float32, and the GGUF export
writes it as Q8_0 so llama.cpp computes the same head. Until 2026-12-01 int8 models kept a
float head by default (their head costs 2x the int8 bytes, not 4-8x); once the decode step ran
in one C call (csrc/decode_step.c) the float head was the largest part of an int8 "small" token,
and its int8 vs fp32 decoding measured 1.45-1.82x over three runs against a 1.5x target.

Refused, with nothing written or changed: a model that is already quantized, a group that
does not fit a layer (formats.check_group names the layer), an unknown scheme.
"""
import json
import os
import shutil
import struct

import numpy as np

from ..errors import CheckpointError
from ..fileio import atomic_write, read_json_object, write_json
from ..nn import GPT, GPTConfig, Linear
from . import formats
from .layers import QuantizedLinear, QuantizedWeight, is_quantized

QUANT_CONFIG = "quantization.json"
FORMAT = "microgpt-quantized"
COPIED = ("config.json", "tokenizer.bpe", "generation_config.json")


HEADS = ("default", "fp32", "int8", "same")
HEAD_GROUP = 32               # an int8 head's group: GGUF Q8_0's block


def _linears(model):
    """(parent module, attribute, dotted name) of every Linear (the LM head is "lm_head")."""
    found = []
    for prefix, module in model.named_modules():
        for attr, child in list(vars(module).items()):
            if type(child) is Linear:
                found.append((module, attr, prefix + attr))
    return found


def head_scheme(scheme, group, head, in_features):
    """(scheme, group) of the LM head for quantize_model's `head` (module docstring), or None
    for a float32 head."""
    if head is True:
        head = "same"
    elif head is False or head is None:
        head = "fp32"
    if head not in HEADS:
        raise formats.QuantizeError(f"unknown LM head choice {head!r}: choose one of {', '.join(HEADS)}")
    if head == "default":
        head = "int8"
    if head == "fp32":
        return None
    if head == "same":
        return scheme, group
    return "int8", HEAD_GROUP if in_features % HEAD_GROUP == 0 else None


def quantize_model(model, scheme, group=None, head="default"):
    """Swap the model's Linear layers for QuantizedLinear (see the module docstring); returns
    the quantization config dict, also kept as model.quantization (its "head": False for a
    float head, else the head's scheme)."""
    formats.bits_of(scheme)
    if is_quantized(model):
        raise formats.QuantizeError("the model is already quantized; quantize the float checkpoint it came from")
    targets, plan = _linears(model), {}
    for module, attr, name in targets:                      # every check first: all or nothing
        c = _in_features(getattr(module, attr))
        spec = (scheme, group) if name != "lm_head" else head_scheme(scheme, group, head, c)
        if spec is not None:
            plan[name] = (spec[0], formats.check_group(spec[0], spec[1], c, name))
    layers = {}
    for module, attr, name in targets:
        if name not in plan:
            continue
        q = QuantizedLinear.from_linear(getattr(module, attr), *plan[name])
        setattr(module, attr, q)
        layers[name] = {"bits": q.qweight.bits, "group": q.qweight.group, "in": q.in_features,
                        "out": q.out_features}
    model.mark_initialized(f"{name}.weight" for name in layers)
    model.quantization = {"format": FORMAT, "version": 1, "scheme": scheme, "group": group,
                          "head": plan["lm_head"][0] if "lm_head" in plan else False, "layers": layers}
    return model.quantization


def _module_at(model, name):
    module = model
    for part in name.split("."):
        module = getattr(module, part)
    return module


def _in_features(linear):
    w = linear.weight
    return w.shape[0] if getattr(linear, "weight_layout", "out_in") == "in_out" else w.shape[1]


def weight_bytes(model):
    """(bytes of the blocks' Linear weights as held now, bytes they take in float32); the
    embedding and LM head are left out (a tied head shares the embedding's float32 array)."""
    held = full = 0
    for _, module in (m for block in model.blocks for m in block.named_modules()):
        for child in vars(module).values():
            if type(child) is QuantizedLinear:
                held += child.qweight.nbytes
                full += 4 * child.in_features * child.out_features
            elif type(child) is Linear:
                held += child.weight.data.nbytes
                full += child.weight.data.nbytes
    return held, full


# --- safetensors with mixed dtypes (I8, U8, F16, F32) ------------------------------------------------

_CODES = {np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8", np.dtype(np.float16): "F16",
          np.dtype(np.float32): "F32"}
_DTYPES = {code: dtype for dtype, code in _CODES.items()}


def write_tensors(path, tensors, metadata=None):
    """{name: array} to a safetensors file (little-endian, names sorted), atomically."""
    header, offset = {}, 0
    arrays = {name: np.ascontiguousarray(a) for name, a in sorted(tensors.items())}
    for name, a in arrays.items():
        header[name] = {"dtype": _CODES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with atomic_write(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for a in arrays.values():
            f.write(a.tobytes())


def read_tensors(path):
    """{name: array} of a file write_tensors wrote (copies, not memory maps)."""
    with open(path, "rb") as f:
        blob = f.read()
    try:
        (length,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8:8 + length])
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            dtype = _DTYPES[info["dtype"]]
            out[name] = np.frombuffer(blob, dtype, (end - start) // dtype.itemsize, 8 + length + start) \
                .reshape(info["shape"]).copy()
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc}); quantize the model again") from None
    return out


# --- the quantized checkpoint ---------------------------------------------------------------------------

def save_quantized(model, out_dir, source_dir):
    """Write the quantized checkpoint directory (module docstring); the files come from source_dir."""
    tensors = {name: p.numpy() for name, p in model.named_parameters()}
    for prefix, module in model.named_modules():
        if type(module) is QuantizedLinear:
            tensors[f"{prefix}weight.q"] = module.qweight.w_q
            tensors[f"{prefix}weight.scale"] = module.qweight.w_scale.astype(np.float16)
    os.makedirs(out_dir, exist_ok=True)
    for name in COPIED:
        src = os.path.join(source_dir, name)
        if os.path.isfile(src):
            with open(src, "rb") as f, atomic_write(os.path.join(out_dir, name), "wb") as g:
                shutil.copyfileobj(f, g)
    write_tensors(os.path.join(out_dir, "model.safetensors"), tensors, {"format": FORMAT})
    write_json(os.path.join(out_dir, QUANT_CONFIG), model.quantization)   # last: it marks the directory


def is_quantized_dir(path):
    return os.path.isfile(os.path.join(path, QUANT_CONFIG))


def read_quant_config(path):
    config = read_json_object(os.path.join(path, QUANT_CONFIG), CheckpointError, "quantize the model again",
                              "quantize the model again")
    if config.get("format") != FORMAT or not isinstance(config.get("layers"), dict):
        raise CheckpointError(f"{path}/{QUANT_CONFIG}: not a microgpt quantization config; quantize the model again")
    return config


def load_quantized(path, device="cpu"):
    """(GPT, Tokenizer, generation dict) of a directory save_quantized wrote; bit for bit."""
    from ..tokenizer import Tokenizer
    config = read_quant_config(path)
    hf = read_json_object(os.path.join(path, "config.json"), CheckpointError, "", "quantize the model again")
    model = GPT(GPTConfig(**hf["microgpt"]), init=False)
    tensors = read_tensors(os.path.join(path, "model.safetensors"))
    for name, spec in config["layers"].items():
        parent_name, _, attr = name.rpartition(".")
        parent = _module_at(model, parent_name) if parent_name else model
        try:
            w_q, scale = tensors.pop(f"{name}.weight.q"), tensors.pop(f"{name}.weight.scale")
        except KeyError:
            raise CheckpointError(f"{path}: the quantized weight of {name} is missing; quantize again") from None
        bias = getattr(parent, attr).bias
        setattr(parent, attr, QuantizedLinear(QuantizedWeight(w_q, scale.astype(np.float32), spec["bits"],
                                                              spec["group"]), bias))
    model.mark_initialized(f"{name}.weight" for name in config["layers"])
    model.load_state_dict(tensors)
    model.quantization = config
    if device != "cpu":
        model.to(device)
    tokenizer = Tokenizer.load(os.path.join(path, "tokenizer.bpe"))
    gen_path = os.path.join(path, "generation_config.json")
    generation = read_json_object(gen_path, CheckpointError, "", "") if os.path.isfile(gen_path) else {}
    return model.eval(), tokenizer, generation
