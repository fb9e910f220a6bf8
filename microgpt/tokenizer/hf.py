"""Hugging Face tokenizers in and out: tokenizer.json (byte-level BPE) <-> our Tokenizer.

    from microgpt.tokenizer.hf import load_hf_tokenizer, save_hf_tokenizer
    tok = load_hf_tokenizer("Llama-3.2-1B/")     # a model directory, or its tokenizer.json
    tok.encode(text, allowed_special="all")       # == HF's encode(text, add_special_tokens=False)
    tok.chat_template, tok.bos_token, tok.eos_token, tok.pad_token, tok.add_bos_token
    save_hf_tokenizer(tok, "out/")                # tokenizer.json + tokenizer_config.json

What we read. A tokenizer.json is a pipeline (the `tokenizers` library runs it in this
order): added tokens are cut out of the text; each remaining piece is normalized, split
into pre-tokens, and each pre-token is BPE-merged. The byte-level BPE kind, which GPT-2,
Llama 3, Qwen2 and Qwen3 use and we read, has
  * model: {"type": "BPE", "vocab": {string: id}, "merges": ["a b", ...] or [["a", "b"],
    ...]} with no byte_fallback, dropout, unk fallback, or subword prefix/suffix;
  * pre_tokenizer: ByteLevel (its own regex: GPT-2's), or Sequence[Split(Regex, Isolated),
    ByteLevel(use_regex=false)] as Llama 3 and Qwen write it;
  * normalizer: null or NFC (Qwen); decoder ByteLevel or null; any post_processor, of
    which we read only whether it puts a BOS token first (add_bos_token);
  * added_tokens: [{id, content, special, ...}], all of which become our special tokens.
SentencePiece-style files (Llama 2, Mistral: a BPE with byte_fallback, Metaspace, "▁"
normalizers, or only a tokenizer.model) and other models (WordPiece, Unigram, WordLevel)
are refused with a TokenizerError naming what was found; so is every option above we
do not implement, rather than encoding differently.

ByteLevel. BPE runs on strings, so ByteLevel first maps each UTF-8 byte to one of 256
printable characters (GPT-2's bytes_to_unicode: the printable Latin-1 bytes stand for
themselves, the other 68 -- controls, space, soft hyphen -- become U+0100.. in byte
order, so the space is "Ġ", U+0120). A vocabulary string is thus a byte string in
disguise: mapping its characters back gives our token bytes. This is a bijection on the
256 characters, so two vocabulary strings never give the same bytes.

Merges onto our encoder. HF's BPE keeps a heap of the adjacent symbol pairs that are in
its merge table, pops the lowest rank -- the pair's position in `merges` -- leftmost on
ties, and replaces the pair with the vocabulary id of its concatenation. Our C encoder runs the same loop; only the
tables differ from tiktoken's (csrc/bpe.h): there every split of a token into two
tokens merges, at the rank of the token (ids are ranks); here exactly the listed pairs
merge, at their own rank. The two rules differ on real vocabularies -- a pair whose
concatenation is a token but which is not a listed merge never merges in HF, and two
merges may make one token at two ranks -- so the C encoder takes HF's table as given
(bpe_encoder_new_merges) rather than re-ranking tokens; that is the only way to be
exact for every vocabulary. Three more details of HF we follow:
  * a pair listed twice keeps its last rank (the merge table is a hash map built in
    list order);
  * ignore_merges (Llama 3): a pre-token that is itself a vocabulary string is that
    token, unmerged -- the C encoder's whole-chunk lookup, on only when the flag is;
  * ids: HF ids need not be 0..n-1 with the 256 bytes first (GPT-2's "!" is id 0, byte
    0x00 is id 188; a trained tokenizer puts its special tokens at 0, 1, ...). The C
    encoder numbers the ordinary tokens by position; Tokenizer maps its output to ids
    with one NumPy gather (bpe.py, _to_id), skipped when the ids are 0..n-1 already
    (GPT-2, Llama 3, Qwen). An added token that is also in model.vocab with the same
    bytes (GPT-2's <|endoftext|>) stays an ordinary token too, so the ids stay dense.

Special tokens. HF cuts every added token out of the text before anything else,
leftmost-longest, whether it is marked special or not; that is our encode with
allowed_special="all" (specials longest first). Added tokens with lstrip, rstrip or
single_word set, and "normalized" added tokens under a normalizer, match differently
and are refused. HF's post_processor may add a BOS token (Llama 3 does); our encode
never adds anything, so compare with HF's add_special_tokens=False, or prepend the
bos_token id when add_bos_token is true. Decoding: HF's ByteLevel decoder reads a special
token's characters as byte symbols too, so it turns "<|été|>" into "<|�t�|>";
ours decodes a special to its text (ASCII specials, the usual ones, decode alike).

The split regex. HF runs it with Oniguruma, we with the `regex` module (or our C
scanner, for the two built-in patterns). Where they agree:
  * GPT-2's ByteLevel regex splits exactly as our 'gpt2' pattern (tiktoken's rewrite of
    it: `\\s++$|\\s+(?!\\S)|\\s` is GPT-2's `\\s+(?!\\S)|\\s+`), so it runs in C; Llama 3's
    and Qwen's Split regexes run in `regex`, as any custom pattern does (they differ
    from our 'gpt4' at trailing whitespace: Llama 3 splits "\\n\\n  " at the end of a text
    as "\\n\\n", "  ", tiktoken's cl100k keeps it whole).
  * Isolated keeps the text between matches as pieces of its own; for a regex that can
    leave text unmatched we add the alternative `(?:(?!P)[\\s\\S])+` (a run of characters
    where P does not match), which is that gap exactly.
  * Unicode classes: \\p{L}, \\p{N} and \\s follow each library's Unicode tables, and
    the Oniguruma inside `tokenizers` knows an older Unicode than `regex`: the ~4600
    code points assigned in between (all unassigned in Python's unicodedata too) can
    split differently. Ordinary text never meets them; the tests leave out what
    unicodedata calls unassigned. NFC uses Python's unicodedata, with the same caveat.
  * Anchors: Oniguruma (Ruby syntax) reads ^ and $ per line, `regex` per text, so a
    Split regex with an anchor is refused -- except our own 'gpt4' pattern, whose
    possessive `\\s++$` can only stop at the end of the text in either reading.
  * Possessive intervals: Oniguruma reads `x{1,3}+` as (x{1,3})+, `regex` as possessive;
    we write our 'gpt4' with `\\p{N}{1,3}` (possessive or not, the same there).

Export. A tokenizer that came from a tokenizer.json writes its merge list back as it
is. One of ours follows tiktoken's rule, so we derive HF merges from the ranks as
transformers' tiktoken converter does: token t of rank r gets the merge (x, y) where
BPE of t's bytes with the ranks below r stops at two parts x, y; and ignore_merges on.
For a tokenizer trained by microgpt (train.py) this is exact for every text: training
replays merges in order, each merge only joins parts that tile a token, and by
induction on the rank the parts that tile any token t when rank r(t) comes up are
always the two it was trained from; so at every step tiktoken's lowest-ranked pair is
the next listed merge, and both rules take the same steps. (For ranks imported from
elsewhere it is as exact as transformers' own conversion.) Specials go into model.vocab
as well as added_tokens, as GPT-2's file does, which pins their ids. A custom pattern of
ours that leaves text unmatched drops that text (as tiktoken does) where HF keeps it:
only such texts could encode differently.
"""
import json
import os

