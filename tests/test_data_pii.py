"""Tests for microgpt.data.pii: planted identifiers never survive, code and numbers are
left alone, and the validators agree with published test vectors."""

import pytest
from hypothesis import given, settings, strategies as st

from microgpt.data.pii import PLACEHOLDERS, iban_valid, luhn_valid, scrub

# Published test numbers (issuers' documented test cards) and IBAN registry examples.
CARDS = ["4111111111111111", "4012888888881881", "5555555555554444", "5105105105105100",
         "378282246310005", "371449635398431", "6011111111111117", "3530111333300000",
         "2223003122003222", "30569309025904"]
IBANS = ["GB82WEST12345698765432", "DE89370400440532013000", "FR1420041010050500013M02606",
         "NL91ABNA0417164300", "CH9300762011623852957", "ES9121000418450200051332",
         "BE68539007547034", "NO9386011117947"]
EMAILS = ["jane.doe@example.com", "a+tag@sub.domain.co.uk", "x_y-z@mail.io", "Bob@EXAMPLE.ORG"]
PHONES = ["+44 20 7946 0958", "+1-202-555-0143", "+49 30 1234567", "(555) 123-4567",
          "555-123-4567", "555.123.4567", "020 7946 0958", "0049 30 1234567",
          "+33 1 23 45 67 89", "+81 3-1234-5678"]
IPS = ["192.168.0.1", "8.8.8.8", "255.255.255.255", "2001:db8::8a2e:370:7334",
       "2001:0db8:85a3:0000:0000:8a2e:0370:7334", "fe80::1ff:fe23:4567:890a"]


def _group(digits, sep, sizes):
    out, i = [], 0
    for n in sizes:
        out.append(digits[i:i + n])
        i += n
    return sep.join(out)


def test_luhn_and_iban_vectors():
    assert all(luhn_valid(c) for c in CARDS)
    assert not any(luhn_valid(c[:-1] + str((int(c[-1]) + 1) % 10)) for c in CARDS)
    assert all(iban_valid(i) for i in IBANS)
    # one changed digit breaks mod 97; a wrong length for the country is refused
    assert not iban_valid("GB82WEST12345698765433")
    assert not iban_valid("GB82WEST1234569876543")


PLANTED = [(v, "<CREDIT_CARD>") for v in CARDS] + \
    [(_group(CARDS[0], " ", (4, 4, 4, 4)), "<CREDIT_CARD>"),
     (_group(CARDS[2], "-", (4, 4, 4, 4)), "<CREDIT_CARD>"),
     (_group(CARDS[4], " ", (4, 6, 5)), "<CREDIT_CARD>")] + \
    [(v, "<IBAN>") for v in IBANS] + [(_group(IBANS[0], " ", (4,) * 5 + (2,)), "<IBAN>")] + \
    [(v, "<EMAIL>") for v in EMAILS] + [(v, "<PHONE>") for v in PHONES] + \
    [(v, "<IP>") for v in IPS]
CONTEXTS = ["{}", "contact: {}", "({})", "<td>{}</td>", "'{}',", "{}.", "see {}; thanks",
            "line1\n{}\nline3", '"value": "{}"', "→ {} ←"]


@pytest.mark.parametrize("value,placeholder", PLANTED)
def test_planted_pii_replaced_in_every_context(value, placeholder):
    for ctx in CONTEXTS:
        out, counts = scrub(ctx.format(value))
        assert out == ctx.format(placeholder), (ctx, value, out)
        assert sum(counts.values()) == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(PLANTED), min_size=1, max_size=6),
       st.lists(st.sampled_from(["the", "call", "or", "at", "mail", "Tel:", "IBAN", "card",
                                 "\n", "2024-01-15", "v3.11.7", "x = 42", ","]), max_size=12),
       st.randoms(use_true_random=False))
def test_planted_pii_never_survives_in_generated_text(pii, filler, rnd):
    pieces = [v for v, _ in pii] + filler
    rnd.shuffle(pieces)
    text = " ".join(pieces)
    out, counts = scrub(text)
    for value, _ in pii:
        assert value not in out, (value, out)
    assert sum(counts.values()) == len(pii)
    assert scrub(out) == (out, {})                       # idempotent


CODE = '''\
import numpy as np  # numpy 1.26.4, python 3.11.7, released 2024-01-15
VERSION = "1.2.3"; __version__ = "10.4.0.dev3"; build = "v1.2.3.4"
x = 1234567890; y = 3.14159265; z = 0xdeadbeef; big = 12345678901234567890123
shape = (128, 256, 1024); w = np.zeros((1024, 4096)); t = "12:30:45"; d = "15.01.2024"
uuid = "123e4567-e89b-12d3-a456-426614174000"; sha = "9f86d081884c7d659a2feaa0c55ad015"
std::vector<int> v; std::max(a, b); Foo::bar(); ratio = 16/9; port = 8080; ms = 1.5e-3
mac = "00:1a:2b:3c:4d:5e"; oid = "1.3.6.1.4.1.311"; y = x@w.T; r = a@b.weight
for i in range(0, 100000, 250): total += i * 1000 - 2048
print(f"{step:06d} loss 2.3456 lr 3e-4 tokens 1048576 eta 00:12:34")
'''


def test_code_and_numbers_untouched():
    out, counts = scrub(CODE)
    assert counts == {} and out == CODE


numbers = st.one_of(
    st.integers(min_value=0, max_value=10 ** 12 - 1).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(min_value=0, max_value=2 ** 64).map(hex),
    st.tuples(*[st.integers(0, 99)] * 3).map(lambda v: "%d.%d.%d" % v),           # versions
    st.tuples(st.integers(1900, 2100), st.integers(1, 12), st.integers(1, 28))
      .map(lambda v: "%04d-%02d-%02d" % v),                                        # dates
    st.tuples(st.integers(1, 28), st.integers(1, 12), st.integers(1900, 2100))
      .map(lambda v: "%02d/%02d/%04d" % v),
    st.tuples(st.integers(0, 23), st.integers(0, 59), st.integers(0, 59))
      .map(lambda v: "%02d:%02d:%02d" % v),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(numbers, st.sampled_from([" ", ", ", " = ", "(", ")", "; ", "\n",
                                                    " + ", "[", "]", ":", "/", " - ", " * "])),
                max_size=20))
def test_generated_code_numbers_untouched(parts):
    text = "".join(n + sep for n, sep in parts)
    out, counts = scrub(text)
    assert counts == {} and out == text


def test_near_misses_kept():
    for text in ["4111111111111112",              # Luhn fails
                 "1234567812345670",              # Luhn ok, no issuer prefix
                 "GB82WEST12345698765433",        # IBAN checksum fails
                 "256.1.1.1", "1.2.3.4.5", "version 10.0.0.1", "v1.2.3.4",
                 "abc::def", "std::max", "user@localhost", "a@b.c"]:
        assert scrub(text) == (text, {}), text


def test_counts_by_kind():
    text = f"{EMAILS[0]} {EMAILS[1]} {PHONES[0]} {IPS[0]} {CARDS[0]} {IBANS[0]}"
    out, counts = scrub(text)
    assert out == "<EMAIL> <EMAIL> <PHONE> <IP> <CREDIT_CARD> <IBAN>"
    assert counts == {"EMAIL": 2, "PHONE": 1, "IP": 1, "CREDIT_CARD": 1, "IBAN": 1}


def test_placeholders_cannot_match_again():
    for p in PLACEHOLDERS:
        assert not any(ch.isdigit() or ch in "@:." for ch in p)
        assert scrub(f"x {p} y") == (f"x {p} y", {})
