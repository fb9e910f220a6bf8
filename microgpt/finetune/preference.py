"""Preference pairs and prompts: the data of the reward model, DPO, PPO and GRPO.

A preference file is JSONL, one pair a line, in TRL's two shapes:

    {"prompt": "a=3, b=7. What is b?", "chosen": "7", "rejected": "3"}            (strings)
    {"prompt": [{"role": "user", "content": ...}], "chosen": [{"role": "assistant",
     "content": "7"}], "rejected": [{"role": "assistant", "content": "3"}]}       (messages)

Each pair is encoded with the chat template: the prompt with the generation prompt, and
each response as the assistant's tokens that fine-tuning trains on (its text and
<|im_end|>), so DPO scores exactly what SFT taught. Nothing silently trains on garbage: a
pair whose chosen and rejected are the same, one with an empty response, and one longer
than the context are skipped, each counted in the report (and a file with no pair left
is an error); a broken line is an error naming FILE:LINE.

For the synthetic tasks (finetune/synth.py) the answer is a function of the prompt, so
solve() verifies a response (the rule reward of GRPO), and make_pairs() builds pairs: chosen
= the verified answer, rejected = one of the policy's own wrong samples (a prompt whose
samples are all right gives no pair). For user data there is only the file.

A sampled reply ends at its first special token. A small policy sometimes samples
<|im_start|> mid-reply (it starts a new turn instead of closing its own) or spells a special
token's text with ordinary tokens; no turn's content may hold either (the chat template
refuses it, tokenizer/chat.py). So every special id is a stop id of the sampler, and
reply_text() keeps the text before the first special token's text: the reply the policy
gave before it left its turn. A reply with nothing before it gives no pair.
"""
import json
import re
from dataclasses import dataclass, field

import numpy as np

from ..fileio import atomic_write
from ..tokenizer.chat import encode_chat
from .data import ChatDataError, conversation_of, read_conversations
from .rl_common import AlignmentError


@dataclass
class EncodedPair:
    prompt: list
    chosen: list
    rejected: list


@dataclass
class PairReport:
    lines: int = 0
    pairs: int = 0
    skipped_identical: int = 0
    skipped_empty: int = 0
    skipped_too_long: int = 0
    notes: list = field(default_factory=list)

    def summary(self):
        parts = [f"{self.pairs} pairs from {self.lines} lines"]
        for name, why in (("skipped_identical", "chosen == rejected, skipped"),
                          ("skipped_empty", "an empty response, skipped"),
                          ("skipped_too_long", "longer than the context, skipped")):
            if getattr(self, name):
                parts.append(f"{getattr(self, name)} {why}")
        return "; ".join(parts)


def _messages(value, where, name, role=None):
    if isinstance(value, str):
        return [{"role": role or "user", "content": value}]
    if isinstance(value, list):
        return conversation_of({"messages": value}, where)
    raise ChatDataError(f"{where}: '{name}' must be a string or a list of messages")


def read_pairs(path):
    """[(prompt messages, chosen text, rejected text)] of a preference JSONL file."""
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ChatDataError(f"{where}: not valid JSON ({error.msg})") from None
                if not isinstance(obj, dict) or not all(k in obj for k in ("prompt", "chosen", "rejected")):
                    raise ChatDataError(f"{where}: each line needs \"prompt\", \"chosen\" and "
                                        f"\"rejected\" (strings or lists of messages)")
                prompt = _messages(obj["prompt"], where, "prompt")
                texts = []
                for name in ("chosen", "rejected"):
                    answer = _messages(obj[name], where, name, role="assistant")
                    if answer[-1]["role"] != "assistant":
                        raise ChatDataError(f"{where}: '{name}' must end with an assistant message")
                    texts.append(answer[-1]["content"])
                rows.append((prompt, texts[0], texts[1]))
    except FileNotFoundError:
        raise ChatDataError(f"{path}: no such file; give a JSONL file of preference pairs") from None
    return rows


