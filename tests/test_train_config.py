"""TrainConfig, presets, TOML and CLI layering, the config hash, the LR schedule, AdamW."""
import argparse
import math

import pytest

from microgpt.errors import ConfigError
from microgpt.train.config import (PRESETS, TrainConfig, add_arguments, config_hash, from_dict,
                                   load_toml, make_config, overrides_from_args, save_toml)
from microgpt.train.schedule import lr_at


def test_every_preset_builds_and_gpt2_is_124m_shaped():
    for name in PRESETS:
        c = make_config(name)
        assert c.max_steps >= 1
    g = make_config("gpt2")
    assert (g.n_layer, g.n_head, g.n_embd, g.block_size, g.vocab_size) == (12, 12, 768, 1024, 50257)
    assert make_config(None).n_layer == make_config("demo").n_layer


def test_layering_preset_then_toml_then_flags(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('preset = "baby"\n[model]\nn_layer = 3\n[optim]\nlr = 1\nbias = false\n')
    assert load_toml(str(path)) == {"preset": "baby", "n_layer": 3, "lr": 1.0, "bias": False}
    c = make_config(None, str(path), {"n_layer": 5})
    assert c.n_layer == 5 and c.lr == 1.0 and c.bias is False
    assert c.block_size == PRESETS["baby"]["block_size"]           # from the file's preset
    assert make_config("demo", str(path)).block_size == PRESETS["demo"]["block_size"]


def test_toml_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("n_layers = 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'n_layers'"):
        load_toml(str(bad))
    bad.write_text('n_layer = "three"\n')
    with pytest.raises(ConfigError, match="'n_layer' must be int"):
        load_toml(str(bad))
    bad.write_text("n_layer = true\n")
    with pytest.raises(ConfigError, match="must be int"):
        load_toml(str(bad))
    bad.write_text("n_layer = \n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_toml(str(bad))
    with pytest.raises(ConfigError, match="not found"):
        load_toml(str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="unknown preset"):
        make_config("huge")


def test_validation_rejects_inconsistent_values():
    with pytest.raises(ConfigError, match="divisible"):
        TrainConfig(n_embd=100, n_head=3)
    with pytest.raises(ConfigError, match="warmup_steps"):
        TrainConfig(max_steps=10, warmup_steps=20)
    with pytest.raises(ConfigError, match="min_lr"):
        TrainConfig(lr=1e-3, min_lr=1e-2)
    with pytest.raises(ConfigError, match="family"):
        TrainConfig(family="bert")
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig(batch_size=0)


def test_cli_flags_map_one_to_one_to_fields():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--n-layer", "2", "--lr", "0.5", "--tie-embeddings", "false",
                              "--out-dir", "x"])
    assert overrides_from_args(args) == {"n_layer": 2, "lr": 0.5, "tie_embeddings": False,
                                         "out_dir": "x"}
    fields = set(TrainConfig.__dataclass_fields__)
    flags = {a.dest for a in parser._actions} - {"help", "preset", "config"}
    assert flags == fields


def test_toml_round_trip_and_hash(tmp_path):
    c = make_config("baby", None, {"lr": 0.01, "data": "a,b"})
    save_toml(c, str(tmp_path / "c.toml"))
    again = make_config("demo", str(tmp_path / "c.toml"))
    assert again == c and config_hash(again) == config_hash(c)
    assert from_dict(c.to_dict()) == c
    run_control = make_config("baby", None, {"lr": 0.01, "data": "a,b", "eval_interval": 7,
                                             "out_dir": "elsewhere"})
    assert config_hash(run_control) == config_hash(c)
    assert config_hash(make_config("baby", None, {"lr": 0.02, "data": "a,b"})) != config_hash(c)


def test_schedule_warmup_cosine_floor():
    kw = dict(max_lr=1.0, min_lr=0.1, warmup_steps=10, decay_steps=110)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(4, **kw) == pytest.approx(0.5)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.55)                 # halfway: (max + min) / 2
    assert lr_at(35, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(110, **kw) == pytest.approx(0.1)
    assert lr_at(500, **kw) == 0.1
    values = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))         # monotone decay
    assert lr_at(3, 1.0, 0.0, 0, 0) == 0.0
    with pytest.raises(ConfigError):
        lr_at(-1, **kw)


def test_every_float_field_rejects_nan_and_inf_from_any_source(tmp_path):
    floats = [name for name, f in TrainConfig.__dataclass_fields__.items()
              if f.type in (float, "float")]
    assert len(floats) >= 10
    for name in floats:
        for bad in (math.nan, math.inf, -math.inf):
            with pytest.raises(ConfigError, match=name):
                TrainConfig(**{name: bad})
    toml = tmp_path / "bad.toml"
    for line in ("weight_decay = nan", "grad_clip = inf", "[optim]\nlr = -inf"):
        toml.write_text(line + "\n")
        with pytest.raises(ConfigError, match=r"weight_decay|grad_clip|lr"):
            make_config("demo", str(toml))


def test_ranges_that_were_not_checked_before():
    for bad in (dict(eval_interval=0), dict(seed=-1), dict(val_fraction=0.0),
                dict(eps=math.inf), dict(lr=math.inf, min_lr=0.0)):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            TrainConfig(**bad)


def test_a_preset_named_in_toml_must_be_a_string(tmp_path):
    toml = tmp_path / "p.toml"
    toml.write_text("preset = 3\n")
    with pytest.raises(ConfigError, match="preset"):
        make_config(None, str(toml))


def test_warmup_scales_to_short_runs_unless_set():
    demo = PRESETS["demo"]
    assert make_config("demo").warmup_steps == demo["warmup_steps"]
    assert make_config("demo", None, {"max_steps": 6}).warmup_steps == 0
    assert make_config("demo", None, {"max_steps": 500}).warmup_steps == 50
    assert make_config("demo", None, {"max_steps": 100_000}).warmup_steps == demo["warmup_steps"]
    assert make_config("demo", None, {"max_steps": 6, "warmup_steps": 3}).warmup_steps == 3
    with pytest.raises(ConfigError, match="--warmup-steps"):
        make_config("demo", None, {"max_steps": 6, "warmup_steps": 100})


def test_warmup_set_in_a_toml_file_is_kept(tmp_path):
    toml = tmp_path / "w.toml"
    toml.write_text("max_steps = 40\nwarmup_steps = 20\n")
    assert make_config("demo", str(toml)).warmup_steps == 20
    toml.write_text("max_steps = 40\n")
    assert make_config("demo", str(toml)).warmup_steps == 4
