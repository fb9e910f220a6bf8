"""Loading a Hugging Face checkpoint: microgpt's load_pretrained vs transformers' from_pretrained.

Checkpoints (random weights, nothing downloaded): transformers builds each model from a config
and writes it with save_pretrained, float32 safetensors, into a temporary directory that is
removed at the end; both sides load the same files.
  gpt2-124M  GPT-2 small: 12 layers, 768 channels, 12 heads, vocab 50257, context 1024, tied
             (124.4M parameters, 475 MiB in float32)
  qwen3      Qwen3's build at about that size: vocab 151936, 512 channels, 12 layers, 8 query
             heads and 4 key/value heads of head_dim 128 (apart from 512 / 8), qk-norm,
             SwiGLU 1536, tied (125.0M parameters, 477 MiB)
--quick uses smaller models of the same builds (a smoke test; report.py refuses its results).

Peer: AutoModelForCausalLM.from_pretrained(dir, dtype=torch.float32) on the CPU (`dtype` is
transformers 5's name for `torch_dtype`). Ours: microgpt.interop.load_pretrained(dir).

Memory is measured, so each sample is a fresh process of one side only (--probe), started
after the other side's has exited, alternating ours, peer, ours, peer ... (--rounds, at least
5 for a recorded run). One thread each: OMP / OpenBLAS / MKL / MICROGPT_NUM_THREADS = 1 and
torch.set_num_threads(1) (loading is copies and system calls; a second thread would only
fight the shared machine's other jobs). A process:
  1. imports what its load needs (not timed): our interop and C library; transformers'
     AutoModelForCausalLM and the model's own module, which the first from_pretrained would
     otherwise import lazily (about 140 MiB and 1.4 s of it, measured with --quick's small
     models); collects garbage, resets its peak RSS (/proc/self/clear_refs 5) and reads its
     RSS: the baseline;
  2. first load, timed: what a script that loads one model pays after its imports;
  3. reads every weight once (the sum of each parameter), timed: a side that maps the file
     (transformers does, and we do for float32 tensors in our layout) has read nothing yet,
     so this is where its weights enter memory; the peak RSS (VmHWM) is taken after it;
  4. drops the model and loads it WARM_LOADS more times, each timed (in-process repeats).

Rows (each figure the median over the rounds, min-max beside it; ratio > 1: ours better):
  load <shape>      ms, the median of a process's warm loads (4.); ratio = peer / ours. The
                    same fields also carry the first load (first_*) and first load + reading
                    every weight (touch_*), medians over the rounds.
  load rss <shape>  MiB, peak RSS growth over the baseline across the first load and the read
                    of every weight (3.); ratio = peer / ours. Fields: raw_peak_* (VmHWM itself,
                    interpreter and libraries included), anon_* and file_* (RssAnon / RssFile
                    growth after the read: memory of the process's own vs pages of files it
                    maps), model_mib (4 bytes x parameters, a tied matrix once), ours_over_model.
Targets (fixed before the recorded run, benchmarks/results/load.md): load ratio >= 1.0; and
ours_over_model <= 1.2, our RSS growth (not the raw peak) against the model's float32 size.
A check first loads both sides in one process and compares their logits (max rel. error
< 1e-4), so a fast wrong load is never reported.

    python benchmarks/bench_load.py [--quick] [--json FILE] [--rounds N] [--shapes gpt2-124M,qwen3]
"""
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "MICROGPT_NUM_THREADS")
for _name in THREAD_VARIABLES:
    os.environ[_name] = "1"                   # before NumPy / torch start their thread pools

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE]

import harness  # noqa: E402

