"""Tokenizer exactness: pre-tokenizer vs the `regex` module, training vs a naive reference
trainer, encoding vs tiktoken on our own ranks, round trips, special tokens, adversarial
inputs. Oracles are independent: `regex.findall`, a pure-Python recount-everything BPE
trainer written here, tiktoken (Rust), and a pinned example worked out by hand.
"""
import collections
import functools
import os
import sysconfig
import time

import numpy as np
import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microgpt.tokenizer import GPT2_PATTERN, GPT4_PATTERN, Tokenizer, TokenizerError
from microgpt.tokenizer import native

tiktoken = pytest.importorskip("tiktoken")

# Characters that sit on every class boundary of the split patterns.
NASTY = ("abcXYZ sS\u017f'tTreVEllLdDmM 0123456789\u0661\u00bd\u2167\t\n\r\x0b\x0c\x85\xa0"
         "\u2003\u3000\u200b\x1c.,;:!?^()[]{}<>|-_+=*/\\\"#@$%&~`\u0301\u00e9\u4e2d\u6587"
         "\u0416\u03a9\U0001f600\U0001f44d\U0001f3fd\u200d\u05d0\u0627")
SLOW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def stdlib_text(limit):
    """About `limit` characters of the Python standard library's sources."""
    root = sysconfig.get_paths()["stdlib"]
    parts, size = [], 0
    for name in sorted(os.listdir(root)):
        if name.endswith(".py"):
            with open(os.path.join(root, name), encoding="utf-8", errors="replace") as f:
                parts.append(f.read())
            size += len(parts[-1])
            if size >= limit:
                break
    return "".join(parts)[:limit]


def varied_text():
    """Code, prose, many scripts, emoji, digits, contractions, whitespace runs."""
    prose = ("It's the CAT'S toy; we'LL see, they'VE gone, I'm sure she'd say \u017fo. "
             "Ça coûte 12,345.67€ — naïve café! \u00bfQu\u00e9 tal? "
             "\u0414\u043e\u0431\u0440\u043e\u0435 \u0443\u0442\u0440\u043e. "
             "\u4f60\u597d\uff0c\u4e16\u754c\u3002 \u3053\u3093\u306b\u3061\u306f "
             "\u0645\u0631\u062d\u0628\u0627 \u05e9\u05dc\u05d5\u05dd "
             "\u0928\u092e\u0938\u094d\u0924\u0947 "
             "\U0001f600\U0001f44d\U0001f3fd \U0001f468\u200d\U0001f469\u200d\U0001f467 "
             "x\u00b2 \u00bd \u2167 \u0661\u0662\u0663 1234567890 3.14159\n")
    spaces = ("a  b   c\t\td\n\n\n  \n e \r\n\r\nf\u00a0\u00a0g\u3000h\x85i   \n\t \n"
              + " " * 40 + "x\n")
    return stdlib_text(150_000) + (prose * 20) + spaces * 10 + "".join(NASTY) * 5


@pytest.fixture(scope="module")
def corpus():
    return varied_text()


@pytest.fixture(scope="module", params=["gpt4", "gpt2"])
def trained(request, corpus):
    return Tokenizer.train([corpus], 2000, pattern=request.param, progress=False)


def tiktoken_of(tok):
    return tiktoken.Encoding(name="ours", pat_str=tok.pattern,
                             mergeable_ranks=tok.to_tiktoken_ranks(),
                             special_tokens=tok.special_tokens)


# ------------------------------------------------------------------ pre-tokenizer

@pytest.mark.parametrize("name, pattern, code", [("gpt2", GPT2_PATTERN, 1),
                                                 ("gpt4", GPT4_PATTERN, 2)])
