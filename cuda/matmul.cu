/* matmul.cu: float32 matrix products, as a ladder of rungs (each tested, each benchmarked
   against cuBLAS by benchmarks/gpu_check.py). Row-major; every rung has the signature of
   csrc/matmul.c's ladder: out (M, N) = op(a) @ op(b) + bias, op(a) = a (M, K) or, with
   trans_a, a^T of a stored (K, M); op(b) likewise; bias (N) added to every row, or NULL.
   matmul_forward is the production rung (v6); matmul_forward_batched_* run a batch of
   products on gridDim.z (v2 and v6 batch; v6 is production).

   v1_naive        one thread per output; threadIdx.x walks rows, so a warp reads 32
                   different rows of A and writes a column of C: uncoalesced.
   v2_coalesced    threadIdx.x walks columns: a warp reads one row of A (broadcast) and 32
                   neighbouring elements of B and C. Same arithmetic, far fewer transactions.
                   With batching it is matmul_forward_batched_v2_coalesced, the simple fallback.
   v3_smem         32 x 32 tiles of A and B staged in shared memory; each element loaded
                   from DRAM once per tile instead of once per output.
   v4_regblock     64 x 64 block tile, BK = 8; each thread computes a 4 x 4 patch from
                   registers, so every shared-memory load feeds 4 FMAs instead of 1.
   v5_vectorized   128 x 128 block tile, 8 x 8 per thread; 16-byte (float4) loads from DRAM
                   and shared memory; A is stored transposed (k-major) so both operands are
                   read as float4 along the output patch.
   v6_warptile     the production kernel (below, gemm_tile): 8 warps each own a
                   64 x 32 warp tile, lanes own 2 x 2 sub-patches of 4 x 4 arranged so that a
                   warp's shared-memory reads are conflict-free broadcasts; BK = 16 with two
                   shared-memory buffers (the next tile's loads are in flight during the
                   current tile's FMAs; one barrier per tile); templates for transposed
                   operands (A^T, B^T) so linear layers need no transposes; bias epilogue;
                   batches on gridDim.z, or split-K chunks when one product has too
                   few tiles to fill the GPU (weight gradients), summed by a second kernel.
   v7_bf16_tc      tensor cores: operands rounded to bf16 as they are staged in shared
                   memory, products accumulated in float32 by mma.sync m16n8k16 (sm_80+);
                   128 x 128 x 32 block tile, 8 warps of 64 x 32, 4 x 4 mma tiles each.
                   A different precision (bf16 inputs: ~3e-3 relative error), shown beside
                   the float32 rungs to show what the matrix units are worth; not used by
                   the float32 training path.
   v3-v5 and v7 each teach one tiling idea on the plain layout, so they take no transposed
   operand: asked for one they return cudaErrorNotSupported instead of computing something
   else (the bindings use v6, or v2, for transposed products). Every rung handles any M, N, K
   below 2^31 (edges are loaded guarded, zero-filled); float4 paths are taken only where 16
   bytes are in bounds and aligned. */
#include "common.cuh"
#include "microgpt_cuda.h"
#include <cuda_bf16.h>

// ---- v1 and v2 ------------------------------------------------------------------------------

// op(A)[m][k] = TA ? A[k*M + m] : A[m*K + k];  op(B)[k][n] = TB ? B[n*K + k] : B[k*N + n]
__global__ void matmul_v1_kernel(float* c, const float* a, const float* b, const float* bias, int M, int N, int K,
                                 int ta, int tb) {
    int m = blockIdx.x * blockDim.x + threadIdx.x, n = blockIdx.y * blockDim.y + threadIdx.y;
    if (m >= M || n >= N) return;
    float acc = 0.0f;
    for (int k = 0; k < K; k++) {
        float x = ta ? a[(int64_t)k * M + m] : a[(int64_t)m * K + k];
        float y = tb ? b[(int64_t)n * K + k] : b[(int64_t)k * N + n];
        acc += x * y;
    }
    c[(int64_t)m * N + n] = bias ? acc + bias[n] : acc;
}