import regex

from ..errors import TokenizerError
from ..fileio import atomic_write
from . import patterns
from .bpe import Tokenizer

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"      # where transformers v5 saves the template

# GPT-2's ByteLevel regex, as the `tokenizers` library spells it.
HF_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# Our 'gpt4' pattern in a form Oniguruma reads as `regex` does (see the header).
ONIG_GPT4_REGEX = patterns.GPT4_PATTERN.replace(r"\p{N}{1,3}+", r"\p{N}{1,3}")
KNOWN_REGEXES = {HF_GPT2_REGEX: "gpt2", ONIG_GPT4_REGEX: "gpt4"}
_GAP = r"|(?:(?!(?:{0}))[\s\S])+"
MALFORMED_FIX = ("the file is damaged or hand-edited: download it again (or write it with the "
                 "`tokenizers` library)")


# ------------------------------------------------------------------ ByteLevel alphabet

def bytes_to_unicode():
    """[char of byte 0, ..., char of byte 255]: GPT-2's printable stand-ins for bytes."""
    printable = {*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)}
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


BYTE_CHARS = bytes_to_unicode()
_BYTE_OF = {c: b for b, c in enumerate(BYTE_CHARS)}


def byte_level_string(data):
    """Token bytes -> the vocabulary string tokenizer.json stores."""
    return "".join([BYTE_CHARS[b] for b in data])


