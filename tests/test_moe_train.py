"""Training a mixture-of-experts model: the TrainConfig fields and flags, the router statistics
in metrics.jsonl (checked against a count of the routing the model itself did), their plot,
bit-for-bit resume, and a diverged router stopping with the step named."""
import argparse
import json

import numpy as np
import pytest

from microgpt.errors import ConfigError
from microgpt.nn import GPT
from microgpt.nn.moe import MoEMLP, RouterError
from microgpt.train import checkpoint as ckpt
from microgpt.train.config import add_arguments, config_hash, make_config, overrides_from_args
from microgpt.train.plot import plot_run, read_series
from microgpt.train.trainer import Trainer, gpt_config, resume, router_summary, train
from train_helpers import losses, quiet, tiny_config

MOE = dict(family="llama", bias=False, n_experts=4, n_experts_per_token=2, moe_hidden=24,
           router_z_loss_coef=1e-3)


def _metrics(run_dir):
    with open(f"{run_dir}/metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def test_flags_turn_a_model_into_moe():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--n-experts", "8", "--n-experts-per-token", "2", "--moe-hidden", "128",
                              "--moe-every", "2", "--n-shared-experts", "1", "--moe-norm-topk-prob", "false",
                              "--router-aux-loss-coef", "0.02", "--router-z-loss-coef", "0.001"])
    config = make_config("demo", None, overrides_from_args(args))
    gpt = gpt_config(config, 300)
    assert (gpt.n_experts, gpt.n_experts_per_token, gpt.moe_hidden, gpt.moe_every, gpt.n_shared_experts,
            gpt.moe_norm_topk_prob, gpt.router_aux_loss_coef, gpt.router_z_loss_coef) == \
        (8, 2, 128, 2, 1, False, 0.02, 0.001)
    model = GPT(gpt, seed=0)
    assert [i for i, b in enumerate(model.blocks) if isinstance(b.mlp, MoEMLP)] == [1, 3]
    dense = gpt_config(make_config("demo"), 300)           # moe_hidden 0: GPTConfig's default
    assert dense.n_experts == 0 and dense.moe_hidden == dense.mlp_hidden


@pytest.mark.parametrize("flags", [["--n-experts", "-1"], ["--moe-every", "0"],
                                   ["--router-aux-loss-coef", "nan"], ["--n-experts-per-token", "0"]])
