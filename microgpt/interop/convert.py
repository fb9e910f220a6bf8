"""`microgpt convert SRC DST`: our run format <-> a Hugging Face directory, both ways.

    convert("runs/demo", "export/demo", dtype="bfloat16")   # ours -> HF (transformers loads it)
    convert("Qwen3-0.6B", "runs/qwen3")                      # HF -> ours (generate, --init-from)
    source_kind(path)     -> ("microgpt", checkpoint dir) or ("huggingface", path)
    model_config(path)    -> (GPTConfig, kind): config.json alone, no tensor read

The direction is the source's kind:

    SRC                                         DST
    a run directory (its newest complete        a Hugging Face directory: config.json,
    checkpoint) or one checkpoint directory     model.safetensors in --dtype, generation_
                                                config.json, tokenizer.json + tokenizer_
                                                config.json (interop/hf.py: export_hf)
    a Hugging Face directory (config.json       a run directory holding one model-only
    without our "microgpt" key; single or       checkpoint, DST/checkpoints/step_000000/
    sharded safetensors; a tokenizer.json)      (train/checkpoint.py's format: float32
                                                weights, tokenizer.bpe, no optimizer state)

Both reuse the loaders and writers that exist: nothing here knows a tensor name. The
checkpoint written from a Hugging Face directory is what `microgpt generate DST` and
`microgpt train --init-from DST` read; it has no trainer state, so `--resume` refuses it
(there is no run to continue, only a model to start from).

A round trip changes no tensor: HF -> ours widens float16 / bfloat16 to float32 exactly,
and ours -> HF with the source's --dtype narrows those values back to the same bits
(tests/test_cli_convert.py compares every tensor and transformers' logits).

Everything is checked before any work: SRC must be one of the kinds above, DST must not
exist or be an empty directory (a convert never replaces files), and --dtype names the
Hugging Face side, so it is refused for an HF source (the checkpoint we write is float32,
what training needs). Both outputs appear atomically: written into a temporary directory
beside DST, then renamed into place.
"""
import os
import shutil

from ..errors import CheckpointError, ConfigError
from ..fileio import fsync_dir
from ..train import checkpoint as ckpt
from .hf import CONFIG_FILE, EXPORT_DTYPES, export_hf, load_hf_directory, read_json_object
from .hf_config import choose_model_type, gpt_config_from_hf

MICROGPT, HUGGINGFACE = "microgpt", "huggingface"


def source_kind(path):
    """(kind, directory): MICROGPT with the checkpoint directory a run or checkpoint path
    resolves to, or HUGGINGFACE with the path itself (config.json without our key)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such directory; give a run directory, a checkpoint "
                              f"directory or a Hugging Face model directory")
    config = os.path.join(path, CONFIG_FILE)
    if os.path.isfile(config) and not ckpt.is_complete(path):
        try:
            ours = "microgpt" in read_json_object(config, CONFIG_FILE)
        except CheckpointError:          # unreadable (the loader names it): our files tell
            ours = any(os.path.isfile(os.path.join(path, name))
                       for name in (ckpt.TOKENIZER_FILE,) + ckpt.TRAINING_FILES)
        if not ours:
            return HUGGINGFACE, path
    return MICROGPT, ckpt.resolve(path)


def model_config(path):
    """(GPTConfig, kind) of the model at `path`, from its config.json alone."""
    from ..nn import GPTConfig
    kind, directory = source_kind(path)
    config_path = os.path.join(directory, CONFIG_FILE)
    hf = read_json_object(config_path, CONFIG_FILE)
    if kind == HUGGINGFACE:
        return gpt_config_from_hf(hf, config_path), kind
    gpt = hf.get("microgpt")
    if not isinstance(gpt, dict):
        raise CheckpointError(f"{config_path}: no 'microgpt' model config; not a microgpt checkpoint")
    try:
        return GPTConfig(**gpt), kind
    except (TypeError, ConfigError) as exc:
        raise CheckpointError(f"{config_path}: invalid model config ({exc})") from None


def _check_destination(dst):
    if os.path.exists(dst) and not (os.path.isdir(dst) and not os.listdir(dst)):
        raise CheckpointError(f"{dst}: already exists and is not empty; convert writes a new "
                              f"directory: choose another DST, or delete this one first")


def convert(src, dst, dtype=None):
    """Convert the model at `src` into directory `dst` (see the header); returns a dict
    {"kind": the kind written, "path", "model_type", "dtype", "step"} for the CLI."""
    src, dst = os.fspath(src), os.path.abspath(os.fspath(dst))
    if dtype is not None and dtype not in EXPORT_DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(EXPORT_DTYPES)}, got {dtype!r}")
    kind, directory = source_kind(src)
    if os.path.abspath(directory) == dst or os.path.abspath(src) == dst:
        raise CheckpointError(f"{dst}: SRC and DST are the same directory; give a new DST")
    _check_destination(dst)
    if kind == MICROGPT:
        return _to_huggingface(directory, dst, dtype or "float32")
    if dtype is not None:
        raise ConfigError(f"--dtype sets the weights of a Hugging Face directory written; {src} is "
                          f"one already, and the microgpt checkpoint made from it is float32 (what "
                          f"training needs): drop --dtype")
    return _to_microgpt(directory, dst)


def _to_huggingface(checkpoint_dir, dst, dtype):
    model, tokenizer, generation = ckpt.load_model(checkpoint_dir)
    choose_model_type(model.config)       # refuses a model no HF class has, before any write
    export_hf(model, tokenizer, dst, generation=generation, dtype=dtype)
    return {"kind": HUGGINGFACE, "path": dst, "model_type": choose_model_type(model.config),
            "dtype": dtype, "step": None}


def _to_microgpt(hf_dir, dst):
    loaded = load_hf_directory(hf_dir, tokenizer="required")
    model = loaded.model
    weights = {name: p.numpy() for name, p in model.named_parameters()}   # views: no second copy
    checkpoint = ckpt.Checkpoint(0, model.config.to_dict(), weights, loaded.tokenizer,
                                 dict(loaded.generation))
    parent = os.path.dirname(dst)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(dst)}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        ckpt.save(tmp, checkpoint, keep=1)
        if os.path.isdir(dst):
            os.rmdir(dst)                 # empty (checked above): the rename needs its name
        os.rename(tmp, dst)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"kind": MICROGPT, "path": dst, "model_type": loaded.hf_config.get("model_type"),
            "dtype": "float32", "step": 0}
