"""Module and Parameter: how a model holds its weights, names them, saves and moves them.

A Module's parameters are found by walking its attributes in the order they were set:
a Parameter is a leaf, a Module (or a ModuleList of them) is a subtree whose names get a
dotted prefix. That gives checkpoint names such as `transformer.h.0.attn.c_attn.weight`
with no registration calls. A Parameter reachable under two names (tied embeddings) is
reported once, under the first name.

A model built to be loaded (GPT(config, init=False)) holds uninitialized memory until its
weights are written. It keeps the names of those parameters in `uninitialized`;
load_state_dict, or a loader writing into the arrays itself (interop/hf.py) and then calling
mark_initialized, takes them off, and check_initialized is a CheckpointError while any is
left: what runs a model, saves it or exports it calls it, so such memory is never used as
weights. (The set lives on the module that was built without init, the whole model; a
submodule knows nothing of it.)
"""
import numpy as np

from .. import backends
from ..errors import CheckpointError
from ..tensor import Tensor


class Parameter(Tensor):
    """A tensor the optimizer updates: a leaf that requires a gradient."""

    __slots__ = ()

    def __init__(self, data, dtype=None, device=None):
        super().__init__(data, requires_grad=True, dtype=dtype, device=device)

    def __repr__(self):
        return f"Parameter(shape={self.shape}, dtype={self.dtype}, device={self.device!r})"


class Module:
    """Base class of layers and models: parameters, train/eval, state_dict, device moves."""

    training = True
    uninitialized = frozenset()     # names of parameters holding no values yet (see the docstring)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def _children(self):
        """(name, Module or Parameter) pairs of this module's direct attributes, in order."""
        for name, value in vars(self).items():
            if isinstance(value, (Module, Parameter)):
                yield name, value

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self._children():
            if isinstance(child, Module):
                yield from child.named_modules(f"{prefix}{name}.")

    def named_parameters(self):
        """(dotted name, Parameter) for every parameter, each reported once."""
        seen = set()
        for prefix, module in self.named_modules():
            for name, child in module._children():
                if isinstance(child, Parameter) and id(child) not in seen:
                    seen.add(id(child))
                    yield prefix + name, child

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def num_parameters(self):
        return sum(p.size for p in self.parameters())

    def zero_grad(self):
        for p in self.parameters():
            p.zero_grad()

    def train(self, mode=True):
        for _, module in self.named_modules():
            module.training = mode
        return self

    def eval(self):
        return self.train(False)

    def mark_uninitialized(self):
        """Declare every parameter's values uninitialized memory (GPT(config, init=False))."""
        self.uninitialized = {name for name, _ in self.named_parameters()}

    def mark_initialized(self, names):
        """Take parameters off `uninitialized` once their values have been written."""
        if self.uninitialized:
            self.uninitialized = self.uninitialized - set(names)

    def check_initialized(self, what):
        """A CheckpointError (for `what`, e.g. "GPT.forward") while any parameter holds no values."""
        if not self.uninitialized:
            return
        unset = [name for name, _ in self.named_parameters() if name in self.uninitialized]
        listed = ", ".join(unset[:3]) + (f" and {len(unset) - 3} more" if len(unset) > 3 else "")
        raise CheckpointError(f"{what}: {len(unset)} of {len(self.parameters())} parameters hold "
                              f"uninitialized memory ({listed}): the model was built with init=False "
                              f"and not loaded; load weights into it (load_state_dict, "
                              f"interop.load_pretrained) or build it with init=True")

    def state_dict(self):
        """{name: host NumPy array} — a copy, safe to save or modify."""
        self.check_initialized("state_dict")
        return {name: np.array(p.numpy(), copy=True) for name, p in self.named_parameters()}

    def load_state_dict(self, state, strict=True):
        """Copy arrays into the parameters, checking names and shapes first (all or nothing)."""
        params = dict(self.named_parameters())
        missing = sorted(set(params) - set(state))
        unexpected = sorted(set(state) - set(params))
        if strict and (missing or unexpected):
            raise CheckpointError(f"state_dict does not match the model: missing {missing[:5]}"
                                  f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                                  f"{'...' if len(unexpected) > 5 else ''}")
        for name, p in params.items():
            if name in state and tuple(np.shape(state[name])) != p.shape:
                raise CheckpointError(f"state_dict[{name!r}] has shape {tuple(np.shape(state[name]))}, "
                                      f"the model expects {p.shape}")
        for name, p in params.items():
            if name in state:
                p.data = p.backend.asarray(np.asarray(state[name]), p.dtype)
                p.zero_grad()
        self.mark_initialized(name for name in params if name in state)
        return self

    def to(self, device=None, dtype=None):
        """Move every parameter to `device` and/or cast it to a float `dtype`, in place."""
        for _, module in self.named_modules():
            for child in list(vars(module).values()):
                if isinstance(child, Parameter):
                    moved = child.to(device, dtype)
                    if moved is not child:
                        child.data = moved.data
                        child.zero_grad()
            module._on_moved()
        return self

    def _on_moved(self):
        """Hook for modules that cache device arrays (rotary tables, say)."""

    @property
    def device(self):
        params = self.parameters()
        return params[0].device if params else "cpu"

    @property
    def dtype(self):
        params = self.parameters()
        return params[0].dtype if params else np.dtype(np.float32)


class ModuleList(Module):
    """A list of modules named 0, 1, 2 ... (GPT's `h` blocks)."""

    def __init__(self, modules):
        for i, module in enumerate(modules):
            setattr(self, str(i), module)
        self._length = len(modules)

    def __len__(self):
        return self._length

    def __getitem__(self, i):
        return getattr(self, str(range(self._length)[i]))

    def __iter__(self):
        return (self[i] for i in range(self._length))


def available_devices():
    """Devices a model can be moved to on this machine."""
    return ["cpu"] + (["cuda"] if "cuda" in backends.available() else [])
