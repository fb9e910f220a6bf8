"""`microgpt inspect PATH`: what a checkpoint holds, and every problem with it, in words.

    report = inspect_checkpoint("Qwen3-0.6B/")     # a Hugging Face directory (single or
                                                   # sharded), or ours: a run or checkpoint dir
    print(report.format())                         # architecture, tensor table, totals, problems
    report.ok                                      # no problem found (the CLI exits 0, else 2)
    report.to_dict()                               # the same as JSON-able data (--json)

The loader (interop/hf.py, train/checkpoint.py) stops at the first problem, so that nothing
half-loaded is ever returned. The inspector is the other half: it collects every problem
and goes on with whatever can still be read, so one run shows all that is wrong with a
directory. It reuses the loader's own checks rather than restating them: hf.open_weights
with a problems list (a missing shard, a truncated file or a bad index is noted and the
other files are read), hf.pair_tensors (each tensor's name, shape in the file's layout and
dtype against the config's model: the TensorMatch the loader raises from), and the loaders
of config.json, tokenizers and generation_config.json, each of whose one-line errors
becomes one problem here. What only the inspector checks:

    values      NaN and inf in every floating-point tensor, counted (a diverged run, a
                damaged download)
    dtypes      integer tensors; weights in more than one float dtype; float64 (loaded as
                float32 at half the size); a config.json "dtype" other than the files'
    tokenizer   more ids than the embedding has rows (an id past them cannot run); fewer
                is a note, not a problem: real checkpoints pad the embedding (Qwen2/3 to a
                multiple of 128), and those rows are never produced
    specials    a special token, or a bos/eos/pad id of config.json or generation_config
                .json, outside the embedding's rows; a bos/eos token name that is not one
                of the tokenizer's tokens
    ours        the COMPLETE marker's checksums (train/checkpoint.py's verify); the Hugging
                Face keys of our config.json against our "microgpt" key (transformers reads
                the former, we the latter: they must describe one model)

Memory. No weight is loaded. Names, shapes and dtypes come from the safetensors headers;
the expected shapes from a GPT built without initialization (np.empty: pages the OS never
supplies unless written); the value scan reads one tensor at a time through the file's
memory map, SCAN_CHUNK values per step (bfloat16 classified on its bits: exponent all
ones is inf or NaN, no widening), and releases that tensor's pages before the next. Resident
memory stays near one chunk, whatever the model's size.
"""
import math
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import CheckpointError, MicrogptError
from ..train import checkpoint as ckpt
from . import hf as interop_hf
from . import hf_names
from .convert import HUGGINGFACE, MICROGPT, source_kind
from .hf import CONFIG_FILE, FLOAT_CODES, GENERATION_FILE, open_weights, pair_tensors, read_json_object
from .hf_config import choose_model_type, gpt_config_from_hf
from .hf_safetensors import DTYPES

SCAN_CHUNK = 1 << 22                     # values per step of the NaN/inf scan (16 MiB as float32)
CONFIG_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}
# The GPTConfig fields a reader needs to recognize an architecture, in print order.
ARCHITECTURE = ("vocab_size", "block_size", "n_layer", "n_embd", "n_head", "n_kv_head", "head_dim",
                "mlp_hidden", "norm_eps", "tie_embeddings", "bias", "qkv_bias", "attn_out_bias",
                "qk_norm", "rope_theta", "rope_scaling", "sliding_window", "dropout", "linear_layout")
LLAMA_ONLY = ("qk_norm", "rope_theta", "rope_scaling", "sliding_window")
STATUS_WORDS = {"ok": "", "shape": "WRONG SHAPE", "dtype": "NOT A FLOAT", "duplicate": "DUPLICATE",
                "tied": "tied head", "buffer": "buffer (recomputed)", "unexpected": "UNEXPECTED",
                "missing": "MISSING", "unpaired": "?", "quantized": "quantized"}


@dataclass
class Problem:
    """One thing wrong, in words: `check` says which kind (files, config, missing,
    unexpected, shape, dtype, duplicate, tied, values, tokenizer, vocab, special,
    generation), `message` is one line naming the file or tensor and what to do."""
    check: str
    message: str


