"""`microgpt lifecycle`: the whole life of an LLM in one command, and its report card.

    pip install -e '.[lifecycle]'     # the serve stage's server and client (setup.py)
    microgpt lifecycle [--quick] [--out-dir runs/life] [--device cpu|cuda] [--from STAGE]

Raw text becomes a served, aligned, quantized model through the commands a reader would
type by hand, run in order, each in a child process (`python -m microgpt ...`), so every
stage is exactly a documented command and its time and peak memory are its own:

    data       the built-in corpus -> `data clean` (normalize, PII, filters, dedup); held-out
               documents set aside; `data synth --task kv`; the held-out tasks written
    tokenizer  `tokenizer train` on the cleaned training text
    pretrain   `train` a small Llama-family GPT on it
    sft        `finetune sft` on the synthetic instruction set (full fine-tuning)
    reward     `finetune pairs` (verified answer vs the model's own wrong sample), then
               `finetune reward` (Bradley-Terry)
    dpo        `finetune dpo` on the pairs
    ppo        `finetune ppo` against the trained reward model
    grpo       `finetune grpo` with the task's rule reward
    eval       every model above on the same held-out tasks (below), in this process
    quantize   `quantize --scheme int8` and `int4` of the GRPO model, both re-evaluated
    serve      `serve` the int8 model on a free 127.0.0.1 port, a few requests through the
               openai client, then SIGTERM
    report     report.md + report.json, the curves as PNGs (train/plot.py), sample answers

The held-out tasks, the same for every model: perplexity of held-out corpus documents (never
trained on; chance = the vocabulary size, a uniform guess), greedy exact match on the
synthetic task's held-out prompts (finetune/evaluate.py, the chat template; chance 0.1, a
uniform digit), a four-way multiple choice made here from the same held-out prompts (the
right value against three others, eval/runner.py's log-likelihood scoring; chance 0.25),
and BLEU and ROUGE-L of continuations of held-out documents (eval/ metrics). Standard errors
are bootstrap ones (eval/metrics.py); BLEU's resamples whole corpora.

Resuming. Each stage writes only under OUT/<stage>/ and ends by writing result.json and then
a COMPLETE marker (fileio.atomic_write both). A re-run skips every stage whose marker is
there; a stage without one is wiped and run again, so an interrupted run (a kill, a crash, a
failed command) resumes at the stage it was in, earlier outputs untouched. `--from STAGE`
removes the markers of STAGE and of every stage after it (they read its outputs) and runs
them again. A failing stage raises LifecycleError naming it and its log (OUT/<stage>/log.txt,
every command's output). MICROGPT_LIFECYCLE_FAIL=STAGE makes that stage fail after its work,
before its marker: the fault the resume test injects.

Sizes: "full" (the default, under an hour on 2 cores is the aim), "quick" (about 10 minutes)
and "tiny" (the CI test's; a minute or two). Every figure in the report says which.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np

from .errors import MicrogptError
from .fileio import atomic_write, write_json

STAGES = ("data", "tokenizer", "pretrain", "sft", "reward", "dpo", "ppo", "grpo", "eval",
          "quantize", "serve", "report")
MODEL_STAGES = ("pretrain", "sft", "dpo", "ppo", "grpo")        # the policies evaluated
QUANTIZED = ("int8", "int4")
COMPLETE = "COMPLETE"
FAIL_ENV = "MICROGPT_LIFECYCLE_FAIL"
TASK = "kv"                      # the synthetic task: key-value recall, one-digit answers
SAMPLE_PROMPTS = ("a=3, b=7, c=1. What is b?", "x=5, q=2, m=8, d=0. What is m?",
                  "What is the capital of France?")

# Every knob of a size. corpus/tokenizer/held-out in bytes; steps and iterations are the
# commands' own flags.
SIZES = {
    "tiny": dict(corpus_bytes=400_000, heldout_bytes=20_000, tokenizer_bytes=300_000, vocab=400,
                 n_layer=2, n_head=2, n_embd=64, block=128, batch=8, pretrain_steps=40,
                 synth_train=300, synth_eval=40, sft_steps=40, pair_prompts=24, dpo_steps=6,
                 ppo_iterations=2, grpo_iterations=2, rl_prompts=4, eval_examples=16,
                 gen_examples=8, gen_tokens=12, serve_requests=2),
    "quick": dict(corpus_bytes=2_000_000, heldout_bytes=60_000, tokenizer_bytes=1_500_000,
                  vocab=1024, n_layer=4, n_head=4, n_embd=96, block=256, batch=8,
                  pretrain_steps=600, synth_train=3000, synth_eval=200, sft_steps=300,
                  pair_prompts=200, dpo_steps=60, ppo_iterations=8, grpo_iterations=20,
                  rl_prompts=8, eval_examples=100, gen_examples=40, gen_tokens=24,
                  serve_requests=3),
    "full": dict(corpus_bytes=0, heldout_bytes=200_000, tokenizer_bytes=6_000_000, vocab=2048,
                 n_layer=4, n_head=4, n_embd=96, block=256, batch=8, pretrain_steps=3600,
                 synth_train=3000, synth_eval=200, sft_steps=400, pair_prompts=600,
                 dpo_steps=200, ppo_iterations=20, grpo_iterations=60, rl_prompts=8,
                 eval_examples=200, gen_examples=100, gen_tokens=32, serve_requests=4),
}
HELDOUT_SHARE = 0.05             # of the cleaned documents, never trained on
# What the serve stage imports (the server: fastapi, uvicorn; its client: openai, httpx), all
# in setup.py's `lifecycle` extra. Checked before the first stage: the serve stage runs last,
# and finding a package missing there would waste every stage before it.
RUNTIME_PACKAGES = ("fastapi", "uvicorn", "openai", "httpx")
EXTRA = "pip install -e '.[lifecycle]'"


class LifecycleError(MicrogptError, RuntimeError):
    """A stage that failed: its name, the command and where its log is."""


class Context:
    """What every stage sees: the output root, the size's knobs, the device, the log."""

    def __init__(self, out_dir, size, device, log):
        self.out_dir, self.size, self.device, self.log = out_dir, size, device, log
        self.knobs = SIZES[size]
        self.peak_rss_mib = 0.0

    def path(self, *parts):
        return os.path.join(self.out_dir, *parts)

    def microgpt(self, stage, *argv):
        """Run `python -m microgpt ARGV` with its output appended to OUT/<stage>/log.txt;
        returns its peak resident memory in MiB (wait4's rusage of that child alone)."""
        command = ["microgpt", *map(str, argv)]
        log_path = self.path(stage, "log.txt")
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            proc = subprocess.Popen([sys.executable, "-m", "microgpt", *command[1:]],
                                    stdout=log, stderr=subprocess.STDOUT, env=_child_env())
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        rss = _maxrss_mib(usage)
        self.peak_rss_mib = max(self.peak_rss_mib, rss)
        self.commands.append(" ".join(command))
        if proc.returncode != 0:
            raise LifecycleError(f"stage {stage}: `{' '.join(command)}` exited with status "
                                 f"{proc.returncode}: {_last_line(log_path)} (full output: "
                                 f"{log_path})")
        return rss


