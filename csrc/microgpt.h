/* microgpt.h — the C ABI of microgpt's CPU kernels: every kernel's declaration, one place.
 *
 * The text between the CDEF markers is fed verbatim to cffi (microgpt/backends/cpu_build.py),
 * so it stays "cdef-clean": plain declarations, no #include, no #ifdef, no macros.
 * Everything else (include guards, <stdint.h>) sits outside the markers.
 *
 * One signature per kernel, in every language (as in llm.c): a kernel here and its twin in
 * cuda/microgpt_cuda.h take the same arguments in the same order, named as in the NumPy
 * reference (backends/reference.py): the outputs the reference returns first (gradients carry
 * a d prefix: dx, dw), then scratch, then the reference's inputs and scalars in its order,
 * then the sizes, then int flags. Every size is an int64_t. tests/test_kernel_signatures.py
 * holds the rule and checks it. All arrays are float32, C-contiguous, row-major,
 * non-overlapping; the Python binding (backends/cpu.py) guarantees this, so the C code
 * trusts its arguments. Integer ids are int64 and already range-checked.
 *
 * Size legend:
 *   N    rows (every leading axis flattened)      C    channels (the last axis)
 *   OC   output channels of a linear layer        V    vocabulary size
 *   B    batch   T time   NH query heads   NKV key/value heads   HS head size
 *   M, N, K   matmul: out (M, N) = op(a) (M, K) @ op(b) (K, N)
 *   BNH  B * NH (all rotary rows of one time step)   n  number of elements
 *   NB   blocks of a paged KV cache   BS  positions per block   MB  blocks per block-table row
 */
#ifndef MICROGPT_H
#define MICROGPT_H
#include <stdint.h>

/* BEGIN CDEF */

/* ---- threads (threads.c) -------------------------------------------------------------- */
void microgpt_set_num_threads(int threads);   /* OpenMP threads used by every kernel */
int microgpt_get_num_threads(void);
const char* microgpt_simd_path(void);      /* "avx512", "avx2" or "scalar": the matmul path */
int microgpt_set_simd_path(const char* name);  /* force a path ("" = best); 0 if this CPU lacks it */

/* ---- matmul (matmul.c): the BLIS-style ladder -------------------------------------------
 * out (M, N) = op(a) @ op(b) + bias, bias (N) added to every row (NULL: none).
 * op(a) is a (M, K), or a^T when trans_a and a is stored (K, M);
 * op(b) is b (K, N), or b^T when trans_b and b is stored (N, K).                          */
void matmul_forward_v1_naive(float* out, const float* a, const float* b, const float* bias,
                             int64_t M, int64_t N, int64_t K, int trans_a, int trans_b);
void matmul_forward_v2_blocked(float* out, const float* a, const float* b, const float* bias,
                               int64_t M, int64_t N, int64_t K, int trans_a, int trans_b);
void matmul_forward_v3_packed(float* out, const float* a, const float* b, const float* bias,
                              int64_t M, int64_t N, int64_t K, int trans_a, int trans_b);
void matmul_forward_v4_threaded(float* out, const float* a, const float* b, const float* bias,
                                int64_t M, int64_t N, int64_t K, int trans_a, int trans_b);
/* the production rung (an alias of v4) */
void matmul_forward(float* out, const float* a, const float* b, const float* bias,
                    int64_t M, int64_t N, int64_t K, int trans_a, int trans_b);
/* batch of independent products out[z] = op(a[z]) @ op(b[z]) + bias, z < batch, the
 * stride_* apart in elements; a stride of 0 broadcasts that operand over the batch */
void matmul_forward_batched(float* out, const float* a, const float* b, const float* bias,
                            int64_t batch, int64_t stride_out, int64_t stride_a, int64_t stride_b,
                            int64_t M, int64_t N, int64_t K, int trans_a, int trans_b);