def byte_level_bytes(text):
    """A vocabulary string -> its bytes, or None when a character is outside the 256."""
    try:
        return bytes([_BYTE_OF[c] for c in text])
    except KeyError:
        return None


# ------------------------------------------------------------------ reading

def load_hf_tokenizer(path):
    """A Hugging Face model directory (or a tokenizer.json path) -> Tokenizer.

    Reads tokenizer.json and, beside it, tokenizer_config.json / special_tokens_map.json /
    chat_template.jinja when present. Raises TokenizerError, naming the file and what to
    do, for anything that is missing, malformed or of a kind we do not read (header)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        folder, file = path, os.path.join(path, TOKENIZER_JSON)
        if not os.path.isfile(file):
            raise TokenizerError(_missing_json_message(folder))
    elif os.path.isfile(path):
        folder, file = os.path.dirname(path) or ".", path
        if os.path.basename(path) == "tokenizer.model":
            raise TokenizerError(f"{path}: a SentencePiece model (Llama 2 style): not "
                                 f"supported yet; only byte-level BPE tokenizer.json files are")
    else:
        raise TokenizerError(f"{path}: no such file or directory (give a Hugging Face model "
                             f"directory or its {TOKENIZER_JSON})")
    spec = _read_json(file)
    tok = _tokenizer_from_spec(spec, file)
    _read_config(tok, folder, spec, file)
    return tok


def _missing_json_message(folder):
    names = set(os.listdir(folder))
    if "tokenizer.model" in names:
        return (f"{folder}: has a SentencePiece tokenizer.model (Llama 2 style) and no "
                f"{TOKENIZER_JSON}: SentencePiece tokenizers are not supported yet")
    if {"vocab.json", "merges.txt"} <= names:
        return (f"{folder}: has vocab.json + merges.txt but no {TOKENIZER_JSON}; write one "
                f"with transformers: AutoTokenizer.from_pretrained(dir).save_pretrained(dir)")
    return f"{folder}: no {TOKENIZER_JSON} in this directory (is it a Hugging Face model?)"


def _read_json(file, kind="tokenizer"):
    try:
        with open(file, encoding="utf-8") as f:
            value = json.load(f)
    except UnicodeDecodeError:
        raise TokenizerError(f"{file}: not UTF-8 text; expected a {kind} JSON file; "
                             f"{MALFORMED_FIX}") from None
    except json.JSONDecodeError as exc:
        raise TokenizerError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno}, "
                             f"column {exc.colno}): truncated or edited? Download it "
                             f"again") from None
    if not isinstance(value, dict):
        raise TokenizerError(f"{file}: expected a JSON object, got {type(value).__name__}; "
                             f"{MALFORMED_FIX}")
    return value


class _Spec:
    """Checked access to one object of tokenizer.json; errors name the file and key."""

    def __init__(self, file, where, value):
        self.file, self.where, self.value = file, where, value

    def fail(self, message):
        """A malformed file: say where, what, and the one fix there is."""
        raise TokenizerError(f"{self.file}: {self.where}: {message}; {MALFORMED_FIX}")

    def unsupported(self, what):
        raise TokenizerError(f"{self.file}: {self.where}: {what}: not supported yet (microgpt "
                             f"reads byte-level BPE tokenizers: GPT-2, Llama 3, Qwen2/3)")

    def get(self, key, kinds, default=None):
        """value[key] (default when absent), which must be of one of `kinds` (a bool is
        no int here, though Python says it is)."""
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        value = self.value.get(key, default)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            self.fail(f"{key!r} must be {names}, got {value!r:.60}")
        return value

    def child(self, key, value):
        return _Spec(self.file, f"{self.where}.{key}" if self.where else key, value)


def _objects(spec, key, list_key):
    """A component (normalizer, pre_tokenizer ...) -> its parts, a Sequence flattened."""
    value = spec.get(key, (dict, type(None)))
    if value is None:
        return []
    part = spec.child(key, value)
    kind = part.get("type", str, "")
    if kind == "Sequence":
        items = part.get(list_key, list)
        out = []
        for k, item in enumerate(items):
            if not isinstance(item, dict):
                part.fail(f"{list_key}[{k}] must be an object")
            out.append(part.child(f"{list_key}[{k}]", item))
        return out
    return [part]


def _tokenizer_from_spec(data, file):
    spec = _Spec(file, "", data)
    model = spec.child("model", spec.get("model", dict))
    kind = model.get("type", (str, type(None)))
    if kind is None:                       # HF infers the model from its keys
        kind = "BPE" if "merges" in model.value else "WordPiece" if "continuing_subword_prefix" \
            in model.value else "Unigram" if isinstance(model.value.get("vocab"), list) else "?"
    if kind != "BPE":
        model.unsupported(f"model type {kind!r}")
    if model.get("byte_fallback", (bool, type(None))):
        model.unsupported("a BPE with byte_fallback, SentencePiece-style (Llama 2, Mistral)")
    _refuse_sentencepiece(spec)
    if model.get("dropout", (int, float, type(None))):
        model.unsupported("BPE dropout (random merges)")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key, (str, type(None))):
            model.unsupported(f"{key} {model.value[key]!r} (a WordPiece-style BPE)")
    ignore_merges = bool(model.get("ignore_merges", (bool, type(None))))
    pattern = _pattern(spec)
    normalizer = _normalizer(spec)
    _check_decoder(spec)
    vocab = model.get("vocab", dict)
    merges = _merge_strings(model, model.get("merges", list))
    added = _added_tokens(spec, normalizer)
    return _build(model, vocab, merges, added, pattern, ignore_merges, normalizer)


def _refuse_sentencepiece(spec):
    for key, list_key in (("pre_tokenizer", "pretokenizers"), ("decoder", "decoders"),
                          ("normalizer", "normalizers")):
        for part in _objects(spec, key, list_key):
            kind = part.value.get("type")
            text = json.dumps(part.value, ensure_ascii=False)
            if kind in ("Metaspace", "ByteFallback") or "\u2581" in text:
                part.unsupported(f"{kind!r} with SentencePiece's \u2581 word marker "
                                 f"(Llama 2 style)" if kind != "ByteFallback" else
                                 "ByteFallback, SentencePiece-style (Llama 2)")


def _pattern(spec):
    parts = _objects(spec, "pre_tokenizer", "pretokenizers")
    kinds = [p.value.get("type") for p in parts]
    if not parts or kinds[-1] != "ByteLevel":
        where = spec.child("pre_tokenizer", None)
        if "ByteLevel" in kinds:
            where.unsupported(f"pre-tokenizers {kinds}: ByteLevel must come last")
        where.unsupported(f"pre-tokenizer {kinds or None} without ByteLevel (not byte-level)")
    byte_level = parts[-1]
    if byte_level.get("add_prefix_space", bool, True):
        byte_level.unsupported("add_prefix_space=true (a space added before each piece)")
    use_regex = byte_level.get("use_regex", bool, True)
    splits = parts[:-1]
    if not splits:
        if not use_regex:
            byte_level.unsupported("ByteLevel(use_regex=false) with no Split before it "
                                   "(no pre-tokenization at all)")
        return "gpt2"
    if len(splits) > 1 or kinds[0] != "Split":
        spec.child("pre_tokenizer", None).unsupported(
            f"pre-tokenizers {kinds}; we read ByteLevel, or one Split then ByteLevel")
    if use_regex:
        byte_level.unsupported("a Split followed by ByteLevel(use_regex=true) (two splits)")
    split = splits[0]
    if split.get("behavior", str) != "Isolated" or split.get("invert", bool, False):
        split.unsupported(f"Split behavior {split.value.get('behavior')!r}, invert="
                          f"{split.value.get('invert')} (we read Isolated, invert=false)")
    what = split.child("pattern", split.get("pattern", dict))
    if "Regex" in what.value:
        text = what.get("Regex", str)
    elif "String" in what.value:
        text = regex.escape(what.get("String", str))
    else:
        what.fail(f"expected {{'Regex': ...}} or {{'String': ...}}, got {what.value!r:.60}")
    return _import_regex(text, what)


def _import_regex(text, where):
    if text in KNOWN_REGEXES:
        return KNOWN_REGEXES[text]
    name, text, _ = _resolve(text, where)
    if name:
        return name
    anchor = _anchor(text)
    if anchor:
        where.unsupported(f"the anchor {anchor!r} in the Split regex (Oniguruma reads ^ and "
                          f"$ per line, Python's regex per text)")
    if regex.compile(text).match(""):
        where.unsupported("a Split regex that matches the empty string")
    return "(?:" + text + ")" + _GAP.format(text)


def _resolve(text, where):
    try:
        return patterns.resolve(text)
    except TokenizerError as exc:
        where.fail(f"the Split regex does not compile here: {exc}")


def _anchor(text):
    """The first ^, $, \\A, \\Z, \\z or \\G outside a character class, or None."""
    depth, k = 0, 0
    while k < len(text):
        c = text[k]
        if c == "\\":
            if depth == 0 and text[k + 1:k + 2] in ("A", "Z", "z", "G"):
                return text[k:k + 2]
            k += 2
            continue
        if c == "[":
            depth += 1
            if text[k + 1:k + 2] == "^":
                k += 1
            if text[k + 1:k + 2] == "]":           # a leading ] is a literal
                k += 1
        elif c == "]" and depth:
            depth -= 1
        elif c in "^$" and depth == 0:
            return c
        k += 1
    return None


def export_regex(tok):
    """Our pattern as an Oniguruma regex, and whether ByteLevel's own regex is it."""
    if tok.pattern_name == "gpt2":
        return HF_GPT2_REGEX, True
    if tok.pattern_name == "gpt4":
        return ONIG_GPT4_REGEX, False
    text = tok.pattern
    if text.startswith("(?:") and text.endswith(")"):     # undo _import_regex's gap rule
        for k in range(3, len(text)):
            inner = text[3:k]
            if text[k:] == ")" + _GAP.format(inner):
                return inner, False
    anchor = _anchor(text)
    if anchor:
        raise TokenizerError(f"the pattern {text!r:.80} has the anchor {anchor!r}, which "
                             f"Oniguruma (Hugging Face's regex engine) reads per line: write "
                             f"the pattern without it to export it")
    interval = regex.search(r"(?<!\\)\{[0-9]*,?[0-9]*\}\+", text)
    if interval:
        raise TokenizerError(f"the pattern {text!r:.80} has the possessive interval "
                             f"{interval.group()!r}, which Oniguruma reads as a repeat of a "
                             f"repeat: drop the + (or wrap the group in (?>...)) to export it")
    return text, False


