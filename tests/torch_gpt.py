"""The PyTorch peer: our GPT (both families) written independently with torch primitives.

It takes a dict of torch tensors under *our* parameter names (so identical weights are one
`state_dict()` away) and computes logits and loss with PyTorch's own layer_norm, gelu,
scaled_dot_product_attention and cross_entropy. Tests use it as the autograd oracle; the
benchmarks import it as the peer to time. Never imported by the microgpt package.

The Llama family's variants follow the config: head_dim, biases wherever the parameters have
them, qk_norm, and rope_scaling, whose frequencies come from transformers' own
ROPE_INIT_FUNCTIONS (imported only for a scaled config), not from our formula.
"""
import torch
import torch.nn.functional as F


def parameters_from(model, dtype=torch.float32, device="cpu"):
    """Our model's weights as torch leaf tensors that require gradients."""
    return {name: torch.tensor(array, dtype=dtype, device=device, requires_grad=True)
            for name, array in model.state_dict().items()}


def _linear(x, params, prefix):
    bias = params.get(prefix + ".bias")
    return F.linear(x, params[prefix + ".weight"], bias)


def _rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _inv_freq(config):
    hs, theta, scaling = config.head_size, config.rope_theta, config.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return 1.0 / theta ** (torch.arange(0, hs, 2, dtype=torch.float64) / hs)
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    rope = {**scaling, "rope_type": kind, "rope_theta": theta}
    rope.pop("type", None)
    longest = max(config.block_size, rope.get("original_max_position_embeddings", 0) + 1)
    hf = LlamaConfig(hidden_size=config.n_embd, num_attention_heads=config.n_head, head_dim=hs,
                     max_position_embeddings=longest, rope_parameters=rope)
    return ROPE_INIT_FUNCTIONS[kind](hf, "cpu")[0].to(torch.float64)


def _rope(x, config):
    t, hs = x.shape[-2], x.shape[-1]
    inv_freq = _inv_freq(config)
    angles = torch.arange(t, dtype=torch.float64)[:, None] * inv_freq[None, :]
    cos = torch.cat([angles.cos(), angles.cos()], -1).to(x.dtype).to(x.device)
    sin = torch.cat([angles.sin(), angles.sin()], -1).to(x.dtype).to(x.device)
    x1, x2 = x[..., : hs // 2], x[..., hs // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def _attention(q, k, v, n_head):
    group = n_head // k.shape[1]
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def block_forward(params, config, x, layer):
    """One pre-norm Transformer block of layer `layer` on activations x (B, T, C)."""
    c, nh, nkv, hs = config.n_embd, config.n_head, config.n_kv_head, config.head_size
    b, t, _ = x.shape
    p = params
    if config.family == "gpt2":
        pre = f"transformer.h.{layer}."
        h = F.layer_norm(x, (c,), p[pre + "ln_1.weight"], p.get(pre + "ln_1.bias"), config.norm_eps)
        qkv = _linear(h, p, pre + "attn.c_attn").view(b, t, nh + 2 * nkv, hs).transpose(1, 2)
        q, k, v = qkv[:, :nh], qkv[:, nh:nh + nkv], qkv[:, nh + nkv:]
        y = _attention(q, k, v, nh).transpose(1, 2).reshape(b, t, nh * hs)
        x = x + _linear(y, p, pre + "attn.c_proj")
        h = F.layer_norm(x, (c,), p[pre + "ln_2.weight"], p.get(pre + "ln_2.bias"), config.norm_eps)
        return x + _linear(F.gelu(_linear(h, p, pre + "mlp.c_fc"), approximate="tanh"), p, pre + "mlp.c_proj")
    pre = f"model.layers.{layer}."
    h = _rms_norm(x, p[pre + "input_layernorm.weight"], config.norm_eps)
    q, k, v = (_linear(h, p, pre + f"self_attn.{name}").view(b, t, n, hs)
               for name, n in (("q_proj", nh), ("k_proj", nkv), ("v_proj", nkv)))
    if config.qk_norm:                     # each head of each position, over its hs numbers
        q = _rms_norm(q, p[pre + "self_attn.q_norm.weight"], config.norm_eps)
        k = _rms_norm(k, p[pre + "self_attn.k_norm.weight"], config.norm_eps)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    q, k = _rope(q, config), _rope(k, config)
    y = _attention(q, k, v, nh).transpose(1, 2).reshape(b, t, nh * hs)
    x = x + _linear(y, p, pre + "self_attn.o_proj")
    h = _rms_norm(x, p[pre + "post_attention_layernorm.weight"], config.norm_eps)
    gate = F.silu(_linear(h, p, pre + "mlp.gate_proj")) * _linear(h, p, pre + "mlp.up_proj")
    return x + _linear(gate, p, pre + "mlp.down_proj")


def forward(params, config, idx, targets=None):
    """Logits (B, T, V) and mean cross-entropy (ignore_index -100) of our GPT in PyTorch."""
    c = config.n_embd
    t = idx.shape[1]
    p = params
    if config.family == "gpt2":
        x = p["transformer.wte.weight"][idx] + p["transformer.wpe.weight"][torch.arange(t, device=idx.device)]
    else:
        x = p["model.embed_tokens.weight"][idx]
    for layer in range(config.n_layer):
        x = block_forward(p, config, x, layer)
    if config.family == "gpt2":
        x = F.layer_norm(x, (c,), p["transformer.ln_f.weight"], p.get("transformer.ln_f.bias"), config.norm_eps)
        head = p["transformer.wte.weight"] if config.tie_embeddings else p["lm_head.weight"]
    else:
        x = _rms_norm(x, p["model.norm.weight"], config.norm_eps)
        head = p["model.embed_tokens.weight"] if config.tie_embeddings else p["lm_head.weight"]
    logits = x @ head.T
    loss = None
    if targets is not None:
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    return logits, loss
