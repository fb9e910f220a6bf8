/* moe.cu: the mixture-of-experts kernels (the twins of csrc/moe.c; the meaning and the plan
   of rows are documented there and in backends/reference.py), float32.

   R = N * k rows sorted by expert: row r copies token token_index[r], expert e owns rows
   offsets[e] .. offsets[e+1] - 1 (maybe none); w (E, OC, C). The binding has checked the plan.

     moe_permute_forward / moe_combine_backward   one thread per (row, channel): gathers
     moe_permute_backward / moe_combine_forward   scatter-adds with atomicAdd (a token's k
                                                  rows meet in one output row; their order,
                                                  and so the last bits, may vary)
     grouped_matmul_forward / _backward           16 x 16 shared-memory tiles; a block is one
                                                  (expert, row tile, column tile): it finds
                                                  its expert by walking offsets, so the grid
                                                  is R / 16 + E row tiles however uneven the
                                                  load, and an expert with no rows costs none.
                                                  dw[e] is one tile grid per expert, looping
                                                  over that expert's rows. */
#include "common.cuh"
#include "microgpt_cuda.h"

#define MOE_TILE 16

__global__ void permute_rows_kernel(float* out, const float* x, const int64_t* token_index, int64_t R, int64_t C) {
    MG_FOR(i, R * C) {
        int64_t r = i / C, c = i % C;
        out[i] = x[token_index[r] * C + c];
    }
}

__global__ void scatter_rows_kernel(float* out, const float* src, const float* scale, const int64_t* token_index,
                                    int64_t R, int64_t C) {
    MG_FOR(i, R * C) {
        int64_t r = i / C, c = i % C;
        atomicAdd(out + token_index[r] * C + c, (scale ? scale[r] : 1.0f) * src[i]);
    }
}

/* one warp per row: dy[r] = w_r dout[t_r], dweights[r] = dout[t_r] . y[r] */
__global__ void combine_backward_kernel(float* dy, float* dweights, const float* dout, const float* y,
                                        const float* weights, const int64_t* token_index, int64_t R, int64_t C) {
    int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x & 31;
    if (r >= R) return;
    const float* g = dout + token_index[r] * C;
    float w = weights[r], dot = 0.0f;
    for (int64_t c = lane; c < C; c += 32) {
        dy[r * C + c] = w * g[c];
        dot += g[c] * y[r * C + c];
    }
    dot = warp_sum(dot);
    if (lane == 0) dweights[r] = dot;
}

/* out[r, j] = sum_i in[r, i] * W_e(i, j) for the rows r of expert e, W_e(i, j) = w[e][j][i] when
   trans (w[e] stored (n_out, n_in)) else w[e][i][j] (stored (n_in, n_out)). blockIdx.y counts
   row tiles over all experts in order; the block finds which expert's tile it is. */
template <bool trans>
__global__ void grouped_rows_kernel(float* out, const float* in, const float* w, const int64_t* offsets,
                                    int64_t E, int64_t n_in, int64_t n_out) {
    __shared__ float a_tile[MOE_TILE][MOE_TILE];
    __shared__ float b_tile[MOE_TILE][MOE_TILE + 1];
    int64_t tile = blockIdx.y, e = 0, first = 0;
    for (; e < E; e++) {
        int64_t tiles = (offsets[e + 1] - offsets[e] + MOE_TILE - 1) / MOE_TILE;
        if (tile < first + tiles) break;
        first += tiles;
    }
    if (e == E) return;                                   // a spare tile of the grid
    int64_t r0 = offsets[e] + (tile - first) * MOE_TILE, r_end = offsets[e + 1];
    int ty = threadIdx.y, tx = threadIdx.x;
    int64_t r = r0 + ty, j = (int64_t)blockIdx.x * MOE_TILE + tx;
    const float* we = w + e * n_in * n_out;
    float acc = 0.0f;
    for (int64_t i0 = 0; i0 < n_in; i0 += MOE_TILE) {
        a_tile[ty][tx] = (r < r_end && i0 + tx < n_in) ? in[r * n_in + i0 + tx] : 0.0f;
        int64_t jb = (int64_t)blockIdx.x * MOE_TILE + ty, ib = i0 + tx;   // b_tile[i][j] = W_e(i, j)
        float b = 0.0f;
        if (trans) { if (jb < n_out && ib < n_in) b = we[jb * n_in + ib]; b_tile[tx][ty] = b; }
        else {
            int64_t ib2 = i0 + ty, jb2 = (int64_t)blockIdx.x * MOE_TILE + tx;
            if (ib2 < n_in && jb2 < n_out) b = we[ib2 * n_out + jb2];
            b_tile[ty][tx] = b;
        }
        __syncthreads();
        for (int k = 0; k < MOE_TILE; k++) acc += a_tile[ty][k] * b_tile[k][tx];
        __syncthreads();
    }
    if (r < r_end && j < n_out) out[r * n_out + j] = acc;
}