def _normalizer(spec):
    parts = _objects(spec, "normalizer", "normalizers")
    kinds = [p.value.get("type") for p in parts]
    if not kinds:
        return None
    if kinds == ["NFC"]:
        return "nfc"
    spec.child("normalizer", None).unsupported(f"normalizer {kinds} (we read none or NFC)")


def _check_decoder(spec):
    for part in _objects(spec, "decoder", "decoders"):
        if part.value.get("type") != "ByteLevel":
            part.unsupported(f"decoder {part.value.get('type')!r} (we decode as ByteLevel does)")


def _merge_strings(model, merges):
    out = []
    for k, merge in enumerate(merges):
        if isinstance(merge, str):
            if merge.startswith("#version"):         # HF skips merges.txt's header line
                continue
            parts = merge.split(" ")
        else:
            parts = merge
        if not (isinstance(parts, list) and len(parts) == 2 and all(isinstance(p, str)
                                                                      for p in parts)):
            model.fail(f"merges[{k}] must be \"left right\" or [left, right], got {merge!r:.60}")
        out.append(tuple(parts))
    return out


def _added_tokens(spec, normalizer):
    items = spec.get("added_tokens", (list, type(None))) or []
    out = []
    for k, item in enumerate(items):
        token = spec.child(f"added_tokens[{k}]", item if isinstance(item, dict) else {})
        if not isinstance(item, dict):
            token.fail("must be an object with id and content")
        token_id = token.get("id", int)
        content = token.get("content", str)
        if token_id < 0 or not content:
            token.fail(f"needs a non-negative id and non-empty content, got {token_id}, "
                       f"{content!r}")
        for flag in ("lstrip", "rstrip", "single_word"):
            if token.get(flag, (bool, type(None))):
                token.unsupported(f"added token {content!r} with {flag}=true")
        if normalizer and token.get("normalized", (bool, type(None)), True):
            token.unsupported(f"added token {content!r} with normalized=true under a "
                              f"normalizer (it would match the normalized text)")
        out.append((token_id, content, bool(token.value.get("special"))))
    return out


