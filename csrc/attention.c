/*
 * attention.c — fused causal self-attention, forward and backward, flash-style, with GQA.
 *
 * Specification: attention_forward / attention_backward in microgpt/backends/reference.py.
 *   q (B, NH, Tq, HS), k and v (B, NKV, Tk, HS); query head h reads key/value head h / (NH/NKV);
 *   query i sits at position Tk - Tq + i and sees keys 0 .. Tk - Tq + i (bottom-right causal);
 *   S = q k^T / sqrt(HS), lse_i = log sum_j exp S_ij, P = exp(S - lse), out = P v.
 *
 * How it is fast, in the order a reader meets it:
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
 *      dV sum over the group and no two threads ever write the same row.
 *   6. SIMD through GCC vector extensions (16-float vectors): one source, compiled three times
 *      with target attributes — AVX-512 (MR 8, NV 2), AVX2+FMA (MR 4, NV 1) and the baseline —
 *      and chosen at run time by microgpt_simd_level() (threads.c: __builtin_cpu_supports, or
 *      the path a test forces with microgpt_set_simd_path).
 *   7. OpenMP: forward threads over (batch, head), backward over (batch, kv-head); each thread
 *      works in its own slice of the caller's workspace (attention_*_workspace floats).
 */
#include <math.h>
#include <stddef.h>
#include <string.h>
#include <omp.h>
#include "microgpt.h"
#include "common.h"

#pragma GCC diagnostic ignored "-Wpsabi"   /* vectors cross only always_inline calls */
#pragma GCC optimize("fp-contract=fast")   /* a * b + c is one FMA (-std=c11 turns that off) */

#define BR 64       /* query block (columns of a score tile); a multiple of 16 */
#define BC 64       /* key block (rows of a score tile); a multiple of every MR */
#define MR_MAX 8    /* register tile: at most 8 rows ... */
#define NV_MAX 2    /* ... by 2 vectors of 16 floats */
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f
#define AI static inline __attribute__((always_inline))

typedef float vf __attribute__((vector_size(64)));      /* 16 floats */
typedef int vi __attribute__((vector_size(64)));
typedef unsigned int vu __attribute__((vector_size(64)));

static size_t round_up(size_t x, size_t m) { return (x + m - 1) / m * m; }
static size_t min_size(size_t a, size_t b) { return a < b ? a : b; }

/* ---- vector helpers (unaligned memory, lane selects, exp2) ---------------------------------- */

