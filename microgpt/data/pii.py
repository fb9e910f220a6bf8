"""PII scrubbing: personal identifiers replaced by typed placeholders.

    scrub("mail jo@example.org or +44 20 7946 0958") -> ("mail <EMAIL> or <PHONE>", {...})

Kinds, in the order they are replaced (earlier kinds win where matches would overlap):
  <EMAIL>        local@domain.tld; the TLD must be two letters (a country code) or one of
                 the common generic TLDs in _GENERIC_TLDS, so `x@w.weight` in code is kept.
  <IBAN>         two capital letters, two check digits and the account number, exactly the
                 country's IBAN length (SWIFT IBAN registry), optionally in groups of four
                 separated by spaces; accepted only when the ISO 13616 checksum holds: move
                 the first four characters to the end, replace letters by 10..35, and the
                 number mod 97 must be 1.
  <CREDIT_CARD>  13-19 digits, unbroken or in groups of 4-6 separated by one space or one
                 dash throughout (4-4-4-4, 4-6-5, 4-4-4-4-3), with an issuer prefix (Visa 4,
                 Mastercard 51-55 and 2221-2720, Amex 34/37, Discover 6011/644-649/65, JCB
                 3528-3589, Diners 300-305/36/38) and a valid Luhn check digit: double every
                 second digit from the right, subtract 9 when above 9, sum = 0 mod 10.
  <IP>           IPv4 dotted quads with octets 0-255 (no leading zeros), and IPv6 in full or
                 "::" form. A quad right after "v", "version", "ver", "release" is a version
                 string and kept; an IPv6 address needs a digit, and a "::" form also a
                 group of 3-4 hex digits (so C++ `abc::def`, `std::max` and `::1` are kept).
  <PHONE>        international: "+" and a 1-3 digit country code, then digit groups; or
                 "00", the country code and groups separated by spaces or dashes. National,
                 only with a phone-like layout: "(555) 123-4567", "555-123-4567",
                 "555.123.4567", "020 7946 0958" (space-separated only after a trunk 0).
                 7-15 digits in all. A bare run of digits is never a phone.

False positives: all patterns are ASCII (re.ASCII: \\d is 0-9, \\w is [A-Za-z0-9_]) and
refuse to start or end inside a longer word, number or dotted chain, so version strings
(3.11.7, v1.2.3.4), dates (2024-01-15, 15.01.2024), times, hex literals, UUIDs, MAC
addresses and ordinary integers and floats in code are kept. A Luhn-valid 13-19 digit
number with an issuer prefix IS treated as a card, by design. Placeholders hold no digits,
"@", ":" or ".", so scrubbing is idempotent.

Neighbouring numbers: a greedy pattern can swallow the next number ("card 4111 1111 1111
1111 2222"), so cards, IBANs and phones are scanned by `_grouped`, which cuts the match at
the group boundary that validates.

Speed (tens of MB/s in pure Python): a text with no digit and no "@" is returned at once;
each kind runs only when its gate substring occurs in the text mapped through a
bytes.translate table (digits -> 0, letters -> A/a, ...), which costs ~1 ms per MB; and
every pattern starts with a character class rather than a look-behind, which lets the
regex engine skip quickly to candidate positions (the look-behind follows the first char).
"""
import re
from typing import Dict, Tuple

_GENERIC_TLDS = (
    "com net org edu gov mil int info biz name pro mobi aero coop museum jobs travel tel asia "
    "xxx app dev io ai co me tv cloud online site tech store blog shop xyz email "
    "company solutions agency digital global news media network live club world").split()
_DOMAIN_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EMAIL = re.compile(
    r"[A-Za-z0-9](?<![\w.+%-][A-Za-z0-9])[A-Za-z0-9._%+-]{0,63}@"
    rf"(?:{_DOMAIN_LABEL}\.)+(?:[A-Za-z]{{2}}|(?i:{'|'.join(_GENERIC_TLDS)}))(?![\w-]|\.\w)", re.ASCII)

# Total IBAN length per country, from the SWIFT IBAN registry.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20,
    "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18,
    "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "JO": 30,
    "KW": 30, "KZ": 20, "LB": 28, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24,
    "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28,
    "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SE": 24, "SI": 19, "SK": 24,
    "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}
IBAN = re.compile(r"[A-Z](?<![\w.][A-Z])[A-Z]\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?!\w)",
                  re.ASCII)

CARD = re.compile(r"[0-9](?<![\w.+-][0-9])(?:[0-9]{12,18}|[0-9]{3,5}([ -])[0-9]{4,6}(?:\1[0-9]{1,6}){1,3})"
                  r"(?![\w]|[.,]\d|-\d)", re.ASCII)
