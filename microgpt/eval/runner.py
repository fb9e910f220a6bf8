"""Run tasks on a model and write the report: every per-example score, then the summary.

    report = evaluate(model, tokenizer, tasks, batch_size=16)
    report["tasks"]["mmlu"]["metrics"]["acc"]["micro"];  markdown(report) -> the table

The report (JSON) holds, per task: the metrics (micro and, with subjects, macro and per
subject means; a bootstrap standard error; the chance level beside accuracies), the counts of
what was not scored as asked (prompts truncated from the left, examples skipped), and one
record per example (its prompt's source file:line, the log-likelihood of every choice or the
completion and what was extracted), so two runs can be diffed example by example.
"""
import sys
import time

from ..errors import ConfigError
from . import bleu, chrf, metrics, rouge, scoring, tasks as tasks_mod


class Progress:
    """One redrawn line on a terminal (nothing otherwise): "task  n/N examples  rate/s"."""

    def __init__(self, name, total, stream=None):
        self.name, self.total, self.done, self.start = name, total, 0, time.perf_counter()
        self.stream = stream if stream is not None else sys.stderr
        self.live = getattr(self.stream, "isatty", lambda: False)()

    def __call__(self, n):
        self.done += n
        if self.live:
            rate = self.done / max(time.perf_counter() - self.start, 1e-9)
            self.stream.write(f"\r{self.name}: {self.done}/{self.total} ({rate:.1f}/s)")
            self.stream.flush()

    def close(self):
        if self.live:
            self.stream.write("\n")


def load_examples(task):
    examples = tasks_mod.read_examples(task, task.file)
    if task.limit:
        examples = examples[:task.limit]
    if not examples:
        raise tasks_mod.TaskError(f"task {task.name!r}: {task.file} holds no examples")
    return examples


def run_choice_task(task, model, tokenizer, batch_size=16, truncate=True, progress=None):
    examples = load_examples(task)
    pool = tasks_mod.shot_pool(task, examples)
    requests, spans = [], []
    for ex in examples:
        context = tasks_mod.build_context(task, ex, tasks_mod.shots_for(task, pool, ex) if task.shots else [])
        first = len(requests)
        for choice in tasks_mod.choice_texts(task, ex):
            requests.append(scoring.encode_request(tokenizer, context, " " + choice))
        spans.append((context, first, len(requests)))
    scorer = scoring.Scorer(model, batch_size=batch_size, truncate=truncate)
    results = scorer.score(requests, progress)
    records, truncated = [], 0
    for ex, (context, a, b) in zip(examples, spans):
        rs = results[a:b]
        texts = tasks_mod.choice_texts(task, ex)
        pick, pick_norm = metrics.choose([r.logprob for r in rs], texts)
        truncated += int(any(r.truncated for r in rs))
        records.append({"source": ex.source, "subject": ex.subject, "context": context,
                        "label": ex.label,
                        "choices": texts, "logprobs": [r.logprob for r in rs],
                        "greedy": [r.greedy for r in rs], "pred": pick, "pred_norm": pick_norm,
                        "acc": float(pick == ex.label), "acc_norm": float(pick_norm == ex.label),
                        "truncated_tokens": max(r.truncated for r in rs)})
    return records, {"truncated": truncated, "forward_passes": scorer.passes}


def _fit_prompt(ids, room, truncate, where):
    if len(ids) <= room:
        return ids, 0
    if not truncate:
        raise ConfigError(f"{where}: the prompt has {len(ids)} tokens, more than the {room} the "
                          f"context leaves beside the answer; use fewer shots or allow left "
                          f"truncation")
    return ids[len(ids) - room:], len(ids) - room


