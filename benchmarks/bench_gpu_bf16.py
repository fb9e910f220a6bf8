"""The bf16 figures of issue 19 on a lent GPU: the tensor-core GEMM against cuBLAS, and a whole
GPT-2-124M training step in float32 and in bf16 mixed precision against PyTorch.

Run by benchmarks/gpu_check.sh, one section a process (rows merged by gpu_check.py --merge):

    python benchmarks/bench_gpu_bf16.py --sections gemm,attention --rows FILE
    python benchmarks/bench_gpu_bf16.py --sections step --rows FILE
    python benchmarks/bench_gpu_bf16.py --dry        imports everything, prints the plan (no GPU)

Sections (each fails alone: an error becomes its row):
  gemm  cuda/matmul_bf16.cu (matmul_bf16, bf16 in, float32 accumulate and out) against
        cuBLAS bf16 through torch.matmul (bf16 in, float32 accumulate, bf16 out), at the
        products of a GPT-2-124M step with B x T = 8192 rows (forward x @ w^T of every layer
        and the tied lm_head, the dX and dW layouts of the MLP and of the square projection)
        and at 4096^3. Inputs are random bf16 (never zeros); our result is poisoned first and
        checked against the float64 product of the same bf16 values (only float32 summation
        error is left: flagged WRONG above 1e-4). Rows `gpu bf16 gemm <case>` and the summary
        `gpu bf16 gemm` (the smallest ratio). Target >= 0.7x cuBLAS at every shape.
  attention  cuda/attention_bf16.cu forward + backward vs torch SDPA (flash backend) forward +
        backward on bf16 q, k, v, dout (causal, B 8, NH 12, HS 64, T 1024 / 2048 / 4096); rows
        `gpu bf16 attention ... fwd+bwd`, target >= 0.8x (issue 19), and forward alone. Checked
        at the first T against float64 autograd on one batch element (out, dq, dk, dv within
        2u, lse within 1e-5).
  step  GPT-2-124M (12 layers, 12 heads, 768 channels, context 1024, vocab 50304), B = 8,
        AdamW lr 3e-4, 20 steps from the same initial weights on the same two batches
        alternated, five runs: ours float32, ours --dtype bf16 (backends/cuda_bf16.py: bf16
        matmuls and attention), ours bf16 with float32 attention (MICROGPT_BF16_ATTENTION=0:
        what the bf16 attention kernels are worth, and a figure should they fail), PyTorch
        eager float32 (TF32 off) and PyTorch eager under torch.autocast(bfloat16) (SDPA in both).
        Rows and targets, fixed before the run (issue 19):
          gpu step fp32   ours / PyTorch eager float32 tokens/s, >= 1.0x
          gpu step bf16   ours bf16 / PyTorch autocast bf16 tokens/s, >= 0.9x
          loss fp32       every step's loss within 1e-3 of PyTorch float32's
          loss bf16       every step's loss within cuda_bf16.LOSS_GAP_BOUND (2u = 2^-7,
                          relative) of our float32 run's, which stands in for the CPU's
                          (tests/test_cuda_model.py: the cuda and cpu float32 runs agree to
                          1e-4; 20 CPU steps of this model would take minutes of device time)
          loss autocast   PyTorch's own bf16-vs-float32 gap, for scale (no target)
        With --profile FILE, one more step of each run goes through torch.profiler (CUDA
        activity: every kernel of the process, ours included) and FILE gets each run's
        kernels by device time: issue 19's "profile first" table.
Timing: CUDA events around each GEMM, median of repeats after a warm-up; a training step by
the host clock (it ends in loss.item(), a synchronization), median over steps 3..20.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import gpu_check  # noqa: E402 - the shared row format, timing and reporting
from gpu_check import (LOSS_TARGET, attention_reference, guarded, make_batches, max_gap, rel_err, row,  # noqa: E402
                       time_ms)

ROWS = 8192                 # B x T of the step
# (case, M, N, K, trans_a, trans_b): out (M, N) = op(a) @ op(b) as the linear layers call it
GEMM_CASES = [
    ("attn qkv fwd", ROWS, 2304, 768, 0, 1),
    ("attn proj fwd", ROWS, 768, 768, 0, 1),
    ("mlp fc fwd", ROWS, 3072, 768, 0, 1),
    ("mlp proj fwd", ROWS, 768, 3072, 0, 1),
    ("lm_head fwd", ROWS, 50304, 768, 0, 1),
    ("mlp fc dX", ROWS, 768, 3072, 0, 0),
    ("mlp fc dW", 3072, 768, ROWS, 1, 0),
    ("attn proj dW", 768, 768, ROWS, 1, 0),
    ("4096^3", 4096, 4096, 4096, 0, 0),
]
GEMM_TARGET = 0.7
ATTENTION_TARGET = 0.8      # issue 19: bf16 attention fwd+bwd, T = 1024 ... 4096, vs SDPA
PROFILE = []                # markdown lines of the profiled steps (--profile FILE writes them)
STEP_TARGETS = {"fp32": 1.0, "bf16": 0.9}


# --- gemm -----------------------------------------------------------------------------------------

@guarded("bf16")
def gemm_section(torch, rt, cases, budget_s=0.5):
    def ptr(kind, t):
        return rt.ffi.cast(kind, t.data_ptr())
    ratios = []
    for name, m, n, k, ta, tb in cases:
        gen = torch.Generator(device="cuda").manual_seed(m + n + k)
        a = torch.randn((k, m) if ta else (m, k), device="cuda", generator=gen).to(torch.bfloat16)
        b = torch.randn((n, k) if tb else (k, n), device="cuda", generator=gen).to(torch.bfloat16)
        op_a, op_b = (a.t() if ta else a), (b.t() if tb else b)
        out = torch.full((m, n), float("nan"), device="cuda")

        def ours():
            rt.call("matmul_bf16", ptr("float*", out), ptr("uint16_t*", a), ptr("uint16_t*", b), rt.ffi.NULL,
                    m, n, k, ta, tb)

        ours()
        torch.cuda.synchronize()
        ref = op_a.double() @ op_b.double()
        err = rel_err(out, ref)
        peer_out = torch.matmul(op_a, op_b)
        peer_err = rel_err(peer_out, ref)
        del ref
        flop = 2.0 * m * n * k
        ours_ms = time_ms(torch, ours, budget_s=budget_s)
        peer_ms = time_ms(torch, lambda: torch.matmul(op_a, op_b), budget_s=budget_s)
        ok = err < 1e-4
        r = row("bf16", f"gpu bf16 gemm {name} {m}x{n}x{k}", flop / ours_ms / 1e9, flop / peer_ms / 1e9, "TFLOP/s",
                target=GEMM_TARGET, note=f"err {err:.1e}{'' if ok else ' WRONG'} (cuBLAS, bf16 out: {peer_err:.1e})")
        ratios.append(r["ratio"] if ok else 0.0)
    worst = min(ratios) if ratios else None
    row("bf16", "gpu bf16 gemm", worst, 1.0 if ratios else None, "x", target=GEMM_TARGET,
        note="smallest ratio over the shapes above (a WRONG result counts as 0)")
    # the conversion the mixed-precision step pays before each product: memory-bound
    x = torch.randn(ROWS, 3072, device="cuda")
    x16 = torch.empty(ROWS, 3072, device="cuda", dtype=torch.bfloat16)
    ms = time_ms(torch, lambda: rt.call("f32_to_bf16", ptr("uint16_t*", x16), ptr("float*", x), x.numel()),
                 budget_s=budget_s)
    peer = time_ms(torch, lambda: x.to(torch.bfloat16), budget_s=budget_s)
    same = bool(torch.equal(x16.view(torch.int16), x.to(torch.bfloat16).view(torch.int16)))
    gbs = x.numel() * 6 / ms / 1e6
    row("bf16", f"f32_to_bf16 {ROWS}x3072 (GB/s read+written)", gbs, x.numel() * 6 / peer / 1e6, "GB/s",
        note="bits equal to torch's" if same else "BITS DIFFER from torch's rounding")


# --- attention forward -----------------------------------------------------------------------------

@guarded("bf16")
def attention_section(torch, rt, batch, heads, lengths, budget_s=0.5):
    """attention_bf16_forward vs SDPA in bf16 (flash backend where torch has it), forward only."""
    import torch.nn.functional as F

    def ptr(kind, t):
        return rt.ffi.cast(kind, t.data_ptr())
    for t in lengths:
        gen = torch.Generator(device="cuda").manual_seed(t)
        q, k, v = (torch.randn(batch, heads, t, 64, device="cuda", generator=gen).to(torch.bfloat16)
                   for _ in range(3))
        out = torch.full((batch, heads, t, 64), float("nan"), device="cuda")
        lse = torch.empty(batch, heads, t, device="cuda")

        def ours():
            rt.call("attention_bf16_forward", ptr("float*", out), ptr("float*", lse), ptr("uint16_t*", q),
                    ptr("uint16_t*", k), ptr("uint16_t*", v), rt.ffi.NULL, batch, heads, heads, t, t, 64)

        dout16 = torch.randn(batch, heads, t, 64, device="cuda", generator=gen).to(torch.bfloat16)
        dout = dout16.float()                                  # the same values, float32 (for delta)
        dq, dk, dv = (torch.full((batch, heads, t, 64), float("nan"), device="cuda") for _ in range(3))
        delta = torch.empty(batch, heads, t, device="cuda")

        def backward():
            rt.call("attention_bf16_backward_v1_mma", ptr("float*", dq), ptr("float*", dk), ptr("float*", dv),
                    ptr("float*", delta), ptr("float*", dout), ptr("uint16_t*", dout16), ptr("uint16_t*", q),
                    ptr("uint16_t*", k), ptr("uint16_t*", v), ptr("float*", out), ptr("float*", lse), rt.ffi.NULL,
                    batch, heads, heads, t, t, 64)

        note = ""
        if t == lengths[0]:
            ours()
            backward()
            torch.cuda.synchronize()
            want = attention_reference(q[:1], k[:1], v[:1], dout[:1])           # float64 autograd
            qd, kd = q[:1].double(), k[:1].double()
            scores = (qd @ kd.transpose(-1, -2)) / 8.0
            scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool, device="cuda").tril(), float("-inf"))
            errs = [rel_err(got[:1], w) for got, w in zip((out, dq, dk, dv), want)]
            err_lse = rel_err(lse[:1], scores.logsumexp(-1))
            ok = all(e < 2 * 2.0 ** -8 for e in errs) and err_lse < 1e-5
            note = (f"err out/dq/dk/dv {'/'.join(f'{e:.1e}' for e in errs)}, lse {err_lse:.1e}"
                    f"{'' if ok else ' WRONG'}")
        qt, kt, vt = (x.clone().requires_grad_() for x in (q, k, v))

        def peer_both():
            qt.grad = kt.grad = vt.grad = None
            F.scaled_dot_product_attention(qt, kt, vt, is_causal=True).backward(dout16)

        ours_ms = time_ms(torch, ours, budget_s=budget_s)
        peer_ms = time_ms(torch, lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), budget_s=budget_s)
        both_ms = time_ms(torch, lambda: (ours(), backward()), budget_s=budget_s)
        peer_both_ms = time_ms(torch, peer_both, budget_s=budget_s)
        row("bf16", f"gpu bf16 attention B{batch} NH{heads} HS64 T{t} fwd+bwd", both_ms, peer_both_ms, "ms",
            target=ATTENTION_TARGET, note=note)
        row("bf16", f"gpu bf16 attention fwd only T{t}", ours_ms, peer_ms, "ms")


# --- step -----------------------------------------------------------------------------------------

def kernel_table(torch, prof, label, top=15):
    """Markdown lines: the `top` kernels of one profiled step by device time."""
    kernels = []
    for evt in prof.key_averages():
        if not str(getattr(evt, "device_type", "")).endswith("CUDA"):
            continue
        us = next((getattr(evt, a) for a in ("self_device_time_total", "self_cuda_time_total", "device_time_total",
                                             "cuda_time_total") if getattr(evt, a, None)), 0.0)
        kernels.append((us, evt.count, evt.key))
    kernels.sort(reverse=True)
    total = sum(us for us, _, _ in kernels) or 1.0
    lines = [f"### {label}: {total / 1e3:.1f} ms of kernels in one step, {len(kernels)} kernels", "",
             "| kernel | calls | ms | share |", "|---|---|---|---|"]
    for us, count, name in kernels[:top]:
        name = name.replace("|", "/")
        lines.append(f"| `{name[:90]}` | {count} | {us / 1e3:.2f} | {100 * us / total:.1f} % |")
    return lines + [""]


def profiled(torch, step, label):
    """Run step() once under torch.profiler (CUDA activity: every kernel of the process, ours
    launched through cffi included) and return its kernel_table."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    return kernel_table(torch, prof, label)


