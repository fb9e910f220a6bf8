"""`microgpt train --init-from PATH`: continue pre-training from a loaded model.

The model is the checkpoint's (a Hugging Face directory transformers saved, or one of our
runs): its architecture, its weights, its tokenizer for the data; the run starts at step 0
with a fresh optimizer. The oracle for "it starts where the model is" is transformers: the
first logged loss (log_interval 1: the loss of step 1's batch, before any update) equals
transformers' cross-entropy of the loaded model on that very batch. The trained model
keeps its architecture (Qwen3's qk_norm and head_dim too), resumes bit for bit without
the source, and converts back to its Hugging Face type. Settings that contradict the
model are a one-line error naming them.
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
from microgpt.errors import ConfigError  # noqa: E402
from microgpt.train import checkpoint as ckpt  # noqa: E402
from microgpt.train.config import make_config  # noqa: E402
from microgpt.train.trainer import resume, train  # noqa: E402
from model_dirs import SENTENCES, hf_directory, our_run  # noqa: E402
from train_helpers import losses, quiet, tiny_corpus  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RUN = dict(batch_size=4, block_size=16, max_steps=3, lr=1e-3, min_lr=1e-4, warmup_steps=0,
           log_interval=1, eval_interval=3, eval_batches=1, checkpoint_interval=3, num_samples=0,
           progress=False, val_fraction=0.1)



@pytest.fixture(scope="module")
def source(tmp_path_factory):
    cache = {}
    builders = {
        "qwen3": lambda p: hf_directory(p, "qwen3"),
        "gpt2": lambda p: hf_directory(p, "gpt2", how="sharded"),
        "qwen2-padded": lambda p: hf_directory(p, "qwen2", pad_rows=84),
        "ours": lambda p: our_run(p, family="llama"),
    }

    def get(name):
        if name not in cache:
            cache[name] = builders[name](tmp_path_factory.mktemp(name) / "model")
        return cache[name]
    return get


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny_corpus(tmp_path_factory.mktemp("corpus"), documents=60)


def config(init_from, out_dir, corpus, **overrides):
    return make_config("demo", None, dict(RUN, init_from=str(init_from), data=corpus,
                                          out_dir=str(out_dir), **overrides))


def hf_directory_of(path, tmp_path):
    """The Hugging Face directory of `path` (ours converted: transformers is the oracle)."""
    if os.path.isfile(os.path.join(path, "config.json")) and not ckpt.list_complete(path):
        return path
    out = tmp_path / "as-hf"
    assert main(["convert", path, str(out)]) == 0
    return str(out)


def transformers_loss(hf_dir, x, y):
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor(x)).logits
        return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                       torch.tensor(y).reshape(-1)))


def first_batch(run_dir, c, vocab_size):
    from microgpt.data.loader import DataLoader
    loader = DataLoader(os.path.join(run_dir, "data"), "train", c.batch_size, c.block_size, c.seed,
                        shuffle=True, vocab_size=vocab_size)
    return loader.next_batch()


@pytest.mark.parametrize("name", ["qwen3", "gpt2", "qwen2-padded", "ours"])
def test_the_first_logged_loss_is_the_loaded_models_loss_on_that_batch(source, name, corpus, tmp_path):
    path = source(name)
    c = config(path, tmp_path / "run", corpus)
    summary = train(c, log=quiet)
    assert summary["steps"] == 3
    tokenizer = ckpt.load_model(path)[1]
    x, y = first_batch(summary["run_dir"], c, tokenizer.vocab_size)
    expected = transformers_loss(hf_directory_of(path, tmp_path), x, y)
    first = losses(summary["run_dir"])[0]
    assert first[0] == 1 and abs(first[1] - expected) <= 1e-5 * expected, (first, expected)
    from microgpt.nn import GPT                                   # the loss a random init gives
    _, fresh = GPT(ckpt.load_model(path)[0].config, seed=c.seed)(x, y)
    assert abs(expected - fresh.item()) > 100 * 1e-5 * expected


def test_the_run_is_fresh_and_the_model_and_tokenizer_are_the_checkpoints(source, corpus, tmp_path):
    path = source("qwen3")
    c = config(path, tmp_path / "run", corpus)
    assert (c.family, c.n_layer, c.n_head, c.n_kv_head, c.n_embd, c.bias, c.tie_embeddings) == \
        ("llama", 2, 4, 2, 32, False, False)
    train(c, log=quiet)
    step = ckpt.latest(c.out_dir)
    state = ckpt.read_json(os.path.join(step, "trainer_state.json"))
    assert state["step"] == 3 and state["optimizer_t"] == 3 and state["config"]["init_from"] == path
    source_model, source_tokenizer, _ = ckpt.load_model(path)
    model, tokenizer, _ = ckpt.load_model(step)
    expected = dict(source_model.config.to_dict(), dropout=0.0)
    assert model.config.to_dict() == expected and model.config.qk_norm and model.config.head_dim == 16
    with open(os.path.join(c.out_dir, "data", "meta.json")) as f:
        assert json.load(f)["vocab_size"] == 300
    for text in SENTENCES:
        assert tokenizer.encode(text) == source_tokenizer.encode(text)
    changed = [k for k, v in model.state_dict().items() if not np.array_equal(v, source_model.state_dict()[k])]
    assert changed                                                 # it trained


def test_the_trained_model_converts_back_to_its_hugging_face_type(source, corpus, tmp_path):
    c = config(source("qwen3"), tmp_path / "run", corpus)
    train(c, log=quiet)
    out = tmp_path / "back"
    assert main(["convert", c.out_dir, str(out)]) == 0
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(str(out), output_loading_info=True)
    assert hf.config.model_type == "qwen3" and not info["missing_keys"] and not info["unexpected_keys"]
    model = ckpt.load_model(c.out_dir)[0].eval()
    ids = np.random.default_rng(0).integers(0, 300, size=(2, 16))
    with torch.no_grad():
        theirs = hf.eval()(torch.tensor(ids)).logits.numpy()
    assert np.abs(model(ids)[0].numpy() - theirs).max() / np.abs(theirs).max() < 1e-4


def test_a_run_from_a_model_resumes_bit_for_bit_without_its_source(source, corpus, tmp_path):
    copy = shutil.copytree(source("qwen3"), tmp_path / "source")
    overrides = dict(max_steps=4, checkpoint_interval=2, eval_interval=2, dropout=0.1)
    straight = train(config(copy, tmp_path / "straight", corpus, **overrides), log=quiet)
    halves = config(copy, tmp_path / "halves", corpus, **overrides)
    train(halves, log=quiet, stop_at_step=2)
    shutil.rmtree(copy)                                            # resume never reads it again
    resumed = resume(halves.out_dir, log=quiet)
    assert resumed["steps"] == 4
    assert losses(halves.out_dir) == losses(straight["run_dir"])
    a = ckpt.load(ckpt.latest(halves.out_dir)).weights
    b = ckpt.load(ckpt.latest(straight["run_dir"])).weights
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_the_window_is_capped_at_the_models_context(source, corpus, tmp_path):
    path = source("qwen3")                                         # context 64
    assert make_config("demo", None, {"init_from": path}).block_size == 64       # the demo's 256, capped
    assert make_config("demo", None, {"init_from": path, "block_size": 32}).block_size == 32
    with pytest.raises(ConfigError, match="longer than the context of the --init-from model"):
        make_config("demo", None, {"init_from": path, "block_size": 65})


def fails(capsys, *argv):
    capsys.readouterr()
    assert main(["train", *map(str, argv)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_settings_that_contradict_the_model_are_named(source, corpus, tmp_path, capsys):
    path = source("qwen3")
    err = fails(capsys, "--init-from", path, "--n-layer", "5", "--family", "gpt2", "--n-kv-head", "4",
                "--vocab-size", "512", "--data", corpus, "--out-dir", tmp_path / "run")
    for words in ("n_layer=5 (the model has 2)", "family='gpt2' (the model has 'llama')",
                  "n_kv_head=4 (the model has 2)", "vocab_size=512 (the model's own tokenizer"):
        assert words in err
    assert "--tokenizer" not in err and not (tmp_path / "run").exists()
    toml = tmp_path / "c.toml"
    toml.write_text("[model]\nn_embd = 64\n")
    assert "n_embd=64 (the model has 32)" in fails(capsys, "--init-from", path, "--config", toml)
    agree = make_config("demo", None, {"init_from": path, "n_layer": 2, "family": "llama", "n_kv_head": 2})
    assert agree.n_layer == 2


def test_a_tokenizer_flag_is_refused(source, tmp_path, capsys):
    from train_helpers import byte_tokenizer
    err = fails(capsys, "--init-from", source("qwen3"), "--tokenizer", byte_tokenizer(tmp_path))
    assert "tokenizer=" in err and "the model's own tokenizer is used" in err


def test_a_source_that_cannot_be_read(source, tmp_path, capsys):
    assert "no such directory" in fails(capsys, "--init-from", tmp_path / "nowhere")
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        os.link(os.path.join(source("qwen3"), name), bare / name)
    assert "tokenizer.json" in fails(capsys, "--init-from", bare, "--out-dir", tmp_path / "run")


def test_prepared_data_of_another_tokenizer_is_refused(source, corpus, tmp_path, capsys):
    prepared = tmp_path / "prepared"
    capsys.readouterr()
    assert main(["data", "prepare", corpus, "-o", str(prepared), "--vocab-size", "300",
                 "--no-progress"]) == 0
    err = fails(capsys, "--init-from", source("qwen3"), "--data-dir", prepared, "--out-dir", tmp_path / "run",
                "--max-steps", "2")
    assert "prepared with another tokenizer" in err


def test_resume_refuses_another_init_from(source, corpus, tmp_path, capsys):
    c = config(source("qwen3"), tmp_path / "run", corpus, max_steps=2, checkpoint_interval=2)
    train(c, log=quiet)
    err = fails(capsys, "--resume", c.out_dir, "--init-from", source("gpt2"))
    assert "cannot resume with changed init_from" in err
