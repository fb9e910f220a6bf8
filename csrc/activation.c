/* activation.c — GELU (tanh approximation, as GPT-2) and SiLU, forward and backward.
 *
 * gelu(x) = 0.5 x (1 + tanh(u)),  u = s (x + 0.044715 x^3),  s = sqrt(2/pi)
 *   d/dx  = 0.5 (1 + t) + 0.5 x (1 - t^2) s (1 + 3 * 0.044715 x^2),  t = tanh(u)
 * silu(x) = x sigmoid(x),  d/dx = sigmoid(x) (1 + x (1 - sigmoid(x)))
 *
 * With e = e^(2u):  0.5 (1 + tanh(u)) = e / (e + 1)  and  1 - tanh^2(u) = 4e / (e + 1)^2, so
 * nothing cancels where t is near +-1; sigmoid(x) = 1 / (1 + e^-x). All go through mg_expf, so
 * the loops vectorize.
 *
 * Far tails and special values, as the reference (backends/reference.py) has them:
 *   - gelu': from |u| = 18.990341 on, tanh(u) is +-1 in float64 (NumPy runs the reference's
 *     tanh in float64: its constant s is a float64), so the reference's gradient is exactly 1
 *     (u > 0) or 0 (u < 0), however large the x^3 that multiplies 1 - t^2 = 0. This kernel
 *     gives the same, plus x - x: 0 for finite x, NaN for x = +-inf (the reference's 0 * inf).
 *     Below that |u| both give the tiny e^(2u) (...) that float32 still holds. (Clamping u to
 *     20 and keeping the x^3 term gave gelu'(-1e5) = -1.4e-3 instead of 0.)
 *   - gelu(-inf) = -inf * 0 = NaN, as the reference: e = e^-inf = 0.
 *   - sigmoid: below x = -88.72283, e^-x overflows float32 (as the reference computes it) and
 *     sigmoid(x) is 0; then silu(-inf) = -inf * 0 and silu'(-inf) = 0 * -inf are NaN as in the
 *     reference (mg_expf saturates at e^88, which gave -inf for both).
 * tests/test_kernel_special_values.py checks them all against the reference.
 */
#include "common.h"
#include "microgpt.h"

#define GELU_S 0.7978845608028654f     /* sqrt(2 / pi) */
#define GELU_A 0.044715f
#define GELU_FAR 18.990341f            /* |u| from which tanh(u) rounds to +-1 in float64 */
#define SIGMOID_ZERO -88.72283f        /* below: e^-x > FLT_MAX, sigmoid(x) = 1 / inf = 0 */

static inline float sigmoid(float x) {
    return x < SIGMOID_ZERO ? 0.0f : 1.0f / (1.0f + mg_expf(-x));
}

MG_CLONES static void gelu_forward_span(float* out, const float* x, int64_t n) {
    #pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        float e = mg_expf(2.0f * GELU_S * (x[i] + GELU_A * x[i] * x[i] * x[i]));
        out[i] = x[i] * (e / (e + 1.0f));
    }
}

MG_CLONES static void gelu_backward_span(float* dx, const float* dout, const float* x, int64_t n) {
    #pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        float u = GELU_S * (x[i] + GELU_A * x[i] * x[i] * x[i]), e = mg_expf(2.0f * u);
        float sech2 = 4.0f * e / ((e + 1.0f) * (e + 1.0f));
        float near = e / (e + 1.0f) + 0.5f * x[i] * sech2 * GELU_S * (1.0f + 3.0f * GELU_A * x[i] * x[i]);
        float far = (u > 0.0f ? 1.0f : 0.0f) + (x[i] - x[i]);
        dx[i] = dout[i] * (fabsf(u) < GELU_FAR ? near : far);
    }
}

MG_CLONES static void silu_forward_span(float* out, const float* x, int64_t n) {
    #pragma omp simd
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * sigmoid(x[i]);
}

MG_CLONES static void silu_backward_span(float* dx, const float* dout, const float* x, int64_t n) {
    #pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        float s = sigmoid(x[i]);
        dx[i] = dout[i] * s * (1.0f + x[i] * (1.0f - s));
    }
}

/* Split n values into fixed chunks across threads; each chunk runs the vectorized span. */
#define CHUNK 8192L
#define SPAN_LOOP(call)                                                          \
    _Pragma("omp parallel for schedule(static) if (n >= MG_PAR_MIN)")           \
    for (int64_t c = 0; c < n; c += CHUNK) { int64_t len = mg_min(CHUNK, n - c); call; }

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
