"""Build script: the Python package plus its compiled parts.

The C kernels (csrc/) and the BPE core are compiled by cffi's out-of-line API mode
(`cffi_modules`); each entry names a builder script that holds its cdef and sources.
The CUDA library (cuda/) is built by its own builder when nvcc is present.
"""
from setuptools import find_packages, setup

# One entry per compiled extension: "path/to/builder.py:ffibuilder".
CFFI_MODULES = [
    "microgpt/tokenizer/bpe_build.py:ffibuilder",     # BPE core (csrc/bpe.c) -> microgpt.tokenizer._bpe
    "microgpt/backends/cpu_build.py:ffibuilder",      # C kernels (csrc/) -> microgpt.backends._cpu
]

setup(
    name="microgpt",
    version="0.1.0",
    description="A large-language-model engine from scratch: autograd, C and CUDA kernels, "
                "BPE tokenizer, trainer, fine-tuning, inference.",
    packages=find_packages(include=["microgpt", "microgpt.*"]),
    python_requires=">=3.10",
    setup_requires=["cffi>=1.15"],
    install_requires=[
        "numpy>=1.24",
        "cffi>=1.15",
        "regex>=2023.0",
        "safetensors>=0.4",
        "tqdm>=4.60",
    ],
    extras_require={
        # Peers and checkers: used by tests and benchmarks only, never imported at run time.
        "test": [
            "pytest>=7",
            "hypothesis>=6.80",
            "torch==2.13.0",
            "tiktoken>=0.6",
            "tokenizers>=0.15",
            "datasketch>=1.6",
        ],
        "plot": ["matplotlib>=3.5"],
    },
    cffi_modules=CFFI_MODULES,
    entry_points={"console_scripts": ["microgpt=microgpt.cli:main"]},
)
