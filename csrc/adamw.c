/* adamw.c — one fused AdamW step over a flat parameter buffer, in place (Loshchilov & Hutter).
 *
 *   m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2
 *   mhat = m / (1 - b1^t),   vhat = v / (1 - b2^t)
 *   p -= lr (wd p + mhat / (sqrt(vhat) + eps))
 * One pass reads p, g, m, v and writes p, m, v: 7 floats of memory traffic per parameter,
 * where the NumPy reference makes about a dozen temporaries.
 */
#include "common.h"
#include "microgpt.h"

MG_CLONES static void adamw_span(float* p, float* m, float* v, const float* g, int64_t n, float lr,
                                 float b1, float b2, float eps, float wd, float c1, float c2) {
    #pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        float mi = b1 * m[i] + (1.0f - b1) * g[i];
        float vi = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
        m[i] = mi;
        v[i] = vi;
        p[i] -= lr * (wd * p[i] + (mi * c1) / (sqrtf(vi * c2) + eps));
    }
}

void adamw_update(float* param, const float* grad, float* m, float* v, float lr, float beta1,
                  float beta2, float eps, float weight_decay, int64_t step, int64_t n) {
    /* bias corrections in double: 1 - b^t loses digits in float for large t */
    float c1 = (float)(1.0 / (1.0 - pow((double)beta1, (double)step)));
    float c2 = (float)(1.0 / (1.0 - pow((double)beta2, (double)step)));
    const int64_t chunk = 16384;
    #pragma omp parallel for schedule(static) if (n >= 4 * MG_PAR_MIN)
    for (int64_t c = 0; c < n; c += chunk)
        adamw_span(param + c, m + c, v + c, grad + c, mg_min(chunk, n - c), lr, beta1, beta2,
                   eps, weight_decay, c1, c2);
}
