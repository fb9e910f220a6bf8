"""The tokenizer file: versioned, human-readable, checked on load.

    microgpt-bpe v1
    pattern gpt4                      (or: pattern gpt2 | pattern regex "<escaped regex>")
    tokens 8189                       number of ordinary tokens
    specials 3
    0 "\\x00"                         one line per ordinary token, id then its bytes, in
    ...                               rank order (ids 0..tokens-1, a lower id merges first)
    288 " the"
    special 8189 "<|endoftext|>"      one line per special token
    end sha256 <hex of every byte above this line>

Token bytes are written as a quoted string: printable UTF-8 characters as themselves,
\\" \\\\ \\n \\r \\t, other characters as \\u{hex code point}, and bytes that are not part of
valid UTF-8 as \\xHH. The checksum catches a truncated or edited file; a file that fails
any check raises CheckpointError naming the file and line, and nothing is half-loaded:
the Tokenizer is built only after the whole file has been read and verified.
"""
import hashlib
import os
import re

from ..errors import CheckpointError
from ..fileio import atomic_write

MAGIC = "microgpt-bpe"
VERSION = 1

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_SIMPLE = {"\\": b"\\", '"': b'"', "n": b"\n", "r": b"\r", "t": b"\t"}
_UNESCAPE = re.compile(r'\\x([0-9a-f]{2})|\\u\{([0-9a-f]{1,6})\}|\\([\\"nrt])|([^\\"]+)')
_TOKEN_LINE = re.compile(r'(0|[1-9][0-9]*) "(.*)"')
_SPECIAL_LINE = re.compile(r'special (0|[1-9][0-9]*) "(.*)"')


def escape(data):
    """bytes -> the quoted-string body described above."""
    out = []
    for ch in data.decode("utf-8", "surrogateescape"):
        if "\udc80" <= ch <= "\udcff":                     # a byte that is not valid UTF-8
            out.append(f"\\x{ord(ch) - 0xdc00:02x}")
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\u{{{ord(ch):x}}}")
    return "".join(out)


def unescape(body):
    """The inverse of escape; ValueError on anything escape never writes."""
    out, at = bytearray(), 0
    for match in _UNESCAPE.finditer(body):
        if match.start() != at:
            break
        hex_byte, code_point, simple, plain = match.groups()
        if hex_byte:
            out.append(int(hex_byte, 16))
        elif code_point:
            value = int(code_point, 16)
            if value > 0x10FFFF or 0xD800 <= value <= 0xDFFF:
                raise ValueError(f"\\u{{{code_point}}} is not a Unicode scalar value")
            out += chr(value).encode("utf-8")
        elif simple:
            out += _SIMPLE[simple]
        else:
            out += plain.encode("utf-8")
        at = match.end()
    if at != len(body):
        raise ValueError(f"bad escape or stray quote at character {at}: {body[at:at + 12]!r}")
    return bytes(out)


def dumps(tok):
    """The file's text (str), checksum line included."""
    if tok.pattern_name:
        pattern = tok.pattern_name
    else:
        pattern = f'regex "{escape(tok.pattern.encode("utf-8"))}"'
    lines = [f"{MAGIC} v{VERSION}", f"pattern {pattern}", f"tokens {tok.n_ordinary}",
             f"specials {len(tok.special_tokens)}"]
    ranks = tok.to_tiktoken_ranks()
    lines += [f'{i} "{escape(t)}"' for t, i in sorted(ranks.items(), key=lambda item: item[1])]
    lines += [f'special {i} "{escape(s.encode("utf-8"))}"'
              for s, i in sorted(tok.special_tokens.items(), key=lambda item: item[1])]
    body = "".join(line + "\n" for line in lines)
    return body + f"end sha256 {hashlib.sha256(body.encode('utf-8')).hexdigest()}\n"


def save(tok, path):
    """Write atomically: a temporary file in the same folder, fsync, then rename."""
    with atomic_write(os.fspath(path), "w", encoding="utf-8", newline="\n") as f:
        f.write(dumps(tok))


def load(cls, path):
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such tokenizer file") from None
    tokens, pattern, specials = _parse(path, raw)
    try:
        return cls(tokens, pattern, specials)
    except ValueError as exc:
        raise CheckpointError(f"{path}: not a usable tokenizer: {exc}") from None


def _parse(path, raw):
    lines = raw.split(b"\n")

    def fail(number, message):
        raise CheckpointError(f"{path}:{number}: {message}")

    def line(number):
        if number > len(lines) or (number == len(lines) and lines[-1] == b""):
            fail(number, "file ends early (truncated?)")
        try:
            return lines[number - 1].decode("utf-8")
        except UnicodeDecodeError:
            fail(number, "not UTF-8 text: not a microgpt tokenizer file")

    first = line(1)
    if not first.startswith(MAGIC + " v"):
        fail(1, f"not a microgpt tokenizer file: expected {MAGIC!r} v{VERSION}, "
                f"got {first[:40]!r}")
    if first != f"{MAGIC} v{VERSION}":
        fail(1, f"unsupported format {first[len(MAGIC) + 1:]!r}; this microgpt reads "
                f"v{VERSION} (a newer microgpt wrote it?)")
    pattern = _parse_pattern(line(2), lambda m: fail(2, m))
    counts = []
    for number, key in ((3, "tokens"), (4, "specials")):
        match = re.fullmatch(key + r" (0|[1-9][0-9]{0,8})", line(number))
        if not match:
            fail(number, f"expected '{key} <count>', got {line(number)[:40]!r}")
        counts.append(int(match.group(1)))
    n_tokens, n_specials = counts
    tokens, specials = [], {}
    for k in range(n_tokens):
        number = 5 + k
        match = _TOKEN_LINE.fullmatch(line(number))
        if not match or int(match.group(1)) != k:
            fail(number, f'expected token line \'{k} "<bytes>"\', got {line(number)[:40]!r}')
        tokens.append(_unescape_at(match.group(2), lambda m: fail(number, m)))
    for k in range(n_specials):
        number = 5 + n_tokens + k
        match = _SPECIAL_LINE.fullmatch(line(number))
        if not match:
            fail(number, f"expected 'special <id> \"<text>\"', got {line(number)[:40]!r}")
        text = _unescape_at(match.group(2), lambda m: fail(number, m))
        try:
            specials[text.decode("utf-8")] = int(match.group(1))
        except UnicodeDecodeError:
            fail(number, "special token is not valid UTF-8")
    number = 5 + n_tokens + n_specials
    end = re.fullmatch(r"end sha256 ([0-9a-f]{64})", line(number))
    if not end:
        fail(number, f"expected 'end sha256 <hex>', got {line(number)[:40]!r}")
    body = b"".join(raw_line + b"\n" for raw_line in lines[:number - 1])
    if hashlib.sha256(body).hexdigest() != end.group(1):
        fail(number, "checksum mismatch: the file was edited or corrupted")
    if any(lines[number:]):
        fail(number + 1, "unexpected text after the end line")
    return tokens, pattern, specials


def _parse_pattern(text, fail):
    if text in ("pattern gpt2", "pattern gpt4"):
        return text.split()[1]
    match = re.fullmatch(r'pattern regex "(.*)"', text)
    if not match:
        fail(f"expected 'pattern gpt2|gpt4|regex \"...\"', got {text[:40]!r}")
    try:
        return unescape(match.group(1)).decode("utf-8")
    except (ValueError, UnicodeDecodeError) as exc:
        fail(f"bad pattern string: {exc}")


def _unescape_at(body, fail):
    try:
        return unescape(body)
    except ValueError as exc:
        fail(str(exc))
