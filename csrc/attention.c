/*
 * attention.c — fused causal self-attention, forward and backward, flash-style, with GQA:
 * rung v2 (attention_*_v2_flash) of the C attention, and the production entry points.
 *
 * Specification: attention_forward / attention_backward in microgpt/backends/reference.py.
 *   q (B, NH, Tq, HS), k and v (B, NKV, Tk, HS); query head h reads key/value head h / (NH/NKV);
 *   query i sits at position Tk - Tq + i and sees keys 0 .. Tk - Tq + i (bottom-right causal);
 *   S = q k^T / sqrt(HS), lse_i = log sum_j exp S_ij, P = exp(S - lse), out = P v.
 *
 * Rung v1 (attention_naive.c) computes exactly that, one query after another: a row of S, its
 * softmax, the weighted sum of values, and the backward through the same row of P, in plain
 * loops on one thread. What v2 adds, in the order a reader meets it:
 *   1. Tiles, never the T x T matrix. Keys come in blocks of BC = 64, queries in blocks of up to
 *      BR = 64; a (BC x BR) tile of scores lives in a 16 KB buffer. Memory is O(T * HS) per thread.
 *   2. Scores are transposed: we compute S^T (keys down, queries across), so the softmax
 *      statistics of a query are one SIMD lane and every reduction (max, sum) runs down a column
 *      with vertical vector ops — no horizontal shuffles. Online softmax over key blocks:
 *        m' = max(m, max_j S_ij),  l' = l 2^(m-m') + sum_j 2^(S_ij-m'),  O' = O 2^(m-m') + P V.
 *      Scores are kept in log2 units (q is pre-multiplied by log2(e)/sqrt(HS)) so exp is exp2.
 *   3. Every product of tiles is one small GEMM C (+)= A B: a register-blocked MR x (16 NV)
 *      micro-kernel that broadcasts one element of A and loads 16-float vectors of B. A broadcast
 *      reads A in any layout, so A = P = (P^T)^T costs nothing; only B must run along memory,
 *      which is why Q^T and dO^T are the only transposed copies (16 x 16 blocks in registers).
 *      Rows are read in place when HS is a multiple of 16; otherwise they are copied zero-padded
 *      to HP (HS rounded up to 16), so the micro-kernel never meets a ragged edge.
 *   4. Inside a block on the diagonal, tiles that are wholly masked are skipped and inner loops
 *      stop at the last visible key (see `part`): about a quarter of a diagonal block's work.
 *   5. The backward recomputes P^T from lse (nothing T x T was saved) and, per key block j and
 *      query block i, with D_i = sum_d dout_id out_id:
 *        dV_j += P^T dO_i,  dP^T = V_j dO_i^T,  dS^T = P^T (dP^T - D),
 *        dK_j += dS^T Q_i,  dQ_i += dS K_j           (dK and dQ scaled by 1/sqrt(HS) at the end).
 *      One thread owns one (batch, kv-head) and loops over the query heads of its group, so dK and
 *      dV sum over the group and no two threads ever write the same row. With fewer pairs than
 *      threads, each thread takes every n-th key block of every pair instead (its own dK, dV
 *      rows) and its own copy of dQ; the copies are summed at the end.
 *   6. SIMD through GCC vector extensions: the body lives in attention_kernel.h, written once
 *      for vectors of VW floats and included three times below under `#pragma GCC target`:
 *      AVX-512 (VW 16, tile 8 x 2 vectors), AVX2+FMA (VW 8, 4 x 2) and the x86-64 baseline
 *      (VW 4, 4 x 2). The path is chosen per call by microgpt_simd_level() (threads.c:
 *      __builtin_cpu_supports, or the path a test forces with microgpt_set_simd_path).
 *   7. OpenMP: forward threads over (batch, head) pairs — or, with fewer pairs than threads,
 *      over each pair's query blocks — backward over (batch, kv-head) as in 5; calls under
 *      PAR_MIN multiply-adds stay on the calling thread. Each thread works in its own slice of
 *      the caller's workspace (attention_*_workspace floats).
 *   8. Document masking (packed rows; segment_ids non-NULL, T = Tq = Tk): query i sees key j
 *      iff j <= i and segment_ids[j] == segment_ids[i]. Whole tiles no query of the block
 *      shares a document with are skipped, neither computed nor masked (see below).
 * Both rungs do the same O(Tq * Tk * HS) multiply-adds per head and neither holds a T x T matrix
 * (v1 keeps one row of Tk scores); v2's speed is items 1-7 above, v1 has none of them.
 *
 * Production (attention_forward / attention_backward, end of file) is v2, except for a call whose
 * v2 result holds a NaN or inf: that call is recomputed by v1. v2 carries NaN and inf faithfully
 * (vexp2 keeps them), but a tile of a diagonal block also multiplies the zero probabilities of
 * keys that a query cannot see, and 0 * NaN is NaN: a NaN value at key j would reach queries
 * before j. v1's sums run over exactly the keys a query sees, as the reference's answer for that
 * query alone does (tests/test_kernel_special_values.py); the check of the outputs costs
 * O(T * HS) against the call's O(T^2 * HS).
 *
 * Segment ids or cumulative lengths? FlashAttention's varlen kernels take cumulative lengths
 * (cu_seqlens): document d is positions [cu[d], cu[d+1]), so query i sees the key interval
 * [start(i), i] and a query block starting at i0 needs no key block before start(i0): the skip
 * is one comparison. But lengths describe only contiguous documents, one list per row of
 * varying length. Segment ids (one int per token) say "same document" for any layout, and skip
 * just as well with one summary per block: the range [lo, hi] of the block's ids (seg_range).
 * A (query block, key block) tile holds a visible pair only if the two ranges overlap, so a
 * tile whose ranges are disjoint is skipped whole; one whose ranges are one and the same id is
 * a plain causal tile (no segment test per element); any other tile gets the per-element test
 * seg[j] == seg[i] on top of the causal one. For a packed row numbered in order (0, 0, 1, 1,
 * 1, 2, ... as the packer writes them) the ranges are exact: a tile is skipped precisely when
 * no pair in it shares a document, which is what cumulative lengths would skip. Unsorted ids
 * are still correct, only skipped less. So the kernel takes segment ids: the interface the
 * callers hold, no conversion, the same skipping. They arrive as int32 (the lanes of the masks
 * are 32-bit); backends/cpu.py relabels ids beyond int32 keeping their order. Padding tokens
 * carry an id of their own (-1, or any id no document uses): padding then sees only padding.
 * The cost of one summary is O(BC) per tile against the tile's O(BC * W * HS).
 *
 * Built into microgpt.backends._cpu by backends/cpu_build.py (binding: backends/cpu.py).
 * Tests: pytest tests/test_cpu_attention.py tests/test_kernel_special_values.py.
 * Speed: python benchmarks/bench_kernels.py --only attention (rows beside PyTorch's
 * scaled_dot_product_attention).
 */
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <string.h>
#include <omp.h>
#include "microgpt.h"
#include "common.h"

