"""Supervised fine-tuning (finetune/sft.py, data.py, packing.py, vocab.py): the loss mask, bad
input, resume bit for bit, full and LoRA runs from a run of ours and from a Hugging Face
directory."""
import json

import numpy as np
import pytest

from microgpt import GPT, GPTConfig
from microgpt.finetune import data as chat_data
from microgpt.finetune import packing
from microgpt.finetune.sft import SFTOptions, finetune, load_chat_model, resume_sft
from microgpt.finetune.vocab import resize_vocabulary
from microgpt.tokenizer import Tokenizer
from microgpt.tokenizer.chat import encode_chat
from microgpt.train.config import make_config

PAIRS = [("What is 2 + 3?", "5"), ("Reverse the string: abc", "cba"), ("hi", "hello there"),
         ("Sort these numbers: 3 1 2", "1 2 3"), ("a=1, b=2. What is b?", "2")]


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return str(path)


def chat_file(tmp_path, copies=8):
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": p},
                          {"role": "assistant", "content": a}]} for p, a in PAIRS] * copies
    rows.append({"prompt": "Say yes", "completion": "yes"})
    return write_jsonl(tmp_path / "chat.jsonl", rows)


def numpy_masked_loss(logits, targets):
    """The oracle: mean over counted targets of -log softmax(logits)[target]."""
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    keep = targets != chat_data.IGNORE
    return -logp[keep, targets[keep]].mean()


def test_loss_counts_assistant_tokens_only():
    tok = Tokenizer.bytes_level()
    model = GPT(GPTConfig(family="llama", vocab_size=tok.vocab_size, block_size=128, n_layer=1,
                          n_head=2, n_embd=16), seed=0)
    messages = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"},
                {"role": "user", "content": "and 4?"}, {"role": "assistant", "content": "9"}]
    ids, mask = encode_chat(tok, messages)
    example = chat_data.Example(np.array(ids), np.array(mask))
    batch = packing.padded_batch([example])
    logits, loss = model(batch.x, batch.y, ignore_index=chat_data.IGNORE)
    assert abs(loss.item() - numpy_masked_loss(logits.numpy(), batch.y)) < 1e-5
    loss.backward()
    grads = [p.backend.to_numpy(p.grad).copy() for p in model.parameters()]
    # change every non-assistant target id: nothing changes, not the loss, not a gradient
    changed = np.array(ids)
    rng = np.random.default_rng(0)
    for t in range(1, len(ids)):
        if not mask[t]:
            changed[t] = rng.integers(0, 256)
    other = packing.padded_batch([chat_data.Example(changed, np.array(mask))])
    assert np.array_equal(other.y, batch.y)
    model.zero_grad()
    _, loss2 = model(batch.x, other.y, ignore_index=chat_data.IGNORE)
    loss2.backward()
    assert loss2.item() == loss.item()
    for g, p in zip(grads, model.parameters()):
        assert np.array_equal(g, p.backend.to_numpy(p.grad))


