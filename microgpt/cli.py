"""The `microgpt` command: parse flags, build a config, call one library function.

    microgpt train [--preset demo] [--config FILE.toml] [--resume RUN_DIR] [flags]
    microgpt generate RUN_DIR --prompt TEXT      (RUN_DIR: ours, or a Hugging Face directory)
    microgpt inspect PATH [--json]               architecture, tensors, every problem
    microgpt convert SRC DST [--dtype bfloat16]  our checkpoint <-> a Hugging Face directory
    microgpt plot RUN_DIR
    microgpt data prepare|clean ...
    microgpt tokenizer train|encode|decode|info ...
    microgpt finetune sft --init-from MODEL --data CHAT.jsonl [--lora-rank 8]
    microgpt finetune pairs|reward|dpo|ppo|grpo --init-from SFT --data FILE.jsonl ...
    microgpt chat RUN [--message TEXT]            a REPL on a fine-tuned model
    microgpt data synth --task arithmetic -o DIR   synthetic instruction tasks
    microgpt eval RUN --tasks FORMAT=PATH | --perplexity TEXT   (and `eval score`)
    microgpt quantize RUN --scheme int8|int4 [--group 32]   weight-only int8 / int4 (quantize/)
    microgpt prune RUN --method magnitude|2:4 --out DIR      pruning, optional recovery fine-tune
    microgpt export-gguf RUN --type f32|f16|q8_0|q4_0 --out FILE   for llama.cpp
    microgpt lifecycle [--quick] [--out-dir runs/life] [--from STAGE]   every stage, a report card

Each command group registers its flags in one `_add_<group>` function below and hands the
parsed namespace to a `_run_<group>` function that imports the library lazily, so
`microgpt --help` stays fast. Errors a user can fix (MicrogptError, OSError) are printed
as one line and exit with status 2; anything else is a bug and keeps its traceback.

Conventions every command keeps:
  - Every number flag parses within its range (train/config.py's `number_type`, the
    FIELD_BOUNDS of TrainConfig for `train`): nan, inf and out-of-range values are refused
    by the parser, naming the flag, before anything runs. So is an unknown flag, with the
    usage of the subcommand it was given to.
  - Inputs are existing files or directories, checked before any work starts; passing
    texts instead of paths is an API feature (Tokenizer.train), never a CLI one.
  - An output path (-o/--out/--output/--report/--out-dir) may name directories that do not
    exist yet: they are created. A path that is the wrong kind (a directory where a file is
    written, or the reverse) is an error before any work starts.
"""
import argparse
import os
import sys

from .errors import ConfigError, MicrogptError

_CREATED = "directories are created if missing"


def _int(low=None, high=None):
    from .train.config import Bounds, number_type
    return number_type(int, Bounds(low, high))


def _float(low=None, high=None, low_open=False, high_open=False):
    from .train.config import Bounds, number_type
    return number_type(float, Bounds(low, high, low_open, high_open))


def _leaf(subparsers, name, handler, **kwargs):
    """A subcommand parser that remembers itself, so a bad flag prints *its* usage."""
    p = subparsers.add_parser(name, **kwargs)
    p.set_defaults(handler=handler, leaf_parser=p)
    return p


def _output_file(flag, path):
    if path is not None and os.path.isdir(path):
        raise ConfigError(f"{flag} {path} is a directory; give the path of the file to write")


def _output_dir(flag, path):
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{flag} {path} exists and is not a directory; give a directory")


def _add_train(sub):
    """`microgpt train`, `generate`, `plot` (microgpt/train/, microgpt/inference/)."""
    from .train.config import DEMO_MINUTES, add_arguments, presets_help
    p = _leaf(sub, "train", _run_train,
              help=f"pre-train a GPT (no arguments: the demo on the built-in corpus, "
                   f"~{DEMO_MINUTES} minutes on 2 CPU cores)",
              usage="microgpt train [--preset NAME] [--config FILE.toml] [--resume RUN_DIR] "
                    "[--FIELD VALUE ...]",
              description=f"Pre-train a GPT. With no arguments: the demo preset on the built-in "
                          f"corpus, ~{DEMO_MINUTES} minutes on 2 CPU cores, into runs/demo. "
                          f"Every field of TrainConfig is a flag; the defaults shown are the demo "
                          f"preset's (the one that runs without --preset).",
              epilog=presets_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the newest complete checkpoint of RUN_DIR, bit for bit")
    add_arguments(p)
    par = p.add_argument_group("several processes (under `mpirun -n N`; train/distributed.py)")
    par.add_argument("--dp", type=_int(1), default=None,
                     help="data-parallel replicas (default under mpirun: N / (tp pp))")
    par.add_argument("--tp", type=_int(1), default=None, help="tensor-parallel ranks (default 1)")
    par.add_argument("--pp", type=_int(1), default=None, help="pipeline stages (default 1)")
    par.add_argument("--zero1", action="store_true",
                     help="shard AdamW's moments over the data-parallel ranks (ZeRO-1)")
    par.add_argument("--micro-batches", type=_int(1), default=None,
                     help="micro-batches per pipeline batch (default: min(rows, 2 pp))")

    g = _leaf(sub, "generate", _run_generate,
              help="sample text from a trained model (KV-cache decoding)")
    g.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, a checkpoint directory, or a "
                                                     "Hugging Face model directory with its "
                                                     "tokenizer.json")
    g.add_argument("--prompt", action="append", default=None,
                   help="prompt text (repeat for a batch; default: start a new document)")
    g.add_argument("--max-new-tokens", type=_int(0), default=200, help="default 200, >= 0")
    g.add_argument("--temperature", type=_float(0.0), default=None,
                   help="0 = greedy, >= 0 (default: the run's, else 0.8)")
    g.add_argument("--top-k", type=_int(0), default=None, help="0 = off (default: the run's)")
    g.add_argument("--top-p", type=_float(0.0, 1.0, low_open=True), default=None,
                   help="nucleus mass in (0, 1]; 1 = off (default: the model's, else 1)")
    g.add_argument("--repetition-penalty", type=_float(0.0, low_open=True), default=None,
                   help="> 0; 1 = off (default: the run's, else 1)")
    g.add_argument("--seed", type=_int(0), default=0)
    g.add_argument("--stop", action="append", default=[],
                   help="stop string, backslash escapes allowed: --stop '\\n\\n' (repeatable)")
    g.add_argument("--device", default="cpu", choices=("cpu", "cuda"))

    pl = _leaf(sub, "plot", _run_plot, help="draw a run's loss curve as a PNG")
    pl.add_argument("run_dir", metavar="RUN_DIR")
    pl.add_argument("--out", help=f"PNG path (default RUN_DIR/loss.png); {_CREATED}")


