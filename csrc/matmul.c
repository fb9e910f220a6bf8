/* matmul.c — single-precision matrix multiply as a ladder of rungs (BLIS's design, own code).
 *
 *   v1_naive     the definition: out[i][j] = sum_k A[i][k] B[k][j], one dot product per entry
 *   v2_blocked   loop order i-k-j over cache-sized tiles: the inner loop streams rows, vectorizes
 *   v3_packed    BLIS: copy K x NC panels of B and MR x KC slivers of A into contiguous,
 *                zero-padded buffers, then an MR x NR register-blocked SIMD micro-kernel
 *                (AVX-512 12x32, AVX2+FMA 6x16, portable C 4x8; chosen at run time)
 *   v4_threaded  v3 with the (A sliver, B sliver-group) tiles shared among OpenMP threads
 *   matmul_forward = v4 (production); matmul_forward_batched, linear_forward/backward use it,
 *   except that linear_forward with at most 4 rows (decoding) streams W row by row instead;
 *   linear_rows_forward takes that streaming path for any number of rows (batch-invariant decoding).
 *   A linear weight comes in two layouts, (OC, C) as PyTorch's Linear or (C, OC) as GPT-2's
 *   Conv1D (w_in_out): the products only swap which operand is read transposed, so both take
 *   the same packed path at the same speed, and the few-rows path has a version for each.
 *
 * Every rung computes out (M, N) = op(a) @ op(b) + bias (bias (N) added to every row; NULL:
 * none), where op transposes a stored (K, M) or b stored (N, K) on request: packing reads
 * either layout, so the micro-kernel never sees a transpose. A rung starts from the bias
 * rows (start_rows) and adds the product into them, which is also how the bias costs no
 * extra pass over out.
 */
#include <stdlib.h>
#include <omp.h>
#include "common.h"
#include "microgpt.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define MG_X86 1
#endif

/* element (i, k) of op(a) and (k, j) of op(b) */
#define OPA(i, k) (trans_a ? a[(k) * M + (i)] : a[(i) * K + (k)])
#define OPB(k, j) (trans_b ? b[(j) * K + (k)] : b[(k) * N + (j)])

/* out = the bias in every row, or zeros without one: where every rung starts. */
static void start_rows(float* out, const float* bias, int64_t M, int64_t N) {
    if (!bias) {
        memset(out, 0, (size_t)M * (size_t)N * sizeof(float));
        return;
    }
    for (int64_t i = 0; i < M; i++) memcpy(out + i * N, bias, (size_t)N * sizeof(float));
}

/* ---- v1: the definition ---------------------------------------------------------------- */
void matmul_forward_v1_naive(float* out, const float* a, const float* b, const float* bias,
                             int64_t M, int64_t N, int64_t K, int trans_a, int trans_b) {
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            float s = bias ? bias[j] : 0.0f;
            for (int64_t k = 0; k < K; k++) s += OPA(i, k) * OPB(k, j);
            out[i * N + j] = s;
        }
}

/* ---- v2: cache blocking; i-k-j order so the inner loop is a vectorizable row update -------- */
#define V2_MB 64
#define V2_KB 256
#define V2_NB 1024
/* out += op(a) @ op(b), tile by tile */
MG_CLONES static void blocked_add(float* out, const float* a, const float* b, int64_t M, int64_t N, int64_t K,
                                  int trans_a, int trans_b) {
    for (int64_t i0 = 0; i0 < M; i0 += V2_MB)
        for (int64_t k0 = 0; k0 < K; k0 += V2_KB)
            for (int64_t j0 = 0; j0 < N; j0 += V2_NB)
                for (int64_t i = i0; i < mg_min(i0 + V2_MB, M); i++)
                    for (int64_t k = k0; k < mg_min(k0 + V2_KB, K); k++) {
                        float aik = OPA(i, k);
                        float* row = out + i * N;
                        int64_t j1 = mg_min(j0 + V2_NB, N);
                        if (!trans_b) {
                            const float* brow = b + k * N;
                            #pragma omp simd
                            for (int64_t j = j0; j < j1; j++) row[j] += aik * brow[j];
                        } else {
                            for (int64_t j = j0; j < j1; j++) row[j] += aik * b[j * K + k];
                        }
                    }
}

void matmul_forward_v2_blocked(float* out, const float* a, const float* b, const float* bias,
                               int64_t M, int64_t N, int64_t K, int trans_a, int trans_b) {
    start_rows(out, bias, M, N);
    blocked_add(out, a, b, M, N, K, trans_a, trans_b);
}

/* ---- v3/v4: packing ------------------------------------------------------------------------
 * Packed A sliver (MR rows x kc):   ap[k * MR + i] = op(a)[i0 + i][k0 + k], zero past M.
 * Packed B sliver (kc x NR cols):   bp[k * NR + j] = op(b)[k0 + k][j0 + j], zero past N.
 * The micro-kernel then reads both with unit stride, and edge tiles need no special case. */
