/* quant.c — weight-only quantized linear layers: out = x W^T + b with W held in 8 or 4 bits.
 *
 * Formats (microgpt/quantize/formats.py owns them; backends/reference.py is the specification):
 *   W[o, c] = d[o, c / group] * q[o, c]   one float scale d per `group` inputs of a row
 *   int8    w_q int8 (OC, C), q in [-127, 127]; group = C (per output channel) or 32 (GGUF Q8_0)
 *   int4    w_q uint8 (OC, C/2): q + 8 in a nibble, two per byte, by 32-element blocks laid
 *           out as GGUF's Q4_0 (byte j of a block: element j low, element j + 16 high), so a
 *           Q4_0 tensor is these bytes with its fp16 scales pulled out. group 32, 64 or 128.
 *
 * Why integer dot products for decoding (the decoder's path), after dequantize-in-registers.
 * Batch-1 decoding reads every weight once per token and does 2 flops with it, so the first
 * argument is that it is bound by memory bandwidth (a 768 x 3072 matrix is 9.4 MB in float32,
 * 2.4 MB in int8, 1.2 MB in int4) and that widening the weights in registers (int8 -> int32 ->
 * float, FMA with float32 activations: v2-v5) is free. Measured, it is not: the int4 rungs took
 * ~93 ps a weight against int8's 60 for half the bytes (benchmarks/results/quantize.md), because
 * per 32 weights they spend a load, masks, shifts, two widenings and two int -> float
 * conversions before two FMAs: at ~1-2 bytes a cycle of arithmetic the core, not memory, is
 * the bound. v4/v5 remove one cause (each group folded into one running total: a dependency
 * chain of one FMA per 32 weights) by forming every block's product on its own, 4 totals.
 * v6/v7 remove the other: the activation row is rounded to int8 once per call (GGUF Q8_0's
 * rule, per 32-block d = max|x| / 127; every output channel reuses it), and a block of weights
 * meets it in integer multiply-adds, 32 (maddubs + madd, AVX2) or 64 (vpdpbusd, AVX-512 VNNI)
 * products an instruction, summed exactly in int32, no conversions but one per block. This is
 * llama.cpp's Q8_0 / Q4_0 arithmetic. The price is the activations' rounding: the result is no
 * longer "dequantize, then multiply" to float rounding but that of the rounded activations
 * (reference.py's linear_q*_forward_intdot, which the tests hold v6/v7 to exactly), an error of
 * at most d / 2 per activation, ~2^-8 of its block's largest: the recorded run checks that
 * greedy tokens and llama.cpp agreement barely move. Prefill keeps the float path (the binding,
 * backends/cpu_quant.py, dequantizes W once and runs matmul.c's packed GEMM above 8 rows),
 * so training, eval and perplexity see no activation rounding.
 *
 * The ladder (every rung: out (N, OC) = x (N, C) @ W^T + b, any N, b may be NULL):
 *   v1_naive    the definition, scalar C, one thread: per row, per group, sum x * q, times d
 *   v2_avx2     8 lanes: 8 int8 -> 8 int32 -> 8 floats (vpmovsxbd, vcvtdq2ps), FMA with x,
 *               4 independent accumulators (an FMA's latency is 4 cycles: one accumulator would
 *               leave the loop latency-bound at 1/4 of the FMA rate); 4-bit: one 16-byte load
 *               unpacked by masks and shifts into the block's 32 values; the output channels
 *               shared among the OpenMP threads (each weight row is read by one thread, once)
 *   v3_avx512   v2 with 16 lanes: one block of 32 int4 values = 2 vectors
 *   v4_blocks_avx2 / v5_blocks_avx512   at groups of 32 (and int4's 64, 128) each block's
 *               product on its own, folded into 4 running totals in turn (4 short chains)
 *   v6_intdot_avx2  activations to int8 per 32-block, maddubs/madd integer block products
 *   v7_intdot_vnni  v6 with vpdpbusd, two blocks a 512-bit vector (v6 on a CPU without VNNI)
 *   v8_unsigned_vnni  int4: the stored nibbles (q + 8, unsigned) straight into vpdpbusd (or
 *               maddubs), minus 8 x each activation block's sum, computed once per call: no
 *               sign moves per weight block (the comment above v8's code); int8: |a|, the sign
 *               masks and the lane-laid scales made once per call (VNNI). Both take a pair's
 *               scale in one multiply of two loads instead of two broadcasts and a blend
 *   v9_nibble_order_vnni  int4: the activations laid out once per call in the order the stored
 *               nibbles come in, so a pair of weight blocks is one broadcast load, a masked
 *               shift and an AND (v8 also inserts and reorders: two 512-bit shuffles a pair for
 *               every output channel); both int4 and int8 (else v8's int8) prefetch the weight
 *               bytes 3 KiB ahead. No repacking: the same weight bytes
 *   linear_q8_forward_intdot / linear_q4_forward_intdot (decoding): the integer-dot rung this
 *   CPU supports (v9 with VNNI; else int8 v6, int4 v8's AVX2 form)
 *   (threads.c's microgpt_simd_level,
 *   which tests can lower; VNNI from cpuid), the
 *   same arithmetic in portable C, threaded, where there is no SIMD. Shapes the 32-blocks do
 *   not tile (int8 per channel at C % 32 != 0) take the float rungs.
 *   linear_q8_forward / linear_q4_forward (the op: forward passes, eval, training): the best
 *   float rung, v5 / v4, so that ops.quantized_linear stays "dequantize, then multiply".
 * Summation order differs between rungs (lanes, then groups), so they agree with their reference
 * to float rounding, not bit for bit.
 */
#include <omp.h>
#include "common.h"
#include "microgpt.h"
#include <float.h>
#include <math.h>
#include <stdlib.h>

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

/* the integer-dot rungs' definition (v6 / v7 below): one row of activations quantized to int8
 * per 32-block (xq, scale dx[b]) against one weight row; each block's products summed exactly
 * in int32, then scaled by dx[b] * (the block's weight scale) */
typedef float (*row_idot)(const int8_t* xq, const float* dx, const void* q, const float* d, int64_t group,
                          int64_t C);

static float idot_q8_scalar(const int8_t* xq, const float* dx, const void* qv, const float* d, int64_t group,
                            int64_t C) {
    const int8_t* q = (const int8_t*)qv;
    float total = 0.0f;
    for (int64_t b = 0; b < C / QBLOCK; b++) {
        int32_t s = 0;
        for (int k = 0; k < QBLOCK; k++) s += (int32_t)xq[b * QBLOCK + k] * q[b * QBLOCK + k];
        total += (float)s * (dx[b] * d[b / (group / QBLOCK)]);
    }
    return total;
}

static float idot_q4_scalar(const int8_t* xq, const float* dx, const void* qv, const float* d, int64_t group,
                            int64_t C) {
    const uint8_t* q = (const uint8_t*)qv;
    float total = 0.0f;
    for (int64_t b = 0; b < C / QBLOCK; b++) {
        const uint8_t* qb = q + b * (QBLOCK / 2);
        const int8_t* xb = xq + b * QBLOCK;
        int32_t s = 0;
        for (int j = 0; j < QBLOCK / 2; j++)
            s += xb[j] * ((int)(qb[j] & 0x0F) - 8) + xb[j + QBLOCK / 2] * ((int)(qb[j] >> 4) - 8);
        total += (float)s * (dx[b] * d[b / (group / QBLOCK)]);
    }
    return total;
}

/* x (N, C) -> xq int8 (N, C), dx (N, C/32): per 32-block d = max|x| / 127, q = rint(x * (1/d))
 * (Q8_0's rule; backends/reference.py's quantize_activations_q8 is the same arithmetic).
 * A block so small that 1 / d overflows (max|x| < ~1e-36) is taken as zero (d = 0).
 * rint by the 1.5 * 2^23 trick: adding it leaves no fraction bits, so the FPU rounds to nearest
 * even, as np.rint; exact for |v| <= 127.5, and it is plain arithmetic the compiler vectorizes. */