def run_generate_task(task, model, tokenizer, batch_size=16, truncate=True, progress=None,
                      max_new_tokens=None):
    from ..inference.engine import Engine
    from ..inference.sampling import SamplingConfig
    examples = load_examples(task)
    pool = tasks_mod.shot_pool(task, examples)
    max_new = task.max_new_tokens if max_new_tokens is None else max_new_tokens
    stop = list(task.stop) + (list(tasks_mod.GSM8K_STOP) if task.format == "gsm8k_jsonl" else [])
    room = model.config.block_size - max_new
    if room < 1:
        raise ConfigError(f"task {task.name!r}: max_new_tokens={max_new} leaves no room for the "
                          f"prompt in the model's context of {model.config.block_size}")
    engine = Engine(model, tokenizer)
    prompts, truncated = [], 0
    for ex in examples:
        text = tasks_mod.build_context(task, ex, tasks_mod.shots_for(task, pool, ex) if task.shots else [])
        ids, cut = _fit_prompt(tokenizer.encode(text, allowed_special="all"), room, truncate, ex.source)
        truncated += int(cut > 0)
        prompts.append(ids or [tokenizer.eot_id])
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))       # batch by length
    completions = [None] * len(prompts)
    for s in range(0, len(order), batch_size):
        chunk = order[s:s + batch_size]
        outs = engine.generate([prompts[i] for i in chunk], max_new,
                               SamplingConfig(temperature=task.temperature), task.seed, stop=stop)
        for i, out in zip(chunk, outs):
            completions[i] = out.text
        if progress:
            progress(len(chunk))
    records = []
    for ex, text in zip(examples, completions):
        record = {"source": ex.source, "completion": text, "target": ex.target}
        if task.format == "gsm8k_jsonl":
            record.update(metrics.gsm8k_scores(text, ex.target[0]))
        elif task.metric in ("exact", "contains"):
            record[task.metric] = metrics.exact_or_contains(text, ex.target, task.metric == "contains")
        elif task.metric == "rouge":
            for name, score in rouge.rouge(ex.target[0], text, stem=True).items():
                record[name] = score.fmeasure
        records.append(record)
    extra = {"truncated": truncated}
    if task.format == "gen_jsonl" and task.metric in tasks_mod.CORPUS_METRICS:
        # sacrebleu's reference streams: stream j holds every example's j-th accepted answer
        width = max(len(e.target) for e in examples)
        streams = [[e.target[j] if j < len(e.target) else None for e in examples] for j in range(width)]
        corpus_score = bleu.corpus_bleu if task.metric == "bleu" else chrf.corpus_chrf
        extra[task.metric] = corpus_score(completions, streams).score
    return records, extra


def metric_names(task):
    if task.kind == "choice":
        return ["acc", "acc_norm"]
    if task.format == "gsm8k_jsonl":
        return ["exact_match_strict", "exact_match_flexible"]
    if task.metric == "rouge":
        return list(rouge.TYPES)
    return [] if task.metric in tasks_mod.CORPUS_METRICS else [task.metric]


def evaluate(model, tokenizer, task_list, batch_size=16, truncate=True, bootstrap=1000, seed=0,
             max_new_tokens=None, contamination=None):
    report = {"tasks": {}}
    for task in task_list:
        if task.name in report["tasks"]:
            raise tasks_mod.TaskError(f"two tasks are named {task.name!r}; give each its own name")
        t0 = time.perf_counter()
        examples_total = len(load_examples(task))
        progress = Progress(task.name, examples_total)
        if task.kind == "choice":
            records, extra = run_choice_task(task, model, tokenizer, batch_size, truncate)
            progress(len(records))
        else:
            records, extra = run_generate_task(task, model, tokenizer, batch_size, truncate,
                                               progress, max_new_tokens)
        progress.close()
        summary = metrics.summarize(records, metric_names(task), bootstrap, seed)
        for name in tasks_mod.CORPUS_METRICS:
            if name in extra:
                summary[name] = {"micro": extra.pop(name), "n": len(records)}
        entry = {"format": task.format, "file": task.file, "shots": task.shots,
                 "examples": len(records), "seconds": time.perf_counter() - t0,
                 "metrics": summary, **extra, "per_example": records}
        if contamination is not None:
            from .contamination import check
            texts = [ex.question + " " + " ".join(ex.choices + ex.target) for ex in load_examples(task)]
            entry["contamination"] = check(contamination, texts)
        report["tasks"][task.name] = entry
    return report


def markdown(report) -> str:
    """The summary as a markdown table: one row per task and metric."""
    lines = ["| task | metric | value | ± SE | chance | n | notes |", "|---|---|---|---|---|---|---|"]
    if "perplexity" in report:
        p = report["perplexity"]
        bpb = "" if p["bits_per_byte"] is None else f"{p['bits_per_byte']:.4f} bits/byte"
        lines.append(f"| perplexity ({p['file']}) | perplexity | {p['perplexity']:.4f} | | | "
                     f"{p['tokens']} | {p['nats_per_token']:.4f} nats/token {bpb}, stride "
                     f"{p['stride']} |")
    for name, t in report.get("tasks", {}).items():
        notes = []
        if t.get("truncated"):
            notes.append(f"{t['truncated']} prompts truncated")
        if "contamination" in t:
            c = t["contamination"]
            notes.append(f"{c['contaminated']}/{c['examples']} share a {c['ngram']}-gram "
                         f"with the corpus")
        for metric, m in t["metrics"].items():
            chance = f"{m['chance']:.3f}" if "chance" in m else ""
            se = f"{m['se']:.3f}" if "se" in m else ""
            value = f"{m['micro']:.2f}" if metric in tasks_mod.CORPUS_METRICS else f"{m['micro']:.4f}"
            macro = f", macro {m['macro']:.4f}" if "macro" in m else ""
            lines.append(f"| {name} | {metric} | {value}{macro} | {se} | {chance} | {m['n']} | "
                         f"{'; '.join(notes)} |")
    return "\n".join(lines) + "\n"