#define KC 384          /* depth of one pass: an A sliver (12 x 384 floats = 18 KiB) fits L1 */
#define NC 3072         /* columns of one packed B panel (384 x 3072 floats = 4.5 MiB, in L3) */
_Static_assert(KC == MG_GEMM_KC, "common.h's MG_GEMM_KC must be KC");

static void pack_a(float* ap, const float* a, int trans_a, int64_t M, int64_t K,
                   int64_t i0, int64_t k0, int64_t kc, int MR) {
    int64_t rows = mg_min(MR, M - i0);
    if (rows < MR) memset(ap, 0, (size_t)kc * MR * sizeof(float));
    if (trans_a) {
        for (int64_t k = 0; k < kc; k++)
            memcpy(ap + k * MR, a + (k0 + k) * M + i0, (size_t)rows * sizeof(float));
    } else {
        int64_t i = 0;
#ifdef MG_X86
        /* groups of 4 rows, 4 k at a time: a 4 x 4 transpose in SSE registers (baseline x86-64)
         * replaces 16 single-float writes with a stride of MR floats by 4 vector writes */
        int64_t k4 = kc / 4 * 4;
        for (; i + 4 <= rows; i += 4) {
            const float* src = a + (i0 + i) * K + k0;
            for (int64_t k = 0; k < k4; k += 4) {
                __m128 r0 = _mm_loadu_ps(src + k), r1 = _mm_loadu_ps(src + K + k);
                __m128 r2 = _mm_loadu_ps(src + 2 * K + k), r3 = _mm_loadu_ps(src + 3 * K + k);
                _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
                _mm_storeu_ps(ap + k * MR + i, r0);
                _mm_storeu_ps(ap + (k + 1) * MR + i, r1);
                _mm_storeu_ps(ap + (k + 2) * MR + i, r2);
                _mm_storeu_ps(ap + (k + 3) * MR + i, r3);
            }
            for (int64_t r = 0; r < 4; r++)                  /* the last kc % 4 columns */
                for (int64_t k = k4; k < kc; k++) ap[k * MR + i + r] = src[r * K + k];
        }
#endif
        for (; i < rows; i++) {
            const float* src = a + (i0 + i) * K + k0;
            for (int64_t k = 0; k < kc; k++) ap[k * MR + i] = src[k];
        }
    }
}

#ifdef MG_X86
/* A full sliver of a transposed B (b stored (N, K)): bp[k][j] = b[j0 + j][k0 + k]. The naive
 * loop writes with a stride of NR floats; this one moves 8 x 8 blocks through registers
 * (8 row loads, the classic unpack/shuffle/permute transpose, 8 row stores), which matters
 * when M is small and packing is a large share of the work (linear layers at batch x time
 * = 256: ~20% of a forward product). Returns the first k it did not handle (kc rounded down
 * to a multiple of 8). */
__attribute__((target("avx2")))
static int64_t pack_b_trans_8x8(float* bp, const float* b, int64_t K, int64_t j0, int64_t k0, int64_t kc, int NR) {
    int64_t k8 = kc / 8 * 8;
    for (int jb = 0; jb < NR; jb += 8) {
        const float* src = b + (j0 + jb) * K + k0;
        for (int64_t kb = 0; kb < k8; kb += 8) {
            __m256 r[8], t[8], u[8];
            for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + i * K + kb);
            for (int i = 0; i < 8; i += 2) {
                t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
                t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
            }
            for (int i = 0; i < 8; i += 4) {
                u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
                u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
                u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
                u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
            }
            float* dst = bp + kb * NR + jb;
            for (int i = 0; i < 4; i++) {
                _mm256_storeu_ps(dst + i * NR, _mm256_permute2f128_ps(u[i], u[i + 4], 0x20));
                _mm256_storeu_ps(dst + (i + 4) * NR, _mm256_permute2f128_ps(u[i], u[i + 4], 0x31));
            }
        }
    }
    return k8;
}
#endif

static void pack_b(float* bp, const float* b, int trans_b, int64_t N, int64_t K,
                   int64_t j0, int64_t k0, int64_t kc, int NR) {
    int64_t cols = mg_min(NR, N - j0);
    if (cols < NR) memset(bp, 0, (size_t)kc * NR * sizeof(float));
#ifdef MG_X86
    if (trans_b && cols == NR && microgpt_simd_level() >= 1) {
        int64_t done = pack_b_trans_8x8(bp, b, K, j0, k0, kc, NR);
        for (int64_t j = 0; j < cols; j++)                 /* the last kc % 8 rows of the panel */
            for (int64_t k = done; k < kc; k++) bp[k * NR + j] = b[(j0 + j) * K + k0 + k];
        return;
    }
#endif
    if (!trans_b) {
        for (int64_t k = 0; k < kc; k++)
            memcpy(bp + k * NR, b + (k0 + k) * N + j0, (size_t)cols * sizeof(float));
    } else {
        for (int64_t j = 0; j < cols; j++) {
            const float* src = b + (j0 + j) * K + k0;
            for (int64_t k = 0; k < kc; k++) bp[k * NR + j] = src[k];
        }
    }
}