/* out (N, OC) = x (N, C) @ w^T (C, OC) + b (OC) with w (OC, C); b may be NULL.
 * w_in_out: w is stored (C, OC) (GPT-2's Conv1D layout) and out = x @ w + b. */
void linear_forward(float* out, const float* x, const float* w, const float* b, int w_in_out,
                    int64_t N, int64_t C, int64_t OC);
/* linear_forward by its few-rows streaming path for any N: each row's bits do not depend on N */
void linear_rows_forward(float* out, const float* x, const float* w, const float* b, int w_in_out,
                         int64_t N, int64_t C, int64_t OC);
/* dx = dout @ w, dw = dout^T @ x (w_in_out: dx = dout @ w^T, dw = x^T @ dout, in w's layout),
 * db = column sums of dout (NULL: skipped) */
void linear_backward(float* dx, float* dw, float* db, const float* dout, const float* x, const float* w,
                     int w_in_out, int64_t N, int64_t C, int64_t OC);

/* ---- softmax family (softmax.c, crossentropy.c), over the last axis of (N, C) / (N, V) ---- */
void softmax_forward(float* out, const float* x, int64_t N, int64_t C);
void softmax_backward(float* dx, const float* dout, const float* out, int64_t N, int64_t C);
void log_softmax_forward(float* out, const float* x, int64_t N, int64_t C);
void log_softmax_backward(float* dx, const float* dout, const float* out, int64_t N, int64_t C);
void cross_entropy_forward(float* losses, float* lse, const float* logits, const int64_t* targets,
                           int64_t ignore_index, int64_t N, int64_t V);
void cross_entropy_backward(float* dlogits, const float* dlosses, const float* logits,
                            const int64_t* targets, const float* lse, int64_t ignore_index,
                            int64_t N, int64_t V);
/* distillation's KL(softmax(teacher / T) || softmax(student / T)) per row; lse (N) of both / T */
void kl_div_forward(float* losses, float* student_lse, float* teacher_lse, const float* student,
                    const float* teacher, float temperature, int64_t N, int64_t V);
void kl_div_backward(float* dstudent, const float* dlosses, const float* student, const float* teacher,
                     const float* student_lse, const float* teacher_lse, float temperature, int64_t N,
                     int64_t V);

/* ---- normalization (norm.c) --------------------------------------------------------------- */
/* rows of (N, C); w, b (C); b and db may be NULL; mean, rstd (N) */
void layer_norm_forward(float* out, float* mean, float* rstd, const float* x, const float* w,
                        const float* b, float eps, int64_t N, int64_t C);
void layer_norm_backward(float* dx, float* dw, float* db, const float* dout, const float* x,
                         const float* w, const float* mean, const float* rstd, int64_t N, int64_t C);
void rms_norm_forward(float* out, float* rstd, const float* x, const float* w, float eps,
                      int64_t N, int64_t C);
void rms_norm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                       const float* rstd, int64_t N, int64_t C);

/* ---- activations (activation.c), elementwise over n values ---------------------------------- */
void gelu_forward(float* out, const float* x, int64_t n);
void gelu_backward(float* dx, const float* dout, const float* x, int64_t n);
void silu_forward(float* out, const float* x, int64_t n);
void silu_backward(float* dx, const float* dout, const float* x, int64_t n);

/* ---- rotary position embedding (rope.c): x (BNH, T, HS), cos/sin (T, HS/2) ------------------ */
void rope_forward(float* out, const float* x, const float* cos, const float* sin,
                  int64_t BNH, int64_t T, int64_t HS);
void rope_backward(float* dx, const float* dout, const float* cos, const float* sin,
                   int64_t BNH, int64_t T, int64_t HS);

/* ---- embedding (embedding.c): weight (V, C), ids (N) ------------------------------------------ */
void embedding_forward(float* out, const int64_t* ids, const float* weight, int64_t N, int64_t V, int64_t C);
/* dweight += scatter of dout rows at ids (the caller zeroes dweight first) */
void embedding_backward(float* dweight, const float* dout, const int64_t* ids, int64_t N, int64_t V, int64_t C);

