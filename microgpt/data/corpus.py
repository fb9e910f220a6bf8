"""The built-in corpus: text that ships with every CPython, so the main job needs no download.

Two sources, both found at run time in the Python that is running:

  - `pydoc_data.topics.topics`: the language reference chapters `help()` shows (about
    0.5 MB of English prose with code), one document per topic, source
    "pydoc_data.topics:<name>";
  - the standard library's own `.py` sources under `sysconfig.get_paths()["stdlib"]`
    (about 12 MB without tests), one document per file, source the path relative to the
    stdlib directory. Third-party packages (site-packages, dist-packages) and the large
    test suites, IDLE and lib2to3 are left out: they are either not the stdlib or mostly
    repetitive fixtures.

Order is deterministic for a given Python: the topics sorted by name, then the files
shuffled by a seeded PCG64 permutation of their sorted paths, so that a byte budget
(`max_bytes`) takes a varied sample of the library rather than its alphabetical head.
A document that does not fit the remaining budget is skipped (a smaller one later may
fit); the budget counts UTF-8 bytes.

    for doc in builtin_documents(max_bytes=4_000_000): ...
    describe_builtin()   # a one-line summary for logs
"""
import os
import sys
import sysconfig

import numpy as np

from .sources import Document

_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3",
              "__pycache__", "ensurepip", "turtledemo"}


def stdlib_dir():
    """The directory holding the running Python's standard library sources."""
    return sysconfig.get_paths()["stdlib"]


def stdlib_files():
    """Sorted relative paths of the stdlib's .py files (tests, IDLE, third-party left out)."""
    root = stdlib_dir()
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in filenames:
            if name.endswith(".py"):
                found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found)


def topic_documents():
    """One Document per pydoc topic, sorted by topic name."""
    try:
        from pydoc_data.topics import topics
    except ImportError:          # some distributions strip pydoc_data; the sources still work
        return []
    return [Document(topics[name], f"pydoc_data.topics:{name}") for name in sorted(topics)]


def builtin_documents(max_bytes=None, seed=0):
    """Yield the built-in corpus as Documents, stopping before `max_bytes` UTF-8 bytes."""
    if max_bytes is not None and max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive or None, got {max_bytes}")
    budget = float("inf") if max_bytes is None else max_bytes
    for doc in topic_documents():
        size = len(doc.text.encode("utf-8"))
        if size > budget:
            continue
        budget -= size
        yield doc
    root = stdlib_dir()
    files = stdlib_files()
    order = np.random.Generator(np.random.PCG64(seed)).permutation(len(files))
    for i in order:
        rel = files[i]
        try:
            with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        size = len(text.encode("utf-8"))
        if size > budget:
            continue             # a smaller file later may still fit
        if not text.strip():
            continue
        budget -= size
        yield Document(text, rel)
        if budget < 1:
            return


def describe_builtin():
    return (f"built-in corpus: pydoc topics + standard library sources of Python "
            f"{sys.version.split()[0]} at {stdlib_dir()}")
