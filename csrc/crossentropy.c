/* crossentropy.c — fused softmax + negative log-likelihood over logits (N, V).
 *
 * Forward, per row n with target t:  lse_n = m + log sum_j e^(z_j - m),  loss_n = lse_n - z_t;
 * rows whose target is ignore_index give loss 0 (lse is still computed).
 * Backward, in one pass that never builds the probabilities separately:
 *   dz_j = dloss_n (e^(z_j - lse_n) - [j == t]);  ignored rows are all zeros.
 * The binding checked every target is ignore_index or in [0, V).
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
