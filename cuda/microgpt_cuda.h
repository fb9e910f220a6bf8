/* microgpt_cuda.h: the C ABI of microgpt's CUDA library (libmicrogpt_cuda.so).

   Every function is extern "C", runs on the default stream, and returns 0 or a CUDA error
   code; cuda_error_string(code) gives CUDA's message. Pointers are device pointers unless
   named host_*. One signature per kernel, in every language (as in llm.c): a kernel here
   and its twin in csrc/microgpt.h take the same arguments in the same order, named as in
   the NumPy reference (backends/reference.py): the outputs the reference returns first,
   then extras, then the reference's inputs and scalars in its order, then the sizes, then
   int flags. Every size is an int64_t. The extras of this side: `bad`, a device int that a
   kernel sets when an index is out of range instead of reading outside an array (checking
   on the host would synchronize), and `delta`, attention's scratch. The rule and its check:
   tests/test_kernel_signatures.py.

   Size legend: N rows, V vocab, B batch, T time, C channels, NH query heads, NKV key/value
   heads, HS head size, BNH = B * NH, M/N/K matrix sizes; n element count; elsize bytes per
   element.

   The block between the CDEF markers is read verbatim by microgpt/backends/cuda.py as the
   cffi cdef, so it holds declarations only (no #include, #define or #ifdef). */