/* ---- optimizer (adamw.c): one fused AdamW step over n flat values, in place --------------------- */
void adamw_update(float* param, const float* grad, float* m, float* v, float lr, float beta1,
                  float beta2, float eps, float weight_decay, int64_t step, int64_t n);

/* ---- attention (attention_naive.c, attention.c): a ladder of two rungs --------------------------- */
/* Causal attention with grouped-query heads (NH % NKV == 0):
 * q, out, dout, dq (B, NH, Tq, HS); k, v, dk, dv (B, NKV, Tk, HS); lse (B, NH, Tq);
 * 1 <= Tq <= Tk, query i sits at position Tk - Tq + i. `work` is scratch of work_len floats.
 * segment_ids: NULL, or (B, T) document ids with T = Tq = Tk (document masking: query i sees
 * key j only when both carry the same id; attention.c says why ids, not cumulative lengths).
 * Every function returns 0, or -1 (nothing written) when work_len is too small.
 *   v1_naive   the definition, one query at a time, one thread; work: Tk floats (forward),
 *              2 Tk (backward)
 *   v2_flash   tiled, SIMD, threaded; work: what the matching *_workspace returns for the
 *              current thread count, O(T * HS) per thread, never T x T
 * The production attention_forward / attention_backward is v2, and v1 for a call whose v2
 * result is not finite (see attention.c); its workspace is v2's.                              */
int attention_forward_v1_naive(float* out, float* lse, float* work, int64_t work_len, const float* q,
                               const float* k, const float* v, const int32_t* segment_ids, int64_t B,
                               int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk, int64_t HS);
int attention_backward_v1_naive(float* dq, float* dk, float* dv, float* work, int64_t work_len,
                                const float* dout, const float* q, const float* k, const float* v,
                                const float* out, const float* lse, const int32_t* segment_ids,
                                int64_t B, int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk, int64_t HS);
int attention_forward_v2_flash(float* out, float* lse, float* work, int64_t work_len, const float* q,
                               const float* k, const float* v, const int32_t* segment_ids, int64_t B,
                               int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk, int64_t HS);
int attention_backward_v2_flash(float* dq, float* dk, float* dv, float* work, int64_t work_len,
                                const float* dout, const float* q, const float* k, const float* v,
                                const float* out, const float* lse, const int32_t* segment_ids,
                                int64_t B, int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk, int64_t HS);
int64_t attention_forward_workspace(int64_t B, int64_t NH, int64_t Tq, int64_t Tk, int64_t HS);
int attention_forward(float* out, float* lse, float* work, int64_t work_len, const float* q,
                      const float* k, const float* v, const int32_t* segment_ids, int64_t B, int64_t NH,
                      int64_t NKV, int64_t Tq, int64_t Tk, int64_t HS);
int64_t attention_backward_workspace(int64_t B, int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk, int64_t HS);
int attention_backward(float* dq, float* dk, float* dv, float* work, int64_t work_len,
                       const float* dout, const float* q, const float* k, const float* v,
                       const float* out, const float* lse, const int32_t* segment_ids, int64_t B,
                       int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk, int64_t HS);

/* ---- paged KV cache (paged_attention.c) -------------------------------------------------------
 * k_cache, v_cache (NB, NKV, BS, HS): NB blocks of BS positions; position j of a sequence is in
 * block table[j / BS] at offset j % BS. paged_cache_write: row n of k, v (N, NKV, HS) goes to
 * slot slots[n] = block * BS + offset. paged_attention_forward: query n of q (N, NH, HS) at
 * position positions[n] attends to keys 0 .. positions[n] of its table row block_tables[n]
 * (N, MB); out (N, NH, HS); work: paged_attention_workspace(MB, BS) floats; returns 0, or -1
 * (nothing written) when work_len is too small.                                                  */
