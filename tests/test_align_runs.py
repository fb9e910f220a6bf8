"""Alignment runs (finetune/preference, reward, dpo, ppo, grpo, align_commands): the data and
its bad input, tiny deterministic runs of each algorithm pinning their first losses, and the
CLI end to end on a tiny model."""
import json
import math

import numpy as np
import pytest

from microgpt import GPT, GPTConfig
from microgpt.cli import main
from microgpt.finetune import preference, synth
from microgpt.finetune.align_commands import rule_reward_fn, save_policy
from microgpt.finetune.dpo import DPOOptions, cached_reference, train_dpo
from microgpt.finetune.grpo import GRPOOptions, train_grpo
from microgpt.finetune.ppo import PolicyWithValue, PPOOptions, train_ppo
from microgpt.finetune.reward import RewardModel, RewardOptions, load_reward_model, save_reward_model, \
    train_reward_model
from microgpt.finetune.rl_common import AlignmentError, check_same_tokenizer
from microgpt.tokenizer import Tokenizer
from microgpt.tokenizer.chat import with_chat_tokens

KV = [("a=1, b=2. What is b?", "2"), ("c=5, d=7, e=1. What is e?", "1"), ("x=3, y=9. What is x?", "3"),
      ("p=4, q=6. What is q?", "6")]


def quiet(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def tokenizer():
    return with_chat_tokens(Tokenizer.bytes_level())[0]


def tiny_gpt(tokenizer, seed=0, **overrides):
    config = dict(family="llama", vocab_size=tokenizer.vocab_size, block_size=64, n_layer=1, n_head=2,
                  n_embd=16)
    return GPT(GPTConfig(**{**config, **overrides}), seed=seed)


def user(text):
    return [{"role": "user", "content": text}]


def rows():
    return [(user(p), a, str((int(a) + 1) % 10)) for p, a in KV]


def write_jsonl(path, items):
    with open(path, "w") as f:
        for item in items:
            f.write((item if isinstance(item, str) else json.dumps(item)) + "\n")
    return str(path)


# --- data ------------------------------------------------------------------------------------

def test_pairs_read_both_shapes_and_bad_pairs_are_counted(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "a=1. What is a?", "chosen": "1", "rejected": "2"},
        {"prompt": user("b=3. What is b?"), "chosen": [{"role": "assistant", "content": "3"}],
         "rejected": [{"role": "assistant", "content": "4"}]},
        {"prompt": "same", "chosen": "x", "rejected": "x"},
        {"prompt": "empty", "chosen": "x", "rejected": "  "},
        {"prompt": "long " * 40, "chosen": "x", "rejected": "y"}])
    pairs, report = preference.load_pairs(path, tokenizer, 64)
    assert (report.pairs, report.skipped_identical, report.skipped_empty, report.skipped_too_long) == (2, 1, 1, 1)
    assert "1 chosen == rejected, skipped" in report.summary()
    p = pairs[0]
    assert tokenizer.decode(p.chosen) == "1<|im_end|>" and tokenizer.decode(p.rejected) == "2<|im_end|>"
    assert tokenizer.decode(p.prompt).endswith("<|im_start|>assistant\n")


def test_a_file_of_bad_pairs_is_an_error_naming_the_line(tmp_path, tokenizer):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}, "{oops"])
    with pytest.raises(preference.ChatDataError, match="bad.jsonl:2"):
        preference.read_pairs(bad)
    same = write_jsonl(tmp_path / "same.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "b"}])
    with pytest.raises(AlignmentError, match="no preference pair left.*1 chosen == rejected"):
        preference.load_pairs(same, tokenizer, 64)


@pytest.mark.parametrize("task", ["arithmetic", "kv", "reverse", "sort"])
def test_the_verifier_solves_every_synthetic_prompt(task):
    train, held = synth.generate(task, 200, 50, seed=3)
    assert all(preference.solve(p) == a for p, a in train + held)
    assert preference.rule_reward(user(train[0][0]), f" {train[0][1]} ") == 1.0
    assert preference.rule_reward(user(train[0][0]), train[0][1] + "0") == 0.0


def test_rule_reward_refuses_prompts_it_cannot_verify():
    with pytest.raises(AlignmentError, match="no verifier"):
        preference.rule_reward(user("tell me a joke"), "no")


def test_make_pairs_rejects_only_wrong_samples(tokenizer):
    model = tiny_gpt(tokenizer)
    prompts = [(user(p), a) for p, a in KV]
    made = preference.make_pairs(model, tokenizer, prompts, samples=3, max_new_tokens=3, seed=0)
    assert made and all(c == preference.solve(m[-1]["content"]) and r != c and r for m, c, r in made)


# --- tiny deterministic runs -------------------------------------------------------------------

def _pairs(tokenizer):
    return preference.encode_pairs(tokenizer, rows(), 64)[0]


def test_reward_model_run_is_deterministic_and_learns(tmp_path, tokenizer):
    def run():
        model = RewardModel(tiny_gpt(tokenizer), seed=0)
        pairs = _pairs(tokenizer)
        return model, train_reward_model(model, pairs * 4, pairs, RewardOptions(epochs=6, batch_size=4, lr=3e-3),
                                         log=quiet)
    model, first = run()
    _, second = run()
    assert first["train_loss"] == second["train_loss"]
    assert first["val_accuracy"] == 1.0 and first["train_loss"] < math.log(2)
    path = save_reward_model(str(tmp_path / "rm"), model, tokenizer, first["steps"])
    loaded, _ = load_reward_model(path)
    seqs_pairs = _pairs(tokenizer)
    from microgpt.finetune.reward import pair_sequences
    np.testing.assert_array_equal(loaded.score(pair_sequences(seqs_pairs)), model.score(pair_sequences(seqs_pairs)))


def test_reward_model_first_losses_pinned(tmp_path, tokenizer):
    model = RewardModel(tiny_gpt(tokenizer), seed=0)
    pairs = _pairs(tokenizer)
    train_reward_model(model, pairs, pairs, RewardOptions(epochs=2, batch_size=2, lr=1e-3), str(tmp_path), quiet)
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "metrics.jsonl") if '"loss"' in line]
    assert len(losses) == 4
    np.testing.assert_allclose(losses[:2], PINNED["reward"], rtol=1e-4)


