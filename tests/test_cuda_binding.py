"""The CUDA binding's behaviour around the kernels: availability, errors, memory, DeviceArray.

Runs anywhere: without a GPU it checks that the backend reports itself unavailable (and
that microgpt still imports); the rest uses tests/cuda_mock.py in place of the library.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import cuda_mock
from microgpt import backends
from microgpt.backends import cuda, cuda_build, cuda_runtime as rt
from microgpt.errors import BackendError, DTypeError, ShapeError


@pytest.mark.skipif(rt.AVAILABLE, reason="a GPU is present")
def test_unavailable_without_gpu():
    assert "cuda" not in backends.available()
    assert not cuda.AVAILABLE and cuda.UNAVAILABLE_REASON
    with pytest.raises(BackendError, match="not available"):
        backends.get("cuda")
    with pytest.raises(BackendError, match="not available"):
        rt.call("cuda_synchronize")


def test_import_with_cuda_disabled():
    code = "import microgpt, microgpt.backends as b; from microgpt.backends import cuda; print(cuda.AVAILABLE)"
    env = dict(os.environ, MICROGPT_CUDA="0", PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_contract_is_complete():
    missing = [k for k in backends.KERNELS if not callable(getattr(cuda, k, None))]
    assert not missing


def test_cdef_matches_header():
    cdef = cuda_build.read_cdef()
    for name in ("gemm", "attention_forward_v2_flash", "adamw_update", "cuda_malloc"):
        assert f" {name}(" in cdef


def test_cuda_error_names_the_kernel(monkeypatch):
    mock = cuda_mock.install(monkeypatch)
    monkeypatch.setattr(mock, "gelu_forward", lambda *args: 700)
    x = cuda.asarray(np.ones(3), np.float32)
    with pytest.raises(BackendError, match="gelu_forward: mock CUDA error"):
        cuda.gelu_forward(x)


def test_device_array_basics(monkeypatch):
    cuda_mock.install(monkeypatch)
    a = cuda.asarray(np.arange(12.0).reshape(3, 4), np.float32)
    assert (a.shape, a.ndim, a.size, a.device, a.dtype) == ((3, 4), 2, 12, "cuda", np.float32)
    r = cuda.reshape(a, (4, 3))
    assert r.addr == a.addr and r.block is a.block          # a view sharing the buffer
    with pytest.raises(BackendError, match="to_numpy"):
        np.asarray(a)
    with pytest.raises(DTypeError):
        cuda.exp(cuda.asarray(np.arange(3), np.int64))
    with pytest.raises(ShapeError):
        cuda.add(a, cuda.zeros((5,), np.float32))


def test_pool_reuses_freed_blocks(monkeypatch):
    mock = cuda_mock.install(monkeypatch)
    a = cuda.zeros((1000,), np.float32)
    addr = a.addr
    del a
    b = cuda.zeros((990,), np.float32)                   # same size class
    assert b.addr == addr
    assert mock.calls.count("cuda_malloc") == 1
    assert cuda.memory_stats()["in_use"] >= 990 * 4
