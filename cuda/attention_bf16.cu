/* attention_bf16.cu: causal attention forward and backward on the tensor cores, bf16 q, k, v,
   float32 softmax statistics, outputs and gradients (issue 19; the FlashAttention-2 work split).

   attention_bf16_forward_v1_mma(out, lse, q, k, v, segment_ids, B, NH, NKV, Tq, Tk, HS)
   computes what attention.cu's attention_forward does (same shapes, causal alignment, grouped
   heads, document mask, lse the natural-log row logsumexp of the scaled scores) from bf16
   q (B, NH, Tq, HS), k and v (B, NKV, Tk, HS), with float32 out and lse. HS = 64 only, and q,
   k, v 16-byte aligned; otherwise it returns cudaErrorNotSupported. attention_bf16_forward is
   the production alias. attention_bf16_backward_v1_mma is its backward (further down: one
   block per key tile, FA-2's backward order). The cuda backend's attention_forward and
   attention_backward call them inside a bf16 scope (--dtype bf16; MICROGPT_BF16_ATTENTION=0
   keeps attention.cu's float32 kernels there).

   The split (FA-2): a block owns 64 queries of one head, 4 warps of 16 query rows each, and
   walks the key tiles of 64 that its queries can see (causal: the later query tiles see more,
   so they are scheduled first). Per key tile, per warp, all in registers:
       S (16 x 64)  = Q_w (16 x 64) @ K_tile^T        16 mma m16n8k16 (4 k16 steps x 4 key pairs)
       online softmax per row: m = max(m, rowmax S); alpha = 2^(m_old - m); p = 2^(S - m);
                    l = alpha l + rowsum p; O = alpha O   (exp2, log2 e folded into the scale)
       O (16 x 64) += P (16 x 64 keys) @ V_tile        16 mma: P's accumulators are repacked
                    to bf16 A fragments in place (the m16n8 C layout of two adjacent key tiles
                    is the m16k16 A layout), so P never touches shared memory.
   Row statistics live in the 4 lanes of a quad (each lane holds 2 rows x 16 columns of S);
   max and sum are finished with two shuffles. At the end out = O / l, lse = (m + log2 l) ln 2.
   Staging: Q once, K and V tiles double-buffered by cp.async (the next tile's copy runs under
   this tile's products); each 64 x 64 bf16 tile is 64 rows of 128 bytes, row r's 16-byte chunk
   c stored at c ^ (r & 7): ldmatrix reads 8 consecutive rows at one chunk (Q and K plain, V
   transposed), which then fall in 8 different bank groups (unswizzled, all 8 in one: an 8-way
   conflict; the arithmetic of matmul_bf16.cu's header). 40 KiB of static shared memory.
   Numerics: scores are exact products of bf16 values summed in float32; P is rounded to bf16
   for the P V product (relative error <= 2^-8 each, as in FlashAttention-2), l and O sum in
   float32. Special values are not handled as attention.cu's are (a hidden key's NaN value
   reaches the P V product through 0 * NaN): finite inputs only. */
#include "common.cuh"
#include "microgpt_cuda.h"
#include <cuda_bf16.h>

#define FA_BR 64           // queries per block
#define FA_BC 64           // keys per tile
#define FA_D 64            // head size
#define FA_THREADS 128     // 4 warps x 16 query rows
#define FA_LOG2E 1.4426950408889634f
#define FA_LN2 0.6931471805599453f

// element (row, x) of a 64 x 64 tile: 16-byte chunk x / 8 of row r stored at chunk (x / 8) ^ (r & 7)
__device__ __forceinline__ int fa_offset(int row, int x) {
    return row * FA_D + ((((x >> 3) ^ row) & 7) << 3) + (x & 7);
}

__device__ __forceinline__ uint32_t fa_smem(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void fa_cp_async16(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(fa_smem(dst)), "l"(src), "r"(src_bytes));
}

__device__ __forceinline__ void fa_ldmatrix_x4(uint32_t* r, const uint16_t* p, bool trans) {
    if (trans)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(fa_smem(p)));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(fa_smem(p)));
}

