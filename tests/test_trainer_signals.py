"""SIGINT and SIGTERM stop `microgpt train` the same way: one line saying at which step and
which complete checkpoint to resume from, exit status 128 + the signal number."""
import re
import signal

import pytest

from microgpt.train import checkpoint as ckpt
from train_helpers import start_training_process, tiny_config, wait_for


def _signal_between_checkpoints(tmp_path, signum, site="step", step=6):
    config = tiny_config(tmp_path, f"run-{signum}-{site}", max_steps=1000, warmup_steps=2,
                         checkpoint_interval=4, eval_interval=1000, log_interval=1)
    process, flag = start_training_process(config, tmp_path, step, site, cli=True)
    wait_for(flag.exists, process)
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    return config, process.returncode, out, err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_with_one_line_naming_the_checkpoint(tmp_path, signum):
    config, code, out, err = _signal_between_checkpoints(tmp_path, signum)
    name = signal.Signals(signum).name
    assert code == 128 + signum, err
    assert "Traceback" not in err
    assert (out + err).count("interrupted") == 1, out + err
    line = next(line for line in err.splitlines() if "interrupted" in line)
    assert f"interrupted by {name} at step 6" in line
    newest = ckpt.latest(config.out_dir)
    assert newest.endswith("step_000004") and newest in line
    assert f"--resume {config.out_dir}" in line
    ckpt.verify(newest)                                   # intact: every checksum matches


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_a_checkpoint_save_keeps_the_previous_one(tmp_path, signum):
    config, code, out, err = _signal_between_checkpoints(tmp_path, signum, "checkpoint", 8)
    assert code == 128 + signum, err
    assert (out + err).count("interrupted") == 1, out + err
    newest = ckpt.latest(config.out_dir)
    assert newest.endswith("step_000004")
    assert re.search(rf"at step 8\b.*{re.escape(newest)}", err)
    ckpt.verify(newest)


def test_signal_before_the_first_checkpoint_says_there_is_nothing_to_resume(tmp_path):
    config, code, out, err = _signal_between_checkpoints(tmp_path, signal.SIGTERM, step=2)
    assert code == 128 + signal.SIGTERM
    assert "interrupted by SIGTERM at step 2; no checkpoint was written yet" in err
    assert ckpt.latest(config.out_dir) is None
