/* rope.cu: rotary position embedding on x (B, NH, T, HS) with cos/sin tables (T, HS/2).

   Each pair (x1, x2) = (x[..., i], x[..., i + HS/2]) at time t turns by angle theta_{t,i}:
     forward   out1 = x1 cos - x2 sin,   out2 = x2 cos + x1 sin     ("rotate_half", HF Llama)
     backward  the transpose of a rotation is the rotation by -theta: sin -> -sin.
   One thread per pair; rows = BNH * T of HS values each. */
#include "common.cuh"
#include "microgpt_cuda.h"

__global__ void rope_kernel(float* out, const float* x, const float* cosv, const float* sinv,
                            int64_t rows, int64_t T, int64_t half, float sign) {
    MG_FOR(i, rows * half) {
        int64_t row = i / half, j = i % half, t = row % T;
        float c = cosv[t * half + j], s = sign * sinv[t * half + j];
        const float* xr = x + row * 2 * half;
        float x1 = xr[j], x2 = xr[j + half];
        out[row * 2 * half + j] = x1 * c - x2 * s;
        out[row * 2 * half + j + half] = x2 * c + x1 * s;
    }
}

static int rope_launch(float* out, const float* x, const float* cosv, const float* sinv, int64_t rows,
                       int64_t T, int64_t HS, float sign) {
    if (rows <= 0) return 0;
    if (HS % 2 || T <= 0) return (int)cudaErrorInvalidValue;
    rope_kernel<<<blocks_for(rows * HS / 2, 256), 256>>>(out, x, cosv, sinv, rows, T, HS / 2, sign);
    MG_LAUNCHED();
}

extern "C" {

int rope_forward(float* out, const float* x, const float* cos, const float* sin, int64_t BNH, int64_t T, int64_t HS) {
    return rope_launch(out, x, cos, sin, BNH * T, T, HS, 1.0f);
}

int rope_backward(float* dx, const float* dout, const float* cos, const float* sin, int64_t BNH, int64_t T, int64_t HS) {
    return rope_launch(dx, dout, cos, sin, BNH * T, T, HS, -1.0f);
}

}  // extern "C"