def _child_env():
    env = dict(os.environ)
    env.pop(FAIL_ENV, None)
    return env


def _maxrss_mib(usage):
    # ru_maxrss is KiB on Linux, bytes on macOS
    return usage.ru_maxrss / (1 << 20 if sys.platform == "darwin" else 1 << 10)


def _last_line(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    return lines[-1] if lines else "(no output)"


def is_complete(out_dir, stage):
    return os.path.exists(os.path.join(out_dir, stage, COMPLETE))


def read_result(out_dir, stage):
    with open(os.path.join(out_dir, stage, "result.json"), encoding="utf-8") as f:
        return json.load(f)


def run_lifecycle(out_dir="runs/life", size="full", device="cpu", start=None, log=print):
    """Run every stage not yet complete (from `start` on, all of them again); returns the
    report (report.json's object)."""
    if size not in SIZES:
        raise LifecycleError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    if start is not None and start not in STAGES:
        raise LifecycleError(f"--from {start}: not a stage; stages are {', '.join(STAGES)}")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise LifecycleError(f"--out-dir {out_dir} exists and is not a directory")
    rerun = start is not None and STAGES.index(start) <= STAGES.index("serve")
    if rerun or not is_complete(out_dir, "serve"):
        _check_runtime_packages()
    os.makedirs(out_dir, exist_ok=True)
    _check_same_size(out_dir, size)
    if start is not None:
        for stage in STAGES[STAGES.index(start):]:
            marker = os.path.join(out_dir, stage, COMPLETE)
            if os.path.exists(marker):
                os.remove(marker)
    ctx = Context(out_dir, size, device, log)
    total = time.perf_counter()
    for stage in STAGES:
        stage_dir = ctx.path(stage)
        if is_complete(out_dir, stage):
            log(f"[{stage}] complete, skipped")
            continue
        shutil.rmtree(stage_dir, ignore_errors=True)      # a partial stage starts afresh
        os.makedirs(stage_dir)
        log(f"[{stage}] running ...")
        ctx.commands, ctx.peak_rss_mib = [], 0.0
        t0 = time.perf_counter()
        try:
            result = STAGE_FUNCTIONS[stage](ctx)
            if os.environ.get(FAIL_ENV) == stage:
                raise LifecycleError(f"{FAIL_ENV}={stage}: the injected fault")
        except LifecycleError as exc:
            raise LifecycleError(f"{exc}; earlier stages are kept, re-run to resume at "
                                 f"{stage}") from None
        except MicrogptError as exc:
            raise LifecycleError(f"stage {stage} failed: {exc}; earlier stages are kept, "
                                 f"re-run to resume at {stage}") from None
        result = {"stage": stage, "size": size, "seconds": round(time.perf_counter() - t0, 2),
                  "commands": ctx.commands, "peak_rss_mib": round(ctx.peak_rss_mib, 1), **result}
        write_json(os.path.join(stage_dir, "result.json"), result)
        with atomic_write(os.path.join(stage_dir, COMPLETE)) as f:
            f.write(f"{size}\n")
        log(f"[{stage}] done in {result['seconds']:.1f} s")
    log(f"lifecycle: {time.perf_counter() - total:.0f} s this run; report: "
        f"{ctx.path('report', 'report.md')}")
    with open(ctx.path("report", "report.json"), encoding="utf-8") as f:
        return json.load(f)


def _check_runtime_packages():
    import importlib.util
    missing = [name for name in RUNTIME_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise LifecycleError(f"the serve stage needs {', '.join(missing)} (not installed); "
                             f"install the lifecycle extra: {EXTRA}")


def _check_same_size(out_dir, size):
    """Finished stages of another size would mix into the report: refuse, say what to do."""
    for stage in STAGES:
        marker = os.path.join(out_dir, stage, COMPLETE)
        if os.path.exists(marker):
            with open(marker, encoding="utf-8") as f:
                done = f.read().strip()
            if done != size:
                raise LifecycleError(f"{out_dir} holds a {done} lifecycle ({stage} is complete); "
                                     f"give another --out-dir, or the same size")


# --- data -----------------------------------------------------------------------------------

def _stable_share(text):
    """A document's place in [0, 1) from a hash of its text: the held-out split never moves."""
    import hashlib
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2 ** 64


def stage_data(ctx):
    from .data.corpus import builtin_documents
    k = ctx.knobs
    raw = ctx.path("data", "raw.jsonl")
    raw_docs = raw_bytes = 0
    with atomic_write(raw, "w", encoding="utf-8") as f:
        for doc in builtin_documents(max_bytes=k["corpus_bytes"] or None):
            f.write(json.dumps({"text": doc.text, "source": doc.source}) + "\n")
            raw_docs += 1
            raw_bytes += len(doc.text.encode("utf-8"))
    ctx.microgpt("data", "data", "clean", raw, "-o", ctx.path("data", "clean.jsonl"), "--no-progress")
    train_docs, heldout_docs = [], []
    with open(ctx.path("data", "clean.jsonl"), encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["text"]
            (heldout_docs if _stable_share(text) < HELDOUT_SHARE else train_docs).append(text)
    if not train_docs or not heldout_docs:
        raise LifecycleError(f"stage data: cleaning kept {len(train_docs) + len(heldout_docs)} "
                             f"documents, too few to hold some out; raise the corpus size")
    with atomic_write(ctx.path("data", "train.jsonl"), "w", encoding="utf-8") as f:
        for text in train_docs:
            f.write(json.dumps({"text": text}) + "\n")
    with atomic_write(ctx.path("data", "tokenizer_text.txt"), "w", encoding="utf-8") as f:
        budget = k["tokenizer_bytes"]
        for text in train_docs:
            if budget <= 0:
                break
            f.write(text + "\n\n")
            budget -= len(text.encode("utf-8"))
    heldout = "\n\n".join(heldout_docs).encode("utf-8")[:k["heldout_bytes"]].decode("utf-8", "ignore")
    with atomic_write(ctx.path("data", "heldout.txt"), "w", encoding="utf-8") as f:
        f.write(heldout)
    ctx.microgpt("data", "data", "synth", "--task", TASK, "-o", ctx.path("data", "synth"),
                 "--train", k["synth_train"], "--eval", k["synth_eval"], "--seed", 0)
    mc = _write_choice_task(ctx.path("data", "synth", "eval.jsonl"), ctx.path("data", "mc.jsonl"),
                            k["eval_examples"])
    gen = _write_continuation_task(heldout_docs, ctx.path("data", "continue.jsonl"),
                                   k["gen_examples"])
    with open(ctx.path("data", "clean.report.json"), encoding="utf-8") as f:
        cleaning = json.load(f)
    return {"documents_raw": raw_docs, "bytes_raw": raw_bytes, "documents_kept":
            len(train_docs) + len(heldout_docs), "documents_train": len(train_docs),
            "documents_heldout": len(heldout_docs), "heldout_bytes": len(heldout.encode("utf-8")),
            "cleaning": {key: cleaning[key] for key in cleaning
                         if isinstance(cleaning[key], (int, float))},
            "synthetic": {"task": TASK, "train": k["synth_train"], "eval": k["synth_eval"]},
            "mc_examples": mc, "continuation_examples": gen}


def _write_choice_task(eval_jsonl, out, limit):
    """Four-way multiple choice from held-out kv prompts: the right value, then the other
    values the prompt binds, then other digits; shuffled by a seeded generator."""
    rng = np.random.default_rng(0)
    rows = []
    with open(eval_jsonl, encoding="utf-8") as f:
        for line in f:
            messages = json.loads(line)["messages"]
            question, answer = messages[0]["content"], messages[-1]["content"]
            bound = [part.split("=")[1] for part in question.split(".")[0].split(", ")]
            others = [v for v in dict.fromkeys(bound) if v != answer]
            others += [str(d) for d in rng.permutation(10) if str(d) != answer and str(d) not in others]
            choices = [answer] + others[:3]
            order = rng.permutation(4)
            rows.append({"context": _chat_prompt_text(question), "choices":
                         [choices[i] for i in order], "label": int(np.argmax(order == 0))})
            if len(rows) == limit:
                break
    with atomic_write(out, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return len(rows)


def _chat_prompt_text(question):
    """The ChatML text of one user turn and the generation prompt (what encode_chat encodes)."""
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def _write_continuation_task(docs, out, limit, prompt_words=24, answer_words=16):
    """Held-out prose: the first words of a paragraph as the prompt, the next ones as the
    reference continuation (BLEU, ROUGE)."""
    rows = []
    for paragraph in (p for doc in docs for p in doc.split("\n\n")):
        words = paragraph.split()
        if len(words) >= prompt_words + answer_words:
            rows.append({"prompt": " ".join(words[:prompt_words]),
                         "answer": " ".join(words[prompt_words:prompt_words + answer_words])})
        if len(rows) == limit:
            break
    if not rows:
        raise LifecycleError("stage data: no held-out paragraph is long enough for the "
                             "continuation task; raise the corpus size")
    with atomic_write(out, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return len(rows)


# --- the training stages --------------------------------------------------------------------------

def stage_tokenizer(ctx):
    out = ctx.path("tokenizer", "tokenizer.bpe")
    ctx.microgpt("tokenizer", "tokenizer", "train", ctx.path("data", "tokenizer_text.txt"), "-o", out,
                 "--vocab-size", ctx.knobs["vocab"], "--no-progress")
    from .tokenizer import Tokenizer
    tokenizer = Tokenizer.load(out)
    with open(ctx.path("data", "heldout.txt"), encoding="utf-8") as f:
        text = f.read()
    ids = tokenizer.encode(text, allowed_special="all")
    return {"vocab_size": tokenizer.vocab_size, "tokens": len(ids),
            "heldout_bytes_per_token": round(len(text.encode("utf-8")) / max(len(ids), 1), 4)}


def _records(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _last(records, key):
    values = [r[key] for r in records if isinstance(r.get(key), (int, float))]
    return values[-1] if values else None


def _parameters(run_dir):
    from .finetune.sft import load_finetuned
    model, _, _ = load_finetuned(run_dir)
    return int(model.num_parameters())


def _train_result(run_dir, tokens=None):
    records = _records(run_dir)
    return {"run_dir": run_dir, "parameters": _parameters(run_dir),
            "tokens": tokens if tokens is not None else _last(records, "tokens"),
            "loss": _last(records, "loss"), "val_loss": _last(records, "val_loss")}


def stage_pretrain(ctx):
    k, run = ctx.knobs, ctx.path("pretrain", "run")
    steps = k["pretrain_steps"]
    ctx.microgpt("pretrain", "train", "--data", ctx.path("data", "train.jsonl"), "--tokenizer",
                 ctx.path("tokenizer", "tokenizer.bpe"), "--out-dir", run, "--family", "llama",
                 "--bias", "false", "--n-layer", k["n_layer"], "--n-head", k["n_head"],
                 "--n-embd", k["n_embd"], "--block-size", k["block"], "--batch-size", k["batch"],
                 "--max-steps", steps, "--lr", 6e-3, "--min-lr", 6e-4, "--corpus-bytes", 0,
                 "--eval-interval", max(steps // 4, 1), "--eval-batches", 8,
                 "--checkpoint-interval", steps, "--sample-interval", 0, "--num-samples", 1,
                 "--sample-tokens", 32, "--log-interval", max(steps // 40, 1),
                 "--device", ctx.device, "--progress", "false")
    return _train_result(run)


def stage_sft(ctx):
    k, run = ctx.knobs, ctx.path("sft", "run")
    steps = k["sft_steps"]
    ctx.microgpt("sft", "finetune", "sft", "--init-from", ctx.path("pretrain", "run"), "--data",
                 ctx.path("data", "synth", "train.jsonl"), "--val-data",
                 ctx.path("data", "synth", "eval.jsonl"), "--out-dir", run, "--block-size", 64,
                 "--batch-size", 16, "--max-steps", steps, "--lr", 1e-3,
                 "--eval-interval", max(steps // 4, 1), "--checkpoint-interval", steps,
                 "--log-interval", max(steps // 40, 1), "--num-samples", 0,
                 "--device", ctx.device, "--progress", "false")
    return _train_result(run)


def stage_reward(ctx):
    k = ctx.knobs
    sft, pairs, run = ctx.path("sft", "run"), ctx.path("reward", "pairs.jsonl"), ctx.path("reward", "run")
    ctx.microgpt("reward", "finetune", "pairs", "--init-from", sft, "--data",
                 ctx.path("data", "synth", "train.jsonl"), "--out", pairs, "--limit",
                 k["pair_prompts"], "--samples", 4, "--wrong-per-prompt", 2, "--perturbed", 1)
    ctx.microgpt("reward", "finetune", "reward", "--init-from", sft, "--data", pairs,
                 "--out-dir", run, "--lr", 1e-4)
    records = _records(run)
    return {"run_dir": run, "pairs": len(_read_jsonl(pairs)),
            "parameters": _parameters(run) + k["n_embd"] + 1,       # + the scalar head
            "loss": _last(records, "loss"), "pair_accuracy": _last(records, "val_accuracy")}


def stage_dpo(ctx):
    run = ctx.path("dpo", "run")
    ctx.microgpt("dpo", "finetune", "dpo", "--init-from", ctx.path("sft", "run"), "--data",
                 ctx.path("reward", "pairs.jsonl"), "--out-dir", run, "--beta", 0.1, "--lr", 1e-4,
                 "--max-steps", ctx.knobs["dpo_steps"])
    return _train_result(run)


def _rollout_tokens(run_dir, prompts, group=1):
    """Tokens the policy generated in its rollouts (the RL stages' "tokens")."""
    return int(sum(r.get("response_length", 0) * prompts * group for r in _records(run_dir)))


def stage_ppo(ctx):
    k, run = ctx.knobs, ctx.path("ppo", "run")
    ctx.microgpt("ppo", "finetune", "ppo", "--init-from", ctx.path("sft", "run"), "--data",
                 ctx.path("data", "synth", "train.jsonl"), "--reward-model",
                 ctx.path("reward", "run"), "--out-dir", run, "--iterations", k["ppo_iterations"],
                 "--prompts", k["rl_prompts"] * 2, "--lr", 1e-5)
    result = _train_result(run, _rollout_tokens(run, k["rl_prompts"] * 2))
    result["reward"] = _last(_records(run), "reward_mean")
    return result


def stage_grpo(ctx):
    k, run = ctx.knobs, ctx.path("grpo", "run")
    ctx.microgpt("grpo", "finetune", "grpo", "--init-from", ctx.path("sft", "run"), "--data",
                 ctx.path("data", "synth", "train.jsonl"), "--out-dir", run, "--iterations",
                 k["grpo_iterations"], "--prompts", k["rl_prompts"], "--group", 8, "--lr", 2e-4)
    result = _train_result(run, _rollout_tokens(run, k["rl_prompts"], 8))
    result["reward"] = _last(_records(run), "reward_mean")
    return result


# --- evaluation -----------------------------------------------------------------------------------

def evaluate_model(ctx, model_dir):
    """Every held-out score of one model: {metric: {value, se, chance, n}}, and its answers
    to SAMPLE_PROMPTS."""
    from .eval import bleu, metrics, runner
    from .eval.perplexity import perplexity
    from .eval.tasks import Task
    from .finetune.data import read_conversations
    from .finetune.evaluate import exact_match, replies
    from .finetune.sft import load_chat_model
    k = ctx.knobs
    model, tokenizer, _ = load_chat_model(model_dir, ctx.device)
    scores = {}
    with open(ctx.path("data", "heldout.txt"), encoding="utf-8") as f:
        text = f.read()
    ids = tokenizer.encode(text, allowed_special="all")
    ppl = perplexity(model, ids, tokenizer.eot_id, len(text.encode("utf-8")), None, 8)
    scores["perplexity"] = {"value": ppl["perplexity"], "se": None,
                            "chance": float(model.config.vocab_size), "n": ppl["tokens"],
                            "bits_per_byte": ppl["bits_per_byte"]}
    conversations, _ = read_conversations(ctx.path("data", "synth", "eval.jsonl"))
    conversations = conversations[:k["eval_examples"]]
    _, rows = exact_match(model, tokenizer, conversations, 8)
    hits = [float(metrics.exact_or_contains(got, [expected])) for _, expected, got in rows]
    scores["exact_match"] = {"value": float(np.mean(hits)), "se": metrics.bootstrap_se(hits),
                             "chance": 0.1, "n": len(hits)}
    tasks = [Task(name="mc", format="choice_jsonl", file=ctx.path("data", "mc.jsonl")),
             Task(name="continue_bleu", format="gen_jsonl", file=ctx.path("data", "continue.jsonl"),
                  metric="bleu", max_new_tokens=k["gen_tokens"], stop=["\n\n"]),
             Task(name="continue_rouge", format="gen_jsonl", file=ctx.path("data", "continue.jsonl"),
                  metric="rouge", max_new_tokens=k["gen_tokens"], stop=["\n\n"])]
    report = runner.evaluate(model, tokenizer, tasks, batch_size=16)
    mc = report["tasks"]["mc"]["metrics"]["acc"]
    scores["mc_acc"] = {"value": mc["micro"], "se": mc["se"], "chance": mc["chance"], "n": mc["n"]}
    records = report["tasks"]["continue_bleu"]["per_example"]
    completions = [r["completion"] for r in records]
    references = [r["target"][0] for r in records]
    value = report["tasks"]["continue_bleu"]["metrics"]["bleu"]["micro"]
    rng = np.random.default_rng(0)
    resampled = []
    for _ in range(200):                    # bootstrap over whole corpora, as BLEU is one
        pick = rng.integers(0, len(records), len(records))
        resampled.append(bleu.corpus_bleu([completions[i] for i in pick],
                                          [[references[i] for i in pick]]).score)
    scores["bleu"] = {"value": value, "se": float(np.std(resampled)), "chance": None,
                      "n": len(records)}
    rl = report["tasks"]["continue_rouge"]["metrics"]["rougeL"]
    scores["rougeL"] = {"value": rl["micro"], "se": rl["se"], "chance": None, "n": rl["n"]}
    answers = replies(model, tokenizer, [[{"role": "user", "content": p}] for p in SAMPLE_PROMPTS],
                      24)
    examples = [{"prompt": p["prompt"], "reference": p["answer"], "got": c}
                for p, c in zip(_read_jsonl(ctx.path("data", "continue.jsonl")), completions)][:2]
    return {"model": model_dir, "scores": scores, "samples": dict(zip(SAMPLE_PROMPTS, answers)),
            "continuations": examples}


def _read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def stage_eval(ctx):
    results = {}
    for stage in MODEL_STAGES:
        t0 = time.perf_counter()
        results[stage] = evaluate_model(ctx, ctx.path(stage, "run"))
        results[stage]["seconds"] = round(time.perf_counter() - t0, 2)
        write_json(ctx.path("eval", f"{stage}.json"), results[stage])
        ctx.log(f"  eval {stage}: " + _score_line(results[stage]["scores"]))
    ctx.peak_rss_mib = _self_rss_mib()
    return {"models": {s: r["scores"] for s, r in results.items()}}


def _self_rss_mib():
    import resource
    return _maxrss_mib(resource.getrusage(resource.RUSAGE_SELF))


def _score_line(scores):
    return ", ".join(f"{name} {s['value']:.4g}" for name, s in scores.items())


def stage_quantize(ctx):
    source = ctx.path("grpo", "run")
    out = {}
    for scheme in QUANTIZED:
        target = ctx.path("quantize", scheme)
        ctx.microgpt("quantize", "quantize", source, "--scheme", scheme, "--out", target)
        t0 = time.perf_counter()
        result = evaluate_model(ctx, target)
        result["seconds"] = round(time.perf_counter() - t0, 2)
        result["quantization"] = _quantization_info(target)
        write_json(ctx.path("quantize", f"{scheme}.json"), result)
        ctx.log(f"  eval grpo {scheme}: " + _score_line(result["scores"]))
        out[scheme] = {"scores": result["scores"], "quantization": result["quantization"]}
    ctx.peak_rss_mib = max(ctx.peak_rss_mib, _self_rss_mib())
    return {"source": source, "models": out}


def _quantization_info(target):
    from .train.checkpoint import resolve
    path = os.path.join(resolve(target), "quantization.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        info = json.load(f)
    return {k: v for k, v in info.items() if isinstance(v, (int, float, str))}


# --- serving --------------------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stage_serve(ctx, wait_s=120.0):
    try:
        import httpx
        import openai
        import uvicorn  # noqa: F401  (the server's; checked here, before it is started)
    except ImportError as exc:
        raise LifecycleError(f"stage serve needs {exc.name} (not installed); install the "
                             f"lifecycle extra: {EXTRA}") from None
    model_dir = ctx.path("quantize", "int8")
    port = free_port()
    command = ["serve", model_dir, "--port", str(port), "--model-name", "life", "--max-batch", "4",
               "--device", ctx.device]
    log_path = ctx.path("serve", "log.txt")
    ctx.commands.append("microgpt " + " ".join(command))
    answers = []
    with open(log_path, "a", encoding="utf-8") as log:
        proc = subprocess.Popen([sys.executable, "-m", "microgpt", *command], stdout=log,
                                stderr=subprocess.STDOUT, env=_child_env())
        try:
            base = f"http://127.0.0.1:{port}"
            deadline, started = time.monotonic() + wait_s, time.perf_counter()
            while True:
                if proc.poll() is not None:
                    raise LifecycleError(f"stage serve: the server exited with status "
                                         f"{proc.returncode}: {_last_line(log_path)}")
                try:
                    if httpx.get(base + "/health", timeout=2.0).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise LifecycleError(f"stage serve: no answer on {base}/health in "
                                         f"{wait_s:.0f} s (log: {log_path})")
                time.sleep(0.25)
            ready_s = time.perf_counter() - started
            client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0,
                                   timeout=120.0)
            for prompt in SAMPLE_PROMPTS[:ctx.knobs["serve_requests"]]:
                t0 = time.perf_counter()
                done = client.chat.completions.create(
                    model="life", messages=[{"role": "user", "content": prompt}],
                    max_tokens=16, temperature=0.0)
                answers.append({"prompt": prompt, "answer": done.choices[0].message.content,
                                "completion_tokens": done.usage.completion_tokens,
                                "seconds": round(time.perf_counter() - t0, 3)})
        except (openai.OpenAIError, httpx.HTTPError) as exc:
            raise LifecycleError(f"stage serve: a request failed: {exc} (log: {log_path})") from None
        finally:
            if proc.poll() is None:
                proc.terminate()
            _, status, usage = os.wait4(proc.pid, 0) if proc.returncode is None else (0, 0, None)
            if usage is not None:
                proc.returncode = os.waitstatus_to_exitcode(status)
                ctx.peak_rss_mib = _maxrss_mib(usage)
    return {"model": model_dir, "port": port, "ready_seconds": round(ready_s, 2),
            "requests": answers}


# --- the report card ------------------------------------------------------------------------------

def _fmt(value, digits=4):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _score_cell(score):
    if score is None:
        return "-"
    text = _fmt(score["value"])
    if score.get("se") is not None:
        text += f" ± {score['se']:.2g}"
    return text


SCORE_COLUMNS = ("perplexity", "exact_match", "mc_acc", "bleu", "rougeL")


def build_report(out_dir):
    """report.json's object: one row per stage from its result.json, the scores of each model
    from eval/ and quantize/ results files (the numbers are copied, never recomputed)."""
    rows, results = [], {stage: read_result(out_dir, stage) for stage in STAGES[:-1]}
    size = results["data"]["size"]
    evals = results["eval"]["models"]
    for stage in STAGES[:-1]:
        r = results[stage]
        rows.append({"stage": stage, "seconds": r["seconds"], "tokens": r.get("tokens"),
                     "parameters": r.get("parameters"), "peak_rss_mib": r["peak_rss_mib"],
                     "loss": r.get("loss"), "scores": evals.get(stage)})
    for scheme in QUANTIZED:
        q = results["quantize"]["models"][scheme]
        rows.append({"stage": f"grpo {scheme}", "seconds": None, "tokens": None,
                     "parameters": None, "peak_rss_mib": None, "loss": None,
                     "scores": q["scores"], "quantization": q["quantization"]})
    chance = {name: evals["pretrain"][name]["chance"] for name in SCORE_COLUMNS}
    samples = {}
    for stage in MODEL_STAGES:
        with open(os.path.join(out_dir, "eval", f"{stage}.json"), encoding="utf-8") as f:
            samples[stage] = json.load(f)["samples"]
    for scheme in QUANTIZED:
        with open(os.path.join(out_dir, "quantize", f"{scheme}.json"), encoding="utf-8") as f:
            samples[f"grpo {scheme}"] = json.load(f)["samples"]
    return {"size": size, "total_seconds": round(sum(r["seconds"] for r in results.values()), 1),
            "rows": rows, "chance": chance, "samples": samples,
            "reward_pair_accuracy": results["reward"].get("pair_accuracy"),
            "served": results["serve"]["requests"], "data": {
                k: results["data"][k] for k in ("documents_raw", "documents_kept",
                                                "documents_train", "documents_heldout")}}


def report_markdown(report, curves):
    lines = [f"# The whole life of a small LLM: report card ({report['size']} size)", "",
             f"Total {report['total_seconds']:.0f} s of stage time. Every model is scored on the "
             f"same held-out tasks: perplexity of held-out corpus text (lower is better), "
             f"greedy exact match on held-out `{TASK}` prompts, four-way multiple choice made "
             f"from them, BLEU and ROUGE-L of held-out text continuations; ± is a bootstrap "
             f"standard error. Small everything: read the scores as what each stage changed, "
             f"not as a capable model.", "",
             "| stage | time (s) | tokens | parameters | peak RSS (MiB) | loss | "
             + " | ".join(SCORE_COLUMNS) + " |",
             "|---" * (6 + len(SCORE_COLUMNS)) + "|"]
    for row in report["rows"]:
        scores = row["scores"] or {}
        lines.append(f"| {row['stage']} | {_fmt(row['seconds'])} | {_fmt(row['tokens'])} | "
                     f"{_fmt(row['parameters'])} | {_fmt(row['peak_rss_mib'])} | "
                     f"{_fmt(row['loss'])} | "
                     + " | ".join(_score_cell(scores.get(c)) for c in SCORE_COLUMNS) + " |")
    chance = report["chance"]
    lines += ["", "Chance: " + ", ".join(f"{c} {_fmt(chance[c])}" for c in SCORE_COLUMNS
                                          if chance[c] is not None)
              + " (perplexity: a uniform guess over the vocabulary). Reward model held-out pair "
              f"accuracy: {_fmt(report['reward_pair_accuracy'])} (chance 0.5).", "",
              "## Curves", ""]
    lines += [f"![{stage}]({os.path.basename(path)})" for stage, path in curves.items()]
    lines += ["", "## Sample answers (greedy, chat template)", ""]
    for prompt in SAMPLE_PROMPTS:
        lines += [f"**{prompt}**", "", "| model | answer |", "|---|---|"]
        for model, answers in report["samples"].items():
            lines.append(f"| {model} | {json.dumps(answers.get(prompt, ''))} |")
        lines.append("")
    lines += ["## Served (int8 GRPO model, openai client)", "", "| prompt | answer | seconds |",
              "|---|---|---|"]
    lines += [f"| {r['prompt']} | {json.dumps(r['answer'])} | {r['seconds']} |"
              for r in report["served"]]
    return "\n".join(lines) + "\n"


def stage_report(ctx):
    from .train.plot import plot_run
    curves = {}
    for stage in ("pretrain", "sft", "reward", "dpo", "ppo", "grpo"):
        out = ctx.path("report", f"{stage}.png")
        try:
            curves[stage] = plot_run(ctx.path(stage, "run"), out, title=f"{stage} ({ctx.size})")
        except MicrogptError as exc:
            ctx.log(f"  no {stage} curve: {exc}")
    report = build_report(ctx.out_dir)
    report["curves"] = {stage: os.path.basename(p) for stage, p in curves.items()}
    write_json(ctx.path("report", "report.json"), report)
    with atomic_write(ctx.path("report", "report.md"), "w", encoding="utf-8") as f:
        f.write(report_markdown(report, curves))
    return {"curves": sorted(curves)}


STAGE_FUNCTIONS = {"data": stage_data, "tokenizer": stage_tokenizer, "pretrain": stage_pretrain,
                   "sft": stage_sft, "reward": stage_reward, "dpo": stage_dpo, "ppo": stage_ppo,
                   "grpo": stage_grpo, "eval": stage_eval, "quantize": stage_quantize,
                   "serve": stage_serve, "report": stage_report}


def run(args):
    """`microgpt lifecycle` (cli.py parses)."""
    size = "tiny" if args.tiny else "quick" if args.quick else "full"
    report = run_lifecycle(args.out_dir, size, args.device, args.start)
    print(f"\n{report['size']} lifecycle: {report['total_seconds']:.0f} s of stage time")
    for row in report["rows"]:
        scores = row["scores"] or {}
        print(f"  {row['stage']:<10} {_fmt(row['seconds']):>8} s   "
              + "  ".join(f"{c} {_score_cell(scores.get(c))}" for c in SCORE_COLUMNS if c in scores))
    print(f"\nreport card: {os.path.join(args.out_dir, 'report', 'report.md')}")
    return 0
