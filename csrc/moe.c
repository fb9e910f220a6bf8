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
 * Scatters without atomics: a scatter-add over rows is split by columns, each thread owning
 * a band of channels of every output row, so no two threads write one value and the sum
 * order (r ascending) is fixed: results do not depend on the thread count.
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

/* out (N, C) += rows of src, each scaled (scale NULL: 1), at token_index; out zeroed first */
static void scatter_rows(float* out, const float* src, const float* scale, const int64_t* token_index,
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

void grouped_matmul_forward(float* out, const float* x, const float* w, const int64_t* offsets,
                            int64_t R, int64_t E, int64_t C, int64_t OC) {
    grouped_matmul_forward_v2_tiled(out, x, w, offsets, R, E, C, OC);
}

void grouped_matmul_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                             const int64_t* offsets, int64_t R, int64_t E, int64_t C, int64_t OC) {
    grouped_matmul_backward_v2_tiled(dx, dw, dout, x, w, offsets, R, E, C, OC);
}
