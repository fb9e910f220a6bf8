"""Shared test settings: hypothesis profiles and helpers to build tensors."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# "ci" (default) keeps the suite quick; HYPOTHESIS_PROFILE=thorough draws many more cases.
settings.register_profile("ci", max_examples=12, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def reference_backend():
    """Run a test on the NumPy reference backend, restoring the previous choice afterwards."""
    from microgpt import backends
    with backends.using("reference") as module:
        yield module


def _cuda_params():
    from microgpt.backends import cuda_runtime as rt
    return ["mock", pytest.param("gpu", marks=[
        pytest.mark.gpu, pytest.mark.skipif(not rt.AVAILABLE, reason=f"no CUDA: {rt.UNAVAILABLE_REASON}")])]


@pytest.fixture(params=_cuda_params())
def cu(request, monkeypatch):
    """The CUDA backend twice: on the NumPy-backed mock (tests/cuda_mock.py, everywhere) and on a
    real GPU with every output buffer poisoned first (marked gpu, skipped without one)."""
    import cuda_mock
    from microgpt.backends import cuda, cuda_runtime as rt
    if request.param == "mock":
        cuda_mock.install(monkeypatch)
    else:
        monkeypatch.setattr(rt, "POISON", True)
    return cuda


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    """Run a C-kernel test on 1 and on 2 OpenMP threads, restoring the count afterwards."""
    from microgpt.backends import cpu
    before = cpu.get_num_threads()
    cpu.set_num_threads(request.param)
    yield request.param
    cpu.set_num_threads(before)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tests on tiny models: torch's thread pool only fights the
    other processes of a shared machine for its cores (a 32-token greedy loop took seconds
    instead of 0.1 s). Used as `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_close(actual, expected, atol, rtol, what=""):
    """|actual - expected| <= atol + rtol*|expected| elementwise; report the worst elements."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    error = np.abs(actual - expected)
    bad = ~(error <= atol + rtol * np.abs(expected))
    if np.any(bad):
        worst = np.argsort(np.where(bad, error, -1).ravel())[::-1][:5]
        rows = [f"  at {np.unravel_index(i, actual.shape)}: got {actual.ravel()[i]:.8g}, "
                f"expected {expected.ravel()[i]:.8g}" for i in worst if bad.ravel()[i]]
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.size} elements out of tolerance "
                             f"(atol {atol}, rtol {rtol})\n" + "\n".join(rows))
