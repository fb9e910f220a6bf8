"""`microgpt lifecycle` end to end at the CI size (--tiny, about a minute on 2 cores).

One module-scoped run does the work: the first pass has a fault injected in the dpo stage
(MICROGPT_LIFECYCLE_FAIL=dpo: the stage's commands ran, its marker was never written), the
second resumes. The tests then read what the two passes left: the failure named its stage and
kept the earlier ones, the resume re-ran nothing that was complete, the report exists with
every stage's scores finite, and its numbers are the per-stage results files' numbers.
"""
import json
import math
import os

import pytest

from microgpt import cli, lifecycle

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _mtime(out, stage):
    return os.stat(os.path.join(out, stage, "result.json")).st_mtime_ns


@pytest.fixture(scope="module")
def life(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("life") / "run")
    os.environ[lifecycle.FAIL_ENV] = "dpo"
    try:
        code = cli.main(["lifecycle", "--tiny", "--out-dir", out])
    finally:
        del os.environ[lifecycle.FAIL_ENV]
    first = {"code": code, "complete": [s for s in lifecycle.STAGES if lifecycle.is_complete(out, s)],
             "dpo_files": os.path.exists(os.path.join(out, "dpo", "run", "metrics.jsonl")),
             "mtimes": {s: _mtime(out, s) for s in ("data", "pretrain", "reward")}}
    code = cli.main(["lifecycle", "--tiny", "--out-dir", out])
    return {"out": out, "first": first, "code": code}


def test_a_failing_stage_names_itself_and_keeps_the_earlier_ones(life, capsys):
    first = life["first"]
    assert first["code"] == 2
    assert first["complete"] == list(lifecycle.STAGES[:lifecycle.STAGES.index("dpo")])
    assert first["dpo_files"]               # it had run: only the marker is missing


def test_the_rerun_resumes_at_the_interrupted_stage(life):
    out = life["out"]
    assert life["code"] == 0
    assert all(lifecycle.is_complete(out, s) for s in lifecycle.STAGES)
    for stage, mtime in life["first"]["mtimes"].items():     # finished stages were not re-run
        assert _mtime(out, stage) == mtime, stage


def test_the_report_has_every_stage_and_finite_scores(life):
    out = life["out"]
    with open(os.path.join(out, "report", "report.json"), encoding="utf-8") as f:
        report = json.load(f)
    stages = [row["stage"] for row in report["rows"]]
    assert stages == list(lifecycle.STAGES[:-1]) + [f"grpo {q}" for q in lifecycle.QUANTIZED]
    scored = [row for row in report["rows"] if row["scores"]]
    assert [row["stage"] for row in scored] == list(lifecycle.MODEL_STAGES) + ["grpo int8", "grpo int4"]
    for row in scored:
        assert set(row["scores"]) == set(lifecycle.SCORE_COLUMNS)
        for name, score in row["scores"].items():
            assert math.isfinite(score["value"]), (row["stage"], name)
            assert score["se"] is None or math.isfinite(score["se"])
    for row in report["rows"][:-2]:
        assert row["seconds"] > 0 and row["peak_rss_mib"] > 0
    assert report["chance"]["mc_acc"] == 0.25
    for stage in ("pretrain", "sft", "reward", "dpo", "ppo", "grpo"):
        assert os.path.getsize(os.path.join(out, "report", f"{stage}.png")) > 1000
    assert len(report["served"]) >= 1 and all(isinstance(r["answer"], str) for r in report["served"])
    text = open(os.path.join(out, "report", "report.md"), encoding="utf-8").read()
    for stage in stages:
        assert f"| {stage} |" in text
    assert set(report["samples"]) == set(lifecycle.MODEL_STAGES) | {"grpo int8", "grpo int4"}


def test_the_report_numbers_are_the_results_files_numbers(life):
    out = life["out"]
    with open(os.path.join(out, "report", "report.json"), encoding="utf-8") as f:
        rows = {row["stage"]: row for row in json.load(f)["rows"]}
    for stage in lifecycle.STAGES[:-1]:
        result = lifecycle.read_result(out, stage)
        for key in ("seconds", "peak_rss_mib", "tokens", "parameters", "loss"):
            assert rows[stage][key] == result.get(key), (stage, key)
    for stage in lifecycle.MODEL_STAGES:
        with open(os.path.join(out, "eval", f"{stage}.json"), encoding="utf-8") as f:
            assert rows[stage]["scores"] == json.load(f)["scores"]
    for scheme in lifecycle.QUANTIZED:
        with open(os.path.join(out, "quantize", f"{scheme}.json"), encoding="utf-8") as f:
            assert rows[f"grpo {scheme}"]["scores"] == json.load(f)["scores"]


def test_from_reruns_that_stage_and_the_later_ones(life):
    out = life["out"]
    before = {s: _mtime(out, s) for s in lifecycle.STAGES}
    assert cli.main(["lifecycle", "--tiny", "--out-dir", out, "--from", "report"]) == 0
    assert _mtime(out, "report") != before["report"]
    assert all(_mtime(out, s) == before[s] for s in lifecycle.STAGES[:-1])


def test_another_size_in_the_same_directory_is_refused(life, capsys):
    assert cli.main(["lifecycle", "--quick", "--out-dir", life["out"]]) == 2
    err = capsys.readouterr().err
    assert "holds a tiny lifecycle" in err and err.count("\n") == 1