def test_dpo_first_loss_is_log_2_and_the_run_is_pinned(tmp_path, tokenizer):
    policy, reference = tiny_gpt(tokenizer), tiny_gpt(tokenizer).eval()
    pairs = _pairs(tokenizer)
    summary = train_dpo(policy, reference, pairs, DPOOptions(beta=0.5, lr=3e-3, epochs=5, batch_size=2),
                        str(tmp_path), quiet)
    assert summary["losses"][0] == pytest.approx(math.log(2), abs=1e-6)   # policy == reference
    np.testing.assert_allclose(summary["losses"][:3], PINNED["dpo"], rtol=1e-4)
    assert summary["losses"][-1] < summary["losses"][0] and summary["last"]["accuracy"] == 1.0
    line = json.loads(open(tmp_path / "metrics.jsonl").readline())
    assert {"loss", "reward_chosen", "reward_rejected", "margin", "accuracy"} <= set(line)


def test_dpo_refuses_a_mismatched_reference_and_cache(tokenizer):
    pairs = _pairs(tokenizer)
    with pytest.raises(AlignmentError, match="does not match the policy's architecture.*n_embd"):
        train_dpo(tiny_gpt(tokenizer), tiny_gpt(tokenizer, n_embd=32), pairs, DPOOptions(), log=quiet)
    reference = tiny_gpt(tokenizer)
    cache = cached_reference(reference, pairs[:2])
    with pytest.raises(AlignmentError, match="reference cache holds 2 pairs, the data 4"):
        train_dpo(tiny_gpt(tokenizer), reference, pairs, DPOOptions(), log=quiet, reference_cache=cache)


def _prompts():
    return [user(p) for p, _ in KV]


def test_ppo_run_pinned_and_logged(tmp_path, tokenizer):
    policy = PolicyWithValue(tiny_gpt(tokenizer), seed=0)
    options = PPOOptions(iterations=2, prompts_per_iteration=4, epochs=2, minibatch=2, lr=1e-3,
                         max_new_tokens=4, kl_target=0.01)
    summary = train_ppo(policy, tiny_gpt(tokenizer).eval(), tokenizer, _prompts(),
                        lambda prompts, seqs, texts: [len(t) / 4 for t in texts], options, str(tmp_path), quiet)
    np.testing.assert_allclose(summary["losses"], PINNED["ppo"], rtol=1e-4)
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    keys = {"reward_mean", "reward_std", "kl", "kl_coef", "clip_fraction", "value_loss", "entropy",
            "policy_loss", "response_length", "loss"}
    assert len(lines) == 2 and keys <= set(lines[0])
    assert lines[0]["kl"] == pytest.approx(0.0, abs=1e-9)        # the first rollout is the reference's
    assert lines[0]["kl_coef"] < options.kl_coef                  # below target: the coefficient falls


def test_grpo_run_pinned(tmp_path, tokenizer):
    policy = tiny_gpt(tokenizer)
    options = GRPOOptions(iterations=2, prompts_per_iteration=2, group=4, lr=1e-3, max_new_tokens=3,
                          minibatch=4)
    summary = train_grpo(policy, tiny_gpt(tokenizer).eval(), tokenizer, _prompts(),
                         lambda prompts, seqs, texts: [float(len(t) % 2) for t in texts], options,
                         str(tmp_path), quiet)
    np.testing.assert_allclose(summary["losses"], PINNED["grpo"], rtol=1e-4, atol=1e-7)
    line = json.loads(open(tmp_path / "metrics.jsonl").readline())
    assert {"loss", "kl", "reward_mean", "flat_groups", "clip_fraction"} <= set(line)


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_a_nan_reward_stops_naming_the_step(tokenizer, algorithm):
    def verifier(prompts, seqs, texts):
        return [float("nan")] + [0.0] * (len(texts) - 1)
    policy = tiny_gpt(tokenizer)
    before = policy.state_dict()
    with pytest.raises(AlignmentError, match="step 1: reward of rollout 0 is nan"):
        if algorithm == "ppo":
            train_ppo(PolicyWithValue(policy), tiny_gpt(tokenizer), tokenizer, _prompts(), verifier,
                      PPOOptions(iterations=1, prompts_per_iteration=2, max_new_tokens=2), log=quiet)
        else:
            train_grpo(policy, tiny_gpt(tokenizer), tokenizer, _prompts(), verifier,
                       GRPOOptions(iterations=1, prompts_per_iteration=2, group=2, max_new_tokens=2), log=quiet)
    after = policy.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)    # nothing was trained


