"""`microgpt convert SRC DST`: a Hugging Face directory <-> our run format, both ways.

The oracles are the peers: the safetensors library reads the tensors of both ends of a
round trip (HF -> ours -> HF must give the same names, dtypes and bits), transformers loads
what we write (no missing, unexpected or mismatched keys) and computes the logits, and
AutoTokenizer encodes as our tokenizer does. The checkpoint written from an HF directory is
what `microgpt generate` runs, greedy tokens equal to those of the directory itself. Every
bad input is a one-line error before anything is written.
"""
import json
import os
import shutil

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
pytest.importorskip("microgpt.tokenizer.hf")

from microgpt.cli import main  # noqa: E402
from microgpt.train import checkpoint as ckpt  # noqa: E402
from model_dirs import SENTENCES, hf_directory, our_run  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")



@pytest.fixture(scope="module")
def good(tmp_path_factory):
    cache = {}
    builders = {
        "qwen3": lambda p: hf_directory(p, "qwen3"),
        "qwen3-tied": lambda p: hf_directory(p, "qwen3", tie_word_embeddings=True, attention_bias=True),
        "gpt2-sharded": lambda p: hf_directory(p, "gpt2", how="sharded"),
        "llama-bf16": lambda p: hf_directory(p, "llama", how="bfloat16",
                                             rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                              "rope_theta": 5000.0}),
        "qwen2-f16": lambda p: hf_directory(p, "qwen2", how="float16"),
        "qwen2-padded": lambda p: hf_directory(p, "qwen2", pad_rows=84),
        "ours-llama": lambda p: our_run(p, family="llama", n_kv_head=1),
        "ours-gpt2": lambda p: our_run(p, family="gpt2"),
    }

    def get(name):
        if name not in cache:
            cache[name] = builders[name](tmp_path_factory.mktemp(name) / "model")
        return cache[name]
    return get


def convert(src, dst, *flags, capsys=None):
    if capsys is not None:
        capsys.readouterr()
    return main(["convert", str(src), str(dst), *flags])


def file_tensors(path):
    """{name: (dtype, the stored bits)} of a directory's weights, read by the safetensors library."""
    from safetensors import safe_open
    files = ["model.safetensors"]
    if not os.path.exists(os.path.join(path, files[0])):
        with open(os.path.join(path, "model.safetensors.index.json")) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    out = {}
    for file in files:
        with safe_open(os.path.join(path, file), "pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                bits = t.view(torch.int16) if t.element_size() == 2 else t
                out[name] = (t.dtype, bits.numpy().copy())
    return out


def hf_logits(path, ids):
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


def random_ids(vocab=300, t=16, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, size=(2, t))


# --- HF -> ours -> HF --------------------------------------------------------------------------

@pytest.mark.parametrize("name, dtype", [("qwen3", None), ("qwen3-tied", None), ("gpt2-sharded", None),
                                         ("llama-bf16", "bfloat16"), ("qwen2-f16", "float16")])
def test_hf_to_ours_to_hf_gives_the_same_tensors_and_logits(good, name, dtype, tmp_path, capsys):
    source = good(name)
    ours, back = tmp_path / "ours", tmp_path / "back"
    assert convert(source, ours, capsys=capsys) == 0
    assert "model-only checkpoint" in capsys.readouterr().out
    assert ckpt.latest(str(ours)).endswith("step_000000")
    flags = ["--dtype", dtype] if dtype else []
    assert convert(ours, back, *flags) == 0
    theirs, again = file_tensors(source), file_tensors(str(back))
    assert sorted(again) == sorted(theirs)
    for key, (stored, bits) in theirs.items():
        assert again[key][0] == stored, key
        np.testing.assert_array_equal(again[key][1], bits, err_msg=key)
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(str(back), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    ids = random_ids()
    np.testing.assert_array_equal(hf_logits(str(back), ids), hf_logits(source, ids))
    with open(os.path.join(source, "config.json")) as f, open(back / "config.json") as g:
        assert json.load(f)["model_type"] == json.load(g)["model_type"]
    tok, tok_back = (transformers.AutoTokenizer.from_pretrained(p) for p in (source, str(back)))
    for text in SENTENCES + ["<|endoftext|>héllo  wörld\n\n 1234"]:
        assert tok_back.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)


def test_the_converted_checkpoint_generates_what_the_hf_directory_generates(good, tmp_path, capsys):
    source = good("qwen3")
    ours = tmp_path / "ours"
    assert convert(source, ours, capsys=capsys) == 0
    outputs = []
    for path in (source, str(ours)):
        capsys.readouterr()
        assert main(["generate", path, "--prompt", "the quick", "--max-new-tokens", "12",
                     "--temperature", "0"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].startswith("the quick")


def test_a_padded_embedding_converts_and_generates(good, tmp_path, capsys):
    """Qwen pads its embedding past the tokenizer's ids; our checkpoint keeps both as they are."""
    ours = tmp_path / "ours"
    assert convert(good("qwen2-padded"), ours, capsys=capsys) == 0
    model, tokenizer, _ = ckpt.load_model(str(ours))
    assert model.config.vocab_size == 384 and tokenizer.vocab_size == 300
    assert main(["generate", str(ours), "--prompt", "def", "--max-new-tokens", "4", "--temperature", "0"]) == 0


def test_the_converted_checkpoint_is_a_model_not_a_run_to_resume(good, tmp_path, capsys):
    ours = tmp_path / "ours"
    assert convert(good("qwen3"), ours, capsys=capsys) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(ours)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model only" in err


# --- ours -> HF ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ours-llama", "ours-gpt2"])
def test_our_run_exports_to_what_transformers_loads(good, name, tmp_path, capsys):
    run = good(name)
    out = tmp_path / "hf"
    assert convert(run, out, capsys=capsys) == 0
    assert "Hugging Face" in capsys.readouterr().out
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    model, tokenizer, _ = ckpt.load_model(run)
    ids = random_ids(vocab=tokenizer.vocab_size, t=12)
    ours = model.eval()(ids)[0].numpy()
    theirs = hf_logits(str(out), ids)
    assert np.abs(ours - theirs).max() / np.abs(theirs).max() < 1e-4
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    for text in SENTENCES:
        assert hf_tok.encode(text, add_special_tokens=False) == tokenizer.encode(text)


def test_a_run_directory_and_its_checkpoint_convert_alike(good, tmp_path, capsys):
    run = good("ours-llama")
    assert convert(run, tmp_path / "a", capsys=capsys) == 0
    assert convert(ckpt.latest(run), tmp_path / "b") == 0
    a, b = file_tensors(str(tmp_path / "a")), file_tensors(str(tmp_path / "b"))
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k][1], b[k][1]) for k in a)


