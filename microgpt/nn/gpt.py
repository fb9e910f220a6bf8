"""GPT: the decoder-only Transformer, in its GPT-2 and Llama families.

    x = embed(idx) [+ wpe(positions)]            (B, T) -> (B, T, C)
    for each block:  x = x + attn(norm_1(x))      pre-norm residual blocks
                     x = x + mlp(norm_2(x))
    logits = norm_f(x) @ W_out^T                  (B, T, V)
    loss = cross_entropy(logits, targets)

                   GPT-2 family                   Llama family
    positions      learned table (wpe)            rotary (RoPE) inside attention
    norm           LayerNorm with bias            RMSNorm
    MLP            GELU, hidden 4C                SwiGLU
    heads          MHA (GQA allowed)              GQA
    biases         yes                            no
    names          transformer.h.0.attn.c_attn    model.layers.0.self_attn.q_proj

The Llama family's options cover the models built like it, each one field of GPTConfig
(no model class of their own):

    Llama 1/2      tie_embeddings=False (Llama 2 70B: n_kv_head < n_head)
    Llama 3        rope_theta 500000, GQA, untied; from 3.1 also rope_scaling
                   {"rope_type": "llama3", ...} (3.2 1B/3B: tied)
    Qwen2/2.5      qkv_bias=True (bias on q, k, v only), GQA, rope_theta 1e6
    Qwen3          qk_norm=True (RMSNorm of each head of q and k), head_dim set apart from
                   n_embd / n_head
    Mistral        sliding_window: accepted when the window holds the whole context
                   (window >= block_size, where it changes nothing); a shorter window is a
                   ConfigError until the attention kernels take one

Parameter names follow each family's Hugging Face checkpoints, so real weights map by name
(GPT-2's Conv1D weights are the transpose of our default Linear's; linear_layout="in_out"
stores the blocks' matrices as Conv1D does, which a GPT-2 checkpoint loads into). Initialization is GPT-2's:
N(0, 0.02), with the residual output projections scaled by 1/sqrt(2 L) so the residual
stream's variance does not grow with depth.

GPT(config, init=False) is the model a loader fills: the same parameters, nothing drawn
(layers.py), every one marked uninitialized (module.py). forward, decoding, state_dict and
export refuse it with a CheckpointError until every parameter has been written, so its
uninitialized memory can never pass for weights.
"""
import math
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from .. import ops_fused
from ..errors import ConfigError, ShapeError
from ..tensor import Tensor
from .attention import CausalSelfAttention, KVCache, RotaryTables, positions_from_segments, rope_scaling_type
from .layers import INIT_STD, MLP, WEIGHT_LAYOUTS, Dropout, Embedding, LayerNorm, Linear, RMSNorm, SwiGLU
from .module import Module, ModuleList
from .moe import MoEMLP

FAMILIES = ("gpt2", "llama")


