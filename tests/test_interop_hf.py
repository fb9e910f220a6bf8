"""Hugging Face directories in and out (microgpt/interop/), with transformers as the oracle.

For each architecture transformers builds a random-init model from a small config (no
download), every parameter redrawn (biases and norm gains too: transformers starts them at
0 and 1, which would hide a bias on the wrong projection), and saves it with save_pretrained:
in float32, sharded with a small max_shard_size, in bfloat16 and in float16. We load the
directory, and
  - our logits on random ids equal transformers': max |ours - theirs| / max |theirs| < 1e-4,
    against transformers run in float32 on the very weights in the file (for bf16 / f16,
    the rounded ones, widened exactly);
  - 32 greedy tokens of our KV-cache generation equal transformers' (float32 files);
  - our export of the loaded model, read back by AutoModelForCausalLM, has no missing,
    unexpected or mismatched keys, the model_type it came from, and the same logits.
Then every bad input: each a one-line MicrogptError naming the file (and key or tensor),
raised before any tensor reaches the model.
"""
import json
import os
import struct

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from microgpt.errors import CheckpointError, ConfigError, MicrogptError  # noqa: E402
from microgpt.inference.engine import Engine  # noqa: E402
from microgpt.inference.sampling import SamplingConfig  # noqa: E402
from microgpt.interop import SUPPORTED_MODEL_TYPES, export_hf, load_hf_directory, load_pretrained  # noqa: E402
from microgpt.interop import hf_config as hfc  # noqa: E402
from microgpt.interop.hf_safetensors import (  # noqa: E402
    SafetensorsReader,
    bf16_bits_to_float32,
    float32_to_bf16_bits,
    read_header,
    write_safetensors,
)
from microgpt.nn import GPT, GPTConfig  # noqa: E402
from hf_helpers import redraw_parameters  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB = 97
LLAMA_SIZES = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                   bos_token_id=1, eos_token_id=2)
GPT2_SIZES = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                  bos_token_id=1, eos_token_id=2)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16, "rope_theta": 10000.0}

# name -> (model_type, config overrides)
CASES = {
    "gpt2": ("gpt2", {}),
    "gpt2-untied": ("gpt2", dict(tie_word_embeddings=False)),
    "llama-gqa-untied": ("llama", {}),
    "llama-tied": ("llama", dict(tie_word_embeddings=True)),
    "llama-biases": ("llama", dict(attention_bias=True, mlp_bias=True)),
    "llama-attention-bias": ("llama", dict(attention_bias=True)),
    "llama-rope-linear": ("llama", dict(rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                         "rope_theta": 5000.0})),
    "llama-rope-llama3": ("llama", dict(rope_parameters=LLAMA3_ROPE)),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", dict(head_dim=16)),
    "qwen3-tied": ("qwen3", dict(head_dim=16, tie_word_embeddings=True, attention_bias=True)),
    "mistral": ("mistral", dict(sliding_window=64)),      # a window holding the whole context
}
SAVES = ("float32", "sharded", "bfloat16", "float16")


def hf_model(model_type, seed=0, **overrides):
    """A transformers model of `model_type` on the small sizes + overrides, eval mode, every
    parameter drawn from a seeded generator: matrices N(0, 0.3) (large enough that the layers,
    not the last token's own embedding, pick the next token), embeddings and biases N(0, 0.1),
    norm gains 1 + N(0, 0.2)."""
    sizes = GPT2_SIZES if model_type == "gpt2" else LLAMA_SIZES
    config = transformers.AutoConfig.for_model(model_type, **{**sizes, **overrides})
    torch.manual_seed(seed)
    return redraw_parameters(transformers.AutoModelForCausalLM.from_config(config).eval(), seed + 1)


def save(model, path, how):
    """save_pretrained in one of SAVES; returns the path."""
    if how == "sharded":
        model.save_pretrained(path, max_shard_size="20KB")
        assert os.path.isfile(os.path.join(path, "model.safetensors.index.json"))
        assert not os.path.exists(os.path.join(path, "model.safetensors"))
    elif how in ("bfloat16", "float16"):
        dtype = getattr(torch, how)
        model.to(dtype).save_pretrained(path)
        model.to(torch.float32)
    else:
        model.save_pretrained(path)
    return str(path)


