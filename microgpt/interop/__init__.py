"""Interoperability with Hugging Face: load its model directories, export ours to its layout.

    from microgpt.interop import load_pretrained, export_hf
    model = load_pretrained("path/to/hf_dir")        # gpt2, llama, mistral, qwen2, qwen3
    export_hf(model, tokenizer, "out_dir")           # transformers loads it back

    hf_config.py        config.json / generation_config.json <-> GPTConfig, sampling defaults
    hf_names.py         tensor names and layouts (GPT-2's Conv1D transposes, tied heads)
    hf_safetensors.py   the safetensors format, read through a memory map, bf16 widened
    hf.py               whole directories: load (two passes: check, then load) and export

This package is the one owner of the Hugging Face mapping: train/checkpoint.py writes our
run checkpoints through it too.
"""
from .hf import Pretrained, export_hf, load_hf_directory, load_pretrained
from .hf_config import SUPPORTED_MODEL_TYPES

__all__ = ["Pretrained", "export_hf", "load_hf_directory", "load_pretrained", "SUPPORTED_MODEL_TYPES"]
