"""TrainConfig: every knob of a pre-training run as one flat dataclass, plus presets and TOML.

A config is built in three layers, each overriding the one before:

    preset (PRESETS[name], default "demo")  <  TOML file (--config)  <  CLI flags

Every field is a CLI flag of the same name (`n_layer` <-> `--n-layer`), so `add_arguments`
and `from_args` are generated from the dataclass itself, and a TOML file holds the same
keys, flat or grouped in tables (`[model] n_layer = 4` and `n_layer = 4` mean the same;
table names are only for the reader). Unknown keys and values of the wrong type are a
ConfigError naming the key.

Every number has its allowed range in FIELD_BOUNDS (floats must also be finite: TOML can
spell nan and inf), checked in one place whichever layer the value came from; the CLI
flags parse with the same bounds, so `--lr nan` is refused before anything runs, naming
the flag.

Warmup scales to short runs: when neither the TOML file nor a flag sets warmup_steps, the
preset's value is capped at max_steps // 10, so `microgpt train --max-steps 6` just runs
(with no warmup) and a long run keeps the preset's. A warmup_steps that *is* set must be
<= max_steps, and the error says so.

Presets (vocab sizes are those of the tokenizer the run trains or loads; `presets_help()`
lists every value each one sets, for `microgpt train --help`):
    demo   Llama family, 4 layers x 96 channels, context 256, BPE vocab 2048 trained on the
           whole built-in corpus (0.64M parameters): 7.4M tokens, 2 passes over it; samples
           with repetition penalty 1.1 (benchmarks/results/demo.md says how it was tuned);
           its wall time on 2 CPU cores is DEMO_MINUTES, the one figure help text and docs quote
    baby   4 layers x 128 channels, a sanity-check size for benchmarks and tests
    small  6 layers x 384 channels (the "small" GPT of benchmarks, ~10M parameters)
    gpt2   the GPT-2 124M shape: 12 layers x 768 channels, 12 heads, context 1024, V 50257

`config_hash` fingerprints the fields that change what training computes; a resumed run
must have the same hash, so a checkpoint is never continued under different math.

Continuing from a model (`init_from`: a run, a checkpoint or a Hugging Face directory). The
model is the checkpoint's: its architecture fields (ARCHITECTURE_FIELDS) are read from its
config.json (no weight is read here) and replace the preset's, and its tokenizer tokenizes
the data, so `tokenizer` and `vocab_size` do not apply. A value of those fields that the
TOML file or a flag sets is an error naming it, unless it equals the checkpoint's, since
silently training another model than the one asked for is worse than stopping.
`block_size` stays a setting: the training window, at most the model's context (unset, the
preset's, capped at that context); the model keeps its own context. Everything else (the
data, lr, steps, dropout ...) is this run's, and training starts at step 0 with a fresh
optimizer (train/trainer.py).
"""
import argparse
import dataclasses
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, fields
from typing import Optional

from ..errors import ConfigError
from ..fileio import atomic_write


@dataclass(frozen=True)
class Bounds:
    """The allowed values of a number: low and high (None = unbounded), each included unless
    its *_open flag is set. Float values must also be finite."""
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    def __str__(self):
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{self.low}, "
                    f"{self.high}{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high}"
        return "any value"

    def problem(self, value):
        """None if `value` (an int or float) is allowed, else what it must be."""
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number" + ("" if str(self) == "any value" else f" {self}")
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return f"must be {self}"
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return f"must be {self}"
        return None


def check_number(name, value, kind, bounds=Bounds()):
    """Raise ConfigError naming `name` unless value is a `kind` (int, or float: ints accepted)
    within bounds."""
    wrong = isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int)
    if wrong:
        raise ConfigError(f"{name} must be {'a number' if kind is float else 'an integer'}, "
                          f"got {value!r}")
    problem = bounds.problem(value)
    if problem:
        raise ConfigError(f"{name} {problem}, got {value!r}")