def _build(model, vocab, merges, added, pattern, ignore_merges, normalizer):
    where = model.child("vocab", vocab)
    added_ids = {}
    for token_id, content, _ in added:
        if added_ids.setdefault(content, token_id) != token_id:
            where.fail(f"added token {content!r} is listed with two ids")
    by_id, ordinary = {}, {}
    for text, token_id in vocab.items():
        if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0:
            where.fail(f"{text!r} must map to a non-negative int id, got {token_id!r}")
        if token_id in by_id:
            where.fail(f"id {token_id} is given to both {by_id[token_id]!r} and {text!r}")
        by_id[token_id] = text
        data = byte_level_bytes(text)
        if text in added_ids:
            if added_ids[text] != token_id:
                where.fail(f"added token {text!r} has id {added_ids[text]} in added_tokens "
                           f"but {token_id} here")
            if data != text.encode("utf-8"):
                continue                  # a special of its own, not reachable by BPE
        elif data is None:
            where.fail(f"{text!r} (id {token_id}) is not byte-level text (a character "
                       f"outside ByteLevel's 256) and not an added token")
        ordinary[token_id] = data
    for content, token_id in added_ids.items():
        if content not in vocab and token_id in by_id:
            where.fail(f"added token {content!r} has id {token_id}, which the vocabulary "
                       f"gives to {by_id[token_id]!r}")
    missing = [c for c in BYTE_CHARS if c not in vocab]
    if missing:
        where.unsupported(f"a vocabulary without all 256 byte symbols ({len(missing)} missing"
                          f", e.g. {missing[0]!r}: HF would drop those bytes); train with "
                          f"initial_alphabet=pre_tokenizers.ByteLevel.alphabet()")
    pairs = []
    where = model.child("merges", None)
    for k, (left, right) in enumerate(merges):
        for part in (left, right, left + right):
            if part not in vocab:
                where.fail(f"merges[{k}] ({left!r}, {right!r}): {part!r} is not in model.vocab "
                           f"(a merge of another vocabulary?)")
            if vocab[part] not in ordinary:
                where.unsupported(f"merges[{k}] ({left!r}, {right!r}) uses {part!r}, also an "
                                  f"added token whose text is not those bytes")
        pairs.append((ordinary[vocab[left]], ordinary[vocab[right]]))
    specials = {content: token_id for content, token_id in added_ids.items()}
    try:
        return Tokenizer.from_merges(ordinary, pairs, pattern, specials, ignore_merges,
                                     normalizer)
    except TokenizerError as exc:
        model.fail(f"not a usable tokenizer: {exc}")


