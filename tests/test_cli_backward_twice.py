"""Two defects outside the commands proper that a new user met through them: backward()
through a graph that an earlier backward() freed, and the loss curve's dependency.

(The autograd check lives here, beside the other regression tests of the hardening pass.)"""
import ast
import os

import numpy as np
import pytest

from microgpt.errors import GraphError, MicrogptError
from microgpt.tensor import Tensor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.usefixtures("reference_backend")
def test_backward_through_a_freed_graph_raises_instead_of_doing_nothing():
    x = Tensor([1.0, 2.0], requires_grad=True)
    loss = (x * x).sum()
    loss.backward()
    np.testing.assert_allclose(x.grad, [2.0, 4.0])
    with pytest.raises(GraphError, match="second time"):
        loss.backward()
    np.testing.assert_allclose(x.grad, [2.0, 4.0])           # nothing was added
    assert isinstance(GraphError("x"), (MicrogptError, RuntimeError))


@pytest.mark.usefixtures("reference_backend")
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


def test_matplotlib_is_a_run_time_dependency():
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    call = next(node for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup")
    requires = next(k.value for k in call.keywords if k.arg == "install_requires")
    names = [ast.literal_eval(e).split(">")[0].split("=")[0] for e in requires.elts]
    assert "matplotlib" in names
