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
    return ckpt.load_model_files(ckpt.latest(run_dir))[1]


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
    assert np.mean([l for _, l in points[-5:]]) < np.mean([l for _, l in points[:5]]) - 0.5
    assert len(summary["samples"]) == 2 and all(isinstance(s, str) for s in summary["samples"])
    with open(os.path.join(summary["run_dir"], "metrics.jsonl")) as f:
        norms = [r["grad_norm"] for r in map(json.loads, f) if "grad_norm" in r]
    assert norms and all(math.isfinite(n) for n in norms)
