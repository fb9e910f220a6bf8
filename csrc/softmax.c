/* softmax.c — softmax and log-softmax over the last axis of (N, C), forward and backward.
 *
 * Each row is three passes over C values, all vectorized (MG_CLONES picks AVX-512/AVX2):
 *   max m = max_j x_j  ->  s = sum_j e^(x_j - m) (stored as we go)  ->  scale by 1/s.
 * Rows are independent, so OpenMP splits them across threads when there are enough values.
 */
#include "common.h"
#include "microgpt.h"

MG_CLONES static float row_max(const float* x, int64_t C) {
    float m = -INFINITY;
    #pragma omp simd reduction(max:m)
    for (int64_t j = 0; j < C; j++) m = x[j] > m ? x[j] : m;
    return m;
}

/* y_j = e^(x_j - m); returns sum_j y_j */
MG_CLONES static float row_exp_sum(float* y, const float* x, float m, int64_t C) {
    float s = 0.0f;
    #pragma omp simd reduction(+:s)
    for (int64_t j = 0; j < C; j++) { y[j] = mg_expf(x[j] - m); s += y[j]; }
    return s;
}

/* sum_j e^(x_j - m), nothing stored */
MG_CLONES static float row_sum_exp(const float* x, float m, int64_t C) {
    float s = 0.0f;
    #pragma omp simd reduction(+:s)
    for (int64_t j = 0; j < C; j++) s += mg_expf(x[j] - m);
    return s;
}

MG_CLONES static void row_scale(float* y, float a, int64_t C) {
    #pragma omp simd
    for (int64_t j = 0; j < C; j++) y[j] *= a;
}

MG_CLONES static float row_dot(const float* a, const float* b, int64_t C) {
    float s = 0.0f;
    #pragma omp simd reduction(+:s)
    for (int64_t j = 0; j < C; j++) s += a[j] * b[j];
    return s;
}

MG_CLONES static float row_sum(const float* a, int64_t C) {
    float s = 0.0f;
    #pragma omp simd reduction(+:s)
    for (int64_t j = 0; j < C; j++) s += a[j];
    return s;
}

void softmax_forward(float* out, const float* x, int64_t N, int64_t C) {
    #pragma omp parallel for schedule(static) if (N * C >= MG_PAR_MIN)
    for (int64_t i = 0; i < N; i++) {
        const float* row = x + i * C;
        float* y = out + i * C;
        float s = row_exp_sum(y, row, row_max(row, C), C);
        row_scale(y, 1.0f / s, C);
    }
}

/* dx_j = y_j (dout_j - sum_k dout_k y_k) */
MG_CLONES static void softmax_backward_row(float* dx, const float* dy, const float* y, int64_t C) {
    float d = row_dot(dy, y, C);
    #pragma omp simd
    for (int64_t j = 0; j < C; j++) dx[j] = y[j] * (dy[j] - d);
}

void softmax_backward(float* dx, const float* dout, const float* out, int64_t N, int64_t C) {
    #pragma omp parallel for schedule(static) if (N * C >= MG_PAR_MIN)
    for (int64_t i = 0; i < N; i++) softmax_backward_row(dx + i * C, dout + i * C, out + i * C, C);
}

/* out_j = x_j - lse,  lse = m + log sum_k e^(x_k - m) */
MG_CLONES static void log_softmax_row(float* y, const float* x, int64_t C) {
    float m = row_max(x, C);
    float lse = m + logf(row_sum_exp(x, m, C));
    #pragma omp simd
    for (int64_t j = 0; j < C; j++) y[j] = x[j] - lse;
}

void log_softmax_forward(float* out, const float* x, int64_t N, int64_t C) {
    #pragma omp parallel for schedule(static) if (N * C >= MG_PAR_MIN)
    for (int64_t i = 0; i < N; i++) log_softmax_row(out + i * C, x + i * C, C);
}

/* dx_j = dout_j - e^(out_j) sum_k dout_k */
MG_CLONES static void log_softmax_backward_row(float* dx, const float* dy, const float* y, int64_t C) {
    float s = row_sum(dy, C);
    #pragma omp simd
    for (int64_t j = 0; j < C; j++) dx[j] = dy[j] - mg_expf(y[j]) * s;
}

void log_softmax_backward(float* dx, const float* dout, const float* out, int64_t N, int64_t C) {
    #pragma omp parallel for schedule(static) if (N * C >= MG_PAR_MIN)
    for (int64_t i = 0; i < N; i++) log_softmax_backward_row(dx + i * C, dout + i * C, out + i * C, C);
}