@pytest.mark.parametrize("line, match", [
    ("not json", r"bad.jsonl:2: not valid JSON"),
    ('{"text": "hi"}', r"bad.jsonl:2: no 'messages'"),
    ('{"messages": [{"role": "robot", "content": "x"}]}', r"bad.jsonl:2: message 0 has unknown role"),
    ('[1, 2]', r"bad.jsonl:2: expected a JSON object"),
    ('{"prompt": 3, "completion": "x"}', r"bad.jsonl:2: 'prompt' and 'completion' must be strings"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, match):
    good = json.dumps({"prompt": "a", "completion": "b"})
    path = write_jsonl(tmp_path / "bad.jsonl", [good, line])
    with pytest.raises(chat_data.ChatDataError, match=match):
        chat_data.read_conversations(path)


def test_skipped_truncated_dropped_are_counted(tmp_path):
    tok = Tokenizer.bytes_level()
    rows = [{"messages": [{"role": "user", "content": "no answer here"}]},
            {"prompt": "short", "completion": "ok"},
            {"prompt": "x" * 200, "completion": "late answer"},            # answer past the context
            {"prompt": "y", "completion": "z" * 200}]                       # answer truncated
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    conversations, report = chat_data.read_conversations(path)
    assert report.skipped_no_assistant == 1 and len(conversations) == 3
    examples, report = chat_data.tokenize(tok, conversations, 64, "truncate", report)
    assert (report.truncated, report.dropped_no_target, report.examples) == (2, 1, 2)
    assert all(len(e.ids) <= 65 for e in examples)
    _, dropped = chat_data.tokenize(tok, conversations, 64, "drop")
    assert (dropped.dropped_too_long, dropped.examples) == (2, 1)
    assert "1 no assistant turn" in report.summary()


def test_packer_lays_conversations_apart():
    examples = [chat_data.Example(np.arange(n) + 10 * n, np.arange(n) % 2 == 1) for n in (5, 3, 7, 2)]
    rows = packing.pack_rows([len(e) for e in examples], 10)
    assert rows == [[0, 1, 3], [2]]
    batch = packing.packed_batch(examples, rows, 10)
    assert batch.tokens == sum(len(e) for e in examples)
    for r, members in enumerate(rows):
        at = 0
        for s, k in enumerate(members, 1):
            e, n = examples[k], len(examples[k])
            assert np.array_equal(batch.x[r, at:at + n], e.inputs)
            assert np.array_equal(batch.y[r, at:at + n], e.targets)
            assert np.all(batch.segment_ids[r, at:at + n] == s)
            assert np.array_equal(batch.position_ids[r, at:at + n], np.arange(n))
            at += n
        assert np.all(batch.segment_ids[r, at:] == 0) and np.all(batch.y[r, at:] == chat_data.IGNORE)


def test_resized_vocabulary_rows_are_the_mean():
    for family, tied in (("gpt2", True), ("llama", False)):
        model = GPT(GPTConfig(family=family, vocab_size=20, block_size=8, n_layer=1, n_head=2,
                              n_embd=8, tie_embeddings=tied))
        old = {k: v for k, v in model.state_dict().items()}
        resize_vocabulary(model, 23)
        table = model.transformer.wte.weight if family == "gpt2" else model.model.embed_tokens.weight
        assert table.shape == (23, 8) and model.config.vocab_size == 23
        assert (model.lm_head.weight is table) == tied
        emb = old["transformer.wte.weight" if family == "gpt2" else "model.embed_tokens.weight"]
        assert np.allclose(table.numpy()[20:], emb.mean(0), atol=1e-7)
        assert np.array_equal(table.numpy()[:20], emb)
        logits, _ = model(np.array([[0, 21, 22]]))
        assert logits.shape == (1, 3, 23)


def sft_config(tmp_path, base, out, **overrides):
    values = dict(init_from=base, data=chat_file(tmp_path), out_dir=str(tmp_path / out),
                  block_size=64, batch_size=4, max_steps=6, warmup_steps=1, lr=3e-3, min_lr=3e-4,
                  eval_interval=3, eval_batches=1, checkpoint_interval=3, log_interval=1,
                  num_samples=1, sample_tokens=4, progress=False, val_fraction=0.1, dropout=0.1)
    values.update(overrides)
    return make_config("demo", None, values)


def losses_of(run_dir):
    with open(f"{run_dir}/metrics.jsonl") as f:
        return [(r["step"], r["loss"]) for r in map(json.loads, f) if "loss" in r]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    from model_dirs import our_run
    return our_run(tmp_path_factory.mktemp("base") / "b", family="llama", max_steps=2,
                   block_size=64)


@pytest.mark.parametrize("options", [SFTOptions(), SFTOptions(lora_rank=4, lora_targets="q,v,down",
                                                              lora_dropout=0.1)],
                         ids=["full", "lora"])
def test_resume_is_bit_exact(tmp_path, base_run, options):
    assert_resumes_bit_exact(tmp_path, base_run, options)


def assert_resumes_bit_exact(tmp_path, base, options, **overrides):
    """A 6-step run straight, and stopped at 3 then resumed: same losses, same final model.
    Returns the straight run's summary."""
    quiet = lambda *a: None                                  # noqa: E731
    straight = finetune(sft_config(tmp_path, base, "straight", **overrides), options, log=quiet)
    assert straight["finished"]
    finetune(sft_config(tmp_path, base, "split", **overrides), options, log=quiet, stop_at_step=3)
    resumed = resume_sft(str(tmp_path / "split"), log=quiet)
    assert resumed["steps"] == 6
    assert losses_of(tmp_path / "split") == losses_of(tmp_path / "straight")
    a, _, _ = load_chat_model(straight["checkpoint"])
    b, _, _ = load_chat_model(resumed["checkpoint"])
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert np.array_equal(x, y), name
    return straight


def test_lora_run_writes_a_peft_adapter_and_trains_only_it(tmp_path, base_run):
    from microgpt.finetune import peft_io
    from microgpt.train.checkpoint import load_model
    summary = finetune(sft_config(tmp_path, base_run, "lora"), SFTOptions(lora_rank=4),
                       log=lambda *a: None)
    assert peft_io.is_adapter_dir(summary["checkpoint"])
    base, tok, _ = load_model(base_run)
    saved, tok2, _ = load_model(summary["checkpoint"])
    assert "<|im_end|>" in tok2.special_tokens and "<|im_end|>" not in tok.special_tokens
    for name, array in base.state_dict().items():        # the base's rows are untouched
        assert np.array_equal(saved.state_dict()[name][:array.shape[0]], array), name
    merged, _, _ = load_chat_model(summary["checkpoint"])
    ids = np.arange(12)[None]
    assert not np.allclose(merged(ids)[0].numpy(), saved(ids)[0].numpy())


def test_finetune_from_a_hugging_face_directory(tmp_path):
    from model_dirs import hf_directory
    hf = hf_directory(tmp_path / "hf", "qwen3", head_dim=16)
    summary = finetune(sft_config(tmp_path, str(hf), "from_hf", block_size=48, max_steps=2),
                       SFTOptions(lora_rank=2, lora_targets="q,k,v,o,gate,up,down", qlora=True),
                       log=lambda *a: None)
    assert summary["finished"] and np.isfinite(summary["val_loss"])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("adapters", [False, True], ids=["full", "lora+rows"])
def test_packed_batch_equals_the_conversations_one_by_one(family, adapters):
    """A packed SFT batch (document-masked attention, positions restarting per conversation)
    gives the loss and every gradient that the conversations give one at a time: the packed
    mean over all assistant tokens is sum_i n_i loss_i / sum_i n_i, and so for gradients."""
    from microgpt.finetune import lora, tokens
    tok = Tokenizer.bytes_level()
    extra = dict(n_kv_head=1) if family == "llama" else {}
    model = GPT(GPTConfig(family=family, vocab_size=tok.vocab_size, block_size=96, n_layer=2,
                          n_head=2, n_embd=16, tie_embeddings=False, **extra), seed=3)
    if adapters:
        lora.apply_lora(model, lora.target_modules(model.config, "q,v,down"), rank=2, alpha=4.0)
        tokens.train_token_rows(model, [tok.special_tokens["<|im_start|>"],
                                        tok.special_tokens["<|im_end|>"]])
        for _, p in lora.trainable_parameters(model):
            p.data = (p.numpy() + np.random.default_rng(4).normal(0, 0.1, p.shape)).astype(np.float32)
    params = dict(lora.trainable_parameters(model))
    examples = []
    for k, (p, a) in enumerate(PAIRS[:4]):
        ids, mask = encode_chat(tok, [{"role": "user", "content": p[:6 + 3 * k]},
                                      {"role": "assistant", "content": a}])
        examples.append(chat_data.Example(np.array(ids), np.array(mask)))
    rows = packing.pack_rows([len(e) for e in examples], 96)
    assert any(len(r) > 1 for r in rows)              # some row really holds several
    batch = packing.packed_batch(examples, rows, 96)
    assert (batch.segment_ids == 0).any()             # and some padding
    model.zero_grad()
    _, loss = model(batch.x, batch.y, ignore_index=chat_data.IGNORE,
                    segment_ids=batch.segment_ids, position_ids=batch.position_ids)
    loss.backward()
    packed = {n: p.backend.to_numpy(p.grad).copy() for n, p in params.items()}
    total = sum(int(e.mask[1:].sum()) for e in examples)
    alone_loss, alone = 0.0, {n: np.zeros(p.shape, np.float64) for n, p in params.items()}
    for e in examples:
        one = packing.padded_batch([e])
        count = int((one.y != chat_data.IGNORE).sum())
        model.zero_grad()
        _, li = model(one.x, one.y, ignore_index=chat_data.IGNORE)
        li.backward()
        alone_loss += li.item() * count / total
        for n, p in params.items():
            alone[n] += p.backend.to_numpy(p.grad) * count / total
    assert abs(loss.item() - alone_loss) < 1e-5 * abs(alone_loss)
    for n in params:
        scale = max(np.abs(alone[n]).max(), 1e-8)
        assert np.abs(packed[n] - alone[n]).max() < 2e-5 * scale, n


def test_packing_runs_and_resumes_bit_exact(tmp_path, base_run):
    quiet = lambda *a: None                                  # noqa: E731
    options = SFTOptions(packing=True, lora_rank=2)
    straight = finetune(sft_config(tmp_path, base_run, "straight", max_steps=4, eval_interval=2,
                                   checkpoint_interval=2), options, log=quiet)
    assert straight["finished"] and np.isfinite(straight["val_loss"])
    finetune(sft_config(tmp_path, base_run, "split", max_steps=4, eval_interval=2,
                        checkpoint_interval=2), options, log=quiet, stop_at_step=2)
    resume_sft(str(tmp_path / "split"), log=quiet)
    assert losses_of(tmp_path / "split") == losses_of(tmp_path / "straight")


def test_exact_match_is_the_eval_harness_judgement(base_run):
    """finetune/evaluate.py scores as microgpt/eval's exact metric does, row by row."""
    from microgpt.eval.metrics import exact_or_contains
    from microgpt.finetune.evaluate import exact_match
    model, tok, _ = load_chat_model(base_run)
    conversations = [[{"role": "user", "content": p}, {"role": "assistant", "content": a}]
                     for p, a in PAIRS]
    conversations.append([{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}])
    accuracy, rows = exact_match(model, tok, conversations, max_new_tokens=3)
    judged = [exact_or_contains(got, [expected]) for _, expected, got in rows]
    assert accuracy == sum(judged) / len(rows)
    assert [float(e.strip() == g.strip()) for _, e, g in rows] == judged


def test_eval_scores_the_adapted_model_of_a_lora_run(tmp_path, base_run):
    """`microgpt eval` on a LoRA run: the adapter applied (load_finetuned), not its frozen base."""
    from microgpt.cli import main
    from microgpt.eval.perplexity import perplexity
    from microgpt.finetune.sft import load_finetuned
    from microgpt.train.checkpoint import load_model
    summary = finetune(sft_config(tmp_path, base_run, "lora", lr=3e-2), SFTOptions(lora_rank=4),
                       log=lambda *a: None)
    text = tmp_path / "text.txt"
    text.write_text("What is two plus two? Four. Say hello. Hello.\n" * 4)
    report = tmp_path / "report.json"
    assert main(["eval", summary["checkpoint"], "--perplexity", str(text), "--report",
                 str(report)]) == 0
    scored = json.loads(report.read_text())["perplexity"]["perplexity"]

    def ppl(model, tok):
        ids = tok.encode(text.read_text(), allowed_special="all")
        return perplexity(model, ids, tok.eot_id, len(text.read_bytes()))["perplexity"]
    adapted, base = ppl(*load_finetuned(summary["checkpoint"])[:2]), \
        ppl(*load_model(summary["checkpoint"])[:2])
    assert abs(adapted - base) > 1e-3 * base                  # the adapter changes the model
    assert scored == pytest.approx(adapted, rel=1e-6)