def _run_train(args):
    from .errors import ConfigError
    from .train.config import make_config, overrides_from_args
    from .train.trainer import Interrupted, format_summary, resume, stop_on_sigterm, train
    overrides = overrides_from_args(args)
    if args.resume and (args.preset or args.config):
        raise ConfigError("--resume takes its config from the checkpoint; drop --preset/--config")
    from .train import distributed
    try:                                        # SIGINT and SIGTERM: one line, 128 + signal
        with stop_on_sigterm():
            if distributed.requested(args):     # mpirun, or --dp/--tp/--pp/--zero1
                summary = distributed.run_train(args, overrides)
                if summary is None:             # ranks other than 0: rank 0 reports
                    return 0
            elif args.resume:
                summary = resume(args.resume, overrides)
            else:
                summary = train(make_config(args.preset, args.config, overrides))
    except KeyboardInterrupt as exc:
        stop = exc if isinstance(exc, Interrupted) else Interrupted("SIGINT")
        print(f"\n{stop}", file=sys.stderr)
        return 128 + stop.signum
    print(f"\n{format_summary(summary)}")
    for i, text in enumerate(summary["samples"]):
        print(f"\n--- sample {i + 1} ---\n{text}")
    try:
        from .train.plot import plot_run
        print(f"\nloss curve: {plot_run(summary['run_dir'])}")
    except ConfigError as exc:
        print(f"\n(no loss curve: {exc})")
    print(f"\nnext: microgpt generate {summary['run_dir']} --prompt 'def '")
    return 0


def _stop_strings(texts):
    """--stop values with their backslash escapes decoded."""
    import codecs
    stops = []
    for text in texts:
        try:
            stops.append(codecs.decode(text, "unicode_escape"))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"--stop {text!r}: bad backslash escape ({exc.reason}); write a "
                              f"literal backslash as \\\\") from None
    return stops


def _sampling(args, checkpoint, gen):
    """SamplingConfig from the flags, else the checkpoint's generation_config.json; a bad value
    in that file is an error naming it."""
    from .inference.sampling import SamplingConfig
    where = os.path.join(checkpoint, "generation_config.json")
    if not isinstance(gen, dict):
        raise ConfigError(f"{where}: expected a JSON object of sampling settings, got "
                          f"{type(gen).__name__}; fix or delete the file")
    temperature = gen.get("temperature", 0.8) if args.temperature is None else args.temperature
    top_k = gen.get("top_k", 0) if args.top_k is None else args.top_k
    penalty = (gen.get("repetition_penalty", 1.0) if args.repetition_penalty is None
               else args.repetition_penalty)
    top_p = gen.get("top_p", 1.0) if args.top_p is None else args.top_p
    try:
        return SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p,
                              repetition_penalty=penalty)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}; fix the file, or override it with --temperature / "
                          f"--top-k / --top-p / --repetition-penalty") from None


def _run_generate(args):
    from .finetune.sft import load_finetuned          # a LoRA run: its adapter merged
    from .inference.engine import Engine
    from .train.checkpoint import resolve
    stops = _stop_strings(args.stop)
    checkpoint = resolve(args.run_dir)
    model, tokenizer, gen = load_finetuned(checkpoint, args.device)
    sampling = _sampling(args, checkpoint, gen)
    prompts = args.prompt or [""]
    engine = Engine(model, tokenizer)
    engine.encode_prompts(prompts)              # a prompt that does not fit: before any echo
    if len(prompts) == 1:                       # stream the one completion as it is decoded
        print(prompts[0], end="", flush=True)
        out = engine.generate(prompts, args.max_new_tokens, sampling, args.seed, stops,
                              on_text=lambda row, piece: print(piece, end="", flush=True))
        if not (prompts[0] + out[0].text).endswith("\n"):
            print(flush=True)                   # the terminal's prompt starts on its own line
        print(f"[{len(out[0].ids)} tokens, {out[0].finish_reason}]", file=sys.stderr)
        return 0
    outs = engine.generate(prompts, args.max_new_tokens, sampling, args.seed, stops)
    for prompt, out in zip(prompts, outs):
        print(f"--- [{len(out.ids)} tokens, {out.finish_reason}]\n{prompt}{out.text}")
    return 0


