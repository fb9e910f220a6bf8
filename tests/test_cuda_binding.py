"""The CUDA binding's behaviour around the kernels: availability, errors, memory, DeviceArray.

Runs anywhere: without a GPU it checks that the backend reports itself unavailable (and
that microgpt still imports); the rest uses tests/cuda_mock.py in place of the library,
including a hypothesis test of broadcasting, reductions, permutes and slicing on random shapes.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import cuda_mock
from microgpt import backends
from microgpt.backends import cuda, cuda_build, cuda_runtime as rt, reference as ref
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
    for name in ("matmul_forward_batched", "attention_forward_v2_flash", "adamw_update", "cuda_malloc"):
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


# --- the binding's shape logic on random shapes (hypothesis), on the mock library ---------------------

_shapes = st.lists(st.integers(1, 4), min_size=0, max_size=4).map(tuple)


@st.composite
def broadcast_pair(draw):
    """Two shapes that broadcast: drop leading axes and set some sizes to 1."""
    full = draw(_shapes)
    def part():
        cut = draw(st.integers(0, len(full)))
        return tuple(1 if draw(st.booleans()) else n for n in full[cut:])
    return part(), part()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pair=broadcast_pair(), seed=st.integers(0, 2**16))
def test_broadcasting_and_reductions_random(monkeypatch, pair, seed):
    cuda_mock.install(monkeypatch)
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(pair[0]).astype(np.float32)
    b = rng.standard_normal(pair[1]).astype(np.float32) + 3
    da, db = cuda.asarray(a, np.float32), cuda.asarray(b, np.float32)
    for name in ("add", "sub", "mul", "div"):
        np.testing.assert_allclose(cuda.to_numpy(getattr(cuda, name)(da, db)), getattr(ref, name)(a, b), rtol=1e-6)
    out = ref.add(a, b)
    g = rng.standard_normal(out.shape).astype(np.float32)
    for shape in pair:
        np.testing.assert_allclose(cuda.to_numpy(cuda.sum_to_shape(cuda.asarray(g, np.float32), shape)),
                                   ref.sum_to_shape(g, shape), rtol=1e-5, atol=1e-6)
    if a.ndim:
        axes = tuple(sorted(set(rng.integers(0, a.ndim, size=rng.integers(1, a.ndim + 1)).tolist())))
        for keep in (True, False):
            np.testing.assert_allclose(cuda.to_numpy(cuda.sum(da, axes, keep)), ref.sum(a, axes, keep), rtol=1e-5,
                                       atol=1e-6)
            np.testing.assert_allclose(cuda.to_numpy(cuda.max(da, axes, keep)), ref.max(a, axes, keep))
        perm = tuple(rng.permutation(a.ndim).tolist())
        np.testing.assert_array_equal(cuda.to_numpy(cuda.permute(da, perm)), ref.permute(a, perm))
        index = tuple(slice(int(rng.integers(0, n)), None, int(rng.choice([1, 2, -1]))) for n in a.shape)
        np.testing.assert_array_equal(cuda.to_numpy(cuda.getitem(da, index)), ref.getitem(a, index))
