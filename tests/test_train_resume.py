"""Training end to end on a tiny model: bit-exact resume, NaN/inf skipping, evaluation."""
import json
import math
import os

import numpy as np
import pytest

from microgpt import ops
from microgpt.errors import ConfigError
from microgpt.train import checkpoint as ckpt
from microgpt.train.trainer import Trainer, TrainingError, resume, train
from train_helpers import losses, quiet, tiny_config


def _weights(run_dir):
    return ckpt.load(ckpt.latest(run_dir)).weights


@pytest.mark.parametrize("extra", [{}, {"dropout": 0.1, "grad_accum": 2, "family": "llama",
                                        "n_kv_head": 1}])
def test_resume_after_kill_is_bit_for_bit(tmp_path, extra):
    straight = tiny_config(tmp_path, "straight", **extra)
    train(straight, log=quiet)
    killed = tiny_config(tmp_path, "killed", **extra)
    first = train(killed, log=quiet, stop_at_step=4)               # "killed" right after step 4
    assert first["steps"] == 4 and not first["finished"]
    resume(killed.out_dir, log=quiet)
    a, b = losses(straight.out_dir), losses(killed.out_dir)
    assert [s for s, _ in a] == list(range(1, 9))
    assert a == b                                                  # identical floats, every step
    wa, wb = _weights(straight.out_dir), _weights(killed.out_dir)
    assert wa.keys() == wb.keys()
    for name in wa:
        np.testing.assert_array_equal(wa[name], wb[name], err_msg=name)
    oa = ckpt.load_tensors(os.path.join(ckpt.latest(straight.out_dir), "optimizer.safetensors"))
    ob = ckpt.load_tensors(os.path.join(ckpt.latest(killed.out_dir), "optimizer.safetensors"))
    for name in oa:
        np.testing.assert_array_equal(oa[name], ob[name], err_msg=name)


def test_resume_refuses_changed_math_but_allows_run_control(tmp_path):
    config = tiny_config(tmp_path)
    train(config, log=quiet, stop_at_step=4)
    with pytest.raises(ConfigError, match="n_embd"):
        resume(config.out_dir, {"n_embd": 32}, log=quiet)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train(config, log=quiet)
    summary = resume(config.out_dir, {"eval_interval": 2, "log_interval": 2}, log=quiet)
    assert summary["steps"] == 8 and summary["finished"]


def _snapshot(trainer):
    params = {n: p.numpy().copy() for n, p in trainer.model.named_parameters()}
    moments = {k: v.copy() for k, v in trainer.optimizer.state_tensors().items()}
    return params, moments, trainer.optimizer.t


def _assert_same(a, b):
    for x, y in zip(a[:2], b[:2]):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)
    assert a[2] == b[2]


def _poison(trainer, kind):
    """Make the next forward passes produce a NaN loss, or a finite loss with NaN gradients."""
    forward = trainer.model.forward

    def poisoned(*args, **kwargs):
        logits, loss = forward(*args, **kwargs)
        if kind == "loss":
            return logits, loss * float("nan")
        # sqrt'(0) = inf, times d(loss - loss) = 0 -> NaN gradients, value unchanged
        return logits, loss + ops.sqrt(loss - loss)
    trainer.model.forward = poisoned
    return lambda: setattr(trainer.model, "forward", forward)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_non_finite_step_is_skipped_then_training_stops(tmp_path, kind):
    config = tiny_config(tmp_path, max_bad_steps=3, max_steps=20)
    trainer = Trainer(config, log=quiet).setup()
    trainer.train_step()
    before = _snapshot(trainer)
    heal = _poison(trainer, kind)
    event = trainer.train_step()
    assert event["event"] == "skipped_update" and trainer.bad_streak == 1
    assert ("loss" if kind == "loss" else "gradient norm") in event["reason"]
    _assert_same(before, _snapshot(trainer))                      # params and moments untouched
    heal()
    good = trainer.train_step()                                    # recovers, streak resets
    assert math.isfinite(good["loss"]) and trainer.bad_streak == 0
    _poison(trainer, kind)
    trainer.train_step()
    trainer.train_step()
    with pytest.raises(TrainingError, match="3 consecutive steps"):
        trainer.train_step()
    with open(trainer.metrics_path) as f:
        events = [json.loads(line) for line in f]
    assert [e["consecutive"] for e in events if e.get("event") == "skipped_update"] == [1, 1, 2, 3]


def test_evaluation_bits_per_byte_agree_with_an_independent_count(tmp_path):
    trainer = Trainer(tiny_config(tmp_path), log=quiet).setup()
    result = trainer.evaluate()
    # byte-level tokenizer: every text token is one byte, so bpb = loss / ln 2 exactly
    assert result["val_bpb"] == pytest.approx(result["val_loss"] / math.log(2), rel=1e-9)
    assert 0 < result["val_loss"] < 2 * math.log(257)


def test_clipping_and_accumulation_scale_the_gradient(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, grad_clip=0.05, grad_accum=2), log=quiet).setup()
    seen = []
    step = trainer.optimizer.step
    trainer.optimizer.step = lambda lr, grad_scale: (seen.append(grad_scale), step(lr, grad_scale))
    record = trainer.train_step()
    # record["grad_norm"] is the norm of the mean gradient (sum over 2 micro-batches / 2)
    assert record["grad_norm"] > 0.05
    assert seen == [pytest.approx(0.05 / record["grad_norm"] / 2)]
    trainer.config.grad_clip = 1e9
    record = trainer.train_step()
    assert seen[-1] == 0.5