@SLOW
@given(text=st.text(alphabet=st.sampled_from(NASTY), max_size=80) | st.text(max_size=40))
def test_native_split_matches_regex(name, pattern, code, text):
    data = text.encode("utf-8", "replace")
    text = data.decode("utf-8")
    ends = native.split(data, code)
    chunks = [data[a:b].decode("utf-8") for a, b in zip([0] + ends, ends)]
    assert chunks == regex.findall(pattern, text)


def test_builtin_patterns_are_tiktokens():
    """Our gpt2/gpt4 strings are the ones tiktoken ships for r50k and cl100k_base (read
    from its source: no download)."""
    import inspect
    openai_public = pytest.importorskip("tiktoken_ext.openai_public")
    assert GPT2_PATTERN == openai_public.r50k_pat_str
    assert GPT4_PATTERN in inspect.getsource(openai_public.cl100k_base)


@pytest.mark.parametrize("text, gpt2, gpt4", [
    ("x\n  ", ["x", "\n  "], ["x", "\n  "]),                   # end of text: whole run
    ("x\n  y", ["x", "\n ", " y"], ["x", "\n", " ", " y"]),
    ("It's 12345!!\n\nok", ["It", "'s", " 12345", "!!", "\n", "\n", "ok"],
     ["It", "'s", " ", "123", "45", "!!\n\n", "ok"]),
    ("WE'LL \u017fee 'S", ["WE", "'", "LL", " \u017fee", " '", "S"],
     ["WE", "'LL", " \u017fee", " '", "S"]),
])
def test_split_examples(text, gpt2, gpt4):
    for code, want in ((1, gpt2), (2, gpt4)):
        data = text.encode()
        ends = native.split(data, code)
        assert [data[a:b].decode() for a, b in zip([0] + ends, ends)] == want


# ------------------------------------------------------------------ training

def naive_train(texts, pattern, n_merges):
    """Reference trainer: recount every pair after every merge (minbpe's loop), with our
    documented tie-break (highest count, then smallest (left, right)) and duplicate rule.
    Returns the tokens and the merges {(left, right): new id}."""
    counts = collections.Counter(c.encode() for t in texts for c in regex.findall(pattern, t))
    words = [(list(w), c) for w, c in counts.items()]
    tokens, banned, merges = [bytes([b]) for b in range(256)], set(), {}
    while len(tokens) - 256 < n_merges:
        pairs = collections.Counter()
        for w, c in words:
            for pair in zip(w, w[1:]):
                pairs[pair] += c
        best = min(((-c, p) for p, c in pairs.items() if p not in banned), default=None)
        if best is None:
            break
        a, b = best[1]
        if tokens[a] + tokens[b] in tokens:
            banned.add((a, b))
            continue
        tokens.append(tokens[a] + tokens[b])
        z = merges[a, b] = len(tokens) - 1
        for k, (w, c) in enumerate(words):
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(z)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[k] = (out, c)
    return tokens, merges


def replay_merges(chunk, merges):
    """Encode one chunk the training way: apply the lowest-id merge present, until none."""
    ids = list(chunk)
    while len(ids) > 1:
        rank, i = min((merges.get(pair, float("inf")), i)
                      for i, pair in enumerate(zip(ids, ids[1:])))
        if rank == float("inf"):
            break
        ids[i:i + 2] = [rank]
    return ids


@pytest.mark.filterwarnings("ignore:the corpus ran out of pairs")
@SLOW
@given(texts=st.lists(st.text(alphabet="aab bc\n'1\u00e9\U0001f600", max_size=30), max_size=8),
       pattern=st.sampled_from(["gpt2", "gpt4"]), n_merges=st.integers(0, 30))
def test_training_matches_naive_reference(texts, pattern, n_merges):
    tok = Tokenizer.train(texts, 256 + n_merges, pattern=pattern, special_tokens=(),
                          progress=False)
    regex_text = GPT2_PATTERN if pattern == "gpt2" else GPT4_PATTERN
    expected, _ = naive_train(texts, regex_text, n_merges)
    assert [tok.token_bytes(i) for i in range(tok.n_ordinary)] == expected


