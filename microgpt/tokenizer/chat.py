"""Chat templates: a conversation -> text -> token ids, with a mask of the assistant's tokens.

A conversation is a list of messages {"role": "system"|"user"|"assistant", "content": str}.
The model never sees roles; it sees one text in a template, ChatML by default:

    <|im_start|>system\\nYou are terse.<|im_end|>\\n
    <|im_start|>user\\n2+3=<|im_end|>\\n
    <|im_start|>assistant\\n5<|im_end|>\\n
    <|im_start|>assistant\\n                         <- add_generation_prompt=True ends here

<|im_start|> and <|im_end|> are special tokens (one id each, never produced by ordinary
text), so a turn boundary cannot be forged by a message's content: content that contains a
special token's text is refused. The model learns to end its answer with <|im_end|>
(stop_token_id), which is where generation stops.

The assistant mask (what supervised fine-tuning trains on) covers each assistant turn's
content and its closing <|im_end|>, not the "<|im_start|>assistant\\n" header (the prompt
gives it) nor the "\\n" after <|im_end|> (generation has stopped before it).

Which template. A tokenizer read from Hugging Face carries its own chat_template (a Jinja
program, tokenizer_config.json or chat_template.jinja); that one renders, so a fine-tuned
Qwen or Llama sees exactly the text transformers' apply_chat_template would give it. Those
templates are real programs (loops, namespaces, raise_exception), so they run in jinja2's
sandbox, imported only then: jinja2 is not a dependency of microgpt, it comes with
transformers, and anyone holding a Hugging Face chat template has transformers' world
installed. Without a template, render_chat writes ChatML itself, in plain Python, and
CHATML_TEMPLATE is the same thing as Jinja (saved with our tokenizers so transformers
renders what we do: a test runs both).

How the mask is found for any template: render the conversation up to each assistant turn
with the generation prompt, and up to the end of that turn; the text between is the turn.
That needs each shorter rendering to be a prefix of the longer ones (true of ChatML, Llama
3 and Qwen2's templates); a template that rewrites earlier turns is refused by name. The
text is then encoded once, whole (as transformers does), and a token belongs to the
assistant when its first byte lies in an assistant span.

A tokenizer without <|im_start|>/<|im_end|> (GPT-2's) gets them added
(with_chat_tokens); the model's embedding and LM head then need new rows
(microgpt.finetune.vocab.resize_vocabulary).
"""
from ..errors import TokenizerError

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CHAT_SPECIALS = (IM_START, IM_END)
ROLES = ("system", "user", "assistant")

# ChatML as Jinja: what render_chat writes, for tokenizers saved to Hugging Face.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def check_messages(messages, where="conversation"):
    """Raise TokenizerError unless messages is a list of {"role", "content"} with a known
    role and str content. `where` names the conversation in the message (file:line)."""
    if not isinstance(messages, (list, tuple)):
        raise TokenizerError(f"{where}: messages must be a list of {{role, content}} objects, "
                             f"got {type(messages).__name__}")
    for k, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise TokenizerError(f"{where}: message {k} must be an object with 'role' and "
                                 f"'content', got {message!r:.80}")
        if message["role"] not in ROLES:
            raise TokenizerError(f"{where}: message {k} has unknown role {message['role']!r}; "
                                 f"roles are {', '.join(ROLES)}")
        if not isinstance(message["content"], str):
            raise TokenizerError(f"{where}: message {k} content must be a string, got "
                                 f"{type(message['content']).__name__}")


def render_chatml(messages, add_generation_prompt=True):
    """ChatML in plain Python (CHATML_TEMPLATE's meaning)."""
    text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")


def _jinja_renderer(template):
    """A function (messages, add_generation_prompt) -> str running a Hugging Face template in
    jinja2's sandbox with the globals transformers gives it."""
    try:
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise TokenizerError("this tokenizer's chat_template is a Jinja program and jinja2 is "
                             "not installed; pip install jinja2 (it comes with transformers)"
                             ) from None

    def raise_exception(message):
        raise TokenizerError(f"the chat template refused the conversation: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    try:
        compiled = env.from_string(template)
    except TemplateError as error:
        raise TokenizerError(f"the tokenizer's chat_template is not valid Jinja: {error}") from None

    def render(messages, add_generation_prompt, **variables):
        try:
            return compiled.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                   **variables)
        except TemplateError as error:
            raise TokenizerError(f"the chat template failed on this conversation: {error}") from None
    return render


def _renderer(tokenizer=None, template=None):
    template = template if template is not None else getattr(tokenizer, "chat_template", None)
    if template is None or template == CHATML_TEMPLATE:
        return render_chatml, {}
    variables = {}
    for name in ("bos_token", "eos_token"):       # templates write {{ bos_token }}
        variables[name] = getattr(tokenizer, name, None) or ""
    return _jinja_renderer(template), variables


def render_chat(messages, add_generation_prompt=True, tokenizer=None, template=None):
    """The conversation as the model's text: `template` (Jinja), else the tokenizer's
    chat_template, else ChatML. add_generation_prompt ends it with the assistant's header."""
    check_messages(messages)
    render, variables = _renderer(tokenizer, template)
    return render(messages, add_generation_prompt, **variables)


