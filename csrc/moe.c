/* moe.c — the mixture-of-experts kernels: rows routed to experts, one call for all experts.
 *
 * A router sends each of N tokens to k of E experts; the R = N * k (token, expert) pairs,
 * sorted by expert, are the rows of the expert layers (nn/moe.py builds the plan):
 *   token_index (R)     row r is a copy of token token_index[r]
 *   offsets (E + 1)     expert e owns rows offsets[e] .. offsets[e+1] - 1 (possibly none)
 * The binding (backends/cpu_moe.py) has checked both: ids in [0, N), offsets rising 0 .. R.
 *
 *   moe_permute_forward     out[r] = x[token_index[r]]                  (a row gather)
 *   moe_permute_backward    dx[n] = sum_{r: t_r = n} dout[r]            (a scatter-add)
 *   grouped_matmul_forward  out[r] = x[r] @ w[e]^T for e's rows        (E products in one call)
 *   grouped_matmul_backward dx[r] = dout[r] @ w[e],  dw[e] = dout_e^T @ x_e
 *   moe_combine_forward     out[n] = sum_{r: t_r = n} weights[r] y[r]   (the weighted scatter back)
 *   moe_combine_backward    dy[r] = weights[r] dout[t_r],  dweights[r] = dout[t_r] . y[r]
 *
 * Scatters without atomics: a scatter-add over rows is turned into a gather. A counting sort
 * of token_index lists each token's rows (r ascending); then each output row is one thread's,
 * out[n] = ((0 + s_r1 y[r1]) + s_r2 y[r2]) + ..., summed in a row of L1 and written once. No
 * two threads write one value and the sum order (r ascending) is fixed: results do not depend
 * on the thread count. (The first version split the columns into one band per thread, every
 * thread adding into every output row in place: the same sums, about twice the time, as
 * each add read and wrote a row that had left the cache. It stays as the fallback when the
 * index list cannot be allocated.)
 *
 * The grouped matmul's ladder:
 *   v1_loop    the plain loop: for each expert, the threaded GEMM of matmul.c over its rows.
 *              With many small experts each product is too small to keep every thread busy,
 *              and the team is woken (and joined) once per expert and pass.
 *   v2_tiled   one list of tasks for all experts, (expert, block of ROW_BLOCK rows), shared
 *              by one thread team with a dynamic schedule; each task is a single-threaded
 *              packed GEMM. Uneven loads (one expert with every row, several with none) then
 *              balance across threads. dw[e] sums over all of e's rows, so it is one task
 *              per expert (single-threaded) when there are at least as many experts as
 *              threads, and the threaded GEMM per expert otherwise.
 *   v3_packed  (production) drives matmul.c's micro-kernel directly: each expert's weight is
 *              packed once per call and shared by all its row-block tasks, the tasks of all
 *              experts go to one team with a dynamic schedule, and dw is threaded over its
 *              output tiles (expert, block of rows of dw[e]) against x rows packed once;
 *              details above grouped_rows_v3.
 */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "microgpt.h"

#define ROW_BLOCK 96       /* rows per task of v2: a multiple of both micro-kernels' MR (12, 6) */

/* a band of channels [c0, c1) of every row is one thread's: scatter-adds need no atomics */
#define BANDS_FOR(C) ((C) >= 64 ? mg_min(omp_get_max_threads(), (C) / 32) : 1)

void moe_permute_forward(float* out, const float* x, const int64_t* token_index, int64_t N, int64_t R,
                         int64_t C) {
    (void)N;
    #pragma omp parallel for schedule(static) if (R * C >= MG_PAR_MIN)
    for (int64_t r = 0; r < R; r++)
        memcpy(out + r * C, x + token_index[r] * C, (size_t)C * sizeof(float));
}

/* out (N, C) = sum of the rows of src, each scaled (scale NULL: 1), at token_index: the
 * column-band version (see the header) */
