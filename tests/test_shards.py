"""Token shards: round trip, header validation, vocabulary checks, writer splitting, prepare."""
import json
import os
import struct

import numpy as np
import pytest

from microgpt.data.shards import (HEADER_SIZE, MAGIC, ShardError, ShardWriter, dtype_for_vocab,
                                  is_val_document, list_shards, open_shard, prepare, read_header,
                                  write_shard)
from microgpt.data.sources import Document


def test_round_trip_uint16_and_uint32(tmp_path):
    rng = np.random.default_rng(0)
    for vocab, itemsize in ((50257, 2), (1 << 16, 2), (100_000, 4)):
        ids = rng.integers(0, vocab, size=1001)
        path = str(tmp_path / f"s{vocab}.bin")
        write_shard(path, ids, vocab)
        assert os.path.getsize(path) == HEADER_SIZE + itemsize * ids.size
        assert read_header(path) == (itemsize, ids.size, vocab)
        got = open_shard(path, vocab_size=vocab, check_ids=True)
        assert got.dtype.itemsize == itemsize
        np.testing.assert_array_equal(np.asarray(got, dtype=np.int64), ids)


def test_header_layout_is_the_documented_one(tmp_path):
    path = str(tmp_path / "a.bin")
    write_shard(path, [1, 2, 3], 10)
    raw = open(path, "rb").read()
    assert raw[:8] == MAGIC
    assert struct.unpack("<IIQQ", raw[8:32]) == (1, 2, 3, 10)
    assert np.frombuffer(raw[32:], "<u2").tolist() == [1, 2, 3]


