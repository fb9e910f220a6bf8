"""The GPU check: every CUDA figure the project reports, measured in one run on one card.

Run by benchmarks/gpu_check.sh (which builds the library and runs the kernel tests first):

    python benchmarks/gpu_check.py --out DIR [--quick]

Sections (each one fails alone: an error is reported in its row and the rest still run):
  matmul     every rung of cuda/matmul.cu at 4096^3 float32 vs cuBLAS (torch.matmul, TF32
             off); each rung's result checked against a float64 product (||d|| / ||ref||).
             Target: best rung >= 0.8x cuBLAS.
  attention  fused causal attention forward + backward (v2_flash) vs torch's
             scaled_dot_product_attention at B=8, NH=12, HS=64, T = 1024, 2048, 4096,
             float32; results checked against float64 on one batch element at T=1024.
             Target: >= 0.5x.
  train      a GPT-2-124M-shaped step (12 layers, 12 heads, 768 channels, context 1024,
             batch 8, vocab 50304 as in nanoGPT/llm.c) on microgpt's engine with the cuda
             backend vs benchmarks/gpu_train_peer.py in PyTorch eager, both from the same
             initial weights (microgpt's init, loaded into torch) on the same two batches
             alternated, AdamW lr 3e-4, 20 steps. Targets: >= 0.5x tokens/s, and every
             step's loss within 1e-3 of PyTorch's (the largest difference over the 20
             steps; the last step's difference is reported beside it). This target was
             fixed before the first GPU run and stays as it was: a run that misses it is
             recorded as a miss, not re-judged by a looser criterion.
Timing: CUDA events around each call after a warm-up, median of repeats (the number of
repeats adapts to a time budget); the training step is timed by the host around a whole
step (it ends with loss.item(), a synchronization) over steps 3..20.
Writes DIR/gpu_check.json and DIR/gpu.md, and prints the table last. gpu_check.sh runs each
section in its own process (--sections X --rows FILE) under a time limit, then --merge.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
import traceback

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

ROWS = []        # one dict per reported figure
RUNGS = ["matmul_forward_v1_naive", "matmul_forward_v2_coalesced", "matmul_forward_v3_smem",
         "matmul_forward_v4_regblock", "matmul_forward_v5_vectorized", "matmul_forward_v6_warptile",
         "matmul_forward_v7_bf16_tc"]


def row(section, name, ours=None, peer=None, unit="ms", target=None, note="", error=None, passed=None):
    """Record a figure; ratio > 1 means ours is better (time: peer/ours; rate: ours/peer).
    A numeric target is a minimum ratio; a text target comes with its own `passed`."""
    ratio = None
    if ours and peer and unit != "loss":
        ratio = peer / ours if unit == "ms" else ours / peer
    if isinstance(target, (int, float)):
        passed = None if ratio is None else ratio >= target
    entry = {"section": section, "name": name, "ours": ours, "peer": peer, "unit": unit, "ratio": ratio,
             "target": target, "passed": passed, "note": note, "error": error}
    ROWS.append(entry)
    print(format_row(entry), flush=True)
    return entry


def format_row(r):
    def num(x):
        return f"{x:12.3f}" if isinstance(x, (int, float)) else f"{'-':>12}"
    ratio = f"{r['ratio']:7.2f}x" if r["ratio"] else f"{'-':>8}"
    target = "" if r["passed"] is None else f"{_target_text(r)} {'PASS' if r['passed'] else 'MISS'}"
    tail = f"ERROR {r['error']}" if r["error"] else r["note"]
    return (f"{r['section']:<9} {r['name']:<40} {num(r['ours'])} {num(r['peer'])} {ratio} {r['unit']:<9} "
            f"{target:<11} {tail}")


def _target_text(r):
    return f">={r['target']}x" if isinstance(r["target"], (int, float)) else str(r["target"])


def guarded(section):
    """Run a section; an exception becomes an error row and the next section still runs."""
    def wrap(fn):
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:   # noqa: BLE001 - reported, never swallowed silently
                traceback.print_exc()
                row(section, "section failed", error=f"{type(exc).__name__}: {str(exc)[:300]}")
        return run
    return wrap


def rel_err(ours, ref):
    ours, ref = ours.detach().double(), ref.detach().double()
    if not bool(ours.isfinite().all()):
        return float("nan")
    return float((ours - ref).norm() / ref.norm().clamp_min(1e-30))


def time_ms(torch, fn, budget_s=1.5, max_reps=20):
    """Median milliseconds of fn() by CUDA events, after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    stop.record()
    stop.synchronize()
    first = start.elapsed_time(stop)
    reps = int(max(2, min(max_reps, budget_s * 1e3 / max(first, 1e-3))))
    times = []
    for _ in range(reps):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