def test_prompt_longer_than_the_context_is_refused(tokenizer):
    with pytest.raises(AlignmentError, match="fills the context"):
        train_grpo(tiny_gpt(tokenizer), tiny_gpt(tokenizer), tokenizer, [user("x" * 80)], rule_reward_fn,
                   GRPOOptions(iterations=1, prompts_per_iteration=1, group=2), log=quiet)


def test_a_reward_model_with_another_tokenizer_is_refused(tokenizer):
    with pytest.raises(AlignmentError, match="tokenizer differs"):
        check_same_tokenizer(tokenizer, Tokenizer.train(["a=3, b=7. What is b? " * 20], 267))
    check_same_tokenizer(tokenizer, Tokenizer.bytes_level())          # the same one passes


# --- the CLI end to end ----------------------------------------------------------------------------

def test_cli_pairs_reward_dpo_ppo_grpo_eval(tmp_path, tokenizer, capsys):
    save_policy(str(tmp_path / "sft"), tiny_gpt(tokenizer), tokenizer, {}, 0)
    data = write_jsonl(tmp_path / "kv.jsonl", [synth.to_messages(p, a) for p, a in KV])
    sft, pairs = str(tmp_path / "sft"), str(tmp_path / "pairs.jsonl")
    assert main(["finetune", "pairs", "--init-from", sft, "--data", data, "--out", pairs, "--samples", "2",
                 "--max-new-tokens", "3"]) == 0
    assert main(["finetune", "reward", "--init-from", sft, "--data", pairs, "--out-dir", str(tmp_path / "rm"),
                 "--val-share", "0.25", "--lr", "1e-3"]) == 0
    assert main(["finetune", "dpo", "--init-from", sft, "--data", pairs, "--out-dir", str(tmp_path / "dpo"),
                 "--lr", "1e-3", "--batch-size", "2"]) == 0
    assert main(["finetune", "ppo", "--init-from", sft, "--data", data, "--out-dir", str(tmp_path / "ppo"),
                 "--reward-model", str(tmp_path / "rm"), "--iterations", "2", "--prompts", "2",
                 "--max-new-tokens", "3"]) == 0
    assert main(["finetune", "grpo", "--init-from", sft, "--data", data, "--out-dir", str(tmp_path / "grpo"),
                 "--iterations", "2", "--prompts", "2", "--group", "2", "--max-new-tokens", "3"]) == 0
    for run in ("rm", "dpo", "ppo", "grpo"):
        assert (tmp_path / run / "metrics.jsonl").read_text().count("\n") >= 2
    assert main(["finetune", "eval", str(tmp_path / "grpo"), "--data", data, "--max-new-tokens", "3"]) == 0
    assert main(["plot", str(tmp_path / "ppo")]) == 0
    out = capsys.readouterr().out
    assert "held-out pair accuracy" in out and "exact match" in out


def test_cli_errors_are_one_line_exit_2(tmp_path, tokenizer, capsys):
    save_policy(str(tmp_path / "sft"), tiny_gpt(tokenizer), tokenizer, {}, 0)
    save_policy(str(tmp_path / "wide"), tiny_gpt(tokenizer, n_embd=32), tokenizer, {}, 0)
    data = write_jsonl(tmp_path / "kv.jsonl", [synth.to_messages(p, a) for p, a in KV])
    code = main(["finetune", "grpo", "--init-from", str(tmp_path / "sft"), "--reference", str(tmp_path / "wide"),
                 "--data", data, "--out-dir", str(tmp_path / "g")])
    assert code == 2 and "does not match the policy's architecture" in capsys.readouterr().err
    code = main(["finetune", "ppo", "--init-from", str(tmp_path / "sft"), "--data", data,
                 "--out-dir", str(tmp_path / "p")])
    assert code == 2 and "--reward-model" in capsys.readouterr().err
    code = main(["finetune", "ppo", "--init-from", str(tmp_path / "sft"), "--data", data,
                 "--out-dir", str(tmp_path / "p2"), "--reward-model", str(tmp_path / "sft")])
    assert code == 2 and "not a reward model" in capsys.readouterr().err


# The first losses of the tiny runs above, float32 on the C backend (seeded: data order,
# initialization, sampling). DPO's first is log 2 exactly (the policy is the reference).
PINNED = {"reward": [0.690760, 0.695544], "dpo": [0.693147, 0.708934, 0.622036],
          "ppo": [0.012455, -0.083205], "grpo": [0.0, 0.144304]}
