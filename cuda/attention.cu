/* attention.cu: causal scaled-dot-product attention with grouped-query heads (float32).

   q (B, NH, Tq, HS), k/v (B, NKV, Tk, HS), out (B, NH, Tq, HS), lse (B, NH, Tq).
   Query i sits at position Tk - Tq + i and sees keys 0 .. Tk - Tq + i; query head h reads
   key/value head h / (NH / NKV). With s_ij = q_i . k_j / sqrt(HS):
     forward   lse_i = log sum_j exp(s_ij),  P_ij = exp(s_ij - lse_i),  out_i = sum_j P_ij v_j
     backward  D_i = dout_i . out_i;  dP_ij = dout_i . v_j;  dS_ij = P_ij (dP_ij - D_i)
               dq_i = sum_j dS_ij k_j / sqrt(HS),  dk_j = sum_i dS_ij q_i / sqrt(HS),
               dv_j = sum_i P_ij dout_i   (dk, dv summed over the query heads of a group)

   v1_naive  one thread per query row, over its keys straight from global memory: their max,
             then the sums (two passes over the scores, as the reference: no online rescaling);
             backward likewise with atomics into dk/dv. Any HS; the fallback.
   v2_flash  flash-attention tiling (Dao et al. 2022, FA-2 loop order): 64 queries x 64 keys
             per step in shared memory, 128 threads each owning 4 rows x 8 columns of the
             score tile, the online-softmax state (row max m, row sum l) in registers, so
             nothing T x T touches device memory. Tiles are stored row-major with one float
             of padding per row, which makes both row-wise and column-wise reads of a tile
             conflict-free; exp2 with log2(e) folded into the scale. Heaviest query tiles
             (most keys under the causal mask) are scheduled first. The backward runs one
             block per key tile, keeps dk and dv in registers while it walks the query tiles
             that can see it, recomputes P from lse, and adds its dq share with atomics
             (as FA-2 does). HS up to 128 (templates D = 64, 128), else v1 is used.

   Document masking (segment_ids, (B, T) int32 with T = Tq = Tk, or NULL): query i also needs
   segment_ids[b, i] == segment_ids[b, j] to see key j (packed rows; csrc/attention.c argues
   for ids over cumulative lengths). v1 skips the other keys in its loops. v2 keeps each tile's
   ids in shared memory (sq for its queries, sk for its keys; all 0 without segments), skips a
   tile in which no thread finds a visible pair (__syncthreads_or: the block agrees), and
   treats a tile holding two documents as a masked one, its products testing sk[c] == sq[r]
   beside the causal test, so another document's NaN never reaches a query either.

   NaN and inf (tests/test_kernel_special_values.py): a query's outputs are what the reference
   gives for that query against exactly the keys it sees. A score, value or gradient that is
   not finite reaches the rows that see it and no other: both rungs mask hidden scores to -inf
   by a select (never by arithmetic), and v2, whose diagonal tiles hold pairs of a query and a
   key it cannot see, skips those pairs in its products (a zero probability times a NaN value
   is NaN) and zeroes their dS. A row whose visible scores are all -inf has lse NaN, as in the
   reference, whose max of that row is -inf (and -inf - -inf is NaN). */
#include "common.cuh"
#include "microgpt_cuda.h"

#define ATT_BR 64          // queries per tile
#define ATT_BC 64          // keys per tile
#define ATT_THREADS 128    // 16 x 8 threads
#define LOG2E 1.4426950408889634f

// ---- v1: one thread per query row --------------------------------------------------------------

