"""The kernel contract, and the one place where a backend is chosen.

A *backend* is a module of plain functions over arrays. It never sees a Tensor: ops.py
unwraps tensors, calls kernels, and wraps the results. Three backends honour one contract:

    reference   plain NumPy (backends/reference.py): the specification of every kernel,
                float32 and float64. Always available.
    cpu         C kernels through cffi (backends/cpu.py, sources in csrc/), float32.
    cuda        CUDA kernels through cffi (backends/cuda.py, sources in cuda/), on DeviceArray.

KERNELS below is the contract: every backend module defines every name in it, with the
same signature and meaning as reference.py. The C and CUDA kernels under the bindings take
the reference's arguments too, in its order (outputs first, then its inputs, then sizes):
tests/test_kernel_signatures.py states that rule and checks both headers against it.
A backend may implement a kernel by calling another (the C backend leaves float64 and shape
bookkeeping to NumPy), but callers never branch on which backend they hold.

Choosing: a device ("cpu" or "cuda") maps to one backend. The "cpu" device uses the C
backend when it is built, else the reference; MICROGPT_BACKEND=reference|cpu|cuda or
`use(name)` overrides that, at this single point.
"""
import contextlib
import importlib
import os

import numpy as np

from ..errors import BackendError

# name -> (signature, meaning). Sizes: N rows, V vocab, B batch, T time, C channels,
# NH query heads, NKV key/value heads, HS head size. "x" arrays are float32 or float64.
KERNELS = {
    # --- arrays: creation, transfer, bookkeeping ---------------------------------------
    "asarray":          ("asarray(host_array, dtype) -> a", "copy a host NumPy array onto this backend"),
    "to_numpy":         ("to_numpy(a) -> host_array", "copy an array back to a host NumPy array"),
    "zeros":            ("zeros(shape, dtype) -> a", "a new array of zeros"),
    "full":             ("full(shape, value, dtype) -> a", "a new array filled with one value"),
    "accumulate":       ("accumulate(dst, src) -> None", "dst += src, in place (gradient accumulation)"),
    # --- elementwise, with NumPy broadcasting --------------------------------------------
    "add":              ("add(a, b) -> out", "a + b"),
    "sub":              ("sub(a, b) -> out", "a - b"),
    "mul":              ("mul(a, b) -> out", "a * b"),
    "div":              ("div(a, b) -> out", "a / b"),
    "neg":              ("neg(a) -> out", "-a"),
    "pow_scalar":       ("pow_scalar(a, p) -> out", "a ** p for a Python float p"),
    "exp":              ("exp(a) -> out", "e ** a"),
    "log":              ("log(a) -> out", "natural log"),
    "sqrt":             ("sqrt(a) -> out", "square root"),
    "tanh":             ("tanh(a) -> out", "hyperbolic tangent"),
    "relu_forward":     ("relu_forward(x) -> out", "max(x, 0)"),
    "relu_backward":    ("relu_backward(dout, x) -> dx", "dout * (x > 0)"),
    "gelu_forward":     ("gelu_forward(x) -> out", "GELU, tanh approximation (GPT-2)"),
    "gelu_backward":    ("gelu_backward(dout, x) -> dx", "gradient of gelu_forward"),
    "silu_forward":     ("silu_forward(x) -> out", "x * sigmoid(x)"),
    "silu_backward":    ("silu_backward(dout, x) -> dx", "gradient of silu_forward"),
    # --- reductions and shapes ------------------------------------------------------------
    "sum":              ("sum(a, axes, keepdims) -> out", "sum over a tuple of axes"),
    "max":              ("max(a, axes, keepdims) -> out", "max over a tuple of axes"),
    "max_backward":     ("max_backward(dout, a, out, axes) -> da", "dout to the maxima, split evenly among ties"),
    "sum_to_shape":     ("sum_to_shape(g, shape) -> out", "undo broadcasting: sum g down to shape"),
    "broadcast_to":     ("broadcast_to(a, shape) -> out", "a broadcast (copied) to shape"),
    "reshape":          ("reshape(a, shape) -> out", "same elements, new shape"),
    "permute":          ("permute(a, axes) -> out", "axes reordered; result C-contiguous"),
    "getitem":          ("getitem(a, index) -> out", "a[index] (basic or integer-array index); C-contiguous copy"),
    "getitem_backward": ("getitem_backward(dout, shape, index) -> da", "zeros(shape) with dout scatter-added at index"),
    "concatenate":      ("concatenate(arrays, axis) -> out", "join along an existing axis"),
    # --- linear algebra ----------------------------------------------------------------------
    "matmul_forward":   ("matmul_forward(a, b) -> out", "a @ b, batched, batch dims broadcast"),
    "matmul_backward":  ("matmul_backward(dout, a, b) -> (da, db)", "gradients of a @ b, summed to each input's shape"),
    "linear_forward":   ("linear_forward(x, w, b, w_in_out) -> out",
                         "x @ w.T + b; x (..., C), w (OC, C), b (OC,) or None; w_in_out: w stored (C, OC), "
                         "x @ w + b (GPT-2's Conv1D layout)"),
    "linear_rows_forward": ("linear_rows_forward(x, w, b, w_in_out) -> out",
                            "linear_forward, each row's result independent of how many rows share the "
                            "call (batch-invariant decoding)"),
    "linear_backward":  ("linear_backward(dout, x, w, has_bias, w_in_out) -> (dx, dw, db)",
                         "gradients of linear_forward, dw in w's own layout; db None without bias"),
    # --- fused transformer kernels --------------------------------------------------------
    "softmax_forward":      ("softmax_forward(x) -> out", "softmax over the last axis"),
    "softmax_backward":     ("softmax_backward(dout, out) -> dx", "out * (dout - sum(dout * out))"),
    "log_softmax_forward":  ("log_softmax_forward(x) -> out", "x - logsumexp(x) over the last axis"),
    "log_softmax_backward": ("log_softmax_backward(dout, out) -> dx", "dout - exp(out) * sum(dout)"),
    "cross_entropy_forward":  ("cross_entropy_forward(logits, targets, ignore_index) -> (losses, lse)",
                               "per-row -log softmax(logits)[target]; 0 where target == ignore_index; logits (N, V)"),
    "cross_entropy_backward": ("cross_entropy_backward(dlosses, logits, targets, lse, ignore_index) -> dlogits",
                               "dlosses[:, None] * (softmax - onehot(target)); 0 rows where ignored"),
    "kl_div_forward":  ("kl_div_forward(student, teacher, temperature) -> (losses, student_lse, teacher_lse)",
                        "per-row KL(softmax(teacher / T) || softmax(student / T)); logits (N, V), T > 0"),
    "kl_div_backward": ("kl_div_backward(dlosses, student, teacher, student_lse, teacher_lse, temperature) "
                        "-> dstudent", "dlosses[:, None] * (softmax(student / T) - softmax(teacher / T)) / T"),
    "embedding_forward":  ("embedding_forward(ids, weight) -> out", "weight[ids]; ids int64 of any shape"),
    "embedding_backward": ("embedding_backward(dout, ids, num_embeddings) -> dweight", "scatter-add dout rows at ids"),
    "layer_norm_forward":  ("layer_norm_forward(x, w, b, eps) -> (out, mean, rstd)",
                            "normalize the last axis, then * w + b (b may be None)"),
    "layer_norm_backward": ("layer_norm_backward(dout, x, w, mean, rstd, has_bias) -> (dx, dw, db)",
                            "gradients of layer_norm_forward"),
    "rms_norm_forward":    ("rms_norm_forward(x, w, eps) -> (out, rstd)",
                            "x / sqrt(mean(x^2) + eps) * w over the last axis"),
    "rms_norm_backward":   ("rms_norm_backward(dout, x, w, rstd) -> (dx, dw)", "gradients of rms_norm_forward"),
    "rope_forward":   ("rope_forward(x, cos, sin) -> out",
                       "rotate halves of x (B, NH, T, HS) by angles with cos/sin (T, HS/2)"),
    "rope_backward":  ("rope_backward(dout, cos, sin) -> dx", "the inverse rotation applied to dout"),
    "attention_forward":  ("attention_forward(q, k, v, segment_ids) -> (out, lse)",
                           "causal softmax(q k^T / sqrt(HS)) v; q (B, NH, Tq, HS), k/v (B, NKV, Tk, HS), Tq <= Tk, "
                           "query i sits at position Tk - Tq + i; lse (B, NH, Tq) the row logsumexp; "
                           "segment_ids (B, T) integers, T = Tq = Tk, or None: query i sees key j only "
                           "when they carry the same id (document masking for packed rows)"),
    "attention_backward": ("attention_backward(dout, q, k, v, out, lse, segment_ids) -> (dq, dk, dv)",
                           "gradients of attention_forward"),
    # --- paged KV cache (inference/paged.py): NB blocks of BS positions, MB blocks per table row ---
    "paged_cache_write": ("paged_cache_write(k_cache, v_cache, k, v, slots) -> None",
                          "k_cache[s // BS, :, s % BS] = k[n] (v alike) at slot s = slots[n], in place; "
                          "caches (NB, NKV, BS, HS), k/v (N, NKV, HS), distinct slots"),
    "paged_attention_forward": ("paged_attention_forward(q, k_cache, v_cache, block_tables, positions) -> out",
                                "query n (N, NH, HS) at position positions[n] attends to keys 0 .. positions[n] "
                                "stored in the blocks block_tables[n] (N, MB); out (N, NH, HS)"),
    # --- weight-only quantized linear (int8 / int4 weights, float activations) -----------
    "dequantize_q8":     ("dequantize_q8(w_q, w_scale, group) -> w",
                          "w[o, c] = w_scale[o, c // group] * w_q[o, c]; w_q int8 (OC, C), w_scale (OC, C / group)"),
    "dequantize_q4":     ("dequantize_q4(w_q, w_scale, group) -> w",
                          "dequantize_q8 of 4-bit q, two per byte by Q4_0's 32-blocks; w_q uint8 (OC, C / 2)"),
    "linear_q8_forward": ("linear_q8_forward(x, w_q, w_scale, b, group) -> out",
                          "x @ dequantize_q8(w_q, w_scale, group)^T + b; b (OC,) or None"),
    "linear_q4_forward": ("linear_q4_forward(x, w_q, w_scale, b, group) -> out",
                          "x @ dequantize_q4(w_q, w_scale, group)^T + b; b (OC,) or None"),
    # --- mixture of experts (nn/moe.py): R = N * k rows sorted by expert, E experts -----------
    "moe_permute_forward":  ("moe_permute_forward(x, token_index) -> out",
                             "out[r] = x[token_index[r]]; x (N, C), token_index (R,) int64 -> out (R, C)"),
    "moe_permute_backward": ("moe_permute_backward(dout, token_index, num_tokens) -> dx",
                             "dx (num_tokens, C): dout rows scatter-added at token_index"),
    "grouped_matmul_forward":  ("grouped_matmul_forward(x, w, offsets) -> out",
                                "out[r] = x[r] @ w[e]^T for offsets[e] <= r < offsets[e+1]; x (R, C), "
                                "w (E, OC, C), offsets (E+1,) int64 -> out (R, OC); an expert may have 0 rows"),
    "grouped_matmul_backward": ("grouped_matmul_backward(dout, x, w, offsets) -> (dx, dw)",
                                "gradients of grouped_matmul_forward; dw[e] = 0 for an expert with no rows"),
    "moe_combine_forward":  ("moe_combine_forward(y, weights, token_index, num_tokens) -> out",
                             "out[n] = sum over rows r of token n of weights[r] * y[r]; y (R, C) -> out (N, C)"),
    "moe_combine_backward": ("moe_combine_backward(dout, y, weights, token_index) -> (dy, dweights)",
                             "dy[r] = weights[r] dout[t_r], dweights[r] = dout[t_r] . y[r]"),
    "adamw_update": ("adamw_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step) -> None",
                     "one AdamW step, in place on param, m and v (step counts from 1)"),
}