@dataclass
class TensorRow:
    """One line of the parameter table: a tensor of the files (or a missing parameter)."""
    name: str                 # as stored in the file ("" for a missing parameter)
    ours: str                 # our parameter name, or "" for none
    shape: tuple
    dtype: str                # the safetensors code (F32, BF16, ...), "" when missing
    nbytes: int
    file: str                 # the file's name in the directory
    status: str               # hf.TensorMatch's, or "missing", or "unpaired" (no config)
    nan: int = 0
    inf: int = 0

    @property
    def mib(self):
        return self.nbytes / 2**20


@dataclass
class Report:
    path: str                 # as given
    directory: str            # the directory inspected (a run resolves to its checkpoint)
    kind: str                 # "microgpt" or "huggingface"
    model_type: object = None
    config: object = None     # GPTConfig, or None when config.json could not be read
    files: list = field(default_factory=list)
    tokenizer: dict = None
    generation: dict = None
    rows: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    scanned: bool = True
    expected_shapes: dict = None      # {our name: shape} of the config's model
    quantization: dict = None         # quantization.json of a `microgpt quantize` directory

    @property
    def ok(self):
        return not self.problems

    def problem(self, check, message):
        self.problems.append(Problem(check, str(message)))

    @property
    def parameters(self):
        """Values of the tensors that are parameters (every stored tensor when there was
        no config to pair them with), each tied or duplicate copy counted once."""
        return sum(_numel(r.shape) for r in self.rows
                   if r.status in ("ok", "shape", "dtype", "unpaired"))

    @property
    def stored_bytes(self):
        return sum(r.nbytes for r in self.rows)

    @property
    def expected_parameters(self):
        if self.expected_shapes is None:
            return None
        return sum(_numel(s) for s in self.expected_shapes.values())

    def to_dict(self):
        config = None if self.config is None else self.config.to_dict()
        return {"path": self.path, "directory": self.directory, "kind": self.kind,
                "model_type": self.model_type, "config": config, "files": self.files,
                "tokenizer": self.tokenizer, "generation": self.generation,
                "tensors": [dict(asdict(r), shape=list(r.shape)) for r in self.rows],
                "totals": {"tensors": sum(1 for r in self.rows if r.name),
                           "parameters": self.parameters, "bytes": self.stored_bytes,
                           "expected_parameters": self.expected_parameters},
                "values_scanned": self.scanned, "quantization": self.quantization,
                "problems": [asdict(p) for p in self.problems], "notes": self.notes,
                "ok": self.ok}

    def format(self):
        """The report as text: what it is, the architecture, the table, totals, problems."""
        what = {MICROGPT: "microgpt checkpoint", HUGGINGFACE: "Hugging Face model directory"}[self.kind]
        lines = [f"{self.directory}: {what}" + (f" (from {self.path})" if self.path != self.directory else "")]
        lines.append(f"model_type: {self.model_type}" + (f"  (microgpt family {self.config.family})"
                                                        if self.config is not None else ""))
        if self.config is not None:
            c = self.config.to_dict()
            shown = [f"{k}={c[k]}" for k in ARCHITECTURE
                     if k in c and not (c["family"] == "gpt2" and k in LLAMA_ONLY)]
            lines += _wrap("  ", shown)
            if c.get("n_experts"):
                moe_layers = sum(self.config.is_moe_layer(i) for i in range(c["n_layer"]))
                lines.append(f"experts: {c['n_experts']} per MoE layer in {moe_layers} of {c['n_layer']} layers, "
                             f"top-{c['n_experts_per_token']}, expert hidden {c['moe_hidden']}, shared "
                             f"{c['n_shared_experts']}, norm_topk_prob={c['moe_norm_topk_prob']}, "
                             f"aux coef {c['router_aux_loss_coef']}, z coef {c['router_z_loss_coef']}")
        files = ", ".join(self.files) if len(self.files) <= 3 else \
            f"{len(self.files)} shards, {self.files[0]} .. {self.files[-1]}"
        lines.append(f"weights: {files or 'none readable'}")
        if self.quantization is not None:
            lines.append("quantization: " + _quantization_words(self.quantization))
        t = self.tokenizer
        if t is None:
            lines.append("tokenizer: none")
        elif "vocab_size" in t:
            specials = ", ".join(f"{k}={v}" for k, v in list(t["specials"].items())[:6])
            more = f" and {len(t['specials']) - 6} more" if len(t["specials"]) > 6 else ""
            lines.append(f"tokenizer: {t['file']}, {t['vocab_size']} ids, specials {specials or 'none'}{more}"
                         + "".join(f", {k} {t[k]!r}" for k in ("bos_token", "eos_token") if t.get(k)))
        else:
            lines.append(f"tokenizer: {t['file']} (not readable: see the problems)")
        lines.append("")
        lines += self._table()
        expected = self.expected_parameters
        lines.append("")
        lines.append(f"total: {self.parameters:,} parameters in {sum(1 for r in self.rows if r.name)} "
                     f"tensors, {self.stored_bytes / 2**20:,.2f} MiB stored"
                     + ("" if expected is None else f" (the config's model has {expected:,} parameters)")
                     + ("" if self.scanned else "; values not scanned (--no-scan)"))
        for note in self.notes:
            lines.append(f"note: {note}")
        lines.append("")
        if self.ok:
            lines.append("no problems found")
        else:
            lines.append(f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}:")
            lines += [f"  - [{p.check}] {p.message}" for p in self.problems]
        return "\n".join(lines)

    def _table(self):
        sharded = len(self.files) > 1
        header = ["tensor", "ours", "shape", "dtype", "MiB"] + (["file"] if sharded else []) + ["status"]
        body = []
        for r in self.rows:
            ours = "=" if r.ours and r.ours == r.name else (r.ours or "-")
            if r.ours and r.status != "quantized" and self.config is not None and \
                    hf_names.is_transposed(r.ours, self.config.family, self.config.linear_layout):
                ours += " (transposed)"
            status = STATUS_WORDS.get(r.status, r.status)
            if r.nan or r.inf:
                status = ", ".join(s for s in (status, f"{r.nan} NaN, {r.inf} inf") if s)
            body.append([r.name or "-", ours, "x".join(map(str, r.shape)) or "scalar", r.dtype or "-",
                         f"{r.mib:.2f}" if r.name else "-"] + ([r.file] if sharded else []) + [status])
        widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
        return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header] + body]


