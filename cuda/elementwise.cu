/* elementwise.cu: float32 arithmetic one element at a time.

   binary_op         out = a (op) b with NumPy broadcasting: the binding folds the shapes
                     into an MgShape whose strides are 0 along broadcast axes, and merges
                     axes so that equal shapes arrive as one contiguous axis (fast path).
                     out may alias a (accumulate: dst += src).
   binary_scalar_op  out = a (op) s, or s (op) a when scalar_first, for a Python number s.
   unary_op          out = f(a) for neg, exp, log, sqrt, tanh and pow(a, p).
   Op codes (same numbers in microgpt/backends/cuda.py):
     binary: 0 add, 1 sub, 2 mul, 3 div, 4 equal (1.0 where a == b, else 0.0)
     unary:  0 neg, 1 exp, 2 log, 3 sqrt, 4 tanh, 5 pow */
#include "common.cuh"
#include "microgpt_cuda.h"

__device__ __forceinline__ float apply_binary(int op, float x, float y) {
    switch (op) {
        case 0: return x + y;
        case 1: return x - y;
        case 2: return x * y;
        case 3: return x / y;
        default: return x == y ? 1.0f : 0.0f;
    }
}

__device__ __forceinline__ float apply_unary(int op, float x, float p) {
    switch (op) {
        case 0: return -x;
        case 1: return expf(x);
        case 2: return logf(x);
        case 3: return sqrtf(x);
        case 4: return tanhf(x);
        default: return powf(x, p);
    }
}

__global__ void binary_contiguous_kernel(float* out, const float* a, const float* b, int64_t n, int op) {
    MG_FOR(i, n) out[i] = apply_binary(op, a[i], b[i]);
}

__global__ void binary_broadcast_kernel(float* out, const float* a, const float* b, MgShape s, int64_t n, int op) {
    MG_FOR(i, n) {
        int64_t oa, ob;
        mg_offsets(s, i, &oa, &ob);
        out[i] = apply_binary(op, a[oa], b[ob]);
    }
}

__global__ void binary_scalar_kernel(float* out, const float* a, float s, int64_t n, int op, int scalar_first) {
    MG_FOR(i, n) out[i] = scalar_first ? apply_binary(op, s, a[i]) : apply_binary(op, a[i], s);
}

__global__ void unary_kernel(float* out, const float* a, int64_t n, int op, float p) {
    MG_FOR(i, n) out[i] = apply_unary(op, a[i], p);
}

extern "C" {

int binary_op(float* out, const float* a, const float* b, int ndim, const int64_t* size,
              const int64_t* stride_a, const int64_t* stride_b, int64_t n, int op) {
    if (op < 0 || op > 4) return (int)cudaErrorInvalidValue;
    if (n <= 0) return 0;
    if (ndim == 1 && stride_a[0] == 1 && stride_b[0] == 1) {
        binary_contiguous_kernel<<<blocks_for(n, 256), 256>>>(out, a, b, n, op);
    } else {
        MgShape s;
        MG_CHECK((cudaError_t)mg_shape(&s, ndim, size, stride_a, stride_b));
        binary_broadcast_kernel<<<blocks_for(n, 256), 256>>>(out, a, b, s, n, op);
    }
    MG_LAUNCHED();
}

int binary_scalar_op(float* out, const float* a, float s, int64_t n, int op, int scalar_first) {
    if (op < 0 || op > 4) return (int)cudaErrorInvalidValue;
    if (n <= 0) return 0;
    binary_scalar_kernel<<<blocks_for(n, 256), 256>>>(out, a, s, n, op, scalar_first);
    MG_LAUNCHED();
}

int unary_op(float* out, const float* a, int64_t n, int op, float p) {
    if (op < 0 || op > 5) return (int)cudaErrorInvalidValue;
    if (n <= 0) return 0;
    unary_kernel<<<blocks_for(n, 256), 256>>>(out, a, n, op, p);
    MG_LAUNCHED();
}

}  // extern "C"
