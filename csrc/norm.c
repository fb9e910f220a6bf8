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
                                     const float* w, const float* b, float eps, long C) {
    float s = 0.0f;
    #pragma omp simd reduction(+:s)
    for (long j = 0; j < C; j++) s += x[j];
    float mean = s / (float)C;
    float v = 0.0f;                                   /* two-pass variance: no cancellation */
    #pragma omp simd reduction(+:v)
    for (long j = 0; j < C; j++) { float d = x[j] - mean; v += d * d; }
    float rstd = 1.0f / sqrtf(v / (float)C + eps);
    if (b) {
        #pragma omp simd
        for (long j = 0; j < C; j++) y[j] = (x[j] - mean) * rstd * w[j] + b[j];
    } else {
        #pragma omp simd
        for (long j = 0; j < C; j++) y[j] = (x[j] - mean) * rstd * w[j];
    }
    *mean_out = mean;
    *rstd_out = rstd;
}

void layer_norm_forward(float* out, float* mean, float* rstd, const float* inp,
                        const float* weight, const float* bias, float eps, long N, long C) {
    #pragma omp parallel for schedule(static) if (N * C >= MG_PAR_MIN)
    for (long i = 0; i < N; i++)
        layer_norm_row(out + i * C, mean + i, rstd + i, inp + i * C, weight, bias, eps, C);
}

/* One row of the backward; adds this row's share into dw (and db when given). */
MG_CLONES static void norm_backward_row(float* dx, float* dw, float* db, const float* dy,
                                        const float* x, const float* w, float mean, float rstd,
                                        int centered, long C) {
    float sum_g = 0.0f, sum_gx = 0.0f;
    #pragma omp simd reduction(+:sum_g, sum_gx)
    for (long j = 0; j < C; j++) {
        float g = dy[j] * w[j];
        sum_g += g;
        sum_gx += g * (x[j] - mean) * rstd;
    }
    float mean_g = centered ? sum_g / (float)C : 0.0f;   /* rms norm has no mean term */
    float mean_gx = sum_gx / (float)C;
    #pragma omp simd
    for (long j = 0; j < C; j++) {
        float xhat = (x[j] - mean) * rstd;
        dx[j] = rstd * (dy[j] * w[j] - mean_g - xhat * mean_gx);
        dw[j] += dy[j] * xhat;
    }
    if (db) {
        #pragma omp simd
        for (long j = 0; j < C; j++) db[j] += dy[j];
    }
}

/* Shared driver: mean == NULL means RMS norm (not centered); dbias == NULL skips db. */
static void norm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                          const float* inp, const float* weight, const float* mean,
                          const float* rstd, long N, long C) {
    int threads = (N * C >= MG_PAR_MIN) ? omp_get_max_threads() : 1;
    long width = 2 * C;                               /* per thread: dw slice, then db slice */
    float* scratch = calloc((size_t)threads * (size_t)width, sizeof(float));
    if (!scratch) threads = 0;                         /* out of memory: serial, straight into dw */
    if (threads == 0) {
        memset(dweight, 0, (size_t)C * sizeof(float));
        if (dbias) memset(dbias, 0, (size_t)C * sizeof(float));
        for (long i = 0; i < N; i++)
            norm_backward_row(dinp + i * C, dweight, dbias, dout + i * C, inp + i * C, weight,
                              mean ? mean[i] : 0.0f, rstd[i], mean != NULL, C);
        return;
    }
    #pragma omp parallel num_threads(threads)
    {
        float* dw = scratch + (long)omp_get_thread_num() * width;
        float* db = dbias ? dw + C : NULL;
        #pragma omp for schedule(static)
        for (long i = 0; i < N; i++)
            norm_backward_row(dinp + i * C, dw, db, dout + i * C, inp + i * C, weight,
                              mean ? mean[i] : 0.0f, rstd[i], mean != NULL, C);
        #pragma omp for schedule(static)
        for (long j = 0; j < C; j++) {
            float w_sum = 0.0f, b_sum = 0.0f;
            for (int t = 0; t < omp_get_num_threads(); t++) {
                w_sum += scratch[t * width + j];
                b_sum += scratch[t * width + C + j];
            }
            dweight[j] = w_sum;
            if (dbias) dbias[j] = b_sum;
        }
    }
    free(scratch);
}

void layer_norm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                         const float* inp, const float* weight, const float* mean,
                         const float* rstd, long N, long C) {
    norm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
}

MG_CLONES static void rms_norm_row(float* y, float* rstd_out, const float* x, const float* w,
                                   float eps, long C) {
    float s = 0.0f;
    #pragma omp simd reduction(+:s)
    for (long j = 0; j < C; j++) s += x[j] * x[j];
    float rstd = 1.0f / sqrtf(s / (float)C + eps);
    #pragma omp simd
    for (long j = 0; j < C; j++) y[j] = x[j] * rstd * w[j];
    *rstd_out = rstd;
}

void rms_norm_forward(float* out, float* rstd, const float* inp, const float* weight,
                      float eps, long N, long C) {
    #pragma omp parallel for schedule(static) if (N * C >= MG_PAR_MIN)
    for (long i = 0; i < N; i++) rms_norm_row(out + i * C, rstd + i, inp + i * C, weight, eps, C);
}

void rms_norm_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                       const float* weight, const float* rstd, long N, long C) {
    norm_backward(dinp, dweight, NULL, dout, inp, weight, NULL, rstd, N, C);
}