/* dw[e][o][c] = sum over e's rows r of dout[r][o] * x[r][c]; grid (C tiles, OC tiles, E) */
__global__ void grouped_dw_kernel(float* dw, const float* dout, const float* x, const int64_t* offsets,
                                  int64_t C, int64_t OC) {
    __shared__ float g_tile[MOE_TILE][MOE_TILE + 1];
    __shared__ float x_tile[MOE_TILE][MOE_TILE + 1];
    int64_t e = blockIdx.z, start = offsets[e], end = offsets[e + 1];
    int ty = threadIdx.y, tx = threadIdx.x;
    int64_t o = (int64_t)blockIdx.y * MOE_TILE + ty, c = (int64_t)blockIdx.x * MOE_TILE + tx;
    float acc = 0.0f;
    for (int64_t r0 = start; r0 < end; r0 += MOE_TILE) {
        int64_t rg = r0 + tx, og = (int64_t)blockIdx.y * MOE_TILE + ty;    // g_tile[row][o]
        g_tile[tx][ty] = (rg < end && og < OC) ? dout[rg * OC + og] : 0.0f;
        int64_t rx = r0 + ty;
        x_tile[ty][tx] = (rx < end && c < C) ? x[rx * C + c] : 0.0f;
        __syncthreads();
        for (int k = 0; k < MOE_TILE; k++) acc += g_tile[k][ty] * x_tile[k][tx];
        __syncthreads();
    }
    if (o < OC && c < C) dw[(e * OC + o) * C + c] = acc;
}

extern "C" {

int moe_permute_forward(float* out, const float* x, const int64_t* token_index, int64_t N, int64_t R, int64_t C) {
    (void)N;
    if (R * C == 0) return 0;
    permute_rows_kernel<<<blocks_for(R * C, 256), 256>>>(out, x, token_index, R, C);
    MG_LAUNCHED();
}

int moe_permute_backward(float* dx, const float* dout, const int64_t* token_index, int64_t N, int64_t R, int64_t C) {
    MG_CHECK(cudaMemsetAsync(dx, 0, (size_t)(N * C) * sizeof(float), 0));
    if (R * C == 0) return 0;
    scatter_rows_kernel<<<blocks_for(R * C, 256), 256>>>(dx, dout, NULL, token_index, R, C);
    MG_LAUNCHED();
}

static int grouped_rows(float* out, const float* in, const float* w, const int64_t* offsets, int64_t R,
                        int64_t E, int64_t n_in, int64_t n_out, bool trans) {
    if (R == 0 || n_out == 0) return 0;
    dim3 threads(MOE_TILE, MOE_TILE);
    dim3 grid((unsigned int)((n_out + MOE_TILE - 1) / MOE_TILE), (unsigned int)((R + MOE_TILE - 1) / MOE_TILE + E));
    if (trans) grouped_rows_kernel<true><<<grid, threads>>>(out, in, w, offsets, E, n_in, n_out);
    else grouped_rows_kernel<false><<<grid, threads>>>(out, in, w, offsets, E, n_in, n_out);
    MG_LAUNCHED();
}

int grouped_matmul_forward(float* out, const float* x, const float* w, const int64_t* offsets, int64_t R,
                           int64_t E, int64_t C, int64_t OC) {
    return grouped_rows(out, x, w, offsets, R, E, C, OC, true);
}

int grouped_matmul_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                            const int64_t* offsets, int64_t R, int64_t E, int64_t C, int64_t OC) {
    int rc = grouped_rows(dx, dout, w, offsets, R, E, OC, C, false);
    if (rc) return rc;
    if (E * OC * C == 0) return 0;
    dim3 threads(MOE_TILE, MOE_TILE);
    dim3 grid((unsigned int)((C + MOE_TILE - 1) / MOE_TILE), (unsigned int)((OC + MOE_TILE - 1) / MOE_TILE),
              (unsigned int)E);
    grouped_dw_kernel<<<grid, threads>>>(dw, dout, x, offsets, C, OC);
    MG_LAUNCHED();
}

int moe_combine_forward(float* out, const float* y, const float* weights, const int64_t* token_index, int64_t N,
                        int64_t R, int64_t C) {
    MG_CHECK(cudaMemsetAsync(out, 0, (size_t)(N * C) * sizeof(float), 0));
    if (R * C == 0) return 0;
    scatter_rows_kernel<<<blocks_for(R * C, 256), 256>>>(out, y, weights, token_index, R, C);
    MG_LAUNCHED();
}

int moe_combine_backward(float* dy, float* dweights, const float* dout, const float* y, const float* weights,
                         const int64_t* token_index, int64_t N, int64_t R, int64_t C) {
    (void)N;
    if (R == 0) return 0;
    combine_backward_kernel<<<(unsigned int)((R + 7) / 8), 256>>>(dy, dweights, dout, y, weights, token_index, R, C);
    MG_LAUNCHED();
}

}  // extern "C"