static void scatter_rows_by_bands(float* out, const float* src, const float* scale, const int64_t* token_index,
                                  int64_t N, int64_t R, int64_t C) {
    memset(out, 0, (size_t)(N * C) * sizeof(float));
    int64_t bands = R * C >= MG_PAR_MIN ? BANDS_FOR(C) : 1;
    #pragma omp parallel for schedule(static) num_threads(bands) if (bands > 1)
    for (int64_t band = 0; band < bands; band++) {
        int64_t c0 = C * band / bands, c1 = C * (band + 1) / bands;
        for (int64_t r = 0; r < R; r++) {
            float s = scale ? scale[r] : 1.0f;
            float* o = out + token_index[r] * C;
            const float* y = src + r * C;
            for (int64_t c = c0; c < c1; c++)
                o[c] += s * y[c];
        }
    }
}

/* the same sums, as gathers: each token's rows from a counting sort of token_index */
static void scatter_rows(float* out, const float* src, const float* scale, const int64_t* token_index,
                         int64_t N, int64_t R, int64_t C) {
    int64_t* first = malloc((size_t)(N + 1 + R) * sizeof(int64_t));
    if (!first) {
        scatter_rows_by_bands(out, src, scale, token_index, N, R, C);
        return;
    }
    int64_t* rows_of = first + N + 1;       /* token n's rows: rows_of[first[n] .. first[n+1]) */
    memset(first, 0, (size_t)(N + 1) * sizeof(int64_t));
    for (int64_t r = 0; r < R; r++) first[token_index[r] + 1]++;
    for (int64_t n = 0; n < N; n++) first[n + 1] += first[n];
    for (int64_t r = 0; r < R; r++) rows_of[first[token_index[r]]++] = r;      /* first[n]: n's end */
    for (int64_t n = N; n > 0; n--) first[n] = first[n - 1];                   /* back to starts */
    first[0] = 0;
    #pragma omp parallel for schedule(static) if (R * C >= MG_PAR_MIN)
    for (int64_t n = 0; n < N; n++) {
        float* restrict o = out + n * C;
        memset(o, 0, (size_t)C * sizeof(float));
        for (int64_t j = first[n]; j < first[n + 1]; j++) {
            int64_t r = rows_of[j];
            float s = scale ? scale[r] : 1.0f;
            const float* restrict y = src + r * C;
            #pragma omp simd
            for (int64_t c = 0; c < C; c++) o[c] += s * y[c];
        }
    }
    free(first);
}

void moe_permute_backward(float* dx, const float* dout, const int64_t* token_index, int64_t N, int64_t R,
                          int64_t C) {
    scatter_rows(dx, dout, NULL, token_index, N, R, C);
}

void moe_combine_forward(float* out, const float* y, const float* weights, const int64_t* token_index,
                         int64_t N, int64_t R, int64_t C) {
    scatter_rows(out, y, weights, token_index, N, R, C);
}

void moe_combine_backward(float* dy, float* dweights, const float* dout, const float* y, const float* weights,
                          const int64_t* token_index, int64_t N, int64_t R, int64_t C) {
    (void)N;
    #pragma omp parallel for schedule(static) if (R * C >= MG_PAR_MIN)
    for (int64_t r = 0; r < R; r++) {
        const float* g = dout + token_index[r] * C;
        const float* yr = y + r * C;
        float* d = dy + r * C;
        float w = weights[r], dot = 0.0f;
        for (int64_t c = 0; c < C; c++) {
            d[c] = w * g[c];
            dot += g[c] * yr[c];
        }
        dweights[r] = dot;
    }
}

/* ---- grouped matmul ---------------------------------------------------------------------- */

void grouped_matmul_forward_v1_loop(float* out, const float* x, const float* w, const int64_t* offsets,
                                    int64_t R, int64_t E, int64_t C, int64_t OC) {
    (void)R;
    for (int64_t e = 0; e < E; e++) {
        int64_t r0 = offsets[e], rows = offsets[e + 1] - r0;
        if (rows > 0)      /* out_e (rows, OC) = x_e (rows, C) @ w[e]^T, w[e] stored (OC, C) */
            matmul_forward(out + r0 * OC, x + r0 * C, w + e * OC * C, NULL, rows, OC, C, 0, 1);
    }
}

