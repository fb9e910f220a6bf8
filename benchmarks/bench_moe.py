"""Mixture-of-experts speed: the grouped expert kernels vs the per-expert loop, and a whole MoE
training step vs PyTorch eager.

Rows (targets from issue 17, fixed before the first full run; ratio > 1 means ours is better):

  moe grouped vs loop  one MoE layer forward + backward (router, 3 expert projections, combine,
                       aux and z losses; gradients of the input and every weight) at the
                       "small" width: C 384, 8 SwiGLU experts of hidden 512, top-2, over the
                       tokens of a "small" batch (16 x 256 = 4096 tokens, 8192 expert rows).
                       Ours: MoEMLP.forward, the grouped kernels (moe_permute, grouped_linear x 3,
                       moe_combine: each one call over all experts). Peer: MoEMLP.forward_loop,
                       the same layer as a Python loop over the experts calling the ordinary
                       linear and the same combine kernel, as transformers and minimind write
                       it. Outputs and gradients checked equal first. Target >= 3.0x.
  moe step             tokens/s of a whole training step (forward, CE loss + 0.01 x aux loss,
                       backward, AdamW) of the "small" preset made MoE (llama family, 6 layers
                       x 384 channels, 6 heads, vocab 8192, every MLP 8 experts of hidden 512,
                       top-2: the active MLP parameters of the dense 1024-hidden model), batch
                       16 x 256. Peer: the same model and weights in PyTorch eager with the
                       top-k MoE written with torch ops as litgpt and minimind write it
                       (softmax, topk, a loop over experts with index_select / index_add_, the
                       Switch aux loss), torch.optim.AdamW. Both sides train on the same
                       batches; their losses must agree within 1e-3 at every step. Target >= 1.0x.

A third row, `moe roofline` (no target), bounds the first: ours is the layer's nine expert
products (gate, up, down forward; dx and dw of each backward) as nine dense GEMMs over all R
rows with one weight each (the C backend's linear_forward / linear_backward, matmul.c's
threaded GEMM at its best shape), the time a grouped kernel would take if grouping cost
nothing and every other op of the layer were free; peer is the same per-expert loop as the
first row. Its ratio (loop / floor) is the best `moe grouped vs loop` any grouped kernel could
reach in that run, and its GFLOP/s the GEMM rate that sets it. FLOPs of one layer call:
9 x 2 R C H (the router's 3 x 2 N C E is < 0.3% of it, left out).

The grouped matmul's C rungs raced on the layer's nine products, beside the same products
as dense GEMMs (printed, not written to results; results/moe.md quotes its run):

    python benchmarks/bench_moe.py --rungs [--threads N]

Both rows run in one process, sides alternated by the harness (no memory is measured). The two
libraries then share one libgomp and one wait policy: PASSIVE after a 20,000-iteration spin (what
`microgpt generate` sets, cli.openmp_environment). Until 2026-12-01 it was pure PASSIVE, under
which PyTorch's eager MoE step ran ~14 % slower than with the spin (a --quick A/B at load ~1:
2017 vs 2345 tokens/s; ours 3496 vs 3242, since our training keeps pure PASSIVE by default):
the spin gives the peer about its own default and costs ours a little.

    python benchmarks/bench_moe.py [--quick] [--json FILE] [--threads N]

Dense vs MoE at equal active parameters (results/moe.md says how the two runs were made):

    python benchmarks/bench_moe.py --curve DENSE_RUN MOE_RUN --png results/moe_vs_dense.png

reads both runs' metrics.jsonl, draws val loss against the step for both, and prints the
table of val loss and bits per byte at every evaluation.
"""
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before any OpenMP runtime starts
os.environ.setdefault("GOMP_SPINCOUNT", "20000")      # = cli.DECODE_SPINCOUNT (the docstring says why)

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "tests")]

import harness  # noqa: E402

