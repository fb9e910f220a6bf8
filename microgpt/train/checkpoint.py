"""The run directory: its layout, and checkpoints a user recognizes that also resume bit for bit.

    ckpt.save(run_dir, Checkpoint(step, gpt, weights, tokenizer, generation, ...), keep=3)
    ckpt.load(path)                   # -> Checkpoint, every file verified and parsed
    ckpt.load_model(path)             # -> (GPT, Tokenizer, generation dict), for inference

The layout, as `microgpt train` leaves it:

    RUN_DIR/
        data/                    the run's prepared data (train/data.py; elsewhere if
                                 --data-dir is given): train_NNNNNN.bin and val_NNNNNN.bin
                                 token shards, tokenizer.bpe, and meta.json (written last,
                                 its data key tells whether the shards can be reused)
        metrics.jsonl            append-only, one JSON object per line, each with its "step":
                                   every log_interval steps and at the last step: "loss" (the
                                   mean over the steps since the previous line), "lr",
                                   "grad_norm", "tokens", "tokens_per_s", "elapsed_s"
                                   every eval_interval steps and at the last step: "val_loss",
                                   "val_bpb", "elapsed_s"
                                   every sample_interval steps (if set): "sample"
                                   a NaN/inf step: "event": "skipped_update", "reason", "lr",
                                   "consecutive"
                                 `--resume` first cuts it back to the checkpoint's step
        samples.txt              the final samples of each session that trained to the end,
                                 appended, each headed "=== step N, sample i ==="
        loss.png                 the loss curve (train/plot.py), drawn at the end of a run
        checkpoints/
            step_000250/         one every checkpoint_interval steps and one at the last step
                config.json              Hugging Face key names (GPT2LMHeadModel,
                                         LlamaForCausalLM, Qwen2/Qwen3/Mistral as the flags
                                         say: interop/hf_config.py) plus "microgpt": our
                                         GPTConfig, for an exact round trip
                model.safetensors        GPT-2 / Llama tensor names; GPT-2's attn/mlp
                                         matrices in its Conv1D layout (in, out), so
                                         transformers loads the file (interop/hf_names.py)
                tokenizer.bpe            the tokenizer, in microgpt's text format
                generation_config.json   bos/eos ids and default sampling settings
                optimizer.safetensors    AdamW moments: exp_avg.NAME, exp_avg_sq.NAME
                trainer_state.json       step, optimizer step count, RNG states, loader
                                         positions, the TrainConfig and its hash, the latest
                                         metrics and the open log window
                COMPLETE                 written last: the sha256 and size of every file above
            .tmp-step_N-PID/     a save in progress, or one a kill cut short: ignored,
                                 and removed by the next save

No pickle anywhere: tensors are safetensors, everything else JSON or text.

Atomicity. A checkpoint is written into `checkpoints/.tmp-step_N-PID/`, every file and the
directory fsync'ed, then renamed to `step_N` and the parent fsync'ed, and only then is the
COMPLETE marker written (atomically, itself). A kill at any moment leaves either no
`step_N`, or a `step_N` without COMPLETE, which `latest()` and `--resume` ignore (and a
later save of that step replaces), and the previous checkpoint untouched.

Rotation. After a save is complete, all but the newest `keep` (keep_checkpoints, default 3)
complete checkpoints are deleted, oldest first, each marker first, so a half-deleted
directory never looks complete.

Loading verifies every file against the marker's checksums, then parses; any problem is a
CheckpointError saying which file and what to do.
"""
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field

import numpy as np

from ..errors import CheckpointError
from ..fileio import atomic_write, fsync_dir, json_kind, read_json_object, write_json
from ..interop.hf import INDEX_FILE, WEIGHTS_FILE, load_hf_directory
from ..interop.hf_config import hf_config_from_gpt
from ..interop.hf_names import from_hf_tensors, to_hf_tensors

