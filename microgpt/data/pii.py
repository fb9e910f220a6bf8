"""PII scrubbing: personal identifiers replaced by typed placeholders.

    scrub("mail jo@example.org or +44 20 7946 0958") -> ("mail <EMAIL> or <PHONE>", {...})

Kinds, in the order they are replaced (earlier kinds win where matches would overlap):
  <EMAIL>        local@domain.tld; the TLD must be two letters (a country code) or one of
                 the common generic TLDs in _GENERIC_TLDS, so `x@w.weight` in code is kept.
  <IBAN>         two capital letters, two check digits, then the country's account
                 number, the whole of the country's fixed length (SWIFT IBAN registry), optionally
                 in groups of four separated by spaces; accepted only when the ISO 13616
                 checksum holds: move the first four characters to the end, replace letters
                 by 10..35, the number mod 97 must be 1.
  <CREDIT_CARD>  13-19 digits, optionally in space- or dash-separated groups, with an issuer
                 prefix (Visa 4, Mastercard 51-55 and 2221-2720, Amex 34/37, Discover 6011/
                 644-649/65, JCB 3528-3589, Diners 300-305/36/38) and a valid Luhn check
                 digit: double every second digit from the right, subtract 9 when above 9,
                 the sum must be 0 mod 10.
  <IP>           IPv4 dotted quads with octets 0-255, and IPv6 in full or "::" form. A quad
                 right after "v", "version", "ver", "release" is a version string and kept;
                 an IPv6 address needs a digit, a "::" form also a group of 3-4 hex digits (so C++ `abc::def`
                 and `std::max` are kept).
  <PHONE>        international numbers: "+" or "00", a 1-3 digit country code, then 6-14
                 more digits in groups; and national numbers with a separated structure:
                 "(555) 123-4567", "555-123-4567", "555.123.4567", "020 7946 0958" (space-
                 separated only with a trunk 0). Bare digit runs are never phones.

Guarding against false positives: every pattern refuses to start or end inside a longer
word, number or dotted chain (look-arounds on [\\w.]), so version strings (3.11.7, v1.2.3.4),
dates (2024-01-15, 15.01.2024), hex literals, UUIDs and ordinary integers and floats in code
are kept. Luhn-valid 13-19 digit numbers with an issuer prefix ARE treated as card numbers,
by design. Placeholders contain no digits or "@", so scrubbing is idempotent.
"""
import re
from typing import Dict, Tuple

_GENERIC_TLDS = (
    "com net org edu gov mil int info biz name pro mobi aero coop museum jobs travel tel asia "
    "xxx app dev io ai co me tv cloud online site tech store blog shop xyz email "
    "company solutions agency digital global news media network live club world").split()
_DOMAIN_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EMAIL = re.compile(
    r"(?<![\w.+%-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    rf"(?:{_DOMAIN_LABEL}\.)+(?:[A-Za-z]{{2}}|(?i:{'|'.join(_GENERIC_TLDS)}))(?![\w-]|\.\w)")

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
IBAN = re.compile(r"(?<![\w.])([A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?)(?![\w])")

CARD = re.compile(r"(?<![\w.+-])(\d(?:[ -]?\d){12,18})(?![\w]|[.,]\d|-\d)")
_CARD_PREFIX = re.compile(r"4|5[1-5]|2(?:22[1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720)|3[47]|"
                          r"6(?:011|4[4-9]|5)|35(?:2[89]|[3-8]\d)|3(?:0[0-5]|[68])")

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4 = re.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?![\w]|\.\d)")
_VERSION_BEFORE = re.compile(r"(?i)(?:\bv|\bversion|\bver\.?|\brelease)\s*[:=]?\s*$")
_H = r"[0-9A-Fa-f]{1,4}"
IPV6 = re.compile(
    rf"(?<![\w:.])(?:(?:{_H}:){{7}}{_H}"                       # full form, 8 groups
    rf"|(?:{_H}:){{1,7}}:(?:{_H}(?::{_H}){{0,6}})?"            # a::, a::b, a:b::c:d ...
    rf"|::{_H}(?::{_H}){{0,6}})(?![\w:]|\.\w)")                # ::b, ::b:c

PHONE = re.compile(
    r"(?<![\w.+-])(?:"
    r"(?:\+|\b00)[1-9]\d{0,2}(?:[ .-]?\(?\d{1,4}\)?){2,6}"     # +44 20 7946 0958, 0049-30-123
    r"|\(\d{2,4}\) ?\d{3,4}[ .-]\d{3,4}"                      # (555) 123-4567
    r"|\d{2,4}-\d{3,4}-\d{3,4}|\d{2,4}\.\d{3,4}\.\d{3,4}"     # 555-123-4567, 555.123.4567
    r"|0\d{1,4} \d{3,4} \d{3,4}"                              # 020 7946 0958
    r")(?![\w]|[.-]\d)")

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


def _card(match):
    digits = re.sub(r"[ -]", "", match.group())
    if 13 <= len(digits) <= 19 and _CARD_PREFIX.match(digits) and luhn_valid(digits):
        return "<CREDIT_CARD>"
    return match.group()


def _iban(match):
    return "<IBAN>" if iban_valid(match.group()) else match.group()


def _ipv4(match):
    before = match.string[max(0, match.start() - 12):match.start()]
    return match.group() if _VERSION_BEFORE.search(before) else "<IP>"


def _ipv6(match):
    text = match.group()
    if not _DIGIT.search(text) or ("::" in text and not re.search(r"[0-9A-Fa-f]{3,4}", text)):
        return text
    return "<IP>"


def _phone(match):
    digits = sum(ch.isdigit() for ch in match.group())
    return "<PHONE>" if 7 <= digits <= 15 else match.group()


# (kind, pattern, replacement) in the order they are applied.
_RULES = (
    ("EMAIL", EMAIL, "<EMAIL>"),
    ("IBAN", IBAN, _iban),
    ("CREDIT_CARD", CARD, _card),
    ("IP", IPV6, _ipv6),
    ("IP", IPV4, _ipv4),
    ("PHONE", PHONE, _phone),
)
_DIGIT = re.compile(r"\d")


def scrub(text: str) -> Tuple[str, Dict[str, int]]:
    """Text with every PII match replaced by its placeholder, and the count per kind."""
    counts: Dict[str, int] = {}
    if "@" not in text and not _DIGIT.search(text):    # every kind needs an "@" or a digit
        return text, counts
    for kind, pattern, repl in _RULES:
        if kind == "EMAIL" and "@" not in text:
            continue
        placeholder = f"<{kind}>"
        before = text.count(placeholder)
        text = pattern.sub(repl, text)
        found = text.count(placeholder) - before
        if found:
            counts[kind] = counts.get(kind, 0) + found
    return text, counts
