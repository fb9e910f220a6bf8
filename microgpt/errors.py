"""The exceptions microgpt raises where a caller may want to catch them.

Every error derives from MicrogptError, so `except MicrogptError` catches anything the
library reports on purpose; they also derive from the builtin a reader would expect
(ValueError, TypeError ...) so ordinary code keeps working.
"""


class MicrogptError(Exception):
    """Base class of every error microgpt raises on purpose."""


class ShapeError(MicrogptError, ValueError):
    """Arrays whose shapes do not fit the operation; the message names the op and shapes."""


class DTypeError(MicrogptError, TypeError):
    """Arrays of the wrong or mixed dtypes."""


class BackendError(MicrogptError, RuntimeError):
    """A backend that is unknown, not built, or failed inside a kernel."""


class CheckpointError(MicrogptError, ValueError):
    """A checkpoint or saved file that is missing, corrupt or does not match."""


class ConfigError(MicrogptError, ValueError):
    """A configuration value that is out of range or inconsistent."""


class TokenizerError(MicrogptError, ValueError):
    """Invalid tokenizer input: a disallowed special token, an unknown id, a bad pattern."""


class GraphError(MicrogptError, RuntimeError):
    """An autograd graph used after backward() freed it (as PyTorch refuses it too)."""