DEVICES = ("cpu", "cuda")
_BACKEND_DEVICE = {"reference": "cpu", "cpu": "cpu", "cuda": "cuda"}
_MODULES = {"reference": ".reference", "cpu": ".cpu", "cuda": ".cuda"}
_loaded = {}    # backend name -> module
_chosen = {}    # device -> backend name, set by use() or the environment


def _load(name):
    """Import a backend module; raise BackendError saying why it is unavailable."""
    if name not in _MODULES:
        raise BackendError(f"unknown backend {name!r}; choose one of {sorted(_MODULES)}")
    if name not in _loaded:
        try:
            module = importlib.import_module(_MODULES[name], __name__)
        except ImportError as exc:
            raise BackendError(f"backend {name!r} is not available: {exc}") from exc
        if not getattr(module, "AVAILABLE", True):
            raise BackendError(f"backend {name!r} is not available: {module.UNAVAILABLE_REASON}")
        missing = [k for k in KERNELS if not callable(getattr(module, k, None))]
        if missing:
            raise BackendError(f"backend {name!r} breaks the contract: missing {missing}")
        _loaded[name] = module
    return _loaded[name]


def available():
    """The names of the backends that can be used on this machine."""
    names = []
    for name in _MODULES:
        try:
            _load(name)
            names.append(name)
        except BackendError:
            pass
    return names