def number_type(kind, bounds=Bounds()):
    """An argparse `type=` for ints or floats within bounds: a bad value is an argparse error
    naming the flag ("argument --top-p: must be in (0, 1], got '1.5'")."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'a number' if kind is float else 'an integer'}, got {text!r}") from None
        problem = bounds.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {text!r}")
        return value
    parse.kind, parse.bounds, parse.__name__ = kind, bounds, kind.__name__
    return parse


@dataclass
class TrainConfig:
    # --- data ---------------------------------------------------------------------------
    data: str = "builtin"            # "builtin" (pydoc topics + stdlib sources) or paths, comma-separated
    data_dir: str = ""               # prepared shards; "" = OUT_DIR/data (made if missing)
    text_field: str = "text"         # the JSONL field holding a document's text
    corpus_bytes: int = 4_000_000    # cap on the built-in corpus's size (0 = all of it)
    tokenizer: str = ""              # a saved tokenizer file; "" = train a BPE on the corpus
    vocab_size: int = 2048           # vocabulary of the BPE trained when tokenizer == ""
    tokenizer_bytes: int = 2_000_000  # bytes of text the BPE is trained on
    val_fraction: float = 0.02       # share of documents held out for validation
    # --- model (GPTConfig fields) ---------------------------------------------------------
    init_from: str = ""              # "" = a fresh model; else a run, checkpoint or HF directory
    family: str = "gpt2"             # "gpt2" or "llama"
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 0               # 0 = n_head (multi-head); fewer = grouped-query (llama)
    n_embd: int = 128
    block_size: int = 128
    dropout: float = 0.0
    bias: bool = True
    tie_embeddings: bool = True
    # mixture of experts (nn/moe.py): n_experts > 0 routes every moe_every-th block's MLP
    n_experts: int = 0               # 0 = the dense MLP everywhere
    n_experts_per_token: int = 2     # top-k, at most n_experts
    n_shared_experts: int = 0        # a SwiGLU of n_shared_experts * moe_hidden every token takes
    moe_every: int = 1               # layer i (from 0) is MoE when (i + 1) % moe_every == 0
    moe_hidden: int = 0              # each expert's hidden size; 0 = the dense MLP's
    moe_norm_topk_prob: bool = True  # renormalize the top-k router weights to sum 1
    router_aux_loss_coef: float = 0.01   # weight of the load-balancing loss
    router_z_loss_coef: float = 0.0      # weight of the router z-loss
    # --- optimization ---------------------------------------------------------------------
    batch_size: int = 16             # sequences per micro-batch
    grad_accum: int = 1              # micro-batches per optimizer step
    max_steps: int = 1000
    lr: float = 3e-3                 # peak learning rate
    min_lr: float = 3e-4             # floor of the cosine decay
    warmup_steps: int = 50
    weight_decay: float = 0.1
    decay_embeddings: bool = False   # apply weight decay to wte/wpe too
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0           # max global gradient norm; 0 = no clipping
    max_bad_steps: int = 5           # consecutive NaN/inf steps before the run stops
    seed: int = 1337
    # --- evaluation, samples, logging, checkpoints -----------------------------------------
    eval_interval: int = 200
    eval_batches: int = 8
    sample_interval: int = 0         # 0 = samples only at the end
    sample_tokens: int = 128
    num_samples: int = 3
    temperature: float = 0.8
    top_k: int = 40
    repetition_penalty: float = 1.0  # CTRL penalty on ids already in the context; 1 = off
    log_interval: int = 10
    checkpoint_interval: int = 250
    keep_checkpoints: int = 3
    out_dir: str = "runs/demo"
    device: str = "cpu"
    dtype: str = "float32"           # bf16: the matmuls' operands in bf16 (cuda only)
    progress: bool = True

    def __post_init__(self):
        self.validate()

    def validate(self):
        for name, bounds in FIELD_BOUNDS.items():
            check_number(name, getattr(self, name), _kind(name), bounds)
        for name, choices in FIELD_CHOICES.items():
            if getattr(self, name) not in choices:
                raise ConfigError(f"{name} must be {' or '.join(map(repr, choices))}, "
                                  f"got {getattr(self, name)!r}")
        if self.n_embd % self.n_head and not self.init_from:     # a loaded model may set head_dim
            raise ConfigError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_kv_head and self.n_head % self.n_kv_head:
            raise ConfigError(f"n_head ({self.n_head}) must be a multiple of n_kv_head "
                              f"({self.n_kv_head})")
        if self.n_experts and self.n_experts_per_token > self.n_experts:
            raise ConfigError(f"n_experts_per_token ({self.n_experts_per_token}, the top-k) must be <= "
                              f"n_experts ({self.n_experts}): each token picks k distinct experts")
        if self.dtype == "bf16" and self.device != "cuda":
            raise ConfigError(f"dtype bf16 runs on the tensor cores of --device cuda; the {self.device} "
                              f"kernels compute in float32: add --device cuda, or drop --dtype bf16")
        if self.min_lr > self.lr:
            raise ConfigError(f"need min_lr <= lr, got lr={self.lr} min_lr={self.min_lr}")
        if self.warmup_steps > self.max_steps:
            raise ConfigError(f"warmup_steps ({self.warmup_steps}) must be <= max_steps "
                              f"({self.max_steps}): lower --warmup-steps, or leave it unset "
                              f"(warmup is then at most max_steps // 10)")

    @property
    def tokens_per_step(self):
        return self.batch_size * self.grad_accum * self.block_size

    def to_dict(self):
        return dataclasses.asdict(self)


# The allowed range of every number field (the CLI flags parse with the same bounds).
_AT_LEAST_1 = Bounds(1)
_AT_LEAST_0 = Bounds(0)
_UNIT = Bounds(0.0, 1.0, high_open=True)                  # [0, 1)
FIELD_BOUNDS = {
    **{name: _AT_LEAST_1 for name in (
        "n_layer", "n_head", "n_embd", "block_size", "batch_size", "grad_accum", "max_steps",
        "eval_interval", "eval_batches", "log_interval", "checkpoint_interval",
        "keep_checkpoints", "max_bad_steps", "tokenizer_bytes", "n_experts_per_token", "moe_every")},
    **{name: _AT_LEAST_0 for name in (
        "warmup_steps", "sample_interval", "sample_tokens", "num_samples", "n_kv_head",
        "corpus_bytes", "top_k", "seed", "n_experts", "n_shared_experts", "moe_hidden")},
    "vocab_size": Bounds(257),                  # 256 bytes + <|endoftext|> at the least
    "val_fraction": Bounds(0.0, 1.0, low_open=True, high_open=True),   # a run evaluates
    "dropout": _UNIT, "beta1": _UNIT, "beta2": _UNIT,
    "lr": Bounds(0.0, low_open=True), "eps": Bounds(0.0, low_open=True),
    "min_lr": Bounds(0.0), "weight_decay": Bounds(0.0), "grad_clip": Bounds(0.0),
    "temperature": Bounds(0.0), "repetition_penalty": Bounds(0.0, low_open=True),
    "router_aux_loss_coef": Bounds(0.0), "router_z_loss_coef": Bounds(0.0),
}
FIELD_CHOICES = {"family": ("gpt2", "llama"), "device": ("cpu", "cuda"), "dtype": ("float32", "bf16")}


# The fields a model given by init_from fixes: its architecture, as TrainConfig spells it.
# The router's loss weights are not among them: they are this run's training settings.
ARCHITECTURE_FIELDS = ("family", "n_layer", "n_head", "n_kv_head", "n_embd", "bias", "tie_embeddings",
                       "n_experts", "n_experts_per_token", "n_shared_experts", "moe_every", "moe_hidden",
                       "moe_norm_topk_prob")
# The fields that choose a tokenizer, which init_from replaces by the model's own.
TOKENIZER_FIELDS = ("tokenizer", "vocab_size")


def architecture_of(gpt):
    """The ARCHITECTURE_FIELDS values of a GPTConfig (n_kv_head 0 when it equals n_head,
    moe_hidden 0 when it equals mlp_hidden; a dense model's MoE fields are the defaults)."""
    moe = {"n_experts": 0, "n_experts_per_token": _FIELDS["n_experts_per_token"].default,
           "n_shared_experts": 0, "moe_every": 1, "moe_hidden": 0, "moe_norm_topk_prob": True}
    if gpt.n_experts:
        moe = {"n_experts": gpt.n_experts, "n_experts_per_token": gpt.n_experts_per_token,
               "n_shared_experts": gpt.n_shared_experts, "moe_every": gpt.moe_every,
               "moe_hidden": 0 if gpt.moe_hidden == gpt.mlp_hidden else gpt.moe_hidden,
               "moe_norm_topk_prob": gpt.moe_norm_topk_prob}
    return {"family": gpt.family, "n_layer": gpt.n_layer, "n_head": gpt.n_head,
            "n_kv_head": 0 if gpt.n_kv_head == gpt.n_head else gpt.n_kv_head,
            "n_embd": gpt.n_embd, "bias": gpt.bias, "tie_embeddings": gpt.tie_embeddings, **moe}


def architecture_clashes(values, gpt, keys=ARCHITECTURE_FIELDS):
    """['n_layer=8 (the model has 4)', ...]: the fields among `keys` whose value in
    `values` contradicts GPTConfig `gpt` (n_kv_head 0 means n_head)."""
    fixed = architecture_of(gpt)
    same_heads = lambda v: v or fixed["n_head"]          # noqa: E731
    return [f"{k}={values[k]!r} (the model has {fixed[k]!r})" for k in keys if k in values
            and (same_heads(values[k]) != same_heads(fixed[k]) if k == "n_kv_head" else values[k] != fixed[k])]


def check_init_model(config, gpt):
    """Raise ConfigError unless `config` (a TrainConfig with init_from) trains model `gpt`:
    the same architecture, a window within its context."""
    clashes = architecture_clashes(config.to_dict(), gpt)
    if clashes:
        raise ConfigError(f"init_from {config.init_from}: the config describes another model: "
                          f"{', '.join(clashes)}; build it with make_config, which takes them from "
                          f"the checkpoint")
    if config.block_size > gpt.block_size:
        raise ConfigError(f"block_size {config.block_size} is longer than the context of the "
                          f"--init-from model ({gpt.block_size} positions); give at most "
                          f"{gpt.block_size}")


def _adopt_init_model(values, user_set):
    """values (a dict of fields) with the architecture of the model values["init_from"]
    names; user_set: the fields the TOML file or flags set (the preset's give way)."""
    from ..interop.convert import model_config
    path = values["init_from"]
    gpt, _ = model_config(path)
    clashes = architecture_clashes({k: values[k] for k in user_set if k in values}, gpt)
    clashes += [f"{k}={values[k]!r} (the model's own tokenizer is used)" for k in TOKENIZER_FIELDS
                if k in user_set]
    if clashes:
        raise ConfigError(f"--init-from {path} fixes the model and its tokenizer, and these settings "
                          f"contradict it: {', '.join(clashes)}; drop them (or train a fresh model "
                          f"without --init-from)")
    values.update(architecture_of(gpt))
    if "block_size" not in user_set:
        values["block_size"] = min(values.get("block_size", _FIELDS["block_size"].default), gpt.block_size)
    elif isinstance(values["block_size"], int) and values["block_size"] > gpt.block_size:
        raise ConfigError(f"block_size {values['block_size']} is longer than the context of the "
                          f"--init-from model ({gpt.block_size} positions); give at most {gpt.block_size}")
    return values


# Fields that do not change what training computes: they may differ on resume.
RUN_CONTROL_FIELDS = {"eval_interval", "eval_batches", "sample_interval", "sample_tokens",
                      "num_samples", "temperature", "top_k", "repetition_penalty", "log_interval",
                      "checkpoint_interval", "keep_checkpoints", "out_dir", "progress",
                      "max_bad_steps", "data_dir"}


# Fields added after checkpoints were first written: at their defaults they stay out of the
# hash, so a checkpoint of an older version (which lacks them) still resumes.
ADDED_FIELDS = {"n_experts", "n_experts_per_token", "n_shared_experts", "moe_every", "moe_hidden",
                "moe_norm_topk_prob", "router_aux_loss_coef", "router_z_loss_coef", "dtype"}


def config_hash(config):
    """sha256 of the JSON of every field that changes the computation (16 hex digits)."""
    payload = {k: v for k, v in config.to_dict().items() if k not in RUN_CONTROL_FIELDS
               and not (k in ADDED_FIELDS and v == _FIELDS[k].default)}
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# Wall time of the demo (`microgpt train`, no arguments) on 2 CPU cores, in minutes: the one
# figure `microgpt --help`, `microgpt train --help` and the docs quote. Re-measure it when
# the demo preset changes. 6 is the estimate for a quiet machine from the measured work of
# the tuned preset (benchmarks/results/demo.md: 3% less than the ~5-minute preset before it;
# its one run, on a machine shared at load ~5, took 14 minutes).
DEMO_MINUTES = 6

PRESETS = {
    # tuned in benchmarks/results/demo.md: lowest val bits/byte in the time, samples that
    # do not loop (the repetition penalty); eval_batches covers the whole val split
    "demo": dict(family="llama", bias=False, n_layer=4, n_head=4, n_embd=96, block_size=256,
                 vocab_size=2048, corpus_bytes=0, tokenizer_bytes=12_000_000, batch_size=8,
                 max_steps=3600, lr=6e-3, min_lr=6e-4, warmup_steps=100, eval_interval=400,
                 eval_batches=32, checkpoint_interval=900, sample_interval=900,
                 sample_tokens=200, temperature=0.8, top_k=40, repetition_penalty=1.1,
                 out_dir="runs/demo"),
    "baby": dict(n_layer=4, n_head=4, n_embd=128, block_size=256, vocab_size=4096,
                 batch_size=8, max_steps=2000, lr=1e-3, min_lr=1e-4, warmup_steps=100,
                 out_dir="runs/baby"),
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=8192,
                  batch_size=16, max_steps=5000, lr=6e-4, min_lr=6e-5, warmup_steps=200,
                  dropout=0.0, corpus_bytes=0, tokenizer_bytes=8_000_000, out_dir="runs/small"),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257,
                 batch_size=8, grad_accum=64, max_steps=19073, lr=6e-4, min_lr=6e-5,
                 warmup_steps=715, weight_decay=0.1, corpus_bytes=0, tokenizer_bytes=100_000_000,
                 eval_interval=250, checkpoint_interval=1000, out_dir="runs/gpt2"),
}

