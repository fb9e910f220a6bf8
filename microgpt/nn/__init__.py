"""Neural-network building blocks and the GPT model family."""
from .attention import CausalSelfAttention, KVCache, positions_from_segments, rope_inv_freq, rope_tables
from .gpt import GPT, Block, GPTConfig
from .layers import MLP, Dropout, Embedding, LayerNorm, Linear, RMSNorm, SwiGLU
from .module import Module, ModuleList, Parameter

__all__ = ["GPT", "GPTConfig", "Block", "CausalSelfAttention", "KVCache", "positions_from_segments", "rope_inv_freq",
           "rope_tables", "MLP", "SwiGLU", "Dropout", "Embedding", "LayerNorm", "Linear", "RMSNorm",
           "Module", "ModuleList", "Parameter"]
