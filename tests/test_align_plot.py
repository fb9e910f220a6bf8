"""`microgpt plot` on an alignment run: every logged series of train/plot.py's ALIGN_SERIES gets
a panel (reward mean/std, KL, clip fraction, value loss, entropy, response length, margin,
accuracy), a plain training run keeps its single loss panel."""
import json
import struct

import pytest

from microgpt.cli import main
from microgpt.train.plot import ALIGN_SERIES, read_series


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])          # IHDR: width, height


def write_metrics(run_dir, records):
    with open(run_dir / "metrics.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


PPO_KEYS = ("reward_mean", "kl", "clip_fraction", "value_loss", "entropy", "response_length")


def ppo_records(n=5):
    return [{"step": s, "loss": 0.1 / s, "policy_loss": -0.01, "reward_mean": 0.2 * s, "reward_std": 0.1,
             "kl": 0.01 * s, "kl_coef": 0.05, "clip_fraction": 0.0, "value_loss": 0.5 - 0.05 * s,
             "entropy": float("nan") if s == 2 else 1.0, "response_length": 3.0} for s in range(1, n + 1)]


def test_read_series_takes_every_finite_point(tmp_path):
    write_metrics(tmp_path, ppo_records())
    series = read_series(str(tmp_path))
    assert set(series) == set(PPO_KEYS) | {"reward_std"}
    assert series["reward_mean"] == [(s, pytest.approx(0.2 * s)) for s in range(1, 6)]
    assert [s for s, _ in series["entropy"]] == [1, 3, 4, 5]          # the NaN point is skipped


@pytest.mark.parametrize("records, panels", [
    (ppo_records(), len(PPO_KEYS)),
    ([{"step": s, "loss": 0.7, "reward_chosen": 0.1, "reward_rejected": -0.1, "margin": 0.2, "accuracy": 0.5}
      for s in (1, 2, 3)], 2),                                       # DPO: margin, accuracy
    ([{"step": s, "loss": 2.0 / s} for s in (1, 2, 3)], 0),          # plain training: the loss only
])
def test_plot_draws_a_panel_per_logged_series(tmp_path, capsys, records, panels):
    write_metrics(tmp_path, records)
    out = tmp_path / "curve.png"
    assert main(["plot", str(tmp_path), "--out", str(out)]) == 0
    width, height = png_size(out)
    expected = 3.6 if panels == 0 else 2.0 + 1.3 * panels           # inches at 100 dpi (plot.py)
    assert width == 640 and abs(height - 100 * expected) <= 1
    assert set(ALIGN_SERIES) >= set(PPO_KEYS)
