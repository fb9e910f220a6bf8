"""Fine-tuning speed and memory: our LoRA step vs PEFT + PyTorch eager, packed vs padded SFT.

Rows (targets from issue 13; ratio > 1 means ours is better):

  lora step            tokens/s of one LoRA training step (forward, masked-free CE loss,
                       backward, AdamW on the adapters) on the "small" preset shape (llama
                       family, 6 layers x 384 channels, 6 heads, vocab 8192, tied head), batch
                       16 x 256, LoRA rank 8, alpha 16 on q_proj and v_proj; the peer is
                       peft.PeftModel over transformers' LlamaForCausalLM with the same
                       weights and the same initial adapter (ours saved in PEFT's format,
                       loaded by PeftModel.from_pretrained) and torch.optim.AdamW.
                       Target >= 1.0x.
  lora peak memory     peak resident memory growth (VmHWM after clear_refs, MiB) of the
                       process over building that side's model + adapter + optimizer and
                       training; each side in a process of its own, so neither counts the
                       other. ratio = peer / ours. Target: ours <= 1.0x PEFT's (ratio >= 1).
  qlora int8 step      tokens/s of that LoRA step over a base stored in int8 (one scale per
  qlora int4 step      row) / int4 (groups of 32) by finetune/qlora.py (the quantize/ kernels),
                       vs the same step over the fp32 base ("lora step"'s ours); ratio =
                       qlora / fp32. No target (issue 13 asked for the memory measured).
  qlora int8 peak memory   peak RSS growth as in "lora peak memory", QLoRA vs the fp32-base
  qlora int4 peak memory   LoRA in processes of their own; ratio = fp32 / qlora (> 1: QLoRA
                       smaller). The rows also record the blocks' weight bytes (fp32 vs
                       codes + fp16 scales). No target: measurements.
  sft packed vs padded useful (non-padding) tokens/s of our full SFT step on a length-skewed
                       set of conversations (80% of 16-48 tokens, 20% of 128-255): packed
                       rows of 256 with document masking vs rows padded to the batch's
                       longest, 16 rows per batch both ways, on a 4-layer x 256 llama.
                       Target >= 1.5x.

Both sides of the LoRA rows train on the same batches, so their losses must agree (within
1e-3 at every step; a fast wrong answer is not reported). Rounds alternate one process per
side (ours, peer, ours, peer, ...); the figures are medians over rounds, with the ratio
within each round's pair as its spread. OMP_WAIT_POLICY=PASSIVE for both, as in
bench_generate.py (idle OpenMP workers of one library must not spin on the other's cores).

    python benchmarks/bench_finetune.py [--quick] [--json FILE] [--rounds N] [--threads N]
                                        [--only lora|qlora|packed]
--only runs one group of rows; with --json, the file's other rows are kept (a re-run of
only those rows replaces them).
"""
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before any OpenMP runtime starts

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE]

import harness  # noqa: E402

SMALL = dict(family="llama", n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=8192)
BATCH, TIME = 16, 256
RANK, ALPHA, TARGETS = 8, 16.0, "q,v"
LR, BETAS, EPS = 1e-3, (0.9, 0.95), 1e-8           # no weight decay: the same update both sides
PACKED_MODEL = dict(family="llama", n_layer=4, n_head=4, n_embd=256, block_size=256, vocab_size=8192)


def small_config():
    from microgpt.nn import GPTConfig
    return GPTConfig(**SMALL)


def batches(count, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, SMALL["vocab_size"], (BATCH, TIME)),
             rng.integers(0, SMALL["vocab_size"], (BATCH, TIME))) for _ in range(count)]


def prepare(tmp):
    """The base as a Hugging Face directory and the initial adapter in PEFT's format."""
    from microgpt.finetune import lora, peft_io
    from microgpt.interop import export_hf
    from microgpt.nn import GPT
    base = GPT(small_config(), seed=0)
    export_hf(base, None, os.path.join(tmp, "base"))
    lora.apply_lora(base, lora.target_modules(base.config, TARGETS), RANK, ALPHA, seed=0)
    peft_io.save_adapter(base, os.path.join(tmp, "adapter"))
    return os.path.join(tmp, "base"), os.path.join(tmp, "adapter")


