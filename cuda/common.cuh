/* common.cuh: what every .cu file of microgpt's CUDA library shares.

   - MG_CHECK(call): return CUDA's error code from a launcher when a runtime call fails.
   - MG_LAUNCHED(): after a <<<...>>> launch, return the launch error (bad configuration,
     missing kernel image ...) without synchronizing; errors that happen while the kernel
     runs surface at the next synchronizing call and are reported there by the binding.
   - blocks_for(n, threads): grid size for one thread per element, capped so that the
     grid-stride loops below cover any n.
   - warp_sum / warp_max: butterfly reductions over the 32 lanes of a warp.
   - block_sum / block_max: reductions over a whole block (any multiple of 32 threads up
     to 1024) through shared memory; every thread gets the result.
   - MgShape: up to MG_MAX_DIMS sizes and two sets of element strides, passed to kernels by
     value, for the broadcasting and strided-copy kernels.
   Every launcher returns int: 0 (cudaSuccess) or a cudaError_t, turned into a Python
   exception naming the kernel by microgpt/backends/cuda.py. Launchers run on the default
   stream, so kernels are ordered and a host copy sees every earlier kernel's writes. */
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>
#include <math.h>

#define MG_CHECK(call) do { cudaError_t mg_err_ = (call); if (mg_err_ != cudaSuccess) return (int)mg_err_; } while (0)
#define MG_LAUNCHED() return (int)cudaGetLastError()
#define MG_MAX_DIMS 8

static inline unsigned int blocks_for(int64_t n, int threads) {
    int64_t blocks = (n + threads - 1) / threads;
    if (blocks > 65535 * 16) blocks = 65535 * 16;   // grid-stride loops cover the rest
    return (unsigned int)(blocks < 1 ? 1 : blocks);
}

/* Grid-stride loop over n elements. */
#define MG_FOR(i, n) for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
                          i += (int64_t)gridDim.x * blockDim.x)

__device__ __forceinline__ float warp_sum(float x) {
    for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
    return x;
}

__device__ __forceinline__ float warp_max(float x) {
    for (int offset = 16; offset > 0; offset >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
    return x;
}

/* Sum (is_max = false) or max over the block; all threads must call it. */
__device__ __forceinline__ float block_reduce(float x, bool is_max) {
    __shared__ float partial[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    x = is_max ? warp_max(x) : warp_sum(x);
    __syncthreads();                      // partial[] may still be read by a previous call
    if (lane == 0) partial[warp] = x;
    __syncthreads();
    x = lane < warps ? partial[lane] : (is_max ? -INFINITY : 0.0f);
    x = is_max ? warp_max(x) : warp_sum(x);
    return x;
}

typedef struct {
    int ndim;
    int64_t size[MG_MAX_DIMS];
    int64_t stride_a[MG_MAX_DIMS];   // element strides of the first operand (0 = broadcast)
    int64_t stride_b[MG_MAX_DIMS];   // element strides of the second operand
} MgShape;

/* Host side: fill an MgShape from arrays the binding passes. */
static inline int mg_shape(MgShape* s, int ndim, const int64_t* size, const int64_t* sa, const int64_t* sb) {
    if (ndim < 0 || ndim > MG_MAX_DIMS) return (int)cudaErrorInvalidValue;
    s->ndim = ndim;
    for (int d = 0; d < ndim; d++) {
        s->size[d] = size[d];
        s->stride_a[d] = sa ? sa[d] : 0;
        s->stride_b[d] = sb ? sb[d] : 0;
    }
    return 0;
}

/* Offsets into the two operands of the element with C-order linear index i. */
__device__ __forceinline__ void mg_offsets(const MgShape& s, int64_t i, int64_t* oa, int64_t* ob) {
    int64_t a = 0, b = 0;
    for (int d = s.ndim - 1; d >= 0; d--) {
        int64_t idx = i % s.size[d];
        i /= s.size[d];
        a += idx * s.stride_a[d];
        b += idx * s.stride_b[d];
    }
    *oa = a;
    *ob = b;
}
