"""Tokenizer files, sources and streaming: save/load round trips, every way a file can be
broken (each must name the file and line), training sources (file, directory, list,
iterable, streamed blocks), the StreamDecoder, and the CLI.
"""
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microgpt import cli
from microgpt.errors import CheckpointError
from microgpt.tokenizer import StreamDecoder, Tokenizer, TokenizerError
from microgpt.tokenizer import fileformat, train as train_module

TEXT = ("def f(x):\n    return x * 2  # double it\n\nclass Caf\u00e9:\n    '''na\u00efve'''\n"
        "print('\U0001f600 done', 12345)\n\r\n\t\"quoted\\\\\" \x07\n") * 10 + "".join(
    f"row {i}: total_{i % 7} = {i * i} # {'abcdefghij'[i % 10] * (i % 5)}\n" for i in range(300))


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train([TEXT], 420, progress=False)


def saved(tok, tmp_path, name="tok.txt"):
    path = tmp_path / name
    tok.save(path)
    return path


# ------------------------------------------------------------------ file format

@given(data=st.binary(max_size=40) | st.text(max_size=20).map(lambda s: s.encode("utf-8",
                                                                                   "replace")))
def test_escape_round_trip(data):
    text = fileformat.escape(data)
    assert "\n" not in text and '"' not in text.replace('\\"', "")
    assert fileformat.unescape(text) == data


def test_save_load_round_trip(tok, tmp_path):
    path = saved(tok, tmp_path)
    back = Tokenizer.load(path)
    assert back.to_tiktoken_ranks() == tok.to_tiktoken_ranks()
    assert back.special_tokens == tok.special_tokens and back.pattern == tok.pattern
    assert back.encode(TEXT) == tok.encode(TEXT)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[:4] == ["microgpt-bpe v1", "pattern gpt4", f"tokens {tok.n_ordinary}",
                         "specials 3"]
    assert lines[4 + ord("a")] == f'{ord("a")} "a"'
    assert not list(tmp_path.glob("*.tmp*"))                # atomic write left nothing behind


def test_save_load_custom_pattern(tmp_path):
    tok = Tokenizer.train([TEXT], 300, pattern=r"\w+|[^\w\s]+|\s+", special_tokens=("<e>",),
                          progress=False)
    back = Tokenizer.load(saved(tok, tmp_path))
    assert back.pattern == r"\w+|[^\w\s]+|\s+" and back.encode(TEXT) == tok.encode(TEXT)