def response_ids(tokenizer, prompt_messages, text):
    """The assistant's trained tokens of `text` after the prompt (its text and <|im_end|>)."""
    prompt, _ = encode_chat(tokenizer, prompt_messages, add_generation_prompt=True)
    full, mask = encode_chat(tokenizer, prompt_messages + [{"role": "assistant", "content": text}])
    if full[:len(prompt)] != prompt:
        raise AlignmentError("the chat template does not render the prompt as a prefix of the "
                             "conversation; preference training needs one that does")
    return prompt, [i for i, m in zip(full[len(prompt):], mask[len(prompt):]) if m]


def encode_pairs(tokenizer, rows, block_size, report=None):
    """([EncodedPair], PairReport): the rows that can be trained on, the rest counted."""
    report = report if report is not None else PairReport()
    pairs = []
    for prompt_messages, chosen, rejected in rows:
        report.lines += 1
        if chosen.strip() == rejected.strip():
            report.skipped_identical += 1
            continue
        if not chosen.strip() or not rejected.strip():
            report.skipped_empty += 1
            continue
        prompt, c = response_ids(tokenizer, prompt_messages, chosen)
        _, r = response_ids(tokenizer, prompt_messages, rejected)
        if len(prompt) + max(len(c), len(r)) > block_size:
            report.skipped_too_long += 1
            continue
        pairs.append(EncodedPair(prompt, c, r))
    report.pairs = len(pairs)
    return pairs, report


def load_pairs(path, tokenizer, block_size):
    pairs, report = encode_pairs(tokenizer, read_pairs(path), block_size)
    if not pairs:
        raise AlignmentError(f"{path}: no preference pair left to train on ({report.summary()})")
    return pairs, report


# --- prompts and verifiers of the synthetic tasks -------------------------------------------------

def read_prompts(path):
    """[(prompt messages, reference answer or None)] of a chat JSONL (finetune/data.py's shapes):
    everything before the last assistant turn, and that turn's text."""
    conversations, _ = read_conversations(path)
    out = []
    for messages in conversations:
        last = max(k for k, m in enumerate(messages) if m["role"] == "assistant")
        out.append((messages[:last], messages[last]["content"]))
    return out


_KV = re.compile(r"^((?:[a-z]=\d+, )*[a-z]=\d+)\. What is ([a-z])\?$")
_ARITH = re.compile(r"^What is (-?\d+) ([+*-]) (-?\d+)\?$")


def solve(prompt):
    """The answer of a synthetic task's prompt (synth.py), or None if it is none of them."""
    m = _KV.match(prompt)
    if m:
        table = dict(kv.split("=") for kv in m.group(1).split(", "))
        return table.get(m.group(2))
    m = _ARITH.match(prompt)
    if m:
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        return str(a + b if op == "+" else a - b if op == "-" else a * b)
    if prompt.startswith("Reverse the string: "):
        return prompt[len("Reverse the string: "):][::-1]
    if prompt.startswith("Sort these numbers: "):
        return " ".join(sorted(prompt[len("Sort these numbers: "):].split(), key=int))
    return None


def rule_reward(prompt_messages, response_text):
    """1.0 when the response is the verified answer of the last user turn, else 0.0."""
    answer = solve(prompt_messages[-1]["content"])
    if answer is None:
        raise AlignmentError(f"no verifier for the prompt {prompt_messages[-1]['content']!r}; the "
                             f"rule reward knows the synthetic tasks (data synth) only")
    return float(response_text.strip() == answer)


def perturb(answer, rng):
    """A wrong answer close to the right one: one character replaced by another of its kind
    (a digit by another digit, a letter by another letter), or, with nothing to replace, the
    answer with a character appended. Near misses are the pairs a reward model learns most
    from: they differ from the truth in the one place where the policy errs (for kv, the value
    recalled), not in format."""
    spots = [i for i, c in enumerate(answer) if c.isdigit() or c.isalpha()]
    if not spots:
        return answer + "0"
    i = spots[int(rng.integers(len(spots)))]
    pool = "0123456789" if answer[i].isdigit() else "abcdefghijklmnopqrstuvwxyz"
    pool = pool.replace(answer[i].lower(), "")
    return answer[:i] + pool[int(rng.integers(len(pool)))] + answer[i + 1:]


