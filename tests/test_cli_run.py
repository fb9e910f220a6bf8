"""`microgpt train` and `microgpt generate` on a tiny run: short runs warm up, generate's
output ends its line, prompts and sampling settings are checked before anything is printed,
and a corrupt file of the run is a one-line error naming it. A few real subprocesses check
what a terminal user sees."""
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from microgpt.cli import main
from microgpt.errors import ConfigError
from microgpt.inference.sampling import SamplingConfig
from microgpt.train import checkpoint as ckpt
from train_helpers import byte_tokenizer, tiny_corpus

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
        "--batch-size", "4", "--eval-interval", "3", "--eval-batches", "1",
        "--checkpoint-interval", "3", "--log-interval", "1", "--sample-tokens", "8",
        "--num-samples", "1", "--progress", "false", "--val-fraction", "0.1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 6-step run, trained with the demo's warmup left as it is (not set)."""
    tmp = tmp_path_factory.mktemp("run")
    run_dir = str(tmp / "run")
    argv = ["train", "--max-steps", "6", "--out-dir", run_dir, "--data", tiny_corpus(tmp),
            "--tokenizer", byte_tokenizer(tmp)] + TINY
    assert main(argv) == 0
    return run_dir


def test_a_short_run_scales_the_presets_warmup_instead_of_failing(run, capsys):
    state = ckpt.read_json(os.path.join(ckpt.latest(run), "trainer_state.json"))
    assert state["step"] == 6 and state["config"]["warmup_steps"] == 0        # 6 // 10
    capsys.readouterr()


def test_generate_ends_its_output_with_a_newline(run, capsys):
    assert main(["generate", run, "--prompt", "the ", "--max-new-tokens", "5",
                 "--temperature", "0"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("the ") and captured.out.endswith("\n")
    assert captured.err.strip().startswith("[") and "tokens" in captured.err


def test_a_prompt_longer_than_the_context_is_an_error_before_any_echo(run, capsys):
    prompt = "a prompt far longer than sixteen bytes of context"
    assert main(["generate", run, "--prompt", prompt, "--max-new-tokens", "3"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "context" in captured.err and len(captured.err.strip().splitlines()) == 1


def test_a_bad_stop_escape_is_a_one_line_error(run, capsys):
    assert main(["generate", run, "--stop", "\\x4", "--max-new-tokens", "3"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "--stop" in captured.err
    assert len(captured.err.strip().splitlines()) == 1


def rewrite_checkpoint_file(checkpoint, name, text):
    """Replace a file of a checkpoint and re-seal its COMPLETE marker, as another tool might."""
    path = os.path.join(checkpoint, name)
    with open(path, "w") as f:
        f.write(text)
    marker_path = os.path.join(checkpoint, ckpt.MARKER)
    marker = json.load(open(marker_path))
    data = open(path, "rb").read()
    marker["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    with open(marker_path, "w") as f:
        json.dump(marker, f)


def test_bad_sampling_settings_in_generation_config_name_the_file(run, tmp_path, capsys):
    copy = str(tmp_path / "run")
    shutil.copytree(run, copy)
    checkpoint = ckpt.latest(copy)
    for settings in ({"temperature": "hot"}, {"temperature": -1.0}, {"top_k": 2.5},
                     {"temperature": float("nan")}):
        rewrite_checkpoint_file(checkpoint, "generation_config.json", json.dumps(settings))
        assert main(["generate", copy, "--max-new-tokens", "2"]) == 2, settings
        captured = capsys.readouterr()
        assert captured.out == ""
        assert "generation_config.json" in captured.err, captured.err
        assert len(captured.err.strip().splitlines()) == 1
    # flags given on the command line take precedence over the file's values
    assert main(["generate", copy, "--max-new-tokens", "2", "--temperature", "0",
                 "--top-k", "0"]) == 0
    capsys.readouterr()


def test_resume_with_a_corrupt_meta_json_is_a_one_line_error(run, tmp_path, capsys):
    copy = str(tmp_path / "run")
    shutil.copytree(run, copy)
    meta = os.path.join(copy, "data", "meta.json")
    with open(meta, "w") as f:
        f.write('{"data_key": "abc", ')
    assert main(["train", "--resume", copy]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and meta in err[0] and "delete" in err[0], err


def test_sampling_config_rejects_non_finite_and_wrongly_typed_values():
    for bad in (dict(temperature=math.nan), dict(temperature=math.inf),
                dict(repetition_penalty=math.nan), dict(repetition_penalty=math.inf),
                dict(top_p=math.nan), dict(top_k=1.5), dict(temperature="0.8"),
                dict(top_k=True)):
        with pytest.raises(ConfigError):
            SamplingConfig(**bad)
    SamplingConfig(temperature=0, top_k=0, top_p=1, repetition_penalty=1)   # ints are fine


def cli(*argv, **kwargs):
    return subprocess.run([sys.executable, "-m", "microgpt", *argv], capture_output=True,
                          text=True, timeout=120, **kwargs)


def test_real_processes_show_one_line_errors_and_end_lines(run):
    done = cli("generate", run, "--temperature", "nan")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("usage: microgpt generate")
    assert "argument --temperature: must be a finite number" in done.stderr
    done = cli("generate", run, "--prompt", "x", "--max-new-tokens", "4", "--temperature", "0")
    assert done.returncode == 0 and done.stdout.startswith("x") and done.stdout.endswith("\n")
    done = cli("tokenizer", "train", os.path.join(run, "no-such-corpus"), "-o",
               os.path.join(run, "t.bpe"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "no such file" in done.stderr
