/* activation.c — GELU (tanh approximation, as GPT-2) and SiLU, forward and backward.
 *
 * gelu(x) = 0.5 x (1 + tanh(u)),  u = s (x + 0.044715 x^3),  s = sqrt(2/pi)
 *   d/dx  = 0.5 (1 + t) + 0.5 x (1 - t^2) s (1 + 3 * 0.044715 x^2),  t = tanh(u)
 * silu(x) = x sigmoid(x),  d/dx = sigmoid(x) (1 + x (1 - sigmoid(x)))
 *
 * With e = e^(2u):  tanh(u) = (e - 1) / (e + 1)  and  1 - tanh^2(u) = 4e / (e + 1)^2 (no
 * cancellation where t is near +-1); sigmoid(x) = 1 / (1 + e^-x). All go through mg_expf, so
 * the loops vectorize; u is clamped to |u| <= 20, where 1 - tanh^2 < 1e-16.
 */
#include "common.h"
#include "microgpt.h"

#define GELU_S 0.7978845608028654f     /* sqrt(2 / pi) */
#define GELU_A 0.044715f

static inline float exp_2u(float u) {
    u = u > 20.0f ? 20.0f : (u < -20.0f ? -20.0f : u);
    return mg_expf(2.0f * u);
}

static inline float sigmoid_fast(float x) {
    return 1.0f / (1.0f + mg_expf(-x));
}

MG_CLONES static void gelu_forward_span(float* y, const float* x, long n) {
    #pragma omp simd
    for (long i = 0; i < n; i++) {
        float e = exp_2u(GELU_S * (x[i] + GELU_A * x[i] * x[i] * x[i]));
        y[i] = 0.5f * x[i] * (1.0f + (e - 1.0f) / (e + 1.0f));
    }
}

MG_CLONES static void gelu_backward_span(float* dx, const float* dy, const float* x, long n) {
    #pragma omp simd
    for (long i = 0; i < n; i++) {
        float e = exp_2u(GELU_S * (x[i] + GELU_A * x[i] * x[i] * x[i]));
        float t = (e - 1.0f) / (e + 1.0f), sech2 = 4.0f * e / ((e + 1.0f) * (e + 1.0f));
        float local = 0.5f * (1.0f + t)
                    + 0.5f * x[i] * sech2 * GELU_S * (1.0f + 3.0f * GELU_A * x[i] * x[i]);
        dx[i] = dy[i] * local;
    }
}

MG_CLONES static void silu_forward_span(float* y, const float* x, long n) {
    #pragma omp simd
    for (long i = 0; i < n; i++) y[i] = x[i] * sigmoid_fast(x[i]);
}

MG_CLONES static void silu_backward_span(float* dx, const float* dy, const float* x, long n) {
    #pragma omp simd
    for (long i = 0; i < n; i++) {
        float s = sigmoid_fast(x[i]);
        dx[i] = dy[i] * s * (1.0f + x[i] * (1.0f - s));
    }
}

/* Split n values into fixed chunks across threads; each chunk runs the vectorized span. */
#define CHUNK 8192L
#define SPAN_LOOP(call)                                                          \
    _Pragma("omp parallel for schedule(static) if (n >= MG_PAR_MIN)")           \
    for (long c = 0; c < n; c += CHUNK) { long len = mg_min(CHUNK, n - c); call; }

void gelu_forward(float* out, const float* x, int64_t n) {
    SPAN_LOOP(gelu_forward_span(out + c, x + c, len))
}

void gelu_backward(float* dx, const float* dout, const float* x, int64_t n) {
    SPAN_LOOP(gelu_backward_span(dx + c, dout + c, x + c, len))
}

void silu_forward(float* out, const float* x, int64_t n) {
    SPAN_LOOP(silu_forward_span(out + c, x + c, len))
}

void silu_backward(float* dx, const float* dout, const float* x, int64_t n) {
    SPAN_LOOP(silu_backward_span(dx + c, dout + c, x + c, len))
}
