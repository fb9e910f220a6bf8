"""Checkpoints: the model directory's files and names, atomic saves, pruning, corruption."""
import json
import os
import re

import numpy as np
import pytest

from microgpt.errors import CheckpointError
from microgpt.nn import GPT, GPTConfig
from microgpt.train import checkpoint as ckpt
from microgpt.train.trainer import Trainer, resume, train
from train_helpers import quiet, tiny_config


@pytest.fixture
def run(tmp_path):
    config = tiny_config(tmp_path, max_steps=12, checkpoint_interval=4, keep_checkpoints=2)
    train(config, log=quiet)
    return config


def test_directory_holds_the_expected_files_and_no_pickle(run):
    path = ckpt.latest(run.out_dir)
    assert os.path.basename(path) == "step_000012"
    assert sorted(os.listdir(path)) == sorted(["COMPLETE", "config.json", "model.safetensors",
                                               ckpt.TOKENIZER_FILE, "generation_config.json",
                                               "optimizer.safetensors", "trainer_state.json"])
    config = json.load(open(os.path.join(path, "config.json")))
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert (config["n_layer"], config["n_embd"], config["n_positions"]) == (1, 16, 16)
    tensors = ckpt.load_tensors(os.path.join(path, "model.safetensors"))
    assert "transformer.h.0.attn.c_attn.weight" in tensors and "transformer.wte.weight" in tensors
    assert tensors["transformer.h.0.attn.c_attn.weight"].shape == (16, 48)   # Conv1D (in, out)
    state = json.load(open(os.path.join(path, "trainer_state.json")))
    assert state["step"] == 12 and state["loaders"]["train"]["position"] == 12 * 4
    for name in os.listdir(path):
        with open(os.path.join(path, name), "rb") as f:
            assert not f.read(2).startswith(b"\x80")                 # no pickle protocol header
    gen = json.load(open(os.path.join(path, "generation_config.json")))
    assert gen["eos_token_id"] == 256


def test_keeps_the_last_n(run):
    steps = [s for s, _ in ckpt.list_complete(run.out_dir)]
    assert steps == [8, 12]


def test_interrupted_save_leaves_previous_checkpoint_and_resume_ignores_it(run, monkeypatch):
    trainer = Trainer(run, log=quiet).setup()
    trainer.load_checkpoint(ckpt.latest(run.out_dir))
    trainer.train_step()
    real = ckpt.write_json

    def crash_at_marker(path, obj):
        if os.path.basename(path) == ckpt.MARKER:
            raise KeyboardInterrupt("killed")                       # after rename, before marker
        real(path, obj)
    monkeypatch.setattr(ckpt, "write_json", crash_at_marker)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint(0.0)
    monkeypatch.setattr(ckpt, "write_json", real)
    assert os.path.isdir(os.path.join(ckpt.checkpoints_dir(run.out_dir), "step_000013"))
    assert os.path.basename(ckpt.latest(run.out_dir)) == "step_000012"
    with pytest.raises(CheckpointError, match="incomplete"):
        ckpt.verify(os.path.join(ckpt.checkpoints_dir(run.out_dir), "step_000013"))
    # a temp dir from a save killed before its rename is ignored too, and cleaned by the next
    os.makedirs(os.path.join(ckpt.checkpoints_dir(run.out_dir), ".tmp-step_000099-1"))
    assert os.path.basename(ckpt.resolve(run.out_dir)) == "step_000012"
    trainer.save_checkpoint(0.0)                                      # re-save the same step
    assert os.path.basename(ckpt.latest(run.out_dir)) == "step_000013"
    assert not any(n.startswith(".tmp") for n in os.listdir(ckpt.checkpoints_dir(run.out_dir)))


