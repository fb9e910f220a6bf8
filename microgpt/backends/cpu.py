"""The C backend: csrc/ kernels through cffi, behind the contract of backends/__init__.py.

Each binding validates its arguments once (cpu_checks.py: dtype, C-contiguity, shapes,
sizes, id ranges, aliasing) and raises ShapeError/DTypeError before any C runs, so no call
from Python can crash the process; then it allocates the outputs and calls one C function.
The matmul and linear bindings are in cpu_matmul.py, the compiled module and the pointer
helpers in cpu_lib.py; this module binds the rest and is the backend module itself.

Which kernels run in C (float32 only; float64 arrays take the NumPy reference path, for
gradient checks):
  matmul, linear, softmax, log_softmax, cross_entropy, embedding, layer_norm, rms_norm,
  rope, gelu, silu, attention, adamw_update, paged_cache_write, paged_attention_forward, the
  mixture-of-experts kernels (cpu_moe.py).
Which reuse backends/reference.py as they are: array creation and transfer, the elementwise
arithmetic (add ... tanh, relu), reductions, and shape bookkeeping (reshape, permute,
getitem, concatenate ...). These are memory-bound one-liners that NumPy already runs at
memory speed; a C copy would add code without adding speed.

Threads: MICROGPT_NUM_THREADS (default: every core) sizes the one OpenMP team of the C
kernels. NumPy's OpenBLAS keeps its own pool, but the two never run at once: every float32
matmul goes through C, so OpenBLAS only serves float64 reference work. Kernels below a size
threshold stay on one thread (forking costs microseconds), which matters on tiny models, and
idle workers sleep rather than spin (OMP_WAIT_POLICY, set in cpu_lib.py), so neither pool
starves the other, nor other processes, of cores.
"""
import ctypes
import os

import numpy as np

from ..errors import BackendError, ConfigError, DTypeError, ShapeError
from . import cpu_checks as check
from . import cpu_lib
from . import reference as _ref

NAME = "cpu"
AVAILABLE, UNAVAILABLE_REASON = cpu_lib.AVAILABLE, cpu_lib.UNAVAILABLE_REASON
ffi, lib = cpu_lib.ffi, cpu_lib.lib
_fp, _ip, _opt = cpu_lib.fp, cpu_lib.ip, cpu_lib.opt


def set_num_threads(n):
    """Threads used by the C kernels from now on (MICROGPT_NUM_THREADS sets the default)."""
    lib.microgpt_set_num_threads(check.integer("set_num_threads", "n", n, low=1))


def get_num_threads():
    return lib.microgpt_get_num_threads()


def simd_path():
    """The matmul micro-kernel in use: 'avx512', 'avx2' or 'scalar'."""
    return ffi.string(lib.microgpt_simd_path()).decode()


def _threads_from_env():
    text = os.environ.get("MICROGPT_NUM_THREADS", "").strip()
    if not text:        # the cores this process may run on (taskset, cgroups), not all of the machine's
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if not text.isdigit() or int(text) < 1:
        # ConfigError, not BackendError: a typo must not silently fall back to the reference
        raise ConfigError(f"MICROGPT_NUM_THREADS={text!r} must be a positive integer")
    return int(text)


def _keep_freed_memory():
    """Let glibc keep freed blocks of up to 32 MiB for reuse instead of unmapping them.

    A training step frees and re-allocates the same activation-sized arrays every step. By
    default glibc hands blocks above a moving threshold back to the OS and trims the heap top,
    so the next step's arrays are fresh pages, each zeroed by a page fault: softmax over a
    (24576, 256) array measured 14 ms instead of 6 ms that way, depending only on what ran
    before it. Fixed thresholds (mmap above 32 MiB, the most glibc allows; never trim) make
    reuse the rule. Process-wide, glibc only; MICROGPT_MALLOC_TUNING=0 leaves malloc alone.
    """
    if os.environ.get("MICROGPT_MALLOC_TUNING", "1") == "0":
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt           # absent outside glibc (musl, macOS)
    except (OSError, AttributeError):
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3        # glibc's <malloc.h> constants
    mallopt(M_MMAP_THRESHOLD, 32 << 20)
    mallopt(M_TRIM_THRESHOLD, 1 << 30)


