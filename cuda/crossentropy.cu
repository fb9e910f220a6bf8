/* crossentropy.cu: softmax cross-entropy per row of logits (N, V), forward and backward.

   forward:  lse_n = max + log sum_v exp(logits_nv - max);  loss_n = lse_n - logits_n[target_n],
             0 where target_n == ignore_index. A target outside [0, V) that is not ignored
             gives loss 0 and sets *bad, which the binding turns into an error.
   backward: dlogits_nv = dloss_n (exp(logits_nv - lse_n) - [v == target_n]); 0 rows if ignored.
   One block of 256 threads per row: the rows are long (V = 50257 for GPT-2). */
#include "common.cuh"
#include "microgpt_cuda.h"

__global__ void cross_entropy_forward_kernel(float* losses, float* lse_out, int* bad, const float* logits,
                                             const int64_t* targets, int64_t V, int64_t ignore_index) {
    int64_t n = blockIdx.x;
    const float* row = logits + n * V;
    float peak = -INFINITY;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) peak = fmaxf(peak, row[i]);
    peak = block_reduce(peak, true);
    float total = 0.0f;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) total += expf(row[i] - peak);
    total = block_reduce(total, false);
    if (threadIdx.x == 0) {
        float lse = peak + logf(total);
        int64_t t = targets[n];
        float loss = 0.0f;
        if (t != ignore_index) {
            if (t < 0 || t >= V) *bad = 1;
            else loss = lse - row[t];
        }
        losses[n] = loss;
        lse_out[n] = lse;
    }
}

__global__ void cross_entropy_backward_kernel(float* dlogits, const float* dlosses, const float* logits,
                                              const int64_t* targets, const float* lse, int64_t V,
                                              int64_t ignore_index) {
    int64_t n = blockIdx.x;
    int64_t t = targets[n];
    bool kept = t != ignore_index && t >= 0 && t < V;
    float scale = kept ? dlosses[n] : 0.0f, shift = lse[n];
    const float* row = logits + n * V;
    float* drow = dlogits + n * V;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
        float p = expf(row[i] - shift) - (i == t ? 1.0f : 0.0f);
        drow[i] = kept ? scale * p : 0.0f;
    }
}

extern "C" {

int cross_entropy_forward(float* losses, float* lse, int* bad, const float* logits, const int64_t* targets,
                          int64_t ignore_index, int64_t N, int64_t V) {
    if (N <= 0) return 0;
    if (V <= 0 || N > 2147483647) return (int)cudaErrorInvalidValue;
    cross_entropy_forward_kernel<<<(unsigned int)N, 256>>>(losses, lse, bad, logits, targets, V, ignore_index);
    MG_LAUNCHED();
}

int cross_entropy_backward(float* dlogits, const float* dlosses, const float* logits, const int64_t* targets,
                           const float* lse, int64_t ignore_index, int64_t N, int64_t V) {
    if (N <= 0) return 0;
    if (V <= 0 || N > 2147483647) return (int)cudaErrorInvalidValue;
    cross_entropy_backward_kernel<<<(unsigned int)N, 256>>>(dlogits, dlosses, logits, targets, lse, V, ignore_index);
    MG_LAUNCHED();
}

}  // extern "C"