#pragma once
#include <stdint.h>
#include <stddef.h>
#ifdef __cplusplus
extern "C" {
#endif
/* CDEF BEGIN */
/* memory.cu: device, memory, errors */
const char* cuda_error_string(int code);
int cuda_device_count(int* count);
int cuda_device_name(char* buf, int len);
int cuda_malloc(void** ptr, size_t bytes);
int cuda_free(void* ptr);
int cuda_memcpy_h2d(void* dst, const void* src, size_t bytes);
int cuda_memcpy_d2h(void* dst, const void* src, size_t bytes);
int cuda_memcpy_d2d(void* dst, const void* src, size_t bytes);
int cuda_memset(void* ptr, int value, size_t bytes);
int cuda_synchronize(void);
int fill_f32(float* out, float value, int64_t n);
int fill_i64(int64_t* out, int64_t value, int64_t n);

/* shape.cu: strided copies and row gathers, any 4- or 8-byte dtype */
int strided_copy(void* out, const void* inp, int elsize, int ndim, const int64_t* size,
                 const int64_t* strides, int64_t offset, int64_t n);
int strided_scatter(void* out, const void* inp, int elsize, int ndim, const int64_t* size,
                    const int64_t* strides, int64_t offset, int64_t n);
int gather_rows(void* out, int* bad, const void* table, const int64_t* ids, int64_t n_ids,
                int64_t rows, int64_t width, int elsize);
int scatter_add_rows(float* out, int* bad, const float* src, const int64_t* ids, int64_t n_ids,
                     int64_t rows, int64_t width);

/* elementwise.cu: binary ops 0 add 1 sub 2 mul 3 div 4 equal; unary 0 neg 1 exp 2 log 3 sqrt 4 tanh 5 pow */
int binary_op(float* out, const float* a, const float* b, int ndim, const int64_t* size,
              const int64_t* stride_a, const int64_t* stride_b, int64_t n, int op);
int binary_scalar_op(float* out, const float* a, float s, int64_t n, int op, int scalar_first);
int unary_op(float* out, const float* a, int64_t n, int op, float p);

/* activation.cu */
int relu_forward(float* out, const float* x, int64_t n);
int relu_backward(float* dx, const float* dout, const float* x, int64_t n);
int gelu_forward(float* out, const float* x, int64_t n);
int gelu_backward(float* dx, const float* dout, const float* x, int64_t n);
int silu_forward(float* out, const float* x, int64_t n);
int silu_backward(float* dx, const float* dout, const float* x, int64_t n);

/* reduce.cu: inp viewed as (outer, R, inner); is_max 0 sums, 1 takes maxima */
int reduce_axes(float* out, const float* inp, int64_t outer, int64_t R, int64_t inner, int is_max);
int sumsq_accumulate(float* out, const float* x, int64_t n);

/* matmul.cu: the ladder, out (M, N) = op(a) @ op(b) + bias (row-major; bias (N) may be NULL;
   op transposes a stored (K, M) or b stored (N, K)); v3-v5 and v7 refuse transposes */
int matmul_forward_v1_naive(float* out, const float* a, const float* b, const float* bias,
                            int64_t M, int64_t N, int64_t K, int trans_a, int trans_b);
int matmul_forward_v2_coalesced(float* out, const float* a, const float* b, const float* bias,
                                int64_t M, int64_t N, int64_t K, int trans_a, int trans_b);
int matmul_forward_v3_smem(float* out, const float* a, const float* b, const float* bias,
                           int64_t M, int64_t N, int64_t K, int trans_a, int trans_b);
int matmul_forward_v4_regblock(float* out, const float* a, const float* b, const float* bias,
                               int64_t M, int64_t N, int64_t K, int trans_a, int trans_b);
int matmul_forward_v5_vectorized(float* out, const float* a, const float* b, const float* bias,
                                 int64_t M, int64_t N, int64_t K, int trans_a, int trans_b);
int matmul_forward_v6_warptile(float* out, const float* a, const float* b, const float* bias,
                               int64_t M, int64_t N, int64_t K, int trans_a, int trans_b);
int matmul_forward_v7_bf16_tc(float* out, const float* a, const float* b, const float* bias,
                              int64_t M, int64_t N, int64_t K, int trans_a, int trans_b);
/* the production rung (an alias of v6) */
int matmul_forward(float* out, const float* a, const float* b, const float* bias,
                   int64_t M, int64_t N, int64_t K, int trans_a, int trans_b);
/* batch of products out[z] = op(a[z]) @ op(b[z]) + bias, z < batch, the stride_* apart in
   elements (0 broadcasts that operand); the rungs that batch, and the production alias (v6) */
int matmul_forward_batched_v2_coalesced(float* out, const float* a, const float* b, const float* bias,
                                        int64_t batch, int64_t stride_out, int64_t stride_a, int64_t stride_b,
                                        int64_t M, int64_t N, int64_t K, int trans_a, int trans_b);
int matmul_forward_batched_v6_warptile(float* out, const float* a, const float* b, const float* bias,
                                       int64_t batch, int64_t stride_out, int64_t stride_a, int64_t stride_b,
                                       int64_t M, int64_t N, int64_t K, int trans_a, int trans_b);
int matmul_forward_batched(float* out, const float* a, const float* b, const float* bias,
                           int64_t batch, int64_t stride_out, int64_t stride_a, int64_t stride_b,
                           int64_t M, int64_t N, int64_t K, int trans_a, int trans_b);

/* matmul_bf16.cu: bf16 arrays are uint16_t bit patterns; conversions (round to nearest even) and
   the tensor-core product out (M, N) float32 = op(a) @ op(b) + bias with bf16 a, b and float32
   accumulation (op as for matmul_forward; all four transpose combinations); the production alias */
int f32_to_bf16(uint16_t* out, const float* x, int64_t n);
int bf16_to_f32(float* out, const uint16_t* x, int64_t n);
int matmul_bf16_v1_mma(float* out, const uint16_t* a, const uint16_t* b, const float* bias,
                       int64_t M, int64_t N, int64_t K, int trans_a, int trans_b);
int matmul_bf16(float* out, const uint16_t* a, const uint16_t* b, const float* bias,
                int64_t M, int64_t N, int64_t K, int trans_a, int trans_b);

/* attention_bf16.cu: attention_forward's meaning from bf16 q, k, v (uint16_t bits), float32 out and lse,
   on the tensor cores; HS = 64 and 16-byte aligned q, k, v only (else cudaErrorNotSupported) */
int attention_bf16_forward_v1_mma(float* out, float* lse, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                                  const int32_t* segment_ids, int64_t B, int64_t NH, int64_t NKV, int64_t Tq,
                                  int64_t Tk, int64_t HS);
int attention_bf16_forward(float* out, float* lse, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                           const int32_t* segment_ids, int64_t B, int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk,
                           int64_t HS);
/* its backward: dq, dk, dv float32 (zeroed, then summed into), delta B*NH*Tq floats of scratch, dout float32
   and dout16 its bf16 bits, out and lse from the forward */
int attention_bf16_backward_v1_mma(float* dq, float* dk, float* dv, float* delta, const float* dout,
                                   const uint16_t* dout16, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                                   const float* out, const float* lse, const int32_t* segment_ids, int64_t B,
                                   int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk, int64_t HS);

/* softmax.cu, crossentropy.cu: rows of (N, C) / (N, V) */
int softmax_forward(float* out, const float* x, int64_t N, int64_t C);
int softmax_backward(float* dx, const float* dout, const float* out, int64_t N, int64_t C);
int log_softmax_forward(float* out, const float* x, int64_t N, int64_t C);
int log_softmax_backward(float* dx, const float* dout, const float* out, int64_t N, int64_t C);
int cross_entropy_forward(float* losses, float* lse, int* bad, const float* logits, const int64_t* targets,
                          int64_t ignore_index, int64_t N, int64_t V);
int cross_entropy_backward(float* dlogits, const float* dlosses, const float* logits, const int64_t* targets,
                           const float* lse, int64_t ignore_index, int64_t N, int64_t V);
int kl_div_forward(float* losses, float* student_lse, float* teacher_lse, const float* student, const float* teacher,
                   float temperature, int64_t N, int64_t V);
int kl_div_backward(float* dstudent, const float* dlosses, const float* student, const float* teacher,
                    const float* student_lse, const float* teacher_lse, float temperature, int64_t N, int64_t V);

/* embedding.cu */
int embedding_forward(float* out, int* bad, const int64_t* ids, const float* weight, int64_t N, int64_t V, int64_t C);
int embedding_backward(float* dweight, int* bad, const float* dout, const int64_t* ids, int64_t N, int64_t V, int64_t C);

/* norm.cu: rows of (N, C); b may be NULL */
int layer_norm_forward(float* out, float* mean, float* rstd, const float* x, const float* w, const float* b,
                       float eps, int64_t N, int64_t C);
int layer_norm_backward(float* dx, float* dw, float* db, const float* dout, const float* x, const float* w,
                        const float* mean, const float* rstd, int64_t N, int64_t C);
int rms_norm_forward(float* out, float* rstd, const float* x, const float* w, float eps, int64_t N, int64_t C);
int rms_norm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w, const float* rstd,
                      int64_t N, int64_t C);

