"""cffi builder of the BPE core: module `microgpt.tokenizer._bpe` from csrc/bpe_*.c.

Out-of-line API mode, like backends/cpu_build.py: the cdef is the text between the CDEF
markers of csrc/bpe.h. API mode matters for speed here: every call releases the GIL, so
`Tokenizer.encode_batch` runs on several threads at once.

Run by setup.py (CFFI_MODULES) during `pip install -e .`; by hand:
    python microgpt/tokenizer/bpe_build.py   # compiles, copies the .so next to this file
"""
import os
import re

from cffi import FFI

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(ROOT, "csrc")
HEADER = os.path.join(CSRC, "bpe.h")
# The chapters of the C core, in reading order; their shared internals are in bpe_internal.h.
SOURCES = ["bpe_split.c", "bpe_encode.c", "bpe_train.c"]
CFLAGS = ["-O3", "-std=c11", "-Wall", "-Wno-unused-function"]


def cdef_text():
    with open(HEADER) as f:
        text = f.read()
    match = re.search(r"/\* BEGIN CDEF \*/(.*)/\* END CDEF \*/", text, re.S)
    if match is None:
        raise RuntimeError(f"{HEADER} lacks the /* BEGIN CDEF */ ... /* END CDEF */ markers")
    return match.group(1)


def make_builder(relative=True):
    """relative: paths relative to the repository root, as setup.py (run from there) needs;
    the by-hand build compiles inside a temporary folder, so it takes absolute paths."""
    where = (lambda path: os.path.relpath(path, ROOT)) if relative else (lambda path: path)
    builder = FFI()
    builder.cdef(cdef_text())
    builder.set_source(
        "microgpt.tokenizer._bpe",
        '#include "bpe.h"',
        sources=[where(os.path.join(CSRC, name)) for name in SOURCES],
        include_dirs=[where(CSRC)],
        extra_compile_args=CFLAGS,
    )
    return builder


ffibuilder = make_builder()

if __name__ == "__main__":
    import shutil
    built = make_builder(relative=False).compile(tmpdir=os.path.join(ROOT, "build", "cffi_bpe"))
    shutil.copy(built, os.path.join(ROOT, "microgpt", "tokenizer", os.path.basename(built)))
