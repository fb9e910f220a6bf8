"""ops_fused.kl_div, distillation's soft loss, against PyTorch's F.kl_div (values and gradients).

PyTorch is the independent oracle: kl_div(log_softmax(s / T), softmax(t / T),
reduction="batchmean") is KL(softmax(t / T) || softmax(s / T)) averaged over rows, our op
exactly (with probabilities as the target, torch takes 0 log 0 = 0 through xlogy; its
log_target=True form gives NaN for a teacher logit of -inf); autograd gives the student's
gradient. Checked in float64 on the reference and in float32 on every CPU backend, on odd
shapes and temperatures, and where the teacher rules tokens out (a logit of -inf, a
probability of 0: its term is 0, not NaN).
"""
import numpy as np
import pytest
import torch

from microgpt import backends, ops_fused
from microgpt.tensor import Tensor


def torch_kl(student, teacher, temperature):
    s = torch.tensor(student, dtype=torch.float64, requires_grad=True)
    vocab = student.shape[-1]
    t = torch.tensor(teacher, dtype=torch.float64).reshape(-1, vocab)
    loss = torch.nn.functional.kl_div(torch.log_softmax(s.reshape(-1, vocab) / temperature, -1),
                                      torch.softmax(t / temperature, -1), reduction="batchmean")
    loss.backward()
    return loss.item(), s.grad.numpy()


def ours(student, teacher, temperature, dtype):
    s = Tensor(student, dtype=dtype, requires_grad=True)
    loss = ops_fused.kl_div(s, teacher.astype(dtype), temperature)
    loss.backward()
    return loss.item(), np.asarray(s.grad.numpy() if hasattr(s.grad, "numpy") else s.grad)


CASES = [((5, 7), 1.0), ((2, 3, 11), 2.0), ((1, 1), 1.0), ((4, 2048), 4.0), ((3, 1, 33), 0.5)]


@pytest.mark.parametrize("backend", [b for b in ("reference", "cpu") if b in backends.available()])
@pytest.mark.parametrize("shape,temperature", CASES)
def test_kl_div_matches_torch(backend, shape, temperature):
    rng = np.random.default_rng(len(shape) * 100 + shape[-1])
    student, teacher = rng.standard_normal(shape) * 2, rng.standard_normal(shape) * 3
    want_loss, want_grad = torch_kl(student, teacher, temperature)
    with backends.using(backend):
        for dtype, tol in ((np.float64, 1e-12), (np.float32, 2e-5)):
            if backend == "cpu" and dtype == np.float64:
                continue             # the C backend's float64 path is the reference itself
            loss, grad = ours(student, teacher, temperature, dtype)
            np.testing.assert_allclose(loss, want_loss, rtol=tol, atol=tol)
            np.testing.assert_allclose(grad, want_grad, rtol=tol * 10, atol=tol)


def test_a_teacher_that_rules_tokens_out():
    """p_v = 0 (teacher logit -inf) contributes 0, as torch's xlogy does; still finite."""
    rng = np.random.default_rng(3)
    student, teacher = rng.standard_normal((4, 9)), rng.standard_normal((4, 9))
    teacher[:, :3] = -np.inf
    want_loss, want_grad = torch_kl(student, teacher, 1.5)
    loss, grad = ours(student, teacher, 1.5, np.float64)
    assert np.isfinite(loss) and np.isfinite(grad).all()
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-14)


def test_identical_logits_give_zero_loss_and_gradient():
    logits = np.random.default_rng(4).standard_normal((3, 8))
    loss, grad = ours(logits, logits.copy(), 2.0, np.float64)
    assert abs(loss) < 1e-14 and np.abs(grad).max() < 1e-15


def test_bad_arguments_are_clear_errors():
    s = Tensor(np.zeros((2, 5)), requires_grad=True)
    with pytest.raises(Exception, match="do not match"):
        ops_fused.kl_div(s, np.zeros((2, 6)))
    with pytest.raises(ValueError, match="temperature"):
        ops_fused.kl_div(s, np.zeros((2, 5)), temperature=0.0)