# --- matmul ----------------------------------------------------------------------------------------

@guarded("matmul")
def matmul_section(torch, rt, size):
    gen = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(size, size, device="cuda", generator=gen)
    b = torch.randn(size, size, device="cuda", generator=gen)
    c = torch.empty(size, size, device="cuda")
    ref = a.double() @ b.double()
    flop = 2.0 * size ** 3
    peer_ms = time_ms(torch, lambda: torch.matmul(a, b, out=c))
    peer_err = rel_err(c, ref)
    peer_tflops = flop / peer_ms / 1e9
    row("matmul", f"cuBLAS sgemm {size}^3 (TF32 off)", peer_tflops, None, "TFLOP/s", note=f"err {peer_err:.1e}")

    def ptr(t):
        return rt.ffi.cast("float*", t.data_ptr())
    best = 0.0
    for rung in RUNGS:
        def ours():
            rt.call(rung, ptr(c), ptr(a), ptr(b), rt.ffi.NULL, size, size, size, 0, 0)   # no bias, no transposes
        c.fill_(float("nan"))                                   # poison: unwritten elements stay NaN
        ours()
        torch.cuda.synchronize()
        err = rel_err(c, ref)
        ms = time_ms(torch, ours, budget_s=1.0 if "v1" in rung or "v2" in rung else 1.5)
        tflops = flop / ms / 1e9
        bf16 = "bf16" in rung
        ok = err < (1e-2 if bf16 else 1e-5)
        if not bf16:
            best = max(best, tflops if ok else 0.0)
        row("matmul", rung.replace("matmul_forward_", ""), tflops, peer_tflops, "TFLOP/s",
            note=f"err {err:.1e}{'' if ok else ' WRONG'}{' (bf16 inputs, fp32 accumulate)' if bf16 else ''}")
    row("matmul", "best fp32 rung vs cuBLAS", best, peer_tflops, "TFLOP/s", target=0.8)


# --- attention --------------------------------------------------------------------------------------

def attention_reference(q, k, v, dout):
    """float64 causal attention and its gradients through torch autograd (math, no fused kernel)."""
    q, k, v = (x.double().detach().requires_grad_() for x in (q, k, v))
    t, hs = q.shape[-2], q.shape[-1]
    s = (q @ k.transpose(-1, -2)) / hs ** 0.5
    s = s.masked_fill(~(q.new_ones(t, t, dtype=bool).tril()), float("-inf"))
    out = s.softmax(-1) @ v
    out.backward(dout.double())
    return out, q.grad, k.grad, v.grad


@guarded("attention")
def attention_section(torch, rt, batch, heads, head_size, lengths):
    import torch.nn.functional as F

    def ptr(t):
        return rt.ffi.cast("float*", t.data_ptr())
    for t in lengths:
        gen = torch.Generator(device="cuda").manual_seed(t)
        q, k, v, dout = (torch.randn(batch, heads, t, head_size, device="cuda", generator=gen) for _ in range(4))
        out, dq, dk, dv = (torch.empty_like(q) for _ in range(4))
        lse, delta = (torch.empty(batch, heads, t, device="cuda") for _ in range(2))
        sizes = (batch, heads, heads, t, t, head_size)

        def forward():
            rt.call("attention_forward_v2_flash", ptr(out), ptr(lse), ptr(q), ptr(k), ptr(v), rt.ffi.NULL, *sizes)

        def backward():
            rt.call("attention_backward_v2_flash", ptr(dq), ptr(dk), ptr(dv), ptr(delta), ptr(dout), ptr(q), ptr(k),
                    ptr(v), ptr(out), ptr(lse), rt.ffi.NULL, *sizes)

        note = ""
        if t == lengths[0]:
            for x in (out, dq, dk, dv):
                x.fill_(float("nan"))
            forward()
            backward()
            torch.cuda.synchronize()
            want = attention_reference(q[:1], k[:1], v[:1], dout[:1])
            errs = [rel_err(got[:1], ref) for got, ref in zip((out, dq, dk, dv), want)]
            note = "err out/dq/dk/dv " + "/".join(f"{e:.1e}" for e in errs)
            if not all(e < 1e-5 for e in errs):
                note += " WRONG"
        qt, kt, vt = (x.clone().requires_grad_() for x in (q, k, v))

        def peer():
            qt.grad = kt.grad = vt.grad = None
            F.scaled_dot_product_attention(qt, kt, vt, is_causal=True).backward(dout)

        ours_ms = time_ms(torch, lambda: (forward(), backward()))
        peer_ms = time_ms(torch, peer)
        fwd_ms = time_ms(torch, forward)
        peer_fwd = time_ms(torch, lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True))
        row("attention", f"fwd+bwd B{batch} NH{heads} HS{head_size} T{t}", ours_ms, peer_ms, "ms", target=0.5,
            note=note)
        row("attention", f"fwd only T{t}", fwd_ms, peer_fwd, "ms")


