"""The decoding forward pass: a GPT's weights run through backend kernels, no autograd.

    decoder = Decoder(model, batch_size)          # model: a plain GPT (either family)
    logits = decoder.step(ids)                    # ids (B, T) int64 -> (B, V) last-position logits

Why a second forward pass exists. Generating one token touches every weight once but does
little arithmetic per call: a 6-layer GPT runs ~100 small kernels per token. Through the
Tensor/ops layer each of those also builds a graph node, checks shapes and dtypes and wraps
its result — tens of microseconds apiece, which at batch 1 costs as much as the matrix
work itself (that per-call overhead is also what HF transformers pays in PyTorch). This
module calls the *same kernels* in the *same order* as GPT.forward in eval mode (so the
numbers agree with it; tests/test_generate.py checks cached decoding against full
recomputation through GPT.forward), on the model's own parameter arrays, with three
shortcuts that only decoding allows:

  - no graph, no Tensor objects, no per-op validation (the shapes are fixed by the config);
  - at T = 1, (B, T, n, HS) -> (B, n, T, HS) is a reshape, not a permute copy;
  - the LM head runs on the last position only (the logits of prompt positions are unused).

Scope: a model whose modules are exactly nn's GPT classes. Anything else — a LoRA-wrapped
Linear, a subclass, a custom block — is reported by `Decoder.supports(model)` as False, and
the Engine then decodes through GPT.forward, which is always correct. Every GPTConfig field
is handled here (CONFIG_FIELDS lists them; a test fails when GPTConfig gains one that is not
listed, so a new option cannot silently decode differently from GPT.forward):

  - head_dim, n_kv_head: the shapes of the head views (the cache stores whatever k, v are);
  - qkv_bias, attn_out_bias, bias: each Linear's bias, None where absent;
  - qk_norm: the same rms_norm kernel on the (B, T, n, HS) view, before RoPE;
  - rope_theta, rope_scaling: only the rotary tables, which are the model's own;
  - sliding_window: GPTConfig accepts only windows that hold the whole context;
  - linear_layout: each Linear's weight goes to linear_forward with its layout flag (_wb);
  - dropout: off, since the model is in eval mode.
"""
import numpy as np

from .. import backends
try:
    from ..backends import cpu_decode
except ImportError:             # the C extension is not built: the checked backends only
    cpu_decode = None
from ..quantize.layers import DecodeBackend, QuantizedLinear, is_quantized
from ..nn import (GPT, MLP, Block, CausalSelfAttention, Embedding, KVCache, LayerNorm, Linear,
                  RMSNorm, SwiGLU)

# The GPTConfig fields whose effect this file reproduces (see the docstring).
CONFIG_FIELDS = frozenset({
    "family", "vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd",
    "mlp_hidden", "dropout", "bias", "tie_embeddings", "norm_eps", "rope_theta", "head_dim",
    "qkv_bias", "attn_out_bias", "qk_norm", "rope_scaling", "sliding_window", "linear_layout",
    # mixture of experts: an MoE block's mlp is no MLP/SwiGLU, so supports() refuses the model
    # and generation takes GPT.forward with its KV cache (the MoE layer runs per step there)
    "n_experts", "n_experts_per_token", "n_shared_experts", "moe_every", "moe_hidden", "moe_norm_topk_prob",
    "router_aux_loss_coef", "router_z_loss_coef"})


def _plain(module, cls):
    return type(module) is cls


def _linear(module):
    """A Linear, or a QuantizedLinear (int8 / int4 weights: DecodeBackend runs their kernel)."""
    return type(module) in (Linear, QuantizedLinear)