#pragma GCC diagnostic ignored "-Wpsabi"   /* vectors cross only always_inline calls */
#pragma GCC optimize("fp-contract=fast")   /* a * b + c is one FMA (-std=c11 turns that off) */

#define BR 64       /* query block: lanes of a score tile (a multiple of 16) */
#define BC 64       /* key block: rows of a score tile (a multiple of every MR) */
#define ROWS_BELOW 8        /* fewer queries than this take the row path (fwd_rows): no tiles */
#define PAR_MIN (1L << 20)  /* multiply-adds (about) before a call forks threads: a fork costs
                               microseconds when idle, much more on a loaded machine */
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f
#define AI static inline __attribute__((always_inline))

static size_t round_up(size_t x, size_t m) { return (x + m - 1) / m * m; }
static size_t min_size(size_t a, size_t b) { return a < b ? a : b; }

/* Inside a diagonal block, key r and query c meet only when r <= c + diag. The GEMMs use it to
 * skip work that would be multiplied by zero:
 *   SKIP_HIDDEN  C is keys x queries: a tile with every key after every query is zeroed, not computed;
 *   K_FROM       C is keys x channels, K runs over queries: start at the first query row i sees;
 *   K_TO         C is queries x channels, K runs over keys: stop after the last key row i sees.
 * Outside the diagonal (diag >= the block size) every mode computes the whole product. */
enum { SKIP_HIDDEN = 1, K_FROM, K_TO };

/* Document masking: the range of segment ids of positions [from, to) (to > from), and the two
 * tests a tile needs of its query block's range and its key block's (header, "Segment ids"). */
typedef struct { int32_t lo, hi; } seg_range_t;