#define V1_MAX_HS 256
__global__ void attention_forward_v1_kernel(float* out, float* lse, const float* q, const float* k, const float* v,
                                            const int32_t* segment_ids, int NH, int NKV, int Tq, int Tk, int HS,
                                            int64_t rows) {
    int64_t row = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= rows) return;
    int i = row % Tq;
    int64_t bh = row / Tq, b = bh / NH, h = bh % NH;
    const float* qi = q + row * HS;
    const float* kb = k + (b * NKV + h / (NH / NKV)) * (int64_t)Tk * HS;
    const float* vb = v + (b * NKV + h / (NH / NKV)) * (int64_t)Tk * HS;
    const int32_t* seg = segment_ids ? segment_ids + b * Tk : nullptr;   // Tq = Tk with segments
    float acc[V1_MAX_HS];
    for (int d = 0; d < HS; d++) acc[d] = 0.0f;
    float m = -INFINITY, l = 0.0f, scale = rsqrtf((float)HS);
    int last = Tk - Tq + i;
    for (int j = 0; j <= last; j++) {            // m = max_j s_ij (a NaN s reaches l below)
        if (seg && seg[j] != seg[i]) continue;   // another document's key
        float s = 0.0f;
        for (int d = 0; d < HS; d++) s += qi[d] * kb[(int64_t)j * HS + d];
        m = fmaxf(m, s * scale);
    }
    for (int j = 0; j <= last; j++) {            // l = sum_j e^(s_ij - m), acc = sum_j e^(s_ij - m) v_j
        if (seg && seg[j] != seg[i]) continue;
        float s = 0.0f;
        for (int d = 0; d < HS; d++) s += qi[d] * kb[(int64_t)j * HS + d];
        float p = expf(s * scale - m);
        l += p;
        for (int d = 0; d < HS; d++) acc[d] += p * vb[(int64_t)j * HS + d];
    }
    for (int d = 0; d < HS; d++) out[row * HS + d] = acc[d] / l;
    lse[row] = m + logf(l);
}

__global__ void attention_backward_v1_kernel(float* dq, float* dk, float* dv, const float* dout, const float* q,
                                             const float* k, const float* v, const float* out, const float* lse,
                                             const int32_t* segment_ids, int NH, int NKV, int Tq, int Tk, int HS,
                                             int64_t rows) {
    int64_t row = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= rows) return;
    int i = row % Tq;
    int64_t bh = row / Tq, b = bh / NH, h = bh % NH;
    int64_t kv_base = (b * NKV + h / (NH / NKV)) * (int64_t)Tk * HS;
    const float* qi = q + row * HS;
    const float* gi = dout + row * HS;
    float di = 0.0f, scale = rsqrtf((float)HS), acc[V1_MAX_HS];
    for (int d = 0; d < HS; d++) { di += gi[d] * out[row * HS + d]; acc[d] = 0.0f; }
    const int32_t* seg = segment_ids ? segment_ids + b * Tk : nullptr;
    for (int j = 0; j <= Tk - Tq + i; j++) {
        if (seg && seg[j] != seg[i]) continue;   // another document's key
        const float* kj = k + kv_base + (int64_t)j * HS;
        const float* vj = v + kv_base + (int64_t)j * HS;
        float s = 0.0f, dp = 0.0f;
        for (int d = 0; d < HS; d++) { s += qi[d] * kj[d]; dp += gi[d] * vj[d]; }
        float p = expf(s * scale - lse[row]), ds = p * (dp - di) * scale;
        for (int d = 0; d < HS; d++) {
            acc[d] += ds * kj[d];
            atomicAdd(&dk[kv_base + (int64_t)j * HS + d], ds * qi[d]);
            atomicAdd(&dv[kv_base + (int64_t)j * HS + d], p * gi[d]);
        }
    }
    for (int d = 0; d < HS; d++) dq[row * HS + d] = acc[d];
}

// ---- v2: flash tiles -------------------------------------------------------------------------------

// dst[r][d] (row stride D + 1) = src[r][d] for r < rows_valid, d < HS; zeros elsewhere.
template <int D>
__device__ __forceinline__ void load_tile(float* dst, const float* src, int rows_valid, int HS) {
    for (int f = threadIdx.x; f < ATT_BR * D; f += ATT_THREADS) {
        int r = f / D, d = f % D;
        dst[r * (D + 1) + d] = (r < rows_valid && d < HS) ? src[(int64_t)r * HS + d] : 0.0f;
    }
}