MOE = dict(n_experts=8, n_experts_per_token=2, moe_hidden=512, router_aux_loss_coef=0.01,
           router_z_loss_coef=0.0)
SMALL = dict(family="llama", n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=8192, **MOE)
QUICK = dict(SMALL, n_layer=2)
LR, BETAS, EPS = 1e-3, (0.9, 0.95), 1e-8           # no weight decay: the same update both sides


def set_threads(n):
    import torch
    from microgpt.backends import cpu
    torch.set_num_threads(n)
    if cpu.AVAILABLE:
        cpu.set_num_threads(n)


# --- moe grouped vs loop -------------------------------------------------------------------

def layer_case(tokens, repeats):
    from microgpt.nn import GPT, GPTConfig
    from microgpt.tensor import Tensor
    layer = GPT(GPTConfig(**dict(SMALL, n_layer=1)), seed=0).blocks[0].mlp
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, tokens, SMALL["n_embd"])).astype(np.float32)
    upstream = Tensor(rng.standard_normal(x.shape).astype(np.float32))

    def run(forward):
        def call():
            for p in layer.parameters():
                p.zero_grad()
            xt = Tensor(x, requires_grad=True)
            out = forward(xt)
            ((out * upstream).sum() + layer.aux_loss + layer.z_loss).backward()
            return [out.numpy(), np.array(xt.grad)] + [np.array(p.grad) for p in layer.parameters()]
        return call

    grouped, loop = run(layer.forward), run(layer.forward_loop)

    def check():
        for a, b in zip(grouped(), loop()):
            scale = max(float(np.abs(b).max()), 1e-6)
            if float(np.abs(a - b).max()) > 1e-4 * scale:
                raise RuntimeError("the grouped layer and its loop rung disagree")
    return harness.Case(f"moe grouped vs loop (C 384, 8 experts x 512, top-2, {tokens} tokens, fwd+bwd)",
                        grouped, loop, peer_name="ours, per-expert Python loop", unit="ms", check=check,
                        repeats=repeats, warmup=1)


def layer_flops(tokens):
    """Multiply-add FLOPs of the layer's expert products, forward + backward: 9 x 2 R C H."""
    rows = tokens * MOE["n_experts_per_token"]
    return 9 * 2 * rows * SMALL["n_embd"] * MOE["moe_hidden"]


def roofline_case(tokens, loop, repeats):
    """The layer's nine expert products as dense GEMMs over all R rows (see the docstring)."""
    from microgpt.backends import cpu
    rows, c, h = tokens * MOE["n_experts_per_token"], SMALL["n_embd"], MOE["moe_hidden"]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((rows, c)).astype(np.float32)
    w_gate, w_up = (rng.standard_normal((h, c)).astype(np.float32) for _ in range(2))
    w_down = rng.standard_normal((c, h)).astype(np.float32)
    d_out = rng.standard_normal((rows, c)).astype(np.float32)

    def floor():
        gate = cpu.linear_forward(x, w_gate, None)
        up = cpu.linear_forward(x, w_up, None)
        cpu.linear_forward(gate, w_down, None)            # the down projection of the hidden rows
        d_hidden = cpu.linear_backward(d_out, gate, w_down, False)[0]
        cpu.linear_backward(d_hidden, x, w_gate, False)
        cpu.linear_backward(d_hidden, x, w_up, False)
        return up
    return harness.Case(f"moe roofline (the layer's 9 expert products as dense GEMMs, {tokens} tokens)",
                        floor, loop, peer_name="ours, per-expert Python loop", unit="ms",
                        repeats=repeats, warmup=1)