def test_training_lowers_the_loss(tmp_path):
    summary = train(tiny_config(tmp_path, max_steps=40, num_samples=2, eval_interval=40),
                    log=quiet)
    points = losses(summary["run_dir"])
    assert np.mean([x for _, x in points[-5:]]) < np.mean([x for _, x in points[:5]]) - 0.5
    assert len(summary["samples"]) == 2 and all(isinstance(s, str) for s in summary["samples"])
    with open(os.path.join(summary["run_dir"], "metrics.jsonl")) as f:
        norms = [r["grad_norm"] for r in map(json.loads, f) if "grad_norm" in r]
    assert norms and all(math.isfinite(n) for n in norms)


def _kill_points(count=4, seed=10):
    """(step, site) pairs drawn reproducibly: steps between checkpoints, and inside a save."""
    import random
    rng = random.Random(seed)
    between = [s for s in range(5, 12) if s % 4]                 # after the first checkpoint
    points = [(s, "step") for s in rng.sample(between, count - 1)]
    return points + [(rng.choice([4, 8]), "checkpoint")]


KILL_CONFIG = dict(max_steps=12, checkpoint_interval=4, log_interval=3, eval_interval=5,
                   num_samples=1)


def test_sigkill_between_checkpoints_then_resume_equals_a_straight_run(tmp_path):
    """A real process killed with SIGKILL at random points: the log is cut back on resume,
    and weights and metrics end as in an uninterrupted run (log_interval 3 does not divide
    checkpoint_interval 4, so a log window spans each checkpoint)."""
    import signal
    from train_helpers import metrics_without_wall_clock, start_training_process, wait_for
    straight = tiny_config(tmp_path, "straight", **KILL_CONFIG)
    train(straight, log=quiet)
    expected = metrics_without_wall_clock(straight.out_dir)
    assert [r["step"] for r in expected if "loss" in r] == [3, 6, 9, 12]
    for step, site in _kill_points():
        config = tiny_config(tmp_path, f"killed-{site}-{step}", **KILL_CONFIG)
        process, flag = start_training_process(config, tmp_path, step, site)
        wait_for(flag.exists, process)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert process.returncode == -signal.SIGKILL
        resume(config.out_dir, log=quiet)
        where = f"killed at step {step} ({site})"
        assert metrics_without_wall_clock(config.out_dir) == expected, where
        wa, wb = _weights(straight.out_dir), _weights(config.out_dir)
        for name in wa:
            np.testing.assert_array_equal(wa[name], wb[name], err_msg=f"{name}, {where}")
        samples = [open(os.path.join(c.out_dir, "samples.txt")).read() for c in (straight, config)]
        assert samples[0] == samples[1], where


def test_resume_drops_a_torn_last_metrics_line(tmp_path):
    """A kill in the middle of writing a metrics line leaves half a line; resume drops it."""
    from train_helpers import metrics_without_wall_clock
    straight = tiny_config(tmp_path, "straight", **KILL_CONFIG)
    train(straight, log=quiet)
    config = tiny_config(tmp_path, "torn", **KILL_CONFIG)
    train(config, log=quiet, stop_at_step=6)
    with open(os.path.join(config.out_dir, "metrics.jsonl"), "a") as f:
        f.write('{"step": 7, "lo')
    resume(config.out_dir, log=quiet)
    assert metrics_without_wall_clock(config.out_dir) == metrics_without_wall_clock(
        straight.out_dir)


def test_resume_refuses_a_corrupt_metrics_line_naming_the_file(tmp_path):
    from microgpt.errors import CheckpointError
    config = tiny_config(tmp_path, **KILL_CONFIG)
    train(config, log=quiet, stop_at_step=6)
    path = os.path.join(config.out_dir, "metrics.jsonl")
    lines = open(path).read().splitlines(keepends=True)
    lines[1] = "not json\n"
    open(path, "w").writelines(lines)
    with pytest.raises(CheckpointError, match=r"metrics\.jsonl:2: not valid JSON"):
        resume(config.out_dir, log=quiet)


def test_resume_of_a_checkpoint_written_before_newer_config_fields(tmp_path):
    """A checkpoint saved before GPTConfig gained fields (head_dim, qk_norm, ...) lacks those
    keys; they take their defaults and the run resumes, as the same model."""
    import hashlib
    import json
    config = tiny_config(tmp_path)
    train(config, log=quiet, stop_at_step=4)
    step_dir = os.path.join(config.out_dir, "checkpoints", "step_000004")
    config_path = os.path.join(step_dir, "config.json")
    saved = json.load(open(config_path))
    for key in ("head_dim", "qkv_bias", "attn_out_bias", "qk_norm", "rope_scaling", "sliding_window"):
        saved["microgpt"].pop(key, None)
    data = json.dumps(saved).encode()
    open(config_path, "wb").write(data)
    marker_path = os.path.join(step_dir, "COMPLETE")
    marker = json.load(open(marker_path))
    marker["files"]["config.json"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    open(marker_path, "w").write(json.dumps(marker))
    summary = resume(config.out_dir, log=quiet)
    assert summary["steps"] == 8 and summary["finished"]
