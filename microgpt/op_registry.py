"""The registry of differentiable ops and the one helper every backward uses.

Two files define ops: ops.py (the primitives: arithmetic, reductions, shapes, matmul) and
ops_fused.py (one node per idea: softmax, cross_entropy, the norms, rope, attention). Both
import this module, so neither has to import the other for its plumbing: ops_fused.py
imports ops.py only for the primitives it is built from (transpose), and ops.py imports
nothing above the Tensor.

OPS fills as those two modules are imported; the gradient-check suite imports both and
fails if an entry of OPS has no gradient check.
"""

OPS = {}   # name -> function; every entry must have a gradient check in tests/


def op(fn):
    """Register a differentiable op under its function name."""
    OPS[fn.__name__] = fn
    return fn


def _send(tensor, grad):
    """Deliver a gradient to a parent that wants one (a backward closure's last step)."""
    if tensor.requires_grad:
        tensor._accumulate(grad)
