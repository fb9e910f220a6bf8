/*
 * paged_attention.c — the two kernels of a paged KV cache: the cache write and decode attention.
 *
 * Specification: paged_cache_write / paged_attention_forward in microgpt/backends/reference.py.
 * Layout (inference/paged.py owns it): each layer's keys live in one pool of NB blocks,
 * k_cache (NB, NKV, BS, HS), v_cache alike; a sequence's position j is in block
 * table[j // BS] at offset j % BS, so a sequence grows by taking a free block, never by copying
 * what it already holds (the concatenating cache copied the whole history every step).
 *
 *   paged_cache_write        row n of k, v (N, NKV, HS) goes to slot s = slots[n]:
 *                            k_cache[s / BS, h, s % BS, :] = k[n, h, :] for every head h.
 *   paged_attention_forward  query n (N, NH, HS) at position p = positions[n] against the keys
 *                            j = 0 .. p of its own block table row block_tables[n] (N, MB):
 *                              S_j = q . k_j / sqrt(HS),  lse = m + log sum_j e^(S_j - m),
 *                              m = max_j S_j,  out = sum_j e^(S_j - lse) v_j
 *                            with query head h reading key/value head h / (NH / NKV).
 *
 * Why one query row per token (not per sequence): a decode step has one row per sequence, a
 * chunk of prefill has one per prompt token, and both mix in one call, each row with its own
 * length; the caller repeats a sequence's table row for each of its tokens (MB int64s each).
 *
 * Threads: every (query, head) pair is independent, so the OpenMP team splits the N * NH pairs,
 * each thread with its own row of S in `work` (MB * BS floats per thread; the binding asks
 * paged_attention_workspace). Each pair's sums run in the same order whatever the batch holds,
 * so a sequence's output does not depend on which other sequences share the call — what lets
 * the scheduler promise the same greedy text alone or in a crowd. Two passes over S as in
 * attention_naive.c keep the reference's NaN/inf behaviour: a NaN key reaches every output
 * of the query that sees it, and nothing else.
 *
 * Built into microgpt.backends._cpu by backends/cpu_build.py; tests: tests/test_paged_attention.py.
 */
#include <math.h>
#include <string.h>
#include <omp.h>
#include "microgpt.h"
#include "common.h"

/* max that keeps a NaN, as numpy.max does */
static float max_keep_nan(float m, float s) { return s > m || s != s ? s : m; }

/* q . k over HS: 16 lanes of partial sums (lane l sums d = l, l + 16, ...), added by halving,
 * then the last HS % 16 terms one by one. A strictly serial sum (one add after another, which
 * is all the compiler may emit without reassociating) waits out the add latency 64 times per
 * key at HS = 64: a quarter of a 32-row decode step at context 140. The order is fixed by HS,
 * so a row's bits still do not depend on its batch. */
typedef float f32x16 __attribute__((vector_size(64), aligned(4)));
typedef float f32x8 __attribute__((vector_size(32), aligned(4)));

static inline __attribute__((always_inline)) float dot(const float* a, const float* b, int64_t n)
{
    int64_t n_vec = n - n % 16;
    f32x16 acc = {0};
    for (int64_t d = 0; d < n_vec; d += 16) acc += *(const f32x16*)(a + d) * *(const f32x16*)(b + d);
    f32x8 lo = {acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7]};
    f32x8 hi = {acc[8], acc[9], acc[10], acc[11], acc[12], acc[13], acc[14], acc[15]};
    f32x8 h = lo + hi;
    float sum = ((h[0] + h[4]) + (h[1] + h[5])) + ((h[2] + h[6]) + (h[3] + h[7]));
    for (int64_t d = n_vec; d < n; d++) sum += a[d] * b[d];
    return sum;
}