void paged_cache_write(float* k_cache, float* v_cache, const float* k, const float* v,
                       const int64_t* slots, int64_t N, int64_t NKV, int64_t NB, int64_t BS, int64_t HS);
int64_t paged_attention_workspace(int64_t MB, int64_t BS);
int paged_attention_forward(float* out, float* work, int64_t work_len, const float* q,
                            const float* k_cache, const float* v_cache, const int64_t* block_tables,
                            const int64_t* positions, int64_t N, int64_t NH, int64_t NKV, int64_t NB,
                            int64_t BS, int64_t MB, int64_t HS);

/* ---- weight-only quantized linear (quant.c): W (OC, C) in int8 or int4, x and out float32 ----
 * W[o, c] = w_scale[o, c / group] * q[o, c]; int8: w_q int8 (OC, C); int4: w_q uint8 (OC, C/2),
 * q + 8 two per byte by Q4_0's 32-element blocks (byte j: element j low, j + 16 high), group a
 * multiple of 32. out (N, OC) = x (N, C) @ W^T + b (b may be NULL). Rungs: v1_naive (scalar, one
 * thread), v2_avx2, v3_avx512 (threaded), v4/v5 block loops, v6/v7 integer dots on int8-quantized
 * activations (v7: AVX-512 VNNI), v8 (int4 as unsigned nibbles minus 8 x the activation block
 * sums; int8 with its activation-side work hoisted). linear_q*_forward runs the best float rung
 * this CPU has; linear_q*_forward_intdot (decoding) the best integer-dot rung (v8 / v6). */
void linear_q8_forward_v1_naive(float* out, const float* x, const int8_t* w_q, const float* w_scale,
                                const float* b, int64_t group, int64_t N, int64_t C, int64_t OC);
void linear_q8_forward_v2_avx2(float* out, const float* x, const int8_t* w_q, const float* w_scale,
                               const float* b, int64_t group, int64_t N, int64_t C, int64_t OC);
void linear_q8_forward_v3_avx512(float* out, const float* x, const int8_t* w_q, const float* w_scale,
                                 const float* b, int64_t group, int64_t N, int64_t C, int64_t OC);
void linear_q8_forward(float* out, const float* x, const int8_t* w_q, const float* w_scale,
                       const float* b, int64_t group, int64_t N, int64_t C, int64_t OC);
void linear_q4_forward_v1_naive(float* out, const float* x, const uint8_t* w_q, const float* w_scale,
                                const float* b, int64_t group, int64_t N, int64_t C, int64_t OC);
void linear_q4_forward_v2_avx2(float* out, const float* x, const uint8_t* w_q, const float* w_scale,
                               const float* b, int64_t group, int64_t N, int64_t C, int64_t OC);
void linear_q4_forward_v3_avx512(float* out, const float* x, const uint8_t* w_q, const float* w_scale,
                                 const float* b, int64_t group, int64_t N, int64_t C, int64_t OC);
void linear_q8_forward_v4_blocks_avx2(float* out, const float* x, const int8_t* w_q, const float* w_scale,
        const float* b, int64_t group, int64_t N, int64_t C, int64_t OC);
void linear_q8_forward_v5_blocks_avx512(float* out, const float* x, const int8_t* w_q, const float* w_scale,
        const float* b, int64_t group, int64_t N, int64_t C, int64_t OC);
void linear_q8_forward_v6_intdot_avx2(float* out, const float* x, const int8_t* w_q, const float* w_scale,
        const float* b, int64_t group, int64_t N, int64_t C, int64_t OC);
void linear_q8_forward_v7_intdot_vnni(float* out, const float* x, const int8_t* w_q, const float* w_scale,
        const float* b, int64_t group, int64_t N, int64_t C, int64_t OC);
void linear_q4_forward_v4_blocks_avx2(float* out, const float* x, const uint8_t* w_q, const float* w_scale,
        const float* b, int64_t group, int64_t N, int64_t C, int64_t OC);