@pytest.mark.parametrize("dtype, code", [("float16", torch.float16), ("bfloat16", torch.bfloat16)])
def test_dtype_sets_the_hf_weights(good, dtype, code, tmp_path):
    out = tmp_path / "hf"
    assert convert(good("ours-llama"), out, "--dtype", dtype) == 0
    assert {stored for stored, _ in file_tensors(str(out)).values()} == {code}
    with open(out / "config.json") as f:
        assert json.load(f)["dtype"] == dtype


# --- bad input: one line, nothing written -----------------------------------------------------------

def fails(capsys, *argv):
    capsys.readouterr()
    assert main(["convert", *map(str, argv)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_a_destination_that_is_not_empty_is_refused_before_loading(good, tmp_path, capsys):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "mine.txt").write_text("keep me")
    assert "already exists and is not empty" in fails(capsys, good("qwen3"), dst)
    assert os.listdir(dst) == ["mine.txt"]
    (tmp_path / "file").write_text("x")
    assert "not a directory" in fails(capsys, good("qwen3"), tmp_path / "file")


def test_a_source_that_is_no_model(tmp_path, capsys):
    assert "no such directory" in fails(capsys, tmp_path / "nowhere", tmp_path / "dst")
    (tmp_path / "empty").mkdir()
    assert "no complete checkpoint" in fails(capsys, tmp_path / "empty", tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


def test_dtype_belongs_to_the_hf_side(good, tmp_path, capsys):
    assert "drop --dtype" in fails(capsys, good("qwen3"), tmp_path / "dst", "--dtype", "bfloat16")
    assert not (tmp_path / "dst").exists()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["convert", good("qwen3"), str(tmp_path / "dst"), "--dtype", "int8"])
    assert "invalid choice: 'int8'" in capsys.readouterr().err


def test_an_hf_directory_without_its_tokenizer(good, tmp_path, capsys):
    source = tmp_path / "bare"
    source.mkdir()
    for name in ("config.json", "model.safetensors"):
        os.link(os.path.join(good("qwen3"), name), source / name)
    assert "tokenizer.json" in fails(capsys, source, tmp_path / "dst")
    assert sorted(os.listdir(tmp_path)) == ["bare"]


def test_a_run_no_hf_class_can_hold_is_refused_before_writing(tmp_path, capsys):
    run = our_run(tmp_path / "r", family="gpt2", bias="false")
    assert "GPT-2 model without biases" in fails(capsys, run, tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


def test_source_and_destination_the_same(good, tmp_path, capsys):
    run = good("ours-llama")
    assert "same directory" in fails(capsys, ckpt.latest(run), ckpt.latest(run))


def test_a_conversion_that_fails_midway_leaves_nothing(good, tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(ckpt, "save_tensors", broken)
    assert "disk full" in fails(capsys, good("qwen3"), tmp_path / "dst")
    assert os.listdir(tmp_path) == []


def test_generate_takes_every_sampling_default_from_generation_config(good, tmp_path, capsys):
    """An HF directory's sampling defaults reach `microgpt generate`, top_p included, and
    survive a conversion to our checkpoint; a flag still wins."""
    from microgpt.cli import _sampling, build_parser
    source = tmp_path / "hf"
    shutil.copytree(good("qwen3"), source)
    with open(source / "generation_config.json", "w") as f:
        json.dump({"do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.95,
                   "repetition_penalty": 1.1, "bos_token_id": 0, "eos_token_id": 0}, f)
    ours = tmp_path / "ours"
    assert convert(source, ours, capsys=capsys) == 0
    for path in (str(source), ckpt.latest(str(ours))):
        args = build_parser().parse_args(["generate", path])
        sampling = _sampling(args, path, ckpt.load_model(path)[2])
        assert (sampling.temperature, sampling.top_k, sampling.top_p, sampling.repetition_penalty) == \
            (0.6, 20, 0.95, 1.1), path
        args = build_parser().parse_args(["generate", path, "--top-p", "0.5"])
        assert _sampling(args, path, ckpt.load_model(path)[2]).top_p == 0.5
