"""A full training step (forward, backward, AdamW) of our GPT vs PyTorch CPU eager.

Both sides start from identical weights (tests/torch_gpt.py is the PyTorch peer: the same
GPT written with torch primitives, fed our state_dict) and train on identical batches with
the same AdamW settings (betas 0.9/0.95, weight decay 0.1 on the 2-D non-embedding weights,
as microgpt.train.optim.decays says), on the same number of threads: our OpenMP team and
torch.set_num_threads both get --threads (default: the cores this process may use).

Each side is timed in a process of its own, so each runs as its users run it — PyTorch with
its OpenMP default (idle workers spin), ours with its default (idle workers sleep, cpu.py) —
and neither's idle threads can steal cores from the other (in one process, alternating,
they do). The processes alternate ours, peer, ours, peer ... (--rounds) against drift.

Rows, per preset:
  tokens/s    B*T / median step time over all timed steps of all rounds (after warm-up)
  peak MiB    peak resident memory of such a process while it builds the model and trains,
              minus its resident size right after imports (both import torch and microgpt;
              ratio > 1: we use less)
  |dloss|     (baby; small too with --full-parity) max |loss_ours - loss_torch| over the
              first 50 steps, float32 on both sides, in this process; the target is < 1e-3
Presets: baby (4 layers, 4 heads, 128 channels, T 64, B 12, V 65), small (6, 6, 384, T 256,
B 16, V 8192), gpt2-124M (12, 12, 768, V 50257, block 1024) at B 4, T 64.

    python benchmarks/bench_train.py [--quick] [--json FILE] [--presets baby,small] [--threads N]
"""
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "tests")]

import harness  # noqa: E402

PRESETS = {
    "baby": dict(model=dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65), batch=12, time=64),
    "small": dict(model=dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=8192), batch=16, time=256),
    "gpt2-124M": dict(model=dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257),
                      batch=4, time=64),
}
LR, BETAS, EPS, WEIGHT_DECAY = 1e-3, (0.9, 0.95), 1e-8, 0.1


def batches(preset, count, seed=0):
    """Token batches with structure to learn: noisy arithmetic progressions modulo V."""
    p = PRESETS[preset]
    vocab, b, t = p["model"]["vocab_size"], p["batch"], p["time"]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        start = rng.integers(0, vocab, (b, 1))
        step = rng.integers(1, 4, (b, 1))
        seq = (start + step * np.arange(t + 1)[None, :]) % vocab
        noise = rng.random(seq.shape) < 0.1
        seq = np.where(noise, rng.integers(0, vocab, seq.shape), seq).astype(np.int64)
        out.append((seq[:, :-1].copy(), seq[:, 1:].copy()))
    return out


def build_ours(preset):
    from microgpt.nn import GPT, GPTConfig
    from microgpt.train.optim import AdamW
    model = GPT(GPTConfig(family="gpt2", **PRESETS[preset]["model"]), seed=0)
    opt = AdamW(model.named_parameters(), weight_decay=WEIGHT_DECAY, betas=BETAS, eps=EPS)

    def step(idx, targets):
        opt.zero_grad()
        _, loss = model(idx, targets)
        loss.backward()
        opt.step(LR)
        return float(loss.item())
    return model, step