def train_ours(config, batches, steps, lr, dtype, budget_s=60.0, profile_with=None):
    """microgpt's GPT on cuda in `dtype`: (initial state_dict, losses, seconds per step). Stops
    early (fewer steps; the other runs then take as many) if the steps outrun budget_s. With
    profile_with (torch), one more step runs under the profiler: its table is appended to
    PROFILE."""
    from microgpt import GPT
    from microgpt.backends import cuda_bf16
    from microgpt.train.optim import AdamW
    model = GPT(config, seed=0)
    state = model.state_dict()
    model.to("cuda")
    opt = AdamW(model.named_parameters(), weight_decay=0.1)
    losses, seconds = [], []
    for step in range(steps):
        idx, targets = batches[step % len(batches)]
        start = time.perf_counter()
        with cuda_bf16.matmul_precision(dtype):
            _, loss = model(idx, targets=targets)
            loss.backward()
        opt.step(lr)
        opt.zero_grad()
        losses.append(loss.item())
        seconds.append(time.perf_counter() - start)
        del loss
        print(f"  ours {dtype} step {step}: loss {losses[-1]:.5f}, {seconds[-1] * 1e3:.0f} ms", flush=True)
        if sum(seconds) > budget_s and step >= 2:
            break
    if profile_with is not None:
        def one_step():
            idx, targets = batches[0]
            with cuda_bf16.matmul_precision(dtype):
                _, loss = model(idx, targets=targets)
                loss.backward()
            opt.step(lr)
            opt.zero_grad()
        PROFILE.extend(profiled(profile_with, one_step, f"ours {dtype}"))
    return state, losses, seconds


