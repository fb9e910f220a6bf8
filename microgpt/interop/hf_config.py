"""Hugging Face config.json and generation_config.json <-> GPTConfig and our sampling defaults.

    gpt_config_from_hf(hf_dict, where)      config.json (parsed) -> GPTConfig, by model_type
    hf_config_from_gpt(config, bos, eos)    GPTConfig -> config.json, the model_type chosen by
                                            the flags (the one HF class that has them all)
    generation_from_hf(gen, where)          generation_config.json -> {"temperature", "top_k",
                                            "top_p", "repetition_penalty", ...} (ours)
    generation_to_hf(generation, bos, eos)  and back

The key names of each model_type (transformers' own, as its save_pretrained writes them):

    GPTConfig       gpt2                    llama / mistral / qwen2 / qwen3
    vocab_size      vocab_size              vocab_size
    block_size      n_positions             max_position_embeddings
    n_embd          n_embd                  hidden_size
    n_layer         n_layer                 num_hidden_layers
    n_head          n_head                  num_attention_heads
    n_kv_head       (= n_head)              num_key_value_heads (absent: = heads)
    mlp_hidden      n_inner (null: 4C)      intermediate_size
    norm_eps        layer_norm_epsilon      rms_norm_eps
    tie_embeddings  tie_word_embeddings     tie_word_embeddings
    dropout         resid_pdrop             0 (these families have no residual dropout)
    rope_theta      -                       rope_theta, or rope_parameters.rope_theta (v5)
    rope_scaling    -                       rope_scaling, or rope_parameters (v5)
    head_dim        -                       head_dim (absent: C / heads; qwen3: 128)
    biases          always                  llama: attention_bias (q, k, v, o), mlp_bias;
                                            qwen2: q, k, v only; qwen3: attention_bias;
                                            mistral: none
    qk_norm         -                       qwen3 only
    linear_layout   "in_out" (Conv1D)       "out_in" (nn.Linear): the layout the files store
                                            the blocks' matrices in, so they load uncopied
    sliding_window  -                       mistral: sliding_window (absent: 4096);
                                            qwen2/3: only with use_sliding_window, and only
                                            if every layer slides (layer_types); GPTConfig
                                            takes a window that holds the whole context
                                            (block_size= caps the context to make it so)

The architecture's sizes are required: a config.json without hidden_size is refused, not
filled with transformers' default of 4096, which would only fail later on every tensor's
shape. Every other key absent takes the default transformers' class gives it, so a config
file read here means what it means to transformers. A key of the wrong type, a value this
engine cannot run (an activation, a rope type, a per-layer sliding window), or an unknown
model_type is a one-line error naming the key and the file.

The mixture-of-experts families (nn/moe.py), beside their dense twins:

    GPTConfig            qwen3_moe (as qwen3, plus)         mixtral (as mistral, plus)
    n_experts            num_experts or num_local_experts   num_local_experts
    n_experts_per_token  num_experts_per_tok                num_experts_per_tok
    moe_hidden           moe_intermediate_size              intermediate_size (every layer MoE)
    mlp_hidden           intermediate_size (dense layers)   = moe_hidden
    moe_every            decoder_sparse_step                1
    moe_norm_topk_prob   norm_topk_prob (absent: False)     True (Mixtral always renormalizes)
    router_aux_loss_coef router_aux_loss_coef               router_aux_loss_coef
    mlp_only_layers (a list of dense layers) other than [] and router_jitter_noise (training
    noise) other than 0 are refused: the layers here are chosen by moe_every alone.

The fields head_dim, qkv_bias, attn_out_bias, qk_norm, rope_scaling, sliding_window and
linear_layout are passed to GPTConfig only when they differ from their defaults, so a plain Llama or GPT-2
maps onto any version of GPTConfig; one that needs a field GPTConfig does not have is
refused by name.
"""
import dataclasses
import math

from ..errors import ConfigError
from ..inference.sampling import SamplingConfig
from ..nn import GPTConfig

SUPPORTED_MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "mixtral")
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM",
                 "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM",
                 "mixtral": "MixtralForCausalLM"}
GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")   # tanh-approximate GELU, ours
ROPE_TYPES = {"default": (), "linear": ("factor",),
              "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                         "original_max_position_embeddings")}
# The optional GPTConfig fields and the value that means "off" (see the header).
OPTIONAL_FIELDS = {"head_dim": None, "qkv_bias": None, "attn_out_bias": None, "qk_norm": False,
                   "rope_scaling": None, "sliding_window": None, "linear_layout": "out_in", "n_experts": 0}
REQUIRED = object()


# --- reading typed keys ---------------------------------------------------------------------------

class _Keys:
    """Typed access to the keys of one parsed JSON file, every error naming key and file."""

    def __init__(self, data, where):
        self.data, self.where = data, where

    def error(self, message):
        return ConfigError(f"{self.where}: {message}")

    def get(self, key, kind, default=REQUIRED):
        """data[key] checked to be of `kind`; absent or null gives `default` (transformers
        reads null as "not set" too), or an error if the key is required."""
        value = self.data.get(key)
        check, what = _KINDS[kind]
        if value is None:
            if default is not REQUIRED:
                return default
            if key in self.data:
                raise self.error(f"key {key!r} must be {what}, got null")
            raise self.error(f"missing key {key!r}; add it (see the model's original config.json)")
        if not check(value):
            raise self.error(f"key {key!r} must be {what}, got {value!r}")
        return float(value) if kind in ("float", "positive") else value


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


_KINDS = {
    "size": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "count": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "int": (_is_int, "an integer"),
    "float": (_is_number, "a number"),
    "positive": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "dict": (lambda v: isinstance(v, dict), "an object"),
    "list": (lambda v: isinstance(v, list), "an array"),
}


# --- config.json -> GPTConfig ---------------------------------------------------------------------

def model_type_of(hf, where):
    keys = _Keys(hf, where)
    model_type = keys.get("model_type", "str")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise keys.error(f"model_type {model_type!r} is not supported; supported: "
                         f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    return model_type


def gpt_config_from_hf(hf, where="config.json", block_size=None):
    """The GPTConfig of a parsed config.json `hf` (`where` names the file in errors).

    block_size caps a Llama-family model's context below max_position_embeddings (its rotary
    tables are computed, not stored): a Mistral window then holds the whole context, which
    is what this engine's attention runs. GPT-2's context is its stored position table."""
    if not isinstance(hf, dict):
        raise ConfigError(f"{where}: not a JSON object")
    model_type = model_type_of(hf, where)
    keys = _Keys(hf, where)
    kwargs = _gpt2(keys) if model_type == "gpt2" else _llama_family(keys, model_type)
    if block_size is not None:
        if not _KINDS["size"][0](block_size) or block_size > kwargs["block_size"]:
            raise ConfigError(f"block_size must be a positive integer <= the model's context of "
                              f"{kwargs['block_size']} positions, got {block_size!r}")
        if model_type == "gpt2" and block_size != kwargs["block_size"]:
            raise ConfigError(f"{where}: a GPT-2 model's context is its stored position table of "
                              f"{kwargs['block_size']} rows; load it without block_size")
        kwargs["block_size"] = block_size
    return _build(kwargs, model_type, where)


def _build(kwargs, model_type, where):
    """GPTConfig(**kwargs), the optional fields passed only when on; errors name the file."""
    have = {f.name for f in dataclasses.fields(GPTConfig)}
    for name, off in OPTIONAL_FIELDS.items():
        if name in kwargs and kwargs[name] == off:
            del kwargs[name]
        elif name in kwargs and name not in have:
            raise ConfigError(f"{where}: this {model_type} model needs GPTConfig.{name} "
                              f"({kwargs[name]!r}), which this version of microgpt does not have")
    try:
        return GPTConfig(**kwargs)
    except (ConfigError, TypeError, ValueError) as exc:
        hint = ""
        if kwargs.get("sliding_window") and "sliding_window" in str(exc):
            hint = (f"; or load with block_size={kwargs['sliding_window']}, a context the window "
                    f"holds whole")
        raise ConfigError(f"{where}: {exc}{hint}") from None


def _gpt2(keys):
    activation = keys.get("activation_function", "str", "gelu_new")
    if activation not in GPT2_ACTIVATIONS:
        raise keys.error(f"activation_function {activation!r} is not supported; supported: "
                         f"{', '.join(GPT2_ACTIVATIONS)} (the tanh approximation of GELU)")
    for key, wanted in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                        ("add_cross_attention", False)):
        if keys.get(key, "bool", wanted) != wanted:
            raise keys.error(f"{key}={not wanted} is not supported; this engine runs GPT-2 with "
                             f"{key}={wanted}")
    n_embd = keys.get("n_embd", "size")
    return {"family": "gpt2", "vocab_size": keys.get("vocab_size", "size"),
            "block_size": keys.get("n_positions", "size"), "n_embd": n_embd,
            "n_layer": keys.get("n_layer", "size"), "n_head": keys.get("n_head", "size"),
            "mlp_hidden": keys.get("n_inner", "size", None) or 4 * n_embd,
            "norm_eps": keys.get("layer_norm_epsilon", "positive", 1e-5),
            "dropout": keys.get("resid_pdrop", "float", 0.1),
            "tie_embeddings": keys.get("tie_word_embeddings", "bool", True), "bias": True,
            "linear_layout": "in_out"}


def _llama_family(keys, model_type):
    act = keys.get("hidden_act", "str", "silu")
    if act != "silu":
        raise keys.error(f"hidden_act {act!r} is not supported; the {model_type} MLP here is SwiGLU "
                         f"with silu")
    n_head = keys.get("num_attention_heads", "size")
    n_embd = keys.get("hidden_size", "size")
    n_layer = keys.get("num_hidden_layers", "size")
    block_size = keys.get("max_position_embeddings", "size")
    rope_theta, rope_scaling = _rope(keys)
    kwargs = {"family": "llama", "vocab_size": keys.get("vocab_size", "size"),
              "block_size": block_size, "n_embd": n_embd, "n_layer": n_layer, "n_head": n_head,
              "n_kv_head": keys.get("num_key_value_heads", "size", n_head),
              "mlp_hidden": keys.get("intermediate_size", "size"),
              "norm_eps": keys.get("rms_norm_eps", "positive", 1e-6), "dropout": 0.0,
              "tie_embeddings": keys.get("tie_word_embeddings", "bool", False),
              "rope_theta": rope_theta, "rope_scaling": rope_scaling}
    head_dim = keys.get("head_dim", "size", 128 if model_type in ("qwen3", "qwen3_moe") else None)
    kwargs["head_dim"] = None if head_dim in (None, n_embd // n_head) and n_embd % n_head == 0 \
        else head_dim
    mlp_bias = attention_bias = qkv_bias = False
    if model_type == "llama":
        attention_bias = qkv_bias = keys.get("attention_bias", "bool", False)
        mlp_bias = keys.get("mlp_bias", "bool", False)
    elif model_type == "qwen2":
        qkv_bias = True
    elif model_type in ("qwen3", "qwen3_moe"):
        attention_bias = qkv_bias = keys.get("attention_bias", "bool", False)
    kwargs.update(bias=mlp_bias, qkv_bias=None if qkv_bias == mlp_bias else qkv_bias,
                  attn_out_bias=None if attention_bias == mlp_bias else attention_bias,
                  qk_norm=model_type in ("qwen3", "qwen3_moe"))
    kwargs["sliding_window"] = _sliding_window(keys, model_type, n_layer)
    if model_type in ("qwen3_moe", "mixtral"):
        kwargs.update(_experts(keys, model_type))
    return kwargs


def _experts(keys, model_type):
    """The GPTConfig MoE fields of a qwen3_moe / mixtral config.json (see the header)."""
    if model_type == "mixtral":
        if keys.get("router_jitter_noise", "float", 0.0):
            raise keys.error("router_jitter_noise other than 0 is not supported (training noise on the "
                             "router's input); set it to 0")
        hidden = keys.get("intermediate_size", "size")
        return {"n_experts": keys.get("num_local_experts", "size", 8),
                "n_experts_per_token": keys.get("num_experts_per_tok", "size", 2), "moe_hidden": hidden,
                "mlp_hidden": hidden, "moe_every": 1, "moe_norm_topk_prob": True,
                "router_aux_loss_coef": keys.get("router_aux_loss_coef", "float", 0.001)}
    if keys.get("mlp_only_layers", "list", None):
        raise keys.error("mlp_only_layers (dense layers listed by index) is not supported; the MoE layers "
                         "here are every decoder_sparse_step-th")
    # transformers 5 writes Qwen3-MoE's num_experts as num_local_experts (its attribute map)
    return {"n_experts": keys.get("num_local_experts", "size", None) or keys.get("num_experts", "size", 128),
            "n_experts_per_token": keys.get("num_experts_per_tok", "size", 8),
            "moe_hidden": keys.get("moe_intermediate_size", "size", 768),
            "moe_every": keys.get("decoder_sparse_step", "size", 1),
            "moe_norm_topk_prob": keys.get("norm_topk_prob", "bool", False),
            "router_aux_loss_coef": keys.get("router_aux_loss_coef", "float", 0.001)}


def _rope(keys):
    """(rope_theta, rope_scaling dict or None), from transformers v5's rope_parameters or
    the older rope_theta + rope_scaling keys."""
    params = keys.get("rope_parameters", "dict", None)
    if params is not None:
        theta = _Keys(params, f"{keys.where} rope_parameters").get("rope_theta", "positive", 10000.0)
        scaling = params
    else:
        theta = keys.get("rope_theta", "positive", 10000.0)
        scaling = keys.get("rope_scaling", "dict", None)
    if scaling is None:
        return theta, None
    where = f"{keys.where} rope scaling"
    sub = _Keys(scaling, where)
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))   # "type": the older name
    if rope_type not in ROPE_TYPES:
        raise sub.error(f"rope type {rope_type!r} is not supported; supported: {', '.join(ROPE_TYPES)}")
    if rope_type == "default":
        return theta, None
    normalized = {"rope_type": rope_type}
    for key in ROPE_TYPES[rope_type]:
        normalized[key] = sub.get(key, "size" if key == "original_max_position_embeddings" else "positive")
    return theta, normalized


