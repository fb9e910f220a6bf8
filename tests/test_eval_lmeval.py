"""microgpt eval against EleutherAI's lm-evaluation-harness on the same model and files.

The model: a small GPT with a BPE tokenizer trained here, exported to a Hugging Face
directory (interop/hf.py export_hf); lm-eval loads that directory with its `hf` backend
(transformers, float32) and reads the same local JSONL files through task YAMLs written
here (dataset_path: json, offline). One lm_eval.simple_evaluate call runs three tasks:
  choice0   choice_jsonl, zero-shot                  per-example log-likelihoods, acc, acc_norm
  choice2   the same with 2 shots (sampler first_n)  the few-shot prompt is built alike
  gsm       GSM8K format, 2 shots, greedy, 16 tokens the completions and both exact matches
Agreement asked: every log-likelihood within 1e-4 (float32 on both sides), every
is-greedy flag, acc and acc_norm per example, the generated text and the extracted answers.
"""
import os
import textwrap

import numpy as np
import pytest

from microgpt import GPT, GPTConfig
from microgpt.eval import runner, tasks
from microgpt.interop.hf import export_hf
from microgpt.tokenizer import Tokenizer

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "eval")
lm_eval = pytest.importorskip("lm_eval")


def fixture(name):
    return os.path.join(FIXTURES, name)


def build_model():
    corpus = "\n".join(open(fixture(f), encoding="utf-8").read()
                       for f in ("choice.jsonl", "choice_dev.jsonl", "gsm8k.jsonl", "gsm8k_train.jsonl"))
    tokenizer = Tokenizer.train([corpus * 4], vocab_size=400)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=512, n_layer=2, n_head=2,
                          n_embd=32), seed=3)
    for p in model.parameters():           # sharper distributions: greedy choices with margins
        p.data[...] *= 3.0
    return model, tokenizer


YAML = {
    "choice0": """\
        task: choice0
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {test}
        test_split: test
        output_type: multiple_choice
        doc_to_text: "{{{{context}}}}"
        doc_to_choice: "{{{{choices}}}}"
        doc_to_target: "{{{{label}}}}"
        metric_list:
          - metric: acc
          - metric: acc_norm
        """,
    "choice2": """\
        task: choice2
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {test}
            train: {dev}
        test_split: test
        fewshot_split: train
        num_fewshot: 2
        fewshot_config:
          sampler: first_n
        output_type: multiple_choice
        doc_to_text: "{{{{context}}}}"
        doc_to_choice: "{{{{choices}}}}"
        doc_to_target: "{{{{label}}}}"
        metric_list:
          - metric: acc
          - metric: acc_norm
        """,
    "gsm": """\
        task: gsm
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {gsm}
            train: {gsm_dev}
        test_split: test
        fewshot_split: train
        num_fewshot: 2
        fewshot_config:
          sampler: first_n
        output_type: generate_until
        doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
        doc_to_target: "{{{{answer}}}}"
        generation_kwargs:
          until: ["Question:", "</s>", "<|im_end|>"]
          do_sample: false
          temperature: 0.0
          max_gen_toks: 16
        metric_list:
          - metric: exact_match
            aggregation: mean
            higher_is_better: true
            ignore_case: true
            ignore_punctuation: false
            regexes_to_ignore: [",", "\\\\$", "(?s).*#### ", "\\\\.$"]
        filter_list:
          - name: strict-match
            filter:
              - function: regex
                regex_pattern: "#### (\\\\-?[0-9\\\\.\\\\,]+)"
              - function: take_first
          - name: flexible-extract
            filter:
              - function: regex
                group_select: -1
                regex_pattern: "(-?[$0-9.,]{{2,}})|(-?[0-9]+)"
              - function: take_first
        """,
}


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    pytest.importorskip("transformers")
    os.environ["HF_DATASETS_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"
    root = tmp_path_factory.mktemp("lmeval")
    model, tokenizer = build_model()
    export_hf(model, tokenizer, str(root / "hf"))
    (root / "tasks").mkdir()
    paths = {"test": fixture("choice.jsonl"), "dev": fixture("choice_dev.jsonl"),
             "gsm": fixture("gsm8k.jsonl"), "gsm_dev": fixture("gsm8k_train.jsonl")}
    for name, text in YAML.items():
        (root / "tasks" / f"{name}.yaml").write_text(textwrap.dedent(text).format(**paths))
    from lm_eval.tasks import TaskManager
    theirs = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={root / 'hf'},dtype=float32", tasks=list(YAML),
        task_manager=TaskManager(include_path=str(root / "tasks")), log_samples=True,
        batch_size=1, device="cpu", random_seed=0, numpy_random_seed=0, torch_random_seed=0)
    ours = runner.evaluate(model, tokenizer, [
        tasks.Task("choice0", "choice_jsonl", paths["test"]),
        tasks.Task("choice2", "choice_jsonl", paths["test"], dev=paths["dev"], shots=2),
        tasks.Task("gsm", "gsm8k_jsonl", paths["gsm"], dev=paths["gsm_dev"], shots=2,
                   max_new_tokens=16)], batch_size=3)
    return ours, theirs


def _samples(theirs, task):
    return sorted(theirs["samples"][task], key=lambda s: s["doc_id"])


@pytest.mark.parametrize("task", ["choice0", "choice2"])
def test_multiple_choice_matches_lm_eval(both, task):
    ours, theirs = both
    mine = ours["tasks"][task]["per_example"]
    samples = _samples(theirs, task)
    assert len(mine) == len(samples) == 5
    for record, sample in zip(mine, samples):
        assert record["context"] == sample["arguments"][0][0]          # the same prompt
        lls = [r[0] for r in sample["filtered_resps"]]
        np.testing.assert_allclose(record["logprobs"], lls, rtol=0, atol=1e-4)
        assert record["greedy"] == [bool(r[1]) for r in sample["filtered_resps"]]
        assert record["acc"] == sample["acc"] and record["acc_norm"] == sample["acc_norm"]
    for metric in ("acc", "acc_norm"):
        assert ours["tasks"][task]["metrics"][metric]["micro"] == pytest.approx(
            theirs["results"][task][f"{metric},none"], abs=1e-12)


def test_gsm8k_generation_matches_lm_eval(both):
    ours, theirs = both
    mine = ours["tasks"]["gsm"]["per_example"]
    assert {s["filter"] for s in theirs["samples"]["gsm"]} >= {"strict-match", "flexible-extract"}
    for ours_name, filt, extracted in (("exact_match_strict", "strict-match", "extracted_strict"),
                                       ("exact_match_flexible", "flexible-extract",
                                        "extracted_flexible")):
        samples = sorted((s for s in theirs["samples"]["gsm"] if s["filter"] == filt),
                         key=lambda s: s["doc_id"])
        assert len(mine) == len(samples) == 3
        for record, sample in zip(mine, samples):
            assert record["completion"] == sample["resps"][0][0]        # the same greedy text
            assert record[extracted] == sample["filtered_resps"][0]
            assert record[ours_name] == sample["exact_match"]
        assert ours["tasks"]["gsm"]["metrics"][ours_name]["micro"] == pytest.approx(
            theirs["results"]["gsm"][f"exact_match,{filt}"], abs=1e-12)
    assert any(r["completion"] for r in mine)                  # something was generated
