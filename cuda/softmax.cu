/* softmax.cu: softmax and log-softmax over the last axis of (N, C), forward and backward.

   softmax:      y_i = exp(x_i - max x) / sum_j exp(x_j - max x)     (the shift keeps exp finite)
                 dx_i = y_i (dout_i - sum_j dout_j y_j)
   log_softmax:  y_i = x_i - lse(x),  lse = max x + log sum_j exp(x_j - max x)
                 dx_i = dout_i - exp(y_i) sum_j dout_j
   One block of 256 threads per row; each pass strides the row and block_reduce combines. */
#include "common.cuh"
#include "microgpt_cuda.h"

__global__ void softmax_forward_kernel(float* out, const float* x, int64_t C, int log_form) {
    const float* row = x + (int64_t)blockIdx.x * C;
    float* dst = out + (int64_t)blockIdx.x * C;
    float peak = -INFINITY;
    for (int64_t i = threadIdx.x; i < C; i += blockDim.x) peak = fmaxf(peak, row[i]);
    peak = block_reduce(peak, true);
    float total = 0.0f;
    for (int64_t i = threadIdx.x; i < C; i += blockDim.x) total += expf(row[i] - peak);
    total = block_reduce(total, false);
    if (log_form) {
        float lse = peak + logf(total);
        for (int64_t i = threadIdx.x; i < C; i += blockDim.x) dst[i] = row[i] - lse;
    } else {
        float inv = 1.0f / total;
        for (int64_t i = threadIdx.x; i < C; i += blockDim.x) dst[i] = expf(row[i] - peak) * inv;
    }
}

__global__ void softmax_backward_kernel(float* dx, const float* dout, const float* out, int64_t C, int log_form) {
    int64_t base = (int64_t)blockIdx.x * C;
    float dot = 0.0f;   // softmax: sum dout*y;  log_softmax: sum dout
    for (int64_t i = threadIdx.x; i < C; i += blockDim.x) dot += log_form ? dout[base + i] : dout[base + i] * out[base + i];
    dot = block_reduce(dot, false);
    for (int64_t i = threadIdx.x; i < C; i += blockDim.x) {
        float y = out[base + i], g = dout[base + i];
        dx[base + i] = log_form ? g - expf(y) * dot : y * (g - dot);
    }
}

extern "C" {

static int softmax_launch(float* out, const float* x, int64_t N, int64_t C, int log_form) {
    if (N <= 0 || C <= 0) return 0;
    if (N > 2147483647) return (int)cudaErrorInvalidValue;
    softmax_forward_kernel<<<(unsigned int)N, 256>>>(out, x, C, log_form);
    MG_LAUNCHED();
}

static int softmax_backward_launch(float* dx, const float* dout, const float* out, int64_t N, int64_t C, int log_form) {
    if (N <= 0 || C <= 0) return 0;
    if (N > 2147483647) return (int)cudaErrorInvalidValue;
    softmax_backward_kernel<<<(unsigned int)N, 256>>>(dx, dout, out, C, log_form);
    MG_LAUNCHED();
}

int softmax_forward(float* out, const float* x, int64_t N, int64_t C) { return softmax_launch(out, x, N, C, 0); }
int log_softmax_forward(float* out, const float* x, int64_t N, int64_t C) { return softmax_launch(out, x, N, C, 1); }
int softmax_backward(float* dx, const float* dout, const float* out, int64_t N, int64_t C) {
    return softmax_backward_launch(dx, dout, out, N, C, 0);
}
int log_softmax_backward(float* dx, const float* dout, const float* out, int64_t N, int64_t C) {
    return softmax_backward_launch(dx, dout, out, N, C, 1);
}

}  // extern "C"
