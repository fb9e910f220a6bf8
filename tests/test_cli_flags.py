"""The command line's flags: every number checked at parse time, errors that name the flag,
the subcommand's usage on a bad flag, and `train --help` showing what actually runs.

These only parse (no handler runs), so they are fast."""
import argparse
import re

import pytest

from microgpt.cli import build_parser, main
from microgpt.train.config import DEMO_MINUTES, PRESETS, TrainConfig

# The positionals each leaf command needs before its flags can be parsed.
LEAVES = {("train",): [], ("generate",): ["RUN"], ("plot",): ["RUN"],
          ("data", "prepare"): ["in.txt", "-o", "out"],
          ("data", "clean"): ["in.txt", "-o", "out.jsonl"],
          ("tokenizer", "train"): ["in.txt", "-o", "t.bpe"],
          ("tokenizer", "encode"): ["t.bpe"], ("tokenizer", "decode"): ["t.bpe"],
          ("tokenizer", "info"): ["t.bpe"]}


def leaf_parser(path):
    parser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def value_flags(path, kind):
    """The option strings of a leaf's flags that parse numbers of `kind` (int or float)."""
    found = []
    for action in leaf_parser(path)._actions:
        if not action.option_strings or action.nargs == 0:
            continue
        if action.type is kind or getattr(action.type, "kind", None) is kind:
            found.append(action.option_strings[-1])
    return found


def parse_fails(argv, capsys):
    """argv must be refused by the parser (exit status 2); returns its stderr."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_every_float_flag_of_every_command_rejects_nan_and_inf(capsys):
    float_fields = {"--" + name.replace("_", "-") for name, f in TrainConfig.__dataclass_fields__.items()
                    if f.type in (float, "float")}
    seen = set()
    for path, positionals in LEAVES.items():
        for flag in value_flags(path, float):
            seen.add((path, flag))
            for bad in ("nan", "inf", "-inf", "NaN", "1e999"):
                err = parse_fails(list(path) + positionals + [f"{flag}={bad}"], capsys)
                assert flag in err and "finite" in err, (path, flag, bad, err)
                assert err.strip().splitlines()[-1].startswith(f"microgpt {' '.join(path)}: error:")
    assert {flag for path, flag in seen if path == ("train",)} == float_fields
    assert {(p, f) for p, f in seen if p != ("train",)} == {
        (("generate",), "--temperature"), (("generate",), "--top-p"),
        (("generate",), "--repetition-penalty"), (("data", "prepare"), "--val-fraction"),
        (("data", "clean"), "--threshold")}


@pytest.mark.parametrize("argv, flag", [
    (["generate", "RUN", "--temperature", "-0.5"], "--temperature"),
    (["generate", "RUN", "--top-p", "0"], "--top-p"),
    (["generate", "RUN", "--top-p", "1.5"], "--top-p"),
    (["generate", "RUN", "--repetition-penalty", "0"], "--repetition-penalty"),
    (["generate", "RUN", "--max-new-tokens", "-1"], "--max-new-tokens"),
    (["generate", "RUN", "--top-k", "-3"], "--top-k"),
    (["train", "--dropout", "1"], "--dropout"),
    (["train", "--lr", "0"], "--lr"),
    (["train", "--lr=-1e-3"], "--lr"),
    (["train", "--val-fraction", "0"], "--val-fraction"),
    (["train", "--val-fraction", "1"], "--val-fraction"),
    (["train", "--beta2", "1"], "--beta2"),
    (["train", "--eps", "0"], "--eps"),
    (["train", "--weight-decay", "-0.1"], "--weight-decay"),
    (["train", "--temperature", "-1"], "--temperature"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--eval-interval", "0"], "--eval-interval"),
    (["train", "--seed", "-1"], "--seed"),
    (["data", "prepare", "in", "-o", "out", "--val-fraction", "2"], "--val-fraction"),
    (["data", "prepare", "in", "-o", "out", "--shard-tokens", "0"], "--shard-tokens"),
    (["data", "prepare", "in", "-o", "out", "--vocab-size", "100"], "--vocab-size"),
    (["data", "prepare", "in", "-o", "out", "--tokenizer-bytes", "0"], "--tokenizer-bytes"),
    (["data", "clean", "in", "-o", "o.jsonl", "--threshold", "1"], "--threshold"),
    (["data", "clean", "in", "-o", "o.jsonl", "--num-perm", "0"], "--num-perm"),
    (["tokenizer", "train", "in", "-o", "t", "--vocab-size", "10"], "--vocab-size"),
])
def test_out_of_range_numbers_are_refused_naming_the_flag(argv, flag, capsys):
    err = parse_fails(argv, capsys)
    assert f"argument {flag}" in err and "must be" in err, err


def test_a_bad_boolean_names_no_internals(capsys):
    err = parse_fails(["train", "--progress", "maybe"], capsys)
    assert "--progress" in err and "'maybe'" in err and "true" in err
    assert "_parse_bool" not in err and "invalid" not in err


def test_an_unknown_flag_prints_the_subcommands_usage(capsys):
    err = parse_fails(["tokenizer", "train", "a.txt", "-o", "t.bpe", "--bogus"], capsys)
    assert err.startswith("usage: microgpt tokenizer train")
    assert "unrecognized arguments: --bogus" in err
    err = parse_fails(["generate", "RUN", "--temprature", "0"], capsys)
    assert err.startswith("usage: microgpt generate") and "--temprature" in err
    err = parse_fails(["train", "--n-layers", "2"], capsys)
    assert err.startswith("usage: microgpt train") and "--n-layers" in err


def help_text(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_train_help_shows_the_defaults_that_run_and_every_preset(capsys):
    text = help_text(["train", "--help"], capsys)
    flat = " ".join(text.split())
    demo = PRESETS["demo"]
    for name in ("block_size", "batch_size", "max_steps", "warmup_steps", "lr"):
        flag = "--" + name.replace("_", "-")
        assert f"{flag} {type(demo[name]).__name__.upper()} default {demo[name]!r}" in flat, name
    # fields the demo does not set show the dataclass default
    assert f"--grad-clip FLOAT default {TrainConfig.grad_clip!r}" in flat
    lines = text.splitlines()
    for preset, values in PRESETS.items():               # the epilog, generated from PRESETS
        start = next(i for i, line in enumerate(lines) if line.startswith(f"  {preset} "))
        block = [lines[start]]
        for line in lines[start + 1:]:                   # its wrapped continuation lines
            if not line.startswith("   "):
                break
            block.append(line)
        words = " ".join(block).split()
        for key, value in values.items():
            assert f"{key}={value}" in words, (preset, key)
    assert f"~{DEMO_MINUTES} minutes" in flat
    top = help_text(["--help"], capsys)
    assert f"~{DEMO_MINUTES} minutes" in " ".join(top.split())


def test_help_says_missing_output_directories_are_created(capsys):
    for argv in (["tokenizer", "train", "--help"], ["data", "prepare", "--help"],
                 ["data", "clean", "--help"], ["plot", "--help"], ["train", "--help"]):
        assert "created if missing" in " ".join(help_text(argv, capsys).split()), argv


def test_a_missing_subcommand_is_named_by_its_choices(capsys):
    # the top level: the first groups, then whatever commands later issues added
    for argv, choices in (([], r"\{train,generate,plot,inspect,convert,data,tokenizer(,[\w-]+)*\}"),
                          (["data"], r"\{prepare,clean(,\w+)*\}"),
                          (["tokenizer"], r"\{train,encode,decode,info\}")):
        err = parse_fails(argv, capsys)
        assert re.search(f"required: {choices}$", err.strip()), err
        assert "_command" not in err
