"""Benchmark of the data-cleaning pipeline and of MinHash near-dup dedup against datasketch.

    python benchmarks/bench_data.py [--quick] [--json FILE] [--mb N]

Corpus (built at run time, deterministic): the Python standard library's .py sources found
on this machine (sysconfig's stdlib directory, site-packages excluded; if that is smaller
than the target size, .py files from site-packages fill it up), cut into documents of about
4 KB at blank lines, plus planted copies: for 8% of the documents a "near" copy with words
replaced until the true word-5-shingle Jaccard is in [0.90, 0.99], and for 4% a "far" copy
at Jaccard 0.30-0.55. The LSH threshold is 0.7 (128 permutations, 14 bands x 9 rows), where
banding finds a pair at J = 0.9 with probability 1 - (1 - 0.9^9)^14 = 0.999, so both
libraries should reach recall ~1 and the comparison is at equal recall. Each copy is inserted
after its original. The true Jaccard of every planted pair is computed exactly from the shingle sets.

Rows:
  minhash dedup    text -> keep/drop decisions. Ours: NearDedup (C shingling + signatures,
                   NumPy/dict LSH). Peer: datasketch MinHash + MinHashLSH at the SAME
                   num_perm, threshold and (bands, rows), shingles from the same word
                   definition, one MinHash per document, query then insert, as its docs show.
  whole pipeline   normalize, PII, boilerplate, quality rules, exact and near dedup over the
                   documents in memory (no file IO). Peer: the same stages with datasketch
                   in place of our near-dup stage.
Before timing, `check` runs both once and requires equal recall (within 1 point) on the
planted near copies; recall and the rate of far copies wrongly dropped are printed and
go into the JSON rows (extra keys).
"""
import contextlib
import io
import os
import random
import re
import sys
import sysconfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness

import numpy as np

from microgpt.data.dedup import DedupConfig, NearDedup, shingle_hashes
from microgpt.data.pipeline import CleanConfig, clean_documents
from microgpt.data.sources import Document

THRESHOLD, NUM_PERM, SHINGLE, SEED = 0.7, 128, 5, 1
_WORD = re.compile(rb"[0-9A-Za-z_\x80-\xff]+")


def source_files():
    stdlib = sysconfig.get_paths()["stdlib"]
    own, extra = [], []
    for dirpath, dirnames, filenames in os.walk(stdlib):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                (extra if "site-packages" in path else own).append(path)
    return own, extra


def chunks(text, size=4096):
    """Documents of about `size` characters, cut at blank lines."""
    out, cur, n = [], [], 0
    for block in text.split("\n\n"):
        cur.append(block)
        n += len(block) + 2
        if n >= size:
            out.append("\n\n".join(cur))
            cur, n = [], 0
    if cur:
        out.append("\n\n".join(cur))
    return out


def jaccard(x, y):
    a = set(shingle_hashes(x.encode(), SHINGLE).tolist())
    b = set(shingle_hashes(y.encode(), SHINGLE).tolist())
    return len(a & b) / max(len(a | b), 1)


def mutate(text, rnd, lo, hi):
    """A copy whose shingle Jaccard with text lies in [lo, hi], by replacing tokens."""
    tokens = text.split(" ")
    for _ in range(12):
        out = list(tokens)
        target = rnd.uniform(lo, hi)
        frac = (1 - target) / (SHINGLE * (1 + target))      # J = (S-mk)/(S+mk) => m/S
        for pos in rnd.sample(range(len(out)), max(1, int(frac * len(out)))):
            out[pos] = f"zz{rnd.randrange(10 ** 9)}"
        copy = " ".join(out)
        j = jaccard(text, copy)
        if lo <= j <= hi:
            return copy, j
    return None, None


def build_corpus(megabytes, seed=0):
    own, extra = source_files()
    docs, total = [], 0
    for path in own + extra:
        if total >= megabytes * 1e6 / 1.1:
            break
        with open(path, encoding="utf-8", errors="replace") as f:
            for chunk in chunks(f.read()):
                if len(chunk.split()) >= 60:
                    docs.append(Document(chunk, path))
                    total += len(chunk.encode())
    rnd = random.Random(seed)
    out, near, far = [], [], []       # near/far: (index in out, true Jaccard)
    for doc in docs:
        out.append(doc)
        roll = rnd.random()
        kind = "near" if roll < 0.08 else "far" if roll < 0.12 else None
        if kind:
            lo, hi = (0.9, 0.99) if kind == "near" else (0.3, 0.55)
            copy, j = mutate(doc.text, rnd, lo, hi)
            if copy is not None:
                (near if kind == "near" else far).append((len(out), j))
                out.append(Document(copy, doc.source + ":planted"))
    return out, near, far


