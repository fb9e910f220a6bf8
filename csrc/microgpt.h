/* microgpt.h — the C ABI of microgpt's CPU kernels: every kernel's declaration, one place.
 *
 * The text between the CDEF markers is fed verbatim to cffi (microgpt/backends/cpu_build.py),
 * so it stays "cdef-clean": plain declarations, no #include, no #ifdef, no macros.
 * Everything else (include guards, <stdint.h>) sits outside the markers.
 *
 * Conventions (as in llm.c): outputs first, then caches, then inputs, then sizes and
 * scalars; gradients carry a d prefix (dinp, dweight). All arrays are float32, C-contiguous,
 * row-major, non-overlapping; the Python binding (backends/cpu.py) guarantees this, so the
 * C code trusts its arguments. Integer ids are int64 and already range-checked.
 *
 * Size legend:
 *   N    rows (every leading axis flattened)      C    channels (the last axis)
 *   OC   output channels of a linear layer        V    vocabulary size
 *   B    batch   T time   NH query heads   NKV key/value heads   HS head size
 *   M, N, K   matmul: out (M, N) = op(a) (M, K) @ op(b) (K, N)
 *   BNH  B * NH (all rotary rows of one time step)   n  number of elements
 */
#ifndef MICROGPT_H
#define MICROGPT_H
#include <stdint.h>

/* BEGIN CDEF */

/* ---- threads (threads.c) -------------------------------------------------------------- */
void microgpt_set_num_threads(int n);      /* OpenMP threads used by every kernel */
int microgpt_get_num_threads(void);
const char* microgpt_simd_path(void);      /* "avx512", "avx2" or "scalar": the matmul path */
int microgpt_set_simd_path(const char* name);  /* force a path ("" = best); 0 if this CPU lacks it */

/* ---- matmul (matmul.c): the BLIS-style ladder -------------------------------------------
 * out (M, N) = op(a) @ op(b), plus the old out when accumulate != 0.
 * op(a) is a (M, K), or a^T when trans_a and a is stored (K, M);
 * op(b) is b (K, N), or b^T when trans_b and b is stored (N, K).                          */
void matmul_forward_v1_naive(float* out, const float* a, const float* b,
                             long M, long N, long K, int trans_a, int trans_b, int accumulate);
void matmul_forward_v2_blocked(float* out, const float* a, const float* b,
                               long M, long N, long K, int trans_a, int trans_b, int accumulate);
void matmul_forward_v3_packed(float* out, const float* a, const float* b,
                              long M, long N, long K, int trans_a, int trans_b, int accumulate);
void matmul_forward_v4_threaded(float* out, const float* a, const float* b,
                                long M, long N, long K, int trans_a, int trans_b, int accumulate);
/* the production rung (an alias of v4) */
void matmul_forward(float* out, const float* a, const float* b,
                    long M, long N, long K, int trans_a, int trans_b, int accumulate);
/* batch of independent products; a stride of 0 broadcasts that operand over the batch */
void matmul_forward_batched(float* out, const float* a, const float* b, long batch,
                            long stride_out, long stride_a, long stride_b,
                            long M, long N, long K, int trans_a, int trans_b, int accumulate);
/* out (N, OC) = inp (N, C) @ weight^T (C, OC) + bias (OC) ; bias may be NULL */
void linear_forward(float* out, const float* inp, const float* weight, const float* bias,
                    long N, long C, long OC);
/* dinp = dout @ weight, dweight = dout^T @ inp, dbias = column sums of dout (NULL: skipped) */
void linear_backward(float* dinp, float* dweight, float* dbias,
                     const float* dout, const float* inp, const float* weight,
                     long N, long C, long OC);

/* ---- softmax family (softmax.c, crossentropy.c), over the last axis of (N, C) / (N, V) ---- */
void softmax_forward(float* out, const float* inp, long N, long C);
void softmax_backward(float* dinp, const float* dout, const float* out, long N, long C);
void log_softmax_forward(float* out, const float* inp, long N, long C);
void log_softmax_backward(float* dinp, const float* dout, const float* out, long N, long C);
void cross_entropy_forward(float* losses, float* lse, const float* logits, const int64_t* targets,
                           int64_t ignore_index, long N, long V);
void cross_entropy_backward(float* dlogits, const float* dlosses, const float* logits,
                            const int64_t* targets, const float* lse, int64_t ignore_index,
                            long N, long V);

/* ---- normalization (norm.c) --------------------------------------------------------------- */
void layer_norm_forward(float* out, float* mean, float* rstd, const float* inp,
                        const float* weight, const float* bias, float eps, long N, long C);
void layer_norm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                         const float* inp, const float* weight, const float* mean,
                         const float* rstd, long N, long C);
void rms_norm_forward(float* out, float* rstd, const float* inp, const float* weight,
                      float eps, long N, long C);
void rms_norm_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                       const float* weight, const float* rstd, long N, long C);

/* ---- activations (activation.c), elementwise over n values ---------------------------------- */
void gelu_forward(float* out, const float* inp, long n);
void gelu_backward(float* dinp, const float* dout, const float* inp, long n);
void silu_forward(float* out, const float* inp, long n);
void silu_backward(float* dinp, const float* dout, const float* inp, long n);

/* ---- rotary position embedding (rope.c): x (BNH, T, HS), cos/sin (T, HS/2) ------------------ */
void rope_forward(float* out, const float* inp, const float* cos, const float* sin,
                  long BNH, long T, long HS);
void rope_backward(float* dinp, const float* dout, const float* cos, const float* sin,
                   long BNH, long T, long HS);

/* ---- embedding (embedding.c): weight (V, C), ids (N) ------------------------------------------ */
void embedding_forward(float* out, const int64_t* ids, const float* weight, long N, long V, long C);
/* dweight += scatter of dout rows at ids (the caller zeroes dweight first) */
void embedding_backward(float* dweight, const float* dout, const int64_t* ids, long N, long V, long C);

/* ---- optimizer (adamw.c): one fused AdamW step over n flat values, in place --------------------- */
void adamw_update(float* param, float* m, float* v, const float* grad, long n,
                  float lr, float beta1, float beta2, float eps, float weight_decay, long step);

/* ---- attention (csrc/attention.c) ---------------------------------------------------------------- */
/* Fused causal attention, flash-style, with grouped-query heads (NH % NKV == 0):
 * q, out, dout, dq (B, NH, Tq, HS); k, v, dk, dv (B, NKV, Tk, HS); lse (B, NH, Tq);
 * 1 <= Tq <= Tk, query i sits at position Tk - Tq + i. `work` is scratch of work_len floats,
 * at least what the matching *_workspace returns for the current thread count: O(T * HS) per
 * thread, never T x T. Return 0, or -1 (nothing written) when work_len is too small.          */
long attention_forward_workspace(long B, long NH, long Tq, long Tk, long HS);
int attention_forward(float* out, float* lse, float* work, long work_len, const float* q,
                      const float* k, const float* v, long B, long NH, long NKV, long Tq,
                      long Tk, long HS);
long attention_backward_workspace(long B, long NH, long NKV, long Tq, long Tk, long HS);
int attention_backward(float* dq, float* dk, float* dv, float* work, long work_len,
                       const float* dout, const float* q, const float* k, const float* v,
                       const float* out, const float* lse, long B, long NH, long NKV, long Tq,
                       long Tk, long HS);

/* END CDEF */

#endif /* MICROGPT_H */
