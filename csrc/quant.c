/* quant.c — weight-only quantized linear layers: out = x W^T + b with W held in 8 or 4 bits.
 *
 * Formats (microgpt/quantize/formats.py owns them; backends/reference.py is the specification):
 *   W[o, c] = d[o, c / group] * q[o, c]   one float scale d per `group` inputs of a row
 *   int8    w_q int8 (OC, C), q in [-127, 127]; group = C (per output channel) or 32 (GGUF Q8_0)
 *   int4    w_q uint8 (OC, C/2): q + 8 in a nibble, two per byte, by 32-element blocks laid
 *           out as GGUF's Q4_0 (byte j of a block: element j low, element j + 16 high), so a
 *           Q4_0 tensor is these bytes with its fp16 scales pulled out. group 32, 64 or 128.
 *
 * Why dequantize-in-registers and not integer dot products. Batch-1 decoding reads every weight
 * once per token and does 2 flops with it: the kernel is bound by memory bandwidth, not by
 * arithmetic (a 768 x 3072 matrix is 9.4 MB in float32, 2.4 MB in int8, 1.2 MB in int4; at
 * ~10-20 GB/s a core reads it in ~0.5 ms, 0.12 ms, 0.06 ms). So the gain is the bytes, and it is
 * all had by widening the weights in registers (int8 -> int32 -> float, FMA with the float32
 * activations). The alternative, quantizing the activations to int8 per token and using
 * integer dot products (AVX-512 VNNI vpdpbusd, llama.cpp's way), multiplies 4x more values per
 * instruction, but that only matters once arithmetic is the bound (prefill), it adds the
 * activations' rounding error on top of the weights' (the result no longer equals "dequantize,
 * then multiply" to float rounding, which is what the tests hold every rung to), and for
 * prefill we already have a better tool: dequantize W once and run matmul.c's packed GEMM
 * (the binding, backends/cpu_quant.py, does that above 8 rows).
 *
 * The ladder (every rung: out (N, OC) = x (N, C) @ W^T + b, any N, b may be NULL):
 *   v1_naive    the definition, scalar C, one thread: per row, per group, sum x * q, times d
 *   v2_avx2     8 lanes: 8 int8 -> 8 int32 -> 8 floats (vpmovsxbd, vcvtdq2ps), FMA with x,
 *               4 independent accumulators (an FMA's latency is 4 cycles: one accumulator would
 *               leave the loop latency-bound at 1/4 of the FMA rate); 4-bit: one 16-byte load
 *               unpacked by masks and shifts into the block's 32 values; the output channels
 *               shared among the OpenMP threads (each weight row is read by one thread, once)
 *   v3_avx512   v2 with 16 lanes: one block of 32 int4 values = 2 vectors
 *   linear_q8_forward / linear_q4_forward: the best rung this CPU supports (threads.c's
 *   microgpt_simd_level, which tests can lower), the portable loop threaded when it has none.
 * Summation order differs between rungs (lanes, then groups), so they agree with the reference
 * to float rounding, not bit for bit.
 */
#include <omp.h>
#include "common.h"
#include "microgpt.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define QX86 1
#endif

#define QBLOCK 32       /* the packing block of int4 (Q4_0's) */

/* one weight row against one input row: sum_g d[g] * sum_{c in g} x[c] q[c] */
typedef float (*row_dot)(const float* x, const void* q, const float* d, int64_t group, int64_t C);

/* ---- portable C -------------------------------------------------------------------------- */
static float dot_q8_scalar(const float* x, const void* qv, const float* d, int64_t group, int64_t C) {
    const int8_t* q = (const int8_t*)qv;
    float total = 0.0f;
    for (int64_t g0 = 0; g0 < C; g0 += group) {
        float s = 0.0f;
        for (int64_t k = 0; k < group; k++) s += x[g0 + k] * (float)q[g0 + k];
        total += s * d[g0 / group];
    }
    return total;
}