def _wrap(indent, items, width=96):
    lines, line = [], indent
    for item in items:
        if len(line) + len(item) + 2 > width and line.strip():
            lines.append(line.rstrip(", "))
            line = indent
        line += item + ", "
    if line.strip():
        lines.append(line.rstrip(", "))
    return lines


def _numel(shape):
    return math.prod(shape) if shape else 1


def _parameter_shapes(config):
    """{our name: shape} of the model config.json describes, built without drawing weights."""
    from ..nn import GPT
    model = GPT(config, init=False)          # np.empty parameters: no page is touched
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


# --- the inspection ----------------------------------------------------------------------------

def inspect_checkpoint(path, scan_values=True):
    """Report on the checkpoint at `path` (see the header). A path that is no checkpoint of
    either kind at all is a CheckpointError; everything wrong inside one is a Problem."""
    if os.path.isfile(path) and _is_gguf(path):
        return inspect_gguf(path)
    kind, directory = source_kind(path)
    report = Report(os.fspath(path), directory, kind, scanned=scan_values)
    if kind == MICROGPT:
        _our_files(report)
        _quantization_config(report)
    hf = _config(report)
    problems = []
    readers = open_weights(directory, problems)
    for error in problems:
        report.problem("files", error)
    try:
        report.files = [os.path.basename(r.path) for r in readers]
        _tensors(report, readers)
        _dtypes(report, hf)
        if scan_values:
            _values(report, readers)
        _tokenizer(report, hf)
    finally:
        for reader in readers:
            reader.close()
    return report


def _our_files(report):
    """Our checkpoint's COMPLETE marker and checksums (train/checkpoint.py's verify); a
    `microgpt quantize` directory has neither (it is written whole, quantization.json last)."""
    from ..quantize.model import is_quantized_dir
    if is_quantized_dir(report.directory):
        return
    try:
        ckpt.verify(report.directory)
    except CheckpointError as exc:
        report.problem("files", exc)


def _config(report):
    """config.json -> report.config (GPTConfig) and model_type; returns the parsed dict."""
    config_path = os.path.join(report.directory, CONFIG_FILE)
    try:
        hf = read_json_object(config_path, CONFIG_FILE)
    except CheckpointError as exc:
        report.problem("config", exc)
        return {}
    report.model_type = hf.get("model_type")
    try:
        if report.kind == HUGGINGFACE:
            report.config = gpt_config_from_hf(hf, config_path)
        else:
            report.config = _our_config(report, hf, config_path)
    except MicrogptError as exc:
        report.problem("config", exc)
    return hf


