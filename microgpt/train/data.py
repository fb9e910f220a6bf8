"""A run's data: corpus -> tokenizer -> token shards, prepared once and reused.

    tokenizer, tokenizer_path, meta = prepare_run_data(config, data_dir)
    ... = prepare_run_data(config, data_dir, tokenizer=model_tokenizer)   # train --init-from

The corpus is the built-in one (`data = "builtin"`: pydoc topics + the stdlib sources, see
data/corpus.py) or any comma-separated paths that data/sources.py reads (text files,
directories, .jsonl with `text_field`, .gz). The tokenizer is the file named by
`config.tokenizer`, or a byte-level BPE of `vocab_size` trained here on the first
`tokenizer_bytes` of the corpus (GPT-4 split pattern, <|endoftext|> as the one special
token), or the tokenizer passed in: the one of the model `--init-from` starts from. The
shards go to `data_dir` with the tokenizer beside them.

Caching: meta.json records a *data key*, the sha256 of every config field that shapes the
data (plus the Python version for the built-in corpus, whose text changes with it). When
`data_dir/meta.json` carries the same key, the shards and tokenizer are reused as they are;
otherwise they are rebuilt. meta.json is written last, so an interrupted preparation is
simply redone. A meta.json without a data key was written by `microgpt data prepare`: such
a directory is the user's prepared data, used as it is (with its own tokenizer) and never
rebuilt. A meta.json that cannot be read is an error naming it, never silently replaced.

The corpus paths are checked (they exist, a directory holds files) before the tokenizer is
trained, and a corpus with no documents stops there too.
"""
import hashlib
import json
import os
import sys
import time

from ..data.corpus import builtin_documents, describe_builtin
from ..data.shards import DEFAULT_SHARD_TOKENS, prepare
from ..data.sources import DataError, check_paths, iter_documents
from ..errors import CheckpointError, ConfigError
from .checkpoint import TOKENIZER_FILE

EOT = "<|endoftext|>"
DATA_FIELDS = ("data", "text_field", "corpus_bytes", "tokenizer", "vocab_size",
               "tokenizer_bytes", "val_fraction")


def data_key(config, tokenizer=None):
    fields = {name: getattr(config, name) for name in DATA_FIELDS}
    if config.data == "builtin":
        fields["python"] = sys.version.split()[0]
    if config.tokenizer:
        fields["tokenizer_sha256"] = _file_sha256(config.tokenizer)
    if tokenizer is not None:                  # given by the caller: its saved form identifies it
        fields["given_tokenizer_sha256"] = _tokenizer_sha256(tokenizer)
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _file_sha256(path):
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError:
        raise ConfigError(f"tokenizer file not found: {path}") from None


def _tokenizer_sha256(tokenizer):
    from ..tokenizer.fileformat import dumps
    return hashlib.sha256(dumps(tokenizer).encode("utf-8")).hexdigest()


def input_paths(data):
    paths = [p.strip() for p in data.split(",") if p.strip()]
    if not paths:
        raise ConfigError("data is empty: give 'builtin' or one or more paths")
    return paths


def documents(config):
    """The run's corpus as a stream of Documents."""
    if config.data == "builtin":
        return builtin_documents(max_bytes=config.corpus_bytes or None)
    return iter_documents(input_paths(config.data), text_field=config.text_field)


def describe(config):
    return describe_builtin() if config.data == "builtin" else f"corpus: {config.data}"


def _training_text(docs, budget):
    """Up to `budget` bytes of text for BPE training, whole documents, joined by newlines."""
    parts, used = [], 0
    for doc in docs:
        size = len(doc.text.encode("utf-8", "surrogatepass"))
        if used + size > budget and parts:
            break
        parts.append(doc.text)
        used += size
    return parts


def train_tokenizer(docs, vocab_size, budget, log=print, progress=True):
    from ..tokenizer import Tokenizer
    texts = _training_text(docs, budget)
    if not texts:
        raise DataError("no documents to train the tokenizer on: the inputs hold no text "
                        "(hidden and binary files are skipped)")
    start = time.perf_counter()
    tokenizer = Tokenizer.train(texts, vocab_size=vocab_size, special_tokens=(EOT,),
                                progress=progress)
    log(f"trained a BPE tokenizer of {tokenizer.vocab_size} ids on "
        f"{sum(len(t) for t in texts) / 1e6:.1f}M characters in {time.perf_counter() - start:.1f}s")
    return tokenizer


