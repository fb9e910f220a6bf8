/* matmul_bf16.cu: bf16 tensor-core matrix products with float32 accumulation, and the
   float32 <-> bf16 conversions that feed them (issue 19, mixed-precision training).

   bf16 is float32 with the low 16 bits of the mantissa dropped: 1 sign bit, the same 8
   exponent bits (so the same range, 1e-38 .. 3e38: no loss scaling is needed, unlike fp16's
   5-bit exponent whose gradients underflow), 7 stored mantissa bits (8 significant). On the
   device a bf16 array is an array of uint16_t holding those bits.

   f32_to_bf16   out[i] = x[i] rounded to the nearest bf16, ties to even (NaN stays NaN,
                 overflow rounds to inf as IEEE rounding does): __float2bfloat16_rn.
   bf16_to_f32   out[i] = the float32 with x[i]'s bits on top and zeros below (exact).

   matmul_bf16_v1_mma  out (M, N) float32 = op(a) @ op(b) + bias, a and b bf16, products
   accumulated in float32 by the tensor cores (mma.sync m16n8k16, sm_80+); op(a) = a (M, K)
   or, with trans_a, a^T of a stored (K, M); op(b) = b (K, N) or, with trans_b, b^T of a
   stored (N, K); bias (N) float32 or NULL. The three layouts a linear layer needs:
       forward  y  = x @ w^T     trans_b      (x (rows, C), w (OC, C))
       dX       dx = dy @ w      plain        (dy (rows, OC), w (OC, C))
       dW       dw = dy^T @ x    trans_a      (dy (rows, OC) read as (K, M), x (rows, C))
   (and trans_a + trans_b, for completeness). matmul_bf16 is the production alias.

   The kernel. A block computes a 128 x 128 tile of out with 8 warps (2 along M x 4 along N),
   each a 64 x 32 warp tile = 4 x 4 mma tiles of 16 x 8 (64 float accumulators a thread).
   K advances in steps of BK = 32 (two k16 mma steps):
     - staging: each K step's A and B tiles are copied from global to shared memory by
       cp.async (16 bytes a thread-copy, 512 copies per tile, 2 per thread per operand),
       which bypasses the registers and runs while the tensor cores work; STAGES = 3 tile
       buffers in a ring (the copy of step t + 2 is in flight while step t is computed;
       cp.async.wait_group 1 before a step waits for exactly the group of that step).
       3 x (8 KiB + 8 KiB) = 48 KiB of static shared memory.
     - the tile is stored in shared memory in its global layout: an operand contiguous
       along k (a, or b with trans_b) as rows of 32 k (64 bytes, 4 chunks of 16 bytes); one
       contiguous along m or n (a with trans_a, plain b) as 32 k-rows of 128 (256 bytes, 16
       chunks). ldmatrix (.x4: four 8 x 8 matrices of 16-bit values, each lane giving one
       16-byte row address) builds the mma fragments; the .trans form transposes on the
       way, so a k-rows tile gives the same fragments as a k-contiguous one: no layout
       needs a transpose pass or its own kernel.
     - swizzle. Shared memory has 32 banks of 4 bytes: a 128-byte line touches each bank
       once, and 16-byte accesses by 8 lanes are conflict-free iff the 8 addresses fall in
       8 different 16-byte bank groups, group = (byte address / 16) mod 8. ldmatrix reads,
       per matrix, 8 rows r .. r+7 (r a multiple of 8) at one logical chunk c.
       * 64-byte rows, unswizzled: group = (4 r + c) mod 8 takes only 2 values over 8 rows:
         a 4-way conflict. Stored at chunk c ^ ((r >> 1) & 3) instead, the group is
         4 (r & 1) + (c ^ ((r >> 1) & 3)), and over r = 0..7 the pair (r & 1, r >> 1) runs
         through all 8 combinations: 8 different groups.
       * 256-byte rows, unswizzled: group = (16 r + c) mod 8 = c mod 8 for every row: an
         8-way conflict (this is the transposed read). Stored at chunk c ^ (r & 7): group
         (c mod 8) ^ (r & 7), 8 different values over 8 rows.
       The cp.async writes are conflict-free too (8 consecutive copies fill one 128-byte
       line: 2 rows of 4 chunks, or half a 256-byte row, each permuted within itself).
     - edges: when both operands' contiguous dimensions are multiples of 8 and their bases
       16-byte aligned (every GPT-2 shape), a 16-byte chunk is wholly inside or wholly
       outside the matrix, and chunks outside are zero-filled by cp.async's source size 0.
       Otherwise the tiles are loaded element by element with guards (the slow path, same
       arithmetic).
   Numerics: each product of two bf16 values is exact in float32 and the tensor cores sum
   in float32, so the result is the float32 product of the bf16-rounded inputs up to
   float32 summation error (the mock computes exactly that in NumPy); the error against
   the unrounded inputs comes from the input rounding, bounded in tests/test_cuda_bf16.py.
     - split-K (below, bf16_splits): a product with too few output tiles to fill the GPU and
       a long K (the weight gradients) has its K cut into chunks summed by a second kernel.
   Not here yet (next rungs): wgmma / TMA on sm_90a, a bf16 output epilogue, 4 stages of
   BK = 64 in dynamic shared memory. */