void linear_q4_forward_v5_blocks_avx512(float* out, const float* x, const uint8_t* w_q, const float* w_scale,
        const float* b, int64_t group, int64_t N, int64_t C, int64_t OC);
void linear_q4_forward_v6_intdot_avx2(float* out, const float* x, const uint8_t* w_q, const float* w_scale,
        const float* b, int64_t group, int64_t N, int64_t C, int64_t OC);
void linear_q4_forward_v7_intdot_vnni(float* out, const float* x, const uint8_t* w_q, const float* w_scale,
        const float* b, int64_t group, int64_t N, int64_t C, int64_t OC);
void linear_q8_forward_intdot(float* out, const float* x, const int8_t* w_q, const float* w_scale,
        const float* b, int64_t group, int64_t N, int64_t C, int64_t OC);
void linear_q4_forward_intdot(float* out, const float* x, const uint8_t* w_q, const float* w_scale,
        const float* b, int64_t group, int64_t N, int64_t C, int64_t OC);
void linear_q8_forward_v8_unsigned_vnni(float* out, const float* x, const int8_t* w_q, const float* w_scale,
                                        const float* b, int64_t group, int64_t N, int64_t C, int64_t OC);
void linear_q4_forward_v8_unsigned_vnni(float* out, const float* x, const uint8_t* w_q, const float* w_scale,
                                        const float* b, int64_t group, int64_t N, int64_t C, int64_t OC);
void linear_q8_forward_v9_nibble_order_vnni(float* out, const float* x, const int8_t* w_q, const float* w_scale,
                                            const float* b, int64_t group, int64_t N, int64_t C, int64_t OC);
void linear_q4_forward_v9_nibble_order_vnni(float* out, const float* x, const uint8_t* w_q, const float* w_scale,
                                            const float* b, int64_t group, int64_t N, int64_t C, int64_t OC);
int quant_has_vnni(void);   /* 1 when linear_*_forward_v7_intdot_vnni runs VNNI (else it is v6) */
void linear_q4_forward(float* out, const float* x, const uint8_t* w_q, const float* w_scale,
                       const float* b, int64_t group, int64_t N, int64_t C, int64_t OC);
/* w (OC, C) float32 = the dequantized weight */
void dequantize_q8(float* w, const int8_t* w_q, const float* w_scale, int64_t group, int64_t OC, int64_t C);
void dequantize_q4(float* w, const uint8_t* w_q, const float* w_scale, int64_t group, int64_t OC, int64_t C);

/* ---- mixture of experts (moe.c): R = N * k rows sorted by expert, E experts --------------
 * token_index (R): the token each row copies; offsets (E + 1): expert e owns rows
 * offsets[e] .. offsets[e+1] - 1 (maybe none); w (E, OC, C), one (OC, C) matrix per expert.
 * Rungs of the grouped matmul: v1_loop (per expert, the threaded GEMM), v2_tiled (one task
 * list of (expert, row block) shared by the threads), v3_packed (each expert's operand packed
 * once per call, dw threaded over output tiles); the production name is v3. */
void moe_permute_forward(float* out, const float* x, const int64_t* token_index, int64_t N, int64_t R,
                         int64_t C);
void moe_permute_backward(float* dx, const float* dout, const int64_t* token_index, int64_t N, int64_t R,
                          int64_t C);
void grouped_matmul_forward_v1_loop(float* out, const float* x, const float* w, const int64_t* offsets,
                                    int64_t R, int64_t E, int64_t C, int64_t OC);
void grouped_matmul_forward_v2_tiled(float* out, const float* x, const float* w, const int64_t* offsets,
                                     int64_t R, int64_t E, int64_t C, int64_t OC);
void grouped_matmul_forward_v3_packed(float* out, const float* x, const float* w, const int64_t* offsets,
                                      int64_t R, int64_t E, int64_t C, int64_t OC);