FORMAT_VERSION = 1
MARKER = "COMPLETE"
TOKENIZER_FILE = "tokenizer.bpe"
MODEL_FILES = ("config.json", "model.safetensors", TOKENIZER_FILE, "generation_config.json")
TRAINING_FILES = ("optimizer.safetensors", "trainer_state.json")
METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.txt"
TRAINER_STATE_FORMAT = "microgpt-trainer-state"
_STEP_DIR = re.compile(r"^step_(\d+)$")


# --- small file helpers ------------------------------------------------------------------------

def read_json(path):
    """The JSON object in checkpoint file `path` (fileio.read_json_object: anything else is a
    CheckpointError naming the file)."""
    return read_json_object(path, CheckpointError, "", _damaged(path))


def _damaged(path):
    """What to do about a damaged file of a checkpoint directory."""
    return (f"the file is damaged: delete {os.path.dirname(path)} to fall back to the previous "
            f"checkpoint")


def _is_count(value):
    """A JSON integer >= 0 (bool is an int in Python, but true is no step or size)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


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


# --- Hugging Face names and layouts: interop/ owns the mapping ---------------------------------

def hf_config(gpt, eot_id):
    """config.json for a GPTConfig `gpt` (a dict): the family's Hugging Face key names
    (interop/hf_config.py), plus "microgpt": our GPTConfig, for an exact round trip."""
    hf = hf_config_from_gpt(gpt, eot_id, eot_id, strict=False)
    hf["microgpt"] = dict(gpt)
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


def is_hf_directory(path):
    """Whether `path` is a Hugging Face model directory (interop/hf.py reads it), not one of
    our checkpoints: a config.json without our "microgpt" key, weights, and no COMPLETE."""
    config = os.path.join(path, "config.json")
    if is_complete(path) or not os.path.isfile(config) or not (
            os.path.isfile(os.path.join(path, WEIGHTS_FILE)) or os.path.isfile(os.path.join(path, INDEX_FILE))):
        return False
    try:
        return "microgpt" not in read_json(config)
    except CheckpointError:
        return False                       # unreadable: the checkpoint path reports it


def resolve(path):
    """A checkpoint directory from a checkpoint directory, a run directory, or a Hugging Face
    model directory (returned as it is)."""
    if (os.path.isfile(os.path.join(path, "config.json")) and os.path.isfile(
            os.path.join(path, "model.safetensors"))) or is_hf_directory(path):
        return path
    found = latest(path)
    if found is None:
        partial = [p for _, p in _step_dirs(path)]
        hint = f" ({len(partial)} incomplete ones were ignored)" if partial else ""
        raise CheckpointError(f"{path}: no complete checkpoint found{hint}; train with "
                              f"`microgpt train --out-dir {path}` first")
    return found


# --- what a checkpoint holds ----------------------------------------------------------------------

@dataclass
class Checkpoint:
    """One checkpoint in memory: everything `save` writes and `load` reads back.

    gpt            GPTConfig.to_dict() of the model
    weights        {name: array}, our parameter names and (out, in) layouts
    tokenizer      the Tokenizer
    generation     default sampling settings (temperature, top_k, max_new_tokens); `save`
                   adds the bos/eos ids, `load` returns the file as it is
    trainer_state  the dict `resume` needs (JSON-able), or None for a model-only load
    optimizer      AdamW's {"exp_avg.NAME": array, "exp_avg_sq.NAME": array}, or None
    extra_files    {file name: writer(path)}: more files for the directory (a fine-tuning
                   run's LoRA adapter), checksummed in COMPLETE like the others
    """
    step: int
    gpt: dict
    weights: dict
    tokenizer: object
    generation: dict = field(default_factory=dict)
    trainer_state: dict | None = None
    optimizer: dict | None = None
    extra_files: dict = field(default_factory=dict)


# --- saving --------------------------------------------------------------------------------------

def save(run_dir, checkpoint, keep=3):
    """Write RUN_DIR/checkpoints/step_N atomically, then keep only the newest `keep`;
    returns its path. Model-only checkpoints (no trainer_state/optimizer) are allowed."""
    c = checkpoint
    eot = c.tokenizer.eot_id
    writers = {
        "config.json": lambda p: write_json(p, hf_config(c.gpt, eot)),
        "model.safetensors": lambda p: save_tensors(p, to_hf_tensors(c.weights, c.gpt["family"],
                                                                     c.gpt.get("linear_layout", "out_in")),
                                                    {"format": "pt"}),
        TOKENIZER_FILE: c.tokenizer.save,
        "generation_config.json": lambda p: write_json(p, {"bos_token_id": eot,
                                                            "eos_token_id": eot,
                                                            "do_sample": True, **c.generation}),
    }
    if c.optimizer is not None:
        writers["optimizer.safetensors"] = lambda p: save_tensors(p, c.optimizer)
    for name, writer in c.extra_files.items():
        if name in writers:
            raise CheckpointError(f"checkpoint file {name} is written by the checkpoint itself")
        writers[name] = writer
    if c.trainer_state is not None:
        state = {"format": TRAINER_STATE_FORMAT, "version": FORMAT_VERSION, **c.trainer_state,
                 "step": c.step}
        writers["trainer_state.json"] = lambda p: write_json(p, state)
    return _write_atomically(run_dir, c.step, writers, keep)


def _write_atomically(run_dir, step, writers, keep):
    """writers: {file name: writer(path)}; the directory appears complete or not at all."""
    root = checkpoints_dir(run_dir)
    os.makedirs(root, exist_ok=True)
    for name in os.listdir(root):                  # leftovers of killed saves
        if name.startswith(".tmp-") or name.startswith(".trash-"):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    final = os.path.join(root, f"step_{step:06d}")
    tmp = os.path.join(root, f".tmp-step_{step:06d}-{os.getpid()}")
    os.makedirs(tmp)
    manifest = {}
    for name, writer in writers.items():
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
    marker_path = os.path.join(path, MARKER)
    marker = read_json(marker_path)
    if marker.get("format") != "microgpt-checkpoint" or marker.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unknown checkpoint format {marker.get('format')!r} "
                              f"version {marker.get('version')!r}")
    for name, info in _manifest(marker, marker_path).items():
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            raise CheckpointError(f"{file}: missing from the checkpoint")
        if os.path.getsize(file) != info["bytes"] or _sha256(file) != info["sha256"]:
            raise CheckpointError(f"{file}: contents do not match the checksum recorded when the "
                                  f"checkpoint was written; the file is corrupt. Delete {path} "
                                  f"to fall back to the previous checkpoint")
    return marker


_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def _manifest(marker, marker_path):
    """The marker's {file name: {"bytes", "sha256"}}, every field checked for its type (a
    marker is written by `save` only, so a wrong one was damaged or edited by hand)."""
    def damaged(problem):
        return CheckpointError(f"{marker_path}: {problem}; {_damaged(marker_path)}")
    if not _is_count(marker.get("step")):
        raise damaged(f'"step" is {json.dumps(marker.get("step"))}, not an integer >= 0')
    files = marker.get("files")
    if not isinstance(files, dict):
        raise damaged(f'"files" is {json_kind(files)}, not an object of file names')
    for name, info in files.items():
        if not name or os.path.basename(name) != name or name in (".", ".."):
            raise damaged(f"{name!r} is not a file name inside the checkpoint")
        if not (isinstance(info, dict) and _is_count(info.get("bytes"))
                and isinstance(info.get("sha256"), str) and _SHA256_HEX.match(info["sha256"])):
            raise damaged(f'the entry of {name} is {json.dumps(info)}, not {{"bytes": size, '
                          f'"sha256": 64 hex digits}}')
    return files


def load(path, training_state=True):
    """The Checkpoint in directory `path`, every file checked against COMPLETE first.

    training_state=False reads only the model files (config, weights, tokenizer,
    generation settings): what inference needs, without AdamW's moments (twice the
    weights' size).
    """
    from ..tokenizer import Tokenizer
    marker = verify(path)
    missing = [name for name in MODEL_FILES + (TRAINING_FILES if training_state else ())
               if name not in marker["files"]]
    if missing:
        raise CheckpointError(f"{path}: the checkpoint has no {', '.join(missing)}"
                              + ("; it holds a model only, so it cannot be resumed"
                                 if training_state else ""))
    config = read_json(os.path.join(path, "config.json"))
    gpt = config.get("microgpt")
    if not isinstance(gpt, dict) or "family" not in gpt:
        raise CheckpointError(f"{path}/config.json: no 'microgpt' model config; not a microgpt "
                              f"checkpoint")
    weights = from_hf_tensors(load_tensors(os.path.join(path, "model.safetensors")),
                              gpt["family"], gpt.get("linear_layout", "out_in"))
    tokenizer = Tokenizer.load(os.path.join(path, TOKENIZER_FILE))
    rows = gpt.get("vocab_size")
    if not isinstance(rows, int) or tokenizer.vocab_size > rows:    # fewer: padded rows (Qwen)
        raise CheckpointError(f"{path}: tokenizer has {tokenizer.vocab_size} ids but the model "
                              f"{rows}")
    generation = read_json(os.path.join(path, "generation_config.json"))
    checkpoint = Checkpoint(marker["step"], gpt, weights, tokenizer, generation)
    if training_state:
        state = read_json(os.path.join(path, "trainer_state.json"))
        if state.get("format") != TRAINER_STATE_FORMAT:
            raise CheckpointError(f"{path}/trainer_state.json: not a microgpt trainer state")
        checkpoint.trainer_state = state
        checkpoint.optimizer = load_tensors(os.path.join(path, "optimizer.safetensors"))
    return checkpoint


def load_model(path, device="cpu"):
    """(GPT, Tokenizer, generation config dict) from a checkpoint or run directory, or from
    a Hugging Face model directory (interop/hf.py; its tokenizer.json is then required)."""
    from ..nn import GPT, GPTConfig
    path = resolve(path)
    if os.path.isfile(os.path.join(path, "quantization.json")):   # `microgpt quantize` wrote it
        from ..quantize.model import load_quantized
        return load_quantized(path, device)
    if is_hf_directory(path):
        loaded = load_hf_directory(path, device=device, tokenizer="required")
        return loaded.model, loaded.tokenizer, loaded.generation
    checkpoint = load(path, training_state=False)
    try:
        config = GPTConfig(**checkpoint.gpt)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}/config.json: invalid model config ({exc})") from exc
    model = GPT(config, init=False)        # no random draws: every weight comes from the file
    model.load_state_dict(checkpoint.weights)
    if device != "cpu":
        model.to(device)
    return model, checkpoint.tokenizer, checkpoint.generation


# --- the run's logs ------------------------------------------------------------------------------

def metrics_path(run_dir):
    return os.path.join(run_dir, METRICS_FILE)


def append_metrics(run_dir, record):
    """One line of metrics.jsonl (append-only while a session trains)."""
    with open(metrics_path(run_dir), "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def cut_metrics(run_dir, step):
    """Cut metrics.jsonl back to the lines of steps <= `step` (atomic rewrite).

    The file is append-only, so a run killed between checkpoints has logged steps that the
    resumed run will log again. A kill in the middle of a write leaves a last line without
    its newline: that torn line is dropped; any other bad line is an error naming it.
    """
    path = metrics_path(run_dir)
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.readlines()
    kept = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fix = "delete or fix that line, then resume again"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines) and not line.endswith("\n"):
                break                                  # torn by the kill
            raise CheckpointError(f"{path}:{number}: not valid JSON ({exc.msg}); {fix}") from None
        if not isinstance(record, dict):
            raise CheckpointError(f"{path}:{number}: not a JSON object (it holds {json_kind(record)}); {fix}")
        line_step = record.get("step", 0)            # a line without a step is kept
        if not _is_count(line_step):
            raise CheckpointError(f'{path}:{number}: "step" is {json.dumps(line_step)}, not an integer >= 0; {fix}')
        if line_step <= step:
            kept.append(line)
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.writelines(kept)


def append_samples(run_dir, step, texts):
    with open(os.path.join(run_dir, SAMPLES_FILE), "a", encoding="utf-8") as f:
        for i, text in enumerate(texts, start=1):
            f.write(f"=== step {step}, sample {i} ===\n{text}\n\n")
