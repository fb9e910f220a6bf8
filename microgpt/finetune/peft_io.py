"""Adapters in PEFT's format, both directions: what `peft.PeftModel.from_pretrained` loads.

    ADAPTER_DIR/
        adapter_config.json          {"peft_type": "LORA", "r", "lora_alpha", "lora_dropout",
                                      "target_modules", "fan_in_fan_out", "use_rslora", ...}
        adapter_model.safetensors    base_model.model.<our layer name>.lora_A.weight  (r, in)
                                     base_model.model.<our layer name>.lora_B.weight  (out, r)

Our layer names are the Hugging Face model's (nn/gpt.py), so PEFT's key is ours with the
"base_model.model." prefix PeftModel puts around the model; PEFT strips its adapter name
("default") when it saves, and we strip it too if a file has it. target_modules is written
as the list of full layer names we wrapped (PEFT matches a name exactly or by suffix), so
PEFT wraps exactly those layers. GPT-2's c_attn is a Conv1D in transformers, stored (in,
out): fan_in_fan_out=True tells PEFT so; lora_A and lora_B keep their (r, in) and (out, r)
shapes either way.

Loading checks the adapter against the model before anything is changed: every tensor must
name a layer the model has, with the shapes that layer needs; the first that does not is
named in the CheckpointError. PEFT options we do not implement (DoRA, per-layer rank or
alpha patterns, trained biases, modules_to_save) are refused by name.

Trained token rows (tokens.py) are PEFT's trainable_token_indices: the config holds the
rows (a list for the input embedding, which a tied LM head shares, or {"embed_tokens": rows,
"lm_head": rows}), the weights file one more tensor per table,

    base_model.model.<table>.token_adapter.trainable_tokens_delta   (k, n_embd)

the rows' trained values (PEFT replaces W[rows] by them; they are not differences).
"""
import os

import numpy as np

from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_write, read_json_object, write_json
from ..nn.layers import Linear
from . import tokens
from .lora import adapter_state, apply_lora, lora_layers
from .tokens import token_indices

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."


def adapter_config(model, base_model_name_or_path=None):
    layers = lora_layers(model)
    if not layers:
        raise ConfigError("the model has no LoRA layers to save")
    first = layers[0][1]
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": first.rank,
            "lora_alpha": first.alpha, "lora_dropout": first.lora_dropout.p,
            "target_modules": [name for name, _ in layers], "bias": "none",
            "fan_in_fan_out": model.config.family == "gpt2", "use_rslora": first.use_rslora,
            "use_dora": False, "modules_to_save": None, "init_lora_weights": True,
            "inference_mode": True, "rank_pattern": {}, "alpha_pattern": {},
            "trainable_token_indices": token_indices(model),
            "base_model_name_or_path": base_model_name_or_path}


def write_adapter_weights(model, path):
    """adapter_model.safetensors at `path`, atomically: PEFT's key for every adapter matrix."""
    from safetensors.numpy import save
    tensors = {PREFIX + name: np.ascontiguousarray(array) for name, array in adapter_state(model).items()}
    with atomic_write(path, "wb") as f:
        f.write(save(tensors, metadata={"format": "pt"}))


def write_adapter_config(model, path, base_model_name_or_path=None):
    write_json(path, adapter_config(model, base_model_name_or_path))


def save_adapter(model, out_dir, base_model_name_or_path=None):
    """Write adapter_config.json and adapter_model.safetensors into out_dir (each atomically).
    Returns the two paths."""
    config = adapter_config(model, base_model_name_or_path)       # refuses a model without LoRA
    os.makedirs(out_dir, exist_ok=True)
    weights = os.path.join(out_dir, WEIGHTS_FILE)
    write_adapter_weights(model, weights)
    config_path = os.path.join(out_dir, CONFIG_FILE)
    write_json(config_path, config)
    return config_path, weights


def read_adapter(adapter_dir):
    """(config dict, {our name: array}) of a PEFT LoRA adapter directory, checked."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    config_path = os.path.join(adapter_dir, CONFIG_FILE)
    weights_path = os.path.join(adapter_dir, WEIGHTS_FILE)
    for path in (config_path, weights_path):
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: missing; an adapter directory holds {CONFIG_FILE} and "
                                  f"{WEIGHTS_FILE} (as PEFT's save_pretrained writes them)")
    config = read_json_object(config_path, CheckpointError, "write it with save_adapter or PEFT",
                              "re-save the adapter")
    if config.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{config_path}: peft_type {config.get('peft_type')!r}; only LORA "
                              f"adapters are supported")
    for key, off in (("use_dora", False), ("rank_pattern", {}), ("alpha_pattern", {}),
                     ("modules_to_save", None), ("bias", "none")):
        if config.get(key) not in (off, None) and config.get(key) != off:
            raise CheckpointError(f"{config_path}: {key}={config.get(key)!r} is not supported "
                                  f"(only plain LoRA: {key}={off!r})")
    for key in ("r", "lora_alpha", "target_modules"):
        if key not in config:
            raise CheckpointError(f"{config_path}: no {key!r}; not a LoRA adapter config")
    try:
        raw = load_file(weights_path)
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({error})") from None
    tensors = {}
    for key, array in raw.items():
        name = key[len(PREFIX):] if key.startswith(PREFIX) else key
        name = name.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")
        name = name[:-len(".default")] if name.endswith(f".{tokens.DELTA}.default") else name
        tensors[name] = array
    return config, tensors


def _layer_names(config_targets, model):
    """Full names of the Linear layers PEFT's target_modules select in `model`."""
    targets = [config_targets] if isinstance(config_targets, str) else list(config_targets)
    return [name[:-1] for name, module in model.named_modules()
            if isinstance(module, Linear) and name
            and any(name[:-1] == t or name[:-1].endswith("." + t) for t in targets)]


