/* embedding.c — token/position embedding lookup and its scatter-add backward.
 *
 * forward:  out[n] = weight[ids[n]]                         (a row copy per id)
 * backward: dweight[ids[n]] += dout[n] for all n               (repeated ids accumulate)
 * The backward adds into dweight and never touches rows no id names. The binding hands it a
 * fresh np.zeros array, whose pages the OS maps lazily: for GPT-2's 50257 x 768 table and a
 * batch of 256 tokens only ~256 rows' pages are ever written, where a memset would write all
 * 154 MB every step.
 * The backward is threaded over columns, not rows: every thread owns a slice of the C
 * channels of every row of dweight, so two threads never add into the same float and the
 * sum order (n ascending) is fixed, whatever the thread count.
 * The binding checked 0 <= ids[n] < V.
 */
#include "common.h"
#include "microgpt.h"

void embedding_forward(float* out, const int64_t* ids, const float* weight, int64_t N, int64_t V, int64_t C) {
    (void)V;
    #pragma omp parallel for schedule(static) if (N * C >= MG_PAR_MIN)
    for (int64_t n = 0; n < N; n++)
        memcpy(out + n * C, weight + ids[n] * C, (size_t)C * sizeof(float));
}

MG_CLONES static void add_span(float* dst, const float* src, int64_t len) {
    #pragma omp simd
    for (int64_t j = 0; j < len; j++) dst[j] += src[j];
}

void embedding_backward(float* dweight, const float* dout, const int64_t* ids, int64_t N, int64_t V, int64_t C) {
    (void)V;
    const int64_t slice = 64;                               /* channels per work item */
    #pragma omp parallel for schedule(static) if (N * C >= MG_PAR_MIN)
    for (int64_t j0 = 0; j0 < C; j0 += slice) {
        int64_t len = mg_min(slice, C - j0);
        for (int64_t n = 0; n < N; n++)
            add_span(dweight + ids[n] * C + j0, dout + n * C + j0, len);
    }
}
