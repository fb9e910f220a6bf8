"""Reading raw text corpora as a stream of documents.

    for doc in iter_documents(["corpus/", "dump.jsonl.gz"], text_field="text"):
        doc.text, doc.source          # str, "corpus/a.txt" or "dump.jsonl.gz:17"

What counts as a document:
  - a plain text file (any extension other than .jsonl/.ndjson) is ONE document; its source
    is the path. Memory is therefore bounded by the largest single text file, never by the
    corpus.
  - a .jsonl / .ndjson file holds one JSON object per line; the string in `text_field` is a
    document, its source is "path:lineno" (1-based). Blank lines are ignored.
  - `name.gz` is read through gzip and then treated as `name` would be (so .jsonl.gz is
    JSONL, .txt.gz is one text document).
  - a directory is walked recursively in a fixed order (so the stream is deterministic): a
    directory's own files sorted by name, then its subdirectories sorted by name; hidden
    entries (names starting with ".") and binary files are skipped.

Choices, and why:
  - Decoding is UTF-8 with errors="replace": crawled text is often slightly broken and one bad
    byte should not drop a document; each bad byte becomes U+FFFD, which the quality filters
    can count. A UTF-8 byte-order mark at the start of a file is removed.
  - Binary files are detected by a NUL byte in the first buffer read (up to 8 KiB, what git
    and grep do). Inside
    a directory walk they are skipped and counted; a binary file named explicitly is an error.
  - A JSONL line that is not valid JSON, not an object, or lacks a string `text_field` is an
    error naming the file and line (on_bad_line="raise", the default, since a silently
    shrinking corpus hides bugs); with on_bad_line="skip" it is skipped and counted in
    SourceStats.bad_lines, with the first few reasons kept in SourceStats.bad_examples.
  - A path that does not exist, or a directory holding no files at all, is an error before
    anything is read: `iter_documents` checks its paths when it is called, not when the
    first document is asked for (`check_paths` is the same check on its own).

Nothing here writes; inputs are only ever opened for reading.
"""
import gzip
import io
import json
import os
import zlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator, List, Optional, Union

from ..errors import MicrogptError

JSONL_SUFFIXES = (".jsonl", ".ndjson")
_SNIFF_BYTES = 8192
_MAX_BAD_EXAMPLES = 5


class DataError(MicrogptError, ValueError):
    """An input corpus that cannot be read as documents; the message names file and line."""


@dataclass(frozen=True)
class Document:
    text: str
    source: str          # "path" for a text file, "path:lineno" for a JSONL record


@dataclass
class SourceStats:
    """Counts gathered while streaming; pass one in to read them afterwards."""
    files: int = 0
    documents: int = 0
    bytes: int = 0                       # UTF-8 bytes of the yielded texts
    skipped_binary: int = 0
    bad_lines: int = 0
    bad_examples: List[str] = field(default_factory=list)


PathArg = Union[str, os.PathLike, Iterable[Union[str, os.PathLike]]]


def check_paths(paths: PathArg) -> List[str]:
    """The paths as a list of str, after checking that each exists and that each directory
    holds at least one (non-hidden) file; DataError naming the first that does not."""
    path_list = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not path_list:
        raise DataError("no input paths given")
    path_list = [os.fspath(p) for p in path_list]
    for p in path_list:
        if not os.path.exists(p):
            raise DataError(f"input path does not exist: {p}")
        if os.path.isdir(p) and next(_walk(p), None) is None:
            raise DataError(f"input directory {p} holds no files (hidden names are skipped)")
    return path_list


def iter_documents(paths: PathArg, text_field: str = "text", on_bad_line: str = "raise",
                   stats: Optional[SourceStats] = None) -> Iterator[Document]:
    """Every Document under `paths` (a path or a list of paths), in a fixed order. The
    arguments and paths are checked now; the documents are read as the iterator is."""
    if on_bad_line not in ("raise", "skip"):
        raise DataError(f"on_bad_line must be 'raise' or 'skip', got {on_bad_line!r}")
    if not isinstance(text_field, str) or not text_field:
        raise DataError(f"text_field must be a non-empty string, got {text_field!r}")
    path_list = check_paths(paths)                # fail before reading anything
    return _iter_paths(path_list, text_field, on_bad_line,
                       stats if stats is not None else SourceStats())


def _iter_paths(path_list, text_field, on_bad_line, stats):
    for p in path_list:
        if os.path.isdir(p):
            for file_path in _walk(p):
                yield from _iter_file(file_path, text_field, on_bad_line, stats, explicit=False)
        else:
            yield from _iter_file(p, text_field, on_bad_line, stats, explicit=True)


def _walk(root: str) -> Iterator[str]:
    """Regular files under root, recursively, sorted, hidden names skipped."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if not name.startswith(".") and os.path.isfile(full):
                yield full


def _open_binary(path: str):
    """A binary stream of the file's content, gunzipped when the name ends in .gz."""
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _logical_name(path: str) -> str:
    return path[:-3] if path.endswith(".gz") else path


def _iter_file(path, text_field, on_bad_line, stats, explicit):
    try:
        raw = _open_binary(path)
        head = raw.peek(_SNIFF_BYTES)[:_SNIFF_BYTES] if hasattr(raw, "peek") else b""
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    with raw:
        if b"\0" in head:
            if explicit:
                raise DataError(f"{path} looks binary (NUL byte in its first 8 KiB); "
                                "give text, .jsonl or .gz files")
            stats.skipped_binary += 1
            return
        stats.files += 1
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")
        try:
            if _logical_name(path).lower().endswith(JSONL_SUFFIXES):
                yield from _iter_jsonl(text, path, text_field, on_bad_line, stats)
            else:
                content = text.read()
                stats.documents += 1
                stats.bytes += len(content.encode("utf-8", "surrogatepass"))
                yield Document(content, path)
        except (OSError, EOFError, zlib.error) as exc:     # BadGzipFile is an OSError
            raise DataError(f"cannot read {path}: {exc}") from exc


def _iter_jsonl(text, path, text_field, on_bad_line, stats):
    for lineno, line in enumerate(text, start=1):
        if not line.strip():
            continue
        value, reason = _parse_record(line, text_field)
        if reason is not None:
            where = f"{path}:{lineno}: {reason}"
            if on_bad_line == "raise":
                raise DataError(where + " (use on_bad_line='skip' / --skip-bad-lines to skip)")
            stats.bad_lines += 1
            if len(stats.bad_examples) < _MAX_BAD_EXAMPLES:
                stats.bad_examples.append(where)
            continue
        stats.documents += 1
        stats.bytes += len(value.encode("utf-8", "surrogatepass"))
        yield Document(value, f"{path}:{lineno}")


def _parse_record(line: str, text_field: str):
    """(text, None) for a good record, (None, reason) otherwise."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(record, dict):
        return None, f"expected a JSON object, got {type(record).__name__}"
    if text_field not in record:
        keys = ", ".join(sorted(record)[:8])
        return None, f"no field {text_field!r} (fields: {keys})"
    value = record[text_field]
    if not isinstance(value, str):
        return None, f"field {text_field!r} is {type(value).__name__}, not a string"
    return value, None