def _run_plot(args):
    from .train.plot import plot_run
    _output_file("--out", args.out)
    print(plot_run(args.run_dir, args.out))
    return 0


def _add_models(sub):
    """`microgpt inspect` and `convert` (microgpt/interop/)."""
    p = _leaf(sub, "inspect", _run_inspect,
              help="show a checkpoint's architecture and tensors, and every problem with it",
              description="Print a checkpoint's architecture, its tensors (file name -> our name, "
                          "shape, dtype, MiB), the totals, and every problem found: missing or "
                          "unexpected tensors, shapes that contradict config.json, NaN/inf values, "
                          "dtype surprises, a tokenizer or special-token ids that do not fit the "
                          "embedding. Exit status 0 when there is none, 2 when there is one.")
    p.add_argument("path", metavar="PATH", help="a run directory, a checkpoint directory, or a "
                                                "Hugging Face model directory (single or sharded)")
    p.add_argument("--json", action="store_true", help="print the report as JSON (for scripts)")
    p.add_argument("--no-scan", action="store_true",
                   help="skip reading the values (the NaN/inf scan): headers only, instant")

    c = _leaf(sub, "convert", _run_convert,
              help="convert between our checkpoints and Hugging Face model directories",
              description="Our run or checkpoint directory -> a Hugging Face directory that "
                          "transformers loads; a Hugging Face directory -> a run directory "
                          "holding one model-only checkpoint, which `microgpt generate` and "
                          "`microgpt train --init-from` read. The direction is SRC's kind.")
    c.add_argument("src", metavar="SRC", help="a run, checkpoint or Hugging Face directory")
    c.add_argument("dst", metavar="DST", help=f"the directory to write (must not exist or be "
                                              f"empty; {_CREATED})")
    c.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                   help="dtype of the Hugging Face weights written (default float32; only for "
                        "our checkpoint -> Hugging Face)")


def _run_inspect(args):
    import json
    from .interop.inspector import inspect_checkpoint
    report = inspect_checkpoint(args.path, scan_values=not args.no_scan)
    print(json.dumps(report.to_dict(), indent=1) if args.json else report.format())
    return 0 if report.ok else 2


def _run_convert(args):
    from .interop.convert import HUGGINGFACE, convert
    _output_dir("DST", args.dst)
    done = convert(args.src, args.dst, dtype=args.dtype)
    if done["kind"] == HUGGINGFACE:
        print(f"wrote {done['path']}: a Hugging Face {done['model_type']} directory "
              f"({done['dtype']}); transformers: AutoModelForCausalLM.from_pretrained(...)")
    else:
        print(f"wrote {done['path']}: a microgpt run directory with one model-only checkpoint "
              f"(from {done['model_type']}, float32)")
        print(f"next: microgpt generate {done['path']} --prompt 'Hello'   or   "
              f"microgpt train --init-from {done['path']} --data ...")
    return 0


def _add_data(sub):
    """`microgpt data prepare|clean`."""
    data = sub.add_parser("data", help="prepare and clean text corpora")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    _add_data_prepare(data_sub)
    _add_data_clean(data_sub)
    _add_data_synth(data_sub)
    _name_the_choices(data_sub)


def _add_data_prepare(data_sub):
    """`microgpt data prepare`: text -> token shards (microgpt/data/shards.py)."""
    p = _leaf(data_sub, "prepare", _run_data_prepare,
              help="tokenize text into train/val token shards")
    p.add_argument("inputs", nargs="+",
                   help="text files, directories, .jsonl, .gz, or 'builtin' (the built-in corpus)")
    p.add_argument("-o", "--out", required=True,
                   help=f"output directory for shards + tokenizer ({_CREATED})")
    p.add_argument("--tokenizer", help="a saved tokenizer file (default: train a BPE here)")
    p.add_argument("--vocab-size", type=_int(257), default=8192,
                   help="vocab of the BPE to train (default 8192, >= 257)")
    p.add_argument("--tokenizer-bytes", type=_int(1), default=8_000_000,
                   help="bytes of text the BPE is trained on")
    p.add_argument("--val-fraction", type=_float(0.0, 1.0, high_open=True), default=0.01,
                   help="share of documents held out, in [0, 1) (default 0.01)")
    p.add_argument("--shard-tokens", type=_int(1), default=1 << 24, help="tokens per shard file")
    p.add_argument("--text-field", default="text", help="JSONL field holding the text")
    p.add_argument("--corpus-bytes", type=_int(0), default=0,
                   help="cap on the built-in corpus (0 = all of it)")
    p.add_argument("--no-progress", action="store_true")