static void quantize_activations_q8(int8_t* xq, float* dx, const float* x, int64_t N, int64_t C) {
    const float magic = 12582912.0f;
    for (int64_t blk = 0; blk < N * (C / QBLOCK); blk++) {
        const float* xb = x + blk * QBLOCK;
        float amax = 0.0f;
        for (int k = 0; k < QBLOCK; k++) amax = fmaxf(amax, fabsf(xb[k]));
        float d = amax / 127.0f, inv = d > 0.0f ? 1.0f / d : 0.0f;
        if (inv > FLT_MAX) d = inv = 0.0f;      /* |x| < ~3e-39: 1 / d overflows; the block is 0 */
        dx[blk] = d;
        for (int k = 0; k < QBLOCK; k++) {
            volatile float shifted = xb[k] * inv + magic;   /* volatile: keep the two roundings apart */
            xq[blk * QBLOCK + k] = (int8_t)(int)(shifted - magic);
        }
    }
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
static float dot_q8_grouped_avx2(const float* x, const void* qv, const float* d, int64_t group, int64_t C) {
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

/* Short groups (Q8_0's and Q4_0's 32) need another loop shape. Summing a group into fresh
 * accumulators and then folding it into one running total (total += d * sum) puts one FMA per
 * group on a single dependency chain: at 32 weights a group that is 4 cycles of latency per 32
 * weights, more than the loads and widening cost, so the loop runs at the chain's pace (measured:
 * the int4 kernel slower than the int8 one per weight, though it reads half the bytes). So for
 * groups of 32 each block's dot product is formed on its own (independent of every other block)
 * and folded, times its scale, into one of 4 running totals in turn: 4 chains, each 1/4 as long.
 * The sum is reordered (per block, then 4 interleaved totals) but is the same sum to rounding. */
__attribute__((target("avx2,fma")))
static inline __m256 block_q8_avx2(const float* x, const int8_t* q) {
    __m256 p = _mm256_mul_ps(_mm256_loadu_ps(x), widen8_avx2(q));
    p = _mm256_fmadd_ps(_mm256_loadu_ps(x + 8), widen8_avx2(q + 8), p);
    p = _mm256_fmadd_ps(_mm256_loadu_ps(x + 16), widen8_avx2(q + 16), p);
    return _mm256_fmadd_ps(_mm256_loadu_ps(x + 24), widen8_avx2(q + 24), p);
}

__attribute__((target("avx2,fma")))
static float dot_q8_g32_avx2(const float* x, const void* qv, const float* d, int64_t group, int64_t C) {
    (void)group;
    const int8_t* q = (const int8_t*)qv;
    __m256 t0 = _mm256_setzero_ps(), t1 = t0, t2 = t0, t3 = t0;
    int64_t blocks = C / QBLOCK, b = 0;
    for (; b + 4 <= blocks; b += 4) {
        t0 = _mm256_fmadd_ps(block_q8_avx2(x + b * 32, q + b * 32), _mm256_set1_ps(d[b]), t0);
        t1 = _mm256_fmadd_ps(block_q8_avx2(x + b * 32 + 32, q + b * 32 + 32), _mm256_set1_ps(d[b + 1]), t1);
        t2 = _mm256_fmadd_ps(block_q8_avx2(x + b * 32 + 64, q + b * 32 + 64), _mm256_set1_ps(d[b + 2]), t2);
        t3 = _mm256_fmadd_ps(block_q8_avx2(x + b * 32 + 96, q + b * 32 + 96), _mm256_set1_ps(d[b + 3]), t3);
    }
    for (; b < blocks; b++)
        t0 = _mm256_fmadd_ps(block_q8_avx2(x + b * 32, q + b * 32), _mm256_set1_ps(d[b]), t0);
    return hsum256(_mm256_add_ps(_mm256_add_ps(t0, t1), _mm256_add_ps(t2, t3)));
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
static float dot_q4_grouped_avx2(const float* x, const void* qv, const float* d, int64_t group, int64_t C) {
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

/* one Q4_0 block (16 bytes at qb, 32 inputs at x): its dot product, unscaled */
__attribute__((target("avx2,fma")))
static inline __m256 block_q4_avx2(const float* x, const uint8_t* qb) {
    __m128i low, high;
    unpack_block_sse(qb, &low, &high);
    __m256 p = _mm256_mul_ps(_mm256_loadu_ps(x), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(low)));
    p = _mm256_fmadd_ps(_mm256_loadu_ps(x + 8), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(low, 8))), p);
    p = _mm256_fmadd_ps(_mm256_loadu_ps(x + 16), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(high)), p);
    return _mm256_fmadd_ps(_mm256_loadu_ps(x + 24),
                           _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(high, 8))), p);
}

/* every block its own product, 4 running totals (see dot_q8_g32_avx2); a group of 32 << shift
 * inputs shares one scale, so block b's scale is d[b >> shift] */
__attribute__((target("avx2,fma")))
static float dot_q4_blocks_avx2(const float* x, const uint8_t* q, const float* d, int shift, int64_t C) {
    __m256 t0 = _mm256_setzero_ps(), t1 = t0, t2 = t0, t3 = t0;
    int64_t blocks = C / QBLOCK, b = 0;
    for (; b + 4 <= blocks; b += 4) {
        t0 = _mm256_fmadd_ps(block_q4_avx2(x + b * 32, q + b * 16), _mm256_set1_ps(d[b >> shift]), t0);
        t1 = _mm256_fmadd_ps(block_q4_avx2(x + b * 32 + 32, q + b * 16 + 16), _mm256_set1_ps(d[(b + 1) >> shift]), t1);
        t2 = _mm256_fmadd_ps(block_q4_avx2(x + b * 32 + 64, q + b * 16 + 32), _mm256_set1_ps(d[(b + 2) >> shift]), t2);
        t3 = _mm256_fmadd_ps(block_q4_avx2(x + b * 32 + 96, q + b * 16 + 48), _mm256_set1_ps(d[(b + 3) >> shift]), t3);
    }
    for (; b < blocks; b++)
        t0 = _mm256_fmadd_ps(block_q4_avx2(x + b * 32, q + b * 16), _mm256_set1_ps(d[b >> shift]), t0);
    return hsum256(_mm256_add_ps(_mm256_add_ps(t0, t1), _mm256_add_ps(t2, t3)));
}
#endif

/* log2(group / 32) when group / 32 is a power of two (32, 64, 128 ...), else -1 */
static inline int block_shift(int64_t group) {
    int64_t per = group / QBLOCK;
    if (per < 1 || group % QBLOCK || (per & (per - 1))) return -1;
    int shift = 0;
    while ((1 << shift) < per) shift++;
    return shift;
}

#ifdef QX86
/* ---- AVX-512 --------------------------------------------------------------------------------- */
__attribute__((target("avx512f")))
static inline __m512 widen16_avx512(const int8_t* q) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)q)));
}

__attribute__((target("avx512f")))
static float dot_q8_grouped_avx512(const float* x, const void* qv, const float* d, int64_t group, int64_t C) {
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
static float dot_q4_grouped_avx512(const float* x, const void* qv, const float* d, int64_t group, int64_t C) {
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
/* the AVX-512 forms of the block loops above (16 lanes: a block is 2 vectors) */
__attribute__((target("avx512f")))
static inline __m512 block_q8_avx512(const float* x, const int8_t* q) {
    return _mm512_fmadd_ps(_mm512_loadu_ps(x + 16), widen16_avx512(q + 16),
                           _mm512_mul_ps(_mm512_loadu_ps(x), widen16_avx512(q)));
}

__attribute__((target("avx512f")))
static float dot_q8_g32_avx512(const float* x, const void* qv, const float* d, int64_t group, int64_t C) {
    (void)group;
    const int8_t* q = (const int8_t*)qv;
    __m512 t0 = _mm512_setzero_ps(), t1 = t0, t2 = t0, t3 = t0;
    int64_t blocks = C / QBLOCK, b = 0;
    for (; b + 4 <= blocks; b += 4) {
        t0 = _mm512_fmadd_ps(block_q8_avx512(x + b * 32, q + b * 32), _mm512_set1_ps(d[b]), t0);
        t1 = _mm512_fmadd_ps(block_q8_avx512(x + b * 32 + 32, q + b * 32 + 32), _mm512_set1_ps(d[b + 1]), t1);
        t2 = _mm512_fmadd_ps(block_q8_avx512(x + b * 32 + 64, q + b * 32 + 64), _mm512_set1_ps(d[b + 2]), t2);
        t3 = _mm512_fmadd_ps(block_q8_avx512(x + b * 32 + 96, q + b * 32 + 96), _mm512_set1_ps(d[b + 3]), t3);
    }
    for (; b < blocks; b++)
        t0 = _mm512_fmadd_ps(block_q8_avx512(x + b * 32, q + b * 32), _mm512_set1_ps(d[b]), t0);
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(t0, t1), _mm512_add_ps(t2, t3)));
}

