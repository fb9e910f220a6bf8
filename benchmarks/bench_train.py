"""A full training step (forward, backward, AdamW) of our GPT vs PyTorch CPU eager.

Both sides start from identical weights (tests/torch_gpt.py is the PyTorch peer: the same
GPT written with torch primitives, fed our state_dict) and train on identical batches with
the same AdamW settings (betas 0.9/0.95, weight decay 0.1 on the 2-D non-embedding weights,
as microgpt.train.optim.decays says), on the same number of threads: our OpenMP team and
torch.set_num_threads both get --threads (default: every core).

Rows, per preset:
  tokens/s    B*T / median step time (harness: interleaved, warmed up)
  peak MiB    peak resident memory of a fresh process that builds the model and trains a
              few steps, minus its resident size right after imports (ratio > 1: we use less)
  |dloss|     (baby, and small with --full-parity) max |loss_ours - loss_torch| over the
              first 50 steps, float32 on both sides; the target is < 1e-3
Presets: baby (4 layers, 4 heads, 128 channels, T 64, B 12, V 65), small (6, 6, 384, T 256,
B 16, V 8192), gpt2-124M (12, 12, 768, V 50257, block 1024) at B 4, T 64.

    python benchmarks/bench_train.py [--quick] [--json FILE] [--presets baby,small] [--threads N]
"""
import gc
import json
import os
import subprocess
import sys
import time

# One OpenMP wait policy for both sides, set before either runtime loads (torch's libgomp at
# `import torch`, ours with microgpt.backends._cpu): PASSIVE unless the caller chose. With
# torch's default (spinning) its idle workers would hold the cores during our next timed step,
# since the harness alternates the two sides. `OMP_WAIT_POLICY=active python bench_train.py`
# runs both spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import numpy as np  # noqa: E402

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


def speed_case(preset, threads, repeats):
    model, ours = build_ours(preset)
    peer = build_torch(model)
    data = batches(preset, 4)
    counter = {"ours": 0, "peer": 0}

    def run(side, fn):
        def go():
            idx, targets = data[counter[side] % len(data)]
            counter[side] += 1
            return fn(idx, targets)
        return go
    p = PRESETS[preset]
    return harness.Case(name=f"train step {preset} B{p['batch']} T{p['time']} {threads}t",
                        ours=run("ours", ours), peer=run("peer", peer), peer_name="pytorch eager",
                        unit="tokens/s", work=p["batch"] * p["time"], repeats=repeats, warmup=2)


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


def probe(side, preset, steps, threads):
    """In a child process: peak RSS growth (bytes) while building and training."""
    import torch  # noqa: F401 - both sides import it, so both baselines include it
    from microgpt.backends import cpu  # noqa: F401
    set_threads(threads)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                   # reset the peak (VmHWM) to the current RSS
    base = _rss_kib("VmRSS")
    model, ours = build_ours(preset)
    step = ours
    if side == "peer":
        step = build_torch(model)
        del model, ours
        gc.collect()
    for idx, targets in batches(preset, steps):
        step(idx, targets)
    return (_rss_kib("VmHWM") - base) * 1024


def memory_row(preset, steps, threads):
    peaks = {}
    for side in ("ours", "peer"):
        cmd = [sys.executable, __file__, "--probe", side, preset, str(steps), str(threads)]
        result = subprocess.run(cmd, capture_output=True, text=True, check=True)
        peaks[side] = json.loads(result.stdout.strip().splitlines()[-1])["peak_bytes"] / 2**20
    return {"name": f"peak memory {preset} {threads}t", "unit": "MiB", "ours": peaks["ours"],
            "ours_min": peaks["ours"], "ours_max": peaks["ours"], "peer_name": "pytorch eager",
            "peer": peaks["peer"], "ratio": peaks["peer"] / peaks["ours"]}


def parity_row(preset, steps):
    start = time.time()
    worst = loss_parity(preset, steps)
    print(f"loss parity {preset}: max |dloss| {worst:.2e} over {steps} steps ({time.time() - start:.0f} s)")
    return {"name": f"max |dloss| {preset} {steps} steps", "unit": "|dloss|", "ours": worst,
            "ours_min": worst, "ours_max": worst, "peer_name": "target 1e-3", "peer": 1e-3,
            "ratio": 1e-3 / max(worst, 1e-12)}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        side, preset, steps, threads = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        print(json.dumps({"peak_bytes": probe(side, preset, steps, threads)}))
        return

    def extra(parser):
        parser.add_argument("--presets", default="baby,small,gpt2-124M")
        parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
        parser.add_argument("--full-parity", action="store_true", help="also check small's loss curve")
    args = harness.parse_args(__doc__.splitlines()[0], extra)
    presets = [p for p in args.presets.split(",") if p]
    for p in presets:
        if p not in PRESETS:
            raise SystemExit(f"unknown preset {p!r}; choose from {sorted(PRESETS)}")
    set_threads(args.threads)
    from microgpt import backends
    print(f"backend: {backends.current('cpu')}, threads: {args.threads}, "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
    repeats = {"baby": 10 if args.quick else 30, "small": 3 if args.quick else 6, "gpt2-124M": 3 if args.quick else 6}
    cases = [speed_case(p, args.threads, repeats[p]) for p in presets]
    quiet = harness.argparse.Namespace(json=None, quick=args.quick)
    rows = harness.run_cases(cases, quiet, title="training step (timing only)")
    for p in presets:
        rows.append(memory_row(p, 2 if p != "baby" else 5, args.threads))
        print(harness._format_row(rows[-1]), flush=True)
    parity = ["baby"] + (["small"] if args.full_parity else [])
    rows += [parity_row(p, 20 if args.quick else 50) for p in parity]
    harness.report(rows, args, title=f"training step: ours vs PyTorch eager ({args.threads} threads, "
                                     f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']})")


if __name__ == "__main__":
    main()