def race_rungs(tokens, calls=7):
    """Median / min ms and GFLOP/s of the layer's nine expert products through each grouped
    rung (csrc/moe.c) and as dense GEMMs, the rungs and the dense side alternated."""
    import statistics
    import time
    from microgpt.backends import cpu, cpu_moe
    rows, c, h, e = tokens * MOE["n_experts_per_token"], SMALL["n_embd"], MOE["moe_hidden"], MOE["n_experts"]
    rng = np.random.default_rng(0)
    offsets = np.concatenate([[0], np.cumsum(rng.multinomial(rows, np.ones(e) / e))]).astype(np.int64)
    x = rng.standard_normal((rows, c)).astype(np.float32)
    w_gate, w_up = (rng.standard_normal((e, h, c)).astype(np.float32) for _ in range(2))
    w_down = rng.standard_normal((e, c, h)).astype(np.float32)
    d_out = rng.standard_normal((rows, c)).astype(np.float32)

    def grouped(name):
        fwd = cpu_moe.rung("grouped_matmul_forward", name)
        bwd = cpu_moe.rung("grouped_matmul_backward", name)

        def products():
            gate = fwd(x, w_gate, offsets)
            fwd(x, w_up, offsets)
            fwd(gate, w_down, offsets)
            d_hidden = bwd(d_out, gate, w_down, offsets)[0]
            bwd(d_hidden, x, w_gate, offsets)
            bwd(d_hidden, x, w_up, offsets)
        return products

    def dense():
        gate = cpu.linear_forward(x, w_gate[0], None)
        cpu.linear_forward(x, w_up[0], None)
        cpu.linear_forward(gate, w_down[0], None)
        d_hidden = cpu.linear_backward(d_out, gate, w_down[0], False)[0]
        cpu.linear_backward(d_hidden, x, w_gate[0], False)
        cpu.linear_backward(d_hidden, x, w_up[0], False)

    sides = {"dense GEMMs": dense, **{name: grouped(name) for name in cpu_moe.RUNGS}}
    times = {name: [] for name in sides}
    for fn in sides.values():
        fn()                                                    # warm-up
    for _ in range(calls):
        for name, fn in sides.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    flops = layer_flops(tokens)
    print(f"the layer's 9 expert products, {tokens} tokens ({flops / 1e9:.2f} GFLOP), {calls} calls each, "
          f"load average at the end {harness.load_average()}")
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print(f"  {name:<12} median {median * 1e3:7.1f} ms  min {min(seconds) * 1e3:7.1f} ms  "
              f"{flops / median / 1e9:6.1f} GFLOP/s")


# --- moe step ------------------------------------------------------------------------------