void grouped_matmul_backward_v1_loop(float* dx, float* dw, const float* dout, const float* x, const float* w,
                                     const int64_t* offsets, int64_t R, int64_t E, int64_t C, int64_t OC) {
    (void)R;
    for (int64_t e = 0; e < E; e++) {
        int64_t r0 = offsets[e], rows = offsets[e + 1] - r0;
        if (rows == 0) {
            memset(dw + e * OC * C, 0, (size_t)(OC * C) * sizeof(float));
            continue;
        }
        /* dx_e (rows, C) = dout_e (rows, OC) @ w[e] (OC, C);  dw[e] (OC, C) = dout_e^T @ x_e */
        matmul_forward(dx + r0 * C, dout + r0 * OC, w + e * OC * C, NULL, rows, C, OC, 0, 0);
        matmul_forward(dw + e * OC * C, dout + r0 * OC, x + r0 * C, NULL, OC, C, rows, 1, 0);
    }
}

/* The (expert, row block) tasks of v2: task i covers rows [start[i], start[i] + count[i]) of
 * expert owner[i]. Returns the number of tasks; the arrays hold R / ROW_BLOCK + E entries. */
static int64_t row_tasks(const int64_t* offsets, int64_t E, int64_t* owner, int64_t* start, int64_t* count) {
    int64_t n = 0;
    for (int64_t e = 0; e < E; e++)
        for (int64_t r = offsets[e]; r < offsets[e + 1]; r += ROW_BLOCK) {
            owner[n] = e;
            start[n] = r;
            count[n] = mg_min(ROW_BLOCK, offsets[e + 1] - r);
            n++;
        }
    return n;
}

/* Run the row tasks of one product: out rows (stride n_out) = in rows (stride n_in) @ op(w[e]).
 * trans_b 1: op(w[e]) = w[e]^T, w[e] (n_out, n_in); 0: w[e] (n_in, n_out). */
static int grouped_rows(float* out, const float* in, const float* w, const int64_t* offsets, int64_t R,
                        int64_t E, int64_t n_in, int64_t n_out, int trans_b) {
    int64_t cap = R / ROW_BLOCK + E + 1;
    int64_t* tasks = malloc((size_t)(3 * cap) * sizeof(int64_t));
    if (!tasks) return 0;
    int64_t *owner = tasks, *start = tasks + cap, *count = tasks + 2 * cap;
    int64_t n = row_tasks(offsets, E, owner, start, count);
    #pragma omp parallel for schedule(dynamic, 1) if (n > 1 && (double)R * n_in * n_out >= 1048576.0)
    for (int64_t i = 0; i < n; i++)
        matmul_forward_v3_packed(out + start[i] * n_out, in + start[i] * n_in, w + owner[i] * n_in * n_out,
                                 NULL, count[i], n_out, n_in, 0, trans_b);
    free(tasks);
    return 1;
}

void grouped_matmul_forward_v2_tiled(float* out, const float* x, const float* w, const int64_t* offsets,
                                     int64_t R, int64_t E, int64_t C, int64_t OC) {
    if (!grouped_rows(out, x, w, offsets, R, E, C, OC, 1))      /* out of memory: the plain loop */
        grouped_matmul_forward_v1_loop(out, x, w, offsets, R, E, C, OC);
}

void grouped_matmul_backward_v2_tiled(float* dx, float* dw, const float* dout, const float* x, const float* w,
                                      const int64_t* offsets, int64_t R, int64_t E, int64_t C, int64_t OC) {
    if (!grouped_rows(dx, dout, w, offsets, R, E, OC, C, 0)) {
        grouped_matmul_backward_v1_loop(dx, dw, dout, x, w, offsets, R, E, C, OC);
        return;
    }
    int threads = omp_get_max_threads();
    if (E >= threads && threads > 1) {      /* one expert per task, each single-threaded */
        #pragma omp parallel for schedule(dynamic, 1)
        for (int64_t e = 0; e < E; e++) {
            int64_t r0 = offsets[e], rows = offsets[e + 1] - r0;
            if (rows == 0)
                memset(dw + e * OC * C, 0, (size_t)(OC * C) * sizeof(float));
            else
                matmul_forward_v3_packed(dw + e * OC * C, dout + r0 * OC, x + r0 * C, NULL, OC, C, rows, 1, 0);
        }
        return;
    }
    for (int64_t e = 0; e < E; e++) {
        int64_t r0 = offsets[e], rows = offsets[e + 1] - r0;
        if (rows == 0)
            memset(dw + e * OC * C, 0, (size_t)(OC * C) * sizeof(float));
        else
            matmul_forward(dw + e * OC * C, dout + r0 * OC, x + r0 * C, NULL, OC, C, rows, 1, 0);
    }
}

