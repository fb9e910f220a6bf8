"""Checkpoints: a model directory a user recognizes, plus the state to resume bit for bit.

    RUN_DIR/checkpoints/step_000250/
        config.json              Hugging Face key names (GPT2LMHeadModel or LlamaForCausalLM)
                                 plus "microgpt": our GPTConfig, for an exact round trip
        model.safetensors        GPT-2 / Llama tensor names; GPT-2's attn/mlp matrices stored
                                 in its Conv1D layout (in, out), so transformers loads the file
        tokenizer.bpe            the tokenizer, in microgpt's text format (Tokenizer.save)
        generation_config.json   bos/eos ids and default sampling settings
        optimizer.safetensors    AdamW moments: exp_avg.NAME, exp_avg_sq.NAME
        trainer_state.json       step, optimizer step count, RNG states, loader positions,
                                 the TrainConfig and its hash, the latest metrics
        COMPLETE                 written last: the sha256 and size of every file above

No pickle anywhere: tensors are safetensors, everything else JSON.

Atomicity. A checkpoint is written into `checkpoints/.tmp-step_N-PID/`, every file and the
directory fsync'ed, then renamed to `step_N` and the parent fsync'ed, and only then is the
COMPLETE marker written (atomically, itself). A kill at any moment leaves either no
`step_N`, or a `step_N` without COMPLETE — which `latest()` and `--resume` ignore — and the
previous checkpoint untouched. Old checkpoints beyond `keep` are pruned only after the new
one is complete, marker first, so a half-deleted directory never looks complete.

Loading verifies every file against the marker's checksums, then parses; any problem is a
CheckpointError saying which file and what to do.
"""
import hashlib
import json
import os
import re
import shutil

import numpy as np

from ..errors import CheckpointError
from ..fileio import fsync_dir, write_json

FORMAT_VERSION = 1
MARKER = "COMPLETE"
TOKENIZER_FILE = "tokenizer.bpe"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight",
                    "mlp.c_proj.weight")


# --- small file helpers ------------------------------------------------------------------------

def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc}); the checkpoint is corrupt") from exc


def _fsync_file(path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_tensors(path, tensors, metadata=None):
    from safetensors.numpy import save_file
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    save_file(arrays, path, metadata=metadata)


def load_tensors(path):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: missing")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read safetensors ({exc}); the file is corrupt") from exc


# --- Hugging Face names and layouts ---------------------------------------------------------------

def to_hf_tensors(state, family):
    """Our state_dict -> the tensors of the family's HF checkpoint (GPT-2 Conv1D transposed)."""
    if family != "gpt2":
        return dict(state)                 # Llama names and (out, in) layouts are already HF's
    return {k: (np.ascontiguousarray(v.T) if k.endswith(_CONV1D_SUFFIXES) else v)
            for k, v in state.items()}


def from_hf_tensors(tensors, family):
    """Inverse of to_hf_tensors (the transpose is its own inverse)."""
    return to_hf_tensors(tensors, family)


def hf_config(gpt, eot_id):
    """config.json for a GPTConfig `gpt` (a dict), in the family's Hugging Face key names."""
    if gpt["family"] == "gpt2":
        hf = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
              "vocab_size": gpt["vocab_size"], "n_positions": gpt["block_size"],
              "n_ctx": gpt["block_size"], "n_embd": gpt["n_embd"], "n_layer": gpt["n_layer"],
              "n_head": gpt["n_head"], "n_inner": gpt["mlp_hidden"],
              "activation_function": "gelu_new", "layer_norm_epsilon": gpt["norm_eps"],
              "resid_pdrop": gpt["dropout"], "embd_pdrop": gpt["dropout"], "attn_pdrop": 0.0,
              "initializer_range": 0.02}
    else:
        hf = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "vocab_size": gpt["vocab_size"], "max_position_embeddings": gpt["block_size"],
              "hidden_size": gpt["n_embd"], "intermediate_size": gpt["mlp_hidden"],
              "num_hidden_layers": gpt["n_layer"], "num_attention_heads": gpt["n_head"],
              "num_key_value_heads": gpt["n_kv_head"], "rms_norm_eps": gpt["norm_eps"],
              "rope_theta": gpt["rope_theta"], "hidden_act": "silu",
              "attention_bias": gpt["bias"], "mlp_bias": gpt["bias"]}
    hf.update({"tie_word_embeddings": gpt["tie_embeddings"], "bos_token_id": eot_id,
               "eos_token_id": eot_id, "torch_dtype": "float32", "microgpt": dict(gpt)})
    return hf


# --- finding checkpoints -------------------------------------------------------------------------

def checkpoints_dir(run_dir):
    return os.path.join(run_dir, "checkpoints")


def _step_dirs(run_dir):
    """[(step, path)] of every step_N directory, complete or not, sorted by step."""
    root = checkpoints_dir(run_dir)
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        match = _STEP_DIR.match(name)
        if match and os.path.isdir(os.path.join(root, name)):
            found.append((int(match.group(1)), os.path.join(root, name)))
    return sorted(found)


