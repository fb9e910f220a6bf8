"""Shared by the pre-training tests: a tiny corpus, a byte-level tokenizer, a tiny config."""
import json

from microgpt.tokenizer import Tokenizer
from microgpt.train.config import make_config

WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly hex "
         "jovial frogs and def return import class print self lambda yield").split()


def tiny_corpus(directory, documents=40, seed=0):
    """A JSONL corpus of short pseudo-sentences (deterministic)."""
    import random
    rng = random.Random(seed)
    path = directory / "corpus.jsonl"
    with open(path, "w") as f:
        for _ in range(documents):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60)))
            f.write(json.dumps({"text": text + ".\n"}) + "\n")
    return str(path)


def byte_tokenizer(directory):
    path = directory / "bytes.bpe"
    Tokenizer.bytes_level(special_tokens=("<|endoftext|>",)).save(str(path))
    return str(path)


def tiny_config(tmp_path, out="run", **overrides):
    """A model of a few thousand parameters that trains a step in milliseconds."""
    values = dict(data=tiny_corpus(tmp_path), tokenizer=byte_tokenizer(tmp_path),
                  val_fraction=0.1, n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4,
                  max_steps=8, warmup_steps=2, lr=1e-2, min_lr=1e-3, eval_interval=4,
                  eval_batches=2, checkpoint_interval=4, log_interval=1, num_samples=0,
                  sample_tokens=8, progress=False, out_dir=str(tmp_path / out))
    values.update(overrides)
    return make_config("demo", None, values)


def quiet(*args, **kwargs):
    """A log function that prints nothing."""


def losses(run_dir):
    """[(step, loss)] of the training-loss lines in a run's metrics.jsonl."""
    with open(f"{run_dir}/metrics.jsonl") as f:
        return [(r["step"], r["loss"]) for r in map(json.loads, f) if "loss" in r]