def _sliding_window(keys, model_type, n_layer):
    if model_type == "mixtral":        # absent or null: MixtralConfig's None, no window
        return keys.get("sliding_window", "size", None) if keys.data.get("sliding_window") is not None else None
    if model_type == "mistral":        # absent: MistralConfig's 4096; null: no window
        return None if "sliding_window" in keys.data and keys.data["sliding_window"] is None \
            else keys.get("sliding_window", "size", 4096)
    if model_type not in ("qwen2", "qwen3", "qwen3_moe"):
        return None
    use = keys.get("use_sliding_window", "bool", False)
    window = keys.get("sliding_window", "size", 4096) if use else None
    layer_types = keys.get("layer_types", "list", None)
    if layer_types is None:        # transformers' rule: the layers from max_window_layers on slide
        first = keys.get("max_window_layers", "count", 28)
        layer_types = ["sliding_attention" if window is not None and i >= first else "full_attention"
                       for i in range(n_layer)]
    if len(layer_types) != n_layer or not set(layer_types) <= {"full_attention", "sliding_attention"}:
        raise keys.error(f"key 'layer_types' must list 'full_attention' or 'sliding_attention' for each "
                         f"of the {n_layer} layers, got {layer_types!r}")
    sliding = window is not None and "sliding_attention" in layer_types
    if sliding and "full_attention" in layer_types:
        raise keys.error("a sliding window on some layers only (use_sliding_window with "
                         "max_window_layers / layer_types) is not supported: here the window is one "
                         "for the whole model")
    return window if sliding else None