__attribute__((target("avx512f")))
static inline __m512 block_q4_avx512(const float* x, const uint8_t* qb) {
    const __m128i mask = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
    __m128i bytes = _mm_loadu_si128((const __m128i*)qb);
    __m128i low = _mm_sub_epi8(_mm_and_si128(bytes, mask), eight);
    __m128i high = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(bytes, 4), mask), eight);
    return _mm512_fmadd_ps(_mm512_loadu_ps(x + 16), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(high)),
                           _mm512_mul_ps(_mm512_loadu_ps(x), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(low))));
}

__attribute__((target("avx512f")))
static float dot_q4_blocks_avx512(const float* x, const uint8_t* q, const float* d, int shift, int64_t C) {
    __m512 t0 = _mm512_setzero_ps(), t1 = t0, t2 = t0, t3 = t0;
    int64_t blocks = C / QBLOCK, b = 0;
    for (; b + 4 <= blocks; b += 4) {
        t0 = _mm512_fmadd_ps(block_q4_avx512(x + b * 32, q + b * 16), _mm512_set1_ps(d[b >> shift]), t0);
        t1 = _mm512_fmadd_ps(block_q4_avx512(x + b * 32 + 32, q + b * 16 + 16), _mm512_set1_ps(d[(b + 1) >> shift]), t1);
        t2 = _mm512_fmadd_ps(block_q4_avx512(x + b * 32 + 64, q + b * 16 + 32), _mm512_set1_ps(d[(b + 2) >> shift]), t2);
        t3 = _mm512_fmadd_ps(block_q4_avx512(x + b * 32 + 96, q + b * 16 + 48), _mm512_set1_ps(d[(b + 3) >> shift]), t3);
    }
    for (; b < blocks; b++)
        t0 = _mm512_fmadd_ps(block_q4_avx512(x + b * 32, q + b * 16), _mm512_set1_ps(d[b >> shift]), t0);
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(t0, t1), _mm512_add_ps(t2, t3)));
}

/* v4 / v5's row dots: the block loops where the group allows, else the grouped loops */
static float dot_q8_blocks8(const float* x, const void* q, const float* d, int64_t group, int64_t C) {
    return group == QBLOCK ? dot_q8_g32_avx2(x, q, d, group, C) : dot_q8_grouped_avx2(x, q, d, group, C);
}

static float dot_q4_blocks8(const float* x, const void* q, const float* d, int64_t group, int64_t C) {
    int shift = block_shift(group);
    return shift >= 0 ? dot_q4_blocks_avx2(x, (const uint8_t*)q, d, shift, C) : dot_q4_grouped_avx2(x, q, d, group, C);
}

static float dot_q8_blocks16(const float* x, const void* q, const float* d, int64_t group, int64_t C) {
    return group == QBLOCK ? dot_q8_g32_avx512(x, q, d, group, C) : dot_q8_grouped_avx512(x, q, d, group, C);
}

static float dot_q4_blocks16(const float* x, const void* q, const float* d, int64_t group, int64_t C) {
    int shift = block_shift(group);
    return shift >= 0 ? dot_q4_blocks_avx512(x, (const uint8_t*)q, d, shift, C)
                      : dot_q4_grouped_avx512(x, q, d, group, C);
}

/* ---- v6 / v7: integer dot products against int8 activations --------------------------------
 * One block of 32 weights (int8, or int4 unpacked to int8 q - 8) against the same 32 activations
 * quantized to int8: the 32 products summed exactly in int32, then one float multiply-add by
 * (activation scale x weight scale). u8 x s8 instructions (maddubs, dpbusd) multiply an unsigned
 * by a signed operand, so the signs move onto the weights: |a| * (w * sign a) = a * w. maddubs
 * adds pairs into int16: |a|, |w| <= 127 give at most 2 * 127^2 = 32258 < 32767, no saturation. */
__attribute__((target("avx2,fma")))
static inline __m256 block_int_avx2(const int8_t* xq, __m256i w, __m256 scale, __m256 acc) {
    __m256i a = _mm256_loadu_si256((const __m256i*)xq);
    __m256i pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(a), _mm256_sign_epi8(w, a));
    __m256i sums = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));      /* 8 x int32 */
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, acc);
}

/* one Q4_0 block's 16 bytes -> its 32 values q - 8 as int8, in element order */
__attribute__((target("avx2,fma")))
static inline __m256i unpack_block_avx2(const uint8_t* qb) {
    __m128i low, high;
    unpack_block_sse(qb, &low, &high);
    return _mm256_set_m128i(high, low);
}

/* xq, dx: the activation row quantized per 32-block; block b's weight scale is d[b / per_group],
 * a shift when per_group is a power of two (a 64-bit division per block costs more than the
 * block's whole integer product: measured, it made the integer rungs no faster than v5) */
#define WSCALE(b) (shift >= 0 ? d[(b) >> shift] : d[(b) / per_group])
__attribute__((target("avx2,fma")))
static float idot_q8_avx2(const int8_t* xq, const float* dx, const void* qv, const float* d, int64_t group,
                          int64_t C) {
    const int8_t* q = (const int8_t*)qv;
    int64_t blocks = C / QBLOCK, per_group = group / QBLOCK, b = 0;
    int shift = group == C ? 62 : block_shift(group);     /* per channel: every b >> 62 is 0 */
    __m256 t0 = _mm256_setzero_ps(), t1 = t0;
    for (; b + 2 <= blocks; b += 2) {
        t0 = block_int_avx2(xq + b * 32, _mm256_loadu_si256((const __m256i*)(q + b * 32)),
                            _mm256_set1_ps(dx[b] * WSCALE(b)), t0);
        t1 = block_int_avx2(xq + b * 32 + 32, _mm256_loadu_si256((const __m256i*)(q + b * 32 + 32)),
                            _mm256_set1_ps(dx[b + 1] * WSCALE((b + 1))), t1);
    }
    for (; b < blocks; b++)
        t0 = block_int_avx2(xq + b * 32, _mm256_loadu_si256((const __m256i*)(q + b * 32)),
                            _mm256_set1_ps(dx[b] * WSCALE(b)), t0);
    return hsum256(_mm256_add_ps(t0, t1));
}

__attribute__((target("avx2,fma")))
static float idot_q4_avx2(const int8_t* xq, const float* dx, const void* qv, const float* d, int64_t group,
                          int64_t C) {
    const uint8_t* q = (const uint8_t*)qv;
    int64_t blocks = C / QBLOCK, per_group = group / QBLOCK, b = 0;
    int shift = group == C ? 62 : block_shift(group);     /* per channel: every b >> 62 is 0 */
    __m256 t0 = _mm256_setzero_ps(), t1 = t0;
    for (; b + 2 <= blocks; b += 2) {
        t0 = block_int_avx2(xq + b * 32, unpack_block_avx2(q + b * 16), _mm256_set1_ps(dx[b] * WSCALE(b)), t0);
        t1 = block_int_avx2(xq + b * 32 + 32, unpack_block_avx2(q + b * 16 + 16),
                            _mm256_set1_ps(dx[b + 1] * WSCALE((b + 1))), t1);
    }
    for (; b < blocks; b++)
        t0 = block_int_avx2(xq + b * 32, unpack_block_avx2(q + b * 16), _mm256_set1_ps(dx[b] * WSCALE(b)), t0);
    return hsum256(_mm256_add_ps(t0, t1));
}

/* AVX-512 VNNI: two blocks a vector; vpdpbusd multiplies 64 u8 x s8 pairs and adds each 4 into
 * an int32 lane in one instruction (lanes 0-7: block b, 8-15: block b + 1), no int16 step.
 * AVX-512 has no sign_epi8: the weights are negated under the activations' sign mask. */
#define VNNI_TARGET "avx2,fma,avx512f,avx512bw,avx512vnni"
__attribute__((target(VNNI_TARGET)))
static inline __m512 pair_int_vnni(const int8_t* xq, __m512i w, __m512 scale, __m512 acc) {
    __m512i a = _mm512_loadu_si512((const void*)xq);
    __m512i signed_w = _mm512_mask_sub_epi8(w, _mm512_movepi8_mask(a), _mm512_setzero_si512(), w);
    __m512i sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(a), signed_w);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scale, acc);
}