def build_ours(base_dir, adapter_dir, scheme=None):
    from microgpt.finetune import lora, peft_io, qlora
    from microgpt.nn import GPT
    from microgpt.train.optim import AdamW
    model = GPT(small_config(), seed=0)              # the weights export_hf wrote (seed 0)
    peft_io.load_adapter(model, adapter_dir)
    if scheme is not None:                           # QLoRA: the blocks' frozen weights quantized
        group = None if scheme == "int8" else 32
        WEIGHT_BYTES["fp32"], WEIGHT_BYTES[scheme] = qlora.quantize_model(model, scheme, group)
        gc.collect()                                 # the float weights are gone
    opt = AdamW(lora.trainable_parameters(model), weight_decay=0.0, betas=BETAS, eps=EPS)

    def step(idx, targets):
        opt.zero_grad()
        _, loss = model(idx, targets)
        loss.backward()
        opt.step(LR)
        return float(loss.item())
    return step


def build_peer(base_dir, adapter_dir):
    import peft
    import torch
    import transformers
    hf = transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(hf, adapter_dir, is_trainable=True).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=0.0)
    vocab = SMALL["vocab_size"]

    def step(idx, targets):
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=torch.from_numpy(idx)).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab),
                                                 torch.from_numpy(targets).reshape(-1))
        loss.backward()
        opt.step()
        return float(loss.item())
    return step


WEIGHT_BYTES = {}          # filled by a QLoRA build: the blocks' weights, fp32 vs quantized
BUILDERS = {"ours": build_ours, "peer": build_peer,
            "qlora-int8": lambda b, a: build_ours(b, a, "int8"),
            "qlora-int4": lambda b, a: build_ours(b, a, "int4")}


def set_threads(n):
    import torch
    from microgpt.backends import cpu
    torch.set_num_threads(n)
    if cpu.AVAILABLE:
        cpu.set_num_threads(n)


def _rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def probe(side, base_dir, adapter_dir, warmup, steps, threads):
    """In a fresh process: seconds per timed step, every loss, peak RSS growth in bytes."""
    import microgpt.backends.cpu  # noqa: F401 - the C library loaded before the baseline
    import peft  # noqa: F401
    import transformers  # noqa: F401
    set_threads(threads)
    data = batches(warmup + steps)
    load = os.getloadavg()[0]
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                   # reset the peak (VmHWM) to the current RSS
    base = _rss_kib("VmRSS")
    step = BUILDERS[side](base_dir, adapter_dir)
    seconds, losses = [], []
    for i, (idx, targets) in enumerate(data):
        start = time.perf_counter()
        losses.append(step(idx, targets))
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    return {"seconds": seconds, "losses": losses, "load": load,
            "peak_bytes": (_rss_kib("VmHWM") - base) * 1024, "weight_bytes": WEIGHT_BYTES}