/* ---- micro-kernels: c (MR x NR, row stride ldc) = [c +] ap^T bp over kc -------------------- */
typedef void (*micro_kernel)(int64_t kc, const float* ap, const float* bp, float* c, int64_t ldc, int acc);

/* Ask for the cache lines of one C-tile row (n floats) ahead of use, for writing: the tile
 * is read (or at least owned) at the end of the micro-kernel, and without this its misses
 * to memory would stall the pipeline there, once per tile. */
static inline void prefetch_row(const float* row, int n) {
    for (int j = 0; j < n; j += 16) __builtin_prefetch(row + j, 1, 3);
    __builtin_prefetch(row + n - 1, 1, 3);
}

#ifdef MG_X86
/* AVX-512: 12 rows x 32 columns = 24 zmm accumulators; per k, 2 loads of B and 12 broadcasts
 * of A feed 24 FMAs (768 flops per 14 memory operands, all from L1). */
__attribute__((target("avx512f")))
static void kernel_avx512_12x32(int64_t kc, const float* ap, const float* bp, float* c, int64_t ldc, int acc) {
    __m512 c0[12], c1[12];
    #pragma GCC unroll 12
    for (int i = 0; i < 12; i++) {
        c0[i] = _mm512_setzero_ps();
        c1[i] = _mm512_setzero_ps();
        prefetch_row(c + i * ldc, 32);   /* the C tile arrives while the loop below computes */
    }
    for (int64_t k = 0; k < kc; k++) {
        __m512 b0 = _mm512_load_ps(bp + k * 32), b1 = _mm512_load_ps(bp + k * 32 + 16);
        #pragma GCC unroll 12
        for (int i = 0; i < 12; i++) {
            __m512 av = _mm512_set1_ps(ap[k * 12 + i]);
            c0[i] = _mm512_fmadd_ps(av, b0, c0[i]);
            c1[i] = _mm512_fmadd_ps(av, b1, c1[i]);
        }
    }
    #pragma GCC unroll 12
    for (int i = 0; i < 12; i++) {
        float* row = c + i * ldc;
        if (acc) {
            c0[i] = _mm512_add_ps(c0[i], _mm512_loadu_ps(row));
            c1[i] = _mm512_add_ps(c1[i], _mm512_loadu_ps(row + 16));
        }
        _mm512_storeu_ps(row, c0[i]);
        _mm512_storeu_ps(row + 16, c1[i]);
    }
}

/* AVX2 + FMA: 6 rows x 16 columns = 12 ymm accumulators, 2 for B, 1 broadcast: 15 of 16. */
__attribute__((target("avx2,fma")))
static void kernel_avx2_6x16(int64_t kc, const float* ap, const float* bp, float* c, int64_t ldc, int acc) {
    __m256 c0[6], c1[6];
    #pragma GCC unroll 6
    for (int i = 0; i < 6; i++) {
        c0[i] = _mm256_setzero_ps();
        c1[i] = _mm256_setzero_ps();
        prefetch_row(c + i * ldc, 16);
    }
    for (int64_t k = 0; k < kc; k++) {
        __m256 b0 = _mm256_load_ps(bp + k * 16), b1 = _mm256_load_ps(bp + k * 16 + 8);
        #pragma GCC unroll 6
        for (int i = 0; i < 6; i++) {
            __m256 av = _mm256_broadcast_ss(ap + k * 6 + i);
            c0[i] = _mm256_fmadd_ps(av, b0, c0[i]);
            c1[i] = _mm256_fmadd_ps(av, b1, c1[i]);
        }
    }
    #pragma GCC unroll 6
    for (int i = 0; i < 6; i++) {
        float* row = c + i * ldc;
        if (acc) {
            c0[i] = _mm256_add_ps(c0[i], _mm256_loadu_ps(row));
            c1[i] = _mm256_add_ps(c1[i], _mm256_loadu_ps(row + 8));
        }
        _mm256_storeu_ps(row, c0[i]);
        _mm256_storeu_ps(row + 8, c1[i]);
    }
}
#endif

