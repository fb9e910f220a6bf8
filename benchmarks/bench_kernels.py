"""C kernels against their peers: matmul vs NumPy/OpenBLAS, row kernels vs the NumPy reference.

Rows:
  matmul   every rung of csrc/matmul.c at the GPT shapes (4096x384 @ 384x1536,
           4096x1536 @ 1536x384, 4096x384 @ 384x8192) and 1024^3, in GFLOP/s, beside
           NumPy's sgemm (OpenBLAS) on the same number of threads (1 and 2): our OpenMP team
           and OpenBLAS's pool are both set to that count, and both sleep when idle (see
           OPENBLAS_THREAD_TIMEOUT below). The slow teaching rungs (v1 naive,
           v2 blocked) run only at 1024^3 (512^3 with --quick), once each.
  linear 1 row  linear_forward of one row (decoding a token) over 100 MB of weights, in GB/s
           of W read, beside NumPy's x @ W.T: the matrix-vector path, bound by memory.
  kernels  layer_norm, softmax, cross_entropy (forward + backward), gelu and the AdamW update,
           in ms, beside backends/reference.py (NumPy) on the same arrays, at 1 and 2 threads
           of ours (NumPy's elementwise code has one thread either way).
  attention  rows vs torch SDPA (fused causal attention forward+backward, and decoding), and
           each rung of the C attention ladder (v1 naive, v2 flash) called straight through
           cffi on one thread, beside SDPA on one thread.
  segmented  document-masked attention (segment_ids: a packed row of several documents of
           skewed lengths) forward+backward, beside SDPA given the same mask explicitly (a
           block-diagonal causal boolean attn_mask); and the same packed row beside our own
           plain causal attention over it, which shows the tiles the masked kernel skips.

    python benchmarks/bench_kernels.py [--quick] [--json FILE]
"""
import ctypes
import glob
import os
import sys

# Idle OpenBLAS threads spin for ~2^28 cycles after each call before they sleep; the harness
# alternates our calls with NumPy's, so a spinning BLAS thread would hold a core during our
# next timed call (measured: 2-thread matmul at 37 instead of 57 GFLOP/s on a busy machine).
# Both pools sleep when idle here: ours (OMP_WAIT_POLICY, cpu.py) and OpenBLAS (read at load).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "tests")]

import harness  # noqa: E402
from microgpt.backends import cpu  # noqa: E402
from microgpt.backends import reference as ref  # noqa: E402

GPT_SHAPES = [(4096, 1536, 384), (4096, 384, 1536), (4096, 8192, 384), (1024, 1024, 1024)]   # M, N, K
RUNGS = ["v1_naive", "v2_blocked", "v3_packed", "v4_threaded"]


def _openblas():
    """NumPy's bundled OpenBLAS, to set its thread count (no threadpoolctl needed)."""
    pattern = os.path.join(os.path.dirname(np.__file__), "..", "numpy.libs", "*openblas*")
    for path in glob.glob(pattern):
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                     "openblas_set_num_threads"):
            if hasattr(lib, name):
                return getattr(lib, name)
    return None


SET_BLAS_THREADS = _openblas()


def set_threads(n):
    """Our kernels and NumPy's BLAS on n threads each (runs at case time, not build time)."""
    cpu.set_num_threads(n)
    if SET_BLAS_THREADS is not None:
        SET_BLAS_THREADS(ctypes.c_int(n))


def threaded(n, fn):
    def run():
        set_threads(n)
        return fn()
    return run


def matmul_case(rung, M, N, K, threads, repeats, with_peer=True):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    out, peer_out = np.empty((M, N), np.float32), np.empty((M, N), np.float32)
    c_fn = getattr(cpu.lib, f"matmul_forward_{rung}")
    pa, pb, po = cpu._fp(a), cpu._fp(b), cpu._fp(out)

    def check():
        set_threads(threads)
        c_fn(po, pa, pb, cpu.ffi.NULL, M, N, K, 0, 0)
        np.matmul(a, b, out=peer_out)
        err = np.max(np.abs(out - peer_out)) / (np.max(np.abs(peer_out)) + 1e-30)
        assert err < 1e-4, f"matmul {rung} {M}x{N}x{K}: relative error {err}"

    return harness.Case(
        name=f"matmul {rung} {M}x{K}@{K}x{N} {threads}t",
        ours=threaded(threads, lambda: c_fn(po, pa, pb, cpu.ffi.NULL, M, N, K, 0, 0)),
        peer=threaded(threads, lambda: np.matmul(a, b, out=peer_out)) if with_peer else None,
        peer_name="numpy/openblas", unit="GFLOP/s", work=2.0 * M * N * K / 1e9,
        check=check, repeats=repeats, warmup=1 if repeats > 1 else 0)