# --- GPTConfig -> config.json ---------------------------------------------------------------------

def _field(config, name, resolved_default):
    """An optional GPTConfig field, None resolved (absent from an older GPTConfig: off)."""
    value = getattr(config, name, None)
    return resolved_default if value is None else value


def choose_model_type(config, strict=True):
    """The HF model_type whose class has exactly this GPTConfig's features. strict=False
    gives the family's own type (gpt2, llama) where none has them: our run checkpoints keep
    the HF key names for any model, transformers just cannot load those few."""
    if isinstance(config, dict):
        config = GPTConfig(**config)
    if not strict:
        try:
            return choose_model_type(config)
        except ConfigError:
            return config.family
    if config.family == "gpt2":
        if not config.bias or config.n_kv_head != config.n_head:
            raise ConfigError("a GPT-2 model without biases or with grouped-query attention has no "
                              "Hugging Face counterpart; use family='llama'")
        return "gpt2"
    qkv = _field(config, "qkv_bias", config.bias)
    out = _field(config, "attn_out_bias", config.bias)
    window = getattr(config, "sliding_window", None)
    if getattr(config, "n_experts", 0):
        return _moe_model_type(config, qkv, out, window)
    if getattr(config, "qk_norm", False):
        if qkv == out and not config.bias and window is None:
            return "qwen3"
    elif window is not None:
        if not (qkv or out or config.bias):
            return "mistral"
    elif qkv and not out and not config.bias:
        return "qwen2"
    elif qkv == out:
        return "llama"
    raise ConfigError(f"no Hugging Face model type has this combination (qk_norm="
                      f"{getattr(config, 'qk_norm', False)}, qkv_bias={qkv}, attn_out_bias={out}, "
                      f"mlp bias={config.bias}, sliding_window={window}); supported: llama (same "
                      f"bias on q, k, v, o), qwen2 (bias on q, k, v only), qwen3 (qk_norm), mistral "
                      f"(sliding window, no biases)")


