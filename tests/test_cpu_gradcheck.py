"""The whole gradient-check suite, re-run on the C backend: float32 C against float64 reference.

tests/test_gradcheck.py checks every op in OPS (CHECKS maps each op to its test) against
float64 finite differences on the reference backend. Finite differences mean nothing in
float32, so here each of those tests runs with its `gradcheck` swapped for `cross_check`:
the same function on the same hypothesis-drawn inputs is evaluated twice —

    reference backend, float64:  out64, and the gradients of sum(out * R) by backward()
    C backend, float32 copies:   out32, and the same gradients

— and out32/grads32 must match out64/grads64 within float32 tolerances (atol + rtol*|ref|,
the worst elements printed). As the suite covers every op, so does this file; an op added
without a gradient check fails test_gradcheck.py's own enumeration test.
"""
import numpy as np
import pytest

import test_gradcheck as suite
from conftest import assert_close
from microgpt import backends
from microgpt.tensor import Tensor

cpu = pytest.importorskip("microgpt.backends.cpu")
pytestmark = pytest.mark.skipif(not cpu.AVAILABLE, reason="C kernels not built")
ATOL, RTOL = 2e-4, 2e-3


def _run(fn, inputs, projection):
    """Forward, then backward with upstream gradient `projection`; host copies of all."""
    for t in inputs:
        t.zero_grad()
    out = fn(*inputs)
    out.backward(Tensor(projection.astype(out.dtype), dtype=out.dtype))
    grads = [None if t.grad is None else np.array(t.backend.to_numpy(t.grad), dtype=np.float64)
             for t in inputs]
    return out.numpy().astype(np.float64), grads


def cross_check(fn, inputs, name=None, seed=0, **_ignored):
    """Stands in for gradcheck: C float32 against reference float64 on the same inputs."""
    name = name or getattr(fn, "__name__", "fn")
    with backends.using("reference"):
        out64 = fn(*inputs).numpy()
        projection = np.random.default_rng(seed).standard_normal(out64.shape)
        out64, grads64 = _run(fn, inputs, projection)
    with backends.using("cpu"):
        inputs32 = [Tensor(t.numpy().astype(np.float32), dtype=np.float32, requires_grad=t.requires_grad)
                    for t in inputs]
        out32, grads32 = _run(fn, inputs32, projection)
    scale = max(1.0, float(np.max(np.abs(out64), initial=0.0)))
    assert_close(out32, out64, ATOL * scale, RTOL, what=f"{name} forward (C float32 vs reference float64)")
    for i, (g32, g64) in enumerate(zip(grads32, grads64)):
        if g64 is None or g32 is None:
            assert g32 is None and g64 is None or not inputs[i].requires_grad, f"{name}: input {i} grad"
            continue
        gscale = max(1.0, float(np.max(np.abs(g64), initial=0.0)))
        assert_close(g32, g64, ATOL * gscale, RTOL, what=f"{name} gradient of input {i}")
    return True


SUITE_TESTS = sorted(set(suite.CHECKS.values()), key=lambda test: test.__name__)


@pytest.mark.parametrize("test", SUITE_TESTS, ids=[t.__name__ for t in SUITE_TESTS])
def test_suite_on_c_backend(test, monkeypatch):
    monkeypatch.setattr(suite, "gradcheck", cross_check)
    test()


def test_every_op_is_covered():
    from microgpt.op_registry import OPS      # filled: the suite imported ops and ops_fused
    assert set(OPS) <= set(suite.CHECKS), sorted(set(OPS) - set(suite.CHECKS))