def matmul_cases(quick):
    cases = []
    side = 512 if quick else 1024
    for rung in RUNGS[:2]:
        cases.append(matmul_case(rung, side, side, side, 1, 1))
    shapes = [(1024, 1536, 384), (1024, 384, 1536), (1024, 8192, 384), (512, 512, 512)] if quick else GPT_SHAPES
    for M, N, K in shapes:
        cases.append(matmul_case("v3_packed", M, N, K, 1, 3 if quick else 5))
        for threads in (1, 2):
            cases.append(matmul_case("v4_threaded", M, N, K, threads, 3 if quick else 7))
    return cases


def decode_linear_case(threads, quick):
    """linear_forward on one row (decoding one token) over weights too big for the caches:
    the matrix-vector path streams W, so the figure is memory bandwidth (GB/s of W read)."""
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((8192, 384)).astype(np.float32) for _ in range(2 if quick else 8)]
    x = rng.standard_normal((1, 384)).astype(np.float32)

    def ours():
        for w in weights:
            cpu.linear_forward(x, w, None)

    def peer():
        for w in weights:
            np.matmul(x, w.T)

    def check():
        close(cpu.linear_forward(x, weights[0], None), np.matmul(x, weights[0].T), "linear 1 row")

    return harness.Case(name=f"linear 1 row x {len(weights)} x 8192x384 W {threads}t",
                        ours=threaded(threads, ours), peer=threaded(threads, peer),
                        peer_name="numpy/openblas", unit="GB/s",
                        work=sum(w.nbytes for w in weights) / 1e9, check=check,
                        repeats=3 if quick else 7)


def kernel_case(name, ours, peer, check, threads, repeats):
    return harness.Case(name=f"{name} {threads}t", ours=threaded(threads, ours), peer=peer,
                        peer_name="numpy reference", unit="ms", check=check, repeats=repeats)


def close(got, want, what, tol=2e-4):
    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        err = np.max(np.abs(g - w) / (np.abs(w) + 1.0))
        assert err < tol, f"{what}: error {err}"