__global__ void matmul_v2_kernel(float* c, const float* a, const float* b, const float* bias, int M, int N, int K,
                                  int ta, int tb, int64_t sa, int64_t sb, int64_t sc) {
    int n = blockIdx.x * blockDim.x + threadIdx.x, m = blockIdx.y * blockDim.y + threadIdx.y;
    a += blockIdx.z * sa; b += blockIdx.z * sb; c += blockIdx.z * sc;
    if (m >= M || n >= N) return;
    float acc = 0.0f;
    for (int k = 0; k < K; k++) {
        float x = ta ? a[(int64_t)k * M + m] : a[(int64_t)m * K + k];
        float y = tb ? b[(int64_t)n * K + k] : b[(int64_t)k * N + n];
        acc += x * y;
    }
    c[(int64_t)m * N + n] = bias ? acc + bias[n] : acc;
}

// ---- v3: shared-memory tiles --------------------------------------------------------------

#define V3_TILE 32
__global__ void matmul_v3_kernel(float* c, const float* a, const float* b, const float* bias, int M, int N, int K) {
    __shared__ float as[V3_TILE][V3_TILE], bs[V3_TILE][V3_TILE + 1];
    int tx = threadIdx.x, ty = threadIdx.y;
    int m = blockIdx.y * V3_TILE + ty, n = blockIdx.x * V3_TILE + tx;
    float acc = 0.0f;
    for (int k0 = 0; k0 < K; k0 += V3_TILE) {
        as[ty][tx] = (m < M && k0 + tx < K) ? a[(int64_t)m * K + k0 + tx] : 0.0f;
        bs[ty][tx] = (k0 + ty < K && n < N) ? b[(int64_t)(k0 + ty) * N + n] : 0.0f;
        __syncthreads();
        for (int k = 0; k < V3_TILE; k++) acc += as[ty][k] * bs[k][tx];
        __syncthreads();
    }
    if (m < M && n < N) c[(int64_t)m * N + n] = bias ? acc + bias[n] : acc;
}

// ---- v4: 2-D register blocking --------------------------------------------------------------

#define V4_BM 64
#define V4_BN 64
#define V4_BK 8
__global__ void matmul_v4_kernel(float* c, const float* a, const float* b, const float* bias, int M, int N, int K) {
    __shared__ float as[V4_BK][V4_BM], bs[V4_BK][V4_BN];   // as is k-major (A transposed)
    int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;     // 256 threads, 16 x 16, 4 x 4 each
    int m0 = blockIdx.y * V4_BM, n0 = blockIdx.x * V4_BN;
    float acc[4][4] = {};
    for (int k0 = 0; k0 < K; k0 += V4_BK) {
        for (int f = tid; f < V4_BM * V4_BK; f += 256) {     // 512 elements of each tile
            int row = f / V4_BK, k = f % V4_BK;
            as[k][row] = (m0 + row < M && k0 + k < K) ? a[(int64_t)(m0 + row) * K + k0 + k] : 0.0f;
            int kb = f / V4_BN, col = f % V4_BN;
            bs[kb][col] = (k0 + kb < K && n0 + col < N) ? b[(int64_t)(k0 + kb) * N + n0 + col] : 0.0f;
        }
        __syncthreads();
        for (int k = 0; k < V4_BK; k++) {
            float x[4], y[4];
            for (int i = 0; i < 4; i++) { x[i] = as[k][ty * 4 + i]; y[i] = bs[k][tx * 4 + i]; }
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) acc[i][j] += x[i] * y[j];
        }
        __syncthreads();
    }
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) {
            int m = m0 + ty * 4 + i, n = n0 + tx * 4 + j;
            if (m < M && n < N) c[(int64_t)m * N + n] = bias ? acc[i][j] + bias[n] : acc[i][j];
        }
}

// ---- shared tile loaders for v5 and v6 --------------------------------------------------------
// Load 4 consecutive elements p[0..3] of a row that has `valid` (<= 4) elements left in
// bounds; a float4 load when all 4 are in bounds and the address is 16-byte aligned.
__device__ __forceinline__ float4 load4(const float* p, int valid, bool vec) {
    if (valid >= 4 && vec) return *reinterpret_cast<const float4*>(p);
    float4 r = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (valid > 0) r.x = p[0];
    if (valid > 1) r.y = p[1];
    if (valid > 2) r.z = p[2];
    if (valid > 3) r.w = p[3];
    return r;
}

