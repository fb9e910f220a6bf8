"""GGUF export: a GPT (GPT-2 or Llama family) as a .gguf file that llama.cpp runs.

    export_gguf(model, tokenizer, path, "f32" | "f16" | "q8_0" | "q4_0")

Written with the `gguf` package's GGUFWriter. What llama.cpp reads, as its model loader and the
`gguf` package's constants (gguf/constants.py: MODEL_ARCH, MODEL_TENSORS, Keys) name it:
  general.architecture   "gpt2" or "llama"; then {arch}.context_length, .embedding_length,
                         .feed_forward_length, .block_count, .attention.head_count(_kv),
                         .attention.layer_norm_epsilon (gpt2) / layer_norm_rms_epsilon (llama),
                         .rope.freq_base and .rope.dimension_count (llama)
  tensors                token_embd, position_embd (gpt2), blk.N.attn_norm, attn_qkv (gpt2) or
                         attn_q / attn_k / attn_v, attn_output, ffn_norm, ffn_up, ffn_down,
                         ffn_gate (llama), output_norm, output; each a numpy (out, in) matrix,
                         which is ggml's ne = [in, out]
  tokenizer              tokenizer.ggml.model "gpt2" (byte-level BPE: tokens as GPT-2's
                         byte-to-unicode strings, merges "left right" in rank order, token types),
                         tokenizer.ggml.pre "gpt-2" or "llama-bpe" (our gpt2 / gpt4 split
                         patterns: llama.cpp's names of the same regexes), bos / eos ids
Llama's q and k rows are permuted: our rotary embedding rotates the two halves of a head (HF's
rotate_half), llama.cpp's "llama" rope rotates adjacent pairs, and its converter
(convert_hf_to_gguf.py, LlamaModel.permute) reorders each head's rows so that both compute the
same thing: rows (2, HS/2) of a head become (HS/2, 2).

Types: f32 and f16 write every matrix in that type (norms and biases stay F32, as llama.cpp
requires); q8_0 and q4_0 write the blocks' Linear weights in GGUF's Q8_0 / Q4_0 blocks (34 / 18
bytes per 32 weights: an fp16 scale, then the values; formats.py's int8 group 32 / int4 group
32 are the same numbers), the embeddings in F32, the LM head in F32 or, when the model's head
is quantized at group 32 (int8 and int4 models' default head is int8 group 32), in its own Q8_0 /
Q4_0 blocks, so the file computes exactly what our own quantized model computes. A model
quantized already (quantize_model) is written as it is when its layers are in the matching
format, else refused (quantize the float model).
Refused, naming what: a family other than gpt2 / llama, qk_norm or q/k/v biases on Llama
(architectures llama.cpp names differently), rope scaling.
"""
import numpy as np

from ..errors import MicrogptError
from ..quantize import formats
from ..quantize.layers import QuantizedLinear

TYPES = ("f32", "f16", "q8_0", "q4_0")


class GGUFError(MicrogptError):
    """A model or file GGUF export / import cannot handle (the message names what)."""


def _gguf():
    try:
        import gguf
    except ImportError:
        raise GGUFError("GGUF export needs the `gguf` package: pip install gguf") from None
    return gguf