def distractors(answer, prompt):
    """The prompt's own items that could be mistaken for the answer: its numbers when the answer
    is a number, its words when it is a word, minus the answer, in order of appearance. These
    are the hard negatives: a reward model trained only on random near misses learns "the
    answer is something the prompt mentions" (right for those, at chance on a policy that
    already answers with the prompt's values: benchmarks/results/align.md); with distractors
    as rejected answers it has to learn which item is the right one."""
    number = re.fullmatch(r"-?\d+", answer) is not None
    items = re.findall(r"-?\d+" if number else r"[A-Za-z]+", prompt)
    out = []
    for item in items:
        if item != answer and item not in out:
            out.append(item)
    return out


def reply_text(tokenizer, ids):
    """A sampled reply's content: its ids up to the first special id, decoded, cut at the first
    special token's text spelled by ordinary tokens, stripped."""
    specials = set(tokenizer.special_tokens.values())
    end = next((k for k, i in enumerate(ids) if i in specials), len(ids))
    text = tokenizer.decode(list(ids[:end]))
    cut = min((text.find(s) for s in tokenizer.special_tokens if s in text), default=len(text))
    return text[:cut].strip()


def make_pairs(model, tokenizer, prompts, samples=4, max_new_tokens=8, seed=0, temperature=1.0,
               wrong_per_prompt=1, perturbed=0):
    """[(prompt messages, chosen, rejected)]: chosen the verified answer; rejected up to
    `wrong_per_prompt` distinct wrong samples of the policy's `samples` (a prompt whose samples
    are all right gives none of these), and `perturbed` near misses of the answer per prompt,
    distinct from the truth, the kept samples and each other: the prompt's distractors()
    first (in a seeded random order), then perturb()ed answers."""
    from ..inference.engine import Engine
    from ..inference.sampling import SamplingConfig
    from ..tokenizer.chat import stop_token_ids
    engine = Engine(model, tokenizer, batch_invariant=False)   # samples only; see Engine
    stops = sorted(set(stop_token_ids(tokenizer)) | set(tokenizer.special_tokens.values()))
    rows = []
    rng = np.random.default_rng(seed)
    ids = [encode_chat(tokenizer, p, add_generation_prompt=True)[0] for p, _ in prompts]
    repeated = [i for i in ids for _ in range(samples)]
    outs = engine.generate_ids(repeated, max_new_tokens, SamplingConfig(temperature=temperature),
                               seed, stops)
    for k, (messages, answer) in enumerate(prompts):
        truth = solve(messages[-1]["content"]) or answer
        wrong = []
        for out in outs[k * samples:(k + 1) * samples]:
            text = reply_text(tokenizer, out.ids)
            if text and text != truth and text not in wrong and len(wrong) < wrong_per_prompt:
                wrong.append(text)
        near = []
        hard = distractors(truth, messages[-1]["content"]) if perturbed else []
        candidates = [hard[i] for i in rng.permutation(len(hard))]
        candidates += [perturb(truth, rng) for _ in range(4 * perturbed)]   # short answers have few misses
        for miss in candidates:
            if len(near) == perturbed:
                break
            if miss != truth and miss not in near and miss not in wrong:
                near.append(miss)
        rows.extend((messages, truth, text) for text in wrong + near)
    return rows


def write_pairs(path, rows):
    with atomic_write(path, "w", encoding="utf-8") as f:
        for messages, chosen, rejected in rows:
            f.write(json.dumps({"prompt": messages, "chosen": [{"role": "assistant", "content": chosen}],
                                "rejected": [{"role": "assistant", "content": rejected}]},
                               ensure_ascii=False) + "\n")


def split_rows(rows, held_share, seed):
    order = np.random.default_rng(seed).permutation(len(rows))
    n = int(round(len(rows) * held_share))
    return [rows[k] for k in order[n:]], [rows[k] for k in order[:n]]
