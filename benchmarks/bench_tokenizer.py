"""BPE training and encoding: microgpt's tokenizer vs HF `tokenizers` and tiktoken (Rust).

Corpus: the Python standard library's own .py sources on this machine (sorted, walked
from sysconfig's stdlib path, site-packages left out), concatenated up to ~10 MB
(--quick: ~1 MB). Nothing is downloaded.

Rows
  train -> 8192, GPT-2 split   ours vs HF ByteLevel BPE (its built-in GPT-2 regex), same
                               vocab size (8192 incl. 3 specials), same corpus; time.
  train -> 8192, GPT-4 split   ours vs HF with the same GPT-4 regex as a Split pre-tokenizer
                               followed by ByteLevel(use_regex=False); time.
  encode, 1 thread             each source file encoded in turn (MB/s). Against tiktoken the
                               vocabulary is ours (tiktoken.Encoding built from our ranks and
                               pattern, ids checked equal); against HF it is HF's own
                               tokenizer trained above (same corpus, same size).
  encode, all threads          the same files as one batch: our encode_batch (threads, GIL
                               released in C), tiktoken encode_ordinary_batch, HF encode_batch.

    python benchmarks/bench_tokenizer.py [--quick] [--json FILE]
"""
import os
import sys
import sysconfig

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness  # noqa: E402
from microgpt.tokenizer import GPT4_PATTERN, Tokenizer  # noqa: E402

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB = 8192


def stdlib_corpus(limit):
    """List of file texts from the stdlib, about `limit` UTF-8 bytes in all."""
    root = sysconfig.get_paths()["stdlib"]
    texts, size = [], 0
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in ("site-packages", "__pycache__"))
        for name in sorted(n for n in names if n.endswith(".py")):
            with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as f:
                texts.append(f.read())
            size += len(texts[-1].encode("utf-8"))
            if size >= limit:
                return texts, size
    return texts, size


def hf_trainer(texts, pattern):
    from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, \
        trainers
    tok = HFTokenizer(models.BPE())
    if pattern == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(GPT4_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())

    def train():
        tok.train_from_iterator(texts, trainer)
        return tok
    return train


def main():
    args = harness.parse_args(__doc__.splitlines()[0])
    import tiktoken
    texts, size = stdlib_corpus(1_000_000 if args.quick else 10_000_000)
    mb = size / 1e6
    print(f"corpus: {len(texts)} stdlib files, {mb:.2f} MB")
    repeats = 3
    cases, hf_trained = [], {}
    for pattern in ("gpt2", "gpt4"):
        hf = hf_trainer(texts, pattern)

        def ours_train(p=pattern):
            return Tokenizer.train(texts, VOCAB, pattern=p, special_tokens=SPECIALS,
                                   progress=False)

        def check(p=pattern, hf=hf):
            hf_trained[p] = hf()
            sizes = ours_train().vocab_size, hf_trained[p].get_vocab_size()
            if sizes != (VOCAB, VOCAB):
                raise AssertionError(f"vocabulary sizes (ours, HF) = {sizes}, not {VOCAB}")
        cases.append(harness.Case(f"train {mb:.0f} MB -> {VOCAB}, {pattern} split", ours_train,
                                  hf, peer_name="HF tokenizers", unit="ms", repeats=repeats,
                                  warmup=0, check=check))
    ours = Tokenizer.train(texts, VOCAB, pattern="gpt4", special_tokens=SPECIALS, progress=False)
    enc = tiktoken.Encoding(name="microgpt", pat_str=ours.pattern,
                            mergeable_ranks=ours.to_tiktoken_ranks(),
                            special_tokens=ours.special_tokens)
    hf_tok = hf_trainer(texts, "gpt4")()

    def check_tiktoken():
        for text in texts[:50]:
            if ours.encode_ordinary(text) != enc.encode_ordinary(text):
                raise AssertionError("encodings differ from tiktoken's on our ranks")
    threads = os.cpu_count()
    cases += [
        harness.Case("encode, 1 thread (vs tiktoken, our vocab)",
                     lambda: [ours.encode_ordinary(t) for t in texts],
                     lambda: [enc.encode_ordinary(t) for t in texts], peer_name="tiktoken",
                     unit="MB/s", work=mb, check=check_tiktoken, repeats=repeats),
        harness.Case(f"encode, {threads} threads (vs tiktoken)",
                     lambda: ours.encode_batch(texts, num_threads=threads),
                     lambda: enc.encode_ordinary_batch(texts, num_threads=threads),
                     peer_name="tiktoken", unit="MB/s", work=mb, repeats=repeats),
        harness.Case("encode, 1 thread (vs HF, its own vocab)",
                     lambda: [ours.encode_ordinary(t) for t in texts],
                     lambda: [hf_tok.encode(t, add_special_tokens=False) for t in texts],
                     peer_name="HF tokenizers", unit="MB/s", work=mb, repeats=repeats),
        harness.Case(f"encode, {threads} threads (vs HF)",
                     lambda: ours.encode_batch(texts, num_threads=threads),
                     lambda: hf_tok.encode_batch(texts, add_special_tokens=False),
                     peer_name="HF tokenizers", unit="MB/s", work=mb, repeats=repeats),
    ]
    harness.run_cases(cases, args, title=f"BPE tokenizer on {mb:.1f} MB of stdlib sources")


if __name__ == "__main__":
    main()