def load_tokenizer(path):
    from ..tokenizer import Tokenizer
    return Tokenizer.load(path)


def build_shards(docs, out_dir, tokenizer, val_fraction=0.01, progress=True, extra_meta=None,
                 total_bytes=None, shard_tokens=DEFAULT_SHARD_TOKENS):
    """Tokenize documents into out_dir with the tokenizer saved beside them; returns meta."""
    os.makedirs(out_dir, exist_ok=True)
    saved = os.path.join(out_dir, TOKENIZER_FILE)
    tokenizer.save(saved)
    meta = prepare(docs, out_dir, tokenizer, val_fraction=val_fraction, progress=progress,
                   total_bytes=total_bytes, shard_tokens=shard_tokens, extra_meta=dict(extra_meta or {},
                                                            tokenizer=TOKENIZER_FILE))
    return meta


def read_meta(meta_path):
    """A data directory's meta.json, checked: CheckpointError naming the file otherwise."""
    remedy = ("delete it and run again to have the data prepared anew (for a directory made "
              "by `microgpt data prepare`, run that again)")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: not valid JSON ({exc}); {remedy}") from None
    tokens = meta.get("tokens") if isinstance(meta, dict) else None
    if not (isinstance(tokens, dict) and all(isinstance(tokens.get(s), int) for s in ("train", "val"))
            and isinstance(meta.get("tokenizer", TOKENIZER_FILE), str)):
        raise CheckpointError(f"{meta_path}: not the meta.json of a prepared data directory "
                              f"(no train/val token counts); {remedy}")
    return meta


def prepare_run_data(config, data_dir, log=print, tokenizer=None):
    """(tokenizer, tokenizer path, meta) for the run, building the shards if needed.
    tokenizer: the one to use instead of config.tokenizer or training one (a prepared
    directory must then have been tokenized by this very tokenizer)."""
    key = data_key(config, tokenizer)
    meta_path = os.path.join(data_dir, "meta.json")
    if os.path.isfile(meta_path):
        meta = read_meta(meta_path)
        tok_path = os.path.join(data_dir, meta.get("tokenizer", TOKENIZER_FILE))
        if "data_key" not in meta:                 # made by `microgpt data prepare`: use it
            if tokenizer is not None and _tokenizer_sha256(load_tokenizer(tok_path)) != _tokenizer_sha256(tokenizer):
                raise ConfigError(f"{data_dir} was prepared with another tokenizer ({tok_path}) than "
                                  f"the model's; prepare it with the model's tokenizer.bpe "
                                  f"(`microgpt data prepare ... --tokenizer CHECKPOINT/tokenizer.bpe`), "
                                  f"or leave --data-dir unset")
            log(f"data: using the prepared {data_dir} ({meta['tokens']['train']:,} train / "
                f"{meta['tokens']['val']:,} val tokens, its own tokenizer); data and tokenizer "
                f"settings do not apply")
            return load_tokenizer(tok_path), tok_path, meta
        if meta["data_key"] == key and os.path.isfile(tok_path):
            log(f"data: reusing {data_dir} ({meta['tokens']['train']:,} train / "
                f"{meta['tokens']['val']:,} val tokens)")
            return load_tokenizer(tok_path), tok_path, meta
    if config.data != "builtin":
        check_paths(input_paths(config.data))      # before any tokenizer training
    tok_path = os.path.join(data_dir, TOKENIZER_FILE)
    log(describe(config))
    if tokenizer is not None:
        log(f"tokenizer: the model's own, {tokenizer.vocab_size} ids")
    elif config.tokenizer:
        tokenizer = load_tokenizer(config.tokenizer)
    else:
        tokenizer = train_tokenizer(documents(config), config.vocab_size,
                                    config.tokenizer_bytes, log, config.progress)
    total = config.corpus_bytes if config.data == "builtin" and config.corpus_bytes else None
    start = time.perf_counter()
    meta = build_shards(documents(config), data_dir, tokenizer, val_fraction=config.val_fraction,
                        progress=config.progress, total_bytes=total,
                        extra_meta={"data_key": key, "data": config.data})
    log(f"data: {meta['tokens']['train']:,} train / {meta['tokens']['val']:,} val tokens from "
        f"{sum(meta['documents'].values())} documents in {time.perf_counter() - start:.1f}s "
        f"-> {data_dir}")
    return tokenizer, tok_path, meta