// ---- v5: vectorized 16-byte loads --------------------------------------------------------------

#define V5_BM 128
#define V5_BN 128
#define V5_BK 8
__global__ void __launch_bounds__(256) matmul_v5_kernel(float* c, const float* a, const float* b, const float* bias,
                                                        int M, int N, int K, int vec) {
    __shared__ __align__(16) float as[V5_BK][V5_BM + 4], bs[V5_BK][V5_BN];
    int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;     // 8 x 8 outputs per thread
    int m0 = blockIdx.y * V5_BM, n0 = blockIdx.x * V5_BN;
    float acc[8][8] = {};
    for (int k0 = 0; k0 < K; k0 += V5_BK) {
        {   // A tile 128 x 8: one float4 along k per thread, stored transposed
            int row = tid / 2, k = (tid % 2) * 4;
            bool in = m0 + row < M;
            float4 v = load4(a + (int64_t)(m0 + row) * K + k0 + k, in ? K - k0 - k : 0, vec);
            as[k][row] = v.x; as[k + 1][row] = v.y; as[k + 2][row] = v.z; as[k + 3][row] = v.w;
            // B tile 8 x 128: one float4 along n per thread
            int kb = tid / 32, col = (tid % 32) * 4;
            float4 w = load4(b + (int64_t)(k0 + kb) * N + n0 + col, k0 + kb < K ? N - n0 - col : 0, vec);
            *reinterpret_cast<float4*>(&bs[kb][col]) = w;
        }
        __syncthreads();
        for (int k = 0; k < V5_BK; k++) {
            float x[8], y[8];
            *reinterpret_cast<float4*>(x) = *reinterpret_cast<const float4*>(&as[k][ty * 8]);
            *reinterpret_cast<float4*>(x + 4) = *reinterpret_cast<const float4*>(&as[k][ty * 8 + 4]);
            *reinterpret_cast<float4*>(y) = *reinterpret_cast<const float4*>(&bs[k][tx * 8]);
            *reinterpret_cast<float4*>(y + 4) = *reinterpret_cast<const float4*>(&bs[k][tx * 8 + 4]);
            for (int i = 0; i < 8; i++)
                for (int j = 0; j < 8; j++) acc[i][j] += x[i] * y[j];
        }
        __syncthreads();
    }
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 8; j++) {
            int m = m0 + ty * 8 + i, n = n0 + tx * 8 + j;
            if (m < M && n < N) c[(int64_t)m * N + n] = bias ? acc[i][j] + bias[n] : acc[i][j];
        }
}

// ---- v6: warp tiling, double buffering, transposes (the production rung) ----------------------

#define G_BM 128
#define G_BN 128
#define G_BK 16
#define G_PAD 4

