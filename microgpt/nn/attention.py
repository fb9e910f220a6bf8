"""Causal self-attention: projections, heads, rotary positions, the KV cache.

    q, k, v = project(x)                  (B, T, C) -> (B, NH, T, HS), (B, NKV, T, HS) x 2
    q, k    = rope(q), rope(k)            Llama family only: rotate by position
    k, v    = cache ++ k, cache ++ v      when decoding with a KV cache
    y       = attention(q, k, v)          one fused op: causal softmax(q k^T / sqrt(HS)) v
    out     = project_out(y)              (B, NH, T, HS) -> (B, T, C)

Grouped-query attention (NKV < NH key/value heads) is handled inside the fused op. The
GPT-2 family projects q, k, v with one fused `c_attn` matrix; the Llama family uses
q_proj, k_proj, v_proj and o_proj, so the parameter names match each family's checkpoints.
There is no dropout on the attention probabilities (they are never materialized); the
residual dropout after the output projection remains.
"""
import numpy as np

from .. import backends, ops, ops_fused
from ..errors import ShapeError
from .layers import Dropout, Linear
from .module import Module


def rope_tables(length, head_size, theta, dtype):
    """cos and sin of the rotary angles, each (length, HS/2).

    angle(t, i) = t / theta^(2i / HS): pair i turns by a frequency that falls geometrically
    with i, so low pairs encode fine positions and high pairs coarse ones (RoFormer, 2021).
    """
    inv_freq = 1.0 / theta ** (np.arange(0, head_size, 2, dtype=np.float64) / head_size)
    angles = np.arange(length, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


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
    def __init__(self, config, rng, proj_std, dtype=np.float32):
        c, hs = config.n_embd, config.head_size
        self.n_head, self.n_kv_head, self.head_size = config.n_head, config.n_kv_head, hs
        self.family = config.family
        if config.family == "gpt2":
            self.c_attn = Linear(c, (self.n_head + 2 * self.n_kv_head) * hs, config.bias, rng, dtype=dtype)
            self.c_proj = Linear(self.n_head * hs, c, config.bias, rng, std=proj_std, dtype=dtype)
        else:
            self.q_proj = Linear(c, self.n_head * hs, config.bias, rng, dtype=dtype)
            self.k_proj = Linear(c, self.n_kv_head * hs, config.bias, rng, dtype=dtype)
            self.v_proj = Linear(c, self.n_kv_head * hs, config.bias, rng, dtype=dtype)
            self.o_proj = Linear(self.n_head * hs, c, config.bias, rng, std=proj_std, dtype=dtype)
        self.dropout = Dropout(config.dropout, rng)

    def _heads(self, x, n):
        """(B, T, n*HS) -> (B, n, T, HS)."""
        b, t, _ = x.shape
        return ops.permute(ops.reshape(x, (b, t, n, self.head_size)), (0, 2, 1, 3))

    def _project(self, x):
        nh, nkv = self.n_head, self.n_kv_head
        if self.family == "gpt2":
            qkv = self._heads(self.c_attn(x), nh + 2 * nkv)          # (B, NH + 2 NKV, T, HS)
            return qkv[:, :nh], qkv[:, nh:nh + nkv], qkv[:, nh + nkv:]
        return self._heads(self.q_proj(x), nh), self._heads(self.k_proj(x), nkv), self._heads(self.v_proj(x), nkv)

    def forward(self, x, rotary=None, cache=None, layer=0):
        """x (B, T, C); rotary = (cos, sin) arrays for these T positions, or None."""
        b, t, _ = x.shape
        q, k, v = self._project(x)
        if rotary is not None:
            q, k = ops_fused.rope(q, *rotary), ops_fused.rope(k, *rotary)
        if cache is not None:
            k, v = cache.extend(layer, k, v)
        y = ops_fused.attention(q, k, v)                             # (B, NH, T, HS)
        y = ops.reshape(ops.permute(y, (0, 2, 1, 3)), (b, t, self.n_head * self.head_size))
        out_proj = self.c_proj if self.family == "gpt2" else self.o_proj
        return self.dropout(out_proj(y))


class RotaryTables:
    """cos/sin tables for positions 0..block_size-1, kept on the model's device."""

    def __init__(self, block_size, head_size, theta):
        self.block_size, self.head_size, self.theta = block_size, head_size, theta
        self._tables = {}   # (device, dtype) -> (cos, sin) backend arrays

    def slice(self, start, length, device, dtype):
        if start + length > self.block_size:
            raise ShapeError(f"positions {start}..{start + length - 1} exceed block_size {self.block_size}")
        key = (device, np.dtype(dtype))
        if key not in self._tables:
            be = backends.get(device)
            cos, sin = rope_tables(self.block_size, self.head_size, self.theta, dtype)
            self._tables[key] = (be.asarray(cos, dtype), be.asarray(sin, dtype))
        be = backends.get(device)
        rows = slice(start, start + length)
        return tuple(be.getitem(table, rows) for table in self._tables[key])