static float dot_q4_scalar(const float* x, const void* qv, const float* d, int64_t group, int64_t C) {
    const uint8_t* q = (const uint8_t*)qv;
    float total = 0.0f;
    for (int64_t g0 = 0; g0 < C; g0 += group) {
        float s = 0.0f;
        for (int64_t b0 = g0; b0 < g0 + group; b0 += QBLOCK) {
            const uint8_t* qb = q + b0 / 2;
            for (int j = 0; j < QBLOCK / 2; j++) {
                s += x[b0 + j] * (float)((int)(qb[j] & 0x0F) - 8);
                s += x[b0 + j + QBLOCK / 2] * (float)((int)(qb[j] >> 4) - 8);
            }
        }
        total += s * d[g0 / group];
    }
    return total;
}

#ifdef QX86
/* ---- AVX2 + FMA ---------------------------------------------------------------------------- */
__attribute__((target("avx2,fma")))
static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55));
    return _mm_cvtss_f32(s);
}

/* 8 int8 at q -> 8 floats */
__attribute__((target("avx2,fma")))
static inline __m256 widen8_avx2(const int8_t* q) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)q)));
}

__attribute__((target("avx2,fma")))
static float dot_q8_avx2(const float* x, const void* qv, const float* d, int64_t group, int64_t C) {
    const int8_t* q = (const int8_t*)qv;
    __m256 total = _mm256_setzero_ps();
    float tail_total = 0.0f;
    for (int64_t g0 = 0; g0 < C; g0 += group) {
        const float* xg = x + g0;
        const int8_t* qg = q + g0;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int64_t k = 0;
        for (; k + 32 <= group; k += 32) {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xg + k), widen8_avx2(qg + k), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(xg + k + 8), widen8_avx2(qg + k + 8), a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(xg + k + 16), widen8_avx2(qg + k + 16), a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(xg + k + 24), widen8_avx2(qg + k + 24), a3);
        }
        for (; k + 8 <= group; k += 8)
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xg + k), widen8_avx2(qg + k), a0);
        float tail = 0.0f;
        for (; k < group; k++) tail += xg[k] * (float)qg[k];
        __m256 sum = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
        total = _mm256_fmadd_ps(sum, _mm256_set1_ps(d[g0 / group]), total);
        tail_total += tail * d[g0 / group];
    }
    return hsum256(total) + tail_total;
}

/* 16 bytes of a Q4_0 block -> its 32 values as 16 int8 (low nibbles: elements 0..15) and 16
 * int8 (high nibbles: 16..31), each minus 8 */
__attribute__((target("avx2,fma")))
static inline void unpack_block_sse(const uint8_t* qb, __m128i* low, __m128i* high) {
    const __m128i mask = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
    __m128i bytes = _mm_loadu_si128((const __m128i*)qb);
    *low = _mm_sub_epi8(_mm_and_si128(bytes, mask), eight);
    *high = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(bytes, 4), mask), eight);
}

__attribute__((target("avx2,fma")))
static float dot_q4_avx2(const float* x, const void* qv, const float* d, int64_t group, int64_t C) {
    const uint8_t* q = (const uint8_t*)qv;
    __m256 total = _mm256_setzero_ps();
    for (int64_t g0 = 0; g0 < C; g0 += group) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t b0 = g0; b0 < g0 + group; b0 += QBLOCK) {
            __m128i low, high;
            unpack_block_sse(q + b0 / 2, &low, &high);
            const float* xb = x + b0;
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xb), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(low)), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(xb + 8),
                                 _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(low, 8))), a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(xb + 16), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(high)), a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(xb + 24),
                                 _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(high, 8))), a3);
        }
        __m256 sum = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
        total = _mm256_fmadd_ps(sum, _mm256_set1_ps(d[g0 / group]), total);
    }
    return hsum256(total);
}

/* ---- AVX-512 --------------------------------------------------------------------------------- */
__attribute__((target("avx512f")))
static inline __m512 widen16_avx512(const int8_t* q) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)q)));
}

