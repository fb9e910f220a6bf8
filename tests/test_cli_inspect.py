"""`microgpt inspect PATH`: the architecture, every tensor, the totals, and every problem.

Each failure mode is made by damaging a good checkpoint: a directory transformers'
save_pretrained wrote (tests/model_dirs.py: a small random model and a tokenizer the
`tokenizers` library trained), or one of our runs. The oracle for the table is the
safetensors library's own reading of the files; for each damage the report must name the
problem (its kind, the file or tensor), keep reporting the others (the loader stops at the
first, the inspector does not), and exit with status 2; a clean checkpoint exits 0.
"""
import json
import os

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
pytest.importorskip("microgpt.tokenizer.hf")

from microgpt.cli import main  # noqa: E402
from microgpt.errors import CheckpointError  # noqa: E402
from microgpt.interop import load_pretrained  # noqa: E402
from microgpt.interop import inspector  # noqa: E402
from model_dirs import copy_directory, edit_json, hf_directory, our_run, rewrite_tensors  # noqa: E402

ROWS = 300                                  # the tokenizer's ids = the embedding's rows


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """{name: a clean directory}, each built once for the module."""
    cache = {}
    builders = {
        "qwen3": lambda p: hf_directory(p, "qwen3"),
        "gpt2-sharded": lambda p: hf_directory(p, "gpt2", how="sharded"),
        "llama-bf16": lambda p: hf_directory(p, "llama", how="bfloat16"),
        "llama-tied": lambda p: hf_directory(p, "llama", tie_word_embeddings=True),
        "qwen2-padded": lambda p: hf_directory(p, "qwen2", pad_rows=84),
        "ours": lambda p: our_run(p),
    }

    def get(name):
        if name not in cache:
            cache[name] = builders[name](tmp_path_factory.mktemp(name) / "model")
        return cache[name]
    return get


@pytest.fixture
def damaged(good, tmp_path):
    """A fresh full copy of a good directory, to damage."""
    def copy(name="qwen3"):
        return copy_directory(good(name), tmp_path / f"{name}-copy")
    return copy


def inspect(path, *flags, capsys):
    """(exit status, the JSON report) of `microgpt inspect PATH --json`."""
    capsys.readouterr()                          # whatever building the fixture printed
    status = main(["inspect", str(path), "--json", *flags])
    out = capsys.readouterr().out
    return status, json.loads(out)


def problems(report, check=None):
    found = [p for p in report["problems"] if check is None or p["check"] == check]
    for p in found:
        assert "\n" not in p["message"], p
    return found


def messages(report, check):
    return " | ".join(p["message"] for p in problems(report, check))


def checkpoint_of(run_dir):
    from microgpt.train import checkpoint as ckpt
    return ckpt.latest(run_dir)