__device__ __forceinline__ void fa_mma(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t fa_pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

// rows r0 .. r0+63 of a (rows, 64) bf16 matrix into a swizzled tile; rows >= rows are zero
__device__ __forceinline__ void fa_load_tile(uint16_t* tile, const uint16_t* base, int r0, int rows, int tid) {
#pragma unroll
    for (int h = 0; h < 4; h++) {
        int f = tid + h * FA_THREADS, r = f >> 3, x = (f & 7) << 3;
        bool inside = r0 + r < rows;
        fa_cp_async16(tile + fa_offset(r, x), inside ? base + (int64_t)(r0 + r) * FA_D + x : base, inside ? 16 : 0);
    }
}

__global__ void __launch_bounds__(FA_THREADS) attention_bf16_forward_kernel(
        float* out, float* lse, const uint16_t* q, const uint16_t* k, const uint16_t* v, const int32_t* segment_ids,
        int NH, int NKV, int Tq, int Tk, float scale_log2) {
    __shared__ __align__(128) uint16_t qs[FA_BR * FA_D];
    __shared__ __align__(128) uint16_t ks[2][FA_BC * FA_D];
    __shared__ __align__(128) uint16_t vs[2][FA_BC * FA_D];
    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    int g = lane >> 2, tq = lane & 3, quad = lane >> 3, row8 = lane & 7;
    int q_tile = gridDim.x - 1 - blockIdx.x;                 // the heaviest tiles first
    int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    int kvh = h / (NH / NKV);
    int q0 = q_tile * FA_BR;
    const uint16_t* qb = q + (int64_t)bh * Tq * FA_D;
    const uint16_t* kb = k + ((int64_t)b * NKV + kvh) * Tk * FA_D;
    const uint16_t* vb = v + ((int64_t)b * NKV + kvh) * Tk * FA_D;
    int shift = Tk - Tq;                                     // query i sits at position shift + i
    int last_pos = shift + min(q0 + FA_BR, Tq) - 1;          // the last key any query here sees
    int tiles = min(last_pos / FA_BC + 1, (Tk + FA_BC - 1) / FA_BC);

    fa_load_tile(qs, qb, q0, Tq, tid);
    fa_load_tile(ks[0], kb, 0, Tk, tid);
    fa_load_tile(vs[0], vb, 0, Tk, tid);
    asm volatile("cp.async.commit_group;\n" ::);

    // this lane's two query rows: warp * 16 + g and + 8
    int rows[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
    int seg_q[2] = {0, 0};
    if (segment_ids)
        for (int r = 0; r < 2; r++) seg_q[r] = rows[r] < Tq ? segment_ids[(int64_t)b * Tk + rows[r]] : 0;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    float o[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) o[nt][e] = 0.0f;
    uint32_t qf[4][4];

    for (int it = 0; it < tiles; it++) {
        int buf = it & 1;
        if (it + 1 < tiles) {
            fa_load_tile(ks[buf ^ 1], kb, (it + 1) * FA_BC, Tk, tid);
            fa_load_tile(vs[buf ^ 1], vb, (it + 1) * FA_BC, Tk, tid);
            asm volatile("cp.async.commit_group;\n" ::);
            asm volatile("cp.async.wait_group 1;\n" ::);
        } else {
            asm volatile("cp.async.wait_group 0;\n" ::);
        }
        __syncthreads();
        if (it == 0) {
#pragma unroll
            for (int kc = 0; kc < 4; kc++)                    // Q_w as 4 A fragments (hs 16 each)
                fa_ldmatrix_x4(qf[kc], qs + fa_offset(warp * 16 + (lane & 15), kc * 16 + (lane >> 4) * 8), false);
        }
        const uint16_t* kt = ks[buf];
        const uint16_t* vt = vs[buf];
        float s[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[nt][e] = 0.0f;
#pragma unroll
        for (int kc = 0; kc < 4; kc++)
#pragma unroll
            for (int np = 0; np < 4; np++) {                  // keys np*16 .. +15: B fragments of 2 n-tiles
                uint32_t r[4];
                fa_ldmatrix_x4(r, kt + fa_offset(np * 16 + row8 + (quad >> 1) * 8, kc * 16 + (quad & 1) * 8), false);
                fa_mma(s[2 * np], qf[kc], r[0], r[1]);
                fa_mma(s[2 * np + 1], qf[kc], r[2], r[3]);
            }
        // scale, mask, and the online softmax of this lane's two rows
        int k0 = it * FA_BC;
        float alpha[2];
#pragma unroll
        for (int half = 0; half < 2; half++) {
            int pos = shift + rows[half];
            float tile_max = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < 8; nt++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    int key = k0 + nt * 8 + 2 * tq + e;
                    bool visible = key <= pos && key < Tk && rows[half] < Tq &&
                                   (!segment_ids || segment_ids[(int64_t)b * Tk + key] == seg_q[half]);
                    float x = visible ? s[nt][2 * half + e] * scale_log2 : -INFINITY;
                    s[nt][2 * half + e] = x;
                    tile_max = fmaxf(tile_max, x);
                }
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
            float m_new = fmaxf(m[half], tile_max);
            float m_use = m_new == -INFINITY ? 0.0f : m_new;  // nothing visible yet: exp2(-inf) = 0
            alpha[half] = exp2f(m[half] - m_use);
            float sum = 0.0f;
#pragma unroll
            for (int nt = 0; nt < 8; nt++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    float p = exp2f(s[nt][2 * half + e] - m_use);
                    s[nt][2 * half + e] = p;
                    sum += p;
                }
            l[half] = l[half] * alpha[half] + sum;            // this lane's share; the quad sums at the end
            m[half] = m_new;
        }
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            o[nt][0] *= alpha[0]; o[nt][1] *= alpha[0];
            o[nt][2] *= alpha[1]; o[nt][3] *= alpha[1];
        }
        // O += P @ V: P's accumulators of key tiles 2 kc2, 2 kc2 + 1 are the A fragment of keys kc2*16..
#pragma unroll
        for (int kc2 = 0; kc2 < 4; kc2++) {
            uint32_t pa[4] = {fa_pack(s[2 * kc2][0], s[2 * kc2][1]), fa_pack(s[2 * kc2][2], s[2 * kc2][3]),
                              fa_pack(s[2 * kc2 + 1][0], s[2 * kc2 + 1][1]),
                              fa_pack(s[2 * kc2 + 1][2], s[2 * kc2 + 1][3])};
#pragma unroll
            for (int np = 0; np < 4; np++) {                  // head dims np*16 .. +15
                uint32_t r[4];
                fa_ldmatrix_x4(r, vt + fa_offset(kc2 * 16 + row8 + (quad & 1) * 8, np * 16 + (quad >> 1) * 8), true);
                fa_mma(o[2 * np], pa, r[0], r[1]);
                fa_mma(o[2 * np + 1], pa, r[2], r[3]);
            }
        }
        __syncthreads();                                      // every warp is done with buf
    }
#pragma unroll
    for (int half = 0; half < 2; half++) {
        float total = l[half];
        total += __shfl_xor_sync(0xffffffffu, total, 1);
        total += __shfl_xor_sync(0xffffffffu, total, 2);
        int row = rows[half];
        if (row >= Tq) continue;
        float inv = 1.0f / total;
        float* dst = out + ((int64_t)bh * Tq + row) * FA_D;
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
            *reinterpret_cast<float2*>(dst + nt * 8 + 2 * tq) =
                make_float2(o[nt][2 * half] * inv, o[nt][2 * half + 1] * inv);
        if (tq == 0) lse[(int64_t)bh * Tq + row] = (m[half] + log2f(total)) * FA_LN2;
    }
}

// ---- backward ------------------------------------------------------------------------------------

// delta[i] = dout_i . out_i (float32), one warp per row of HS = 64
__global__ void attention_bf16_delta_kernel(float* delta, const float* dout, const float* out, int64_t rows) {
    int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const float* a = dout + row * FA_D;
    const float* o = out + row * FA_D;
    float x = a[lane] * o[lane] + a[lane + 32] * o[lane + 32];
    x = warp_sum(x);
    if (lane == 0) delta[row] = x;
}

/* One block per (key tile of 64, query head): 4 warps x 16 keys walk the query tiles that see
   them. Per query tile, per warp (all m16n8k16, fragments as in the forward):
       S^T = K_w Q^T,  P^T = 2^(S^T scale log2e - lse log2e) (0 where hidden)
       dV_w += P^T dO,  dP^T = V_w dO^T,  dS^T = P^T (dP^T - D),  dK_w += dS^T Q
   then dS^T goes to shared memory (bf16) and each warp adds dQ (16 queries) = dS K scale into
   dq with float32 atomics (FA-2's order). dK scale and dV are added into dk, dv with atomics
   at the end (the query heads of a group share them). Q and dO single-buffered. */
__global__ void __launch_bounds__(FA_THREADS) attention_bf16_backward_kernel(
        float* dq, float* dk, float* dv, const uint16_t* dout, const uint16_t* q, const uint16_t* k,
        const uint16_t* v, const float* lse, const float* delta, const int32_t* segment_ids, int NH, int NKV,
        int Tq, int Tk, float scale, float scale_log2) {
    __shared__ __align__(128) uint16_t qs[FA_BR * FA_D];
    __shared__ __align__(128) uint16_t dos[FA_BR * FA_D];
    __shared__ __align__(128) uint16_t kts[FA_BC * FA_D];
    __shared__ __align__(128) uint16_t vts[FA_BC * FA_D];
    __shared__ __align__(128) uint16_t dst_[FA_BC * FA_BR];    // dS^T, [key][query]
    __shared__ float lse_s[FA_BR], delta_s[FA_BR];
    __shared__ int seg_s[FA_BR];
    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    int g = lane >> 2, tq = lane & 3, quad = lane >> 3, row8 = lane & 7;
    int k_tile = blockIdx.x, bh = blockIdx.y, b = bh / NH, h = bh % NH, kvh = h / (NH / NKV);
    int k0 = k_tile * FA_BC, shift = Tk - Tq;
    const uint16_t* qb = q + (int64_t)bh * Tq * FA_D;
    const uint16_t* dob = dout + (int64_t)bh * Tq * FA_D;
    const uint16_t* kb = k + ((int64_t)b * NKV + kvh) * Tk * FA_D;
    const uint16_t* vb = v + ((int64_t)b * NKV + kvh) * Tk * FA_D;
    fa_load_tile(kts, kb, k0, Tk, tid);
    fa_load_tile(vts, vb, k0, Tk, tid);
    asm volatile("cp.async.commit_group;\n" ::);
    asm volatile("cp.async.wait_group 0;\n" ::);
    __syncthreads();
    uint32_t kf[4][4], vf[4][4];
#pragma unroll
    for (int kc = 0; kc < 4; kc++) {
        fa_ldmatrix_x4(kf[kc], kts + fa_offset(warp * 16 + (lane & 15), kc * 16 + (lane >> 4) * 8), false);
        fa_ldmatrix_x4(vf[kc], vts + fa_offset(warp * 16 + (lane & 15), kc * 16 + (lane >> 4) * 8), false);
    }
    int keys[2] = {k0 + warp * 16 + g, k0 + warp * 16 + g + 8};
    int seg_k[2] = {0, 0};
    if (segment_ids)
        for (int r = 0; r < 2; r++) seg_k[r] = keys[r] < Tk ? segment_ids[(int64_t)b * Tk + keys[r]] : 0;
    float dka[8][4], dva[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) dka[nt][e] = dva[nt][e] = 0.0f;
    int first = max(0, k0 - shift) / FA_BR;                  // the first query tile that sees a key here
    int q_tiles = (Tq + FA_BR - 1) / FA_BR;
    for (int qt = first; qt < q_tiles; qt++) {
        int q0 = qt * FA_BR;
        fa_load_tile(qs, qb, q0, Tq, tid);
        fa_load_tile(dos, dob, q0, Tq, tid);
        asm volatile("cp.async.commit_group;\n" ::);
        if (tid < FA_BR) {
            bool in = q0 + tid < Tq;
            lse_s[tid] = in ? lse[(int64_t)bh * Tq + q0 + tid] * FA_LOG2E : 0.0f;
            delta_s[tid] = in ? delta[(int64_t)bh * Tq + q0 + tid] : 0.0f;
            seg_s[tid] = in && segment_ids ? segment_ids[(int64_t)b * Tk + q0 + tid] : 0;
        }
        asm volatile("cp.async.wait_group 0;\n" ::);
        __syncthreads();
        float st[8][4], dpt[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) st[nt][e] = dpt[nt][e] = 0.0f;
#pragma unroll
        for (int kc = 0; kc < 4; kc++)
#pragma unroll
            for (int np = 0; np < 4; np++) {                  // queries np*16 ..: Q^T and dO^T fragments
                uint32_t r[4], w[4];
                int off = fa_offset(np * 16 + row8 + (quad >> 1) * 8, kc * 16 + (quad & 1) * 8);
                fa_ldmatrix_x4(r, qs + off, false);
                fa_ldmatrix_x4(w, dos + off, false);
                fa_mma(st[2 * np], kf[kc], r[0], r[1]);
                fa_mma(st[2 * np + 1], kf[kc], r[2], r[3]);
                fa_mma(dpt[2 * np], vf[kc], w[0], w[1]);
                fa_mma(dpt[2 * np + 1], vf[kc], w[2], w[3]);
            }
        // P^T and dS^T in place: st[nt][e] is key keys[e / 2], query q0 + nt * 8 + 2 tq + e % 2
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int ql = nt * 8 + 2 * tq + (e & 1), key = keys[e >> 1];
                bool visible = key < Tk && q0 + ql < Tq && key <= shift + q0 + ql &&
                               (!segment_ids || seg_s[ql] == seg_k[e >> 1]);
                float p = visible ? exp2f(st[nt][e] * scale_log2 - lse_s[ql]) : 0.0f;
                st[nt][e] = p;
                dpt[nt][e] = visible ? p * (dpt[nt][e] - delta_s[ql]) : 0.0f;
            }
#pragma unroll
        for (int kc2 = 0; kc2 < 4; kc2++) {                   // queries kc2*16 ..: the k dimension now
            uint32_t pa[4] = {fa_pack(st[2 * kc2][0], st[2 * kc2][1]), fa_pack(st[2 * kc2][2], st[2 * kc2][3]),
                              fa_pack(st[2 * kc2 + 1][0], st[2 * kc2 + 1][1]),
                              fa_pack(st[2 * kc2 + 1][2], st[2 * kc2 + 1][3])};
            uint32_t da[4] = {fa_pack(dpt[2 * kc2][0], dpt[2 * kc2][1]), fa_pack(dpt[2 * kc2][2], dpt[2 * kc2][3]),
                              fa_pack(dpt[2 * kc2 + 1][0], dpt[2 * kc2 + 1][1]),
                              fa_pack(dpt[2 * kc2 + 1][2], dpt[2 * kc2 + 1][3])};
#pragma unroll
            for (int np = 0; np < 4; np++) {                  // head dims np*16 ..: dO and Q fragments
                uint32_t r[4], w[4];
                int off = fa_offset(kc2 * 16 + row8 + (quad & 1) * 8, np * 16 + (quad >> 1) * 8);
                fa_ldmatrix_x4(r, dos + off, true);
                fa_ldmatrix_x4(w, qs + off, true);
                fa_mma(dva[2 * np], pa, r[0], r[1]);
                fa_mma(dva[2 * np + 1], pa, r[2], r[3]);
                fa_mma(dka[2 * np], da, w[0], w[1]);
                fa_mma(dka[2 * np + 1], da, w[2], w[3]);
            }
            // dS^T to shared memory: key rows, query columns (the A operand of dQ, transposed)
#pragma unroll
            for (int half = 0; half < 2; half++) {
                int kr = warp * 16 + g + 8 * half;
#pragma unroll
                for (int j = 0; j < 2; j++)
                    *reinterpret_cast<uint32_t*>(&dst_[fa_offset(kr, (2 * kc2 + j) * 8 + 2 * tq)]) =
                        j == 0 ? da[half] : da[2 + half];
            }
        }
        __syncthreads();
        // dQ (this warp's 16 queries x 64) = dS (queries x keys) K scale
        float dqa[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) dqa[nt][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {                      // keys kk*16 ..
            uint32_t a[4];
            fa_ldmatrix_x4(a, dst_ + fa_offset(kk * 16 + row8 + (quad >> 1) * 8, warp * 16 + (quad & 1) * 8), true);
#pragma unroll
            for (int np = 0; np < 4; np++) {
                uint32_t r[4];
                fa_ldmatrix_x4(r, kts + fa_offset(kk * 16 + row8 + (quad & 1) * 8, np * 16 + (quad >> 1) * 8), true);
                fa_mma(dqa[2 * np], a, r[0], r[1]);
                fa_mma(dqa[2 * np + 1], a, r[2], r[3]);
            }
        }
#pragma unroll
        for (int half = 0; half < 2; half++) {
            int row = q0 + warp * 16 + g + 8 * half;
            if (row >= Tq) continue;
            float* d = dq + ((int64_t)bh * Tq + row) * FA_D;
#pragma unroll
            for (int nt = 0; nt < 8; nt++) {
                atomicAdd(d + nt * 8 + 2 * tq, dqa[nt][2 * half] * scale);
                atomicAdd(d + nt * 8 + 2 * tq + 1, dqa[nt][2 * half + 1] * scale);
            }
        }
        __syncthreads();                                      // qs, dos, dst_ are rewritten next
    }
#pragma unroll
    for (int half = 0; half < 2; half++) {
        int key = keys[half];
        if (key >= Tk) continue;
        int64_t base = (((int64_t)b * NKV + kvh) * Tk + key) * FA_D;
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                atomicAdd(dk + base + nt * 8 + 2 * tq + e, dka[nt][2 * half + e] * scale);
                atomicAdd(dv + base + nt * 8 + 2 * tq + e, dva[nt][2 * half + e]);
            }
    }
}