def _patch(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_wrong_magic_version_size_and_ids_are_rejected(tmp_path):
    good = str(tmp_path / "good.bin")
    write_shard(good, np.arange(100), 100)

    bad = str(tmp_path / "magic.bin")
    open(bad, "wb").write(open(good, "rb").read())
    _patch(bad, 0, b"NOTASHRD")
    with pytest.raises(ShardError, match="magic"):
        open_shard(bad)

    bad = str(tmp_path / "version.bin")
    open(bad, "wb").write(open(good, "rb").read())
    _patch(bad, 8, struct.pack("<I", 7))
    with pytest.raises(ShardError, match="version 7"):
        open_shard(bad)

    bad = str(tmp_path / "short.bin")
    open(bad, "wb").write(open(good, "rb").read()[:-3])
    with pytest.raises(ShardError, match="truncated"):
        open_shard(bad)

    bad = str(tmp_path / "long.bin")
    open(bad, "wb").write(open(good, "rb").read() + b"\0\0")
    with pytest.raises(ShardError, match="header announces 100 tokens"):
        open_shard(bad)

    bad = str(tmp_path / "tiny.bin")
    open(bad, "wb").write(b"MGPT")
    with pytest.raises(ShardError, match="too short"):
        open_shard(bad)

    bad = str(tmp_path / "ids.bin")
    open(bad, "wb").write(open(good, "rb").read())
    _patch(bad, HEADER_SIZE + 2 * 57, struct.pack("<H", 4000))
    open_shard(bad)                                  # header alone is fine
    with pytest.raises(ShardError, match="token id 4000 at position 57"):
        open_shard(bad, check_ids=True)

    with pytest.raises(ShardError, match="vocabulary of 100 ids"):
        open_shard(good, vocab_size=200)
    with pytest.raises(ShardError, match="no such shard"):
        open_shard(str(tmp_path / "missing.bin"))


def test_writer_rejects_out_of_range_ids(tmp_path):
    w = ShardWriter(str(tmp_path), "train", vocab_size=10, shard_tokens=4)
    with pytest.raises(ShardError, match=r"\[0, 10\)"):
        w.write([1, 2, 10])
    with pytest.raises(ShardError):
        write_shard(str(tmp_path / "x.bin"), [-1], 10)
    with pytest.raises(ShardError):
        dtype_for_vocab(0)
    assert dtype_for_vocab(1 << 16) == np.dtype("<u2")
    assert dtype_for_vocab((1 << 16) + 1) == np.dtype("<u4")


def test_writer_cuts_fixed_size_shards_and_keeps_every_token(tmp_path):
    rng = np.random.default_rng(1)
    pieces = [rng.integers(0, 300, size=n) for n in (0, 5, 17, 1, 33, 2)]
    w = ShardWriter(str(tmp_path), "train", vocab_size=300, shard_tokens=8)
    for p in pieces:
        w.write(p)
    paths = w.close()
    assert paths == list_shards(str(tmp_path), "train")
    sizes = [read_header(p)[1] for p in paths]
    assert sizes[:-1] == [8] * (len(sizes) - 1) and 1 <= sizes[-1] <= 8
    joined = np.concatenate([np.asarray(open_shard(p), dtype=np.int64) for p in paths])
    np.testing.assert_array_equal(joined, np.concatenate(pieces))


def test_val_documents_are_an_even_fraction():
    picks = [i for i in range(1000) if is_val_document(i, 0.1)]
    assert len(picks) == 100 and picks[:3] == [9, 19, 29]
    assert not any(is_val_document(i, 0.0) for i in range(100))


class CharTokenizer:
    """An independent oracle: one id per byte, EOT = 256."""
    vocab_size, eot_id = 257, 256

    def encode_batch(self, texts, disallowed_special="all"):
        return [list(t.encode("utf-8")) for t in texts]


def test_prepare_separates_documents_with_eot_and_splits(tmp_path):
    docs = [Document(f"document number {i} " * (i % 3 + 1), f"d{i}") for i in range(40)]
    meta = prepare(iter(docs), str(tmp_path), CharTokenizer(), val_fraction=0.1,
                   shard_tokens=100, batch_bytes=50, progress=False)
    assert meta["documents"] == {"train": 36, "val": 4}
    for split in ("train", "val"):
        ids = np.concatenate([np.asarray(open_shard(p), np.int64)
                              for p in list_shards(str(tmp_path), split)])
        assert ids.size == meta["tokens"][split]
        expected = [d for i, d in enumerate(docs) if is_val_document(i, 0.1) == (split == "val")]
        text_docs = bytes(ids.astype(np.uint8)[ids != 256]).decode()
        assert text_docs == "".join(d.text for d in expected)
        assert ids[0] == 256 and (ids == 256).sum() == len(expected)
    assert json.load(open(tmp_path / "meta.json"))["vocab_size"] == 257


def test_prepare_with_one_document_carves_val_from_the_tail(tmp_path):
    meta = prepare([Document("x" * 999, "one")], str(tmp_path), CharTokenizer(),
                   val_fraction=0.1, progress=False)
    assert meta["tokens"] == {"train": 900, "val": 100}
    with pytest.raises(ShardError, match="no documents"):
        prepare([], str(tmp_path / "empty"), CharTokenizer(), progress=False)


def test_builtin_corpus_is_the_running_pythons_docs_and_stdlib():
    import pydoc_data.topics
    from microgpt.data.corpus import builtin_documents, stdlib_dir, stdlib_files
    files = stdlib_files()
    assert "os.py" in files and "json/decoder.py" in files
    assert not any(f.startswith(("site-packages", "test/", "idlelib")) for f in files)
    docs = list(builtin_documents(max_bytes=600_000))
    assert sum(len(d.text.encode()) for d in docs) <= 600_000
    assert docs == list(builtin_documents(max_bytes=600_000))            # deterministic
    topics = [d for d in docs if d.source.startswith("pydoc_data.topics:")]
    assert topics and topics[0].text == pydoc_data.topics.topics[topics[0].source.split(":")[1]]
    sources = [d for d in docs if not d.source.startswith("pydoc_data")]
    assert sources
    with open(os.path.join(stdlib_dir(), sources[0].source), encoding="utf-8") as f:
        assert f.read() == sources[0].text