static seg_range_t seg_range(const int32_t *seg, size_t from, size_t to)
{
    seg_range_t r = {seg[from], seg[from]};
    for (size_t t = from + 1; t < to; t++) {
        r.lo = seg[t] < r.lo ? seg[t] : r.lo;
        r.hi = seg[t] > r.hi ? seg[t] : r.hi;
    }
    return r;
}

/* No query of one block can share a document with a key of the other. */
static int disjoint(seg_range_t q, seg_range_t k) { return q.hi < k.lo || k.hi < q.lo; }

/* Every query and every key of the tile in one document: causal masking is all there is. */
static int one_document(seg_range_t q, seg_range_t k) { return q.lo == q.hi && k.lo == k.hi && q.lo == k.lo; }

/* Workspace of one thread, in floats; the same for every instruction set (HP pads to 16). */
static size_t fwd_floats(size_t Tq, size_t Tk, size_t HS)
{
    size_t HP = round_up(HS, 16), TkP = round_up(Tk, BC);
    (void)Tq;
    return 2 * TkP * HP + 2 * HP * BR + BC * BR + 3 * BR + 16;   /* +16: room to align to 64 B */
}

static size_t bwd_floats(size_t Tq, size_t Tk, size_t HS)
{
    size_t HP = round_up(HS, 16), TkP = round_up(Tk, BC);
    size_t W = min_size(BR, round_up(Tq, 16)), TqP = round_up(Tq, W);
    return 4 * TkP * HP + 5 * TqP * HP + 2 * TqP + 2 * BC * BR + 16;
}

/* ---- the kernel body, once per instruction set ------------------------------------------------- */

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define HAVE_X86_PATHS 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl,avx2,fma")
#define ISA avx512
#define VW 16
#define MR 8
#define NV 2
#include "attention_kernel.h"
#undef ISA
#undef VW
#undef MR
#undef NV
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define ISA avx2
#define VW 8
#define MR 4
#define NV 2
#include "attention_kernel.h"
#undef ISA
#undef VW
#undef MR
#undef NV
#pragma GCC pop_options
#endif

#define ISA scalar
#define VW 4
#define MR 4
#define NV 2
#include "attention_kernel.h"
#undef ISA
#undef VW
#undef MR
#undef NV

/* ---- dispatch, threads, workspace ---------------------------------------------------------------- */

typedef void fwd_fn(float *out, float *lse, const float *q, const float *k, const float *v,
                    const int32_t *seg, size_t Tq, size_t Tk, size_t HS, float *w, size_t first,
                    size_t step);
typedef void bwd_fn(float *dq, float *dk, float *dv, const float *dout, const float *q,
                    const float *k, const float *v, const float *out, const float *lse,
                    const int32_t *seg, size_t G, size_t Tq, size_t Tk, size_t HS, float *w,
                    size_t first, size_t step);

/* The instruction set threads.c chose: 0 portable, 1 AVX2, 2 AVX-512 (or what a test forced). */
static void pick(int level, int rows, fwd_fn **fwd, bwd_fn **bwd)
{
    *fwd = rows ? fwd_rows_scalar : fwd_head_scalar, *bwd = bwd_group_scalar;
#ifdef HAVE_X86_PATHS
    if (level == 1) *fwd = rows ? fwd_rows_avx2 : fwd_head_avx2, *bwd = bwd_group_avx2;
    if (level >= 2) *fwd = rows ? fwd_rows_avx512 : fwd_head_avx512, *bwd = bwd_group_avx512;
#endif
    (void)level;
}

/* Threads: at most one per task, and no more than the caller's workspace has slices for (each
 * slice rounded to 16 floats, so all start 64-byte aligned); 0 when not even one fits. */
static int64_t team(int64_t tasks, size_t per, size_t work_len)
{
    int64_t n = omp_get_max_threads();
    if (n > tasks) n = tasks;
    if (work_len < per + 16) return 0;
    if ((size_t)n * per + 16 > work_len) n = (int64_t)((work_len - 16) / per);
    return n;
}

static float *aligned(float *work) { return work + ((64 - (uintptr_t)work % 64) % 64) / sizeof *work; }

/* With fewer (batch, head) pairs than threads (and work worth threads), the forward splits each
 * pair's query blocks across threads instead: output rows are disjoint, nothing to sum. */
static int fwd_split(int64_t B, int64_t NH, int64_t Tq, int64_t Tk, int64_t HS)
{
    return B * NH < omp_get_max_threads() && (double)B * NH * Tq * Tk * HS >= PAR_MIN;
}