void grouped_matmul_forward(float* out, const float* x, const float* w, const int64_t* offsets,
                            int64_t R, int64_t E, int64_t C, int64_t OC);
void grouped_matmul_backward_v1_loop(float* dx, float* dw, const float* dout, const float* x, const float* w,
                                     const int64_t* offsets, int64_t R, int64_t E, int64_t C, int64_t OC);
void grouped_matmul_backward_v2_tiled(float* dx, float* dw, const float* dout, const float* x, const float* w,
                                      const int64_t* offsets, int64_t R, int64_t E, int64_t C, int64_t OC);
void grouped_matmul_backward_v3_packed(float* dx, float* dw, const float* dout, const float* x, const float* w,
                                       const int64_t* offsets, int64_t R, int64_t E, int64_t C, int64_t OC);
void grouped_matmul_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                             const int64_t* offsets, int64_t R, int64_t E, int64_t C, int64_t OC);
void moe_combine_forward(float* out, const float* y, const float* weights, const int64_t* token_index,
                         int64_t N, int64_t R, int64_t C);
void moe_combine_backward(float* dy, float* dweights, const float* dout, const float* y, const float* weights,
                          const int64_t* token_index, int64_t N, int64_t R, int64_t C);

/* ---- one decoding step (decode_step.c): the paged decoder's decode rows in one call ---------
 * The Python loop of inference/paged.py (PagedDecoder.forward, decode rows only) with the same
 * kernels in the same order; backends/cpu_decode.py DecodeStep fills these structs once per
 * decoder. A linear layer (OC, C): float32 w (OC, C), or (C, OC) when w_in_out; int8 w (OC, C)
 * and int4 w (OC, C / 2) with w_scale (OC, C / group), as quant.c; b (OC) or NULL. A norm: w,
 * b (C) (b NULL: none, and always for RMSNorm), eps. A layer's unused linears (GPT-2 has qkv,
 * fc, proj; Llama q, k, v, gate, up, down) and q_norm / k_norm without qk_norm have w NULL.
 * packed (float32 only): linear_forward (the GEMM above LINEAR_ROWS rows: a batch-dependent
 * rounding) instead of linear_rows_forward, for decoders that need not be batch invariant.
 * decode_step: logits (S, V) of rows last_rows (S) of the N rows ids (N) at positions (N), their
 * k, v written to slots (N), attending through block_tables (N, MB); returns 0, -1 (work_len
 * short of decode_step_workspace) or -2 (an id outside [0, V)), nothing written on an error. */
enum { DECODE_LINEAR_FLOAT = 0, DECODE_LINEAR_INT8 = 1, DECODE_LINEAR_INT4 = 2 };
typedef struct {
    int kind;
    int w_in_out;
    int packed;
    const void* w;
    const float* w_scale;
    const float* b;
    int64_t group;
    int64_t C;
    int64_t OC;
} decode_linear;
typedef struct {
    const float* w;
    const float* b;
    float eps;
} decode_norm;
typedef struct {
    decode_norm norm_1, norm_2, q_norm, k_norm;
    decode_linear qkv, q, k, v, out, fc, proj, gate, up, down;
    float* k_cache;
    float* v_cache;
} decode_layer;
typedef struct {
    int gpt2;
    int64_t n_layer, C, NH, NKV, HS, V, hidden, block_size, NB, BS;
    const float* wte;
    const float* wpe;
    const float* cos;
    const float* sin;
    decode_norm norm_f;
    decode_linear head;
    const decode_layer* layers;
} decode_model;
int64_t decode_step_workspace(const decode_model* m, int64_t N, int64_t S, int64_t MB);
int decode_step(float* logits, float* work, int64_t work_len, const decode_model* m, const int64_t* ids,
                const int64_t* positions, const int64_t* slots, const int64_t* block_tables,
                const int64_t* last_rows, int64_t N, int64_t S, int64_t MB);

/* END CDEF */

#endif /* MICROGPT_H */