def llama_permute(w, n_head):
    """Rows of each head from rotate-half order (2, HS/2) to adjacent pairs (HS/2, 2)."""
    out_features = w.shape[0]
    return w.reshape(n_head, 2, out_features // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_unpermute(w, n_head):
    out_features = w.shape[0]
    return w.reshape(n_head, out_features // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _check_model(config):
    if config.family not in ("gpt2", "llama"):
        raise GGUFError(f"GGUF export supports the gpt2 and llama families, not {config.family!r}")
    if config.family == "llama":
        unsupported = [name for name, on in (("qk_norm", config.qk_norm), ("qkv_bias", config.qkv_bias),
                                             ("rope_scaling", config.rope_scaling), ("bias", config.bias))
                       if on]
        if unsupported:
            raise GGUFError(f"GGUF export of a Llama-family model with {', '.join(unsupported)} is not "
                            "supported (llama.cpp runs those as other architectures)")


def _matrix(linear):
    """(OC, C) float32 of a Linear, or the QuantizedWeight of a QuantizedLinear."""
    if type(linear) is QuantizedLinear:
        return linear.qweight
    w = linear.weight.numpy()
    return w.T if getattr(linear, "weight_layout", "out_in") == "in_out" else w


def _blocks(w_q, w_scale, scheme):
    """GGUF's Q8_0 / Q4_0 bytes (OC, C/32 * (2 + 32 or 16)) from our int8 / int4 group-32 weight."""
    oc = w_q.shape[0]
    per = 32 if scheme == "int8" else 16
    qs = np.ascontiguousarray(w_q).view(np.uint8).reshape(oc, -1, per)
    scales = w_scale.astype(np.float16).view(np.uint8).reshape(oc, -1, 2)
    return np.concatenate([scales, qs], axis=2).reshape(oc, -1)


def _tensor(writer, gguf, name, w, ftype, row_perm=None):
    """Write one matrix (float array or QuantizedWeight) in ftype."""
    if ftype in ("q8_0", "q4_0"):
        scheme = "int8" if ftype == "q8_0" else "int4"
        if hasattr(w, "w_q"):
            if w.scheme != scheme or w.group != 32:
                raise GGUFError(f"{name}: the model is quantized as {w.scheme} group {w.group}, which is not "
                                f"{ftype.upper()}; export the float model, or quantize with --group 32")
            w_q, w_scale = w.w_q, w.w_scale
            if row_perm is not None:
                w_q, w_scale = row_perm(w_q), row_perm(w_scale)
        else:
            w = w if row_perm is None else row_perm(w)
            w_q, w_scale = formats.quantize(w, scheme, formats.check_group(scheme, 32, w.shape[1], name))
        qtype = gguf.GGMLQuantizationType.Q8_0 if ftype == "q8_0" else gguf.GGMLQuantizationType.Q4_0
        writer.add_tensor(name, _blocks(w_q, w_scale, scheme), raw_dtype=qtype)
        return
    if hasattr(w, "w_q"):
        w = w.dequantize()
    w = w if row_perm is None else row_perm(w)
    writer.add_tensor(name, np.ascontiguousarray(w, dtype=np.float16 if ftype == "f16" else np.float32))


def _vector(writer, name, v):
    writer.add_tensor(name, np.ascontiguousarray(v.numpy(), dtype=np.float32))


def _tokenizer(writer, gguf, tokenizer, vocab_size):
    from ..tokenizer.hf import byte_level_string, rank_merges
    specials = tokenizer.special_tokens
    special_ids = {i: s for s, i in specials.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i in special_ids:
            tokens.append(special_ids[i])
            types.append(gguf.TokenType.CONTROL)
        elif i < tokenizer.vocab_size:
            tokens.append(byte_level_string(tokenizer.token_bytes(i)))
            types.append(gguf.TokenType.NORMAL)
        else:                                        # rows of the embedding no token uses
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    if tokenizer.merges is None:
        pairs = rank_merges(tokenizer.to_tiktoken_ranks())
    else:
        pairs = [(tokenizer.token_bytes(a), tokenizer.token_bytes(b)) for a, b in tokenizer.merges]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2" if tokenizer.pattern_name == "gpt2" else "llama-bpe")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([byte_level_string(a) + " " + byte_level_string(b) for a, b in pairs])
    eot = tokenizer.eot_id
    if eot is not None:
        writer.add_bos_token_id(eot)
        writer.add_eos_token_id(eot)
    writer.add_add_bos_token(False)


def export_gguf(model, tokenizer, path, ftype="f32"):
    """Write `model` (and its tokenizer) to the GGUF file `path` in ftype (module docstring)."""
    gguf = _gguf()
    if ftype not in TYPES:
        raise GGUFError(f"unknown GGUF type {ftype!r}: choose one of {', '.join(TYPES)}")
    config = model.config
    _check_model(config)
    model.check_initialized("export_gguf")
    from ..fileio import temporary_path
    arch = config.family
    tmp = temporary_path(path)
    writer = gguf.GGUFWriter(tmp, arch)
    writer.add_name("microgpt")
    writer.add_context_length(config.block_size)
    writer.add_embedding_length(config.n_embd)
    writer.add_block_count(config.n_layer)
    writer.add_head_count(config.n_head)
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[ftype])
    if arch == "gpt2":
        tr = model.transformer
        writer.add_feed_forward_length(model.blocks[0].mlp.c_fc.out_features
                                       if hasattr(model.blocks[0].mlp.c_fc, "out_features")
                                       else _matrix(model.blocks[0].mlp.c_fc).shape[0])
        writer.add_layer_norm_eps(tr.ln_f.eps)
        writer.add_tensor("token_embd.weight", np.ascontiguousarray(tr.wte.weight.numpy(), np.float32))
        writer.add_tensor("position_embd.weight", np.ascontiguousarray(tr.wpe.weight.numpy(), np.float32))
        for i, block in enumerate(model.blocks):
            p = f"blk.{i}."
            _vector(writer, p + "attn_norm.weight", block.ln_1.weight)
            _vector(writer, p + "attn_norm.bias", block.ln_1.bias)
            _vector(writer, p + "ffn_norm.weight", block.ln_2.weight)
            _vector(writer, p + "ffn_norm.bias", block.ln_2.bias)
            for ours, theirs in ((block.attn.c_attn, "attn_qkv"), (block.attn.c_proj, "attn_output"),
                                 (block.mlp.c_fc, "ffn_up"), (block.mlp.c_proj, "ffn_down")):
                _tensor(writer, gguf, p + theirs + ".weight", _matrix(ours), ftype)
                _vector(writer, p + theirs + ".bias", ours.bias)
        _vector(writer, "output_norm.weight", tr.ln_f.weight)
        _vector(writer, "output_norm.bias", tr.ln_f.bias)
    else:
        m = model.model
        hs = config.head_size
        writer.add_feed_forward_length(_matrix(model.blocks[0].mlp.gate_proj).shape[0])
        writer.add_head_count_kv(config.n_kv_head)
        writer.add_layer_norm_rms_eps(m.norm.eps)
        writer.add_rope_freq_base(config.rope_theta)
        writer.add_rope_dimension_count(hs)
        if hs * config.n_head != config.n_embd:
            writer.add_key_length(hs)
            writer.add_value_length(hs)
        writer.add_tensor("token_embd.weight", np.ascontiguousarray(m.embed_tokens.weight.numpy(), np.float32))
        for i, block in enumerate(model.blocks):
            p, a, f = f"blk.{i}.", block.self_attn, block.mlp
            _vector(writer, p + "attn_norm.weight", block.input_layernorm.weight)
            _vector(writer, p + "ffn_norm.weight", block.post_attention_layernorm.weight)
            _tensor(writer, gguf, p + "attn_q.weight", _matrix(a.q_proj), ftype,
                    lambda w: llama_permute(w, config.n_head))
            _tensor(writer, gguf, p + "attn_k.weight", _matrix(a.k_proj), ftype,
                    lambda w: llama_permute(w, config.n_kv_head))
            for ours, theirs in ((a.v_proj, "attn_v"), (a.o_proj, "attn_output"), (f.gate_proj, "ffn_gate"),
                                 (f.up_proj, "ffn_up"), (f.down_proj, "ffn_down")):
                _tensor(writer, gguf, p + theirs + ".weight", _matrix(ours), ftype)
        _vector(writer, "output_norm.weight", m.norm.weight)
    head = _matrix(model.lm_head)
    if hasattr(head, "w_q") and head.group == 32 and ftype in ("q8_0", "q4_0"):
        # a quantized head (int8 and int4 models' default: int8 group 32) in its own block type, so the
        # file holds the bytes our model decodes with (llama.cpp's quantizer also keeps the
        # output tensor above Q4_0 in its Q4_0 files)
        _tensor(writer, gguf, "output.weight", head, "q8_0" if head.bits == 8 else "q4_0")
    else:
        head = head.dequantize() if hasattr(head, "w_q") else head
        writer.add_tensor("output.weight", np.ascontiguousarray(head, np.float32))
    _tokenizer(writer, gguf, tokenizer, config.vocab_size)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        import os
        os.replace(tmp, path)
    finally:
        import os
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
