/*
 * decode_step.c — one decoding step of the paged decoder in a single C call.
 *
 * Specification: inference/paged.py, PagedDecoder.forward for a plan of decode rows only (one
 * generated token per sequence, no prompt rows). This file calls the *same kernels* with the
 * *same arguments* in the *same order* as that Python loop does, so its logits are the Python
 * loop's bit for bit (tests/test_decode_step.py asks for equality, not closeness, on both
 * families, float and quantized weights, one row and many). It adds no arithmetic of its own
 * beyond the two elementwise ones the Python loop does in NumPy (x + y and, for SwiGLU, x * y:
 * one IEEE rounding each, whoever performs them) and the copies that NumPy's views did.
 *
 * Why it exists. A token of the "small" shape (6 layers x 384 channels) is ~80 kernel calls, each
 * of 2-40 us of arithmetic; driven from Python every call also pays its Python frames, NumPy's
 * output allocation and cffi's argument conversion: ~1,300 Python-level calls a token, measured
 * ~0.3-0.5 ms of a 1-2 ms step (benchmarks/results/quantize.md). That fixed cost is what kept
 * int8 and int4 decoding near fp32 on small models, where the weights are a few MB and the
 * arithmetic is quick, and what llama.cpp (a C++ graph per token) does not pay. Here the layer
 * loop runs in C over weights described once (the binding, backends/cpu_decode.py DecodeStep,
 * fills the structs below when the decoder is built); Python calls this once a token.
 *
 *   x = wte[ids] (+ wpe[positions])                                  embedding_forward, add
 *   for each layer:
 *     h = norm_1(x)                                                  layer_norm / rms_norm
 *     q, k, v = split(h W_qkv) (GPT-2) | h W_q, h W_k, h W_v        the linear kinds below
 *     q, k = rms_norm per head (qk_norm); q, k = rope(q, k) (Llama) rms_norm, rope_forward
 *     cache[slots] = k, v                                            paged_cache_write
 *     y = attention(q, cache, tables, positions)                     paged_attention_forward
 *     x = x + y W_o
 *     h = norm_2(x)
 *     x = x + gelu(h W_fc) W_proj (GPT-2) | (silu(h W_g) * h W_u) W_d (Llama)
 *   logits = norm_f(x[last_rows]) W_head
 *
 * A linear layer is one of three kinds, the decoder's streaming path for each (paged.py's
 * _streamed): float32 (linear_rows_forward, either weight layout), int8 and int4
 * (linear_q8_forward_intdot / linear_q4_forward_intdot, quant.c's integer dots). A decoder that
 * need not be batch invariant (paged.py, batch_invariant=False: RL rollouts) marks its float
 * layers packed: linear_forward, whose GEMM serves many rows faster, as its Python loop does.
 * Every kernel keeps its own threading (its OpenMP region and threshold), as under the loop.
 *
 * What the binding guarantees (it checks them once, at build, and per call what varies): the
 * weights' shapes against the config, float32 C-contiguous arrays, ids in [0, V) (checked here
 * too: -2, nothing written), slots / tables / positions from a PagedKVCache.plan, at most
 * INTDOT_MAX_ROWS rows when a layer is quantized (above that the Python loop dequantizes for
 * the GEMM, and so does the caller: it does not call this). `work` holds
 * decode_step_workspace floats: returns -1, nothing written, when work_len is shorter.
 *
 * Built into microgpt.backends._cpu by backends/cpu_build.py.
 */
#include <string.h>
#include "microgpt.h"

static void linear_run(float* out, const float* x, const decode_linear* L, int64_t N) {
    if (L->kind == DECODE_LINEAR_INT8)
        linear_q8_forward_intdot(out, x, (const int8_t*)L->w, L->w_scale, L->b, L->group, N, L->C, L->OC);
    else if (L->kind == DECODE_LINEAR_INT4)
        linear_q4_forward_intdot(out, x, (const uint8_t*)L->w, L->w_scale, L->b, L->group, N, L->C, L->OC);
    else if (L->packed)
        linear_forward(out, x, (const float*)L->w, L->b, L->w_in_out, N, L->C, L->OC);
    else
        linear_rows_forward(out, x, (const float*)L->w, L->b, L->w_in_out, N, L->C, L->OC);
}

/* NumPy's x + y and x * y on float32: one rounding per element, any order of elements */
static void add_into(float* x, const float* y, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = x[i] + y[i];
}

static void mul_into(float* x, const float* y, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = x[i] * y[i];
}

/* GPT-2: LayerNorm with its bias (NULL: none); Llama: RMSNorm. stats: 2 N floats. */
static void norm_run(float* out, float* stats, const float* x, const decode_norm* nrm, int gpt2, int64_t N,
                     int64_t C) {
    if (gpt2)
        layer_norm_forward(out, stats, stats + N, x, nrm->w, nrm->b, nrm->eps, N, C);
    else
        rms_norm_forward(out, stats, x, nrm->w, nrm->eps, N, C);
}

/* The scratch of one step, in floats (the order decode_step carves it in). */
static int64_t scratch_floats(const decode_model* m, int64_t N, int64_t S) {
    const int64_t C = m->C, Q = m->NH * m->HS, KV = m->NKV * m->HS;
    return N * C                            /* x: the residual stream */
           + N * C                          /* h: a norm's output */
           + N * (Q + 2 * KV)               /* the fused qkv product (GPT-2) */
           + 2 * N * Q + 2 * N * KV         /* q, k, v and rope's output (q-sized) */
           + N * Q                          /* y: attention's output */
           + N * C                          /* a: a block's output before the add */
           + 2 * N * m->hidden              /* the MLP's hidden rows (two for SwiGLU) */
           + 2 * N * (m->NH > 2 ? m->NH : 2) /* norm statistics (qk_norm: one per head row) */
           + 2 * S * C;                     /* the last rows and their final norm */
}