# --- training step -----------------------------------------------------------------------------------

def make_batches(vocab, batch, t, count=2, seed=1234):
    rng = np.random.default_rng(seed)
    data = [rng.integers(0, vocab, size=(batch, t + 1)) for _ in range(count)]
    return [(d[:, :-1].astype(np.int64), d[:, 1:].astype(np.int64)) for d in data]


def train_ours(config, batches, steps, lr, device="cuda", budget_s=80.0):
    """microgpt's GPT on `device`: (initial state_dict, losses, seconds per step). Stops early
    (fewer steps, and the peer then runs as many) if the steps outrun budget_s."""
    from microgpt import GPT
    from microgpt.train.optim import AdamW
    model = GPT(config, seed=0)
    state = model.state_dict()
    model.to(device)
    opt = AdamW(model.named_parameters(), weight_decay=0.1)
    losses, seconds = [], []
    for step in range(steps):
        idx, targets = batches[step % len(batches)]
        start = time.perf_counter()
        _, loss = model(idx, targets=targets)
        loss.backward()
        opt.step(lr)
        opt.zero_grad()
        losses.append(loss.item())                 # a synchronization: the step is done
        seconds.append(time.perf_counter() - start)
        del loss
        print(f"  ours step {step}: loss {losses[-1]:.5f}, {seconds[-1] * 1e3:.0f} ms", flush=True)
        if sum(seconds) > budget_s and step >= 2:
            break
    return state, losses, seconds


def train_torch(torch, config, state, batches, steps, lr, device="cuda"):
    """The PyTorch peer from the same weights: (losses, seconds per step)."""
    from gpu_train_peer import peer_from_state
    model, opt = peer_from_state(config, state, lr, device)
    data = [(torch.from_numpy(i).to(device), torch.from_numpy(t).to(device)) for i, t in batches]
    losses, seconds = [], []
    for step in range(steps):
        idx, targets = data[step % len(data)]
        start = time.perf_counter()
        loss = model(idx, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        seconds.append(time.perf_counter() - start)
    return losses, seconds


LOSS_TARGET = "every step abs diff<=1e-3"


def max_gap(ours, peer):
    """(largest |ours - peer| over the steps, its 0-based step): the loss-parity criterion."""
    diffs = [abs(a - b) for a, b in zip(ours, peer)]
    worst = max(range(len(diffs)), key=diffs.__getitem__)
    return diffs[worst], worst


@guarded("train")
def train_section(torch, config, batch, steps, lr):
    batches = make_batches(config.vocab_size, batch, config.block_size)
    state, ours, ours_s = train_ours(config, batches, steps, lr)
    from microgpt.backends import cuda
    cuda.rt.POOL.release_cache()
    steps = len(ours)
    peer, peer_s = train_torch(torch, config, state, batches, steps, lr)
    tokens = batch * config.block_size
    skip = min(2, steps - 1)
    ours_tps, peer_tps = tokens / statistics.median(ours_s[skip:]), tokens / statistics.median(peer_s[skip:])
    row("train", f"GPT-2 124M step B{batch} T{config.block_size}", ours_tps, peer_tps, "tokens/s", target=0.5,
        note=f"step {1e3 * tokens / ours_tps:.0f} ms vs {1e3 * tokens / peer_tps:.0f} ms")
    largest, worst = max_gap(ours, peer)
    loss_row = row("train", f"loss over {steps} steps vs PyTorch", ours[-1], peer[-1], "loss",
                   target=LOSS_TARGET, passed=largest <= 1e-3,
                   note=f"largest abs diff {largest:.1e} (step {worst + 1}); after the last step "
                        f"{abs(ours[-1] - peer[-1]):.1e}; first loss {ours[0]:.4f}")
    loss_row["losses_ours"], loss_row["losses_peer"] = ours, peer
    print("losses ours:", " ".join(f"{x:.5f}" for x in ours))
    print("losses peer:", " ".join(f"{x:.5f}" for x in peer))


# --- report ---------------------------------------------------------------------------------------------

def machine(torch):
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "platform": platform.platform(), "python": platform.python_version(), "numpy": np.__version__}
    if torch is not None:
        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info.update(gpu=props.name, sms=props.multi_processor_count,
                        gpu_memory_gb=round(props.total_memory / 2**30, 1))
    return info


