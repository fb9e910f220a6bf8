"""The Tokenizer: byte-level BPE encode/decode with special tokens, tiktoken-exact.

Vocabulary. Token id i is a byte string; ids 0..n-1 are the "ordinary" tokens, ranked by
id (a lower id was merged earlier in training), and they include all 256 single bytes, so
any text encodes. Special tokens (<|endoftext|> ...) take ids of their own, by default
n, n+1, ...; they are produced only when the caller allows them (see encode).
(A tokenizer read from Hugging Face, Tokenizer.from_merges, ranks merges instead of
tokens, and its ordinary ids may have specials among them: hf.py's header says why.)

Encoding a text (tiktoken's algorithm, which we match id for id):
  1. split the text into chunks with the pattern (patterns.py); merges never cross chunks;
  2. for each chunk, start from its bytes and repeatedly merge the adjacent pair whose
     concatenation is the token of lowest rank, the leftmost such pair on ties, until no
     adjacent pair concatenates to a token. A trained vocabulary has exactly the tokens
     its merges made, so this replays the training merges in order.
The C core (csrc/bpe_split.c, bpe_encode.c) does both steps for the built-in patterns, with a cache of chunk
-> ids per call (code and prose repeat their chunks a lot), a direct lookup for a chunk
that is itself one token, and a heap for long chunks so that "a" * 10**6 stays
O(n log n). Custom patterns split with the `regex` module, then merge in C.

Special tokens follow tiktoken's rules:
  encode(text, allowed_special=frozenset(), disallowed_special="all")
  * allowed_special: "all" or a set of special strings; where they occur in the text they
    become their special ids.
  * disallowed_special: "all" (= every special not allowed) or a set; if one of them occurs
    in the text, encode raises TokenizerError instead of silently encoding it as ordinary
    text (the default, which protects against prompt text forging <|endoftext|>).
    Pass disallowed_special=() to encode such text as ordinary bytes.
  * minbpe's spellings work too: allowed_special="none_raise" is the default (no special
    allowed, raise on one), allowed_special="none" encodes special text as ordinary text.
encode_ordinary(text) ignores specials entirely (they are ordinary text).

Decoding concatenates token bytes; bytes that are not valid UTF-8 become U+FFFD in
decode (decode_bytes returns them raw); an id outside the vocabulary raises.
Strings with lone surrogates (not encodable as UTF-8) have them replaced by U+FFFD first,
as tiktoken does.
"""
import concurrent.futures
import os
import unicodedata

import numpy as np

from ..errors import TokenizerError
from . import fileformat, patterns
from .native import MAX_CALL_BYTES, Encoder
from .text import utf8_bytes

DEFAULT_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