_CARD_PREFIX = re.compile(r"4|5[1-5]|2(?:22[1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720)|3[47]|"
                          r"6(?:011|4[4-9]|5)|35(?:2[89]|[3-8]\d)|3(?:0[0-5]|[68])")

# IP addresses: a loose candidate that starts with a character class (which the regex engine
# scans for quickly), then the exact rules in the callback (_ipv4, _ipv6).
IPV4 = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?![0-9])", re.ASCII)
_OCTET = re.compile(r"25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d", re.ASCII)
_VERSION_BEFORE = re.compile(r"(?i)(?:\bv|\bversion|\bver\.?|\brelease)\s*[:=]?\s*$")
IPV6 = re.compile(r"[0-9A-Fa-f:][0-9A-Fa-f]{0,3}:[0-9A-Fa-f:]+", re.ASCII)
_H = r"[0-9A-Fa-f]{1,4}"
_IPV6_EXACT = re.compile(
    rf"(?:{_H}:){{7}}{_H}"                                   # full form, 8 groups
    rf"|(?:{_H}:){{1,7}}:(?:{_H}(?::{_H}){{0,6}})?"            # a::, a::b, a:b::c:d ...
    rf"|::{_H}(?::{_H}){{0,6}}", re.ASCII)                    # ::b, ::b:c
_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")

_PHONE_GROUPS = r"[1-9]\d{0,2}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{1,4}){2,5}"
PHONE = re.compile(
    r"(?=[+(0-9])(?:"                                         # cheap first-character scan
    rf"\+(?<![\w.+:/-]\+){_PHONE_GROUPS}"                       # +44 20 7946 0958, +1-202-...
    rf"|0(?<![\w.+:/-]0)0[1-9]\d{{0,2}}(?:[ -]\d{{1,8}}){{2,5}}"          # 0049 30 1234567
    r"|\((?<![\w.+:/-]\()\d{2,4}\) ?\d{3,4}[ .-]\d{3,4}"           # (555) 123-4567
    r"|\d(?<![\w.+:/-]\d)\d{1,3}(?:-\d{3,4}-\d{3,4}|\.\d{3,4}\.\d{3,4})"  # 555-123-4567
    r"|0(?<![\w.+:/-]0)\d{1,4} \d{3,4} \d{3,4}"                   # 020 7946 0958
    r")(?![\w]|[.:/-]\d)", re.ASCII)

PLACEHOLDERS = ("<EMAIL>", "<IBAN>", "<CREDIT_CARD>", "<IP>", "<PHONE>")


