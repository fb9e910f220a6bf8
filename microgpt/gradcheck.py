"""gradcheck: compare backward() with float64 central finite differences.

For a function f of some input tensors, reduce its output to a scalar with a fixed random
projection R (so every output element matters and no symmetry hides an error):

    L(x) = sum(f(x) * R)
    analytic:   dL/dx from backward() with upstream gradient R
    numerical:  dL/dx_i ~ (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)      error O(eps^2)

Defaults are PyTorch gradcheck's: eps 1e-6, atol 1e-5, rtol 1e-3, and an element passes when
|analytic - numerical| <= atol + rtol * |numerical|. backward() is run twice on freshly
built graphs and must agree bit for bit (no hidden state, no nondeterminism). A failure
raises GradcheckError listing the worst elements.
"""
import numpy as np

from .errors import MicrogptError
from .tensor import Tensor, no_grad


class GradcheckError(MicrogptError, AssertionError):
    """backward() disagrees with finite differences (or with itself)."""


def _projection(out, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(out.shape).astype(out.dtype)


def _analytic(fn, inputs, projection):
    for t in inputs:
        t.zero_grad()
    out = fn(*inputs)
    out.backward(Tensor(projection, dtype=out.dtype, device=out.device))
    return [None if t.grad is None else np.array(t.backend.to_numpy(t.grad), copy=True) for t in inputs]


def _numerical(fn, inputs, projection, eps, max_elements, rng):
    grads = []
    for t in inputs:
        if not t.requires_grad:
            grads.append(None)
            continue
        host = t.numpy().copy()
        grad = np.full(host.shape, np.nan)
        flat_indices = np.arange(host.size)
        if max_elements is not None and host.size > max_elements:
            flat_indices = rng.choice(host.size, max_elements, replace=False)
        original_data = t.data
        for flat in flat_indices:
            index = np.unravel_index(flat, host.shape)
            values = []
            for step in (eps, -eps):
                bumped = host.copy()
                bumped[index] += step
                t.data = t.backend.asarray(bumped, host.dtype)
                with no_grad():
                    values.append(float(np.sum(fn(*inputs).numpy() * projection)))
            grad[index] = (values[0] - values[1]) / (2 * eps)
        t.data = original_data
        grads.append(grad)
    return grads


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0, max_elements=None, name=None):
    """Check fn's backward against finite differences for every input that requires grad.

    fn(*inputs) must return a Tensor; inputs should be float64 for meaningful differences.
    max_elements samples that many elements per input (for big inputs such as a model).
    Returns True or raises GradcheckError.
    """
    name = name or getattr(fn, "__name__", "fn")
    for t in inputs:
        if t.requires_grad and t.dtype != np.float64:
            raise GradcheckError(f"{name}: gradcheck needs float64 inputs, got {t.dtype}")
    with no_grad():
        projection = _projection(fn(*inputs), seed)
    first = _analytic(fn, inputs, projection)
    second = _analytic(fn, inputs, projection)
    for i, (a, b) in enumerate(zip(first, second)):
        if (a is None) != (b is None) or (a is not None and not np.array_equal(a, b)):
            raise GradcheckError(f"{name}: input {i}: two backward passes disagree")
    numerical = _numerical(fn, inputs, projection, eps, max_elements, np.random.default_rng(seed))
    for i, (t, analytic, numeric) in enumerate(zip(inputs, first, numerical)):
        if numeric is None:
            continue
        if analytic is None:
            analytic = np.zeros(t.shape)       # never reached by backward: gradient is zero
        checked = ~np.isnan(numeric)
        error = np.abs(analytic - numeric)
        bound = atol + rtol * np.abs(numeric)
        bad = checked & ~(error <= bound)
        if np.any(bad):
            raise GradcheckError(_report(name, i, t.shape, analytic, numeric, error, bad))
    return True


def _report(name, i, shape, analytic, numeric, error, bad, worst=5):
    order = np.argsort(np.where(bad, error, -1).ravel())[::-1][:worst]
    lines = [f"{name}: input {i} of shape {shape}: {int(bad.sum())} element(s) out of tolerance; worst:"]
    for flat in order:
        if not bad.ravel()[flat]:
            break
        index = np.unravel_index(flat, shape)
        lines.append(f"  at {tuple(int(j) for j in index)}: analytic {analytic[index]:.8g}, "
                     f"numerical {numeric[index]:.8g}, |diff| {error[index]:.3g}")
    return "\n".join(lines)