if AVAILABLE:
    set_num_threads(_threads_from_env())
    _keep_freed_memory()
    from . import cpu_matmul      # needs the built module
    matmul_forward, matmul_backward = cpu_matmul.matmul_forward, cpu_matmul.matmul_backward
    linear_forward, linear_backward = cpu_matmul.linear_forward, cpu_matmul.linear_backward
    linear_rows_forward = cpu_matmul.linear_rows_forward
    from . import cpu_quant       # weight-only int8 / int4 linear layers (csrc/quant.c)
    linear_q8_forward, linear_q4_forward = cpu_quant.linear_q8_forward, cpu_quant.linear_q4_forward
    dequantize_q8, dequantize_q4 = cpu_quant.dequantize_q8, cpu_quant.dequantize_q4
    from . import cpu_moe         # mixture-of-experts routing and grouped matmul (csrc/moe.c)
    moe_permute_forward, moe_permute_backward = cpu_moe.moe_permute_forward, cpu_moe.moe_permute_backward
    grouped_matmul_forward = cpu_moe.grouped_matmul_forward
    grouped_matmul_backward = cpu_moe.grouped_matmul_backward
    moe_combine_forward, moe_combine_backward = cpu_moe.moe_combine_forward, cpu_moe.moe_combine_backward


# --- reused from the reference: creation, elementwise arithmetic, reductions, shapes -----------

asarray, to_numpy, zeros, full, accumulate = (_ref.asarray, _ref.to_numpy, _ref.zeros, _ref.full,
                                              _ref.accumulate)
add, sub, mul, div, neg, pow_scalar = _ref.add, _ref.sub, _ref.mul, _ref.div, _ref.neg, _ref.pow_scalar
exp, log, sqrt, tanh = _ref.exp, _ref.log, _ref.sqrt, _ref.tanh
relu_forward, relu_backward = _ref.relu_forward, _ref.relu_backward
sum, max, max_backward, sum_to_shape = _ref.sum, _ref.max, _ref.max_backward, _ref.sum_to_shape  # noqa: A001
broadcast_to, reshape, permute, concatenate = _ref.broadcast_to, _ref.reshape, _ref.permute, _ref.concatenate
getitem, getitem_backward = _ref.getitem, _ref.getitem_backward


# --- softmax family and cross-entropy ------------------------------------------------------------

def _rows(x):
    return x.size // x.shape[-1], x.shape[-1]


def _softmax_like(op, c_fn, ref_fn, x):
    if not check.floats(op, x=x):
        return ref_fn(x)
    out = np.empty_like(x)
    c_fn(_fp(out), _fp(x), *_rows(x))
    return out


def _softmax_like_backward(op, c_fn, ref_fn, dout, out):
    is32 = check.floats(op, dout=dout, out=out)
    check.shape(op, "dout", dout, out.shape)
    if not is32:
        return ref_fn(dout, out)
    dx = np.empty_like(out)
    c_fn(_fp(dx), _fp(dout), _fp(out), *_rows(out))
    return dx


def softmax_forward(x):
    return _softmax_like("softmax_forward", lib.softmax_forward, _ref.softmax_forward, x)


def softmax_backward(dout, out):
    return _softmax_like_backward("softmax_backward", lib.softmax_backward, _ref.softmax_backward,
                                  dout, out)


def log_softmax_forward(x):
    return _softmax_like("log_softmax_forward", lib.log_softmax_forward, _ref.log_softmax_forward, x)


def log_softmax_backward(dout, out):
    return _softmax_like_backward("log_softmax_backward", lib.log_softmax_backward,
                                  _ref.log_softmax_backward, dout, out)