int64_t attention_forward_workspace(int64_t B, int64_t NH, int64_t Tq, int64_t Tk, int64_t HS)
{
    int64_t threads = omp_get_max_threads();
    if (!fwd_split(B, NH, Tq, Tk, HS) && threads > B * NH) threads = B * NH;
    return (int64_t)(threads * round_up(fwd_floats(Tq, Tk, HS), 16) + 16);
}

/* Pair t = b * NH + h (its kv head is h / (NH / NKV)): query blocks first, first + step, ... */
static void fwd_pair(fwd_fn *head, int64_t t, float *out, float *lse, const float *q,
                     const float *k, const float *v, const int32_t *segment_ids, int64_t NH,
                     int64_t NKV, int64_t Tq, int64_t Tk, int64_t HS, float *w, size_t first,
                     size_t step)
{
    const size_t kv = ((size_t)(t / NH) * NKV + (size_t)(t % NH / (NH / NKV))) * Tk * HS;
    const int32_t *seg = segment_ids ? segment_ids + (size_t)(t / NH) * Tk : NULL;  /* row b's */
    head(out + (size_t)t * Tq * HS, lse + (size_t)t * Tq, q + (size_t)t * Tq * HS, k + kv, v + kv,
         seg, Tq, Tk, HS, w, first, step);
}

int attention_forward_v2_flash(float *out, float *lse, float *work, int64_t work_len,
                               const float *q, const float *k, const float *v,
                               const int32_t *segment_ids, int64_t B, int64_t NH, int64_t NKV,
                               int64_t Tq, int64_t Tk, int64_t HS)
{
    fwd_fn *head;
    bwd_fn *unused;
    pick(microgpt_simd_level(), Tq < ROWS_BELOW, &head, &unused);
    const int split = fwd_split(B, NH, Tq, Tk, HS);
    const size_t per = round_up(fwd_floats(Tq, Tk, HS), 16);
    const int64_t tasks = B * NH;
    const int64_t threads = team(split ? omp_get_max_threads() : tasks, per, (size_t)work_len);
    const double work_madds = (double)tasks * Tq * Tk * HS;
    float *base = aligned(work);
    if (threads == 0) return -1;
    #pragma omp parallel num_threads(threads) if (work_madds >= PAR_MIN)
    {
        const int64_t p = omp_get_thread_num(), n = omp_get_num_threads();
        float *w = base + (size_t)p * per;
        if (split && n > 1) {
            for (int64_t t = 0; t < tasks; t++)    /* every pair, query blocks p, p + n, ... */
                fwd_pair(head, t, out, lse, q, k, v, segment_ids, NH, NKV, Tq, Tk, HS, w, p, n);
        } else {
            #pragma omp for schedule(dynamic, 1)
            for (int64_t t = 0; t < tasks; t++)
                fwd_pair(head, t, out, lse, q, k, v, segment_ids, NH, NKV, Tq, Tk, HS, w, 0, 1);
        }
    }
    return 0;
}

/* The backward splits key blocks across threads (each with its own dq copy of B*NH*Tq*HS floats)
 * when there are fewer (batch, kv-head) pairs than threads and the call is worth threads. */
static int bwd_split(int64_t B, int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk, int64_t HS)
{
    return B * NKV < omp_get_max_threads() && 2.5 * B * NH * Tq * Tk * HS >= PAR_MIN;
}

static size_t bwd_slice(int64_t B, int64_t NH, int64_t Tq, int64_t Tk, int64_t HS, int split)
{
    return round_up(bwd_floats(Tq, Tk, HS) + (split ? (size_t)B * NH * Tq * HS : 0), 16);
}

int64_t attention_backward_workspace(int64_t B, int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk,
                                     int64_t HS)
{
    const int split = bwd_split(B, NH, NKV, Tq, Tk, HS);
    int64_t threads = omp_get_max_threads();
    if (!split && threads > B * NKV) threads = B * NKV;
    return (int64_t)(threads * bwd_slice(B, NH, Tq, Tk, HS, split) + 16);
}

