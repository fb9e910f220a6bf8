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
    """`microgpt data clean`: normalize, filter, dedup, scrub (the data issue fills this in)."""


def _add_tokenizer(sub):
    """`microgpt tokenizer train|encode|decode|info` (the tokenizer issue fills this in)."""


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
