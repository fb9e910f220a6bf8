/* crossentropy.c — fused softmax + negative log-likelihood over logits (N, V), against a one-hot
 * target (cross_entropy) or a soft one (kl_div, distillation's loss).
 *
 * Forward, per row n with target t:  lse_n = m + log sum_j e^(z_j - m),  loss_n = lse_n - z_t;
 * rows whose target is ignore_index give loss 0 (lse is still computed).
 * Backward, in one pass that never builds the probabilities separately:
 *   dz_j = dloss_n (e^(z_j - lse_n) - [j == t]);  ignored rows are all zeros.
 * The binding checked every target is ignore_index or in [0, V).
 *
 * kl_div: KL(p || q) with p = softmax(u), q = softmax(z), u = teacher / T, z = student / T.
 * With the row maxima m_u, m_z, the shifted sums S_u = sum_j e^(u_j - m_u), S_z likewise,
 * log p_j = (u_j - m_u) - log S_u and log q_j = (z_j - m_z) - log S_z, so
 *   kl = sum_j p_j (log p_j - log q_j) = (1 / S_u) sum_j e^(u_j - m_u) d_j - log S_u + log S_z,
 *   d_j = (u_j - m_u) - (z_j - m_z)
 * (sum_j p_j = 1 took the two logs out of the sum): one pass for the two maxima, one for the
 * three sums S_u, S_z, W = sum e^(u_j - m_u) d_j. Both exponents are <= 0 (nothing overflows
 * whatever the logits' size), d_j is a difference of two shifted values (a teacher equal to
 * its student gives d = 0 and kl = 0 exactly), and a term whose p_j is 0 (a teacher logit of
 * -inf, or one that underflows) adds exactly 0, not 0 * d_j, which is NaN where d_j = inf (a
 * student logit of -inf the teacher gives no mass). The backward is cross_entropy's with p in
 * place of the one-hot (reference.py derives it): dz_j = (dloss / T) (q_j - p_j), both
 * softmaxes rebuilt from the forward's two logsumexps, lse = m + log S.
 */
#include "common.h"
#include "microgpt.h"

MG_CLONES static float ce_row_lse(const float* z, int64_t V) {
    float m = -INFINITY;
    #pragma omp simd reduction(max:m)
    for (int64_t j = 0; j < V; j++) m = z[j] > m ? z[j] : m;
    float s = 0.0f;
    #pragma omp simd reduction(+:s)
    for (int64_t j = 0; j < V; j++) s += mg_expf(z[j] - m);
    return m + logf(s);
}

void cross_entropy_forward(float* losses, float* lse, const float* logits, const int64_t* targets,
                           int64_t ignore_index, int64_t N, int64_t V) {
    #pragma omp parallel for schedule(static) if (N * V >= MG_PAR_MIN)
    for (int64_t n = 0; n < N; n++) {
        const float* z = logits + n * V;
        lse[n] = ce_row_lse(z, V);
        losses[n] = targets[n] == ignore_index ? 0.0f : lse[n] - z[targets[n]];
    }
}

MG_CLONES static void ce_row_backward(float* dz, const float* z, float lse, float d, int64_t V) {
    #pragma omp simd
    for (int64_t j = 0; j < V; j++) dz[j] = d * mg_expf(z[j] - lse);
}

void cross_entropy_backward(float* dlogits, const float* dlosses, const float* logits,
                            const int64_t* targets, const float* lse, int64_t ignore_index,
                            int64_t N, int64_t V) {
    #pragma omp parallel for schedule(static) if (N * V >= MG_PAR_MIN)
    for (int64_t n = 0; n < N; n++) {
        float* dz = dlogits + n * V;
        if (targets[n] == ignore_index) {
            memset(dz, 0, (size_t)V * sizeof(float));
            continue;
        }
        ce_row_backward(dz, logits + n * V, lse[n], dlosses[n], V);
        const int64_t t = targets[n];      /* d (p_t - 1), not d p_t - d: they differ at d = +-inf */
        dz[t] = dlosses[n] * (mg_expf(logits[n * V + t] - lse[n]) - 1.0f);
    }
}

/* ---- kl_div: two logsumexps per row, threaded over rows ------------------------------------ */

MG_CLONES static float kl_row_forward(float* student_lse, float* teacher_lse, const float* s,
                                      const float* t, float T, int64_t V) {
    float m_z = -INFINITY, m_u = -INFINITY;
    #pragma omp simd reduction(max:m_z, m_u)
    for (int64_t j = 0; j < V; j++) {
        const float z = s[j] / T, u = t[j] / T;
        m_z = z > m_z ? z : m_z;
        m_u = u > m_u ? u : m_u;
    }
    float S_z = 0.0f, S_u = 0.0f, W = 0.0f;
    #pragma omp simd reduction(+:S_z, S_u, W)
    for (int64_t j = 0; j < V; j++) {
        const float z = s[j] / T - m_z, u = t[j] / T - m_u;
        const float e_u = mg_expf(u);
        S_z += mg_expf(z);
        S_u += e_u;
        W += e_u == 0.0f ? 0.0f : e_u * (u - z);
    }
    const float log_S_z = logf(S_z), log_S_u = logf(S_u);
    *student_lse = m_z + log_S_z;
    *teacher_lse = m_u + log_S_u;
    return W / S_u - log_S_u + log_S_z;
}

void kl_div_forward(float* losses, float* student_lse, float* teacher_lse, const float* student,
                    const float* teacher, float temperature, int64_t N, int64_t V) {
    #pragma omp parallel for schedule(static) if (N * V >= MG_PAR_MIN)
    for (int64_t n = 0; n < N; n++)
        losses[n] = kl_row_forward(student_lse + n, teacher_lse + n, student + n * V, teacher + n * V,
                                   temperature, V);
}

MG_CLONES static void kl_row_backward(float* ds, const float* s, const float* t, float lse_z, float lse_u,
                                      float scale, float T, int64_t V) {
    #pragma omp simd
    for (int64_t j = 0; j < V; j++) ds[j] = scale * (mg_expf(s[j] / T - lse_z) - mg_expf(t[j] / T - lse_u));
}

void kl_div_backward(float* dstudent, const float* dlosses, const float* student, const float* teacher,
                     const float* student_lse, const float* teacher_lse, float temperature, int64_t N,
                     int64_t V) {
    #pragma omp parallel for schedule(static) if (N * V >= MG_PAR_MIN)
    for (int64_t n = 0; n < N; n++)
        kl_row_backward(dstudent + n * V, student + n * V, teacher + n * V, student_lse[n], teacher_lse[n],
                        dlosses[n] / temperature, temperature, V);
}