int attention_backward_v2_flash(float *dq, float *dk, float *dv, float *work, int64_t work_len,
                                const float *dout, const float *q, const float *k, const float *v,
                                const float *out, const float *lse, const int32_t *segment_ids,
                                int64_t B, int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk, int64_t HS)
{
    fwd_fn *unused;
    bwd_fn *group;
    pick(microgpt_simd_level(), 0, &unused, &group);
    const int split = bwd_split(B, NH, NKV, Tq, Tk, HS);
    const size_t per = bwd_slice(B, NH, Tq, Tk, HS, split), part = bwd_floats(Tq, Tk, HS);
    const size_t dq_len = (size_t)B * NH * Tq * HS;
    const int64_t tasks = B * NKV, G = NH / NKV;
    const int64_t threads = team(split ? omp_get_max_threads() : tasks, per, (size_t)work_len);
    const double work_madds = 2.5 * tasks * G * Tq * Tk * HS;
    float *base = aligned(work);
    if (threads == 0) return -1;
    #pragma omp parallel num_threads(threads) if (work_madds >= PAR_MIN)
    {
        const int64_t p = omp_get_thread_num(), n = omp_get_num_threads();
        float *w = base + (size_t)p * per;
        if (split && n > 1) {                   /* every pair, key blocks p, p + n, ... */
            for (int64_t t = 0; t < tasks; t++) {
                const size_t hq = (size_t)t * G * Tq * HS, hk = (size_t)t * Tk * HS;
                const int32_t *seg = segment_ids ? segment_ids + (size_t)(t / NKV) * Tk : NULL;
                group(w + part + hq, dk + hk, dv + hk, dout + hq, q + hq, k + hk, v + hk,
                      out + hq, lse + (size_t)t * G * Tq, seg, G, Tq, Tk, HS, w, p, n);
            }
            #pragma omp barrier
            #pragma omp for schedule(static)
            for (size_t x = 0; x < dq_len; x++) {          /* dq = the sum of the n copies */
                float sum = 0.0f;
                for (int64_t r = 0; r < n; r++) sum += base[(size_t)r * per + part + x];
                dq[x] = sum;
            }
        } else {
            #pragma omp for schedule(dynamic, 1)
            for (int64_t t = 0; t < tasks; t++) {          /* t = b * NKV + kv head: its G query heads */
                const size_t hq = (size_t)t * G * Tq * HS, hk = (size_t)t * Tk * HS;
                const int32_t *seg = segment_ids ? segment_ids + (size_t)(t / NKV) * Tk : NULL;
                group(dq + hq, dk + hk, dv + hk, dout + hq, q + hq, k + hk, v + hk, out + hq,
                      lse + (size_t)t * G * Tq, seg, G, Tq, Tk, HS, w, 0, 1);
            }
        }
    }
    return 0;
}

/* ---- production: v2, and v1 for a call whose v2 result is not finite (see the file header) ------
 * Every non-finite answer shows in v2's outputs (a NaN or inf score, value or gradient reaches the
 * rows that see it), so finite outputs are the answer; v2's workspace always holds v1's rows. */

static int all_finite(const float *x, size_t n)
{
    int bad = 0;
    #pragma omp simd reduction(|:bad)
    for (size_t i = 0; i < n; i++) bad |= !(fabsf(x[i]) <= FLT_MAX);     /* false for NaN too */
    return !bad;
}

int attention_forward(float *out, float *lse, float *work, int64_t work_len, const float *q,
                      const float *k, const float *v, const int32_t *segment_ids, int64_t B,
                      int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk, int64_t HS)
{
    const int status = attention_forward_v2_flash(out, lse, work, work_len, q, k, v, segment_ids, B,
                                                  NH, NKV, Tq, Tk, HS);
    const size_t rows = (size_t)(B * NH * Tq);
    if (status == 0 && !(all_finite(lse, rows) && all_finite(out, rows * (size_t)HS)))
        return attention_forward_v1_naive(out, lse, work, work_len, q, k, v, segment_ids, B, NH, NKV,
                                          Tq, Tk, HS);
    return status;
}

int attention_backward(float *dq, float *dk, float *dv, float *work, int64_t work_len,
                       const float *dout, const float *q, const float *k, const float *v,
                       const float *out, const float *lse, const int32_t *segment_ids, int64_t B,
                       int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk, int64_t HS)
{
    const int status = attention_backward_v2_flash(dq, dk, dv, work, work_len, dout, q, k, v, out,
                                                   lse, segment_ids, B, NH, NKV, Tq, Tk, HS);
    const size_t nq = (size_t)(B * NH * Tq * HS), nk = (size_t)(B * NKV * Tk * HS);
    if (status == 0 && !(all_finite(dq, nq) && all_finite(dk, nk) && all_finite(dv, nk)))
        return attention_backward_v1_naive(dq, dk, dv, work, work_len, dout, q, k, v, out, lse,
                                           segment_ids, B, NH, NKV, Tq, Tk, HS);
    return status;
}
