/* quant.cu: weight-only quantized linear layers on the GPU, the twins of csrc/quant.c.

   W[o, c] = w_scale[o, c / group] * q[o, c]; int8: w_q int8 (OC, C); int4: w_q uint8 (OC, C/2),
   q + 8 two per byte by Q4_0's 32-element blocks (byte j: element j low nibble, j + 16 high).
     linear_q*_forward   out (N, OC) = x (N, C) @ W^T + b, b may be NULL. One warp per output
                         channel and input row: the 32 lanes stride over the row's inputs
                         (consecutive lanes read consecutive bytes: the weight row streams
                         through coalesced loads), dequantize in registers, multiply with x,
                         and a warp_sum adds the lanes up. The matrix-vector shape of decoding,
                         where the weight bytes are the whole cost; a prefill-sized N runs the
                         same kernel (correct, not tuned: dequantize + the GEMM is the fast way
                         there, as the C binding does).
     dequantize_q*       w (OC, C) float32, one thread per element. */
#include "common.cuh"
#include "microgpt_cuda.h"

__device__ __forceinline__ float q4_value(const uint8_t* row, int64_t c) {
    int64_t block = c / 32, j = c % 32;
    uint8_t byte = row[block * 16 + (j & 15)];
    return (float)((j < 16 ? (byte & 0x0F) : (byte >> 4)) - 8);
}

template <int BITS>
__global__ void linear_quant_kernel(float* out, const float* x, const uint8_t* w_q, const float* w_scale,
                                    const float* b, int64_t group, int64_t N, int64_t C, int64_t OC) {
    int64_t warp = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x & 31;
    if (warp >= N * OC) return;
    int64_t n = warp / OC, o = warp % OC;
    const float* xr = x + n * C;
    const float* d = w_scale + o * (C / group);
    float s = 0.0f;
    if (BITS == 8) {
        const int8_t* row = (const int8_t*)w_q + o * C;
        for (int64_t c = lane; c < C; c += 32) s += xr[c] * (float)row[c] * d[c / group];
    } else {
        const uint8_t* row = w_q + o * (C / 2);
        for (int64_t c = lane; c < C; c += 32) s += xr[c] * q4_value(row, c) * d[c / group];
    }
    s = warp_sum(s);
    if (lane == 0) out[n * OC + o] = s + (b ? b[o] : 0.0f);
}

template <int BITS>
__global__ void dequantize_kernel(float* w, const uint8_t* w_q, const float* w_scale, int64_t group,
                                  int64_t OC, int64_t C) {
    MG_FOR(i, OC * C) {
        int64_t o = i / C, c = i % C;
        float q = BITS == 8 ? (float)((const int8_t*)w_q)[i] : q4_value(w_q + o * (C / 2), c);
        w[i] = w_scale[o * (C / group) + c / group] * q;
    }
}

template <int BITS>
static int launch_linear(float* out, const float* x, const uint8_t* w_q, const float* w_scale, const float* b,
                         int64_t group, int64_t N, int64_t C, int64_t OC) {
    if (N * OC == 0) return 0;
    const int threads = 256;                              // 8 warps: 8 (row, channel) pairs a block
    int64_t blocks = (N * OC * 32 + threads - 1) / threads;
    linear_quant_kernel<BITS><<<(unsigned int)blocks, threads>>>(out, x, w_q, w_scale, b, group, N, C, OC);
    MG_LAUNCHED();
}

extern "C" {

int linear_q8_forward(float* out, const float* x, const int8_t* w_q, const float* w_scale, const float* b,
                      int64_t group, int64_t N, int64_t C, int64_t OC) {
    return launch_linear<8>(out, x, (const uint8_t*)w_q, w_scale, b, group, N, C, OC);
}

int linear_q4_forward(float* out, const float* x, const uint8_t* w_q, const float* w_scale, const float* b,
                      int64_t group, int64_t N, int64_t C, int64_t OC) {
    return launch_linear<4>(out, x, w_q, w_scale, b, group, N, C, OC);
}

int dequantize_q8(float* w, const int8_t* w_q, const float* w_scale, int64_t group, int64_t OC, int64_t C) {
    if (OC * C == 0) return 0;
    dequantize_kernel<8><<<blocks_for(OC * C, 256), 256>>>(w, (const uint8_t*)w_q, w_scale, group, OC, C);
    MG_LAUNCHED();
}

int dequantize_q4(float* w, const uint8_t* w_q, const float* w_scale, int64_t group, int64_t OC, int64_t C) {
    if (OC * C == 0) return 0;
    dequantize_kernel<4><<<blocks_for(OC * C, 256), 256>>>(w, w_q, w_scale, group, OC, C);
    MG_LAUNCHED();
}

}  // extern "C"
