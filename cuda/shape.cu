/* shape.cu: kernels that move elements without arithmetic, for any 4- or 8-byte dtype.

   strided_copy     out (contiguous) = the strided view (offset, sizes, strides) of inp.
                    One kernel serves permute (strides reordered), broadcast_to (stride 0),
                    basic getitem (sliced strides) and contiguous copies.
   strided_scatter  the strided view of out = inp (contiguous): the backward of a basic
                    getitem (a view's elements are distinct, so plain stores suffice) and
                    each piece of concatenate.
   gather_rows      out[i, :] = table[ids[i], :]; integer-array getitem on axis 0 and the
                    embedding forward. An id outside [0, rows) writes zeros and sets *bad.
   scatter_add_rows out[ids[i], :] += src[i, :] with atomics (repeated ids accumulate):
                    integer-array getitem backward and the embedding backward (float32).
   Sizes and strides are in elements; ndim <= MG_MAX_DIMS. */
#include "common.cuh"
#include "microgpt_cuda.h"

template <typename T>
__global__ void strided_copy_kernel(T* out, const T* inp, MgShape s, int64_t offset, int64_t n) {
    MG_FOR(i, n) {
        int64_t oa, ob;
        mg_offsets(s, i, &oa, &ob);
        out[i] = inp[offset + oa];
    }
}

template <typename T>
__global__ void strided_scatter_kernel(T* out, const T* inp, MgShape s, int64_t offset, int64_t n) {
    MG_FOR(i, n) {
        int64_t oa, ob;
        mg_offsets(s, i, &oa, &ob);
        out[offset + oa] = inp[i];
    }
}

template <typename T>
__global__ void gather_rows_kernel(T* out, int* bad, const T* table, const int64_t* ids,
                                   int64_t n_ids, int64_t rows, int64_t width) {
    MG_FOR(i, n_ids * width) {
        int64_t r = i / width, c = i % width, id = ids[r];
        if (id < 0 || id >= rows) {
            out[i] = (T)0;
            *bad = 1;
        } else {
            out[i] = table[id * width + c];
        }
    }
}

__global__ void scatter_add_rows_kernel(float* out, int* bad, const float* src, const int64_t* ids,
                                        int64_t n_ids, int64_t rows, int64_t width) {
    MG_FOR(i, n_ids * width) {
        int64_t r = i / width, c = i % width, id = ids[r];
        if (id < 0 || id >= rows) *bad = 1;
        else atomicAdd(&out[id * width + c], src[i]);
    }
}

extern "C" {

int strided_copy(void* out, const void* inp, int elsize, int ndim, const int64_t* size,
                 const int64_t* strides, int64_t offset, int64_t n) {
    MgShape s;
    MG_CHECK((cudaError_t)mg_shape(&s, ndim, size, strides, NULL));
    if (n <= 0) return 0;
    if (elsize == 4) strided_copy_kernel<<<blocks_for(n, 256), 256>>>((uint32_t*)out, (const uint32_t*)inp, s, offset, n);
    else if (elsize == 8) strided_copy_kernel<<<blocks_for(n, 256), 256>>>((uint64_t*)out, (const uint64_t*)inp, s, offset, n);
    else return (int)cudaErrorInvalidValue;
    MG_LAUNCHED();
}

int strided_scatter(void* out, const void* inp, int elsize, int ndim, const int64_t* size,
                    const int64_t* strides, int64_t offset, int64_t n) {
    MgShape s;
    MG_CHECK((cudaError_t)mg_shape(&s, ndim, size, strides, NULL));
    if (n <= 0) return 0;
    if (elsize == 4) strided_scatter_kernel<<<blocks_for(n, 256), 256>>>((uint32_t*)out, (const uint32_t*)inp, s, offset, n);
    else if (elsize == 8) strided_scatter_kernel<<<blocks_for(n, 256), 256>>>((uint64_t*)out, (const uint64_t*)inp, s, offset, n);
    else return (int)cudaErrorInvalidValue;
    MG_LAUNCHED();
}

int gather_rows(void* out, int* bad, const void* table, const int64_t* ids, int64_t n_ids,
                int64_t rows, int64_t width, int elsize) {
    int64_t n = n_ids * width;
    if (n <= 0) return 0;
    if (elsize == 4) gather_rows_kernel<<<blocks_for(n, 256), 256>>>((uint32_t*)out, bad, (const uint32_t*)table, ids, n_ids, rows, width);
    else if (elsize == 8) gather_rows_kernel<<<blocks_for(n, 256), 256>>>((uint64_t*)out, bad, (const uint64_t*)table, ids, n_ids, rows, width);
    else return (int)cudaErrorInvalidValue;
    MG_LAUNCHED();
}

int scatter_add_rows(float* out, int* bad, const float* src, const int64_t* ids, int64_t n_ids,
                     int64_t rows, int64_t width) {
    int64_t n = n_ids * width;
    if (n <= 0) return 0;
    scatter_add_rows_kernel<<<blocks_for(n, 256), 256>>>(out, bad, src, ids, n_ids, rows, width);
    MG_LAUNCHED();
}

}  // extern "C"