def test_training_matches_naive_reference_on_code():
    text = stdlib_text(20_000)
    tok = Tokenizer.train([text], 256 + 60, special_tokens=(), progress=False)
    assert [tok.token_bytes(i) for i in range(tok.n_ordinary)] == naive_train(
        [text], GPT4_PATTERN, 60)[0]


@pytest.mark.filterwarnings("ignore:the corpus ran out of pairs")
@SLOW
@given(alphabet=st.sampled_from(["ab", "abc", "aab", "a b"]), data=st.data())
def test_rank_encoding_replays_training_merges(alphabet, data):
    """bpe.py's claim: encoding by rank (tiktoken's rule, ours) gives what replaying the
    training merges in order gives. Small alphabets make many overlapping merges."""
    texts = data.draw(st.lists(st.text(alphabet, min_size=1, max_size=40), min_size=1,
                               max_size=6))
    tokens, merges = naive_train(texts, r"\S+", 60)
    tok = Tokenizer(tokens, r"\S+")
    for word in data.draw(st.lists(st.text(alphabet.replace(" ", ""), min_size=1,
                                           max_size=30), max_size=10)):
        assert tok.encode_ordinary(word) == replay_merges(word.encode(), merges)


def test_pinned_example():
    """Worked by hand: in "aaabdaaabac" (one chunk) aa occurs 4 times -> 256; then (97, 98)
    'ab' and (256, 97) 'aa'+'a' both occur twice, the tie goes to the smaller pair -> 257;
    then 'aa'+'ab' occurs twice -> 258."""
    tok = Tokenizer.train(["aaabdaaabac"], 259 + 3, progress=False)
    assert [tok.token_bytes(i) for i in (256, 257, 258)] == [b"aa", b"ab", b"aaab"]
    assert tok.special_tokens == {"<|endoftext|>": 259, "<|im_start|>": 260, "<|im_end|>": 261}
    assert tok.eot_id == 259 and tok.vocab_size == 262
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
    assert tok.encode("aaab<|im_end|>", allowed_special="all") == [258, 261]


def test_training_is_independent_of_corpus_order(corpus):
    lines = corpus.splitlines(keepends=True)[:3000]
    a = Tokenizer.train(lines, 600, progress=False)
    b = Tokenizer.train(lines[::-1], 600, progress=False)
    assert a.to_tiktoken_ranks() == b.to_tiktoken_ranks()


@pytest.mark.filterwarnings("ignore:the corpus ran out of pairs")
def test_training_ignores_special_token_text():
    tok = Tokenizer.train(["<|endoftext|>" * 50 + "ab ab"], 300, progress=False)
    assert all(b"|" not in tok.token_bytes(i) for i in range(256, tok.n_ordinary))


def test_training_stops_when_pairs_run_out():
    with pytest.warns(UserWarning, match="ran out of pairs"):
        tok = Tokenizer.train(["ab"], 1000, special_tokens=(), progress=False)
    assert tok.n_ordinary == 257


@pytest.mark.parametrize("bad", [255, 258.0, True, "8192"])
def test_training_rejects_bad_vocab_size(bad):
    with pytest.raises(TokenizerError, match="vocab_size"):
        Tokenizer.train(["abc"], bad, progress=False)


# ------------------------------------------------------------------ encoding vs tiktoken

def test_encoding_matches_tiktoken(trained, corpus):
    enc = tiktoken_of(trained)
    ids = trained.encode_ordinary(corpus)
    assert ids == enc.encode_ordinary(corpus)
    assert trained.decode(ids) == corpus
    extra = "caf\u00e9 \U0001f600!!\n\n  \u017f 'S 'LL 123456 " * 3
    assert trained.encode(extra) == enc.encode(extra)


