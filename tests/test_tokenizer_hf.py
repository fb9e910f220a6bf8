"""Hugging Face tokenizers in and out (microgpt/tokenizer/hf.py), against the oracles:
`tokenizers` for what we read, transformers' AutoTokenizer for what we write.

Tokenizer files are built here with `tokenizers` (no download) and trained on generated
text: GPT-2's layout (ByteLevel with its own regex, specials trained in at ids 0 and 1,
one whose bytes are not its text so the ids need the gather of bpe.py), Llama 3's
(Split regex + ByteLevel(use_regex=false), ignore_merges, specials after the vocabulary,
a BOS template, a chat template) and Qwen's (single digits, NFC). Ids must equal
`tokenizers`' on hypothesis text and on real text, and files we write must load in
AutoTokenizer and encode as we do. Text is drawn from the code points assigned in
Python's Unicode tables (unicodedata): later ones are classified differently by
Oniguruma's older tables (hf.py's header); lone surrogates cannot reach `tokenizers`.
"""
import json
import os
import re
import unicodedata

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microgpt.data.corpus import builtin_documents
from microgpt.errors import MicrogptError
from microgpt.tokenizer import Tokenizer, TokenizerError
from microgpt.tokenizer import hf

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
CHAT_TEMPLATE = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
                 "{{ m['content'] }}<|eot_id|>{% endfor %}")

WORDS = ["the", " the", "The", "quick", "brown", "fox", "don't", "I'M", "it's", "we'll",
         "Caf\u00e9", "na\u00efve", "\u00fcber", "stra\u00dfe", "\u65e5\u672c\u8a9e",
         "\u043f\u0440\u0438\u0432\u0435\u0442", "\u0645\u0631\u062d\u0628\u0627", "\U0001f600",
         "\U0001f469\u200d\U0001f4bb", "12345", "3.14159", "0x1F", "def f(x):", "    return",
         "\t", "\n", "\n\n", "\r\n", "   ", "  \n ", "!!", "...", "e\u0301", "\u212b"]


def generated_text(n_lines, seed):
    rng = np.random.default_rng(seed)
    return "".join(" ".join(WORDS[k] for k in rng.integers(0, len(WORDS), 30)) + "\n"
                   for _ in range(n_lines))


@pytest.fixture(scope="module")
def real_text():
    return [d.text for d in builtin_documents(max_bytes=4_000_000)]


@pytest.fixture(scope="module")
def training(real_text):
    return [generated_text(400, 0)] + real_text[:40]


def _train(tok, training, vocab_size, specials):
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(training, trainer)
    return tok


def gpt2_style(training):
    """GPT-2's pipeline; specials trained in (ids 0, 1), one added after, one non-special."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    _train(tok, training, 1500, ["<|endoftext|>", "<|\u00e9t\u00e9|>"])
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tok.add_tokens(["foo"])
    return tok


def llama3_style(training, regex_text=LLAMA3_REGEX, normalizer=None, ignore_merges=True):
    """Llama 3's pipeline: Split + ByteLevel(use_regex=false), specials after the vocab."""
    tok = tokenizers.Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if normalizer:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex_text), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    _train(tok, training, 1500, [])
    tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                            "<|end_header_id|>", "<|eot_id|>"])
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      special_tokens=[("<|begin_of_text|>", tok.token_to_id(
                                          "<|begin_of_text|>"))])])
    return tok


@pytest.fixture(scope="module")
def built(tmp_path_factory, training):
    """name -> (tokenizers.Tokenizer, directory with its tokenizer.json)."""
    out = {}
    for name, make in (("gpt2", gpt2_style), ("llama3", llama3_style),
                       ("qwen", lambda t: llama3_style(t, QWEN_REGEX, normalizers.NFC(), False))):
        tok = make(training)
        folder = tmp_path_factory.mktemp(name)
        tok.save(str(folder / "tokenizer.json"))
        if name == "llama3":
            (folder / "tokenizer_config.json").write_text(json.dumps({
                "bos_token": "<|begin_of_text|>", "eos_token": {"content": "<|eot_id|>",
                                                                "__type": "AddedToken"},
                "chat_template": CHAT_TEMPLATE}))
        out[name] = (tok, folder)
    return out


@pytest.fixture(scope="module")
def loaded(built):
    return {name: hf.load_hf_tokenizer(folder) for name, (_, folder) in built.items()}


