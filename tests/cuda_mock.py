"""A NumPy stand-in for the CUDA library, so the binding's Python side runs without a GPU.

MockLib has one method per launcher of cuda/microgpt_cuda.h, with the same arguments under
the same names (tests/test_kernel_signatures.py checks it; device pointers become host
addresses of NumPy buffers) and the meaning its .cu file documents,
computed with NumPy and reference.py. Tests install it in place of the real library
(`install(monkeypatch)`) to check everything the binding decides on its own: shapes,
broadcast strides and axis merging, reduction plans, transpose flags and batch strides of
the gemm calls, index handling, error paths. The CUDA kernels themselves are checked on a
GPU by tests/test_cuda_kernels.py against the same reference.
"""
import math

import cffi
import numpy as np

from microgpt.backends import cuda, cuda_build, cuda_runtime as rt, reference as ref

ffi = cffi.FFI()
ffi.cdef(cuda_build.read_cdef())
F32, I64 = np.dtype(np.float32), np.dtype(np.int64)


def _addr(p):
    return int(ffi.cast("uintptr_t", p))


def view(p, count, dtype=F32):
    """count elements of dtype at device pointer p, as a writable NumPy array."""
    dtype = np.dtype(dtype)
    if count == 0:
        return np.empty(0, dtype)
    return np.frombuffer(ffi.buffer(ffi.cast("char*", _addr(p)), count * dtype.itemsize), dtype=dtype)


def _index(size, strides, offset):
    idx = np.full(tuple(size), offset, dtype=np.int64)
    for d, (n, s) in enumerate(zip(size, strides)):
        shape = [1] * len(size)
        shape[d] = n
        idx = idx + (np.arange(n) * s).reshape(shape)
    return idx.reshape(-1)