__attribute__((target(VNNI_TARGET)))
static inline __m512 pair_scale(float s0, float s1) {
    return _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(s0), _mm512_set1_ps(s1));
}

/* two Q4_0 blocks' 32 bytes -> their 64 values q - 8, in element order: the nibbles come out as
 * [b low, b+1 low | b high, b+1 high] by 128-bit lanes, and one lane shuffle puts b's first */
__attribute__((target(VNNI_TARGET)))
static inline __m512i unpack_pair_vnni(const uint8_t* qb) {
    const __m256i mask = _mm256_set1_epi8(0x0F);
    __m256i bytes = _mm256_loadu_si256((const __m256i*)qb);
    __m256i low = _mm256_and_si256(bytes, mask), high = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), mask);
    __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
    both = _mm512_shuffle_i64x2(both, both, _MM_SHUFFLE(3, 1, 2, 0));
    return _mm512_sub_epi8(both, _mm512_set1_epi8(8));
}

__attribute__((target(VNNI_TARGET)))
static float idot_q8_vnni(const int8_t* xq, const float* dx, const void* qv, const float* d, int64_t group,
                          int64_t C) {
    const int8_t* q = (const int8_t*)qv;
    int64_t blocks = C / QBLOCK, per_group = group / QBLOCK, b = 0;
    int shift = group == C ? 62 : block_shift(group);     /* per channel: every b >> 62 is 0 */
    __m512 t0 = _mm512_setzero_ps(), t1 = t0;
    for (; b + 4 <= blocks; b += 4) {
        t0 = pair_int_vnni(xq + b * 32, _mm512_loadu_si512((const void*)(q + b * 32)),
                           pair_scale(dx[b] * WSCALE(b), dx[b + 1] * WSCALE((b + 1))), t0);
        t1 = pair_int_vnni(xq + b * 32 + 64, _mm512_loadu_si512((const void*)(q + b * 32 + 64)),
                           pair_scale(dx[b + 2] * WSCALE((b + 2)), dx[b + 3] * WSCALE((b + 3))), t1);
    }
    float total = _mm512_reduce_add_ps(_mm512_add_ps(t0, t1));
    __m256 tail = _mm256_setzero_ps();
    for (; b < blocks; b++)
        tail = block_int_avx2(xq + b * 32, _mm256_loadu_si256((const __m256i*)(q + b * 32)),
                              _mm256_set1_ps(dx[b] * WSCALE(b)), tail);
    return total + hsum256(tail);
}

__attribute__((target(VNNI_TARGET)))
static float idot_q4_vnni(const int8_t* xq, const float* dx, const void* qv, const float* d, int64_t group,
                          int64_t C) {
    const uint8_t* q = (const uint8_t*)qv;
    int64_t blocks = C / QBLOCK, per_group = group / QBLOCK, b = 0;
    int shift = group == C ? 62 : block_shift(group);     /* per channel: every b >> 62 is 0 */
    __m512 t0 = _mm512_setzero_ps(), t1 = t0;
    for (; b + 4 <= blocks; b += 4) {
        t0 = pair_int_vnni(xq + b * 32, unpack_pair_vnni(q + b * 16),
                           pair_scale(dx[b] * WSCALE(b), dx[b + 1] * WSCALE((b + 1))), t0);
        t1 = pair_int_vnni(xq + b * 32 + 64, unpack_pair_vnni(q + b * 16 + 32),
                           pair_scale(dx[b + 2] * WSCALE((b + 2)), dx[b + 3] * WSCALE((b + 3))), t1);
    }
    float total = _mm512_reduce_add_ps(_mm512_add_ps(t0, t1));
    __m256 tail = _mm256_setzero_ps();
    for (; b < blocks; b++)
        tail = block_int_avx2(xq + b * 32, unpack_block_avx2(q + b * 16), _mm256_set1_ps(dx[b] * WSCALE(b)), tail);
    return total + hsum256(tail);
}

static int has_vnni(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
           && __builtin_cpu_supports("avx512vnni");
}

/* ---- v8: int4 as unsigned nibbles -----------------------------------------------------------
 * v6 / v7 turn each nibble into q - 8 and then, because u8 x s8 instructions want an unsigned
 * operand, move the activations' signs onto the weights (abs, sign / mask-negate): per block
 * four operations that depend on the weights, so they run for every output channel. But a
 * stored nibble u = q + 8 is already unsigned, and
 *     sum_k a_k q_k = sum_k a_k u_k - 8 * sum_k a_k,
 * where sum_k a_k (s_b, the block's activation sum) depends on the activations only: computed
 * once per call, as the activations' rounding is. So the weights go into the instruction as
 * they are (u8), the activations as they are (s8), and the correction enters as the
 * accumulator's starting value: corr holds -s_b in each of the 8 int32 lanes a block's sum is
 * spread over (8 lanes x -s_b = -8 s_b), laid out block after block so that a pair of blocks
 * is one 512-bit load. The integer sum is exactly v6/v7's (|u a| <= 15 * 127: no overflow in
 * maddubs' int16 pairs, 2 * 1905), so v8 computes the same numbers. int8 weights are signed:
 * the same move would need each weight block's own sum, so the int8 v8 rung is v7's. */
__attribute__((target("avx2,fma")))
static inline __m256i nibbles_block_avx2(const uint8_t* qb) {        /* u, element order */
    const __m128i mask = _mm_set1_epi8(0x0F);
    __m128i bytes = _mm_loadu_si128((const __m128i*)qb);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(bytes, 4), mask), _mm_and_si128(bytes, mask));
}

__attribute__((target("avx2,fma")))
static inline __m256 ublock_avx2(const int8_t* xq, const int32_t* corr, const uint8_t* qb, __m256 scale,
                                 __m256 acc) {
    __m256i pairs = _mm256_maddubs_epi16(nibbles_block_avx2(qb), _mm256_loadu_si256((const __m256i*)xq));
    __m256i sums = _mm256_add_epi32(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)),
                                    _mm256_loadu_si256((const __m256i*)corr));
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, acc);
}

/* dxv: the activation scales laid out as corr (dx[b] in each of block b's 8 lanes), so the
 * product's scale dx[b] * d[b] is one load and one multiply by the weight scale */
#define USCALE8(b) _mm256_mul_ps(_mm256_loadu_ps(dxv + (b) * 8), _mm256_set1_ps(WSCALE(b)))
__attribute__((target("avx2,fma")))
static float udot_q4_avx2(const int8_t* xq, const float* dxv, const int32_t* corr, const void* qv, const float* d,
                          int64_t group, int64_t C) {
    const uint8_t* q = (const uint8_t*)qv;
    int64_t blocks = C / QBLOCK, per_group = group / QBLOCK, b = 0;
    int shift = block_shift(group);
    __m256 t0 = _mm256_setzero_ps(), t1 = t0;
    for (; b + 2 <= blocks; b += 2) {
        t0 = ublock_avx2(xq + b * 32, corr + b * 8, q + b * 16, USCALE8(b), t0);
        t1 = ublock_avx2(xq + b * 32 + 32, corr + b * 8 + 8, q + b * 16 + 16, USCALE8(b + 1), t1);
    }
    for (; b < blocks; b++)
        t0 = ublock_avx2(xq + b * 32, corr + b * 8, q + b * 16, USCALE8(b), t0);
    return hsum256(_mm256_add_ps(t0, t1));
}

/* two blocks' 32 bytes -> their 64 nibbles u in element order (unpack_pair_vnni without the - 8) */
__attribute__((target(VNNI_TARGET)))
static inline __m512i nibbles_pair_vnni(const uint8_t* qb) {
    const __m256i mask = _mm256_set1_epi8(0x0F);
    __m256i bytes = _mm256_loadu_si256((const __m256i*)qb);
    __m256i low = _mm256_and_si256(bytes, mask), high = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), mask);
    __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
    return _mm512_shuffle_i64x2(both, both, _MM_SHUFFLE(3, 1, 2, 0));
}

__attribute__((target(VNNI_TARGET)))
static inline __m512 upair_vnni(const int8_t* xq, const int32_t* corr, const uint8_t* qb, __m512 scale, __m512 acc) {
    __m512i sums = _mm512_dpbusd_epi32(_mm512_loadu_si512((const void*)corr), nibbles_pair_vnni(qb),
                                       _mm512_loadu_si512((const void*)xq));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scale, acc);
}