def _run_data_prepare(args):
    from .data.corpus import builtin_documents
    from .data.sources import check_paths, iter_documents
    from .train.data import build_shards, load_tokenizer, train_tokenizer

    def documents():
        if args.inputs == ["builtin"]:
            return builtin_documents(max_bytes=args.corpus_bytes or None)
        return iter_documents(args.inputs, text_field=args.text_field)

    _output_dir("-o/--out", args.out)           # everything is checked before the work starts
    if args.inputs != ["builtin"]:
        check_paths(args.inputs)
    if args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer)
    else:
        tokenizer = train_tokenizer(documents(), args.vocab_size, args.tokenizer_bytes,
                                    progress=not args.no_progress)
    meta = build_shards(documents(), args.out, tokenizer, val_fraction=args.val_fraction,
                        progress=not args.no_progress, shard_tokens=args.shard_tokens,
                        extra_meta={"data": args.inputs})
    print(f"{meta['tokens']['train']:,} train / {meta['tokens']['val']:,} val tokens "
          f"({sum(meta['documents'].values())} documents) -> {args.out}")
    return 0


def _add_data_clean(data_sub):
    """`microgpt data clean`: normalize, scrub PII, filter, dedup (microgpt/data/pipeline.py)."""
    p = _leaf(data_sub, "clean", _run_data_clean,
              help="normalize, scrub PII, quality-filter and dedup text")
    p.add_argument("inputs", nargs="+", help="text files, directories, .jsonl, .gz of these")
    p.add_argument("-o", "--output", required=True,
                   help=f"output .jsonl or .jsonl.gz ({_CREATED})")
    p.add_argument("--config", help="TOML file of CleanConfig ([filters], [dedup] tables)")
    p.add_argument("--report", help=f"report JSON path (default: OUTPUT stem + .report.json; "
                                    f"{_CREATED})")
    p.add_argument("--text-field", help="JSONL field holding the text (default text)")
    p.add_argument("--skip-bad-lines", action="store_true",
                   help="skip and count bad JSONL lines instead of stopping")
    p.add_argument("--no-normalize", action="store_true")
    p.add_argument("--no-pii", action="store_true")
    p.add_argument("--no-exact", action="store_true", help="no exact dedup")
    p.add_argument("--no-near", action="store_true", help="no MinHash near-dup dedup")
    p.add_argument("--threshold", type=_float(0.0, 1.0, low_open=True, high_open=True),
                   help="near-dup Jaccard threshold in (0, 1) (0.8)")
    p.add_argument("--num-perm", type=_int(1, 4096), help="MinHash permutations (128)")
    p.add_argument("--shingle", type=_int(1, 64), help="words per shingle (5)")
    p.add_argument("--seed", type=_int(0), help="MinHash seed (0)")
    p.add_argument("--min-words", type=_int(0), help="word_count lower bound (50)")
    p.add_argument("--disable", action="append", default=[], metavar="RULE",
                   help="skip a quality rule by name (repeatable)")
    p.add_argument("--no-progress", action="store_true")


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
    _output_file("-o/--output", args.output)
    _output_file("--report", args.report)
    report = clean_corpus(args.inputs, args.output, cfg, report_path=args.report)
    print(report.summary())
    return 0


def _add_tokenizer(sub):
    """`microgpt tokenizer train|encode|decode|info` (microgpt/tokenizer/)."""
    tok = sub.add_parser("tokenizer", help="train and use a byte-level BPE tokenizer")
    tok_sub = tok.add_subparsers(dest="tokenizer_command", required=True)
    p = tok_sub.add_parser("train", help="train on text files or directories")
    p.add_argument("inputs", nargs="+", help="text files or directories (read recursively)")
    p.add_argument("-o", "--output", required=True, help=f"tokenizer file to write ({_CREATED})")
    p.add_argument("--vocab-size", type=_int(257), default=8192,
                   help="ids incl. specials (8192; at least 256 + the specials)")
    p.add_argument("--pattern", default="gpt4", help="gpt2, gpt4 (default) or a regex")
    p.add_argument("--special", action="append", metavar="TOKEN",
                   help="special token (repeatable; default <|endoftext|> <|im_start|> "
                        "<|im_end|>)")
    p.add_argument("--no-progress", action="store_true")
    p = tok_sub.add_parser("encode", help="text -> ids, printed space-separated")
    p.add_argument("tokenizer", help=_TOKENIZER_HELP)
    p.add_argument("--text", help="text to encode (default: --file, else stdin)")
    p.add_argument("--file", help="file to encode")
    p.add_argument("--allow-special", action="store_true",
                   help="encode special-token text as special ids (default: it is an error)")
    p = tok_sub.add_parser("decode", help="ids -> text")
    p.add_argument("tokenizer", help=_TOKENIZER_HELP)
    p.add_argument("ids", nargs="*", help="ids (default: read from stdin)")
    p = tok_sub.add_parser("info", help="vocabulary size, pattern, specials, longest tokens")
    p.add_argument("tokenizer", help=_TOKENIZER_HELP)
    p.add_argument("--text", help="also show how this text splits into tokens")
    for parser in tok_sub.choices.values():
        parser.set_defaults(handler=_run_tokenizer, leaf_parser=parser)
    _name_the_choices(tok_sub)


