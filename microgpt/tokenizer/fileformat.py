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

Version 2 holds what v1 cannot: Hugging Face's merge rule (Tokenizer.from_merges), a
normalizer, and the metadata (chat template, bos/eos/pad token names). It is written
only for a tokenizer that has one of these, so every tokenizer v1 could hold stays v1:

    microgpt-bpe v2
    pattern gpt4
    normalizer none                   (or: normalizer nfc)
    tokens 128000
    merges 127744 ignore_merges=1     (or: merges ranks -- tiktoken's rule, as in v1)
    specials 256
    meta 2
    0 "!"                             ordinary tokens, ids ascending (any ids: HF puts
    ...                               specials among them; 0..tokens-1 for "ranks")
    merge 220 220                     one line per merge, left id and right id, in rank order
    ...
    special 128000 "<|begin_of_text|>"
    meta eos_token "<|end_of_text|>"  one line per metadata field set, value escaped
    meta chat_template "{% for ... %}..."      (add_bos_token: "true" or "false")
    end sha256 <hex>

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
VERSION = 2              # the newest this code reads and writes; v1 too

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_SIMPLE = {"\\": b"\\", '"': b'"', "n": b"\n", "r": b"\r", "t": b"\t"}
_UNESCAPE = re.compile(r'\\x([0-9a-f]{2})|\\u\{([0-9a-f]{1,6})\}|\\([\\"nrt])|([^\\"]+)')
_TOKEN_LINE = re.compile(r'(0|[1-9][0-9]*) "(.*)"')
_SPECIAL_LINE = re.compile(r'special (0|[1-9][0-9]*) "(.*)"')
_MERGE_LINE = re.compile(r"merge (0|[1-9][0-9]*) (0|[1-9][0-9]*)")
_META_LINE = re.compile(r'meta ([a-z_]+) "(.*)"')
_COUNT = r"(0|[1-9][0-9]{0,8})"
# Tokenizer.METADATA (bpe.py imports this module, so the names are repeated here).
METADATA = ("chat_template", "bos_token", "eos_token", "pad_token", "add_bos_token")


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
    """The file's text (str), checksum line included: v1 when v1 can hold the tokenizer."""
    if tok.pattern_name:
        pattern = tok.pattern_name
    else:
        pattern = f'regex "{escape(tok.pattern.encode("utf-8"))}"'
    meta = [(name, getattr(tok, name)) for name in tok.METADATA
            if getattr(tok, name) is not None]
    specials = [f'special {i} "{escape(s.encode("utf-8"))}"'
                for s, i in sorted(tok.special_tokens.items(), key=lambda item: item[1])]
    if tok.merges is None and tok.normalizer is None and not meta:
        lines = [f"{MAGIC} v1", f"pattern {pattern}", f"tokens {tok.n_ordinary}",
                 f"specials {len(tok.special_tokens)}"]
        ranks = tok.to_tiktoken_ranks()
        lines += [f'{i} "{escape(t)}"' for t, i in sorted(ranks.items(), key=lambda item: item[1])]
        lines += specials
    else:
        merges = tok.merges
        lines = [f"{MAGIC} v2", f"pattern {pattern}", f"normalizer {tok.normalizer or 'none'}",
                 f"tokens {tok.n_ordinary}",
                 "merges ranks" if merges is None else
                 f"merges {len(merges)} ignore_merges={int(tok.ignore_merges)}",
                 f"specials {len(tok.special_tokens)}", f"meta {len(meta)}"]
        lines += [f'{i} "{escape(tok.token_bytes(i))}"' for i in tok.ordinary_ids]
        lines += [f"merge {a} {b}" for a, b in merges or ()]
        lines += specials
        lines += [f'meta {name} "{escape(_meta_text(value).encode("utf-8"))}"'
                  for name, value in meta]
    body = "".join(line + "\n" for line in lines)
    return body + f"end sha256 {hashlib.sha256(body.encode('utf-8')).hexdigest()}\n"


def _meta_text(value):
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


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
    parsed = _parse(path, raw)
    try:
        if parsed["merges"] is None:
            ids, tokens = parsed["ids"], parsed["tokens"]
            if ids != list(range(len(ids))):
                raise ValueError("'merges ranks' needs ordinary ids 0..tokens-1")
            tok = cls(tokens, parsed["pattern"], parsed["specials"], parsed["normalizer"])
        else:
            table = dict(zip(parsed["ids"], parsed["tokens"]))
            if len(table) != len(parsed["ids"]):
                raise ValueError("an ordinary id is listed twice")
            unknown = [i for pair in parsed["merges"] for i in pair if i not in table]
            if unknown:
                raise ValueError(f"a merge names id {unknown[0]}, which is no ordinary token")
            merges = [(table[a], table[b]) for a, b in parsed["merges"]]
            tok = cls.from_merges(table, merges, parsed["pattern"], parsed["specials"],
                                  parsed["ignore_merges"], parsed["normalizer"])
    except ValueError as exc:
        raise CheckpointError(f"{path}: not a usable tokenizer: {exc}") from None
    for name, value in parsed["meta"].items():
        setattr(tok, name, value)
    return tok


def _parse(path, raw):
    """-> dict: pattern, normalizer, ids, tokens, merges (None: ranks), ignore_merges,
    specials, meta."""
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
    if first not in (f"{MAGIC} v1", f"{MAGIC} v2"):
        fail(1, f"unsupported format {first[len(MAGIC) + 1:]!r}; this microgpt reads "
                f"v1 and v{VERSION} (a newer microgpt wrote it?)")
    v2 = first.endswith("v2")
    out = {"pattern": _parse_pattern(line(2), lambda m: fail(2, m)), "normalizer": None,
           "merges": None, "ignore_merges": True, "meta": {}}
    number = 3
    if v2:
        match = re.fullmatch(r"normalizer (none|nfc)", line(3))
        if not match:
            fail(3, f"expected 'normalizer none|nfc', got {line(3)[:40]!r}")
        out["normalizer"] = None if match.group(1) == "none" else "nfc"
        number = 4

    def count(key, extra=""):
        nonlocal number
        match = re.fullmatch(key + " " + _COUNT + extra, line(number))
        if not match:
            fail(number, f"expected '{key} <count>', got {line(number)[:40]!r}")
        number += 1
        return match

    n_tokens = int(count("tokens").group(1))
    n_merges = 0
    if v2:
        if line(number) == "merges ranks":
            number += 1
        else:
            match = count("merges", " ignore_merges=([01])")
            n_merges, out["merges"] = int(match.group(1)), []
            out["ignore_merges"] = match.group(2) == "1"
    n_specials = int(count("specials").group(1))
    n_meta = int(count("meta").group(1)) if v2 else 0
    out["ids"], out["tokens"], out["specials"] = [], [], {}
    for k in range(n_tokens):
        match = _TOKEN_LINE.fullmatch(line(number))
        if not match or (int(match.group(1)) != k if not v2 else
                         out["ids"] and int(match.group(1)) <= out["ids"][-1]):
            want = f'{k} "<bytes>"' if not v2 else '<id> "<bytes>", ids ascending'
            fail(number, f"expected token line '{want}', got {line(number)[:40]!r}")
        out["ids"].append(int(match.group(1)))
        out["tokens"].append(_unescape_at(match.group(2), lambda m: fail(number, m)))
        number += 1
    for _ in range(n_merges):
        match = _MERGE_LINE.fullmatch(line(number))
        if not match:
            fail(number, f"expected 'merge <left id> <right id>', got {line(number)[:40]!r}")
        out["merges"].append((int(match.group(1)), int(match.group(2))))
        number += 1
    for _ in range(n_specials):
        match = _SPECIAL_LINE.fullmatch(line(number))
        if not match:
            fail(number, f"expected 'special <id> \"<text>\"', got {line(number)[:40]!r}")
        text = _unescape_at(match.group(2), lambda m: fail(number, m))
        try:
            out["specials"][text.decode("utf-8")] = int(match.group(1))
        except UnicodeDecodeError:
            fail(number, "special token is not valid UTF-8")
        number += 1
    for _ in range(n_meta):
        match = _META_LINE.fullmatch(line(number))
        if not match or match.group(1) not in METADATA:
            fail(number, f"expected 'meta <{'|'.join(METADATA)}> \"<text>\"', got "
                         f"{line(number)[:40]!r}")
        try:
            value = _unescape_at(match.group(2), lambda m: fail(number, m)).decode("utf-8")
        except UnicodeDecodeError:
            fail(number, "metadata is not valid UTF-8")
        if match.group(1) == "add_bos_token":
            if value not in ("true", "false"):
                fail(number, f"add_bos_token must be \"true\" or \"false\", got {value!r}")
            value = value == "true"
        out["meta"][match.group(1)] = value
        number += 1
    end = re.fullmatch(r"end sha256 ([0-9a-f]{64})", line(number))
    if not end:
        fail(number, f"expected 'end sha256 <hex>', got {line(number)[:40]!r}")
    body = b"".join(raw_line + b"\n" for raw_line in lines[:number - 1])
    if hashlib.sha256(body).hexdigest() != end.group(1):
        fail(number, "checksum mismatch: the file was edited or corrupted")
    if any(lines[number:]):
        fail(number + 1, "unexpected text after the end line")
    return out


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
