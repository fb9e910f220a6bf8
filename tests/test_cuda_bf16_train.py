"""Training in bf16 mixed precision (`--dtype bf16`): losses within the derived bound of the
float32 run's, float32 weights and checkpoints, and a clear refusal on the CPU.

The GPT runs on "mock" (tests/cuda_mock.py: the bf16 kernels' arithmetic in NumPy) and on
"gpu" (marked gpu, run by benchmarks/gpu_check.sh); its bf16 losses are compared with the
float32 CPU run of the same weights and batches. The bound is backends/cuda_bf16.py's
LOSS_GAP_BOUND (2u = 2^-7 of the loss per step, derived there, fixed before any GPU run).
"""
import numpy as np
import pytest

import cuda_mock
from microgpt import GPT, GPTConfig, backends
from microgpt.backends import cuda_bf16, cuda_runtime as rt
from microgpt.cli import main
from microgpt.errors import ConfigError
from microgpt.train.config import TrainConfig
from microgpt.train.optim import AdamW


@pytest.fixture(params=["mock", pytest.param("gpu", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not rt.AVAILABLE, reason=f"no CUDA: {rt.UNAVAILABLE_REASON}")])])
def device_mode(request, monkeypatch):
    monkeypatch.setattr(backends, "_loaded", dict(backends._loaded))   # the mock's backend stays in this test
    if request.param == "mock":
        return cuda_mock.install(monkeypatch)
    return None


def train(cfg, device, batches, dtype="float32", steps=4):
    model = GPT(cfg, seed=0)
    if device == "cuda":
        model.to("cuda")
    opt = AdamW(model.named_parameters())
    losses = []
    for step in range(steps):
        idx, targets = batches[step % len(batches)]
        with cuda_bf16.matmul_precision(dtype):
            _, loss = model(idx, targets=targets)
            loss.backward()
        opt.step(3e-3)
        opt.zero_grad()
        losses.append(loss.item())
    return model, losses


@pytest.mark.parametrize("family,n_embd,n_head", [("gpt2", 32, 4), ("llama", 32, 4), ("gpt2", 128, 2),
                                                  ("llama", 256, 4)])
def test_bf16_losses_within_the_bound_of_float32(device_mode, family, n_embd, n_head):
    """Head size 8: float32 attention; head size 64: attention on the tensor cores too."""
    cfg = GPTConfig(family=family, vocab_size=97, block_size=24, n_layer=2, n_head=n_head,
                    n_kv_head=n_head // 2 if family == "llama" else None, n_embd=n_embd)
    rng = np.random.default_rng(0)
    batches = [(rng.integers(0, 97, size=(3, 23)), rng.integers(0, 97, size=(3, 23))) for _ in range(2)]
    _, fp32 = train(cfg, "cpu", batches)
    if device_mode is not None:
        device_mode.calls.clear()
    model, bf16 = train(cfg, "cuda", batches, "bf16")
    if device_mode is not None:
        assert "matmul_bf16" in device_mode.calls and "matmul_forward_batched_v6_warptile" not in device_mode.calls
        bf16_attention = n_embd // n_head == 64
        assert ("attention_bf16_forward" in device_mode.calls) == bf16_attention
        assert ("attention_bf16_backward_v1_mma" in device_mode.calls) == bf16_attention
        assert ("attention_forward_v2_flash" in device_mode.calls) != bf16_attention
    gaps = np.abs(np.array(bf16) - np.array(fp32))
    bound = cuda_bf16.LOSS_GAP_BOUND * np.abs(fp32)
    assert np.all(gaps <= bound), f"per-step gaps {gaps} over the bound {bound}"
    assert gaps.max() > 0, "the bf16 run must differ from float32 (its operands were rounded)"
    assert all(p.data.dtype == np.float32 for p in model.parameters())        # float32 master weights


def test_bf16_is_refused_off_cuda(capsys):
    with pytest.raises(ConfigError, match="--device cuda"):
        TrainConfig(dtype="bf16")
    assert main(["train", "--dtype", "bf16", "--max-steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--device cuda" in err and "bf16" in err


def test_trainer_runs_bf16_and_checkpoints_float32(tmp_path, monkeypatch):
    """`microgpt train --device cuda --dtype bf16` end to end (the mock's kernels): the same
    run as float32 on the CPU within the bound at every logged step, float32 checkpoints."""
    mock = cuda_mock.install(monkeypatch)
    monkeypatch.setattr(backends, "_loaded", dict(backends._loaded))
    from microgpt.train.checkpoint import load_model
    from microgpt.train.trainer import train as run_training
    from train_helpers import losses, tiny_config          # here: the other tests need no tokenizer core
    fp32 = run_training(tiny_config(tmp_path, out="fp32", max_steps=4))
    mock.calls.clear()
    bf16 = run_training(tiny_config(tmp_path, out="bf16", device="cuda", dtype="bf16", max_steps=4))
    assert "matmul_bf16" in mock.calls
    assert not cuda_bf16.active()                              # the scope ended with the step
    ours, theirs = losses(bf16["run_dir"]), losses(fp32["run_dir"])
    assert [s for s, _ in ours] == [s for s, _ in theirs] == [1, 2, 3, 4]
    for (step, a), (_, b) in zip(ours, theirs):
        assert abs(a - b) <= cuda_bf16.LOSS_GAP_BOUND * abs(b), f"step {step}: {a} vs float32 {b}"
    model = load_model(bf16["run_dir"])[0]
    assert all(np.asarray(a).dtype == np.float32 for a in model.state_dict().values())