_TOKENIZER_HELP = ("a tokenizer: our .bpe file, a Hugging Face tokenizer.json, or a model directory "
                   "holding one")


def _load_any_tokenizer(path):
    """Our own tokenizer file, or a Hugging Face tokenizer.json (a file, or a directory that
    holds one: tokenizer/hf.py reads it, with its tokenizer_config.json)."""
    from .tokenizer import Tokenizer
    if os.path.isdir(path) or path.endswith(".json"):
        from .tokenizer.hf import load_hf_tokenizer
        return load_hf_tokenizer(path)
    return Tokenizer.load(path)


def _run_tokenizer(args):
    from .tokenizer import DEFAULT_SPECIALS, Tokenizer, TokenizerError
    command = args.tokenizer_command
    if command == "train":
        from .tokenizer.patterns import resolve
        for path in args.inputs:            # paths only: never train on the text of a typo
            if not os.path.exists(path):
                raise TokenizerError(f"{path}: no such file or directory")
        _output_file("-o/--output", args.output)
        try:
            resolve(args.pattern)
        except TokenizerError as exc:
            raise TokenizerError(f"--pattern: {exc}") from None
        tok = Tokenizer.train(list(args.inputs), args.vocab_size, pattern=args.pattern,
                              special_tokens=args.special or DEFAULT_SPECIALS,
                              progress=not args.no_progress)
        tok.save(args.output)
        print(f"wrote {args.output}: {tok}")
        return 0
    tok = _load_any_tokenizer(args.tokenizer)
    if command == "encode":
        text = args.text if args.text is not None else _read_text(args.file)
        ids = tok.encode(text, allowed_special="all" if args.allow_special else frozenset())
        print(" ".join(map(str, ids)))
    elif command == "decode":
        words = args.ids or _read_text(None).split()
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


def _add_eval(sub):
    """`microgpt eval RUN ...` and `microgpt eval score` (microgpt/eval/)."""
    e = _leaf(sub, "eval", _run_eval,
              help="evaluate a model: perplexity, multiple-choice and generative tasks, BLEU/ROUGE",
              description="Score a model on local task files (MMLU CSVs, choice JSONL such as "
                          "ARC/HellaSwag/PIQA, GSM8K JSONL, prompt/answer JSONL) and/or the "
                          "perplexity of a text, exactly as lm-eval scores them. `microgpt eval "
                          "score --hyp FILE --ref FILE` computes BLEU, chrF and ROUGE of two "
                          "line-aligned files without a model.")
    e.add_argument("run_dir", metavar="RUN", help="a run, checkpoint or Hugging Face directory; "
                                                 "or the word `score`")
    e.add_argument("--tasks", action="append", default=[],
                   help="a task file (.toml/.json) or FORMAT=PATH (mmlu_csv, choice_jsonl, "
                        "gsm8k_jsonl, gen_jsonl); repeatable")
    e.add_argument("--shots", type=_int(0), default=None, help="few-shot examples (FORMAT=PATH "
                                                              "tasks; needs --dev)")
    e.add_argument("--dev", default=None, help="few-shot pool for FORMAT=PATH tasks")
    e.add_argument("--limit", type=_int(0), default=0, help="score the first N examples of "
                                                            "each task (0: all)")
    e.add_argument("--perplexity", metavar="TEXT", default=None,
                   help="a UTF-8 text file whose perplexity and bits/byte to report")
    e.add_argument("--stride", type=_int(1), default=None,
                   help="sliding-window stride for --perplexity (default: the context length)")
    e.add_argument("--batch-size", type=_int(1), default=16)
    e.add_argument("--max-new-tokens", type=_int(1), default=None,
                   help="generative tasks (default: the task's, 256)")
    e.add_argument("--no-truncate", action="store_true",
                   help="a prompt longer than the context is an error (default: drop tokens "
                        "from the left and count them in the report)")
    e.add_argument("--contamination", metavar="CORPUS", action="append", default=None,
                   help="training text (files, dirs, .jsonl): report each task's n-gram overlap")
    e.add_argument("--ngram", type=_int(1, 64), default=13, help="n of --contamination")
    e.add_argument("--bootstrap", type=_int(0), default=1000, help="resamples of the SE")
    e.add_argument("--report", metavar="FILE.json", default=None,
                   help=f"write the JSON report (every per-example score); {_CREATED}")
    e.add_argument("--markdown", metavar="FILE.md", default=None,
                   help=f"write the markdown table; {_CREATED}")
    e.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    e.add_argument("--hyp", default=None, help="`score`: hypotheses, one per line")
    e.add_argument("--ref", action="append", default=None,
                   help="`score`: references, one per line (repeat for more references)")
    e.add_argument("--stem", action="store_true", help="`score`: Porter-stem before ROUGE")


def _run_eval(args):
    from .eval.cli import run
    for flag, path in (("--report", args.report), ("--markdown", args.markdown)):
        _output_file(flag, path)
    return run(args)


