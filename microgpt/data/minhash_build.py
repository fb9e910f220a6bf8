"""cffi builder of the data kernels: module `microgpt.data._minhash` from csrc/minhash.c
(MinHash signatures for dedup.py, n-gram repetition statistics for filters.py).

Out-of-line API mode, like microgpt/backends/cpu_build.py: the cdef is the block between the
CDEF markers of csrc/minhash.h. No -march flag (the hot loop picks AVX2 at load time through
GCC target_clones), so the built module runs on any x86-64.

Run by setup.py (CFFI_MODULES) during `pip install -e .`; by hand:
    python microgpt/data/minhash_build.py   # compiles, copies the .so next to this file
dedup.py and filters.py fall back to their NumPy references when the module is not built.
"""
import os
import re

from cffi import FFI

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(ROOT, "csrc")
HEADER = os.path.join(CSRC, "minhash.h")
CFLAGS = ["-O3", "-std=c11", "-Wall"]


def cdef_text():
    with open(HEADER) as f:
        match = re.search(r"/\* BEGIN CDEF \*/(.*)/\* END CDEF \*/", f.read(), re.S)
    if match is None:
        raise RuntimeError(f"{HEADER} lacks the /* BEGIN CDEF */ ... /* END CDEF */ markers")
    return match.group(1)


def _path(path, absolute):
    # setup.py wants paths relative to the repository root; cffi's compile() changes
    # directory, so the __main__ build passes absolute ones.
    return path if absolute else os.path.relpath(path, os.getcwd())


def make_builder(absolute=False):
    builder = FFI()
    builder.cdef(cdef_text())
    builder.set_source(
        "microgpt.data._minhash",
        '#include "minhash.h"',
        sources=[_path(os.path.join(CSRC, "minhash.c"), absolute)],
        include_dirs=[_path(CSRC, absolute)],
        extra_compile_args=CFLAGS,
    )
    return builder


ffibuilder = make_builder()

if __name__ == "__main__":
    import shutil
    built = make_builder(absolute=True).compile(tmpdir=os.path.join(ROOT, "build", "cffi_minhash"))
    shutil.copy(built, os.path.join(ROOT, "microgpt", "data", os.path.basename(built)))