def hf_ids(tok, text):
    return tok.encode(text, add_special_tokens=False).ids


def ours(tok, text):
    return tok.encode(text, allowed_special="all")


# ------------------------------------------------------------------ text strategies

ASSIGNED = st.characters(codec="utf-8", exclude_categories=("Cn", "Cs"))
SPECIALS = ["<|endoftext|>", "<|\u00e9t\u00e9|>", "<|im_start|>", "foo", "<|eot_id|>",
            "<|begin_of_text|>"]
PIECES = st.one_of(
    st.text(ASSIGNED, max_size=12),
    st.sampled_from(WORDS),
    st.sampled_from(SPECIALS),
    st.text(st.sampled_from(" \t\n\r\x0b\x0c\u00a0\u3000"), min_size=1, max_size=6),
    st.from_regex(r"[0-9]{1,9}", fullmatch=True),
    st.text(st.sampled_from("ab'sS "), min_size=1, max_size=90),     # long chunks: the heap
    st.sampled_from(["\U0001f600", "\U0001f1fa\U0001f1f8", "\u00e9", "e\u0301", "\ufb01",
                     "\u1e9b\u0323", "'\u017f", "\u0130"]),
)
TEXTS = st.lists(PIECES, max_size=12).map("".join)


def test_unicode_tables_explain_the_alphabet():
    """The text alphabet leaves out only what hf.py's header says it must: on assigned
    code points, Oniguruma's \\p{L}, \\p{N} and \\s agree with the regex module's."""
    every = "".join(chr(c) for c in range(0x110000)
                    if unicodedata.category(chr(c)) not in ("Cn", "Cs"))[::7]
    import regex
    for cls in (r"\p{L}", r"\p{N}", r"\s"):
        pieces = pre_tokenizers.Split(Regex(cls), "removed").pre_tokenize_str(every)
        kept = "".join(p for p, _ in pieces)
        assert kept == regex.sub(cls, "", every), cls


# ------------------------------------------------------------------ reading: ids equal

@pytest.mark.parametrize("name", ["gpt2", "llama3", "qwen"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TEXTS)
def test_ids_equal_tokenizers_on_generated_text(built, loaded, name, text):
    tok = loaded[name]
    assert ours(tok, text) == hf_ids(built[name][0], text)
    assert tok.decode(ours(tok, text)) == (unicodedata.normalize("NFC", text)
                                          if name == "qwen" else text)


@pytest.mark.parametrize("name", ["gpt2", "llama3", "qwen"])
def test_ids_equal_tokenizers_on_real_text(built, loaded, real_text, name):
    """1 MB of the built-in corpus per tokenizer (`pytest -m slow` runs 4 MB), as one text
    and document by document (encode_to_numpy too)."""
    docs = real_text[40:]
    docs = docs[:len(docs) // 4] if name != "gpt2" else docs
    text = "".join(docs)[:1_000_000]
    hf_tok, tok = built[name][0], loaded[name]
    want = hf_ids(hf_tok, text)
    assert ours(tok, text) == want
    assert tok.encode_to_numpy(text, allowed_special="all").tolist() == want


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "llama3", "qwen"])
def test_ids_equal_tokenizers_on_4mb(built, loaded, real_text, name):
    hf_tok, tok = built[name][0], loaded[name]
    for doc, want in zip(real_text, hf_tok.encode_batch(real_text, add_special_tokens=False)):
        assert ours(tok, doc) == want.ids


def test_what_was_read(loaded):
    gpt2, llama3, qwen = loaded["gpt2"], loaded["llama3"], loaded["qwen"]
    assert gpt2.pattern_name == "gpt2"                      # GPT-2's regex runs in C
    assert gpt2.special_tokens["<|endoftext|>"] == 0 and gpt2.ordinary_ids[0] == 0
    assert 1 not in gpt2.ordinary_ids and gpt2.special_tokens["<|\u00e9t\u00e9|>"] == 1
    assert gpt2.special_tokens["foo"] == gpt2.vocab_size - 1
    assert gpt2.ignore_merges is False and gpt2.merges is not None
    assert llama3.pattern_name is None and llama3.ignore_merges is True
    assert llama3.chat_template == CHAT_TEMPLATE
    assert (llama3.bos_token, llama3.eos_token, llama3.add_bos_token) == (
        "<|begin_of_text|>", "<|eot_id|>", True)
    assert llama3.eot_id == llama3.special_tokens["<|eot_id|>"]
    assert qwen.normalizer == "nfc" and qwen.chat_template is None