def _add_finetune(sub):
    """`microgpt finetune sft` and `microgpt chat` (microgpt/finetune/)."""
    from .train.config import add_arguments
    ft = sub.add_parser("finetune", help="supervised fine-tuning on chat data (full, LoRA, QLoRA)")
    ft_sub = ft.add_subparsers(dest="finetune_command", required=True)
    p = _leaf(ft_sub, "sft", _run_finetune,
              help="fine-tune a model on JSONL conversations, the loss on the assistant's tokens",
              usage="microgpt finetune sft --init-from MODEL --data CHAT.jsonl [--lora-rank R] "
                    "[--FIELD VALUE ...] | --resume RUN_DIR")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a fine-tuning run bit for bit")
    p.add_argument("--val-data", default="", metavar="FILE.jsonl",
                   help="held-out conversations (default: --val-fraction of --data)")
    p.add_argument("--lora-rank", type=_int(0), default=0, help="0 = full fine-tuning (default)")
    p.add_argument("--lora-alpha", type=_float(0.0, low_open=True), default=16.0, help="default 16")
    p.add_argument("--lora-targets", default="q,v", help="some of q,k,v,o,up,down,gate (default q,v)")
    p.add_argument("--lora-dropout", type=_float(0.0, 1.0, high_open=True), default=0.0)
    p.add_argument("--qlora", nargs="?", const="int8", default="", choices=("int8", "int4"),
                   help="the frozen base of the blocks quantized: int8 (alone: int8) or int4")
    p.add_argument("--qlora-group", type=_int(0), default=0, metavar="G",
                   help="inputs per scale of the quantized base (default: int8 a row, int4 32)")
    p.add_argument("--packing", action="store_true",
                   help="several conversations per row, document-masked attention")
    p.add_argument("--overflow", choices=("truncate", "drop"), default="truncate",
                   help="a conversation longer than the context (default truncate)")
    add_arguments(p)
    d = _leaf(ft_sub, "distill", _run_finetune_distill,
              help="train a student against a teacher's softened distributions (KL + CE)",
              usage="microgpt finetune distill --teacher RUN --student PRESET|CONFIG.toml|RUN "
                    "[--alpha A] [--distill-temperature T] [--FIELD VALUE ...]")
    d.add_argument("--teacher", required=True, metavar="RUN",
                   help="the trained teacher: a run, checkpoint or Hugging Face directory")
    d.add_argument("--student", required=True, metavar="PRESET|CONFIG.toml|RUN",
                   help="a preset or TOML config (trained from scratch with the teacher's "
                        "tokenizer; --FIELD flags shape it), or a model directory to continue")
    d.add_argument("--alpha", type=_float(0.0, 1.0), default=0.5,
                   help="weight of the KL term, 1 - alpha on cross-entropy (default 0.5; 0 = "
                        "the student alone)")
    d.add_argument("--distill-temperature", type=_float(0.0, low_open=True), default=2.0,
                   help="softmax temperature T of both distributions in the KL (default 2; "
                        "--temperature is the samples')")
    add_arguments(d)
    e = _leaf(ft_sub, "eval", _run_finetune_eval,
              help="greedy exact match of each held-out conversation's last answer")
    e.add_argument("run_dir", metavar="RUN", help="a fine-tuning run, a checkpoint or an HF directory")
    e.add_argument("--data", required=True, metavar="HELD_OUT.jsonl")
    e.add_argument("--limit", type=_int(0), default=0, help="score the first N only (0 = all)")
    e.add_argument("--max-new-tokens", type=_int(1), default=32)
    e.add_argument("--show", type=_int(0), default=3, help="print the first N answers")
    e.add_argument("--json", help="also write the figures to this JSON file")
    e.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    from .finetune.align_commands import add_parsers as add_alignment_parsers
    add_alignment_parsers(ft_sub, _leaf, _int, _float)     # pairs, reward, dpo, ppo, grpo
    _name_the_choices(ft_sub)
    c = _leaf(sub, "chat", _run_chat, help="chat with a fine-tuned model in the terminal")
    c.add_argument("run_dir", metavar="RUN", help="a fine-tuning run, a checkpoint, or a Hugging "
                                                  "Face model directory")
    c.add_argument("--message", help="answer this one message and exit (for scripts)")
    c.add_argument("--system", help="the system prompt")
    c.add_argument("--max-new-tokens", type=_int(1), default=256, help="per reply (default 256)")
    c.add_argument("--temperature", type=_float(0.0), default=0.0, help="0 = greedy (default)")
    c.add_argument("--top-k", type=_int(0), default=0, help="0 = off (default)")
    c.add_argument("--seed", type=_int(0), default=0)
    c.add_argument("--device", default="cpu", choices=("cpu", "cuda"))


def _run_finetune(args):
    from .finetune.commands import run_sft
    from .train.config import overrides_from_args
    return run_sft(args, overrides_from_args(args))


def _run_finetune_distill(args):
    from .finetune.distill import run_distill
    from .train.config import overrides_from_args
    return run_distill(args, overrides_from_args(args))


def _run_finetune_eval(args):
    from .finetune.commands import run_eval
    _output_file("--json", args.json)
    return run_eval(args)


def _run_chat(args):
    from .finetune.commands import run_chat
    return run_chat(args)


