"""`microgpt finetune sft|eval`, `microgpt chat` and `microgpt data synth` end to end."""
import io
import json
import types

import numpy as np
import pytest

from microgpt.cli import main
from microgpt.finetune import synth


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A base run of ours and a LoRA fine-tune of it on a synthetic task, through the CLI."""
    from model_dirs import our_run
    root = tmp_path_factory.mktemp("chat")
    base = our_run(root / "b", family="llama", max_steps=2, block_size=64)
    assert main(["data", "synth", "--task", "kv", "--train", "40", "--eval", "6", "-o",
                 str(root / "kv")]) == 0
    out = str(root / "sft")
    assert main(["finetune", "sft", "--init-from", base, "--data", str(root / "kv" / "train.jsonl"),
                 "--val-data", str(root / "kv" / "eval.jsonl"), "--lora-rank", "4",
                 "--lora-targets", "q,k,v,o", "--out-dir", out, "--max-steps", "3",
                 "--block-size", "64", "--batch-size", "4", "--eval-interval", "3",
                 "--eval-batches", "1", "--checkpoint-interval", "3", "--num-samples", "1",
                 "--sample-tokens", "4", "--progress", "false"]) == 0
    return root, out


def test_synth_splits_never_overlap(tmp_path):
    for task in synth.TASKS:
        train, held = synth.generate(task, 300, 60, seed=3)
        assert len(train) == 300 and len(held) == 60
        assert not {p for p, _ in train} & {p for p, _ in held}
        assert len({p for p, _ in train}) == 300
        assert all(synth.held_out(p) for p, _ in held) and not any(synth.held_out(p) for p, _ in train)
    prompt, answer = synth._arithmetic(np.random.default_rng(0))
    a, op, b = prompt[len("What is "):-1].split()
    assert int(answer) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]


def test_chat_one_shot_and_repl(tuned, capsys):
    from microgpt.finetune.commands import run_chat
    _, out = tuned
    assert main(["chat", out, "--message", "a=1, b=2. What is b?", "--max-new-tokens", "5"]) == 0
    one_shot = capsys.readouterr().out
    args = types.SimpleNamespace(run_dir=out, device="cpu", temperature=0.0, top_k=0, system=None,
                                 seed=0, max_new_tokens=5, message=None)
    typed = io.StringIO("a=1, b=2. What is b?\n/system be brief\nhi\n/reset\n/exit\n")
    shown = io.StringIO()
    assert run_chat(args, typed, shown) == 0
    text = shown.getvalue()
    assert "(system prompt set; history cleared)" in text and "(history cleared)" in text
    first_reply = text.split("> ", 2)[1]
    assert first_reply == one_shot                   # greedy: the REPL's first answer is the one-shot's


def test_finetune_eval_writes_exact_match(tuned, tmp_path):
    root, out = tuned
    report = tmp_path / "em.json"
    assert main(["finetune", "eval", out, "--data", str(root / "kv" / "eval.jsonl"),
                 "--json", str(report), "--max-new-tokens", "4"]) == 0
    figures = json.loads(report.read_text())
    assert figures["examples"] == 6 and 0.0 <= figures["exact_match"] <= 1.0


def test_resume_through_the_cli(tuned):
    _, out = tuned
    assert main(["finetune", "sft", "--resume", out]) == 0       # already at max_steps: no steps


@pytest.mark.parametrize("argv, message", [
    (["finetune", "sft", "--data", "x.jsonl"], "give --init-from"),
    (["finetune", "sft", "--init-from", "RUN", "--data", "CHAT", "--lora-rank", "2",
      "--lora-targets", "q,nope"], "LoRA targets must be some of"),
    (["finetune", "sft", "--init-from", "RUN", "--data", "CHAT", "--qlora"], "give --lora-rank"),
])
def test_bad_flags_are_one_line_errors(tuned, argv, message, capsys):
    root, _ = tuned
    base = str(root / "b" / "run")
    argv = [base if a == "RUN" else str(root / "kv" / "train.jsonl") if a == "CHAT" else a for a in argv]
    argv += ["--out-dir", str(root / f"bad{abs(hash(message))}"), "--block-size", "64"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_generate_on_a_lora_run_applies_the_adapter(tuned, tmp_path, capsys):
    """`microgpt generate` on a LoRA run decodes with its adapter (and trained token rows)
    merged, as `chat` does: not the frozen base that model.safetensors holds."""
    import hashlib
    import shutil

    from safetensors.numpy import load_file, save_file

    from microgpt.finetune import peft_io
    from microgpt.finetune.sft import load_chat_model
    from microgpt.inference.engine import Engine
    from microgpt.inference.sampling import SamplingConfig
    from microgpt.train.checkpoint import load_model, resolve
    _, out = tuned
    run = shutil.copytree(resolve(out), tmp_path / "ckpt")
    weights = load_file(run / peft_io.WEIGHTS_FILE)         # three steps move it little: push it
    rng = np.random.default_rng(0)
    save_file({k: (v + rng.normal(0, 0.5, v.shape)).astype(v.dtype) for k, v in weights.items()},
              run / peft_io.WEIGHTS_FILE, metadata={"format": "pt"})
    marker = json.loads((run / "COMPLETE").read_text())      # the checksum of the new file
    data = (run / peft_io.WEIGHTS_FILE).read_bytes()
    marker["files"][peft_io.WEIGHTS_FILE] = {"sha256": hashlib.sha256(data).hexdigest(),
                                             "bytes": len(data)}
    (run / "COMPLETE").write_text(json.dumps(marker))
    prompt = "<|im_start|>user\na=1, b=2. What is b?<|im_end|>\n<|im_start|>assistant\n"
    assert main(["generate", str(run), "--prompt", prompt, "--max-new-tokens", "12",
                 "--temperature", "0"]) == 0
    printed = capsys.readouterr().out
    greedy = SamplingConfig(temperature=0.0)
    tuned_model, tok, _ = load_chat_model(str(run))
    expected = Engine(tuned_model, tok).generate([prompt], 12, greedy, 0)[0].text
    base_model, tok2, _ = load_model(str(run))
    base_text = Engine(base_model, tok2).generate([prompt], 12, greedy, 0)[0].text
    assert base_text != expected                 # else this test could not tell them apart
    assert printed.startswith(prompt + expected)
