/*
 * attention_naive.c — causal self-attention by its definition: rung v1 of the C attention.
 *
 * Specification: attention_forward / attention_backward in microgpt/backends/reference.py.
 * q (B, NH, Tq, HS), k and v (B, NKV, Tk, HS); query head h reads key/value head h / (NH/NKV);
 * query i sits at position p = Tk - Tq + i and sees the keys j = 0 .. p. For one query i (one row
 * of the reference's Tq x Tk matrices S, P, dP, dS), over the keys it sees:
 *
 *   forward    S_ij = q_i . k_j / sqrt(HS)
 *              lse_i = m + log sum_j e^(S_ij - m),  m = max_j S_ij     (m: no e^ overflows)
 *              P_ij = e^(S_ij - lse_i)                                  (the row sums to 1)
 *              out_i = sum_j P_ij v_j
 *   backward   P_ij again, from S and the saved lse (nothing T x T is saved)
 *              dv_j += P_ij dout_i
 *              dP_ij = dout_i . v_j
 *              dS_ij = P_ij (dP_ij - D_i),  D_i = dout_i . out_i        (softmax's backward:
 *                                           D_i is its row sum sum_j P_ij dP_ij, written with out_i)
 *              dq_i = sum_j dS_ij k_j / sqrt(HS),   dk_j += dS_ij q_i / sqrt(HS)
 *   dk and dv sum over every query of every query head that reads the key/value head.
 *
 * Document masking: with segment_ids (B, T; T = Tq = Tk; NULL for none) a key j is seen only
 * when segment_ids[b, j] == segment_ids[b, i] besides j <= p: the loops below simply skip the
 * other keys (`hidden`), so every sum is still over exactly the keys a query sees.
 *
 * Plain loops, one (batch, head) and one query after another, one thread: what each output is,
 * not how to make it fast (attention.c, rung v2, is that). The one row of S, then P, is the
 * only memory beyond the outputs: rows are independent, so the T x T matrix is never needed
 * whole. The sums run over exactly the keys a query sees, so a NaN or inf reaches precisely
 * the outputs the reference's per-query answer has it in; attention_forward / _backward
 * (attention.c) hand a call whose fast result is not finite to this rung for that reason.
 *
 * Built into microgpt.backends._cpu by backends/cpu_build.py; tests: tests/test_cpu_attention.py.
 */
#include <math.h>
#include <string.h>
#include "microgpt.h"

/* max that keeps a NaN, as numpy.max does: once m is NaN, s > m and s != s are both false */
static float max_keep_nan(float m, float s) { return s > m || s != s ? s : m; }

/* Key j is hidden from query i of batch row b by document masking (never without segments). */
static int hidden(const int32_t* segment_ids, int64_t b, int64_t T, int64_t i, int64_t j)
{
    return segment_ids && segment_ids[b * T + j] != segment_ids[b * T + i];
}

static float dot(const float* a, const float* b, int64_t n)
{
    float sum = 0.0f;
    for (int64_t d = 0; d < n; d++) sum += a[d] * b[d];
    return sum;
}

/* work: at least Tk floats (one row of S, then of P). Returns 0, or -1 when work_len is short. */
int attention_forward_v1_naive(float* out, float* lse, float* work, int64_t work_len, const float* q,
                               const float* k, const float* v, const int32_t* segment_ids, int64_t B,
                               int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk, int64_t HS)
{
    if (work_len < Tk) return -1;
    const float sqrt_hs = sqrtf((float)HS);
    float* row = work;
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < NH; h++) {
            const int64_t bh = b * NH + h, kv = b * NKV + h / (NH / NKV);
            const float *Q = q + bh * Tq * HS, *K = k + kv * Tk * HS, *V = v + kv * Tk * HS;
            for (int64_t i = 0; i < Tq; i++) {
                const int64_t seen = Tk - Tq + i + 1;            /* keys 0 .. p */
                const float* qi = Q + i * HS;
                float m = -INFINITY, sum = 0.0f;
                for (int64_t j = 0; j < seen; j++) {             /* S_ij and their max */
                    if (hidden(segment_ids, b, Tk, i, j)) continue;
                    row[j] = dot(qi, K + j * HS, HS) / sqrt_hs;
                    m = max_keep_nan(m, row[j]);
                }
                for (int64_t j = 0; j < seen; j++)
                    if (!hidden(segment_ids, b, Tk, i, j)) sum += expf(row[j] - m);
                const float lse_i = m + logf(sum);
                float* oi = out + (bh * Tq + i) * HS;
                memset(oi, 0, (size_t)HS * sizeof *oi);
                for (int64_t j = 0; j < seen; j++) {             /* out_i = sum_j P_ij v_j */
                    if (hidden(segment_ids, b, Tk, i, j)) continue;
                    const float p = expf(row[j] - lse_i);
                    for (int64_t d = 0; d < HS; d++) oi[d] += p * V[j * HS + d];
                }
                lse[bh * Tq + i] = lse_i;
            }
        }
    return 0;
}

/* work: at least 2 Tk floats (a row of P and one of dP). dq, dk, dv are written in full. */
int attention_backward_v1_naive(float* dq, float* dk, float* dv, float* work, int64_t work_len,
                                const float* dout, const float* q, const float* k, const float* v,
                                const float* out, const float* lse, const int32_t* segment_ids,
                                int64_t B, int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk, int64_t HS)
{
    if (work_len < 2 * Tk) return -1;
    const float sqrt_hs = sqrtf((float)HS), scale = 1.0f / sqrt_hs;
    float *p = work, *dp = work + Tk;
    memset(dk, 0, (size_t)(B * NKV * Tk * HS) * sizeof *dk);
    memset(dv, 0, (size_t)(B * NKV * Tk * HS) * sizeof *dv);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < NH; h++) {
            const int64_t bh = b * NH + h, kv = b * NKV + h / (NH / NKV);
            const float *Q = q + bh * Tq * HS, *K = k + kv * Tk * HS, *V = v + kv * Tk * HS;
            float *dK = dk + kv * Tk * HS, *dV = dv + kv * Tk * HS;
            for (int64_t i = 0; i < Tq; i++) {
                const int64_t seen = Tk - Tq + i + 1, r = bh * Tq + i;
                const float *qi = Q + i * HS, *gi = dout + r * HS;
                const float D = dot(gi, out + r * HS, HS);
                for (int64_t j = 0; j < seen; j++) {
                    if (hidden(segment_ids, b, Tk, i, j)) continue;
                    p[j] = expf(dot(qi, K + j * HS, HS) / sqrt_hs - lse[r]);
                    dp[j] = dot(gi, V + j * HS, HS);
                }
                float* dqi = dq + r * HS;
                memset(dqi, 0, (size_t)HS * sizeof *dqi);
                for (int64_t j = 0; j < seen; j++) {
                    if (hidden(segment_ids, b, Tk, i, j)) continue;
                    const float ds = p[j] * (dp[j] - D);          /* dS_ij */
                    for (int64_t d = 0; d < HS; d++) {
                        dqi[d] += ds * K[j * HS + d];
                        dK[j * HS + d] += ds * qi[d];
                        dV[j * HS + d] += p[j] * gi[d];
                    }
                }
                for (int64_t d = 0; d < HS; d++) dqi[d] *= scale;
            }
        }
    for (int64_t x = 0; x < B * NKV * Tk * HS; x++) dk[x] *= scale;
    return 0;
}
