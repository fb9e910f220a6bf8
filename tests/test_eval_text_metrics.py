"""BLEU, ROUGE and the Porter stemmer against sacrebleu, rouge-score and NLTK, to 1e-9, on
hypothesis-drawn sentence sets (unicode, empty hypotheses, repeated n-grams) and real text."""
import glob
import os
import re

import pytest
from hypothesis import given, settings, strategies as st

from microgpt.eval import bleu, porter, rouge

sacrebleu = pytest.importorskip("sacrebleu")
rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
nltk_porter = pytest.importorskip("nltk.stem.porter")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ["the", "cat", "sat", "on", "mat", "running", "runs", "generalization", "Ünïcödé",
         "naïve", "東京", "3.14", "1,000", "e.g.", "-", "&amp;", "(x)", "don't", "a-b", "",
         "hopefully", "ties", "skies", "agreed"]
sentence = st.lists(st.sampled_from(WORDS) | st.text(max_size=6), max_size=12).map(" ".join)


def real_lines(limit=400):
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    return [line for line in text.splitlines() if line.strip()][:limit]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(sentence, sentence, sentence), min_size=1, max_size=8))
def test_bleu_matches_sacrebleu(rows):
    hyps = [h for h, _, _ in rows]
    refs = [[r for _, r, _ in rows], [r for _, _, r in rows]]
    theirs = sacrebleu.corpus_bleu(hyps, refs)
    ours = bleu.corpus_bleu(hyps, refs)
    assert ours.score == pytest.approx(theirs.score, abs=1e-9)
    assert ours.sys_len == theirs.sys_len and ours.ref_len == theirs.ref_len
    assert ours.correct == list(theirs.counts) and ours.total == list(theirs.totals)


def test_bleu_on_real_text():
    lines = real_lines()
    hyps = [" ".join(reversed(line.split())) if i % 3 == 0 else line[: len(line) // 2]
            for i, line in enumerate(lines)]
    assert bleu.corpus_bleu(hyps, [lines]).score == pytest.approx(
        sacrebleu.corpus_bleu(hyps, [lines]).score, abs=1e-9)
    assert bleu.corpus_bleu(lines, [lines]).score == pytest.approx(100.0)
    assert bleu.corpus_bleu([""] * 3, [["a b c"] * 3]).score == 0.0


@pytest.mark.parametrize("stem", [False, True])
@settings(max_examples=80, deadline=None)
@given(target=sentence, prediction=sentence)
def test_rouge_matches_rouge_score(stem, target, prediction):
    scorer = rouge_scorer.RougeScorer(list(rouge.TYPES), use_stemmer=stem)
    theirs = scorer.score(target, prediction)
    ours = rouge.rouge(target, prediction, stem=stem)
    for name in rouge.TYPES:
        for field in ("precision", "recall", "fmeasure"):
            assert getattr(ours[name], field) == pytest.approx(getattr(theirs[name], field),
                                                               abs=1e-9), (name, field)


@pytest.mark.parametrize("stem", [False, True])
def test_rouge_on_real_text(stem):
    lines = real_lines(200)
    scorer = rouge_scorer.RougeScorer(list(rouge.TYPES), use_stemmer=stem)
    for target, prediction in zip(lines, lines[1:] + lines[:1]):
        theirs = scorer.score(target, prediction)
        ours = rouge.rouge(target, prediction, stem=stem)
        for name in rouge.TYPES:
            assert ours[name].fmeasure == pytest.approx(theirs[name].fmeasure, abs=1e-9)


def test_porter_equals_nltk_on_the_repository_vocabulary():
    words = set()
    for path in glob.glob(os.path.join(ROOT, "microgpt", "**", "*.py"), recursive=True) + [
            os.path.join(ROOT, "README.md")]:
        words |= set(re.findall(r"[a-z]+", open(path, encoding="utf-8").read().lower()))
    words |= {"skies", "dying", "ties", "cried", "generalizations", "hopefully", "logically",
              "formality", "agreed", "feed", "hopping", "filing", "yyy", "say", "by", "happy",
              "conditional", "archaeology", "innings", "fully", "allied", "tied", "news"}
    stemmer = nltk_porter.PorterStemmer()
    wrong = {w: (porter.stem(w), stemmer.stem(w)) for w in words if porter.stem(w) != stemmer.stem(w)}
    assert len(words) > 2000 and not wrong


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abcdefghiklmnoprstuvwyz", min_size=1, max_size=12))
def test_porter_equals_nltk_on_drawn_words(word):
    assert porter.stem(word) == nltk_porter.PorterStemmer().stem(word)


def test_13a_word_by_word_equals_sacrebleu_on_every_short_string():
    """bleu.Tokenizer13a applies the 13a rules to each whitespace-split word alone (they look
    at two neighbouring characters, whitespace counting as a non-digit) and keeps each word's
    tokens: every string of up to 5 characters over an alphabet that exercises each rule
    (digit before/after a period, comma and dash, punctuation, newline, tab, &) tokenizes as
    sacrebleu's whole-line tokenizer does, with a fresh cache and with one shared by all."""
    import itertools

    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
    theirs, shared = Tokenizer13a(), bleu.Tokenizer13a()
    for length in range(1, 6):
        for chars in itertools.product("a1.,- \n(&\t", repeat=length):
            line = "".join(chars)
            expected = theirs(line).split()
            assert bleu.tokenize_13a(line) == expected and shared(line) == expected, repr(line)
