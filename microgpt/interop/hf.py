"""A Hugging Face model directory in and out: load_pretrained and export_hf.

    model = load_pretrained("path/to/Qwen3-0.6B")       # -> GPT, in eval mode
    loaded = load_hf_directory(path)                    # -> Pretrained(model, tokenizer,
                                                        #    generation, hf_config)
    export_hf(model, tokenizer, "out/dir", generation={"temperature": 0.7, "top_k": 40})

A directory, as transformers' save_pretrained writes it:

    config.json                       the architecture, by model_type (hf_config.py)
    model.safetensors                 the weights, or, sharded:
    model.safetensors.index.json        {"weight_map": {tensor name: shard file}} and
    model-00001-of-00003.safetensors    the shards it names
    generation_config.json            sampling defaults (optional)
    tokenizer.json, tokenizer_config.json   the tokenizer (optional; tokenizer/hf.py)

Loading happens in two passes, so that a bad directory fails before anything is loaded:

  1. check: config.json parsed and mapped to a GPTConfig; every safetensors header parsed
     and checked against its file's size (hf_safetensors.py: a truncated file is caught
     here); every tensor matched to a parameter of the model by name, shape and dtype; no
     parameter left without a tensor, no tensor left without a parameter.
  2. load: into a model built without init (GPT(config, init=False): nothing drawn, the
     matrices np.empty, pages the OS has not handed over yet), one tensor at a time:
       - a float32 tensor stored in our layout becomes its parameter's array as it is: a
         view of a private copy-on-write mapping of the file (hf_safetensors.mapped), as
         transformers loads. Nothing is copied; its pages come from the page cache when
         first used, and a write (training) copies only the page it touches. The model is
         built in the file's layout (GPTConfig.linear_layout "in_out" for GPT-2, whose
         Conv1D matrices are stored (in, out); hf_config.py), so that is every tensor of a
         float32 checkpoint of any family;
       - any other (float16 / bfloat16, a float64 model, or a GPT-2 loaded with
         linear_layout="out_in", whose Conv1D matrices must be transposed) is read (not
         mapped) a strip of rows at a time into one small buffer and written from there
         into its parameter's array, widened and transposed on the way (read_into).
     No tensor is ever copied twice or held in a temporary, so a load's peak is the model's
     float32 size once, plus a strip: the model is never held twice. Every parameter must
     have been written; the model says which was not. A mapped file must not be rewritten
     in place while the model lives (replacing it by a rename, as export does, is safe).

Any problem is a one-line MicrogptError naming the file (and the key or tensor) and what to
do; the half-built model is dropped with the error, so nothing half-loaded is ever returned.

Export writes every file into a temporary directory beside the target, fsyncs each file
and the directory, then renames it into place: a reader sees the old directory or the
complete new one. transformers' AutoModelForCausalLM loads the result with no missing or
unexpected keys (tests/test_interop_hf.py checks it, and that the logits agree).
"""
import dataclasses
import os
import shutil
from dataclasses import dataclass

import numpy as np

from ..errors import CheckpointError, ConfigError
from .. import fileio
from ..fileio import fsync_dir, write_json
from ..nn import GPT
from ..nn.layers import WEIGHT_LAYOUTS
from . import hf_names
from .hf_config import gpt_config_from_hf, generation_from_hf, generation_to_hf, hf_config_from_gpt
from .hf_safetensors import SafetensorsReader, write_safetensors

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
GENERATION_FILE = "generation_config.json"
EXPORT_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": "bfloat16"}


@dataclass
class Pretrained:
    """What a Hugging Face directory holds, loaded."""
    model: GPT
    tokenizer: object          # our Tokenizer, or None when the directory has none we can read
    generation: dict           # sampling defaults (hf_config.generation_from_hf)
    hf_config: dict            # config.json as parsed


def read_json_object(path, what):
    """The JSON object in `path`; missing, not JSON or not an object is a CheckpointError."""
    return fileio.read_json_object(path, CheckpointError, f"a Hugging Face model directory needs its {what}",
                                   "download or export the file again")


# --- loading -------------------------------------------------------------------------------------