/* One (query, head) pair: the two passes described above. */
MG_CLONES static void attend_pair(float* oi, float* row, const float* qi, const float* k_cache, const float* v_cache,
                                  const int64_t* table, int64_t seen, int64_t kv, int64_t NKV, int64_t BS,
                                  int64_t HS, float sqrt_hs)
{
    float m = -INFINITY, sum = 0.0f;
    for (int64_t j = 0; j < seen; j++) {                  /* S_j and their max */
        const float* kj = k_cache + ((table[j / BS] * NKV + kv) * BS + j % BS) * HS;
        row[j] = dot(qi, kj, HS) / sqrt_hs;
        m = max_keep_nan(m, row[j]);
    }
    for (int64_t j = 0; j < seen; j++) sum += expf(row[j] - m);
    const float lse = m + logf(sum);
    memset(oi, 0, (size_t)HS * sizeof *oi);
    for (int64_t j = 0; j < seen; j++) {                  /* out = sum_j P_j v_j */
        const float p = expf(row[j] - lse);
        const float* vj = v_cache + ((table[j / BS] * NKV + kv) * BS + j % BS) * HS;
        for (int64_t d = 0; d < HS; d++) oi[d] += p * vj[d];
    }
}

/* The same pair for the head sizes models use (HS = 32, 64, 128): q and the output row live in
 * VECS registers of 16 floats for the whole pass, where the general loop above reloads q for
 * every key and carries oi through memory, each key's multiply-add waiting on the store of the
 * last (at 32 rows x 6 heads x ~150 keys a step that was a quarter of a "small" step). And each
 * weight is computed once, P_j = e^(S_j - m) / sum, not e^(S_j - lse) again in the last pass:
 * one exp a key instead of two, 16 at a time (common.h's mg_expf, which the compiler vectorizes;
 * libm's expf is one call a key). Same S_j (the same dot) and max; the sum runs in 16 lanes and
 * the output rounds differently from the general loop (e^(S-m)/sum against e^(S-lse)), so the two are
 * not interchangeable bit for bit, but each is one fixed order for any batch. NaN and inf
 * behave as above: a NaN S_j makes m, the sum and every output of its pair NaN. Measured
 * (2026-12-01, 6 heads of 64, positions 100-158, blocks of 16, 2 threads, medians of 300 calls,
 * the builds alternated in separate processes): 32 rows 295-311 us with the general loop, 198-260
 * with this one and libm's expf, 199-230 with mg_expf 16 at a time; one row 26-27 us, 16-18. */
static inline float sum16_attn(f32x16 v) {
    f32x8 lo = {v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]};
    f32x8 hi = {v[8], v[9], v[10], v[11], v[12], v[13], v[14], v[15]};
    f32x8 h = lo + hi;
    return ((h[0] + h[4]) + (h[1] + h[5])) + ((h[2] + h[6]) + (h[3] + h[7]));
}

#define ATTEND_PAIR_FIXED(VECS)                                                                              \
    MG_CLONES static void attend_pair_hs##VECS(float* oi, float* row, const float* qi, const float* k_cache, \
                                               const float* v_cache, const int64_t* table, int64_t seen,   \
                                               int64_t kv, int64_t NKV, int64_t BS, float sqrt_hs) {        \
        enum { HS = 16 * VECS };                                                                             \
        f32x16 qv[VECS], acc[VECS];                                                                          \
        for (int i = 0; i < VECS; i++) {                                                                     \
            qv[i] = *(const f32x16*)(qi + 16 * i);                                                           \
            acc[i] = (f32x16){0};                                                                            \
        }                                                                                                    \
        float m = -INFINITY, sum = 0.0f;                                                                     \
        for (int64_t j0 = 0, blk = 0; j0 < seen; j0 += BS, blk++) {     /* block by block: no divisions */ \
            const float* keys = k_cache + (table[blk] * NKV + kv) * BS * HS;                                 \
            const int64_t end = seen - j0 < BS ? seen - j0 : BS;                                             \
            for (int64_t o = 0; o < end; o++) {                                                              \
                f32x16 d = {0};                                                                              \
                for (int i = 0; i < VECS; i++) d += qv[i] * *(const f32x16*)(keys + o * HS + 16 * i);        \
                f32x8 lo = {d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]};                                 \
                f32x8 hi = {d[8], d[9], d[10], d[11], d[12], d[13], d[14], d[15]};                           \
                f32x8 h = lo + hi;                                                                           \
                row[j0 + o] = (((h[0] + h[4]) + (h[1] + h[5])) + ((h[2] + h[6]) + (h[3] + h[7]))) / sqrt_hs; \
                m = max_keep_nan(m, row[j0 + o]);                                                            \
            }                                                                                                \
        }                                                                                                    \
        f32x16 sums = {0};                        /* the weights, 16 at a time (a padded last group) */ \
        for (int64_t j = 0; j < seen; j += 16) {                                                             \
            float e16[16];                          /* common.h's mg_expf, vectorized here: a NaN stays */ \
            for (int l = 0; l < 16; l++) e16[l] = mg_expf(j + l < seen ? row[j + l] - m : -INFINITY);       \
            sums += *(const f32x16*)e16;                                                                     \
            for (int l = 0; l < 16 && j + l < seen; l++) row[j + l] = e16[l];                                \
        }                                                                                                    \
        sum = sum16_attn(sums);                                                                              \
        for (int64_t j0 = 0, blk = 0; j0 < seen; j0 += BS, blk++) {                                          \
            const float* values = v_cache + (table[blk] * NKV + kv) * BS * HS;                               \
            const int64_t end = seen - j0 < BS ? seen - j0 : BS;                                             \
            for (int64_t o = 0; o < end; o++) {                                                              \
                const float p = row[j0 + o];                                                                 \
                for (int i = 0; i < VECS; i++) acc[i] += p * *(const f32x16*)(values + o * HS + 16 * i);     \
            }                                                                                                \
        }                                                                                                    \
        for (int i = 0; i < VECS; i++) *(f32x16*)(oi + 16 * i) = acc[i] / sum;                               \
    }
