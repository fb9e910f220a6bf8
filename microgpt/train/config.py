"""TrainConfig: every knob of a pre-training run as one flat dataclass, plus presets and TOML.

A config is built in three layers, each overriding the one before:

    preset (PRESETS[name], default "demo")  <  TOML file (--config)  <  CLI flags

Every field is a CLI flag of the same name (`n_layer` <-> `--n-layer`), so `add_arguments`
and `from_args` are generated from the dataclass itself, and a TOML file holds the same
keys, flat or grouped in tables (`[model] n_layer = 4` and `n_layer = 4` mean the same;
table names are only for the reader). Unknown keys and values of the wrong type are a
ConfigError naming the key.

Presets (vocab sizes are those of the tokenizer the run trains or loads):
    demo   4 layers x 128 channels, context 256, BPE vocab 2048 (1.1M parameters): 4.9M
           tokens, 1.3 passes over the whole built-in corpus, ~10 minutes on 2 CPU cores
    baby   4 layers x 128 channels, a sanity-check size for benchmarks and tests
    small  6 layers x 384 channels (the "small" GPT of benchmarks, ~10M parameters)
    gpt2   the GPT-2 124M shape: 12 layers x 768 channels, 12 heads, context 1024, V 50257

`config_hash` fingerprints the fields that change what training computes; a resumed run
must have the same hash, so a checkpoint is never continued under different math.
"""
import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, fields

from ..errors import ConfigError
from ..fileio import atomic_write


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
    family: str = "gpt2"             # "gpt2" or "llama"
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 0               # 0 = n_head (multi-head); fewer = grouped-query (llama)
    n_embd: int = 128
    block_size: int = 128
    dropout: float = 0.0
    bias: bool = True
    tie_embeddings: bool = True
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
    log_interval: int = 10
    checkpoint_interval: int = 250
    keep_checkpoints: int = 3
    out_dir: str = "runs/demo"
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self):
        self.validate()

    def validate(self):
        positive = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "grad_accum",
                    "max_steps", "eval_batches", "log_interval", "checkpoint_interval",
                    "keep_checkpoints", "vocab_size", "max_bad_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "sample_interval", "sample_tokens", "num_samples",
                     "n_kv_head", "corpus_bytes", "tokenizer_bytes", "top_k"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.family not in ("gpt2", "llama"):
            raise ConfigError(f"family must be 'gpt2' or 'llama', got {self.family!r}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_kv_head and self.n_head % self.n_kv_head:
            raise ConfigError(f"n_head ({self.n_head}) must be a multiple of n_kv_head "
                              f"({self.n_kv_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise ConfigError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={self.lr} "
                              f"min_lr={self.min_lr}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1 and self.eps > 0):
            raise ConfigError("need 0 <= beta1, beta2 < 1 and eps > 0")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.temperature < 0:
            raise ConfigError("weight_decay, grad_clip and temperature must be >= 0")
        if self.warmup_steps > self.max_steps:
            raise ConfigError(f"warmup_steps ({self.warmup_steps}) must be <= max_steps "
                              f"({self.max_steps})")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"device must be 'cpu' or 'cuda', got {self.device!r}")

    @property
    def tokens_per_step(self):
        return self.batch_size * self.grad_accum * self.block_size

    def to_dict(self):
        return dataclasses.asdict(self)


# Fields that do not change what training computes: they may differ on resume.
RUN_CONTROL_FIELDS = {"eval_interval", "eval_batches", "sample_interval", "sample_tokens",
                      "num_samples", "temperature", "top_k", "log_interval",
                      "checkpoint_interval", "keep_checkpoints", "out_dir", "progress",
                      "max_bad_steps", "data_dir"}


def config_hash(config):
    """sha256 of the JSON of every field that changes the computation (16 hex digits)."""
    payload = {k: v for k, v in config.to_dict().items() if k not in RUN_CONTROL_FIELDS}
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


PRESETS = {
    "demo": dict(n_layer=4, n_head=4, n_embd=128, block_size=256, vocab_size=2048,
                 corpus_bytes=0, tokenizer_bytes=2_000_000, batch_size=8, max_steps=2400,
                 lr=3e-3, min_lr=3e-4, warmup_steps=100, eval_interval=300, eval_batches=8,
                 checkpoint_interval=600, sample_interval=600, sample_tokens=200,
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
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    flat = _flatten(table, path)
    return {k: (v if k == "preset" else _coerce(k, v)) for k, v in flat.items()}


def make_config(preset="demo", toml_path=None, overrides=None):
    """preset < TOML file < overrides (a dict of field values, e.g. from CLI flags)."""
    values = {}
    file_values = load_toml(toml_path) if toml_path else {}
    file_preset = file_values.pop("preset", "demo")
    preset = file_preset if preset is None else preset
    if preset:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        values.update(PRESETS[preset])
    values.update(file_values)
    for key, value in (overrides or {}).items():
        if key not in _FIELDS:
            raise ConfigError(f"unknown config key {key!r}")
        values[key] = _coerce(key, value)
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

def _parse_bool(text):
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def add_arguments(parser):
    """Add --preset, --config and one --flag per TrainConfig field (default: unset)."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="starting point of the config (default: demo)")
    parser.add_argument("--config", metavar="FILE.toml", help="TOML file of config overrides")
    for f in fields(TrainConfig):
        kind = _kind(f.name)
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name,
                            type=_parse_bool if kind is bool else kind,
                            default=None, metavar=kind.__name__.upper(),
                            help=f"(default {f.default!r})")


def overrides_from_args(args):
    """The fields set on the command line, as a dict."""
    return {f.name: getattr(args, f.name) for f in fields(TrainConfig)
            if getattr(args, f.name, None) is not None}