def train_torch(torch, config, state, batches, steps, lr, autocast, device="cuda", profile=False):
    """The PyTorch peer (gpu_train_peer.py) from the same weights, float32 or under autocast bf16
    (with profile, one more step's kernel table goes to PROFILE)."""
    import contextlib

    from gpu_train_peer import peer_from_state
    model, opt = peer_from_state(config, state, lr, device)
    data = [(torch.from_numpy(i).to(device), torch.from_numpy(t).to(device)) for i, t in batches]
    scope = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if autocast else contextlib.nullcontext
    losses, seconds = [], []
    for step in range(steps):
        idx, targets = data[step % len(data)]
        start = time.perf_counter()
        with scope():
            loss = model(idx, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        seconds.append(time.perf_counter() - start)
    if profile:
        def one_step():
            with scope():
                loss = model(data[0][0], data[0][1])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        PROFILE.extend(profiled(torch, one_step, "PyTorch " + ("autocast bf16" if autocast else "eager fp32")))
    return losses, seconds


def bf16_gaps(bf16, fp32):
    """(passed, largest gap, its 0-based step, the bound there): every step within the bound."""
    from microgpt.backends.cuda_bf16 import LOSS_GAP_BOUND
    gaps = [abs(a - b) for a, b in zip(bf16, fp32)]
    bounds = [LOSS_GAP_BOUND * abs(b) for b in fp32]
    worst = max(range(len(gaps)), key=lambda i: gaps[i] / bounds[i])
    return all(g <= bd for g, bd in zip(gaps, bounds)), gaps[worst], worst, bounds[worst]


@guarded("step")
def step_section(torch, config, batch, steps, lr, profile=False):
    from microgpt.backends import cuda
    batches = make_batches(config.vocab_size, batch, config.block_size)
    prof = torch if profile else None
    state, fp32, fp32_s = train_ours(config, batches, steps, lr, "float32", profile_with=prof)
    cuda.rt.POOL.release_cache()
    _, bf16, bf16_s = train_ours(config, batches, len(fp32), lr, "bf16", profile_with=prof)
    cuda.rt.POOL.release_cache()
    from microgpt.backends import cuda_bf16
    attention, cuda_bf16.ATTENTION = cuda_bf16.ATTENTION, False   # bf16 matmuls, float32 attention
    try:
        _, bf16_fa, bf16_fa_s = train_ours(config, batches, len(fp32), lr, "bf16")
    finally:
        cuda_bf16.ATTENTION = attention
    cuda.rt.POOL.release_cache()
    steps = min(len(fp32), len(bf16), len(bf16_fa))
    peer32, peer32_s = train_torch(torch, config, state, batches, steps, lr, autocast=False, profile=profile)
    torch.cuda.empty_cache()                     # the float32 peer's memory back before the next run
    peer16, peer16_s = train_torch(torch, config, state, batches, steps, lr, autocast=True, profile=profile)
    tokens = batch * config.block_size
    skip = min(2, steps - 1)

    def tps(seconds):
        return tokens / statistics.median(seconds[skip:steps])

    for dtype, ours_s, peer_s, peer_name in (("fp32", fp32_s, peer32_s, "PyTorch eager fp32"),
                                             ("bf16", bf16_s, peer16_s, "PyTorch autocast bf16")):
        o, p = tps(ours_s), tps(peer_s)
        row("step", f"gpu step {dtype}", o, p, "tokens/s", target=STEP_TARGETS[dtype],
            note=f"GPT-2 124M B{batch} T{config.block_size}: {1e3 * tokens / o:.0f} ms vs {1e3 * tokens / p:.0f} ms "
                 f"({peer_name})")
    o, p = tps(bf16_fa_s), tps(peer16_s)
    row("step", "gpu step bf16, float32 attention", o, p, "tokens/s",
        note=f"bf16 matmuls only (MICROGPT_BF16_ATTENTION=0): {1e3 * tokens / o:.0f} ms; its loss gap to fp32: "
             f"{'within' if bf16_gaps(bf16_fa[:steps], fp32[:steps])[0] else 'OVER'} the bound")
    largest, worst = max_gap(fp32[:steps], peer32)
    r = row("step", f"loss fp32 vs PyTorch fp32, {steps} steps", fp32[steps - 1], peer32[-1], "loss",
            target=LOSS_TARGET, passed=largest <= 1e-3, note=f"largest abs diff {largest:.1e} (step {worst + 1})")
    r["losses_ours"], r["losses_peer"] = fp32[:steps], peer32
    passed, gap, at, bound = bf16_gaps(bf16[:steps], fp32[:steps])
    r = row("step", f"loss bf16 vs fp32 (ours), {steps} steps", bf16[steps - 1], fp32[steps - 1], "loss",
            target="every step gap<=2^-7 x loss", passed=passed,
            note=f"closest to the bound: step {at + 1}, gap {gap:.1e} (bound {bound:.1e}); "
                 f"largest gap {max(abs(a - b) for a, b in zip(bf16, fp32)):.1e}; first losses "
                 f"{bf16[0]:.4f} / {fp32[0]:.4f}")
    r["losses_ours"], r["losses_peer"] = bf16[:steps], fp32[:steps]
    largest, worst = max_gap(peer16, peer32)
    r = row("step", f"loss PyTorch autocast vs fp32, {steps} steps", peer16[-1], peer32[-1], "loss",
            note=f"for scale: PyTorch's own bf16 gap, largest {largest:.1e} (step {worst + 1})")
    r["losses_ours"], r["losses_peer"] = peer16, peer32
    for name, values in (("ours fp32", fp32), ("ours bf16", bf16), ("ours bf16 fp32-attention", bf16_fa),
                         ("torch fp32", peer32), ("torch bf16", peer16)):
        print(f"losses {name}:", " ".join(f"{x:.5f}" for x in values))


# --- every bf16 kernel once, small (for compute-sanitizer) -------------------------------------------

def kernels_once():
    """Each bf16 kernel on small awkward shapes through the cuda backend, checked against NumPy;
    gpu_check.sh runs this under compute-sanitizer (memcheck: out-of-bounds accesses; racecheck:
    shared-memory hazards of the cp.async / ldmatrix pipelines). Returns the number of failures."""
    from microgpt.backends import cuda, cuda_bf16, reference as ref
    from microgpt.backends import cuda_runtime as rt

    def bf16(x):                                  # x rounded to bf16, as float64 (round to nearest even)
        bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.astype(np.uint32).view(np.float32).astype(np.float64)

    rng = np.random.default_rng(0)
    failures = 0
    for m, n, k in ((130, 72, 264), (256, 128, 96), (129, 131, 40), (96, 80, 2048)):   # the last: split-K
        for ta in (0, 1):
            for tb in (0, 1):
                a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
                b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
                out = rt.empty((m, n), np.float32)
                a16, b16 = (cuda_bf16.to_bf16(cuda.asarray(x, np.float32)) for x in (a, b))
                cuda_bf16.gemm(out, a16, b16, None, m, n, k, ta, tb)
                want = (bf16(a).T if ta else bf16(a)) @ (bf16(b).T if tb else bf16(b))
                err = np.linalg.norm(cuda.to_numpy(out) - want) / np.linalg.norm(want)
                ok = err < 1e-5
                failures += not ok
                print(f"gemm {m}x{n}x{k} trans {ta}{tb}: err {err:.1e} {'ok' if ok else 'WRONG'}")
    q = rng.standard_normal((1, 2, 130, 64)).astype(np.float32)
    kv = [rng.standard_normal((1, 1, 130, 64)).astype(np.float32) for _ in range(2)]
    for segments in (None, np.repeat([[0, 1]], 65, axis=1)):
        out, lse = cuda.attention_bf16_forward(*(cuda.asarray(x, np.float32) for x in (q, *kv)), segments)
        want, want_lse = ref.attention_forward(bf16(q), bf16(kv[0]), bf16(kv[1]), segments)
        err = np.linalg.norm(cuda.to_numpy(out) - want) / np.linalg.norm(want)
        err_lse = np.linalg.norm(cuda.to_numpy(lse) - want_lse) / np.linalg.norm(want_lse)
        ok = err < 2 * 2.0 ** -8 and err_lse < 1e-5
        failures += not ok
        print(f"attention_bf16_forward segments {segments is not None}: err {err:.1e} lse {err_lse:.1e} "
              f"{'ok' if ok else 'WRONG'}")
        dout = rng.standard_normal(q.shape).astype(np.float32)
        got = cuda.attention_bf16_backward(*(cuda.asarray(x, np.float32) for x in (dout, q, *kv)), out, lse, segments)
        want = ref.attention_backward(bf16(dout), bf16(q), bf16(kv[0]), bf16(kv[1]), cuda.to_numpy(out),
                                      cuda.to_numpy(lse), segments)
        errs = [np.linalg.norm(cuda.to_numpy(g) - w) / np.linalg.norm(w) for g, w in zip(got, want)]
        ok = all(e < 2 * 2.0 ** -8 for e in errs)
        failures += not ok
        print(f"attention_bf16_backward segments {segments is not None}: err dq/dk/dv "
              f"{'/'.join(f'{e:.1e}' for e in errs)} {'ok' if ok else 'WRONG'}")
    cuda.synchronize()
    return failures


# --- main -----------------------------------------------------------------------------------------

def gpt2_config(quick):
    from microgpt import GPTConfig
    return GPTConfig(family="gpt2", vocab_size=50304, block_size=256 if quick else 1024,
                     n_layer=2 if quick else 12, n_head=12, n_embd=768)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", default="gemm,attention,step", help="comma-separated: gemm, attention, step")
    parser.add_argument("--rows", help="write the rows to FILE (gpu_check.py --merge reports them)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test on a GPU")
    parser.add_argument("--profile", help="profile one extra step of each run of the step section; kernel "
                                          "tables to FILE (markdown)")
    parser.add_argument("--kernels-once", action="store_true",
                        help="each bf16 kernel once on small shapes, checked (for compute-sanitizer); no torch")
    parser.add_argument("--dry", action="store_true", help="import everything and print the plan; no GPU needed")
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - {"gemm", "attention", "step"}
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")
    if args.kernels_once:
        failures = kernels_once()
        print(f"kernels once: {failures} failed")
        return 1 if failures else 0
    import torch
    import gpu_train_peer  # noqa: F401 - the peer model imports (torch.nn)
    from microgpt.backends import cuda, cuda_bf16, cuda_runtime as rt
    config = gpt2_config(args.quick)
    if args.dry:
        print(f"bench_gpu_bf16 plan: sections {sections}; gemm cases {len(GEMM_CASES)} "
              f"(target {GEMM_TARGET}x cuBLAS bf16); step GPT-2 {config.n_layer}L x {config.n_embd}C "
              f"T{config.block_size} B8 x 20 steps, targets {STEP_TARGETS}, bf16 loss bound "
              f"{cuda_bf16.LOSS_GAP_BOUND:.4g} x loss; cuda backend available here: {cuda.AVAILABLE}")
        return 0
    if not torch.cuda.is_available() or not cuda.AVAILABLE:
        why = "torch sees no GPU" if not torch.cuda.is_available() else f"cuda backend: {cuda.UNAVAILABLE_REASON}"
        for sec in sections:
            row("step" if sec == "step" else "bf16", "not run", error=why)
    else:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        if "gemm" in sections:
            cases = [c for c in GEMM_CASES if not args.quick or max(c[1:4]) <= 8192][:4 if args.quick else None]
            gemm_section(torch, rt, cases)
        if "attention" in sections:
            attention_section(torch, rt, 2 if args.quick else 8, 12, (256,) if args.quick else (1024, 2048, 4096))
        if "step" in sections:
            step_section(torch, config, 2 if args.quick else 8, 5 if args.quick else 20, 3e-4,
                         profile=bool(args.profile))
    if args.profile and PROFILE:
        from microgpt.fileio import atomic_write
        with atomic_write(args.profile) as f:
            f.write("\n".join(["# One GPT-2-124M training step, kernel by kernel (torch.profiler, CUDA activity)",
                               "", *PROFILE]))
    if args.rows:
        import json

        from microgpt.fileio import atomic_write
        with atomic_write(args.rows) as f:
            json.dump(gpu_check.ROWS, f)
    else:
        gpu_check.report(None, gpu_check.machine(torch), [])
    return 0


if __name__ == "__main__":
    sys.exit(main())