@SLOW
@given(text=st.text(alphabet=st.sampled_from(NASTY), max_size=60) | st.text(max_size=30))
def test_encoding_matches_tiktoken_random(text):
    tok = _TRAINED_SMALL()
    assert tok.encode_ordinary(text) == tiktoken_of(tok).encode_ordinary(text)


@functools.cache
def _TRAINED_SMALL():
    return Tokenizer.train([varied_text()[-60_000:]], 1500, progress=False)


def test_custom_regex_pattern_matches_tiktoken(corpus):
    pattern = r"\p{L}+|\p{N}|\s+|[^\s\p{L}\p{N}]+"
    tok = Tokenizer.train([corpus[:60_000]], 700, pattern=pattern, progress=False)
    assert tok.pattern_name is None
    text = corpus[-20_000:]
    assert tok.encode(text) == tiktoken_of(tok).encode(text)


def test_shuffled_byte_ranks_match_tiktoken(trained, corpus):
    """Imported ranks need not put byte b at id b (tiktoken's cl100k does not)."""
    ranks = trained.to_tiktoken_ranks()
    byte_tokens = sorted((t for t in ranks if len(t) == 1), key=lambda t: (t[0] * 7919) % 256)
    ranks.update({t: i for i, t in enumerate(byte_tokens)})
    tok = Tokenizer.from_tiktoken_ranks(ranks, trained.pattern, trained.special_tokens)
    text = corpus[:30_000]
    assert tok.encode(text) == tiktoken_of(tok).encode(text)
    assert tok.to_tiktoken_ranks() == ranks


def test_special_token_rules_match_tiktoken(trained):
    enc = tiktoken_of(trained)
    text = "hi<|endoftext|> there<|im_start|>user\nyo<|im_end|><|endoftext|>"
    for allowed in ("all", {"<|endoftext|>"}, {"<|im_start|>", "<|im_end|>"}):
        assert trained.encode(text, allowed_special=allowed, disallowed_special=()) == \
            enc.encode(text, allowed_special=allowed, disallowed_special=())
    assert trained.encode(text, disallowed_special=()) == enc.encode(text, disallowed_special=())
    with pytest.raises(TokenizerError, match="disallowed"):
        trained.encode(text)
    with pytest.raises(TokenizerError, match="disallowed"):
        trained.encode(text, allowed_special={"<|endoftext|>"})
    with pytest.raises(TokenizerError, match="unknown special"):
        trained.encode(text, allowed_special={"<|nope|>"})
    assert trained.encode_ordinary(text) == enc.encode_ordinary(text)
    # minbpe's spellings: "none" = specials as ordinary text, "none_raise" = the default.
    assert trained.encode(text, allowed_special="none") == enc.encode_ordinary(text)
    with pytest.raises(TokenizerError, match="disallowed"):
        trained.encode(text, allowed_special="none_raise")
    with pytest.raises(TokenizerError, match="did you mean"):
        trained.encode(text, allowed_special="<|endoftext|>")


def test_encode_to_numpy_matches_tiktoken(trained, corpus):
    enc = tiktoken_of(trained)
    text = corpus[:20_000] + "<|im_start|>x<|im_end|>" + corpus[-5000:]
    for kwargs in ({"disallowed_special": ()}, {"allowed_special": "all"}):
        ours = trained.encode_to_numpy(text, **kwargs)
        assert ours.dtype == np.uint32
        assert ours.tolist() == trained.encode(text, **kwargs)
        assert ours.tolist() == enc.encode_to_numpy(text, **kwargs).tolist()
    assert trained.encode_to_numpy("").shape == (0,)


def test_encode_batch_equals_encode(trained, corpus):
    texts = [corpus[k:k + 5000] for k in range(0, 100_000, 5000)]
    assert trained.encode_batch(texts, num_threads=2) == [trained.encode(t) for t in texts]


# ------------------------------------------------------------------ round trips, decoding

