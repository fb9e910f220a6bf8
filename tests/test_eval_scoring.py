"""Log-likelihood scoring, perplexity and the task readers of microgpt/eval/, against direct
computations through GPT.forward, and the bad inputs a user can give."""
import json
import math
import os

import numpy as np
import pytest

from microgpt import GPT, GPTConfig, no_grad
from microgpt.cli import main
from microgpt.eval import runner, tasks
from microgpt.eval.perplexity import perplexity
from microgpt.eval.scoring import Scorer, encode_request, log_softmax
from microgpt.tokenizer import Tokenizer

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "eval")


def model_of(family, block_size=16, vocab=50):
    return GPT(GPTConfig(family=family, vocab_size=vocab, block_size=block_size, n_layer=2,
                         n_head=2, n_kv_head=1 if family == "llama" else None, n_embd=16), seed=0)


def direct_logprob(model, ctx, cont):
    """log p(cont | ctx) from one full GPT.forward of (ctx + cont)[-(L+1):][:-1]."""
    seq = (list(ctx) + list(cont))[-(model.config.block_size + 1):]
    model.eval()
    with no_grad():
        logp = log_softmax(model(np.array([seq[:-1]]))[0].numpy()[0])
    n = len(cont)
    return sum(logp[len(seq) - 1 - n + j, cont[j]] for j in range(n))


def requests(rng, vocab=50):
    out = []
    for _ in range(6):
        ctx = list(rng.integers(0, vocab, size=int(rng.integers(1, 9))))
        for _ in range(int(rng.integers(2, 5))):
            out.append((ctx, list(rng.integers(0, vocab, size=int(rng.integers(1, 5))))))
    out.append(([7] * 15, [1, 2, 3]))           # 18 tokens, the window holds 16 + 1: one dropped
    return out


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_shared_context_scores_equal_full_recomputation(family, batch_size):
    model, reqs = model_of(family), requests(np.random.default_rng(1))
    scorer = Scorer(model, batch_size=batch_size)
    results = scorer.score(reqs)
    for (ctx, cont), r in zip(reqs, results):
        assert r.logprob == pytest.approx(direct_logprob(model, ctx, cont), abs=1e-4)
    assert results[-1].truncated == 1 and all(r.truncated == 0 for r in results[:-1])
    slow = Scorer(model, batch_size=batch_size, fast=False).score(reqs)
    np.testing.assert_allclose([r.logprob for r in slow], [r.logprob for r in results], atol=1e-4)


def test_one_token_choices_cost_one_pass_per_batch_of_contexts():
    model = model_of("gpt2")
    reqs = [([1, 2, 3][:n], [t]) for n in (1, 2, 3) for t in (4, 5, 6, 7)]   # 3 questions x 4
    scorer = Scorer(model, batch_size=8)
    scorer.score(reqs)
    assert scorer.passes == 1                  # lm-eval's hf backend runs 12 sequences


def test_no_truncate_is_an_error():
    with pytest.raises(Exception, match="exceed the model's context"):
        Scorer(model_of("gpt2"), truncate=False).score([([1] * 20, [2])])


def test_scoring_on_the_cuda_mock_equals_cpu(monkeypatch):
    import cuda_mock
    cuda_mock.install(monkeypatch)
    reqs = requests(np.random.default_rng(2))
    cpu = Scorer(model_of("llama")).score(reqs)
    gpu_model = model_of("llama")
    gpu_model.to("cuda")
    gpu = Scorer(gpu_model).score(reqs)
    np.testing.assert_allclose([r.logprob for r in gpu], [r.logprob for r in cpu], atol=1e-4)


def test_encode_request_moves_trailing_space_and_splits_the_whole():
    tok = Tokenizer.train(["the cat sat on the mat " * 20], vocab_size=270)
    ctx, cont = encode_request(tok, "the cat ", "sat")
    assert ctx == tok.encode("the cat")
    assert ctx + cont == tok.encode("the cat sat")
    assert encode_request(tok, "", "mat") == ([tok.eot_id], tok.encode("mat"))