# ------------------------------------------------------------------ tokenizer_config.json

def _read_config(tok, folder, spec, file):
    config_file = os.path.join(folder, TOKENIZER_CONFIG)
    config = _read_json(config_file, "tokenizer config") if os.path.isfile(config_file) else {}
    map_file = os.path.join(folder, SPECIAL_TOKENS_MAP)
    token_map = _read_json(map_file, "special tokens") if os.path.isfile(map_file) else {}
    for name in ("bos_token", "eos_token", "pad_token"):
        source, value = (config_file, config[name]) if config.get(name) is not None else \
            (map_file, token_map.get(name))
        if isinstance(value, dict):                     # {"content": ..., "__type": "AddedToken"}
            value = value.get("content")
        if value is not None and not isinstance(value, str):
            raise TokenizerError(f"{source}: {name} must be a string or an AddedToken object, "
                                 f"got {value!r:.60}; {MALFORMED_FIX}")
        setattr(tok, name, value)
    tok.chat_template = _chat_template(config, config_file, folder)
    bos = _template_bos(spec, file)
    if bos is not None:
        tok.add_bos_token = True
        tok.bos_token = tok.bos_token or bos
    elif isinstance(config.get("add_bos_token"), bool):
        tok.add_bos_token = config["add_bos_token"]