@SLOW
@given(text=st.text() | st.text(alphabet=st.sampled_from(NASTY)),
       special=st.sampled_from(["", "<|endoftext|>", "<|im_start|>"]))
def test_round_trip(text, special):
    tok = _TRAINED_SMALL()
    assert tok.decode(tok.encode_ordinary(text)) == text
    mixed = text + special + text
    assert tok.decode(tok.encode(mixed, allowed_special="all")) == mixed
    assert tok.decode(tok.encode(mixed, disallowed_special=())) == mixed


def test_lone_surrogates_become_replacement_like_tiktoken(trained):
    text = "a\ud800b"
    assert trained.encode(text) == tiktoken_of(trained).encode(text)
    assert trained.decode(trained.encode(text)) == "a\ufffdb"


def test_decode_invalid_utf8_and_unknown_ids():
    tok = Tokenizer.bytes_level()
    ids = list("caf\u00e9".encode())[:-1]                 # cut inside the two-byte \u00e9
    assert tok.decode(ids) == "caf\ufffd"
    assert tok.decode_bytes(ids) == b"caf\xc3"
    for bad in ([259], [-1], [3, 10**9], [1.5]):
        with pytest.raises(TokenizerError, match="not in the vocabulary"):
            tok.decode(bad)
    assert tok.decode([256, 104]) == "<|endoftext|>h"
    with pytest.raises(TypeError):
        tok.encode(b"bytes")


def test_constructor_rejects_bad_vocabularies():
    byte_tokens = [bytes([b]) for b in range(256)]
    with pytest.raises(TokenizerError, match="256 single bytes"):
        Tokenizer(byte_tokens[1:])
    with pytest.raises(TokenizerError, match="same bytes"):
        Tokenizer(byte_tokens + [b"ab", b"ab"])
    with pytest.raises(TokenizerError, match="special"):
        Tokenizer(byte_tokens, special_tokens={"<s>": 3})
    with pytest.raises(ValueError, match="not a valid regex"):
        Tokenizer(byte_tokens, pattern="(unclosed")
    with pytest.raises(TokenizerError, match="ranks must be exactly"):
        Tokenizer.from_tiktoken_ranks({bytes([b]): b + 1 for b in range(256)}, "gpt2")


# ------------------------------------------------------------------ adversarial inputs

ADVERSARIAL = {"a": "a", "caret": "^", "space": " ", "newline": "\n",
               "letters": "abcdefghijklmnopqrstuvwxyz", "digits": "7", "mixed": "a \n^1"}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_inputs_stay_near_linear(name, trained):
    """10**6 characters with no useful split point. A quadratic merge loop would take
    minutes; the bound (generous, 2-core CI) only catches that, it is no benchmark."""
    unit = ADVERSARIAL[name]
    small = unit * (10**4 // len(unit))
    assert trained.encode(small) == tiktoken_of(trained).encode(small)
    big = unit * (10**6 // len(unit)) if name != "letters" else unit * (10**5 // len(unit))
    start = time.perf_counter()
    ids = trained.encode(big)
    assert time.perf_counter() - start < 20
    assert trained.decode(ids) == big


@pytest.mark.filterwarnings("ignore:the corpus ran out of pairs")
@pytest.mark.parametrize("name", ["a", "caret", "space", "newline", "letters"])
def test_adversarial_training_stays_near_linear(name):
    """One giant chunk makes giant tokens (a run of 2**19 'a's): training and building the
    encoder's pair table must stay near-linear in their length, not quadratic."""
    unit = ADVERSARIAL[name]
    text = unit * (10**6 // len(unit)) if name != "letters" else unit * (10**5 // len(unit))
    start = time.perf_counter()
    tok = Tokenizer.train([text], 1000, progress=False)
    ids = tok.encode(text)
    assert time.perf_counter() - start < 30
    assert tok.decode(ids) == text
    assert tok.encode(text[:5000]) == tiktoken_of(tok).encode(text[:5000])