/* Portable C: 4 x 8, written so any compiler keeps the tile in registers. */
static void kernel_scalar_4x8(int64_t kc, const float* ap, const float* bp, float* c, int64_t ldc, int acc) {
    float t[4][8] = {{0}};
    for (int64_t k = 0; k < kc; k++)
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 8; j++) t[i][j] += ap[k * 4 + i] * bp[k * 8 + j];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 8; j++) c[i * ldc + j] = (acc ? c[i * ldc + j] : 0.0f) + t[i][j];
}

typedef struct { micro_kernel kernel; int MR, NR; } kernel_choice;

static kernel_choice choose_kernel(void) {
#ifdef MG_X86
    int level = microgpt_simd_level();
    if (level == 2) return (kernel_choice){kernel_avx512_12x32, 12, 32};
    if (level == 1) return (kernel_choice){kernel_avx2_6x16, 6, 16};
#endif
    return (kernel_choice){kernel_scalar_4x8, 4, 8};
}

/* the same parts for other kernel files (common.h declares them) */
mg_gemm_kernel mg_gemm_choose_kernel(void) {
    kernel_choice ch = choose_kernel();
    return (mg_gemm_kernel){ch.kernel, ch.MR, ch.NR};
}

void mg_gemm_pack_a(float* ap, const float* a, int trans_a, int64_t M, int64_t K, int64_t i0, int64_t k0,
                    int64_t kc, int MR) {
    pack_a(ap, a, trans_a, M, K, i0, k0, kc, MR);
}

void mg_gemm_pack_b(float* bp, const float* b, int trans_b, int64_t N, int64_t K, int64_t j0, int64_t k0,
                    int64_t kc, int NR) {
    pack_b(bp, b, trans_b, N, K, j0, k0, kc, NR);
}

/* ---- v3/v4: the five loops --------------------------------------------------------------------
 * for jc (NC columns of B)   for pc (KC of depth)   pack the B panel, all threads together
 *   for (A sliver ir, group of B slivers) tiles, shared among threads:
 *     pack the MR x kc A sliver (L1), then for each NR-wide B sliver: one micro-kernel call.
 * When A has few slivers (small M), the B slivers of each are split into groups as well so
 * every thread has work. Edge tiles go through a small buffer, so the kernels stay branch-free. */
static void gemm_packed(float* out, const float* a, const float* b, int64_t M, int64_t N, int64_t K,
                        int trans_a, int trans_b, int accumulate, int threads) {
    if (M == 0 || N == 0) return;
    if (K == 0) {
        if (!accumulate) memset(out, 0, (size_t)M * (size_t)N * sizeof(float));
        return;
    }
    kernel_choice ch = choose_kernel();
    const int MR = ch.MR, NR = ch.NR;
    int64_t nc_max = mg_min(NC, (N + NR - 1) / NR * NR);
    float* bpack = aligned_alloc(64, (size_t)KC * nc_max * sizeof(float));
    float* apack = aligned_alloc(64, (size_t)threads * KC * MR * sizeof(float));
    if (!bpack || !apack) {                  /* out of memory: the blocked rung needs none */
        free(bpack);
        free(apack);
        if (!accumulate) start_rows(out, NULL, M, N);
        blocked_add(out, a, b, M, N, K, trans_a, trans_b);
        return;
    }
    int64_t n_ir = (M + MR - 1) / MR;
    #pragma omp parallel num_threads(threads)
    {
        float* ap = apack + (int64_t)omp_get_thread_num() * KC * MR;
        float ctile[12 * 32] __attribute__((aligned(64)));
        for (int64_t jc = 0; jc < N; jc += NC) {
            int64_t n_jr = (mg_min(NC, N - jc) + NR - 1) / NR;
            int64_t groups = n_ir >= 4 * threads ? 1 : mg_min(n_jr, (4 * threads + n_ir - 1) / n_ir);
            for (int64_t pc = 0; pc < K; pc += KC) {
                int64_t kc = mg_min(KC, K - pc);
                int acc = accumulate || pc > 0;
                #pragma omp for schedule(static)
                for (int64_t s = 0; s < n_jr; s++)
                    pack_b(bpack + s * kc * NR, b, trans_b, N, K, jc + s * NR, pc, kc, NR);
                int64_t packed_ir = -1;
                /* dynamic: a thread that the OS parks (busy machine) does not hold up the rest;
                 * each tile still has one owner and one summation order, so results do not
                 * depend on the schedule */
                #pragma omp for schedule(dynamic, 1)
                for (int64_t t = 0; t < n_ir * groups; t++) {
                    int64_t ir = t / groups, g = t % groups;
                    int64_t i0 = ir * MR, rows = mg_min(MR, M - i0);
                    if (ir != packed_ir) pack_a(ap, a, trans_a, M, K, i0, pc, kc, MR);
                    packed_ir = ir;
                    for (int64_t s = g * n_jr / groups; s < (g + 1) * n_jr / groups; s++) {
                        int64_t j0 = jc + s * NR, cols = mg_min(NR, N - j0);
                        float* c = out + i0 * N + j0;
                        const float* bp = bpack + s * kc * NR;
                        if (rows == MR && cols == NR) {
                            ch.kernel(kc, ap, bp, c, N, acc);
                            continue;
                        }
                        ch.kernel(kc, ap, bp, ctile, NR, 0);
                        for (int64_t i = 0; i < rows; i++)
                            for (int64_t j = 0; j < cols; j++)
                                c[i * N + j] = (acc ? c[i * N + j] : 0.0f) + ctile[i * NR + j];
                    }
                }
            }
        }
    }
    free(bpack);
    free(apack);
}

