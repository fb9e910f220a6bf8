"""The quantized linear kernels against their NumPy reference (dequantize, then the float
product), each rung of csrc/quant.c on odd shapes, the binding's GEMM hand-off for many rows,
and quantize -> dequantize error bounds per scheme (hypothesis)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microgpt import backends
from microgpt.backends import reference as ref
from microgpt.quantize import formats

cpu = pytest.importorskip("microgpt.backends.cpu")
needs_c = pytest.mark.skipif(not cpu.AVAILABLE, reason="C kernels not built")


def _supported(rung):
    want = cpu.cpu_quant.RUNGS[rung] if cpu.AVAILABLE else "scalar"
    if want == "vnni":              # v7 falls back to v6 without VNNI: it runs wherever AVX2 does
        want = "avx512" if cpu.cpu_quant.has_vnni() else "avx2"
    order = ["scalar", "avx2", "avx512"]
    best = order.index(cpu.simd_path()) if cpu.AVAILABLE else 0
    return order.index(want) <= best


def _reference(kernel, rung=None):
    """The float rungs' reference (dequantize, then multiply), or the integer-dot rungs' (the
    activations rounded to int8 per 32-block first, reference.py's *_intdot)."""
    intdot = rung is None or rung in cpu.cpu_quant.INTDOT_RUNGS
    return getattr(ref, kernel + ("_intdot" if intdot else ""))


def _weights(rng, oc, c, scheme, group):
    w = rng.standard_normal((oc, c)).astype(np.float32) * 0.05
    return formats.quantize(w, scheme, group)


# (N rows, C inputs, OC outputs, group): odd channel counts for int8 per-channel, tails below 8
# / 16 lanes, one row and a few, groups of every int4 size
INT8_SHAPES = [(1, 37, 5, 37), (3, 64, 7, 32), (1, 768, 33, 768), (5, 96, 3, 32), (2, 130, 17, 130), (1, 1, 1, 1)]
INT4_SHAPES = [(1, 32, 1, 32), (3, 64, 7, 64), (1, 768, 33, 32), (4, 256, 9, 128), (2, 160, 5, 32),
               (1, 192, 5, 96)]   # group 96: 3 blocks a scale, not a power of two (a division)


@needs_c
@pytest.mark.parametrize("rung", list(cpu.cpu_quant.RUNGS) if cpu.AVAILABLE else [])
@pytest.mark.parametrize("scheme,shape", [("int8", s) for s in INT8_SHAPES] + [("int4", s) for s in INT4_SHAPES])
@pytest.mark.parametrize("with_bias", [False, True])
def test_each_rung_matches_the_reference(rung, scheme, shape, with_bias):
    if not _supported(rung):
        pytest.skip(f"this CPU lacks {rung}")
    n, c, oc, group = shape
    rng = np.random.default_rng(n * 1000 + c + oc)
    w_q, w_scale = _weights(rng, oc, c, scheme, group)
    x = rng.standard_normal((n, c)).astype(np.float32)
    b = rng.standard_normal(oc).astype(np.float32) if with_bias else None
    kernel = "linear_q8_forward" if scheme == "int8" else "linear_q4_forward"
    expected = _reference(kernel, rung)(x.astype(np.float64), w_q, w_scale.astype(np.float64),
                                        None if b is None else b.astype(np.float64), group)
    got = cpu.cpu_quant.rung(kernel, rung)(x, w_q, w_scale, b, group)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.sqrt(c))


@needs_c
@pytest.mark.parametrize("scheme,group", [("int8", 96), ("int8", 32), ("int4", 32), ("int4", 96)])
@pytest.mark.parametrize("rows", [1, 8, 9, 40])      # 9 and 40 take the dequantize + GEMM path
def test_the_production_kernel_and_its_gemm_hand_off(scheme, group, rows):
    rng = np.random.default_rng(rows)
    w_q, w_scale = _weights(rng, 19, 96, scheme, group)
    x = rng.standard_normal((rows, 96)).astype(np.float32)
    kernel = "linear_q8_forward" if scheme == "int8" else "linear_q4_forward"
    expected = getattr(ref, kernel)(x.astype(np.float64), w_q, w_scale.astype(np.float64), None, group)
    np.testing.assert_allclose(getattr(cpu, kernel)(x, w_q, w_scale, None, group), expected, rtol=1e-5, atol=1e-4)
    x3 = x.reshape(1, rows, 96)                       # leading axes flatten
    assert getattr(cpu, kernel)(x3, w_q, w_scale, None, group).shape == (1, rows, 19)


