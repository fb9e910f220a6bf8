/* rope.c — rotary position embedding over x (BNH, T, HS), angles cos/sin (T, HS/2).
 *
 * Each pair (x1, x2) = (x[i], x[i + HS/2]) of row t turns by theta_{t,i} ("rotate_half"):
 *   forward:  out1 = x1 cos - x2 sin,   out2 = x2 cos + x1 sin
 *   backward: the transpose, i.e. the rotation by -theta:
 *             d1 = g1 cos + g2 sin,     d2 = g2 cos - g1 sin
 */
#include "common.h"
#include "microgpt.h"

/* sign = +1 rotates forward, -1 backward (sin -> -sin) */
MG_CLONES static void rope_row(float* y, const float* x, const float* c, const float* s,
                               float sign, int64_t half) {
    #pragma omp simd
    for (int64_t i = 0; i < half; i++) {
        float x1 = x[i], x2 = x[i + half], sn = sign * s[i];
        y[i] = x1 * c[i] - x2 * sn;
        y[i + half] = x2 * c[i] + x1 * sn;
    }
}

static void rope_apply(float* out, const float* x, const float* cos, const float* sin,
                       float sign, int64_t BNH, int64_t T, int64_t HS) {
    int64_t half = HS / 2;
    #pragma omp parallel for schedule(static) if (BNH * T * HS >= MG_PAR_MIN)
    for (int64_t r = 0; r < BNH * T; r++) {
        int64_t t = r % T;
        rope_row(out + r * HS, x + r * HS, cos + t * half, sin + t * half, sign, half);
    }
}

void rope_forward(float* out, const float* x, const float* cos, const float* sin,
                  int64_t BNH, int64_t T, int64_t HS) {
    rope_apply(out, x, cos, sin, 1.0f, BNH, T, HS);
}

void rope_backward(float* dx, const float* dout, const float* cos, const float* sin,
                   int64_t BNH, int64_t T, int64_t HS) {
    rope_apply(dx, dout, cos, sin, -1.0f, BNH, T, HS);
}
