"""Shared by the pre-training tests: a tiny corpus, a byte-level tokenizer, a tiny config,
and a real training process to send signals to."""
import json
import os

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
    """A GPT-2-family model of a few thousand parameters that trains a step in milliseconds
    (the family is pinned: the tests of the run format do not follow the demo's)."""
    values = dict(family="gpt2", bias=True, data=tiny_corpus(tmp_path), tokenizer=byte_tokenizer(tmp_path),
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


# --- a real training process, paused at a chosen point so a signal lands there --------------

# The child trains a TrainConfig (JSON in argv[1]). When it reaches the point named by
# argv[3] at step argv[2] it creates the file argv[4] and sleeps, so the parent's signal
# arrives exactly there:
#   "step"        when that step is done (metrics written, any checkpoint saved), before
#                 the next one starts
#   "checkpoint"  inside that step's checkpoint save, after its first file is on disk
#   "none"        never pause (the parent signals whenever it likes)
_CHILD = r"""
import json, os, sys, time
from microgpt.train import checkpoint as ckpt
from microgpt.train.config import from_dict
from microgpt.train.trainer import Trainer, train
config = from_dict(json.load(open(sys.argv[1])))
step, site, flag = int(sys.argv[2]), sys.argv[3], sys.argv[4]

def pause():
    open(flag, "w").close()
    time.sleep(120)

if site == "step":
    train_step = Trainer.train_step
    def pause_then_step(self):
        if self.step == step:
            pause()
        return train_step(self)
    Trainer.train_step = pause_then_step
elif site == "checkpoint":
    fsync = ckpt._fsync_file
    def fsync_then_pause(path):
        fsync(path)
        if f"step_{step:06d}" in path:
            pause()
    ckpt._fsync_file = fsync_then_pause
if len(sys.argv) > 5:                          # the command line: `microgpt ARGV...`
    from microgpt.cli import main
    raise SystemExit(main(sys.argv[5:]))
train(config, log=lambda *a, **k: None)
"""


def start_training_process(config, tmp_path, step=0, site="none", cli=False):
    """Popen of a child training `config` (through `microgpt train --config` if cli), and the
    flag file it creates when it pauses at (step, site)."""
    import subprocess
    import sys

    from microgpt.train.config import save_toml
    name = f"{site}-{step}-{os.path.basename(config.out_dir)}"
    flag, config_path = tmp_path / f"paused-{name}", tmp_path / f"config-{name}.json"
    config_path.write_text(json.dumps(config.to_dict()))
    argv = [sys.executable, "-c", _CHILD, str(config_path), str(step), site, str(flag)]
    if cli:
        save_toml(config, str(tmp_path / f"config-{name}.toml"))
        argv += ["train", "--config", str(tmp_path / f"config-{name}.toml")]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process, flag


def wait_for(predicate, process, timeout=60.0):
    """Poll until predicate() is true; fail if the process exits or time runs out first."""
    import time
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"child exited with {process.returncode} first:\n{out}\n{err}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("child did not get there in time")
        time.sleep(0.01)


def metrics_without_wall_clock(run_dir):
    """metrics.jsonl's records without the fields that measure wall-clock time."""
    with open(f"{run_dir}/metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if k not in ("elapsed_s", "tokens_per_s")}
            for r in records]
