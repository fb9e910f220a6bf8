"""Tests for microgpt.data.sources: files, directories, JSONL, gzip, errors."""
import gzip
import json
import os

import pytest

from microgpt.data.sources import DataError, Document, SourceStats, iter_documents


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(path, mode) as f:
        f.write(data)


def test_plain_file_is_one_document(tmp_path):
    p = tmp_path / "a.md"
    _write(str(p), "hello\r\nworld\n")
    docs = list(iter_documents(str(p)))
    assert docs == [Document("hello\r\nworld\n", str(p))]   # newline="" keeps line endings raw


def test_directory_sorted_recursive_skips_hidden_and_binary(tmp_path):
    root = str(tmp_path)
    _write(f"{root}/b.txt", "b")
    _write(f"{root}/a/z.py", "z")
    _write(f"{root}/a/c.txt", "c")
    _write(f"{root}/.git/x.txt", "hidden dir")
    _write(f"{root}/.hidden", "hidden file")
    _write(f"{root}/img.png", b"\x89PNG\x00\x00binary")
    stats = SourceStats()
    docs = list(iter_documents(root, stats=stats))
    assert [d.text for d in docs] == ["b", "c", "z"]
    assert [os.path.relpath(d.source, root) for d in docs] == ["b.txt", "a/c.txt", "a/z.py"]
    assert stats.skipped_binary == 1 and stats.files == 3 and stats.documents == 3


def test_explicit_binary_file_is_an_error(tmp_path):
    p = tmp_path / "x.bin"
    _write(str(p), b"ab\x00cd")
    with pytest.raises(DataError, match="binary"):
        list(iter_documents(str(p)))


def test_jsonl_field_sources_and_blank_lines(tmp_path):
    p = tmp_path / "d.jsonl"
    lines = [json.dumps({"content": "first", "id": 1}), "", json.dumps({"content": "sécond"})]
    _write(str(p), "\n".join(lines) + "\n")
    docs = list(iter_documents([str(p)], text_field="content"))
    assert docs == [Document("first", f"{p}:1"), Document("sécond", f"{p}:3")]


@pytest.mark.parametrize("line,reason", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"other": "x"}', "no field 'text'"),
    ('{"text": 5}', "field .text. is int, not a string"),
])
def test_jsonl_bad_line_raises_with_file_and_line(tmp_path, line, reason):
    p = tmp_path / "d.jsonl"
    _write(str(p), json.dumps({"text": "ok"}) + "\n" + line + "\n")
    with pytest.raises(DataError, match=f"d.jsonl:2: {reason}"):
        list(iter_documents(str(p)))


def test_jsonl_bad_lines_skipped_and_counted(tmp_path):
    p = tmp_path / "d.jsonl"
    _write(str(p), '{"text": "a"}\n{oops\n{"x": 1}\n{"text": "b"}\n')
    stats = SourceStats()
    docs = list(iter_documents(str(p), on_bad_line="skip", stats=stats))
    assert [d.text for d in docs] == ["a", "b"]
    assert stats.bad_lines == 2 and len(stats.bad_examples) == 2
    assert stats.bad_examples[0].startswith(f"{p}:2:")


def test_gzip_text_and_jsonl(tmp_path):
    t = tmp_path / "a.txt.gz"
    j = tmp_path / "b.jsonl.gz"
    with gzip.open(t, "wt", encoding="utf-8") as f:
        f.write("gz text")
    with gzip.open(j, "wt", encoding="utf-8") as f:
        f.write('{"text": "one"}\n{"text": "two"}\n')
    docs = list(iter_documents(str(tmp_path)))
    assert docs == [Document("gz text", str(t)), Document("one", f"{j}:1"),
                    Document("two", f"{j}:2")]


def test_invalid_utf8_replaced_and_bom_removed(tmp_path):
    p = tmp_path / "a.txt"
    _write(str(p), b"\xef\xbb\xbfcaf\xc3\xa9 \xff end")
    (doc,) = iter_documents(str(p))
    assert doc.text == "café \ufffd end"


def test_missing_path_fails_before_reading(tmp_path):
    good = tmp_path / "a.txt"
    _write(str(good), "x")
    with pytest.raises(DataError, match="does not exist: .*nope"):
        iter_documents([str(good), str(tmp_path / "nope")]).__next__()


def test_input_not_modified_and_streaming(tmp_path):
    p = tmp_path / "big.jsonl"
    _write(str(p), "".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(1000)))
    before = (p.read_bytes(), os.stat(p).st_mtime_ns)
    it = iter_documents(str(p))
    assert next(it).text == "doc 0"        # a generator: nothing beyond the first line needed
    it.close()
    assert (p.read_bytes(), os.stat(p).st_mtime_ns) == before


def test_argument_validation():
    with pytest.raises(DataError):
        list(iter_documents([]))
    with pytest.raises(DataError):
        list(iter_documents(".", on_bad_line="ignore"))
    with pytest.raises(DataError):
        list(iter_documents(".", text_field=""))
