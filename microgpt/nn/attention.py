"""Causal self-attention: projections, heads, rotary positions, the KV cache.

    q, k, v = project(x)                  (B, T, C) -> (B, NH, T, HS), (B, NKV, T, HS) x 2
    q, k    = q_norm(q), k_norm(k)        qk_norm only (Qwen3): RMSNorm over HS, per head
    q, k    = rope(q), rope(k)            Llama family only: rotate by position
    k, v    = cache ++ k, cache ++ v      when decoding with a KV cache
    y       = attention(q, k, v)          one fused op: causal softmax(q k^T / sqrt(HS)) v
                                          (segment_ids: and within one document only)
    out     = project_out(y)              (B, NH, T, HS) -> (B, T, C)

Grouped-query attention (NKV < NH key/value heads) is handled inside the fused op. The
GPT-2 family projects q, k, v with one fused `c_attn` matrix; the Llama family uses
q_proj, k_proj, v_proj and o_proj, so the parameter names match each family's checkpoints.
The head size HS is n_embd / NH unless the config sets head_dim (Qwen3 runs 16 heads of 128
on a width of 1024): q_proj is then (NH HS, C) and o_proj (C, NH HS), and nothing else
cares. Biases: qkv_bias on q, k, v (Qwen2 has them there only), attn_out_bias on the output.

qk-norm needs no kernel of its own: the projection viewed as (B, T, NH, HS) is a stack of
B T NH rows of HS numbers, and the rms_norm op already normalizes the last axis of any
array, so one call with a weight of shape (HS,) normalizes every head of every position
(and its backward sums dweight over all of them). It comes before RoPE, as in Qwen3.

Packed rows (several documents in one row, for fine-tuning): segment_ids (B, T) name each
token's document, the fused op hides every pair of different documents, and each document's
positions restart at 0 (positions_from_segments), so a document sees exactly what it would
see alone in a row. RoPE then takes one position per token: RotaryTables.gather picks the
table rows of those positions, (B T, HS/2), and apply_rope folds the batch into the time
axis so that the rope kernel, whose tables are (T, HS/2) shared by every row, still does the
rotating (the kernels are unchanged).

There is no dropout on the attention probabilities (they are never materialized); the
residual dropout after the output projection remains.
"""
import numpy as np

import math

from .. import backends, ops, ops_fused
from ..errors import ConfigError, ShapeError
from .layers import Dropout, Linear, RMSNorm
from .module import Module

# --- rotary tables and their scalings ----------------------------------------------------------
#
# RoPE turns pair i of a head by the angle t * inv_freq_i at position t. A "rope scaling" is a
# different set of inv_freq, chosen so that a model trained on contexts of L positions can
# read longer ones; it changes the tables and nothing else (the rope kernel is untouched).
# The dict is Hugging Face's `rope_scaling` (now `rope_parameters`) as written in config.json;
# the formulas are those of transformers' modeling_rope_utils.py
# (_compute_linear_scaling_rope_parameters and _compute_llama3_parameters), written out here.