/* out = op(a) @ op(b) + bias: start from the bias rows and accumulate onto them */
static void packed_with_bias(float* out, const float* a, const float* b, const float* bias,
                             int64_t M, int64_t N, int64_t K, int trans_a, int trans_b, int threads) {
    if (bias) start_rows(out, bias, M, N);
    gemm_packed(out, a, b, M, N, K, trans_a, trans_b, bias != NULL, threads);
}

void matmul_forward_v3_packed(float* out, const float* a, const float* b, const float* bias,
                              int64_t M, int64_t N, int64_t K, int trans_a, int trans_b) {
    packed_with_bias(out, a, b, bias, M, N, K, trans_a, trans_b, 1);
}

/* Below ~ 2^20 multiply-adds (~ 20 us on one core) waking a thread team costs more than it saves. */
static int threads_for(int64_t M, int64_t N, int64_t K) {
    return (double)M * (double)N * (double)K < 1048576.0 ? 1 : omp_get_max_threads();
}

void matmul_forward_v4_threaded(float* out, const float* a, const float* b, const float* bias,
                                int64_t M, int64_t N, int64_t K, int trans_a, int trans_b) {
    packed_with_bias(out, a, b, bias, M, N, K, trans_a, trans_b, threads_for(M, N, K));
}

void matmul_forward(float* out, const float* a, const float* b, const float* bias,
                    int64_t M, int64_t N, int64_t K, int trans_a, int trans_b) {
    matmul_forward_v4_threaded(out, a, b, bias, M, N, K, trans_a, trans_b);
}

/* Many small products: one per thread (each single-threaded); few large ones: one at a time,
 * each threaded. */
void matmul_forward_batched(float* out, const float* a, const float* b, const float* bias,
                            int64_t batch, int64_t stride_out, int64_t stride_a, int64_t stride_b,
                            int64_t M, int64_t N, int64_t K, int trans_a, int trans_b) {
    int threads = omp_get_max_threads();
    if (threads > 1 && batch >= threads && (double)M * N * K < 4194304.0) {
        #pragma omp parallel for schedule(static) if ((double)batch * M * N * K >= 1048576.0)
        for (int64_t i = 0; i < batch; i++)
            packed_with_bias(out + i * stride_out, a + i * stride_a, b + i * stride_b, bias, M, N, K,
                             trans_a, trans_b, 1);
        return;
    }
    for (int64_t i = 0; i < batch; i++)
        matmul_forward(out + i * stride_out, a + i * stride_a, b + i * stride_b, bias, M, N, K,
                       trans_a, trans_b);
}

/* ---- linear layers: out = x @ w^T + b, w (OC, C) as in PyTorch and GPT-2 ------------------- */

/* Few rows (decoding one token at a time): with N <= LINEAR_ROWS_MAX input rows each weight is
 * used at most N times, so there is no reuse for packing to buy; packing a panel of W would
 * cost more than the whole product. Instead each weight row is streamed once, in storage order,
 * and dotted with every input row: out[n][o] = b[o] + sum_c x[n][c] * w[o][c]. The
 * speed limit is then the memory bandwidth of reading W, and the threads split W's rows. */
#define LINEAR_ROWS_MAX 4

/* 16 floats in one value, loadable from any float address (GCC vector extension); each clone
 * of linear_rows lowers it to its own SIMD width. */
typedef float f32x16 __attribute__((vector_size(64), aligned(4)));

typedef float f32x8 __attribute__((vector_size(32), aligned(4)));

/* Horizontal sum by halving: 16 lanes -> 8 -> 4 -> 2 -> 1, adding the upper half to the lower. */
static inline float sum16(f32x16 v) {
    f32x8 lo = {v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]};
    f32x8 hi = {v[8], v[9], v[10], v[11], v[12], v[13], v[14], v[15]};
    f32x8 s = lo + hi;
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

/* One output element, out[n][o] = b[o] + x_row . w_row, in the order every path below keeps:
 * four 16-lane chains (chain j, lane l sums c = 64 i + 16 j + l over i), the halving sum of
 * their (0 + 1) + (2 + 3), then the last C % 64 columns one by one, then the bias. */
