/* memory.cu: device memory and the device itself — allocate, free, copy host<->device and
   device<->device, memset, fill, synchronize, name the card, and turn an error code into
   CUDA's message. The binding (microgpt/backends/cuda.py) keeps a caching pool on top of
   cuda_malloc/cuda_free, as PyTorch does, because cudaFree synchronizes the device. */
#include "common.cuh"
#include "microgpt_cuda.h"

extern "C" {

const char* cuda_error_string(int code) { return cudaGetErrorString((cudaError_t)code); }

int cuda_device_count(int* count) {
    *count = 0;
    return (int)cudaGetDeviceCount(count);
}

int cuda_device_name(char* buf, int len) {
    cudaDeviceProp prop;
    int device = 0;
    MG_CHECK(cudaGetDevice(&device));
    MG_CHECK(cudaGetDeviceProperties(&prop, device));
    int i = 0;
    for (; i < len - 1 && prop.name[i]; i++) buf[i] = prop.name[i];
    buf[i] = 0;
    return 0;
}

int cuda_malloc(void** ptr, size_t bytes) { return (int)cudaMalloc(ptr, bytes ? bytes : 1); }
int cuda_free(void* ptr) { return (int)cudaFree(ptr); }
int cuda_memcpy_h2d(void* dst, const void* src, size_t bytes) { return (int)cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice); }
int cuda_memcpy_d2h(void* dst, const void* src, size_t bytes) { return (int)cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost); }
int cuda_memcpy_d2d(void* dst, const void* src, size_t bytes) { return (int)cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, 0); }
int cuda_memset(void* ptr, int value, size_t bytes) { return (int)cudaMemsetAsync(ptr, value, bytes, 0); }
int cuda_synchronize(void) { return (int)cudaDeviceSynchronize(); }

__global__ void fill_f32_kernel(float* out, float value, int64_t n) {
    MG_FOR(i, n) out[i] = value;
}

__global__ void fill_i64_kernel(int64_t* out, int64_t value, int64_t n) {
    MG_FOR(i, n) out[i] = value;
}

int fill_f32(float* out, float value, int64_t n) {
    if (n <= 0) return 0;
    fill_f32_kernel<<<blocks_for(n, 256), 256>>>(out, value, n);
    MG_LAUNCHED();
}

int fill_i64(int64_t* out, int64_t value, int64_t n) {
    if (n <= 0) return 0;
    fill_i64_kernel<<<blocks_for(n, 256), 256>>>(out, value, n);
    MG_LAUNCHED();
}

}  // extern "C"