/* a pair's weight scales [d[b] x 8, d[b + 1] x 8]: at group 32 the two adjacent floats in one
 * 64-bit load, spread by one permute (pair_scale's two broadcasts and a blend, v7, cost more);
 * at a group of 64 or more both blocks share one scale: a broadcast */
__attribute__((target(VNNI_TARGET)))
static inline __m512 pair_weight_scale(const float* d, int64_t b, int shift, int64_t per_group) {
    if (shift == 0) {
        const __m512i spread = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        __m128 two = _mm_castpd_ps(_mm_load_sd((const double*)(d + b)));
        return _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(two));
    }
    if (shift > 0) return _mm512_set1_ps(d[b >> shift]);
    return pair_scale(d[b / per_group], d[(b + 1) / per_group]);
}

/* int8 on v8: the weights are signed, so the activations' signs still move onto them per
 * block (mask-negate), but what depends on the activations alone is done once per call: |a|
 * (xa), the sign masks of each pair of blocks (64 bits), and the lane-laid scales (dxv) */
__attribute__((target(VNNI_TARGET)))
static inline float udot_q8_body(const int8_t* xq, const uint8_t* xa, const uint64_t* signs, const float* dxv,
                                 const void* qv, const float* d, int64_t group, int64_t C, int64_t ahead) {
    const int8_t* q = (const int8_t*)qv;
    int64_t blocks = C / QBLOCK, per_group = group / QBLOCK, b = 0;
    int shift = group == C ? 62 : block_shift(group);     /* per channel: every b >> 62 is 0 */
    __m512 t0 = _mm512_setzero_ps(), t1 = t0;
    for (; b + 4 <= blocks; b += 4) {
        for (int half = 0; half < 2; half++) {
            int64_t p = b + 2 * half;
            if (ahead) _mm_prefetch((const char*)(q + p * 32 + ahead), _MM_HINT_T0);
            __m512i w = _mm512_loadu_si512((const void*)(q + p * 32));
            __m512i signed_w = _mm512_mask_sub_epi8(w, (__mmask64)signs[p / 2], _mm512_setzero_si512(), w);
            __m512i sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_loadu_si512((const void*)(xa + p * 32)),
                                               signed_w);
            __m512 scale = _mm512_mul_ps(_mm512_loadu_ps(dxv + p * 8), pair_weight_scale(d, p, shift, per_group));
            if (half == 0) t0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scale, t0);
            else t1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scale, t1);
        }
    }
    float total = _mm512_reduce_add_ps(_mm512_add_ps(t0, t1));
    __m256 tail = _mm256_setzero_ps();
    for (; b < blocks; b++)
        tail = block_int_avx2(xq + b * 32, _mm256_loadu_si256((const __m256i*)(q + b * 32)), USCALE8(b), tail);
    return total + hsum256(tail);
}

__attribute__((target(VNNI_TARGET)))
static float udot_q8_vnni(const int8_t* xq, const uint8_t* xa, const uint64_t* signs, const float* dxv,
                          const void* qv, const float* d, int64_t group, int64_t C) {
    return udot_q8_body(xq, xa, signs, dxv, qv, d, group, C, 0);
}

#ifndef Q8_AHEAD
#define Q8_AHEAD 3072
#endif
__attribute__((target(VNNI_TARGET)))
static float udot_q8_v9(const int8_t* xq, const uint8_t* xa, const uint64_t* signs, const float* dxv,
                        const void* qv, const float* d, int64_t group, int64_t C) {
    return udot_q8_body(xq, xa, signs, dxv, qv, d, group, C, Q8_AHEAD);
}

__attribute__((target(VNNI_TARGET)))
static float udot_q4_vnni(const int8_t* xq, const float* dxv, const int32_t* corr, const void* qv, const float* d,
                          int64_t group, int64_t C) {
    const uint8_t* q = (const uint8_t*)qv;
    int64_t blocks = C / QBLOCK, per_group = group / QBLOCK, b = 0;
    int shift = block_shift(group);
    __m512 t0 = _mm512_setzero_ps(), t1 = t0;
    for (; b + 4 <= blocks; b += 4) {
        t0 = upair_vnni(xq + b * 32, corr + b * 8, q + b * 16,
                        _mm512_mul_ps(_mm512_loadu_ps(dxv + b * 8), pair_weight_scale(d, b, shift, per_group)), t0);
        t1 = upair_vnni(xq + b * 32 + 64, corr + b * 8 + 16, q + b * 16 + 32,
                        _mm512_mul_ps(_mm512_loadu_ps(dxv + b * 8 + 16), pair_weight_scale(d, b + 2, shift, per_group)),
                        t1);
    }
    float total = _mm512_reduce_add_ps(_mm512_add_ps(t0, t1));
    __m256 tail = _mm256_setzero_ps();
    for (; b < blocks; b++)
        tail = ublock_avx2(xq + b * 32, corr + b * 8, q + b * 16, USCALE8(b), tail);
    return total + hsum256(tail);
}

/* ---- v9: int4, the activations in the weights' nibble order ---------------------------------
 * v8's pair of blocks spends two 512-bit shuffles a pair for every output channel (insert the
 * high nibbles' half, then reorder the 128-bit quarters into element order), because the 32
 * stored bytes of blocks b, b+1 hold, as low nibbles, b's elements 0-15 then b+1's 0-15, and as
 * high nibbles b's 16-31 then b+1's 16-31. The order only has to agree between the two
 * operands of vpdpbusd, and the activations are one row per call: v9 lays each pair of
 * activation blocks out in the nibbles' order once per call (xq: [b 0-15, b+1 0-15, b 16-31,
 * b+1 16-31]; the lane-laid corr and dxv the same way: int32 lanes 0-3 and 8-11 are block b's,
 * 4-7 and 12-15 block b+1's), so the weights need no reordering at all: one 32-byte load
 * broadcast to both halves, the upper half's 16-bit words shifted right by 4 (a masked shift),
 * one AND: two operations instead of v8's five. Each int32 lane still sums the same 4
 * products as v8's (only the lanes' places move), so the integer sums are v8's exactly; the
 * float totals differ by the order of the final lane sum. Blocks past the last whole group of
 * 4 (the tail) keep element order and v8's AVX2 block step. The weight bytes are unchanged:
 * nothing is repacked, the checkpoint and GGUF bytes are what the kernel reads.
 * And a software prefetch, Q4_AHEAD / Q8_AHEAD bytes ahead of the weight stream (one cache line
 * an iteration, as fast as the loop eats them; rows are contiguous, so it runs on into the next
 * rows). A decoded GPT-2-124M token reads ~90 MB of weights, three times the 32 MiB L3, so in
 * the decoder every weight comes from memory, where the hardware prefetcher alone left the
 * loop waiting: from memory (40 different 3072 x 768 int4 matrices in turn, 1 and 2 threads)
 * v9 without it was 3-5 % faster than v8, with it 22 % (105-108 us against 134-140); the
 * 38.6 M-weight int8 head (v8 with the prefetch, as int8 v9) 1.89 ms against 2.34 (medians of
 * 30). 768 bytes ahead did nothing on the head, 3 KiB and 6 KiB did alike on int4: 3 KiB. */
__attribute__((target(VNNI_TARGET)))
static inline __m512i nibbles_pair_v9(const uint8_t* qb) {
    __m512i both = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)qb));
    both = _mm512_mask_srli_epi16(both, (__mmask32)0xFFFF0000u, both, 4);
    return _mm512_and_si512(both, _mm512_set1_epi8(0x0F));
}

/* the pair's weight scales in v9's lane order: [d[b] x 4, d[b+1] x 4, d[b] x 4, d[b+1] x 4] */
__attribute__((target(VNNI_TARGET)))
static inline __m512 pair_weight_scale_v9(const float* d, int64_t b, int shift, int64_t per_group) {
    if (shift == 0) {
        const __m512i spread = _mm512_set_epi32(1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0);
        __m128 two = _mm_castpd_ps(_mm_load_sd((const double*)(d + b)));
        return _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(two));
    }
    if (shift > 0) return _mm512_set1_ps(d[b >> shift]);
    return _mm512_mask_blend_ps(0xF0F0, _mm512_set1_ps(d[b / per_group]), _mm512_set1_ps(d[(b + 1) / per_group]));
}

__attribute__((target(VNNI_TARGET)))
static inline __m512 upair_v9(const int8_t* xq, const int32_t* corr, const uint8_t* qb, __m512 scale, __m512 acc) {
    __m512i sums = _mm512_dpbusd_epi32(_mm512_loadu_si512((const void*)corr), nibbles_pair_v9(qb),
                                       _mm512_loadu_si512((const void*)xq));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scale, acc);
}