template <bool TA, bool TB>
__global__ void __launch_bounds__(256, 2) gemm_tile_kernel(float* c, const float* a, const float* b, const float* bias,
                                                        int M, int N, int K, int64_t sa, int64_t sb, int64_t sc, int vec,
                                                        int kc) {
    __shared__ __align__(16) float as[2][G_BK][G_BM + G_PAD];   // op(A) tile, k-major
    __shared__ __align__(16) float bs[2][G_BK][G_BN + G_PAD];   // op(B) tile, k-major
    // gridDim.z walks the batch, or (kc > 0, split-K) the K chunks [z kc, (z + 1) kc), each
    // writing its partial product to its own (M, N) slice of c (a workspace summed later).
    int k_lo = 0, k_hi = K;
    if (kc > 0) {
        k_lo = blockIdx.z * kc;
        k_hi = min(K, k_lo + kc);
        c += (int64_t)blockIdx.z * M * N;
    } else {
        a += blockIdx.z * sa; b += blockIdx.z * sb; c += blockIdx.z * sc;
    }
    int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    int wm0 = (warp / 4) * 64, wn0 = (warp % 4) * 32;        // 2 x 4 warps of 64 x 32
    int lm = lane / 4, ln = lane % 4;                         // 8 x 4 lanes, 4 x 4 each, 2 x 2 times
    int m0 = blockIdx.y * G_BM, n0 = blockIdx.x * G_BN;
    float4 ra[2], rb[2];                                      // the next tile, in flight

    auto load_tiles = [&](int k0) {
        for (int h = 0; h < 2; h++) {
            int f = tid + h * 256;                            // 512 float4 per tile
            if (!TA) {   // A (M, K): 4 along k
                int row = f / 4, k = (f % 4) * 4;
                ra[h] = load4(a + (int64_t)(m0 + row) * K + k0 + k, m0 + row < M ? k_hi - k0 - k : 0, vec & 1);
            } else {     // A stored (K, M): 4 along m
                int kr = f / 32, m = (f % 32) * 4;
                ra[h] = load4(a + (int64_t)(k0 + kr) * M + m0 + m, k0 + kr < k_hi ? M - m0 - m : 0, vec & 1);
            }
            if (!TB) {   // B (K, N): 4 along n
                int kr = f / 32, n = (f % 32) * 4;
                rb[h] = load4(b + (int64_t)(k0 + kr) * N + n0 + n, k0 + kr < k_hi ? N - n0 - n : 0, vec & 2);
            } else {     // B stored (N, K): 4 along k
                int row = f / 4, k = (f % 4) * 4;
                rb[h] = load4(b + (int64_t)(n0 + row) * K + k0 + k, n0 + row < N ? k_hi - k0 - k : 0, vec & 2);
            }
        }
    };
    auto store_tiles = [&](int buf) {
        for (int h = 0; h < 2; h++) {
            int f = tid + h * 256;
            if (!TA) {
                int row = f / 4, k = (f % 4) * 4;
                as[buf][k][row] = ra[h].x; as[buf][k + 1][row] = ra[h].y;
                as[buf][k + 2][row] = ra[h].z; as[buf][k + 3][row] = ra[h].w;
            } else {
                *reinterpret_cast<float4*>(&as[buf][f / 32][(f % 32) * 4]) = ra[h];
            }
            if (!TB) {
                *reinterpret_cast<float4*>(&bs[buf][f / 32][(f % 32) * 4]) = rb[h];
            } else {
                int row = f / 4, k = (f % 4) * 4;
                bs[buf][k][row] = rb[h].x; bs[buf][k + 1][row] = rb[h].y;
                bs[buf][k + 2][row] = rb[h].z; bs[buf][k + 3][row] = rb[h].w;
            }
        }
    };

    float acc[8][8] = {};
    int tiles = (k_hi - k_lo + G_BK - 1) / G_BK;
    if (tiles > 0) { load_tiles(k_lo); store_tiles(0); }
    __syncthreads();
    for (int t = 0; t < tiles; t++) {
        int buf = t % 2;
        if (t + 1 < tiles) load_tiles(k_lo + (t + 1) * G_BK);
#pragma unroll
        for (int k = 0; k < G_BK; k++) {
            float x[8], y[8];
            *reinterpret_cast<float4*>(x) = *reinterpret_cast<const float4*>(&as[buf][k][wm0 + lm * 4]);
            *reinterpret_cast<float4*>(x + 4) = *reinterpret_cast<const float4*>(&as[buf][k][wm0 + 32 + lm * 4]);
            *reinterpret_cast<float4*>(y) = *reinterpret_cast<const float4*>(&bs[buf][k][wn0 + ln * 4]);
            *reinterpret_cast<float4*>(y + 4) = *reinterpret_cast<const float4*>(&bs[buf][k][wn0 + 16 + ln * 4]);
#pragma unroll
            for (int i = 0; i < 8; i++)
#pragma unroll
                for (int j = 0; j < 8; j++) acc[i][j] += x[i] * y[j];
        }
        if (t + 1 < tiles) store_tiles(1 - buf);
        __syncthreads();
    }
    // acc[i][j]: row wm0 + (i / 4) * 32 + lm * 4 + i % 4, column wn0 + (j / 4) * 16 + ln * 4 + j % 4
#pragma unroll
    for (int i = 0; i < 8; i++) {
        int m = m0 + wm0 + (i / 4) * 32 + lm * 4 + i % 4;
        if (m >= M) continue;
#pragma unroll
        for (int jh = 0; jh < 2; jh++) {
            int n = n0 + wn0 + jh * 16 + ln * 4;
            float4 v = make_float4(acc[i][jh * 4], acc[i][jh * 4 + 1], acc[i][jh * 4 + 2], acc[i][jh * 4 + 3]);
            if (bias) {
                if (n < N) v.x += bias[n];
                if (n + 1 < N) v.y += bias[n + 1];
                if (n + 2 < N) v.z += bias[n + 2];
                if (n + 3 < N) v.w += bias[n + 3];
            }
            float* dst = c + (int64_t)m * N + n;
            if ((vec & 4) && n + 3 < N) {
                *reinterpret_cast<float4*>(dst) = v;
            } else {
                if (n < N) dst[0] = v.x;
                if (n + 1 < N) dst[1] = v.y;
                if (n + 2 < N) dst[2] = v.z;
                if (n + 3 < N) dst[3] = v.w;
            }
        }
    }
}