/* ---- v3: every operand packed once per call, one task list for all experts ---------------
 * v2 called a whole single-threaded GEMM per 96-row task, so each task allocated its own
 * buffers and re-packed its expert's full weight (a 384 x 512 weight per 96 x 384 x 512
 * product), and dw ran one expert per thread. v3 drives matmul.c's micro-kernel itself
 * (common.h exposes it with its packing routines), in two phases inside one thread team:
 *
 *   1. pack: every expert's operand shared by its tasks, once, into one buffer (the team
 *      splits the (expert, depth panel, NR sliver) pieces);
 *   2. compute: the tasks of all experts in one list with a dynamic schedule, so a thread
 *      that finishes (or an expert that has few rows) takes the next task, whoever's it is.
 *
 * Rows products (out, and dx):  out rows (R, N) = in rows (R, K) @ op(w[e]) (K, N).
 *   shared operand: op(w[e]) packed into (depth panel, sliver) pieces, once per expert
 *   task: (expert, V3_SLIVERS * MR rows); packs its MR-row A slivers, which only it uses.
 * dw:  dw[e] (M, N) = dout_e^T (M, rows_e) @ x_e (rows_e, N), the depth is the expert's rows.
 *   shared operand: x_e packed into pieces, once (all experts' together: R x N floats)
 *   task: (expert, V3_SLIVERS * MR rows of dw[e]), the output tiles; it sums over all of
 *   e's rows in order, so every value has one owner and one summation order: no races,
 *   and the same bits whatever the thread count or schedule.
 *
 * Packed piece layout (both): the (K x N) operand of an expert, from its base, as panels of
 * depth kc <= MG_GEMM_KC, each cut into NR-wide slivers, zero-padded to npad = N rounded up
 * to NR columns: the sliver s of the panel at depth pc starts at base + pc * npad + s * kc * NR.
 */
#define V3_SLIVERS 8        /* MR-row slivers per task: 96 rows with AVX-512's 12 x 32 kernel */
#define KC MG_GEMM_KC

static int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

/* c (rows x cols, stride ldc) [+]= ap^T bp over kc: the full tile in place, an edge tile
 * through ctile (the kernel always writes MR x NR) */
static inline void micro_tile(mg_gemm_kernel ch, int64_t kc, const float* ap, const float* bp, float* c,
                              int64_t ldc, int64_t rows, int64_t cols, int acc, float* ctile) {
    if (rows == ch.MR && cols == ch.NR) {
        ch.kernel(kc, ap, bp, c, ldc, acc);
        return;
    }
    ch.kernel(kc, ap, bp, ctile, ch.NR, 0);
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++)
            c[i * ldc + j] = (acc ? c[i * ldc + j] : 0.0f) + ctile[i * ch.NR + j];
}

/* Pack piece i of an operand op(b) (K x N) into its place from base (the layout above): piece
 * i is (panel i / n_s, sliver i % n_s). */
static inline void pack_piece(float* base, const float* b, int trans_b, int64_t K, int64_t N, int64_t npad,
                              int NR, int64_t i) {
    int64_t n_s = npad / NR, pc = i / n_s * KC, s = i % n_s, kc = mg_min(KC, K - pc);
    mg_gemm_pack_b(base + pc * npad + s * kc * NR, b, trans_b, N, K, s * NR, pc, kc, NR);
}

