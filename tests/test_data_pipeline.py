"""End-to-end tests of microgpt.data.pipeline and `microgpt data clean`: what is kept and
why, the report, idempotence, determinism, atomic output, untouched inputs."""
import gzip
import hashlib
import json
import os
import random

import pytest
from hypothesis import given, settings, strategies as st

from microgpt.cli import main
from microgpt.data.pipeline import CleanConfig, clean_corpus, clean_documents, load_config
from microgpt.data.sources import Document
from microgpt.errors import ConfigError

VOCAB = [f"{a}{b}" for a in ("lan", "riv", "mont", "gar", "win", "sil", "har", "mea", "for",
                              "can") for b in ("ter", " den", "ow", "ver", "bor", "dow", "est",
                                               "ing", "ace", "ure")]


def prose(seed, n=150):
    rnd = random.Random(seed)
    words = [rnd.choice(VOCAB) for _ in range(n)]
    return "\n".join(" ".join(words[i:i + 15]).capitalize() + "." for i in range(0, n, 15))


def corpus():
    """Documents that exercise every stage, with the rule expected to drop each (or None)."""
    base = [prose(i) for i in range(12)]
    near = base[1].split(" ")
    near[20] = "changed"
    docs = [
        (base[0], None),
        ("cafÃ©\u200b " + base[2] + "  \r\n", None),                        # normalized, kept
        (base[3] + "\nWrite to jane.doe@example.com or call +44 20 7946 0958.", None),
        (base[4] + "\nWe use cookies to improve your experience.", None),    # line removed
        ("too short", "word_count"),
        (base[0], "exact_dup"),
        (base[0] + "\n\n\n", "exact_dup"),                                  # equal after normalize
        (" ".join(near), None),                                             # base[1] comes later
        (base[1], "near_dup"),
        ("Lorem ipsum dolor sit amet. " + base[5], "lorem_ipsum"),
        ("\u200b \n\t", "empty"),
        (base[6], None),
    ]
    return docs


def write_jsonl(path, texts):
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")