def test_added_tokens_that_are_vocabulary_tokens(tmp_path, built):
    """An added token whose text is a vocabulary token keeps that id and is cut out of the
    text wherever it occurs (inside words too), as HF does."""
    hf_tok = tokenizers.Tokenizer.from_str(built["gpt2"][0].to_str())
    assert hf_tok.token_to_id("the") is not None
    hf_tok.add_tokens(["the", " the", "ing"])
    hf_tok.save(str(tmp_path / "tokenizer.json"))
    tok = hf.load_hf_tokenizer(tmp_path)
    assert tok.special_tokens["the"] == hf_tok.token_to_id("the") in tok.ordinary_ids
    for text in ("bathe the other theme sing", " the the", generated_text(20, 4)):
        assert ours(tok, text) == hf_ids(hf_tok, text)


# ------------------------------------------------------------------ HF's merge rule

def hand_made(tmp_path, merges, ignore_merges=False, extra=("ab", "bc", "abc")):
    """A tokenizer.json written by hand: the byte alphabet plus `extra`, given merges."""
    vocab = {c: k for k, c in enumerate(hf.BYTE_CHARS)}
    for text in extra:
        vocab[text] = len(vocab)
    spec = {"version": "1.0", "added_tokens": [], "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False,
                              "trim_offsets": True, "use_regex": True},
            "post_processor": None, "decoder": {"type": "ByteLevel", "add_prefix_space": False,
                                                "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None,
                      "continuing_subword_prefix": None, "end_of_word_suffix": None,
                      "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges}}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return tokenizers.Tokenizer.from_file(str(path)), hf.load_hf_tokenizer(path)


@pytest.mark.parametrize("merges, ignore_merges", [
    (["b c", "a b", "ab c"], False),           # a,bc is no merge: HF stops at [a, bc]
    (["b c", "a b", "ab c"], True),            # ... unless abc is looked up whole
    ([["a", "b"], ["b", "c"], ["a", "bc"], ["ab", "c"]], False),    # two merges make abc
    (["a b", "b c", "ab c", "a b"], False),    # a pair listed twice keeps its last rank
    (["b c", "a bc", "a b"], False),
])
def test_hf_merge_rule_not_tiktokens(tmp_path, merges, ignore_merges):
    hf_tok, tok = hand_made(tmp_path, merges, ignore_merges)
    for text in ("abc", "abcabc", "aabcc", "ab" * 50 + "c" * 40, "xabcab", "bcabc " * 30):
        assert ours(tok, text) == hf_ids(hf_tok, text), text


def test_tiktoken_rule_would_differ(tmp_path):
    """The hand-made case above is one where ranking tokens (tiktoken) is not HF's rule."""
    hf_tok, tok = hand_made(tmp_path, ["b c", "a b", "ab c"])
    ranks = Tokenizer.from_tiktoken_ranks(
        {bytes([b]): b for b in range(256)} | {b"bc": 256, b"ab": 257, b"abc": 258}, "gpt2")
    assert [hf_tok.id_to_token(i) for i in hf_ids(hf_tok, "abc")] == ["a", "bc"]
    assert ranks.encode("abc") == [258]


# ------------------------------------------------------------------ writing

def auto_tokenizer(folder):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="module")
def trained_ours(training):
    return {pattern: Tokenizer.train(training, 1200, pattern=pattern, progress=False)
            for pattern in ("gpt2", "gpt4")}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained_ours, loaded):
    """Our tokenizers written out and read back by AutoTokenizer: name -> (ours, auto)."""
    out = {}
    for name, tok in list(trained_ours.items()) + [("llama3", loaded["llama3"]),
                                                   ("qwen", loaded["qwen"]),
                                                   ("gpt2-hf", loaded["gpt2"])]:
        folder = tmp_path_factory.mktemp("export-" + name)
        hf.save_hf_tokenizer(tok, folder)
        out[name] = (tok, auto_tokenizer(folder))
    return out


EXPORTED = ["gpt2", "gpt4", "llama3", "qwen", "gpt2-hf"]


