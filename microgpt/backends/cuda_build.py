"""Builder of the CUDA library: nvcc compiles cuda/*.cu into microgpt/backends/_microgpt_cuda.so.

The binding (backends/cuda.py via cuda_runtime.py) opens that library with cffi in ABI mode
(`ffi.dlopen`) and reads its declarations from the CDEF block of cuda/microgpt_cuda.h, which
this builder copies next to the library as _microgpt_cuda.cdef (so an installed package
needs no source tree). This file imports only the standard library: setup.py loads it by
path before microgpt's own dependencies exist.

    python -m microgpt.backends.cuda_build            build for sm_80 and sm_90
    python -m microgpt.backends.cuda_build --check    compile every .cu (one arch, -c only,
                                                      warnings as errors): the CI gate
    python -m microgpt.backends.cuda_build --out F    the library at F (cdef beside it); load
                                                      it with MICROGPT_CUDA_LIB=F
Environment: MICROGPT_CUDA=0 skips the build; MICROGPT_CUDA_ARCHS="80 90" picks targets;
NVCC names the compiler. Objects compile in parallel; the library is written atomically.
"""
import argparse
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CUDA_DIR = os.path.join(ROOT, "cuda")
HEADER = os.path.join(CUDA_DIR, "microgpt_cuda.h")
LIBRARY = os.path.join(HERE, "_microgpt_cuda.so")
CDEF_FILE = os.path.join(HERE, "_microgpt_cuda.cdef")
DEFAULT_ARCHS = ("80", "90")
FLAGS = ["-std=c++17", "-O3", "-Xcompiler", "-fPIC,-Wall,-Werror", "-Werror", "all-warnings"]


class BuildError(RuntimeError):
    """nvcc is missing or failed; the message holds its output."""


def nvcc_path():
    """The nvcc to use, or None when there is none."""
    return shutil.which(os.environ.get("NVCC", "nvcc"))


def sources():
    return sorted(os.path.join(CUDA_DIR, f) for f in os.listdir(CUDA_DIR) if f.endswith(".cu"))


def read_cdef(header=HEADER):
    """The declarations between the CDEF markers of the header."""
    with open(header) as f:
        text = f.read()
    try:
        return text.split("/* CDEF BEGIN */", 1)[1].split("/* CDEF END */", 1)[0]
    except IndexError:
        raise BuildError(f"{header} has no /* CDEF BEGIN */ ... /* CDEF END */ block") from None


def _gencode(archs):
    flags = []
    for arch in archs:
        flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    return flags


def _run(cmd):
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode:
        raise BuildError(f"{' '.join(cmd)}\n{proc.stdout}")
    return proc.stdout


def _compile_all(nvcc, archs, outdir):
    """Compile every .cu to an object in outdir, in parallel; returns the object paths."""
    jobs = []
    for src in sources():
        obj = os.path.join(outdir, os.path.basename(src)[:-3] + ".o")
        jobs.append((obj, [nvcc, *FLAGS, *_gencode(archs), "-I", CUDA_DIR, "-c", src, "-o", obj]))
    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(_run, [cmd for _, cmd in jobs]))
    return [obj for obj, _ in jobs]


def check(arch="90"):
    """Compile every .cu for one arch with warnings as errors, objects thrown away (CI)."""
    nvcc = nvcc_path()
    if nvcc is None:
        raise BuildError("nvcc not found: cannot compile-check cuda/")
    with tempfile.TemporaryDirectory() as tmp:
        objs = _compile_all(nvcc, [arch], tmp)
    return len(objs)


def build(archs=None, verbose=True, out=None):
    """Build the library and its cdef file; returns the library path. out: another path for
    the library (its cdef beside it, same stem), as gpu_check.sh --prebuild uses."""
    nvcc = nvcc_path()
    if nvcc is None:
        raise BuildError("nvcc not found")
    archs = archs or os.environ.get("MICROGPT_CUDA_ARCHS", " ".join(DEFAULT_ARCHS)).split()
    library = out or LIBRARY
    cdef_file = CDEF_FILE if out is None else os.path.splitext(out)[0] + ".cdef"
    cdef = read_cdef()
    with tempfile.TemporaryDirectory() as tmp:
        objs = _compile_all(nvcc, archs, tmp)
        tmp_lib = os.path.join(tmp, "lib.so")
        _run([nvcc, "-shared", *_gencode(archs), *objs, "-o", tmp_lib])
        staged = library + ".tmp"
        shutil.copyfile(tmp_lib, staged)
        os.replace(staged, library)
    with open(cdef_file + ".tmp", "w") as f:
        f.write(cdef)
        f.flush()
        os.fsync(f.fileno())
    os.replace(cdef_file + ".tmp", cdef_file)
    if verbose:
        print(f"microgpt: built {library} for sm_{', sm_'.join(archs)}")
    return library


def build_if_possible():
    """setup.py's hook: build when nvcc is present and MICROGPT_CUDA != 0, else say why not.
    Never raises: a failed CUDA build must not break installing the rest of microgpt."""
    if os.environ.get("MICROGPT_CUDA", "1") == "0":
        print("microgpt: MICROGPT_CUDA=0, skipping the CUDA library")
        return None
    if nvcc_path() is None:
        print("microgpt: nvcc not found, skipping the CUDA library (the cuda backend stays unavailable)")
        return None
    try:
        return build()
    except (BuildError, OSError) as exc:
        print(f"microgpt: CUDA library build failed, the cuda backend stays unavailable:\n{exc}")
        return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compile-check every .cu, one arch, -c only")
    parser.add_argument("--arch", action="append", help="target such as 90 (repeatable)")
    parser.add_argument("--out", help="write the library here instead of beside this file")
    args = parser.parse_args(argv)
    try:
        if args.check:
            count = check((args.arch or ["90"])[0])
            print(f"microgpt: {count} CUDA sources compile cleanly (warnings as errors)")
        else:
            build(args.arch, out=args.out)
    except BuildError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
