"""The end-of-run summary says what is known: no made-up zeros for figures never measured."""
import json
import os

import numpy as np
import pytest

from microgpt.cli import main
from microgpt.train.trainer import Trainer, resume, train
from train_helpers import quiet, tiny_config


def test_run_shorter_than_the_log_interval_reports_its_train_loss(tmp_path, capsys):
    config = tiny_config(tmp_path, max_steps=3, warmup_steps=1, log_interval=10)
    oracle = Trainer(tiny_config(tmp_path, "oracle", max_steps=3, warmup_steps=1,
                                 log_interval=10), log=quiet).setup()
    expected = float(np.mean([oracle.train_step()["loss"] for _ in range(3)]))
    summary = train(config, log=quiet)
    assert summary["train_loss"] == pytest.approx(expected, rel=1e-12)
    # the last, partial log window is a metrics line too, so the loss curve reaches the end
    with open(os.path.join(config.out_dir, "metrics.jsonl")) as f:
        lines = [r for r in map(json.loads, f) if "loss" in r]
    assert [r["step"] for r in lines] == [3] and lines[0]["loss"] == summary["train_loss"]


def test_cli_summary_of_a_short_run_has_no_zero_loss(tmp_path, capsys):
    config = tiny_config(tmp_path, max_steps=3, warmup_steps=1, log_interval=10)
    args = ["train", "--data", config.data, "--tokenizer", config.tokenizer, "--out-dir",
            config.out_dir, "--max-steps", "3", "--warmup-steps", "1", "--log-interval", "10",
            "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
            "--batch-size", "4", "--eval-batches", "1", "--num-samples", "0",
            "--progress", "false", "--val-fraction", "0.1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "3 steps" in out and "train loss" in out
    assert "0.0000" not in out


def test_resume_of_a_finished_run_says_no_steps_ran(tmp_path, capsys):
    config = tiny_config(tmp_path, max_steps=4, num_samples=1)
    first = train(config, log=quiet)
    samples_before = open(os.path.join(config.out_dir, "samples.txt")).read()
    summary = resume(config.out_dir, log=quiet)
    assert summary["steps_run"] == 0 and summary["tokens_per_s"] is None
    assert summary["train_loss"] == first["train_loss"]
    assert summary["val_loss"] == first["val_loss"]
    # nothing new was trained, so nothing new is sampled or appended
    assert summary["samples"] == []
    assert open(os.path.join(config.out_dir, "samples.txt")).read() == samples_before
    assert main(["train", "--resume", config.out_dir]) == 0
    out = capsys.readouterr().out
    assert "no steps run" in out and "already at max_steps (4)" in out
    assert "tokens/s" not in out
