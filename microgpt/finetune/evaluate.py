"""Replies and exact match: what a fine-tuned model answers, and how often it is right.

reply() renders the conversation with the generation prompt, decodes greedily (temperature
0: the score is then a property of the model, not of a draw) until <|im_end|>, the
end-of-text id, max_new_tokens or the context, and returns the text. exact_match() scores
a held-out JSONL: the share of conversations whose last assistant turn the model reproduces
exactly (after stripping surrounding whitespace), given everything before it.

Why these few lines and not microgpt/eval/ (the harness). The import graph puts eval/ a
layer above finetune/ (tests/test_import_graph.py), so the trainer's samples and evaluation
here cannot call it. And its generative runner takes text prompts, encoded whole, and stops
on strings, while a chat prompt is the template's ids (tokenizer/chat.py encodes each turn
apart, and a loaded Hugging Face template need not round-trip through text) and stops on the
<|im_end|> id. The judgement is the harness's all the same: exact here is
eval.metrics.exact_or_contains(completion, [answer]) (strip both, compare), which
tests/test_finetune_sft.py checks on every scored row.
"""
import numpy as np

from ..tokenizer.chat import encode_chat, stop_token_ids


def prompt_ids(tokenizer, messages):
    ids, _ = encode_chat(tokenizer, messages, add_generation_prompt=True)
    return ids


def replies(model, tokenizer, conversations, max_new_tokens=64):
    """Greedy replies to each conversation (the list of messages before the answer).

    Conversations whose prompts have the same length decode together, one GPT.forward over
    the whole context per token (answers are a few tokens; this keeps the score independent
    of the inference engine's caches)."""
    from ..tensor import no_grad
    stops = set(stop_token_ids(tokenizer))
    prompts = [prompt_ids(tokenizer, m) for m in conversations]
    out = [""] * len(prompts)
    by_length = {}
    for k, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(k)
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            for length, rows in by_length.items():
                context = np.array([prompts[k] for k in rows], np.int64)
                generated = [[] for _ in rows]
                done = np.zeros(len(rows), bool)
                for _ in range(min(max_new_tokens, model.config.block_size - length)):
                    logits, _ = model(context, last_only=True)
                    nxt = logits.numpy()[:, -1].argmax(-1)
                    for r, token in enumerate(nxt.tolist()):
                        if not done[r]:
                            if token in stops:
                                done[r] = True
                            else:
                                generated[r].append(token)
                    if done.all():
                        break
                    context = np.concatenate([context, nxt[:, None]], axis=1)
                for r, k in enumerate(rows):
                    out[k] = tokenizer.decode(generated[r])
    finally:
        model.train(was_training)
    return out


def reply(model, tokenizer, messages, max_new_tokens=64):
    return replies(model, tokenizer, [messages], max_new_tokens)[0]


def exact_match(model, tokenizer, conversations, max_new_tokens=64):
    """(accuracy, [(prompt messages, expected, got)]) over conversations ending in an answer."""
    prompts, expected = [], []
    for messages in conversations:
        last = max(k for k, m in enumerate(messages) if m["role"] == "assistant")
        prompts.append(messages[:last])
        expected.append(messages[last]["content"])
    got = replies(model, tokenizer, prompts, max_new_tokens)
    rows = list(zip(prompts, expected, got))
    hits = sum(e.strip() == g.strip() for _, e, g in rows)
    return hits / max(len(rows), 1), rows
