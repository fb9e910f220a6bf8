"""The README's results table, made from benchmarks/results/*.json and nothing else.

    python benchmarks/report.py            print the markdown table
    python benchmarks/report.py --write    replace the table in README.md (between the two
                                           marker comments below), atomically
    python benchmarks/report.py --check    exit 1 if README.md's table is not this output

Every figure in the table is read from a results file that a benchmark wrote (the harness's
rows: name, unit, ours, ours_min, ours_max, peer, peer_min, peer_max, ratio, and the file's
`machine`), so a figure can be traced to the run that measured it and re-made when the run
is redone; tests/test_readme_results.py fails when the README's table differs from this
script's output. Each row says which machine its figure is from (the file's CPU or GPU and
the date). A results file written by `--quick` is refused: quick runs are smoke tests.

Files whose run left no JSON of its own carry `"transcribed_from"` (the .md table the figures
were copied from); the table marks their rows with that. demo.json's schema is DEMO_FIELDS
below: `microgpt train`'s demo run, as a user starts it.
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
README = os.path.join(ROOT, "README.md")
BEGIN = ("<!-- results table: made by benchmarks/report.py from benchmarks/results/*.json; "
         "do not edit by hand, run `python benchmarks/report.py --write` -->")
END = "<!-- end of results table -->"

# demo.json: what `microgpt train` (the demo preset, no arguments) did in one run.
DEMO_FIELDS = {
    "command": str,                 # the command line that was run, e.g. "microgpt train"
    "machine": dict,                # as the harness writes it: cpu, cores, date (UTC), load_average ...
    "wall_seconds": (int, float),   # the whole command: data, tokenizer, training, evals, samples, plot
    "tokens_per_second": (int, float),   # training throughput (forward + backward + AdamW)
    "steps": int,
    "parameters": int,
    "final_train_loss": (int, float),    # nats/token, mean of the last logged steps
    "final_val_loss": (int, float),      # nats/token
    "final_val_bits_per_byte": (int, float),
    "sample": str,                  # text printed at the end of the run
}


class ReportError(Exception):
    """A results file is missing, malformed, or lacks the row a README figure needs."""


_cache = {}


def load(name, results=RESULTS):
    """The parsed results file `name` (e.g. "train.json"), checked to be a full (non-quick) run."""
    path = os.path.join(results, name)
    if path not in _cache:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except OSError as exc:
            raise ReportError(f"{path}: cannot read ({exc.strerror}); run the benchmark that writes it") from exc
        except ValueError as exc:
            raise ReportError(f"{path}: not valid JSON ({exc}); rerun the benchmark that writes it") from exc
        if not isinstance(data, dict) or not isinstance(data.get("machine"), dict):
            raise ReportError(f"{path}: no 'machine' object; not a results file")
        if data.get("quick"):
            raise ReportError(f"{path}: written by a --quick run; rerun the benchmark without --quick")
        _cache[path] = data
    return _cache[path]


def row(data, name, key="name"):
    """The row of a results file whose `key` equals `name`."""
    found = [r for r in data.get("rows", []) if r.get(key) == name]
    if len(found) != 1:
        raise ReportError(f"results file of {data['machine'].get('date')}: {len(found)} rows named {name!r}")
    return found[0]


def rows_where(data, test):
    found = [r for r in data.get("rows", []) if test(r)]
    if not found:
        raise ReportError(f"results file of {data['machine'].get('date')}: no rows of the kind the README needs")
    return found


def machine_label(data, load=None):
    """"AMD EPYC, 2 cores, 2026-11-27" / "NVIDIA H100 80GB HBM3, 2026-11-27" (+ the load average
    during the run when the figure's rows record it, + a transcription mark)."""
    m = data["machine"]
    if m.get("gpu"):
        what = m["gpu"]
    else:
        cpu = m.get("cpu", "unknown CPU").replace("(R)", "").replace(" Processor", "")
        used, cores = m.get("cores_used"), m.get("cores")
        what = f"{cpu}, {used} of {cores} cores" if used else f"{cpu}, {cores} cores"
    label = f"{what}, {str(m.get('date', '?'))[:10]}"
    if load:
        label += f", load {load}"
    if data.get("transcribed_from"):
        label += f" (copied from {data['transcribed_from']})"
    return label


def x(ratio, digits=2):
    return f"{ratio:.{digits}f}x"


def span(values, digits=2, unit="x"):
    low, high = min(values), max(values)
    if f"{low:.{digits}f}" == f"{high:.{digits}f}":
        return f"{low:.{digits}f}{unit}"
    return f"{low:.{digits}f}–{high:.{digits}f}{unit}"


def sci(v, digits=1):
    """7.2e-7, not 7.2e-07."""
    mantissa, exponent = f"{v:.{digits}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def kilo(v):
    return f"{v / 1e3:.1f}k" if v >= 1e4 else f"{v:.0f}"


def link(md):
    return f"[{md}](benchmarks/results/{md})"


# --- the table, row by row ---------------------------------------------------------------------------
# Each entry returns (what, result, peer, machine, file) tuples in table order.

ENTRIES = []


def entry(fn):
    ENTRIES.append(fn)
    return fn


TRAIN_SHAPES = {"baby": '"baby" (4 layers, 128 channels, B 12, T 64)',
                "small": '"small" (6 layers, 384 channels, B 16, T 256)',
                "gpt2-124M": "GPT-2-124M shape (12 layers, 768 channels, B 4, T 64)"}


def _load(*rows):
    """"2.3–4.9": the 1-minute load averages the rows' processes started under."""
    return span([min(r["load_min"] for r in rows), max(r["load_max"] for r in rows)], 1, "")


def _threads(name):
    return name.rsplit(" ", 1)[-1].rstrip("t")


@entry
def training_steps(results):
    data = load("train.json", results)
    out = []
    for preset, shape in TRAIN_SHAPES.items():
        r = _train_row(data, preset, "tokens/s")
        out.append((f"training step (fwd, bwd, AdamW), C backend, {shape}, {_threads(r['name'])} threads",
                    f"**{x(r['ratio'])}** tokens/s ({kilo(r['ours'])} vs {kilo(r['peer'])}, medians of "
                    f"{r['rounds']} rounds; the ratio within a round {span([r['ratio_min'], r['ratio_max']])})",
                    "PyTorch CPU eager", machine_label(data, _load(r)), link("train.md")))
    return out


def _train_row(data, preset, unit):
    prefix = ("train step " if unit == "tokens/s" else "peak memory ") + preset + " "
    [r] = rows_where(data, lambda r: r["name"].startswith(prefix) and r["unit"] == unit)
    if len(r.get("libraries", [])) > 1:
        raise ReportError(f"train.json: the C library changed during the {preset} rounds ({r['libraries']}); "
                          "rerun bench_train.py on one build")
    return r


@entry
def training_memory(results):
    data = load("train.json", results)
    rs = [_train_row(data, p, "MiB") for p in TRAIN_SHAPES]
    ours = " / ".join(f"{r['ours']:.0f}" for r in rs)
    peer = " / ".join(f"{r['peer']:.0f}" for r in rs)
    ratios = " / ".join(x(r["ours"] / r["peer"]) for r in rs)
    return [("peak memory of those steps, baby / small / GPT-2 (each side in its own process)",
             f"{ratios} of PyTorch's ({ours} vs {peer} MiB, medians of {rs[0]['rounds']} rounds)",
             "PyTorch CPU eager", machine_label(data, _load(*rs)), link("train.md"))]


@entry
def loss_parity(results):
    data = load("train.json", results)
    [r] = rows_where(data, lambda r: r["unit"] == "|dloss|")
    steps = r["name"].split()[-2]
    return [(f"loss over {steps} identical float32 training steps", f"max abs. difference {sci(r['ours'])} "
             f"(target < {sci(r['peer'], 0)})", "PyTorch", machine_label(data), link("train.md"))]


@entry
def gpt_block(results):
    data = load("ops.json", results)
    c, ref = (rows_where(data, lambda r, b=b: r["name"].startswith(f"block fwd+bwd {b} "))[0]
              for b in ("cpu", "reference"))
    shape = c["name"].split(" ", 3)[3]
    return [(f"one GPT block fwd+bwd, {shape}: C / NumPy reference backend", f"{x(c['ratio'])} / {x(ref['ratio'])}",
             "PyTorch CPU eager", machine_label(data), link("ops.md"))]


def _sgemm_rows(data):
    return rows_where(data, lambda r: r["name"].startswith("matmul v") and r["name"].split()[1]
                      in ("v3_packed", "v4_threaded"))


@entry
def sgemm(results):
    out = []
    for name in ("kernels.json", "kernels_intel.json"):
        data = load(name, results)
        rs = _sgemm_rows(data)
        threads = sorted({_threads(r["name"]) for r in rs})
        out.append((f"sgemm (packed + threaded rungs) at the GPT shapes and 1024³, {' and '.join(threads)} threads",
                    f"{span([r['ratio'] for r in rs])} GFLOP/s", "NumPy/OpenBLAS", machine_label(data),
                    link("kernels.md")))
    return out


@entry
def attention(results):
    data = load("attention.json", results)
    rs = rows_where(data, lambda r: r["name"].startswith("attention fwd+bwd") and r["name"].endswith(" 2t"))
    first, last = rs[0], rs[-1]
    t0, t1 = (r["name"].split()[4][1:] for r in (first, last))
    return [(f"causal attention fwd+bwd B8 NH6 HS64, T={t0}…{t1}, 2 threads",
             f"**{x(first['ratio'], 1)} … {x(last['ratio'], 1)}** faster; memory linear in T",
             "torch SDPA", machine_label(data), link("attention.md"))]


@entry
def row_kernels(results):
    data = load("kernels.json", results)
    ops = ("layer_norm", "softmax", "cross_entropy", "adamw")
    rs = rows_where(data, lambda r: r["name"].split()[0] in ops)
    return [(" / ".join(ops) + " kernels, 1 and 2 threads", f"{span([r['ratio'] for r in rs], 1)} faster",
             "NumPy reference backend", machine_label(data), link("kernels.md"))]


@entry
def bpe(results):
    data = load("tokenizer.json", results)
    g2, g4 = (row(data, f"train 10 MB -> 8192, {s} split") for s in ("gpt2", "gpt4"))
    tk = row(data, "encode, 1 thread (vs tiktoken, our vocab)")
    hf = row(data, "encode, 1 thread (vs HF, its own vocab)")
    return [("BPE training to 8192 ids on 10 MB of stdlib sources, GPT-2 / GPT-4 split",
             f"**{x(g2['ratio'], 1)} / {x(g4['ratio'], 1)}** faster", "HF tokenizers", machine_label(data),
             link("tokenizer.md")),
            ("BPE encoding, 1 thread", f"{x(tk['ratio'], 1)} / {x(hf['ratio'], 1)} the throughput, ids identical "
             "to tiktoken's", "tiktoken / HF tokenizers", machine_label(data), link("tokenizer.md"))]


@entry
def dedup(results):
    data = load("data.json", results)
    r = rows_where(data, lambda r: r["name"].startswith("minhash dedup"))[0]
    size = r["name"].split()[-2]
    return [(f"MinHash near-duplicate removal, {size} MB", f"**{x(r['ratio'], 1)}** faster at equal recall "
             f"({r['recall_ours']:.3f} vs {r['recall_peer']:.3f})", "datasketch", machine_label(data),
             link("data.md"))]


@entry
def generation(results):
    data = load("generate.json", results)
    r = row(data, "generate 256 tokens, batch 1, cpu")
    return [("generation, batch 1, 6L×384C GPT-2, KV cache, 256 tokens (at this size it mostly measures HF's "
             "per-token overhead: one-token attention and KV-cache calls, Python)",
             f"**{x(r['ratio'])}** tokens/s ({r['ours']:.0f} vs {r['peer']:.0f})", "HF transformers",
             machine_label(data), link("generate.md"))]


@entry
def serving(results):
    data = load("serve.json", results)
    c = rows_where(data, lambda r: r["name"].startswith("serve concurrency"))[0]
    n = c["name"].split()[2]
    lat = {r["name"]: r["ours"] for r in rows_where(data, lambda r: r["name"].startswith(("ttft", "tpot")))}
    mem = row(data, f"peak kv memory c{n}")
    speed = f"**{x(c['ratio'])}**" if c["passed"] else f"{x(c['ratio'])}, **misses** {x(c['target'], 1)}"
    out = [(f"`microgpt serve`, {n} concurrent streaming clients x 128 tokens, \"small\" shape (6L×384C), 2 threads",
            f"{speed} aggregate tokens/s ({c['ours']:.0f} vs {c['peer']:.0f}, medians of {c['rounds']} rounds); "
            f"TTFT p50/p99 {lat[f'ttft p50 c{n}']:.0f}/{lat[f'ttft p99 c{n}']:.0f} ms, TPOT p50/p99 "
            f"{lat[f'tpot p50 c{n}']:.1f}/{lat[f'tpot p99 c{n}']:.1f} ms (c1: {lat['ttft p50 c1']:.0f} ms, "
            f"{lat['tpot p50 c1']:.1f} ms); peak KV cache {mem['ours']:.1f} MiB",
            "the same requests one by one", machine_label(data, _load(c)), link("serve.md"))]
    llama = [r for r in data["rows"] if r["name"] == "serve vs llama.cpp c8"]
    if llama:
        r = llama[0]
        verdict = f"**{x(r['ratio'])}**" if r["passed"] else f"{x(r['ratio'])}, **misses** 1.0x"
        out.append(("`microgpt serve` vs llama.cpp's OpenAI server, same model (GGUF F32), 8 concurrent clients",
                    f"{verdict} aggregate tokens/s ({r['ours']:.0f} vs {r['peer']:.0f})",
                    "llama-cpp-python server", machine_label(data, _load(r)), link("serve.md")))
    return out


LOAD_SHAPES = {"gpt2-124M": "GPT-2-124M shape", "qwen3": "Qwen3 shape (125M; head_dim 128, qk-norm, tied)"}


@entry
def loading(results):
    data = load("load.json", results)
    out = []
    for shape, label in LOAD_SHAPES.items():
        t, m = row(data, f"load {shape}"), row(data, f"load rss {shape}")
        speed = f"**{x(t['ratio'])}** the speed" if t["passed"] else f"{x(t['ratio'])} the speed, **misses** 1.0x"
        out.append((f"loading a Hugging Face checkpoint (float32 safetensors), {label}, 1 thread",
                    f"{speed} ({t['ours']:.1f} vs {t['peer']:.1f} ms, warm load); "
                    f"peak RSS {x(m['ours_over_model'])} the float32 model ({m['ours']:.0f} vs {m['peer']:.0f} MiB)",
                    "transformers from_pretrained", machine_label(data, _load(t, m)), link("load.md")))
    return out


def _met(r, digits=2):
    """"**3.10x**" when a row of eval.json meets its target, else "0.90x, **misses** 1.0x"."""
    return f"**{x(r['ratio'], digits)}**" if r["passed"] else f"{x(r['ratio'], digits)}, **misses** {x(r['target'], 1)}"


@entry
def evaluation(results):
    data = load("eval.json", results)
    m = data["machine"]
    label = machine_label(data, span([m["load_average_start"][0], m["load_average"][0]], 1, ""))
    mc = row(data, "eval mc examples/s")
    text = [row(data, name) for name in ("bleu", "chrf", "rouge", "rouge stemmed")]
    return [(f"scoring a multiple-choice task ({mc['examples']} generated 4-choice examples, demo-shape model, "
             f"batch {mc['batch_size']}, {mc['threads']} threads), the whole call, same acc and acc_norm",
             f"{_met(mc)} examples/s ({mc['ours']:.0f} vs {mc['peer']:.0f}); inside the scoring call "
             f"{x(mc['scoring_ratio'])}", "lm-eval `hf` backend (simple_evaluate)", label, link("eval.md")),
            ("BLEU / chrF / ROUGE-1/2/L / ROUGE stemmed over 10k generated sentence pairs, scores equal to 1e-9",
             " / ".join(_met(r) for r in text) + " faster", "sacrebleu / sacrebleu / rouge-score", label,
             link("eval.md"))]


def _gpu(results, section, test):
    data = load("gpu.json", results)
    return data, [r for r in data["rows"] if r["section"] == section and test(r)]


QUANT_SHAPES = {"gpt2-124M": "GPT-2-124M shape", "small": '"small" shape (6L×384C)'}


def _vs(r, target):
    """"**1.61x**" when the row meets its target, else "0.45x, **misses** 1.0x"."""
    return f"**{x(r['ratio'])}**" if r["ratio"] >= target else f"{x(r['ratio'])}, **misses** {x(target, 1)}"


@entry
def quantization(results):
    data = load("quantize.json", results)
    label = machine_label(data, span(data["machine"]["load_average"], 1, ""))    # 1/5/15 min at the end
    out = []
    for shape, what in QUANT_SHAPES.items():
        i8, i4 = row(data, f"decode int8 vs fp32, {shape}"), row(data, f"decode int4 vs fp32, {shape}")
        # records before the int8 head became int4's default have no "head fp32" rows
        both = any(r.get("name") == f"decode int4 head fp32 vs fp32, {shape}" for r in data.get("rows", []))
        pre = row(data, f"prefill 512 int8 vs fp32, {shape}")
        head = f"int4 with the head fp32 {x(row(data, f'decode int4 head fp32 vs fp32, {shape}')['ratio'])}; " \
            if both else ""
        # records from 2026-12-01 on: int8's default head is int8 too, its float head a row of its own
        int8_head = any(r.get("name") == f"decode int8 head fp32 vs fp32, {shape}" for r in data.get("rows", []))
        if int8_head:
            int8_fp32 = row(data, f"decode int8 head fp32 vs fp32, {shape}")
            head = f"int8 with the head fp32 {x(int8_fp32['ratio'])}, " + head
        out.append((f"batch-1 decoding, 128 tokens, 2 threads, {what}: ours int8 / int4 (g32"
                    + (", head int8" if both else "") + ") vs ours fp32",
                    f"int8 {_vs(i8, 1.5)}, int4 {_vs(i4, 2.0)} tokens/s ({i8['ours']:.0f} / {i4['ours']:.0f} vs "
                    f"{i8['peer']:.0f}); {head}prefill 512 int8 {x(pre['ratio'])} the fp32 speed", "ours fp32", label,
                    link("quantize.md")))
        cells = [f"{t.upper().replace(' HEAD F32', ' head F32')} {_vs(r, 1.0)} ({r['ours']:.0f} vs {r['peer']:.0f})"
                 for t in ("f32", "q8_0", "q4_0") + (("q4_0 head f32",) if both else ())
                 for r in [row(data, f"decode vs llama.cpp {t}, {shape}")]]
        out.append((f"batch-1 decoding vs llama.cpp, same model and precision (our GGUF export), {what}, 2 threads",
                    "; ".join(cells) + " tokens/s", "llama-cpp-python", label, link("quantize.md")))
    q = data["quality"]
    v = q["variants"]
    cells = [f"{name} {'+' if v[name]['increase_percent'] >= 0 else ''}{v[name]['increase_percent']:.2f} %"
             + ("" if v[name].get("met", True) else " (**misses** +" + f"{v[name]['target_percent']:.1f} %)")
             for name in ("int8", "int4 g32", "int4 g32 head fp32", "int4 g64", "int4 g128") if name in v]
    agree = q.get("llama_cpp", {})
    out.append((f"quantized val perplexity vs fp32 ({v['fp32']['perplexity']:.2f}), a trained 4L×128C GPT-2",
                "; ".join(cells) + f"; weight memory {x(v['int8']['memory_ratio'])} / "
                f"{x(v['int4 g32']['memory_ratio'])}"
                + "".join(f"; llama.cpp {t.upper()} same 32 greedy tokens on {a['same_32_tokens']}/{a['prompts']}"
                          for t, a in agree.items() if t != "f32"),
                "ours fp32", label, link("quantize.md")))
    return out


@entry
def gpu_matmul(results):
    data, [r] = _gpu(results, "matmul", lambda r: r["name"] == "best fp32 rung vs cuBLAS")
    size = _gpu(results, "matmul", lambda r: r["name"].startswith("cuBLAS"))[1][0]["name"].split()[2]
    return [(f"GPU: best fp32 matmul rung at {size.replace('^3', '³')}",
             f"{r['ours']:.1f} TFLOP/s = **{x(r['ratio'])}**", "cuBLAS (TF32 off)", machine_label(data),
             link("gpu.md"))]


@entry
def gpu_attention(results):
    data, rs = _gpu(results, "attention", lambda r: r["name"].startswith("fwd+bwd"))
    t0, t1 = (r["name"].split()[-1][1:] for r in (rs[0], rs[-1]))
    return [(f"GPU: attention fwd+bwd {' '.join(rs[0]['name'].split()[1:4])}, T={t0}…{t1}",
             f"{x(rs[0]['ratio'])} … {x(rs[-1]['ratio'])}", "torch SDPA", machine_label(data), link("gpu.md"))]


@entry
def gpu_training(results):
    data, [step] = _gpu(results, "train", lambda r: r["unit"] == "tokens/s")
    _, [loss] = _gpu(results, "train", lambda r: r["unit"] == "loss")
    gap = max(abs(a - b) for a, b in zip(loss["losses_ours"], loss["losses_peer"]))
    verdict = "within" if loss["passed"] else "**misses** the target of"
    return [(f"GPU: GPT-2-124M training step, {step['name'].split(' step ')[1]}",
             f"{x(step['ratio'])} tokens/s; largest loss gap over {len(loss['losses_ours'])} steps {sci(gap)}, "
             f"{verdict} 1e-3", "PyTorch eager", machine_label(data), link("gpu.md"))]


@entry
def distributed(results):
    data = load("distributed.json", results)
    e, z = row(data, "dp2 efficiency"), row(data, "zero1 optimizer memory")
    modes = [row(data, f"comm bytes {m}") for m in ("dp", "zero1", "tp", "pp")]
    eff = f"**{e['ours']:.2f}**" if e["passed"] else f"{e['ours']:.2f}, **misses** {e['target']}"
    return [("data parallel, 2 MPI ranks vs 1 process, 1 thread each, same per-rank batch",
             f"scaling efficiency {eff} (median of {e['rounds']} rounds, {e['ours_min']:.2f}–{e['ours_max']:.2f})",
             "2x one process", machine_label(data, _load(e)), link("distributed.md")),
            ("bytes sent per rank per step, DP / ZeRO-1 / TP / PP at N=2",
             " / ".join(x(m["ratio"], 3) for m in modes) + " the textbook formula",
             "2(N-1)/N x buffer (ring)", machine_label(data), link("distributed.md")),
            ("AdamW state per rank with ZeRO-1, N=2", f"{x(z['ours'])} of unsharded (target <= {z['target']}x)",
             "unsharded AdamW", machine_label(data), link("distributed.md"))]


@entry
def finetune(results):
    data = load("finetune.json", results)
    step, mem, packed = (row(data, n) for n in ("lora step", "lora peak memory", "sft packed vs padded"))

    def met(r):
        return f"**{x(r['ratio'])}**" if r["passed"] else f"{x(r['ratio'])}, **misses** {x(r['target'], 1)}"
    return [(f"LoRA step (r 8 on q,v), \"small\" shape, B 16 x T 256, {step['threads']} threads",
             f"{met(step)} tokens/s ({step['ours']:.0f} vs {step['peer']:.0f}, medians of {step['rounds']} "
             f"rounds; within a round {span([step['ratio_min'], step['ratio_max']])})",
             "PEFT + PyTorch eager", machine_label(data, _load(step)), link("finetune.md")),
            ("peak memory of that LoRA training (each side in its own process)",
             f"{x(mem['ours'] / mem['peer'])} of PEFT's ({mem['ours']:.0f} vs {mem['peer']:.0f} MiB; "
             f"target <= 1.0x{'' if mem['passed'] else ', **missed**'})",
             "PEFT + PyTorch eager", machine_label(data, _load(mem)), link("finetune.md")),
            ("SFT on a length-skewed set, packed rows (document-masked) vs padded rows",
             f"{met(packed)} useful tokens/s ({packed['ours']:.0f} vs {packed['peer']:.0f}; rows "
             f"{packed['fill_packed']:.0%} vs {packed['fill_padded']:.0%} real tokens)",
             "ours, padded", machine_label(data, _load(packed)), link("finetune.md"))]



@entry
def alignment(results):
    data = load("align.json", results)
    roll = rows_where(data, lambda r: r["name"].startswith("rollout tokens/s"))[0]
    dpo = rows_where(data, lambda r: r["name"].startswith("dpo step"))[0]

    def met(r, target):                 # the targets: rollouts >= 2x, a DPO step >= 1.0x
        return f"**{x(r['ratio'])}**" if r["ratio"] >= target else f"{x(r['ratio'])}, **misses** {x(target, 1)}"
    return [("PPO/GRPO rollouts, 16 prompts x 64 new tokens, batched greedy, demo shape (4L×96C)",
             f"{met(roll, 2.0)} tokens/s ({roll['ours']:.0f} vs {roll['peer']:.0f})",
             "HF transformers batched generate", machine_label(data), link("align.md")),
            ("a DPO step, 8 pairs x 40 tokens (forward, response log-probs, loss, backward, AdamW)",
             f"{met(dpo, 1.0)} ({dpo['ours']:.0f} vs {dpo['peer']:.0f} ms)",
             "PyTorch eager on the HF model", machine_label(data), link("align.md"))]

@entry
def mixture_of_experts(results):
    data = load("moe.json", results)
    layer = rows_where(data, lambda r: r["name"].startswith("moe grouped vs loop"))[0]
    step = rows_where(data, lambda r: r["name"].startswith("moe step"))[0]
    label = machine_label(data, span([layer["load_before"][0], data["machine"]["load_average"][0]], 1, ""))
    return [("MoE layer fwd+bwd, 8 experts x 512 hidden, top-2, C 384, 4096 tokens: grouped kernels "
             f"(permute, grouped matmul, combine), {layer['threads']} threads",
             f"{_vs(layer, layer['target'])} faster ({layer['ours']:.0f} vs {layer['peer']:.0f} ms)",
             "ours, per-expert Python loop", label, link("moe.md")),
            (f"MoE training step, \"small\" made MoE (6L×384C, every MLP 8 experts x 512, top-2), B 16 x T 256, "
             f"{step['threads']} threads",
             f"{_vs(step, step['target'])} tokens/s ({step['ours']:.0f} vs {step['peer']:.0f}; losses within "
             f"{sci(step['max_dloss'])})", "PyTorch eager, top-k MoE in torch ops", label, link("moe.md"))]


def check_demo(data, path="demo.json"):
    for key, kind in DEMO_FIELDS.items():
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            raise ReportError(f"{path}: field {key!r} missing or not {kind}; see DEMO_FIELDS in benchmarks/report.py")


@entry
def demo(results):
    data = load("demo.json", results)
    check_demo(data)
    return [(f"the demo (`{data['command']}`), {data['parameters'] / 1e6:.2f}M parameters, {data['steps']} steps",
             f"{data['wall_seconds']:.0f} s, {kilo(data['tokens_per_second'])} tokens/s, val "
             f"{data['final_val_loss']:.2f} nats ({data['final_val_bits_per_byte']:.2f} bits/byte)",
             "—", machine_label(data), link("demo.md"))]


@entry
def lifecycle(results):
    """lifecycle.json: one `microgpt lifecycle` run per size, runs.full and runs.quick."""
    data = load("lifecycle.json", results)
    full, quick = data["runs"]["full"], data["runs"]["quick"]
    share = lambda run: next(r["seconds"] for r in run["report"]["rows"] if r["stage"] == "pretrain") \
        / run["wall_seconds"]                                                  # noqa: E731
    loads = " / ".join(f"{min(r['load_avg_1min'].values()):.1f}–{max(r['load_avg_1min'].values()):.1f}"
                       for r in (full, quick))
    return [("the whole life (`microgpt lifecycle`, 12 stages from raw text to a served int8 model), "
             "default / `--quick` size",
             f"**{full['wall_seconds']:.0f} s** / **{quick['wall_seconds']:.0f} s** wall (goals < 3600 s / "
             f"≤ 600 s); pre-training {share(full):.0%} / {share(quick):.0%} of it",
             "—", machine_label(data, loads), link("lifecycle.md"))]


def table(results=RESULTS):
    """The markdown table, one line per figure."""
    _cache.clear()
    lines = ["| what | result | peer | measured on | file |", "|---|---|---|---|---|"]
    for fn in ENTRIES:
        try:
            cells_of_rows = fn(results)
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise ReportError(f"row {fn.__name__!r}: its results file lacks what it needs ({type(exc).__name__}: "
                              f"{exc}); rerun the benchmark that writes it") from exc
        for cells in cells_of_rows:
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def readme_table(text):
    """The table between the markers of a README's text (ReportError if the markers are not there once)."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ReportError("README.md: the results-table markers (see benchmarks/report.py) are missing or repeated")
    return text[text.index(BEGIN) + len(BEGIN):text.index(END)].strip("\n")


def replace_table(text, new_table):
    readme_table(text)                                      # the markers, once each, in order
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n\n" + new_table + "\n\n" + text[end:]      # blank lines: the table is its own block


def main(argv=None):
    parser = argparse.ArgumentParser(description="the README's results table from benchmarks/results/*.json")
    parser.add_argument("--write", action="store_true", help="replace the table in the README, atomically")
    parser.add_argument("--check", action="store_true", help="exit 1 if the README's table differs")
    parser.add_argument("--readme", default=README, help="the README to write or check (default: the repo's)")
    parser.add_argument("--results", default=RESULTS, help="the results folder (default: benchmarks/results)")
    args = parser.parse_args(argv)
    try:
        new = table(args.results)
        if not (args.write or args.check):
            print(new)
            return 0
        with open(args.readme, encoding="utf-8") as f:
            text = f.read()
        if args.check:
            same = readme_table(text) == new
            print("README table is up to date" if same else "README table differs from report.py's output; "
                  "run `python benchmarks/report.py --write`")
            return 0 if same else 1
        sys.path.insert(0, ROOT)
        from microgpt.fileio import atomic_write
        with atomic_write(args.readme, "w", encoding="utf-8") as f:
            f.write(replace_table(text, new))
        print(f"wrote the results table into {args.readme}")
        return 0
    except ReportError as exc:
        print(f"report.py: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