def stop_token_id(tokenizer):
    """The id that ends an assistant turn: <|im_end|>, else the end-of-text token."""
    specials = tokenizer.special_tokens
    if IM_END in specials:
        return specials[IM_END]
    if tokenizer.eot_id is None:
        raise TokenizerError("this tokenizer has neither <|im_end|> nor an end-of-text token "
                             "to stop a chat turn on; add them with with_chat_tokens")
    return tokenizer.eot_id


def stop_token_ids(tokenizer):
    """Every id that ends a reply: <|im_end|> and the end-of-text token, those that exist."""
    ids = {stop_token_id(tokenizer)}
    if tokenizer.eot_id is not None:
        ids.add(tokenizer.eot_id)
    return sorted(ids)


def assistant_spans(messages, add_generation_prompt=False, tokenizer=None, template=None):
    """(text, [(start, end) character spans of each assistant turn's content + stop text])."""
    check_messages(messages)
    render, variables = _renderer(tokenizer, template)
    text = render(messages, add_generation_prompt, **variables)
    stop = IM_END if tokenizer is None or IM_END in tokenizer.special_tokens else \
        (tokenizer.eos_token or "")
    spans = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(messages[:k], True, **variables)
        through = render(messages[:k + 1], False, **variables)
        if not (through.startswith(before) and text.startswith(through)):
            raise TokenizerError(f"the chat template renders earlier turns differently once later "
                                 f"ones follow (turn {k}), so the assistant's tokens cannot be "
                                 f"located; train with the ChatML template (template=CHATML_TEMPLATE)")
        start, end = len(before), len(through)
        cut = through.rfind(stop, start, end) if stop else -1
        if cut >= 0:                                   # up to the stop text, not the "\n" after
            end = cut + len(stop)
        spans.append((start, end))
    return text, spans


def encode_chat(tokenizer, messages, add_generation_prompt=False, template=None):
    """(ids, assistant_mask): the rendered conversation's token ids and, per id, True where it
    is the assistant's (the tokens supervised fine-tuning trains on). Specials in the template
    become their ids; a message whose content holds a special token's text is refused."""
    check_messages(messages)
    specials = tokenizer.special_tokens
    for k, message in enumerate(messages):
        forged = [s for s in specials if s in message["content"]]
        if forged:
            raise TokenizerError(f"message {k} ({message['role']}) contains the special token "
                                 f"{forged[0]!r} as text; remove it (it would end or open a turn)")
    text, spans = assistant_spans(messages, add_generation_prompt, tokenizer, template)
    missing = [s for s in CHAT_SPECIALS if s in text and s not in specials]
    if missing:
        raise TokenizerError(f"the chat template writes {missing[0]!r} but the tokenizer has no "
                             f"such special token; add them with with_chat_tokens (and grow the "
                             f"model's vocabulary: microgpt.finetune.vocab.resize_vocabulary)")
    ids = tokenizer.encode(text, allowed_special="all")
    mask = [False] * len(ids)
    offset, span = 0, 0                        # character offsets -> byte offsets of the spans
    byte_spans = [(len(text[:a].encode("utf-8")), len(text[:b].encode("utf-8"))) for a, b in spans]
    for position, token in enumerate(ids):
        while span < len(byte_spans) and byte_spans[span][1] <= offset:
            span += 1
        if span < len(byte_spans) and byte_spans[span][0] <= offset < byte_spans[span][1]:
            mask[position] = True
        offset += len(tokenizer.token_bytes(token))
    return ids, mask


def with_chat_tokens(tokenizer):
    """(tokenizer, added): the tokenizer itself when it has <|im_start|> and <|im_end|>, else a
    copy with the missing ones as new special ids after the last (vocab_size, vocab_size+1).
    Encoding of everything else is unchanged; metadata (chat_template, eos ...) is kept."""
    specials = tokenizer.special_tokens
    added = [s for s in CHAT_SPECIALS if s not in specials]
    if not added:
        return tokenizer, []
    for k, text in enumerate(added):
        specials[text] = tokenizer.vocab_size + k
    ids = tokenizer.ordinary_ids
    tokens = [tokenizer.token_bytes(i) for i in ids]
    merges = tokenizer.merges
    table = None
    if merges is not None:                     # _setup takes merges as positions in `tokens`
        position = {i: k for k, i in enumerate(ids)}
        by_bytes = {tok: k for k, tok in enumerate(tokens)}
        table = [(position[a], position[b], by_bytes[tokens[position[a]] + tokens[position[b]]])
                 for a, b in merges]
    copy = type(tokenizer).__new__(type(tokenizer))
    copy._setup(ids, tokens, tokenizer.pattern_name or tokenizer.pattern, specials, table, tokenizer.ignore_merges,
                tokenizer.normalizer)
    for name in tokenizer.METADATA:
        setattr(copy, name, getattr(tokenizer, name))
    return copy, added
