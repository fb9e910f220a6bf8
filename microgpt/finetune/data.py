"""Chat data for supervised fine-tuning: JSONL conversations -> token ids with a loss mask.

Two line shapes are read, one JSON object per line (blank lines are skipped):

    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}   OpenAI's
    {"prompt": "...", "completion": "..."}            -> one user turn, one assistant turn

A line that is not JSON, lacks both shapes, or has an unknown role is a ChatDataError naming
FILE:LINE (nothing is trained on a file with a broken line). A conversation with no
assistant turn has nothing to learn from: it is skipped and counted.

Tokenizing (tokenizer/chat.py's encode_chat) gives ids and, per id, whether the assistant
wrote it. Training on a conversation of L ids predicts ids[1:] from ids[:-1]; the loss
counts target t only where the mask is set, all other targets being IGNORE (-100, the
ignore_index of cross_entropy). So changing any non-assistant target changes nothing.

Too long for the context (more than block_size + 1 ids): overflow="truncate" keeps the
first block_size + 1 ids (the start of the conversation, where its instruction is) and is
counted; overflow="drop" drops it, counted. A truncated conversation with no assistant
target left is dropped too. The report says how many of each, and why.
"""
import json
from dataclasses import dataclass, field

import numpy as np

from ..errors import MicrogptError, TokenizerError
from ..tokenizer.chat import check_messages, encode_chat

IGNORE = -100
OVERFLOW = ("truncate", "drop")


class ChatDataError(MicrogptError, ValueError):
    """A chat-data file that cannot be read; the message names FILE:LINE and the problem."""


@dataclass
class Example:
    """One tokenized conversation: ids (L,) int64 and mask (L,) bool (the assistant's ids)."""
    ids: np.ndarray
    mask: np.ndarray

    @property
    def inputs(self):
        return self.ids[:-1]

    @property
    def targets(self):
        """ids[1:] with every non-assistant target set to IGNORE."""
        return np.where(self.mask[1:], self.ids[1:], IGNORE)

    def __len__(self):                      # positions trained: L - 1
        return len(self.ids) - 1


@dataclass
class Report:
    lines: int = 0
    conversations: int = 0
    skipped_no_assistant: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_target: int = 0
    examples: int = 0
    notes: list = field(default_factory=list)

    def summary(self):
        parts = [f"{self.examples} examples from {self.conversations} conversations"]
        for name, why in (("skipped_no_assistant", "no assistant turn"),
                          ("truncated", "longer than the context, truncated"),
                          ("dropped_too_long", "longer than the context, dropped"),
                          ("dropped_no_target", "no assistant token within the context, dropped")):
            if getattr(self, name):
                parts.append(f"{getattr(self, name)} {why}")
        return "; ".join(parts)


def conversation_of(obj, where):
    """The messages of one parsed line (either shape), checked."""
    if not isinstance(obj, dict):
        raise ChatDataError(f"{where}: expected a JSON object with 'messages' (or 'prompt' and "
                            f"'completion'), got {type(obj).__name__}")
    if "messages" in obj:
        messages = obj["messages"]
    elif "prompt" in obj and "completion" in obj:
        if not isinstance(obj["prompt"], str) or not isinstance(obj["completion"], str):
            raise ChatDataError(f"{where}: 'prompt' and 'completion' must be strings")
        messages = [{"role": "user", "content": obj["prompt"]},
                    {"role": "assistant", "content": obj["completion"]}]
        if isinstance(obj.get("system"), str):
            messages.insert(0, {"role": "system", "content": obj["system"]})
    else:
        raise ChatDataError(f"{where}: no 'messages' (nor 'prompt' and 'completion'); each line "
                            f"must be {{\"messages\": [{{\"role\": ..., \"content\": ...}}, ...]}}")
    try:
        check_messages(messages, where)
    except TokenizerError as error:
        raise ChatDataError(str(error)) from None
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def read_conversations(path, report=None):
    """[messages] of every line of a JSONL file that has an assistant turn; the others are
    counted in report.skipped_no_assistant."""
    report = report if report is not None else Report()
    conversations = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                report.lines += 1
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ChatDataError(f"{where}: not valid JSON ({error.msg} at column "
                                        f"{error.colno})") from None
                messages = conversation_of(obj, where)
                report.conversations += 1
                if not any(m["role"] == "assistant" for m in messages):
                    report.skipped_no_assistant += 1
                    continue
                conversations.append(messages)
    except UnicodeDecodeError as error:
        raise ChatDataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except FileNotFoundError:
        raise ChatDataError(f"{path}: no such file; give a JSONL file of conversations") from None
    return conversations, report


def tokenize(tokenizer, conversations, block_size, overflow="truncate", report=None, template=None):
    """[Example] of the conversations that fit (see the module docstring), and the report."""
    if overflow not in OVERFLOW:
        raise ChatDataError(f"overflow must be one of {', '.join(OVERFLOW)}, got {overflow!r}")
    report = report if report is not None else Report()
    examples = []
    for messages in conversations:
        ids, mask = encode_chat(tokenizer, messages, template=template)
        ids, mask = np.asarray(ids, np.int64), np.asarray(mask, bool)
        if len(ids) > block_size + 1:
            if overflow == "drop":
                report.dropped_too_long += 1
                continue
            ids, mask = ids[:block_size + 1], mask[:block_size + 1]
            report.truncated += 1
        if len(ids) < 2 or not mask[1:].any():
            report.dropped_no_target += 1
            continue
        examples.append(Example(ids, mask))
    report.examples += len(examples)
    return examples, report


def load_examples(path, tokenizer, block_size, overflow="truncate", template=None):
    conversations, report = read_conversations(path)
    return tokenize(tokenizer, conversations, block_size, overflow, report, template)