def _our_config(report, hf, config_path):
    """Our "microgpt" key as a GPTConfig, checked against the file's Hugging Face keys."""
    from ..nn import GPTConfig
    gpt = hf.get("microgpt")
    if not isinstance(gpt, dict):
        raise CheckpointError(f"{config_path}: no 'microgpt' model config; not a microgpt checkpoint")
    try:
        config = GPTConfig(**gpt)
    except (TypeError, MicrogptError) as exc:
        raise CheckpointError(f"{config_path}: the 'microgpt' model config is invalid ({exc})") from None
    try:
        choose_model_type(config)
    except MicrogptError:
        report.notes.append(f"no Hugging Face model class has this architecture, so transformers "
                            f"cannot load it and `microgpt convert` refuses it; config.json's "
                            f"{config.family} keys are for reading only")
        return config
    theirs = gpt_config_from_hf({k: v for k, v in hf.items() if k != "microgpt"}, config_path).to_dict()
    ours = config.to_dict()
    # dropout is training's, linear_layout how our Linear stores the same matrices: neither
    # changes the model transformers would load
    differ = [f"{k} {theirs[k]!r} vs {ours[k]!r}" for k in ours
              if k not in ("dropout", "linear_layout") and k in theirs and theirs[k] != ours[k]]
    if differ:
        report.problem("config", f"{config_path}: its Hugging Face keys and its 'microgpt' key describe "
                                 f"different models ({'; '.join(differ)}): transformers would load "
                                 f"another model than microgpt; rewrite the checkpoint with "
                                 f"`microgpt convert` from an intact copy")
    return config


def _tensors(report, readers):
    """The table rows, and the loader's pairing problems one by one."""
    if report.config is None:
        for reader in readers:
            for name in reader.tensors:
                report.rows.append(_row(reader, name, "", "unpaired"))
        return
    shapes = report.expected_shapes = _parameter_shapes(report.config)
    if report.kind == HUGGINGFACE:       # an HF file holds one matrix per expert (hf_names.py)
        shapes = report.expected_shapes = hf_names.file_shapes(shapes)
    match = pair_tensors(shapes, report.config, readers)
    quantized = {}                  # tensor name -> (layer, "q" | "scale") of a quantized layer
    for layer in (report.quantization or {}).get("layers", {}):
        quantized[layer + ".weight.q"], quantized[layer + ".weight.scale"] = (layer, "q"), (layer, "scale")
    for reader, name, ours, status in match.rows:
        if status == "unexpected" and name in quantized:
            report.rows.append(_quantized_row(report, reader, name, *quantized[name]))
            continue
        report.rows.append(_row(reader, name, ours or "", status))
        if status == "unexpected":
            report.problem("unexpected", f"{reader.path}: tensor {name!r} {reader.tensors[name].shape} "
                                         f"is no parameter of the config.json model; the weights are of "
                                         f"another architecture, or config.json is wrong")
    conflicting = [status for _, _, _, status in match.rows if status in ("shape", "dtype", "duplicate")]
    for status, error in zip(conflicting, match.conflicts):      # both in file order
        report.problem(status, error)
    for name in match.missing:
        if name.endswith(".weight") and name[:-len(".weight")] + ".weight.q" in quantized:
            continue                                   # held as .weight.q / .weight.scale
        hint = ("; if the model ties its input and output embeddings, set tie_word_embeddings: true in "
                "config.json") if name == hf_names.LM_HEAD else ""
        report.rows.append(TensorRow("", name, shapes[name], "", 0, "", "missing"))
        report.problem("missing", f"{report.directory}: no tensor holds parameter {name!r} "
                                  f"{shapes[name]} of the config.json model{hint}")
    if match.tied_error is not None:
        report.problem("tied", match.tied_error)