class Tokenizer:
    """A byte-level BPE vocabulary with a split pattern and special tokens.

    Build one with Tokenizer.train, Tokenizer.load, Tokenizer.from_tiktoken_ranks,
    Tokenizer.from_merges or Tokenizer.bytes_level; the constructor takes the vocabulary
    directly: tokens[i] = bytes of ordinary token i; special_tokens = {text: id}.

    Two merge rules (csrc/bpe.h). The constructor's is tiktoken's: ids are ranks, and any
    two tokens whose concatenation is a token merge, at the rank of that token; what we
    train is of this kind. from_merges takes Hugging Face's: an explicit list of merges,
    ranked by position, over ordinary ids that may be anywhere (tokenizer/hf.py reads
    tokenizer.json files into it).

    Attributes: vocab_size (max id + 1), n_ordinary (the number of BPE tokens; with the
    constructor they are ids 0..n_ordinary-1, see ordinary_ids), special_tokens
    ({text: id}), eot_id, pattern (the regex string), pattern_name ('gpt2', 'gpt4' or None
    for a custom regex), normalizer (None, or 'nfc': text is NFC-normalized before it is
    split, as Hugging Face's NFC normalizer does), merges (None for tiktoken's rule, else
    the (left id, right id) pairs in rank order), ignore_merges. Encoding never changes
    after construction, so one instance may encode on many threads at once.

    Metadata, kept for Hugging Face interop and saved with the tokenizer, never used by
    encode/decode, free to set: chat_template (a Jinja string), bos_token, eos_token,
    pad_token (special-token texts), add_bos_token (the model expects bos_token first).
    """

    METADATA = ("chat_template", "bos_token", "eos_token", "pad_token", "add_bos_token")

    def __init__(self, tokens, pattern="gpt4", special_tokens=None, normalizer=None):
        tokens = list(tokens)
        self._setup(list(range(len(tokens))), tokens, pattern, special_tokens, None, True,
                    normalizer)

    def _setup(self, ids, tokens, pattern, special_tokens, merges, ignore_merges, normalizer):
        """ids[k] is the id of ordinary token tokens[k], ids ascending; merges None or an
        int array (m, 3) of (left, right, result) as positions k in tokens."""
        for i, tok in zip(ids, tokens):
            if not isinstance(tok, bytes) or not tok:
                raise TokenizerError(f"token {i} must be non-empty bytes, got {tok!r}")
        if len(set(tokens)) != len(tokens):
            raise TokenizerError("two token ids have the same bytes; ranks would be ambiguous")
        missing = set(range(256)) - {t[0] for t in tokens if len(t) == 1}
        if missing:
            raise TokenizerError(f"byte-level BPE needs all 256 single bytes as tokens; "
                                 f"missing {len(missing)}, e.g. {bytes([min(missing)])!r}")
        if normalizer not in (None, "nfc"):
            raise TokenizerError(f"normalizer must be None or 'nfc', got {normalizer!r}")
        self.pattern_name, self.pattern, self._native = patterns.resolve(pattern)
        self.normalizer = normalizer
        dense = not ids or ids[-1] == len(ids) - 1
        ordinary = dict(zip(ids, tokens))
        self._specials = self._check_specials(special_tokens or {}, ordinary, dense,
                                              shared=merges is not None)
        size = max([ids[-1] + 1 if ids else 0] + [i + 1 for i in self._specials.values()])
        self._id_bytes = [None] * size                              # id -> bytes (None: gap)
        for i, tok in ordinary.items():
            self._id_bytes[i] = tok
        for text, i in self._specials.items():
            self._id_bytes[i] = text.encode("utf-8")
        self.n_ordinary = len(tokens)
        # The C encoder numbers the ordinary tokens 0..n-1 by position; when they are not
        # ids 0..n-1 (specials among them), one NumPy gather maps its output to ids.
        self._to_id = None if dense else np.asarray(ids, np.uint32)
        self._ordinary_ids = ids
        if merges is not None:
            merges = np.asarray(merges, np.int32).reshape(-1, 3)
            self._merges = [(ids[a], ids[b]) for a, b in merges[:, :2].tolist()]
        else:
            self._merges = None
        self.ignore_merges = True if merges is None else bool(ignore_merges)
        self._encoder = Encoder(tokens, self._native, merges, self.ignore_merges)
        self._special_splitters = {}
        for name in self.METADATA:
            setattr(self, name, None)

    @staticmethod
    def _check_specials(specials, ordinary, dense, shared):
        """shared: a special may also be the ordinary token of its id when their bytes are
        equal (Hugging Face's added tokens that are in the model's vocabulary, as GPT-2's
        <|endoftext|> is)."""
        specials = dict(specials)
        for text, i in specials.items():
            if not isinstance(text, str) or not text:
                raise TokenizerError(f"special token must be a non-empty str, got {text!r}")
            if not isinstance(i, (int, np.integer)) or isinstance(i, bool) or i < 0 or (
                    i in ordinary and not (shared and ordinary[i] == text.encode("utf-8"))):
                where = f" (>= {len(ordinary)}, past the ordinary tokens)" if dense else ""
                raise TokenizerError(f"special token {text!r} has id {i!r}; special ids must "
                                     f"be ints that no ordinary token has{where}")
        if len(set(specials.values())) != len(specials):
            raise TokenizerError(f"two special tokens share an id: {specials}")
        return {text: int(i) for text, i in specials.items()}

    # ------------------------------------------------------------------ constructors
    @classmethod
    def train(cls, source, vocab_size, pattern="gpt4", special_tokens=DEFAULT_SPECIALS,
              progress=True):
        """Train on `source` (a path to a file or directory, a list of paths, or an iterable
        of str) up to `vocab_size` ids, the special tokens included. See train.py."""
        from .train import train      # on first use: its progress bars (tqdm) take ~30 ms to import
        return train(cls, source, vocab_size, pattern, special_tokens, progress)

    @classmethod
    def bytes_level(cls, pattern="gpt4", special_tokens=DEFAULT_SPECIALS):
        """No merges: the 256 byte tokens, then the special tokens (for tiny demos)."""
        return cls([bytes([b]) for b in range(256)], pattern,
                   {text: 256 + k for k, text in enumerate(special_tokens)})

    @classmethod
    def from_tiktoken_ranks(cls, mergeable_ranks, pattern, special_tokens=None):
        """From tiktoken's pieces: {bytes: rank} with ranks 0..n-1, a pattern ('gpt2',
        'gpt4' or regex string) and {special text: id}."""
        ranks = sorted(mergeable_ranks.items(), key=lambda item: item[1])
        for expected, (tok, rank) in enumerate(ranks):
            if rank != expected:
                raise TokenizerError(f"ranks must be exactly 0..{len(ranks) - 1}; rank "
                                     f"{expected} is missing (next is {rank} for {tok!r})")
        return cls([tok for tok, _ in ranks], pattern, special_tokens)

    @classmethod
    def from_merges(cls, vocab, merges, pattern, special_tokens=None, ignore_merges=False,
                    normalizer=None):
        """Hugging Face's BPE rule. vocab: {id: bytes} of the ordinary tokens (any distinct
        non-negative ids); merges: (left bytes, right bytes) pairs in rank order, the parts
        and their concatenation all in vocab (a pair listed twice keeps its last rank, as
        HF's merge table does); ignore_merges: a chunk that is itself a token encodes as
        that token (HF's flag of that name; tiktoken always does this)."""
        ids = sorted(vocab)
        for i in ids:
            if not isinstance(i, (int, np.integer)) or isinstance(i, bool) or i < 0:
                raise TokenizerError(f"token ids must be non-negative ints, got {i!r}")
        tokens = [vocab[i] for i in ids]
        position = {tok: k for k, tok in enumerate(tokens)}
        last = {}
        for rank, pair in enumerate(merges):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise TokenizerError(f"merge {rank} must be a pair of bytes, got {pair!r}")
            left, right = pair
            for part in (left, right, left + right):
                if part not in position:
                    raise TokenizerError(f"merge {rank} ({left!r}, {right!r}): {part!r} is "
                                         f"not an ordinary token of the vocabulary")
            last[(position[left], position[right])] = rank
        table = np.array([(a, b, position[tokens[a] + tokens[b]])
                          for (a, b), _ in sorted(last.items(), key=lambda item: item[1])],
                         np.int32).reshape(-1, 3)
        tok = cls.__new__(cls)
        tok._setup([int(i) for i in ids], tokens, pattern, special_tokens, table,
                   ignore_merges, normalizer)
        return tok

    def to_tiktoken_ranks(self):
        """{bytes: rank} for the ordinary tokens: tiktoken.Encoding(mergeable_ranks=...)."""
        if self._merges is not None:
            raise TokenizerError("this tokenizer follows Hugging Face's merge list (from_merges"
                                 "): its ranks belong to merges, not tokens, so tiktoken's "
                                 "{bytes: rank} cannot express it")
        return {tok: i for i, tok in enumerate(self._id_bytes[:self.n_ordinary])}

    def save(self, path):
        """Write the versioned text format (fileformat.py), atomically."""
        fileformat.save(self, path)

    @classmethod
    def load(cls, path):
        return fileformat.load(cls, path)

    # ------------------------------------------------------------------ properties
    @property
    def vocab_size(self):
        """Number of ids: max id + 1 (the ordinary tokens plus the special tokens)."""
        return len(self._id_bytes)

    @property
    def special_tokens(self):
        """{special text: id} (a copy: the tokenizer is immutable)."""
        return dict(self._specials)

    @property
    def eot_id(self):
        """The id of the end-of-text token: eos_token when that names a special token,
        else <|endoftext|>; None when this tokenizer has neither."""
        if self.eos_token in self._specials:
            return self._specials[self.eos_token]
        return self._specials.get("<|endoftext|>")

    @property
    def ordinary_ids(self):
        """The ids of the BPE tokens, ascending (0..n_ordinary-1 unless from_merges)."""
        return list(self._ordinary_ids)

    @property
    def merges(self):
        """None (tiktoken's rule), or the (left id, right id) merges in rank order."""
        return None if self._merges is None else list(self._merges)

    def token_bytes(self, i):
        return self.decode_bytes([i])

    def __repr__(self):
        return (f"Tokenizer(vocab_size={self.vocab_size}, pattern="
                f"{self.pattern_name or self.pattern!r}, specials={list(self.special_tokens)})")

    # ------------------------------------------------------------------ encoding
    def encode_ordinary(self, text):
        """Text -> ids, special-token strings treated as plain text."""
        return self._ordinary(text, False)

    def _ordinary(self, text, as_array):
        if self.normalizer == "nfc" and not isinstance(text, str):
            raise TypeError(f"expected str, got {type(text).__name__}")
        data = utf8_bytes(unicodedata.normalize("NFC", text) if self.normalizer else text)
        if len(data) > MAX_CALL_BYTES:
            raise TokenizerError(f"one call encodes at most {MAX_CALL_BYTES} bytes of UTF-8, "
                                 f"got {len(data)}: encode the text in pieces")
        mapped = self._to_id is not None
        if self._native != patterns.NATIVE_NONE:
            ids = self._encoder.encode(data, as_array or mapped)
        else:
            text = data.decode("utf-8")                 # with any lone surrogate replaced
            chunks = [c.encode("utf-8") for c in patterns.compiled(self.pattern).findall(text)]
            ends = np.cumsum([len(c) for c in chunks], dtype=np.int64)
            ids = self._encoder.encode_chunks(b"".join(chunks), ends, as_array or mapped)
        if not mapped:
            return ids
        ids = self._to_id[ids]
        return ids if as_array else ids.tolist()

    def encode(self, text, allowed_special=frozenset(), disallowed_special="all"):
        """Text -> list of ids with tiktoken's special-token rules (module docstring)."""
        return self._encode(text, allowed_special, disallowed_special, False)

    def encode_to_numpy(self, text, allowed_special=frozenset(), disallowed_special="all"):
        """encode, returning a uint32 array (tiktoken's name): for pipelines that store
        ids, it skips building a Python list (about half the time of encode)."""
        return self._encode(text, allowed_special, disallowed_special, True)

    def _encode(self, text, allowed_special, disallowed_special, as_array):
        if isinstance(allowed_special, str) and allowed_special in ("none", "none_raise"):
            if allowed_special == "none":
                disallowed_special = ()
            allowed_special = ()
        allowed = self._special_set(allowed_special, "allowed_special")
        if disallowed_special == "all":
            disallowed = set(self._specials) - allowed
        else:
            disallowed = self._special_set(disallowed_special, "disallowed_special")
        if not isinstance(text, str):
            raise TypeError(f"expected str, got {type(text).__name__}")
        for special in sorted(disallowed):
            if special in text:
                raise TokenizerError(
                    f"the text contains the special token {special!r}, which is disallowed: "
                    f"pass allowed_special={{{special!r}}} (or 'all') to encode it as its "
                    f"special id, or disallowed_special=() to encode it as ordinary text")
        if not allowed or not any(s in text for s in allowed):
            return self._ordinary(text, as_array)
        parts = []
        pieces = self._splitter(frozenset(allowed)).split(text)  # ordinary, special, ...
        for k, piece in enumerate(pieces):
            if k % 2:
                parts.append([self._specials[piece]])
            elif piece:
                parts.append(self._ordinary(piece, as_array))
        if as_array:
            return np.concatenate([np.asarray(p, np.uint32) for p in parts])
        return [i for part in parts for i in part]

    def _special_set(self, value, name):
        if value == "all":
            return set(self._specials)
        if isinstance(value, str):
            raise TokenizerError(f"{name} must be 'all' or a set of special tokens (or, for "
                                 f"allowed_special, 'none' / 'none_raise'), got the string "
                                 f"{value!r} (did you mean {{{value!r}}}?)")
        value = set(value)
        unknown = value - set(self._specials)
        if unknown and name == "allowed_special":
            raise TokenizerError(f"{name} names unknown special tokens {sorted(unknown)}; "
                                 f"this tokenizer has {sorted(self._specials)}")
        return value

    def _splitter(self, allowed):
        """A regex whose capture group is any allowed special, longest first."""
        if allowed not in self._special_splitters:
            alternatives = "|".join(patterns.regex.escape(s)
                                    for s in sorted(allowed, key=lambda s: (-len(s), s)))
            self._special_splitters[allowed] = patterns.regex.compile(f"({alternatives})")
        return self._special_splitters[allowed]

    def encode_batch(self, texts, num_threads=None, **kwargs):
        """Encode many texts on `num_threads` threads (default: all cores); the C core
        releases the GIL. kwargs go to encode."""
        texts = list(texts)
        threads = num_threads or os.cpu_count() or 1
        if threads == 1 or len(texts) < 2:
            return [self.encode(t, **kwargs) for t in texts]
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            return list(pool.map(lambda t: self.encode(t, **kwargs), texts))

    # ------------------------------------------------------------------ decoding
    def decode_bytes(self, ids):
        """ids -> the concatenated token bytes; unknown ids raise TokenizerError."""
        ids = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
        table = self._id_bytes
        try:
            return b"".join([table[i] if i >= 0 else None for i in ids])
        except (IndexError, TypeError):
            bad = next(i for i in ids if not (isinstance(i, (int, np.integer))
                                              and 0 <= i < len(table) and table[i] is not None))
            raise TokenizerError(f"id {bad!r} is not in the vocabulary (valid ids: 0.."
                                 f"{len(table) - 1}, without gaps)") from None

    def decode(self, ids):
        """ids -> str; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")