static inline __attribute__((always_inline)) float finish_dot(f32x16 chains_sum, const float* x_row,
                                                              const float* w_row, int64_t c_vec, int64_t C,
                                                              const float* b, int64_t o) {
    float dot = sum16(chains_sum);
    for (int64_t c = c_vec; c < C; c++) dot += x_row[c] * w_row[c];  /* the last C % 64 columns */
    return dot + (b ? b[o] : 0.0f);
}

static inline __attribute__((always_inline)) float dot_one(const float* x_row, const float* w_row,
                                                           int64_t c_vec, int64_t C, const float* b, int64_t o) {
    f32x16 acc0 = {0}, acc1 = {0}, acc2 = {0}, acc3 = {0};   /* four independent chains */
    for (int64_t c = 0; c < c_vec; c += 64) {
        acc0 += *(const f32x16*)(x_row + c) * *(const f32x16*)(w_row + c);
        acc1 += *(const f32x16*)(x_row + c + 16) * *(const f32x16*)(w_row + c + 16);
        acc2 += *(const f32x16*)(x_row + c + 32) * *(const f32x16*)(w_row + c + 32);
        acc3 += *(const f32x16*)(x_row + c + 48) * *(const f32x16*)(w_row + c + 48);
    }
    return finish_dot((acc0 + acc1) + (acc2 + acc3), x_row, w_row, c_vec, C, b, o);
}

/* A tile of ROWS_TILE weight rows x ROWS_TILE input rows: the same chains, computed one chain
 * at a time for all 16 elements (16 accumulators: 8 loads feed 16 multiply-adds, where one
 * element at a time loads 2 per multiply-add), each chain's sum kept until all four are done.
 * Every element's additions are those of dot_one, in the same order: the same bits. */
#define ROWS_TILE 4
static inline __attribute__((always_inline)) void dot_tile(float* out, const float* x, const float* w,
                                                           const float* b, int64_t C, int64_t OC, int64_t c_vec,
                                                           int64_t n0, int64_t o0) {
    f32x16 chain[4][ROWS_TILE][ROWS_TILE];
    for (int j = 0; j < 4; j++) {
        f32x16 a[ROWS_TILE][ROWS_TILE];
        for (int r = 0; r < ROWS_TILE; r++)
            for (int s = 0; s < ROWS_TILE; s++) a[r][s] = (f32x16){0};
        for (int64_t c = 16 * j; c < c_vec; c += 64) {
            f32x16 wv[ROWS_TILE], xv[ROWS_TILE];
            for (int r = 0; r < ROWS_TILE; r++) wv[r] = *(const f32x16*)(w + (o0 + r) * C + c);
            for (int s = 0; s < ROWS_TILE; s++) xv[s] = *(const f32x16*)(x + (n0 + s) * C + c);
            for (int r = 0; r < ROWS_TILE; r++)
                for (int s = 0; s < ROWS_TILE; s++) a[r][s] += xv[s] * wv[r];
        }
        for (int r = 0; r < ROWS_TILE; r++)
            for (int s = 0; s < ROWS_TILE; s++) chain[j][r][s] = a[r][s];
    }
    for (int r = 0; r < ROWS_TILE; r++)
        for (int s = 0; s < ROWS_TILE; s++)
            out[(n0 + s) * OC + o0 + r] = finish_dot((chain[0][r][s] + chain[1][r][s]) + (chain[2][r][s] + chain[3][r][s]),
                                                     x + (n0 + s) * C, w + (o0 + r) * C, c_vec, C, b, o0 + r);
}

/* out[:, o0:o1] for all N rows: full tiles, then the edge rows and channels element by element */
MG_CLONES static void linear_rows(float* restrict out, const float* restrict x,
                                  const float* restrict w, const float* restrict b,
                                  int64_t N, int64_t C, int64_t OC, int64_t o0, int64_t o1) {
    int64_t c_vec = C - C % 64;
    int64_t o = o0;
    for (; o + ROWS_TILE <= o1; o += ROWS_TILE) {
        int64_t n = 0;
        for (; n + ROWS_TILE <= N; n += ROWS_TILE) dot_tile(out, x, w, b, C, OC, c_vec, n, o);
        for (; n < N; n++)
            for (int r = 0; r < ROWS_TILE; r++)
                out[n * OC + o + r] = dot_one(x + n * C, w + (o + r) * C, c_vec, C, b, o + r);
    }
    for (; o < o1; o++)
        for (int64_t n = 0; n < N; n++) out[n * OC + o] = dot_one(x + n * C, w + o * C, c_vec, C, b, o);
}