__attribute__((target("avx512f")))
static float dot_q8_avx512(const float* x, const void* qv, const float* d, int64_t group, int64_t C) {
    const int8_t* q = (const int8_t*)qv;
    __m512 total = _mm512_setzero_ps();
    float tail_total = 0.0f;
    for (int64_t g0 = 0; g0 < C; g0 += group) {
        const float* xg = x + g0;
        const int8_t* qg = q + g0;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int64_t k = 0;
        for (; k + 64 <= group; k += 64) {
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(xg + k), widen16_avx512(qg + k), a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(xg + k + 16), widen16_avx512(qg + k + 16), a1);
            a2 = _mm512_fmadd_ps(_mm512_loadu_ps(xg + k + 32), widen16_avx512(qg + k + 32), a2);
            a3 = _mm512_fmadd_ps(_mm512_loadu_ps(xg + k + 48), widen16_avx512(qg + k + 48), a3);
        }
        for (; k + 16 <= group; k += 16)
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(xg + k), widen16_avx512(qg + k), a0);
        float tail = 0.0f;
        for (; k < group; k++) tail += xg[k] * (float)qg[k];
        __m512 sum = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
        total = _mm512_fmadd_ps(sum, _mm512_set1_ps(d[g0 / group]), total);
        tail_total += tail * d[g0 / group];
    }
    return _mm512_reduce_add_ps(total) + tail_total;
}

__attribute__((target("avx512f")))
static float dot_q4_avx512(const float* x, const void* qv, const float* d, int64_t group, int64_t C) {
    const uint8_t* q = (const uint8_t*)qv;
    const __m128i mask = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
    __m512 total = _mm512_setzero_ps();
    for (int64_t g0 = 0; g0 < C; g0 += group) {
        __m512 a0 = _mm512_setzero_ps(), a1 = a0;
        for (int64_t b0 = g0; b0 < g0 + group; b0 += QBLOCK) {
            __m128i bytes = _mm_loadu_si128((const __m128i*)(q + b0 / 2));
            __m128i low = _mm_sub_epi8(_mm_and_si128(bytes, mask), eight);
            __m128i high = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(bytes, 4), mask), eight);
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + b0), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(low)), a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + b0 + 16), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(high)), a1);
        }
        total = _mm512_fmadd_ps(_mm512_add_ps(a0, a1), _mm512_set1_ps(d[g0 / group]), total);
    }
    return _mm512_reduce_add_ps(total);
}
#endif

/* ---- the driver every rung shares: output channels across threads, rows inside --------------
 * Each thread owns a range of output channels and reads their weight rows once, running every
 * input row (N <= 8 in decoding, all of them in L1) against each. row_bytes: bytes per weight row. */
static void quant_forward(float* out, const float* x, const uint8_t* w_q, int64_t row_bytes,
                          const float* w_scale, const float* b, int64_t group, int64_t N, int64_t C,
                          int64_t OC, row_dot dot, int threaded) {
    int64_t groups = C / group;
    #pragma omp parallel for schedule(static) if (threaded && N * OC * C >= MG_PAR_MIN)
    for (int64_t o = 0; o < OC; o++) {
        const uint8_t* row = w_q + o * row_bytes;
        const float* d = w_scale + o * groups;
        float bias = b ? b[o] : 0.0f;
        for (int64_t n = 0; n < N; n++) out[n * OC + o] = bias + dot(x + n * C, row, d, group, C);
    }
}

#define QUANT_RUNG(kernel, rung, dot, row_bytes, threaded)                                              \
    void kernel##_##rung(float* out, const float* x, const QTYPE_##kernel* w_q, const float* w_scale,     \
                         const float* b, int64_t group, int64_t N, int64_t C, int64_t OC) {               \
        quant_forward(out, x, (const uint8_t*)w_q, row_bytes, w_scale, b, group, N, C, OC, dot, threaded); \
    }
#define QTYPE_linear_q8_forward int8_t
#define QTYPE_linear_q4_forward uint8_t

