"""The kl_div kernels (distillation's soft loss) in C against the NumPy reference, and both against
finite differences.

kl_div_forward(student, teacher, T) gives per row KL(softmax(teacher / T) || softmax(student / T))
and the two row logsumexps; kl_div_backward rebuilds both softmaxes from them. The oracles:
  - the reference (backends/reference.py) run in float64 on the same float32 inputs, on odd
    shapes (V = 1, rows shorter and longer than a SIMD register, a vocabulary of 2049), several
    temperatures, logits from ordinary to huge (1e4, where a naive e^z overflows: the kernel
    subtracts each row's maximum), on 1 and 2 threads and past the threading threshold;
  - central finite differences of the C forward itself for the C backward (float32 data, step
    1e-2 in units of the logits: truncation error ~ h^2, rounding ~ eps32 / h, both < 1e-4);
  - exact facts: a teacher equal to its student gives a loss of exactly 0; a teacher logit of
    -inf is a probability of 0 whose term is 0; a NaN teacher logit gives a NaN loss (the
    reference once gave 0 there: a NaN probability failed its "p > 0" test and was dropped).
And the trainer's distillation step runs the C kernels (the reference is never called).
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_close
from microgpt.backends import cpu, reference as ref

pytestmark = pytest.mark.skipif(not cpu.AVAILABLE, reason="C kernels not built")


def logits(rng, n, v, scale):
    return (rng.standard_normal((n, v)) * scale).astype(np.float32)


def check_against_reference(student, teacher, temperature, rng, tol=1e-5):
    """C forward and backward vs the float64 reference on the same float32 values."""
    s64, t64 = student.astype(np.float64), teacher.astype(np.float64)
    losses, student_lse, teacher_lse = cpu.kl_div_forward(student, teacher, temperature)
    want = ref.kl_div_forward(s64, t64, temperature)
    # a loss is a sum of V terms of size |logits| / T: its rounding error scales with that
    scale = 1.0 + np.abs(student).max() / temperature + np.abs(teacher).max() / temperature
    for got, w, name in zip((losses, student_lse, teacher_lse), want, ("losses", "student_lse", "teacher_lse")):
        assert got.dtype == np.float32 and got.shape == (student.shape[0],)
        assert_close(got / scale, w / scale, atol=tol, rtol=tol, what=f"kl_div_forward {name}")
    dlosses = rng.standard_normal(student.shape[0]).astype(np.float32)
    got = cpu.kl_div_backward(dlosses, student, teacher, student_lse, teacher_lse, temperature)
    want_d = ref.kl_div_backward(dlosses.astype(np.float64), s64, t64, want[1], want[2], temperature)
    assert got.dtype == np.float32 and got.shape == student.shape
    assert_close(got, want_d, atol=tol * (1 + 1 / temperature), rtol=10 * tol, what="kl_div_backward")


@settings(deadline=None, max_examples=40)
@given(n=st.integers(1, 9), v=st.sampled_from([1, 2, 3, 7, 8, 15, 16, 17, 33, 64, 257, 2049]),
       temperature=st.sampled_from([0.25, 0.5, 1.0, 2.0, 7.3]), scale=st.sampled_from([0.1, 1.0, 4.0]),
       seed=st.integers(0, 2**31 - 1))
def test_c_matches_the_reference(n, v, temperature, scale, seed):
    rng = np.random.default_rng(seed)
    check_against_reference(logits(rng, n, v, scale), logits(rng, n, v, 2 * scale), temperature, rng)


@pytest.mark.parametrize("scale", [1e2, 1e4])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_huge_logits_stay_finite_and_right(scale, temperature):
    """e^(1e4) overflows float32; every exponent the kernel takes is <= 0 (row maxima subtracted)."""
    rng = np.random.default_rng(int(scale) + int(10 * temperature))
    student, teacher = logits(rng, 5, 40, scale), logits(rng, 5, 40, scale)
    losses, student_lse, teacher_lse = cpu.kl_div_forward(student, teacher, temperature)
    assert np.isfinite(losses).all() and np.isfinite(student_lse).all() and np.isfinite(teacher_lse).all()
    check_against_reference(student, teacher, temperature, rng)


def test_threaded_rows_match_the_reference(threads):
    """N x V past MG_PAR_MIN (131072), so the OpenMP branch runs, on 1 and on 2 threads; and each
    row's result does not depend on how the rows were split between threads."""
    rng = np.random.default_rng(threads)
    student, teacher = logits(rng, 70, 2049, 2.0), logits(rng, 70, 2049, 3.0)
    check_against_reference(student, teacher, 1.0, rng)
    whole = cpu.kl_div_forward(student, teacher, 1.0)[0]
    one_by_one = np.array([cpu.kl_div_forward(student[i:i + 1], teacher[i:i + 1], 1.0)[0][0] for i in range(70)])
    assert np.array_equal(whole, one_by_one)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_c_backward_matches_finite_differences_of_c_forward(temperature):
    rng = np.random.default_rng(7)
    student, teacher = logits(rng, 3, 13, 1.0), logits(rng, 3, 13, 1.5)
    dlosses = rng.standard_normal(3).astype(np.float32)
    _, student_lse, teacher_lse = cpu.kl_div_forward(student, teacher, temperature)
    got = cpu.kl_div_backward(dlosses, student, teacher, student_lse, teacher_lse, temperature)

    def objective(s):              # sum_n dlosses_n kl_n, in float64 from float32 kernel values
        return float(np.dot(dlosses.astype(np.float64), cpu.kl_div_forward(s, teacher, temperature)[0]))
    h = 1e-2
    numeric = np.zeros(student.shape)
    for index in np.ndindex(student.shape):
        plus, minus = student.copy(), student.copy()
        plus[index] += h
        minus[index] -= h
        step = float(plus[index]) - float(minus[index])          # the step float32 actually took
        numeric[index] = (objective(plus) - objective(minus)) / step
    assert_close(got, numeric, atol=2e-4, rtol=2e-3, what=f"kl_div_backward vs finite differences, T {temperature}")


