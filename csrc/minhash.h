/* minhash.h — the C ABI of the data pipeline's kernels: MinHash (microgpt/data/dedup.py)
 * and n-gram repetition statistics (microgpt/data/filters.py).
 *
 * MinHash definitions (the NumPy/Python specification is microgpt/data/dedup.py, *_reference):
 *   word      a maximal run of "word bytes" of the UTF-8 text: [0-9A-Za-z_] or any byte
 *             >= 0x80 (so every non-ASCII letter belongs to a word); A-Z are lowercased.
 *   word id   64-bit FNV-1a of the word's bytes.
 *   shingle   k consecutive words; its hash is h = 0; h = h * SHINGLE_MUL + id  (mod 2^64)
 *             over the k ids, then the splitmix64 finalizer. A document with 1 <= n < k
 *             words has one shingle of all n words; one with no words has none.
 *   signature sig[p] = min over shingles x of (uint32)((a[p] * x + b[p]) mod 2^64 >> 32),
 *             multiply-add-shift hashing (Dietzfelbinger 1996), a[p] odd; an empty document
 *             has sig[p] = 0xFFFFFFFF.
 * Sizes: D documents, P permutations, k shingle size. Outputs first, then inputs, then sizes.
 */
#ifndef MICROGPT_MINHASH_H
#define MICROGPT_MINHASH_H
#include <stdint.h>

/* BEGIN CDEF */
/* Shingle hashes of one document: writes min(count, cap) hashes, returns count. */
int64_t minhash_shingles(uint64_t *out, int64_t cap, const uint8_t *text, int64_t len,
                         int32_t shingle);
/* Signatures (D, P) of D documents packed in text; document d is text[offsets[d]:offsets[d+1]].
 * Returns 0, or -1 when scratch memory could not be allocated. */
int32_t minhash_signatures(uint32_t *sig, const uint8_t *text, const int64_t *offsets,
                           const uint64_t *a, const uint64_t *b,
                           int64_t D, int32_t P, int32_t shingle);
/* Word n-gram repetition statistics of one UTF-8 document, the Gopher rules of
 * microgpt/data/filters.py (its NumPy code is the specification). Words are maximal runs of
 * bytes other than ASCII whitespace (\t \n \v \f \r, 0x1c-0x1f, space), i.e. str.split()
 * on text without non-ASCII whitespace; a word's length counts characters (bytes that are
 * not UTF-8 continuation bytes); n-gram ids are g = g * MUL + fnv1a(word) (mod 2^64).
 *   top[j], n = 2 + j < 2 + n_top: count * chars of the most frequent n-gram (ties: the
 *          smallest id) / chars of all words, or 0 when no n-gram occurs twice;
 *   dup[j], n = 5 + j < 5 + n_dup: chars of words covered by a non-first occurrence of some
 *          n-gram / chars of all words.
 * Returns the number of words, or -1 when scratch memory could not be allocated. */
int64_t ngram_repetition(double *top, double *dup, const uint8_t *text, int64_t len,
                         int32_t n_top, int32_t n_dup);
/* END CDEF */

#endif