/* ---- few rows, w stored (C, OC) (w_in_out, GPT-2's Conv1D layout) -------------------------
 * W's rows are now input channels: out[n][:] = b + sum_c x[n][c] w[c][:], a sum of W's rows
 * scaled by x[n][c] (axpys). W is still read once in storage order, as one stream per thread:
 * the threads split W's *rows* (each a contiguous run of C / threads rows), each summing its
 * rows' share into N x OC partial sums of its own (thread 0 into out itself), and the partial
 * sums are then added, the threads splitting the columns. Splitting the columns instead
 * (each thread a slice of every row) gives each thread a strided walk with gaps, measured
 * ~1.3x slower. Within a thread's rows, tiles of 4 input rows x 64 outputs keep their sums
 * in registers for all of its rows of W (rows_in_out below). */

/* acc (N, OC) += x[:, c0:c1] @ w[c0:c1, :]. Each element's sum runs c = c0, c0 + 1, ... in order,
 * acc + x[n][c0] w[c0][o] + x[n][c0 + 1] w[c0 + 1][o] + ..., whatever the tile it falls in:
 * a full tile keeps IN_OUT_TILE_N rows x IN_OUT_TILE_O vectors of 16 sums in registers for the
 * whole range of c (per c: IN_OUT_TILE_O weight loads and IN_OUT_TILE_N broadcasts feed
 * 16 multiply-adds; the sums are loaded and stored once per range instead of once per c),
 * the edges the same sums a vector or a value at a time. The weight block of a tile (range
 * x 64 floats) stays in L2 while the row tiles pass it. */
#define IN_OUT_TILE_N 4
#define IN_OUT_TILE_O 4
MG_CLONES static void rows_in_out(float* restrict acc, const float* restrict x, const float* restrict w,
                                  int64_t N, int64_t C, int64_t OC, int64_t c0, int64_t c1) {
    int64_t o_vec = OC / 16 * 16;
    for (int64_t o = 0; o < o_vec; o += 16 * IN_OUT_TILE_O) {
        int64_t vecs = mg_min(IN_OUT_TILE_O, (o_vec - o) / 16);
        for (int64_t n0 = 0; n0 < N; n0 += IN_OUT_TILE_N) {
            int64_t rows = mg_min(IN_OUT_TILE_N, N - n0);
            if (rows == IN_OUT_TILE_N && vecs == IN_OUT_TILE_O) {
                f32x16 s[IN_OUT_TILE_N][IN_OUT_TILE_O];
                for (int i = 0; i < IN_OUT_TILE_N; i++)
                    for (int j = 0; j < IN_OUT_TILE_O; j++) s[i][j] = *(f32x16*)(acc + (n0 + i) * OC + o + 16 * j);
                for (int64_t c = c0; c < c1; c++) {
                    f32x16 v[IN_OUT_TILE_O];
                    for (int j = 0; j < IN_OUT_TILE_O; j++) v[j] = *(const f32x16*)(w + c * OC + o + 16 * j);
                    for (int i = 0; i < IN_OUT_TILE_N; i++) {
                        float xc = x[(n0 + i) * C + c];
                        for (int j = 0; j < IN_OUT_TILE_O; j++) s[i][j] += xc * v[j];
                    }
                }
                for (int i = 0; i < IN_OUT_TILE_N; i++)
                    for (int j = 0; j < IN_OUT_TILE_O; j++) *(f32x16*)(acc + (n0 + i) * OC + o + 16 * j) = s[i][j];
                continue;
            }
            for (int64_t i = 0; i < rows; i++)                   /* an edge tile: one vector at a time */
                for (int64_t j = 0; j < vecs; j++) {
                    float* dst = acc + (n0 + i) * OC + o + 16 * j;
                    f32x16 sum = *(f32x16*)dst;
                    for (int64_t c = c0; c < c1; c++) sum += x[(n0 + i) * C + c] * *(const f32x16*)(w + c * OC + o + 16 * j);
                    *(f32x16*)dst = sum;
                }
        }
    }
    for (int64_t n = 0; n < N; n++)                              /* the last OC % 16 columns */
        for (int64_t o = o_vec; o < OC; o++) {
            float sum = acc[n * OC + o];
            for (int64_t c = c0; c < c1; c++) sum += x[n * C + c] * w[c * OC + o];
            acc[n * OC + o] = sum;
        }
}

