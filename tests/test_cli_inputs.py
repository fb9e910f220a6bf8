"""What the commands read: inputs must exist and be text, every file they parse is checked
and named in a one-line error, and bad inputs are refused before any expensive work."""
import gzip
import json
import os

import pytest

import microgpt.train.data as train_data
from microgpt.cli import main
from microgpt.data.sources import DataError
from microgpt.errors import CheckpointError
from microgpt.tokenizer import Tokenizer, TokenizerError
from train_helpers import byte_tokenizer, tiny_corpus


def one_line_error(capsys, command):
    """The command's stderr must be exactly one `microgpt COMMAND: error: ...` line."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"microgpt {command}: error: "), err
    return lines[0]


def text_file(tmp_path, name="a.txt", text="hello world, this is some text\n" * 20):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def binary_file(tmp_path, name="blob.dat"):
    path = tmp_path / name
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)) * 8)
    return str(path)


@pytest.fixture
def no_tokenizer_training(monkeypatch):
    """Fails the test if a command starts training a tokenizer (the expensive part)."""
    def refuse(*args, **kwargs):
        raise AssertionError("tokenizer training started before the inputs were checked")
    monkeypatch.setattr(train_data, "train_tokenizer", refuse)
    monkeypatch.setattr(Tokenizer, "train", classmethod(lambda cls, *a, **k: refuse()))


# --- tokenizer train ----------------------------------------------------------------------

def test_tokenizer_train_refuses_a_missing_path_instead_of_training_on_its_name(tmp_path, capsys):
    out = tmp_path / "t.bpe"
    assert main(["tokenizer", "train", str(tmp_path / "corpsu.txt"), "-o", str(out),
                 "--vocab-size", "260", "--no-progress"]) == 2
    line = one_line_error(capsys, "tokenizer")
    assert "corpsu.txt" in line and "no such file or directory" in line
    assert not out.exists()
    # one missing path among good ones is refused too
    assert main(["tokenizer", "train", text_file(tmp_path), str(tmp_path / "gone"), "-o",
                 str(out), "--vocab-size", "260", "--no-progress"]) == 2
    assert "gone" in one_line_error(capsys, "tokenizer")


def test_tokenizer_train_refuses_a_binary_file_like_data_prepare(tmp_path, capsys):
    blob = binary_file(tmp_path)
    out = tmp_path / "t.bpe"
    assert main(["tokenizer", "train", blob, "-o", str(out), "--vocab-size", "260",
                 "--no-progress"]) == 2
    assert "looks binary" in one_line_error(capsys, "tokenizer") and not out.exists()
    assert main(["data", "prepare", blob, "-o", str(tmp_path / "d"), "--no-progress"]) == 2
    assert "looks binary" in one_line_error(capsys, "data")
    with pytest.raises(TokenizerError, match="looks binary"):           # the API as well
        Tokenizer.train([blob], 260, progress=False)


def test_tokenizer_train_refuses_an_input_directory_without_text(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".hidden").write_text("not read")
    only_binary = tmp_path / "bin"
    only_binary.mkdir()
    binary_file(only_binary)
    for directory in (empty, only_binary):
        assert main(["tokenizer", "train", str(directory), "-o", str(tmp_path / "t.bpe"),
                     "--vocab-size", "260", "--no-progress"]) == 2
        assert "no text files" in one_line_error(capsys, "tokenizer")


def test_tokenizer_train_with_a_bad_pattern_is_a_one_line_error(tmp_path, capsys):
    assert main(["tokenizer", "train", text_file(tmp_path), "-o", str(tmp_path / "t.bpe"),
                 "--pattern", "([", "--no-progress"]) == 2
    line = one_line_error(capsys, "tokenizer")
    assert "--pattern" in line and "not a valid regex" in line
    with pytest.raises(TokenizerError, match="not a valid regex"):
        Tokenizer.train(["some text"], 260, pattern="([", progress=False)


def test_tokenizer_train_still_takes_texts_through_the_api():
    tok = Tokenizer.train(["hello hello hello world"], 260, progress=False)
    assert tok.vocab_size == 260


def test_tokenizer_train_refuses_an_output_that_is_a_directory(tmp_path, capsys,
                                                                no_tokenizer_training):
    assert main(["tokenizer", "train", text_file(tmp_path), "-o", str(tmp_path),
                 "--no-progress"]) == 2
    assert "is a directory" in one_line_error(capsys, "tokenizer")


def test_tokenizer_encode_of_a_file_that_is_not_utf8_is_a_one_line_error(tmp_path, capsys):
    tok = byte_tokenizer(tmp_path)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    assert main(["tokenizer", "encode", tok, "--file", str(latin1)]) == 2
    line = one_line_error(capsys, "tokenizer")
    assert "latin1.txt" in line and "UTF-8" in line


def test_tokenizer_commands_name_a_corrupt_tokenizer_file(tmp_path, capsys):
    bad = tmp_path / "bad.bpe"
    bad.write_text("microgpt-bpe v1\npattern gpt4\ntokens x\n")
    for command in (["encode", str(bad), "--text", "hi"], ["decode", str(bad), "1"],
                    ["info", str(bad)]):
        assert main(["tokenizer"] + command) == 2
        assert "bad.bpe:3" in one_line_error(capsys, "tokenizer")


# --- data prepare / data clean ------------------------------------------------------------

def test_data_prepare_checks_its_inputs_before_training_a_tokenizer(tmp_path, capsys,
                                                                    no_tokenizer_training):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["data", "prepare", str(empty), "-o", str(tmp_path / "d"), "--no-progress"]) == 2
    assert "no files" in one_line_error(capsys, "data")
    assert main(["data", "prepare", str(tmp_path / "missing"), "-o", str(tmp_path / "d"),
                 "--no-progress"]) == 2
    assert "does not exist" in one_line_error(capsys, "data")
    afile = text_file(tmp_path)
    assert main(["data", "prepare", afile, "-o", afile, "--no-progress"]) == 2
    assert "not a directory" in one_line_error(capsys, "data")
    assert not (tmp_path / "d").exists()


def test_data_prepare_of_inputs_with_no_documents_stops_before_the_bpe(tmp_path, capsys):
    only_binary = tmp_path / "bin"
    only_binary.mkdir()
    binary_file(only_binary)
    assert main(["data", "prepare", str(only_binary), "-o", str(tmp_path / "d"),
                 "--no-progress"]) == 2
    assert "no documents" in one_line_error(capsys, "data")


def test_data_clean_toml_of_the_wrong_types_is_a_one_line_error(tmp_path, capsys):
    corpus = text_file(tmp_path)
    toml = tmp_path / "clean.toml"
    for body, word in (('batch_docs = "many"\n', "batch_docs"),
                       ('[filters]\nmin_words = "ten"\n', "min_words"),
                       ("[dedup]\nthreshold = nan\n", "threshold"),
                       ("filters = 3\n", "filters"),
                       ("normalize = 1\n", "normalize"),
                       ("[filters\n", "clean.toml")):
        toml.write_text(body)
        assert main(["data", "clean", corpus, "-o", str(tmp_path / "o.jsonl"), "--config",
                     str(toml), "--no-progress"]) == 2, body
        line = one_line_error(capsys, "data")
        assert word in line and "clean.toml" in line, (body, line)
    assert not (tmp_path / "o.jsonl").exists()


def test_data_clean_refuses_a_missing_input_before_writing(tmp_path, capsys):
    assert main(["data", "clean", str(tmp_path / "nope"), "-o", str(tmp_path / "o.jsonl"),
                 "--no-progress"]) == 2
    assert "does not exist" in one_line_error(capsys, "data")
    assert not (tmp_path / "o.jsonl").exists()


# --- outputs into missing directories: created, as the help says -------------------------

def test_every_output_flag_creates_missing_directories(tmp_path, capsys):
    corpus = text_file(tmp_path, text="The quick brown fox jumps over the lazy dog. " * 40)
    bpe = tmp_path / "new" / "a" / "t.bpe"
    assert main(["tokenizer", "train", corpus, "-o", str(bpe), "--vocab-size", "260",
                 "--no-progress"]) == 0
    assert Tokenizer.load(str(bpe)).vocab_size == 260
    shards = tmp_path / "new" / "b" / "shards"
    assert main(["data", "prepare", tiny_corpus(tmp_path), "-o", str(shards), "--tokenizer",
                 str(bpe), "--no-progress"]) == 0
    assert (shards / "meta.json").is_file()
    cleaned = tmp_path / "new" / "c" / "clean.jsonl.gz"
    report = tmp_path / "new" / "d" / "report.json"
    assert main(["data", "clean", corpus, "-o", str(cleaned), "--report", str(report),
                 "--no-progress", "--min-words", "1"]) == 0
    with gzip.open(cleaned, "rt") as f:
        f.read()
    assert json.loads(report.read_text())["input_docs"] == 1
    capsys.readouterr()


# --- the files a training run reads --------------------------------------------------------

def test_a_corrupt_meta_json_names_the_file_and_what_to_do(tmp_path):
    from train_helpers import tiny_config
    config = tiny_config(tmp_path)
    data_dir = str(tmp_path / "data")
    train_data.prepare_run_data(config, data_dir, log=lambda *a: None)
    meta = os.path.join(data_dir, "meta.json")
    good = open(meta).read()
    for body in ('{"data_key": ', "[1, 2]", json.dumps({"data_key": json.loads(good)["data_key"]})):
        with open(meta, "w") as f:
            f.write(body)
        with pytest.raises(CheckpointError) as exc:
            train_data.prepare_run_data(config, data_dir, log=lambda *a: None)
        message = str(exc.value)
        assert meta in message and "delete" in message, message


def test_train_refuses_an_empty_data_directory_before_the_bpe(tmp_path, monkeypatch):
    from train_helpers import tiny_config
    empty = tmp_path / "empty"
    empty.mkdir()
    config = tiny_config(tmp_path, data=str(empty), tokenizer="")
    monkeypatch.setattr(train_data, "train_tokenizer",
                        lambda *a, **k: pytest.fail("tokenizer training started"))
    with pytest.raises(DataError, match="no files"):
        train_data.prepare_run_data(config, str(tmp_path / "d"), log=lambda *a: None)


def test_train_uses_a_directory_made_by_data_prepare_as_it_is(tmp_path, capsys):
    """--data-dir pointing at `microgpt data prepare` output used to be rebuilt from --data
    (the built-in corpus by default), overwriting the user's shards."""
    from train_helpers import tiny_config
    shards = tmp_path / "prepared"
    assert main(["data", "prepare", tiny_corpus(tmp_path), "-o", str(shards), "--vocab-size",
                 "300", "--no-progress"]) == 0
    before = {p.name: p.read_bytes() for p in shards.iterdir()}
    config = tiny_config(tmp_path, data="builtin", tokenizer="", data_dir=str(shards))
    messages = []
    tokenizer, _, meta = train_data.prepare_run_data(config, str(shards), log=messages.append)
    assert tokenizer.vocab_size == 300 and "data_key" not in meta
    assert any("using the prepared" in m for m in messages)
    assert {p.name: p.read_bytes() for p in shards.iterdir()} == before
    capsys.readouterr()


def test_a_corrupt_gzip_input_is_a_one_line_error(tmp_path, capsys):
    good = gzip.compress(b"hello world, some text " * 2000)
    for name in ("bad.txt.gz", "bad.jsonl.gz"):
        path = tmp_path / name
        path.write_bytes(good[:20] + bytes(300) + good[320:])        # deflate data broken
        assert main(["data", "prepare", str(path), "-o", str(tmp_path / "d"),
                     "--no-progress"]) == 2
        assert name in one_line_error(capsys, "data")
        assert main(["data", "clean", str(path), "-o", str(tmp_path / "c.jsonl"),
                     "--no-progress"]) == 2
        assert name in one_line_error(capsys, "data")


def test_tokenizer_decode_of_stdin_that_is_not_utf8_is_a_one_line_error(tmp_path, capsys):
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "microgpt", "tokenizer", "decode",
                           byte_tokenizer(tmp_path)], input=b"104 105 \xff\n",
                          capture_output=True, timeout=60)
    assert done.returncode == 2, done.stderr
    err = done.stderr.decode().strip().splitlines()
    assert len(err) == 1 and "standard input" in err[0] and "UTF-8" in err[0], err