def run_probe(side, base_dir, adapter_dir, warmup, steps, threads):
    cmd = [sys.executable, __file__, "--probe", side, base_dir, adapter_dir, str(warmup), str(steps),
           str(threads)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"probe {side} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def spread(values):
    return statistics.median(values), min(values), max(values)


def lora_rows(base_dir, adapter_dir, rounds, warmup, steps, threads):
    rate, peak, loads, dloss = {"ours": [], "peer": []}, {"ours": [], "peer": []}, [], 0.0
    for r in range(rounds):
        out = {side: run_probe(side, base_dir, adapter_dir, warmup, steps, threads)
               for side in ("ours", "peer")}
        for side in out:
            rate[side].append(BATCH * TIME / statistics.median(out[side]["seconds"]))
            peak[side].append(out[side]["peak_bytes"] / 2**20)
            loads.append(out[side]["load"])
        gap = max(abs(a - b) for a, b in zip(out["ours"]["losses"], out["peer"]["losses"]))
        if gap > 1e-3:
            raise RuntimeError(f"ours and PEFT disagree by {gap:.2e} in loss on the same batches")
        dloss = max(dloss, gap)
        print(f"  lora round {r + 1}/{rounds}: ours {rate['ours'][-1]:.0f} tokens/s "
              f"{peak['ours'][-1]:.0f} MiB, peft {rate['peer'][-1]:.0f} tokens/s "
              f"{peak['peer'][-1]:.0f} MiB, |dloss| {gap:.1e}, load {loads[-1]:.2f}", flush=True)
    rows = []
    for values, unit, name, target in ((rate, "tokens/s", "lora step", 1.0),
                                       (peak, "MiB", "lora peak memory", 1.0)):
        ours, ours_min, ours_max = spread(values["ours"])
        peer, peer_min, peer_max = spread(values["peer"])
        paired = [a / b if unit == "tokens/s" else b / a for a, b in zip(values["ours"], values["peer"])]
        ratio = ours / peer if unit == "tokens/s" else peer / ours
        rows.append({"name": name, "unit": unit, "ours": ours, "ours_min": ours_min,
                     "ours_max": ours_max, "peer_name": "PEFT + PyTorch eager", "peer": peer,
                     "peer_min": peer_min, "peer_max": peer_max, "ratio": ratio,
                     "ratio_min": min(paired), "ratio_max": max(paired), "target": target,
                     "passed": ratio >= target, "rounds": rounds, "warmup_steps": warmup,
                     "timed_steps": steps, "threads": threads, "max_dloss": dloss,
                     "load_min": min(loads), "load_max": max(loads),
                     "ours_samples": values["ours"], "peer_samples": values["peer"],
                     "shape": f"llama 6L x 384C, 6 heads, V 8192, B {BATCH} x T {TIME}, "
                              f"LoRA r {RANK} alpha {ALPHA:g} on q,v"})
    return rows


def qlora_rows(base_dir, adapter_dir, rounds, warmup, steps, threads):
    """fp32-base LoRA vs QLoRA int8 / int4, one process per side per round, interleaved."""
    sides = ("ours", "qlora-int8", "qlora-int4")
    rate, peak, loads = {s: [] for s in sides}, {s: [] for s in sides}, []
    weight_bytes, dloss = {}, {s: 0.0 for s in sides[1:]}
    for r in range(rounds):
        out = {side: run_probe(side, base_dir, adapter_dir, warmup, steps, threads) for side in sides}
        for side in sides:
            rate[side].append(BATCH * TIME / statistics.median(out[side]["seconds"]))
            peak[side].append(out[side]["peak_bytes"] / 2**20)
            loads.append(out[side]["load"])
            weight_bytes.update(out[side]["weight_bytes"])
        for side in sides[1:]:          # same batches: the losses differ by quantization only
            gap = max(abs(a - b) for a, b in zip(out[side]["losses"], out["ours"]["losses"]))
            dloss[side] = max(dloss[side], gap)
        print(f"  qlora round {r + 1}/{rounds}: " + ", ".join(
            f"{side} {rate[side][-1]:.0f} tokens/s {peak[side][-1]:.0f} MiB" for side in sides)
            + f", load {loads[-1]:.2f}", flush=True)
    rows = []
    for scheme in ("int8", "int4"):
        side = f"qlora-{scheme}"
        for values, unit, name in ((rate, "tokens/s", f"qlora {scheme} step"),
                                   (peak, "MiB", f"qlora {scheme} peak memory")):
            ours, ours_min, ours_max = spread(values[side])
            peer, peer_min, peer_max = spread(values["ours"])
            paired = [a / b if unit == "tokens/s" else b / a
                      for a, b in zip(values[side], values["ours"])]
            rows.append({"name": name, "unit": unit, "ours": ours, "ours_min": ours_min,
                         "ours_max": ours_max, "peer_name": "ours, LoRA over the fp32 base",
                         "peer": peer, "peer_min": peer_min, "peer_max": peer_max,
                         "ratio": ours / peer if unit == "tokens/s" else peer / ours,
                         "ratio_min": min(paired), "ratio_max": max(paired), "target": None,
                         "passed": None, "rounds": rounds, "warmup_steps": warmup,
                         "timed_steps": steps, "threads": threads,
                         "max_dloss_vs_fp32": dloss[side],
                         "weight_bytes_fp32": weight_bytes["fp32"],
                         "weight_bytes_quantized": weight_bytes[scheme],
                         "group": "row" if scheme == "int8" else 32,
                         "load_min": min(loads), "load_max": max(loads),
                         "ours_samples": values[side], "peer_samples": values["ours"],
                         "shape": f"llama 6L x 384C, 6 heads, V 8192, B {BATCH} x T {TIME}, "
                                  f"LoRA r {RANK} alpha {ALPHA:g} on q,v; blocks' frozen "
                                  f"weights {scheme}"})
    return rows


# --- packed vs padded ----------------------------------------------------------------------

def skewed_examples(count, seed=0):
    """Conversations of skewed lengths: 80% of 16-48 tokens, 20% of 128-255 (assistant half)."""
    from microgpt.finetune.data import Example
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n = int(rng.integers(16, 49)) if rng.random() < 0.8 else int(rng.integers(128, 256))
        ids = rng.integers(0, PACKED_MODEL["vocab_size"], n + 1)
        mask = np.arange(n + 1) > n // 2
        out.append(Example(ids, mask))
    return out


def packed_row(rounds, steps, threads):
    from microgpt.finetune import packing
    from microgpt.finetune.data import IGNORE
    from microgpt.nn import GPT, GPTConfig
    from microgpt.train.optim import AdamW
    model = GPT(GPTConfig(**PACKED_MODEL), seed=0)
    opt = AdamW(model.named_parameters(), weight_decay=0.0, betas=BETAS, eps=EPS)
    examples = skewed_examples(4000)
    loaders = {kind: packing.SFTBatches(examples, BATCH, PACKED_MODEL["block_size"], seed=0,
                                        packed=kind == "packed") for kind in ("packed", "padded")}

    def step(batch):
        opt.zero_grad()
        if batch.segment_ids is not None:
            _, loss = model(batch.x, batch.y, ignore_index=IGNORE, segment_ids=batch.segment_ids,
                            position_ids=batch.position_ids)
        else:
            _, loss = model(batch.x, batch.y, ignore_index=IGNORE)
        loss.backward()
        opt.step(LR)

    rate = {"packed": [], "padded": []}
    fill = {"packed": [], "padded": []}
    load = os.getloadavg()[0]
    step(loaders["packed"].next_batch())              # warm-up, both shapes
    step(loaders["padded"].next_batch())
    for r in range(rounds):
        for kind in ("packed", "padded"):
            tokens = seconds = positions = 0
            for _ in range(steps):
                batch = loaders[kind].next_batch()
                start = time.perf_counter()
                step(batch)
                seconds += time.perf_counter() - start
                tokens += batch.tokens
                positions += batch.x.size
            rate[kind].append(tokens / seconds)
            fill[kind].append(tokens / positions)
        print(f"  sft round {r + 1}/{rounds}: packed {rate['packed'][-1]:.0f}, padded "
              f"{rate['padded'][-1]:.0f} useful tokens/s (rows {statistics.mean(fill['packed']):.0%} "
              f"vs {statistics.mean(fill['padded']):.0%} real tokens)", flush=True)
    ours, ours_min, ours_max = spread(rate["packed"])
    peer, peer_min, peer_max = spread(rate["padded"])
    paired = [a / b for a, b in zip(rate["packed"], rate["padded"])]
    return {"name": "sft packed vs padded", "unit": "tokens/s", "ours": ours, "ours_min": ours_min,
            "ours_max": ours_max, "peer_name": "ours, padded rows", "peer": peer,
            "peer_min": peer_min, "peer_max": peer_max, "ratio": ours / peer,
            "ratio_min": min(paired), "ratio_max": max(paired), "target": 1.5,
            "passed": ours / peer >= 1.5, "rounds": rounds, "steps_per_round": steps,
            "threads": threads, "load_min": load, "load_max": os.getloadavg()[0],
            "fill_packed": statistics.mean(fill["packed"]),
            "fill_padded": statistics.mean(fill["padded"]),
            "shape": "llama 4L x 256C, 4 heads, V 8192, 16 rows of <= 256, full SFT; "
                     "lengths 80% 16-48, 20% 128-255"}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        side, base_dir, adapter_dir = sys.argv[2:5]
        warmup, steps, threads = (int(v) for v in sys.argv[5:8])
        print(json.dumps(probe(side, base_dir, adapter_dir, warmup, steps, threads)))
        return

    def extra(parser):
        parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
        parser.add_argument("--rounds", type=int, default=None,
                            help="alternations of the two sides (default 5, --quick 1)")
        parser.add_argument("--only", choices=("lora", "qlora", "packed"), default=None,
                            help="run one group of rows (with --json: keep the file's others)")
    args = harness.parse_args(__doc__.splitlines()[0], extra)
    rounds = args.rounds or (1 if args.quick else 5)
    warmup, steps = (1, 1) if args.quick else (1, 4)
    set_threads(args.threads)
    print(f"threads: {args.threads}, rounds: {rounds}, OMP_WAIT_POLICY: "
          f"{os.environ.get('OMP_WAIT_POLICY')}", flush=True)
    rows, only = [], args.only
    if only in (None, "lora", "qlora"):
        with tempfile.TemporaryDirectory(prefix="bench_finetune_") as tmp:
            base_dir, adapter_dir = prepare(tmp)
            if only in (None, "lora"):
                rows += lora_rows(base_dir, adapter_dir, rounds, warmup, steps, args.threads)
            if only in (None, "qlora"):
                rows += qlora_rows(base_dir, adapter_dir, rounds, warmup, steps, args.threads)
    if only in (None, "packed"):
        rows.append(packed_row(rounds, 2 if args.quick else 6, args.threads))
    if only and args.json and os.path.isfile(args.json):     # keep the rows not re-run
        with open(args.json) as f:
            kept = [r for r in json.load(f)["rows"] if r["name"] not in {r["name"] for r in rows}]
        rows = kept + rows
    for row in rows:
        print(harness._format_row(row), flush=True)
    harness.report(rows, args, title=f"fine-tuning: LoRA step vs PEFT + PyTorch eager, packed vs "
                                     f"padded SFT ({args.threads} threads)")


if __name__ == "__main__":
    main()