def ours_dedup(docs, batch=256):
    near = NearDedup(DedupConfig(threshold=THRESHOLD, num_perm=NUM_PERM, shingle=SHINGLE,
                                 seed=SEED))
    keep = []
    for i in range(0, len(docs), batch):
        keep.extend(t is None for t in near.check_batch([d.text for d in docs[i:i + batch]]))
    return keep


def datasketch_dedup(docs, bands, rows):
    from datasketch import MinHash, MinHashLSH
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM, params=(bands, rows))
    keep = []
    for i, doc in enumerate(docs):
        words = _WORD.findall(doc.text.encode("utf-8", "surrogatepass").lower())
        k = min(SHINGLE, len(words))
        shingles = [b" ".join(words[j:j + k]) for j in range(max(len(words) - SHINGLE + 1, 1))] \
            if words else []
        m = MinHash(num_perm=NUM_PERM, seed=SEED)
        m.update_batch(shingles)
        if shingles and lsh.query(m):
            keep.append(False)
        else:
            keep.append(True)
            if shingles:
                lsh.insert(i, m)
    return keep


def quality(keep, near, far):
    recall = np.mean([not keep[i] for i, _ in near]) if near else float("nan")
    far_dropped = np.mean([not keep[i] for i, _ in far]) if far else float("nan")
    return recall, far_dropped


def pipeline_ours(docs):
    return sum(1 for _ in clean_documents(iter(docs), CleanConfig(progress=False)))


def pipeline_peer(docs, bands, rows):
    cfg = CleanConfig(progress=False, dedup=DedupConfig(near=False))
    kept = [Document(text, d.source) for text, d in clean_documents(iter(docs), cfg)]
    return sum(datasketch_dedup(kept, bands, rows))


def main():
    args = harness.parse_args(__doc__.splitlines()[0], extra=lambda p: p.add_argument(
        "--mb", type=float, help="corpus size in MB (default 100, --quick 5)"))
    megabytes = args.mb or (5 if args.quick else 100)
    docs, near, far = build_corpus(megabytes)
    size = sum(len(d.text.encode("utf-8", "surrogatepass")) for d in docs)
    print(f"corpus: {len(docs)} documents, {size / 1e6:.1f} MB, planted {len(near)} near "
          f"(J {min(j for _, j in near):.2f}-{max(j for _, j in near):.2f}) and {len(far)} far "
          f"(J {min(j for _, j in far):.2f}-{max(j for _, j in far):.2f}) copies")
    probe = NearDedup(DedupConfig(threshold=THRESHOLD, num_perm=NUM_PERM))
    bands, rows = probe.bands, probe.rows
    print(f"MinHash: num_perm {NUM_PERM}, shingle {SHINGLE} words, threshold {THRESHOLD}, "
          f"bands {bands} x rows {rows} (both libraries)")
    stats = {}

    def check():
        ours, peer = ours_dedup(docs), datasketch_dedup(docs, bands, rows)
        stats["ours"], stats["peer"] = quality(ours, near, far), quality(peer, near, far)
        stats["agree"] = float(np.mean(np.array(ours) == np.array(peer)))
        for who in ("ours", "peer"):
            print(f"  {who}: recall on planted near copies {stats[who][0]:.4f}, "
                  f"far copies dropped {stats[who][1]:.4f}")
        print(f"  keep/drop decisions identical on {stats['agree']:.4f} of documents")
        if abs(stats["ours"][0] - stats["peer"][0]) > 0.01:
            raise AssertionError(f"recall differs: ours {stats['ours'][0]:.4f}, "
                                 f"datasketch {stats['peer'][0]:.4f}")

    reps = dict(repeats=3, warmup=1) if args.quick else dict(repeats=2, warmup=0)
    cases = [
        harness.Case(f"minhash dedup {size / 1e6:.0f} MB", lambda: ours_dedup(docs),
                     lambda: datasketch_dedup(docs, bands, rows), "datasketch", "MB/s",
                     size / 1e6, check=check, **reps),
        harness.Case(f"whole pipeline {size / 1e6:.0f} MB", lambda: pipeline_ours(docs),
                     lambda: pipeline_peer(docs, bands, rows), "ours+datasketch", "MB/s",
                     size / 1e6, **reps),
    ]
    rows_out = harness.run_cases(cases, args, title="data cleaning (MB/s, higher is better)")
    rows_out[0].update(recall_ours=stats["ours"][0], recall_peer=stats["peer"][0],
                       far_dropped_ours=stats["ours"][1], far_dropped_peer=stats["peer"][1],
                       decisions_agree=stats["agree"], documents=len(docs),
                       planted_near=len(near), planted_far=len(far), bands=bands, rows=rows)
    if args.json:             # rewrite the JSON with the extra keys; the table is printed
        with contextlib.redirect_stdout(io.StringIO()):
            harness.report(rows_out, args, title="data cleaning (MB/s, higher is better)")


if __name__ == "__main__":
    main()
