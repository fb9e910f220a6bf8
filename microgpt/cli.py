"""The `microgpt` command: parse flags, build a config, call one library function.

    microgpt train [--preset demo] [--config FILE.toml] [--resume RUN_DIR] [flags]
    microgpt generate RUN_DIR --prompt TEXT
    microgpt plot RUN_DIR
    microgpt data prepare|clean ...
    microgpt tokenizer train|encode|decode|info ...

Each command group registers its flags in one `_add_<group>` function below and hands the
parsed namespace to a `_run_<group>` function that imports the library lazily, so
`microgpt --help` stays fast. Errors a user can fix (MicrogptError, OSError) are printed
as one line and exit with status 2; anything else is a bug and keeps its traceback.
"""
import argparse
import sys

from .errors import MicrogptError


def _add_train(sub):
    """`microgpt train`, `generate`, `plot` (the pre-training issue fills these in)."""


def _add_data(sub):
    """`microgpt data prepare|clean`."""
    data = sub.add_parser("data", help="prepare and clean text corpora")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    _add_data_prepare(data_sub)
    _add_data_clean(data_sub)


def _add_data_prepare(data_sub):
    """`microgpt data prepare`: text -> token shards (the pre-training issue fills this in)."""


def _add_data_clean(data_sub):
    """`microgpt data clean`: normalize, scrub PII, filter, dedup (microgpt/data/pipeline.py)."""
    p = data_sub.add_parser("clean", help="normalize, scrub PII, quality-filter and dedup text")
    p.add_argument("inputs", nargs="+", help="text files, directories, .jsonl, .gz of these")
    p.add_argument("-o", "--output", required=True, help="output .jsonl or .jsonl.gz")
    p.add_argument("--config", help="TOML file of CleanConfig ([filters], [dedup] tables)")
    p.add_argument("--report", help="report JSON path (default: OUTPUT stem + .report.json)")
    p.add_argument("--text-field", help="JSONL field holding the text (default text)")
    p.add_argument("--skip-bad-lines", action="store_true",
                   help="skip and count bad JSONL lines instead of stopping")
    p.add_argument("--no-normalize", action="store_true")
    p.add_argument("--no-pii", action="store_true")
    p.add_argument("--no-exact", action="store_true", help="no exact dedup")
    p.add_argument("--no-near", action="store_true", help="no MinHash near-dup dedup")
    p.add_argument("--threshold", type=float, help="near-dup Jaccard threshold (0.8)")
    p.add_argument("--num-perm", type=int, help="MinHash permutations (128)")
    p.add_argument("--shingle", type=int, help="words per shingle (5)")
    p.add_argument("--seed", type=int, help="MinHash seed (0)")
    p.add_argument("--min-words", type=int, help="word_count lower bound (50)")
    p.add_argument("--disable", action="append", default=[], metavar="RULE",
                   help="skip a quality rule by name (repeatable)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_run_data_clean)


def _run_data_clean(args):
    from .data.pipeline import CleanConfig, clean_corpus, load_config
    top = {"text_field": args.text_field, "progress": False if args.no_progress else None,
           "on_bad_line": "skip" if args.skip_bad_lines else None,
           "normalize": False if args.no_normalize else None,
           "pii": False if args.no_pii else None}
    dedup = {"threshold": args.threshold, "num_perm": args.num_perm, "shingle": args.shingle,
             "seed": args.seed, "exact": False if args.no_exact else None,
             "near": False if args.no_near else None}
    filters = {"min_words": args.min_words, "disabled": tuple(args.disable) or None}
    cfg = load_config(args.config) if args.config else CleanConfig()
    cfg = CleanConfig(**{**vars(cfg), **{k: v for k, v in top.items() if v is not None},
                         "filters": {**vars(cfg.filters),
                                     **{k: v for k, v in filters.items() if v is not None}},
                         "dedup": {**vars(cfg.dedup),
                                   **{k: v for k, v in dedup.items() if v is not None}}})
    report = clean_corpus(args.inputs, args.output, cfg, report_path=args.report)
    print(report.summary())
    return 0


def _add_tokenizer(sub):
    """`microgpt tokenizer train|encode|decode|info` (microgpt/tokenizer/)."""
    tok = sub.add_parser("tokenizer", help="train and use a byte-level BPE tokenizer")
    tok_sub = tok.add_subparsers(dest="tokenizer_command", required=True)
    p = tok_sub.add_parser("train", help="train on text files or directories")
    p.add_argument("inputs", nargs="+", help="text files or directories (read recursively)")
    p.add_argument("-o", "--output", required=True, help="tokenizer file to write")
    p.add_argument("--vocab-size", type=int, default=8192, help="ids incl. specials (8192)")
    p.add_argument("--pattern", default="gpt4", help="gpt2, gpt4 (default) or a regex")
    p.add_argument("--special", action="append", metavar="TOKEN",
                   help="special token (repeatable; default <|endoftext|> <|im_start|> "
                        "<|im_end|>)")
    p.add_argument("--no-progress", action="store_true")
    p = tok_sub.add_parser("encode", help="text -> ids, printed space-separated")
    p.add_argument("tokenizer", help="tokenizer file")
    p.add_argument("--text", help="text to encode (default: --file, else stdin)")
    p.add_argument("--file", help="file to encode")
    p.add_argument("--allow-special", action="store_true",
                   help="encode special-token text as special ids (default: it is an error)")
    p = tok_sub.add_parser("decode", help="ids -> text")
    p.add_argument("tokenizer", help="tokenizer file")
    p.add_argument("ids", nargs="*", help="ids (default: read from stdin)")
    p = tok_sub.add_parser("info", help="vocabulary size, pattern, specials, longest tokens")
    p.add_argument("tokenizer", help="tokenizer file")
    p.add_argument("--text", help="also show how this text splits into tokens")
    for parser in tok_sub.choices.values():
        parser.set_defaults(handler=_run_tokenizer)


def _run_tokenizer(args):
    from .tokenizer import DEFAULT_SPECIALS, Tokenizer, TokenizerError
    command = args.tokenizer_command
    if command == "train":
        tok = Tokenizer.train(args.inputs, args.vocab_size, pattern=args.pattern,
                              special_tokens=args.special or DEFAULT_SPECIALS,
                              progress=not args.no_progress)
        tok.save(args.output)
        print(f"wrote {args.output}: {tok}")
        return 0
    tok = Tokenizer.load(args.tokenizer)
    if command == "encode":
        if args.text is not None:
            text = args.text
        elif args.file:
            with open(args.file, encoding="utf-8", newline="") as f:
                text = f.read()
        else:
            text = sys.stdin.read()
        ids = tok.encode(text, allowed_special="all" if args.allow_special else frozenset())
        print(" ".join(map(str, ids)))
    elif command == "decode":
        words = args.ids or sys.stdin.read().split()
        try:
            ids = [int(word) for word in words]
        except ValueError as exc:
            raise TokenizerError(f"ids must be integers: {exc}") from None
        sys.stdout.write(tok.decode(ids))
    else:
        print(tok)
        print(f"ordinary tokens: {tok.n_ordinary}; specials: {tok.special_tokens}")
        print(f"pattern: {tok.pattern}")
        longest = sorted(range(tok.n_ordinary), key=lambda i: -len(tok.token_bytes(i)))[:10]
        print("longest tokens: " + ", ".join(f"{i}={tok.token_bytes(i)!r}" for i in longest))
        if args.text is not None:
            ids = tok.encode(args.text, allowed_special="all")
            print(f"{len(ids)} tokens: " + " | ".join(repr(tok.decode([i])) for i in ids))
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="microgpt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_data(sub)
    _add_tokenizer(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.error(f"command {args.command!r} is not available yet")
    try:
        return handler(args) or 0
    except (MicrogptError, OSError) as exc:
        print(f"microgpt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
