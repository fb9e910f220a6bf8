"""Evaluation: perplexity, multiple-choice and generative benchmarks, BLEU, chrF and ROUGE.

    microgpt eval RUN --tasks mmlu_csv=data/mmlu/test --tasks gsm8k_jsonl=gsm8k/test.jsonl
    microgpt eval RUN --perplexity book.txt --stride 128
    microgpt eval score --hyp out.txt --ref ref.txt                 # BLEU / chrF / ROUGE of two files

    tasks.py          task definitions (TOML/JSON) and the readers of each public format
    scoring.py        log-likelihoods with the context's KV cache shared across choices
    perplexity.py     sliding-window perplexity and bits per byte
    metrics.py        acc, acc_norm, GSM8K extraction, bootstrap errors, averages
    bleu.py rouge.py  corpus BLEU (sacrebleu's defaults) and ROUGE-1/2/L (rouge-score's)
    chrf.py           corpus chrF / chrF++ (sacrebleu's CHRF)
    porter.py         the Porter stemmer ROUGE's stemming uses (NLTK's variant)
    contamination.py  n-gram overlap of an evaluation set with a training corpus
    runner.py         run tasks, build the JSON report and its markdown table

Every score is defined as the reference tool defines it (lm-eval, sacrebleu, rouge-score);
tests/test_eval_*.py check each against that tool on the same inputs.
"""
