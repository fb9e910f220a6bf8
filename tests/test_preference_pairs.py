"""finetune/preference.py make_pairs: a sampled reply ends at its first special token.

A small policy sometimes samples <|im_start|> (the id) in the middle of a reply, or spells
"<|im_start|>" with ordinary byte tokens. No turn's content may hold a special token's text
(tokenizer/chat.py refuses it, so `finetune reward` and `dpo` refused such a pair, and the
lifecycle had to drop those pairs after the fact). make_pairs must keep only the reply before
the first special token. The decoder is scripted (a fake Engine.generate_ids honouring the
stop ids as the real one does) so that each case happens for sure; the oracle is the chat
template itself: every pair made must encode (encode_pairs), none may hold special text.
"""
import pytest

from microgpt import GPT, GPTConfig
from microgpt.finetune import preference
from microgpt.inference import engine as engine_module
from microgpt.inference.engine import Completion
from microgpt.tokenizer import Tokenizer
from microgpt.tokenizer.chat import IM_END, IM_START, encode_chat, with_chat_tokens

PROMPT = "a=3, b=7, c=4, d=5. What is b?"        # the truth is 7


@pytest.fixture(scope="module")
def tokenizer():
    return with_chat_tokens(Tokenizer.bytes_level())[0]


def scripted_generate(scripts):
    """A stand-in for Engine.generate_ids: row k emits scripts[k % len(scripts)], cut after
    the first id in stop_ids (the real engine keeps the stop id in Completion.ids) or at
    max_new_tokens."""
    def generate_ids(self, prompts, max_new_tokens=128, sampling=None, seed=0, stop_ids=None,
                     on_token=None):
        stops = set(stop_ids or ())
        out = []
        for k in range(len(prompts)):
            c = Completion()
            for i in scripts[k % len(scripts)][:max_new_tokens]:
                c.ids.append(i)
                if i in stops:
                    c.finish_reason = "eot"
                    break
            c.finish_reason = c.finish_reason or "length"
            out.append(c)
        return out
    return generate_ids


def test_a_reply_ends_at_its_first_special_token(tokenizer, monkeypatch):
    specials = tokenizer.special_tokens
    start, end = specials[IM_START], specials[IM_END]
    text = lambda s: tokenizer.encode(s, disallowed_special=())     # noqa: E731  (ordinary bytes)
    scripts = [text("3") + [start] + text("user\nhi"),     # the special id mid-reply
               text("4") + text(IM_START) + text("x"),     # its text spelled with byte tokens
               [start] + text("9"),                        # nothing before it: no pair
               text("5") + [end]]                          # an ordinary wrong reply
    monkeypatch.setattr(engine_module.Engine, "generate_ids", scripted_generate(scripts))
    model = GPT(GPTConfig(family="llama", vocab_size=tokenizer.vocab_size, block_size=64,
                          n_layer=1, n_head=2, n_embd=16), seed=0)
    prompts = [([{"role": "user", "content": PROMPT}], "7")]
    rows = preference.make_pairs(model, tokenizer, prompts, samples=4, max_new_tokens=20,
                                 wrong_per_prompt=4)
    assert [(c, r) for _, c, r in rows] == [("7", "3"), ("7", "4"), ("7", "5")]
    for messages, _, rejected in rows:                # the template accepts every turn
        encode_chat(tokenizer, messages + [{"role": "assistant", "content": rejected}])
    pairs, report = preference.encode_pairs(tokenizer, rows, 64)
    assert report.pairs == len(pairs) == 3


def test_sampling_stops_at_every_special_id(tokenizer, monkeypatch):
    """The special ids are stop ids of the sampler, so no token is decoded past one."""
    seen = []
    real = scripted_generate([tokenizer.encode("5", disallowed_special=())])

    def spy(self, prompts, max_new_tokens=128, sampling=None, seed=0, stop_ids=None, on_token=None):
        seen.append(set(stop_ids))
        return real(self, prompts, max_new_tokens, sampling, seed, stop_ids, on_token)

    monkeypatch.setattr(engine_module.Engine, "generate_ids", spy)
    model = GPT(GPTConfig(family="llama", vocab_size=tokenizer.vocab_size, block_size=64,
                          n_layer=1, n_head=2, n_embd=16), seed=0)
    preference.make_pairs(model, tokenizer, [([{"role": "user", "content": PROMPT}], "7")],
                          samples=2, max_new_tokens=4)
    assert seen == [set(tokenizer.special_tokens.values())]