extern "C" {

int attention_bf16_forward_v1_mma(float* out, float* lse, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                                  const int32_t* segment_ids, int64_t B, int64_t NH, int64_t NKV, int64_t Tq,
                                  int64_t Tk, int64_t HS) {
    if (B <= 0 || NH <= 0 || Tq <= 0) return 0;
    if (HS != FA_D || NKV <= 0 || NH % NKV || Tq > Tk || Tk > INT32_MAX || B * NH > 65535 ||
        ((uintptr_t)q | (uintptr_t)k | (uintptr_t)v) & 15)
        return (int)cudaErrorNotSupported;
    dim3 grid((unsigned int)((Tq + FA_BR - 1) / FA_BR), (unsigned int)(B * NH));
    float scale_log2 = FA_LOG2E / sqrtf((float)HS);
    attention_bf16_forward_kernel<<<grid, FA_THREADS>>>(out, lse, q, k, v, segment_ids, (int)NH, (int)NKV, (int)Tq,
                                                        (int)Tk, scale_log2);
    MG_LAUNCHED();
}

/* dq, dk, dv float32, zeroed here (the kernel adds into them); delta: B*NH*Tq floats of scratch;
   dout float32 for delta, dout16 its bf16 copy for the products. */
int attention_bf16_backward_v1_mma(float* dq, float* dk, float* dv, float* delta, const float* dout,
                                   const uint16_t* dout16, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                                   const float* out, const float* lse, const int32_t* segment_ids, int64_t B,
                                   int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk, int64_t HS) {
    if (HS != FA_D || NKV <= 0 || NH % NKV || Tq > Tk || Tk > INT32_MAX || B * NH > 65535 ||
        ((uintptr_t)q | (uintptr_t)k | (uintptr_t)v | (uintptr_t)dout16) & 15)
        return (int)cudaErrorNotSupported;
    MG_CHECK(cudaMemsetAsync(dq, 0, sizeof(float) * B * NH * Tq * HS));
    MG_CHECK(cudaMemsetAsync(dk, 0, sizeof(float) * B * NKV * Tk * HS));
    MG_CHECK(cudaMemsetAsync(dv, 0, sizeof(float) * B * NKV * Tk * HS));
    if (B <= 0 || NH <= 0 || Tq <= 0) return 0;
    int64_t rows = B * NH * Tq;
    attention_bf16_delta_kernel<<<(unsigned int)((rows * 32 + 255) / 256), 256>>>(delta, dout, out, rows);
    MG_CHECK(cudaGetLastError());
    dim3 grid((unsigned int)((Tk + FA_BC - 1) / FA_BC), (unsigned int)(B * NH));
    float scale = 1.0f / sqrtf((float)HS);
    attention_bf16_backward_kernel<<<grid, FA_THREADS>>>(dq, dk, dv, dout16, q, k, v, lse, delta, segment_ids,
                                                         (int)NH, (int)NKV, (int)Tq, (int)Tk, scale,
                                                         scale * FA_LOG2E);
    MG_LAUNCHED();
}


int attention_bf16_forward(float* out, float* lse, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                           const int32_t* segment_ids, int64_t B, int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk,
                           int64_t HS) {
    return attention_bf16_forward_v1_mma(out, lse, q, k, v, segment_ids, B, NH, NKV, Tq, Tk, HS);
}

}  // extern "C"