class Decoder:
    @staticmethod
    def supports(model):
        """True when every module is one of nn's own classes (nothing wrapped or replaced)."""
        if type(model) is not GPT or model.training:
            return False
        gpt2 = model.config.family == "gpt2"
        norm, mlp = (LayerNorm, MLP) if gpt2 else (RMSNorm, SwiGLU)
        linears = ["c_attn", "c_proj"] if gpt2 else ["q_proj", "k_proj", "v_proj", "o_proj"]
        mlp_linears = ["c_fc", "c_proj"] if gpt2 else ["gate_proj", "up_proj", "down_proj"]
        for block in model.blocks:
            attn = block.attn if gpt2 else block.self_attn
            norms = (block.ln_1, block.ln_2) if gpt2 else (block.input_layernorm,
                                                           block.post_attention_layernorm)
            if model.config.qk_norm:
                norms += (attn.q_norm, attn.k_norm)
            if not (_plain(block, Block) and _plain(attn, CausalSelfAttention)
                    and _plain(block.mlp, mlp) and all(_plain(n, norm) for n in norms)
                    and all(_linear(getattr(attn, n)) for n in linears)
                    and all(_linear(getattr(block.mlp, n)) for n in mlp_linears)):
                return False
        table = model.transformer.wte if gpt2 else model.model.embed_tokens
        return _plain(table, Embedding) and _linear(model.lm_head)

    def __init__(self, model):
        self.model, self.config = model, model.config
        self.be = backends.get(model.device)
        # model.device / model.dtype walk every parameter; once here, not at every step
        self.device, self.dtype = model.device, model.dtype
        # the C backend without per-call argument checks (backends/cpu_decode.py): the weights are
        # checked once, below and in rows_linear; None on any other backend or dtype
        self.kernels = cpu_decode.for_decoder(self.be, self.dtype) if cpu_decode is not None else None
        if self.kernels is not None:
            self.be = self.kernels
        if is_quantized(model):
            self.be = DecodeBackend(self.be)
        self.gpt2 = self.config.family == "gpt2"
        self.cache = KVCache(self.config.n_layer, self.config.block_size)
        self.layers = [self._layer_weights(block) for block in model.blocks]
        if self.gpt2:
            tr = model.transformer
            self.wte, self.wpe = tr.wte.weight.data, tr.wpe.weight.data
            self.norm_f = (tr.ln_f.weight.data, _data(tr.ln_f.bias), tr.ln_f.eps)
        else:
            self.wte = model.model.embed_tokens.weight.data
            self.norm_f = (model.model.norm.weight.data, model.model.norm.eps)
        self.lm_head = model.lm_head.weight.data

    def _layer_weights(self, block):
        if self.gpt2:
            a, m = block.attn, block.mlp
            return {"ln_1": (block.ln_1.weight.data, _data(block.ln_1.bias), block.ln_1.eps),
                    "ln_2": (block.ln_2.weight.data, _data(block.ln_2.bias), block.ln_2.eps),
                    "qkv": _wb(a.c_attn), "out": _wb(a.c_proj),
                    "fc": _wb(m.c_fc), "proj": _wb(m.c_proj)}
        a, m = block.self_attn, block.mlp
        qk_norm = self.config.qk_norm
        return {"ln_1": (block.input_layernorm.weight.data, block.input_layernorm.eps),
                "ln_2": (block.post_attention_layernorm.weight.data,
                         block.post_attention_layernorm.eps),
                "q": _wb(a.q_proj), "k": _wb(a.k_proj), "v": _wb(a.v_proj), "out": _wb(a.o_proj),
                "q_norm": (a.q_norm.weight.data, a.q_norm.eps) if qk_norm else None,
                "k_norm": (a.k_norm.weight.data, a.k_norm.eps) if qk_norm else None,
                "gate": _wb(m.gate_proj), "up": _wb(m.up_proj), "down": _wb(m.down_proj)}

    @property
    def position(self):
        return self.cache.position

    # --- the pieces --------------------------------------------------------------------------

    def _norm(self, x, params):
        if self.gpt2:
            return self.be.layer_norm_forward(x, *params)[0]
        return self.be.rms_norm_forward(x, *params)[0]

    def _heads(self, x, b, t, n, norm=None):
        """(B, T, n*HS) -> (B, n, T, HS), each head RMS-normalized by `norm` (weight, eps) on
        the way; a reshape when T == 1."""
        be, hs = self.be, self.config.head_size
        if norm is not None:
            x = be.rms_norm_forward(be.reshape(x, (b, t, n, hs)), *norm)[0]   # over HS, per head
        if t == 1:
            return be.reshape(x, (b, n, 1, hs))
        return be.permute(be.reshape(x, (b, t, n, hs)), (0, 2, 1, 3))

    def _attention(self, x, w, layer, b, t, rotary):
        be, nh, nkv = self.be, self.config.n_head, self.config.n_kv_head
        if self.gpt2:
            heads = self._heads(be.linear_forward(x, *w["qkv"]), b, t, nh + 2 * nkv)
            every = slice(None)
            q = be.getitem(heads, (every, slice(0, nh)))
            k = be.getitem(heads, (every, slice(nh, nh + nkv)))
            v = be.getitem(heads, (every, slice(nh + nkv, nh + 2 * nkv)))
        else:
            q = self._heads(be.linear_forward(x, *w["q"]), b, t, nh, w["q_norm"])
            k = self._heads(be.linear_forward(x, *w["k"]), b, t, nkv, w["k_norm"])
            q, k = be.rope_forward(q, *rotary), be.rope_forward(k, *rotary)
            v = self._heads(be.linear_forward(x, *w["v"]), b, t, nkv)
        cache = self.cache
        if cache.keys[layer] is not None:
            k = be.concatenate([cache.keys[layer], k], 2)
            v = be.concatenate([cache.values[layer], v], 2)
        cache.keys[layer], cache.values[layer] = k, v
        y = be.attention_forward(q, k, v)[0]                                   # (B, NH, T, HS)
        if t == 1:
            y = be.reshape(y, (b, 1, nh * self.config.head_size))
        else:
            y = be.reshape(be.permute(y, (0, 2, 1, 3)), (b, t, nh * self.config.head_size))
        return be.linear_forward(y, *w["out"])

    def _mlp(self, x, w):
        be = self.be
        if self.gpt2:
            return be.linear_forward(be.gelu_forward(be.linear_forward(x, *w["fc"])), *w["proj"])
        gate = be.silu_forward(be.linear_forward(x, *w["gate"]))
        return be.linear_forward(be.mul(gate, be.linear_forward(x, *w["up"])), *w["down"])

    # --- one step ----------------------------------------------------------------------------

    def step(self, ids):
        """Feed ids (B, T) at the next positions; return the last position's logits (B, V)."""
        be = self.be
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        b, t = ids.shape
        start = self.cache.position
        if start + t > self.config.block_size:
            raise ValueError(f"positions up to {start + t} exceed block_size {self.config.block_size}")
        device_ids = be.asarray(ids, np.dtype(np.int64))
        x = be.embedding_forward(device_ids, self.wte)                          # (B, T, C)
        rotary = None
        if self.gpt2:
            positions = be.asarray(np.arange(start, start + t, dtype=np.int64), np.dtype(np.int64))
            x = be.add(x, be.embedding_forward(positions, self.wpe))
        else:
            rotary = self.model.rotary.slice(start, t, self.device, self.dtype)
        for layer, w in enumerate(self.layers):
            x = be.add(x, self._attention(self._norm(x, w["ln_1"]), w, layer, b, t, rotary))
            x = be.add(x, self._mlp(self._norm(x, w["ln_2"]), w))
        self.cache.position = start + t
        if t > 1:
            x = be.getitem(x, (slice(None), slice(t - 1, t)))                  # (B, 1, C)
        logits = be.linear_forward(self._norm(x, self.norm_f), self.lm_head, None)
        return be.to_numpy(logits)[:, -1, :]


def _data(param):
    return None if param is None else param.data


def _wb(linear):
    """linear_forward's arguments after x: weight, bias, and whether the weight is (in, out)."""
    return linear.weight.data, _data(linear.bias), linear.weight_layout == "in_out"