def test_corrupt_files_are_a_clear_error(run):
    path = ckpt.latest(run.out_dir)
    weights = os.path.join(path, "model.safetensors")
    data = bytearray(open(weights, "rb").read())
    data[-5] ^= 0xFF
    open(weights, "wb").write(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        ckpt.load_model(run.out_dir)
    with pytest.raises(CheckpointError, match="corrupt"):
        resume(run.out_dir, log=quiet)
    os.remove(weights)
    with pytest.raises(CheckpointError, match="missing"):
        ckpt.verify(path)


def test_unreadable_file_even_with_matching_checksum(tmp_path):
    path = str(tmp_path / "bad.safetensors")
    open(path, "wb").write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(CheckpointError, match="cannot read safetensors"):
        ckpt.load_tensors(path)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        ckpt.resolve(str(tmp_path))


def test_mismatched_checkpoint_is_rejected(run, tmp_path):
    other = Trainer(tiny_config(tmp_path, "other", n_embd=32), log=quiet).setup()
    with pytest.raises(CheckpointError, match="does not match"):
        other.load_checkpoint(ckpt.latest(run.out_dir))
    model = GPT(GPTConfig(vocab_size=257, block_size=16, n_layer=2, n_head=2, n_embd=16))
    tensors = ckpt.load(ckpt.latest(run.out_dir)).weights
    with pytest.raises(CheckpointError, match="missing"):
        model.load_state_dict(tensors)


def test_load_model_round_trip(run):
    model, tokenizer, generation = ckpt.load_model(run.out_dir)
    tensors = ckpt.load(ckpt.latest(run.out_dir)).weights
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(p.numpy(), tensors[name])
    assert tokenizer.eot_id == generation["eos_token_id"]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_transformers_loads_the_directory_and_agrees(tmp_path, family):
    """The strongest check of the names and layouts: Hugging Face reads our files."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    config = tiny_config(tmp_path, family, family=family, max_steps=4, n_kv_head=1 if family ==
                         "llama" else 0)
    train(config, log=quiet)
    path = ckpt.latest(config.out_dir)
    cls = transformers.GPT2LMHeadModel if family == "gpt2" else transformers.LlamaForCausalLM
    hf = cls.from_pretrained(path).eval()
    ours, _, _ = ckpt.load_model(path)
    ids = np.random.default_rng(0).integers(0, 257, size=(2, 12))
    expected = ours.eval()(ids)[0].numpy()
    with torch.no_grad():
        got = hf(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


# --- the run-directory format is checkpoint.py's: one save, one load ---------------------------

def _tiny_checkpoint(step=7, training=True):
    from microgpt.tokenizer import Tokenizer
    from microgpt.train.optim import AdamW
    model = GPT(GPTConfig(vocab_size=257, block_size=16, n_layer=1, n_head=2, n_embd=16),
                seed=3)
    optimizer = AdamW(model.named_parameters())
    rng = np.random.default_rng(0)
    moments = {k: rng.standard_normal(v.shape).astype(v.dtype)
               for k, v in optimizer.state_tensors().items()}
    return ckpt.Checkpoint(step, model.config.to_dict(), model.state_dict(),
                           Tokenizer.bytes_level(special_tokens=("<|endoftext|>",)),
                           {"temperature": 0.5, "top_k": 3, "max_new_tokens": 9},
                           {"step": step, "anything": [1, 2.5, "x"]} if training else None,
                           moments if training else None)


def test_save_then_load_returns_what_was_saved(tmp_path):
    saved = _tiny_checkpoint()
    path = ckpt.save(str(tmp_path), saved, keep=2)
    assert path == ckpt.latest(str(tmp_path)) and path.endswith("step_000007")
    loaded = ckpt.load(path)
    assert loaded.step == 7 and loaded.gpt == saved.gpt
    assert loaded.weights.keys() == saved.weights.keys()
    for name, array in saved.weights.items():
        np.testing.assert_array_equal(loaded.weights[name], array, err_msg=name)
    for name, array in saved.optimizer.items():
        np.testing.assert_array_equal(loaded.optimizer[name], array, err_msg=name)
    assert loaded.trainer_state["anything"] == [1, 2.5, "x"]
    assert loaded.trainer_state["format"] == "microgpt-trainer-state"
    assert loaded.generation == {"bos_token_id": 256, "eos_token_id": 256, "do_sample": True,
                                 "temperature": 0.5, "top_k": 3, "max_new_tokens": 9}
    assert loaded.tokenizer.vocab_size == 257


def test_a_model_only_checkpoint_loads_for_inference_but_cannot_resume(tmp_path):
    path = ckpt.save(str(tmp_path), _tiny_checkpoint(training=False))
    assert ckpt.load(path, training_state=False).trainer_state is None
    model, tokenizer, generation = ckpt.load_model(str(tmp_path))
    assert generation["top_k"] == 3
    with pytest.raises(CheckpointError, match="cannot be resumed"):
        ckpt.load(path)
    with pytest.raises(CheckpointError, match="cannot be resumed"):
        resume(str(tmp_path), log=quiet)


def _documented_layout():
    """(run-directory entries, checkpoint files) named in checkpoint.py's header."""
    doc = ckpt.__doc__
    block = doc[doc.index("    RUN_DIR/\n"):doc.index("\nNo pickle")]
    top = re.findall(r"^        (\S+?)/?\s", block, re.M)
    files = re.findall(r"^                (\S+)\s", block, re.M)
    return top, files


def test_the_header_documents_the_run_directory_as_it_is(run):
    top, files = _documented_layout()
    assert sorted(files) == sorted(os.listdir(ckpt.latest(run.out_dir)))
    actual = set(os.listdir(run.out_dir))
    assert actual <= set(top)
    assert set(top) - actual <= {"loss.png", "samples.txt"}     # plot and samples are optional
    assert sorted(ckpt.MODEL_FILES + ckpt.TRAINING_FILES + (ckpt.MARKER,)) == sorted(files)


def test_the_trainer_names_no_checkpoint_file():
    """checkpoint.py owns the format: the trainer hands it a Checkpoint, never file names."""
    import inspect

    from microgpt.train import trainer
    source = inspect.getsource(trainer)
    for name in ckpt.MODEL_FILES + ckpt.TRAINING_FILES + (ckpt.METRICS_FILE, ckpt.SAMPLES_FILE):
        assert f'"{name}"' not in source, name


# --- files that are valid JSON but not what they should hold ---------------------------------------
# Each is a one-line CheckpointError naming the file and what to do, never an AttributeError,
# KeyError or TypeError from deep inside (as a hand-edited or damaged file used to give).

def _one_line_error(excinfo, path, advice):
    message = str(excinfo.value)
    assert "\n" not in message and path in message and advice.lower() in message.lower(), message
    return message


def _rewrite(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


@pytest.mark.parametrize("marker", ["[1, 2]", '"done"', "7", "null"])
def test_a_marker_that_is_not_a_json_object(tmp_path, marker):
    path = ckpt.save(str(tmp_path), _tiny_checkpoint())
    _rewrite(os.path.join(path, ckpt.MARKER), marker)
    with pytest.raises(CheckpointError) as excinfo:
        ckpt.verify(path)
    _one_line_error(excinfo, os.path.join(path, ckpt.MARKER), f"delete {path}")
    with pytest.raises(CheckpointError, match="not a JSON object"):
        ckpt.load_model(str(tmp_path))


@pytest.mark.parametrize("files", [
    {"model.safetensors": {"sha256": "0" * 64}},        # no bytes
    {"model.safetensors": {"bytes": 10}},               # no sha256
    {"model.safetensors": {"bytes": "10", "sha256": "0" * 64}},
    {"model.safetensors": {"bytes": 10, "sha256": None}},
    {"model.safetensors": "abc"},
    ["model.safetensors"],
])
def test_a_marker_whose_file_list_is_malformed(tmp_path, files):
    path = ckpt.save(str(tmp_path), _tiny_checkpoint())
    marker_path = os.path.join(path, ckpt.MARKER)
    marker = json.load(open(marker_path))
    marker["files"] = files
    _rewrite(marker_path, json.dumps(marker))
    with pytest.raises(CheckpointError) as excinfo:
        ckpt.verify(path)
    _one_line_error(excinfo, marker_path, f"delete {path}")


def test_a_marker_whose_step_is_not_an_integer(tmp_path):
    path = ckpt.save(str(tmp_path), _tiny_checkpoint())
    marker_path = os.path.join(path, ckpt.MARKER)
    marker = json.load(open(marker_path))
    marker["step"] = "seven"
    _rewrite(marker_path, json.dumps(marker))
    with pytest.raises(CheckpointError) as excinfo:
        ckpt.verify(path)
    _one_line_error(excinfo, marker_path, f"delete {path}")


@pytest.mark.parametrize("text", ["[]", "3.5", '"text"', "null"])
def test_read_json_returns_an_object_or_says_which_file_is_not_one(tmp_path, text):
    path = str(tmp_path / "step_000001" / "generation_config.json")
    os.makedirs(os.path.dirname(path))
    _rewrite(path, text)
    with pytest.raises(CheckpointError) as excinfo:
        ckpt.read_json(path)
    _one_line_error(excinfo, path, "not a JSON object")


def test_read_json_of_bytes_that_are_not_utf8(tmp_path):
    path = str(tmp_path / "config.json")
    open(path, "wb").write(b'{"a": "\xff"}')
    with pytest.raises(CheckpointError) as excinfo:
        ckpt.read_json(path)
    _one_line_error(excinfo, path, "not valid JSON")


@pytest.mark.parametrize("line", ["[1, 2]", "17", '"x"', '{"step": "5", "loss": 1.0}',
                                  '{"step": null, "loss": 1.0}', '{"step": true}'])
def test_cut_metrics_names_a_line_that_is_not_a_record(tmp_path, line):
    path = ckpt.metrics_path(str(tmp_path))
    _rewrite(path, '{"step": 1, "loss": 2.0}\n' + line + '\n{"step": 3, "loss": 1.0}\n')
    with pytest.raises(CheckpointError) as excinfo:
        ckpt.cut_metrics(str(tmp_path), 2)
    _one_line_error(excinfo, f"{path}:2", "delete or fix that line")


def test_cut_metrics_keeps_records_up_to_the_step_and_lines_without_a_step(tmp_path):
    path = ckpt.metrics_path(str(tmp_path))
    _rewrite(path, '{"step": 1, "loss": 2.0}\n{"note": "x"}\n{"step": 3, "loss": 1.0}\n{"step": 2')
    ckpt.cut_metrics(str(tmp_path), 2)
    assert open(path).read() == '{"step": 1, "loss": 2.0}\n{"note": "x"}\n'


@pytest.mark.parametrize("line", ['{"loss": 1.0}', '{"val_loss": 1.0, "val_bpb": 0.5}', "[1, 2]", "3",
                                  '{"step": "4", "loss": 1.0}', '{"step": 4, "loss": "low"}',
                                  '{"step": 4, "val_loss": 1.0, "val_bpb": []}'])
def test_read_metrics_names_a_line_it_cannot_plot(tmp_path, line):
    from microgpt.train.plot import read_metrics
    path = ckpt.metrics_path(str(tmp_path))
    _rewrite(path, '{"step": 1, "loss": 2.0}\n' + line + "\n")
    with pytest.raises(CheckpointError) as excinfo:
        read_metrics(str(tmp_path))
    _one_line_error(excinfo, f"{path}:2", "delete or fix that line")


def test_read_metrics_reads_what_the_trainer_writes(tmp_path):
    from microgpt.train.plot import read_metrics
    path = ckpt.metrics_path(str(tmp_path))
    _rewrite(path, '{"step": 1, "loss": 2.0, "lr": 0.1}\n{"event": "skipped_update", "reason": "nan"}\n'
                   '{"step": 2, "loss": NaN}\n{"step": 2, "val_loss": 1.5, "val_bpb": 0.9}\n'
                   '{"step": 3, "val_loss": 1.2}\n{"step": 3, "sample": "text"}\n')
    train_points, val_points = read_metrics(str(tmp_path))
    assert train_points[0] == (1, 2.0) and train_points[1][0] == 2 and np.isnan(train_points[1][1])
    assert val_points == [(2, 1.5, 0.9), (3, 1.2, None)]


def test_the_cli_prints_a_bad_metrics_line_as_one_line(tmp_path, capsys):
    from microgpt.cli import main
    _rewrite(ckpt.metrics_path(str(tmp_path)), '{"loss": 1.0}\n')
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metrics.jsonl:1" in err and "Traceback" not in err


def test_matplotlib_is_a_run_time_dependency():
    """`microgpt train` ends by drawing its loss curve (train/plot.py), so setup.py must not
    leave matplotlib to an optional extra."""
    import ast
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tree = ast.parse(open(os.path.join(root, "setup.py")).read())
    call = next(node for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup")
    requires = next(k.value for k in call.keywords if k.arg == "install_requires")
    names = [ast.literal_eval(e).split(">")[0].split("=")[0] for e in requires.elts]
    assert "matplotlib" in names