#include "common.cuh"
#include "microgpt_cuda.h"
#include <cuda_bf16.h>

// ---- conversions ---------------------------------------------------------------------------------

__global__ void f32_to_bf16_kernel(uint16_t* out, const float* x, int64_t n) {
    MG_FOR(i, n) {
        __nv_bfloat16 v = __float2bfloat16_rn(x[i]);
        out[i] = *reinterpret_cast<const uint16_t*>(&v);
    }
}

__global__ void bf16_to_f32_kernel(float* out, const uint16_t* x, int64_t n) {
    MG_FOR(i, n) out[i] = __uint_as_float((uint32_t)x[i] << 16);
}

// ---- the GEMM --------------------------------------------------------------------------------------

#define BF_BM 128
#define BF_BN 128
#define BF_BK 32
#define BF_STAGES 3
#define BF_THREADS 256
#define BF_TILE (BF_BM * BF_BK)          // bf16 elements of one operand tile (128 x 32 = 32 x 128)

// Offset (in elements) of element (row, k) of a k-contiguous tile: rows of 32, chunk c = k / 8
// stored at c ^ ((row >> 1) & 3) (the swizzle of the header).
__device__ __forceinline__ int kmajor_offset(int row, int k) {
    return row * BF_BK + ((((k >> 3) ^ (row >> 1)) & 3) << 3) + (k & 7);
}

// Offset of element (krow, x) of a tile contiguous along m or n: 32 rows of 128, chunk c = x / 8
// stored at c ^ (krow & 7).
__device__ __forceinline__ int mnmajor_offset(int krow, int x) {
    return krow * BF_BM + (((x >> 3) ^ (krow & 7)) << 3) + (x & 7);
}

__device__ __forceinline__ uint32_t shared_address(const void* p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

// 16 bytes global -> shared, bypassing registers; src_bytes 0 writes 16 zero bytes.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(dst)), "l"(src),
                 "r"(src_bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int PENDING>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING)); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const uint16_t* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(p)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t* r, const uint16_t* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(p)));
}