def row_kernel_cases(quick):
    rng = np.random.default_rng(0)
    scale = 4 if quick else 1
    N, C, V = 4096 // scale, 384, 8192
    x = rng.standard_normal((N, C)).astype(np.float32)
    w, b = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    dout = rng.standard_normal((N, C)).astype(np.float32)
    scores = rng.standard_normal((24576 // scale, 256)).astype(np.float32)
    dscores = rng.standard_normal(scores.shape).astype(np.float32)
    logits = rng.standard_normal((N, V)).astype(np.float32)
    targets = rng.integers(0, V, N)
    dlosses = np.full(N, 1.0 / N, np.float32)
    hidden = rng.standard_normal((N, 4 * C)).astype(np.float32)
    dhidden = rng.standard_normal(hidden.shape).astype(np.float32)
    n_params = 10_000_000 // scale
    params = [rng.standard_normal(n_params).astype(np.float32) for _ in range(4)]
    params[3] = np.abs(params[3])

    def layer_norm(be):
        out, mean, rstd = be.layer_norm_forward(x, w, b, 1e-5)
        return (out,) + be.layer_norm_backward(dout, x, w, mean, rstd, True)

    def softmax(be):
        out = be.softmax_forward(scores)
        return out, be.softmax_backward(dscores, out)

    def cross_entropy(be):
        losses, lse = be.cross_entropy_forward(logits, targets, -100)
        return losses, be.cross_entropy_backward(dlosses, logits, targets, lse, -100)

    def gelu(be):
        return be.gelu_forward(hidden), be.gelu_backward(dhidden, hidden)

    def adamw(be):
        p, g, m, v = params
        be.adamw_update(p, g, m, v, 1e-4, 0.9, 0.95, 1e-8, 0.1, 10)

    def adamw_check():
        p, g, m, v = (x[:100000].copy() for x in params)
        want = [p.copy(), m.copy(), v.copy()]
        cpu.adamw_update(p, g, m, v, 1e-4, 0.9, 0.95, 1e-8, 0.1, 10)
        ref.adamw_update(want[0], g, want[1], want[2], 1e-4, 0.9, 0.95, 1e-8, 0.1, 10)
        close((p, m, v), tuple(want), "adamw")

    rows = [("layer_norm fwd+bwd %dx%d" % (N, C), layer_norm),
            ("softmax fwd+bwd %dx256" % scores.shape[0], softmax),
            ("cross_entropy fwd+bwd %dx%d" % (N, V), cross_entropy),
            ("gelu fwd+bwd %dx%d" % hidden.shape, gelu)]
    cases = []
    for threads in (1, 2):
        for name, fn in rows:
            cases.append(kernel_case(name, lambda fn=fn: fn(cpu), lambda fn=fn: fn(ref),
                                     lambda fn=fn, name=name: close(fn(cpu), fn(ref), name, 1e-3),
                                     threads, 5 if quick else 10))
        cases.append(kernel_case(f"adamw {n_params} params", lambda: adamw(cpu), lambda: adamw(ref),
                                 adamw_check, threads, 5 if quick else 10))
    return cases


# === attention rows: ours vs torch SDPA =============================================================
# Fused causal attention forward + backward (csrc/attention.c) at B=8, NH=6, HS=64 beside
# PyTorch's scaled_dot_product_attention(is_causal=True) forward + backward (its CPU flash
# kernel), both on every core (torch.set_num_threads = our team), plus T=256 and 1024 on one
# core each; and the decoding step (one query, forward only) at Tk = 256 and 1024.
# --quick: T=256 and Tk=256 only.
def attention_case(T, threads, B=8, NH=6, HS=64, repeats=5):
    import torch
    import torch.nn.functional as F
    rng = np.random.default_rng(0)
    q, k, v, dout = (rng.standard_normal((B, NH, T, HS)).astype(np.float32) for _ in range(4))
    tq, tk, tv = (torch.from_numpy(x).requires_grad_() for x in (q, k, v))
    tdout = torch.from_numpy(dout)

    def ours():
        out, lse = cpu.attention_forward(q, k, v)
        return (out,) + cpu.attention_backward(dout, q, k, v, out, lse)

    def peer():
        torch.set_num_threads(threads)
        for t in (tq, tk, tv):
            t.grad = None
        out = F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
        out.backward(tdout)
        return out.detach().numpy(), tq.grad.numpy(), tk.grad.numpy(), tv.grad.numpy()

    def check():
        set_threads(threads)
        for got, want, name in zip(ours(), peer(), ("out", "dq", "dk", "dv")):
            err = np.max(np.abs(got - want)) / (np.max(np.abs(want)) + 1e-30)
            assert err < 1e-4, f"attention T={T} {name}: relative error {err} vs torch"

    return harness.Case(name=f"attention fwd+bwd B{B} NH{NH} T{T} HS{HS} {threads}t",
                        ours=threaded(threads, ours), peer=peer, peer_name="torch sdpa",
                        unit="ms", check=check, repeats=repeats)


def attention_decode_case(Tk, threads, B=1, NH=6, HS=64, repeats=50):
    """One new query against a KV cache of Tk keys (forward only): the per-token cost of decoding.
    With a single query, causal = no mask (the query is the last position), so the peer runs
    without is_causal (PyTorch aligns its causal mask top-left)."""
    import torch
    import torch.nn.functional as F
    rng = np.random.default_rng(0)
    q = rng.standard_normal((B, NH, 1, HS)).astype(np.float32)
    k, v = (rng.standard_normal((B, NH, Tk, HS)).astype(np.float32) for _ in range(2))
    tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))

    def peer():
        torch.set_num_threads(threads)
        with torch.no_grad():
            return F.scaled_dot_product_attention(tq, tk, tv).numpy()

    def check():
        set_threads(threads)
        err = np.max(np.abs(cpu.attention_forward(q, k, v)[0] - peer()))
        assert err < 1e-4, f"attention decode Tk={Tk}: error {err} vs torch"

    return harness.Case(name=f"attention decode fwd B{B} NH{NH} Tq1 Tk{Tk} HS{HS} {threads}t",
                        ours=threaded(threads, lambda: cpu.attention_forward(q, k, v)), peer=peer,
                        peer_name="torch sdpa", unit="ms", check=check, repeats=repeats, warmup=5)