def test_bad_moe_flags_are_refused_naming_the_flag(flags, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(flags)
    assert flags[0] in capsys.readouterr().err


def test_top_k_above_the_expert_count_is_a_config_error():
    with pytest.raises(ConfigError, match="n_experts_per_token.*<= n_experts"):
        make_config("demo", None, {"n_experts": 2, "n_experts_per_token": 3})


def test_dense_config_hash_is_unchanged_by_the_moe_fields():
    # a checkpoint written before the MoE fields existed still resumes: the hash of a dense
    # config is computed without them
    # (nor by the fields added after them, such as dtype: ADDED_FIELDS lists them all)
    import hashlib
    from microgpt.train.config import ADDED_FIELDS, RUN_CONTROL_FIELDS
    config = make_config("demo")
    moe = {k for k in config.to_dict() if k.startswith(("n_experts", "n_shared", "moe_", "router_"))}
    assert len(moe) == 8 and moe <= ADDED_FIELDS
    old = {k: v for k, v in config.to_dict().items() if k not in ADDED_FIELDS}
    payload = {k: v for k, v in old.items() if k not in RUN_CONTROL_FIELDS}
    assert config_hash(config) == hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    assert config_hash(make_config("demo", None, {"n_experts": 4})) != config_hash(config)


def test_router_summary_against_a_direct_count():
    window = [{"tokens_per_expert": [[3, 1, 0, 4], [2, 2, 2, 2]], "dropped_tokens": 0, "aux_loss": 1.5,
               "z_loss": 0.25},
              {"tokens_per_expert": [[1, 1, 2, 4], [0, 4, 2, 2]], "dropped_tokens": 0, "aux_loss": 2.5,
               "z_loss": 0.75}]
    out = router_summary(window)
    assert out["tokens_per_expert"] == [[4, 2, 2, 8], [2, 6, 4, 4]]
    assert out["expert_load_max"] == pytest.approx(8 / 4) and out["expert_load_min"] == pytest.approx(2 / 4)
    assert out["router_aux_loss"] == pytest.approx(2.0) and out["router_z_loss"] == pytest.approx(0.5)
    assert out["dropped_tokens"] == 0
    assert router_summary([]) == {}


def test_metrics_hold_the_routing_the_model_did(tmp_path, monkeypatch):
    """Every micro-batch's router choices, recorded by wrapping MoEMLP.forward, summed per
    log window, equal metrics.jsonl's tokens_per_expert; aux and z are their mean."""
    seen = []
    forward = MoEMLP.forward

    def recording(self, x):
        out = forward(self, x)
        if self.training:
            seen.append((self.stats["tokens_per_expert"], self.stats["aux_loss"], self.stats["z_loss"]))
        return out
    monkeypatch.setattr(MoEMLP, "forward", recording)
    config = tiny_config(tmp_path, n_layer=2, log_interval=3, grad_accum=2, max_steps=6, **MOE)
    train(config, log=quiet)
    lines = [r for r in _metrics(config.out_dir) if "loss" in r]
    assert [r["step"] for r in lines] == [3, 6]
    per_step = 2 * config.grad_accum * 3                  # 2 layers x micro-batches x steps per line
    for i, line in enumerate(lines):
        window = seen[i * per_step:(i + 1) * per_step]
        layer0, layer1 = window[0::2], window[1::2]
        counts = [np.sum([w[0] for w in layer], axis=0).tolist() for layer in (layer0, layer1)]
        assert line["tokens_per_expert"] == counts
        for layer in counts:                                # every token went to k experts
            assert sum(layer) == 3 * config.tokens_per_step * 2
        loads = np.array(counts) / np.mean(counts, axis=1, keepdims=True)
        assert line["expert_load_max"] == pytest.approx(loads.max())
        assert line["expert_load_min"] == pytest.approx(loads.min())
        assert line["router_aux_loss"] == pytest.approx(np.mean([w[1] for w in window]))
        assert line["router_z_loss"] == pytest.approx(np.mean([w[2] for w in window]))
        assert line["dropped_tokens"] == 0
    assert not any("tokens_per_expert" in r for r in _metrics(config.out_dir) if "val_loss" in r)


def test_dense_metrics_have_no_router_keys(tmp_path):
    config = tiny_config(tmp_path, max_steps=2)
    train(config, log=quiet)
    assert not any("router_aux_loss" in r or "tokens_per_expert" in r for r in _metrics(config.out_dir))


def test_moe_resume_is_bit_for_bit_router_statistics_included(tmp_path):
    straight = tiny_config(tmp_path, "straight", log_interval=3, **MOE)
    train(straight, log=quiet)
    killed = tiny_config(tmp_path, "killed", log_interval=3, **MOE)
    train(killed, log=quiet, stop_at_step=4)              # mid-window: the window is checkpointed
    resume(killed.out_dir, log=quiet)
    assert losses(straight.out_dir) == losses(killed.out_dir)
    keep = ("step", "tokens_per_expert", "router_aux_loss", "router_z_loss", "expert_load_max")
    a = [{k: r[k] for k in keep} for r in _metrics(straight.out_dir) if "loss" in r]
    b = [{k: r[k] for k in keep} for r in _metrics(killed.out_dir) if "loss" in r]
    assert a == b and len(a) == 3
    wa = ckpt.load(ckpt.latest(straight.out_dir)).weights
    wb = ckpt.load(ckpt.latest(killed.out_dir)).weights
    assert any("experts" in name for name in wa)
    for name in wa:
        np.testing.assert_array_equal(wa[name], wb[name], err_msg=name)


def test_a_diverged_router_stops_training_naming_the_step(tmp_path):
    config = tiny_config(tmp_path, max_steps=6, **MOE)
    trainer = Trainer(config, quiet).setup()
    trainer.run(stop_at_step=2)
    trainer.model.moe_layers()[0].gate.weight.data[...] = np.nan
    with pytest.raises(RouterError, match=r"^step 3: the MoE router's probabilities are NaN") as info:
        trainer.run()
    assert "checkpoint" in str(info.value)


def test_plot_draws_the_router_panels(tmp_path):
    config = tiny_config(tmp_path, max_steps=4, **MOE)
    train(config, log=quiet)
    series = read_series(config.out_dir)
    assert {"expert_load_max", "expert_load_min", "router_aux_loss", "router_z_loss"} <= set(series)
    assert len(series["router_aux_loss"]) == 4
    out = plot_run(config.out_dir)
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_init_from_an_moe_run_keeps_its_experts(tmp_path):
    first = tiny_config(tmp_path, "first", max_steps=2, **MOE)
    train(first, log=quiet)
    values = dict(data=first.data, val_fraction=0.1, block_size=16, batch_size=4, max_steps=2,
                  warmup_steps=0, eval_interval=2, eval_batches=1, checkpoint_interval=2, num_samples=0,
                  progress=False, out_dir=str(tmp_path / "second"), init_from=first.out_dir,
                  router_aux_loss_coef=0.05)
    second = make_config("demo", None, values)
    assert (second.n_experts, second.moe_hidden) == (4, 24)
    trainer = Trainer(second, quiet).setup()
    assert trainer.model.config.router_aux_loss_coef == 0.05       # this run's weight
    with pytest.raises(ConfigError, match="n_experts=8"):
        make_config("demo", None, {**values, "n_experts": 8})