_FIELDS = {f.name: f for f in fields(TrainConfig)}
_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _kind(name):
    """The Python type of a field (dataclass annotations may be types or their names)."""
    kind = _FIELDS[name].type
    return _TYPES.get(kind, kind)


def _coerce(name, value):
    """Check a TOML value against the field's type (ints are accepted for floats)."""
    kind = _kind(name)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"config key {name!r} must be {kind.__name__}, got {value!r}")
    return value


def _flatten(table, where):
    flat = {}
    for key, value in table.items():
        if isinstance(value, dict):
            for k, v in _flatten(value, f"{where}[{key}]").items():
                flat[k] = v
        else:
            if key not in _FIELDS and key != "preset":
                raise ConfigError(f"{where}: unknown config key {key!r}; known keys: "
                                  f"{', '.join(sorted(_FIELDS))}")
            flat[key] = value
    return flat


def load_toml(path):
    """The {field: value} overrides of a TOML file (optionally naming a `preset`)."""
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    flat = _flatten(table, path)
    return {k: (v if k == "preset" else _coerce(k, v)) for k, v in flat.items()}


def make_config(preset="demo", toml_path=None, overrides=None):
    """preset < TOML file < overrides (a dict of field values, e.g. from CLI flags).

    A warmup_steps set by neither the file nor the overrides is capped at max_steps // 10.
    With init_from, the architecture is the checkpoint's (see the header)."""
    values = {}
    file_values = load_toml(toml_path) if toml_path else {}
    file_preset = file_values.pop("preset", "demo")
    preset = file_preset if preset is None else preset
    if preset:
        if not isinstance(preset, str) or preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        values.update(PRESETS[preset])
    values.update(file_values)
    for key, value in (overrides or {}).items():
        if key not in _FIELDS:
            raise ConfigError(f"unknown config key {key!r}")
        values[key] = _coerce(key, value)
    if values.get("init_from"):
        _adopt_init_model(values, set(file_values) | set(overrides or {}))
    if "warmup_steps" not in file_values and "warmup_steps" not in (overrides or {}):
        warmup = values.get("warmup_steps", _FIELDS["warmup_steps"].default)
        max_steps = values.get("max_steps", _FIELDS["max_steps"].default)
        if isinstance(max_steps, int) and isinstance(warmup, int):
            values["warmup_steps"] = min(warmup, max(max_steps, 0) // 10)
    return TrainConfig(**values)


def from_dict(values):
    """A TrainConfig from a saved dict (e.g. a checkpoint), rejecting unknown keys."""
    unknown = set(values) - set(_FIELDS)
    if unknown:
        raise ConfigError(f"unknown config keys {sorted(unknown)}")
    return TrainConfig(**{k: _coerce(k, v) for k, v in values.items()})


def save_toml(config, path):
    """Write the config as a flat TOML file (atomic), loadable with --config."""
    lines = []
    for name, value in config.to_dict().items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = json.dumps(value)           # a JSON string is a valid TOML basic string
        else:
            text = repr(value)
        lines.append(f"{name} = {text}")
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


# --- the command line: one flag per field ---------------------------------------------------

def boolean(text):
    """An argparse `type=` for true/false flags."""
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false (or yes/no, on/off, 1/0), "
                                     f"got {text!r}")


