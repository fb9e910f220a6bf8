/* linear_rows.cu: linear_rows_forward on the GPU, the twin of csrc/matmul.c's streaming path.

     out (N, OC) = x (N, C) @ w^T + b, w (OC, C); w_in_out: w stored (C, OC), out = x @ w + b.
     b may be NULL.

   The contract's promise is batch invariance: row n's result must not depend on N. Here every
   output element has one owner that sums it in an order fixed by C alone:
     (OC, C)      one warp per (row, channel): lane l takes c = l, l + 32, ... (the weight row
                  streams through coalesced loads), then warp_sum's fixed butterfly;
     (C, OC)      one thread per (row, channel), c = 0 .. C-1 in order: consecutive threads
                  read consecutive channels of one weight row, again coalesced.
   A decoding step's few rows read each weight once per row, from L2 after the first: the
   matrix-vector shape, where the weight bytes are the cost, as in quant.cu. */
#include "common.cuh"
#include "microgpt_cuda.h"

__global__ void linear_rows_warp_kernel(float* out, const float* x, const float* w, const float* b,
                                        int64_t N, int64_t C, int64_t OC) {
    int64_t warp = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x & 31;
    if (warp >= N * OC) return;
    int64_t n = warp / OC, o = warp % OC;
    const float* xr = x + n * C;
    const float* wr = w + o * C;
    float s = 0.0f;
    for (int64_t c = lane; c < C; c += 32) s += xr[c] * wr[c];
    s = warp_sum(s);
    if (lane == 0) out[n * OC + o] = s + (b ? b[o] : 0.0f);
}

__global__ void linear_rows_in_out_kernel(float* out, const float* x, const float* w, const float* b,
                                          int64_t N, int64_t C, int64_t OC) {
    MG_FOR(i, N * OC) {
        int64_t n = i / OC, o = i % OC;
        const float* xr = x + n * C;
        float s = 0.0f;
        for (int64_t c = 0; c < C; c++) s += xr[c] * w[c * OC + o];
        out[i] = s + (b ? b[o] : 0.0f);
    }
}

extern "C" {

int linear_rows_forward(float* out, const float* x, const float* w, const float* b, int w_in_out,
                        int64_t N, int64_t C, int64_t OC) {
    if (N * OC == 0) return 0;
    if (w_in_out) {
        linear_rows_in_out_kernel<<<blocks_for(N * OC, 256), 256>>>(out, x, w, b, N, C, OC);
        MG_LAUNCHED();
    }
    const int threads = 256;                              // 8 warps: 8 (row, channel) pairs a block
    int64_t blocks = (N * OC * 32 + threads - 1) / threads;
    linear_rows_warp_kernel<<<(unsigned int)blocks, threads>>>(out, x, w, b, N, C, OC);
    MG_LAUNCHED();
}

}  // extern "C"