def _fmt(x):
    return f"{x:.3f}" if isinstance(x, (int, float)) else "-"


def report(out_dir, info, notes):
    from microgpt.fileio import atomic_write
    lines = [f"{'section':<9} {'case':<40} {'ours':>12} {'peer':>12} {'ratio':>8} {'unit':<9} target",
             *(format_row(r) for r in ROWS)]
    print("\n== GPU check ==")
    print("\n".join(lines))
    print(f"card: {info.get('gpu', 'none')}; {info['date']}")
    for n in notes:
        print("note:", n)
    if not out_dir:
        return
    os.makedirs(out_dir, exist_ok=True)
    payload = {"machine": info, "rows": ROWS, "notes": notes}
    md = ["# GPU check", "", f"Card: **{info.get('gpu', 'none')}**, measured {info['date']} "
          f"(torch {info.get('torch', '-')}, Python {info['python']}). Produced by `benchmarks/gpu_check.sh`; "
          "ratio > 1 means microgpt is faster (time: peer/ours; rate: ours/peer).", "",
          "| section | case | ours | peer | unit | ratio | target | note |", "|---|---|---|---|---|---|---|---|"]
    for r in ROWS:
        target = "" if r["passed"] is None else f"{_target_text(r)} {'PASS' if r['passed'] else 'MISS'}"
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] else "-"
        note = f"ERROR {r['error']}" if r["error"] else r["note"]
        md.append(f"| {r['section']} | {r['name']} | {_fmt(r['ours'])} | {_fmt(r['peer'])} | {r['unit']} | "
                  f"{ratio} | {target} | {note} |")
    md += ["", *(f"- {n}" for n in notes), ""]
    for name, text in (("gpu_check.json", json.dumps(payload, indent=1)), ("gpu.md", "\n".join(md))):
        with atomic_write(os.path.join(out_dir, name)) as f:
            f.write(text)


def main():
    parser = argparse.ArgumentParser(description="microgpt's GPU check (see the module docstring)")
    parser.add_argument("--out", help="folder for gpu_check.json and gpu.md")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test of the script)")
    parser.add_argument("--sections", default="matmul,attention,train", help="comma-separated sections to run")
    parser.add_argument("--rows", help="write this run's rows to FILE instead of reporting (one process per "
                                       "section keeps a crashed kernel from taking the others down)")
    parser.add_argument("--merge", nargs="*", default=None, help="report the rows of these files")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        torch = None
    info, notes = machine(torch), []
    if args.merge is not None:
        for path in args.merge:
            try:
                with open(path) as f:
                    ROWS.extend(json.load(f))
            except (OSError, ValueError) as exc:
                notes.append(f"no rows from {os.path.basename(path)} ({type(exc).__name__}): "
                             "that section did not finish")
        report(args.out, info, notes)
        return 0
    from microgpt.backends import cuda, cuda_runtime as rt
    sections = [s for s in args.sections.split(",") if s]
    if torch is None or not torch.cuda.is_available() or not cuda.AVAILABLE:
        why = "torch missing" if torch is None else "torch sees no GPU" if not torch.cuda.is_available() \
            else f"cuda backend unavailable: {cuda.UNAVAILABLE_REASON}"
        for sec in sections:
            row(sec, "not run", error=why)
    else:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        quick = args.quick
        if "matmul" in sections:
            matmul_section(torch, rt, 1024 if quick else 4096)
        if "attention" in sections:
            attention_section(torch, rt, 2 if quick else 8, 12, 64, (256,) if quick else (1024, 2048, 4096))
        if "train" in sections:
            from microgpt import GPTConfig
            config = GPTConfig(family="gpt2", vocab_size=50304, block_size=256 if quick else 1024,
                               n_layer=2 if quick else 12, n_head=12, n_embd=768)
            train_section(torch, config, 2 if quick else 8, 5 if quick else 20, 3e-4)
    if args.rows:
        from microgpt.fileio import atomic_write
        with atomic_write(args.rows) as f:
            json.dump(ROWS, f)
    else:
        report(args.out, info, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