// ---- v7: bf16 tensor cores (mma.sync) ----------------------------------------------------------

#define T_BM 128
#define T_BN 128
#define T_BK 32
#define T_LD (T_BK + 8)          // bf16 row stride of the shared tiles: conflict-free fragment loads

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

__global__ void __launch_bounds__(256) matmul_v7_kernel(float* c, const float* a, const float* b, const float* bias,
                                                        int M, int N, int K, int vec) {
    __shared__ __align__(16) __nv_bfloat16 as[T_BM][T_LD];   // A tile, rows m, k contiguous
    __shared__ __align__(16) __nv_bfloat16 bs[T_BN][T_LD];   // B tile transposed: rows n, k contiguous
    int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    int wm0 = (warp / 4) * 64, wn0 = (warp % 4) * 32;
    int g = lane / 4, t = lane % 4;                           // mma fragment coordinates
    int m0 = blockIdx.y * T_BM, n0 = blockIdx.x * T_BN;
    float acc[4][4][4] = {};                                  // [m tile][n tile][fragment]
    for (int k0 = 0; k0 < K; k0 += T_BK) {
        for (int h = 0; h < 4; h++) {
            int f = tid + h * 256;                            // 1024 float4 per tile
            int row = f / 8, k = (f % 8) * 4;                 // A: 128 rows x 32 k
            float4 v = load4(a + (int64_t)(m0 + row) * K + k0 + k, m0 + row < M ? K - k0 - k : 0, vec);
            *reinterpret_cast<uint2*>(&as[row][k]) = make_uint2(pack_bf16(v.x, v.y), pack_bf16(v.z, v.w));
            int kr = f / 32, n = (f % 32) * 4;                // B: 32 k x 128 n, stored transposed
            float4 w = load4(b + (int64_t)(k0 + kr) * N + n0 + n, k0 + kr < K ? N - n0 - n : 0, vec);
            bs[n][kr] = __float2bfloat16_rn(w.x);
            bs[n + 1][kr] = __float2bfloat16_rn(w.y);
            bs[n + 2][kr] = __float2bfloat16_rn(w.z);
            bs[n + 3][kr] = __float2bfloat16_rn(w.w);
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < T_BK; kk += 16) {
            uint32_t fa[4][4], fb[4][2];
#pragma unroll
            for (int mi = 0; mi < 4; mi++) {                  // A fragment: rows g, g+8; k pairs 2t, 2t+8
                int r = wm0 + mi * 16 + g;
                fa[mi][0] = *reinterpret_cast<const uint32_t*>(&as[r][kk + 2 * t]);
                fa[mi][1] = *reinterpret_cast<const uint32_t*>(&as[r + 8][kk + 2 * t]);
                fa[mi][2] = *reinterpret_cast<const uint32_t*>(&as[r][kk + 2 * t + 8]);
                fa[mi][3] = *reinterpret_cast<const uint32_t*>(&as[r + 8][kk + 2 * t + 8]);
            }
#pragma unroll
            for (int ni = 0; ni < 4; ni++) {                  // B fragment: column g; k pairs 2t, 2t+8
                int col = wn0 + ni * 8 + g;
                fb[ni][0] = *reinterpret_cast<const uint32_t*>(&bs[col][kk + 2 * t]);
                fb[ni][1] = *reinterpret_cast<const uint32_t*>(&bs[col][kk + 2 * t + 8]);
            }
#pragma unroll
            for (int mi = 0; mi < 4; mi++)
#pragma unroll
                for (int ni = 0; ni < 4; ni++)
                    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                                 : "+f"(acc[mi][ni][0]), "+f"(acc[mi][ni][1]), "+f"(acc[mi][ni][2]), "+f"(acc[mi][ni][3])
                                 : "r"(fa[mi][0]), "r"(fa[mi][1]), "r"(fa[mi][2]), "r"(fa[mi][3]),
                                   "r"(fb[ni][0]), "r"(fb[ni][1]));
        }
        __syncthreads();
    }
    // C fragment: (row g, cols 2t, 2t+1) and (row g + 8, same cols)
    for (int mi = 0; mi < 4; mi++)
        for (int ni = 0; ni < 4; ni++)
            for (int e = 0; e < 4; e++) {
                int m = m0 + wm0 + mi * 16 + g + (e / 2) * 8, n = n0 + wn0 + ni * 8 + 2 * t + e % 2;
                if (m < M && n < N) c[(int64_t)m * N + n] = bias ? acc[mi][ni][e] + bias[n] : acc[mi][ni][e];
            }
}

