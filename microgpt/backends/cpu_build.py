"""cffi builder of the C kernels: module `microgpt.backends._cpu` from csrc/.

Out-of-line API mode: cffi reads the declarations between the CDEF markers of
csrc/microgpt.h, writes a C extension that includes the header, and compiles it together
with the kernel sources listed in SOURCES below (an explicit list: the tokenizer's bpe_*.c and
the dedup code's minhash.c are other modules, built by their own builders).

Portability: no -march flag. The build runs on any x86-64; the SIMD paths are chosen at run
time (matmul.c asks __builtin_cpu_supports, the elementwise kernels are GCC target_clones),
so a wheel built on an AVX-512 machine still runs on an AVX2-only or SSE2-only one.
OpenMP (-fopenmp) gives the threads.

Run by setup.py (CFFI_MODULES) during `pip install -e .`; by hand:
    python microgpt/backends/cpu_build.py [DIR]  # compiles, copies the .so here (or to DIR)
"""
import os
import re

from cffi import FFI

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(ROOT, "csrc")
HEADER = os.path.join(CSRC, "microgpt.h")
SOURCES = ["threads.c", "matmul.c", "attention_naive.c", "attention.c", "softmax.c", "crossentropy.c",
           "norm.c", "activation.c", "rope.c", "embedding.c", "adamw.c", "paged_attention.c",
           "quant.c", "moe.c", "decode_step.c"]
CFLAGS = ["-O3", "-std=c11", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-Wall", "-Wno-unused-function"]
LDFLAGS = ["-fopenmp"]
# MICROGPT_SANITIZE=1 (csrc/Makefile's `make sanitize`): AddressSanitizer + UndefinedBehaviorSanitizer,
# every UB report fatal. Such a build only loads with libasan preloaded, so it goes to its own folder.
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer", "-g", "-O1"]


def cdef_text():
    """The declarations between the CDEF markers of the header."""
    with open(HEADER) as f:
        text = f.read()
    match = re.search(r"/\* BEGIN CDEF \*/(.*)/\* END CDEF \*/", text, re.S)
    if match is None:
        raise RuntimeError(f"{HEADER} lacks the /* BEGIN CDEF */ ... /* END CDEF */ markers")
    return match.group(1)


def _path(path, absolute):
    # setup.py wants paths relative to the repository root (its working directory);
    # cffi's own compile() changes directory, so the __main__ build passes absolute ones.
    return path if absolute else os.path.relpath(path, os.getcwd())


def sources(absolute=False):
    return [_path(os.path.join(CSRC, name), absolute) for name in SOURCES]


def make_builder(absolute=False):
    builder = FFI()
    builder.cdef(cdef_text())
    builder.set_source(
        "microgpt.backends._cpu",
        '#include "microgpt.h"',
        sources=sources(absolute),
        include_dirs=[_path(CSRC, absolute)],
        extra_compile_args=CFLAGS + (SANITIZE if os.environ.get("MICROGPT_SANITIZE") == "1" else []),
        extra_link_args=LDFLAGS + (SANITIZE if os.environ.get("MICROGPT_SANITIZE") == "1" else []),
    )
    return builder


ffibuilder = make_builder()

if __name__ == "__main__":
    import shutil
    import sys
    # optional argument: the folder to put the module in (default: this package)
    package = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "microgpt", "backends")
    sanitize = os.environ.get("MICROGPT_SANITIZE") == "1"
    tmpdir = os.path.join(ROOT, "build", "cffi_cpu" + ("_sanitize" if sanitize else ""))
    built = make_builder(absolute=True).compile(tmpdir=tmpdir)
    for name in os.listdir(package):          # a stale _cpu.*.so of another suffix would win
        if name.startswith("_cpu.") and name.endswith(".so"):
            os.remove(os.path.join(package, name))
    shutil.copy(built, os.path.join(package, os.path.basename(built)))
