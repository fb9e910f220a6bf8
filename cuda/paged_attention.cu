/* paged_attention.cu: the two kernels of a paged KV cache, float32 (csrc/paged_attention.c is
   the CPU twin and explains the layout; the specification is backends/reference.py).

     paged_cache_write        one thread per (row n, head h, channel d): k_cache[s / BS, h, s % BS, d]
                              = k[n, h, d] at slot s = slots[n] (v alike). A slot outside
                              [0, NB * BS) sets *bad and writes nothing.
     paged_attention_forward  one thread block per (query n, head h), 128 threads:
                              S_j = q . k_j / sqrt(HS) for j = 0 .. positions[n], kept in dynamic
                              shared memory (the context must fit: MB * BS floats, at most 48 KiB,
                              else cudaErrorInvalidValue), then the block's max m, lse = m + log
                              sum_j e^(S_j - m), and out[d] = sum_j e^(S_j - lse) v_j[d], one
                              channel per thread. Two passes over S keep the reference's NaN/inf
                              behaviour. A table entry outside [0, NB) or a position outside
                              [0, MB * BS) sets *bad; that row is left as it was.
   Every (n, h) runs its sums in one fixed order, whatever else is in the batch. */
#include "common.cuh"
#include "microgpt_cuda.h"

namespace {

constexpr int kThreads = 128;
constexpr int64_t kMaxSharedFloats = 48 * 1024 / 4;

__device__ __forceinline__ float max_keep_nan(float m, float s) { return s > m || s != s ? s : m; }

__global__ void cache_write_kernel(float* k_cache, float* v_cache, int* bad, const float* k, const float* v,
                                   const int64_t* slots, int64_t N, int64_t NKV, int64_t NB, int64_t BS, int64_t HS) {
    MG_FOR(i, N * NKV * HS) {
        const int64_t n = i / (NKV * HS), h = (i / HS) % NKV, d = i % HS;
        const int64_t s = slots[n];
        if (s < 0 || s >= NB * BS) { *bad = 1; continue; }
        const int64_t at = ((s / BS * NKV + h) * BS + s % BS) * HS + d;
        k_cache[at] = k[i];
        v_cache[at] = v[i];
    }
}

__global__ void paged_attention_kernel(float* out, int* bad, const float* q, const float* k_cache,
                                       const float* v_cache, const int64_t* block_tables, const int64_t* positions,
                                       int64_t NH, int64_t NKV, int64_t NB, int64_t BS, int64_t MB, int64_t HS) {
    extern __shared__ float scores[];
    const int64_t n = blockIdx.x / NH, h = blockIdx.x % NH, kv = h / (NH / NKV);
    const int64_t p = positions[n];
    const int64_t* table = block_tables + n * MB;
    if (p < 0 || p >= MB * BS) { if (threadIdx.x == 0) *bad = 1; return; }
    float wrong = 0.0f;                        // every thread reaches the reductions, so no early return
    for (int64_t j = threadIdx.x; j <= p; j += blockDim.x)
        if (table[j / BS] < 0 || table[j / BS] >= NB) wrong = 1.0f;
    if (block_reduce(wrong, true) > 0.0f) { if (threadIdx.x == 0) *bad = 1; return; }
    const float* qi = q + (n * NH + h) * HS;
    const float sqrt_hs = sqrtf((float)HS);
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j <= p; j += blockDim.x) {
        const float* kj = k_cache + ((table[j / BS] * NKV + kv) * BS + j % BS) * HS;
        float dot = 0.0f;
        for (int64_t d = 0; d < HS; d++) dot += qi[d] * kj[d];
        scores[j] = dot / sqrt_hs;
        m = max_keep_nan(m, scores[j]);
    }
    // block_reduce's fmaxf drops NaN, so a NaN score is carried separately
    float has_nan = m != m ? 1.0f : 0.0f;
    has_nan = block_reduce(has_nan, true);
    m = block_reduce(m != m ? -INFINITY : m, true);
    if (has_nan > 0.0f) m = NAN;
    __syncthreads();
    float sum = 0.0f;
    for (int64_t j = threadIdx.x; j <= p; j += blockDim.x) sum += expf(scores[j] - m);
    sum = block_reduce(sum, false);
    const float lse = m + logf(sum);
    for (int64_t d = threadIdx.x; d < HS; d += blockDim.x) {
        float acc = 0.0f;
        for (int64_t j = 0; j <= p; j++) {
            const float* vj = v_cache + ((table[j / BS] * NKV + kv) * BS + j % BS) * HS;
            acc += expf(scores[j] - lse) * vj[d];
        }
        out[(n * NH + h) * HS + d] = acc;
    }
}

}  // namespace

extern "C" {

int paged_cache_write(int* bad, float* k_cache, float* v_cache, const float* k, const float* v,
                      const int64_t* slots, int64_t N, int64_t NKV, int64_t NB, int64_t BS, int64_t HS) {
    if (N * NKV * HS == 0) return 0;
    cache_write_kernel<<<blocks_for(N * NKV * HS, 256), 256>>>(k_cache, v_cache, bad, k, v, slots, N, NKV, NB, BS, HS);
    MG_LAUNCHED();
}

int paged_attention_forward(float* out, int* bad, const float* q, const float* k_cache, const float* v_cache,
                            const int64_t* block_tables, const int64_t* positions, int64_t N, int64_t NH,
                            int64_t NKV, int64_t NB, int64_t BS, int64_t MB, int64_t HS) {
    if (N * NH == 0) return 0;
    if (MB * BS > kMaxSharedFloats) return (int)cudaErrorInvalidValue;
    const size_t shared = (size_t)(MB * BS) * sizeof(float);
    paged_attention_kernel<<<(unsigned int)(N * NH), kThreads, shared>>>(out, bad, q, k_cache, v_cache, block_tables,
                                                                         positions, NH, NKV, NB, BS, MB, HS);
    MG_LAUNCHED();
}

}  // extern "C"