def _moe_model_type(config, qkv, out, window):
    """qwen3_moe or mixtral for an MoE GPTConfig, or a ConfigError naming what neither has."""
    wrong = [what for what, bad in (("family='gpt2'", config.family != "llama"),
                                    ("biases", qkv or out or config.bias),
                                    (f"n_shared_experts={config.n_shared_experts}", config.n_shared_experts))
             if bad]
    if config.qk_norm:
        if window is not None:
            wrong.append("a sliding window")
        if not wrong:
            return "qwen3_moe"
    else:
        if config.moe_every != 1:
            wrong.append(f"moe_every={config.moe_every} (Mixtral: every layer)")
        if not config.moe_norm_topk_prob:
            wrong.append("moe_norm_topk_prob=False (Mixtral renormalizes)")
        if not wrong:
            return "mixtral"
    raise ConfigError(f"no Hugging Face MoE model type has this combination: {', '.join(wrong)}; "
                      f"supported: qwen3_moe (qk_norm, no biases, no shared experts) and mixtral (no "
                      f"qk_norm, no biases, every layer MoE, top-k renormalized)")


def hf_config_from_gpt(config, bos_token_id=None, eos_token_id=None, dtype="float32", strict=True):
    """config.json (a dict) for a GPTConfig (or its to_dict()), in transformers' key names;
    strict as for choose_model_type."""
    if isinstance(config, dict):
        config = GPTConfig(**config)
    model_type = choose_model_type(config, strict)
    c = config
    if model_type == "gpt2":
        hf = {"vocab_size": c.vocab_size, "n_positions": c.block_size, "n_ctx": c.block_size,
              "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head, "n_inner": c.mlp_hidden,
              "activation_function": "gelu_new", "layer_norm_epsilon": c.norm_eps,
              "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": 0.0,
              "scale_attn_weights": True, "initializer_range": 0.02}
    else:
        head_dim = _field(c, "head_dim", c.n_embd // c.n_head)
        hf = {"vocab_size": c.vocab_size, "max_position_embeddings": c.block_size,
              "hidden_size": c.n_embd, "intermediate_size": c.mlp_hidden,
              "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head,
              "num_key_value_heads": c.n_kv_head, "head_dim": head_dim, "rms_norm_eps": c.norm_eps,
              "rope_theta": c.rope_theta, "hidden_act": "silu", "initializer_range": 0.02,
              "attention_dropout": 0.0}
        scaling = getattr(c, "rope_scaling", None)
        if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
            hf["rope_scaling"] = dict(scaling)
        if model_type == "llama":
            hf.update(attention_bias=_field(c, "qkv_bias", c.bias), mlp_bias=c.bias)
        elif model_type in ("qwen3", "qwen3_moe"):
            hf.update(attention_bias=_field(c, "qkv_bias", c.bias))
        elif model_type in ("mistral", "mixtral"):
            hf.update(sliding_window=c.sliding_window)
        if model_type in ("qwen2", "qwen3", "qwen3_moe"):
            hf.update(use_sliding_window=False, sliding_window=None, max_window_layers=c.n_layer)
        if model_type == "qwen3_moe":
            hf.update(num_experts=c.n_experts, num_experts_per_tok=c.n_experts_per_token,
                      moe_intermediate_size=c.moe_hidden, decoder_sparse_step=c.moe_every, mlp_only_layers=[],
                      norm_topk_prob=c.moe_norm_topk_prob, router_aux_loss_coef=c.router_aux_loss_coef)
        elif model_type == "mixtral":
            hf.update(num_local_experts=c.n_experts, num_experts_per_tok=c.n_experts_per_token,
                      intermediate_size=c.moe_hidden, router_aux_loss_coef=c.router_aux_loss_coef,
                      router_jitter_noise=0.0)
    return {"architectures": [ARCHITECTURES[model_type]], "model_type": model_type, **hf,
            "tie_word_embeddings": c.tie_embeddings, "bos_token_id": bos_token_id,
            "eos_token_id": eos_token_id, "dtype": dtype}


# --- generation_config.json -----------------------------------------------------------------------

# transformers' GenerationConfig defaults for the keys we use: greedy unless do_sample.
HF_GENERATION_DEFAULTS = {"do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0,
                          "repetition_penalty": 1.0}


def _token_ids(keys, key):
    value = keys.data.get(key)
    if value is None or _is_int(value) or (isinstance(value, list) and all(_is_int(v) for v in value)):
        return value
    raise keys.error(f"key {key!r} must be a token id or a list of them, got {value!r}")


def generation_from_hf(gen, where="generation_config.json"):
    """Our sampling defaults from a parsed generation_config.json (None: the file is absent,
    transformers' defaults apply). do_sample false means greedy: temperature 0."""
    gen = {} if gen is None else gen
    if not isinstance(gen, dict):
        raise ConfigError(f"{where}: not a JSON object")
    keys = _Keys(gen, where)
    d = HF_GENERATION_DEFAULTS
    sample = keys.get("do_sample", "bool", d["do_sample"])
    out = {"do_sample": sample,
           "temperature": keys.get("temperature", "float", d["temperature"]) if sample else 0.0,
           "top_k": keys.get("top_k", "count", d["top_k"]) if sample else 0,
           "top_p": keys.get("top_p", "float", d["top_p"]) if sample else 1.0,
           "repetition_penalty": keys.get("repetition_penalty", "float", d["repetition_penalty"])}
    max_new = keys.get("max_new_tokens", "size", None)
    if max_new is not None:
        out["max_new_tokens"] = max_new
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        ids = _token_ids(keys, key)
        if ids is not None:
            out[key] = ids
    try:
        SamplingConfig(temperature=out["temperature"], top_k=out["top_k"], top_p=out["top_p"],
                       repetition_penalty=out["repetition_penalty"])
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}; fix the file") from None
    return out


def generation_to_hf(generation, bos_token_id=None, eos_token_id=None):
    """generation_config.json for our sampling defaults {"temperature", "top_k", ...}."""
    generation = dict(generation or {})
    temperature = generation.get("temperature", 0.8)
    hf = {"bos_token_id": generation.get("bos_token_id", bos_token_id),
          "eos_token_id": generation.get("eos_token_id", eos_token_id)}
    if generation.get("do_sample", True) and temperature > 0:
        hf.update(do_sample=True, temperature=temperature, top_k=generation.get("top_k", 0),
                  top_p=generation.get("top_p", 1.0))
    else:
        hf["do_sample"] = False                  # greedy: transformers warns on a temperature here
    if generation.get("repetition_penalty", 1.0) != 1.0:
        hf["repetition_penalty"] = generation["repetition_penalty"]
    if "max_new_tokens" in generation:
        hf["max_new_tokens"] = generation["max_new_tokens"]
    return hf