def is_complete(path):
    return os.path.isfile(os.path.join(path, MARKER))


def list_complete(run_dir):
    return [(s, p) for s, p in _step_dirs(run_dir) if is_complete(p)]


def latest(run_dir):
    """Path of the newest complete checkpoint in run_dir, or None."""
    done = list_complete(run_dir)
    return done[-1][1] if done else None


def resolve(path):
    """A checkpoint directory from either a checkpoint directory or a run directory."""
    if os.path.isfile(os.path.join(path, "config.json")) and os.path.isfile(
            os.path.join(path, "model.safetensors")):
        return path
    found = latest(path)
    if found is None:
        partial = [p for _, p in _step_dirs(path)]
        hint = f" ({len(partial)} incomplete ones were ignored)" if partial else ""
        raise CheckpointError(f"{path}: no complete checkpoint found{hint}; train with "
                              f"`microgpt train --out-dir {path}` first")
    return found


# --- saving --------------------------------------------------------------------------------------

def save(run_dir, step, files, keep=3):
    """Write one checkpoint atomically and prune old ones; returns its path.

    files: {name: writer} where writer(path) writes that file (the caller knows formats).
    """
    root = checkpoints_dir(run_dir)
    os.makedirs(root, exist_ok=True)
    for name in os.listdir(root):                  # leftovers of killed saves
        if name.startswith(".tmp-") or name.startswith(".trash-"):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    final = os.path.join(root, f"step_{step:06d}")
    tmp = os.path.join(root, f".tmp-step_{step:06d}-{os.getpid()}")
    os.makedirs(tmp)
    manifest = {}
    for name, writer in files.items():
        path = os.path.join(tmp, name)
        writer(path)
        _fsync_file(path)
        manifest[name] = {"sha256": _sha256(path), "bytes": os.path.getsize(path)}
    fsync_dir(tmp)
    if os.path.exists(final):                      # an incomplete one, or a re-save of this step
        trash = os.path.join(root, f".trash-step_{step:06d}-{os.getpid()}")
        os.rename(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.rename(tmp, final)
    fsync_dir(root)
    write_json(os.path.join(final, MARKER), {"format": "microgpt-checkpoint",
                                            "version": FORMAT_VERSION, "step": step,
                                            "files": manifest})
    fsync_dir(final)
    prune(run_dir, keep)
    return final


def prune(run_dir, keep):
    """Delete all but the newest `keep` complete checkpoints (marker first)."""
    done = list_complete(run_dir)
    for _, path in done[:max(len(done) - keep, 0)]:
        os.remove(os.path.join(path, MARKER))
        fsync_dir(path)
        shutil.rmtree(path, ignore_errors=True)


# --- loading -------------------------------------------------------------------------------------

def verify(path):
    """Check every file against the COMPLETE marker; returns the marker's dict."""
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if not is_complete(path):
        raise CheckpointError(f"{path}: incomplete checkpoint (no {MARKER} marker; the save was "
                              f"interrupted); use an earlier one")
    marker = read_json(os.path.join(path, MARKER))
    if marker.get("format") != "microgpt-checkpoint" or marker.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unknown checkpoint format {marker.get('format')!r} "
                              f"version {marker.get('version')!r}")
    for name, info in marker.get("files", {}).items():
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            raise CheckpointError(f"{file}: missing from the checkpoint")
        if os.path.getsize(file) != info["bytes"] or _sha256(file) != info["sha256"]:
            raise CheckpointError(f"{file}: contents do not match the checksum recorded when the "
                                  f"checkpoint was written; the file is corrupt. Delete {path} "
                                  f"to fall back to the previous checkpoint")
    return marker


def load_model_files(path, check=True):
    """(GPTConfig dict, {name: array} in our naming) from a checkpoint directory."""
    if check:
        verify(path)
    config = read_json(os.path.join(path, "config.json"))
    gpt = config.get("microgpt")
    if not isinstance(gpt, dict) or "family" not in gpt:
        raise CheckpointError(f"{path}/config.json: no 'microgpt' model config; not a microgpt "
                              f"checkpoint")
    tensors = from_hf_tensors(load_tensors(os.path.join(path, "model.safetensors")),
                              gpt["family"])
    return gpt, tensors


def load_model(path, device="cpu"):
    """(GPT, Tokenizer, generation config dict) from a checkpoint or run directory."""
    from ..nn import GPT, GPTConfig
    from ..tokenizer import Tokenizer
    path = resolve(path)
    gpt, tensors = load_model_files(path)
    try:
        config = GPTConfig(**gpt)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}/config.json: invalid model config ({exc})") from exc
    model = GPT(config)
    model.load_state_dict(tensors)
    if device != "cpu":
        model.to(device)
    tokenizer = Tokenizer.load(os.path.join(path, TOKENIZER_FILE))
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(f"{path}: tokenizer has {tokenizer.vocab_size} ids but the model "
                              f"{config.vocab_size}")
    generation = {}
    if os.path.isfile(os.path.join(path, "generation_config.json")):
        generation = read_json(os.path.join(path, "generation_config.json"))
    return model, tokenizer, generation
