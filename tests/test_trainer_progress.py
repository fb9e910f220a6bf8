"""Progress: a redrawn bar on a terminal, plain lines every log_interval steps in a log file."""
import io
import re
import sys

import pytest

from microgpt.train.trainer import train
from train_helpers import tiny_config


class FakeStream(io.StringIO):
    def __init__(self, terminal):
        super().__init__()
        self.terminal = terminal

    def isatty(self):
        return self.terminal


def _train_with_stderr(tmp_path, monkeypatch, terminal):
    err = FakeStream(terminal)
    monkeypatch.setattr(sys, "stderr", err)
    messages = []
    train(tiny_config(tmp_path, max_steps=12, log_interval=4, eval_interval=100,
                      progress=True), log=messages.append)
    return err.getvalue(), messages


def test_terminal_gets_the_redrawn_bar(tmp_path, monkeypatch):
    err, messages = _train_with_stderr(tmp_path, monkeypatch, terminal=True)
    assert "\r" in err and "training" in err
    assert not any(re.match(r"step \d+/12:", m) for m in messages)


def test_log_file_gets_plain_lines_every_log_interval(tmp_path, monkeypatch):
    err, messages = _train_with_stderr(tmp_path, monkeypatch, terminal=False)
    assert "\r" not in err
    assert "\r" not in "".join(messages)
    lines = [m for m in messages if re.match(r"step \d+/12:", m)]
    assert [int(re.match(r"step (\d+)", m).group(1)) for m in lines] == [4, 8, 12]
    assert all(re.search(r"loss \d+\.\d{4}, lr \S+, [\d,]+ tokens/s, ETA \d+:\d\d", m)
               for m in lines), lines


@pytest.mark.parametrize("terminal", [True, False])
def test_no_progress_means_neither(tmp_path, monkeypatch, terminal):
    err = FakeStream(terminal)
    monkeypatch.setattr(sys, "stderr", err)
    messages = []
    train(tiny_config(tmp_path, max_steps=4, log_interval=2, progress=False),
          log=messages.append)
    assert err.getvalue() == ""
    assert not any(re.match(r"step \d+/4:", m) for m in messages)