AI vf vload(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
AI void vstore(float *p, vf v) { memcpy(p, &v, sizeof v); }
#define vsplat(x) ((x) - (vf){0})   /* x - 0 = x: one broadcast (an inline function gets 16 inserts) */
AI vf vselect(vi mask, vf yes, vf no) { return (vf)((mask & (vi)yes) | (~mask & (vi)no)); }
AI vf vmax(vf a, vf b) { return vselect(b > a, b, a); }           /* keeps a NaN in a */
AI vi lanes(void) { return (vi){0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}; }

/* 2^x = 2^n 2^f with n = round(x), f = x - n in [-1/2, 1/2]; 2^f by a degree-6 polynomial fitted
 * (relative least squares at Chebyshev nodes) to 2e-9, ~1 ulp after float rounding. Below -125
 * the result is exactly 0, which is how masked scores (-inf) become zero probabilities. */
AI vf vexp2(vf x)
{
    vi dead = x < vsplat(-125.0f);
    x = vselect(dead, vsplat(-125.0f), x);
    x = vselect(x > vsplat(127.0f), vsplat(127.0f), x);
    vi n = __builtin_convertvector(x + 125.5f, vi) - 125;   /* x + 125.5 > 0: truncation = floor */
    vf f = x - __builtin_convertvector(n, vf);
    vf p = vsplat(1.5337585e-4f);
    p = p * f + 1.3399870e-3f;
    p = p * f + 9.6185198e-3f;
    p = p * f + 5.5503290e-2f;
    p = p * f + 2.4022646e-1f;
    p = p * f + 6.9314718e-1f;
    p = p * f + 1.0f;
    vu bits = (vu)p + ((vu)n << 23);                       /* multiply by 2^n in the exponent */
    return (vf)((vi)bits & ~dead);
}

/* ---- the micro-kernel and the tile GEMM ---------------------------------------------------------
 * C (M x N) = [C +] A (M x K) B (K x N); row-major with leading dimensions; M a multiple of MR,
 * N a multiple of 16. One register tile is MR rows x 16 NV columns: per k, NV vector loads of B,
 * MR broadcasts of A, MR*NV fused multiply-adds into accumulators that never leave registers. */
AI void tile(float *c, size_t ldc, const float *a, size_t ars, size_t aks, const float *b,
             size_t ldb, size_t K, int accumulate, const int MR, const int NV)
{
    vf acc[MR_MAX][NV_MAX];         /* fixed sizes: after unrolling, each one is a register */
    #pragma GCC unroll 16
    for (int r = 0; r < MR; r++)
        #pragma GCC unroll 2
        for (int v = 0; v < NV; v++)
            acc[r][v] = accumulate ? vload(c + r * ldc + 16 * v) : vsplat(0.0f);
    for (size_t k = 0; k < K; k++) {
        vf bk[NV_MAX];
        #pragma GCC unroll 2
        for (int v = 0; v < NV; v++) bk[v] = vload(b + k * ldb + 16 * v);
        #pragma GCC unroll 16
        for (int r = 0; r < MR; r++) {
            vf ar = vsplat(a[r * ars + k * aks]);
            #pragma GCC unroll 2
            for (int v = 0; v < NV; v++) acc[r][v] += ar * bk[v];
        }
    }
    #pragma GCC unroll 16
    for (int r = 0; r < MR; r++)
        #pragma GCC unroll 2
        for (int v = 0; v < NV; v++) vstore(c + r * ldc + 16 * v, acc[r][v]);
}

/* Inside a diagonal block, key r and query c meet only when r <= c + diag. The GEMMs use it to
 * skip work that would be multiplied by zero:
 *   SKIP_HIDDEN  C is keys x queries: a tile with every key after every query is zeroed, not computed;
 *   K_FROM       C is keys x channels, K runs over queries: start at the first query row i sees;
 *   K_TO         C is queries x channels, K runs over keys: stop after the last key row i sees.
 * Outside the diagonal (diag >= the block size) every mode computes the whole product. */
enum { FULL, SKIP_HIDDEN, K_FROM, K_TO };

AI void part(float *c, size_t ldc, const float *a, size_t ars, size_t aks, const float *b,
             size_t ldb, size_t i, size_t j, size_t K, int accumulate, long diag,
             const int causal, const int MR, const int NV)
{
    long k0 = 0, k1 = (long)K;
    if (causal == SKIP_HIDDEN && (long)i > diag + (long)j + 16 * NV - 1) {
        if (!accumulate)
            for (int r = 0; r < MR; r++) memset(c + (i + r) * ldc + j, 0, 64 * NV);
        return;
    }
    if (causal == K_FROM && (long)i - diag > 0) k0 = (long)i - diag;
    if (causal == K_TO && diag + (long)i + MR < k1) k1 = diag + (long)i + MR;
    if (k1 <= k0 && accumulate) return;
    if (k1 < k0) k1 = k0;
    tile(c + i * ldc + j, ldc, a + i * ars + (size_t)k0 * aks, ars, aks, b + (size_t)k0 * ldb + j,
         ldb, (size_t)(k1 - k0), accumulate, MR, NV);
}

/* C (M x N) = [C +] A (M x K) B (K x N). A's element (r, k) is a[r * ars + k * aks]: row-major
 * A is (lda, 1), a transposed one (1, lda) — a broadcast does not care which, so no product
 * ever needs its left operand transposed in memory. */
AI void gemm(float *c, size_t ldc, const float *a, size_t ars, size_t aks, const float *b,
             size_t ldb, size_t M, size_t N, size_t K, int accumulate, long diag,
             const int causal, const int MR, const int NV)
{
    for (size_t i = 0; i < M; i += MR) {
        size_t j = 0;
        for (; j + 16 * NV <= N; j += 16 * NV)
            part(c, ldc, a, ars, aks, b, ldb, i, j, K, accumulate, diag, causal, MR, NV);
        for (; j < N; j += 16)
            part(c, ldc, a, ars, aks, b, ldb, i, j, K, accumulate, diag, causal, MR, 1);
    }
}

/* ---- packing: zero-padded copies in the layouts the GEMMs want ------------------------------- */

/* A (T, HS) row-major operand as the GEMMs see it: blocks of R rows, HP wide, zero-padded.
 * When HS is a multiple of 16 (HS == HP) whole blocks are read in place from the caller's
 * array and only a ragged last block is copied; otherwise every row is copied into `pad`
 * (room for round_up(T, R) x HP floats). */
typedef struct { const float *src; const float *pad; size_t HS, HP, tail; } rows_t;

AI rows_t pack_rows(float *pad, const float *src, size_t T, size_t R, size_t HS, size_t HP)
{
    const size_t tail = HS == HP ? T / R * R : 0, end = round_up(T, R);   /* copy rows tail.. */
    for (size_t t = tail; t < T; t++) {
        memcpy(pad + (t - tail) * HP, src + t * HS, HS * sizeof *pad);
        memset(pad + (t - tail) * HP + HS, 0, (HP - HS) * sizeof *pad);
    }
    memset(pad + (T - tail) * HP, 0, (end - T) * HP * sizeof *pad);
    return (rows_t){src, pad, HS, HP, tail};
}

/* Rows t0 .. t0 + R - 1 (t0 a multiple of R), leading dimension HP. */
AI const float *block_at(rows_t x, size_t t0)
{
    return t0 < x.tail ? x.src + t0 * x.HS : x.pad + (t0 - x.tail) * x.HP;
}

/* 16 x 16 transpose in registers, in four rounds b = 8, 4, 2, 1: each round swaps the two
 * off-diagonal b x b blocks of every 2b x 2b block (rows i and i + b trade halves). */
AI void transpose16(vf r[16])
{
    static const vi lo[4] = {{0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},
                             {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27},
                             {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29},
                             {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30}};
    static const vi hi[4] = {{8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31},
                             {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31},
                             {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31},
                             {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31}};
    #pragma GCC unroll 4
    for (int round = 0, b = 8; round < 4; round++, b /= 2)
        #pragma GCC unroll 16
        for (int i = 0; i < 16; i++)
            if (!(i & b)) {
                vf x = r[i], y = r[i + b];
                r[i] = __builtin_shuffle(x, y, lo[round]);
                r[i + b] = __builtin_shuffle(x, y, hi[round]);
            }
}

/* rows (T, HS) -> transposed panels: panel p holds rows p*W .. p*W+W-1 as an (HP x W) block,
 * element (d, t) at dst[p*HP*W + d*W + t % W]; times `scale`, zero padding. Whole 16 x 16
 * blocks go through registers, ragged edges element by element. */
AI void pack_panels_t(float *dst, const float *src, size_t T, size_t TP, size_t HS, size_t HP,
                      size_t W, float scale)
{
    if (T < TP || HS < HP) memset(dst, 0, TP * HP * sizeof *dst);
    for (size_t t0 = 0; t0 < T; t0 += 16) {
        float *panel = dst + (t0 / W) * HP * W + t0 % W;
        for (size_t d0 = 0; d0 < HS; d0 += 16) {
            if (t0 + 16 <= T && d0 + 16 <= HS) {
                vf r[16];
                for (int i = 0; i < 16; i++) r[i] = vload(src + (t0 + i) * HS + d0);
                transpose16(r);
                for (int i = 0; i < 16; i++) vstore(panel + (d0 + i) * W, r[i] * scale);
            } else {
                for (size_t t = t0; t < T && t < t0 + 16; t++)
                    for (size_t d = d0; d < HS && d < d0 + 16; d++)
                        panel[d * W + t - t0] = src[t * HS + d] * scale;
            }
        }
    }
}

/* D_i = sum_d dout_id out_id for T rows of HS (16 lanes at a time, then the lanes summed). */
AI void row_dots(float *dd, const float *dout, const float *out, size_t T, size_t HS)
{
    for (size_t t = 0; t < T; t++) {
        const float *a = dout + t * HS, *b = out + t * HS;
        vf acc = vsplat(0.0f);
        size_t d = 0;
        for (; d + 16 <= HS; d += 16) acc += vload(a + d) * vload(b + d);
        float s = 0.0f;
        for (int lane = 0; lane < 16; lane++) s += acc[lane];
        for (; d < HS; d++) s += a[d] * b[d];
        dd[t] = s;
    }
}

/* ---- forward: one (batch, head) -------------------------------------------------------------- */

static size_t fwd_floats(size_t Tq, size_t Tk, size_t HS)
{
    size_t HP = round_up(HS, 16), TkP = round_up(Tk, BC);
    (void)Tq;
    return 2 * TkP * HP + 2 * HP * BR + BC * BR + 3 * BR + 16;   /* +16: room to align to 64 B */
}

AI void fwd_head(float *out, float *lse, const float *q, const float *k, const float *v,
                 size_t Tq, size_t Tk, size_t HS, float *w, const int MR, const int NV)
{
    const size_t HP = round_up(HS, 16), TkP = round_up(Tk, BC), off = Tk - Tq;
    const size_t W = min_size(BR, round_up(Tq, 16));       /* query block width, lanes */
    const float qscale = LOG2E / sqrtf((float)HS);
    float *kp = w;                      /* (TkP, HP)  keys, where they need a padded copy   */
    float *vp = kp + TkP * HP;          /* (TkP, HP)  values, likewise                      */
    float *qt = vp + TkP * HP;          /* (HP, W)    query block transposed, times qscale */
    float *o = qt + HP * BR;            /* (W, HP)    output accumulator                  */
    float *st = o + HP * BR;            /* (BC, W)    scores S^T, then P^T                */
    float *m = st + BC * BR, *l = m + BR, *alpha = l + BR;
    const rows_t K = pack_rows(kp, k, Tk, BC, HS, HP), V = pack_rows(vp, v, Tk, BC, HS, HP);
    for (size_t i0 = 0; i0 < Tq; i0 += W) {
        const size_t rows = min_size(W, Tq - i0);
        const size_t kend = off + i0 + rows;               /* keys this block may see: [0, kend) */
        pack_panels_t(qt, q + i0 * HS, rows, W, HS, HP, W, qscale);
        memset(o, 0, W * HP * sizeof *o);
        for (size_t i = 0; i < W; i++) { m[i] = -INFINITY; l[i] = 0.0f; }
        for (size_t j0 = 0; j0 < kend; j0 += BC) {
            const long diag = (long)(off + i0) - (long)j0;   /* key c sees query i iff c <= i + diag */
            const int masked = diag < BC - 1;                /* some key comes after some query */
            gemm(st, W, block_at(K, j0), HP, 1, qt, W, BC, W, HP, 0, diag, SKIP_HIDDEN, MR, NV); /* S^T = K Q^T */
            for (size_t i = 0; i < W; i += 16) {
                vf mx = vload(m + i);                      /* m' = max(m, max_j S_ji) */
                vi qpos = (vi){0} + (int)(off + i0 + i) + lanes();
                for (size_t c = 0; c < BC; c++) {
                    vf s = vload(st + c * W + i);
                    if (masked) {                          /* key j visible iff j <= pos */
                        vi hidden = (vi){0} + (int)(j0 + c) > qpos;
                        s = vselect(hidden, vsplat(-INFINITY), s);
                        vstore(st + c * W + i, s);
                    }
                    mx = vmax(mx, s);
                }
                vf a = vexp2(vload(m + i) - mx), sum = vsplat(0.0f);
                for (size_t c = 0; c < BC; c++) {          /* P^T = 2^(S^T - m'), l' = l a + sum P */
                    vf p = vexp2(vload(st + c * W + i) - mx);
                    vstore(st + c * W + i, p);
                    sum += p;
                }
                vstore(l + i, vload(l + i) * a + sum);
                vstore(m + i, mx);
                vstore(alpha + i, a);
            }
            for (size_t i = 0; i < W; i++) {               /* O <- diag(alpha) O */
                const vf a = vsplat(alpha[i]);
                for (size_t d = 0; d < HP; d += 16) vstore(o + i * HP + d, vload(o + i * HP + d) * a);
            }
            gemm(o, HP, st, 1, W, block_at(V, j0), HP, W, HP, BC, 1, diag, K_TO, MR, NV); /* O += P V */
        }
        for (size_t i = 0; i < rows; i++) {                /* out = O / l, lse = ln2 (m + log2 l) */
            const float inv = 1.0f / l[i];
            for (size_t d = 0; d < HS; d++) out[(i0 + i) * HS + d] = o[i * HP + d] * inv;
            lse[i0 + i] = LN2 * (m[i] + log2f(l[i]));
        }
    }
}

/* ---- backward: one (batch, kv-head) and the G query heads that read it -------------------------- */

static size_t bwd_floats(size_t Tq, size_t Tk, size_t HS)
{
    size_t HP = round_up(HS, 16), TkP = round_up(Tk, BC);
    size_t W = min_size(BR, round_up(Tq, 16)), TqP = round_up(Tq, W);
    return 4 * TkP * HP + 5 * TqP * HP + 2 * TqP + 2 * BC * BR + 16;
}

AI void bwd_group(float *dq, float *dk, float *dv, const float *dout, const float *q,
                  const float *k, const float *v, const float *out, const float *lse,
                  size_t G, size_t Tq, size_t Tk, size_t HS, float *w, const int MR, const int NV)
{
    const size_t HP = round_up(HS, 16), TkP = round_up(Tk, BC), off = Tk - Tq;
    const size_t W = min_size(BR, round_up(Tq, 16)), TqP = round_up(Tq, W);
    const float scale = 1.0f / sqrtf((float)HS), qscale = LOG2E * scale;
    float *kp = w;                      /* (TkP, HP)  keys, where they need a padded copy */
    float *vp = kp + TkP * HP;          /* (TkP, HP)  values, likewise    */
    float *dka = vp + TkP * HP;         /* (TkP, HP)  dK, unscaled, summed over the group */
    float *dva = dka + TkP * HP;        /* (TkP, HP)  dV, summed over the group           */
    float *qp = dva + TkP * HP;         /* (TqP, HP)  queries, likewise (unscaled)        */
    float *qt = qp + TqP * HP;          /* TqP/W x (HP, W)  queries transposed, times qscale */
    float *dop = qt + TqP * HP;         /* (TqP, HP)  dout, likewise      */
    float *dot = dop + TqP * HP;        /* TqP/W x (HP, W)  dout transposed               */
    float *dqa = dot + TqP * HP;        /* (TqP, HP)  dQ, unscaled                        */
    float *lse2 = dqa + TqP * HP;       /* (TqP)  lse in log2 units */
    float *dd = lse2 + TqP;             /* (TqP)  D_i = sum_d dout_id out_id */
    float *pt = dd + TqP;               /* (BC, W)  S^T, then P^T  */
    float *dpt = pt + BC * BR;          /* (BC, W)  dP^T, then dS^T */
    const rows_t K = pack_rows(kp, k, Tk, BC, HS, HP), V = pack_rows(vp, v, Tk, BC, HS, HP);
    memset(dka, 0, 2 * TkP * HP * sizeof *dka);
    for (size_t g = 0; g < G; g++) {
        const size_t h = g * Tq * HS;
        const rows_t Q = pack_rows(qp, q + h, Tq, W, HS, HP);
        pack_panels_t(qt, q + h, Tq, TqP, HS, HP, W, qscale);
        const rows_t dO = pack_rows(dop, dout + h, Tq, W, HS, HP);
        pack_panels_t(dot, dout + h, Tq, TqP, HS, HP, W, 1.0f);
        memset(dqa, 0, TqP * HP * sizeof *dqa);
        row_dots(dd, dout + h, out + h, Tq, HS);
        for (size_t i = 0; i < TqP; i++) {
            if (i >= Tq) dd[i] = 0.0f;
            lse2[i] = i < Tq ? lse[g * Tq + i] * LOG2E : 0.0f;
        }
        for (size_t j0 = 0; j0 < Tk; j0 += BC) {
            /* query i sees key j iff j <= off + i: the first query block that sees this one */
            size_t first = j0 > off ? (j0 - off) / W * W : 0;
            for (size_t i0 = first; i0 < Tq; i0 += W) {
                const float *qt_i = qt + i0 * HP, *dot_i = dot + i0 * HP;
                const long diag = (long)(off + i0) - (long)j0;
                const int masked = diag < BC - 1 || i0 + W > Tq;   /* or padding queries */
                gemm(pt, W, block_at(K, j0), HP, 1, qt_i, W, BC, W, HP, 0, diag, SKIP_HIDDEN, MR, NV); /* S^T */
                for (size_t c = 0; c < BC; c++)            /* P^T = 2^(S^T - lse) */
                    for (size_t i = 0; i < W; i += 16) {
                        vf x = vload(pt + c * W + i) - vload(lse2 + i0 + i);
                        if (masked) {
                            vi qi = (vi){0} + (int)(i0 + i) + lanes();
                            vi hidden = (qi >= (int)Tq) | ((vi){0} + (int)(j0 + c) > qi + (int)off);
                            x = vselect(hidden, vsplat(-INFINITY), x);
                        }
                        vstore(pt + c * W + i, vexp2(x));
                    }
                gemm(dva + j0 * HP, HP, pt, W, 1, block_at(dO, i0), HP, BC, HP, W, 1, diag, K_FROM,
                     MR, NV);                                                       /* dV += P^T dO */
                gemm(dpt, W, block_at(V, j0), HP, 1, dot_i, W, BC, W, HP, 0, diag, SKIP_HIDDEN,
                     MR, NV);                                                       /* dP^T = V dO^T */
                for (size_t c = 0; c < BC; c++)            /* dS^T = P^T (dP^T - D) */
                    for (size_t i = 0; i < W; i += 16)
                        vstore(dpt + c * W + i, vload(pt + c * W + i)
                               * (vload(dpt + c * W + i) - vload(dd + i0 + i)));
                gemm(dka + j0 * HP, HP, dpt, W, 1, block_at(Q, i0), HP, BC, HP, W, 1, diag, K_FROM,
                     MR, NV);                                                       /* dK += dS^T Q */
                gemm(dqa + i0 * HP, HP, dpt, 1, W, block_at(K, j0), HP, W, HP, BC, 1, diag, K_TO,
                     MR, NV);                                          /* dQ += dS K, dS = (dS^T)^T */
            }
        }
        for (size_t i = 0; i < Tq; i++)
            for (size_t d = 0; d < HS; d++) dq[h + i * HS + d] = scale * dqa[i * HP + d];
    }
    for (size_t j = 0; j < Tk; j++)
        for (size_t d = 0; d < HS; d++) {
            dk[j * HS + d] = scale * dka[j * HP + d];
            dv[j * HS + d] = dva[j * HP + d];
        }
}

/* ---- one instance per instruction set, then the public entry points ----------------------------- */

#define ATTENTION_ISA(name, target, MR, NV)                                                       \
    target static void fwd_##name(float *out, float *lse, const float *q, const float *k,         \
                                  const float *v, size_t Tq, size_t Tk, size_t HS, float *w)      \
    { fwd_head(out, lse, q, k, v, Tq, Tk, HS, w, MR, NV); }                                      \
    target static void bwd_##name(float *dq, float *dk, float *dv, const float *dout,            \
                                  const float *q, const float *k, const float *v,                \
                                  const float *out, const float *lse, size_t G, size_t Tq,       \
                                  size_t Tk, size_t HS, float *w)                                \
    { bwd_group(dq, dk, dv, dout, q, k, v, out, lse, G, Tq, Tk, HS, w, MR, NV); }

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
ATTENTION_ISA(avx512, __attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma"))), 8, 2)
ATTENTION_ISA(avx2, __attribute__((target("avx2,fma"))), 4, 1)
#define HAVE_X86_PATHS 1
#endif
ATTENTION_ISA(scalar, , 2, 1)

/* Threads: at most one per task, and no more than the caller's workspace has slices for (each
 * slice rounded to 16 floats, so all start 64-byte aligned); 0 when not even one fits. */
static long team(long tasks, size_t per, size_t work_len)
{
    long n = omp_get_max_threads();
    if (n > tasks) n = tasks;
    if (work_len < per + 16) return 0;
    if ((size_t)n * per + 16 > work_len) n = (long)((work_len - 16) / per);
    return n;
}

static float *aligned(float *work) { return work + ((64 - (uintptr_t)work % 64) % 64) / sizeof *work; }

long attention_forward_workspace(long B, long NH, long Tq, long Tk, long HS)
{
    long threads = omp_get_max_threads();
    if (threads > B * NH) threads = B * NH;
    return (long)(threads * round_up(fwd_floats(Tq, Tk, HS), 16) + 16);
}

int attention_forward(float *out, float *lse, float *work, long work_len, const float *q,
                      const float *k, const float *v, long B, long NH, long NKV, long Tq,
                      long Tk, long HS)
{
    const int level = microgpt_simd_level();
    const size_t per = round_up(fwd_floats(Tq, Tk, HS), 16);
    const long tasks = B * NH, group = NH / NKV, threads = team(tasks, per, (size_t)work_len);
    float *base = aligned(work);
    if (threads == 0) return -1;
    #pragma omp parallel num_threads(threads)
    {
        float *w = base + (size_t)omp_get_thread_num() * per;
        #pragma omp for schedule(dynamic, 1)
        for (long t = 0; t < tasks; t++) {              /* t = b * NH + h */
            const size_t kv = ((size_t)(t / NH) * NKV + (size_t)(t % NH / group)) * Tk * HS;
            float *o = out + (size_t)t * Tq * HS, *l = lse + (size_t)t * Tq;
            const float *qh = q + (size_t)t * Tq * HS;
#ifdef HAVE_X86_PATHS
            if (level >= 2) { fwd_avx512(o, l, qh, k + kv, v + kv, Tq, Tk, HS, w); continue; }
            if (level == 1) { fwd_avx2(o, l, qh, k + kv, v + kv, Tq, Tk, HS, w); continue; }
#endif
            (void)level;
            fwd_scalar(o, l, qh, k + kv, v + kv, Tq, Tk, HS, w);
        }
    }
    return 0;
}

long attention_backward_workspace(long B, long NKV, long Tq, long Tk, long HS)
{
    long threads = omp_get_max_threads();
    if (threads > B * NKV) threads = B * NKV;
    return (long)(threads * round_up(bwd_floats(Tq, Tk, HS), 16) + 16);
}

int attention_backward(float *dq, float *dk, float *dv, float *work, long work_len,
                       const float *dout, const float *q, const float *k, const float *v,
                       const float *out, const float *lse, long B, long NH, long NKV, long Tq,
                       long Tk, long HS)
{
    const int level = microgpt_simd_level();
    const size_t per = round_up(bwd_floats(Tq, Tk, HS), 16);
    const long tasks = B * NKV, G = NH / NKV, threads = team(tasks, per, (size_t)work_len);
    float *base = aligned(work);
    if (threads == 0) return -1;
    #pragma omp parallel num_threads(threads)
    {
        float *w = base + (size_t)omp_get_thread_num() * per;
        #pragma omp for schedule(dynamic, 1)
        for (long t = 0; t < tasks; t++) {              /* t = b * NKV + kv head */
            const size_t hq = (size_t)t * G * Tq * HS, hk = (size_t)t * Tk * HS;
            const size_t hl = (size_t)t * G * Tq;
#ifdef HAVE_X86_PATHS
            if (level >= 2) {
                bwd_avx512(dq + hq, dk + hk, dv + hk, dout + hq, q + hq, k + hk, v + hk, out + hq,
                           lse + hl, G, Tq, Tk, HS, w);
                continue;
            }
            if (level == 1) {
                bwd_avx2(dq + hq, dk + hk, dv + hk, dout + hq, q + hq, k + hk, v + hk, out + hq,
                         lse + hl, G, Tq, Tk, HS, w);
                continue;
            }
#endif
            (void)level;
            bwd_scalar(dq + hq, dk + hk, dv + hk, dout + hq, q + hq, k + hk, v + hk, out + hq,
                       lse + hl, G, Tq, Tk, HS, w);
        }
    }
    return 0;
}
