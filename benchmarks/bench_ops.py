"""Forward + backward of one GPT block: microgpt's backends vs PyTorch CPU eager.

The block is GPT-2's (LayerNorm, fused-qkv attention, GELU MLP) at (B, T, C) = (16, 256, 384),
6 heads, the shape of the "small" preset. Both sides start from identical weights and input
and run forward, then backward of sum(out * R); the check compares the input gradient.
Rows: our NumPy reference backend, and our C backend when it is built.

    python benchmarks/bench_ops.py [--quick] [--json FILE]
"""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "tests")]

import harness  # noqa: E402
from microgpt import backends  # noqa: E402
from microgpt.nn import Block, GPTConfig  # noqa: E402
from microgpt.tensor import Tensor  # noqa: E402


def make_case(backend_name, b, t, c, n_head, repeats):
    import torch
    import torch_gpt
    config = GPTConfig(family="gpt2", vocab_size=64, block_size=t, n_layer=1, n_head=n_head, n_embd=c)
    rng = np.random.default_rng(0)
    block = Block(config, rng, 0.02, np.float32)
    x_host = rng.standard_normal((b, t, c)).astype(np.float32)
    upstream = rng.standard_normal((b, t, c)).astype(np.float32)
    params = {f"transformer.h.0.{name}": torch.tensor(p.numpy(), requires_grad=True)
              for name, p in block.named_parameters()}
    x_torch = torch.tensor(x_host, requires_grad=True)
    upstream_torch = torch.tensor(upstream)

    def ours():
        with backends.using(backend_name):
            x = Tensor(x_host, requires_grad=True)
            block.zero_grad()
            block(x).backward(upstream)
            return x.grad

    def peer():
        x_torch.grad = None
        for p in params.values():
            p.grad = None
        torch_gpt.block_forward(params, config, x_torch, 0).backward(upstream_torch)
        return x_torch.grad

    def check():
        ours_grad, peer_grad = np.asarray(ours()), peer().numpy()
        err = np.abs(ours_grad - peer_grad).max() / np.abs(peer_grad).max()
        if err > 1e-3:
            raise AssertionError(f"{backend_name}: input gradient differs from PyTorch (rel. error {err:.2e})")

    return harness.Case(name=f"block fwd+bwd {backend_name} B{b} T{t} C{c}", ours=ours, peer=peer,
                        peer_name="torch eager", unit="ms", check=check, repeats=repeats)


def main():
    args = harness.parse_args(__doc__.splitlines()[0])
    import torch
    torch.set_num_threads(os.cpu_count())
    b, t, c, nh, repeats = (4, 128, 384, 6, 3) if args.quick else (16, 256, 384, 6, 5)
    names = [name for name in ("reference", "cpu") if name in backends.available()]
    cases = [make_case(name, b, t, c, nh, repeats) for name in names]
    harness.run_cases(cases, args, title="GPT block forward+backward")


if __name__ == "__main__":
    main()
