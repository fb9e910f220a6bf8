"""`microgpt eval`: load the model, run the tasks, print the table, write the reports."""
import json
import os

from ..errors import ConfigError
from ..fileio import atomic_write


def _read_lines(path):
    with open(path, encoding="utf-8") as f:
        return f.read().split("\n")[:-1] if os.path.getsize(path) else []


def run_score(args):
    """BLEU, chrF and ROUGE of two line-aligned files, no model."""
    from . import bleu, chrf, rouge
    if not args.hyp or not args.ref:
        raise ConfigError("eval score needs --hyp FILE and at least one --ref FILE")
    hyps = _read_lines(args.hyp)
    refs = [_read_lines(r) for r in args.ref]
    for path, stream in zip(args.ref, refs):
        if len(stream) != len(hyps):
            raise ConfigError(f"{path} has {len(stream)} lines but {args.hyp} has {len(hyps)}; "
                              f"the files must be line-aligned")
    result = {"bleu": bleu.corpus_bleu(hyps, refs).score, "chrf": chrf.corpus_chrf(hyps, refs).score,
              **{k: v for k, v in rouge.mean_rouge(refs[0], hyps, stem=args.stem).items()},
              "pairs": len(hyps), "stemmed": args.stem}
    print(f"BLEU {result['bleu']:.2f}   chrF {result['chrf']:.2f}   ROUGE-1 {result['rouge1']:.4f}   ROUGE-2 "
          f"{result['rouge2']:.4f}   ROUGE-L {result['rougeL']:.4f}   ({len(hyps)} pairs"
          f"{', stemmed' if args.stem else ''})")
    _write(args, result, None)
    return 0


def _write(args, report, table):
    if args.report:
        os.makedirs(os.path.dirname(os.path.abspath(args.report)), exist_ok=True)
        with atomic_write(args.report) as f:
            json.dump(report, f, indent=1)
    if args.markdown and table is not None:
        os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
        with atomic_write(args.markdown) as f:
            f.write(table)


def run(args):
    if args.run_dir == "score" and not os.path.isdir("score"):
        return run_score(args)
    from ..finetune.sft import load_finetuned   # a LoRA run: its adapter applied
    from ..train.checkpoint import resolve
    from . import runner, tasks as tasks_mod
    if not args.tasks and not args.perplexity:
        raise ConfigError("nothing to evaluate: give --tasks FORMAT=PATH (or a task file) and/or "
                          "--perplexity TEXT")
    task_list = []
    for text in args.tasks:
        for task in tasks_mod.parse_task_argument(text):
            if "=" in text and not text.endswith((".toml", ".json")):
                if args.shots is not None:
                    task.shots = args.shots
                task.dev = args.dev or task.dev
            if args.limit:
                task.limit = args.limit
            task_list.append(task)
    contamination = None
    if args.contamination:
        from .contamination import CorpusIndex
        contamination = CorpusIndex.build(args.contamination, n=args.ngram)
    for task in task_list:                   # every file read and checked before the model loads
        tasks_mod.shot_pool(task, runner.load_examples(task))
    checkpoint = resolve(args.run_dir)
    model, tokenizer, _ = load_finetuned(checkpoint, args.device)
    report = runner.evaluate(model, tokenizer, task_list, batch_size=args.batch_size,
                             truncate=not args.no_truncate, bootstrap=args.bootstrap,
                             max_new_tokens=args.max_new_tokens, contamination=contamination)
    report["model"] = checkpoint
    if args.perplexity:
        from .perplexity import perplexity
        with open(args.perplexity, encoding="utf-8") as f:
            text = f.read()
        ids = tokenizer.encode(text, allowed_special="all")
        result = perplexity(model, ids, tokenizer.eot_id, len(text.encode("utf-8")), args.stride,
                            args.batch_size)
        report["perplexity"] = {"file": args.perplexity, **result}
    table = runner.markdown(report)
    print(table, end="")
    _write(args, report, table)
    return 0
