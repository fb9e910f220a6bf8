"""KL of an aligned model to the SFT model on held-out prompts (the align.md column).

For each held-out prompt x the model's greedy reply y (finetune/evaluate.py, what exact match
scores) is scored under both models, and the exact per-token KL over the vocabulary is summed
over the reply:  KL(x) = sum_t sum_v pi(v | x, y_<t) (log pi - log pi_sft)(v | x, y_<t).
The column is the mean over prompts, in nats per reply.

    python benchmarks/align_kl.py SFT_RUN MODEL_RUN [MODEL_RUN ...] --data kv/eval.jsonl
"""
import argparse

import numpy as np

from microgpt.finetune.evaluate import replies
from microgpt.finetune.preference import read_prompts, response_ids
from microgpt.finetune.rl_common import Sequences
from microgpt.finetune.sft import load_chat_model
from microgpt.ops_fused import log_softmax
from microgpt.tensor import no_grad


def kl_to(model, sft, tokenizer, prompts, max_new_tokens=8):
    texts = replies(model, tokenizer, prompts, max_new_tokens)
    pairs = [response_ids(tokenizer, p, t) for p, t in zip(prompts, texts)]
    seqs = Sequences([p for p, _ in pairs], [r for _, r in pairs])
    with no_grad():
        a = log_softmax(model(seqs.ids[:, :-1])[0]).numpy().astype(np.float64)
        b = log_softmax(sft(seqs.ids[:, :-1])[0]).numpy().astype(np.float64)
    per_token = (np.exp(a) * (a - b)).sum(-1)
    return float((per_token * seqs.response_mask).sum(1).mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sft")
    parser.add_argument("models", nargs="+")
    parser.add_argument("--data", required=True)
    args = parser.parse_args()
    sft, tokenizer, _ = load_chat_model(args.sft)
    prompts = [p for p, _ in read_prompts(args.data)]
    for path in args.models:
        model, _, _ = load_chat_model(path)
        print(f"{path}: KL to SFT {kl_to(model, sft, tokenizer, prompts):.4f} nats per reply")


if __name__ == "__main__":
    main()
