/* embedding.cu: token/position embeddings, forward (a row gather) and backward (a
   scatter-add of gradient rows), float32. Both reuse the row kernels of shape.cu:
     forward   out[n, :] = weight[ids[n], :]            (ids int64, flattened; n < N)
     backward  dweight[ids[n], :] += dout[n, :]         (dweight zeroed here first; atomics,
               so repeated ids accumulate — their order, and so the last bits, may vary)
   An id outside [0, V) sets *bad; the binding raises. */
#include "common.cuh"
#include "microgpt_cuda.h"

extern "C" {

int embedding_forward(float* out, int* bad, const int64_t* ids, const float* weight, int64_t N, int64_t V, int64_t C) {
    return gather_rows(out, bad, weight, ids, N, V, C, 4);
}

int embedding_backward(float* dweight, int* bad, const float* dout, const int64_t* ids, int64_t N, int64_t V, int64_t C) {
    MG_CHECK(cudaMemsetAsync(dweight, 0, (size_t)(V * C) * sizeof(float), 0));
    return scatter_add_rows(dweight, bad, dout, ids, N, V, C);
}

}  // extern "C"