ATTEND_PAIR_FIXED(2)
ATTEND_PAIR_FIXED(4)
ATTEND_PAIR_FIXED(8)

void paged_cache_write(float* k_cache, float* v_cache, const float* k, const float* v,
                       const int64_t* slots, int64_t N, int64_t NKV, int64_t NB, int64_t BS, int64_t HS)
{
    (void)NB;                                   /* the binding checked slots < NB * BS */
    for (int64_t n = 0; n < N; n++) {
        const int64_t block = slots[n] / BS, offset = slots[n] % BS;
        for (int64_t h = 0; h < NKV; h++) {
            const int64_t at = ((block * NKV + h) * BS + offset) * HS;
            memcpy(k_cache + at, k + (n * NKV + h) * HS, (size_t)HS * sizeof *k);
            memcpy(v_cache + at, v + (n * NKV + h) * HS, (size_t)HS * sizeof *v);
        }
    }
}

int64_t paged_attention_workspace(int64_t MB, int64_t BS)
{
    return (int64_t)omp_get_max_threads() * MB * BS;
}

int paged_attention_forward(float* out, float* work, int64_t work_len, const float* q,
                            const float* k_cache, const float* v_cache, const int64_t* block_tables,
                            const int64_t* positions, int64_t N, int64_t NH, int64_t NKV, int64_t NB,
                            int64_t BS, int64_t MB, int64_t HS)
{
    (void)NB;
    const int threads = omp_get_max_threads();
    if (work_len < (int64_t)threads * MB * BS) return -1;
    const float sqrt_hs = sqrtf((float)HS);
    const int64_t pairs = N * NH, group = NH / NKV;
    /* fork only when there is enough work: a decode step of one sequence is ~ HS * p flops */
    int64_t touched = 0;
    for (int64_t n = 0; n < N; n++) touched += (positions[n] + 1) * NH * HS;
    #pragma omp parallel for schedule(dynamic, 1) if (touched >= MG_PAR_MIN / 4)
    for (int64_t pair = 0; pair < pairs; pair++) {
        const int64_t n = pair / NH, h = pair % NH, kv = h / group;
        const int64_t seen = positions[n] + 1;
        const int64_t* table = block_tables + n * MB;
        float* row = work + (int64_t)omp_get_thread_num() * MB * BS;
        float* oi = out + (n * NH + h) * HS;
        const float* qi = q + (n * NH + h) * HS;
        if (HS == 64)
            attend_pair_hs4(oi, row, qi, k_cache, v_cache, table, seen, kv, NKV, BS, sqrt_hs);
        else if (HS == 128)
            attend_pair_hs8(oi, row, qi, k_cache, v_cache, table, seen, kv, NKV, BS, sqrt_hs);
        else if (HS == 32)
            attend_pair_hs2(oi, row, qi, k_cache, v_cache, table, seen, kv, NKV, BS, sqrt_hs);
        else
            attend_pair(oi, row, qi, k_cache, v_cache, table, seen, kv, NKV, BS, HS, sqrt_hs);
    }
    return 0;
}
