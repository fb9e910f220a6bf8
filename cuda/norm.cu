/* norm.cu: LayerNorm and RMSNorm over the last axis of (N, C), forward and backward (float32).

   layer_norm:  xhat = (x - mean) rstd,  rstd = 1/sqrt(var + eps);  out = xhat w + b
   rms_norm:    xhat = x rstd,  rstd = 1/sqrt(mean(x^2) + eps);     out = xhat w
   backward, with g = dout w:
     layer_norm  dx = rstd (g - mean(g) - xhat mean(g xhat))
     rms_norm    dx = rstd (g - xhat mean(g xhat))
     dw = sum_rows dout xhat,   db = sum_rows dout
   The row statistics use one warp per row (rows are short: C = 768 for GPT-2). The weight
   gradients are column sums: a (32 x 8) block owns 32 columns of a chunk of rows and adds
   its partial sums into dw/db with atomics (zeroed first), so all SMs take part. One set
   of kernels serves both norms: `mean == NULL` means RMSNorm. */
#include "common.cuh"
#include "microgpt_cuda.h"

#define NORM_ROWS_PER_BLOCK 8     // 8 warps of 32 lanes
#define NORM_CHUNK 256            // rows per block in the weight-gradient kernel

__global__ void norm_forward_kernel(float* out, float* mean_out, float* rstd_out, const float* x, const float* w,
                                    const float* b, int64_t N, int64_t C, float eps) {
    int64_t row = (int64_t)blockIdx.x * NORM_ROWS_PER_BLOCK + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= N) return;
    const float* xr = x + row * C;
    float mean = 0.0f;
    if (mean_out) {
        for (int64_t i = lane; i < C; i += 32) mean += xr[i];
        mean = warp_sum(mean) / (float)C;
    }
    float var = 0.0f;
    for (int64_t i = lane; i < C; i += 32) { float d = xr[i] - mean; var += d * d; }
    float rstd = rsqrtf(warp_sum(var) / (float)C + eps);
    float* yr = out + row * C;
    for (int64_t i = lane; i < C; i += 32) {
        float y = (xr[i] - mean) * rstd * w[i];
        yr[i] = b ? y + b[i] : y;
    }
    if (lane == 0) {
        if (mean_out) mean_out[row] = mean;
        rstd_out[row] = rstd;
    }
}

__global__ void norm_backward_dx_kernel(float* dx, const float* dout, const float* x, const float* w,
                                        const float* mean, const float* rstd, int64_t N, int64_t C) {
    int64_t row = (int64_t)blockIdx.x * NORM_ROWS_PER_BLOCK + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= N) return;
    const float* xr = x + row * C;
    const float* dr = dout + row * C;
    float mu = mean ? mean[row] : 0.0f, rs = rstd[row];
    float g_sum = 0.0f, gx_sum = 0.0f;
    for (int64_t i = lane; i < C; i += 32) {
        float g = dr[i] * w[i], xhat = (xr[i] - mu) * rs;
        g_sum += g;
        gx_sum += g * xhat;
    }
    float g_mean = mean ? warp_sum(g_sum) / (float)C : 0.0f;
    float gx_mean = warp_sum(gx_sum) / (float)C;
    float* out = dx + row * C;
    for (int64_t i = lane; i < C; i += 32) {
        float g = dr[i] * w[i], xhat = (xr[i] - mu) * rs;
        out[i] = rs * (g - g_mean - xhat * gx_mean);
    }
}

__global__ void norm_backward_dw_kernel(float* dw, float* db, const float* dout, const float* x, const float* mean,
                                        const float* rstd, int64_t N, int64_t C) {
    __shared__ float part_w[8][33], part_b[8][33];
    int64_t col = (int64_t)blockIdx.x * 32 + threadIdx.x;
    int64_t row0 = (int64_t)blockIdx.y * NORM_CHUNK, row1 = min(row0 + NORM_CHUNK, N);
    float acc_w = 0.0f, acc_b = 0.0f;
    if (col < C) {
        for (int64_t r = row0 + threadIdx.y; r < row1; r += 8) {
            float d = dout[r * C + col];
            float xhat = (x[r * C + col] - (mean ? mean[r] : 0.0f)) * rstd[r];
            acc_w += d * xhat;
            acc_b += d;
        }
    }
    part_w[threadIdx.y][threadIdx.x] = acc_w;
    part_b[threadIdx.y][threadIdx.x] = acc_b;
    __syncthreads();
    if (threadIdx.y == 0 && col < C) {
        for (int y = 1; y < 8; y++) { acc_w += part_w[y][threadIdx.x]; acc_b += part_b[y][threadIdx.x]; }
        atomicAdd(&dw[col], acc_w);
        if (db) atomicAdd(&db[col], acc_b);
    }
}

static int norm_forward(float* out, float* mean, float* rstd, const float* x, const float* w, const float* b,
                        int64_t N, int64_t C, float eps) {
    if (N <= 0) return 0;
    if (C <= 0) return (int)cudaErrorInvalidValue;
    unsigned int blocks = (unsigned int)((N + NORM_ROWS_PER_BLOCK - 1) / NORM_ROWS_PER_BLOCK);
    norm_forward_kernel<<<blocks, 32 * NORM_ROWS_PER_BLOCK>>>(out, mean, rstd, x, w, b, N, C, eps);
    MG_LAUNCHED();
}

static int norm_backward(float* dx, float* dw, float* db, const float* dout, const float* x, const float* w,
                         const float* mean, const float* rstd, int64_t N, int64_t C) {
    MG_CHECK(cudaMemsetAsync(dw, 0, (size_t)C * sizeof(float), 0));
    if (db) MG_CHECK(cudaMemsetAsync(db, 0, (size_t)C * sizeof(float), 0));
    if (N <= 0) return 0;
    unsigned int blocks = (unsigned int)((N + NORM_ROWS_PER_BLOCK - 1) / NORM_ROWS_PER_BLOCK);
    norm_backward_dx_kernel<<<blocks, 32 * NORM_ROWS_PER_BLOCK>>>(dx, dout, x, w, mean, rstd, N, C);
    MG_CHECK(cudaGetLastError());
    dim3 grid((unsigned int)((C + 31) / 32), (unsigned int)((N + NORM_CHUNK - 1) / NORM_CHUNK));
    norm_backward_dw_kernel<<<grid, dim3(32, 8)>>>(dw, db, dout, x, mean, rstd, N, C);
    MG_LAUNCHED();
}

extern "C" {

int layer_norm_forward(float* out, float* mean, float* rstd, const float* x, const float* w, const float* b,
                       float eps, int64_t N, int64_t C) {
    return norm_forward(out, mean, rstd, x, w, b, N, C, eps);
}

int layer_norm_backward(float* dx, float* dw, float* db, const float* dout, const float* x, const float* w,
                        const float* mean, const float* rstd, int64_t N, int64_t C) {
    return norm_backward(dx, dw, db, dout, x, w, mean, rstd, N, C);
}

int rms_norm_forward(float* out, float* rstd, const float* x, const float* w, float eps, int64_t N, int64_t C) {
    return norm_forward(out, NULL, rstd, x, w, NULL, N, C, eps);
}

int rms_norm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w, const float* rstd,
                      int64_t N, int64_t C) {
    return norm_backward(dx, dw, NULL, dout, x, w, NULL, rstd, N, C);
}

}  // extern "C"
