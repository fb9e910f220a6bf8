"""A run's sampling settings travel with it: the config's temperature, top-k and repetition
penalty shape the trainer's own samples, are written to generation_config.json, and are what
`microgpt generate` uses unless a flag says otherwise. The oracle is the Engine called
directly with the same settings."""
import json
import os

from microgpt.cli import main
from microgpt.inference.engine import Engine
from microgpt.inference.sampling import SamplingConfig
from microgpt.train import checkpoint as ckpt
from microgpt.train.config import PRESETS, make_config
from microgpt.train.trainer import train
from train_helpers import tiny_config

PENALTY = 3.0          # large, so that greedy decoding of a tiny model surely changes


def greedy(model, tokenizer, penalty, tokens=24):
    sampling = SamplingConfig(temperature=0.0, repetition_penalty=penalty)
    return Engine(model, tokenizer).generate(["the "], tokens, sampling, seed=0)[0].text


def test_the_demo_samples_with_a_repetition_penalty():
    assert make_config("demo").repetition_penalty == PRESETS["demo"]["repetition_penalty"] > 1.0
    assert make_config("baby").repetition_penalty == 1.0            # off unless a preset sets it


def test_repetition_penalty_reaches_samples_checkpoint_and_generate(tmp_path, capsys):
    config = tiny_config(tmp_path, num_samples=2, repetition_penalty=PENALTY, temperature=0.9)
    summary = train(config, log=lambda *a: None)
    path = ckpt.latest(config.out_dir)
    generation = json.load(open(os.path.join(path, "generation_config.json")))
    assert generation["repetition_penalty"] == PENALTY
    model, tokenizer, _ = ckpt.load_model(path)
    # the trainer's samples: empty prompts, seed = config seed + step, the config's settings
    sampling = SamplingConfig(temperature=0.9, top_k=config.top_k, repetition_penalty=PENALTY)
    expected = Engine(model, tokenizer).generate([""] * 2, config.sample_tokens, sampling,
                                                 seed=config.seed + config.max_steps)
    assert summary["samples"] == [o.text for o in expected]
    # generate: the run's penalty by default, the flag's when given
    with_penalty, without = greedy(model, tokenizer, PENALTY), greedy(model, tokenizer, 1.0)
    assert with_penalty != without
    capsys.readouterr()
    for flags, text in (([], with_penalty), (["--repetition-penalty", "1"], without)):
        assert main(["generate", config.out_dir, "--prompt", "the ", "--max-new-tokens", "24",
                     "--temperature", "0", *flags]) == 0
        assert capsys.readouterr().out == "the " + text + "\n", flags