def load_pretrained(path, dtype=np.float32, device="cpu", block_size=None, linear_layout=None):
    """The GPT of Hugging Face directory `path` (eval mode), its weights as `dtype`;
    block_size caps a Llama-family context (hf_config.gpt_config_from_hf); linear_layout
    (see load_hf_directory)."""
    return load_hf_directory(path, dtype, device, tokenizer=False, block_size=block_size,
                             linear_layout=linear_layout).model


def load_hf_directory(path, dtype=np.float32, device="cpu", tokenizer=True, block_size=None,
                      linear_layout=None):
    """Pretrained(model, tokenizer, generation, hf_config) of Hugging Face directory `path`.
    tokenizer: True reads tokenizer.json if there is one, "required" refuses a directory
    without one (before the weights are read), False skips it. linear_layout: None builds
    the model in the files' layout (nothing transposed: GPT-2 "in_out"); "out_in" or
    "in_out" asks for that one (GPT-2 in "out_in": its Conv1D matrices copied transposed)."""
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such directory; give a Hugging Face model directory "
                              f"(config.json and model.safetensors)")
    config_path = os.path.join(path, CONFIG_FILE)
    hf = read_json_object(config_path, "config.json")
    config = gpt_config_from_hf(hf, config_path, block_size)
    if linear_layout is not None:
        if linear_layout not in WEIGHT_LAYOUTS:
            raise ConfigError(f"linear_layout must be one of {WEIGHT_LAYOUTS} or None, got {linear_layout!r}")
        config = dataclasses.replace(config, linear_layout=linear_layout)
    generation = read_generation(path, hf)
    our_tokenizer = load_tokenizer(path) if tokenizer else None
    if tokenizer == "required" and our_tokenizer is None:
        raise CheckpointError(f"{path}: no tokenizer.json of the byte-level BPE kind this version "
                              f"reads; add the model's tokenizer.json")
    readers = open_weights(path)
    try:
        model = GPT(config, dtype=dtype, init=False)      # every weight about to be overwritten
        plan = match_tensors(model, readers)
        _load(model, plan)
    finally:
        for reader in readers:
            reader.close()
    model.eval()
    if device != "cpu":
        model.to(device)
    return Pretrained(model, our_tokenizer, generation, hf)


def open_weights(path, problems=None):
    """[SafetensorsReader] of the directory's weights, one file or the shards of the index,
    every header already parsed and checked.

    problems: None raises the first problem (the loader); a list collects each one as a
    CheckpointError and goes on with every file that can be read (interop/inspect.py)."""
    def fail(error):
        if problems is None:
            raise error
        problems.append(error)

    single = os.path.join(path, WEIGHTS_FILE)
    if os.path.isfile(single):
        try:
            return [SafetensorsReader(single)]
        except CheckpointError as exc:
            fail(exc)
            return []
    index_path = os.path.join(path, INDEX_FILE)
    if not os.path.isfile(index_path):
        fail(CheckpointError(f"{path}: no {WEIGHTS_FILE} and no {INDEX_FILE}; only safetensors "
                             f"weights are read (convert .bin / .pth files with transformers' "
                             f"save_pretrained)"))
        return []
    try:
        index = read_json_object(index_path, INDEX_FILE)
    except CheckpointError as exc:
        fail(exc)
        return []
    weight_map = index.get("weight_map")
    if not (isinstance(weight_map, dict) and weight_map
            and all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items())):
        fail(CheckpointError(f"{index_path}: 'weight_map' must be an object of tensor name -> shard "
                             f"file; download the index again"))
        return []
    readers = []
    for shard in sorted(set(weight_map.values())):
        shard_path = os.path.join(path, shard)
        if os.path.basename(shard) != shard or shard in (".", ".."):
            fail(CheckpointError(f"{index_path}: shard {shard!r} is not a file name in the directory"))
        elif not os.path.isfile(shard_path):
            fail(CheckpointError(f"{shard_path}: missing shard named by {index_path}; download it "
                                 f"(every file the index names must be present)"))
        else:
            try:
                readers.append(SafetensorsReader(shard_path))
            except CheckpointError as exc:
                fail(exc)
    by_file = {os.path.basename(r.path): r for r in readers}
    for name, shard in weight_map.items():
        if shard in by_file and name not in by_file[shard].tensors:
            fail(CheckpointError(f"{by_file[shard].path}: has no tensor {name!r}, which {index_path} "
                                 f"places there; the shard and the index do not match"))
    return readers