// The products of a tile skip, in a masked tile (MASKED: on the diagonal, or holding two
// documents), the pairs of a query r and a key c that comes after its position (c > diag + r,
// diag = offset + q0 - k0) or lies in another document (sk[c] != sq[r]): their P and dS are 0,
// but 0 times a NaN or inf value, gradient or query is NaN, which must not reach query r.
__device__ __forceinline__ bool pair_seen(int r, int c, int diag, const int* sq, const int* sk) {
    return c <= diag + r && sk[c] == sq[r];
}

// o += P V (rows: queries r = ty + 16 i; columns e = tx + 8 j).
template <int D, bool MASKED>
__device__ __forceinline__ void pv_tile(float (&o)[4][D / 8], const float* ps, const float* vs, int tx, int ty,
                                        int diag, const int* sq, const int* sk) {
#pragma unroll 4
    for (int c = 0; c < ATT_BC; c++) {
        float x[4], y[D / 8];
        for (int i = 0; i < 4; i++) x[i] = ps[(ty + 16 * i) * 65 + c];
        for (int j = 0; j < D / 8; j++) y[j] = vs[c * (D + 1) + tx + 8 * j];
        for (int i = 0; i < 4; i++)
            if (!MASKED || pair_seen(ty + 16 * i, c, diag, sq, sk))
                for (int j = 0; j < D / 8; j++) o[i][j] += x[i] * y[j];
    }
}

// seg ids of rows [r0, r0 + 64) into s (0 past n, or everywhere without segments).
__device__ __forceinline__ void load_seg(int* s, const int32_t* seg, int r0, int n) {
    if (threadIdx.x < 64) s[threadIdx.x] = seg && r0 + (int)threadIdx.x < n ? seg[r0 + threadIdx.x] : 0;
}

// Whether a tile needs work, and whether it holds two documents, as the whole block agrees
// (__syncthreads_or). Thread (tx, ty) looks at its 4 x 8 pairs of the 64 x 64 tile: rows (queries)
// ty + 16 i, columns (keys) tx + 8 j, the layout of the score tiles below.
struct TileDocs { bool any_seen, mixed; };
__device__ __forceinline__ TileDocs tile_docs(const int* sq, const int* sk, int diag, int rows, int cols, int tx,
                                              int ty) {
    int seen = 0, mixed = 0;
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 8; j++) {
            int r = ty + 16 * i, c = tx + 8 * j;
            if (r >= rows || c >= cols) continue;
            seen |= pair_seen(r, c, diag, sq, sk);
            mixed |= sk[c] != sq[r];
        }
    TileDocs t;
    t.any_seen = __syncthreads_or(seen) != 0;
    t.mixed = __syncthreads_or(mixed) != 0;
    return t;
}

// dv += P^T dO and dk += dS^T Q (rows: keys c = ty + 16 i; columns e = tx + 8 j).
template <int D, bool MASKED>
__device__ __forceinline__ void dkv_tile(float (&dk_acc)[4][D / 8], float (&dv_acc)[4][D / 8], const float* pt,
                                         const float* st, const float* gs, const float* qs, int tx, int ty, int diag,
                                         const int* sq, const int* sk) {
#pragma unroll 2
    for (int r = 0; r < ATT_BR; r++) {
        float px[4], sx[4], gy[D / 8], qy[D / 8];
        for (int i = 0; i < 4; i++) { px[i] = pt[(ty + 16 * i) * 65 + r]; sx[i] = st[(ty + 16 * i) * 65 + r]; }
        for (int j = 0; j < D / 8; j++) { gy[j] = gs[r * (D + 1) + tx + 8 * j]; qy[j] = qs[r * (D + 1) + tx + 8 * j]; }
        for (int i = 0; i < 4; i++)
            if (!MASKED || pair_seen(r, ty + 16 * i, diag, sq, sk))
                for (int j = 0; j < D / 8; j++) { dv_acc[i][j] += px[i] * gy[j]; dk_acc[i][j] += sx[i] * qy[j]; }
    }
}