#ifndef Q4_AHEAD
#define Q4_AHEAD 3072
#endif
/* xq, dxv, corr: one activation row in v9's order (v9_activation_order) */
__attribute__((target(VNNI_TARGET)))
static float udot_q4_v9(const int8_t* xq, const float* dxv, const int32_t* corr, const void* qv, const float* d,
                        int64_t group, int64_t C) {
    const uint8_t* q = (const uint8_t*)qv;
    int64_t blocks = C / QBLOCK, per_group = group / QBLOCK, b = 0;
    int shift = block_shift(group);
    __m512 t0 = _mm512_setzero_ps(), t1 = t0;
    for (; b + 4 <= blocks; b += 4) {
        _mm_prefetch((const char*)(q + b * 16 + Q4_AHEAD), _MM_HINT_T0);
        t0 = upair_v9(xq + b * 32, corr + b * 8, q + b * 16,
                      _mm512_mul_ps(_mm512_loadu_ps(dxv + b * 8), pair_weight_scale_v9(d, b, shift, per_group)), t0);
        t1 = upair_v9(xq + b * 32 + 64, corr + b * 8 + 16, q + b * 16 + 32,
                      _mm512_mul_ps(_mm512_loadu_ps(dxv + b * 8 + 16), pair_weight_scale_v9(d, b + 2, shift, per_group)),
                      t1);
    }
    float total = _mm512_reduce_add_ps(_mm512_add_ps(t0, t1));
    __m256 tail = _mm256_setzero_ps();
    for (; b < blocks; b++)
        tail = ublock_avx2(xq + b * 32, corr + b * 8, q + b * 16, USCALE8(b), tail);
    return total + hsum256(tail);
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
QUANT_RUNG(linear_q8_forward, v2_avx2, dot_q8_grouped_avx2, C, 1)
QUANT_RUNG(linear_q4_forward, v2_avx2, dot_q4_grouped_avx2, C / 2, 1)
QUANT_RUNG(linear_q8_forward, v3_avx512, dot_q8_grouped_avx512, C, 1)
QUANT_RUNG(linear_q4_forward, v3_avx512, dot_q4_grouped_avx512, C / 2, 1)
QUANT_RUNG(linear_q8_forward, v4_blocks_avx2, dot_q8_blocks8, C, 1)
QUANT_RUNG(linear_q4_forward, v4_blocks_avx2, dot_q4_blocks8, C / 2, 1)
QUANT_RUNG(linear_q8_forward, v5_blocks_avx512, dot_q8_blocks16, C, 1)
QUANT_RUNG(linear_q4_forward, v5_blocks_avx512, dot_q4_blocks16, C / 2, 1)
#else   /* no x86 SIMD: the rungs exist (one ABI everywhere) and run the portable loop */
QUANT_RUNG(linear_q8_forward, v2_avx2, dot_q8_scalar, C, 1)
QUANT_RUNG(linear_q4_forward, v2_avx2, dot_q4_scalar, C / 2, 1)
QUANT_RUNG(linear_q8_forward, v3_avx512, dot_q8_scalar, C, 1)
QUANT_RUNG(linear_q4_forward, v3_avx512, dot_q4_scalar, C / 2, 1)
QUANT_RUNG(linear_q8_forward, v4_blocks_avx2, dot_q8_scalar, C, 1)
QUANT_RUNG(linear_q4_forward, v4_blocks_avx2, dot_q4_scalar, C / 2, 1)
QUANT_RUNG(linear_q8_forward, v5_blocks_avx512, dot_q8_scalar, C, 1)
QUANT_RUNG(linear_q4_forward, v5_blocks_avx512, dot_q4_scalar, C / 2, 1)
#endif

/* When the integer-dot driver forks. MG_PAR_MIN (common.h: 128 Ki values) was set for float
 * kernels; an integer-dot weight costs ~0.06 ns of one core (int4 "small" layers: 384 x 384 in
 * ~10 us), so at that threshold a decoding product of 150-600 Ki weights (10-40 us of work)
 * paid a parallel region for it: waking the sleeping worker (OMP_WAIT_POLICY=PASSIVE, what the
 * decoder runs under) costs ~10 us on an idle 2-core VM and more under load, where the worker
 * waits for a core. Measured on the "small" shape at 2 threads, 2 threads were slower than 1
 * for every layer under load. The same held on GPT-2-124M's int4 layers (768 x 2304 / 3072,
 * 1.8-2.4 Mi weights, 70-85 us of v9 work): forked at 1 Mi, a 128-token int4 decode ran 106-107
 * tokens/s at 2 threads against 117-122 at 1 (two runs, load 2-3), and v9's micro-timing of
 * each layer was 8-15 % slower at 2 threads than at 1. So the integer rungs fork from 4 Mi
 * weights (~200 us of work): a single product that big (GPT-2-124M's LM head, 38.6 M weights,
 * ~2 ms; any batched call) is threaded, the blocks' layers of both shapes run on one core. The
 * price on an idle machine, where the second core is free: those layers lose their ~1.7x at 2
 * threads, ~1.5 ms a GPT-2-124M token at most; on the shared machine this runs on, the worker
 * rarely found a free core in time.
 * That price is the sleeping worker's wake-up. The decoding commands (generate, chat, serve:
 * cli.openmp_environment) let idle workers spin GOMP_SPINCOUNT iterations before they sleep, so
 * a fork there costs a microsecond or two, and the threshold drops to 256 Ki weights: every
 * layer of both shapes forks. Measured in one full bench_quantize run each (2026-12-01, load
 * ~1.5, spin 20,000): GPT-2-124M int4 143 -> 160 tokens/s, "small" int4 890 -> 1031. Read once,
 * from the environment libgomp itself read at start-up. */
#define QUANT_INT_PAR_MIN_SLEEPING (1L << 22)
#define QUANT_INT_PAR_MIN_SPINNING (1L << 18)
static long quant_int_par_min_value = -1;
static long quant_int_par_min(void) {
    if (quant_int_par_min_value < 0) {
        const char *spin = getenv("GOMP_SPINCOUNT");
        quant_int_par_min_value = (spin && atol(spin) > 0) ? QUANT_INT_PAR_MIN_SPINNING
                                                           : QUANT_INT_PAR_MIN_SLEEPING;
    }
    return quant_int_par_min_value;
}
#define QUANT_INT_PAR_MIN (quant_int_par_min())
/* ... and hands the output channels out in chunks of OC / 16 rows (at least 32) as the threads
 * ask (dynamic), not in one half each (static): on a shared machine one thread of the two is
 * often off its core for a while, and a static half then waits for it at the region's end,
 * while with chunks the thread that runs takes the rest (each row is still one thread's, so the
 * result does not depend on the split). llama.cpp's matrix products hand out chunks the same
 * way. The chunks were 32 rows until 2026-12-01; that cut each thread's weight stream into
 * 12-24 KB pieces at addresses the other thread had skipped, and from memory the integer rungs
 * then streamed at ~11 GB/s on one thread and barely more on two, against 15-25 GB/s of the
 * float rows kernel (its static halves). Measured, 40 different 3072 x 768 matrices in turn
 * (from memory), 2 threads, the builds alternated in separate processes, medians: int4 v9
 * 76-87 us with chunks of 32, 48-70 static halves, 50-61 chunks of OC / 8; int8 g32 116-130,
 * 80-93, 80-97. A 128-token GPT-2-124M int4 decode: 136-167 tokens/s with chunks of 32,
 * 185-228 with OC / 8 and 202-224 with OC / 16 (two runs each; "small", cache-resident,
 * moved +-15 % run to run with no order between them). OC / 16 keeps 16 pieces to share when
 * a thread stalls. Tried and dropped: four weight rows against one load of the activation side
 * (xq, corr, dxv) per pair of blocks: 132 us against v8's 114 on a 3072 x 768 int4 product from
 * memory, 1 thread (the loads were not the bound). */
#define QUANT_INT_CHUNK 32
static inline int64_t quant_int_chunk(int64_t OC) {
    int64_t rows = OC / 16;
    return rows < QUANT_INT_CHUNK ? QUANT_INT_CHUNK : rows;
}

/* The integer-dot driver: quantize the N activation rows once (a few us; every output channel
 * reuses them), then quant_forward's loop with an integer row dot. Shapes the 32-blocks do not
 * tile (C or group not a multiple of 32: only int8 per channel at odd C) run `fallback`, the
 * float rung, as does an allocation failure. Returns nothing; out as quant_forward's. */
static void quant_forward_int(float* out, const float* x, const uint8_t* w_q, int64_t row_bytes,
                              const float* w_scale, const float* b, int64_t group, int64_t N, int64_t C,
                              int64_t OC, row_idot dot, row_dot fallback) {
    int8_t* xq = NULL;
    float* dx = NULL;
    if (C % QBLOCK == 0 && group % QBLOCK == 0 && N > 0) {
        xq = (int8_t*)malloc((size_t)(N * C));
        dx = (float*)malloc(sizeof(float) * (size_t)(N * (C / QBLOCK)));
    }
    if (!xq || !dx) {
        free(xq);
        free(dx);
        quant_forward(out, x, w_q, row_bytes, w_scale, b, group, N, C, OC, fallback, 1);
        return;
    }
    quantize_activations_q8(xq, dx, x, N, C);
    int64_t groups = C / group, blocks = C / QBLOCK;
    #pragma omp parallel for schedule(dynamic, quant_int_chunk(OC)) if (N * OC * C >= QUANT_INT_PAR_MIN)
    for (int64_t o = 0; o < OC; o++) {
        const uint8_t* row = w_q + o * row_bytes;
        const float* d = w_scale + o * groups;
        float bias = b ? b[o] : 0.0f;
        for (int64_t n = 0; n < N; n++) out[n * OC + o] = bias + dot(xq + n * C, dx + n * blocks, row, d, group, C);
    }
    free(xq);
    free(dx);
}

#ifdef QX86
#define IDOT_AVX2_Q8 idot_q8_avx2
#define IDOT_AVX2_Q4 idot_q4_avx2
#define FLOAT_AVX2_Q8 dot_q8_blocks8
#define FLOAT_AVX2_Q4 dot_q4_blocks8
#else
#define IDOT_AVX2_Q8 idot_q8_scalar
#define IDOT_AVX2_Q4 idot_q4_scalar
#define FLOAT_AVX2_Q8 dot_q8_scalar
#define FLOAT_AVX2_Q4 dot_q4_scalar
#endif

void linear_q8_forward_v6_intdot_avx2(float* out, const float* x, const int8_t* w_q, const float* w_scale,
                                      const float* b, int64_t group, int64_t N, int64_t C, int64_t OC) {
    quant_forward_int(out, x, (const uint8_t*)w_q, C, w_scale, b, group, N, C, OC, IDOT_AVX2_Q8, FLOAT_AVX2_Q8);
}

void linear_q4_forward_v6_intdot_avx2(float* out, const float* x, const uint8_t* w_q, const float* w_scale,
                                      const float* b, int64_t group, int64_t N, int64_t C, int64_t OC) {
    quant_forward_int(out, x, w_q, C / 2, w_scale, b, group, N, C, OC, IDOT_AVX2_Q4, FLOAT_AVX2_Q4);
}

/* v7 needs AVX-512 VNNI (+BW); on a CPU without it, it is v6 */
void linear_q8_forward_v7_intdot_vnni(float* out, const float* x, const int8_t* w_q, const float* w_scale,
                                      const float* b, int64_t group, int64_t N, int64_t C, int64_t OC) {
#ifdef QX86
    if (has_vnni()) {
        quant_forward_int(out, x, (const uint8_t*)w_q, C, w_scale, b, group, N, C, OC, idot_q8_vnni,
                          dot_q8_blocks16);
        return;
    }
#endif
    linear_q8_forward_v6_intdot_avx2(out, x, w_q, w_scale, b, group, N, C, OC);
}

void linear_q4_forward_v7_intdot_vnni(float* out, const float* x, const uint8_t* w_q, const float* w_scale,
                                      const float* b, int64_t group, int64_t N, int64_t C, int64_t OC) {
#ifdef QX86
    if (has_vnni()) {
        quant_forward_int(out, x, w_q, C / 2, w_scale, b, group, N, C, OC, idot_q4_vnni, dot_q4_blocks16);
        return;
    }
#endif
    linear_q4_forward_v6_intdot_avx2(out, x, w_q, w_scale, b, group, N, C, OC);
}

/* v8's driver: quant_forward_int's, plus each activation block's correction (v8's comment) */
typedef float (*row_udot)(const int8_t* xq, const float* dxv, const int32_t* corr, const void* q, const float* d,
                          int64_t group, int64_t C);

/* v9's activation order (its comment): within each row, the pairs of blocks that the main loop
 * takes (those before the last whole group of 4 blocks ends) get their two 16-value halves
 * interleaved, in xq and in the 8-lane corr / dxv alike; the tail stays in element order */
static void v9_activation_order(int8_t* xq, int32_t* corr, float* dxv, int64_t N, int64_t C) {
    int64_t blocks = C / QBLOCK, paired = blocks / 4 * 4;
    for (int64_t n = 0; n < N; n++)
        for (int64_t p = 0; p < paired; p += 2) {
            int8_t* a = xq + n * C + p * QBLOCK;
            int32_t* c = corr + (n * blocks + p) * 8;
            float* s = dxv + (n * blocks + p) * 8;
            int8_t tmp[64];
            int32_t ctmp[16];
            float stmp[16];
            for (int k = 0; k < 16; k++) {
                tmp[k] = a[k];                   /* b 0-15 */
                tmp[16 + k] = a[32 + k];         /* b+1 0-15 */
                tmp[32 + k] = a[16 + k];         /* b 16-31 */
                tmp[48 + k] = a[48 + k];         /* b+1 16-31 */
            }
            for (int lane = 0; lane < 16; lane++) {     /* lanes 0-3, 8-11: b; 4-7, 12-15: b+1 */
                int from = (lane & 4) ? 8 + (lane & 3) : (lane & 3);
                ctmp[lane] = c[from];
                stmp[lane] = s[from];
            }
            for (int k = 0; k < 64; k++) a[k] = tmp[k];
            for (int lane = 0; lane < 16; lane++) {
                c[lane] = ctmp[lane];
                s[lane] = stmp[lane];
            }
        }
}

static void quant_forward_u4(float* out, const float* x, const uint8_t* w_q, const float* w_scale, const float* b,
                             int64_t group, int64_t N, int64_t C, int64_t OC, row_udot dot, int nibble_order) {
    int64_t blocks = C / QBLOCK, groups = C / group;
    int8_t* xq = (int8_t*)malloc((size_t)(N * C));
    float* dx = (float*)malloc(sizeof(float) * (size_t)(N * blocks));
    int32_t* corr = (int32_t*)malloc(sizeof(int32_t) * (size_t)(N * blocks * 8));
    float* dxv = (float*)malloc(sizeof(float) * (size_t)(N * blocks * 8));
    if (!xq || !dx || !corr || !dxv || N == 0) {
        free(xq);
        free(dx);
        free(corr);
        free(dxv);
        if (N > 0) linear_q4_forward_v6_intdot_avx2(out, x, w_q, w_scale, b, group, N, C, OC);
        return;
    }
    quantize_activations_q8(xq, dx, x, N, C);
    for (int64_t blk = 0; blk < N * blocks; blk++) {       /* per activation block: -sum, scale x 8 lanes */
        int32_t sum = 0;
        for (int k = 0; k < QBLOCK; k++) sum += xq[blk * QBLOCK + k];
        for (int lane = 0; lane < 8; lane++) {
            corr[blk * 8 + lane] = -sum;
            dxv[blk * 8 + lane] = dx[blk];
        }
    }
    if (nibble_order) v9_activation_order(xq, corr, dxv, N, C);
    #pragma omp parallel for schedule(dynamic, quant_int_chunk(OC)) if (N * OC * C >= QUANT_INT_PAR_MIN)
    for (int64_t o = 0; o < OC; o++) {
        const uint8_t* row = w_q + o * (C / 2);
        const float* d = w_scale + o * groups;
        float bias = b ? b[o] : 0.0f;
        for (int64_t n = 0; n < N; n++)
            out[n * OC + o] = bias + dot(xq + n * C, dxv + n * blocks * 8, corr + n * blocks * 8, row, d, group, C);
    }
    free(xq);
    free(dx);
    free(corr);
    free(dxv);
}

#ifdef QX86
/* int8 v8's driver: quant_forward_int's, plus |a|, the pairs' sign masks and dxv (above) */
typedef float (*row_q8dot)(const int8_t* xq, const uint8_t* xa, const uint64_t* signs, const float* dxv,
                          const void* qv, const float* d, int64_t group, int64_t C);
static void quant_forward_q8v8(float* out, const float* x, const int8_t* w_q, const float* w_scale, const float* b,
                               int64_t group, int64_t N, int64_t C, int64_t OC, row_q8dot dot) {
    int64_t blocks = C / QBLOCK, groups = C / group, pairs = (blocks + 1) / 2;
    int8_t* xq = (int8_t*)malloc((size_t)(N * C));
    uint8_t* xa = (uint8_t*)malloc((size_t)(N * C));
    float* dx = (float*)malloc(sizeof(float) * (size_t)(N * blocks));
    float* dxv = (float*)malloc(sizeof(float) * (size_t)(N * blocks * 8));
    uint64_t* signs = (uint64_t*)calloc((size_t)(N * pairs), sizeof(uint64_t));
    if (!xq || !xa || !dx || !dxv || !signs || N == 0 || C % QBLOCK || group % QBLOCK) {
        free(xq);
        free(xa);
        free(dx);
        free(dxv);
        free(signs);
        if (N > 0) linear_q8_forward_v7_intdot_vnni(out, x, w_q, w_scale, b, group, N, C, OC);
        return;
    }
    quantize_activations_q8(xq, dx, x, N, C);
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < C; k++) {
            int8_t v = xq[n * C + k];
            xa[n * C + k] = (uint8_t)(v < 0 ? -v : v);
            if (v < 0) signs[n * pairs + k / 64] |= 1ULL << (k % 64);
        }
    for (int64_t blk = 0; blk < N * blocks; blk++)
        for (int lane = 0; lane < 8; lane++) dxv[blk * 8 + lane] = dx[blk];
    #pragma omp parallel for schedule(dynamic, quant_int_chunk(OC)) if (N * OC * C >= QUANT_INT_PAR_MIN)
    for (int64_t o = 0; o < OC; o++) {
        const int8_t* row = w_q + o * C;
        const float* d = w_scale + o * groups;
        float bias = b ? b[o] : 0.0f;
        for (int64_t n = 0; n < N; n++)
            out[n * OC + o] = bias + dot(xq + n * C, xa + n * C, signs + n * pairs, dxv + n * blocks * 8, row, d,
                                                  group, C);
    }
    free(xq);
    free(xa);
    free(dx);
    free(dxv);
    free(signs);
}
#endif