@needs_c
@pytest.mark.parametrize("scheme,group", [("int8", 37), ("int8", 32), ("int4", 32), ("int4", 128)])
def test_dequantize_kernels_are_exact(scheme, group):
    c = 37 if group == 37 else 256
    rng = np.random.default_rng(3)
    w_q, w_scale = _weights(rng, 11, c, scheme, group)
    kernel = "dequantize_q8" if scheme == "int8" else "dequantize_q4"
    expected = getattr(ref, kernel)(w_q, w_scale, group)
    np.testing.assert_array_equal(getattr(cpu, kernel)(w_q, w_scale, group), expected)
    np.testing.assert_array_equal(formats.dequantize(w_q, w_scale, scheme, group), expected)


@needs_c
def test_every_rung_agrees_with_the_forced_lesser_paths():
    rng = np.random.default_rng(9)
    w_q, w_scale = _weights(rng, 40, 128, "int4", 32)
    x = rng.standard_normal((1, 128)).astype(np.float32)
    best = cpu.simd_path()
    results = {}
    try:
        for path in ("scalar", "avx2", "avx512"):
            if cpu.lib.microgpt_set_simd_path(path.encode()):
                results[path] = cpu.linear_q4_forward(x, w_q, w_scale, None, 32)
    finally:
        cpu.lib.microgpt_set_simd_path(b"")
    assert cpu.simd_path() == best and "scalar" in results
    for got in results.values():
        np.testing.assert_allclose(got, results["scalar"], rtol=1e-5, atol=1e-5)


@needs_c
@pytest.mark.parametrize("scheme,group", [("int8", 32), ("int8", 96), ("int4", 32), ("int4", 64)])
def test_the_decoding_entry_is_the_integer_rung_on_every_path(scheme, group):
    """linear_q*_forward_intdot (what the decoder runs) on the forced scalar / AVX2 / AVX-512
    paths: each the integer-dot reference (activations rounded to int8), the portable C too."""
    rng = np.random.default_rng(10)
    w_q, w_scale = _weights(rng, 23, 192, scheme, group)
    x = rng.standard_normal((3, 192)).astype(np.float32)
    kernel = "linear_q8_forward" if scheme == "int8" else "linear_q4_forward"
    expected = _reference(kernel)(x.astype(np.float64), w_q, w_scale.astype(np.float64), None, group)
    fn = cpu.cpu_quant.prepared(kernel, w_q, w_scale, group)
    ran = 0
    try:
        for path in ("scalar", "avx2", "avx512"):
            if cpu.lib.microgpt_set_simd_path(path.encode()):
                np.testing.assert_allclose(fn(x, None), expected, rtol=1e-5, atol=1e-5, err_msg=path)
                ran += 1
    finally:
        cpu.lib.microgpt_set_simd_path(b"")
    assert ran >= 1


@needs_c
def test_bad_arguments_are_refused_before_c():
    from microgpt.errors import DTypeError, ShapeError
    w_q, w_scale = formats.quantize(np.ones((4, 64), np.float32), "int4", 32)
    x = np.ones((1, 64), np.float32)
    with pytest.raises(ShapeError):
        cpu.linear_q4_forward(np.ones((1, 63), np.float32), w_q, w_scale, None, 32)
    with pytest.raises(ShapeError):
        cpu.linear_q4_forward(x, w_q, w_scale, None, 48)
    with pytest.raises(DTypeError):
        cpu.linear_q8_forward(x, w_q, w_scale, None, 32)          # uint8 where int8 belongs
    with pytest.raises(ShapeError):
        cpu.linear_q4_forward(x, w_q, w_scale, np.ones(5, np.float32), 32)


# --- the integer-dot rungs' own checks -------------------------------------------------------

