"""microgpt: a large-language-model engine from scratch.

    from microgpt import Tensor, no_grad, GPT, GPTConfig, Tokenizer, AdamW
    model = microgpt.from_pretrained("path/to/hf_model_dir")     # a Hugging Face directory

The layers, bottom up: backends/ (kernels: NumPy reference, C, CUDA) -> tensor.py and ops.py
(autograd and the math of every op) -> nn/ (layers, GPT) -> tokenizer/, data/, train/ ->
inference/, finetune/, eval/ -> cli.py. README.md has the map.
"""
from .errors import MicrogptError
from .nn import GPT, GPTConfig
from .tensor import Tensor, no_grad

__version__ = "0.1.0"

# Names served from the higher layers, imported on first use so `import microgpt` stays light.
_LAZY = {"Tokenizer": "microgpt.tokenizer", "StreamDecoder": "microgpt.tokenizer",
         "AdamW": "microgpt.train.optim"}


def from_pretrained(path, **options):
    """The GPT of a Hugging Face model directory (GPT-2, Llama, Mistral, Qwen2, Qwen3).

    It lives here, at the front door, rather than as GPT.from_pretrained: reading Hugging Face
    files is interop's job (microgpt/interop/hf.py), a layer above nn, and nn never imports
    upward. Options: dtype, device, block_size (interop.load_pretrained)."""
    from .interop import load_pretrained
    return load_pretrained(path, **options)


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'microgpt' has no attribute {name!r}")


__all__ = ["Tensor", "no_grad", "GPT", "GPTConfig", "MicrogptError", "from_pretrained", *_LAZY]