FLOAT_CODES = ("F32", "F16", "BF16", "F64")


@dataclass
class TensorMatch:
    """How the tensors of a directory's files pair with a model's parameters, every finding
    kept: the loader raises the first (error()), interop/inspect.py reports them all.

    rows        (reader, tensor name, our name or None, status) for every tensor of the
                files, in file order; status is one of
                  ok          a parameter, of the right shape and a floating-point dtype
                  shape       a parameter's name, the wrong shape
                  dtype       a parameter's name, a dtype that is no float
                  duplicate   a parameter another file holds already
                  tied        lm_head.weight of a tied model (must equal the embedding)
                  buffer      a saved buffer, recomputed here (GPT-2's attn.bias ...)
                  unexpected  no parameter of this model
    found       our name -> (reader, tensor name), the first tensor for each parameter
    conflicts   a CheckpointError for each shape / dtype / duplicate row, in file order
    missing     our names that no tensor holds
    tied_error  the CheckpointError of a tied head that differs from the embedding, or None
    """
    rows: list
    found: dict
    conflicts: list
    missing: list
    tied_error: object
    where: str

    @property
    def unexpected(self):
        return [f"{name} ({os.path.basename(reader.path)})"
                for reader, name, _, status in self.rows if status == "unexpected"]

    def error(self):
        """The loader's error for these files (the first problem, as it has always worded
        it), or None when every parameter has its tensor."""
        if self.conflicts:
            return self.conflicts[0]
        missing, unexpected = self.missing, self.unexpected
        if missing or unexpected:
            hint = ("; if the model ties its input and output embeddings, set tie_word_embeddings: "
                    "true in config.json") if missing == [hf_names.LM_HEAD] else ""
            return CheckpointError(f"{self.where}: the weights do not match config.json: missing "
                                   f"{_listed(missing)}, unexpected {_listed(unexpected)}{hint}")
        return self.tied_error

    def plan(self):
        """[(parameter name, reader, tensor name)], one per parameter: what _load copies."""
        return [(ours, reader, name) for ours, (reader, name) in self.found.items()]


def pair_tensors(shapes, config, readers):
    """TensorMatch of the files' tensors against parameters {our name: shape} of a model of
    GPTConfig `config`: by name (hf_names.our_name), then shape in the file's layout (a
    matrix whose layout is not the model's, hf_names.is_transposed, transposed), then dtype.
    Reads no tensor data except, for a tied model whose file has an lm_head.weight anyway,
    that tensor and the embedding (compared)."""
    family, layout = config.family, config.linear_layout
    rows, found, conflicts, lm_head = [], {}, [], None
    for reader in readers:
        for name, info in reader.tensors.items():
            if name == hf_names.LM_HEAD and config.tie_embeddings:
                lm_head = (reader, name)              # a tied head saved anyway: checked below
                rows.append((reader, name, hf_names.EMBEDDING[family], "tied"))
                continue
            ours = hf_names.our_name(name, family, shapes)
            if ours is None:
                rows.append((reader, name, None, "buffer" if hf_names.is_buffer(name) else "unexpected"))
                continue
            if ours in found:
                conflicts.append(CheckpointError(f"{reader.path}: tensor {name!r} also appears in "
                                                 f"{found[ours][0].path}; the files disagree"))
                rows.append((reader, name, ours, "duplicate"))
                continue
            expected = tuple(shapes[ours])
            stored = tuple(reversed(expected)) if hf_names.is_transposed(ours, family, layout) else expected
            status = "ok"
            if info.shape != stored:
                status = "shape"
                conflicts.append(CheckpointError(
                    f"{reader.path}: tensor {name!r} has shape {info.shape}, the config.json model "
                    f"needs {stored}; the weights and config.json do not belong together"))
            elif info.dtype not in FLOAT_CODES:
                status = "dtype"
                conflicts.append(CheckpointError(
                    f"{reader.path}: tensor {name!r} has dtype {info.dtype}; only floating-point "
                    f"weights (F32, F16, BF16, F64) can be loaded"))
            found[ours] = (reader, name)      # a wrong one too: it is not also "missing"
            rows.append((reader, name, ours, status))
    missing = [name for name in shapes if name not in found]
    statuses = {ours: status for _, _, ours, status in rows if status != "tied"}
    embedding = hf_names.EMBEDDING[family]
    tied_error = None
    if lm_head is not None and statuses.get(embedding) == "ok":
        tied_error = _tied_error(lm_head, found[embedding])
    where = ", ".join(sorted({os.path.dirname(r.path) or "." for r in readers}))
    return TensorMatch(rows, found, conflicts, missing, tied_error, where)


