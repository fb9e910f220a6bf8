"""GGUF import: a .gguf file of the GPT-2 or Llama architecture as our GPT (and its tokenizer).

    model, tokenizer, info = import_gguf(path)                  Q8_0 / Q4_0 Linear weights kept
    model, tokenizer, info = import_gguf(path, dequantize=True) every weight float32

The inverse of gguf_export.py, read with the `gguf` package's GGUFReader (which memory-maps
the file; every tensor is copied out of it, so the file may be closed or removed afterwards).

  config     from the architecture's keys: {arch}.context_length, .embedding_length,
             .block_count, .feed_forward_length, .attention.head_count(_kv), the norm epsilon,
             .rope.freq_base and .attention.key_length (llama); vocab_size from token_embd's
             rows. GPT-2 has biases everywhere, Llama none; the LM head is tied when the file
             has no output.weight (llama.cpp's rule) or when it holds the embedding's values.
  tensors    F32 and F16 read as float32. Q8_0 (34 bytes per 32 weights: fp16 scale, 32 int8)
             and Q4_0 (18 bytes: fp16 scale, 16 bytes of nibbles) are exactly formats.py's
             int8 group 32 and int4 group 32 (same values, same nibble order), so a Linear
             weight in one of them becomes a QuantizedLinear holding the file's bytes as they
             are: export -> import gives back the same w_q and scales bit for bit, and the
             quantized kernels run on them. Embeddings and norms are dequantized (they are
             lookups and vectors, not products). dequantize=True makes every weight float32.
  llama      q and k rows are un-permuted (gguf_export.llama_unpermute): a row permutation, so
             it applies to quantized rows (bytes and scales) unchanged.
  tokenizer  tokenizer.ggml.model "gpt2" (byte-level BPE): NORMAL tokens are GPT-2's byte-to-
             unicode strings, CONTROL tokens our special tokens, UNUSED ones (the export's
             [PADn] rows) skipped; merges in rank order; the split pattern from
             tokenizer.ggml.pre ("gpt-2" -> gpt2, "llama-bpe" -> gpt4). A file without a
             tokenizer gives None.

Refused with a GGUFError naming what: an architecture other than gpt2 / llama, a tensor type
other than F32 / F16 / Q8_0 / Q4_0, a missing or misshapen tensor, a tokenizer model other
than "gpt2" or an unknown pre-tokenizer, a file the reader cannot parse.
"""
import numpy as np

from ..nn import GPT, GPTConfig
from ..quantize.layers import QuantizedLinear, QuantizedWeight
from .gguf_export import GGUFError, _gguf, llama_unpermute

FLOAT_TYPES = ("F32", "F16")
BLOCK_TYPES = {"Q8_0": (8, 32), "Q4_0": (4, 16)}       # type -> (bits, value bytes per 32-block)
PRE_PATTERNS = {"gpt-2": "gpt2", "llama-bpe": "gpt4"}