QUANT_RUNG(linear_q8_forward, v1_naive, dot_q8_scalar, C, 0)
QUANT_RUNG(linear_q4_forward, v1_naive, dot_q4_scalar, C / 2, 0)
#ifdef QX86
QUANT_RUNG(linear_q8_forward, v2_avx2, dot_q8_avx2, C, 1)
QUANT_RUNG(linear_q4_forward, v2_avx2, dot_q4_avx2, C / 2, 1)
QUANT_RUNG(linear_q8_forward, v3_avx512, dot_q8_avx512, C, 1)
QUANT_RUNG(linear_q4_forward, v3_avx512, dot_q4_avx512, C / 2, 1)
#else   /* no x86 SIMD: the rungs exist (one ABI everywhere) and run the portable loop */
QUANT_RUNG(linear_q8_forward, v2_avx2, dot_q8_scalar, C, 1)
QUANT_RUNG(linear_q4_forward, v2_avx2, dot_q4_scalar, C / 2, 1)
QUANT_RUNG(linear_q8_forward, v3_avx512, dot_q8_scalar, C, 1)
QUANT_RUNG(linear_q4_forward, v3_avx512, dot_q4_scalar, C / 2, 1)
#endif

/* production: the best rung for this CPU; the portable loop threaded where there is no SIMD */
void linear_q8_forward(float* out, const float* x, const int8_t* w_q, const float* w_scale,
                       const float* b, int64_t group, int64_t N, int64_t C, int64_t OC) {
    int level = microgpt_simd_level();
    if (level >= 2) linear_q8_forward_v3_avx512(out, x, w_q, w_scale, b, group, N, C, OC);
    else if (level == 1) linear_q8_forward_v2_avx2(out, x, w_q, w_scale, b, group, N, C, OC);
    else quant_forward(out, x, (const uint8_t*)w_q, C, w_scale, b, group, N, C, OC, dot_q8_scalar, 1);
}

void linear_q4_forward(float* out, const float* x, const uint8_t* w_q, const float* w_scale,
                       const float* b, int64_t group, int64_t N, int64_t C, int64_t OC) {
    int level = microgpt_simd_level();
    if (level >= 2) linear_q4_forward_v3_avx512(out, x, w_q, w_scale, b, group, N, C, OC);
    else if (level == 1) linear_q4_forward_v2_avx2(out, x, w_q, w_scale, b, group, N, C, OC);
    else quant_forward(out, x, (const uint8_t*)w_q, C / 2, w_scale, b, group, N, C, OC, dot_q4_scalar, 1);
}

/* ---- dequantization: W as float32 (the prefill path and the input gradient use it) ---------- */
MG_CLONES void dequantize_q8(float* w, const int8_t* w_q, const float* w_scale, int64_t group,
                             int64_t OC, int64_t C) {
    int64_t groups = C / group;
    #pragma omp parallel for schedule(static) if (OC * C >= MG_PAR_MIN)
    for (int64_t o = 0; o < OC; o++)
        for (int64_t g = 0; g < groups; g++) {
            float d = w_scale[o * groups + g];
            const int8_t* q = w_q + o * C + g * group;
            float* dst = w + o * C + g * group;
            for (int64_t k = 0; k < group; k++) dst[k] = d * (float)q[k];
        }
}

MG_CLONES void dequantize_q4(float* w, const uint8_t* w_q, const float* w_scale, int64_t group,
                             int64_t OC, int64_t C) {
    int64_t groups = C / group;
    #pragma omp parallel for schedule(static) if (OC * C >= MG_PAR_MIN)
    for (int64_t o = 0; o < OC; o++)
        for (int64_t b0 = 0; b0 < C; b0 += QBLOCK) {
            float d = w_scale[o * groups + b0 / group];
            const uint8_t* qb = w_q + o * (C / 2) + b0 / 2;
            float* dst = w + o * C + b0;
            for (int j = 0; j < QBLOCK / 2; j++) {
                dst[j] = d * (float)((int)(qb[j] & 0x0F) - 8);
                dst[j + QBLOCK / 2] = d * (float)((int)(qb[j] >> 4) - 8);
            }
        }
}