def test_the_activation_rounding_is_q8_0s():
    """reference.quantize_activations_q8 is GGUF's Q8_0 rule: per 32-block |q| <= 127, the block's
    largest |x| maps to exactly +-127, and every value is within half a step d / 2."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((3, 96)) * rng.uniform(0.01, 10, (3, 1))).astype(np.float32)
    x[1, 32:64] = 0.0                                            # an all-zero block: d = 0, q = 0
    q, d = ref.quantize_activations_q8(x)
    assert q.dtype == np.int8 and d.shape == (3, 3) and np.abs(q).max() == 127
    assert d[1, 1] == 0 and not q[1, 32:64].any()
    back = q.reshape(3, 3, 32) * d[..., None]
    assert np.all(np.abs(back - x.reshape(3, 3, 32)) <= d[..., None] / 2 * (1 + 1e-5))
    assert np.all(np.abs(q.reshape(3, 3, 32)).max(-1)[d > 0] == 127)


@needs_c
@pytest.mark.parametrize("rung", ["v6_intdot_avx2", "v7_intdot_vnni", "v8_unsigned_vnni", "v9_nibble_order_vnni"])
def test_the_integer_rungs_round_exactly_as_the_reference(rung):
    """Ties and awkward magnitudes: halves of a step (rint's ties to even), a block of equal
    values, denormal-small blocks; the kernel's result must still be the reference's to float
    rounding (one activation rounded differently would move it by ~d * |w| >> the tolerance)."""
    if not _supported(rung):
        pytest.skip(f"this CPU lacks {rung}")
    rng = np.random.default_rng(6)
    c = 256
    x = np.empty((4, c), np.float32)
    x[0] = (np.arange(c) % 64 - 31.5) / 2                       # many exact x.5 steps
    x[1] = 3.0
    x[2] = rng.standard_normal(c).astype(np.float32) * 1e-38
    x[3] = rng.standard_normal(c).astype(np.float32)
    for scheme, kernel, group in (("int8", "linear_q8_forward", 32), ("int4", "linear_q4_forward", 64)):
        w_q, w_scale = _weights(rng, 13, c, scheme, group)
        expected = _reference(kernel, rung)(x.astype(np.float64), w_q, w_scale.astype(np.float64), None, group)
        got = cpu.cpu_quant.rung(kernel, rung)(x, w_q, w_scale, None, group)
        for row in range(4):
            np.testing.assert_allclose(got[row], expected[row], rtol=1e-5, atol=1e-6 * np.abs(expected[row]).max())


@needs_c
def test_the_integer_rounding_stays_within_its_bound_of_the_float_product():
    """The integer-dot result differs from "dequantize, then multiply" only by the activations'
    rounding: |error| <= sum_c |W[o, c]| * d(block of c) / 2."""
    rng = np.random.default_rng(7)
    w_q, w_scale = _weights(rng, 31, 384, "int4", 32)
    x = rng.standard_normal((2, 384)).astype(np.float32)
    exact = ref.linear_q4_forward(x.astype(np.float64), w_q, w_scale.astype(np.float64), None, 32)
    _, d = ref.quantize_activations_q8(x)
    w = np.abs(ref.dequantize_q4(w_q, w_scale.astype(np.float64), 32))
    bound = (np.repeat(d, 32, axis=1).astype(np.float64) / 2) @ w.T
    got = cpu.cpu_quant.prepared("linear_q4_forward", w_q, w_scale, 32)(x, None)
    assert np.all(np.abs(got - exact) <= bound * 1.001 + 1e-6)
    assert np.abs(got - exact).max() > 0                     # it is rounded: not the float path


@needs_c
def test_the_prepared_kernel_checks_the_weight_once_and_x_every_call():
    """quantize/layers.py's fast path (cpu_quant.prepared): the same result as the checked kernel,
    the same errors for a bad x or b, and odd inputs (float64, a strided view) still right."""
    from microgpt.errors import DTypeError, ShapeError
    from microgpt.quantize.layers import DecodeBackend, QuantizedWeight
    rng = np.random.default_rng(8)
    w_q, w_scale = _weights(rng, 9, 64, "int4", 32)
    qw = QuantizedWeight(w_q, w_scale, 4, 32)
    be = DecodeBackend(cpu)
    b = rng.standard_normal(9).astype(np.float32)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    intdot = ref.linear_q4_forward_intdot(x.astype(np.float64), w_q, w_scale.astype(np.float64), b, 32)
    np.testing.assert_allclose(be.linear_forward(x, qw, b), intdot, rtol=1e-5, atol=1e-5)
    assert qw._fast is not None and qw._fast[3] is not None
    wide = rng.standard_normal((3, 128)).astype(np.float32)[:, ::2]          # not contiguous: refused
    with pytest.raises(ShapeError, match="C-contiguous"):
        be.linear_forward(wide, qw, None)
    with pytest.raises(DTypeError):                      # float64 x, float32 scales: as the checked kernel
        be.linear_forward(x.astype(np.float64), qw, b)
    many = rng.standard_normal((cpu.cpu_quant.INTDOT_MAX_ROWS + 1, 64)).astype(np.float32)  # GEMM hand-off
    np.testing.assert_allclose(be.linear_forward(many, qw, b), cpu.linear_q4_forward(many, w_q, w_scale, b, 32),
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(ShapeError):
        be.linear_forward(np.ones((1, 63), np.float32), qw, None)
    with pytest.raises(ShapeError):
        be.linear_forward(x, qw, np.ones(5, np.float32))
    qw.w_q = w_q.copy()                                  # a new array: prepared again, not stale
    np.testing.assert_allclose(be.linear_forward(x, qw, b), intdot, rtol=1e-5, atol=1e-5)
    assert qw._fast[1] is qw.w_q


@needs_c
@pytest.mark.parametrize("scheme,group", [("int8", 96), ("int8", 32), ("int4", 32), ("int4", 64)])
def test_a_short_prompt_takes_the_integer_rung_not_the_dequantize_gemm(scheme, group):
    """The decoder's prefill of a short prompt (9 .. INTDOT_MAX_ROWS rows, above the checked
    kernel's GEMV_MAX_ROWS) runs the integer dots, as decoding does and llama.cpp's small
    batches do: dequantizing W into float32 for a 16-row GEMM cost ~2x the integer dots (the
    measurement beside INTDOT_MAX_ROWS). Held to the integer-dot reference, odd shapes."""
    rng = np.random.default_rng(12)
    w_q, w_scale = _weights(rng, 21, 192, scheme, group)
    kernel = "linear_q8_forward" if scheme == "int8" else "linear_q4_forward"
    fn = cpu.cpu_quant.prepared(kernel, w_q, w_scale, group)
    assert cpu.cpu_quant.INTDOT_MAX_ROWS > cpu.cpu_quant.GEMV_MAX_ROWS
    for rows in (cpu.cpu_quant.GEMV_MAX_ROWS + 1, 17, cpu.cpu_quant.INTDOT_MAX_ROWS):
        x = rng.standard_normal((rows, 192)).astype(np.float32)
        b = rng.standard_normal(21).astype(np.float32)
        expected = _reference(kernel)(x.astype(np.float64), w_q, w_scale.astype(np.float64), b, group)
        np.testing.assert_allclose(fn(x, b), expected, rtol=1e-5, atol=1e-5, err_msg=str(rows))


def test_the_cuda_binding_on_the_mock(monkeypatch):
    import cuda_mock
    cuda_mock.install(monkeypatch)
    from microgpt.backends import cuda
    rng = np.random.default_rng(4)
    for scheme, kernel, group in (("int8", "linear_q8_forward", 64), ("int4", "linear_q4_forward", 32)):
        w_q, w_scale = _weights(rng, 6, 64, scheme, group)
        x = rng.standard_normal((2, 64)).astype(np.float32)
        b = rng.standard_normal(6).astype(np.float32)
        got = cuda.to_numpy(getattr(cuda, kernel)(cuda.asarray(x, np.float32), cuda.asarray(w_q, w_q.dtype),
                                                  cuda.asarray(w_scale, np.float32), cuda.asarray(b, np.float32),
                                                  group))
        np.testing.assert_allclose(got, getattr(ref, kernel)(x, w_q, w_scale, b, group), rtol=1e-5, atol=1e-6)


# --- quantize -> dequantize error bounds (formats.py's docstring states them) -------------------------

matrices = st.tuples(st.integers(1, 4), st.sampled_from([32, 64, 128, 256]), st.integers(0, 2**31 - 1),
                     st.floats(1e-3, 1e2))


@settings(max_examples=60, deadline=None)
@given(matrices, st.sampled_from([None, 32, 64]))
def test_int8_error_is_at_most_half_a_step(case, group):
    oc, c, seed, scale = case
    if group and c % group:
        return
    w = (np.random.default_rng(seed).standard_normal((oc, c)) * scale).astype(np.float32)
    group = formats.check_group("int8", group, c)
    q, d = formats.quantize_int8(w, group)
    err = np.abs(formats.dequantize(q, d, "int8", group) - w).reshape(oc, c // group, group)
    absmax = np.abs(w).reshape(oc, c // group, group).max(axis=2)
    # d is absmax / 127 rounded to fp16 (relative error <= 2^-11), so a value may clamp at 127
    # by at most 127 * 2^-11 * d beyond the half step
    bound = d * 0.5 * (1 + 1e-5) + absmax * 2.0 ** -11
    assert (err <= bound[:, :, None]).all()
    assert np.abs(q.astype(np.int16)).max() <= 127


@settings(max_examples=60, deadline=None)
@given(matrices, st.sampled_from([32, 64, 128]))
def test_int4_error_is_at_most_one_step_and_half_a_step_mostly(case, group):
    oc, c, seed, scale = case
    if c % group:
        return
    w = (np.random.default_rng(seed).standard_normal((oc, c)) * scale).astype(np.float32)
    packed, d = formats.quantize_int4(w, group)
    assert packed.shape == (oc, c // 2) and packed.dtype == np.uint8
    deq = formats.dequantize(packed, d, "int4", group)
    err = np.abs(deq - w).reshape(oc, c // group, group)
    step = np.abs(d)[:, :, None]
    absmax = np.abs(w).reshape(oc, c // group, group).max(axis=2)[:, :, None]
    assert (err <= step * (1 + 1e-5) + absmax * 2.0 ** -10).all()
    # the half-step bound holds for every value not beyond 7 steps on the other side
    inside = np.abs(w.reshape(err.shape)) <= 7 * step
    assert (np.where(inside, err - step * 0.5 - absmax * 2.0 ** -10, 0) <= 1e-6 * absmax).all()


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_int4_packing_round_trips(oc, blocks, seed):
    q = np.random.default_rng(seed).integers(-8, 8, size=(oc, 32 * blocks)).astype(np.int8)
    packed = formats.pack_int4(q)
    np.testing.assert_array_equal(formats.unpack_int4(packed), q)
    np.testing.assert_array_equal(ref.unpack_q4(packed), q)


def test_int4_matches_ggufs_q4_0_and_int8_group_32_its_q8_0_dequantization():
    gguf_quants = pytest.importorskip("gguf.quants")
    from gguf import GGMLQuantizationType as T
    w = (np.random.default_rng(0).standard_normal((6, 128)) * 0.1).astype(np.float32)
    for scheme, qtype in (("int4", T.Q4_0), ("int8", T.Q8_0)):
        w_q, d = formats.quantize(w, scheme, 32)
        blocks = _to_gguf_blocks(w_q, d, scheme)
        np.testing.assert_array_equal(gguf_quants.dequantize(blocks, qtype).reshape(w.shape),
                                      formats.dequantize(w_q, d, scheme, 32))
    # and Q4_0's own quantizer picks our bytes (same rule: signed max / -8, floor(x / d + 8.5))
    ours_q, ours_d = formats.quantize(w, "int4", 32)
    theirs = gguf_quants.quantize(w, T.Q4_0).reshape(6, 4, 18)
    np.testing.assert_array_equal(theirs[:, :, 2:].reshape(6, 64), ours_q)
    np.testing.assert_array_equal(theirs[:, :, :2].copy().view(np.float16).astype(np.float32).reshape(6, 4), ours_d)


def _to_gguf_blocks(w_q, d, scheme):
    oc = w_q.shape[0]
    per = 16 if scheme == "int4" else 32
    qs = w_q.view(np.uint8).reshape(oc, -1, per)
    scales = d.astype(np.float16).view(np.uint8).reshape(oc, -1, 2)
    return np.concatenate([scales, qs], axis=2).reshape(oc, -1)


def test_bad_groups_are_refused_with_their_reason():
    with pytest.raises(formats.QuantizeError, match="does not divide"):
        formats.check_group("int8", 48, 100, "h.0.mlp.c_fc")
    with pytest.raises(formats.QuantizeError, match="multiples of 32"):
        formats.check_group("int4", 16, 64)
    with pytest.raises(formats.QuantizeError, match="unknown"):
        formats.bits_of("int3")
    assert formats.check_group("int8", None, 100) == 100 and formats.check_group("int4", None, 64) == 32


def test_the_reference_backend_runs_the_quantized_kernels():
    w_q, w_scale = formats.quantize(np.ones((4, 64), np.float32), "int4", 64)
    with backends.using("reference") as be:
        out = be.linear_q4_forward(np.ones((2, 64), np.float32), w_q, w_scale, None, 64)
    np.testing.assert_allclose(out, 64.0, rtol=1e-6)