static void linear_rows_in_out(float* out, const float* x, const float* w, const float* b,
                               int64_t N, int64_t C, int64_t OC) {
    int threads = OC * C >= MG_PAR_MIN ? omp_get_max_threads() : 1;
    if (threads > C) threads = (int)C;
    float* partial = NULL;
    if (threads > 1) {
        partial = malloc((size_t)(threads - 1) * (size_t)(N * OC) * sizeof(float));
        if (!partial) threads = 1;                      /* out of memory: one stream, no partials */
    }
    #pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        float* acc = t == 0 ? out : partial + (int64_t)(t - 1) * N * OC;
        for (int64_t n = 0; n < N; n++) {
            if (t == 0 && b) memcpy(acc + n * OC, b, (size_t)OC * sizeof(float));
            else memset(acc + n * OC, 0, (size_t)OC * sizeof(float));
        }
        rows_in_out(acc, x, w, N, C, OC, C * t / nt, C * (t + 1) / nt);
        if (nt > 1) {
            #pragma omp barrier
            int64_t o0 = OC * t / nt, o1 = OC * (t + 1) / nt;
            for (int p = 1; p < nt; p++)
                for (int64_t n = 0; n < N; n++) {
                    const float* src = partial + (int64_t)(p - 1) * N * OC + n * OC;
                    float* dst = out + n * OC;
                    #pragma omp simd
                    for (int64_t o = o0; o < o1; o++) dst[o] += src[o];
                }
        }
    }
    free(partial);
}

/* ---- the streaming path for any number of rows (linear_rows_forward) ----------------------
 * Every output element out[n][o] above is summed by code that does not look at N: in the (OC, C)
 * layout one dot product per (o, n) (four 16-lane chains over c, the same halving sum, the
 * same tail, tiled or not); in the (C, OC) layout one running sum per (n, o) over c in order,
 * split into the threads' ranges of c by the thread count alone. So a row gets
 * the same bits whether 1, 4 or 32 rows share the call, and an M-row call equals M one-row
 * calls: the batch invariance a server needs (inference/paged.py), with each weight row
 * streamed from memory once per call for all M rows instead of once per 4: a tile of 4 weight
 * rows sits in L1 while the M input rows (M x C floats: 48 KiB at 32 x 384, in L2) pass it in
 * tiles of 4 (OC, C); a block of 64 weight columns sits in L2 while the row tiles pass it
 * (C, OC). Beyond a few dozen rows the packed GEMM (which reuses each weight from registers) is
 * the faster way, and it rounds differently: that is linear_forward's choice above 4 rows. */
void linear_rows_forward(float* out, const float* x, const float* w, const float* b, int w_in_out,
                         int64_t N, int64_t C, int64_t OC) {
    if (N == 0 || OC == 0) return;
    if (w_in_out) {
        linear_rows_in_out(out, x, w, b, N, C, OC);
        return;
    }
    /* both cores stream: decoding reads W from memory, not cache */
    #pragma omp parallel for schedule(static) if (OC * C >= MG_PAR_MIN)
    for (int64_t o0 = 0; o0 < OC; o0 += 64)
        linear_rows(out, x, w, b, N, C, OC, o0, mg_min(o0 + 64, OC));
}

/* w (OC, C), or w_in_out: w (C, OC). The packed product reads either: op(b) = w^T is b stored
 * (N, K) transposed, or w itself as (K, N). */
void linear_forward(float* out, const float* x, const float* w, const float* b, int w_in_out,
                    int64_t N, int64_t C, int64_t OC) {
    if (N <= LINEAR_ROWS_MAX) {
        linear_rows_forward(out, x, w, b, w_in_out, N, C, OC);
        return;
    }
    matmul_forward(out, x, w, b, N, OC, C, 0, !w_in_out);
}

MG_CLONES static void column_sums(float* db, const float* dout, int64_t N, int64_t OC, int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; j++) db[j] = 0.0f;
    for (int64_t n = 0; n < N; n++) {
        const float* row = dout + n * OC;
        #pragma omp simd
        for (int64_t j = j0; j < j1; j++) db[j] += row[j];
    }
}

/* w (OC, C):             dx (N, C) = dout (N, OC) @ w;    dw (OC, C) = dout^T @ x
 * w_in_out, w (C, OC):   dx (N, C) = dout @ w^T;          dw (C, OC) = x^T @ dout
 * (the same products with the roles of the stored operands swapped; dw in w's layout);
 * db = sum_n dout in both. */
void linear_backward(float* dx, float* dw, float* db, const float* dout, const float* x, const float* w,
                     int w_in_out, int64_t N, int64_t C, int64_t OC) {
    if (w_in_out) {
        matmul_forward(dx, dout, w, NULL, N, C, OC, 0, 1);
        matmul_forward(dw, x, dout, NULL, C, OC, N, 1, 0);
    } else {
        matmul_forward(dx, dout, w, NULL, N, C, OC, 0, 0);
        matmul_forward(dw, dout, x, NULL, OC, C, N, 1, 0);
    }
    if (db) {
        #pragma omp parallel for schedule(static) if (N * OC >= MG_PAR_MIN)
        for (int64_t j0 = 0; j0 < OC; j0 += 256)
            column_sums(db, dout, N, OC, j0, mg_min(j0 + 256, OC));
    }
}