def read_jsonl(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


CFG = CleanConfig(progress=False, batch_docs=4)


def test_each_document_kept_or_dropped_by_the_expected_rule(tmp_path):
    docs = corpus()
    src = str(tmp_path / "in.jsonl")
    write_jsonl(src, [t for t, _ in docs])
    out = str(tmp_path / "out.jsonl.gz")
    report = clean_corpus(src, out, CFG)
    records = read_jsonl(out)
    kept_lines = [int(r["source"].rsplit(":", 1)[1]) for r in records]
    assert kept_lines == [i + 1 for i, (_, rule) in enumerate(docs) if rule is None]
    expected = {}
    for _, rule in docs:
        if rule:
            expected[rule] = expected.get(rule, 0) + 1
    assert {k: v["docs"] for k, v in report.removed.items()} == expected
    texts = [r["text"] for r in records]
    assert texts[1].startswith("café ") and "\u200b" not in texts[1] and "\r" not in texts[1]
    assert "<EMAIL>" in texts[2] and "<PHONE>" in texts[2] and "jane.doe" not in texts[2]
    assert "cookies" not in texts[3]
    assert report.pii == {"EMAIL": 1, "PHONE": 1}
    assert report.modified["boilerplate_lines"]["docs"] == 1
    ids = [r["id"] for r in records]
    assert len(set(ids)) == len(ids)
    assert ids[0] == hashlib.blake2b(texts[0].encode(), digest_size=8).digest()[::-1].hex()
    assert report.input_docs == len(docs) and report.output_docs == len(records)
    assert report.removed["near_dup"]["examples"][0]["source"] == f"{src}:9"
    full = json.load(open(str(tmp_path / "out.report.json")))
    assert full["removed"]["exact_dup"]["docs"] == 2 and full["index"]["near_entries"] == 6
    assert "word_count" in report.summary() and "MB/s" in report.summary()


def test_idempotent_and_deterministic(tmp_path):
    src = str(tmp_path / "in.jsonl")
    write_jsonl(src, [t for t, _ in corpus()])
    out1, out2, again = (str(tmp_path / n) for n in ("a.jsonl.gz", "b.jsonl.gz", "c.jsonl"))
    clean_corpus(src, out1, CFG)
    clean_corpus(src, out2, CFG)
    assert open(out1, "rb").read() == open(out2, "rb").read()      # same bytes, gzip too
    report = clean_corpus(out1, again, CFG)
    assert [r["text"] for r in read_jsonl(again)] == [r["text"] for r in read_jsonl(out1)]
    assert report.removed == {} and report.pii == {}
    assert set(report.modified) == set()


def test_input_untouched_and_no_temporaries_left(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    for i in range(5):
        (d / f"{i}.txt").write_text(prose(i))
    before = {p: (open(p, "rb").read(), os.stat(p).st_mtime_ns) for p in map(str, d.iterdir())}
    out = str(d / "clean.jsonl")                   # output inside the input directory
    first = clean_corpus(str(d), out, CFG)
    second = clean_corpus(str(d), out, CFG)        # the earlier output is not an input
    assert second.input_docs == first.input_docs == 5 and second.removed == first.removed
    for p, state in before.items():
        assert (open(p, "rb").read(), os.stat(p).st_mtime_ns) == state
    assert sorted(os.listdir(d)) == sorted([f"{i}.txt" for i in range(5)] +
                                           ["clean.jsonl", "clean.report.json"])


def test_failure_leaves_no_output(tmp_path):
    src = str(tmp_path / "in.jsonl")
    with open(src, "w") as f:
        f.write(json.dumps({"text": prose(0)}) + "\n{broken\n")
    out = str(tmp_path / "out.jsonl")
    with pytest.raises(Exception, match="in.jsonl:2"):
        clean_corpus(src, out, CFG)
    assert os.listdir(tmp_path) == ["in.jsonl"]


def test_output_validation(tmp_path):
    src = str(tmp_path / "in.jsonl")
    write_jsonl(src, [prose(0)])
    with pytest.raises(ConfigError):
        clean_corpus(src, str(tmp_path / "out.txt"), CFG)
    with pytest.raises(ConfigError):
        clean_corpus(src, src, CFG)


def test_clean_documents_stream():
    docs = [Document(t, f"mem:{i}") for i, (t, _) in enumerate(corpus())]
    kept = list(clean_documents(iter(docs), CFG))
    assert [d.source for _, d in kept] == ["mem:0", "mem:1", "mem:2", "mem:3", "mem:7", "mem:11"]


def test_config_from_toml_and_errors(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('pii = false\n[filters]\nmin_words = 3\ndisabled = ["lorem_ipsum"]\n'
                    '[dedup]\nthreshold = 0.7\nnum_perm = 64\n')
    cfg = load_config(str(path), progress=False)
    assert cfg.pii is False and cfg.filters.min_words == 3 and cfg.dedup.num_perm == 64
    assert cfg.filters.disabled == ("lorem_ipsum",)
    path.write_text("[filters]\nmin_wrds = 3\n")
    with pytest.raises(ConfigError, match="min_wrds"):
        load_config(str(path))


def test_cli(tmp_path, capsys):
    src = str(tmp_path / "in.jsonl")
    docs = corpus()
    write_jsonl(src, [t for t, _ in docs])
    out = str(tmp_path / "o.jsonl")
    rc = main(["data", "clean", src, "-o", out, "--no-progress", "--no-pii",
               "--threshold", "0.7", "--disable", "lorem_ipsum", "--report",
               str(tmp_path / "r.json")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "removed by rule" in printed and "exact_dup" in printed
    texts = [r["text"] for r in read_jsonl(out)]
    assert any("jane.doe@example.com" in t for t in texts)       # --no-pii
    assert any(t.startswith("Lorem ipsum") for t in texts)       # rule disabled
    assert json.load(open(tmp_path / "r.json"))["index"]["num_perm"] == 128
    assert main(["data", "clean", str(tmp_path / "missing"), "-o", out]) == 2
    assert main(["data", "clean", src, "-o", out, "--disable", "nope", "--no-progress"]) == 2


PIECES = [prose(i, 30) for i in range(6)] + [
    "jane.doe@example.com", "+44 20 7946 0958", "4111 1111 1111 1111", "192.168.0.1",
    "We use cookies to improve your experience.", "cafÃ©", "\u200b", "\r\n", "\n\n\n",
    "  ", "\t", "e\u0301", "Lorem ipsum", "...", "• item", "x = 3.14", "v1.2.3.4", "\x00"]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.sampled_from(PIECES), min_size=1, max_size=12), min_size=1,
                max_size=8))
def test_clean_is_idempotent_on_generated_corpora(doc_pieces):
    cfg = CleanConfig(progress=False, filters={"min_words": 5})
    docs = [Document(" ".join(p), f"gen:{i}") for i, p in enumerate(doc_pieces)]
    once = [t for t, _ in clean_documents(iter(docs), cfg)]
    twice = [t for t, _ in clean_documents(iter(Document(t, "again") for t in once), cfg)]
    assert twice == once


def test_same_output_without_the_c_module(monkeypatch):
    """The NumPy/Python fallbacks (C module not built) keep the same documents."""
    from microgpt.data import dedup, filters
    docs = [Document(t, f"mem:{i}") for i, (t, _) in enumerate(corpus())]
    with_c = [(t, d.source) for t, d in clean_documents(iter(docs), CFG)]
    monkeypatch.setattr(dedup, "_minhash", None)
    monkeypatch.setattr(filters, "_minhash", None)
    assert [(t, d.source) for t, d in clean_documents(iter(docs), CFG)] == with_c