GPT2 = dict(model_type="gpt2", n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
QWEN3 = dict(model_type="qwen3", vocab_size=151936, hidden_size=512, intermediate_size=1536,
             num_hidden_layers=12, num_attention_heads=8, num_key_value_heads=4, head_dim=128,
             max_position_embeddings=4096, tie_word_embeddings=True)
SHAPES = {"gpt2-124M": GPT2, "qwen3": QWEN3}
QUICK = {"gpt2-124M": dict(GPT2, n_layer=2, n_embd=256, n_head=4, vocab_size=8192, n_positions=256),
         "qwen3": dict(QWEN3, vocab_size=16384, hidden_size=256, intermediate_size=768, num_hidden_layers=2,
                       head_dim=64, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)}
ROUNDS, QUICK_ROUNDS = 7, 2
WARM_LOADS = 3
LOAD_TARGET = "load ratio >= 1.0 (ours <= 1.0x transformers' time)"
RSS_TARGET = "our peak RSS growth (over the baseline after imports) <= 1.2x the model's float32 size"


# --- the checkpoints -------------------------------------------------------------------------------

def write_checkpoint(fields, path):
    """transformers' random-init model of `fields` (model_type + config keys), saved float32."""
    import torch
    import transformers
    torch.set_num_threads(1)
    fields = dict(fields)
    config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(path)


def check(path):
    """Both sides' logits on the same ids agree (max |ours - theirs| / max |theirs| < 1e-4)."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from microgpt.interop import load_pretrained
    torch.set_num_threads(1)
    ids = np.random.default_rng(0).integers(0, 1000, size=(1, 16))
    ours = load_pretrained(path)(ids)[0].numpy().astype(np.float64)
    peer = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = peer(torch.tensor(ids)).logits.numpy().astype(np.float64)
    error = np.abs(ours - theirs).max() / np.abs(theirs).max()
    if not error < 1e-4:
        raise AssertionError(f"{path}: our logits differ from transformers' by {error:.2e} (relative)")
    return float(error)


# --- one side in a fresh process ----------------------------------------------------------------------

def _status_kib():
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0])
    return fields


def probe(side, path):
    """In a fresh process: seconds of the first load, of reading every weight, of the warm
    loads; RSS (bytes) at the baseline, at the peak and after the read."""
    if side == "ours":
        from microgpt import backends
        from microgpt.interop import load_pretrained
        backends.get("cpu")                            # the C library, which ours loads on first use

        def load():
            return load_pretrained(path)

        def read_every_weight(model):
            return sum(float(p.data.sum()) for p in model.parameters())
    else:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
        torch.set_num_threads(1)
        MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.from_pretrained(path))]   # imports the model's module

        def load():
            return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)

        def read_every_weight(model):
            with torch.no_grad():
                return sum(float(p.sum()) for p in model.parameters())
    load_average = os.getloadavg()[0]
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                   # the peak (VmHWM) restarts from the current RSS
    base = _status_kib()
    start = time.perf_counter()
    model = load()
    first = time.perf_counter() - start
    parameters = sum(p.numel() if side == "peer" else p.size for p in model.parameters())
    start = time.perf_counter()
    read_every_weight(model)
    touch = time.perf_counter() - start
    after = _status_kib()
    del model
    gc.collect()
    warm = []
    for _ in range(WARM_LOADS):
        start = time.perf_counter()
        model = load()
        warm.append(time.perf_counter() - start)
        del model
        gc.collect()
    kib = 1024
    return {"first": first, "touch": touch, "warm": warm, "parameters": parameters,
            "base": base["VmRSS"] * kib, "peak": after["VmHWM"] * kib,
            "growth": (after["VmHWM"] - base["VmRSS"]) * kib,
            "anon": (after["RssAnon"] - base["RssAnon"]) * kib,
            "file": (after["RssFile"] - base["RssFile"]) * kib, "load_average": load_average}


def run_probe(side, path):
    result = subprocess.run([sys.executable, __file__, "--probe", side, path], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"probe {side} {path} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- rows ---------------------------------------------------------------------------------------------

def spread(values):
    return statistics.median(values), min(values), max(values)


def row(name, unit, ours, peer, ratio, extra):
    (o, o_min, o_max), (p, p_min, p_max) = spread(ours), spread(peer)
    return {"name": name, "unit": unit, "ours": o, "ours_min": o_min, "ours_max": o_max,
            "peer_name": "transformers from_pretrained", "peer": p, "peer_min": p_min, "peer_max": p_max,
            "ratio": ratio(o, p), **extra}


def shape_rows(shape, path, rounds):
    """The `load` and `load rss` rows of one checkpoint, from `rounds` alternations."""
    samples = {"ours": [], "peer": []}
    for r in range(rounds):
        for side in ("ours", "peer"):
            samples[side].append(run_probe(side, path))
        o, p = samples["ours"][-1], samples["peer"][-1]
        print(f"  {shape} round {r + 1}/{rounds}: warm {1e3 * statistics.median(o['warm']):.0f} vs "
              f"{1e3 * statistics.median(p['warm']):.0f} ms, first {1e3 * o['first']:.0f} vs {1e3 * p['first']:.0f} "
              f"ms, rss {o['growth'] / 2**20:.0f} vs {p['growth'] / 2**20:.0f} MiB, load {o['load_average']:.2f} / "
              f"{p['load_average']:.2f}", flush=True)
    ours, peer = samples["ours"], samples["peer"]
    if len({s["parameters"] for s in ours + peer}) != 1:
        raise RuntimeError(f"{shape}: the sides count different parameters: "
                           f"{sorted({s['parameters'] for s in ours + peer})}")
    model_mib = 4 * ours[0]["parameters"] / 2**20
    loads = [s["load_average"] for s in ours + peer]
    common = {"rounds": rounds, "warm_loads": WARM_LOADS, "parameters": ours[0]["parameters"],
              "model_mib": model_mib, "load_min": min(loads), "load_max": max(loads)}

    def ms(samples, key):
        return [1e3 * (statistics.median(s[key]) if key == "warm" else s[key]) for s in samples]

    def mib(samples, key):
        return [s[key] / 2**20 for s in samples]
    time_extra = {"target": LOAD_TARGET,
                  "ours_samples": ms(ours, "warm"), "peer_samples": ms(peer, "warm"),
                  "first_ours": statistics.median(ms(ours, "first")),
                  "first_peer": statistics.median(ms(peer, "first")),
                  "touch_ours": statistics.median([a + b for a, b in zip(ms(ours, "first"), ms(ours, "touch"))]),
                  "touch_peer": statistics.median([a + b for a, b in zip(ms(peer, "first"), ms(peer, "touch"))]),
                  **common}
    load_row = row(f"load {shape}", "ms", ms(ours, "warm"), ms(peer, "warm"), lambda o, p: p / o, time_extra)
    load_row["passed"] = load_row["ratio"] >= 1.0
    rss_extra = {"target": RSS_TARGET,
                 "ours_samples": mib(ours, "growth"), "peer_samples": mib(peer, "growth"),
                 **{f"{k}_{side}": statistics.median(mib(samples[side], k))
                    for k in ("peak", "anon", "file", "base") for side in ("ours", "peer")},
                 **common}
    rss_row = row(f"load rss {shape}", "MiB", mib(ours, "growth"), mib(peer, "growth"), lambda o, p: p / o,
                  rss_extra)
    rss_row["raw_peak_ours"], rss_row["raw_peak_peer"] = rss_row.pop("peak_ours"), rss_row.pop("peak_peer")
    rss_row["ours_over_model"] = rss_row["ours"] / model_mib
    rss_row["passed"] = rss_row["ours_over_model"] <= 1.2
    return [load_row, rss_row]


def versions():
    info = {}
    for module in ("transformers", "safetensors"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            pass
    return info


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        print(json.dumps(probe(sys.argv[2], sys.argv[3])))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--write":
        write_checkpoint(json.loads(sys.argv[2]), sys.argv[3])
        return

    def extra(parser):
        parser.add_argument("--rounds", type=int, default=None,
                            help=f"alternations of the two processes (default {ROUNDS}, --quick {QUICK_ROUNDS})")
        parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated checkpoints to load")
    args = harness.parse_args(__doc__.splitlines()[0], extra)
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown or rounds < 1:
        raise SystemExit(f"unknown shape(s) {unknown} (choose from {sorted(SHAPES)}) or --rounds < 1")
    print(f"rounds: {rounds}, threads: 1 per side, load average {harness.load_average()}", flush=True)
    rows, errors = [], {}
    with tempfile.TemporaryDirectory(prefix="bench_load_") as tmp:
        for shape in shapes:
            path = os.path.join(tmp, shape)
            fields = (QUICK if args.quick else SHAPES)[shape]
            start = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--write", json.dumps(fields), path], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            errors[shape] = check(path)
            print(f"{shape}: written and checked in {time.perf_counter() - start:.0f} s (logits agree, "
                  f"max rel. error {errors[shape]:.1e})", flush=True)
            for r in shape_rows(shape, path, rounds):
                r["max_rel_logit_error"] = errors[shape]
                rows.append(r)
                print(harness._format_row(r), flush=True)
    title = "loading a Hugging Face checkpoint: ours vs transformers from_pretrained (1 thread each)"
    harness.report(rows, argparse_without_json(args), title)
    if args.json:
        from microgpt.fileio import write_json
        machine = {**harness.machine(), **versions(), "threads": {k: os.environ[k] for k in THREAD_VARIABLES}}
        write_json(args.json, {"title": title, "machine": machine, "quick": bool(args.quick),
                               "targets": {"load": LOAD_TARGET, "load rss": RSS_TARGET}, "rows": rows})
        print(f"wrote {args.json}")


def argparse_without_json(args):
    """args for harness.report to print only: this script writes its JSON itself (with targets
    and library versions the harness does not record)."""
    import argparse
    return argparse.Namespace(**{**vars(args), "json": None})


if __name__ == "__main__":
    main()