// d += a (16 x 16, row) @ b (16 x 8, col): bf16 inputs, float32 accumulators.
__device__ __forceinline__ void mma_bf16(float* d, const uint32_t* a, const uint32_t* b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* Copy chunk f (0..511) of one operand's K step into its shared tile.
   KMAJOR: the operand is stored (R, K) row-major (k contiguous); the tile holds rows r0..r0+127,
   k k0..k0+31: chunk f is row f / 4, k (f % 4) * 8. Otherwise it is stored (K, R) (r contiguous);
   the tile holds k-rows k0..k0+31, r r0..r0+127: chunk f is k-row f / 16, r (f % 16) * 8.
   ld is the stored row length. ALIGNED (R or K contiguous a multiple of 8, 16-byte base):
   one cp.async, zero-filled outside; else 8 guarded element loads. */
template <bool KMAJOR, bool ALIGNED>
__device__ __forceinline__ void load_chunk(uint16_t* tile, const uint16_t* base, int64_t ld, int R, int K, int r0,
                                           int k0, int f) {
    int row, col, dst;                         // row / col of the stored matrix
    int rmax, cmax;
    if (KMAJOR) {
        int r = f >> 2, k = (f & 3) << 3;
        row = r0 + r; col = k0 + k; rmax = R; cmax = K;
        dst = kmajor_offset(r, k);
    } else {
        int kr = f >> 4, x = (f & 15) << 3;
        row = k0 + kr; col = r0 + x; rmax = K; cmax = R;
        dst = mnmajor_offset(kr, x);
    }
    const uint16_t* src = base + (int64_t)row * ld + col;
    if (ALIGNED) {
        bool inside = row < rmax && col < cmax;
        cp_async16(tile + dst, inside ? src : base, inside ? 16 : 0);
    } else {
        uint16_t v[8];
#pragma unroll
        for (int e = 0; e < 8; e++) v[e] = (row < rmax && col + e < cmax) ? src[e] : (uint16_t)0;
        uint4 packed;
        packed.x = v[0] | ((uint32_t)v[1] << 16);
        packed.y = v[2] | ((uint32_t)v[3] << 16);
        packed.z = v[4] | ((uint32_t)v[5] << 16);
        packed.w = v[6] | ((uint32_t)v[7] << 16);
        *reinterpret_cast<uint4*>(tile + dst) = packed;
    }
}

/* TA: a stored (K, M); TB: b stored (N, K). vec_out: out rows may be written as float2. */
/* kc > 0 (split-K): block z sums k in [z kc, min(K, (z + 1) kc)) into its own (M, N) slice of out
   (a workspace the split_sum kernel adds up); kc = 0: all of K into out. */
template <bool TA, bool TB, bool ALIGNED>
__global__ void __launch_bounds__(BF_THREADS) matmul_bf16_kernel(float* out, const uint16_t* a, const uint16_t* b,
                                                                 const float* bias, int M, int N, int K, int vec_out,
                                                                 int kc) {
    __shared__ __align__(128) uint16_t as[BF_STAGES][BF_TILE];
    __shared__ __align__(128) uint16_t bs[BF_STAGES][BF_TILE];
    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    int wm0 = (warp >> 2) * 64, wn0 = (warp & 3) * 32;          // this warp's 64 x 32 of the tile
    int m0 = blockIdx.y * BF_BM, n0 = blockIdx.x * BF_BN;
    int64_t lda = TA ? M : K, ldb = TB ? K : N;          // leading dimensions: the whole K
    int k_lo = 0, k_hi = K;
    if (kc > 0) {
        k_lo = blockIdx.z * kc;
        k_hi = min(K, k_lo + kc);
        out += (int64_t)blockIdx.z * M * N;
    }
    int steps = (k_hi - k_lo + BF_BK - 1) / BF_BK;

    auto load_step = [&](int step, int stage) {
        int k0 = k_lo + step * BF_BK;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            int f = tid + h * BF_THREADS;                // k beyond this block's k_hi reads as 0
            load_chunk<!TA, ALIGNED>(as[stage], a, lda, M, k_hi, m0, k0, f);   // op(a): k-major unless TA
            load_chunk<TB, ALIGNED>(bs[stage], b, ldb, N, k_hi, n0, k0, f);    // op(b): k-major iff TB
        }
    };

    float acc[4][4][4];
#pragma unroll
    for (int mi = 0; mi < 4; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[mi][ni][e] = 0.0f;

#pragma unroll
    for (int s = 0; s < BF_STAGES - 1; s++) {
        if (s < steps) load_step(s, s);
        cp_async_commit();                                       // empty groups keep the count
    }
    // lane roles in ldmatrix.x4: lanes 8i .. 8i+7 give the rows of matrix i
    int quad = lane >> 3, row8 = lane & 7;
    for (int t = 0; t < steps; t++) {
        cp_async_wait<BF_STAGES - 2>();                          // this step's group has landed
        __syncthreads();                                         // ... for every thread; and step t-1's
                                                                 // buffer is no longer read by anyone
        int next = t + BF_STAGES - 1;
        if (next < steps) load_step(next, next % BF_STAGES);
        cp_async_commit();
        const uint16_t* at = as[t % BF_STAGES];
        const uint16_t* bt = bs[t % BF_STAGES];
#pragma unroll
        for (int kk = 0; kk < BF_BK; kk += 16) {
            uint32_t fa[4][4], fb[4][2];
#pragma unroll
            for (int mi = 0; mi < 4; mi++) {
                int r0 = wm0 + mi * 16;
                // matrices 0..3 = (rows r0, k kk), (r0 + 8, kk), (r0, kk + 8), (r0 + 8, kk + 8): a0..a3
                if (!TA) {
                    ldmatrix_x4(fa[mi], at + kmajor_offset(r0 + (lane & 15), kk + (lane >> 4) * 8));
                } else {   // k-rows tile: matrix i is k-rows kk + 8 (i / 2), m r0 + 8 (i % 2), transposed
                    ldmatrix_x4_trans(fa[mi], at + mnmajor_offset(kk + row8 + (quad >> 1) * 8, r0 + (quad & 1) * 8));
                }
            }
#pragma unroll
            for (int nj = 0; nj < 2; nj++) {
                int c0 = wn0 + nj * 16;
                // matrices 0..3 = (n c0, k kk), (c0, kk + 8), (c0 + 8, kk), (c0 + 8, kk + 8):
                // b0, b1 of n-tile 2 nj, then b0, b1 of n-tile 2 nj + 1
                uint32_t r[4];
                if (TB) {
                    ldmatrix_x4(r, bt + kmajor_offset(c0 + row8 + (quad >> 1) * 8, kk + (quad & 1) * 8));
                } else {
                    ldmatrix_x4_trans(r, bt + mnmajor_offset(kk + row8 + (quad & 1) * 8, c0 + (quad >> 1) * 8));
                }
                fb[2 * nj][0] = r[0]; fb[2 * nj][1] = r[1];
                fb[2 * nj + 1][0] = r[2]; fb[2 * nj + 1][1] = r[3];
            }
#pragma unroll
            for (int mi = 0; mi < 4; mi++)
#pragma unroll
                for (int ni = 0; ni < 4; ni++) mma_bf16(acc[mi][ni], fa[mi], fb[ni]);
        }
    }
    cp_async_wait<0>();                                          // no copy outlives the block

    // accumulator e of mma tile (mi, ni): row g + 8 (e / 2), column 2 t + e % 2 (g = lane / 4, t = lane % 4)
    int g = lane >> 2, tq = lane & 3;
#pragma unroll
    for (int mi = 0; mi < 4; mi++)
#pragma unroll
        for (int half = 0; half < 2; half++) {
            int m = m0 + wm0 + mi * 16 + g + half * 8;
            if (m >= M) continue;
            float* dst = out + (int64_t)m * N;
#pragma unroll
            for (int ni = 0; ni < 4; ni++) {
                int n = n0 + wn0 + ni * 8 + 2 * tq;
                float x = acc[mi][ni][2 * half], y = acc[mi][ni][2 * half + 1];
                if (bias) {
                    if (n < N) x += bias[n];
                    if (n + 1 < N) y += bias[n + 1];
                }
                if (vec_out && n + 1 < N) {
                    *reinterpret_cast<float2*>(dst + n) = make_float2(x, y);
                } else {
                    if (n < N) dst[n] = x;
                    if (n + 1 < N) dst[n + 1] = y;
                }
            }
        }
}

template <bool TA, bool TB>
static void launch_bf16(dim3 grid, bool aligned, float* out, const uint16_t* a, const uint16_t* b, const float* bias,
                        int M, int N, int K, int vec_out, int kc) {
    if (aligned) matmul_bf16_kernel<TA, TB, true><<<grid, BF_THREADS>>>(out, a, b, bias, M, N, K, vec_out, kc);
    else matmul_bf16_kernel<TA, TB, false><<<grid, BF_THREADS>>>(out, a, b, bias, M, N, K, vec_out, kc);
}

// out[i] = sum_s ws[s][i] (+ bias[i % N]): the second half of split-K, in a fixed order (deterministic).
__global__ void bf16_split_sum_kernel(float* out, const float* ws, const float* bias, int64_t MN, int N, int splits) {
    MG_FOR(i, MN) {
        float acc = bias ? bias[i % N] : 0.0f;
        for (int s = 0; s < splits; s++) acc += ws[s * MN + i];
        out[i] = acc;
    }
}

static bool aligned_to(const void* p, uintptr_t bytes) { return ((uintptr_t)p & (bytes - 1)) == 0; }

/* Split-K. A weight gradient has few output tiles and a long K (dW of a 768 x 768 projection:
   36 tiles of 128 x 128 for 132 SMs that hold 2 blocks each, K = B T = 8192): K is cut into
   chunks (multiples of BK) computed by separate blocks into a float32 workspace, then summed.
   Splits: enough to fill 2 blocks per SM, each chunk at least 256 long, at most 16. The
   workspace is kept and grown as needed (growing synchronizes). */
static float* g_split_ws = NULL;
static size_t g_split_ws_bytes = 0;
static int g_split_sms = 0;

static int bf16_splits(int M, int N, int K, int* kc) {
    *kc = 0;
    if (!g_split_sms) {
        int device = 0;
        if (cudaGetDevice(&device) != cudaSuccess ||
            cudaDeviceGetAttribute(&g_split_sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess)
            g_split_sms = 1;
    }
    int64_t tiles = (int64_t)((M + BF_BM - 1) / BF_BM) * ((N + BF_BN - 1) / BF_BN);
    if (tiles >= 2 * g_split_sms || K < 1024) return 1;
    int64_t splits = (2 * g_split_sms + tiles - 1) / tiles;
    if (splits > K / 256) splits = K / 256;
    if (splits > 16) splits = 16;
    if (splits <= 1) return 1;
    int chunk = (int)(((K + splits - 1) / splits + BF_BK - 1) / BF_BK * BF_BK);
    *kc = chunk;
    return (K + chunk - 1) / chunk;
}

extern "C" {

int f32_to_bf16(uint16_t* out, const float* x, int64_t n) {
    if (n <= 0) return 0;
    f32_to_bf16_kernel<<<blocks_for(n, 256), 256>>>(out, x, n);
    MG_LAUNCHED();
}

int bf16_to_f32(float* out, const uint16_t* x, int64_t n) {
    if (n <= 0) return 0;
    bf16_to_f32_kernel<<<blocks_for(n, 256), 256>>>(out, x, n);
    MG_LAUNCHED();
}

int matmul_bf16_v1_mma(float* out, const uint16_t* a, const uint16_t* b, const float* bias,
                       int64_t M, int64_t N, int64_t K, int trans_a, int trans_b) {
    if (M <= 0 || N <= 0) return 0;
    if (M > INT32_MAX || N > INT32_MAX || K > INT32_MAX || (M + BF_BM - 1) / BF_BM > 65535)
        return (int)cudaErrorInvalidValue;
    if (K < 0) return (int)cudaErrorInvalidValue;
    // 16-byte chunks stay whole when each operand's contiguous dimension is a multiple of 8
    int64_t contiguous_a = trans_a ? M : K, contiguous_b = trans_b ? K : N;
    bool aligned = contiguous_a % 8 == 0 && contiguous_b % 8 == 0 && aligned_to(a, 16) && aligned_to(b, 16);
    int m = (int)M, n = (int)N, k = (int)K, kc = 0;
    int splits = bf16_splits(m, n, k, &kc);
    float* dst = out;
    const float* tile_bias = bias;
    if (splits > 1) {
        size_t need = sizeof(float) * (size_t)splits * M * N;
        if (need > g_split_ws_bytes) {
            if (g_split_ws) MG_CHECK(cudaFree(g_split_ws));
            g_split_ws = NULL;
            g_split_ws_bytes = 0;
            MG_CHECK(cudaMalloc((void**)&g_split_ws, need));
            g_split_ws_bytes = need;
        }
        dst = g_split_ws;
        tile_bias = NULL;
    }
    int vec_out = N % 2 == 0 && aligned_to(dst, 8);
    dim3 grid((unsigned int)((N + BF_BN - 1) / BF_BN), (unsigned int)((M + BF_BM - 1) / BF_BM), (unsigned int)splits);
    if (!trans_a && !trans_b) launch_bf16<false, false>(grid, aligned, dst, a, b, tile_bias, m, n, k, vec_out, kc);
    else if (!trans_a && trans_b) launch_bf16<false, true>(grid, aligned, dst, a, b, tile_bias, m, n, k, vec_out, kc);
    else if (trans_a && !trans_b) launch_bf16<true, false>(grid, aligned, dst, a, b, tile_bias, m, n, k, vec_out, kc);
    else launch_bf16<true, true>(grid, aligned, dst, a, b, tile_bias, m, n, k, vec_out, kc);
    MG_CHECK(cudaGetLastError());
    if (splits > 1) {
        int64_t mn = M * N;
        bf16_split_sum_kernel<<<blocks_for(mn, 256), 256>>>(out, g_split_ws, bias, mn, n, splits);
    }
    MG_LAUNCHED();
}

int matmul_bf16(float* out, const uint16_t* a, const uint16_t* b, const float* bias,
                int64_t M, int64_t N, int64_t K, int trans_a, int trans_b) {
    return matmul_bf16_v1_mma(out, a, b, bias, M, N, K, trans_a, trans_b);
}

}  // extern "C"