def _chat_template(config, config_file, folder):
    template = config.get("chat_template")
    if isinstance(template, list):                      # [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default", next(iter(named.values()), None))
    if template is not None and not isinstance(template, str):
        raise TokenizerError(f"{config_file}: chat_template must be a string or a list of "
                             f"{{name, template}}, got {template!r:.60}; {MALFORMED_FIX}")
    jinja = os.path.join(folder, CHAT_TEMPLATE_FILE)
    if template is None and os.path.isfile(jinja):
        try:
            with open(jinja, encoding="utf-8") as f:
                template = f.read()
        except UnicodeDecodeError:
            raise TokenizerError(f"{jinja}: not UTF-8 text; {MALFORMED_FIX}") from None
    return template


def _template_bos(data, file):
    """The special token TemplateProcessing puts before a single text, or None."""
    spec = _Spec(file, "", data)
    for part in _objects(spec, "post_processor", "processors"):
        if part.value.get("type") != "TemplateProcessing":
            continue
        single = part.value.get("single")
        if isinstance(single, list) and single and isinstance(single[0], dict) \
                and "SpecialToken" in single[0]:
            token = single[0]["SpecialToken"].get("id")
            return token if isinstance(token, str) else None
    return None


# ------------------------------------------------------------------ writing

def save_hf_tokenizer(tok, out_dir, chat_template=None):
    """Write tokenizer.json and tokenizer_config.json into out_dir (created if missing), so
    that transformers' AutoTokenizer.from_pretrained(out_dir) encodes as tok does.
    chat_template (a Jinja string) overrides tok.chat_template. Returns the paths."""
    if not isinstance(tok, Tokenizer):
        raise TypeError(f"expected a Tokenizer, got {type(tok).__name__}")
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise TokenizerError(f"{out_dir}: exists and is not a directory")
    spec = tokenizer_json(tok)
    config = tokenizer_config(tok, chat_template)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name, value in ((TOKENIZER_JSON, spec), (TOKENIZER_CONFIG, config)):
        path = os.path.join(out_dir, name)
        with atomic_write(path, "w", encoding="utf-8", newline="\n") as f:
            json.dump(value, f, ensure_ascii=False, indent=2)
            f.write("\n")
        paths.append(path)
    return paths