class MockLib:
    def __init__(self):
        self.buffers = {}
        self.calls = []              # (name, args) of every kernel launched, for tests
        self._msg = ffi.new("char[]", b"mock CUDA error")

    def __getattribute__(self, name):
        attr = object.__getattribute__(self, name)
        if callable(attr) and not name.startswith("_"):
            object.__getattribute__(self, "calls").append(name)
        return attr

    # memory.cu
    def cuda_error_string(self, code):
        return self._msg

    def cuda_device_count(self, count):
        count[0] = 1
        return 0

    def cuda_device_name(self, buf, len):     # noqa: A002 - the header's name
        ffi.memmove(buf, b"mock\0", 5)
        return 0

    def cuda_malloc(self, ptr, bytes):        # noqa: A002
        arr = np.full(bytes + 16, 0xAB, dtype=np.uint8)
        addr = (arr.ctypes.data + 15) // 16 * 16
        self.buffers[addr] = arr
        ptr[0] = ffi.cast("void*", addr)
        return 0

    def cuda_free(self, ptr):
        self.buffers.pop(_addr(ptr), None)
        return 0

    def cuda_memcpy_h2d(self, dst, src, bytes):     # noqa: A002
        ffi.memmove(ffi.cast("char*", _addr(dst)), src, bytes)
        return 0

    def cuda_memcpy_d2h(self, dst, src, bytes):     # noqa: A002
        ffi.memmove(dst, ffi.cast("char*", _addr(src)), bytes)
        return 0

    def cuda_memcpy_d2d(self, dst, src, bytes):     # noqa: A002
        ffi.memmove(ffi.cast("char*", _addr(dst)), ffi.cast("char*", _addr(src)), bytes)
        return 0

    def cuda_memset(self, ptr, value, bytes):       # noqa: A002
        view(ptr, bytes, np.uint8)[:] = value & 0xFF
        return 0

    def cuda_synchronize(self):
        return 0

    def fill_f32(self, out, value, n):
        view(out, n)[:] = value
        return 0

    def fill_i64(self, out, value, n):
        view(out, n, I64)[:] = value
        return 0

    # shape.cu
    def strided_copy(self, out, inp, elsize, ndim, size, strides, offset, n):
        dt = np.dtype(f"u{elsize}")
        idx = _index(size[:ndim], strides[:ndim], offset)
        view(out, n, dt)[:] = view(inp, int(idx.max()) + 1, dt)[idx]
        return 0

    def strided_scatter(self, out, inp, elsize, ndim, size, strides, offset, n):
        dt = np.dtype(f"u{elsize}")
        idx = _index(size[:ndim], strides[:ndim], offset)
        view(out, int(idx.max()) + 1, dt)[idx] = view(inp, n, dt)
        return 0

    def gather_rows(self, out, bad, table, ids, n_ids, rows, width, elsize):
        dt = np.dtype(f"u{elsize}")
        i = view(ids, n_ids, I64)
        if np.any((i < 0) | (i >= rows)):
            view(bad, 1, np.int32)[0] = 1
            i = np.clip(i, 0, rows - 1)
        view(out, n_ids * width, dt)[:] = view(table, rows * width, dt).reshape(rows, width)[i].reshape(-1)
        return 0

    def scatter_add_rows(self, out, bad, src, ids, n_ids, rows, width):
        i = view(ids, n_ids, I64)
        o = view(out, rows * width).reshape(rows, width)
        np.add.at(o, i, view(src, n_ids * width).reshape(n_ids, width))
        return 0

    # elementwise.cu, activation.cu
    _BIN = (np.add, np.subtract, np.multiply, np.divide, lambda x, y: (x == y).astype(np.float32))
    _UN = (np.negative, np.exp, np.log, np.sqrt, np.tanh)

    def binary_op(self, out, a, b, ndim, size, stride_a, stride_b, n, op):
        ia, ib = _index(size[:ndim], stride_a[:ndim], 0), _index(size[:ndim], stride_b[:ndim], 0)
        x, y = view(a, int(ia.max()) + 1)[ia], view(b, int(ib.max()) + 1)[ib]
        view(out, n)[:] = self._BIN[op](x, y)
        return 0

    def binary_scalar_op(self, out, a, s, n, op, scalar_first):
        x, s = view(a, n).copy(), np.float32(s)
        view(out, n)[:] = self._BIN[op](s, x) if scalar_first else self._BIN[op](x, s)
        return 0

    def unary_op(self, out, a, n, op, p):
        x = view(a, n)
        view(out, n)[:] = np.power(x, np.float32(p)) if op == 5 else self._UN[op](x)
        return 0

    def _pointwise(fn):
        def launcher(self, out, x, n):
            view(out, n)[:] = fn(view(x, n))
            return 0
        return launcher

    def _pointwise_backward(fn):
        def launcher(self, dx, dout, x, n):
            view(dx, n)[:] = fn(view(dout, n), view(x, n))
            return 0
        return launcher

    relu_forward = _pointwise(ref.relu_forward)
    gelu_forward = _pointwise(ref.gelu_forward)
    silu_forward = _pointwise(ref.silu_forward)
    relu_backward = _pointwise_backward(ref.relu_backward)
    gelu_backward = _pointwise_backward(ref.gelu_backward)
    silu_backward = _pointwise_backward(ref.silu_backward)

    # reduce.cu
    def reduce_axes(self, out, inp, outer, R, inner, is_max):
        x = view(inp, outer * R * inner).reshape(outer, R, inner)
        view(out, outer * inner)[:] = (x.max(axis=1) if is_max else x.sum(axis=1)).reshape(-1)
        return 0

    def sumsq_accumulate(self, out, x, n):
        v = view(x, n)
        view(out, 1)[0] += np.sum(v * v)
        return 0

    # matmul.cu
    def matmul_forward_batched(self, out, a, b, bias, batch, stride_out, stride_a, stride_b, M, N, K,
                               trans_a, trans_b):
        for z in range(batch):
            A = view(ffi.cast("char*", _addr(a) + 4 * z * stride_a), M * K).reshape((K, M) if trans_a else (M, K))
            B = view(ffi.cast("char*", _addr(b) + 4 * z * stride_b), K * N).reshape((N, K) if trans_b else (K, N))
            product = (A.T if trans_a else A) @ (B.T if trans_b else B)
            if bias != ffi.NULL:
                product = product + view(bias, N)
            view(ffi.cast("char*", _addr(out) + 4 * z * stride_out), M * N)[:] = product.reshape(-1)
        return 0

    matmul_forward_batched_v2_coalesced = matmul_forward_batched_v6_warptile = matmul_forward_batched

    def matmul_forward(self, out, a, b, bias, M, N, K, trans_a, trans_b):
        return self.matmul_forward_batched(out, a, b, bias, 1, 0, 0, 0, M, N, K, trans_a, trans_b)

    def _plain_layout_rung(self, out, a, b, bias, M, N, K, trans_a, trans_b):
        if trans_a or trans_b:
            return 801                 # cudaErrorNotSupported, as the rungs without transposes answer
        return self.matmul_forward(out, a, b, bias, M, N, K, trans_a, trans_b)

    matmul_forward_v1_naive = matmul_forward_v2_coalesced = matmul_forward_v6_warptile = matmul_forward
    matmul_forward_v3_smem = matmul_forward_v4_regblock = matmul_forward_v5_vectorized = _plain_layout_rung
    matmul_forward_v7_bf16_tc = _plain_layout_rung

    # matmul_bf16.cu: bf16 values are uint16 bit patterns
    @staticmethod
    def _bf16_round(x):
        """float32 -> bf16 bits, round to nearest, ties to even; NaN stays a (quiet) NaN."""
        bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
        rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
        nan = np.isnan(np.asarray(x, np.float32))
        rounded[nan] = (bits[nan] >> np.uint32(16)) | np.uint32(0x40)
        return rounded.astype(np.uint16)

    @staticmethod
    def _bf16_value(bits):
        return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)

    def f32_to_bf16(self, out, x, n):
        view(out, n, np.uint16)[:] = MockLib._bf16_round(view(x, n))
        return 0

    def bf16_to_f32(self, out, x, n):
        view(out, n)[:] = MockLib._bf16_value(view(x, n, np.uint16))
        return 0

    def matmul_bf16_v1_mma(self, out, a, b, bias, M, N, K, trans_a, trans_b):
        """The kernel's arithmetic: exact products of the bf16 values, summed in float32."""
        A = MockLib._bf16_value(view(a, M * K, np.uint16)).reshape((K, M) if trans_a else (M, K))
        B = MockLib._bf16_value(view(b, K * N, np.uint16)).reshape((N, K) if trans_b else (K, N))
        product = (A.T if trans_a else A) @ (B.T if trans_b else B)          # float32 @ float32
        if bias != ffi.NULL:
            product = product + view(bias, N)
        view(out, M * N)[:] = product.reshape(-1)
        return 0

    matmul_bf16 = matmul_bf16_v1_mma

    # attention_bf16.cu: the reference on the bf16 values, P rounded to bf16 before P V as the kernel does
    def attention_bf16_forward_v1_mma(self, out, lse, q, k, v, segment_ids, B, NH, NKV, Tq, Tk, HS):
        if HS != 64 or NH % NKV:
            return 801                                   # cudaErrorNotSupported, as the kernel answers
        qs = MockLib._bf16_value(view(q, B * NH * Tq * HS, np.uint16)).reshape(B, NH, Tq, HS).astype(np.float64)
        ks, vs = (ref._expand_kv(MockLib._bf16_value(view(p, B * NKV * Tk * HS, np.uint16))
                                 .reshape(B, NKV, Tk, HS).astype(np.float64), NH) for p in (k, v))
        visible = ref._visible(Tq, Tk, MockLib._segments(segment_ids, B, Tk))
        scores = np.where(visible, qs @ np.swapaxes(ks, -1, -2) / np.sqrt(HS), -np.inf)
        ls = ref._logsumexp(scores)
        probs = MockLib._bf16_value(MockLib._bf16_round(np.exp(scores - ls[..., None]).astype(np.float32)))
        view(out, B * NH * Tq * HS)[:] = (probs.astype(np.float64) @ vs).reshape(-1)
        view(lse, B * NH * Tq)[:] = ls.reshape(-1)
        return 0

    attention_bf16_forward = attention_bf16_forward_v1_mma

    def attention_bf16_backward_v1_mma(self, dq, dk, dv, delta, dout, dout16, q, k, v, out, lse, segment_ids, B, NH,
                                       NKV, Tq, Tk, HS):
        """The reference backward on the bf16 values (the kernel also rounds P and dS to bf16)."""
        if HS != 64 or NH % NKV:
            return 801
        shape_q, shape_k = (B, NH, Tq, HS), (B, NKV, Tk, HS)
        g, qs = (MockLib._bf16_value(view(p, math.prod(shape_q), np.uint16)).reshape(shape_q).astype(np.float64)
                 for p in (dout16, q))
        ks, vs = (MockLib._bf16_value(view(p, math.prod(shape_k), np.uint16)).reshape(shape_k).astype(np.float64)
                  for p in (k, v))
        o, ls = view(out, math.prod(shape_q)).reshape(shape_q), view(lse, B * NH * Tq).reshape(B, NH, Tq)
        a, b, c = ref.attention_backward(g, qs, ks, vs, o.astype(np.float64), ls.astype(np.float64),
                                         MockLib._segments(segment_ids, B, Tk))
        view(dq, a.size)[:], view(dk, b.size)[:], view(dv, c.size)[:] = a.reshape(-1), b.reshape(-1), c.reshape(-1)
        view(delta, B * NH * Tq)[:] = np.sum(view(dout, math.prod(shape_q)).reshape(shape_q) * o, axis=-1).reshape(-1)
        return 0

    # softmax.cu, crossentropy.cu
    def _rows(fn):
        def launcher(self, out, x, N, C):
            view(out, N * C)[:] = fn(view(x, N * C).reshape(N, C)).reshape(-1)
            return 0
        return launcher

    def _rows_backward(fn):
        def launcher(self, dx, dout, out, N, C):
            view(dx, N * C)[:] = fn(view(dout, N * C).reshape(N, C), view(out, N * C).reshape(N, C)).reshape(-1)
            return 0
        return launcher

    softmax_forward = _rows(ref.softmax_forward)
    log_softmax_forward = _rows(ref.log_softmax_forward)
    softmax_backward = _rows_backward(ref.softmax_backward)
    log_softmax_backward = _rows_backward(ref.log_softmax_backward)

    def cross_entropy_forward(self, losses, lse, bad, logits, targets, ignore_index, N, V):
        t = view(targets, N, I64)
        if np.any((t != ignore_index) & ((t < 0) | (t >= V))):
            view(bad, 1, np.int32)[0] = 1
            return 0
        lo, ls = ref.cross_entropy_forward(view(logits, N * V).reshape(N, V), t, ignore_index)
        view(losses, N)[:] = lo
        view(lse, N)[:] = ls
        return 0

    def cross_entropy_backward(self, dlogits, dlosses, logits, targets, lse, ignore_index, N, V):
        d = ref.cross_entropy_backward(view(dlosses, N), view(logits, N * V).reshape(N, V), view(targets, N, I64),
                                       view(lse, N), ignore_index)
        view(dlogits, N * V)[:] = d.reshape(-1)
        return 0

    def kl_div_forward(self, losses, student_lse, teacher_lse, student, teacher, temperature, N, V):
        lo, ls, lt = ref.kl_div_forward(view(student, N * V).reshape(N, V), view(teacher, N * V).reshape(N, V),
                                        np.float32(temperature))
        view(losses, N)[:], view(student_lse, N)[:], view(teacher_lse, N)[:] = lo, ls, lt
        return 0

    def kl_div_backward(self, dstudent, dlosses, student, teacher, student_lse, teacher_lse, temperature, N, V):
        d = ref.kl_div_backward(view(dlosses, N), view(student, N * V).reshape(N, V),
                                view(teacher, N * V).reshape(N, V), view(student_lse, N), view(teacher_lse, N),
                                np.float32(temperature))
        view(dstudent, N * V)[:] = d.reshape(-1)
        return 0

    # embedding.cu
    def embedding_forward(self, out, bad, ids, weight, N, V, C):
        return self.gather_rows(out, bad, weight, ids, N, V, C, 4)

    def embedding_backward(self, dweight, bad, dout, ids, N, V, C):
        view(dweight, V * C)[:] = 0
        return self.scatter_add_rows(dweight, bad, dout, ids, N, V, C)

    # norm.cu
    def layer_norm_forward(self, out, mean, rstd, x, w, b, eps, N, C):
        o, m, r = ref.layer_norm_forward(view(x, N * C).reshape(N, C), view(w, C),
                                         None if b == ffi.NULL else view(b, C), np.float32(eps))
        view(out, N * C)[:], view(mean, N)[:], view(rstd, N)[:] = o.reshape(-1), m, r
        return 0

    def layer_norm_backward(self, dx, dw, db, dout, x, w, mean, rstd, N, C):
        has_bias = db != ffi.NULL
        a, bw, bb = ref.layer_norm_backward(view(dout, N * C).reshape(N, C), view(x, N * C).reshape(N, C), view(w, C),
                                            view(mean, N), view(rstd, N), has_bias)
        view(dx, N * C)[:], view(dw, C)[:] = a.reshape(-1), bw
        if has_bias:
            view(db, C)[:] = bb
        return 0

    def rms_norm_forward(self, out, rstd, x, w, eps, N, C):
        o, r = ref.rms_norm_forward(view(x, N * C).reshape(N, C), view(w, C), np.float32(eps))
        view(out, N * C)[:], view(rstd, N)[:] = o.reshape(-1), r
        return 0

    def rms_norm_backward(self, dx, dw, dout, x, w, rstd, N, C):
        a, bw = ref.rms_norm_backward(view(dout, N * C).reshape(N, C), view(x, N * C).reshape(N, C), view(w, C),
                                      view(rstd, N))
        view(dx, N * C)[:], view(dw, C)[:] = a.reshape(-1), bw
        return 0

    # rope.cu
    def _rope(fn, out, x, cos, sin, BNH, T, HS):
        xs = view(x, BNH * T * HS).reshape(BNH, T, HS)
        c, s = view(cos, T * HS // 2).reshape(T, HS // 2), view(sin, T * HS // 2).reshape(T, HS // 2)
        view(out, BNH * T * HS)[:] = fn(xs, c, s).reshape(-1)
        return 0

    def rope_forward(self, out, x, cos, sin, BNH, T, HS):
        return MockLib._rope(ref.rope_forward, out, x, cos, sin, BNH, T, HS)

    def rope_backward(self, dx, dout, cos, sin, BNH, T, HS):
        return MockLib._rope(ref.rope_backward, dx, dout, cos, sin, BNH, T, HS)

    # paged_attention.cu
    def paged_cache_write(self, bad, k_cache, v_cache, k, v, slots, N, NKV, NB, BS, HS):
        s = view(slots, N, I64)
        if np.any((s < 0) | (s >= NB * BS)):
            view(bad, 1, np.int32)[0] = 1
            return 0
        ref.paged_cache_write(view(k_cache, NB * NKV * BS * HS).reshape(NB, NKV, BS, HS),
                              view(v_cache, NB * NKV * BS * HS).reshape(NB, NKV, BS, HS),
                              view(k, N * NKV * HS).reshape(N, NKV, HS), view(v, N * NKV * HS).reshape(N, NKV, HS), s)
        return 0

    def paged_attention_forward(self, out, bad, q, k_cache, v_cache, block_tables, positions, N, NH, NKV, NB, BS,
                                MB, HS):
        tables, pos = view(block_tables, N * MB, I64).reshape(N, MB), view(positions, N, I64)
        if np.any((pos < 0) | (pos >= MB * BS)) or np.any((tables < 0) | (tables >= NB)):
            view(bad, 1, np.int32)[0] = 1
            return 0
        caches = [view(c, NB * NKV * BS * HS).reshape(NB, NKV, BS, HS) for c in (k_cache, v_cache)]
        view(out, N * NH * HS)[:] = ref.paged_attention_forward(view(q, N * NH * HS).reshape(N, NH, HS), *caches,
                                                                tables, pos).reshape(-1)
        return 0

    # attention.cu
    def attention_forward_v2_flash(self, out, lse, q, k, v, segment_ids, B, NH, NKV, Tq, Tk, HS):
        qs = view(q, B * NH * Tq * HS).reshape(B, NH, Tq, HS)
        ks, vs = (view(p, B * NKV * Tk * HS).reshape(B, NKV, Tk, HS) for p in (k, v))
        o, ls = ref.attention_forward(qs, ks, vs, MockLib._segments(segment_ids, B, Tk))
        view(out, o.size)[:], view(lse, ls.size)[:] = o.reshape(-1), ls.reshape(-1)
        return 0

    attention_forward_v1_naive = attention_forward_v2_flash

    def _segments(segment_ids, B, T):
        """The int32 (B, T) document ids at a device pointer, or None for NULL."""
        if segment_ids == ffi.NULL:
            return None
        return view(segment_ids, B * T, np.int32).reshape(B, T).copy()

    def attention_backward_v1_naive(self, dq, dk, dv, dout, q, k, v, out, lse, segment_ids, B, NH, NKV, Tq, Tk, HS):
        shape_q, shape_k = (B, NH, Tq, HS), (B, NKV, Tk, HS)
        g = [view(p, math.prod(shape_q)).reshape(shape_q) for p in (dout, q)]
        ks, vs = (view(p, math.prod(shape_k)).reshape(shape_k) for p in (k, v))
        o, ls = view(out, math.prod(shape_q)).reshape(shape_q), view(lse, B * NH * Tq).reshape(B, NH, Tq)
        a, b, c = ref.attention_backward(g[0], g[1], ks, vs, o, ls, MockLib._segments(segment_ids, B, Tk))
        view(dq, a.size)[:], view(dk, b.size)[:], view(dv, c.size)[:] = a.reshape(-1), b.reshape(-1), c.reshape(-1)
        return 0

    def attention_backward_v2_flash(self, dq, dk, dv, delta, dout, q, k, v, out, lse, segment_ids, B, NH, NKV, Tq,
                                    Tk, HS):
        return self.attention_backward_v1_naive(dq, dk, dv, dout, q, k, v, out, lse, segment_ids, B, NH, NKV, Tq, Tk,
                                                HS)

    # adamw.cu
    def adamw_update(self, param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step, n):
        p, g, mm, vv = view(param, n), view(grad, n), view(m, n), view(v, n)
        bc1, bc2 = 1.0 - np.float64(np.float32(beta1)) ** step, 1.0 - np.float64(np.float32(beta2)) ** step
        mm[:] = beta1 * mm + (1 - beta1) * g
        vv[:] = beta2 * vv + (1 - beta2) * g * g
        p[:] = p - lr * (weight_decay * p + (mm / np.float32(bc1)) / (np.sqrt(vv / np.float32(bc2)) + eps))
        return 0

    # quant.cu (the formats of backends/reference.py's quantized section)
    def _quant_weight(self, w_q, w_scale, group, OC, C, bits):
        stored = C if bits == 8 else C // 2
        q = view(w_q, OC * stored, np.int8 if bits == 8 else np.uint8).reshape(OC, stored)
        d = view(w_scale, OC * (C // group)).reshape(OC, C // group)
        return (ref.dequantize_q8 if bits == 8 else ref.dequantize_q4)(q, d, group)

    def _linear_quant(self, out, x, w_q, w_scale, b, group, N, C, OC, bits):
        w = self._quant_weight(w_q, w_scale, group, OC, C, bits)
        bias = None if b == ffi.NULL else view(b, OC)
        view(out, N * OC)[:] = ref.linear_forward(view(x, N * C).reshape(N, C), w, bias).reshape(-1)
        return 0

    # linear_rows.cu
    def linear_rows_forward(self, out, x, w, b, w_in_out, N, C, OC):
        wt = view(w, OC * C).reshape((C, OC) if w_in_out else (OC, C))
        bias = None if b == ffi.NULL else view(b, OC)
        rows = view(x, N * C).reshape(N, C)          # row by row, as the contract promises its rows are
        view(out, N * OC)[:] = np.concatenate([ref.linear_rows_forward(rows[n:n + 1], wt, bias, w_in_out)
                                               for n in range(N)]).reshape(-1)
        return 0

    def linear_q8_forward(self, out, x, w_q, w_scale, b, group, N, C, OC):
        return self._linear_quant(out, x, w_q, w_scale, b, group, N, C, OC, 8)

    def linear_q4_forward(self, out, x, w_q, w_scale, b, group, N, C, OC):
        return self._linear_quant(out, x, w_q, w_scale, b, group, N, C, OC, 4)

    def dequantize_q8(self, w, w_q, w_scale, group, OC, C):
        view(w, OC * C)[:] = self._quant_weight(w_q, w_scale, group, OC, C, 8).reshape(-1)
        return 0

    def dequantize_q4(self, w, w_q, w_scale, group, OC, C):
        view(w, OC * C)[:] = self._quant_weight(w_q, w_scale, group, OC, C, 4).reshape(-1)
        return 0

    # moe.cu (backends/reference.py's mixture-of-experts section)
    def moe_permute_forward(self, out, x, token_index, N, R, C):
        t = view(token_index, R, I64)
        view(out, R * C)[:] = ref.moe_permute_forward(view(x, N * C).reshape(N, C), t).reshape(-1)
        return 0

    def moe_permute_backward(self, dx, dout, token_index, N, R, C):
        d = ref.moe_permute_backward(view(dout, R * C).reshape(R, C), view(token_index, R, I64), N)
        view(dx, N * C)[:] = d.reshape(-1)
        return 0

    def grouped_matmul_forward(self, out, x, w, offsets, R, E, C, OC):
        o = ref.grouped_matmul_forward(view(x, R * C).reshape(R, C), view(w, E * OC * C).reshape(E, OC, C),
                                       view(offsets, E + 1, I64))
        view(out, R * OC)[:] = o.reshape(-1)
        return 0

    def grouped_matmul_backward(self, dx, dw, dout, x, w, offsets, R, E, C, OC):
        gx, gw = ref.grouped_matmul_backward(view(dout, R * OC).reshape(R, OC), view(x, R * C).reshape(R, C),
                                             view(w, E * OC * C).reshape(E, OC, C), view(offsets, E + 1, I64))
        view(dx, R * C)[:], view(dw, E * OC * C)[:] = gx.reshape(-1), gw.reshape(-1)
        return 0

    def moe_combine_forward(self, out, y, weights, token_index, N, R, C):
        o = ref.moe_combine_forward(view(y, R * C).reshape(R, C), view(weights, R), view(token_index, R, I64), N)
        view(out, N * C)[:] = o.reshape(-1)
        return 0

    def moe_combine_backward(self, dy, dweights, dout, y, weights, token_index, N, R, C):
        gy, gw = ref.moe_combine_backward(view(dout, N * C).reshape(N, C), view(y, R * C).reshape(R, C),
                                          view(weights, R), view(token_index, R, I64))
        view(dy, R * C)[:], view(dweights, R)[:] = gy.reshape(-1), gw
        return 0


def install(monkeypatch):
    """Replace the CUDA library by MockLib for one test; returns the mock."""
    mock = MockLib()
    monkeypatch.setattr(rt, "ffi", ffi)
    monkeypatch.setattr(rt, "lib", mock)
    monkeypatch.setattr(rt, "POOL", rt._Pool())
    monkeypatch.setattr(rt, "_flag", None)
    monkeypatch.setattr(rt, "_pending", set())
    monkeypatch.setattr(rt, "POISON", True)
    monkeypatch.setattr(cuda, "AVAILABLE", True)
    return mock