def use(name):
    """Make `name` the backend of its device from now on; returns the module."""
    module = _load(name)
    _chosen[_BACKEND_DEVICE[name]] = name
    return module


@contextlib.contextmanager
def using(name):
    """Serve `name`'s device with backend `name` inside a with-block (tests, benchmarks)."""
    device = _BACKEND_DEVICE.get(name, "cpu")
    previous = _chosen.get(device)
    use(name)
    try:
        yield _loaded[name]
    finally:
        if previous is None:
            _chosen.pop(device, None)
        else:
            _chosen[device] = previous


def _default(device):
    forced = os.environ.get("MICROGPT_BACKEND", "").strip()
    if forced:
        if forced not in _MODULES:
            raise BackendError(f"MICROGPT_BACKEND={forced!r} is not a backend; use one of {sorted(_MODULES)}")
        if _BACKEND_DEVICE[forced] == device:
            return forced
    if device == "cuda":
        return "cuda"
    try:
        _load("cpu")
        return "cpu"
    except BackendError:
        return "reference"


def get(device="cpu"):
    """The backend module that serves `device` ("cpu" or "cuda")."""
    name = _chosen.get(device)
    if name is not None and name in _loaded:     # the common case: one dict lookup each
        return _loaded[name]
    if device not in DEVICES:
        raise BackendError(f"unknown device {device!r}; choose one of {DEVICES}")
    if device not in _chosen:
        _chosen[device] = _default(device)
    return _load(_chosen[device])


def current(device="cpu"):
    """The name of the backend serving `device`."""
    get(device)
    return _chosen[device]


def device_of(array):
    """'cuda' for a DeviceArray, 'cpu' for a NumPy array (NumPy 2 also says "cpu")."""
    if type(array) is np.ndarray:                # fast path: ndarray.device is a slow property
        return "cpu"
    return getattr(array, "device", "cpu")
