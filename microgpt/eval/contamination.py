"""Contamination: how much of an evaluation set already appears in a training corpus.

    index = CorpusIndex.build(["data/corpus/"], n=13)
    index.overlap("some example text")  -> fraction of its word 13-grams found in the corpus

An example's n-grams are the data pipeline's shingles (data/dedup.py: lowercased \\w+ words,
n consecutive words hashed to 64 bits, the hash MinHash dedup uses), so "appears in the
corpus" means what near-duplicate removal means by it. The corpus index is the set of all
its shingle hashes (8 bytes per distinct n-gram; a 64-bit collision is ~n^2 / 2^65, none in
practice). An example counts as contaminated when any of its n-grams is in the corpus
(the GPT-3 paper's 13-gram rule, Brown et al. 2020, appendix C); the report gives that count
per task and each example's overlap fraction, so a stricter threshold can be read off.
"""
import numpy as np

from ..data.dedup import shingle_hashes
from ..data.sources import iter_documents


class CorpusIndex:
    def __init__(self, hashes: np.ndarray, n: int, documents: int):
        self.hashes, self.n, self.documents = np.unique(hashes), n, documents

    @classmethod
    def build(cls, paths, n=13):
        parts, count = [], 0
        for doc in iter_documents(paths):
            parts.append(shingle_hashes(doc.text.encode("utf-8"), n))
            count += 1
        hashes = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
        return cls(hashes, n, count)

    def overlap(self, text: str) -> float:
        """The fraction of the text's n-grams found in the corpus (0 for a text of no words)."""
        grams = shingle_hashes(text.encode("utf-8"), self.n)
        if len(grams) == 0 or len(self.hashes) == 0:
            return 0.0
        return float(np.isin(grams, self.hashes, assume_unique=False).mean())


def check(index: CorpusIndex, texts):
    """{"examples", "contaminated", "fraction", "overlaps"} for a list of example texts."""
    overlaps = [index.overlap(t) for t in texts]
    hit = sum(1 for o in overlaps if o > 0)
    return {"ngram": index.n, "examples": len(texts), "contaminated": hit,
            "fraction": hit / len(texts) if texts else 0.0, "overlaps": overlaps}