int64_t decode_step_workspace(const decode_model* m, int64_t N, int64_t S, int64_t MB) {
    return scratch_floats(m, N, S) + paged_attention_workspace(MB, m->BS);
}

int decode_step(float* logits, float* work, int64_t work_len, const decode_model* m, const int64_t* ids,
                const int64_t* positions, const int64_t* slots, const int64_t* block_tables,
                const int64_t* last_rows, int64_t N, int64_t S, int64_t MB) {
    const int64_t C = m->C, NH = m->NH, NKV = m->NKV, HS = m->HS, half = HS / 2;
    const int64_t Q = NH * HS, KV = NKV * HS, H = m->hidden;
    if (work_len < decode_step_workspace(m, N, S, MB)) return -1;
    for (int64_t n = 0; n < N; n++)
        if (ids[n] < 0 || ids[n] >= m->V) return -2;
    float *x = work, *h = x + N * C, *qkv = h + N * C, *q = qkv + N * (Q + 2 * KV), *k = q + N * Q;
    float *v = k + N * KV, *roped = v + N * KV, *y = roped + N * Q, *a = y + N * Q, *f1 = a + N * C;
    float *f2 = f1 + N * H, *stats = f2 + N * H, *xs = stats + 2 * N * (NH > 2 ? NH : 2), *hs = xs + S * C;
    float* attn_work = hs + S * C;
    const int64_t attn_len = work_len - (attn_work - work);

    embedding_forward(x, ids, m->wte, N, m->V, C);
    if (m->wpe) {                                   /* GPT-2: x + wpe[positions] (paged.py) */
        embedding_forward(a, positions, m->wpe, N, m->block_size, C);
        add_into(x, a, N * C);
    }
    for (int64_t l = 0; l < m->n_layer; l++) {
        const decode_layer* L = m->layers + l;
        norm_run(h, stats, x, &L->norm_1, m->gpt2, N, C);
        if (m->gpt2) {                              /* heads = (N, NH + 2 NKV, HS): split by copies */
            linear_run(qkv, h, &L->qkv, N);
            for (int64_t n = 0; n < N; n++) {
                const float* row = qkv + n * (Q + 2 * KV);
                memcpy(q + n * Q, row, sizeof(float) * (size_t)Q);
                memcpy(k + n * KV, row + Q, sizeof(float) * (size_t)KV);
                memcpy(v + n * KV, row + Q + KV, sizeof(float) * (size_t)KV);
            }
        } else {
            linear_run(q, h, &L->q, N);
            linear_run(k, h, &L->k, N);
            if (L->q_norm.w) {                      /* RMSNorm over HS, every head row */
                rms_norm_forward(roped, stats, q, L->q_norm.w, L->q_norm.eps, N * NH, HS);
                memcpy(q, roped, sizeof(float) * (size_t)(N * Q));
                rms_norm_forward(roped, stats, k, L->k_norm.w, L->k_norm.eps, N * NKV, HS);
                memcpy(k, roped, sizeof(float) * (size_t)(N * KV));
            }
            /* rope: paged.py puts the rows on rope_forward's T axis with each row's own angles;
             * rope.c rotates each (head, row) by the angles of its row, so a call per row with
             * that row's table entry runs the same row function on the same numbers */
            for (int64_t n = 0; n < N; n++) {
                const float *cs = m->cos + positions[n] * half, *sn = m->sin + positions[n] * half;
                rope_forward(roped + n * Q, q + n * Q, cs, sn, NH, 1, HS);
                rope_forward(roped + N * Q + n * KV, k + n * KV, cs, sn, NKV, 1, HS);
            }
            memcpy(q, roped, sizeof(float) * (size_t)(N * Q));
            memcpy(k, roped + N * Q, sizeof(float) * (size_t)(N * KV));
            linear_run(v, h, &L->v, N);
        }
        paged_cache_write(L->k_cache, L->v_cache, k, v, slots, N, NKV, m->NB, m->BS, HS);
        if (paged_attention_forward(y, attn_work, attn_len, q, L->k_cache, L->v_cache, block_tables, positions, N,
                                    NH, NKV, m->NB, m->BS, MB, HS))
            return -1;
        linear_run(a, y, &L->out, N);
        add_into(x, a, N * C);
        norm_run(h, stats, x, &L->norm_2, m->gpt2, N, C);
        if (m->gpt2) {
            linear_run(f1, h, &L->fc, N);
            gelu_forward(f2, f1, N * H);
            linear_run(a, f2, &L->proj, N);
        } else {
            linear_run(f1, h, &L->gate, N);
            silu_forward(f2, f1, N * H);
            linear_run(f1, h, &L->up, N);
            mul_into(f2, f1, N * H);
            linear_run(a, f2, &L->down, N);
        }
        add_into(x, a, N * C);
    }
    for (int64_t s = 0; s < S; s++) memcpy(xs + s * C, x + last_rows[s] * C, sizeof(float) * (size_t)C);
    norm_run(hs, stats, xs, &m->norm_f, m->gpt2, S, C);
    linear_run(logits, hs, &m->head, S);
    return 0;
}
