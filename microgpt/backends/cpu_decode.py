"""The C backend as the decoder sees it: the kernels one decoded token runs, bound without the
per-call argument checks (inference/decode.py and paged.py use it; nothing else should).

    be = cpu_decode.DecodeKernels(cpu)        # every name is cpu's; the ones below skip checks
    fn = be.rows_linear(w, b, w_in_out)       # a weight's streaming product, checked once: fn(x)
    step = DecodeStep.build(paged_decoder)    # the decode rows' whole step in one C call (below)

Why. Decoding one token of the "small" shape (6 layers x 384 channels) runs ~80 kernel calls;
many of them (a norm of 384 values, the cache write of one row, the attention of one query)
do 1-5 us of arithmetic, and cpu.py's bindings check every argument of every call (dtypes,
shapes, index ranges, memory overlap): 3-20 us apiece, measured ~0.3-0.5 ms a token, a fifth of
an int4 step at 2 threads. The decoder's arguments are not a user's: the weights are checked
here once, when the decoder is built (shapes against each other and the config, dtypes,
contiguity), and every activation is a fresh C-contiguous float32 array that a kernel (or
NumPy arithmetic on two of them) just made, of the shape the config fixes. So each call
below checks only what can vary between calls, cheaply (the dtype and contiguity of its data
arguments; a call that fails that goes to cpu.py's checked function, which computes it or
raises), and calls the *same C kernel with the same arguments* as cpu.py would: the results
are bit-identical (tests/test_decode_fast.py runs both).

The next step down (DecodeStep, csrc/decode_step.c): even without checks a token was ~1,300
Python-level calls, ~0.3-0.5 ms of a 1-2 ms "small" step, the fixed cost that kept int8 and
int4 near fp32 on small models. DecodeStep describes the decoder's weights to C once and runs
a plan of decode rows (one new token per sequence) as one call: the same kernels, the same
order, the same bits as paged.py's loop (tests/test_decode_step.py). Prompt rows (prefill)
still take the loop: a prompt's rows are many, so their Python cost is shared.

What is still checked at every call: token ids (an id outside the table would read outside
it: they come from callers, so embedding_forward range-checks them, for a few rows as Python
ints), and slots / block tables / positions, which index the cache: those come from
inference/paged.py's PagedKVCache.plan, which builds them from its own block tables, so they
are trusted here only when the decoder passes a plan that cache made (paged.py does).
"""
import numpy as np

from . import cpu_matmul
from .cpu_lib import ffi, lib
from .cpu_lib import fp as _fp
from .cpu_lib import ip as _ip

F32, I64 = np.dtype(np.float32), np.dtype(np.int64)
_NULL = ffi.NULL if ffi is not None else None


def _plain(x, dtype=F32):
    """A C-contiguous ndarray of dtype: what a kernel's output always is."""
    return type(x) is np.ndarray and x.dtype == dtype and x.flags.c_contiguous


