/* bpe.h -- the C ABI of the byte-level BPE tokenizer (csrc/bpe_split.c, bpe_encode.c, bpe_train.c;
 * their shared internals in bpe_internal.h).
 *
 * Three objects, all opaque to Python:
 *   bpe_encoder  a vocabulary (token byte strings, id i = the i-th string) turned into two
 *                hash tables: bytes -> id and (left id, right id) -> rank of that merge.
 *                Encoding: split into pre-tokens, then within each pre-token repeatedly
 *                merge the adjacent pair of lowest rank (leftmost on ties). Two rules say
 *                which pairs merge, at what rank:
 *                tiktoken's (bpe_encoder_new): any two tokens whose concatenation is a
 *                  token, ranked by the id of that token (ids are ranks); a pre-token that
 *                  is itself a token is that token.
 *                Hugging Face's (bpe_encoder_new_merges): exactly the listed merges, rank
 *                  k for the k-th; optionally (HF's ignore_merges) the whole-token rule.
 *   bpe_counter  counts of unique pre-tokens (byte strings), fed text block by block.
 *   bpe_trainer  the merge loop over a counter's pre-tokens, with incremental pair counts.
 *
 * Patterns: BPE_PATTERN_GPT2 and BPE_PATTERN_GPT4 are pre-tokenized natively in C; with
 * BPE_PATTERN_NONE the caller splits (Python `regex`) and passes chunk end offsets.
 * `classes` is a 0x110000-byte table, one byte per code point (see patterns.py):
 *   bit 0 \p{L}, bit 1 \p{N}, bit 2 \s; high nibble: the case-insensitive contraction letter
 *   (1 s, 2 t, 3 r, 4 e, 5 v, 6 m, 7 l, 8 d).
 * Text is UTF-8. Every function returning int64_t/int32_t gives -1 when memory runs out,
 * -2 on invalid arguments. The cdef (between the markers) is read by bpe_build.py.
 */
#ifndef MICROGPT_BPE_H
#define MICROGPT_BPE_H
#include <stddef.h>
#include <stdint.h>

/* BEGIN CDEF */
#define BPE_PATTERN_NONE 0
#define BPE_PATTERN_GPT2 1
#define BPE_PATTERN_GPT4 2

typedef struct bpe_encoder bpe_encoder;
typedef struct bpe_counter bpe_counter;
typedef struct bpe_trainer bpe_trainer;

/* Split text into pre-tokens; writes chunk end offsets to ends (cap >= n suffices).
   Returns the number of chunks. */
int64_t bpe_split(const uint8_t *classes, int pattern, const char *text, size_t n,
                  int64_t *ends, size_t cap);

/* tokens: n_tokens byte strings concatenated, token i = tokens[offsets[i]:offsets[i+1]].
   All 256 single bytes must be present and no string repeated; NULL otherwise. */
bpe_encoder *bpe_encoder_new(const uint8_t *tokens, const int64_t *offsets, int32_t n_tokens,
                             const uint8_t *classes, int pattern);
void bpe_encoder_free(bpe_encoder *enc);
/* merges: n_merges triples (left id, right id, id of left+right), in rank order; no pair
   twice. whole_chunks: 1 = a pre-token that is a token encodes as that token unmerged. */
bpe_encoder *bpe_encoder_new_merges(const uint8_t *tokens, const int64_t *offsets,
                                    int32_t n_tokens, const int32_t *merges, int32_t n_merges,
                                    int whole_chunks, const uint8_t *classes, int pattern);
/* Encode text (pre-tokenized natively); out needs room for n ids. Returns the count. */
int64_t bpe_encode(const bpe_encoder *enc, const char *text, size_t n, int32_t *out);
/* Encode text already split by the caller: chunk k is text[ends[k-1]:ends[k]]. */
int64_t bpe_encode_chunks(const bpe_encoder *enc, const char *text, const int64_t *ends,
                          size_t n_chunks, int32_t *out);

bpe_counter *bpe_counter_new(void);
void bpe_counter_free(bpe_counter *counter);
int64_t bpe_counter_add_text(bpe_counter *counter, const uint8_t *classes, int pattern,
                             const char *text, size_t n);
int64_t bpe_counter_add_chunks(bpe_counter *counter, const char *text, const int64_t *ends,
                               size_t n_chunks);
int64_t bpe_counter_size(const bpe_counter *counter);

bpe_trainer *bpe_trainer_new(const bpe_counter *counter);
void bpe_trainer_free(bpe_trainer *trainer);
/* Up to max_merges merges; merge k writes (left, right) to pairs[2k], pairs[2k+1] and its
   count to counts[k]; the new token's id is 256 + (merges done so far). Returns the number
   done (0: no pair left). */
int32_t bpe_trainer_step(bpe_trainer *trainer, int32_t max_merges, int32_t *pairs,
                         int64_t *counts);
/* END CDEF */

#endif