def match_tensors(model, readers):
    """[(parameter name, reader, tensor name)] pairing every parameter with one tensor of the
    files, checked by name and shape; any mismatch is a CheckpointError before any load."""
    shapes = hf_names.file_shapes({name: p.shape for name, p in model.named_parameters()})
    match = pair_tensors(shapes, model.config, readers)
    error = match.error()
    if error is not None:
        raise error
    return match.plan()


def _listed(names):
    return "none" if not names else ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _tied_error(lm_head, embedding):
    """The CheckpointError of a saved tied head that is not the embedding, else None."""
    (head_reader, head_name), (emb_reader, emb_name) = lm_head, embedding
    head, emb = head_reader.tensors[head_name], emb_reader.tensors[emb_name]
    same = (head.shape == emb.shape and head.dtype in FLOAT_CODES
            and np.array_equal(head_reader.float32(head_name), emb_reader.float32(emb_name)))
    if same:
        return None
    return CheckpointError(f"{head_reader.path}: tensor {head_name!r} differs from {emb_name!r}, but "
                           f"config.json says tie_word_embeddings: true; set it to false for a model "
                           f"with its own output matrix")


def _load(model, plan):
    """Give each planned tensor to its parameter, one at a time (the second pass): the file's
    own bytes where they are already what the parameter holds, else written into its array.
    Then check that none was left uninitialized."""
    family, layout = model.config.family, model.config.linear_layout
    params = dict(model.named_parameters())
    for ours, reader, name in plan:
        sliced = hf_names.expert_slice(ours)
        if sliced is not None:                               # one expert's matrix of a stacked parameter
            stacked, expert = sliced
            reader.read_into(name, params[stacked].data[expert])
            params[stacked].zero_grad()
            model.mark_initialized([stacked])
            continue
        param = params[ours]
        transposed = hf_names.is_transposed(ours, family, layout)
        mapped = None if transposed or param.dtype != np.float32 else reader.mapped(name)
        if mapped is not None:
            param.data = mapped                              # the file's bytes: nothing copied
        else:
            target = hf_names.to_hf_layout(ours, param.data, family, layout)   # a view, in the file's layout
            reader.read_into(name, target)
        param.zero_grad()
        model.mark_initialized([ours])
    model.check_initialized(f"loading {os.path.dirname(plan[0][1].path) if plan else 'a model'}")


def read_generation(path, hf):
    """Sampling defaults from generation_config.json (transformers' defaults if absent), the
    bos/eos ids falling back to config.json's."""
    gen_path = os.path.join(path, GENERATION_FILE)
    gen = read_json_object(gen_path, GENERATION_FILE) if os.path.exists(gen_path) else None
    generation = generation_from_hf(gen, gen_path)
    for key in ("bos_token_id", "eos_token_id"):
        if key not in generation:
            value = generation_from_hf({key: hf.get(key)}, os.path.join(path, CONFIG_FILE)).get(key)
            if value is not None:
                generation[key] = value
    return generation


def load_tokenizer(path):
    """Our Tokenizer from the directory's tokenizer.json, or None when there is none (or the
    HF tokenizer reader, tokenizer/hf.py, is not part of this version)."""
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        return None
    try:
        from ..tokenizer.hf import load_hf_tokenizer
    except ImportError:
        return None
    return load_hf_tokenizer(path)


# --- export --------------------------------------------------------------------------------------

