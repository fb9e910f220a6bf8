"""Training byte-level BPE: count chunks once, then merge with incremental pair counts.

The algorithm (C core: csrc/bpe_train.c, chapters 4 and 5):

1. Count. The corpus is split into chunks by the pattern (patterns.py) and only the
   *unique* chunks are kept, each with its count: a 10 MB corpus of code has ~10^5 unique
   chunks against ~3*10^6 chunk occurrences. Files are read in blocks of about 1 MB, cut
   only at a "\\n" that follows a non-space and precedes a letter (\\p{L}). Both built-in
   patterns end a chunk there whatever follows, and a chunk never looks behind itself,
   so block-wise counts equal whole-file counts (a test checks it) and a corpus larger
   than memory trains in constant memory plus the unique chunks. (A lone "\\n" after a
   space or "\\r" is not a safe cut: GPT-2's \\s+(?!\\S) would keep " \\n" whole at a block
   end. A file with no safe cut, e.g. all CRLF, is read whole. Custom patterns are
   assumed to end chunks at the same cuts.)
   Special-token strings in the corpus are cut out; they never take part in merges.
2. Words. Each unique chunk becomes a "word": its bytes as symbols 0..255, with a count.
3. Pairs. For every adjacent symbol pair (a, b): count(a, b) = sum over words of
   count(word) * occurrences of (a, b) in it, and the list of words holding it.
   A max-heap orders pairs by count.
4. Merge, vocab_size - 256 - len(special_tokens) times:
   - take the pair with the highest count; ties go to the smallest (a, b), compared as
     ids: deterministic, and independent of corpus order;
   - create token z = bytes(a) + bytes(b) with the next id (256, 257, ...);
   - in each word holding (a, b), replace its occurrences left to right, and update only
     the neighbouring pair counts: x a b y -> x z y does (x,a) -= c, (b,y) -= c,
     (x,z) += c, (z,y) += c, (a,b) -= c for a word seen c times. A pair whose count grew
     is pushed on the heap again; one that shrank is fixed lazily when it surfaces.
   Each merge costs time in proportion to the words it touches, not to the corpus: that is
   the whole difference from the naive loop that recounts every pair after every merge.
   - If bytes(a) + bytes(b) already is a token (two different splits of one string), the
     pair is skipped for good: one string with two ids would make encoding by rank
     ambiguous (tiktoken identifies tokens by their bytes).
5. The result: ordinary tokens 0..n-1 in merge order (rank = id), then the special
   tokens. Encoding (bpe.py) replays the merges by rank.

Training stops early, with a warning, if the corpus runs out of pairs.
"""
import os
import warnings

import numpy as np
from tqdm.auto import tqdm

from ..errors import TokenizerError
from . import patterns
from .native import Counter, Trainer
from .text import utf8_bytes

BLOCK_CHARS = 1 << 20
MERGES_PER_CALL = 64


def train(cls, source, vocab_size, pattern, special_tokens, progress):
    special_tokens = tuple(special_tokens)
    if len(set(special_tokens)) != len(special_tokens) or not all(
            isinstance(s, str) and s for s in special_tokens):
        raise TokenizerError(f"special_tokens must be distinct non-empty strings, "
                             f"got {special_tokens!r}")
    n_merges = (vocab_size if isinstance(vocab_size, int) else -1) - 256 - len(special_tokens)
    if isinstance(vocab_size, bool) or n_merges < 0:
        raise TokenizerError(f"vocab_size must be an int >= 256 + {len(special_tokens)} "
                             f"special tokens = {256 + len(special_tokens)}, got {vocab_size!r}")
    _, regex_text, native = patterns.resolve(pattern)
    counter = count_chunks(source, regex_text, native, special_tokens, progress)
    trainer = Trainer(counter)
    tokens = [bytes([b]) for b in range(256)]
    with tqdm(total=n_merges, desc="bpe merges", disable=not progress, unit="merge") as bar:
        while len(tokens) - 256 < n_merges:
            made = trainer.step(min(MERGES_PER_CALL, n_merges - (len(tokens) - 256)))
            if not made:
                break
            tokens.extend(tokens[a] + tokens[b] for a, b, _ in made)
            bar.update(len(made))
    if len(tokens) - 256 < n_merges:
        warnings.warn(f"the corpus ran out of pairs after {len(tokens) - 256} merges; the "
                      f"vocabulary has {len(tokens) + len(special_tokens)} ids, not {vocab_size}",
                      stacklevel=3)                     # the caller of Tokenizer.train
    specials = {text: len(tokens) + k for k, text in enumerate(special_tokens)}
    return cls(tokens, pattern, specials)