/* v8: int4 with unsigned nibbles (VNNI, else the AVX2 maddubs form; v6 where there is no x86
 * SIMD); int8: the activation-side work of v7 hoisted out of the weight loop (VNNI; else v6) */
void linear_q8_forward_v8_unsigned_vnni(float* out, const float* x, const int8_t* w_q, const float* w_scale,
                                        const float* b, int64_t group, int64_t N, int64_t C, int64_t OC) {
#ifdef QX86
    if (has_vnni()) {
        quant_forward_q8v8(out, x, w_q, w_scale, b, group, N, C, OC, udot_q8_vnni);
        return;
    }
#endif
    linear_q8_forward_v6_intdot_avx2(out, x, w_q, w_scale, b, group, N, C, OC);
}

void linear_q4_forward_v8_unsigned_vnni(float* out, const float* x, const uint8_t* w_q, const float* w_scale,
                                        const float* b, int64_t group, int64_t N, int64_t C, int64_t OC) {
#ifdef QX86
    quant_forward_u4(out, x, w_q, w_scale, b, group, N, C, OC, has_vnni() ? udot_q4_vnni : udot_q4_avx2, 0);
#else
    linear_q4_forward_v6_intdot_avx2(out, x, w_q, w_scale, b, group, N, C, OC);
#endif
}