def luhn_valid(digits: str) -> bool:
    """Luhn: from the right, double every second digit (minus 9 above 9); sum % 10 == 0."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    """ISO 13616 / ISO 7064 mod 97-10 check on an IBAN with spaces removed."""
    iban = candidate.replace(" ", "")
    if _IBAN_LENGTHS.get(iban[:2]) != len(iban):
        return False
    rearranged = iban[4:] + iban[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)   # A=10 ... Z=35
    return int(number) % 97 == 1


def _grouped(pattern, valid, placeholder):
    """A replacer for numbers in groups (cards, IBANs, phones). The greedy pattern may run
    into a neighbouring number, which can be PII itself, so at each match: replace the
    longest prefix ending at a group boundary (before a space or dash) that passes `valid`
    and is followed by the start of another valid match, else the longest valid prefix;
    then scan on right after the replaced part. With no valid prefix, scan on after the
    first group."""
    def starts_match(text, pos):
        m = pattern.match(text, pos)
        return m is not None and any(valid(m.group()[:c]) for c in _cuts(m.group()))

    def replace(text):
        out, pos = [], 0
        while True:
            match = pattern.search(text, pos)
            if match is None:
                break
            cand, start = match.group(), match.start()
            good = [c for c in reversed(_cuts(cand)) if valid(cand[:c])]   # longest first
            split = [c for c in good if c < len(cand) and starts_match(text, start + c + 1)]
            cut = split[0] if split else good[0] if good else None
            if cut is not None:
                out.append(text[pos:start] + placeholder)
                pos = start + cut
            else:
                skip = _cuts(cand)[0]
                out.append(text[pos:start + skip])
                pos = start + skip
        out.append(text[pos:])
        return "".join(out)
    return replace


def _cuts(cand):
    """Group boundaries of a candidate: before each space or dash, and its end."""
    return [i for i, ch in enumerate(cand) if ch in " -"] + [len(cand)]


def _card_valid(text: str) -> bool:
    digits = text.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and bool(_CARD_PREFIX.match(digits)) and luhn_valid(digits)


def _ipv4(match):
    text, start, end = match.string, match.start(), match.end()
    if start and text[start - 1] in _WORD_CHARS | {"."} or end < len(text) and (
            text[end] in _WORD_CHARS or text[end] == "." and text[end + 1:end + 2].isdigit()):
        return match.group()                          # part of a longer word or dotted chain
    if not all(_OCTET.fullmatch(o) for o in match.group().split(".")):
        return match.group()                          # an octet above 255 or with a leading 0
    if _VERSION_BEFORE.search(text[max(0, start - 12):start]):
        return match.group()                          # "v1.2.3.4", "version 10.0.0.1"
    return "<IP>"


def _ipv6(match):
    text, start, end = match.string, match.start(), match.end()
    cand = match.group()
    if start and text[start - 1] in _WORD_CHARS | {".", ":"} or end < len(text) and (
            text[end] in _WORD_CHARS or text[end] == "." and text[end + 1:end + 2].isalnum()):
        return cand
    if not _IPV6_EXACT.fullmatch(cand) or not _DIGIT.search(cand) or \
            ("::" in cand and not re.search(r"[0-9A-Fa-f]{3,4}", cand)):
        return cand
    return "<IP>"


def _phone_valid(text):
    return 7 <= sum(ch.isdigit() for ch in text) <= 15


def _table(cls):
    """A bytes.translate table: byte c -> cls(chr(c)) (one character) or c itself."""
    return bytes(ord(cls(chr(c)) or chr(c)) if c < 128 else c for c in range(256))


_CLASSES = _table(lambda ch: "0" if ch.isdigit() else "A" if ch.isupper() else
                  "a" if ch.islower() else None)
_EMAIL_CHARS = _table(lambda ch: "w" if ch.isalnum() or ch in "._%+-" else None)
_HEX = _table(lambda ch: "h" if ch in "0123456789abcdefABCDEF" else None)

def _sub(pattern, repl):
    return lambda text: pattern.sub(repl, text)


# (kind, replacer, gate table, gate substrings) in the order they are applied.
_IPV4_GATE = re.compile(rb"\.0{1,3}\.0{1,3}\.0")           # starts with a literal: fast scan

# (kind, replacer, gate table, gates) in the order they are applied; a gate is a substring
# or a compiled bytes pattern that the mapped text must contain.
_RULES = (
    ("EMAIL", _sub(EMAIL, "<EMAIL>"), _EMAIL_CHARS, (b"w@w",)),          # [...]@[A-Za-z0-9]
    ("IBAN", _grouped(IBAN, iban_valid, "<IBAN>"), _CLASSES, (b"AA00",)),  # [A-Z]{2}\d{2}
    ("CREDIT_CARD", _grouped(CARD, _card_valid, "<CREDIT_CARD>"), _CLASSES, (b"0000",)),
    ("IP", _sub(IPV6, _ipv6), _HEX, (b"h:h", b"h::", b"::h")),
    ("IP", _sub(IPV4, _ipv4), _CLASSES, (_IPV4_GATE,)),
    # "+" and a digit | "(0) 0" | digit, space or dash, digit | "0.000.0" (one per branch)
    ("PHONE", _grouped(PHONE, _phone_valid, "<PHONE>"), _CLASSES,
     (b"+0", b"0) 0", b"0)0", b"0 0", b"0-0", b"0.000.0")),
)
_DIGIT = re.compile(r"\d")


def _passes(gate, mapped: bytes) -> bool:
    return gate in mapped if isinstance(gate, bytes) else gate.search(mapped) is not None


def scrub(text: str) -> Tuple[str, Dict[str, int]]:
    """Text with every PII match replaced by its placeholder, and the count per kind."""
    counts: Dict[str, int] = {}
    if "@" not in text and not _DIGIT.search(text):    # every kind needs an "@" or a digit
        return text, counts
    data, mapped = None, {}
    for kind, replace, table, gates in _RULES:
        if data is None:
            data = text.encode("utf-8", "surrogatepass")
        if table not in mapped:
            mapped[table] = data.translate(table)
        if not any(_passes(g, mapped[table]) for g in gates):
            continue
        placeholder = f"<{kind}>"
        before = text.count(placeholder)
        text = replace(text)
        found = text.count(placeholder) - before
        if found:
            counts[kind] = counts.get(kind, 0) + found
            data, mapped = None, {}                    # the text changed: map it again
    return text, counts