class _Lazy:
    """A parameter fetched to the host only when the writer reaches it (one tensor at a time,
    also for a model on the GPU)."""

    def __init__(self, name, param, family, layout):
        self.name, self.param, self.family, self.layout = name, param, family, layout
        transposed = hf_names.is_transposed(name, family, layout)
        self.shape = tuple(reversed(param.shape)) if transposed else param.shape

    def __array__(self, dtype=None, copy=None):
        array = hf_names.to_hf_layout(self.name, self.param.numpy(), self.family, self.layout)
        return array if dtype is None else array.astype(dtype)


class _ExpertSlice:
    """Expert `expert`'s matrix of a stacked MoE parameter, fetched when the writer reaches it."""

    def __init__(self, param, expert):
        self.param, self.expert = param, expert
        self.shape = tuple(param.shape[1:])

    def __array__(self, dtype=None, copy=None):
        array = self.param.numpy()[self.expert]
        return array if dtype is None else array.astype(dtype)


def export_hf(model, tokenizer, out_dir, generation=None, dtype="float32", overwrite=False):
    """Write `model` (and `tokenizer`, if given) as a Hugging Face directory `out_dir`,
    atomically; returns out_dir. dtype: "float32", "float16" or "bfloat16" weights.
    An existing non-empty out_dir is replaced only with overwrite=True."""
    if dtype not in EXPORT_DTYPES:
        raise ConfigError(f"export dtype must be one of {', '.join(EXPORT_DTYPES)}, got {dtype!r}")
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not (os.path.isdir(out_dir) and not os.listdir(out_dir)) and not overwrite:
        raise CheckpointError(f"{out_dir}: already exists and is not empty; choose a new directory, or "
                              f"pass overwrite=True to replace it")
    generation = dict(generation or {})
    bos, eos = _special_ids(tokenizer)
    bos, eos = generation.get("bos_token_id", bos), generation.get("eos_token_id", eos)
    model.check_initialized("export_hf")
    hf = hf_config_from_gpt(model.config, bos, eos, dtype)     # before any file: may refuse
    family, layout = model.config.family, model.config.linear_layout
    tensors = {}
    for name, p in model.named_parameters():
        if hf_names.is_stacked_experts(name, p.shape):       # one matrix per expert, as HF files hold them
            for sliced, expert in hf_names.expert_slices(name, p.shape):
                tensors[hf_names.file_name(sliced, hf["model_type"])] = _ExpertSlice(p, expert)
        else:
            tensors[hf_names.file_name(name, hf["model_type"])] = _Lazy(name, p, family, layout)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(out_dir)}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        write_json(os.path.join(tmp, CONFIG_FILE), hf)
        write_safetensors(os.path.join(tmp, WEIGHTS_FILE), tensors, EXPORT_DTYPES[dtype], {"format": "pt"})
        write_json(os.path.join(tmp, GENERATION_FILE), generation_to_hf(generation, bos, eos))
        if tokenizer is not None:
            _save_tokenizer(tokenizer, tmp)
        fsync_dir(tmp)
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _special_ids(tokenizer):
    """(bos id, eos id) of our tokenizer: its bos_token / eos_token where it names them
    (a tokenizer read from HF does), else the end-of-text id for both, as GPT-2 has it."""
    if tokenizer is None:
        return None, None
    specials = getattr(tokenizer, "special_tokens", {})
    eot = getattr(tokenizer, "eot_id", None)
    bos = specials.get(getattr(tokenizer, "bos_token", None), eot)
    return bos, eot


def _save_tokenizer(tokenizer, out_dir):
    """tokenizer.json + tokenizer_config.json (tokenizer/hf.py, through fileio's atomic_write)."""
    try:
        from ..tokenizer.hf import save_hf_tokenizer
    except ImportError:
        return                         # tokenizer/hf.py not in this version: the model part alone
    save_hf_tokenizer(tokenizer, out_dir)


def _swap_into_place(tmp, out_dir):
    """Rename the finished `tmp` to `out_dir` (an old one moved aside first, then removed)."""
    parent = os.path.dirname(out_dir)
    old = None
    if os.path.exists(out_dir):
        old = os.path.join(parent, f".{os.path.basename(out_dir)}.old-{os.getpid()}")
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    fsync_dir(parent)
    if old is not None and os.path.isdir(old):
        shutil.rmtree(old, ignore_errors=True)
    elif old is not None:
        os.remove(old)