def build_torch(model):
    """PyTorch peer from our model's weights; the same decay groups as our AdamW."""
    import torch
    import torch_gpt
    from microgpt.train.optim import decays
    params = torch_gpt.parameters_from(model)
    trained = [(name, params[name]) for name, _ in model.named_parameters()]
    groups = [{"params": [p for n, p in trained if decays(n, p)], "weight_decay": WEIGHT_DECAY},
              {"params": [p for n, p in trained if not decays(n, p)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS)
    config = model.config

    def step(idx, targets):
        opt.zero_grad(set_to_none=True)
        _, loss = torch_gpt.forward(params, config, torch.from_numpy(idx), torch.from_numpy(targets))
        loss.backward()
        opt.step()
        return float(loss.item())
    return step


def set_threads(n):
    import torch
    from microgpt.backends import cpu
    torch.set_num_threads(n)
    if cpu.AVAILABLE:
        cpu.set_num_threads(n)


def loss_parity(preset, steps):
    """Max |loss_ours - loss_torch| over `steps` identical training steps."""
    model, ours = build_ours(preset)
    peer = build_torch(model)
    worst = 0.0
    for idx, targets in batches(preset, steps, seed=1):
        worst = max(worst, abs(ours(idx, targets) - peer(idx, targets)))
    return worst


# --- peak memory, each side in a fresh process ------------------------------------------------------

def _rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def probe(side, preset, warmup, steps, threads):
    """In a fresh process: seconds per timed step, and peak RSS growth (bytes) over the run."""
    import torch  # noqa: F401 - first, so torch's OpenMP runtime starts with its own defaults
    from microgpt.backends import cpu  # noqa: F401
    set_threads(threads)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                   # reset the peak (VmHWM) to the current RSS
    base = _rss_kib("VmRSS")
    model, step = build_ours(preset)
    if side == "peer":
        step = build_torch(model)
        del model
        gc.collect()
    seconds = []
    for i, (idx, targets) in enumerate(batches(preset, warmup + steps)):
        start = time.perf_counter()
        step(idx, targets)
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    return {"seconds": seconds, "peak_bytes": (_rss_kib("VmHWM") - base) * 1024}


def run_probe(side, preset, warmup, steps, threads):
    cmd = [sys.executable, __file__, "--probe", side, preset, str(warmup), str(steps), str(threads)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"probe {side} {preset} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def preset_rows(preset, threads, rounds, warmup, steps):
    """tokens/s and peak memory rows of one preset, from alternating per-side processes."""
    seconds, peaks = {"ours": [], "peer": []}, {"ours": [], "peer": []}
    for _ in range(rounds):
        for side in ("ours", "peer"):
            out = run_probe(side, preset, warmup, steps, threads)
            seconds[side] += out["seconds"]
            peaks[side].append(out["peak_bytes"] / 2**20)
    p = PRESETS[preset]
    tokens = p["batch"] * p["time"]
    rate = {side: tokens / statistics.median(seconds[side]) for side in seconds}
    speed = {"name": f"train step {preset} B{p['batch']} T{p['time']} {threads}t", "unit": "tokens/s",
             "ours": rate["ours"], "ours_min": tokens / max(seconds["ours"]),
             "ours_max": tokens / min(seconds["ours"]), "peer_name": "pytorch eager",
             "peer": rate["peer"], "ratio": rate["ours"] / rate["peer"]}
    memory = {"name": f"peak memory {preset} {threads}t", "unit": "MiB", "ours": max(peaks["ours"]),
              "ours_min": min(peaks["ours"]), "ours_max": max(peaks["ours"]), "peer_name": "pytorch eager",
              "peer": max(peaks["peer"]), "ratio": max(peaks["peer"]) / max(peaks["ours"])}
    return [speed, memory]


def parity_row(preset, steps):
    start = time.time()
    worst = loss_parity(preset, steps)
    print(f"loss parity {preset}: max |dloss| {worst:.2e} over {steps} steps ({time.time() - start:.0f} s)")
    return {"name": f"max |dloss| {preset} {steps} steps", "unit": "|dloss|", "ours": worst,
            "ours_min": worst, "ours_max": worst, "peer_name": "target 1e-3", "peer": 1e-3,
            "ratio": 1e-3 / max(worst, 1e-12)}


# (warm-up steps, timed steps) per process
STEPS = {"baby": (3, 30), "small": (1, 4), "gpt2-124M": (1, 4)}
QUICK_STEPS = {"baby": (2, 10), "small": (1, 2), "gpt2-124M": (1, 2)}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        side, preset = sys.argv[2], sys.argv[3]
        warmup, steps, threads = (int(v) for v in sys.argv[4:7])
        print(json.dumps(probe(side, preset, warmup, steps, threads)))
        return

    def extra(parser):
        parser.add_argument("--presets", default="baby,small,gpt2-124M")
        parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
        parser.add_argument("--rounds", type=int, default=2, help="alternations of the two processes")
        parser.add_argument("--full-parity", action="store_true", help="also check small's loss curve")
    args = harness.parse_args(__doc__.splitlines()[0], extra)
    presets = [p for p in args.presets.split(",") if p]
    for p in presets:
        if p not in PRESETS:
            raise SystemExit(f"unknown preset {p!r}; choose from {sorted(PRESETS)}")
    policy = os.environ.get("OMP_WAIT_POLICY", "library defaults")
    print(f"threads: {args.threads}, OMP_WAIT_POLICY: {policy}")
    rows = []
    for p in presets:
        warmup, steps = (QUICK_STEPS if args.quick else STEPS)[p]
        for row in preset_rows(p, args.threads, 1 if args.quick else args.rounds, warmup, steps):
            rows.append(row)
            print(harness._format_row(row), flush=True)
    set_threads(args.threads)
    parity = ["baby"] + (["small"] if args.full_parity else [])
    rows += [parity_row(p, 20 if args.quick else 50) for p in parity]
    harness.report(rows, args, title=f"training step: ours vs PyTorch eager ({args.threads} threads, "
                                     f"OMP_WAIT_POLICY: {policy})")


if __name__ == "__main__":
    main()