@pytest.mark.parametrize("missing", ["openai", "fastapi", "uvicorn"])
def test_a_missing_serve_dependency_is_one_line_before_any_stage(tmp_path, monkeypatch, capsys,
                                                                 missing):
    """The serve stage comes last; without its packages the run must stop at the start, not
    after every other stage has run, and say which extra installs them."""
    import importlib.util
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == missing else find_spec(name, *a))
    out = tmp_path / "run"
    assert cli.main(["lifecycle", "--tiny", "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and missing in err and "pip install -e '.[lifecycle]'" in err
    assert not out.exists()                  # nothing was run, nothing was made


def test_the_lifecycle_extra_holds_what_the_serve_stage_imports():
    import ast
    setup = open(os.path.join(os.path.dirname(__file__), "..", "setup.py"), encoding="utf-8").read()
    call = next(node for node in ast.walk(ast.parse(setup)) if isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "setup")
    extras = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "extras_require"))
    names = {requirement.split(">")[0].split("=")[0] for requirement in extras["lifecycle"]}
    assert set(lifecycle.RUNTIME_PACKAGES) <= names


def test_unknown_stage_is_a_parser_error(capsys):
    with pytest.raises(SystemExit):
        cli.main(["lifecycle", "--from", "nonsense"])
    assert "invalid choice" in capsys.readouterr().err


# --- the recorded runs: benchmarks/results/lifecycle.json and the README's trimmed card ----------

ROOT = os.path.join(os.path.dirname(__file__), "..")
CARD_NAMES = {"ppo": "ppo (reward model)", "grpo": "grpo (rule)"}


def trimmed_card(run):
    """The README's trimmed report card of one recorded run (lifecycle.json's "quick" or
    "full"): a markdown table, every figure formatted from the run's report.json."""
    rows = {row["stage"]: row for row in run["report"]["rows"]}

    def share(score, se=True):
        text = f"{score['value']:.2f}"
        return text + (f" ± {score['se']:.2f}" if se and score["se"] else "")

    lines = ["| model | time (s) | perplexity | exact match | multiple choice | BLEU |",
             "|---|---|---|---|---|---|"]
    for stage in lifecycle.MODEL_STAGES:
        s = rows[stage]["scores"]
        lines.append(f"| {CARD_NAMES.get(stage, stage)} | {rows[stage]['seconds']:.0f} | "
                     f"{s['perplexity']['value']:.3g} | {share(s['exact_match'])} | "
                     f"{share(s['mc_acc'])} | {share(s['bleu'])} |")
    q = [rows[f"grpo {scheme}"]["scores"] for scheme in lifecycle.QUANTIZED]
    cell = lambda name, fmt: " / ".join(fmt(x[name]) for x in q)       # noqa: E731
    lines.append(f"| grpo {' / '.join(lifecycle.QUANTIZED)} | {rows['quantize']['seconds']:.0f} | "
                 f"{cell('perplexity', lambda x: format(x['value'], '.3g'))} | "
                 f"{cell('exact_match', lambda x: share(x, False))} | "
                 f"{cell('mc_acc', lambda x: share(x, False))} | "
                 f"{cell('bleu', lambda x: share(x, False))} |")
    chance = run["report"]["chance"]
    lines.append(f"| chance | | {chance['perplexity']:.0f} | {chance['exact_match']:.2f} | "
                 f"{chance['mc_acc']:.2f} | |")
    return "\n".join(lines) + "\n"


def test_the_readme_card_is_the_recorded_runs():
    with open(os.path.join(ROOT, "benchmarks", "results", "lifecycle.json"), encoding="utf-8") as f:
        recorded = json.load(f)
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme[readme.index("## The whole life in one command"):]
    section = section[:section.index("\n## ", 1)]
    for size in ("quick", "full"):
        run = recorded["runs"][size]
        assert run["report"]["size"] == size
        expected = trimmed_card(run)
        assert expected in section, f"README's {size} card should read:\n{expected}"


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_a_quantized_model_decodes_through_the_engine(scheme):
    """The lifecycle's quantize and serve stages decode a quantized model with the paged
    Engine, whose decode rows go through linear_rows_forward (a1d8818): DecodeBackend must run
    the quantized kernel there too. Oracle: greedy decoding by full forward passes."""
    import numpy as np

    from microgpt.inference.engine import Engine
    from microgpt.inference.sampling import SamplingConfig
    from microgpt.nn.gpt import GPT, GPTConfig
    from microgpt.quantize.model import quantize_model
    from microgpt.tensor import no_grad
    from microgpt.tokenizer import Tokenizer
    tokenizer = Tokenizer.train(["abc def ghi " * 40], vocab_size=262)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=2,
                          n_embd=64, family="llama", bias=False), seed=0)
    quantize_model(model, scheme, group=32 if scheme == "int4" else None)
    model.eval()
    prompt = tokenizer.encode("abc def")
    got = Engine(model, tokenizer).generate_ids([prompt], 6, SamplingConfig(temperature=0.0), 0)[0].ids
    ids = list(prompt)
    with no_grad():
        for _ in range(6):
            logits, _ = model(np.array([ids], np.int64))
            ids.append(int(logits.numpy()[0, -1].argmax()))
    assert list(got) == ids[len(prompt):]
