/* common.h — helpers shared by the kernel files (not part of the ABI, never seen by cffi).
 *
 * MG_CLONES   GCC target_clones: the compiler emits an AVX-512 (x86-64-v4), an AVX2+FMA
 *             (x86-64-v3) and a baseline copy of the function, and the loader picks one for
 *             this CPU (ifunc). Elementwise and row kernels use it; matmul dispatches by hand.
 * MG_PAR_MIN  OpenMP `if` clause threshold: wake the thread team only when a kernel touches
 *             enough values for the wake-up (~ 10 us with sleeping workers) to pay off.
 * mg_expf     e^x in plain float arithmetic, so loops calling it vectorize (libm's expf does
 *             not without -ffast-math). Cody-Waite range reduction x = k ln2 + r, |r| <= ln2/2
 *             (k rounded by the 1.5*2^23 trick, no floorf call), then e^r by a degree-6 Taylor
 *             polynomial (error < 2 ulp on [-87, 88]) and 2^k by writing k into the exponent bits.
 */
#ifndef MICROGPT_COMMON_H
#define MICROGPT_COMMON_H
#include <stdint.h>
#include <string.h>
#include <math.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(__clang__) \
    && !defined(MICROGPT_NO_CLONES)
#define MG_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MG_CLONES
#endif

#define MG_PAR_MIN 131072L  /* values a kernel must touch before it forks threads */

static inline float mg_expf(float x) {
    const float log2e = 1.44269504088896341f;
    const float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
    const float round = 12582912.0f;                /* 1.5 * 2^23: adding it rounds to integer */
    float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float k = (xc * log2e + round) - round;         /* nearest integer to x / ln2 */
    float r = xc - k * ln2_hi - k * ln2_lo;         /* |r| <= ln2 / 2, in two steps for accuracy */
    float p = 1.0f / 720.0f;                        /* e^r = sum r^i / i!, Horner form */
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { int32_t i; float f; } two_k;            /* 2^k as a float: exponent field only */
    two_k.i = ((int32_t)k + 127) << 23;
    float y = p * two_k.f;
    return x < -87.0f ? 0.0f : y;                   /* e^-inf = 0; tiny values flush to 0 */
}

static inline int64_t mg_min(int64_t a, int64_t b) { return a < b ? a : b; }

int microgpt_simd_level(void);      /* threads.c: 0 scalar, 1 avx2, 2 avx512 (matmul's path) */

/* matmul.c's packed-GEMM parts, for kernel files that drive the five loops themselves (moe.c
 * packs each expert's weight once per call). Layouts as matmul.c's v3 comment: a packed A
 * sliver is MR x kc, ap[k * MR + i]; a packed B sliver kc x NR, bp[k * NR + j]; both zero
 * past the matrix edge. The micro-kernel computes c (MR x NR, row stride ldc) [+]= ap^T bp. */
#define MG_GEMM_KC 384      /* matmul.c's KC: the depth of one packed pass */
typedef void (*mg_micro_kernel)(int64_t kc, const float* ap, const float* bp, float* c, int64_t ldc, int acc);
typedef struct { mg_micro_kernel kernel; int MR, NR; } mg_gemm_kernel;
mg_gemm_kernel mg_gemm_choose_kernel(void);      /* this CPU's micro-kernel and its MR x NR */
void mg_gemm_pack_a(float* ap, const float* a, int trans_a, int64_t M, int64_t K, int64_t i0, int64_t k0,
                    int64_t kc, int MR);
void mg_gemm_pack_b(float* bp, const float* b, int trans_b, int64_t N, int64_t K, int64_t j0, int64_t k0,
                    int64_t kc, int NR);

#endif /* MICROGPT_COMMON_H */