@pytest.mark.parametrize("name", EXPORTED)
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TEXTS)
def test_auto_tokenizer_encodes_as_we_do(exported, name, text):
    tok, auto = exported[name]
    ids = ours(tok, text)
    assert auto.encode(text, add_special_tokens=False) == ids
    expected = unicodedata.normalize("NFC", text) if tok.normalizer else text
    assert tok.decode(ids) == expected
    if "<|\u00e9t\u00e9|>" not in text:    # HF's ByteLevel decoder reads a special's
        assert auto.decode(ids) == expected  # characters as byte symbols: <|\ufffdt\ufffd|>


@pytest.mark.parametrize("name", EXPORTED)
def test_auto_tokenizer_on_real_text(exported, real_text, name):
    tok, auto = exported[name]
    text = "".join(real_text[40:])[:300_000]
    ids = ours(tok, text)
    assert auto.encode(text, add_special_tokens=False) == ids
    assert auto.decode(ids) == tok.decode(ids) == text


def test_export_keeps_template_tokens_and_bos(exported):
    tok, auto = exported["llama3"]
    assert auto.chat_template == CHAT_TEMPLATE
    assert (auto.bos_token, auto.eos_token) == ("<|begin_of_text|>", "<|eot_id|>")
    bos = tok.special_tokens["<|begin_of_text|>"]
    assert auto("hello world")["input_ids"] == [bos] + ours(tok, "hello world")
    chat = auto.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat == "<|start_header_id|>user<|end_header_id|>hi<|eot_id|>"
    _, auto = exported["gpt4"]
    assert auto.eos_token == "<|endoftext|>" and auto.bos_token is None


def test_chat_template_argument_and_reload(tmp_path, trained_ours):
    tok = trained_ours["gpt4"]
    hf.save_hf_tokenizer(tok, tmp_path / "out", chat_template="{{ messages[0]['content'] }}")
    back = hf.load_hf_tokenizer(tmp_path / "out")
    assert back.chat_template == "{{ messages[0]['content'] }}"
    assert back.pattern_name == "gpt4"                      # our regex is recognised again
    text = generated_text(50, 3) + "<|endoftext|>x"
    assert ours(back, text) == ours(tok, text)
    assert sorted(os.listdir(tmp_path / "out")) == ["tokenizer.json", "tokenizer_config.json"]


def test_round_trip_through_our_file_format(tmp_path, loaded, built):
    """An HF tokenizer saved in our format (v2: merges, NFC, metadata) loads back equal."""
    for name in ("gpt2", "llama3", "qwen"):
        tok = loaded[name]
        tok.save(tmp_path / f"{name}.bpe")
        back = Tokenizer.load(tmp_path / f"{name}.bpe")
        text = generated_text(40, 5) + "<|eot_id|><|endoftext|> \u212b"
        assert ours(back, text) == ours(tok, text) == hf_ids(built[name][0], text)
        for field in Tokenizer.METADATA + ("normalizer", "ignore_merges", "merges",
                                           "special_tokens", "ordinary_ids"):
            assert getattr(back, field) == getattr(tok, field), (name, field)
    assert (tmp_path / "llama3.bpe").read_text(encoding="utf-8").startswith("microgpt-bpe v2\n")


def test_rank_merges_replay_training(trained_ours):
    """hf.py's claim for our trained tokenizers: each token's derived merge is two tokens
    of lower rank, and there is one merge per token of two or more bytes."""
    ranks = trained_ours["gpt4"].to_tiktoken_ranks()
    merges = hf.rank_merges(ranks)
    assert len(merges) == len(ranks) - 256
    assert all(max(ranks[a], ranks[b]) < ranks[a + b] for a, b in merges)
    assert [ranks[a + b] for a, b in merges] == list(range(256, len(ranks)))


def test_ids_are_gathered_only_when_needed(loaded):
    assert loaded["gpt2"]._to_id is not None               # a special sits at id 1
    assert loaded["llama3"]._to_id is None


# ------------------------------------------------------------------ bad input