// c[i] = sum_s ws[s][i] (+ bias[i % N]): the second half of split-K.
__global__ void split_k_sum_kernel(float* c, const float* ws, const float* bias, int64_t MN, int N, int splits) {
    MG_FOR(i, MN) {
        float acc = bias ? bias[i % N] : 0.0f;
        for (int s = 0; s < splits; s++) acc += ws[s * MN + i];
        c[i] = acc;
    }
}

static bool aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }

/* Split-K: when one product has too few output tiles to fill the GPU (weight gradients:
   M, N ~ 768, K = B*T = 8192), K is cut into chunks computed by separate blocks into a
   workspace, then summed. The workspace is kept and grown as needed (growing synchronizes). */
static float* g_workspace = NULL;
static size_t g_workspace_bytes = 0;
static int g_sms = 0;

static int split_count(int M, int N, int K, int* kc) {
    if (!g_sms) {
        int device = 0;
        MG_CHECK(cudaGetDevice(&device));
        MG_CHECK(cudaDeviceGetAttribute(&g_sms, cudaDevAttrMultiProcessorCount, device));
    }
    int64_t tiles = (int64_t)((M + G_BM - 1) / G_BM) * ((N + G_BN - 1) / G_BN);
    int splits = 1;
    if (tiles < 2 * g_sms && K >= 1024) {
        splits = (int)((2 * g_sms + tiles - 1) / tiles);
        if (splits > K / 256) splits = K / 256;
        if (splits > 16) splits = 16;
    }
    *kc = 0;
    if (splits <= 1) return 1;
    int chunk = ((K + splits - 1) / splits + G_BK - 1) / G_BK * G_BK;   // a multiple of BK: aligned chunks
    *kc = chunk;
    return (K + chunk - 1) / chunk;
}

/* The v6 product, c[z] = op(a[z]) @ op(b[z]) + bias for z < batch, sizes already checked. */
static int warptile(float* c, const float* a, const float* b, const float* bias, int M, int N, int K,
                    int trans_a, int trans_b, int batch, int64_t sa, int64_t sb, int64_t sc) {
    if (batch > 65535 || (M + G_BM - 1) / G_BM > 65535) return (int)cudaErrorInvalidValue;
    // vec bits: 1 = A, 2 = B, 4 = C may use 16-byte accesses (leading dims, batch strides, bases)
    int lda = trans_a ? M : K, ldb = trans_b ? K : N;
    int vec = (lda % 4 == 0 && sa % 4 == 0 && aligned16(a) ? 1 : 0) | (ldb % 4 == 0 && sb % 4 == 0 && aligned16(b) ? 2 : 0) |
              (N % 4 == 0 && sc % 4 == 0 && aligned16(c) ? 4 : 0);
    int kc = 0, splits = 1;
    float* dst = c;
    const float* tile_bias = bias;
    if (batch == 1) {
        splits = split_count(M, N, K, &kc);
        if (splits > 1) {
            size_t need = sizeof(float) * (size_t)splits * M * N;
            if (need > g_workspace_bytes) {
                if (g_workspace) MG_CHECK(cudaFree(g_workspace));
                g_workspace = NULL;
                g_workspace_bytes = 0;
                MG_CHECK(cudaMalloc((void**)&g_workspace, need));
                g_workspace_bytes = need;
            }
            dst = g_workspace;
            tile_bias = NULL;
            vec = (vec & 3) | (N % 4 == 0 ? 4 : 0);
        }
    }
    dim3 grid((N + G_BN - 1) / G_BN, (M + G_BM - 1) / G_BM, splits > 1 ? splits : batch);
    if (!trans_a && !trans_b) gemm_tile_kernel<false, false><<<grid, 256>>>(dst, a, b, tile_bias, M, N, K, sa, sb, sc, vec, kc);
    else if (!trans_a && trans_b) gemm_tile_kernel<false, true><<<grid, 256>>>(dst, a, b, tile_bias, M, N, K, sa, sb, sc, vec, kc);
    else if (trans_a && !trans_b) gemm_tile_kernel<true, false><<<grid, 256>>>(dst, a, b, tile_bias, M, N, K, sa, sb, sc, vec, kc);
    else gemm_tile_kernel<true, true><<<grid, 256>>>(dst, a, b, tile_bias, M, N, K, sa, sb, sc, vec, kc);
    MG_CHECK(cudaGetLastError());
    if (splits > 1) {
        int64_t mn = (int64_t)M * N;
        split_k_sum_kernel<<<blocks_for(mn, 256), 256>>>(c, g_workspace, bias, mn, N, splits);
    }
    MG_LAUNCHED();
}