# Notes a flag's help adds to its default and range.
_HELP_NOTES = {
    "warmup_steps": "at most max_steps // 10 unless set",
    "out_dir": "created if missing",
    "data_dir": "'' = OUT_DIR/data; created if missing",
    "data": "'builtin' or comma-separated paths",
    "tokenizer": "'' = train a BPE of --vocab-size",
    "n_kv_head": "0 = n_head",
    "dtype": "bf16 = mixed precision on --device cuda (bf16 matmul operands, float32 weights, "
             "optimizer, statistics and checkpoints)",
    "n_experts": "0 = dense; > 0 makes the model a mixture of experts",
    "moe_hidden": "0 = the dense MLP's hidden size",
    "grad_clip": "0 = no clipping",
    "sample_interval": "0 = only at the end",
    "corpus_bytes": "0 = all of the built-in corpus",
    "init_from": "'' = a fresh model; a run, checkpoint or Hugging Face directory to continue "
                 "pre-training: its architecture and tokenizer, step 0, a fresh optimizer",
}


def _flag_help(name):
    """'default 256, >= 1' where the default is the demo preset's (the preset that runs)."""
    default = PRESETS["demo"].get(name, _FIELDS[name].default)
    parts = [f"default {default!r}"]
    if name in FIELD_BOUNDS:
        parts.append(str(FIELD_BOUNDS[name]))
    if name in FIELD_CHOICES:
        parts.append(" or ".join(FIELD_CHOICES[name]))
    if name in _HELP_NOTES:
        parts.append(_HELP_NOTES[name])
    return ", ".join(parts)