def check_adapter(model, config, tensors, where):
    """A CheckpointError naming the first adapter tensor that does not fit `model`."""
    modules = dict(model.named_modules())
    rank = int(config["r"])
    rows = _token_rows(model, config.get("trainable_token_indices"), where)
    for name in sorted(tensors):
        if name.endswith(f".{tokens.ADAPTER}.{tokens.DELTA}"):
            table = name[:-len(f".{tokens.ADAPTER}.{tokens.DELTA}")]
            if table not in rows:
                raise CheckpointError(f"{where}: adapter tensor {name!r} names no token table "
                                      f"that trainable_token_indices "
                                      f"{config.get('trainable_token_indices')} selects")
            expected = (len(rows[table]), model.config.n_embd)
            if tuple(tensors[name].shape) != expected:
                raise CheckpointError(f"{where}: adapter tensor {name!r} has shape "
                                      f"{tuple(tensors[name].shape)}, the rows need {expected}; "
                                      f"the adapter was trained on another base")
            continue
        layer_name, _, kind = name.rpartition(".lora_")
        layer = modules.get(layer_name + ".")
        if layer is None or not hasattr(layer, "weight") or kind not in ("A.weight", "B.weight"):
            raise CheckpointError(f"{where}: adapter tensor {name!r} names no Linear layer of the "
                                  f"model; the adapter was trained on another base")
        base = getattr(layer, "weight", None)
        out_features, in_features = (layer.lora_B.weight.shape[0], layer.in_features) \
            if hasattr(layer, "lora_A") else base.shape
        expected = (rank, in_features) if kind == "A.weight" else (out_features, rank)
        if tuple(tensors[name].shape) != expected:
            raise CheckpointError(f"{where}: adapter tensor {name!r} has shape "
                                  f"{tuple(tensors[name].shape)}, the model's layer needs {expected}; "
                                  f"the adapter was trained on another base")


def _token_rows(model, value, where):
    """{full table name: sorted rows} that trainable_token_indices `value` trains in `model`."""
    if value is None:
        return {}
    _, name = tokens.tables(model)
    table = f"{'transformer' if model.config.family == 'gpt2' else 'model'}.{name}"
    if isinstance(value, dict):
        unknown = sorted(set(value) - {name, "lm_head"})
        if unknown:
            raise CheckpointError(f"{where}: trainable_token_indices names {unknown[0]!r}; this "
                                  f"{model.config.family} model's tables are {name!r} and 'lm_head'")
        out = {table if k == name else "lm_head": sorted(set(map(int, v))) for k, v in value.items()}
    else:
        out = {table: sorted(set(map(int, value)))}
    for rows in out.values():
        if rows and (rows[0] < 0 or rows[-1] >= model.config.vocab_size):
            raise CheckpointError(f"{where}: trainable_token_indices {rows} lie outside the "
                                  f"model's {model.config.vocab_size} rows; the adapter was "
                                  f"trained on another base")
    return out


def load_adapter(model, adapter_dir, merge=False):
    """Wrap `model`'s layers as the adapter says, load its matrices; returns the layer names.
    Nothing about the model changes unless the whole adapter fits."""
    config, tensors = read_adapter(adapter_dir)
    where = os.path.join(adapter_dir, WEIGHTS_FILE)
    check_adapter(model, config, tensors, where)
    names = _layer_names(config["target_modules"], model)
    expected = {f"{n}.lora_{k}.weight" for n in names for k in "AB"}
    rows = _token_rows(model, config.get("trainable_token_indices"), where)
    owner, table = tokens.tables(model)
    tied = model.lm_head.weight is getattr(owner, table).weight      # one D, saved once
    expected_tokens = {f"{t}.{tokens.ADAPTER}.{tokens.DELTA}" for t in rows
                       if not (tied and t == "lm_head")}
    missing = sorted((expected | expected_tokens) - set(tensors))
    if missing:
        raise CheckpointError(f"{where}: no tensor {missing[0]!r}, which the adapter config "
                              f"(target_modules {config['target_modules']}, trainable_token_indices "
                              f"{config.get('trainable_token_indices')}) requires")
    apply_lora(model, names, rank=int(config["r"]), alpha=float(config["lora_alpha"]),
               dropout=float(config.get("lora_dropout") or 0.0),
               use_rslora=bool(config.get("use_rslora")))
    if rows:
        tokens.from_config(model, config["trainable_token_indices"])
    params = dict(model.named_parameters())
    for name in sorted(expected | expected_tokens):
        p = params[name]
        p.data = p.backend.asarray(np.asarray(tensors[name]), p.dtype)
    if merge:
        from .lora import merge as merge_all
        merge_all(model)
        tokens.merge_and_unwrap(model)
    return names


def is_adapter_dir(path):
    return os.path.isfile(os.path.join(path, CONFIG_FILE)) and \
        os.path.isfile(os.path.join(path, WEIGHTS_FILE))