def _ce_check(op, logits, targets, ignore_index):
    if logits.ndim != 2:
        raise ShapeError(f"{op}: logits must be (N, V), got shape {logits.shape}")
    ignore_index = check.integer(op, "ignore_index", ignore_index)
    targets = check.ids(op, "targets", targets, logits.shape[1], ignore=ignore_index)
    check.shape(op, "targets", targets, logits.shape[:1])
    return targets, ignore_index


def cross_entropy_forward(logits, targets, ignore_index):
    op = "cross_entropy_forward"
    is32 = check.floats(op, logits=logits)
    targets, ignore_index = _ce_check(op, logits, targets, ignore_index)
    if not is32:
        return _ref.cross_entropy_forward(logits, targets, ignore_index)
    N, V = logits.shape
    losses, lse = np.empty(N, dtype=logits.dtype), np.empty(N, dtype=logits.dtype)
    lib.cross_entropy_forward(_fp(losses), _fp(lse), _fp(logits), _ip(targets), ignore_index, N, V)
    return losses, lse


def cross_entropy_backward(dlosses, logits, targets, lse, ignore_index):
    op = "cross_entropy_backward"
    is32 = check.floats(op, dlosses=dlosses, logits=logits, lse=lse)
    targets, ignore_index = _ce_check(op, logits, targets, ignore_index)
    N, V = logits.shape
    check.shape(op, "dlosses", dlosses, (N,))
    check.shape(op, "lse", lse, (N,))
    if not is32:
        return _ref.cross_entropy_backward(dlosses, logits, targets, lse, ignore_index)
    dlogits = np.empty_like(logits)
    lib.cross_entropy_backward(_fp(dlogits), _fp(dlosses), _fp(logits), _ip(targets), _fp(lse),
                               ignore_index, N, V)
    return dlogits


# --- distillation's KL ---------------------------------------------------------------------------
# csrc/crossentropy.c: per row two logsumexps (of student / T and teacher / T) in one pass for
# the maxima and one for the sums, threaded over rows; the backward rebuilds both softmaxes
# from them. float64 goes to the reference.

def _kl_check(op, student, teacher, temperature):
    is32 = check.floats(op, student=student, teacher=teacher)
    if student.ndim != 2:
        raise ShapeError(f"{op}: student logits must be (N, V), got shape {student.shape}")
    check.shape(op, "teacher", teacher, student.shape)
    temperature = check.real(op, "temperature", temperature)
    if temperature <= 0:
        raise ShapeError(f"{op}: temperature must be > 0, got {temperature}")
    return temperature, is32


def kl_div_forward(student, teacher, temperature):
    temperature, is32 = _kl_check("kl_div_forward", student, teacher, temperature)
    if not is32:
        return _ref.kl_div_forward(student, teacher, temperature)
    N, V = student.shape
    losses, student_lse, teacher_lse = (np.empty(N, dtype=student.dtype) for _ in range(3))
    lib.kl_div_forward(_fp(losses), _fp(student_lse), _fp(teacher_lse), _fp(student), _fp(teacher),
                       temperature, N, V)
    return losses, student_lse, teacher_lse


def kl_div_backward(dlosses, student, teacher, student_lse, teacher_lse, temperature):
    op = "kl_div_backward"
    temperature, is32 = _kl_check(op, student, teacher, temperature)
    check.floats(op, dlosses=dlosses, student=student, student_lse=student_lse, teacher_lse=teacher_lse)
    for name, x in (("dlosses", dlosses), ("student_lse", student_lse), ("teacher_lse", teacher_lse)):
        check.shape(op, name, x, student.shape[:1])
    if not is32:
        return _ref.kl_div_backward(dlosses, student, teacher, student_lse, teacher_lse, temperature)
    N, V = student.shape
    dstudent = np.empty_like(student)
    lib.kl_div_backward(_fp(dstudent), _fp(dlosses), _fp(student), _fp(teacher), _fp(student_lse),
                        _fp(teacher_lse), temperature, N, V)
    return dstudent


