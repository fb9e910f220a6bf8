"""Test helpers for checking our GPT against Hugging Face transformers (the oracle).

    hf = hf_model("qwen3", head_dim=24, rope_parameters={"rope_type": "linear", "factor": 4.0})
    ours = gpt_from_hf(hf, block_size=64)          # same architecture, same weights

hf_model builds a random-init transformers model from a small config (no download) and then
redraws every parameter, biases and norm gains included: transformers initializes biases to
0 and gains to 1, which would leave a bias on the wrong projection, or a norm applied to the
wrong axis, invisible. gpt_from_hf maps the config by hand and copies the weights by name
(the llama family's names are Hugging Face's). This is a test helper only; the real loader
of checkpoints lives in microgpt/interop/.
"""
import numpy as np
import torch

from microgpt.nn import GPT, GPTConfig

SMALL = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


def _classes(kind):
    import transformers
    return {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
            "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
            "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM)}[kind]


def hf_model(kind, seed=0, dtype=torch.float32, **overrides):
    """A transformers model of `kind` (llama, qwen2, qwen3) on SMALL + overrides, in eval mode,
    every parameter redrawn (redraw_parameters)."""
    config_class, model_class = _classes(kind)
    config = config_class(**{**SMALL, **overrides})
    config._attn_implementation = "sdpa"       # eager's softmax runs in float32 even in float64
    torch.manual_seed(seed)
    model = model_class(config).eval()
    redraw_parameters(model, seed + 1)
    return model.to(dtype)


EMBEDDINGS = ("wte", "wpe", "embed_tokens", "lm_head")


def redraw_parameters(model, seed):
    """Redraw every parameter of a transformers model from a seeded generator, in place:
    matrices N(0, 0.3), embeddings, lm_head and biases N(0, 0.1), norm gains 1 + N(0, 0.2).
    Projections this large let the layers, not the residual copy of the last token's
    embedding, pick the next token; gains and biases away from 1 and 0 make a copy to the
    wrong place visible. The one redraw of every test that builds a transformers model."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1 and name.endswith("weight"):                 # a norm's gain
                p.copy_(1.0 + 0.2 * noise)
            elif p.ndim == 2 and not any(k in name for k in EMBEDDINGS):
                p.copy_(0.3 * noise)
            else:
                p.copy_(0.1 * noise)
    return model


def gpt_config_from_hf(config, block_size):
    """Our GPTConfig for a transformers Llama / Qwen2 / Qwen3 config."""
    kind = config.model_type
    rope = dict(config.rope_parameters)
    attention_bias = getattr(config, "attention_bias", False)
    fields = dict(family="llama", vocab_size=config.vocab_size, block_size=block_size,
                  n_layer=config.num_hidden_layers, n_head=config.num_attention_heads,
                  n_kv_head=config.num_key_value_heads, n_embd=config.hidden_size,
                  mlp_hidden=config.intermediate_size, norm_eps=config.rms_norm_eps,
                  tie_embeddings=config.tie_word_embeddings, rope_theta=rope["rope_theta"],
                  rope_scaling=rope,
                  head_dim=getattr(config, "head_dim", None))
    if kind == "llama":
        fields.update(bias=config.mlp_bias, qkv_bias=attention_bias, attn_out_bias=attention_bias)
    elif kind == "qwen2":
        fields.update(bias=False, qkv_bias=True, attn_out_bias=False)
    elif kind == "qwen3":
        fields.update(bias=False, qkv_bias=attention_bias, attn_out_bias=attention_bias,
                      qk_norm=True)
    else:
        raise ValueError(f"no mapping for model_type {kind!r}")
    return GPTConfig(**fields)


def hf_state_for_gpt(hf, config):
    """transformers' state_dict as NumPy arrays under our names (the same names; a tied
    lm_head is left out, since our GPT holds that Parameter once, as embed_tokens)."""
    state = {name: t.detach().cpu().numpy() for name, t in hf.state_dict().items()}
    if config.tie_embeddings:
        head = state.pop("lm_head.weight", None)
        assert head is None or np.array_equal(head, state["model.embed_tokens.weight"])
    return state


def gpt_from_hf(hf, block_size=64, dtype=np.float32):
    """Our GPT with the architecture and the weights of transformers model `hf`, in eval mode."""
    config = gpt_config_from_hf(hf.config, block_size)
    model = GPT(config, dtype=dtype)
    model.load_state_dict(hf_state_for_gpt(hf, config))     # strict: every name must match
    return model.eval()


def float64_throughout(hf):
    """Make float64 model `hf` compute in float64 throughout; return its rotary frequencies.

    transformers computes the rotary angles t * inv_freq from a float32 inv_freq, and every
    RMSNorm in float32, even in a float64 model; that bounds a float64 comparison near 1e-6.
    Here the angles are computed in float64 from the same frequencies, and the norms by
    their own formula in the input's dtype. A float64 check then gives our model these
    frequencies too, so what is left is rounding (the frequencies are compared to ours, at
    float32 precision, by test_rope_frequencies_equal_transformers)."""
    rotary = hf.model.rotary_emb
    inv_freq = rotary.inv_freq.double()

    def rotary_forward(x, position_ids):        # transformers' formula, in float64
        angles = position_ids[..., None].double() * inv_freq
        angles = torch.cat((angles, angles), dim=-1)
        scale = rotary.attention_scaling
        return (angles.cos() * scale).to(x.dtype), (angles.sin() * scale).to(x.dtype)

    def norm_forward(norm):
        def forward(x):                         # weight * x / sqrt(mean(x^2) + eps), in x's dtype
            return norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon))
        return forward

    rotary.forward = rotary_forward
    for _, module in hf.named_modules():
        if type(module).__name__.endswith("RMSNorm"):
            module.forward = norm_forward(module)
    return inv_freq.numpy()