// The ABI's sizes are int64_t; the kernels index with int, so a launcher refuses sizes of 2^31 and more.
static bool fits_int(int64_t M, int64_t N, int64_t K) { return M <= INT32_MAX && N <= INT32_MAX && K <= INT32_MAX; }

extern "C" {

int matmul_forward_v1_naive(float* out, const float* a, const float* b, const float* bias,
                            int64_t M, int64_t N, int64_t K, int trans_a, int trans_b) {
    if (M <= 0 || N <= 0) return 0;
    if (!fits_int(M, N, K)) return (int)cudaErrorInvalidValue;
    dim3 block(32, 8), grid((unsigned int)((M + 31) / 32), (unsigned int)((N + 7) / 8));
    matmul_v1_kernel<<<grid, block>>>(out, a, b, bias, (int)M, (int)N, (int)K, trans_a, trans_b);
    MG_LAUNCHED();
}

int matmul_forward_batched_v2_coalesced(float* out, const float* a, const float* b, const float* bias,
                                        int64_t batch, int64_t stride_out, int64_t stride_a, int64_t stride_b,
                                        int64_t M, int64_t N, int64_t K, int trans_a, int trans_b) {
    if (M <= 0 || N <= 0 || batch <= 0) return 0;
    if (batch > 65535 || !fits_int(M, N, K)) return (int)cudaErrorInvalidValue;
    dim3 block(32, 8), grid((unsigned int)((N + 31) / 32), (unsigned int)((M + 7) / 8), (unsigned int)batch);
    matmul_v2_kernel<<<grid, block>>>(out, a, b, bias, (int)M, (int)N, (int)K, trans_a, trans_b, stride_a, stride_b,
                                       stride_out);
    MG_LAUNCHED();
}

int matmul_forward_v2_coalesced(float* out, const float* a, const float* b, const float* bias,
                                int64_t M, int64_t N, int64_t K, int trans_a, int trans_b) {
    return matmul_forward_batched_v2_coalesced(out, a, b, bias, 1, 0, 0, 0, M, N, K, trans_a, trans_b);
}

int matmul_forward_v3_smem(float* out, const float* a, const float* b, const float* bias,
                           int64_t M, int64_t N, int64_t K, int trans_a, int trans_b) {
    if (trans_a || trans_b) return (int)cudaErrorNotSupported;
    if (M <= 0 || N <= 0) return 0;
    if (!fits_int(M, N, K)) return (int)cudaErrorInvalidValue;
    dim3 block(V3_TILE, V3_TILE), grid((unsigned int)((N + V3_TILE - 1) / V3_TILE), (unsigned int)((M + V3_TILE - 1) / V3_TILE));
    matmul_v3_kernel<<<grid, block>>>(out, a, b, bias, (int)M, (int)N, (int)K);
    MG_LAUNCHED();
}

int matmul_forward_v4_regblock(float* out, const float* a, const float* b, const float* bias,
                               int64_t M, int64_t N, int64_t K, int trans_a, int trans_b) {
    if (trans_a || trans_b) return (int)cudaErrorNotSupported;
    if (M <= 0 || N <= 0) return 0;
    if (!fits_int(M, N, K)) return (int)cudaErrorInvalidValue;
    dim3 grid((unsigned int)((N + V4_BN - 1) / V4_BN), (unsigned int)((M + V4_BM - 1) / V4_BM));
    matmul_v4_kernel<<<grid, 256>>>(out, a, b, bias, (int)M, (int)N, (int)K);
    MG_LAUNCHED();
}

int matmul_forward_v5_vectorized(float* out, const float* a, const float* b, const float* bias,
                                 int64_t M, int64_t N, int64_t K, int trans_a, int trans_b) {
    if (trans_a || trans_b) return (int)cudaErrorNotSupported;
    if (M <= 0 || N <= 0) return 0;
    if (!fits_int(M, N, K)) return (int)cudaErrorInvalidValue;
    int vec = K % 4 == 0 && N % 4 == 0 && aligned16(a) && aligned16(b);   // both operands or neither
    dim3 grid((unsigned int)((N + V5_BN - 1) / V5_BN), (unsigned int)((M + V5_BM - 1) / V5_BM));
    matmul_v5_kernel<<<grid, 256>>>(out, a, b, bias, (int)M, (int)N, (int)K, vec);
    MG_LAUNCHED();
}

/* out[z] = op(a[z]) @ op(b[z]) + bias for z < batch; the strides are in elements between batch
   entries (0 broadcasts one matrix over the batch). op(a) is (M, K), op(b) is (K, N). */
int matmul_forward_batched_v6_warptile(float* out, const float* a, const float* b, const float* bias,
                                       int64_t batch, int64_t stride_out, int64_t stride_a, int64_t stride_b,
                                       int64_t M, int64_t N, int64_t K, int trans_a, int trans_b) {
    if (M <= 0 || N <= 0 || batch <= 0) return 0;
    if (batch > 65535 || !fits_int(M, N, K)) return (int)cudaErrorInvalidValue;
    return warptile(out, a, b, bias, (int)M, (int)N, (int)K, trans_a, trans_b, (int)batch, stride_a, stride_b,
                    stride_out);
}

int matmul_forward_batched(float* out, const float* a, const float* b, const float* bias,
                           int64_t batch, int64_t stride_out, int64_t stride_a, int64_t stride_b,
                           int64_t M, int64_t N, int64_t K, int trans_a, int trans_b) {
    return matmul_forward_batched_v6_warptile(out, a, b, bias, batch, stride_out, stride_a, stride_b, M, N, K,
                                              trans_a, trans_b);
}

int matmul_forward_v6_warptile(float* out, const float* a, const float* b, const float* bias,
                               int64_t M, int64_t N, int64_t K, int trans_a, int trans_b) {
    return matmul_forward_batched_v6_warptile(out, a, b, bias, 1, 0, 0, 0, M, N, K, trans_a, trans_b);
}

int matmul_forward_v7_bf16_tc(float* out, const float* a, const float* b, const float* bias,
                              int64_t M, int64_t N, int64_t K, int trans_a, int trans_b) {
    if (trans_a || trans_b) return (int)cudaErrorNotSupported;
    if (M <= 0 || N <= 0) return 0;
    if (!fits_int(M, N, K)) return (int)cudaErrorInvalidValue;
    int vec = K % 4 == 0 && N % 4 == 0 && aligned16(a) && aligned16(b);
    dim3 grid((unsigned int)((N + T_BN - 1) / T_BN), (unsigned int)((M + T_BM - 1) / T_BM));
    matmul_v7_kernel<<<grid, 256>>>(out, a, b, bias, (int)M, (int)N, (int)K, vec);
    MG_LAUNCHED();
}

int matmul_forward(float* out, const float* a, const float* b, const float* bias,
                   int64_t M, int64_t N, int64_t K, int trans_a, int trans_b) {
    return matmul_forward_v6_warptile(out, a, b, bias, M, N, K, trans_a, trans_b);
}

}  // extern "C"