// dq += dS K (rows: queries r = ty + 16 i; columns e = tx + 8 j).
template <int D, bool MASKED>
__device__ __forceinline__ void dq_tile(float (&dq_part)[4][D / 8], const float* st, const float* ks, int tx, int ty,
                                        int diag, const int* sq, const int* sk) {
#pragma unroll 2
    for (int c = 0; c < ATT_BC; c++) {
        float sx[4], ky[D / 8];
        for (int i = 0; i < 4; i++) sx[i] = st[c * 65 + ty + 16 * i];
        for (int j = 0; j < D / 8; j++) ky[j] = ks[c * (D + 1) + tx + 8 * j];
        for (int i = 0; i < 4; i++)
            if (!MASKED || pair_seen(ty + 16 * i, c, diag, sq, sk))
                for (int j = 0; j < D / 8; j++) dq_part[i][j] += sx[i] * ky[j];
    }
}

template <int D>
__global__ void __launch_bounds__(ATT_THREADS) attention_forward_v2_kernel(
        float* out, float* lse, const float* q, const float* k, const float* v, const int32_t* segment_ids, int NH,
        int NKV, int Tq, int Tk, int HS) {
    extern __shared__ float smem[];
    float* qs = smem;                          // [64][D + 1]
    float* ks = qs + ATT_BR * (D + 1);         // [64][D + 1]
    float* vs = ks + ATT_BC * (D + 1);         // [64][D + 1]
    float* ps = vs + ATT_BC * (D + 1);         // [64][65]
    int* sq = (int*)(ps + ATT_BR * 65);        // [64] segment ids of the queries
    int* sk = sq + ATT_BR;                     // [64] and of the keys
    int tx = threadIdx.x % 8, ty = threadIdx.x / 8;
    int q0 = (gridDim.x - 1 - blockIdx.x) * ATT_BR;           // heaviest tiles first
    int64_t bh = blockIdx.y, b = bh / NH, h = bh % NH;
    int64_t kv = (b * NKV + h / (NH / NKV)) * (int64_t)Tk * HS;
    const float* qb = q + (bh * Tq + q0) * HS;
    int offset = Tk - Tq;                                      // query r sits at offset + q0 + r
    float scale2 = rsqrtf((float)HS) * LOG2E;                  // scores in log2 units
    const int32_t* seg = segment_ids ? segment_ids + b * Tk : nullptr;   // Tq = Tk with segments
    load_tile<D>(qs, qb, min(ATT_BR, Tq - q0), HS);
    load_seg(sq, seg, q0, Tq);

    float o[4][D / 8], m[4], l[4];
    for (int i = 0; i < 4; i++) {
        m[i] = -INFINITY; l[i] = 0.0f;
        for (int j = 0; j < D / 8; j++) o[i][j] = 0.0f;
    }
    int k_end = min(Tk, offset + q0 + ATT_BR);                 // keys any row of this tile sees
    for (int k0 = 0; k0 < k_end; k0 += ATT_BC) {
        int diag = offset + q0 - k0;                           // key c is visible to row r iff c <= diag + r
        bool masked = diag < ATT_BC - 1;
        __syncthreads();                                       // previous tile fully used
        if (seg) {                                             // skip a tile of other documents
            load_seg(sk, seg, k0, Tk);
            __syncthreads();
            TileDocs docs = tile_docs(sq, sk, diag, min(ATT_BR, Tq - q0), min(ATT_BC, Tk - k0), tx, ty);
            if (!docs.any_seen) continue;
            masked = masked || docs.mixed;
        } else if (k0 == 0) {
            load_seg(sk, nullptr, 0, 0);                       // all 0: pair_seen is causal only
        }
        load_tile<D>(ks, k + kv + (int64_t)k0 * HS, min(ATT_BC, Tk - k0), HS);
        load_tile<D>(vs, v + kv + (int64_t)k0 * HS, min(ATT_BC, Tk - k0), HS);
        __syncthreads();
        float s[4][8];
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 8; j++) s[i][j] = 0.0f;
#pragma unroll 8
        for (int d = 0; d < D; d++) {
            float x[4], y[8];
            for (int i = 0; i < 4; i++) x[i] = qs[(ty + 16 * i) * (D + 1) + d];
            for (int j = 0; j < 8; j++) y[j] = ks[(tx + 8 * j) * (D + 1) + d];
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 8; j++) s[i][j] += x[i] * y[j];
        }
        for (int i = 0; i < 4; i++) {
            int pos = offset + q0 + ty + 16 * i;
            float row_max = -INFINITY;
            for (int j = 0; j < 8; j++) {
                int key = k0 + tx + 8 * j;
                bool seen = key <= pos && key < Tk && sk[tx + 8 * j] == sq[ty + 16 * i];
                s[i][j] = seen ? s[i][j] * scale2 : -INFINITY;
                row_max = fmaxf(row_max, s[i][j]);
            }
            for (int off = 1; off < 8; off <<= 1) row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, off));
            float m_new = fmaxf(m[i], row_max);
            float base = m_new == -INFINITY ? 0.0f : m_new;    // rows with nothing visible yet
            float alpha = exp2f(m[i] - base), row_sum = 0.0f;
            for (int j = 0; j < 8; j++) {
                float p = exp2f(s[i][j] - base);
                row_sum += p;
                ps[(ty + 16 * i) * 65 + tx + 8 * j] = p;
            }
            for (int off = 1; off < 8; off <<= 1) row_sum += __shfl_xor_sync(0xffffffffu, row_sum, off);
            l[i] = l[i] * alpha + row_sum;
            m[i] = m_new;
            for (int j = 0; j < D / 8; j++) o[i][j] *= alpha;
        }
        __syncthreads();
        if (masked) pv_tile<D, true>(o, ps, vs, tx, ty, diag, sq, sk);
        else pv_tile<D, false>(o, ps, vs, tx, ty, diag, sq, sk);
    }
    for (int i = 0; i < 4; i++) {
        int r = ty + 16 * i;
        if (q0 + r >= Tq) continue;
        float inv = 1.0f / l[i];
        float* orow = out + (bh * Tq + q0 + r) * HS;
        for (int j = 0; j < D / 8; j++) {
            int e = tx + 8 * j;
            if (e < HS) orow[e] = o[i][j] * inv;
        }
        // l = 0: every visible score is -inf; the reference's lse is NaN (its max is -inf)
        if (tx == 0) lse[bh * Tq + q0 + r] = l[i] > 0.0f ? (m[i] + log2f(l[i])) / LOG2E : NAN;
    }
}

