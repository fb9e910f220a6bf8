/* norm.c — layer norm and RMS norm over the last axis of (N, C), forward and backward.
 *
 * layer_norm:  mean = sum x / C,  rstd = 1 / sqrt(sum (x - mean)^2 / C + eps),
 *              out = (x - mean) rstd w + b;  mean and rstd are cached for the backward.
 *   backward, with xhat = (x - mean) rstd and g = dout w:
 *              dx = rstd (g - mean(g) - xhat mean(g xhat)),  dw = sum_rows dout xhat,  db = sum_rows dout
 * rms_norm:    rstd = 1 / sqrt(sum x^2 / C + eps),  out = x rstd w
 *   backward:  dx = rstd (g - xhat mean(g xhat)),  dw = sum_rows dout xhat
 *
 * Rows are split across threads (static schedule, so results are reproducible). dw and db
 * sum over rows: each thread sums its own rows into a private slice of a scratch buffer, and
 * the slices are then added in a fixed order, column by column.
 */
#include <stdlib.h>
#include <omp.h>
#include "common.h"
#include "microgpt.h"

MG_CLONES static void layer_norm_row(float* y, float* mean_out, float* rstd_out, const float* x,
                                     const float* w, const float* b, float eps, int64_t C) {
    float s = 0.0f;
    #pragma omp simd reduction(+:s)
    for (int64_t j = 0; j < C; j++) s += x[j];
    float mean = s / (float)C;
    float v = 0.0f;                                   /* two-pass variance: no cancellation */
    #pragma omp simd reduction(+:v)
    for (int64_t j = 0; j < C; j++) { float d = x[j] - mean; v += d * d; }
    float rstd = 1.0f / sqrtf(v / (float)C + eps);
    if (b) {
        #pragma omp simd
        for (int64_t j = 0; j < C; j++) y[j] = (x[j] - mean) * rstd * w[j] + b[j];
    } else {
        #pragma omp simd
        for (int64_t j = 0; j < C; j++) y[j] = (x[j] - mean) * rstd * w[j];
    }
    *mean_out = mean;
    *rstd_out = rstd;
}

void layer_norm_forward(float* out, float* mean, float* rstd, const float* x, const float* w,
                        const float* b, float eps, int64_t N, int64_t C) {
    #pragma omp parallel for schedule(static) if (N * C >= MG_PAR_MIN)
    for (int64_t i = 0; i < N; i++)
        layer_norm_row(out + i * C, mean + i, rstd + i, x + i * C, w, b, eps, C);
}

/* One row of the backward; adds this row's share into dw (and db when given). */
MG_CLONES static void norm_backward_row(float* dx, float* dw, float* db, const float* dy,
                                        const float* x, const float* w, float mean, float rstd,
                                        int centered, int64_t C) {
    float sum_g = 0.0f, sum_gx = 0.0f;
    #pragma omp simd reduction(+:sum_g, sum_gx)
    for (int64_t j = 0; j < C; j++) {
        float g = dy[j] * w[j];
        sum_g += g;
        sum_gx += g * ((x[j] - mean) * rstd);   /* g xhat: (x - mean) g alone can overflow */
    }
    float mean_g = centered ? sum_g / (float)C : 0.0f;   /* rms norm has no mean term */
    float mean_gx = sum_gx / (float)C;
    #pragma omp simd
    for (int64_t j = 0; j < C; j++) {
        float xhat = (x[j] - mean) * rstd;
        dx[j] = rstd * (dy[j] * w[j] - mean_g - xhat * mean_gx);
        dw[j] += dy[j] * xhat;
    }
    if (db) {
        #pragma omp simd
        for (int64_t j = 0; j < C; j++) db[j] += dy[j];
    }
}

/* Shared driver: mean == NULL means RMS norm (not centered); db == NULL skips db. */
static void norm_backward(float* dx, float* dw, float* db, const float* dout, const float* x,
                          const float* w, const float* mean, const float* rstd, int64_t N, int64_t C) {
    int threads = (N * C >= MG_PAR_MIN) ? omp_get_max_threads() : 1;
    int64_t width = 2 * C;                            /* per thread: dw slice, then db slice */
    float* scratch = calloc((size_t)threads * (size_t)width, sizeof(float));
    if (!scratch) threads = 0;                         /* out of memory: serial, straight into dw */
    if (threads == 0) {
        memset(dw, 0, (size_t)C * sizeof(float));
        if (db) memset(db, 0, (size_t)C * sizeof(float));
        for (int64_t i = 0; i < N; i++)
            norm_backward_row(dx + i * C, dw, db, dout + i * C, x + i * C, w,
                              mean ? mean[i] : 0.0f, rstd[i], mean != NULL, C);
        return;
    }
    #pragma omp parallel num_threads(threads)
    {
        float* dw_part = scratch + (int64_t)omp_get_thread_num() * width;
        float* db_part = db ? dw_part + C : NULL;
        #pragma omp for schedule(static)
        for (int64_t i = 0; i < N; i++)
            norm_backward_row(dx + i * C, dw_part, db_part, dout + i * C, x + i * C, w,
                              mean ? mean[i] : 0.0f, rstd[i], mean != NULL, C);
        #pragma omp for schedule(static)
        for (int64_t j = 0; j < C; j++) {
            float w_sum = 0.0f, b_sum = 0.0f;
            for (int t = 0; t < omp_get_num_threads(); t++) {
                w_sum += scratch[t * width + j];
                b_sum += scratch[t * width + C + j];
            }
            dw[j] = w_sum;
            if (db) db[j] = b_sum;
        }
    }
    free(scratch);
}

void layer_norm_backward(float* dx, float* dw, float* db, const float* dout, const float* x,
                         const float* w, const float* mean, const float* rstd, int64_t N, int64_t C) {
    norm_backward(dx, dw, db, dout, x, w, mean, rstd, N, C);
}

MG_CLONES static void rms_norm_row(float* y, float* rstd_out, const float* x, const float* w,
                                   float eps, int64_t C) {
    float s = 0.0f;
    #pragma omp simd reduction(+:s)
    for (int64_t j = 0; j < C; j++) s += x[j] * x[j];
    float rstd = 1.0f / sqrtf(s / (float)C + eps);
    #pragma omp simd
    for (int64_t j = 0; j < C; j++) y[j] = x[j] * rstd * w[j];
    *rstd_out = rstd;
}

void rms_norm_forward(float* out, float* rstd, const float* x, const float* w, float eps,
                      int64_t N, int64_t C) {
    #pragma omp parallel for schedule(static) if (N * C >= MG_PAR_MIN)
    for (int64_t i = 0; i < N; i++) rms_norm_row(out + i * C, rstd + i, x + i * C, w, eps, C);
}

void rms_norm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                       const float* rstd, int64_t N, int64_t C) {
    norm_backward(dx, dw, NULL, dout, x, w, NULL, rstd, N, C);
}
