/* crossentropy.cu: softmax cross-entropy per row of logits (N, V), forward and backward.

   forward:  lse_n = max + log sum_v exp(logits_nv - max);  loss_n = lse_n - logits_n[target_n],
             0 where target_n == ignore_index. A target outside [0, V) that is not ignored
             gives loss 0 and sets *bad, which the binding turns into an error.
   backward: dlogits_nv = dloss_n (exp(logits_nv - lse_n) - [v == target_n]); 0 rows if ignored.
   kl_div (distillation's soft loss), z = student / T, u = teacher / T, p = softmax(u), q = softmax(z):
     forward:  kl_n = (1 / S_u) sum_v e^(u_v - m_u) d_v - log S_u + log S_z,  d_v = (u_v - m_u) - (z_v - m_z),
               with m the row maxima and S_u = sum_v e^(u_v - m_u), S_z likewise (csrc/crossentropy.c
               derives it); a term with p_v = 0 adds exactly 0; lse = m + log S for both.
     backward: dstudent_nv = (dloss_n / T) (q_nv - p_nv), both softmaxes rebuilt from the two lse.
   One block of 256 threads per row: the rows are long (V = 50257 for GPT-2). */
#include "common.cuh"
#include "microgpt_cuda.h"

__global__ void cross_entropy_forward_kernel(float* losses, float* lse_out, int* bad, const float* logits,
                                             const int64_t* targets, int64_t V, int64_t ignore_index) {
    int64_t n = blockIdx.x;
    const float* row = logits + n * V;
    float peak = -INFINITY;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) peak = fmaxf(peak, row[i]);
    peak = block_reduce(peak, true);
    float total = 0.0f;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) total += expf(row[i] - peak);
    total = block_reduce(total, false);
    if (threadIdx.x == 0) {
        float lse = peak + logf(total);
        int64_t t = targets[n];
        float loss = 0.0f;
        if (t != ignore_index) {
            if (t < 0 || t >= V) *bad = 1;
            else loss = lse - row[t];
        }
        losses[n] = loss;
        lse_out[n] = lse;
    }
}

__global__ void cross_entropy_backward_kernel(float* dlogits, const float* dlosses, const float* logits,
                                              const int64_t* targets, const float* lse, int64_t V,
                                              int64_t ignore_index) {
    int64_t n = blockIdx.x;
    int64_t t = targets[n];
    bool kept = t != ignore_index && t >= 0 && t < V;
    float scale = kept ? dlosses[n] : 0.0f, shift = lse[n];
    const float* row = logits + n * V;
    float* drow = dlogits + n * V;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
        float p = expf(row[i] - shift) - (i == t ? 1.0f : 0.0f);
        drow[i] = kept ? scale * p : 0.0f;
    }
}

__global__ void kl_div_forward_kernel(float* losses, float* student_lse, float* teacher_lse, const float* student,
                                      const float* teacher, float T, int64_t V) {
    int64_t n = blockIdx.x;
    const float* s = student + n * V;
    const float* t = teacher + n * V;
    float m_z = -INFINITY, m_u = -INFINITY;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
        m_z = fmaxf(m_z, s[i] / T);
        m_u = fmaxf(m_u, t[i] / T);
    }
    // fmaxf drops a NaN; it comes back through e^(NaN - m) in the sums below
    m_z = block_reduce(m_z, true);
    m_u = block_reduce(m_u, true);
    float S_z = 0.0f, S_u = 0.0f, W = 0.0f;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
        float z = s[i] / T - m_z, u = t[i] / T - m_u;
        float e_u = expf(u);
        S_z += expf(z);
        S_u += e_u;
        W += e_u == 0.0f ? 0.0f : e_u * (u - z);
    }
    S_z = block_reduce(S_z, false);
    S_u = block_reduce(S_u, false);
    W = block_reduce(W, false);
    if (threadIdx.x == 0) {
        float log_S_z = logf(S_z), log_S_u = logf(S_u);
        losses[n] = W / S_u - log_S_u + log_S_z;
        student_lse[n] = m_z + log_S_z;
        teacher_lse[n] = m_u + log_S_u;
    }
}

__global__ void kl_div_backward_kernel(float* dstudent, const float* dlosses, const float* student, const float* teacher,
                                       const float* student_lse, const float* teacher_lse, float T, int64_t V) {
    int64_t n = blockIdx.x;
    float scale = dlosses[n] / T, lse_z = student_lse[n], lse_u = teacher_lse[n];
    const float* s = student + n * V;
    const float* t = teacher + n * V;
    float* ds = dstudent + n * V;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) ds[i] = scale * (expf(s[i] / T - lse_z) - expf(t[i] / T - lse_u));
}

extern "C" {

int cross_entropy_forward(float* losses, float* lse, int* bad, const float* logits, const int64_t* targets,
                          int64_t ignore_index, int64_t N, int64_t V) {
    if (N <= 0) return 0;
    if (V <= 0 || N > 2147483647) return (int)cudaErrorInvalidValue;
    cross_entropy_forward_kernel<<<(unsigned int)N, 256>>>(losses, lse, bad, logits, targets, V, ignore_index);
    MG_LAUNCHED();
}

int cross_entropy_backward(float* dlogits, const float* dlosses, const float* logits, const int64_t* targets,
                           const float* lse, int64_t ignore_index, int64_t N, int64_t V) {
    if (N <= 0) return 0;
    if (V <= 0 || N > 2147483647) return (int)cudaErrorInvalidValue;
    cross_entropy_backward_kernel<<<(unsigned int)N, 256>>>(dlogits, dlosses, logits, targets, lse, V, ignore_index);
    MG_LAUNCHED();
}

int kl_div_forward(float* losses, float* student_lse, float* teacher_lse, const float* student, const float* teacher,
                   float temperature, int64_t N, int64_t V) {
    if (N <= 0) return 0;
    if (V <= 0 || N > 2147483647) return (int)cudaErrorInvalidValue;
    kl_div_forward_kernel<<<(unsigned int)N, 256>>>(losses, student_lse, teacher_lse, student, teacher, temperature, V);
    MG_LAUNCHED();
}

int kl_div_backward(float* dstudent, const float* dlosses, const float* student, const float* teacher,
                    const float* student_lse, const float* teacher_lse, float temperature, int64_t N, int64_t V) {
    if (N <= 0) return 0;
    if (V <= 0 || N > 2147483647) return (int)cudaErrorInvalidValue;
    kl_div_backward_kernel<<<(unsigned int)N, 256>>>(dstudent, dlosses, student, teacher, student_lse, teacher_lse,
                                                     temperature, V);
    MG_LAUNCHED();
}

}  // extern "C"
