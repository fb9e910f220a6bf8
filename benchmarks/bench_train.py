"""A full training step (forward, backward, AdamW) of our GPT vs PyTorch CPU eager.

Both sides start from identical weights and train on identical batches with the same AdamW
settings (betas 0.9/0.95, weight decay 0.1 on the 2-D non-embedding weights, as
microgpt.train.optim.decays says), on the same number of threads: our OpenMP team and
torch.set_num_threads both get --threads (default: the cores this process may use).
The initial weights are our GPT's init (seed 0), written once per preset to a safetensors
file by a process of its own; each side loads that file. tests/torch_gpt.py is the PyTorch
peer: the same GPT written with torch primitives over a dict of tensors under our names.

Each side is timed and measured in a process of its own that builds only its own model and
optimizer, so each runs as its users run it -- PyTorch with its OpenMP default (idle workers
spin), ours with its default (idle workers sleep, cpu.py) -- neither's idle threads can
steal cores from the other, and neither's peak memory includes the other's model. The
processes alternate ours, peer, ours, peer ... (--rounds, at least 5 for a recorded run), so
a change in the machine's load hits both sides; only one runs at a time.

Rows, per preset (each figure: the median over the rounds, with the min-max of both sides):
  tokens/s    per process, B*T / its median step time over its timed steps (after warm-up);
              ratio = median ours / median peer; ratio_min..ratio_max: the same ratio within
              each round (one ours and the peer process next to it)
  peak MiB    per process, peak resident memory while it loads the weights, builds its model
              and optimizer and trains, minus its resident size right after imports (both
              import torch and microgpt); ratio = peer / ours (> 1: we use less)
  |dloss|     baby (small too with --full-parity): max |loss_ours - loss_torch| over the first
              50 steps, float32 on both sides, both in this process (not timed); the target is
              < 1e-3. Every pair of timed processes is also checked: they train on the same
              batches, so their losses must agree within 1e-3 (max_dloss in the tokens/s row).
Presets: baby (4 layers, 4 heads, 128 channels, T 64, B 12, V 65), small (6, 6, 384, T 256,
B 16, V 8192), gpt2-124M (12, 12, 768, V 50257, block 1024) at B 4, T 64.

    python benchmarks/bench_train.py [--quick] [--json FILE] [--presets baby,small] [--threads N]
                                     [--rounds N]
--quick (baby and small, 2 rounds of a few steps, about a minute on 2 idle cores) is a smoke
test of the script; its figures are not recorded (benchmarks/report.py refuses them).
Each process records the digest of the C library it loaded (the rows' `libraries`); on a
working tree that others rebuild, run from a clean export instead (git archive, then
`setup.py build_ext --inplace` there and PYTHONPATH pointing at it), as results/train.md says.
"""
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
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


def config_of(preset):
    from microgpt.nn import GPTConfig
    return GPTConfig(family="gpt2", **PRESETS[preset]["model"])


def write_initial_weights(preset, path):
    """Our GPT's initial weights (seed 0) for `preset`, as safetensors at `path`."""
    from microgpt.nn import GPT
    from microgpt.train.checkpoint import save_tensors
    save_tensors(path, GPT(config_of(preset), seed=0).state_dict())


def build_ours(preset, weights):
    """Our GPT loaded from `weights` and our AdamW: a step(idx, targets) -> loss function."""
    from microgpt.nn import GPT
    from microgpt.train.checkpoint import load_tensors
    from microgpt.train.optim import AdamW
    model = GPT(config_of(preset), seed=0)
    model.load_state_dict(load_tensors(weights))
    opt = AdamW(model.named_parameters(), weight_decay=WEIGHT_DECAY, betas=BETAS, eps=EPS)

    def step(idx, targets):
        opt.zero_grad()
        _, loss = model(idx, targets)
        loss.backward()
        opt.step(LR)
        return float(loss.item())
    return step