/* rope.cu: x (BNH, T, HS), cos/sin (T, HS/2) */
int rope_forward(float* out, const float* x, const float* cos, const float* sin, int64_t BNH, int64_t T, int64_t HS);
int rope_backward(float* dx, const float* dout, const float* cos, const float* sin, int64_t BNH, int64_t T, int64_t HS);

/* attention.cu: q (B, NH, Tq, HS), k/v (B, NKV, Tk, HS); delta is B*NH*Tq floats of scratch;
   segment_ids NULL or (B, T) document ids, T = Tq = Tk (query i sees key j iff same id too) */
int attention_forward_v1_naive(float* out, float* lse, const float* q, const float* k, const float* v,
                               const int32_t* segment_ids, int64_t B, int64_t NH, int64_t NKV, int64_t Tq,
                               int64_t Tk, int64_t HS);
int attention_backward_v1_naive(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                                const float* v, const float* out, const float* lse, const int32_t* segment_ids,
                                int64_t B, int64_t NH, int64_t NKV, int64_t Tq, int64_t Tk, int64_t HS);
int attention_forward_v2_flash(float* out, float* lse, const float* q, const float* k, const float* v,
                               const int32_t* segment_ids, int64_t B, int64_t NH, int64_t NKV, int64_t Tq,
                               int64_t Tk, int64_t HS);