@pytest.mark.parametrize("stride", [None, 16, 5, 1])
def test_perplexity_equals_forward_losses(stride):
    model = model_of("gpt2")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, size=40)
    got = perplexity(model, ids, eot_id=49, n_bytes=100, stride=stride)
    seq = np.concatenate([[49], ids])
    L, S = 16, stride or 16
    nll, scored, start = 0.0, 0, 0                  # each target once, with its window's context
    model.eval()
    while scored < len(ids):
        end = min(start + L, len(ids))
        with no_grad():
            logp = log_softmax(model(seq[None, start:end])[0].numpy()[0])
        for t in range(max(scored, start), end):        # predicts seq[t + 1]
            nll -= logp[t - start, seq[t + 1]]
        scored, start = end, start + S
    assert got["tokens"] == 40
    assert got["nats_per_token"] == pytest.approx(nll / 40, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(nll / 40), rel=1e-5)
    assert got["bits_per_byte"] == pytest.approx(nll / math.log(2) / 100, rel=1e-5)


# --- the formats and bad input -------------------------------------------------------------------

def test_fixture_formats_read():
    mmlu = tasks.read_mmlu_csv(os.path.join(FIXTURES, "mmlu", "test"))
    assert [e.subject for e in mmlu] == ["astronomy"] * 3 + ["world_religions"] * 2
    assert mmlu[1].question == 'Which planet has the "great red spot"?' and mmlu[1].label == 2
    task = tasks.Task("m", "mmlu_csv", os.path.join(FIXTURES, "mmlu", "test"), shots=1)
    pool = tasks.shot_pool(task, mmlu)
    context = tasks.build_context(task, mmlu[0], tasks.shots_for(task, pool, mmlu[0]))
    assert context == ("The following are multiple choice questions (with answers) about "
                       "astronomy.\n\nWhich planet is the largest?\nA. Earth\nB. Jupiter\nC. Mars"
                       "\nD. Venus\nAnswer: B\n\nWhat is the closest star to the Earth?\nA. The Sun"
                       "\nB. Sirius\nC. Vega\nD. Polaris\nAnswer:")
    assert len(tasks.load_task_file(os.path.join(FIXTURES, "tasks.toml"))) == 3


@pytest.mark.parametrize("name, content, message", [
    ("bad.csv", "q,a,b,c,A\n", r"bad.csv:1: expected 6 columns"),
    ("bad.csv", "q,a,b,c,d,A\nq,a,b,c,d,E\n", r"bad.csv:2: answer 'E' is not one of"),
    ("bad.jsonl", '{"context": "x", "choices": ["a"], "label": 0}\n{oops\n', r"bad.jsonl:2: not a JSON"),
    ("bad.jsonl", '{"context": "x", "choices": ["a", "b"], "label": 2}\n', r"bad.jsonl:1: label 2"),
    ("bad.jsonl", '{"context": "x", "label": 0}\n', r"bad.jsonl:1: no 'choices' field"),
])
def test_bad_files_name_the_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    fmt = "mmlu_csv" if name.endswith(".csv") else "choice_jsonl"
    with pytest.raises(tasks.TaskError, match=message):
        tasks.read_examples(tasks.Task("t", fmt, str(path)), str(path))


def test_empty_task_is_an_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(tasks.TaskError, match="holds no examples"):
        runner.evaluate(model_of("gpt2"), None, [tasks.Task("e", "choice_jsonl",
                                                            str(tmp_path / "empty.jsonl"))])


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_text("not json\n")
    assert main(["eval", str(tmp_path), "--tasks", f"choice_jsonl={tmp_path / 'bad.jsonl'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.jsonl:1: not a JSON object" in err


def test_cli_score_files(tmp_path, capsys):
    (tmp_path / "h.txt").write_text("the cat sat on the mat\na dog\n")
    (tmp_path / "r.txt").write_text("the cat sat on a mat\na dog ran\n")
    assert main(["eval", "score", "--hyp", str(tmp_path / "h.txt"), "--ref", str(tmp_path / "r.txt"),
                 "--report", str(tmp_path / "out" / "s.json")]) == 0
    report = json.loads((tmp_path / "out" / "s.json").read_text())
    import sacrebleu
    assert report["bleu"] == pytest.approx(sacrebleu.corpus_bleu(
        ["the cat sat on the mat", "a dog"], [["the cat sat on a mat", "a dog ran"]]).score, abs=1e-9)