class DecodeKernels:
    """cpu.py seen through the decoder: the names below without per-call checks, every other
    name cpu.py's own (looked up once, then cached on the instance)."""

    def __init__(self, be):
        self._be = be
        self._work = np.empty(0, np.float32)      # paged attention's scratch, grown on demand

    def __getattr__(self, name):
        value = getattr(self._be, name)
        setattr(self, name, value)
        return value

    # --- per-call kernels ---------------------------------------------------------------------

    def layer_norm_forward(self, x, w, b, eps):
        c = x.shape[-1] if type(x) is np.ndarray and x.ndim else -1
        if not (_plain(x) and _plain(w) and w.shape == (c,) and (b is None or (_plain(b) and b.shape == (c,)))):
            return self._be.layer_norm_forward(x, w, b, eps)
        out, stats = np.empty_like(x), np.empty((2,) + x.shape[:-1], F32)
        lib.layer_norm_forward(_fp(out), _fp(stats[0]), _fp(stats[1]), _fp(x), _fp(w),
                               _NULL if b is None else _fp(b), eps, x.size // c, c)
        return out, stats[0], stats[1]

    def rms_norm_forward(self, x, w, eps):
        c = x.shape[-1] if type(x) is np.ndarray and x.ndim else -1
        if not (_plain(x) and _plain(w) and w.shape == (c,)):
            return self._be.rms_norm_forward(x, w, eps)
        out, rstd = np.empty_like(x), np.empty(x.shape[:-1], F32)
        lib.rms_norm_forward(_fp(out), _fp(rstd), _fp(x), _fp(w), eps, x.size // c, c)
        return out, rstd

    def gelu_forward(self, x):
        if not _plain(x):
            return self._be.gelu_forward(x)
        out = np.empty_like(x)
        lib.gelu_forward(_fp(out), _fp(x), x.size)
        return out

    def silu_forward(self, x):
        if not _plain(x):
            return self._be.silu_forward(x)
        out = np.empty_like(x)
        lib.silu_forward(_fp(out), _fp(x), x.size)
        return out

    def embedding_forward(self, ids, weight):
        if not (_plain(ids, I64) and _plain(weight) and weight.ndim == 2):
            return self._be.embedding_forward(ids, weight)
        v, c = weight.shape
        if ids.size <= 8:
            if not all(0 <= i < v for i in ids.ravel().tolist()):
                return self._be.embedding_forward(ids, weight)       # raises the checked error
        elif ids.size and (int(ids.min()) < 0 or int(ids.max()) >= v):
            return self._be.embedding_forward(ids, weight)
        out = np.empty(ids.shape + (c,), F32)
        lib.embedding_forward(_fp(out), _ip(ids), _fp(weight), ids.size, v, c)
        return out

    def paged_cache_write(self, k_cache, v_cache, k, v, slots):
        """Trusts slots (a PagedKVCache.plan's); checks the data arrays' kind only."""
        nb, nkv, bs, hs = k_cache.shape
        if not (_plain(k) and _plain(v) and _plain(slots, I64) and k.shape == v.shape and k.ndim == 3
                and k.shape[1:] == (nkv, hs) and slots.shape == k.shape[:1]):
            return self._be.paged_cache_write(k_cache, v_cache, k, v, slots)
        lib.paged_cache_write(_fp(k_cache), _fp(v_cache), _fp(k), _fp(v), _ip(slots), k.shape[0], nkv, nb, bs, hs)
        return None

    def paged_attention_forward(self, q, k_cache, v_cache, block_tables, positions):
        """Trusts block_tables and positions (a PagedKVCache.plan's)."""
        nb, nkv, bs, hs = k_cache.shape
        if not (_plain(q) and q.ndim == 3 and q.shape[2] == hs and q.shape[1] % nkv == 0
                and _plain(block_tables, I64) and _plain(positions, I64) and block_tables.ndim == 2
                and block_tables.shape[0] == q.shape[0] and positions.shape == q.shape[:1]):
            return self._be.paged_attention_forward(q, k_cache, v_cache, block_tables, positions)
        n, nh = q.shape[0], q.shape[1]
        mb = block_tables.shape[1]
        need = lib.paged_attention_workspace(mb, bs)
        if self._work.size < need:
            self._work = np.empty(need, F32)
        work = self._work
        out = np.empty_like(q)
        if lib.paged_attention_forward(_fp(out), _fp(work), work.size, _fp(q), _fp(k_cache), _fp(v_cache),
                                       _ip(block_tables), _ip(positions), n, nh, nkv, nb, bs, mb, hs):
            return self._be.paged_attention_forward(q, k_cache, v_cache, block_tables, positions)
        return out

    # --- a weight checked once ----------------------------------------------------------------

    def rows_linear(self, w, b=None, w_in_out=False):
        """fn(x) = linear_rows_forward(x, w, b, w_in_out) (matmul.c's streaming path, each row
        the bits of a one-row call) with w and b checked now and their pointers made once."""
        be = self._be
        if not (_plain(w) and w.ndim == 2 and (b is None or _plain(b))):
            return lambda x: be.linear_rows_forward(x, w, b, w_in_out)
        c, oc = (w.shape[0], w.shape[1]) if w_in_out else (w.shape[1], w.shape[0])
        cpu_matmul._linear_check("linear_rows_forward", np.empty((1, c), F32), w, b, w_in_out)  # b's shape
        if c == 0:
            return lambda x: be.linear_rows_forward(x, w, b, w_in_out)
        w_ptr, b_ptr, flag = _fp(w), (_NULL if b is None else _fp(b)), int(bool(w_in_out))
        rows_forward = lib.linear_rows_forward

        def run(x):
            if not (_plain(x) and x.ndim and x.shape[-1] == c):
                return be.linear_rows_forward(x, w, b, w_in_out)
            out = np.empty(x.shape[:-1] + (oc,), F32)
            rows_forward(_fp(out), _fp(x), w_ptr, b_ptr, flag, x.size // c, c, oc)
            return out
        return run


def for_decoder(be, dtype):
    """DecodeKernels over be when be is the C backend and the model float32, else None."""
    from . import cpu
    if be is not cpu or np.dtype(dtype) != F32 or lib is None:
        return None
    return DecodeKernels(be)


# --- the whole decode step in one call (csrc/decode_step.c) -----------------------------------

class DecodeStep:
    """csrc/decode_step.c's decode_step over one PagedDecoder's weights and cache: the decode rows
    of a plan (no prompt rows) in one C call instead of ~80 kernel calls from Python.

        step = DecodeStep.build(decoder)     # None: the model has something the C step lacks
        logits = step(ids, plan)             # = decoder's Python loop on that plan, bit for bit

    The structs are filled here once (decode_step.c says what each field is): every weight
    checked against the config and held as a cffi pointer, with `self._keep` holding every
    buffer a pointer was made from. Per call only the plan's arrays and the ids are converted;
    the scratch is one float32 buffer, grown when a longer block table needs more."""

    def __init__(self):
        self._keep = []
        self._work = np.empty(0, np.float32)

    # --- building the structs -------------------------------------------------------------

    def _ptr(self, array, kind="float[]"):
        buf = ffi.from_buffer(kind, array)
        self._keep.append((array, buf))
        return buf

    def _norm(self, target, params, c):
        if len(params) == 3:                   # LayerNorm: (weight, bias or None, eps)
            w, b, eps = params
        else:                                  # RMSNorm: (weight, eps)
            (w, eps), b = params, None
        if not (_plain(w) and w.shape == (c,) and (b is None or (_plain(b) and b.shape == (c,)))):
            raise _Unsupported
        target.w, target.b, target.eps = self._ptr(w), (_NULL if b is None else self._ptr(b)), float(eps)

    def _linear(self, target, wb, c, oc):
        w, b, w_in_out = wb
        if b is not None and not (_plain(b) and b.shape == (oc,)):
            raise _Unsupported
        target.b, target.C, target.OC = (_NULL if b is None else self._ptr(b)), c, oc
        if type(w) is not np.ndarray:
            # quantize/layers.py's QuantizedWeight (a layer above this one, so known by its fields:
            # w_q, w_scale float32, bits 8 or 4, group), anything else is not the C step's
            if getattr(w, "bits", None) not in (4, 8) or not hasattr(w, "w_q"):
                raise _Unsupported
            want = np.int8 if w.bits == 8 else np.uint8
            stored = c if w.bits == 8 else c // 2
            if not (type(w.w_q) is np.ndarray and w.w_q.dtype == want and w.w_q.flags.c_contiguous
                    and w.w_q.shape == (oc, stored) and w.shape == (oc, c) and _plain(w.w_scale)
                    and c % w.group == 0 and w.w_scale.shape == (oc, c // w.group)
                    and (w.bits == 8 or (w.group % 32 == 0 and c % 32 == 0))):
                raise _Unsupported
            target.kind = lib.DECODE_LINEAR_INT8 if w.bits == 8 else lib.DECODE_LINEAR_INT4
            target.w = self._ptr(w.w_q, "int8_t[]" if w.bits == 8 else "uint8_t[]")
            target.w_scale, target.group, target.w_in_out, target.packed = self._ptr(w.w_scale), w.group, 0, 0
            self.quantized = True
            return
        if not (_plain(w) and w.shape == ((c, oc) if w_in_out else (oc, c))):
            raise _Unsupported
        target.kind, target.w, target.w_scale = lib.DECODE_LINEAR_FLOAT, self._ptr(w), _NULL
        target.group, target.w_in_out, target.packed = 0, int(bool(w_in_out)), int(self.packed)

    @classmethod
    def build(cls, decoder):
        """The C step for decoder (an inference.paged.PagedDecoder on the C backend), or None when
        one of its weights is not what decode_step.c takes (the Python loop then runs)."""
        if lib is None or decoder.kernels is None:
            return None
        self = cls()
        try:
            self._build(decoder)
        except _Unsupported:
            return None
        return self

    def _build(self, decoder):
        cfg, cache = decoder.config, decoder.paged
        c, nh, nkv, hs, hidden = cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_size, cfg.mlp_hidden
        v = cfg.vocab_size
        self.quantized = False
        self.packed = not decoder.batch_invariant        # float layers through the GEMM path
        m = self.model = ffi.new("decode_model*")
        m.gpt2, m.n_layer, m.C, m.NH, m.NKV, m.HS = int(decoder.gpt2), cfg.n_layer, c, nh, nkv, hs
        m.V, m.hidden, m.block_size = v, hidden, cfg.block_size
        m.NB, m.BS = cache.num_blocks, cache.block_size
        if not (_plain(decoder.wte) and decoder.wte.shape == (v, c)):
            raise _Unsupported
        m.wte = self._ptr(decoder.wte)
        if decoder.gpt2:
            if not (_plain(decoder.wpe) and decoder.wpe.shape == (cfg.block_size, c)):
                raise _Unsupported
            m.wpe, m.cos, m.sin = self._ptr(decoder.wpe), _NULL, _NULL
        else:
            tables = [np.ascontiguousarray(t, np.float32) for t in (decoder.cos, decoder.sin)]
            if any(t.shape != (cfg.block_size, hs // 2) for t in tables):
                raise _Unsupported
            m.wpe, m.cos, m.sin = _NULL, self._ptr(tables[0]), self._ptr(tables[1])
        self._norm(m.norm_f, decoder.norm_f, c)
        self._linear(m.head, (decoder.lm_head, None, False), c, v)
        layers = self._layers = ffi.new("decode_layer[]", cfg.n_layer)
        kv_shape = (cache.num_blocks, nkv, cache.block_size, hs)
        for i, w in enumerate(decoder.layers):
            layer = layers[i]
            self._norm(layer.norm_1, w["ln_1"], c)
            self._norm(layer.norm_2, w["ln_2"], c)
            for name in ("qkv", "q", "k", "v", "out", "fc", "proj", "gate", "up", "down"):
                getattr(layer, name).w = _NULL
            layer.q_norm.w = layer.k_norm.w = _NULL
            if decoder.gpt2:
                self._linear(layer.qkv, w["qkv"], c, (nh + 2 * nkv) * hs)
                self._linear(layer.fc, w["fc"], c, hidden)
                self._linear(layer.proj, w["proj"], hidden, c)
            else:
                self._linear(layer.q, w["q"], c, nh * hs)
                self._linear(layer.k, w["k"], c, nkv * hs)
                self._linear(layer.v, w["v"], c, nkv * hs)
                if w["q_norm"] is not None:
                    self._norm(layer.q_norm, w["q_norm"], hs)
                    self._norm(layer.k_norm, w["k_norm"], hs)
                self._linear(layer.gate, w["gate"], c, hidden)
                self._linear(layer.up, w["up"], c, hidden)
                self._linear(layer.down, w["down"], hidden, c)
            self._linear(layer.out, w["out"], nh * hs, c)
            keys, values = cache.keys[i], cache.values[i]
            if not (_plain(keys) and _plain(values) and keys.shape == kv_shape and values.shape == kv_shape):
                raise _Unsupported
            layer.k_cache, layer.v_cache = self._ptr(keys), self._ptr(values)
        m.layers = layers
        self.vocab_size = v

    # --- one step -------------------------------------------------------------------------

    def __call__(self, ids, plan):
        """ids (N,) int64 already in the plan's row order (all decode rows) -> logits (S, V)."""
        n, s, mb = ids.shape[0], plan.last_rows.shape[0], plan.tables.shape[1]
        need = lib.decode_step_workspace(self.model, n, s, mb)
        if self._work.size < need:
            self._work = np.empty(need, np.float32)
        logits = np.empty((s, self.vocab_size), np.float32)
        status = lib.decode_step(_fp(logits), _fp(self._work), self._work.size, self.model, _ip(ids),
                                 _ip(plan.positions), _ip(plan.slots), _ip(plan.tables), _ip(plan.last_rows),
                                 n, s, mb)
        if status:
            return None        # -2: an id outside the vocabulary; the caller's checked path says so
        return logits


class _Unsupported(Exception):
    """A weight decode_step.c does not take: the decoder keeps its Python loop."""
