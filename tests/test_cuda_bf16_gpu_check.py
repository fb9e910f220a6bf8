"""benchmarks/gpu_check.sh and bench_gpu_bf16.py, checked without a GPU: the script parses and
imports every entry point in its dry mode, its test list covers every GPU-marked test file,
and the bf16 benchmark's training loops and loss criterion work (on the CUDA mock and on
PyTorch's CPU)."""
import glob
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import cuda_mock
from microgpt import GPTConfig, backends

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.sh")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def test_dry_run_parses_imports_and_collects():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run(["bash", SCRIPT, "--dry"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "dry run: ok" in out.stdout
    for part in ("bf16gemm", "step", "matmul", "attention"):
        assert f"  {part}: " in out.stdout


def test_every_gpu_marked_test_file_is_run():
    with open(SCRIPT) as f:
        text = f.read()
    listed = set(re.findall(r"tests/test_\w+\.py", text))
    marked = {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "tests", "test_*.py"))
              if re.search(r"pytest\.mark\.gpu[,\]\s]", open(p).read())}
    assert marked <= listed, f"gpu_check.sh does not run {sorted(marked - listed)}"


def test_bf16_loss_criterion():
    import bench_gpu_bf16
    fp32 = [10.0, 9.0, 8.0]
    assert bench_gpu_bf16.bf16_gaps([10.05, 9.0, 8.0], fp32)[0]
    passed, gap, at, bound = bench_gpu_bf16.bf16_gaps([10.0, 9.0, 8.07], fp32)
    assert not passed and at == 2 and gap == pytest.approx(0.07) and bound == pytest.approx(8.0 / 128)


def test_training_loops_of_the_step_section(monkeypatch):
    """The four runs of the step section on a tiny GPT-2: ours on the CUDA mock (float32, bf16),
    the PyTorch peer on the CPU (float32, autocast bf16), all from the same weights."""
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(backends, "_loaded", dict(backends._loaded))
    cuda_mock.install(monkeypatch)
    import bench_gpu_bf16
    from gpu_check import make_batches
    config = GPTConfig(family="gpt2", vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)
    batches = make_batches(config.vocab_size, 2, config.block_size)
    state, fp32, _ = bench_gpu_bf16.train_ours(config, batches, 3, 1e-3, "float32")
    _, bf16, _ = bench_gpu_bf16.train_ours(config, batches, 3, 1e-3, "bf16")
    peer32, _ = bench_gpu_bf16.train_torch(torch, config, state, batches, 3, 1e-3, autocast=False, device="cpu")
    peer16, _ = bench_gpu_bf16.train_torch(torch, config, state, batches, 3, 1e-3, autocast=True, device="cpu")
    np.testing.assert_allclose(fp32, peer32, rtol=0, atol=1e-4)     # same model, same float32 arithmetic
    assert bench_gpu_bf16.bf16_gaps(bf16, fp32)[0]
    assert bench_gpu_bf16.bf16_gaps(peer16, peer32)[0]               # PyTorch's bf16 keeps the bound too


def test_kernel_table_keeps_device_kernels_by_time():
    import types

    import bench_gpu_bf16

    def event(key, device, us, count):
        return types.SimpleNamespace(key=key, device_type=f"DeviceType.{device}", self_device_time_total=us,
                                     count=count)
    prof = types.SimpleNamespace(key_averages=lambda: [event("aten::mm", "CPU", 900.0, 3),
                                                       event("gemm|small", "CUDA", 250.0, 4),
                                                       event("matmul_bf16_kernel", "CUDA", 750.0, 12)])
    lines = bench_gpu_bf16.kernel_table(None, prof, "ours bf16")
    assert lines[0].startswith("### ours bf16: 1.0 ms of kernels in one step, 2 kernels")
    assert lines[4] == "| `matmul_bf16_kernel` | 12 | 0.75 | 75.0 % |"
    assert lines[5] == "| `gemm/small` | 4 | 0.25 | 25.0 % |"


def test_kernels_once_passes_on_the_mock(monkeypatch):
    """What gpu_check.sh runs under compute-sanitizer: here through the mock, so its checks and
    its calls are right before the device runs it."""
    monkeypatch.setattr(backends, "_loaded", dict(backends._loaded))
    cuda_mock.install(monkeypatch)
    import bench_gpu_bf16
    assert bench_gpu_bf16.kernels_once() == 0
