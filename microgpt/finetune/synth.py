"""Synthetic instruction tasks made by code, with train / held-out splits that never overlap.

    microgpt data synth --task arithmetic --train 2000 --eval 200 -o data/arith/
    -> data/arith/train.jsonl, data/arith/eval.jsonl       ({"messages": [user, assistant]})

Each task draws (prompt, answer) pairs from a seeded Generator; the answer is a function of
the prompt, so exact match is the score. The split is by prompt: a prompt goes to the
held-out set iff a hash of its text falls in the held-out share, so the same prompt can never
be on both sides, whatever the seed and the counts; duplicates within a side are dropped.

    arithmetic   "What is 37 + 48?"                     -> "85"       (+, - and *, 2 digits)
    reverse      "Reverse the string: kqzt"             -> "tzqk"
    sort         "Sort these numbers: 5 2 9 1"          -> "1 2 5 9"
    kv           "a=3, b=7, c=1. What is b?"             -> "7"        (key-value recall)
    format       'Answer in JSON with key "name": bob'  -> '{"name": "bob"}'
"""
import hashlib
import json
import os
import string

import numpy as np

from ..errors import ConfigError
from ..fileio import atomic_write

TASKS = ("arithmetic", "reverse", "sort", "kv", "format")
HELD_OUT_SHARE = 0.2          # of the prompt space that belongs to the held-out side


def _arithmetic(rng):
    a, b = (int(v) for v in rng.integers(0, 100, 2))
    op = "+-*"[int(rng.integers(0, 3))]
    value = a + b if op == "+" else a - b if op == "-" else a * b
    return f"What is {a} {op} {b}?", str(value)


def _letters(rng, low, high):
    n = int(rng.integers(low, high + 1))
    return "".join(rng.choice(list(string.ascii_lowercase), n))


def _reverse(rng):
    word = _letters(rng, 3, 8)
    return f"Reverse the string: {word}", word[::-1]


def _sort(rng):
    values = [int(v) for v in rng.integers(0, 10, int(rng.integers(3, 7)))]
    return f"Sort these numbers: {' '.join(map(str, values))}", " ".join(map(str, sorted(values)))


def _kv(rng):
    keys = rng.choice(list(string.ascii_lowercase), int(rng.integers(3, 6)), replace=False)
    values = [int(v) for v in rng.integers(0, 10, len(keys))]
    asked = int(rng.integers(0, len(keys)))
    pairs = ", ".join(f"{k}={v}" for k, v in zip(keys, values))
    return f"{pairs}. What is {keys[asked]}?", str(values[asked])


def _format(rng):
    key = ["name", "city", "color", "animal"][int(rng.integers(0, 4))]
    value = _letters(rng, 3, 6)
    return f'Answer in JSON with key "{key}": {value}', json.dumps({key: value})


GENERATORS = {"arithmetic": _arithmetic, "reverse": _reverse, "sort": _sort, "kv": _kv,
              "format": _format}


def held_out(prompt):
    """Whether a prompt belongs to the held-out side (a hash of its text, not of the draw)."""
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < HELD_OUT_SHARE


def generate(task, n_train, n_eval, seed=0, max_draws_per_example=200):
    """(train pairs, held-out pairs): lists of (prompt, answer), distinct prompts, disjoint."""
    if task not in GENERATORS:
        raise ConfigError(f"unknown task {task!r}; tasks are {', '.join(TASKS)}")
    rng = np.random.default_rng([seed, TASKS.index(task)])
    sides = {False: {}, True: {}}
    wanted = {False: n_train, True: n_eval}
    draws, limit = 0, max_draws_per_example * (n_train + n_eval + 1)
    while any(len(sides[s]) < wanted[s] for s in sides):
        prompt, answer = GENERATORS[task](rng)
        side = held_out(prompt)
        if len(sides[side]) < wanted[side]:
            sides[side].setdefault(prompt, answer)
        draws += 1
        if draws > limit:
            raise ConfigError(f"task {task!r} has too few distinct prompts for {n_train} train "
                              f"and {n_eval} held-out examples; ask for fewer")
    return list(sides[False].items()), list(sides[True].items())


def to_messages(prompt, answer):
    return {"messages": [{"role": "user", "content": prompt},
                         {"role": "assistant", "content": answer}]}


def write_jsonl(path, pairs):
    with atomic_write(path, "w", encoding="utf-8") as f:
        for prompt, answer in pairs:
            f.write(json.dumps(to_messages(prompt, answer), ensure_ascii=False) + "\n")


def write_task(task, out_dir, n_train, n_eval, seed=0):
    """Write OUT_DIR/train.jsonl and OUT_DIR/eval.jsonl; returns their paths."""
    train, held = generate(task, n_train, n_eval, seed)
    os.makedirs(out_dir, exist_ok=True)
    paths = os.path.join(out_dir, "train.jsonl"), os.path.join(out_dir, "eval.jsonl")
    write_jsonl(paths[0], train)
    write_jsonl(paths[1], held)
    return paths