def library_tensors(path):
    """{name: (shape, dtype code, bytes)} of every tensor, as the safetensors library reads them."""
    from safetensors import safe_open
    codes = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64"}
    out = {}
    files = ["model.safetensors"]
    if not os.path.exists(os.path.join(path, files[0])):
        with open(os.path.join(path, "model.safetensors.index.json")) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    for file in files:
        with safe_open(os.path.join(path, file), "pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                out[name] = (list(t.shape), codes[t.dtype], t.numel() * t.element_size())
    return out


# --- clean checkpoints --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["qwen3", "gpt2-sharded", "llama-bf16", "llama-tied", "ours"])
def test_a_clean_checkpoint_reports_every_tensor_and_exits_0(good, name, capsys):
    path = good(name)
    status, report = inspect(path, capsys=capsys)
    assert status == 0 and report["ok"] and report["problems"] == [], report["problems"]
    directory = report["directory"]
    theirs = library_tensors(directory)
    ours = {t["name"]: (t["shape"], t["dtype"], t["nbytes"]) for t in report["tensors"]}
    assert ours == theirs
    model = load_pretrained(directory) if name != "ours" else None
    if model is not None:                       # totals: the parameters the loader fills
        assert report["totals"]["parameters"] == model.num_parameters()
        assert report["totals"]["expected_parameters"] == model.num_parameters()
    assert report["totals"]["bytes"] == sum(b for _, _, b in theirs.values())
    assert report["tokenizer"]["vocab_size"] == report["config"]["vocab_size"]
    assert all(t["nan"] == 0 and t["inf"] == 0 for t in report["tensors"])


def test_the_text_report_has_architecture_table_totals_and_verdict(good, capsys):
    good("gpt2-sharded")
    capsys.readouterr()
    assert main(["inspect", good("gpt2-sharded")]) == 0
    out = capsys.readouterr().out
    assert "model_type: gpt2  (microgpt family gpt2)" in out
    assert "n_layer=2" in out and "tie_embeddings=True" in out and "rope_theta" not in out
    header = next(line for line in out.splitlines() if line.startswith("tensor"))
    assert header.split() == ["tensor", "ours", "shape", "dtype", "MiB", "file", "status"]
    # GPT-2's Conv1D matrices are held as the file stores them, (in, out): nothing transposed
    assert "transformer.h.0.mlp.c_fc.weight" in out and "linear_layout=in_out" in out and "(transposed)" not in out
    assert "parameters in 28 tensors" in out and out.rstrip().endswith("no problems found")


def test_a_padded_embedding_is_a_note_not_a_problem(good, capsys):
    status, report = inspect(good("qwen2-padded"), capsys=capsys)
    assert status == 0 and report["problems"] == []
    assert any("padding" in note and f"rows {ROWS}..{ROWS + 83}" in note for note in report["notes"])


def test_a_run_directory_resolves_to_its_newest_checkpoint(good, capsys):
    run = good("ours")
    status, report = inspect(run, capsys=capsys)
    assert status == 0 and report["kind"] == "microgpt"
    assert report["directory"] == checkpoint_of(run) and report["model_type"] == "llama"


# --- tensors against the config -----------------------------------------------------------------

def test_a_missing_tensor(damaged, capsys):
    path = damaged()
    rewrite_tensors(path, lambda t: t.pop("model.norm.weight"))
    status, report = inspect(path, capsys=capsys)
    assert status == 2
    assert "'model.norm.weight' (32,)" in messages(report, "missing")
    assert [t for t in report["tensors"] if t["status"] == "missing"][0]["ours"] == "model.norm.weight"


def test_an_unexpected_tensor(damaged, capsys):
    path = damaged()
    rewrite_tensors(path, lambda t: t.update({"model.layers.0.extra.weight": np.ones((3, 4), np.float32)}))
    status, report = inspect(path, capsys=capsys)
    assert status == 2 and "'model.layers.0.extra.weight' (3, 4)" in messages(report, "unexpected")
    assert len(problems(report)) == 1


def test_a_tensor_whose_shape_contradicts_the_config_says_what_the_loader_says(damaged, capsys):
    path = damaged()
    name = "model.layers.1.self_attn.k_proj.weight"
    rewrite_tensors(path, lambda t: t.update({name: np.zeros((8, 32), np.float32)}))
    status, report = inspect(path, capsys=capsys)
    assert status == 2
    [problem] = problems(report)
    assert problem["check"] == "shape" and "(8, 32)" in problem["message"] and "(32, 32)" in problem["message"]
    with pytest.raises(CheckpointError) as excinfo:               # one check, two users
        load_pretrained(path)
    assert str(excinfo.value) == problem["message"]


def test_a_config_that_contradicts_many_tensors_reports_each_one(damaged, capsys):
    """The loader stops at the first wrong shape; the inspector lists all six MLP matrices."""
    path = damaged()
    edit_json(os.path.join(path, "config.json"), lambda c: c.update(intermediate_size=40))
    status, report = inspect(path, capsys=capsys)
    wrong = problems(report, "shape")
    assert status == 2 and len(wrong) == 6 and len(problems(report)) == 6
    assert {p["message"].split("'")[1].rsplit(".", 2)[1] for p in wrong} == {"gate_proj", "up_proj", "down_proj"}


def test_gpt2_shapes_are_checked_in_the_conv1d_layout(damaged, capsys):
    path = damaged("gpt2-sharded")
    with open(os.path.join(path, "model.safetensors.index.json")) as f:
        shard = json.load(f)["weight_map"]["transformer.h.0.mlp.c_fc.weight"]
    name = "transformer.h.0.mlp.c_fc.weight"
    rewrite_tensors(path, lambda t: t.update({name: t[name].T.copy()}), file=shard)
    status, report = inspect(path, capsys=capsys)
    assert status == 2 and "(128, 32)" in messages(report, "shape") and "(32, 128)" in messages(report, "shape")


def test_a_tied_head_that_differs_from_the_embedding(damaged, capsys):
    path = damaged("llama-tied")
    rewrite_tensors(path, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"] + 1.0}))
    status, report = inspect(path, capsys=capsys)
    assert status == 2 and "'lm_head.weight' differs" in messages(report, "tied")


def test_a_tensor_in_two_shards(damaged, capsys):
    path = damaged("gpt2-sharded")
    with open(os.path.join(path, "model.safetensors.index.json")) as f:
        weight_map = json.load(f)["weight_map"]
    first, last = weight_map["transformer.wte.weight"], weight_map["transformer.ln_f.weight"]
    rewrite_tensors(path, lambda t: t.update({"transformer.wte.weight": np.zeros((ROWS, 32), np.float32)}),
                    file=last)
    assert first != last
    status, report = inspect(path, capsys=capsys)
    assert status == 2 and "also appears in" in messages(report, "duplicate")


# --- files ------------------------------------------------------------------------------------

def test_a_missing_and_a_truncated_shard_are_both_named_and_the_rest_inspected(damaged, capsys):
    path = damaged("gpt2-sharded")
    with open(os.path.join(path, "model.safetensors.index.json")) as f:
        weight_map = json.load(f)["weight_map"]
    shards = sorted(set(weight_map.values()))
    gone, cut = shards[1], shards[-1]
    os.remove(os.path.join(path, gone))
    os.truncate(os.path.join(path, cut), os.path.getsize(os.path.join(path, cut)) - 3)
    status, report = inspect(path, capsys=capsys)
    files = messages(report, "files")
    assert status == 2 and "missing shard" in files and gone in files and cut in files and "truncated" in files
    lost = {name for name, shard in weight_map.items() if shard in (gone, cut)}
    assert {p["message"].split("'")[1] for p in problems(report, "missing")} == lost
    listed = {t["name"] for t in report["tensors"] if t["name"]}
    assert listed == set(weight_map) - lost                     # the other shards: still read


def test_an_unknown_model_type_still_lists_and_scans_the_tensors(damaged, capsys):
    path = damaged()
    edit_json(os.path.join(path, "config.json"), lambda c: c.update(model_type="falcon"))
    rewrite_tensors(path, lambda t: t["model.norm.weight"].__setitem__(0, np.nan))
    status, report = inspect(path, capsys=capsys)
    assert status == 2 and "'falcon' is not supported" in messages(report, "config")
    assert report["config"] is None and len(report["tensors"]) == 25
    assert {t["status"] for t in report["tensors"]} == {"unpaired"}
    assert "'model.norm.weight' holds 1 NaN" in messages(report, "values")


@pytest.mark.parametrize("file, content, check, words", [
    ("config.json", "{not json", "config", "not valid JSON"),
    ("config.json", "[1, 2]", "config", "not a JSON object"),
    ("generation_config.json", '{"do_sample": true, "temperature": "hot"}', "generation",
     "'temperature' must be a number"),
    ("model.safetensors.index.json", '{"weight_map": ["a"]}', "files", "'weight_map' must be an object"),
])
def test_a_damaged_json_file_is_named(damaged, file, content, check, words, capsys):
    path = damaged("gpt2-sharded" if file.startswith("model.") else "qwen3")
    with open(os.path.join(path, file), "w") as f:
        f.write(content)
    status, report = inspect(path, capsys=capsys)
    assert status == 2 and words in messages(report, check) and file in messages(report, check)
    assert report["kind"] == "huggingface"


def test_a_path_that_is_no_checkpoint_is_a_one_line_error(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such directory" in err
    assert main(["inspect", str(tmp_path)]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err


# --- values and dtypes ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["qwen3", "llama-bf16"])
def test_nan_and_inf_are_counted_tensor_by_tensor(damaged, name, capsys, monkeypatch):
    path = damaged(name)

    def poison(t):
        w = t["model.layers.0.mlp.up_proj.weight"]
        w[0, :3] = np.nan
        w[5, 7], w[6, 1] = np.inf, -np.inf
        t["model.norm.weight"][4] = np.inf
    rewrite_tensors(path, poison)
    monkeypatch.setattr(inspector, "SCAN_CHUNK", 100)            # a tensor spans many chunks
    status, report = inspect(path, capsys=capsys)
    values = problems(report, "values")
    assert status == 2 and len(values) == 2
    rows = {t["name"]: (t["nan"], t["inf"]) for t in report["tensors"]}
    assert rows["model.layers.0.mlp.up_proj.weight"] == (3, 2) and rows["model.norm.weight"] == (0, 1)
    assert "3 NaN and 2 inf among 1,536 values" in values[0]["message"] + values[1]["message"]
    status, report = inspect(path, "--no-scan", capsys=capsys)
    assert status == 0 and report["values_scanned"] is False


def test_mixed_dtypes_and_float64_are_surprises(damaged, capsys):
    path = damaged()
    file = rewrite_tensors(path, lambda t: None)                 # as it was
    from safetensors.torch import load_file, save_file
    tensors = load_file(file)
    tensors["model.norm.weight"] = tensors["model.norm.weight"].half()
    tensors["model.layers.0.input_layernorm.weight"] = tensors["model.layers.0.input_layernorm.weight"].double()
    save_file(tensors, file, metadata={"format": "pt"})
    status, report = inspect(path, capsys=capsys)
    dtype = messages(report, "dtype")
    assert status == 2 and "mix dtypes" in dtype and "1 F16" in dtype and "1 F64" in dtype and "23 F32" in dtype
    assert "float64" in dtype and "says dtype float32" in dtype


def test_an_integer_tensor(damaged, capsys):
    path = damaged()
    from safetensors.torch import load_file, save_file
    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    tensors["model.norm.weight"] = tensors["model.norm.weight"].to(torch.int32)
    save_file(tensors, file, metadata={"format": "pt"})
    status, report = inspect(path, capsys=capsys)
    assert status == 2 and "'model.norm.weight' has dtype I32" in messages(report, "dtype")


def test_a_config_dtype_other_than_the_files(damaged, capsys):
    path = damaged()
    edit_json(os.path.join(path, "config.json"), lambda c: c.update(dtype="bfloat16"))
    status, report = inspect(path, capsys=capsys)
    [problem] = problems(report)
    assert status == 2 and problem["check"] == "dtype" and "says dtype bfloat16" in problem["message"]


# --- tokenizer and special tokens -------------------------------------------------------------

def shrink_vocab(path, rows):
    """config.json and the embedding (and head) cut to `rows`: the weights agree with the
    config, the tokenizer has more ids than either."""
    edit_json(os.path.join(path, "config.json"), lambda c: c.update(vocab_size=rows))
    rewrite_tensors(path, lambda t: t.update({k: t[k][:rows].copy() for k in ("model.embed_tokens.weight",
                                                                             "lm_head.weight")}))


def test_a_tokenizer_with_more_ids_than_the_embedding_has_rows(damaged, capsys):
    path = damaged()
    shrink_vocab(path, 280)
    status, report = inspect(path, capsys=capsys)
    [problem] = problems(report)
    assert status == 2 and problem["check"] == "vocab"
    assert "300 ids but the embedding has 280 rows" in problem["message"]


def test_a_special_token_outside_the_vocabulary(damaged, capsys):
    path = damaged()

    def add_token(spec):
        spec["added_tokens"].append({"id": ROWS + 5, "content": "<|tool|>", "single_word": False,
                                     "lstrip": False, "rstrip": False, "normalized": False, "special": True})
    edit_json(os.path.join(path, "tokenizer.json"), add_token)
    status, report = inspect(path, capsys=capsys)
    assert status == 2 and f"'<|tool|>' has id {ROWS + 5}" in messages(report, "special")
    assert f"{ROWS + 6} ids but the embedding has {ROWS} rows" in messages(report, "vocab")


def test_generation_and_config_token_ids_outside_the_vocabulary(damaged, capsys):
    path = damaged()
    edit_json(os.path.join(path, "generation_config.json"), lambda g: g.update(eos_token_id=[0, ROWS]))
    edit_json(os.path.join(path, "config.json"), lambda c: c.update(bos_token_id=50256))
    status, report = inspect(path, capsys=capsys)
    special = messages(report, "special")
    assert status == 2 and len(problems(report)) == 2
    assert f"generation_config.json: eos_token_id [0, {ROWS}]" in special
    assert "config.json: bos_token_id 50256" in special


def test_an_eos_token_name_that_is_no_token(damaged, capsys):
    path = damaged()
    edit_json(os.path.join(path, "tokenizer_config.json"), lambda c: c.update(eos_token="<|end|>"))
    status, report = inspect(path, capsys=capsys)
    assert status == 2 and "eos_token '<|end|>' is not a special token" in messages(report, "special")


def test_an_unsupported_tokenizer_is_a_problem_and_the_rest_is_inspected(damaged, capsys):
    path = damaged()
    edit_json(os.path.join(path, "tokenizer.json"), lambda s: s["model"].update(byte_fallback=True))
    status, report = inspect(path, capsys=capsys)
    [problem] = problems(report)
    assert status == 2 and problem["check"] == "tokenizer" and "byte_fallback" in problem["message"]
    assert len(report["tensors"]) == 25
    os.remove(os.path.join(path, "tokenizer.json"))
    open(os.path.join(path, "tokenizer.model"), "wb").write(b"\x00")
    status, report = inspect(path, capsys=capsys)
    assert status == 2 and "SentencePiece" in messages(report, "tokenizer")
    os.remove(os.path.join(path, "tokenizer.model"))
    status, report = inspect(path, capsys=capsys)                # weights alone: a note
    assert status == 0 and any("no tokenizer.json" in n for n in report["notes"])


def test_everything_wrong_at_once_is_reported_at_once(damaged, capsys):
    path = damaged()
    rewrite_tensors(path, lambda t: (t.pop("model.layers.1.mlp.up_proj.weight"),
                                     t.update({"stray": np.zeros(2, np.float32)}),
                                     t["model.norm.weight"].__setitem__(1, np.nan)))
    edit_json(os.path.join(path, "generation_config.json"), lambda g: g.update(bos_token_id=-1))
    status, report = inspect(path, capsys=capsys)
    assert status == 2
    assert {p["check"] for p in problems(report)} == {"missing", "unexpected", "values", "special"}


# --- our runs ------------------------------------------------------------------------------------

def test_our_damaged_weights_fail_their_checksum_and_the_scan(good, tmp_path, capsys):
    run = copy_directory(good("ours"), tmp_path / "run")
    step = checkpoint_of(run)
    rewrite_tensors(step, lambda t: t["model.norm.weight"].__setitem__(0, np.inf))
    status, report = inspect(run, capsys=capsys)
    assert status == 2 and "model.safetensors: contents do not match the checksum" in messages(report, "files")
    assert "'model.norm.weight' holds 0 NaN and 1 inf" in messages(report, "values")


def test_our_incomplete_checkpoint(good, tmp_path, capsys):
    run = copy_directory(good("ours"), tmp_path / "run")
    step = checkpoint_of(run)
    os.remove(os.path.join(step, "COMPLETE"))
    status, report = inspect(step, capsys=capsys)
    assert status == 2 and "incomplete checkpoint" in messages(report, "files")
    assert len(problems(report)) == 1 and len(report["tensors"]) > 0


def test_our_config_whose_hf_keys_contradict_our_key(good, tmp_path, capsys):
    run = copy_directory(good("ours"), tmp_path / "run")
    step = checkpoint_of(run)
    edit_json(os.path.join(step, "config.json"), lambda c: c.update(num_hidden_layers=3, rms_norm_eps=1e-5))
    status, report = inspect(step, capsys=capsys)
    config = messages(report, "config")
    assert status == 2 and "n_layer 3 vs 1" in config and "norm_eps 1e-05 vs 1e-06" in config


def test_our_tokenizer_with_more_ids_than_the_model(good, tmp_path, capsys):
    from microgpt.tokenizer import Tokenizer
    run = copy_directory(good("ours"), tmp_path / "run")
    step = checkpoint_of(run)
    Tokenizer.bytes_level(special_tokens=("<|endoftext|>", "<|a|>", "<|b|>")).save(os.path.join(step, "tokenizer.bpe"))
    status, report = inspect(step, capsys=capsys)
    assert status == 2 and "259 ids but the embedding has 257 rows" in messages(report, "vocab")
    assert "'<|b|>' has id 258" in messages(report, "special")


# --- memory: the scan reads one tensor at a time -----------------------------------------------------

PROBE = """
import json, sys
from microgpt.interop.inspector import inspect_checkpoint

def kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

inspect_checkpoint(sys.argv[1], scan_values=False)          # imports and first-use costs
with open("/proc/self/clear_refs", "w") as f:               # VmHWM := VmRSS from here
    f.write("5")
base = kib("VmRSS")
report = inspect_checkpoint(sys.argv[1])
print(json.dumps({"growth": (kib("VmHWM") - base) * 1024, "bytes": report.stored_bytes, "ok": report.ok}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's /proc peak reset")
def test_the_value_scan_never_holds_the_model(tmp_path):
    """Peak resident memory of a full inspection (every value scanned), measured in a fresh
    process: well under the model's size, where reading it whole (or keeping each scanned
    tensor's pages, as a scan without release() does: 1.0x) would hold all of it."""
    import subprocess
    import sys
    path = hf_directory(tmp_path / "big", "llama", hidden_size=256, intermediate_size=768,
                        num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2)
    done = subprocess.run([sys.executable, "-c", PROBE, path], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout)
    assert measured["ok"] and measured["bytes"] > 20 * 2**20
    assert measured["growth"] < 0.5 * measured["bytes"], measured