// D_i = dout_i . out_i, one warp per row.
__global__ void attention_delta_kernel(float* delta, const float* dout, const float* out, int64_t rows, int HS) {
    int64_t row = (int64_t)blockIdx.x * 4 + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    float acc = 0.0f;
    for (int d = lane; d < HS; d += 32) acc += dout[row * HS + d] * out[row * HS + d];
    acc = warp_sum(acc);
    if (lane == 0) delta[row] = acc;
}

template <int D>
__global__ void __launch_bounds__(ATT_THREADS) attention_backward_v2_kernel(
        float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k, const float* v,
        const float* lse, const float* delta, const int32_t* segment_ids, int NH, int NKV, int Tq, int Tk, int HS) {
    extern __shared__ float smem[];
    float* ks = smem;                          // [64 keys][D + 1]
    float* vs = ks + ATT_BC * (D + 1);
    float* qs = vs + ATT_BC * (D + 1);         // [64 queries][D + 1]
    float* gs = qs + ATT_BR * (D + 1);         // dout tile
    float* pt = gs + ATT_BR * (D + 1);         // P^T  [64 keys][65]
    float* st = pt + ATT_BC * 65;              // dS^T [64 keys][65]
    float* lse2 = st + ATT_BC * 65;            // [64] lse in log2 units
    float* dl = lse2 + ATT_BR;                 // [64] D_i
    int* sk = (int*)(dl + ATT_BR);             // [64] segment ids of the keys
    int* sq = sk + ATT_BC;                     // [64] and of the queries
    int tx = threadIdx.x % 8, ty = threadIdx.x / 8;
    int k0 = blockIdx.x * ATT_BC;
    int64_t bh = blockIdx.y, b = bh / NH, h = bh % NH;
    int64_t kv = (b * NKV + h / (NH / NKV)) * (int64_t)Tk * HS;
    int offset = Tk - Tq;
    float scale = rsqrtf((float)HS), scale2 = scale * LOG2E;
    load_tile<D>(ks, k + kv + (int64_t)k0 * HS, min(ATT_BC, Tk - k0), HS);
    load_tile<D>(vs, v + kv + (int64_t)k0 * HS, min(ATT_BC, Tk - k0), HS);
    const int32_t* seg = segment_ids ? segment_ids + b * Tk : nullptr;   // Tq = Tk with segments
    load_seg(sk, seg, k0, Tk);

    float dk_acc[4][D / 8], dv_acc[4][D / 8];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < D / 8; j++) { dk_acc[i][j] = 0.0f; dv_acc[i][j] = 0.0f; }
    int first = max(0, k0 - offset);                           // first query that sees key k0
    for (int q0 = (first / ATT_BR) * ATT_BR; q0 < Tq; q0 += ATT_BR) {
        int diag = offset + q0 - k0;                           // key c is visible to query r iff c <= diag + r
        bool masked = diag < ATT_BC - 1;
        __syncthreads();
        int valid = min(ATT_BR, Tq - q0);
        load_seg(sq, seg, q0, Tq);                             // all 0 without segments
        if (seg) {                                             // skip a tile of other documents
            __syncthreads();
            TileDocs docs = tile_docs(sq, sk, diag, valid, min(ATT_BC, Tk - k0), tx, ty);
            if (!docs.any_seen) continue;
            masked = masked || docs.mixed;
        }
        load_tile<D>(qs, q + (bh * Tq + q0) * HS, valid, HS);
        load_tile<D>(gs, dout + (bh * Tq + q0) * HS, valid, HS);
        if (threadIdx.x < ATT_BR) {
            int r = threadIdx.x;
            lse2[r] = r < valid ? lse[bh * Tq + q0 + r] * LOG2E : 0.0f;
            dl[r] = r < valid ? delta[bh * Tq + q0 + r] : 0.0f;
        }
        __syncthreads();
        // rows: keys c = ty + 16 i; columns: queries r = tx + 8 j
        float p[4][8], dp[4][8];
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 8; j++) { p[i][j] = 0.0f; dp[i][j] = 0.0f; }
#pragma unroll 4
        for (int d = 0; d < D; d++) {
            float kx[4], vx[4], qy[8], gy[8];
            for (int i = 0; i < 4; i++) { kx[i] = ks[(ty + 16 * i) * (D + 1) + d]; vx[i] = vs[(ty + 16 * i) * (D + 1) + d]; }
            for (int j = 0; j < 8; j++) { qy[j] = qs[(tx + 8 * j) * (D + 1) + d]; gy[j] = gs[(tx + 8 * j) * (D + 1) + d]; }
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 8; j++) { p[i][j] += kx[i] * qy[j]; dp[i][j] += vx[i] * gy[j]; }
        }
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 8; j++) {
                int c = ty + 16 * i, r = tx + 8 * j, key = k0 + c;
                bool seen = r < valid && key < Tk && key <= offset + q0 + r && sk[c] == sq[r];
                float pij = seen ? exp2f(p[i][j] * scale2 - lse2[r]) : 0.0f;
                pt[c * 65 + r] = pij;
                st[c * 65 + r] = seen ? pij * (dp[i][j] - dl[r]) : 0.0f;   // not 0 * (NaN - D)
            }
        __syncthreads();
        float dq_part[4][D / 8];
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < D / 8; j++) dq_part[i][j] = 0.0f;
        if (masked) {
            dkv_tile<D, true>(dk_acc, dv_acc, pt, st, gs, qs, tx, ty, diag, sq, sk);
            dq_tile<D, true>(dq_part, st, ks, tx, ty, diag, sq, sk);
        } else {
            dkv_tile<D, false>(dk_acc, dv_acc, pt, st, gs, qs, tx, ty, diag, sq, sk);
            dq_tile<D, false>(dq_part, st, ks, tx, ty, diag, sq, sk);
        }
        for (int i = 0; i < 4; i++) {
            int r = ty + 16 * i;
            if (r >= valid) continue;
            float* dqr = dq + (bh * Tq + q0 + r) * HS;
            for (int j = 0; j < D / 8; j++) {
                int e = tx + 8 * j;
                if (e < HS) atomicAdd(&dqr[e], dq_part[i][j] * scale);
            }
        }
    }
    for (int i = 0; i < 4; i++) {
        int key = k0 + ty + 16 * i;
        if (key >= Tk) continue;
        for (int j = 0; j < D / 8; j++) {
            int e = tx + 8 * j;
            if (e >= HS) continue;
            atomicAdd(&dk[kv + (int64_t)key * HS + e], dk_acc[i][j] * scale);
            atomicAdd(&dv[kv + (int64_t)key * HS + e], dv_acc[i][j]);
        }
    }
}

