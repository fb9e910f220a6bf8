"""Text normalization: the first stage of `microgpt data clean`.

    normalize("cafÃ©\\r\\nzero\\u200bwidth  \\n\\n\\n\\nend") == "café\\nzerowidth\\n\\nend"

In order, `normalize` does:
  1. Removal of C0 control characters other than tab, newline and carriage return.
  2. Unicode NFC, so "e" + COMBINING ACUTE and "é" are the same string (and hash the same
     in exact dedup); then mojibake repair (`fix_mojibake`, see below); then NFC again.
  3. Line endings: CRLF, CR, NEL (U+0085), LINE/PARAGRAPH SEPARATOR (U+2028/9) -> "\\n".
  4. Removal of control characters (category Cc except "\\n" and "\\t"), lone surrogates, and
     invisible format characters that carry no meaning in running text: ZERO WIDTH SPACE
     U+200B, WORD JOINER U+2060, BOM/ZWNBSP U+FEFF, SOFT HYPHEN U+00AD, MONGOLIAN VOWEL
     SEPARATOR U+180E. ZWJ/ZWNJ (U+200D/U+200C) are kept: emoji sequences and Persian or
     Indic spelling need them.
  5. Whitespace: Unicode space separators (NBSP, EN/EM spaces, U+3000 ...) become " ";
     trailing whitespace is stripped from every line; runs of more than one blank line
     become one blank line; leading and trailing blank lines are removed. Indentation and
     interior runs of spaces are kept, because code and tables depend on them.
Text with any non-ASCII character goes through these steps again until nothing changes
(rarely more than twice), so that a removal that joins the halves of a mojibake sequence
cannot leave work for a second call: normalize is idempotent by construction.

Mojibake heuristic (the common case only, a small cousin of what ftfy does): UTF-8 text that
was decoded as Windows-1252 (or Latin-1) turns each non-ASCII character into 2-4 characters:
a lead character for the bytes 0xC2-0xF4 ("Â", "Ã", "â" ...) followed by 1-3 characters for
continuation bytes 0x80-0xBF ("©", "€", "\\x9d" ...). We find exactly those sequences with a
regular expression, map each character back to its byte, and replace the sequence when the
bytes are valid UTF-8 for ONE character outside ASCII. A match that does not decode is left
alone, so ordinary Latin-1 text such as "Ã la carte" is untouched. Repeated until nothing
changes (each round shortens the text), which also undoes double encoding
("ÃƒÂ©" -> "Ã©" -> "é").
"""
import re
import unicodedata

# byte -> the character Windows-1252 decodes it to; the five bytes cp1252 leaves undefined
# (0x81 0x8D 0x8F 0x90 0x9D) decode as Latin-1 does, to the C1 control of the same value.
_CP1252 = {}
for _byte in range(256):
    try:
        _CP1252[_byte] = bytes([_byte]).decode("cp1252")
    except UnicodeDecodeError:
        _CP1252[_byte] = chr(_byte)
_TO_BYTE = {ch: byte for byte, ch in _CP1252.items()}
# Text decoded as Latin-1 instead keeps the C1 controls U+0080-U+009F: map those back too.
_TO_BYTE.update({chr(b): b for b in range(0x80, 0xA0)})


def _char_class(byte_lo, byte_hi):
    chars = {_CP1252[b] for b in range(byte_lo, byte_hi + 1)}
    chars |= {chr(b) for b in range(byte_lo, byte_hi + 1) if 0x80 <= b < 0xA0}
    return "".join(re.escape(ch) for ch in sorted(chars))


_CONT = f"[{_char_class(0x80, 0xBF)}]"
# A UTF-8 sequence seen through cp1252: lead byte of a 2-, 3- or 4-byte sequence, then its
# continuation bytes (UTF-8: 110xxxxx 10xxxxxx | 1110xxxx 10xxxxxx{2} | 11110xxx 10xxxxxx{3}).
_MOJIBAKE = re.compile(
    f"[{_char_class(0xC2, 0xDF)}]{_CONT}"
    f"|[{_char_class(0xE0, 0xEF)}]{_CONT}{{2}}"
    f"|[{_char_class(0xF0, 0xF4)}]{_CONT}{{3}}")

_C0 = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NEWLINES = re.compile("\r\n|[\r\x85\u2028\u2029]")
_INVISIBLE = "\u200b\u2060\ufeff\u00ad\u180e"
# Cc minus \t and \n, the invisible format characters above, and lone surrogates.
_REMOVE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f" + _INVISIBLE + "\ud800-\udfff]")
# Unicode space separators (category Zs) other than the ASCII space.
_SPACES = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_TRAILING = re.compile("[ \t]+$", re.MULTILINE)
_BLANK_RUNS = re.compile("\n{3,}")


def _repair(match):
    seq = match.group()
    try:
        fixed = bytes(_TO_BYTE[ch] for ch in seq).decode("utf-8")
    except UnicodeDecodeError:
        return seq
    return fixed if len(fixed) == 1 and ord(fixed) >= 0x80 else seq


def fix_mojibake(text: str) -> str:
    """Undo UTF-8-read-as-cp1252 sequences (see the module docstring), to a fixed point."""
    while True:
        fixed = _MOJIBAKE.sub(_repair, text)
        if fixed == text:
            return text
        text = fixed


def _normalize_once(text: str) -> str:
    # Each substitution is skipped when a cheap substring test shows it has nothing to do:
    # `in` and bytes.translate run at GB/s, a regex scan at tens of MB/s.
    ascii_only = text.isascii()
    if not ascii_only or _has_control(text):
        text = _C0.sub("", text)
    if not ascii_only:
        text = unicodedata.normalize("NFC", text)
        text = fix_mojibake(text)
        text = unicodedata.normalize("NFC", text)
    if not ascii_only or "\r" in text:
        text = _NEWLINES.sub("\n", text)
    if not ascii_only or _has_control(text):
        text = _REMOVE.sub("", text)
    if not ascii_only:
        text = _SPACES.sub(" ", text)
    if " \n" in text or "\t\n" in text or text.endswith((" ", "\t")):
        text = _TRAILING.sub("", text)
    if "\n\n\n" in text:
        text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip("\n")


_CONTROL_BYTES = bytes(range(0x00, 0x09)) + bytes(range(0x0B, 0x20)) + b"\x7f"


def _has_control(ascii_text: str) -> bool:
    """Whether ASCII text holds a control character other than tab and newline."""
    data = ascii_text.encode("ascii")
    return len(data.translate(None, _CONTROL_BYTES)) != len(data)


def normalize(text: str) -> str:
    """The normalized form of one document (idempotent: normalize(normalize(t)) == normalize(t))."""
    text = _normalize_once(text)
    while not text.isascii():
        again = _normalize_once(text)
        if again == text:
            break
        text = again
    return text