/* out rows = in rows @ op(w[e]) (w[e] stored (N, K) when trans_b, else (K, N)); 0: out of memory */
static int grouped_rows_v3(float* out, const float* in, const float* w, const int64_t* offsets, int64_t R,
                           int64_t E, int64_t K, int64_t N, int trans_b) {
    if (R == 0 || N == 0) return 1;
    if (K == 0) {
        memset(out, 0, (size_t)(R * N) * sizeof(float));
        return 1;
    }
    mg_gemm_kernel ch = mg_gemm_choose_kernel();
    const int MR = ch.MR, NR = ch.NR;
    int64_t npad = round_up(N, NR), n_s = npad / NR, n_pc = (K + KC - 1) / KC, block = V3_SLIVERS * MR;
    int threads = (double)R * K * N >= 1048576.0 ? omp_get_max_threads() : 1;
    int64_t cap = R / block + E + 1;
    float* wpack = aligned_alloc(64, (size_t)(E * K * npad) * sizeof(float));
    float* apack = aligned_alloc(64, (size_t)threads * KC * MR * sizeof(float));
    int64_t* tasks = malloc((size_t)(3 * cap) * sizeof(int64_t));
    if (!wpack || !apack || !tasks) {
        free(wpack);
        free(apack);
        free(tasks);
        return 0;
    }
    int64_t *owner = tasks, *start = tasks + cap, *count = tasks + 2 * cap, n_tasks = 0;
    for (int64_t e = 0; e < E; e++)
        for (int64_t r = offsets[e]; r < offsets[e + 1]; r += block) {
            owner[n_tasks] = e;
            start[n_tasks] = r;
            count[n_tasks++] = mg_min(block, offsets[e + 1] - r);
        }
    #pragma omp parallel num_threads(threads)
    {
        float* ap = apack + (int64_t)omp_get_thread_num() * KC * MR;
        float ctile[12 * 32] __attribute__((aligned(64)));
        #pragma omp for schedule(static)            /* 1. each used expert's weight, once */
        for (int64_t i = 0; i < E * n_pc * n_s; i++) {
            int64_t e = i / (n_pc * n_s);
            if (offsets[e + 1] > offsets[e])
                pack_piece(wpack + e * K * npad, w + e * K * N, trans_b, K, N, npad, NR, i % (n_pc * n_s));
        }
        #pragma omp for schedule(dynamic, 1)        /* 2. (expert, row block) tasks */
        for (int64_t t = 0; t < n_tasks; t++) {
            const float* a = in + start[t] * K;
            const float* wp = wpack + owner[t] * K * npad;
            float* o = out + start[t] * N;
            for (int64_t pc = 0; pc < K; pc += KC) {
                int64_t kc = mg_min(KC, K - pc);
                for (int64_t i0 = 0; i0 < count[t]; i0 += MR) {
                    mg_gemm_pack_a(ap, a, 0, count[t], K, i0, pc, kc, MR);
                    for (int64_t s = 0; s < n_s; s++)
                        micro_tile(ch, kc, ap, wp + pc * npad + s * kc * NR, o + i0 * N + s * NR, N,
                                   mg_min(MR, count[t] - i0), mg_min(NR, N - s * NR), pc > 0, ctile);
                }
            }
        }
    }
    free(wpack);
    free(apack);
    free(tasks);
    return 1;
}

/* dw[e] (M, N) = dout_e^T @ x_e, dout rows (R, M), x rows (R, N); 0 for an expert with no
 * rows; returns 0 when out of memory */
