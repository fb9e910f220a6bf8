"""The backend contract: every backend defines every kernel; the choice is made in one place."""
import inspect

import numpy as np
import pytest

from microgpt import backends
from microgpt.backends import KERNELS, reference
from microgpt.errors import BackendError
from microgpt.tensor import Tensor


def test_reference_defines_every_kernel_with_the_documented_arguments():
    for name, (signature, _) in KERNELS.items():
        fn = getattr(reference, name)
        documented = signature.split("(", 1)[1].split(")", 1)[0]
        documented = [a.strip() for a in documented.split(",") if a.strip()]
        assert list(inspect.signature(fn).parameters) == documented, name


@pytest.mark.parametrize("name", backends.available())
def test_every_available_backend_honours_the_contract(name):
    module = backends.use(name) if name != "cuda" else backends._load(name)
    missing = [k for k in KERNELS if not callable(getattr(module, k, None))]
    assert not missing


def test_unknown_backend_and_device_are_clear_errors():
    with pytest.raises(BackendError, match="unknown backend 'tpu'"):
        backends.use("tpu")
    with pytest.raises(BackendError, match="unknown device"):
        backends.get("tpu")


def test_environment_variable_forces_the_backend(monkeypatch):
    monkeypatch.setattr(backends, "_chosen", {})
    monkeypatch.setenv("MICROGPT_BACKEND", "reference")
    assert backends.current("cpu") == "reference"
    monkeypatch.setattr(backends, "_chosen", {})
    monkeypatch.setenv("MICROGPT_BACKEND", "nonsense")
    with pytest.raises(BackendError, match="MICROGPT_BACKEND='nonsense'"):
        backends.get("cpu")


def test_using_restores_the_previous_choice():
    before = backends.current("cpu")
    with backends.using("reference"):
        assert backends.current("cpu") == "reference"
        assert Tensor(np.ones(2)).backend is reference
    assert backends.current("cpu") == before


def test_cuda_is_reported_unavailable_without_a_gpu():
    if "cuda" in backends.available():
        pytest.skip("a GPU is present")
    with pytest.raises(BackendError, match="not available"):
        backends.get("cuda")