def _add_data_synth(data_sub):
    """`microgpt data synth`: synthetic instruction tasks (microgpt/finetune/synth.py)."""
    from .finetune.synth import TASKS
    p = _leaf(data_sub, "synth", _run_data_synth,
              help="write a synthetic instruction task: train.jsonl and eval.jsonl, no overlap")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("-o", "--out", required=True, help=f"output directory ({_CREATED})")
    p.add_argument("--train", type=_int(1), default=2000, help="train examples (default 2000)")
    p.add_argument("--eval", type=_int(1), default=200, help="held-out examples (default 200)")
    p.add_argument("--seed", type=_int(0), default=0)


def _run_data_synth(args):
    from .finetune.commands import run_synth
    _output_dir("--out", args.out)
    return run_synth(args)


def _name_the_choices(subparsers):
    """A missing subcommand is reported by its choices, not by the internal dest name."""
    subparsers.metavar = "{" + ",".join(subparsers.choices) + "}"


def _read_text(path):
    """The UTF-8 text of a file (None: standard input); TokenizerError naming it otherwise."""
    from .tokenizer import TokenizerError
    try:
        if path is None:                        # bytes as they are, like a file read
            stream = getattr(sys.stdin, "buffer", None)
            return sys.stdin.read() if stream is None else stream.read().decode("utf-8")
        with open(path, encoding="utf-8", newline="") as f:
            return f.read()
    except UnicodeDecodeError as exc:
        raise TokenizerError(f"{path or 'standard input'} is not UTF-8 text ({exc.reason} at "
                             f"byte {exc.start}); convert it to UTF-8 first") from None


def _add_compress(sub):
    """`microgpt quantize` and `microgpt export-gguf` (microgpt/quantize/, interop/gguf_export.py)."""
    p = _leaf(sub, "quantize", _run_quantize, help="quantize a model's Linear weights to int8 or int4",
              description="Weight-only quantization of every Linear of RUN's newest checkpoint: int8 "
                          "(absmax, per output channel, or groups) or int4 (groups of 32/64/128, "
                          "Q4_0's layout). Writes a checkpoint directory that generate/eval read.")
    p.add_argument("run_dir", metavar="RUN", help="a run or checkpoint directory")
    p.add_argument("--scheme", required=True, choices=("int8", "int4"))
    p.add_argument("--group", type=_int(1), default=None,
                   help="inputs per scale (int8 default: the whole row; int4 default 32); must divide "
                        "each layer's inputs (no padding), int4 groups a multiple of 32")
    p.add_argument("--head", nargs="?", const="same", default="default", choices=("default", "fp32", "int8", "same"),
                   help="the LM head: fp32, int8 (group 32, = Q8_0) or same (the blocks' scheme; a bare "
                        "--head); default: int8 (group 32) in int4 and int8 models")
    p.add_argument("--out", default=None, help="the new directory (default RUN-SCHEME[-gGROUP])")
    p = _leaf(sub, "prune", _run_prune, help="prune a model's Linear weights (magnitude or 2:4)",
              description="Zero the smallest weights of every Linear of the blocks: per layer by "
                          "magnitude (--sparsity of them) or 2:4 (2 of every 4 consecutive inputs); "
                          "optionally recover with a short fine-tune, the masks held fixed. Reports "
                          "val perplexity before, after and recovered (DIR/pruning.json).")
    p.add_argument("run_dir", metavar="RUN", help="a run, checkpoint or Hugging Face directory")
    p.add_argument("--method", required=True, choices=("magnitude", "2:4"))
    p.add_argument("--sparsity", type=_float(0.0, 1.0, high_open=True), default=0.5,
                   help="fraction of each layer's weights zeroed (magnitude; 2:4 is 0.5)")
    p.add_argument("--recover-steps", type=_int(0), default=0, help="fine-tune steps after pruning (0: none)")
    p.add_argument("--data", default=None, help="recovery and perplexity data (default: the built-in corpus)")
    p.add_argument("--data-dir", default=None, help="a prepared data directory to reuse")
    p.add_argument("--lr", type=_float(0.0, low_open=True), default=None,
                   help="recovery peak learning rate (default 6e-4)")
    p.add_argument("--batch-size", type=_int(1), default=None)
    p.add_argument("--eval-batches", type=_int(1), default=None)
    p.add_argument("--out", required=True, help=f"the new run directory ({_CREATED})")
    p = _leaf(sub, "export-gguf", _run_export_gguf, help="write a model as a GGUF file for llama.cpp",
              description="GPT-2 and Llama-family models, tokenizer included. q8_0/q4_0 store the blocks' "
                          "Linear weights in GGUF's Q8_0/Q4_0 blocks (embeddings float32; the head float32, or "
                          "Q8_0 / Q4_0 when a quantized model holds it at group 32).")
    p.add_argument("run_dir", metavar="RUN", help="a run, checkpoint or quantized directory")
    p.add_argument("--type", default="f32", choices=("f32", "f16", "q8_0", "q4_0"))
    p.add_argument("--out", required=True, help="the .gguf file to write")


def _run_quantize(args):
    from .quantize.commands import run_quantize
    return run_quantize(args)


