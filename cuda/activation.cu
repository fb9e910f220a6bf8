/* activation.cu: the pointwise nonlinearities of the contract and their gradients (float32).

   relu:  max(x, 0);                         d = dout * (x > 0)
   gelu:  0.5 x (1 + tanh(s (x + 0.044715 x^3))),  s = sqrt(2/pi)   (GPT-2's approximation)
          d = dout (0.5 (1 + t) + 0.5 x (1 - t^2) s (1 + 3 * 0.044715 x^2)),  t = tanh(...)
   silu:  x sigmoid(x);                      d = dout sigmoid(x) (1 + x (1 - sigmoid(x)))
   One thread per element in grid-stride loops; memory-bound, so no more cleverness. */
#include "common.cuh"
#include "microgpt_cuda.h"

#define GELU_SCALE 0.7978845608028654f   // sqrt(2 / pi)

__global__ void relu_forward_kernel(float* out, const float* x, int64_t n) {
    MG_FOR(i, n) out[i] = fmaxf(x[i], 0.0f);
}

__global__ void relu_backward_kernel(float* dx, const float* dout, const float* x, int64_t n) {
    MG_FOR(i, n) dx[i] = x[i] > 0.0f ? dout[i] : 0.0f;
}

__global__ void gelu_forward_kernel(float* out, const float* x, int64_t n) {
    MG_FOR(i, n) {
        float v = x[i];
        out[i] = 0.5f * v * (1.0f + tanhf(GELU_SCALE * (v + 0.044715f * v * v * v)));
    }
}

__global__ void gelu_backward_kernel(float* dx, const float* dout, const float* x, int64_t n) {
    MG_FOR(i, n) {
        float v = x[i];
        float t = tanhf(GELU_SCALE * (v + 0.044715f * v * v * v));
        float local = 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * GELU_SCALE * (1.0f + 3.0f * 0.044715f * v * v);
        dx[i] = dout[i] * local;
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
