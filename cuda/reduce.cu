/* reduce.cu: sums and maxima over axes, and the squared norm of a gradient (float32).

   reduce_axes  out[o, i] = sum_r (or max_r) inp[o, r, i] for inp viewed as (outer, R, inner).
                The binding moves the reduced axes next to each other first (a permute when
                they are not), so this one kernel covers every `sum`/`max` of the contract:
                  inner == 1  one block per output row, lanes stride along r (rows of a matrix);
                  inner  > 1  a (32 x 8) block per 32 outputs: lanes read 32 neighbouring
                              columns (coalesced), the 8 rows of threads split r, then shared
                              memory adds the 8 partial results (columns of a matrix).
   sumsq_accumulate  *out += sum_i x_i^2 (block partial sums, one atomic per block), the
                gradient norm needs one per parameter tensor and a single sqrt at the end. */
#include "common.cuh"
#include "microgpt_cuda.h"

__global__ void reduce_rows_kernel(float* out, const float* inp, int64_t R, int is_max) {
    const float* row = inp + (int64_t)blockIdx.x * R;
    float acc = is_max ? -INFINITY : 0.0f;
    for (int64_t r = threadIdx.x; r < R; r += blockDim.x) acc = is_max ? fmaxf(acc, row[r]) : acc + row[r];
    acc = block_reduce(acc, is_max);
    if (threadIdx.x == 0) out[blockIdx.x] = acc;
}

__global__ void reduce_columns_kernel(float* out, const float* inp, int64_t R, int64_t inner, int is_max) {
    __shared__ float partial[8][33];
    int64_t o = blockIdx.y, i = (int64_t)blockIdx.x * 32 + threadIdx.x;
    float acc = is_max ? -INFINITY : 0.0f;
    if (i < inner) {
        const float* base = inp + o * R * inner + i;
        for (int64_t r = threadIdx.y; r < R; r += 8) {
            float v = base[r * inner];
            acc = is_max ? fmaxf(acc, v) : acc + v;
        }
    }
    partial[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && i < inner) {
        for (int y = 1; y < 8; y++) acc = is_max ? fmaxf(acc, partial[y][threadIdx.x]) : acc + partial[y][threadIdx.x];
        out[o * inner + i] = acc;
    }
}

__global__ void sumsq_kernel(float* out, const float* x, int64_t n) {
    float acc = 0.0f;
    MG_FOR(i, n) acc += x[i] * x[i];
    acc = block_reduce(acc, false);
    if (threadIdx.x == 0) atomicAdd(out, acc);
}

extern "C" {

int reduce_axes(float* out, const float* inp, int64_t outer, int64_t R, int64_t inner, int is_max) {
    if (outer <= 0 || inner <= 0) return 0;
    if (R <= 0) return (int)cudaErrorInvalidValue;   // the binding handles empty reductions
    if (outer > 65535 && inner > 1) return (int)cudaErrorInvalidValue;
    if (inner == 1) {
        if (outer > 2147483647) return (int)cudaErrorInvalidValue;
        reduce_rows_kernel<<<(unsigned int)outer, 256>>>(out, inp, R, is_max);
    } else {
        dim3 grid((unsigned int)((inner + 31) / 32), (unsigned int)outer);
        reduce_columns_kernel<<<grid, dim3(32, 8)>>>(out, inp, R, inner, is_max);
    }
    MG_LAUNCHED();
}

int sumsq_accumulate(float* out, const float* x, int64_t n) {
    if (n <= 0) return 0;
    unsigned int blocks = blocks_for(n, 256);
    if (blocks > 1024) blocks = 1024;
    sumsq_kernel<<<blocks, 256>>>(out, x, n);
    MG_LAUNCHED();
}

}  // extern "C"
