"""`microgpt finetune distill`: the loss is the formula, any student shape and family, one vocabulary.

The oracle for the loss is the formula itself, assembled from independent pieces: PyTorch's
F.kl_div and F.cross_entropy on the logits of our teacher and student, for the batch the
trainer draws. Then the command end to end on tiny runs: a student of another family and
shape trains, the teacher is left untouched, alpha = 0 never runs the teacher, and a student
with another vocabulary is a one-line error (exit 2) naming both, with nothing written.
"""
import os

import numpy as np
import pytest
import torch

from microgpt.cli import main
from microgpt.finetune.distill import (DistillOptions, DistillTrainer, VocabularyMismatch, distill,
                                       load_teacher)
from microgpt.tensor import no_grad
from model_dirs import our_run
from train_helpers import quiet, tiny_config


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return our_run(tmp_path_factory.mktemp("teacher"), family="llama", max_steps=6)


def test_batch_loss_is_alpha_t2_kl_plus_ce(teacher, tmp_path):
    model, tokenizer = load_teacher(teacher)
    config = tiny_config(tmp_path, family="gpt2", n_layer=1, n_embd=8, n_head=2,
                         tokenizer=os.path.join(teacher, "checkpoints", "step_000006", "tokenizer.bpe"))
    options = DistillOptions(teacher=teacher, alpha=0.3, temperature=2.5)
    trainer = DistillTrainer(config, options, model, tokenizer, quiet).setup()
    x, y = trainer.train_loader.next_batch()
    loss = trainer.batch_loss((x, y)).item()
    with no_grad():
        s = trainer.model(x)[0].numpy().astype(np.float64)
        t = model(x)[0].numpy().astype(np.float64)
    vocab = s.shape[-1]
    s_t, t_t = torch.tensor(s).reshape(-1, vocab), torch.tensor(t).reshape(-1, vocab)
    kl = torch.nn.functional.kl_div(torch.log_softmax(s_t / 2.5, -1), torch.softmax(t_t / 2.5, -1),
                                    reduction="batchmean")
    ce = torch.nn.functional.cross_entropy(s_t, torch.tensor(y).reshape(-1))
    want = 0.3 * 2.5 ** 2 * kl.item() + 0.7 * ce.item()
    assert loss == pytest.approx(want, rel=1e-5)


def test_a_student_of_another_family_and_shape_trains(teacher, tmp_path):
    before = {k: v.copy() for k, v in load_teacher(teacher)[0].state_dict().items()}
    out = str(tmp_path / "student")
    code = main(["finetune", "distill", "--teacher", teacher, "--student", "baby", "--family", "gpt2",
                 "--bias", "true", "--n-layer", "2", "--n-embd", "8", "--n-head", "2", "--block-size", "16",
                 "--batch-size", "2", "--max-steps", "3", "--data", tiny_config(tmp_path).data,
                 "--eval-interval", "3", "--eval-batches", "1", "--checkpoint-interval", "3",
                 "--num-samples", "0", "--progress", "false", "--val-fraction", "0.1", "--out-dir", out])
    assert code == 0
    from microgpt.train import checkpoint as ckpt
    student, student_tokenizer, _ = ckpt.load_model(out)
    teacher_model, teacher_tokenizer = load_teacher(teacher)
    assert student.config.family == "gpt2" and student.config.n_embd == 8
    assert student_tokenizer.vocab_size == teacher_tokenizer.vocab_size
    for name, value in teacher_model.state_dict().items():       # the teacher is frozen
        np.testing.assert_array_equal(value, before[name])


def test_alpha_zero_never_runs_the_teacher(teacher, tmp_path):
    class Exploding:
        def eval(self):
            return self

        def __call__(self, *args, **kwargs):
            raise AssertionError("the teacher ran")

        def num_parameters(self):
            return 0
    _, tokenizer = load_teacher(teacher)
    config = tiny_config(tmp_path, tokenizer=os.path.join(teacher, "checkpoints", "step_000006", "tokenizer.bpe"))
    trainer = DistillTrainer(config, DistillOptions(teacher, alpha=0.0), Exploding(), tokenizer, quiet).setup()
    assert np.isfinite(trainer.batch_loss(trainer.train_loader.next_batch()).item())


def test_another_vocabulary_is_a_clear_error_and_writes_nothing(teacher, tmp_path, capsys):
    # a student run whose tokenizer has one more special token than the teacher's
    from microgpt.tokenizer import Tokenizer
    path = tmp_path / "specials.bpe"
    Tokenizer.bytes_level(special_tokens=("<|endoftext|>", "<|pad|>")).save(str(path))
    student = our_run(tmp_path / "student_run", tokenizer=str(path))
    out = tmp_path / "out"
    code = main(["finetune", "distill", "--teacher", teacher, "--student", student, "--max-steps", "2",
                 "--out-dir", str(out), "--progress", "false"])
    err = capsys.readouterr().err
    assert code == 2
    assert "257 ids" in err and "258 ids" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_bad_options_are_config_errors():
    with pytest.raises(Exception, match="alpha"):
        DistillOptions("t", alpha=1.5)
    with pytest.raises(Exception, match="temperature"):
        DistillOptions("t", temperature=0.0)
    assert issubclass(VocabularyMismatch, Exception)
    assert callable(distill)
