"""The command line: data prepare, train, train --resume, generate, plot (tiny sizes)."""
import json
import os

import numpy as np
import pytest

from microgpt.cli import main
from microgpt.data.shards import list_shards, open_shard
from microgpt.tokenizer import Tokenizer
from train_helpers import byte_tokenizer, tiny_corpus

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
        "--batch-size", "4", "--warmup-steps", "2", "--eval-interval", "3", "--eval-batches", "1",
        "--checkpoint-interval", "3", "--log-interval", "1", "--sample-tokens", "8",
        "--num-samples", "1", "--progress", "false", "--val-fraction", "0.1"]


def test_data_prepare_writes_shards_that_decode_to_the_corpus(tmp_path):
    corpus, tok = tiny_corpus(tmp_path), byte_tokenizer(tmp_path)
    out = str(tmp_path / "shards")
    assert main(["data", "prepare", corpus, "-o", out, "--tokenizer", tok, "--no-progress",
                 "--val-fraction", "0.1"]) == 0
    meta = json.load(open(os.path.join(out, "meta.json")))
    tokenizer = Tokenizer.load(os.path.join(out, meta["tokenizer"]))
    texts = [json.loads(line)["text"] for line in open(corpus)]
    ids = np.concatenate([open_shard(p) for p in list_shards(out, "train")])
    decoded = tokenizer.decode(ids.tolist()).split("<|endoftext|>")[1:]
    assert decoded == [t for i, t in enumerate(texts) if (i + 1) % 10]


def test_data_prepare_trains_a_bpe_when_no_tokenizer_is_given(tmp_path, capsys):
    corpus = tiny_corpus(tmp_path)
    out = str(tmp_path / "shards")
    assert main(["data", "prepare", corpus, "-o", out, "--vocab-size", "300",
                 "--no-progress"]) == 0
    assert Tokenizer.load(os.path.join(out, "tokenizer.bpe")).vocab_size == 300
    assert main(["data", "prepare", str(tmp_path / "missing.txt"), "-o", out]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_train_resume_generate_plot(tmp_path, capsys):
    run = str(tmp_path / "run")
    common = ["--data", tiny_corpus(tmp_path), "--tokenizer", byte_tokenizer(tmp_path)] + TINY
    assert main(["train", "--max-steps", "3", "--out-dir", run] + common) == 0
    out = capsys.readouterr().out
    assert "3 steps" in out and "--- sample 1 ---" in out and "checkpoint:" in out
    assert main(["train", "--max-steps", "3", "--out-dir", run] + common) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    assert main(["train", "--resume", run, "--n-layer", "2"]) == 2
    assert "cannot resume with changed n_layer" in capsys.readouterr().err
    assert main(["train", "--resume", run, "--max-steps", "3"]) == 0        # already done
    assert "resumed from" in capsys.readouterr().out
    assert main(["generate", run, "--prompt", "the ", "--max-new-tokens", "5",
                 "--temperature", "0"]) == 0
    streamed = capsys.readouterr().out
    assert streamed.startswith("the ")
    assert main(["generate", run, "--prompt", "a", "--prompt", "bc", "--max-new-tokens", "4",
                 "--stop", "\\n"]) == 0
    assert capsys.readouterr().out.count("--- [") == 2
    pytest.importorskip("matplotlib")
    assert main(["plot", run, "--out", str(tmp_path / "curve.png")]) == 0
    assert open(tmp_path / "curve.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert main(["generate", str(tmp_path / "nothing")]) == 2


def test_builtin_corpus_with_a_trained_bpe_is_prepared_once(tmp_path):
    """The demo's data path at a small size: built-in corpus, BPE trained here, cached."""
    from microgpt.train.config import make_config
    from microgpt.train.trainer import Trainer
    config = make_config("demo", None, dict(
        corpus_bytes=300_000, tokenizer_bytes=200_000, vocab_size=320, n_layer=1, n_embd=16,
        n_head=2, block_size=32, batch_size=2, max_steps=2, warmup_steps=1, progress=False,
        out_dir=str(tmp_path / "run")))
    messages = []
    trainer = Trainer(config, log=messages.append).setup()
    assert trainer.tokenizer.vocab_size == 320 and trainer.tokenizer.eot_id == 319
    assert any("trained a BPE tokenizer" in m for m in messages)
    meta = trainer.meta
    assert meta["tokens"]["train"] > 50_000 and meta["documents"]["val"] >= 1
    messages.clear()
    Trainer(config, log=messages.append).setup()
    assert any("reusing" in m for m in messages)
    trainer.run()
    assert trainer.step == 2