def write_json(folder, spec, name="tokenizer.json"):
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(json.dumps(spec) if not isinstance(spec, str) else spec,
                               encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def good_spec(built):
    return json.loads((built["llama3"][1] / "tokenizer.json").read_text(encoding="utf-8"))


def refused(path, *words):
    with pytest.raises(TokenizerError) as info:
        hf.load_hf_tokenizer(path)
    message = str(info.value)
    assert isinstance(info.value, MicrogptError) and "\n" not in message
    for word in words:
        assert word in message, (word, message)
    return message


def damaged(tmp_path, spec, change):
    spec = json.loads(json.dumps(spec))
    change(spec)
    return write_json(tmp_path / "bad", spec)


def test_missing_path(tmp_path):
    refused(tmp_path / "nowhere", "nowhere", "no such file")


def test_directory_without_tokenizer_json(tmp_path):
    refused(tmp_path, str(tmp_path), "no tokenizer.json")


def test_sentencepiece_model_file(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(b"\x0a\x0b")
    refused(tmp_path, "SentencePiece", "not supported yet")
    refused(tmp_path / "tokenizer.model", "SentencePiece", "not supported yet")


def test_slow_gpt2_files_only(tmp_path):
    (tmp_path / "vocab.json").write_text("{}")
    (tmp_path / "merges.txt").write_text("")
    refused(tmp_path, "vocab.json + merges.txt", "save_pretrained")


def test_truncated_json(tmp_path, built):
    text = (built["gpt2"][1] / "tokenizer.json").read_text(encoding="utf-8")
    folder = write_json(tmp_path / "t", text[:len(text) // 2])
    refused(folder, str(folder / "tokenizer.json"), "not valid JSON", "again")


def test_json_not_an_object(tmp_path):
    refused(write_json(tmp_path / "t", [1, 2]), "expected a JSON object")


def test_no_model(tmp_path, good_spec):
    refused(damaged(tmp_path, good_spec, lambda s: s.pop("model")), "'model' must be dict")


@pytest.mark.parametrize("model", [models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"),
                                   models.Unigram([("a", -1.0), ("b", -2.0)]),
                                   models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")])
def test_other_model_types(tmp_path, model):
    tok = tokenizers.Tokenizer(model)
    tok.save(str(tmp_path / "tokenizer.json"))
    kind = type(model).__name__
    refused(tmp_path, f"model type {kind!r}", "not supported yet", "tokenizer.json")


def test_llama2_style_byte_fallback(tmp_path):
    """SentencePiece-style BPE, as Llama 2's tokenizer.json is: byte_fallback, ▁ marks."""
    tok = tokenizers.Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                           normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback()])
    tok.save(str(tmp_path / "tokenizer.json"))
    refused(tmp_path, "byte_fallback", "SentencePiece", "not supported yet")


def test_metaspace_pre_tokenizer(tmp_path, good_spec):
    folder = damaged(tmp_path, good_spec, lambda s: s.update(pre_tokenizer={
        "type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}))
    refused(folder, "Metaspace", "SentencePiece", "not supported yet")


def test_missing_byte_symbols(tmp_path, training):
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["hello world"] * 10, trainers.BpeTrainer(vocab_size=300,
                                                                      show_progress=False))
    tok.save(str(tmp_path / "tokenizer.json"))
    refused(tmp_path, "256 byte symbols", "initial_alphabet")


def test_merge_outside_vocabulary(tmp_path, good_spec):
    folder = damaged(tmp_path, good_spec, lambda s: s["model"]["merges"].append(["zz", "q"]))
    refused(folder, "merges[", "'zz'", "not in model.vocab")


def test_malformed_merge(tmp_path, good_spec):
    folder = damaged(tmp_path, good_spec, lambda s: s["model"].update(merges=["a b c"]))
    refused(folder, "merges[0]", '"left right"')


def test_bad_vocabulary_id(tmp_path, good_spec):
    folder = damaged(tmp_path, good_spec, lambda s: s["model"]["vocab"].update(zz="7"))
    refused(folder, "'zz'", "non-negative int id")


def test_duplicate_vocabulary_id(tmp_path, good_spec):
    folder = damaged(tmp_path, good_spec, lambda s: s["model"]["vocab"].update(zz=5))
    refused(folder, "id 5 is given to both")


def test_added_token_on_a_taken_id(tmp_path, good_spec):
    folder = damaged(tmp_path, good_spec, lambda s: s["added_tokens"].append(
        {"id": 3, "content": "<|new|>", "special": True}))
    refused(folder, "<|new|>", "has id 3")


def test_added_token_lstrip(tmp_path, good_spec):
    folder = damaged(tmp_path, good_spec, lambda s: s["added_tokens"][0].update(lstrip=True))
    refused(folder, "lstrip=true", "not supported yet")


def test_normalized_added_token_under_nfc(tmp_path, built):
    spec = json.loads((built["qwen"][1] / "tokenizer.json").read_text(encoding="utf-8"))
    spec["added_tokens"][0]["normalized"] = True
    refused(write_json(tmp_path / "q", spec), "normalized=true", "not supported yet")


def test_other_normalizer(tmp_path, good_spec):
    folder = damaged(tmp_path, good_spec, lambda s: s.update(normalizer={"type": "Lowercase"}))
    refused(folder, "Lowercase", "not supported yet")


def test_split_behaviour(tmp_path, good_spec):
    folder = damaged(tmp_path, good_spec, lambda s: s["pre_tokenizer"]["pretokenizers"][0]
                     .update(behavior="Removed"))
    refused(folder, "'Removed'", "Isolated")


def test_split_regex_anchor(tmp_path, good_spec):
    folder = damaged(tmp_path, good_spec, lambda s: s["pre_tokenizer"]["pretokenizers"][0]
                     .update(pattern={"Regex": r"^\s+|[^\s]+|\s+"}))
    refused(folder, "anchor '^'", "not supported yet")


def test_split_regex_that_does_not_compile(tmp_path, good_spec):
    folder = damaged(tmp_path, good_spec, lambda s: s["pre_tokenizer"]["pretokenizers"][0]
                     .update(pattern={"Regex": r"(\p{L}+"}))
    refused(folder, "does not compile")


def test_two_splits(tmp_path, good_spec):
    folder = damaged(tmp_path, good_spec, lambda s: s["pre_tokenizer"]["pretokenizers"][1]
                     .update(use_regex=True))
    refused(folder, "two splits")


def test_add_prefix_space(tmp_path, good_spec):
    folder = damaged(tmp_path, good_spec, lambda s: s["pre_tokenizer"]["pretokenizers"][1]
                     .update(add_prefix_space=True))
    refused(folder, "add_prefix_space=true")


def test_no_byte_level(tmp_path, good_spec):
    folder = damaged(tmp_path, good_spec, lambda s: s.update(pre_tokenizer={
        "type": "Whitespace"}))
    refused(folder, "without ByteLevel")


def test_dropout(tmp_path, good_spec):
    refused(damaged(tmp_path, good_spec, lambda s: s["model"].update(dropout=0.1)), "dropout")


def test_other_decoder(tmp_path, good_spec):
    folder = damaged(tmp_path, good_spec, lambda s: s.update(decoder={"type": "WordPiece"}))
    refused(folder, "decoder 'WordPiece'")


def test_bad_config(tmp_path, built):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "tokenizer.json").write_text((built["gpt2"][1] / "tokenizer.json").read_text(
        encoding="utf-8"), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": 5}))
    refused(folder, "tokenizer_config.json", "eos_token must be")
    (folder / "tokenizer_config.json").write_text("{")
    refused(folder, "tokenizer_config.json", "not valid JSON")


def test_save_into_a_file(tmp_path, trained_ours):
    (tmp_path / "f").write_text("")
    with pytest.raises(TokenizerError, match="not a directory"):
        hf.save_hf_tokenizer(trained_ours["gpt2"], tmp_path / "f")


def test_special_that_reads_like_a_token(tmp_path):
    tok = Tokenizer.bytes_level(special_tokens=("a",))
    with pytest.raises(TokenizerError, match="rename the special token"):
        hf.save_hf_tokenizer(tok, tmp_path)
    assert not os.listdir(tmp_path)                        # nothing half-written



# ------------------------------------------------------------------ our file format, v2

def test_v2_for_a_trained_tokenizer_with_metadata(tmp_path, training):
    tok = Tokenizer.train(training[:1], 400, progress=False)
    tok.save(tmp_path / "v1.bpe")
    assert (tmp_path / "v1.bpe").read_text(encoding="utf-8").startswith("microgpt-bpe v1\n")
    tok.chat_template, tok.eos_token, tok.add_bos_token = "{{ x }}\n\"q\"", "<|im_end|>", False
    tok.save(tmp_path / "v2.bpe")
    back = Tokenizer.load(tmp_path / "v2.bpe")
    assert back.merges is None and back.to_tiktoken_ranks() == tok.to_tiktoken_ranks()
    assert (back.chat_template, back.eos_token, back.add_bos_token) == ("{{ x }}\n\"q\"",
                                                                       "<|im_end|>", False)
    assert back.eot_id == tok.special_tokens["<|im_end|>"]


def v2_cases(text):
    lines = text.splitlines(keepends=True)
    merge = next(k for k, line in enumerate(lines) if line.startswith("merge "))
    yield "bad normalizer", text.replace("normalizer none", "normalizer nfd", 1), \
        ":3: expected 'normalizer"
    yield "bad merges line", text.replace(" ignore_merges=0", " ignore_merges=2", 1), \
        ":5: expected 'merges"
    yield "ids not ascending", text.replace('\n2 "', '\n0 "', 1), "ids ascending"
    yield "bad merge", "".join(lines[:merge] + ["merge 1\n"] + lines[merge + 1:]), \
        f":{merge + 1}: expected 'merge"
    yield "unknown meta", text.replace("meta 0\n", "meta 1\n", 1).replace(
        "end sha256", 'meta colour "red"\nend sha256', 1), "expected 'meta <"


def test_v2_corrupt_files_name_file_and_line(tmp_path, loaded):
    loaded["gpt2"].save(tmp_path / "good.bpe")
    good = (tmp_path / "good.bpe").read_text(encoding="utf-8")
    assert "\nmeta 0\n" in good and "ignore_merges=0" in good
    for name, text, message in v2_cases(good):
        assert text != good, name
        path = tmp_path / f"{name.replace(' ', '_')}.bpe"
        path.write_text(text, encoding="utf-8", newline="")
        with pytest.raises(MicrogptError) as info:
            Tokenizer.load(path)
        assert str(path) in str(info.value) and message in str(info.value), (name, info.value)


def test_from_merges_checks_its_arguments():
    vocab = {b: bytes([b]) for b in range(256)} | {256: b"ab"}
    assert Tokenizer.from_merges(vocab, [(b"a", b"b")], "gpt2").encode("abab") == [256, 256]
    with pytest.raises(TokenizerError, match="not an ordinary token"):
        Tokenizer.from_merges(vocab, [(b"a", b"c")], "gpt2")
    with pytest.raises(TokenizerError, match="pair of bytes"):
        Tokenizer.from_merges(vocab, [b"ab"], "gpt2")
    with pytest.raises(TokenizerError, match="no ordinary token has"):
        Tokenizer.from_merges(vocab, [], "gpt2", {"<s>": 256})
    with pytest.raises(TokenizerError, match="from_merges"):
        Tokenizer.from_merges(vocab, [], "gpt2").to_tiktoken_ranks()


@pytest.mark.parametrize("pattern, words", [(r"\s+$|\S+|\s+", "anchor '$'"),
                                            (r"\p{N}{1,3}+|\D+", "possessive interval")])
def test_export_refuses_a_regex_oniguruma_reads_otherwise(tmp_path, pattern, words):
    tok = Tokenizer.bytes_level(pattern=pattern)
    with pytest.raises(TokenizerError, match=re.escape(words)):
        hf.save_hf_tokenizer(tok, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_custom_pattern_exports(tmp_path, training):
    tok = Tokenizer.train(training[1:4], 500, pattern=r"\p{L}+|\p{N}|[^\p{L}\p{N}]", progress=False)
    hf.save_hf_tokenizer(tok, tmp_path)
    text = generated_text(30, 9)
    assert hf_ids(tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json")),
                  text) == ours(tok, text)
    assert hf.load_hf_tokenizer(tmp_path).encode(text) == tok.encode(text)


@pytest.mark.parametrize("as_file", [False, True])
def test_the_tokenizer_commands_read_a_hugging_face_tokenizer(built, capsys, as_file):
    """`microgpt tokenizer encode|decode|info` take a tokenizer.json (or its directory) as they
    take our own file, and encode as `tokenizers` does."""
    from microgpt.cli import main
    hf_tok, folder = built["llama3"]
    path = str(folder / "tokenizer.json") if as_file else str(folder)
    text = "def f(x):\n    return x  # 12345 é"
    assert main(["tokenizer", "encode", path, "--text", text]) == 0
    ids = [int(word) for word in capsys.readouterr().out.split()]
    assert ids == hf_ids(hf_tok, text)
    assert main(["tokenizer", "decode", path, *map(str, ids)]) == 0
    assert capsys.readouterr().out == text
    assert main(["tokenizer", "info", path]) == 0
    assert "<|begin_of_text|>" in capsys.readouterr().out


def test_the_tokenizer_commands_name_a_directory_without_tokenizer_json(tmp_path, capsys):
    from microgpt.cli import main
    assert main(["tokenizer", "info", str(tmp_path)]) == 2
    assert "tokenizer.json" in capsys.readouterr().err