static int grouped_dw_v3(float* dw, const float* dout, const float* x, const int64_t* offsets, int64_t R,
                         int64_t E, int64_t M, int64_t N) {
    if (M == 0 || N == 0) return 1;
    if (R == 0) {
        memset(dw, 0, (size_t)(E * M * N) * sizeof(float));
        return 1;
    }
    mg_gemm_kernel ch = mg_gemm_choose_kernel();
    const int MR = ch.MR, NR = ch.NR;
    int64_t npad = round_up(N, NR), n_s = npad / NR, block = V3_SLIVERS * MR, n_mb = (M + block - 1) / block;
    int threads = (double)R * M * N >= 1048576.0 ? omp_get_max_threads() : 1;
    int64_t cap = R / KC + E + 1;                    /* depth panels of all experts */
    float* xpack = aligned_alloc(64, (size_t)(R * npad) * sizeof(float));
    float* apack = aligned_alloc(64, (size_t)threads * KC * MR * sizeof(float));
    int64_t* panels = malloc((size_t)(2 * cap) * sizeof(int64_t));
    if (!xpack || !apack || !panels) {
        free(xpack);
        free(apack);
        free(panels);
        return 0;
    }
    int64_t *panel_expert = panels, *panel_depth = panels + cap, n_panels = 0;
    for (int64_t e = 0; e < E; e++)
        for (int64_t pc = 0; pc < offsets[e + 1] - offsets[e]; pc += KC) {
            panel_expert[n_panels] = e;
            panel_depth[n_panels++] = pc;
        }
    #pragma omp parallel num_threads(threads)
    {
        float* ap = apack + (int64_t)omp_get_thread_num() * KC * MR;
        float ctile[12 * 32] __attribute__((aligned(64)));
        #pragma omp for schedule(static)            /* 1. every expert's x rows, once */
        for (int64_t i = 0; i < n_panels * n_s; i++) {
            int64_t p = i / n_s, e = panel_expert[p], r0 = offsets[e];
            pack_piece(xpack + r0 * npad, x + r0 * N, 0, offsets[e + 1] - r0, N, npad, NR,
                       panel_depth[p] / KC * n_s + i % n_s);
        }
        #pragma omp for schedule(dynamic, 1)        /* 2. (expert, block of dw rows) tasks */
        for (int64_t t = 0; t < E * n_mb; t++) {
            int64_t e = t / n_mb, m0 = t % n_mb * block, m1 = mg_min(M, m0 + block);
            int64_t r0 = offsets[e], rows = offsets[e + 1] - r0;
            float* d = dw + e * M * N;
            if (rows == 0) {
                memset(d + m0 * N, 0, (size_t)((m1 - m0) * N) * sizeof(float));
                continue;
            }
            const float* xp = xpack + r0 * npad;
            for (int64_t pc = 0; pc < rows; pc += KC) {
                int64_t kc = mg_min(KC, rows - pc);
                for (int64_t i0 = m0; i0 < m1; i0 += MR) {      /* op(a) = dout_e^T: a stored (rows, M) */
                    mg_gemm_pack_a(ap, dout + r0 * M, 1, M, rows, i0, pc, kc, MR);
                    for (int64_t s = 0; s < n_s; s++)
                        micro_tile(ch, kc, ap, xp + pc * npad + s * kc * NR, d + i0 * N + s * NR, N,
                                   mg_min(MR, m1 - i0), mg_min(NR, N - s * NR), pc > 0, ctile);
                }
            }
        }
    }
    free(xpack);
    free(apack);
    free(panels);
    return 1;
}

void grouped_matmul_forward_v3_packed(float* out, const float* x, const float* w, const int64_t* offsets,
                                      int64_t R, int64_t E, int64_t C, int64_t OC) {
    if (!grouped_rows_v3(out, x, w, offsets, R, E, C, OC, 1))    /* out of memory: v2 */
        grouped_matmul_forward_v2_tiled(out, x, w, offsets, R, E, C, OC);
}

void grouped_matmul_backward_v3_packed(float* dx, float* dw, const float* dout, const float* x, const float* w,
                                       const int64_t* offsets, int64_t R, int64_t E, int64_t C, int64_t OC) {
    if (!grouped_rows_v3(dx, dout, w, offsets, R, E, OC, C, 0) || !grouped_dw_v3(dw, dout, x, offsets, R, E, OC, C))
        grouped_matmul_backward_v2_tiled(dx, dw, dout, x, w, offsets, R, E, C, OC);
}

void grouped_matmul_forward(float* out, const float* x, const float* w, const int64_t* offsets,
                            int64_t R, int64_t E, int64_t C, int64_t OC) {
    grouped_matmul_forward_v3_packed(out, x, w, offsets, R, E, C, OC);
}

void grouped_matmul_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                             const int64_t* offsets, int64_t R, int64_t E, int64_t C, int64_t OC) {
    grouped_matmul_backward_v3_packed(dx, dw, dout, x, w, offsets, R, E, C, OC);
}
