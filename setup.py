"""Build script: the Python package plus its compiled parts.

The C kernels (csrc/) and the BPE core are compiled by cffi's out-of-line API mode
(`cffi_modules`); each entry names a builder script that holds its cdef and sources.
The CUDA library (cuda/) is built by its own builder when nvcc is present.
"""
import importlib.util
import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

# One entry per compiled extension: "path/to/builder.py:ffibuilder".
CFFI_MODULES = [
    "microgpt/tokenizer/bpe_build.py:ffibuilder",     # BPE core (csrc/bpe_*.c) -> microgpt.tokenizer._bpe
    "microgpt/backends/cpu_build.py:ffibuilder",      # C kernels (csrc/) -> microgpt.backends._cpu
    "microgpt/data/minhash_build.py:ffibuilder",      # MinHash (csrc/minhash.c) -> microgpt.data._minhash
]


# --- CUDA hook: build cuda/*.cu -> microgpt/backends/_microgpt_cuda.so with nvcc, if present ----
# The builder is loaded by path (it needs only the standard library). It prints why it skips
# (no nvcc, or MICROGPT_CUDA=0) and never fails the install: the cuda backend then reports
# itself unavailable. Runs with build_py, which both `pip install .` and `pip install -e .` run.
class BuildPyWithCuda(build_py):
    def run(self):
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "microgpt", "backends", "cuda_build.py")
        spec = importlib.util.spec_from_file_location("microgpt_cuda_build", path)
        builder = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(builder)
        built = builder.build_if_possible()
        super().run()
        if built:   # ship the library and its cdef inside wheels too (editable installs use the tree)
            target = os.path.join(self.build_lib, "microgpt", "backends")
            os.makedirs(target, exist_ok=True)
            for source in (builder.LIBRARY, builder.CDEF_FILE):
                self.copy_file(source, os.path.join(target, os.path.basename(source)))


setup(
    name="microgpt",
    version="0.1.0",
    description="A large-language-model engine from scratch: autograd, C and CUDA kernels, "
                "BPE tokenizer, trainer, fine-tuning, inference.",
    packages=find_packages(include=["microgpt", "microgpt.*"]),
    package_data={"microgpt.serve": ["page.html"]},     # the chat page `microgpt serve` sends
    python_requires=">=3.10",
    setup_requires=["cffi>=1.15"],
    install_requires=[
        "numpy>=1.24",
        "cffi>=1.15",
        "regex>=2023.0",
        "safetensors>=0.4",
        "tqdm>=4.60",
        "matplotlib>=3.5",             # `microgpt train` ends by drawing its loss curve
    ],
    extras_require={
        # Peers and checkers: used by tests and benchmarks only, never imported at run time.
        "test": [
            "pytest>=7",
            "ruff>=0.5",               # the linter CI runs (rules in pyproject.toml)
            "hypothesis>=6.80",
            "torch==2.13.0",
            "tiktoken>=0.6",
            "tokenizers>=0.15",
            "datasketch>=1.6",
            "transformers>=4.40",      # HF loads our checkpoints; the generation peer
            "lm-eval>=0.4",            # the evaluation peer: per-example log-likelihoods
            "sacrebleu>=2.3",          # BLEU / chrF oracle
            "rouge-score>=0.1",        # ROUGE oracle
            "peft>=0.10",              # LoRA adapters: PEFT loads ours, we load its
            "trl>=0.9",                # DPO loss oracle
            "openai>=1.0",             # the client our server must satisfy
            "fastapi>=0.100",          # the serve extra, so its tests run
            "uvicorn>=0.23",
            "httpx>=0.24",
            "playwright>=1.40",        # drives Debian's chromium in the web-page test
            "mpi4py>=3.1",             # distributed tests under mpirun
            "gguf>=0.10",              # GGUF writer/reader for llama.cpp export
        ],
        # Serving: an OpenAI-compatible HTTP server (`microgpt serve`).
        "serve": ["fastapi>=0.100", "uvicorn>=0.23"],
        # `microgpt lifecycle`: its serve stage starts the server and asks it through the
        # openai client (httpx polls /health).
        "lifecycle": ["fastapi>=0.100", "uvicorn>=0.23", "openai>=1.0", "httpx>=0.24"],
        # Distributed training over MPI (`mpirun -n N microgpt train ...`).
        "mpi": ["mpi4py>=3.1"],
        "plot": ["matplotlib>=3.5"],   # a run-time dependency now; kept for old install lines
    },
    cffi_modules=CFFI_MODULES,
    cmdclass={"build_py": BuildPyWithCuda},   # the CUDA hook above
    entry_points={"console_scripts": ["microgpt=microgpt.cli:main"]},
)