static size_t forward_smem(int D) { return sizeof(float) * (3 * ATT_BR * (D + 1) + ATT_BR * 65 + 2 * ATT_BR); }
static size_t backward_smem(int D) { return sizeof(float) * (4 * ATT_BR * (D + 1) + 2 * ATT_BC * 65 + 4 * ATT_BR); }

// The ABI's sizes are int64_t; the kernels take int, so every size must fit one (Tq <= Tk;
// Tq = Tk with segment ids).
static int check_sizes(int64_t B, int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk, int64_t HS,
                       const int32_t* segment_ids) {
    if (B <= 0 || NH <= 0 || NKV <= 0 || NH % NKV || Tq <= 0 || Tq > Tk || HS <= 0) return (int)cudaErrorInvalidValue;
    if (segment_ids && Tq != Tk) return (int)cudaErrorInvalidValue;
    if (B * NH > 65535 || Tk > INT32_MAX || HS > INT32_MAX) return (int)cudaErrorInvalidValue;
    return 0;
}

extern "C" {

int attention_forward_v1_naive(float* out, float* lse, const float* q, const float* k, const float* v,
                               const int32_t* segment_ids, int64_t B, int64_t NH, int64_t NKV, int64_t Tq,
                               int64_t Tk, int64_t HS) {
    MG_CHECK((cudaError_t)check_sizes(B, NH, NKV, Tq, Tk, HS, segment_ids));
    if (HS > V1_MAX_HS) return (int)cudaErrorInvalidValue;
    int64_t rows = (int64_t)B * NH * Tq;
    attention_forward_v1_kernel<<<blocks_for(rows, 128), 128>>>(out, lse, q, k, v, segment_ids, NH, NKV, Tq, Tk, HS,
                                                                 rows);
    MG_LAUNCHED();
}

int attention_backward_v1_naive(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                                const float* v, const float* out, const float* lse, const int32_t* segment_ids,
                                int64_t B, int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk, int64_t HS) {
    MG_CHECK((cudaError_t)check_sizes(B, NH, NKV, Tq, Tk, HS, segment_ids));
    if (HS > V1_MAX_HS) return (int)cudaErrorInvalidValue;
    size_t kv_bytes = sizeof(float) * (size_t)B * NKV * Tk * HS;
    MG_CHECK(cudaMemsetAsync(dk, 0, kv_bytes, 0));
    MG_CHECK(cudaMemsetAsync(dv, 0, kv_bytes, 0));
    int64_t rows = (int64_t)B * NH * Tq;
    attention_backward_v1_kernel<<<blocks_for(rows, 128), 128>>>(dq, dk, dv, dout, q, k, v, out, lse, segment_ids,
                                                                  NH, NKV, Tq, Tk, HS, rows);
    MG_LAUNCHED();
}

int attention_forward_v2_flash(float* out, float* lse, const float* q, const float* k, const float* v,
                               const int32_t* segment_ids, int64_t B, int64_t NH, int64_t NKV, int64_t Tq,
                               int64_t Tk, int64_t HS) {
    MG_CHECK((cudaError_t)check_sizes(B, NH, NKV, Tq, Tk, HS, segment_ids));
    if (HS > 128) return attention_forward_v1_naive(out, lse, q, k, v, segment_ids, B, NH, NKV, Tq, Tk, HS);
    dim3 grid((Tq + ATT_BR - 1) / ATT_BR, B * NH);
    if (HS <= 64) {
        MG_CHECK(cudaFuncSetAttribute(attention_forward_v2_kernel<64>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)forward_smem(64)));
        attention_forward_v2_kernel<64><<<grid, ATT_THREADS, forward_smem(64)>>>(out, lse, q, k, v, segment_ids, NH, NKV, Tq, Tk, HS);
    } else {
        MG_CHECK(cudaFuncSetAttribute(attention_forward_v2_kernel<128>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)forward_smem(128)));
        attention_forward_v2_kernel<128><<<grid, ATT_THREADS, forward_smem(128)>>>(out, lse, q, k, v, segment_ids, NH, NKV, Tq, Tk, HS);
    }
    MG_LAUNCHED();
}