def hf_logits(path_or_model, ids):
    """transformers' float32 logits of a directory (its weights widened exactly) or a model."""
    model = path_or_model
    if isinstance(model, str):
        model = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


def our_logits(model, ids):
    return model(ids)[0].numpy()


def relative_error(ours, theirs):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return np.abs(ours - theirs).max() / np.abs(theirs).max()


def random_ids(t=24, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, size=(2, t))


def one_line(excinfo, *words):
    message = str(excinfo.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, (word, message)
    return message



@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{(case, how): directory}, each model built and saved once for the module."""
    cache = {}

    def get(case, how="float32"):
        if (case, how) not in cache:
            model_type, overrides = CASES[case]
            path = tmp_path_factory.mktemp(f"{case}-{how}")
            cache[(case, how)] = save(hf_model(model_type, **overrides), path, how)
        return cache[(case, how)]
    return get


# --- transformers -> us -> transformers -----------------------------------------------------------

@pytest.mark.parametrize("how", SAVES)
@pytest.mark.parametrize("case", CASES)
def test_we_load_what_transformers_saved_and_the_logits_agree(saved, case, how):
    path = saved(case, how)
    model = load_pretrained(path)
    assert not model.training                            # as from_pretrained: ready to run
    ids = random_ids()
    error = relative_error(our_logits(model, ids), hf_logits(path, ids))
    assert error < 1e-4, f"{case} ({how}): max rel. error {error:.2e}"


@pytest.mark.parametrize("case", CASES)
def test_our_export_loads_in_transformers_with_no_missing_or_unexpected_keys(saved, case, tmp_path):
    path = saved(case)
    ids = random_ids(seed=1)
    expected = hf_logits(path, ids)
    out = export_hf(load_pretrained(path), None, str(tmp_path / "export"))
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set(), info
    assert info["mismatched_keys"] == set() and info["error_msgs"] == [], info
    with open(os.path.join(path, "config.json")) as f:
        assert hf.config.model_type == json.load(f)["model_type"]
    assert relative_error(hf_logits(hf.eval(), ids), expected) < 1e-4
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "model.safetensors"]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]      # no temp dir left


@pytest.mark.parametrize("case", CASES)
def test_32_greedy_tokens_equal_transformers(saved, case):
    path = saved(case)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompt = [int(i) for i in random_ids(t=8, seed=2)[0]]
    ours = Engine(load_pretrained(path)).generate_ids([prompt], 32, SamplingConfig(temperature=0.0),
                                                      stop_ids=())[0].ids
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(32):
            ids.append(int(hf(torch.tensor([ids])).logits[0, -1].argmax()))
    assert ours == ids[len(prompt):]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_half_precision_export_is_what_transformers_reads(saved, dtype, tmp_path):
    ours = load_pretrained(saved("qwen3"))
    out = export_hf(ours, None, str(tmp_path / "half"), dtype=dtype)
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["dtype"] == dtype
    headers, _, _ = read_header(os.path.join(out, "model.safetensors"))
    assert {info.dtype for info in headers.values()} == {"BF16" if dtype == "bfloat16" else "F16"}
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True,
                                                                 dtype=torch.float32)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = random_ids(seed=3)
    assert relative_error(our_logits(load_pretrained(out), ids), hf_logits(hf.eval(), ids)) < 1e-4
    for name, p in hf.named_parameters():                 # the rounding is torch's own
        original = torch.tensor(dict(ours.named_parameters())[name].numpy()) \
            if name in dict(ours.named_parameters()) else None
        if original is not None:
            assert torch.equal(p, original.to(getattr(torch, dtype)).float()), name


def test_rope_written_the_older_way_means_the_same(saved, tmp_path):
    """transformers v5 writes rope_parameters; older config.json files rope_theta + rope_scaling
    ("type" in the oldest): all three say the same."""
    path = saved("llama-rope-llama3")
    ids = random_ids()
    expected = our_logits(load_pretrained(path), ids)
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    params = config.pop("rope_parameters")
    for key in ("rope_type", "type"):
        scaling = {k: v for k, v in params.items() if k not in ("rope_theta", "rope_type")}
        older = dict(config, rope_theta=params["rope_theta"], rope_scaling={key: "llama3", **scaling})
        copy = tmp_path / key
        copy.mkdir()
        os.link(os.path.join(path, "model.safetensors"), copy / "model.safetensors")
        (copy / "config.json").write_text(json.dumps(older))
        np.testing.assert_array_equal(our_logits(load_pretrained(str(copy)), ids), expected)


def test_a_base_model_file_without_prefix_and_with_saved_buffers_loads(saved, tmp_path):
    """The original gpt2 weights name tensors as GPT2Model does (wte.weight, h.0...) and carry
    the causal-mask buffers: the prefix is added, the buffers skipped."""
    path = saved("gpt2")
    with SafetensorsReader(os.path.join(path, "model.safetensors")) as f:
        tensors = {name.removeprefix("transformer."): f.float32(name).copy() for name in f.tensors}
    tensors["h.0.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))
    tensors["h.1.attn.masked_bias"] = np.array(-1e4, np.float32)
    write_safetensors(str(tmp_path / "model.safetensors"), tensors, metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(open(os.path.join(path, "config.json")).read())
    ids = random_ids()
    np.testing.assert_array_equal(our_logits(load_pretrained(str(tmp_path)), ids),
                                  our_logits(load_pretrained(path), ids))


def test_mistral_window_shorter_than_the_context_loads_with_the_context_capped(tmp_path):
    hf = hf_model("mistral", sliding_window=8)
    path = save(hf, tmp_path / "m", "float32")
    with pytest.raises(ConfigError) as excinfo:
        load_pretrained(path)
    one_line(excinfo, "config.json", "sliding_window", "block_size=8")
    model = load_pretrained(path, block_size=8)
    assert model.config.block_size == 8 and model.config.sliding_window == 8
    ids = random_ids(t=8)
    assert relative_error(our_logits(model, ids), hf_logits(hf, ids)) < 1e-4


def test_generation_config_feeds_the_sampling_defaults(tmp_path):
    hf = hf_model("llama")
    hf.generation_config = transformers.GenerationConfig(
        do_sample=True, temperature=0.7, top_k=20, top_p=0.9, repetition_penalty=1.1,
        max_new_tokens=33, bos_token_id=1, eos_token_id=[2, 3])
    path = save(hf, tmp_path / "g", "float32")
    loaded = load_hf_directory(path)
    assert loaded.generation == {"do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.9,
                                 "repetition_penalty": 1.1, "max_new_tokens": 33,
                                 "bos_token_id": 1, "eos_token_id": [2, 3]}
    out = export_hf(loaded.model, None, str(tmp_path / "out"), generation=loaded.generation)
    again = transformers.GenerationConfig.from_pretrained(out)
    for key, value in loaded.generation.items():
        assert getattr(again, key) == value, key
    assert load_hf_directory(out).generation == loaded.generation


def test_without_generation_config_transformers_defaults_apply_greedy(saved, tmp_path):
    path = saved("llama-gqa-untied")
    os.makedirs(tmp_path / "d")
    for name in ("config.json", "model.safetensors"):
        os.link(os.path.join(path, name), tmp_path / "d" / name)
    generation = load_hf_directory(str(tmp_path / "d")).generation
    assert generation["temperature"] == 0.0 and generation["do_sample"] is False
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (1, 2)   # from config.json


def test_greedy_generation_exports_without_sampling_keys(tmp_path):
    model = GPT(GPTConfig(family="llama", vocab_size=VOCAB, block_size=16, n_layer=1, n_head=2,
                          n_embd=16))
    out = export_hf(model, None, str(tmp_path / "o"), generation={"temperature": 0.0})
    with open(os.path.join(out, "generation_config.json")) as f:
        assert json.load(f) == {"bos_token_id": None, "eos_token_id": None, "do_sample": False}


# --- our run checkpoints: the same mapping --------------------------------------------------------

def test_run_checkpoints_write_their_config_through_interop():
    from microgpt.train import checkpoint as ckpt
    for fields in (dict(family="gpt2"), dict(family="llama", qkv_bias=True),
                   dict(family="llama", qk_norm=True, head_dim=8)):
        gpt = GPTConfig(vocab_size=VOCAB, block_size=16, n_layer=1, n_head=2, n_embd=16, **fields).to_dict()
        written = ckpt.hf_config(gpt, 5)
        assert written.pop("microgpt") == gpt
        assert written == hfc.hf_config_from_gpt(gpt, 5, 5)
    # a run model no HF class has (GPT-2 without biases) still gets its family's key names
    gpt = GPTConfig(vocab_size=VOCAB, block_size=16, n_layer=1, n_head=2, n_embd=16, bias=False).to_dict()
    assert ckpt.hf_config(gpt, 5)["model_type"] == "gpt2"


def test_a_qwen3_run_checkpoint_loads_in_transformers(tmp_path):
    from microgpt.tokenizer import Tokenizer
    from microgpt.train import checkpoint as ckpt
    model = GPT(GPTConfig(family="llama", vocab_size=257, block_size=16, n_layer=2, n_head=4,
                          n_kv_head=2, n_embd=32, head_dim=16, qk_norm=True, tie_embeddings=False), seed=4)
    path = ckpt.save(str(tmp_path), ckpt.Checkpoint(1, model.config.to_dict(), model.state_dict(),
                                                    Tokenizer.bytes_level(special_tokens=("<|endoftext|>",))))
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert hf.config.model_type == "qwen3" and not info["missing_keys"] and not info["unexpected_keys"]
    ids = np.random.default_rng(0).integers(0, 257, size=(2, 12))
    assert relative_error(our_logits(ckpt.load_model(path)[0].eval(), ids), hf_logits(hf.eval(), ids)) < 1e-4


# --- safetensors and bfloat16, against torch --------------------------------------------------------

def test_bf16_widening_is_exact_for_every_bit_pattern():
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    theirs = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).float().numpy()
    ours = bf16_bits_to_float32(bits)
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


def test_bf16_narrowing_rounds_as_torch_does():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(50000) * 10.0 ** rng.integers(-30, 30, 50000),
                        [0.0, -0.0, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-40, 1.00390625]]).astype(np.float32)
    ours = float32_to_bf16_bits(x)
    theirs = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(ours, theirs)
    nans = np.array([0x7FC00000, 0x7F800001, 0xFF80FFFF, 0x7FFFFFFF], np.uint32).view(np.float32)
    assert np.isnan(bf16_bits_to_float32(float32_to_bf16_bits(nans))).all()   # never rounds to inf


def test_our_reader_agrees_with_the_safetensors_library_and_maps_the_file(tmp_path):
    from safetensors.torch import save_file
    tensors = {"a": torch.randn(3, 5), "b": torch.randn(7).to(torch.bfloat16),
               "c": torch.randn(2, 2).half(), "empty": torch.zeros(0, 3)}
    path = str(tmp_path / "x.safetensors")
    save_file(tensors, path, metadata={"format": "pt"})
    with SafetensorsReader(path) as f:
        assert f.metadata == {"format": "pt"}
        for name, t in tensors.items():
            np.testing.assert_array_equal(f.float32(name), t.float().numpy())
        view = f.float32("a")
        assert not view.flags.owndata and not view.flags.writeable       # the mapping itself
        del view


def test_loading_never_holds_the_model_twice(tmp_path):
    """Peak of NumPy allocations while loading a bf16 file: the model once, plus a few copies
    of one tensor (the random init's float64 draw, the widened tensor, its copy) and 10% for
    the rest (rotary tables, small arrays); a loader that read the file into memory first
    would need twice the model."""
    import tracemalloc
    hf = hf_model("llama", num_hidden_layers=8, hidden_size=64, intermediate_size=128,
                  num_attention_heads=4, num_key_value_heads=4)
    path = save(hf, tmp_path / "big", "bfloat16")
    params = [p for p in hf.parameters()]
    model_bytes = 4 * sum(p.numel() for p in params)
    largest = 4 * max(p.numel() for p in params)
    tracemalloc.start()
    try:
        model = load_pretrained(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    bound = 1.1 * model_bytes + 4 * largest
    assert bound < 1.5 * model_bytes                              # the bound means something
    assert peak <= bound, (peak, model_bytes, largest)
    assert model.num_parameters() * 4 == model_bytes


def test_export_writes_each_file_atomically_and_replaces_only_when_asked(saved, tmp_path):
    model = load_pretrained(saved("qwen2"))
    out = str(tmp_path / "out")
    os.makedirs(out)
    (tmp_path / "out" / "mine.txt").write_text("keep me")
    with pytest.raises(CheckpointError) as excinfo:
        export_hf(model, None, out)
    one_line(excinfo, out, "overwrite=True")
    assert os.listdir(out) == ["mine.txt"]
    export_hf(model, None, out, overwrite=True)
    assert "mine.txt" not in os.listdir(out) and "config.json" in os.listdir(out)
    assert sorted(os.listdir(tmp_path)) == ["out"]                # no temp or old dir left


def test_an_export_that_fails_midway_leaves_nothing(saved, tmp_path, monkeypatch):
    from microgpt.interop import hf as interop_hf
    model = load_pretrained(saved("llama-tied"))

    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(interop_hf, "write_safetensors", broken)
    with pytest.raises(OSError, match="disk full"):
        export_hf(model, None, str(tmp_path / "out"))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("fields, words", [
    (dict(family="llama", qkv_bias=True, attn_out_bias=False, bias=True), "no Hugging Face model type"),
    (dict(family="llama", qk_norm=True, qkv_bias=True, attn_out_bias=False), "no Hugging Face model type"),
    (dict(family="gpt2", bias=False), "GPT-2 model without biases"),
    (dict(family="gpt2", n_kv_head=1), "grouped-query attention"),
])
def test_export_of_a_model_no_hf_class_has_is_refused_before_writing(fields, words, tmp_path):
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=16, n_layer=1, n_head=2, n_embd=16, **fields))
    with pytest.raises(ConfigError) as excinfo:
        export_hf(model, None, str(tmp_path / "out"))
    one_line(excinfo, words)
    assert os.listdir(tmp_path) == []


def test_export_dtype_must_be_known(tmp_path):
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=16, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(ConfigError, match="float32, float16, bfloat16"):
        export_hf(model, None, str(tmp_path / "out"), dtype="int8")


# --- bad input: each a one-line error naming the file, before any tensor is loaded -------------------

@pytest.fixture
def damaged(saved, tmp_path):
    """A fresh copy of a saved directory to damage: damaged(case, how) -> path."""
    def copy(case="llama-gqa-untied", how="float32"):
        source = saved(case, how)
        target = tmp_path / f"{case}-{how}-copy"
        target.mkdir()
        for name in os.listdir(source):
            (target / name).write_bytes(open(os.path.join(source, name), "rb").read())
        return str(target)
    return copy


def edit_config(path, **changes):
    file = os.path.join(path, "config.json")
    with open(file) as f:
        config = json.load(f)
    for key, value in changes.items():
        if value is DELETE:
            del config[key]
        else:
            config[key] = value
    with open(file, "w") as f:
        json.dump(config, f)
    return file


DELETE = object()


@pytest.fixture
def no_tensor_loaded(monkeypatch):
    """Fails the test if any tensor reaches a model's parameters (the load's second pass)."""
    loads = []
    real = SafetensorsReader.read_into                    # how the loader writes a parameter
    monkeypatch.setattr(SafetensorsReader, "read_into", lambda self, *a, **k: loads.append(1) or real(self, *a, **k))
    yield
    assert loads == [], "a tensor was loaded before the error"


def load_fails(path, error=MicrogptError, **kwargs):
    with pytest.raises(error) as excinfo:
        load_pretrained(path, **kwargs)
    return excinfo


def test_unknown_model_type_lists_the_supported_ones(damaged, no_tensor_loaded):
    path = damaged()
    file = edit_config(path, model_type="falcon")
    message = one_line(load_fails(path, ConfigError), file, "'falcon'", "supported")
    assert all(t in message for t in SUPPORTED_MODEL_TYPES)
    edit_config(path, model_type=DELETE)
    one_line(load_fails(path, ConfigError), file, "missing key 'model_type'")


@pytest.mark.parametrize("key", ["hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size",
                                 "num_attention_heads", "max_position_embeddings"])
def test_a_missing_size_key_is_named_with_its_file(damaged, key, no_tensor_loaded):
    path = damaged()
    file = edit_config(path, **{key: DELETE})
    one_line(load_fails(path, ConfigError), file, f"missing key {key!r}")


def test_a_missing_gpt2_key_is_named_with_its_file(damaged, no_tensor_loaded):
    path = damaged("gpt2")
    file = edit_config(path, n_embd=DELETE)
    one_line(load_fails(path, ConfigError), file, "missing key 'n_embd'")


@pytest.mark.parametrize("key, value, words", [
    ("num_attention_heads", "4", "positive integer"),
    ("hidden_size", 32.0, "positive integer"),
    ("vocab_size", True, "positive integer"),
    ("num_key_value_heads", -2, "positive integer"),
    ("hidden_size", None, "got null"),
    ("tie_word_embeddings", "yes", "true or false"),
    ("rms_norm_eps", -1e-6, "positive number"),
    ("rms_norm_eps", "1e-6", "positive number"),
    ("rope_parameters", [10000.0], "an object"),
    ("attention_bias", 1, "true or false"),
    ("head_dim", 0, "positive integer"),
])
def test_a_key_of_the_wrong_type_is_named_with_its_file(damaged, key, value, words, no_tensor_loaded):
    path = damaged()
    file = edit_config(path, **{key: value})
    one_line(load_fails(path, ConfigError), file, repr(key), words)


@pytest.mark.parametrize("case, changes, words", [
    ("llama-gqa-untied", dict(hidden_act="gelu"), "hidden_act 'gelu' is not supported"),
    ("gpt2", dict(activation_function="relu"), "activation_function 'relu' is not supported"),
    ("gpt2", dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
    ("llama-gqa-untied", dict(rope_parameters={"rope_type": "yarn", "factor": 4.0}),
     "rope type 'yarn' is not supported; supported: default, linear, llama3"),
    ("llama-gqa-untied", dict(rope_parameters={"rope_type": "linear"}), "missing key 'factor'"),
    ("qwen2", dict(use_sliding_window=True, sliding_window=8, max_window_layers=1, layer_types=DELETE),
     "some layers only"),
    ("qwen2", dict(layer_types=["full_attention"]), "'layer_types'"),
    ("llama-gqa-untied", dict(num_attention_heads=3), "n_head=3"),
])
def test_a_config_this_engine_cannot_run_is_refused_by_name(damaged, case, changes, words, no_tensor_loaded):
    path = damaged(case)
    file = edit_config(path, **changes)
    one_line(load_fails(path, ConfigError), file, words)


def test_block_size_cannot_exceed_the_model_or_resize_gpt2(damaged, saved):
    with pytest.raises(ConfigError, match="<= the model's context of 64"):
        load_pretrained(saved("llama-gqa-untied"), block_size=65)
    with pytest.raises(ConfigError, match="position table"):
        load_pretrained(saved("gpt2"), block_size=32)
    assert load_pretrained(saved("llama-gqa-untied"), block_size=32).config.block_size == 32


@pytest.mark.parametrize("content, words", [(None, "missing"), ("{not json", "not valid JSON"),
                                            ("[1, 2]", "not a JSON object")])
def test_config_json_missing_or_not_an_object(damaged, content, words, no_tensor_loaded):
    path = damaged()
    file = os.path.join(path, "config.json")
    os.remove(file)
    if content is not None:
        with open(file, "w") as f:
            f.write(content)
    one_line(load_fails(path, CheckpointError), file, words)


def test_not_a_directory_or_no_weights(damaged, tmp_path):
    one_line(load_fails(str(tmp_path / "nowhere"), CheckpointError), "nowhere", "no such directory")
    path = damaged()
    os.remove(os.path.join(path, "model.safetensors"))
    one_line(load_fails(path, CheckpointError), path, "no model.safetensors and no model.safetensors.index.json")


def test_a_missing_shard_is_named(damaged, no_tensor_loaded):
    path = damaged(how="sharded")
    with open(os.path.join(path, "model.safetensors.index.json")) as f:
        shard = sorted(set(json.load(f)["weight_map"].values()))[-1]
    os.remove(os.path.join(path, shard))
    one_line(load_fails(path, CheckpointError), shard, "missing shard", "model.safetensors.index.json")


@pytest.mark.parametrize("damage, words", [
    (lambda index: index.update(weight_map=["a"]), "'weight_map' must be an object"),
    (lambda index: index["weight_map"].update({"model.norm.weight": "../elsewhere.safetensors"}),
     "not a file name"),
    (lambda index: index["weight_map"].update({"model.ghost.weight": sorted(index["weight_map"].values())[0]}),
     "has no tensor 'model.ghost.weight'"),
])
def test_a_damaged_index_is_named(damaged, damage, words, no_tensor_loaded):
    path = damaged(how="sharded")
    file = os.path.join(path, "model.safetensors.index.json")
    with open(file) as f:
        index = json.load(f)
    damage(index)
    with open(file, "w") as f:
        json.dump(index, f)
    one_line(load_fails(path, CheckpointError), words)


@pytest.mark.parametrize("how", ["float32", "bfloat16"])
def test_a_truncated_safetensors_file_names_the_file_and_tensor(damaged, how, no_tensor_loaded):
    path = damaged(how=how)
    file = os.path.join(path, "model.safetensors")
    headers, _, start = read_header(file)
    last = max(headers.values(), key=lambda info: info.end)
    os.truncate(file, start + last.end - 2)
    one_line(load_fails(path, CheckpointError), file, repr(last.name), "truncated")


@pytest.mark.parametrize("cut, words", [(4, "too short"), (20, "the header claims")])
def test_a_file_cut_inside_its_header(damaged, cut, words, no_tensor_loaded):
    path = damaged()
    file = os.path.join(path, "model.safetensors")
    os.truncate(file, cut)
    one_line(load_fails(path, CheckpointError), file, words)


@pytest.mark.parametrize("header, words", [
    (b"{not json   ", "not valid JSON"),
    (b"[1, 2, 3]   ", "not a JSON object"),
    (json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}).encode(),
     "12 bytes do not hold shape (2, 2)"),
    (json.dumps({"w": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 4]}}).encode(), "unknown dtype 'Q4'"),
    (json.dumps({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}).encode(), "shape [-1]"),
    (json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}).encode(), "data_offsets"),
])
def test_a_corrupt_header_names_the_file(tmp_path, header, words):
    file = str(tmp_path / "x.safetensors")
    with open(file, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + bytes(16))
    with pytest.raises(CheckpointError) as excinfo:
        SafetensorsReader(file)
    one_line(excinfo, file, words)


def rewrite_weights(path, change):
    """Apply change(tensors dict) to model.safetensors, keeping the other tensors as they are."""
    file = os.path.join(path, "model.safetensors")
    with SafetensorsReader(file) as f:
        tensors = {name: f.float32(name).copy() for name in f.tensors}
    change(tensors)
    write_safetensors(file, tensors, metadata={"format": "pt"})
    return file


def test_a_tensor_of_the_wrong_shape_names_the_file_and_tensor(damaged, no_tensor_loaded):
    path = damaged()
    name = "model.layers.1.self_attn.k_proj.weight"
    file = rewrite_weights(path, lambda t: t.update({name: np.zeros((8, 32), np.float32)}))
    one_line(load_fails(path, CheckpointError), file, repr(name), "(8, 32)", "(16, 32)")


def test_gpt2_conv1d_shapes_are_checked_in_the_file_layout(damaged, no_tensor_loaded):
    path = damaged("gpt2")
    name = "transformer.h.0.mlp.c_fc.weight"
    file = rewrite_weights(path, lambda t: t.update({name: t[name].T.copy()}))   # (out, in): wrong for Conv1D
    one_line(load_fails(path, CheckpointError), file, repr(name), "(128, 32)", "(32, 128)")


def test_missing_and_unexpected_tensors_are_listed(damaged, no_tensor_loaded):
    path = damaged()
    rewrite_weights(path, lambda t: (t.pop("model.norm.weight"), t.update({"model.extra.weight": np.ones(3)})))
    one_line(load_fails(path, CheckpointError), "missing model.norm.weight", "unexpected model.extra.weight")


def test_an_untied_model_without_its_head_suggests_tying(damaged, no_tensor_loaded):
    path = damaged()
    rewrite_weights(path, lambda t: t.pop("lm_head.weight"))
    one_line(load_fails(path, CheckpointError), "missing lm_head.weight", "tie_word_embeddings: true")


def test_a_tied_model_may_carry_its_head_only_equal_to_the_embedding(damaged):
    path = damaged("llama-tied")
    ids = random_ids()
    expected = our_logits(load_pretrained(path), ids)
    rewrite_weights(path, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"].copy()}))
    np.testing.assert_array_equal(our_logits(load_pretrained(path), ids), expected)
    file = rewrite_weights(path, lambda t: t.update({"lm_head.weight": t["lm_head.weight"] + 1.0}))
    one_line(load_fails(path, CheckpointError), file, "'lm_head.weight' differs", "tie_word_embeddings")


def test_an_integer_tensor_is_refused_by_dtype(damaged, no_tensor_loaded):
    from safetensors.numpy import load_file, save_file
    path = damaged()
    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    tensors["model.norm.weight"] = tensors["model.norm.weight"].astype(np.int32)
    save_file(tensors, file, metadata={"format": "pt"})
    one_line(load_fails(path, CheckpointError), file, "'model.norm.weight'", "dtype I32")


@pytest.mark.parametrize("content, words", [
    ("[]", "not a JSON object"),
    ('{"do_sample": true, "temperature": "hot"}', "'temperature' must be a number"),
    ('{"do_sample": "yes"}', "'do_sample' must be true or false"),
    ('{"do_sample": true, "top_p": 2.0}', "top_p must be in (0, 1]"),
    ('{"eos_token_id": "2"}', "'eos_token_id' must be a token id"),
    ('{"max_new_tokens": 0}', "'max_new_tokens' must be a positive integer"),
])
def test_a_bad_generation_config_names_the_file(damaged, content, words):
    path = damaged()
    file = os.path.join(path, "generation_config.json")
    with open(file, "w") as f:
        f.write(content)
    with pytest.raises(MicrogptError) as excinfo:
        load_hf_directory(path)
    one_line(excinfo, file, words)


def test_the_run_loader_reads_a_hugging_face_directory_too(saved, tmp_path):
    """checkpoint.load_model (what `microgpt generate` calls) takes an HF directory, sharded
    too; it needs the tokenizer a run directory always has."""
    from microgpt.train import checkpoint as ckpt
    path = saved("qwen2", "sharded")
    assert ckpt.resolve(path) == path and ckpt.is_hf_directory(path)
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        with pytest.raises(CheckpointError) as excinfo:
            ckpt.load_model(path)
        one_line(excinfo, path, "tokenizer.json")
    from microgpt.tokenizer import Tokenizer
    model = GPT(GPTConfig(vocab_size=257, block_size=16, n_layer=1, n_head=2, n_embd=16))
    run = ckpt.save(str(tmp_path), ckpt.Checkpoint(1, model.config.to_dict(), model.state_dict(),
                                                   Tokenizer.bytes_level(special_tokens=("<|endoftext|>",))))
    assert not ckpt.is_hf_directory(run)               # ours: COMPLETE and the "microgpt" key


# --- with the tokenizer (microgpt/tokenizer/hf.py) -----------------------------------------------------

def test_an_export_with_its_tokenizer_is_a_whole_model_directory(tmp_path, capsys):
    """Model, tokenizer and sampling defaults: AutoTokenizer encodes as ours does, and
    `microgpt generate` runs the directory as it runs a run directory."""
    pytest.importorskip("microgpt.tokenizer.hf")
    from microgpt.cli import main
    from microgpt.tokenizer import Tokenizer
    from microgpt.train import checkpoint as ckpt
    tok = Tokenizer.bytes_level(special_tokens=("<|endoftext|>",))
    model = GPT(GPTConfig(family="llama", vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2,
                          n_embd=16, qkv_bias=True), seed=1)
    out = export_hf(model, tok, str(tmp_path / "out"), generation={"temperature": 0.5, "top_k": 7})
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(out))
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "héllo  wörld\n<|endoftext|> 1234"
    assert hf_tok.encode(text, add_special_tokens=False) == tok.encode(text, allowed_special="all")
    loaded = load_hf_directory(out)
    assert loaded.tokenizer.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
    assert loaded.generation["temperature"] == 0.5 and loaded.generation["top_k"] == 7
    assert loaded.generation["eos_token_id"] == tok.eot_id
    ours, ours_tok, generation = ckpt.load_model(out)
    assert generation == loaded.generation and ours_tok.vocab_size == tok.vocab_size
    assert main(["generate", out, "--prompt", "ab", "--max-new-tokens", "4", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("ab")


def test_the_front_door_loads_a_hugging_face_directory(saved):
    """microgpt.from_pretrained is the documented entry point and gives the loader's model."""
    import microgpt
    ours, direct = microgpt.from_pretrained(saved("qwen3")), load_pretrained(saved("qwen3"))
    ids = np.arange(8)[None] % ours.config.vocab_size
    assert np.array_equal(ours(ids)[0].numpy(), direct(ids)[0].numpy())