class _File:
    """The reader's fields and tensors by name, with errors that name the file."""

    def __init__(self, path):
        gguf = _gguf()
        try:
            reader = gguf.GGUFReader(path, "r")
        except (ValueError, OSError, KeyError, IndexError) as exc:
            raise GGUFError(f"{path}: not a readable GGUF file ({exc})") from None
        self.path = path
        self.fields = {f.name: f for f in reader.fields.values()}
        self.tensors = {t.name: t for t in reader.tensors}

    def value(self, key, default=None):
        field = self.fields.get(key)
        if field is None:
            if default is None:
                raise GGUFError(f"{self.path}: the key {key} is missing")
            return default
        return field.contents()

    def type_name(self, name):
        return self.tensor(name).tensor_type.name

    def tensor(self, name):
        if name not in self.tensors:
            raise GGUFError(f"{self.path}: the tensor {name} is missing")
        t = self.tensors[name]
        kind = t.tensor_type.name
        if kind not in FLOAT_TYPES and kind not in BLOCK_TYPES:
            raise GGUFError(f"{self.path}: tensor {name} is of type {kind}; GGUF import reads "
                            f"{', '.join(FLOAT_TYPES + tuple(BLOCK_TYPES))}")
        return t

    def shape(self, name):
        """numpy's shape: ggml's ne reversed, (rows, row length)."""
        return tuple(int(n) for n in reversed(self.tensor(name).shape.tolist()))

    def floats(self, name, shape=None):
        """The tensor as float32 (quantized types dequantized), checked against `shape`."""
        t, want = self.tensor(name), self.shape(name)
        if shape is not None and tuple(shape) != want:
            raise GGUFError(f"{self.path}: tensor {name} has shape {want}, the model expects {tuple(shape)}")
        if t.tensor_type.name in FLOAT_TYPES:
            return np.array(t.data, dtype=np.float32).reshape(want)
        bits, _ = BLOCK_TYPES[t.tensor_type.name]
        w_q, w_scale = self.blocks(name)
        from ..quantize import formats
        return formats.dequantize(w_q, w_scale, "int8" if bits == 8 else "int4", 32)

    def blocks(self, name):
        """(w_q, w_scale) of a Q8_0 / Q4_0 matrix in formats.py's int8 / int4 group-32 form:
        each row is C/32 blocks of [fp16 scale, values]; the values are copied as they are."""
        t = self.tensor(name)
        bits, per = BLOCK_TYPES[t.tensor_type.name]
        oc, c = self.shape(name)
        raw = np.asarray(t.data, dtype=np.uint8).reshape(oc, c // 32, 2 + per)
        w_scale = np.ascontiguousarray(raw[:, :, :2]).view(np.float16)[:, :, 0].astype(np.float32)
        values = np.ascontiguousarray(raw[:, :, 2:]).reshape(oc, c // 32 * per)
        return (values.view(np.int8) if bits == 8 else values), w_scale


def _f32(value):
    """A float32 key as the decimal it was written from (1e-05, not 9.99999974e-06): the
    shortest decimal that rounds to the same float32."""
    return float(str(np.float32(value)))


def _config(f, arch):
    key = arch + "."
    n_embd = int(f.value(key + "embedding_length"))
    n_head = int(f.value(key + "attention.head_count"))
    vocab, width = f.shape("token_embd.weight")
    if width != n_embd:
        raise GGUFError(f"{f.path}: token_embd.weight has {width} columns, embedding_length says {n_embd}")
    fields = dict(family=arch, vocab_size=vocab, block_size=int(f.value(key + "context_length")),
                  n_layer=int(f.value(key + "block_count")), n_head=n_head, n_embd=n_embd,
                  mlp_hidden=int(f.value(key + "feed_forward_length")))
    if arch == "gpt2":
        fields.update(bias=True, norm_eps=_f32(f.value(key + "attention.layer_norm_epsilon")))
    else:
        head_dim = int(f.value(key + "attention.key_length", n_embd // n_head))
        fields.update(bias=False, n_kv_head=int(f.value(key + "attention.head_count_kv", n_head)),
                      norm_eps=_f32(f.value(key + "attention.layer_norm_rms_epsilon")),
                      rope_theta=_f32(f.value(key + "rope.freq_base", 10000.0)),
                      head_dim=None if head_dim * n_head == n_embd else head_dim)
    fields["tie_embeddings"] = _tied(f)
    return GPTConfig(**fields)


def _tied(f):
    if "output.weight" not in f.tensors:
        return True
    if f.shape("output.weight") != f.shape("token_embd.weight"):
        return False
    return bool(np.array_equal(f.floats("output.weight"), f.floats("token_embd.weight")))


def _matrices(arch, i, config):
    """(our Linear's dotted name, GGUF tensor name, row permutation or None) of block i."""
    if arch == "gpt2":
        p, ours = f"blk.{i}.", f"transformer.h.{i}."
        return [(ours + "attn.c_attn", p + "attn_qkv", None), (ours + "attn.c_proj", p + "attn_output", None),
                (ours + "mlp.c_fc", p + "ffn_up", None), (ours + "mlp.c_proj", p + "ffn_down", None)]
    p, ours = f"blk.{i}.", f"model.layers.{i}."
    return [(ours + "self_attn.q_proj", p + "attn_q", lambda w: llama_unpermute(w, config.n_head)),
            (ours + "self_attn.k_proj", p + "attn_k", lambda w: llama_unpermute(w, config.n_kv_head)),
            (ours + "self_attn.v_proj", p + "attn_v", None), (ours + "self_attn.o_proj", p + "attn_output", None),
            (ours + "mlp.gate_proj", p + "ffn_gate", None), (ours + "mlp.up_proj", p + "ffn_up", None),
            (ours + "mlp.down_proj", p + "ffn_down", None)]


def _vectors(arch, i):
    """(our parameter name, GGUF tensor name) of block i's norms and biases."""
    p = f"blk.{i}."
    if arch == "gpt2":
        ours = f"transformer.h.{i}."
        pairs = [("ln_1", "attn_norm"), ("ln_2", "ffn_norm")]
        out = [(ours + a + ".weight", p + b + ".weight") for a, b in pairs]
        out += [(ours + a + ".bias", p + b + ".bias") for a, b in pairs]
        out += [(ours + a + ".bias", p + b + ".bias") for a, b in (("attn.c_attn", "attn_qkv"),
                                                                   ("attn.c_proj", "attn_output"),
                                                                   ("mlp.c_fc", "ffn_up"), ("mlp.c_proj", "ffn_down"))]
        return out
    ours = f"model.layers.{i}."
    return [(ours + "input_layernorm.weight", p + "attn_norm.weight"),
            (ours + "post_attention_layernorm.weight", p + "ffn_norm.weight")]


def _module_at(model, dotted):
    module = model
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def _tokenizer(f):
    if "tokenizer.ggml.tokens" not in f.fields:
        return None
    from ..tokenizer import Tokenizer
    from ..tokenizer.hf import byte_level_bytes
    gguf = _gguf()
    kind = f.value("tokenizer.ggml.model")
    if kind != "gpt2":
        raise GGUFError(f"{f.path}: tokenizer.ggml.model {kind!r} is not supported; GGUF import reads "
                        "byte-level BPE (\"gpt2\"); import the weights alone with import_gguf(path, tokenizer=False)")
    pre = f.value("tokenizer.ggml.pre", "gpt-2")
    if pre not in PRE_PATTERNS:
        raise GGUFError(f"{f.path}: tokenizer.ggml.pre {pre!r} is not supported (known: {', '.join(PRE_PATTERNS)})")
    field = f.fields["tokenizer.ggml.tokens"]
    tokens = field.contents()
    types = f.value("tokenizer.ggml.token_type", [])
    ordinary, specials = {}, {}
    for i, text in enumerate(tokens):
        kind = types[i] if i < len(types) else int(gguf.TokenType.NORMAL)
        if kind == int(gguf.TokenType.CONTROL):
            specials[text] = i
        elif kind == int(gguf.TokenType.UNUSED):
            continue
        else:
            data = byte_level_bytes(text)
            if data is None:
                raise GGUFError(f"{f.path}: token {i} {text!r} is not byte-level text")
            ordinary[i] = data
    merges = []
    for k, line in enumerate(f.fields["tokenizer.ggml.merges"].contents()
                             if "tokenizer.ggml.merges" in f.fields else []):
        left, sep, right = line.partition(" ")
        a, b = byte_level_bytes(left), byte_level_bytes(right)
        if not sep or a is None or b is None:
            raise GGUFError(f"{f.path}: tokenizer.ggml.merges[{k}] {line!r} is not a pair of byte-level tokens")
        merges.append((a, b))
    from ..tokenizer.bpe import TokenizerError
    try:
        return Tokenizer.from_merges(ordinary, merges, PRE_PATTERNS[pre], specials)
    except TokenizerError as exc:
        raise GGUFError(f"{f.path}: the tokenizer is not usable ({exc})") from None


def import_gguf(path, dequantize=False, tokenizer=True):
    """(GPT in eval mode, Tokenizer or None, info dict) of a GGUF file (module docstring).
    info: {"architecture", "types": {tensor name: GGUF type}, "quantized": [our layer names]}."""
    f = _File(path)
    arch = f.value("general.architecture")
    if arch not in ("gpt2", "llama"):
        raise GGUFError(f"{path}: architecture {arch!r} is not supported; GGUF import reads gpt2 and llama")
    config = _config(f, arch)
    model = GPT(config, init=False)
    params = dict(model.named_parameters())
    state = {}

    def put(ours, theirs, permute=None):
        w = f.floats(theirs, params[ours].shape)
        state[ours] = w if permute is None else permute(w)

    quantized = []
    for i in range(config.n_layer):
        for ours, theirs in _vectors(arch, i):
            put(ours, theirs)
        for ours, theirs, permute in _matrices(arch, i, config):
            name = theirs + ".weight"
            linear = _module_at(model, ours)
            kind = f.type_name(name)
            if kind in BLOCK_TYPES and not dequantize:
                if f.shape(name) != tuple(linear.weight.shape):
                    raise GGUFError(f"{path}: tensor {name} has shape {f.shape(name)}, the model expects "
                                    f"{tuple(linear.weight.shape)}")
                w_q, w_scale = f.blocks(name)
                if permute is not None:
                    w_q, w_scale = np.ascontiguousarray(permute(w_q)), np.ascontiguousarray(permute(w_scale))
                bits = BLOCK_TYPES[kind][0]
                parent_name, _, attr = ours.rpartition(".")
                setattr(_module_at(model, parent_name), attr,
                        QuantizedLinear(QuantizedWeight(w_q, w_scale, bits, 32), linear.bias))
                quantized.append(ours)
            else:
                put(ours + ".weight", name, permute)
    if arch == "gpt2":
        put("transformer.wte.weight", "token_embd.weight")
        put("transformer.wpe.weight", "position_embd.weight")
        put("transformer.ln_f.weight", "output_norm.weight")
        put("transformer.ln_f.bias", "output_norm.bias")
    else:
        put("model.embed_tokens.weight", "token_embd.weight")
        put("model.norm.weight", "output_norm.weight")
    if not config.tie_embeddings:
        kind = f.type_name("output.weight")
        if kind in BLOCK_TYPES and not dequantize:      # a quantized head (an int4 export's Q8_0): kept so
            if f.shape("output.weight") != (config.vocab_size, config.n_embd):
                raise GGUFError(f"{path}: tensor output.weight has shape {f.shape('output.weight')}, the model "
                                f"expects {(config.vocab_size, config.n_embd)}")
            w_q, w_scale = f.blocks("output.weight")
            model.lm_head = QuantizedLinear(QuantizedWeight(w_q, w_scale, BLOCK_TYPES[kind][0], 32), None)
            quantized.append("lm_head")
        else:
            put("lm_head.weight", "output.weight")
    missing = sorted(set(params) - set(state) - {n + ".weight" for n in quantized})
    if missing:
        raise GGUFError(f"{path}: no tensor for {', '.join(missing[:3])}")
    model.mark_initialized(n + ".weight" for n in quantized)
    model.load_state_dict({k: v for k, v in state.items() if k in dict(model.named_parameters())})
    if quantized:
        scheme = {8: "int8", 4: "int4"}
        layers = {}
        for name in quantized:
            q = _module_at(model, name).qweight
            layers[name] = {"bits": q.bits, "group": q.group, "in": q.in_features, "out": q.out_features}
        schemes = sorted({scheme[spec["bits"]] for spec in layers.values()})
        head = layers.get("lm_head")
        model.quantization = {"format": "microgpt-quantized", "version": 1, "scheme": "+".join(schemes),
                              "group": 32, "head": scheme[head["bits"]] if head else False, "layers": layers,
                              "source": "gguf"}
    info = {"architecture": arch, "types": {name: f.type_name(name) for name in f.tensors},
            "quantized": quantized}
    return model.eval(), (_tokenizer(f) if tokenizer else None), info


def describe_gguf(path):
    """What `microgpt inspect FILE.gguf` prints: architecture, shape keys, tensor types."""
    f = _File(path)
    arch = f.value("general.architecture")
    counts = {}
    for t in f.tensors.values():
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    keys = {k: f.value(k) for k in sorted(f.fields) if k.startswith(str(arch) + ".")}
    keys = {k: _f32(v) if isinstance(v, float) else v for k, v in keys.items()}
    return {"architecture": arch, "file_type": f.value("general.file_type", -1), "keys": keys,
            "tensor_types": counts, "tensors": len(f.tensors),
            "bytes": int(sum(int(t.n_bytes) for t in f.tensors.values())),
            "tokenizer": f.value("tokenizer.ggml.model", "none"),
            "vocab": len(f.fields["tokenizer.ggml.tokens"].contents()) if "tokenizer.ggml.tokens" in f.fields else 0}