/* v9: int4 with the activations in the nibbles' order (VNNI; else v8's AVX2 form); int8: v8's
 * arithmetic with v9's prefetch (VNNI; else v6); both prefetch (v9's comment) */
void linear_q8_forward_v9_nibble_order_vnni(float* out, const float* x, const int8_t* w_q, const float* w_scale,
                                            const float* b, int64_t group, int64_t N, int64_t C, int64_t OC) {
#ifdef QX86
    if (has_vnni()) {
        quant_forward_q8v8(out, x, w_q, w_scale, b, group, N, C, OC, udot_q8_v9);
        return;
    }
#endif
    linear_q8_forward_v8_unsigned_vnni(out, x, w_q, w_scale, b, group, N, C, OC);
}

void linear_q4_forward_v9_nibble_order_vnni(float* out, const float* x, const uint8_t* w_q, const float* w_scale,
                                            const float* b, int64_t group, int64_t N, int64_t C, int64_t OC) {
#ifdef QX86
    int vnni = has_vnni();
    quant_forward_u4(out, x, w_q, w_scale, b, group, N, C, OC, vnni ? udot_q4_v9 : udot_q4_avx2, vnni);
#else
    linear_q4_forward_v6_intdot_avx2(out, x, w_q, w_scale, b, group, N, C, OC);
#endif
}

int quant_has_vnni(void) {
#ifdef QX86
    return has_vnni();
#else
    return 0;
#endif
}

/* The decoding entry points (quantize/layers.py's QuantizedWeight calls them through
 * backends/cpu_quant.py's prepared kernel): the integer-dot rung this CPU supports (with
 * VNNI: v9; else v6 for int8 and v8's AVX2 form for int4), and the same arithmetic in portable C,
 * threaded, where there is no SIMD, so every path rounds alike (the same exact integer sums). */
void linear_q8_forward_intdot(float* out, const float* x, const int8_t* w_q, const float* w_scale,
                              const float* b, int64_t group, int64_t N, int64_t C, int64_t OC) {
    int level = microgpt_simd_level();
    if (level >= 2) linear_q8_forward_v9_nibble_order_vnni(out, x, w_q, w_scale, b, group, N, C, OC);
    else if (level == 1) linear_q8_forward_v6_intdot_avx2(out, x, w_q, w_scale, b, group, N, C, OC);
    else quant_forward_int(out, x, (const uint8_t*)w_q, C, w_scale, b, group, N, C, OC, idot_q8_scalar, dot_q8_scalar);
}

void linear_q4_forward_intdot(float* out, const float* x, const uint8_t* w_q, const float* w_scale,
                              const float* b, int64_t group, int64_t N, int64_t C, int64_t OC) {
    int level = microgpt_simd_level();
#ifdef QX86
    if (level >= 1) {       /* v9 with AVX-512 VNNI where the level allows and the CPU has it, else v8's AVX2 */
        int vnni = level >= 2 && has_vnni();
        quant_forward_u4(out, x, w_q, w_scale, b, group, N, C, OC, vnni ? udot_q4_v9 : udot_q4_avx2, vnni);
        return;
    }
#endif
    (void)level;
    quant_forward_int(out, x, w_q, C / 2, w_scale, b, group, N, C, OC, idot_q4_scalar, dot_q4_scalar);
}

/* linear_q*_forward, the op (ops.quantized_linear: model forward, eval, training): "dequantize,
 * then multiply" exactly, on the best float rung (v5 / v4 block loops), the portable loop
 * threaded where there is no SIMD */
void linear_q8_forward(float* out, const float* x, const int8_t* w_q, const float* w_scale,
                       const float* b, int64_t group, int64_t N, int64_t C, int64_t OC) {
    int level = microgpt_simd_level();
    if (level >= 2) linear_q8_forward_v5_blocks_avx512(out, x, w_q, w_scale, b, group, N, C, OC);
    else if (level == 1) linear_q8_forward_v4_blocks_avx2(out, x, w_q, w_scale, b, group, N, C, OC);
    else quant_forward(out, x, (const uint8_t*)w_q, C, w_scale, b, group, N, C, OC, dot_q8_scalar, 1);
}

void linear_q4_forward(float* out, const float* x, const uint8_t* w_q, const float* w_scale,
                       const float* b, int64_t group, int64_t N, int64_t C, int64_t OC) {
    int level = microgpt_simd_level();
    if (level >= 2) linear_q4_forward_v5_blocks_avx512(out, x, w_q, w_scale, b, group, N, C, OC);
    else if (level == 1) linear_q4_forward_v4_blocks_avx2(out, x, w_q, w_scale, b, group, N, C, OC);
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