def test_a_teacher_equal_to_its_student_gives_exactly_zero():
    rng = np.random.default_rng(1)
    student = logits(rng, 4, 300, 3.0)
    losses, student_lse, teacher_lse = cpu.kl_div_forward(student, student.copy(), 2.0)
    assert np.array_equal(losses, np.zeros(4, np.float32)) and np.array_equal(student_lse, teacher_lse)
    dstudent = cpu.kl_div_backward(np.ones(4, np.float32), student, student.copy(), student_lse, teacher_lse, 2.0)
    assert np.array_equal(dstudent, np.zeros_like(student))


def test_a_teacher_that_rules_tokens_out_adds_nothing():
    """p_v = 0 (teacher -inf): the term is 0, also where the student's logit is -inf too (0 * inf)."""
    rng = np.random.default_rng(2)
    student, teacher = logits(rng, 3, 9, 1.0), logits(rng, 3, 9, 1.0)
    teacher[:, :3] = -np.inf
    student[:, 0] = -np.inf
    losses, student_lse, teacher_lse = cpu.kl_div_forward(student, teacher, 1.5)
    assert np.isfinite(losses).all()
    want = ref.kl_div_forward(student.astype(np.float64), teacher.astype(np.float64), 1.5)
    assert_close(losses, want[0], atol=1e-5, rtol=1e-5, what="kl with ruled-out tokens")
    grad = cpu.kl_div_backward(np.ones(3, np.float32), student, teacher, student_lse, teacher_lse, 1.5)
    assert np.isfinite(grad).all()
    # where the student gives mass the teacher does not, the loss is infinite (log 0), in both
    student[1, 5] = -np.inf
    assert np.isposinf(cpu.kl_div_forward(student, teacher, 1.5)[0][1])
    assert np.isposinf(ref.kl_div_forward(student.astype(np.float64), teacher.astype(np.float64), 1.5)[0][1])


@pytest.mark.parametrize("kernel", ["reference", "c"])
def test_a_nan_teacher_logit_gives_a_nan_loss(kernel):
    """Regression: the reference dropped every term of a row whose teacher held a NaN (p = NaN is
    not > 0), giving that row a loss of 0; a NaN target must show, as in every other kernel."""
    rng = np.random.default_rng(5)
    student, teacher = logits(rng, 3, 6, 1.0), logits(rng, 3, 6, 1.0)
    teacher[1, 2] = np.nan
    with np.errstate(invalid="ignore"):
        losses = (ref.kl_div_forward(student.astype(np.float64), teacher.astype(np.float64), 1.0)[0]
                  if kernel == "reference" else cpu.kl_div_forward(student, teacher, 1.0)[0])
    assert np.isnan(losses[1]) and np.isfinite(losses[[0, 2]]).all()


def test_bad_arguments_are_refused_before_c():
    x = np.zeros((2, 5), np.float32)
    with pytest.raises(ValueError, match="teacher"):
        cpu.kl_div_forward(x, np.zeros((2, 6), np.float32), 1.0)
    with pytest.raises(ValueError, match="temperature"):
        cpu.kl_div_forward(x, x, 0.0)
    with pytest.raises(ValueError, match="C-contiguous"):
        cpu.kl_div_forward(np.zeros((5, 2), np.float32).T, x, 1.0)
    with pytest.raises(TypeError, match="one dtype"):
        cpu.kl_div_forward(x, x.astype(np.float64), 1.0)
    with pytest.raises(ValueError, match="student_lse"):
        cpu.kl_div_backward(np.zeros(2, np.float32), x, x, np.zeros(3, np.float32), np.zeros(2, np.float32), 1.0)


def test_distillation_step_runs_the_c_kernels(tmp_path, monkeypatch):
    """The trainer's batch_loss on the C backend in float32: the reference kl_div is never called."""
    import os

    from microgpt import backends
    from microgpt.finetune.distill import DistillOptions, DistillTrainer, load_teacher
    from model_dirs import our_run
    from train_helpers import quiet, tiny_config

    teacher_dir = our_run(tmp_path / "teacher", family="llama", max_steps=2)
    model, tokenizer = load_teacher(teacher_dir)
    config = tiny_config(tmp_path, n_layer=1, n_embd=8, n_head=2,
                         tokenizer=os.path.join(teacher_dir, "checkpoints", "step_000002", "tokenizer.bpe"))
    calls = []

    def refuse(*args):
        raise AssertionError("the reference kl_div ran; the C kernel should have")
    monkeypatch.setattr(ref, "kl_div_forward", refuse)
    monkeypatch.setattr(ref, "kl_div_backward", refuse)
    monkeypatch.setattr(cpu, "lib", _Spy(cpu.lib, calls))
    with backends.using("cpu"):
        trainer = DistillTrainer(config, DistillOptions(teacher=teacher_dir, alpha=0.3, temperature=1.0),
                                 model, tokenizer, quiet).setup()
        loss = trainer.batch_loss(trainer.train_loader.next_batch())
        loss.backward()
    assert np.isfinite(loss.item()) and calls == ["kl_div_forward", "kl_div_backward"]


class _Spy:
    """cpu.lib with its kl_div calls recorded (a cffi lib's attributes cannot be replaced)."""

    def __init__(self, lib, calls):
        self._lib, self._calls = lib, calls

    def __getattr__(self, name):
        target = getattr(self._lib, name)
        if not name.startswith("kl_div"):
            return target

        def call(*args):
            self._calls.append(name)
            return target(*args)
        return call