# --- embedding -----------------------------------------------------------------------------------

def embedding_forward(ids, weight):
    op = "embedding_forward"
    is32 = check.floats(op, weight=weight)
    if weight.ndim != 2:
        raise ShapeError(f"{op}: weight must be (V, C), got shape {weight.shape}")
    V, C = weight.shape
    ids = check.ids(op, "ids", ids, V)
    if not is32:
        return _ref.embedding_forward(ids, weight)
    out = np.empty(ids.shape + (C,), dtype=weight.dtype)
    lib.embedding_forward(_fp(out), _ip(ids), _fp(weight), ids.size, V, C)
    return out


def embedding_backward(dout, ids, num_embeddings):
    op = "embedding_backward"
    is32 = check.floats(op, dout=dout)
    V = check.integer(op, "num_embeddings", num_embeddings, low=1)
    ids = check.ids(op, "ids", ids, V)
    check.shape(op, "dout", dout, ids.shape + dout.shape[-1:])
    if not is32:
        return _ref.embedding_backward(dout, ids, V)
    C = dout.shape[-1]
    dweight = np.zeros((V, C), dtype=dout.dtype)      # lazily zeroed pages; C adds into it
    lib.embedding_backward(_fp(dweight), _fp(dout), _ip(ids), ids.size, V, C)
    return dweight


# --- normalization -------------------------------------------------------------------------------

def _norm_check(op, x, w, b=None, stats=()):
    C = x.shape[-1]
    check.shape(op, "w", w, (C,))
    if b is not None:
        check.shape(op, "b", b, (C,))
    for name, s in stats:
        check.shape(op, name, s, x.shape[:-1])
    return x.size // C, C


def layer_norm_forward(x, w, b, eps):
    op = "layer_norm_forward"
    is32 = check.floats(op, x=x, w=w, b=b)
    N, C = _norm_check(op, x, w, b)
    eps = check.real(op, "eps", eps)
    if not is32:
        return _ref.layer_norm_forward(x, w, b, eps)
    out, mean, rstd = np.empty_like(x), np.empty(x.shape[:-1], x.dtype), np.empty(x.shape[:-1], x.dtype)
    lib.layer_norm_forward(_fp(out), _fp(mean), _fp(rstd), _fp(x), _fp(w), _opt(b), eps, N, C)
    return out, mean, rstd


def layer_norm_backward(dout, x, w, mean, rstd, has_bias):
    op = "layer_norm_backward"
    has_bias = check.flag(op, "has_bias", has_bias)
    is32 = check.floats(op, dout=dout, x=x, w=w, mean=mean, rstd=rstd)
    check.shape(op, "dout", dout, x.shape)
    N, C = _norm_check(op, x, w, stats=(("mean", mean), ("rstd", rstd)))
    if not is32:
        return _ref.layer_norm_backward(dout, x, w, mean, rstd, has_bias)
    dx, dw = np.empty_like(x), np.empty_like(w)
    db = np.empty_like(w) if has_bias else None
    lib.layer_norm_backward(_fp(dx), _fp(dw), _opt(db), _fp(dout), _fp(x), _fp(w), _fp(mean),
                            _fp(rstd), N, C)
    return dx, dw, db


def rms_norm_forward(x, w, eps):
    op = "rms_norm_forward"
    is32 = check.floats(op, x=x, w=w)
    N, C = _norm_check(op, x, w)
    eps = check.real(op, "eps", eps)
    if not is32:
        return _ref.rms_norm_forward(x, w, eps)
    out, rstd = np.empty_like(x), np.empty(x.shape[:-1], x.dtype)
    lib.rms_norm_forward(_fp(out), _fp(rstd), _fp(x), _fp(w), eps, N, C)
    return out, rstd