def _run_prune(args):
    from .quantize.prune import run_prune
    _output_dir("--out", args.out)
    return run_prune(args)


def _run_export_gguf(args):
    from .quantize.commands import run_export_gguf
    return run_export_gguf(args)


def _add_serve(sub):
    """`microgpt serve` (microgpt/serve/)."""
    p = _leaf(sub, "serve", _run_serve,
              help="serve a model over an OpenAI-compatible HTTP API with a chat page",
              description="Serve RUN's model: POST /v1/completions and /v1/chat/completions "
                          "(streaming or not), GET /v1/models, /health, /metrics, and a chat "
                          "page at /. Continuous batching over a paged KV cache. Needs the "
                          "serve extra: pip install -e '.[serve]'.")
    p.add_argument("run_dir", metavar="RUN", help="a run directory, a checkpoint directory, or a "
                                                 "Hugging Face model directory with its tokenizer.json")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_int(0), default=8000, help="default 8000")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/* and /metrics")
    p.add_argument("--max-batch", type=_int(1), default=32, help="sequences decoded together (default 32)")
    p.add_argument("--max-queue", type=_int(1), default=64,
                   help="requests that may wait for a batch slot; more get 429 (default 64)")
    p.add_argument("--block-size", type=_int(1), default=16, help="positions per KV cache block (default 16)")
    p.add_argument("--kv-blocks", type=_int(1), default=None,
                   help="KV cache blocks (default: max-batch sequences of the full context)")
    p.add_argument("--max-step-tokens", type=_int(1), default=256,
                   help="tokens per forward pass; longer prompts are prefilled in chunks (default 256)")
    p.add_argument("--model-name", default=None, help="the name clients ask for (default: RUN's folder name)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))


def _run_serve(args):
    from .serve.server import serve
    return serve(args.run_dir, args.host, args.port, args.api_key, args.max_batch, args.max_queue,
                 args.block_size, args.kv_blocks, args.max_step_tokens, args.model_name, args.device)


def _add_lifecycle(sub):
    """`microgpt lifecycle` (microgpt/lifecycle.py): every stage in order, resumably."""
    from .lifecycle import STAGES
    p = _leaf(sub, "lifecycle", _run_lifecycle,
              help="the whole life of an LLM in one command: clean, tokenize, pre-train, SFT, "
                   "align, evaluate, quantize, serve; a report card",
              description="Run every stage in order, each a microgpt command writing under "
                          "OUT_DIR/STAGE/; a re-run skips finished stages (a COMPLETE marker), "
                          "--from STAGE runs it and the later ones again. Ends with "
                          "OUT_DIR/report/report.md and report.json.")
    p.add_argument("--quick", action="store_true", help="small everything (about 10 minutes on "
                                                        "2 cores; default: the full size)")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)    # the CI test's size
    p.add_argument("--out-dir", default="runs/life", help=f"default runs/life; {_CREATED}")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--from", dest="start", choices=STAGES, default=None, metavar="STAGE",
                   help=f"run STAGE and every later one again: {', '.join(STAGES)}")


def _run_lifecycle(args):
    from .lifecycle import run
    _output_dir("--out-dir", args.out_dir)
    return run(args)


def build_parser():
    parser = argparse.ArgumentParser(prog="microgpt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_models(sub)
    _add_data(sub)
    _add_tokenizer(sub)
    _add_finetune(sub)
    _add_eval(sub)
    _add_serve(sub)
    _add_compress(sub)
    _add_lifecycle(sub)
    _name_the_choices(sub)
    return parser


# How long an idle OpenMP worker spins before it sleeps, for the commands that decode token by
# token. backends/cpu_lib.py makes workers sleep at once (OMP_WAIT_POLICY=PASSIVE): on a busy
# machine a spinning worker holds the core the thread it waits for needs (training measured 11x
# slower with libgomp's default spin under load). But one decoded token is hundreds of short
# parallel regions a few microseconds apart, and waking a sleeping worker for each costs more
# than the region: "small"'s fp32 decode ran at 269 tokens/s sleeping and 528 with a
# 20,000-iteration spin (tens of microseconds) on the idle 2-core machine, 2026-12-01, while a
# 15-step baby-preset training run beside two busy processes lost 38 % with it (3,952 -> 2,461
# tokens/s; libgomp's own default of 300,000: 1,235). So only the decoding commands spin, and only
# that long; GOMP_SPINCOUNT in the environment overrides it. Set here, before any command loads
# the C kernels (libgomp reads it once, when it loads).
DECODE_COMMANDS = ("generate", "chat", "serve")
DECODE_SPINCOUNT = "20000"


def openmp_environment(command, environ=os.environ):
    """Give the decoding commands their short spin (above); every other command is left as is."""
    if command in DECODE_COMMANDS:
        environ.setdefault("GOMP_SPINCOUNT", DECODE_SPINCOUNT)
    return environ


def main(argv=None):
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:                                 # said with the subcommand's own usage
        getattr(args, "leaf_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.error(f"command {args.command!r} is not available yet")
    openmp_environment(args.command)
    try:
        return handler(args) or 0
    except (MicrogptError, OSError) as exc:
        print(f"microgpt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