int attention_backward_v2_flash(float* dq, float* dk, float* dv, float* delta, const float* dout, const float* q,
                                const float* k, const float* v, const float* out, const float* lse,
                                const int32_t* segment_ids, int64_t B, int64_t NH, int64_t NKV, int64_t Tq,
                                int64_t Tk, int64_t HS);

/* adamw.cu: one step, in place on param, m and v; step counts from 1 */
int adamw_update(float* param, const float* grad, float* m, float* v, float lr, float beta1, float beta2,
                 float eps, float weight_decay, int64_t step, int64_t n);

/* quant.cu: weight-only quantized linear layers (the twins of csrc/quant.c: same formats);
   out (N, OC) = x (N, C) @ W^T + b with W[o, c] = w_scale[o, c / group] * q[o, c], b may be NULL */
int linear_q8_forward(float* out, const float* x, const int8_t* w_q, const float* w_scale, const float* b,
                      int64_t group, int64_t N, int64_t C, int64_t OC);
int linear_q4_forward(float* out, const float* x, const uint8_t* w_q, const float* w_scale, const float* b,
                      int64_t group, int64_t N, int64_t C, int64_t OC);
int dequantize_q8(float* w, const int8_t* w_q, const float* w_scale, int64_t group, int64_t OC, int64_t C);
int dequantize_q4(float* w, const uint8_t* w_q, const float* w_scale, int64_t group, int64_t OC, int64_t C);
/* linear_rows.cu: out (N, OC) = x @ w^T + b, w (OC, C) (w_in_out: (C, OC)), b may be NULL; each row's
   result independent of N (one owner per element, a fixed order over C) */
int linear_rows_forward(float* out, const float* x, const float* w, const float* b, int w_in_out,
                        int64_t N, int64_t C, int64_t OC);
/* paged_attention.cu: k_cache, v_cache (NB, NKV, BS, HS); k, v (N, NKV, HS); slots (N); q, out (N, NH, HS);
   block_tables (N, MB); query n at position positions[n] sees keys 0 .. positions[n] (MB * BS <= 12288) */
int paged_cache_write(int* bad, float* k_cache, float* v_cache, const float* k, const float* v,
                      const int64_t* slots, int64_t N, int64_t NKV, int64_t NB, int64_t BS, int64_t HS);
int paged_attention_forward(float* out, int* bad, const float* q, const float* k_cache, const float* v_cache,
                            const int64_t* block_tables, const int64_t* positions, int64_t N, int64_t NH,
                            int64_t NKV, int64_t NB, int64_t BS, int64_t MB, int64_t HS);
/* moe.cu: mixture of experts (the twins of csrc/moe.c): R rows sorted by expert, token_index (R),
   offsets (E + 1), w (E, OC, C); x (N, C) tokens */
int moe_permute_forward(float* out, const float* x, const int64_t* token_index, int64_t N, int64_t R, int64_t C);
int moe_permute_backward(float* dx, const float* dout, const int64_t* token_index, int64_t N, int64_t R, int64_t C);
int grouped_matmul_forward(float* out, const float* x, const float* w, const int64_t* offsets, int64_t R,
                           int64_t E, int64_t C, int64_t OC);
int grouped_matmul_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                            const int64_t* offsets, int64_t R, int64_t E, int64_t C, int64_t OC);
int moe_combine_forward(float* out, const float* y, const float* weights, const int64_t* token_index, int64_t N,
                        int64_t R, int64_t C);
int moe_combine_backward(float* dy, float* dweights, const float* dout, const float* y, const float* weights,
                         const int64_t* token_index, int64_t N, int64_t R, int64_t C);
/* CDEF END */
#ifdef __cplusplus
}
#endif