def rms_norm_backward(dout, x, w, rstd):
    op = "rms_norm_backward"
    is32 = check.floats(op, dout=dout, x=x, w=w, rstd=rstd)
    check.shape(op, "dout", dout, x.shape)
    N, C = _norm_check(op, x, w, stats=(("rstd", rstd),))
    if not is32:
        return _ref.rms_norm_backward(dout, x, w, rstd)
    dx, dw = np.empty_like(x), np.empty_like(w)
    lib.rms_norm_backward(_fp(dx), _fp(dw), _fp(dout), _fp(x), _fp(w), _fp(rstd), N, C)
    return dx, dw


# --- rotary embedding and activations ---------------------------------------------------------------

def _rope(op, c_fn, ref_fn, x, cos, sin):
    # cos/sin are constant tables: float64 ones meet float32 activations by a cast (T x HS/2).
    if isinstance(x, np.ndarray) and x.dtype == check.F32:
        cos, sin = (t.astype(np.float32) if isinstance(t, np.ndarray) and t.dtype == check.F64 else t
                    for t in (cos, sin))
    is32 = check.floats(op, x=x, cos=cos, sin=sin)
    check.min_ndim(op, "x", x, 2)
    T, HS = x.shape[-2], x.shape[-1]
    if HS % 2:
        raise ShapeError(f"{op}: head size {HS} must be even to rotate pairs")
    check.shape(op, "cos", cos, (T, HS // 2))
    check.shape(op, "sin", sin, (T, HS // 2))
    if not is32:
        return ref_fn(x, cos, sin)
    out = np.empty_like(x)
    c_fn(_fp(out), _fp(x), _fp(cos), _fp(sin), x.size // (T * HS), T, HS)
    return out


def rope_forward(x, cos, sin):
    return _rope("rope_forward", lib.rope_forward, _ref.rope_forward, x, cos, sin)


def rope_backward(dout, cos, sin):
    return _rope("rope_backward", lib.rope_backward, _ref.rope_backward, dout, cos, sin)


def _unary(op, c_fn, ref_fn, x):
    if not check.floats(op, x=x):
        return ref_fn(x)
    out = np.empty_like(x)
    c_fn(_fp(out), _fp(x), x.size)
    return out


def _unary_backward(op, c_fn, ref_fn, dout, x):
    is32 = check.floats(op, dout=dout, x=x)
    check.shape(op, "dout", dout, x.shape)
    if not is32:
        return ref_fn(dout, x)
    dx = np.empty_like(x)
    c_fn(_fp(dx), _fp(dout), _fp(x), x.size)
    return dx


def gelu_forward(x):
    return _unary("gelu_forward", lib.gelu_forward, _ref.gelu_forward, x)


def gelu_backward(dout, x):
    return _unary_backward("gelu_backward", lib.gelu_backward, _ref.gelu_backward, dout, x)


def silu_forward(x):
    return _unary("silu_forward", lib.silu_forward, _ref.silu_forward, x)


def silu_backward(dout, x):
    return _unary_backward("silu_backward", lib.silu_backward, _ref.silu_backward, dout, x)


# --- optimizer -------------------------------------------------------------------------------------

def adamw_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
    op = "adamw_update"
    is32 = check.floats(op, param=param, grad=grad, m=m, v=v)
    for name, x in (("grad", grad), ("m", m), ("v", v)):
        check.shape(op, name, x, param.shape)
    check.writeable(op, param=param, m=m, v=v)
    check.disjoint(op, param=param, grad=grad, m=m, v=v)
    scalars = [check.real(op, name, value) for name, value in
               (("lr", lr), ("beta1", beta1), ("beta2", beta2), ("eps", eps), ("weight_decay", weight_decay))]
    step = check.integer(op, "step", step, low=1)
    if not is32:
        return _ref.adamw_update(param, grad, m, v, *scalars, step)
    lib.adamw_update(_fp(param), _fp(grad), _fp(m), _fp(v), *scalars, step, param.size)


# === attention: bindings of csrc/attention.c ======================================================
# Inputs are only read and outputs are fresh arrays, so inputs may alias each other (q is k is
# fine). The C kernel's scratch (`work`) is allocated here, sized by C for the current thread
# count: O(T * HS) floats per thread, never T x T (tests/test_cpu_attention.py checks it).
_MAX_T = 2**30      # positions are int lanes in the kernel's masks


def _attention_shapes(op, q, k, v):
    """(B, NH, NKV, Tq, Tk, HS) of valid attention inputs, or ShapeError."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ShapeError(f"{op}: {name} must be 4-D (B, heads, T, HS), got shape {x.shape}")
    B, NH, Tq, HS = q.shape
    NKV, Tk = k.shape[1], k.shape[2]
    check.shape(op, "k", k, (B, NKV, Tk, HS))
    check.shape(op, "v", v, k.shape)
    if NH % NKV:
        raise ShapeError(f"{op}: {NH} query heads are not a multiple of {NKV} key/value heads")
    if Tq > Tk:
        raise ShapeError(f"{op}: {Tq} queries but only {Tk} keys; queries are the last Tq positions")
    if Tk > _MAX_T:
        raise ShapeError(f"{op}: {Tk} keys is more than the kernel supports ({_MAX_T})")
    return B, NH, NKV, Tq, Tk, HS


_I32 = np.iinfo(np.int32)


def _segments(op, segment_ids, B, Tq, Tk):
    """Document ids as the kernel takes them: a C-contiguous int32 (B, T) array, or None.

    The kernel's masks compare ids in 32-bit lanes and summarize a block by the range of its
    ids (attention.c), so ids outside int32 are relabelled by their rank: equal stays equal and
    the order (hence every range test) is kept.
    """
    if segment_ids is None:
        return None
    seg = np.asarray(segment_ids)
    if seg.dtype.kind not in "iu":
        raise DTypeError(f"{op}: segment_ids must hold integers, got {seg.dtype}")
    if Tq != Tk:
        raise ShapeError(f"{op}: segment_ids need as many queries as keys, got Tq={Tq}, Tk={Tk}")
    check.shape(op, "segment_ids", seg, (B, Tk))
    if seg.size and (seg.min() < _I32.min or seg.max() > _I32.max):
        seg = np.unique(seg, return_inverse=True)[1].reshape(seg.shape)
    return np.ascontiguousarray(seg, dtype=np.int32)


def _seg_pointer(seg):
    return ffi.NULL if seg is None else ffi.from_buffer("int32_t[]", seg)


def attention_forward(q, k, v, segment_ids=None):
    op = "attention_forward"
    is32 = check.floats(op, q=q, k=k, v=v)
    B, NH, NKV, Tq, Tk, HS = _attention_shapes(op, q, k, v)
    seg = _segments(op, segment_ids, B, Tq, Tk)
    if not is32:
        return _ref.attention_forward(q, k, v, seg)
    out, lse = np.empty_like(q), np.empty((B, NH, Tq), np.float32)
    work = np.empty(lib.attention_forward_workspace(B, NH, Tq, Tk, HS), np.float32)
    if lib.attention_forward(_fp(out), _fp(lse), _fp(work), work.size, _fp(q), _fp(k), _fp(v),
                             _seg_pointer(seg), B, NH, NKV, Tq, Tk, HS):
        raise BackendError(f"{op}: workspace of {work.size} floats too small (thread count changed?)")
    return out, lse


def attention_backward(dout, q, k, v, out, lse, segment_ids=None):
    op = "attention_backward"
    is32 = check.floats(op, dout=dout, q=q, k=k, v=v, out=out, lse=lse)
    B, NH, NKV, Tq, Tk, HS = _attention_shapes(op, q, k, v)
    check.shape(op, "dout", dout, q.shape)
    check.shape(op, "out", out, q.shape)
    check.shape(op, "lse", lse, (B, NH, Tq))
    seg = _segments(op, segment_ids, B, Tq, Tk)
    if not is32:
        return _ref.attention_backward(dout, q, k, v, out, lse, seg)
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    work = np.empty(lib.attention_backward_workspace(B, NH, NKV, Tq, Tk, HS), np.float32)
    if lib.attention_backward(_fp(dq), _fp(dk), _fp(dv), _fp(work), work.size, _fp(dout), _fp(q),
                              _fp(k), _fp(v), _fp(out), _fp(lse), _seg_pointer(seg), B, NH, NKV,
                              Tq, Tk, HS):
        raise BackendError(f"{op}: workspace of {work.size} floats too small (thread count changed?)")
    return dq, dk, dv
# === end attention ===================================================================================


# === paged KV cache: bindings of csrc/paged_attention.c ==============================================
# The block tables, positions and slots come from the scheduler, but they are indices into the
# cache: each is range-checked here (a slot outside the pool would be a write outside an array).

def _paged_cache(op, k_cache, v_cache):
    if k_cache.ndim != 4:
        raise ShapeError(f"{op}: k_cache must be 4-D (NB, NKV, BS, HS), got shape {k_cache.shape}")
    check.shape(op, "v_cache", v_cache, k_cache.shape)
    return k_cache.shape


def paged_cache_write(k_cache, v_cache, k, v, slots):
    op = "paged_cache_write"
    is32 = check.floats(op, k_cache=k_cache, v_cache=v_cache, k=k, v=v)
    NB, NKV, BS, HS = _paged_cache(op, k_cache, v_cache)
    if k.ndim != 3:
        raise ShapeError(f"{op}: k must be (N, NKV, HS), got shape {k.shape}")
    N = k.shape[0]
    check.shape(op, "k", k, (N, NKV, HS))
    check.shape(op, "v", v, k.shape)
    slots = check.ids(op, "slots", slots, NB * BS)
    check.shape(op, "slots", slots, (N,))
    if np.unique(slots).size != N:
        raise ShapeError(f"{op}: slots repeat a slot; each new row needs its own")
    check.writeable(op, k_cache=k_cache, v_cache=v_cache)
    check.disjoint(op, k_cache=k_cache, v_cache=v_cache, k=k, v=v)
    if not is32:
        return _ref.paged_cache_write(k_cache, v_cache, k, v, slots)
    lib.paged_cache_write(_fp(k_cache), _fp(v_cache), _fp(k), _fp(v), _ip(slots), N, NKV, NB, BS, HS)
    return None


def paged_attention_forward(q, k_cache, v_cache, block_tables, positions):
    op = "paged_attention_forward"
    is32 = check.floats(op, q=q, k_cache=k_cache, v_cache=v_cache)
    NB, NKV, BS, HS = _paged_cache(op, k_cache, v_cache)
    if q.ndim != 3 or q.shape[2] != HS:
        raise ShapeError(f"{op}: q must be (N, NH, {HS}), got shape {q.shape}")
    N, NH = q.shape[0], q.shape[1]
    if NH % NKV:
        raise ShapeError(f"{op}: {NH} query heads are not a multiple of {NKV} key/value heads")
    block_tables = check.ids(op, "block_tables", block_tables, NB)
    if block_tables.ndim != 2 or block_tables.shape[0] != N:
        raise ShapeError(f"{op}: block_tables must be (N={N}, MB), got shape {block_tables.shape}")
    MB = block_tables.shape[1]
    positions = check.ids(op, "positions", positions, MB * BS)
    check.shape(op, "positions", positions, (N,))
    if not is32:
        return _ref.paged_attention_forward(q, k_cache, v_cache, block_tables, positions)
    out = np.empty_like(q)
    work = np.empty(lib.paged_attention_workspace(MB, BS), np.float32)
    if lib.paged_attention_forward(_fp(out), _fp(work), work.size, _fp(q), _fp(k_cache), _fp(v_cache),
                                   _ip(block_tables), _ip(positions), N, NH, NKV, NB, BS, MB, HS):
        raise BackendError(f"{op}: workspace of {work.size} floats too small (thread count changed?)")
    return out
# === end paged KV cache ==============================================================================