def corrupt_cases(text):
    lines = text.splitlines(keepends=True)
    yield "truncated", "".join(lines[:len(lines) // 2]), "file ends early"
    yield "no end line", "".join(lines[:-1]), "file ends early"
    yield "foreign", "hello world\n", ":1: not a microgpt tokenizer file"
    yield "empty", "", ":1: file ends early"
    yield "future version", text.replace("microgpt-bpe v1", "microgpt-bpe v9", 1), \
        ":1: unsupported format"
    yield "edited token", text.replace('"a"\n', '"b"\n', 1), "checksum mismatch"
    yield "bad id", text.replace('\n97 "a"\n', '\n98 "a"\n', 1), ":102: expected token line"
    yield "bad escape", text.replace('"a"\n', '"\\q"\n', 1), ":102: bad escape"
    yield "bad count", text.replace("tokens ", "tokens x", 1), ":3: expected 'tokens"
    yield "bad pattern", text.replace("pattern gpt4", "pattern (", 1), ":2: expected 'pattern"
    yield "trailing text", text + "more\n", "unexpected text after the end line"
    yield "duplicate token", _with_checksum(text.replace('\n98 "b"\n', '\n98 "a"\n', 1)), \
        "not a usable tokenizer"


def _with_checksum(text):
    body = text[:text.index("end sha256")]
    import hashlib
    return body + f"end sha256 {hashlib.sha256(body.encode()).hexdigest()}\n"


def test_corrupt_files_name_file_and_line(tok, tmp_path):
    good = saved(tok, tmp_path).read_text(encoding="utf-8")
    for name, text, message in corrupt_cases(good):
        path = tmp_path / f"{name.replace(' ', '_')}.txt"
        path.write_text(text, encoding="utf-8", newline="")
        with pytest.raises(CheckpointError) as info:
            Tokenizer.load(path)
        assert str(path) in str(info.value) and message in str(info.value), name
    binary = tmp_path / "binary.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(CheckpointError, match="binary.bin:1: not"):
        Tokenizer.load(binary)
    with pytest.raises(CheckpointError, match="no such tokenizer file"):
        Tokenizer.load(tmp_path / "missing.txt")


# ------------------------------------------------------------------ training sources

def test_sources_file_dir_list_and_iterable_agree(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.py").write_text(TEXT[:3000], encoding="utf-8")
    (tmp_path / "sub" / "b.txt").write_text(TEXT[3000:], encoding="utf-8", newline="")
    (tmp_path / "sub" / "c.bin").write_bytes(b"\x00\x01binary" * 100)    # skipped: binary
    (tmp_path / ".hidden").write_text("zzzzzzzz" * 100)                  # skipped: hidden
    want = Tokenizer.train([TEXT[:3000], TEXT[3000:]], 400, progress=False).to_tiktoken_ranks()
    for source in (str(tmp_path), tmp_path, [tmp_path / "a.py", str(tmp_path / "sub" / "b.txt")],
                   iter([TEXT[:3000], TEXT[3000:]])):
        assert Tokenizer.train(source, 400, progress=False).to_tiktoken_ranks() == want


def test_streamed_blocks_count_like_whole_files(tmp_path, monkeypatch):
    """Blocks far smaller than the file: cuts fall only before letter-initial lines, so the
    counts (and the merges) equal whole-text training, for both built-in patterns."""
    text = TEXT + "\n\n  12345\n\n\nword  \n  \n" * 30
    (tmp_path / "big.txt").write_text(text, encoding="utf-8", newline="")
    for pattern in ("gpt2", "gpt4"):
        want = Tokenizer.train([text], 450, pattern=pattern, progress=False)
        monkeypatch.setattr(train_module, "BLOCK_CHARS", 97)
        got = Tokenizer.train(tmp_path / "big.txt", 450, pattern=pattern, progress=False)
        monkeypatch.undo()
        assert got.to_tiktoken_ranks() == want.to_tiktoken_ranks()


def test_bad_sources(tmp_path):
    with pytest.raises(TokenizerError, match="no such file"):
        Tokenizer.train(str(tmp_path / "nope"), 300, progress=False)
    with pytest.raises(TokenizerError, match="mixes paths and texts"):
        Tokenizer.train([str(tmp_path), "not a path at all"], 300, progress=False)
    with pytest.raises(TokenizerError, match="not str"):
        Tokenizer.train(iter(["ok", 3]), 300, progress=False)
    with pytest.raises(TokenizerError, match="must be a path"):
        Tokenizer.train(b"bytes", 300, progress=False)


# ------------------------------------------------------------------ streaming decoder

@settings(deadline=None)
@given(ids=st.lists(st.integers(0, 419), max_size=40), text=st.text(max_size=20))
def test_stream_decoder_equals_decode(tok, ids, text):
    ids = ids + tok.encode(text)
    dec = StreamDecoder(tok)
    pieces = [dec.feed(i) for i in ids]
    assert "".join(pieces) + dec.flush() == tok.decode(ids)


def test_stream_decoder_holds_back_partial_characters():
    tok = Tokenizer.bytes_level()
    dec = StreamDecoder(tok)
    emoji = "\U0001f600".encode()
    assert [dec.feed(b) for b in emoji] == ["", "", "", "\U0001f600"]
    assert dec.feed(emoji[0]) == "" and dec.flush() == "\ufffd"
    assert dec.feed(0xff) == "\ufffd"                    # can never start a character
    with pytest.raises(TokenizerError):
        dec.feed(10**6)


# ------------------------------------------------------------------ CLI

def test_cli_train_encode_decode_info(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "tok.txt"
    assert cli.main(["tokenizer", "train", str(corpus), "-o", str(out), "--vocab-size", "300",
                     "--no-progress"]) == 0
    tok = Tokenizer.load(out)
    capsys.readouterr()
    assert cli.main(["tokenizer", "encode", str(out), "--text", "def f(x)<|endoftext|>",
                     "--allow-special"]) == 0
    ids = capsys.readouterr().out.split()
    assert [int(i) for i in ids] == tok.encode("def f(x)<|endoftext|>", allowed_special="all")
    assert cli.main(["tokenizer", "decode", str(out)] + ids) == 0
    assert capsys.readouterr().out == "def f(x)<|endoftext|>"
    assert cli.main(["tokenizer", "info", str(out), "--text", "return x"]) == 0
    assert "vocab_size=300" in capsys.readouterr().out
    assert cli.main(["tokenizer", "encode", str(out), "--text", "<|endoftext|>"]) == 2
    assert "disallowed" in capsys.readouterr().err
    assert cli.main(["tokenizer", "decode", str(out), "99999"]) == 2
    assert cli.main(["tokenizer", "info", str(tmp_path / "missing")]) == 2
    assert os.path.exists(out)