def build_peer(preset, weights):
    """The PyTorch peer loaded from `weights`, with the same decay groups as our AdamW."""
    import torch
    import torch_gpt
    from safetensors.torch import load_file
    from microgpt.train.optim import decays
    params = {name: t.requires_grad_() for name, t in load_file(weights).items()}
    groups = [{"params": [p for n, p in params.items() if decays(n, p)], "weight_decay": WEIGHT_DECAY},
              {"params": [p for n, p in params.items() if not decays(n, p)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS)
    config = config_of(preset)

    def step(idx, targets):
        opt.zero_grad(set_to_none=True)
        _, loss = torch_gpt.forward(params, config, torch.from_numpy(idx), torch.from_numpy(targets))
        loss.backward()
        opt.step()
        return float(loss.item())
    return step


BUILDERS = {"ours": build_ours, "peer": build_peer}


def set_threads(n):
    import torch
    from microgpt.backends import cpu
    torch.set_num_threads(n)
    if cpu.AVAILABLE:
        cpu.set_num_threads(n)


def loss_parity(preset, weights, steps):
    """Max |loss_ours - loss_torch| over `steps` identical training steps."""
    ours, peer = build_ours(preset, weights), build_peer(preset, weights)
    worst = 0.0
    for idx, targets in batches(preset, steps, seed=1):
        worst = max(worst, abs(ours(idx, targets) - peer(idx, targets)))
    return worst


# --- one side in a fresh process: time and peak memory ------------------------------------------------

def _rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def library_digest():
    """The first 12 hex digits of the sha256 of the C library this process loaded ("none" if
    it has none): every process of a run must time the same kernels, and a rebuild mid-run
    (the tree is shared) would otherwise go unnoticed."""
    import hashlib
    from microgpt.backends import cpu
    if not cpu.AVAILABLE:
        return "none"
    import microgpt.backends._cpu as built
    with open(built.__file__, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:12]


def probe(side, preset, weights, warmup, steps, threads):
    """In a fresh process: seconds per timed step, every step's loss, and the peak RSS growth
    (bytes) over loading the weights, building this side's model and optimizer and training."""
    import torch  # noqa: F401 - first, so torch's OpenMP runtime starts with its own defaults
    from microgpt.backends import cpu  # noqa: F401
    load = os.getloadavg()[0]
    set_threads(threads)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                   # reset the peak (VmHWM) to the current RSS
    base = _rss_kib("VmRSS")
    step = BUILDERS[side](preset, weights)
    seconds, losses = [], []
    for i, (idx, targets) in enumerate(batches(preset, warmup + steps)):
        start = time.perf_counter()
        losses.append(step(idx, targets))
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    return {"seconds": seconds, "losses": losses, "peak_bytes": (_rss_kib("VmHWM") - base) * 1024,
            "load": load, "library": library_digest()}


def run_probe(side, preset, weights, warmup, steps, threads):
    cmd = [sys.executable, __file__, "--probe", side, preset, weights, str(warmup), str(steps), str(threads)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"probe {side} {preset} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def spread(values):
    """median, min, max of a list of figures."""
    return statistics.median(values), min(values), max(values)


def preset_rows(preset, weights, threads, rounds, warmup, steps):
    """tokens/s and peak memory rows of one preset, from `rounds` alternations of one process
    per side; each process contributes one figure of each kind."""
    p = PRESETS[preset]
    tokens = p["batch"] * p["time"]
    rate, peak, loads, dloss, libraries = {"ours": [], "peer": []}, {"ours": [], "peer": []}, [], 0.0, set()
    for r in range(rounds):
        out = {}
        for side in ("ours", "peer"):
            out[side] = run_probe(side, preset, weights, warmup, steps, threads)
            rate[side].append(tokens / statistics.median(out[side]["seconds"]))
            peak[side].append(out[side]["peak_bytes"] / 2**20)
            loads.append(out[side]["load"])
            libraries.add(out[side]["library"])
        gap = max(abs(a - b) for a, b in zip(out["ours"]["losses"], out["peer"]["losses"]))
        if gap > 1e-3:
            raise RuntimeError(f"{preset}: ours and the peer disagree by {gap:.2e} in loss on the same "
                               "batches; a fast wrong answer is not reported")
        dloss = max(dloss, gap)
        print(f"  {preset} round {r + 1}/{rounds}: ours {rate['ours'][-1]:.1f} tokens/s {peak['ours'][-1]:.0f} MiB, "
              f"peer {rate['peer'][-1]:.1f} tokens/s {peak['peer'][-1]:.0f} MiB, load {loads[-1]:.2f}", flush=True)
    if len(libraries) > 1:
        print(f"  WARNING: the C library changed during the {preset} rounds ({sorted(libraries)}); "
              "these figures mix two builds", flush=True)
    rounds_info = {"rounds": rounds, "warmup_steps": warmup, "timed_steps": steps,
                   "load_min": min(loads), "load_max": max(loads), "libraries": sorted(libraries)}
    rows = []
    for values, unit in ((rate, "tokens/s"), (peak, "MiB")):
        ours, ours_min, ours_max = spread(values["ours"])
        peer, peer_min, peer_max = spread(values["peer"])
        paired = [a / b if unit == "tokens/s" else b / a for a, b in zip(values["ours"], values["peer"])]
        name = (f"train step {preset} B{p['batch']} T{p['time']} {threads}t" if unit == "tokens/s"
                else f"peak memory {preset} {threads}t")
        row = {"name": name, "unit": unit, "ours": ours, "ours_min": ours_min, "ours_max": ours_max,
               "peer_name": "pytorch eager", "peer": peer, "peer_min": peer_min, "peer_max": peer_max,
               "ratio": ours / peer if unit == "tokens/s" else peer / ours,
               "ratio_min": min(paired), "ratio_max": max(paired),
               "ours_samples": values["ours"], "peer_samples": values["peer"], **rounds_info}
        if unit == "tokens/s":
            row["max_dloss"] = dloss
        rows.append(row)
    return rows


def parity_row(preset, weights, steps):
    start = time.time()
    worst = loss_parity(preset, weights, steps)
    print(f"loss parity {preset}: max |dloss| {worst:.2e} over {steps} steps ({time.time() - start:.0f} s)")
    return {"name": f"max |dloss| {preset} {steps} steps", "unit": "|dloss|", "ours": worst,
            "ours_min": worst, "ours_max": worst, "peer_name": "target 1e-3", "peer": 1e-3,
            "peer_min": 1e-3, "peer_max": 1e-3, "ratio": 1e-3 / max(worst, 1e-12)}


# (warm-up steps, timed steps) per process
STEPS = {"baby": (3, 30), "small": (1, 4), "gpt2-124M": (1, 4)}
QUICK_STEPS = {"baby": (1, 5), "small": (1, 1), "gpt2-124M": (1, 1)}
ROUNDS, QUICK_ROUNDS = 6, 2          # alternations of the two processes (a recorded run: at least 5)
PRESETS_DEFAULT, QUICK_PRESETS_DEFAULT = "baby,small,gpt2-124M", "baby,small"   # --quick: about a minute


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        side, preset, weights = sys.argv[2:5]
        warmup, steps, threads = (int(v) for v in sys.argv[5:8])
        print(json.dumps(probe(side, preset, weights, warmup, steps, threads)))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--init":
        write_initial_weights(sys.argv[2], sys.argv[3])
        return

    def extra(parser):
        parser.add_argument("--presets", default=None,
                            help=f"comma-separated (default {PRESETS_DEFAULT}; --quick: {QUICK_PRESETS_DEFAULT})")
        parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
        parser.add_argument("--rounds", type=int, default=None,
                            help=f"alternations of the two processes (default {ROUNDS}, --quick {QUICK_ROUNDS})")
        parser.add_argument("--full-parity", action="store_true", help="also check small's loss curve")
    args = harness.parse_args(__doc__.splitlines()[0], extra)
    chosen = args.presets or (QUICK_PRESETS_DEFAULT if args.quick else PRESETS_DEFAULT)
    presets = [p for p in chosen.split(",") if p]
    for p in presets:
        if p not in PRESETS:
            raise SystemExit(f"unknown preset {p!r}; choose from {sorted(PRESETS)}")
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)
    if rounds < 1 or args.threads < 1:
        raise SystemExit("--rounds and --threads must be at least 1")
    policy = os.environ.get("OMP_WAIT_POLICY", "library defaults")
    print(f"threads: {args.threads}, rounds: {rounds}, OMP_WAIT_POLICY: {policy}", flush=True)
    parity = ["baby"] + (["small"] if args.full_parity else [])
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        weights = {}
        for p in dict.fromkeys(presets + parity):
            weights[p] = os.path.join(tmp, f"{p}.safetensors")
            subprocess.run([sys.executable, __file__, "--init", p, weights[p]], check=True)
        for p in presets:
            warmup, steps = (QUICK_STEPS if args.quick else STEPS)[p]
            for row in preset_rows(p, weights[p], args.threads, rounds, warmup, steps):
                rows.append(row)
                print(harness._format_row(row), flush=True)
        set_threads(args.threads)
        rows += [parity_row(p, weights[p], 10 if args.quick else 50) for p in parity]
    harness.report(rows, args, title=f"training step: ours vs PyTorch eager ({args.threads} threads, "
                                     f"OMP_WAIT_POLICY: {policy})")


if __name__ == "__main__":
    main()