/* delta: scratch of B * NH * Tq floats (D_i). */
int attention_backward_v2_flash(float* dq, float* dk, float* dv, float* delta, const float* dout, const float* q,
                                const float* k, const float* v, const float* out, const float* lse,
                                const int32_t* segment_ids, int64_t B, int64_t NH, int64_t NKV, int64_t Tq,
                                int64_t Tk, int64_t HS) {
    MG_CHECK((cudaError_t)check_sizes(B, NH, NKV, Tq, Tk, HS, segment_ids));
    if (HS > 128)
        return attention_backward_v1_naive(dq, dk, dv, dout, q, k, v, out, lse, segment_ids, B, NH, NKV, Tq, Tk, HS);
    int64_t rows = (int64_t)B * NH * Tq;
    size_t kv_bytes = sizeof(float) * (size_t)B * NKV * Tk * HS;
    MG_CHECK(cudaMemsetAsync(dq, 0, sizeof(float) * (size_t)rows * HS, 0));
    MG_CHECK(cudaMemsetAsync(dk, 0, kv_bytes, 0));
    MG_CHECK(cudaMemsetAsync(dv, 0, kv_bytes, 0));
    attention_delta_kernel<<<(unsigned int)((rows + 3) / 4), 128>>>(delta, dout, out, rows, HS);
    MG_CHECK(cudaGetLastError());
    dim3 grid((Tk + ATT_BC - 1) / ATT_BC, B * NH);
    if (HS <= 64) {
        MG_CHECK(cudaFuncSetAttribute(attention_backward_v2_kernel<64>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)backward_smem(64)));
        attention_backward_v2_kernel<64><<<grid, ATT_THREADS, backward_smem(64)>>>(dq, dk, dv, dout, q, k, v, lse, delta, segment_ids, NH, NKV, Tq,
                                                                                      Tk, HS);
    } else {
        MG_CHECK(cudaFuncSetAttribute(attention_backward_v2_kernel<128>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)backward_smem(128)));
        attention_backward_v2_kernel<128><<<grid, ATT_THREADS, backward_smem(128)>>>(dq, dk, dv, dout, q, k, v, lse, delta, segment_ids, NH, NKV, Tq,
                                                                                      Tk, HS);
    }
    MG_LAUNCHED();
}

}  // extern "C"
