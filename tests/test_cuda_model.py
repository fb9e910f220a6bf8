"""The same GPT, unchanged, trained on the "cuda" device and on the CPU: identical losses.

This is the device-agnosticism check of issue 4: `GPT(...).to("cuda")` with the trainer's
AdamW, for both model families (GPT-2 with learned positions; Llama with RoPE, RMSNorm,
SwiGLU and grouped-query attention), plus KV-cache decoding against a full forward pass.
Runs on "mock" (tests/cuda_mock.py in place of the library, any machine) and on "gpu"
(marked gpu; the real kernels, run by benchmarks/gpu_check.sh).
"""
import numpy as np
import pytest

import cuda_mock
from microgpt import GPT, GPTConfig, no_grad
from microgpt.backends import cuda_runtime as rt
from microgpt.train.optim import AdamW


@pytest.fixture(params=["mock", pytest.param("gpu", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not rt.AVAILABLE, reason=f"no CUDA: {rt.UNAVAILABLE_REASON}")])])
def device_mode(request, monkeypatch):
    if request.param == "mock":
        cuda_mock.install(monkeypatch)
    return request.param


def config(family):
    return GPTConfig(family=family, vocab_size=97, block_size=24, n_layer=2, n_head=4,
                     n_kv_head=2 if family == "llama" else None, n_embd=32)


def train(cfg, device, idx, targets, steps=3):
    model = GPT(cfg, seed=0)
    if device == "cuda":
        model.to("cuda")
    opt = AdamW(model.named_parameters())
    losses = []
    for _ in range(steps):
        _, loss = model(idx, targets=targets)
        loss.backward()
        opt.step(1e-3)
        opt.zero_grad()
        losses.append(loss.item())
    return model, losses


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_training_matches_cpu(device_mode, family):
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, 97, size=(3, 23)), rng.integers(0, 97, size=(3, 23))
    targets[0, :5] = -100                                         # ignored positions
    cfg = config(family)
    cpu_model, cpu_losses = train(cfg, "cpu", idx, targets)
    gpu_model, gpu_losses = train(cfg, "cuda", idx, targets)
    assert gpu_model.parameters()[0].device == "cuda"
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=0, atol=1e-4)
    # Norm-wise per tensor: AdamW's first steps move each weight by about lr * sign(g), so a
    # gradient that is rounding noise on both sides may flip one element; the tensor stays close.
    for (name, a), b in zip(cpu_model.state_dict().items(), gpu_model.state_dict().values()):
        assert np.linalg.norm(b - a) <= 1e-3 * np.linalg.norm(a), name


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_kv_cache_decoding_matches_full_forward(device_mode, family):
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 97, size=(2, 9))
    model = GPT(config(family), seed=0).to("cuda")
    model.eval()
    with no_grad():
        full, _ = model(idx)
        cache = model.new_kv_cache(2)
        first, _ = model(idx[:, :6], kv_cache=cache)
        steps = [model(idx[:, t:t + 1], kv_cache=cache)[0] for t in range(6, 9)]
    got = np.concatenate([first.numpy()] + [s.numpy() for s in steps], axis=1)
    np.testing.assert_allclose(got, full.numpy(), rtol=0, atol=1e-4)
