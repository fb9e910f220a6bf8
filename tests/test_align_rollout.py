"""Rollouts (finetune/ppo.py rollout, finetune/preference.py make_pairs) decode with
Engine(batch_invariant=False): the paged decoder with every float layer through the packed
GEMM (paged.py batch_invariant=False). Its tokens must be those of GPT.forward with its KV cache
(Engine fast=False, the independent path), for prompts of different lengths, greedy and sampled,
both families."""
import numpy as np
import pytest

from microgpt import GPT, GPTConfig
from microgpt.inference.engine import Engine
from microgpt.inference.sampling import SamplingConfig


def model_of(family):
    config = GPTConfig(family=family, vocab_size=97, block_size=48, n_layer=2, n_head=4, n_embd=32)
    return GPT(config, seed=3).eval()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("sampling", [SamplingConfig(temperature=0), SamplingConfig(temperature=1.0, top_k=20)])
def test_dense_rollout_equals_gpt_forward(family, sampling):
    model = model_of(family)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 97, size=n).tolist() for n in (3, 7, 5, 9, 4, 6)]
    dense = Engine(model, batch_invariant=False).generate_ids(prompts, 12, sampling, seed=5, stop_ids=(11,))
    slow = Engine(model, fast=False).generate_ids(prompts, 12, sampling, seed=5, stop_ids=(11,))
    assert [(o.ids, o.finish_reason) for o in dense] == [(o.ids, o.finish_reason) for o in slow]
    paged = Engine(model).generate_ids(prompts, 12, sampling, seed=5, stop_ids=(11,))
    assert [o.ids for o in dense] == [o.ids for o in paged]


def test_rollouts_use_the_dense_decoder(monkeypatch):
    """ppo.rollout (PPO and GRPO roll out through it) and make_pairs ask for batch_invariant=False."""
    from microgpt.finetune import ppo, preference
    from microgpt.tokenizer import Tokenizer
    from microgpt.tokenizer.chat import with_chat_tokens
    seen = []
    init = Engine.__init__

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("batch_invariant", True))
        init(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "__init__", spy)
    tok = with_chat_tokens(Tokenizer.bytes_level())[0]
    model = GPT(GPTConfig(family="llama", vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2,
                          n_embd=16), seed=0)
    prompts = [([{"role": "user", "content": "a=1, b=2. What is b?"}], "2")]
    preference.make_pairs(model, tok, prompts, samples=2, max_new_tokens=3)
    ppo.rollout(model, model, tok, [p for p, _ in prompts], lambda p, s, t: np.zeros(len(t)), 3, 0, 0)
    assert seen == [False, False]


def test_perturb_changes_one_character_of_its_kind():
    from microgpt.finetune.preference import perturb
    rng = np.random.default_rng(0)
    for answer in ["7", "42", "-13", "tzqk", "1 2 5 9", '{"name": "bob"}']:
        for _ in range(50):
            miss = perturb(answer, rng)
            assert miss != answer and len(miss) == len(answer)
            changed = [(a, b) for a, b in zip(answer, miss) if a != b]
            assert len(changed) == 1 and changed[0][0].isdigit() == changed[0][1].isdigit()
    assert perturb("", rng) == "0" and perturb("--", rng) == "--0"


def test_make_pairs_adds_distinct_wrong_samples_and_near_misses():
    from microgpt.finetune import preference
    from microgpt.tokenizer import Tokenizer
    from microgpt.tokenizer.chat import with_chat_tokens
    tok = with_chat_tokens(Tokenizer.bytes_level())[0]
    model = GPT(GPTConfig(family="llama", vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2,
                          n_embd=16), seed=0)
    prompts = [([{"role": "user", "content": f"a={a}, b={b}. What is b?"}], str(b)) for a, b in [(1, 2), (3, 4)]]
    one = preference.make_pairs(model, tok, prompts, samples=4, max_new_tokens=3)
    many = preference.make_pairs(model, tok, prompts, samples=4, max_new_tokens=3, wrong_per_prompt=4, perturbed=3)
    for messages, answer in prompts:
        mine = [r for m, c, r in many if m is messages]
        assert len(mine) == len(set(mine)) and answer not in mine
        assert sum(len(r) == 1 and r.isdigit() for r in mine) >= 3       # the near misses: other digits
        assert all(c == answer for m, c, r in many if m is messages)
    assert len(one) <= len(prompts) and len(many) >= len(one) + 6


@pytest.mark.parametrize("ent_coef", [0.0, 0.01])
def test_ppo_logs_the_entropy_also_when_it_is_not_in_the_loss(tmp_path, ent_coef):
    """Regression: with ent_coef 0 (the default) metrics.jsonl's entropy was NaN. It must be the
    mean response-token entropy, between 0 and log V, whether or not the loss uses it."""
    import json
    import math
    from microgpt.finetune.ppo import PolicyWithValue, PPOOptions, train_ppo
    from microgpt.tokenizer import Tokenizer
    from microgpt.tokenizer.chat import with_chat_tokens
    tok = with_chat_tokens(Tokenizer.bytes_level())[0]

    def gpt():
        return GPT(GPTConfig(family="llama", vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2,
                             n_embd=16), seed=0)

    prompts = [[{"role": "user", "content": f"a={k}, b=2. What is a?"}] for k in range(4)]
    options = PPOOptions(iterations=1, prompts_per_iteration=4, epochs=1, minibatch=2, lr=1e-3,
                         max_new_tokens=3, ent_coef=ent_coef)
    train_ppo(PolicyWithValue(gpt(), seed=0), gpt().eval(), tok, prompts,
              lambda p, s, t: [0.5] * len(t), options, str(tmp_path), lambda *a, **k: None)
    line = json.loads(open(tmp_path / "metrics.jsonl").readline())
    assert 0.0 < line["entropy"] <= math.log(tok.vocab_size) + 1e-6


def test_distractors_are_the_prompts_items_of_the_answers_kind():
    from microgpt.finetune.preference import distractors
    assert distractors("7", "a=3, b=7, c=1, d=3. What is b?") == ["3", "1"]
    assert distractors("85", "What is 37 + 48?") == ["37", "48"]
    assert distractors("-11", "What is 37 - 48?") == ["37", "48"]
    assert "kqzt" in distractors("tzqk", "Reverse the string: kqzt")


def test_near_misses_take_the_distractors_first():
    from microgpt.finetune import preference
    from microgpt.tokenizer import Tokenizer
    from microgpt.tokenizer.chat import with_chat_tokens
    tok = with_chat_tokens(Tokenizer.bytes_level())[0]
    model = GPT(GPTConfig(family="llama", vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2,
                          n_embd=16), seed=0)
    prompts = [([{"role": "user", "content": "a=1, b=2, c=5. What is b?"}], "2")]
    made = preference.make_pairs(model, tok, prompts, samples=1, max_new_tokens=2, wrong_per_prompt=0,
                                 perturbed=3)
    rejected = [r for _, _, r in made]
    assert sorted(rejected[:2]) == ["1", "5"] and len(rejected) == 3 and "2" not in rejected
