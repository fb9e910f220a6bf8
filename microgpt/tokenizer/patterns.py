"""Pre-tokenization: the split patterns, and the character table the C scanner reads.

Before BPE, text is cut into chunks ("pre-tokens") by a regex, and merges never cross a
chunk boundary, so " the" and "the" stay different tokens and digits never merge with
letters. Two patterns are built in, written as tiktoken writes them today (possessive
quantifiers: the same splits as the original regexes, without backtracking), so that
ranks imported from tiktoken with its pat_str land on the fast path:

  gpt2  GPT-2's (r50k): contractions, an optional space then a run of letters, digits or
        other symbols, whitespace runs.
  gpt4  GPT-4's (cl100k_base): case-insensitive contractions, a letter run may take one
        leading non-letter, digits in groups of at most three, newlines kept together,
        whitespace at the very end of the text kept whole.

Both are also implemented as hand-written scanners in csrc/bpe_split.c (chapter 2), which is what
makes encoding fast; any other regex works too, through the `regex` module (slower).

The C scanner needs the Unicode classes \\p{L}, \\p{N} and \\s. Rather than a second copy of
the Unicode tables, `class_table()` asks the `regex` module itself, once, for every code
point (0.3 s, 1.1 MB), so the C path and the regex path agree by construction. tiktoken's
Rust regex may know a newer or older Unicode version than `regex`: only code points assigned
in between could split differently.
"""
import functools

import numpy as np
import regex

from ..errors import TokenizerError

GPT2_PATTERN = (r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$"""
                r"""|\s+(?!\S)|\s""")
GPT4_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+"""
                r"""| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")

# name -> (regex, code of the C scanner); the codes are BPE_PATTERN_* in csrc/bpe.h.
NATIVE_NONE, NATIVE_GPT2, NATIVE_GPT4 = 0, 1, 2
BUILTIN = {"gpt2": (GPT2_PATTERN, NATIVE_GPT2), "gpt4": (GPT4_PATTERN, NATIVE_GPT4)}

# Bits of the class table (csrc/bpe.h): low bits classes, high nibble contraction letter.
LETTER, NUMBER, SPACE = 1, 2, 4
CONTRACTION_LETTERS = "strevmld"          # code k+1 for letter k, case-insensitive


def resolve(pattern):
    """'gpt2' | 'gpt4' | a regex string -> (name, regex string, native code).

    A regex equal to a built-in one is recognised, so a loaded tokenizer keeps the fast path.
    A bad pattern is a TokenizerError (a ValueError).
    """
    if not isinstance(pattern, str) or not pattern:
        raise TokenizerError(f"pattern must be 'gpt2', 'gpt4' or a non-empty regex string, "
                             f"got {pattern!r}")
    if pattern in BUILTIN:
        return (pattern,) + BUILTIN[pattern]
    for name, (text, code) in BUILTIN.items():
        if pattern == text:
            return name, text, code
    try:
        regex.compile(pattern)
    except regex.error as exc:
        raise TokenizerError(f"pattern {pattern!r} is not a valid regex: {exc}") from None
    return None, pattern, NATIVE_NONE


@functools.lru_cache(maxsize=None)
def compiled(pattern):
    return regex.compile(pattern)


@functools.lru_cache(maxsize=1)
def class_table():
    """uint8[0x110000]: per code point LETTER|NUMBER|SPACE bits, and in the high nibble the
    contraction letter it matches case-insensitively (1 s ... 8 d; 0 none), as the GPT-4
    pattern's '(?i:[sdmt]|...) sees it (so U+017F LONG S counts as s)."""
    every = "".join(map(chr, range(0x110000)))
    table = np.zeros(0x110000, np.uint8)
    for bit, cls in ((LETTER, r"\p{L}+"), (NUMBER, r"\p{N}+"), (SPACE, r"\s+")):
        for match in regex.finditer(cls, every):
            table[match.start():match.end()] |= bit
    for code, letter in enumerate(CONTRACTION_LETTERS, start=1):
        for match in regex.finditer("(?i)" + letter, every):
            table[match.start()] |= code << 4
    table.flags.writeable = False
    return table