ATTENTION_RUNGS = ["v1_naive", "v2_flash"]


def attention_rung_case(rung, T, B=4, NH=6, HS=64, repeats=5):
    """One rung of csrc/attention*.c, forward + backward through cffi, on one thread (v1 is a
    single-threaded plain loop), beside torch SDPA on one thread."""
    import torch
    import torch.nn.functional as F
    rng = np.random.default_rng(0)
    q, k, v, dout = (rng.standard_normal((B, NH, T, HS)).astype(np.float32) for _ in range(4))
    tq, tk, tv = (torch.from_numpy(x).requires_grad_() for x in (q, k, v))
    sizes = (B, NH, NH, T, T, HS)
    fp = cpu._fp
    out, lse = np.empty_like(q), np.empty((B, NH, T), np.float32)
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    work_f = np.empty(cpu.lib.attention_forward_workspace(B, NH, T, T, HS), np.float32)
    work_b = np.empty(cpu.lib.attention_backward_workspace(B, NH, NH, T, T, HS), np.float32)
    forward = getattr(cpu.lib, f"attention_forward_{rung}")
    backward = getattr(cpu.lib, f"attention_backward_{rung}")

    def ours():
        assert forward(fp(out), fp(lse), fp(work_f), work_f.size, fp(q), fp(k), fp(v), cpu.ffi.NULL, *sizes) == 0
        assert backward(fp(dq), fp(dk), fp(dv), fp(work_b), work_b.size, fp(dout), fp(q), fp(k), fp(v),
                        fp(out), fp(lse), cpu.ffi.NULL, *sizes) == 0
        return out, dq, dk, dv

    def peer():
        torch.set_num_threads(1)
        for t in (tq, tk, tv):
            t.grad = None
        o = F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
        o.backward(torch.from_numpy(dout))
        return o.detach().numpy(), tq.grad.numpy(), tk.grad.numpy(), tv.grad.numpy()

    def check():
        set_threads(1)
        for got, want, name in zip(ours(), peer(), ("out", "dq", "dk", "dv")):
            err = np.max(np.abs(got - want)) / (np.max(np.abs(want)) + 1e-30)
            assert err < 1e-4, f"attention {rung} T={T} {name}: relative error {err} vs torch"

    return harness.Case(name=f"attention rung {rung} fwd+bwd B{B} NH{NH} T{T} HS{HS} 1t",
                        ours=threaded(1, ours), peer=peer, peer_name="torch sdpa", unit="ms",
                        check=check, repeats=repeats)


def attention_cases(quick):
    try:
        import torch  # noqa: F401 - the peer
    except ImportError:
        print("attention rows skipped: torch (the peer) is not installed")
        return []
    threads = os.cpu_count() or 1
    cases = [attention_case(T, threads, repeats=5 if T <= 1024 else 3)
             for T in ((256,) if quick else (256, 512, 1024, 2048))]
    if not quick and threads > 1:    # one core each: the per-core comparison, steadier under load
        cases += [attention_case(T, 1) for T in (256, 1024)]
    cases += [attention_rung_case(rung, 128 if quick else 256) for rung in ATTENTION_RUNGS]
    cases += [attention_decode_case(Tk, threads) for Tk in ((256,) if quick else (256, 1024))]
    return cases + segmented_cases(quick, threads)


# --- document masking (packed rows) -------------------------------------------------------------------
# A row packing documents of skewed lengths (a few long, many short: as SFT conversations are),
# numbered in order. The flash kernel skips every tile whose query and key blocks share no
# document (csrc/attention.c, "Segment ids or cumulative lengths?"), so the packed row costs
# about sum(length^2) / T^2 of a causal row's work; SDPA gets the same mask as an explicit
# (B, 1, T, T) boolean matrix.
PACKED_DOCS = {256: [100, 60, 40, 30, 16, 10], 1024: [300, 200, 150, 120, 100, 70, 50, 34]}


def _packed_inputs(T, B, NH, HS):
    rng = np.random.default_rng(0)
    q, k, v, dout = (rng.standard_normal((B, NH, T, HS)).astype(np.float32) for _ in range(4))
    lengths = PACKED_DOCS[T]
    seg = np.repeat(np.arange(len(lengths)), lengths)[None].repeat(B, axis=0)
    return q, k, v, dout, seg