@dataclass
class GPTConfig:
    family: str = "gpt2"
    vocab_size: int = 50304
    block_size: int = 256              # the longest context
    n_layer: int = 6
    n_head: int = 6
    n_kv_head: Optional[int] = None    # None: as many as n_head (plain multi-head attention)
    n_embd: int = 384
    mlp_hidden: Optional[int] = None   # None: 4C (gpt2), about 8C/3 rounded up to 64 (llama)
    dropout: float = 0.0
    bias: Optional[bool] = None        # None: True for gpt2, False for llama. The MLP's biases,
                                       # and the default of the two attention flags below
    tie_embeddings: bool = True
    norm_eps: Optional[float] = None   # None: 1e-5 (LayerNorm), 1e-6 (RMSNorm)
    rope_theta: float = 10000.0
    # The Llama family's variants (see the module docstring); gpt2 refuses what it lacks.
    head_dim: Optional[int] = None     # None: n_embd // n_head; else any even size (Qwen3)
    qkv_bias: Optional[bool] = None    # None: as bias. Bias on q, k, v (Qwen2: True, bias False)
    attn_out_bias: Optional[bool] = None   # None: as bias. Bias on the attention output
    qk_norm: bool = False              # RMSNorm over head_dim on each head of q and k (Qwen3)
    rope_scaling: Optional[dict] = None    # Hugging Face's dict; None: unscaled (attention.py)
    sliding_window: Optional[int] = None   # Mistral's window; None: full causal attention
    # How the blocks' Linear weights are stored (layers.py): "out_in", (out, in) as PyTorch's
    # Linear; or "in_out", (in, out), the layout of GPT-2's Conv1D, which a GPT-2 checkpoint
    # loads into without a copy. The same model either way; the LM head is the embedding's
    # layout, (V, C), in both.
    linear_layout: str = "out_in"
    # Mixture of experts (nn/moe.py): n_experts > 0 makes every moe_every-th block's MLP a
    # router over n_experts SwiGLU experts of hidden moe_hidden, n_experts_per_token (top-k)
    # of them per token; both families. 0: the dense MLP everywhere.
    n_experts: int = 0
    n_experts_per_token: int = 2
    n_shared_experts: int = 0          # experts every token also goes through (one SwiGLU)
    moe_every: int = 1                 # layer i is MoE when (i + 1) % moe_every == 0 (Qwen3-MoE)
    moe_hidden: Optional[int] = None   # None: mlp_hidden
    moe_norm_topk_prob: bool = True    # renormalize the top-k weights (Mixtral; Qwen3-MoE's flag)
    router_aux_loss_coef: float = 0.01     # the load-balancing loss's weight in the training loss
    router_z_loss_coef: float = 0.0        # the router z-loss's weight

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ConfigError(f"family must be one of {FAMILIES}, got {self.family!r}")
        llama = self.family == "llama"
        self.n_kv_head = self.n_head if self.n_kv_head is None else self.n_kv_head
        self.bias = (not llama) if self.bias is None else self.bias
        self.qkv_bias = self.bias if self.qkv_bias is None else self.qkv_bias
        self.attn_out_bias = self.bias if self.attn_out_bias is None else self.attn_out_bias
        self.norm_eps = (1e-6 if llama else 1e-5) if self.norm_eps is None else self.norm_eps
        if self.mlp_hidden is None:
            self.mlp_hidden = 64 * math.ceil(8 * self.n_embd / 3 / 64) if llama else 4 * self.n_embd
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd", "mlp_hidden"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.head_dim is None:
            if self.n_embd % self.n_head:
                raise ConfigError(f"n_embd={self.n_embd} must be a multiple of n_head={self.n_head} "
                                  f"(or set head_dim)")
            self.head_dim = self.n_embd // self.n_head
        if isinstance(self.head_dim, bool) or not isinstance(self.head_dim, int) or self.head_dim < 1:
            raise ConfigError(f"head_dim must be a positive integer or None, got {self.head_dim!r}")
        for name in ("qkv_bias", "attn_out_bias", "qk_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.n_head % self.n_kv_head:
            raise ConfigError(f"n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head}")
        if llama and self.head_size % 2:
            raise ConfigError(f"rotary positions need an even head size, got {self.head_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if llama:
            rope_scaling_type(self.rope_scaling, self.rope_theta)
            if self.rope_scaling is not None:
                self.rope_scaling = dict(self.rope_scaling)      # the config's own copy
        else:
            self._refuse_llama_options()
        self._check_sliding_window()
        if self.linear_layout not in WEIGHT_LAYOUTS:
            raise ConfigError(f"linear_layout must be one of {WEIGHT_LAYOUTS}, got {self.linear_layout!r}")
        self._check_moe()

    def _check_moe(self):
        """The mixture-of-experts fields (nn/moe.py); all ignored while n_experts is 0."""
        for name in ("n_experts", "n_shared_experts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        if self.moe_hidden is None:
            self.moe_hidden = self.mlp_hidden
        for name in ("n_experts_per_token", "moe_every", "moe_hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.n_experts and self.n_experts_per_token > self.n_experts:
            raise ConfigError(f"n_experts_per_token={self.n_experts_per_token} (top-k) is more than "
                              f"n_experts={self.n_experts}: each token picks k distinct experts; use "
                              f"k <= {self.n_experts}")
        if not isinstance(self.moe_norm_topk_prob, bool):
            raise ConfigError(f"moe_norm_topk_prob must be True or False, got {self.moe_norm_topk_prob!r}")
        for name in ("router_aux_loss_coef", "router_z_loss_coef"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")

    def is_moe_layer(self, layer):
        """Whether block `layer` (from 0) has the routed-experts MLP."""
        return self.n_experts > 0 and (layer + 1) % self.moe_every == 0

    def _refuse_llama_options(self):
        """GPT-2's block has one fused c_attn, learned positions and heads of n_embd / n_head."""
        wrong = []
        if self.n_embd % self.n_head or self.head_dim != self.n_embd // self.n_head:
            wrong.append(f"head_dim={self.head_dim} (gpt2's heads are n_embd / n_head)")
        for name in ("qkv_bias", "attn_out_bias"):
            if getattr(self, name) != self.bias:
                wrong.append(f"{name}={getattr(self, name)} (gpt2 has one bias flag, bias={self.bias})")
        if self.qk_norm:
            wrong.append("qk_norm=True")
        if self.rope_scaling is not None:
            wrong.append(f"rope_scaling={self.rope_scaling!r} (gpt2 has no rotary positions)")
        if self.sliding_window is not None:
            wrong.append(f"sliding_window={self.sliding_window}")
        if wrong:
            raise ConfigError(f"family='gpt2' does not take {'; '.join(wrong)}: these are "
                              f"Llama-family options, use family='llama'")

    def _check_sliding_window(self):
        """Accepted only where it changes nothing. Query i sees key j when 0 <= i - j < window
        (Mistral, as Hugging Face masks it); positions are < block_size, so i - j <= block_size - 1
        and a window >= block_size is plain causal attention. A shorter one needs a window in
        the attention kernels, which they do not take yet."""
        window = self.sliding_window
        if window is None:
            return
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ConfigError(f"sliding_window must be a positive integer or None, got {window!r}")
        if window < self.block_size:
            raise ConfigError(f"sliding_window is not supported yet: a window of {window} positions "
                              f"is shorter than block_size={self.block_size} and the attention kernels "
                              f"take no window; set block_size <= {window} (the window then holds "
                              f"the whole context) or sliding_window=None")

    @property
    def head_size(self):
        return self.head_dim

    def to_dict(self):
        return asdict(self)


class Block(Module):
    """One pre-norm Transformer block; attribute names follow the family's checkpoints."""

    def __init__(self, config, rng, proj_std, dtype, init=True, layer=0):
        self.family = config.family
        attn = CausalSelfAttention(config, rng, proj_std, dtype, init)
        if config.family == "gpt2":
            self.ln_1 = LayerNorm(config.n_embd, config.bias, config.norm_eps, dtype)
            self.attn = attn
            self.ln_2 = LayerNorm(config.n_embd, config.bias, config.norm_eps, dtype)
            self.mlp = MLP(config.n_embd, config.mlp_hidden, config.bias, config.dropout, rng, proj_std, dtype,
                           init, config.linear_layout)
        else:
            self.input_layernorm = RMSNorm(config.n_embd, config.norm_eps, dtype)
            self.self_attn = attn
            self.post_attention_layernorm = RMSNorm(config.n_embd, config.norm_eps, dtype)
            self.mlp = SwiGLU(config.n_embd, config.mlp_hidden, config.bias, config.dropout, rng, proj_std,
                              dtype, init, config.linear_layout)
        if config.is_moe_layer(layer):          # routed SwiGLU experts in place of the dense MLP
            self.mlp = MoEMLP(config, rng, proj_std, dtype, init)

    def forward(self, x, rotary=None, cache=None, layer=0, segment_ids=None):
        if self.family == "gpt2":
            x = x + self.attn(self.ln_1(x), rotary, cache, layer, segment_ids)
            return x + self.mlp(self.ln_2(x))
        x = x + self.self_attn(self.input_layernorm(x), rotary, cache, layer, segment_ids)
        return x + self.mlp(self.post_attention_layernorm(x))


class _Group(Module):
    """A named bag of modules (GPT-2's `transformer`, Llama's `model`)."""

    def __init__(self, **children):
        for name, child in children.items():
            setattr(self, name, child)


class GPT(Module):
    def __init__(self, config, seed=0, dtype=np.float32, init=True):
        """init=False: draw nothing, mark every parameter uninitialized (for a loader to fill)."""
        self.config = config
        rng = np.random.default_rng(seed)
        proj_std = INIT_STD / math.sqrt(2 * config.n_layer)
        c, v = config.n_embd, config.vocab_size
        blocks = ModuleList([Block(config, rng, proj_std, dtype, init, layer) for layer in range(config.n_layer)])
        if config.family == "gpt2":
            self.transformer = _Group(wte=Embedding(v, c, rng, dtype=dtype, init=init),
                                      wpe=Embedding(config.block_size, c, rng, dtype=dtype, init=init),
                                      drop=Dropout(config.dropout, rng), h=blocks,
                                      ln_f=LayerNorm(c, config.bias, config.norm_eps, dtype))
            token_table, self.rotary = self.transformer.wte, None
        else:
            self.model = _Group(embed_tokens=Embedding(v, c, rng, dtype=dtype, init=init), layers=blocks,
                                norm=RMSNorm(c, config.norm_eps, dtype))
            token_table = self.model.embed_tokens
            self.rotary = RotaryTables(config.block_size, config.head_size, config.rope_theta,
                                       config.rope_scaling)
        self.lm_head = Linear(c, v, bias=False, rng=rng, dtype=dtype, init=init)
        if config.tie_embeddings:
            self.lm_head.weight = token_table.weight      # one Parameter under two names
        if not init:
            self.mark_uninitialized()

    @property
    def blocks(self):
        """The Transformer blocks. Whatever runs the model reaches its weights through here
        (forward, inference/decode.py), so a model still uninitialized is refused here."""
        self.check_initialized("GPT")
        return self.transformer.h if self.config.family == "gpt2" else self.model.layers

    def new_kv_cache(self, batch_size=1):
        """An empty cache for incremental decoding (the batch size is set by the first call)."""
        return KVCache(self.config.n_layer, self.config.block_size)

    def forward(self, idx, targets=None, kv_cache=None, ignore_index=-100, loss_weights=None,
                last_only=False, segment_ids=None, position_ids=None, return_hidden=False):
        """idx (B, T) token ids -> (logits (B, T, V), loss or None).

        return_hidden=True returns (logits, loss, hidden), hidden (B, T, C) being the final
        norm's output that the LM head reads: what a scalar head (a reward model's, a value
        head) is put on (finetune/reward.py).

        last_only=True computes the logits of the last position only, (B, 1, V): all that
        sampling the next token needs, and the LM head is the largest matrix of a small model.

        Packed rows: segment_ids (B, T) name each token's document (padding: an id of its own,
        e.g. -1); no token attends across documents, and positions restart per document
        (position_ids, by default positions_from_segments(segment_ids)), so every document's
        logits are those it would get alone. position_ids (B, T) may also be given alone. Both
        are for whole rows (training); decoding with kv_cache counts positions itself.
        """
        self.check_initialized("GPT.forward")
        ids = idx.numpy() if isinstance(idx, Tensor) else np.asarray(idx)
        if ids.ndim != 2:
            raise ShapeError(f"GPT.forward: idx must be (B, T), got shape {ids.shape}")
        b, t = ids.shape
        start = kv_cache.position if kv_cache is not None else 0
        if start + t > self.config.block_size:
            raise ShapeError(f"GPT.forward: positions up to {start + t} exceed block_size "
                             f"{self.config.block_size}")
        position_ids = self._position_ids(b, t, segment_ids, position_ids, kv_cache)
        if self.config.family == "gpt2":
            tr = self.transformer
            positions = np.arange(start, start + t) if position_ids is None else position_ids
            x = tr.wte(ids) + tr.wpe(positions)                        # (B, T, C) + (T or B T, C)
            x, rotary, norm_f = tr.drop(x), None, tr.ln_f
        else:
            x = self.model.embed_tokens(ids)
            rotary = (self.rotary.slice(start, t, self.device, self.dtype) if position_ids is None
                      else self.rotary.gather(position_ids, self.device, self.dtype))
            norm_f = self.model.norm
        for layer, block in enumerate(self.blocks):
            x = block(x, rotary, kv_cache, layer, segment_ids)
        if kv_cache is not None:
            kv_cache.position = start + t
        if last_only:
            if targets is not None:
                raise ShapeError("GPT.forward: last_only=True gives no logits to score targets with")
            x = x[:, t - 1:]                                           # (B, 1, C)
        hidden = norm_f(x)
        logits = self.lm_head(hidden)                                  # (B, T, V)
        loss = None
        if targets is not None:
            loss = ops_fused.cross_entropy(logits, targets, ignore_index, loss_weights)
            loss = self._with_router_losses(loss)
        return (logits, loss, hidden) if return_hidden else (logits, loss)

    def moe_layers(self):
        """The blocks' MoE MLPs (nn/moe.py), in layer order; empty for a dense model."""
        return [block.mlp for block in self.blocks if isinstance(block.mlp, MoEMLP)]

    def _with_router_losses(self, loss):
        """loss + aux_coef * mean aux + z_coef * mean z over the MoE layers (training only)."""
        layers = [m for m in self.moe_layers() if m.aux_loss is not None]
        c = self.config
        for coef, name in ((c.router_aux_loss_coef, "aux_loss"), (c.router_z_loss_coef, "z_loss")):
            if coef and layers:
                total = getattr(layers[0], name)
                for m in layers[1:]:
                    total = total + getattr(m, name)
                loss = loss + total * (coef / len(layers))
        return loss

    def router_stats(self):
        """The last forward's router statistics: per MoE layer tokens per expert, and the
        layers' mean aux loss, z-loss and dropped tokens (0: routing is dropless); None for a
        dense model."""
        layers = [m.stats for m in self.moe_layers() if m.stats is not None]
        if not layers:
            return None
        stats = {"tokens_per_expert": [s["tokens_per_expert"] for s in layers],
                 "dropped_tokens": sum(s["dropped_tokens"] for s in layers)}
        for name in ("aux_loss", "z_loss"):
            if all(name in s for s in layers):
                stats[name] = sum(s[name] for s in layers) / len(layers)
        return stats

    def _position_ids(self, b, t, segment_ids, position_ids, kv_cache):
        """The (B, T) positions of a packed row (checked), or None for the plain 0 .. T-1."""
        if segment_ids is None and position_ids is None:
            return None
        if kv_cache is not None:
            raise ShapeError("GPT.forward: segment_ids and position_ids are for whole rows; "
                             "decoding with a KV cache takes neither")
        for name, given in (("segment_ids", segment_ids), ("position_ids", position_ids)):
            if given is not None and (np.shape(given) != (b, t)
                                      or not np.issubdtype(np.asarray(given).dtype, np.integer)):
                raise ShapeError(f"GPT.forward: {name} must be integers of shape (B, T) = {(b, t)}, "
                                 f"got {np.asarray(given).dtype} {np.shape(given)}")
        if position_ids is None:
            return positions_from_segments(segment_ids)
        position_ids = np.asarray(position_ids, dtype=np.int64)
        if position_ids.min() < 0 or position_ids.max() >= self.config.block_size:
            raise ShapeError(f"GPT.forward: position_ids must lie in [0, block_size={self.config.block_size}), "
                             f"got [{position_ids.min()}, {position_ids.max()}]")
        return position_ids

    def _on_moved(self):
        if self.rotary is not None:
            self.rotary._tables.clear()
