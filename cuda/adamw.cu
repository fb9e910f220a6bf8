/* adamw.cu: one AdamW step over a parameter tensor, in place (float32).

     m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2
     p -= lr (wd p + mhat / (sqrt(vhat) + eps)),   mhat = m / (1 - b1^t),  vhat = v / (1 - b2^t)
   The bias corrections 1 - b^t are computed once by the launcher, on the host, in double
   precision (as csrc/adamw.c does), so the kernel is a single memory-bound pass over p, g, m, v. */
#include "common.cuh"
#include "microgpt_cuda.h"

__global__ void adamw_kernel(float* param, const float* grad, float* m, float* v, int64_t n, float lr,
                             float beta1, float beta2, float eps, float weight_decay, float bc1, float bc2) {
    MG_FOR(i, n) {
        float g = grad[i];
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        float p = param[i];
        param[i] = p - lr * (weight_decay * p + (mi / bc1) / (sqrtf(vi / bc2) + eps));
    }
}

extern "C" int adamw_update(float* param, const float* grad, float* m, float* v, float lr, float beta1, float beta2,
                            float eps, float weight_decay, int64_t step, int64_t n) {
    if (n <= 0) return 0;
    if (step < 1) return (int)cudaErrorInvalidValue;
    float bc1 = (float)(1.0 - pow((double)beta1, (double)step));
    float bc2 = (float)(1.0 - pow((double)beta2, (double)step));
    adamw_kernel<<<blocks_for(n, 256), 256>>>(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, bc1, bc2);
    MG_LAUNCHED();
}