def _segmented(q, k, v, dout, seg):
    out, lse = cpu.attention_forward(q, k, v, seg)
    return (out,) + cpu.attention_backward(dout, q, k, v, out, lse, seg)


def segmented_case(T, threads, B=4, NH=6, HS=64, repeats=5):
    import torch
    import torch.nn.functional as F
    q, k, v, dout, seg = _packed_inputs(T, B, NH, HS)
    t = np.arange(T)
    mask = torch.from_numpy(((t[None, :] <= t[:, None]) & (seg[:, :, None] == seg[:, None, :]))[:, None])
    tq, tk, tv = (torch.from_numpy(x).requires_grad_() for x in (q, k, v))
    tdout = torch.from_numpy(dout)

    def peer():
        torch.set_num_threads(threads)
        for x in (tq, tk, tv):
            x.grad = None
        out = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=mask)
        out.backward(tdout)
        return out.detach().numpy(), tq.grad.numpy(), tk.grad.numpy(), tv.grad.numpy()

    def check():
        set_threads(threads)
        for got, want, name in zip(_segmented(q, k, v, dout, seg), peer(), ("out", "dq", "dk", "dv")):
            err = np.max(np.abs(got - want)) / (np.max(np.abs(want)) + 1e-30)
            assert err < 1e-4, f"segmented attention T={T} {name}: relative error {err} vs torch"

    return harness.Case(name=f"attention segmented fwd+bwd B{B} NH{NH} T{T} HS{HS} {len(PACKED_DOCS[T])} docs "
                             f"{threads}t", ours=threaded(threads, lambda: _segmented(q, k, v, dout, seg)),
                        peer=peer, peer_name="torch sdpa + mask", unit="ms", check=check, repeats=repeats)


def packed_vs_causal_case(T, threads, B=4, NH=6, HS=64, repeats=5):
    """Ours on the packed row beside ours on the same row as one causal document: the tile skip."""
    q, k, v, dout, seg = _packed_inputs(T, B, NH, HS)

    def causal():
        out, lse = cpu.attention_forward(q, k, v)
        return (out,) + cpu.attention_backward(dout, q, k, v, out, lse)

    def check():                   # each document of the packed row = that document alone
        set_threads(threads)
        packed = _segmented(q, k, v, dout, seg)
        for doc in np.unique(seg[0]):
            at = np.flatnonzero(seg[0] == doc)
            part = [np.ascontiguousarray(x[:, :, at]) for x in (q, k, v, dout)]
            out, lse = cpu.attention_forward(*part[:3])
            alone = (out,) + cpu.attention_backward(part[3], *part[:3], out, lse)
            for got, want in zip(packed, alone):
                err = np.max(np.abs(got[:, :, at] - want)) / (np.max(np.abs(want)) + 1e-30)
                assert err < 1e-5, f"packed row, document {doc}: relative error {err} vs alone"

    return harness.Case(name=f"attention packed vs causal fwd+bwd B{B} NH{NH} T{T} HS{HS} {threads}t",
                        ours=threaded(threads, lambda: _segmented(q, k, v, dout, seg)),
                        peer=threaded(threads, causal), peer_name="ours causal", unit="ms", check=check,
                        repeats=repeats)


def segmented_cases(quick, threads):
    lengths = (256,) if quick else (256, 1024)
    return ([segmented_case(T, threads) for T in lengths] + [packed_vs_causal_case(T, threads) for T in lengths])
# === end attention rows =============================================================================


def main():
    args = harness.parse_args(__doc__.splitlines()[0], extra=lambda p: p.add_argument(
        "--only", default="", help="run only the rows whose name contains this text"))
    print(f"simd path: {cpu.simd_path()}; OpenBLAS thread control: {SET_BLAS_THREADS is not None}")
    cases = (matmul_cases(args.quick) + [decode_linear_case(t, args.quick) for t in (1, 2)]
             + row_kernel_cases(args.quick) + attention_cases(args.quick))
    cases = [case for case in cases if args.only in case.name]
    rows = harness.run_cases(cases, args, title="C kernels vs NumPy/OpenBLAS and the NumPy reference")
    set_threads(len(os.sched_getaffinity(0)))
    return rows


if __name__ == "__main__":
    main()