def count_chunks(source, regex_text, native, special_tokens, progress):
    """Stream the source into a C Counter of unique chunks."""
    counter = Counter()
    splitter = None
    if special_tokens:
        alternatives = "|".join(patterns.regex.escape(s)
                                for s in sorted(special_tokens, key=len, reverse=True))
        splitter = patterns.regex.compile(alternatives)
    compiled = patterns.compiled(regex_text)
    blocks, total = _blocks(source)
    with tqdm(total=total, desc="counting chunks", disable=not progress, unit="B",
              unit_scale=True) as bar:
        for block, size in blocks:
            pieces = splitter.split(block) if splitter and splitter.search(block) else (block,)
            for piece in pieces:
                if native != patterns.NATIVE_NONE:
                    counter.add_text(utf8_bytes(piece), native)
                else:
                    chunks = [c.encode("utf-8") for c in compiled.findall(utf8_bytes(piece).decode())]
                    ends = np.cumsum([len(c) for c in chunks], dtype=np.int64)
                    counter.add_chunks(b"".join(chunks), ends)
            bar.update(size)
    return counter


def _blocks(source):
    """-> (iterator of (text block, progress units), total units or None)."""
    paths = _as_paths(source)
    if paths is None:
        def texts():
            for k, text in enumerate(source):
                if not isinstance(text, str):
                    raise TokenizerError(f"training text {k} is {type(text).__name__}, not str")
                yield text, len(text)
        return texts(), None
    files = _files(paths)
    if not files:
        raise TokenizerError(f"no text files in {', '.join(map(repr, map(os.fspath, paths)))} "
                             f"(hidden and binary files are skipped)")
    return _read_files(files), sum(os.path.getsize(f) for f in files)


def _as_paths(source):
    """A path, or a list of paths -> list of paths; an iterable of texts -> None.
    A list counts as paths when every item is a Path or an existing path."""
    if isinstance(source, (str, os.PathLike)):
        if not os.path.exists(source):
            raise TokenizerError(f"training source {os.fspath(source)!r}: no such file or "
                                 f"directory (to train on a string, pass [text])")
        return [source]
    if isinstance(source, (list, tuple)) and source:
        is_path = [isinstance(s, os.PathLike) or (isinstance(s, str) and "\n" not in s
                                                  and len(s) < 4096 and os.path.exists(s))
                   for s in source]
        if all(is_path):
            return list(source)
        if any(is_path):
            missing = next(s for s, ok in zip(source, is_path) if not ok)
            raise TokenizerError(f"training source mixes paths and texts; {str(missing)[:60]!r}"
                                 f" is not an existing path")
    if isinstance(source, (bytes, dict)) or not hasattr(source, "__iter__"):
        raise TokenizerError(f"training source must be a path, a list of paths or an "
                             f"iterable of str, got {type(source).__name__}")
    return None


def _files(paths):
    """Expand directories (sorted, recursive, skipping hidden names and binary files). A
    binary file named explicitly is an error, as in data/sources.py."""
    files = []
    for path in map(os.fspath, paths):
        if os.path.isfile(path):
            with open(path, "rb") as f:                 # unreadable: OSError, said as it is
                head = f.read(8192)
            if b"\0" in head:
                raise TokenizerError(f"{path} looks binary (NUL byte in its first 8 KiB); "
                                     f"give text files")
            files.append(path)
            continue
        if not os.path.isdir(path):
            raise TokenizerError(f"training source {path!r}: no such file or directory")
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
            files += [os.path.join(root, n) for n in sorted(names)
                      if not n.startswith(".") and not _is_binary(os.path.join(root, n))]
    return files


def _is_binary(path):
    try:
        with open(path, "rb") as f:
            return b"\0" in f.read(8192)
    except OSError:
        return True


def _read_files(files):
    """Blocks of ~BLOCK_CHARS characters, each cut before a line starting with a letter.
    Invalid UTF-8 in a file becomes U+FFFD; line endings are kept as they are. Progress
    is counted in characters against a total in bytes: exact for ASCII."""
    table = patterns.class_table()
    for path in files:
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            carry = ""
            while True:
                block = f.read(BLOCK_CHARS)
                text = carry + block
                if not block:
                    if text:
                        yield text, len(text)
                    break
                # Cuts inside the carried text were rejected already: look only further on.
                cut = _safe_cut(text, max(len(carry) - 1, 0), table)
                carry = text[cut:]
                if cut:
                    yield text[:cut], cut


def _safe_cut(text, start, table):
    """Index just after the last "\\n" (at or after `start`) that follows a non-space and
    precedes a letter, or 0 if there is none."""
    k = text.rfind("\n", max(start, 1), len(text) - 1)
    while k >= 1 and not (table[ord(text[k + 1])] & patterns.LETTER
                          and not table[ord(text[k - 1])] & patterns.SPACE):
        k = text.rfind("\n", max(start, 1), k)
    return k + 1
