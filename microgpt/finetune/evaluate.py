"""Replies and exact match: what a fine-tuned model answers, and how often it is right.

reply() renders the conversation with the generation prompt, decodes greedily (temperature
0: the score is then a property of the model, not of a draw) until <|im_end|>, the
end-of-text id, max_new_tokens or the context, and returns the text. exact_match() scores
a held-out JSONL: the share of conversations whose last assistant turn the model reproduces
exactly (after stripping surrounding whitespace), given everything before it.
"""
from ..inference.engine import Engine
from ..inference.sampling import SamplingConfig
from ..tokenizer.chat import encode_chat, stop_token_ids


def prompt_ids(tokenizer, messages):
    ids, _ = encode_chat(tokenizer, messages, add_generation_prompt=True)
    return ids


def replies(model, tokenizer, conversations, max_new_tokens=64, batch_size=16):
    """Greedy replies to each conversation (the list of messages before the answer)."""
    engine = Engine(model, tokenizer)
    stops = stop_token_ids(tokenizer)
    out = []
    for start in range(0, len(conversations), batch_size):
        chunk = [prompt_ids(tokenizer, m) for m in conversations[start:start + batch_size]]
        room = min(max_new_tokens, engine.block_size - max(len(p) for p in chunk))
        if room <= 0:
            out.extend([""] * len(chunk))
            continue
        done = engine.generate_ids(chunk, room, SamplingConfig(temperature=0.0), 0, stops)
        out.extend(tokenizer.decode([i for i in c.ids if i not in stops]) for c in done)
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
