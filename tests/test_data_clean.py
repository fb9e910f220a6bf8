"""Tests for microgpt.data.clean.normalize: each step on hand-made cases, mojibake repair
against Python's own codecs as the oracle, and idempotence on generated text."""
import unicodedata

from hypothesis import given, settings, strategies as st

from microgpt.data.clean import fix_mojibake, normalize


def test_line_endings_and_blank_lines():
    assert normalize("a\r\nb\rc\x85d\u2028e\u2029f") == "a\nb\nc\nd\ne\nf"
    assert normalize("\n\n  \nfirst\n\n\n\n\nsecond\n\n") == "first\n\nsecond"


def test_trailing_whitespace_stripped_indentation_kept():
    assert normalize("def f():  \n\treturn  1\t \n") == "def f():\n\treturn  1"


def test_nfc():
    assert normalize("e\u0301") == "\u00e9"
    assert normalize("A\u030a") == unicodedata.normalize("NFC", "A\u030a")


def test_controls_and_invisible_removed_zwj_kept():
    assert normalize("a\x00b\x07c\x1bd\x7fe\x9ff") == "abcdef"
    assert normalize("zero\u200bwidth\u2060 soft\u00adhyphen\ufeff") == "zerowidth softhyphen"
    family = "\U0001F468\u200d\U0001F469\u200d\U0001F467"
    assert normalize(family) == family                # ZWJ joins an emoji sequence
    assert normalize("\ud800x") == "x"                 # lone surrogate


def test_unicode_spaces_become_ascii_space():
    assert normalize("a\u00a0b\u2003c\u3000d") == "a b c d"


def test_mojibake_matches_codec_oracle():
    # The oracle: encode with UTF-8, decode with cp1252 (or latin-1) = the damage we undo.
    for original in ["café", "naïve résumé", "“quoted” – dash…", "Größe", "€100", "日本語",
                     "emoji 🎉", "Ωμέγα", "Ação"]:
        broken = original.encode("utf-8").decode("cp1252", errors="ignore")
        if broken.encode("cp1252", errors="ignore").decode("utf-8", errors="ignore") == original:
            assert fix_mojibake(broken) == original, (original, broken)
        latin = original.encode("utf-8").decode("latin-1")
        assert fix_mojibake(latin) == original, (original, latin)
    double = "é".encode("utf-8").decode("cp1252").encode("utf-8").decode("cp1252")
    assert normalize(double) == "é"


def test_mojibake_leaves_real_latin1_text_alone():
    # a lead character followed by no continuation character is ordinary text
    for text in ["Ã la carte", "voilà Â", "Âge", "â x", "ÃÃ"]:
        assert fix_mojibake(text) == text
    # and a real pair is repaired even next to ordinary text
    assert fix_mojibake("price: 5 Â£, Ã©t") == "price: 5 £, ét"


def test_ascii_fast_path_agrees_with_slow_path():
    text = "plain  \r\n\x01text\t\n\n\n\nend \t"
    assert normalize(text) == "plain\ntext\n\nend"
    assert normalize(text + "\n\u00e9") == "plain\ntext\n\nend\n\u00e9"


awkward = st.text(alphabet=st.sampled_from(
    list("ab é\n\r\t ") + ["\u200b", "\u00a0", "\x00", "\x85", "\u0301", "Ã", "©", "â", "€",
                          "\x9d", "\u2028", "\ufeff", "\U0001F600", "\u00ad", "Â"]), max_size=60)


@settings(max_examples=300, deadline=None)
@given(st.one_of(awkward, st.text(max_size=60)))
def test_idempotent(text):
    once = normalize(text)
    assert normalize(once) == once
    assert "\r" not in once and "\u200b" not in once
    assert unicodedata.is_normalized("NFC", once)