def presets_help(width=92):
    """Every preset and each value it sets (the rest are the dataclass defaults), wrapped."""
    import textwrap
    lines = ["presets (--preset NAME; a --config file and flags override their values; "
             "flags show the demo's):"]
    for name, values in PRESETS.items():
        head = f"  {name:<7}"
        text = (f"the default, ~{DEMO_MINUTES} minutes on 2 CPU cores: " if name == "demo" else "")
        text += " ".join(f"{k}={v}" for k, v in values.items())
        lines += textwrap.wrap(text, width, initial_indent=head, subsequent_indent=" " * len(head),
                               break_on_hyphens=False, break_long_words=False)
    return "\n".join(lines)


def add_arguments(parser):
    """Add --preset, --config and one --flag per TrainConfig field (default: unset); numbers
    parse within FIELD_BOUNDS, so a bad value is refused before anything runs."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="starting point of the config (default: demo)")
    parser.add_argument("--config", metavar="FILE.toml", help="TOML file of config overrides")
    for f in fields(TrainConfig):
        kind = _kind(f.name)
        if kind is bool:
            parse = boolean
        elif kind in (int, float):
            parse = number_type(kind, FIELD_BOUNDS.get(f.name, Bounds()))
        else:
            parse = kind
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=parse,
                            choices=FIELD_CHOICES.get(f.name), default=None,
                            metavar=kind.__name__.upper(), help=_flag_help(f.name))


def overrides_from_args(args):
    """The fields set on the command line, as a dict."""
    return {f.name: getattr(args, f.name) for f in fields(TrainConfig)
            if getattr(args, f.name, None) is not None}
