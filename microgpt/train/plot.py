"""The loss curve of a run as a PNG: `microgpt plot RUN_DIR` -> RUN_DIR/loss.png.

Reads RUN_DIR/metrics.jsonl (one JSON object per line, written by the trainer): lines with
"loss" are training-loss points (each the mean over log_interval steps), lines with
"val_loss" are evaluations. Both are drawn against the step, training on a light line,
validation as markers, with bits per byte on a second axis when present.

A line the curve cannot use (not a JSON object, a loss without an integer "step", a loss
that is no number) is a CheckpointError naming the file and the line; lines without a loss
(samples, skipped-update events) are passed over.

An alignment run (finetune reward|dpo|ppo|grpo) logs more than a loss per step; every series
of ALIGN_SERIES that its lines hold gets a panel of its own below the loss, against the same
step axis: the reward mean with a band of one standard deviation (reward_std), the KL to the
reference, the clip fraction, the value loss, the entropy, the response length, and DPO's and
the reward model's margin and pair accuracy. A value that is not a number there is skipped,
not an error: those series are diagnostics, the loss is what the curve must be able to trust.

A mixture-of-experts run (n_experts > 0) logs its router statistics the same way, and each
series of ROUTER_SERIES gets a panel: the expert load (the busiest and the idlest expert's
tokens over the mean, one line each: 1.0 is a perfectly even load), the load-balancing aux
loss and the router z-loss.

matplotlib is a run-time dependency (`microgpt train` ends by drawing the curve); where it is
missing anyway, plotting raises ConfigError saying how to install it. The figure is small
(6.4 x 3.6 in at 100 dpi) so the PNG stays a few tens of kB.
"""
import json
import math
import os

from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_write
from .checkpoint import metrics_path


# metric key -> panel label, in panel order (reward_std is drawn as reward_mean's band)
ALIGN_SERIES = {"reward_mean": "reward (mean +- std)", "kl": "KL to reference (nats)",
                "clip_fraction": "clip fraction", "value_loss": "value loss", "entropy": "entropy (nats)",
                "response_length": "response length (tokens)", "margin": "reward margin",
                "accuracy": "pair accuracy"}


# an MoE run's router statistics (trainer.router_summary), drawn like ALIGN_SERIES; the
# load panel draws expert_load_min beside expert_load_max
ROUTER_SERIES = {"expert_load_max": "expert load max, min (x even)", "router_aux_loss": "router aux loss",
                 "router_z_loss": "router z-loss"}
PANEL_SERIES = {**ALIGN_SERIES, **ROUTER_SERIES}


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)     # NaN included


def read_metrics(run_dir):
    """(train points [(step, loss)], val points [(step, val_loss, val_bpb)])."""
    path = metrics_path(run_dir)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no metrics; is {run_dir} a training run directory?")
    train, val = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise _bad_line(path, number, f"not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise _bad_line(path, number, "not a JSON object")
            if "loss" not in record and "val_loss" not in record:
                continue
            step = record.get("step")
            if "step" not in record:
                raise _bad_line(path, number, 'a loss without its "step"')
            if not isinstance(step, int) or isinstance(step, bool):
                raise _bad_line(path, number, f'"step" is {json.dumps(step)}, not an integer')
            for key in ("loss", "val_loss", "val_bpb"):
                optional = key == "val_bpb"                 # drawn only where it is a number
                if key in record and not (_is_number(record[key]) or (optional and record[key] is None)):
                    raise _bad_line(path, number, f'"{key}" is {json.dumps(record[key])}, not a number')
            if "loss" in record:
                train.append((step, record["loss"]))
            if "val_loss" in record:
                val.append((step, record["val_loss"], record.get("val_bpb")))
    if not train and not val:
        raise CheckpointError(f"{path}: no loss records yet")
    return train, val


def read_series(run_dir, keys=tuple(PANEL_SERIES) + ("reward_std", "expert_load_min")):
    """{key: [(step, value)]} of each key that some line holds as a finite number; keys no line
    holds are absent. Lines read_metrics would refuse are left to it."""
    series = {}
    with open(metrics_path(run_dir), encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                continue
            for key in keys:
                value = record.get(key)
                if _is_number(value) and math.isfinite(value):
                    series.setdefault(key, []).append((record["step"], value))
    return series


def _bad_line(path, number, problem):
    return CheckpointError(f"{path}:{number}: {problem}; delete or fix that line, then plot again")


def plot_run(run_dir, out=None, title=None):
    """Draw the run's loss curve to `out` (default RUN_DIR/loss.png); returns the path."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("plotting needs matplotlib, a dependency of microgpt that is not "
                          "installed here: pip install matplotlib") from None
    train, val = read_metrics(run_dir)
    series = read_series(run_dir)
    panels = [key for key in PANEL_SERIES if key in series]
    out = out or os.path.join(run_dir, "loss.png")
    if panels:                              # an alignment or MoE run: a column of panels
        fig, axes = plt.subplots(len(panels) + 1, 1, sharex=True, dpi=100,
                                 figsize=(6.4, 2.0 + 1.3 * len(panels)))
        ax = axes[0]
        _draw_series(axes[1:], panels, series)
    else:
        fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    if train:
        ax.plot([s for s, _ in train], [loss for _, loss in train], color="tab:blue", lw=1,
                label="train loss")
    if val:
        ax.plot([s for s, _, _ in val], [loss for _, loss, _ in val], "o-", color="tab:orange",
                ms=4, lw=1, label="val loss")
    (axes[-1] if panels else ax).set_xlabel("step")
    ax.set_ylabel("loss" if panels else "cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    bpb = [(s, b) for s, _, b in val if b is not None]
    if bpb:
        ax2 = ax.twinx()
        ax2.plot([s for s, _ in bpb], [b for _, b in bpb], "s:", color="tab:green", ms=3,
                 lw=1, label="val bits/byte")
        ax2.set_ylabel("val bits per byte")
        ax2.legend(loc="center right")
    ax.set_title(title or os.path.basename(os.path.abspath(run_dir)))
    fig.tight_layout()
    with atomic_write(out, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return out


def _draw_series(axes, panels, series):
    """One panel per series; the reward's band is mean +- std at the steps both have, the
    expert load's panel a line for the busiest expert and one for the idlest."""
    for ax, key in zip(axes, panels):
        steps, values = zip(*series[key])
        ax.plot(steps, values, color="tab:purple", lw=1)
        if key == "reward_mean" and "reward_std" in series:
            std = dict(series["reward_std"])
            both = [(s, v, std[s]) for s, v in series[key] if s in std]
            ax.fill_between([s for s, _, _ in both], [v - d for _, v, d in both],
                            [v + d for _, v, d in both], color="tab:purple", alpha=0.2, lw=0)
        if key == "expert_load_max" and "expert_load_min" in series:
            ax.plot(*zip(*series["expert_load_min"]), color="tab:brown", lw=1)
        ax.set_ylabel(PANEL_SERIES[key], fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