ROPE_SCALING_KEYS = {
    "default": set(),
    "linear": {"factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
}
# Keys a Hugging Face dict may carry besides these: the type under its old name, and (v5)
# rope_theta, which must then agree with the config's own.
_ROPE_SCALING_EXTRA = {"rope_type", "type", "rope_theta"}


def rope_scaling_type(scaling, rope_theta=None):
    """The scaling's type ("default", "linear" or "llama3") after checking the dict, or a
    ConfigError saying which key is wrong. None means "default"."""
    if scaling is None:
        return "default"
    if not isinstance(scaling, dict):
        raise ConfigError(f"rope_scaling must be a dict such as {{'rope_type': 'linear', 'factor': 4.0}} "
                          f"or None, got {scaling!r}")
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if "rope_type" in scaling and "type" in scaling and scaling["type"] != kind:
        raise ConfigError(f"rope_scaling gives two types, rope_type={kind!r} and type={scaling['type']!r}")
    if not isinstance(kind, str) or kind not in ROPE_SCALING_KEYS:
        raise ConfigError(f"rope_scaling type {kind!r} is not supported; the supported types are "
                          f"{', '.join(ROPE_SCALING_KEYS)}")
    needed = ROPE_SCALING_KEYS[kind]
    missing = sorted(needed - set(scaling))
    if missing:
        raise ConfigError(f"rope_scaling of type {kind!r} needs {', '.join(missing)}")
    unknown = sorted(set(scaling) - needed - _ROPE_SCALING_EXTRA)
    if unknown:
        raise ConfigError(f"rope_scaling of type {kind!r} does not take {', '.join(unknown)} "
                          f"(it takes {', '.join(sorted(needed)) or 'no parameters'})")
    for key in needed:
        value = scaling[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"rope_scaling {key} must be a number, got {value!r}")
    if kind != "default" and scaling["factor"] <= 0:
        raise ConfigError(f"rope_scaling factor must be > 0, got {scaling['factor']}")
    if kind == "llama3":
        if not 0 < scaling["low_freq_factor"] < scaling["high_freq_factor"]:
            raise ConfigError(f"rope_scaling needs 0 < low_freq_factor < high_freq_factor, got "
                              f"{scaling['low_freq_factor']} and {scaling['high_freq_factor']}")
        if scaling["original_max_position_embeddings"] <= 0:
            raise ConfigError("rope_scaling original_max_position_embeddings must be > 0, got "
                              f"{scaling['original_max_position_embeddings']}")
    if "rope_theta" in scaling and rope_theta is not None and scaling["rope_theta"] != rope_theta:
        raise ConfigError(f"rope_scaling says rope_theta={scaling['rope_theta']} but the config says "
                          f"rope_theta={rope_theta}; set the config's rope_theta to the model's")
    return kind


def rope_inv_freq(head_size, theta, scaling=None):
    """The rotary frequencies of the HS/2 pairs, float64, after the scaling (see above).

    default   inv_freq_i = theta^(-2i / HS)                   (RoFormer, 2021)
    linear    inv_freq_i / factor                             positions squeezed by `factor`:
              angle(t) = (t / factor) inv_freq, "position interpolation"
    llama3    by wavelength w_i = 2 pi / inv_freq_i, against the training context L
              (original_max_position_embeddings):
                w_i < L / high_freq_factor     unchanged (turns many times within L: the
                                               fine positions, which the model already knows)
                w_i > L / low_freq_factor      inv_freq_i / factor (never completed a turn
                                               within L: squeezed like linear)
                otherwise                      (1 - s) inv_freq_i / factor + s inv_freq_i,
                                               s = (L / w_i - low_freq_factor)
                                                   / (high_freq_factor - low_freq_factor)
              s is 1 at the first boundary and 0 at the second, so the three pieces join.
    """
    kind = rope_scaling_type(scaling)
    inv_freq = 1.0 / theta ** (np.arange(0, head_size, 2, dtype=np.float64) / head_size)
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        context = scaling["original_max_position_embeddings"]
        wavelength = 2 * math.pi / inv_freq
        smooth = (context / wavelength - low) / (high - low)
        medium = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        return np.where(wavelength < context / high, inv_freq,
                        np.where(wavelength > context / low, inv_freq / factor, medium))
    return inv_freq


def rope_tables(length, head_size, theta, dtype, scaling=None):
    """cos and sin of the rotary angles, each (length, HS/2).

    angle(t, i) = t inv_freq_i, inv_freq_i = theta^(-2i / HS) unscaled: pair i turns by a
    frequency that falls geometrically with i, so low pairs encode fine positions and high
    pairs coarse ones (RoFormer, 2021). `scaling` changes the frequencies (rope_inv_freq).
    """
    inv_freq = rope_inv_freq(head_size, theta, scaling)
    angles = np.arange(length, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


def positions_from_segments(segment_ids):
    """Each token's position within its document: (B, T) int64, from segment_ids (B, T).

    position_i = #{j < i : segment_ids[j] == segment_ids[i]}, per row: 0, 1, 2, ... along
    each document, restarting at every new one, as if each document stood alone at the start
    of a row. (For documents laid out contiguously, as a packer writes them, that is i minus
    the index where i's document starts.) Padding, one id of its own, is counted the same way.
    """
    seg = np.asarray(segment_ids)
    if seg.ndim != 2 or not np.issubdtype(seg.dtype, np.integer):
        raise ShapeError(f"positions_from_segments: segment_ids must be an integer (B, T) array, "
                         f"got {seg.dtype} {seg.shape}")
    b, t = seg.shape
    order = np.argsort(seg, axis=1, kind="stable")         # each document's tokens, in order
    ranked = np.take_along_axis(seg, order, axis=1)
    index = np.broadcast_to(np.arange(t), (b, t))
    starts = np.ones((b, t), bool)
    starts[:, 1:] = ranked[:, 1:] != ranked[:, :-1]         # where each document begins
    first = np.maximum.accumulate(np.where(starts, index, 0), axis=1)
    positions = np.empty((b, t), np.int64)
    np.put_along_axis(positions, order, index - first, axis=1)
    return positions


def apply_rope(x, cos, sin):
    """RoPE of x (B, NH, T, HS) with cos/sin either (T, HS/2), shared by every row, or
    (B T, HS/2), one row per token (RotaryTables.gather).

    The per-token case folds the batch into time: x viewed as (NH, 1, B T, HS) has one table
    row per (b, t), which the rope op takes as it is. Two permutes, only for packed rows.
    """
    b, nh, t, hs = x.shape
    if cos.shape[0] == t:
        return ops_fused.rope(x, cos, sin)
    folded = ops.reshape(ops.permute(x, (1, 0, 2, 3)), (nh, 1, b * t, hs))
    rotated = ops_fused.rope(folded, cos, sin)
    return ops.permute(ops.reshape(rotated, (nh, b, t, hs)), (1, 0, 2, 3))


class KVCache:
    """Keys and values of every layer for the positions decoded so far (no gradients)."""

    def __init__(self, n_layer, max_length):
        self.keys = [None] * n_layer
        self.values = [None] * n_layer
        self.position = 0             # how many positions the cache holds
        self.max_length = max_length

    def extend(self, layer, k, v):
        """Append this step's k, v (B, NKV, T, HS) to layer's cache; return the full k, v."""
        if self.keys[layer] is not None:
            k = ops.concatenate([self.keys[layer], k], axis=2)
            v = ops.concatenate([self.values[layer], v], axis=2)
        self.keys[layer], self.values[layer] = k.detach(), v.detach()
        return k, v


class CausalSelfAttention(Module):
    def __init__(self, config, rng, proj_std, dtype=np.float32, init=True):
        c, hs = config.n_embd, config.head_size
        layout = config.linear_layout           # (out, in), or GPT-2 Conv1D's (in, out): layers.py
        self.n_head, self.n_kv_head, self.head_size = config.n_head, config.n_kv_head, hs
        self.family = config.family
        if config.family == "gpt2":
            self.c_attn = Linear(c, (self.n_head + 2 * self.n_kv_head) * hs, config.qkv_bias, rng, dtype=dtype,
                                 init=init, weight_layout=layout)
            self.c_proj = Linear(self.n_head * hs, c, config.attn_out_bias, rng, std=proj_std, dtype=dtype,
                                 init=init, weight_layout=layout)
        else:
            self.q_proj = Linear(c, self.n_head * hs, config.qkv_bias, rng, dtype=dtype, init=init,
                                 weight_layout=layout)
            self.k_proj = Linear(c, self.n_kv_head * hs, config.qkv_bias, rng, dtype=dtype, init=init,
                                 weight_layout=layout)
            self.v_proj = Linear(c, self.n_kv_head * hs, config.qkv_bias, rng, dtype=dtype, init=init,
                                 weight_layout=layout)
            self.o_proj = Linear(self.n_head * hs, c, config.attn_out_bias, rng, std=proj_std, dtype=dtype,
                                 init=init, weight_layout=layout)
            if config.qk_norm:                                       # Qwen3's names
                self.q_norm = RMSNorm(hs, config.norm_eps, dtype)
                self.k_norm = RMSNorm(hs, config.norm_eps, dtype)
        self.qk_norm = config.qk_norm
        self.dropout = Dropout(config.dropout, rng)

    def _heads(self, x, n, norm=None):
        """(B, T, n*HS) -> (B, n, T, HS), normalizing each head by `norm` on the way."""
        b, t, _ = x.shape
        x = ops.reshape(x, (b, t, n, self.head_size))
        if norm is not None:
            x = norm(x)                                              # RMSNorm over HS, per head
        return ops.permute(x, (0, 2, 1, 3))

    def _project(self, x):
        nh, nkv = self.n_head, self.n_kv_head
        if self.family == "gpt2":
            qkv = self._heads(self.c_attn(x), nh + 2 * nkv)          # (B, NH + 2 NKV, T, HS)
            return qkv[:, :nh], qkv[:, nh:nh + nkv], qkv[:, nh + nkv:]
        q_norm, k_norm = (self.q_norm, self.k_norm) if self.qk_norm else (None, None)
        return (self._heads(self.q_proj(x), nh, q_norm), self._heads(self.k_proj(x), nkv, k_norm),
                self._heads(self.v_proj(x), nkv))

    def forward(self, x, rotary=None, cache=None, layer=0, segment_ids=None):
        """x (B, T, C); rotary = (cos, sin) arrays for these T positions (or for each token,
        see apply_rope), or None; segment_ids (B, T) for packed rows, or None."""
        b, t, _ = x.shape
        q, k, v = self._project(x)
        if rotary is not None:
            q, k = apply_rope(q, *rotary), apply_rope(k, *rotary)
        if cache is not None:
            k, v = cache.extend(layer, k, v)
        y = ops_fused.attention(q, k, v, segment_ids)                # (B, NH, T, HS)
        y = ops.reshape(ops.permute(y, (0, 2, 1, 3)), (b, t, self.n_head * self.head_size))
        out_proj = self.c_proj if self.family == "gpt2" else self.o_proj
        return self.dropout(out_proj(y))


class RotaryTables:
    """cos/sin tables for positions 0..block_size-1, kept on the model's device."""

    def __init__(self, block_size, head_size, theta, scaling=None):
        self.block_size, self.head_size, self.theta, self.scaling = block_size, head_size, theta, scaling
        self._tables = {}   # (device, dtype) -> (cos, sin) backend arrays

    def slice(self, start, length, device, dtype):
        if start + length > self.block_size:
            raise ShapeError(f"positions {start}..{start + length - 1} exceed block_size {self.block_size}")
        key = (device, np.dtype(dtype))
        if key not in self._tables:
            be = backends.get(device)
            cos, sin = rope_tables(self.block_size, self.head_size, self.theta, dtype, self.scaling)
            self._tables[key] = (be.asarray(cos, dtype), be.asarray(sin, dtype))
        be = backends.get(device)
        rows = slice(start, start + length)
        return tuple(be.getitem(table, rows) for table in self._tables[key])

    def gather(self, position_ids, device, dtype):
        """cos/sin rows of each token's own position: position_ids (B, T) -> two (B T, HS/2)."""
        ids = np.asarray(position_ids).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.block_size):
            raise ShapeError(f"position_ids must lie in [0, {self.block_size}), got "
                             f"[{ids.min()}, {ids.max()}]")
        cos, sin = self.slice(0, self.block_size, device, dtype)
        be = backends.get(device)
        return be.getitem(cos, ids.astype(np.int64)), be.getitem(sin, ids.astype(np.int64))
