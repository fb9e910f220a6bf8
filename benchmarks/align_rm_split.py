"""A reward model's held-out pair accuracy split by the kind of rejected answer (the kv task).

    python benchmarks/align_rm_split.py RM_RUN PAIRS.jsonl

"distractor" pairs: the rejected answer is another value of the prompt's key-value table (what
a policy that answers from the prompt gets wrong); "other" pairs: any other rejected answer
(a random digit, a malformed reply). An RM can be far above chance overall and at chance on
distractors, having learned "the answer is a value the prompt mentions" (results/align.md).
"""
import argparse
import re

from microgpt.finetune.preference import encode_pairs, read_pairs
from microgpt.finetune.reward import load_reward_model, pair_accuracy


def prompt_values(messages):
    return set(re.findall(r"=(-?\d+)", messages[-1]["content"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reward_model")
    parser.add_argument("pairs")
    args = parser.parse_args()
    model, tokenizer = load_reward_model(args.reward_model)
    rows = read_pairs(args.pairs)
    parts = (("all", rows), ("distractor", [r for r in rows if r[2] in prompt_values(r[0])]),
             ("other", [r for r in rows if r[2] not in prompt_values(r[0])]))
    for name, part in parts:
        encoded = encode_pairs(tokenizer, part, model.config.block_size)[0]
        print(f"{name}: {len(encoded)} pairs, pair accuracy {pair_accuracy(model, encoded):.3f}")


if __name__ == "__main__":
    main()
