/* activation.cu: the pointwise nonlinearities of the contract and their gradients (float32).

   relu:  max(x, 0);                         d = dout * (x > 0)
   gelu:  0.5 x (1 + tanh(u)),  u = s (x + 0.044715 x^3),  s = sqrt(2/pi)   (GPT-2's approximation)
          d = dout (0.5 (1 + t) + 0.5 x (1 - t^2) s (1 + 3 * 0.044715 x^2)),  t = tanh(u)
   silu:  x sigmoid(x);                      d = dout sigmoid(x) (1 + x (1 - sigmoid(x)))
   One thread per element in grid-stride loops; memory-bound, so no more cleverness.

   Written so that NaN, +-inf and far tails come out as the reference has them (the cases are
   argued in csrc/activation.c and checked by tests/test_kernel_special_values.py):
     relu keeps a NaN (fmaxf(NaN, 0) gave 0), and its gradient multiplies by the 0 or 1 as the
     reference does (0 * inf is NaN);
     gelu uses 0.5 (1 + tanh u) = 1 / (1 + e^-2u) = sig and 1 - tanh^2 u = 4 e^-2u sig^2, which
     cancel nowhere (tanhf is +-1 from |u| = 9, where the reference still has e^2u-sized
     values), and from |u| = 18.990341, where float64's tanh is +-1, the gradient is exactly 1 or
     0, plus x - x (NaN at x = +-inf): the x^3 term is not evaluated there (at x = 1e30 its x^2
     overflows and 0 * inf gave NaN for a gradient of 1). */
#include "common.cuh"
#include "microgpt_cuda.h"

#define GELU_SCALE 0.7978845608028654f   // sqrt(2 / pi)
#define GELU_A 0.044715f
#define GELU_FAR 18.990341f              // |u| from which tanh(u) rounds to +-1 in float64

__global__ void relu_forward_kernel(float* out, const float* x, int64_t n) {
    MG_FOR(i, n) out[i] = x[i] < 0.0f ? 0.0f : x[i];
}

__global__ void relu_backward_kernel(float* dx, const float* dout, const float* x, int64_t n) {
    MG_FOR(i, n) dx[i] = dout[i] * (x[i] > 0.0f ? 1.0f : 0.0f);
}

__global__ void gelu_forward_kernel(float* out, const float* x, int64_t n) {
    MG_FOR(i, n) {
        float v = x[i];
        out[i] = v / (1.0f + expf(-2.0f * GELU_SCALE * (v + GELU_A * v * v * v)));
    }
}

__global__ void gelu_backward_kernel(float* dx, const float* dout, const float* x, int64_t n) {
    MG_FOR(i, n) {
        float v = x[i], u = GELU_SCALE * (v + GELU_A * v * v * v);
        float en = expf(-2.0f * u), sig = 1.0f / (1.0f + en);
        float near = sig + 2.0f * v * en * sig * sig * GELU_SCALE * (1.0f + 3.0f * GELU_A * v * v);
        float far = (u > 0.0f ? 1.0f : 0.0f) + (v - v);
        dx[i] = dout[i] * (fabsf(u) < GELU_FAR ? near : far);
    }
}

__global__ void silu_forward_kernel(float* out, const float* x, int64_t n) {
    MG_FOR(i, n) {
        float v = x[i];
        out[i] = v / (1.0f + expf(-v));
    }
}

__global__ void silu_backward_kernel(float* dx, const float* dout, const float* x, int64_t n) {
    MG_FOR(i, n) {
        float v = x[i], s = 1.0f / (1.0f + expf(-v));
        dx[i] = dout[i] * s * (1.0f + v * (1.0f - s));
    }
}

extern "C" {

#define MG_POINTWISE(name, args, call) \
    int name args { if (n <= 0) return 0; name##_kernel<<<blocks_for(n, 256), 256>>> call; MG_LAUNCHED(); }

MG_POINTWISE(relu_forward, (float* out, const float* x, int64_t n), (out, x, n))
MG_POINTWISE(relu_backward, (float* dx, const float* dout, const float* x, int64_t n), (dx, dout, x, n))
MG_POINTWISE(gelu_forward, (float* out, const float* x, int64_t n), (out, x, n))
MG_POINTWISE(gelu_backward, (float* dx, const float* dout, const float* x, int64_t n), (dx, dout, x, n))
MG_POINTWISE(silu_forward, (float* out, const float* x, int64_t n), (out, x, n))
MG_POINTWISE(silu_backward, (float* dx, const float* dout, const float* x, int64_t n), (dx, dout, x, n))

}  // extern "C"
