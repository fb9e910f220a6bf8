"""Tensor bookkeeping: accumulation, broadcasting in backward, no_grad, detach, clear errors,
and backward() refusing a graph that an earlier backward() freed."""
import numpy as np
import pytest

from microgpt import ops_fused
from microgpt.errors import DTypeError, GraphError, MicrogptError, ShapeError
from microgpt.tensor import Tensor, no_grad

pytestmark = pytest.mark.usefixtures("reference_backend")


def test_a_tensor_used_twice_gets_both_contributions():
    x = Tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = (x * x + x).sum()              # dy/dx = 2x + 1
    y.backward()
    np.testing.assert_allclose(x.numpy(), [1, 2, 3])
    np.testing.assert_allclose(x.grad, [3.0, 5.0, 7.0])


def test_backward_accumulates_across_calls_until_zeroed():
    x = Tensor([2.0], requires_grad=True)
    for _ in range(3):
        (x * 4.0).sum().backward()
    np.testing.assert_allclose(x.grad, [12.0])
    x.zero_grad()
    (x * 4.0).sum().backward()
    np.testing.assert_allclose(x.grad, [4.0])


def test_shared_upstream_gradient_is_not_corrupted_by_accumulation():
    # add's backward hands the same array to both parents; a later in-place accumulation
    # into one parent must not leak into the other.
    a = Tensor([1.0, 1.0], requires_grad=True)
    b = Tensor([1.0, 1.0], requires_grad=True)
    s = a + b
    loss = (s * 2.0).sum() + (a * 10.0).sum()
    loss.backward()
    np.testing.assert_allclose(a.grad, [12.0, 12.0])
    np.testing.assert_allclose(b.grad, [2.0, 2.0])


def test_broadcast_gradients_are_summed_to_the_input_shape():
    a = Tensor(np.ones((2, 3)), requires_grad=True)
    b = Tensor(np.ones((3,)), requires_grad=True)
    c = Tensor(np.ones((2, 1)), requires_grad=True)
    ((a * b) + c).sum().backward()
    assert b.grad.shape == (3,) and c.grad.shape == (2, 1)
    np.testing.assert_allclose(b.grad, [2.0, 2.0, 2.0])
    np.testing.assert_allclose(c.grad, [[3.0], [3.0]])


def test_no_grad_and_detach_record_nothing():
    x = Tensor([1.0], requires_grad=True)
    with no_grad():
        y = x * 2.0
    assert not y.requires_grad
    z = x.detach() * 2.0
    assert not z.requires_grad
    with pytest.raises(ShapeError, match="does not require gradients"):
        z.sum().backward()


def test_default_dtype_is_float32_and_float64_is_kept():
    assert Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor(np.zeros(2)).dtype == np.float64
    assert (Tensor(np.zeros(2)) * 2.0).dtype == np.float64


def test_backward_on_a_non_scalar_needs_a_gradient():
    x = Tensor(np.ones((2, 2)), requires_grad=True)
    with pytest.raises(ShapeError, match=r"non-scalar tensor of shape \(2, 2\)"):
        (x * 2.0).backward()
    with pytest.raises(ShapeError, match="gradient shape"):
        (x * 2.0).backward(np.ones(3))
    (x * 2.0).backward(np.ones((2, 2)))
    np.testing.assert_allclose(x.grad, 2 * np.ones((2, 2)))


def test_errors_name_the_op_and_the_shapes():
    with pytest.raises(ShapeError, match=r"add: shapes \(2, 3\) and \(4,\) do not broadcast"):
        Tensor(np.ones((2, 3))) + Tensor(np.ones(4))
    with pytest.raises(ShapeError, match=r"matmul: shapes \(2, 3\) and \(2, 3\)"):
        Tensor(np.ones((2, 3))) @ Tensor(np.ones((2, 3)))
    with pytest.raises(DTypeError, match="dtypes differ"):
        Tensor(np.ones(2, dtype=np.float32)) + Tensor(np.ones(2, dtype=np.float64))
    with pytest.raises(ShapeError, match="cannot reshape"):
        Tensor(np.ones(6)).reshape(4, 2)
    with pytest.raises(ShapeError, match="ids must lie in"):
        ops_fused.embedding(np.array([0, 5]), Tensor(np.ones((3, 2)), requires_grad=True))
    with pytest.raises(ShapeError, match="targets must lie in"):
        ops_fused.cross_entropy(Tensor(np.ones((2, 3))), np.array([0, 3]))


def test_deep_graph_does_not_hit_the_recursion_limit():
    x = Tensor([1.0], requires_grad=True)
    y = x
    for _ in range(5000):
        y = y + 1.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [1.0])


def test_backward_through_a_freed_graph_raises_instead_of_doing_nothing():
    x = Tensor([1.0, 2.0], requires_grad=True)
    loss = (x * x).sum()
    loss.backward()
    np.testing.assert_allclose(x.grad, [2.0, 4.0])
    with pytest.raises(GraphError, match="second time"):
        loss.backward()
    np.testing.assert_allclose(x.grad, [2.0, 4.0])           # nothing was added
    assert isinstance(GraphError("x"), (MicrogptError, RuntimeError))


def test_a_branch_whose_shared_part_was_freed_raises_too():
    x = Tensor([3.0], requires_grad=True)
    h = x * 2.0                        # shared by both losses
    a, b = (h * 5.0).sum(), (h * 7.0).sum()
    a.backward()
    with pytest.raises(GraphError):
        b.backward()                   # would silently miss the gradient through h
    np.testing.assert_allclose(x.grad, [10.0])
    x.zero_grad()
    (x * 4.0).sum().backward()         # a new graph is fine
    np.testing.assert_allclose(x.grad, [4.0])