def _quantized_row(report, reader, name, layer, part):
    """The row of a quantized layer's integers or scales, its shape and dtype checked against
    quantization.json: q (out, in) I8, or (out, in/2) U8 for int4; scale (out, in/group) F16."""
    spec = report.quantization["layers"][layer]
    bits, group, n_in, n_out = spec.get("bits"), spec.get("group"), spec.get("in"), spec.get("out")
    info = reader.tensors[name]
    try:
        want = ((n_out, n_in if bits == 8 else n_in // 2), "I8" if bits == 8 else "U8") if part == "q" \
            else ((n_out, n_in // group), "F16")
    except TypeError:
        want = None
    row = _row(reader, name, layer + ".weight", "quantized")
    if want is None or (tuple(info.shape), info.dtype) != want:
        row.status = "shape"
        report.problem("shape", f"{reader.path}: tensor {name!r} is {info.dtype} {tuple(info.shape)}, "
                                f"quantization.json's {layer} ({spec}) needs "
                                f"{want[1] + ' ' + str(want[0]) if want else 'bits, group, in, out'}; "
                                f"quantize the float model again")
    return row


def _quantization_config(report):
    from ..quantize.model import is_quantized_dir, read_quant_config
    if not is_quantized_dir(report.directory):
        return
    try:
        report.quantization = read_quant_config(report.directory)
    except CheckpointError as exc:
        report.problem("config", exc)


def _head_words(head):
    """quantization.json's "head": False (float), the head's scheme, or True (older files)."""
    return head if isinstance(head, str) else ("quantized" if head else "float")


def _quantization_words(q):
    layers = q.get("layers", {})
    kinds = {}
    for spec in layers.values():
        key = ("int8" if spec.get("bits") == 8 else "int4") + (f" group {spec.get('group')}")
        kinds[key] = kinds.get(key, 0) + 1
    held = sum(spec["out"] * spec["in"] * spec["bits"] / 8 + spec["out"] * spec["in"] / spec["group"] * 2
               for spec in layers.values())
    full = sum(4 * spec["out"] * spec["in"] for spec in layers.values())
    return (f"{q.get('scheme')}, {len(layers)} Linear layers ("
            + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
            + f"), LM head {_head_words(q.get('head'))}; "
            + (f"{full / 2**20:.2f} -> {held / 2**20:.2f} MiB ({full / held:.2f}x smaller)" if held else "no layers"))


def _row(reader, name, ours, status):
    info = reader.tensors[name]
    return TensorRow(name, ours, info.shape, info.dtype, info.end - info.begin,
                     os.path.basename(reader.path), status)


def _dtypes(report, hf):
    """Integer tensors, mixed float dtypes, float64, and config.json's dtype against the files."""
    weights = [r for r in report.rows if r.name and r.status not in ("buffer", "quantized")]
    if report.config is None:                       # pair_tensors did not see the dtypes
        for r in weights:
            if r.dtype not in FLOAT_CODES:
                report.problem("dtype", f"{r.file}: tensor {r.name!r} has dtype {r.dtype}; only "
                                        f"floating-point weights (F32, F16, BF16, F64) can be loaded")
    counts = {}
    for r in weights:
        if r.dtype in FLOAT_CODES:
            counts[r.dtype] = counts.get(r.dtype, 0) + 1
    if len(counts) > 1:
        rare = min(counts, key=counts.get)
        names = [r.name for r in weights if r.dtype == rare][:3]
        report.problem("dtype", f"{report.directory}: the weights mix dtypes "
                                f"({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))}), e.g. "
                                f"{', '.join(names)} in {rare}; a save that cast only part of the "
                                f"model? They load (all widened to float32), but check the source")
    if "F64" in counts:
        report.problem("dtype", f"{report.directory}: {counts['F64']} tensors are float64: they load "
                                f"as float32 (half the size); re-save them as float32 to say so")
    declared = hf.get("dtype", hf.get("torch_dtype"))
    if isinstance(declared, str) and declared in CONFIG_DTYPES and counts \
            and set(counts) != {CONFIG_DTYPES[declared]}:
        report.problem("dtype", f"{os.path.join(report.directory, CONFIG_FILE)}: says dtype {declared}, "
                                f"but the weights are stored as {', '.join(sorted(counts))}; transformers "
                                f"would cast them to {declared} on load: fix the key or the files")


def _values(report, readers):
    """Count NaN and inf in every floating-point tensor, one tensor and one chunk at a time."""
    by_file = {os.path.basename(r.path): r for r in readers}
    for row in report.rows:
        if not row.name or row.dtype not in DTYPES:
            continue
        reader = by_file[row.file]
        flat = reader.raw(row.name).reshape(-1)
        nan = inf = 0
        for start in range(0, flat.size, SCAN_CHUNK):
            nan_k, inf_k = _nonfinite(flat[start:start + SCAN_CHUNK], row.dtype)
            nan, inf = nan + nan_k, inf + inf_k
        del flat
        reader.release(row.name)
        row.nan, row.inf = nan, inf
        if nan or inf:
            report.problem("values", f"{reader.path}: tensor {row.name!r} holds {nan:,} NaN and {inf:,} "
                                     f"inf among {_numel(row.shape):,} values; the weights are damaged "
                                     f"(or training diverged): use an earlier checkpoint or download "
                                     f"the file again")


def _nonfinite(chunk, code):
    """(NaN count, inf count) of one chunk of stored values."""
    if code == "BF16":                 # bits: sign, 8 exponent bits, 7 mantissa bits
        special = (chunk & np.uint16(0x7F80)) == np.uint16(0x7F80)
        mantissa = (chunk & np.uint16(0x007F)) != 0
        return int(np.count_nonzero(special & mantissa)), int(np.count_nonzero(special & ~mantissa))
    return int(np.count_nonzero(np.isnan(chunk))), int(np.count_nonzero(np.isinf(chunk)))


# --- tokenizer, special tokens, generation ids -------------------------------------------------

def _tokenizer(report, hf):
    rows = None if report.config is None else report.config.vocab_size    # the embedding's
    tokenizer = _read_tokenizer(report)
    if tokenizer is not None:
        where = report.tokenizer["file"]
        if rows is not None and tokenizer.vocab_size > rows:
            report.problem("vocab", f"{where}: the tokenizer has {tokenizer.vocab_size} ids but the "
                                    f"embedding has {rows} rows: ids {rows}..{tokenizer.vocab_size - 1} "
                                    f"would index past it; this tokenizer belongs to another model")
        elif rows is not None and tokenizer.vocab_size < rows:
            report.notes.append(f"the embedding has {rows} rows, the tokenizer {tokenizer.vocab_size} "
                                f"ids: rows {tokenizer.vocab_size}..{rows - 1} are padding no text "
                                f"produces (common: Qwen pads to a multiple of 128)")
        for text, token_id in sorted(tokenizer.special_tokens.items(), key=lambda item: item[1]):
            if rows is not None and token_id >= rows:
                report.problem("special", f"{where}: special token {text!r} has id {token_id}, outside "
                                          f"the embedding's {rows} rows; the model cannot read or "
                                          f"write it")
        for name in ("bos_token", "eos_token", "pad_token"):
            text = getattr(tokenizer, name, None)
            if text is not None and text not in tokenizer.special_tokens:
                report.problem("special", f"{where}: {name} {text!r} is not a special token of the "
                                          f"tokenizer; fix the name in tokenizer_config.json")
    _generation(report, hf, rows)


def _read_tokenizer(report):
    """Our Tokenizer of the checkpoint (tokenizer.bpe, or tokenizer.json for HF), or None;
    fills report.tokenizer, and a problem when there is one that cannot be read."""
    directory = report.directory
    if report.kind == MICROGPT:
        file = os.path.join(directory, ckpt.TOKENIZER_FILE)
        if not os.path.isfile(file):
            report.problem("tokenizer", f"{file}: missing; a microgpt checkpoint holds its tokenizer")
            report.tokenizer = {"file": file}
            return None
        loader = _load_our_tokenizer
    else:
        file = os.path.join(directory, "tokenizer.json")
        if not os.path.isfile(file):
            sentencepiece = os.path.isfile(os.path.join(directory, "tokenizer.model"))
            if sentencepiece:
                report.problem("tokenizer", f"{directory}: has a SentencePiece tokenizer.model (Llama 2 "
                                            f"style) and no tokenizer.json: not supported yet")
            else:
                report.notes.append("no tokenizer.json: the weights load (load_pretrained), but "
                                    "`microgpt generate`, `convert` and `train --init-from` need one")
            return None
        loader = _load_hf_tokenizer
    report.tokenizer = {"file": file}
    try:
        tokenizer = loader(file)
    except MicrogptError as exc:
        report.problem("tokenizer", exc)
        return None
    if tokenizer is None:
        return None
    report.tokenizer.update(vocab_size=tokenizer.vocab_size, specials=tokenizer.special_tokens,
                            pattern=tokenizer.pattern_name or tokenizer.pattern,
                            bos_token=getattr(tokenizer, "bos_token", None),
                            eos_token=getattr(tokenizer, "eos_token", None))
    return tokenizer


def _load_our_tokenizer(file):
    from ..tokenizer import Tokenizer
    return Tokenizer.load(file)


def _load_hf_tokenizer(file):
    try:
        from ..tokenizer.hf import load_hf_tokenizer
    except ImportError:                    # tokenizer/hf.py not part of this version
        return None
    return load_hf_tokenizer(os.path.dirname(file))


def _generation(report, hf, rows):
    """generation_config.json as the loader reads it, and every token id it or config.json
    names inside the embedding's rows."""
    gen_path = os.path.join(report.directory, GENERATION_FILE)
    try:
        if report.kind == HUGGINGFACE:
            report.generation = interop_hf.read_generation(report.directory, hf)
        elif os.path.isfile(gen_path):
            report.generation = ckpt.read_json(gen_path)
    except MicrogptError as exc:
        report.problem("generation", exc)
    if rows is None:
        return
    sources = [(os.path.join(report.directory, CONFIG_FILE), hf)]
    if os.path.isfile(gen_path):
        try:
            sources.append((gen_path, read_json_object(gen_path, GENERATION_FILE)))
        except CheckpointError:
            pass                                   # reported above
    for where, data in sources:
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = data.get(key)
            ids = value if isinstance(value, list) else [value]
            bad = [i for i in ids if isinstance(i, int) and not isinstance(i, bool) and not 0 <= i < rows]
            if bad:
                report.problem("special", f"{where}: {key} {value!r} is outside the embedding's {rows} "
                                          f"rows; set it to the id of the tokenizer's token")


# --- GGUF files -----------------------------------------------------------------------------------

def _is_gguf(path):
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


@dataclass
class GGUFReport:
    """`microgpt inspect FILE.gguf`: the architecture keys and each tensor's GGUF type."""
    path: str
    summary: dict = None
    tensors: list = field(default_factory=list)      # [(name, shape, type, bytes)]
    problems: list = field(default_factory=list)

    @property
    def ok(self):
        return not self.problems

    def to_dict(self):
        return {"path": self.path, "kind": "gguf", **(self.summary or {}),
                "tensor_list": [{"name": n, "shape": list(s), "type": t, "bytes": b} for n, s, t, b in self.tensors],
                "problems": [asdict(p) for p in self.problems], "ok": self.ok}

    def format(self):
        s = self.summary or {}
        lines = [f"{self.path}: GGUF file, architecture {s.get('architecture')}"]
        lines += _wrap("  ", [f"{k.split('.', 1)[1]}={v}" for k, v in s.get("keys", {}).items()])
        lines.append(f"tokenizer: {s.get('tokenizer')}, {s.get('vocab', 0)} tokens")
        lines.append("quantization: " + ", ".join(f"{n} {t}" for t, n in sorted(s.get("tensor_types", {}).items()))
                     + " tensors")
        lines.append("")
        body = [["tensor", "shape", "type", "MiB"]] + [[n, "x".join(map(str, sh)), t, f"{b / 2**20:.2f}"]
                                                       for n, sh, t, b in self.tensors]
        widths = [max(len(row[i]) for row in body) for i in range(4)]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in body]
        lines.append("")
        lines.append(f"total: {s.get('tensors', 0)} tensors, {s.get('bytes', 0) / 2**20:,.2f} MiB")
        lines.append("no problems found" if self.ok else f"{len(self.problems)} problem(s):")
        lines += [f"  - [{p.check}] {p.message}" for p in self.problems]
        return "\n".join(lines)


def inspect_gguf(path):
    """Report on a GGUF file; import_gguf's own checks (architecture, tensor types, shapes,
    tokenizer) run on it, and what they refuse is the report's problem."""
    from .gguf_import import describe_gguf, import_gguf
    report = GGUFReport(os.fspath(path))
    try:
        report.summary = describe_gguf(path)
        import gguf
        reader = gguf.GGUFReader(path, "r")
        report.tensors = [(t.name, tuple(int(n) for n in reversed(t.shape.tolist())), t.tensor_type.name,
                           int(t.n_bytes)) for t in reader.tensors]
    except MicrogptError as exc:
        report.problems.append(Problem("files", str(exc)))
        return report
    try:
        import_gguf(path)
    except MicrogptError as exc:
        report.problems.append(Problem("import", str(exc)))
    return report