def tokenizer_json(tok):
    """The tokenizer.json object (a dict) for tok."""
    vocab = {byte_level_string(tok.token_bytes(i)): i for i in tok.ordinary_ids}
    for text, i in sorted(tok.special_tokens.items(), key=lambda item: item[1]):
        if vocab.get(text, i) != i:
            raise TokenizerError(f"special token {text!r} (id {i}) reads like ordinary token "
                                 f"{vocab[text]} in tokenizer.json's vocabulary, which maps "
                                 f"each string to one id: rename the special token")
        vocab[text] = i
    if tok.merges is not None:
        merges = [(tok.token_bytes(a), tok.token_bytes(b)) for a, b in tok.merges]
        ignore_merges = tok.ignore_merges
    else:
        merges, ignore_merges = rank_merges(tok.to_tiktoken_ranks()), True
    regex_text, own_regex = export_regex(tok)
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                  "use_regex": own_regex}
    if own_regex:
        pre_tokenizer = byte_level
    else:
        pre_tokenizer = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex_text}, "behavior": "Isolated",
             "invert": False}, byte_level]}
    post = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
            "use_regex": own_regex}
    if tok.add_bos_token and tok.bos_token in tok.special_tokens:
        bos = tok.bos_token
        template = {"type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                               {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                             {"Sequence": {"id": "A", "type_id": 0}},
                             {"SpecialToken": {"id": bos, "type_id": 1}},
                             {"Sequence": {"id": "B", "type_id": 1}}],
                    "special_tokens": {bos: {"id": bos, "ids": [tok.special_tokens[bos]],
                                             "tokens": [bos]}}}
        post = {"type": "Sequence", "processors": [post, template]}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": i, "content": text, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}
                         for text, i in sorted(tok.special_tokens.items(),
                                               key=lambda item: item[1])],
        "normalizer": {"type": "NFC"} if tok.normalizer == "nfc" else None,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                    "use_regex": own_regex},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": ignore_merges,
                  "vocab": vocab,
                  "merges": [byte_level_string(a) + " " + byte_level_string(b)
                             for a, b in merges]},
    }


def rank_merges(ranks):
    """{bytes: rank} (tiktoken's rule) -> [(left, right)] in rank order: for each token of
    two or more bytes, the two parts BPE with the lower ranks stops at (header, Export);
    a token where it stops at more than two parts gets no merge, as in transformers'
    converter (reachable only as a whole pre-token, by ignore_merges)."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        parts = [token[k:k + 1] for k in range(len(token))]
        while len(parts) > 2:
            best, best_rank = None, rank
            for k in range(len(parts) - 1):
                r = ranks.get(parts[k] + parts[k + 1], rank)
                if r < best_rank:
                    best, best_rank = k, r
            if best is None:
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
    return merges


def tokenizer_config(tok, chat_template=None):
    """The tokenizer_config.json object: the class that reads tokenizer.json as it is,
    the token names and the chat template."""
    eos = tok.eos_token or ("<|endoftext|>" if "<|endoftext|>" in tok.special_tokens else None)
    config = {"tokenizer_class": "PreTrainedTokenizerFast",
              "clean_up_tokenization_spaces": False,
              "bos_token": tok.bos_token, "eos_token": eos, "pad_token": tok.pad_token}
    template = chat_template if chat_template is not None else tok.chat_template
    if template is not None:
        if not isinstance(template, str):
            raise TypeError(f"chat_template must be a str, got {type(template).__name__}")
        config["chat_template"] = template
    return {key: value for key, value in config.items() if value is not None}