def torch_moe(h, p, pre, config):
    """The top-k MoE as litgpt / minimind write it: (output, aux loss) for h (B, T, C)."""
    import torch
    import torch.nn.functional as F
    b, t, c = h.shape
    x = h.reshape(-1, c)
    probs = F.softmax(F.linear(x, p[pre + "gate.weight"]), dim=-1)
    weights, chosen = torch.topk(probs, config.n_experts_per_token, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    out = torch.zeros_like(x)
    for e in range(config.n_experts):
        token, slot = torch.where(chosen == e)
        if token.numel() == 0:
            continue
        xe = x[token]
        ye = F.linear(F.silu(F.linear(xe, p[pre + "experts.gate_proj"][e]))
                      * F.linear(xe, p[pre + "experts.up_proj"][e]), p[pre + "experts.down_proj"][e])
        out.index_add_(0, token, ye * weights[token, slot, None])
    fraction = torch.bincount(chosen.reshape(-1), minlength=config.n_experts).to(x.dtype) / x.shape[0]
    aux = config.n_experts * (fraction * probs.mean(dim=0)).sum()
    return out.reshape(b, t, c), aux


def torch_forward(params, config, idx, targets):
    """Our llama-family MoE GPT in PyTorch: torch_gpt's attention, torch_moe's MLP."""
    import torch.nn.functional as F
    import torch_gpt
    p = params
    x = p["model.embed_tokens.weight"][idx]
    b, t, _ = x.shape
    nh, nkv, hs = config.n_head, config.n_kv_head, config.head_size
    aux_total = 0.0
    for layer in range(config.n_layer):
        pre = f"model.layers.{layer}."
        h = torch_gpt._rms_norm(x, p[pre + "input_layernorm.weight"], config.norm_eps)
        q, k, v = (torch_gpt._linear(h, p, pre + f"self_attn.{name}").view(b, t, n, hs).transpose(1, 2)
                   for name, n in (("q_proj", nh), ("k_proj", nkv), ("v_proj", nkv)))
        q, k = torch_gpt._rope(q, config), torch_gpt._rope(k, config)
        y = torch_gpt._attention(q, k, v, nh).transpose(1, 2).reshape(b, t, nh * hs)
        x = x + torch_gpt._linear(y, p, pre + "self_attn.o_proj")
        h = torch_gpt._rms_norm(x, p[pre + "post_attention_layernorm.weight"], config.norm_eps)
        moe, aux = torch_moe(h, p, pre + "mlp.", config)
        x = x + moe
        aux_total = aux_total + aux
    x = torch_gpt._rms_norm(x, p["model.norm.weight"], config.norm_eps)
    logits = x @ p["model.embed_tokens.weight"].T
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return loss + config.router_aux_loss_coef * aux_total / config.n_layer


def step_case(shape, batch, steps_per_call, repeats):
    import torch
    from microgpt.nn import GPT, GPTConfig
    from microgpt.train.optim import AdamW
    config = GPTConfig(**shape)
    model = GPT(config, seed=0)
    params = {n: torch.tensor(a, requires_grad=True) for n, a in model.state_dict().items()}
    opt = AdamW(model.named_parameters(), weight_decay=0.0, betas=BETAS, eps=EPS)
    peer_opt = torch.optim.AdamW(params.values(), lr=LR, betas=BETAS, eps=EPS, weight_decay=0.0)
    rng = np.random.default_rng(0)
    data = [(rng.integers(0, config.vocab_size, (batch, config.block_size)),
             rng.integers(0, config.vocab_size, (batch, config.block_size))) for _ in range(64)]
    position = {"ours": 0, "peer": 0}
    losses = {"ours": [], "peer": []}

    def ours():
        for _ in range(steps_per_call):
            idx, targets = data[position["ours"] % len(data)]
            position["ours"] += 1
            opt.zero_grad()
            _, loss = model(idx, targets)
            loss.backward()
            opt.step(LR)
            losses["ours"].append(float(loss.item()))

    def peer():
        for _ in range(steps_per_call):
            idx, targets = data[position["peer"] % len(data)]
            position["peer"] += 1
            peer_opt.zero_grad(set_to_none=True)
            loss = torch_forward(params, config, torch.from_numpy(idx), torch.from_numpy(targets))
            loss.backward()
            peer_opt.step()
            losses["peer"].append(float(loss.item()))

    def check():
        ours()
        peer()
        gap = max(abs(a - b) for a, b in zip(losses["ours"], losses["peer"]))
        if gap > 1e-3:
            raise RuntimeError(f"ours and PyTorch disagree by {gap:.2e} in loss on the same batches")

    tokens = batch * config.block_size * steps_per_call
    name = (f"moe step ({shape['n_layer']}L x 384C, 8 experts x 512, top-2, V 8192, B {batch} x T "
            f"{config.block_size})")
    case = harness.Case(name, ours, peer, peer_name="PyTorch eager, top-k MoE in torch ops",
                        unit="tokens/s", work=tokens, check=check, repeats=repeats, warmup=1)
    return case, losses


# --- dense vs MoE curve --------------------------------------------------------------------

def val_points(run_dir):
    """[(step, val_loss, val_bpb)] of a run, and the run's tokens/s (its last metrics line)."""
    from microgpt.train.plot import read_metrics
    import json
    _, val = read_metrics(run_dir)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rates = [r["tokens_per_s"] for r in map(json.loads, f) if "tokens_per_s" in r]
    return val, rates[-1] if rates else None


def curve(dense_dir, moe_dir, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from microgpt.fileio import atomic_write
    runs = {"dense (MLP hidden 256)": val_points(dense_dir),
            "MoE (8 experts x 128, top-2)": val_points(moe_dir)}
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for (label, (val, _)), color in zip(runs.items(), ("tab:blue", "tab:red")):
        ax.plot([s for s, _, _ in val], [v for _, v, _ in val], "o-", ms=3, lw=1, color=color, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("val loss (nats/token)")
    ax.set_title("demo shape (4L x 96C), equal active parameters")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    with atomic_write(png, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    (dense, dense_rate), (moe, moe_rate) = runs.values()
    print("| step | dense val loss | MoE val loss | dense bits/byte | MoE bits/byte |")
    print("|---:|---:|---:|---:|---:|")
    for (s, dv, db), (s2, mv, mb) in zip(dense, moe):
        assert s == s2, "the two runs evaluated at different steps"
        print(f"| {s} | {dv:.4f} | {mv:.4f} | {db:.3f} | {mb:.3f} |")
    print(f"\ntokens/s: dense {dense_rate:,.0f}, MoE {moe_rate:,.0f}")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--curve":
        png = sys.argv[sys.argv.index("--png") + 1] if "--png" in sys.argv else "moe_vs_dense.png"
        curve(sys.argv[2], sys.argv[3], png)
        return

    def extra(parser):
        parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
        parser.add_argument("--rungs", action="store_true", help="race the grouped matmul's C rungs only")
    args = harness.parse_args(__doc__.splitlines()[0], extra)
    set_threads(args.threads)
    print(f"threads: {args.threads}, OMP_WAIT_POLICY: {os.environ.get('OMP_WAIT_POLICY')}", flush=True)
    if args.rungs:
        race_rungs(512 if args.quick else 4096)
        return
    repeats = 2 if args.quick else 5
    tokens = 512 if args.quick else 4096
    layer = layer_case(tokens, repeats)
    roofline = roofline_case(tokens, layer.peer, repeats)
    step, losses = step_case(QUICK if args.quick else SMALL, 2 if args.quick else 16, 1, repeats)
    load_before = harness.load_average()
    rows = harness.run_cases([layer, roofline, step], args, title=f"mixture of experts ({args.threads} threads)")
    gap = max(abs(a - b) for a, b in zip(losses["ours"], losses["peer"]))
    targets = {"moe grouped": 3.0, "moe step": 1.0, "moe roofline": None}
    for row in rows:
        row["target"] = next(v for k, v in targets.items() if row["name"].startswith(k))
        row["threads"] = args.threads
        row["load_before"] = load_before
        if row["name"].startswith(("moe grouped", "moe roofline")):     # ms of layer_flops(tokens)
            row["flops"] = layer_flops(tokens)
            row["ours_gflops"] = row["flops"] / row["ours"] / 1e6
            row["peer_gflops"] = row["flops"] / row["peer"] / 1e6
        if row["name"].startswith("moe step"):
            row["max_dloss"] = gap
            row["steps_compared"] = min(len(losses["ours"]), len(losses["peer"]))
        if row["target"] is None:
            print(f"{row['name']}: {row['ours_gflops']:.0f} GFLOP/s, so at best {row['ratio']:.2f}x "
                  f"over the loop ({row['peer_gflops']:.0f} GFLOP/s)", flush=True)
            continue
        row["passed"] = row["ratio"] >= row["target"]
        print(f"{row['name']}: {row['ratio']:.2f}x, target {row['target']}x: "
              f"{'passed' if row['passed'] else 'MISSED'}", flush=True)
    print(f"moe step: max |loss ours - loss torch| over {min(map(len, losses.values()))} steps {gap:.2e}")
    if args.json:                                   # again, now with the targets
        harness.report(rows, args, title=f"mixture of experts ({args.threads} threads)")


if __name__ == "__main__":
    main()
