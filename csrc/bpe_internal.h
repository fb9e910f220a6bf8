/* bpe_internal.h -- what the BPE chapters share (private: never seen by cffi).
 *
 * The open-addressing hash tables of chapter 1 (bytes -> int32 and uint64 pair -> int32),
 * as static inline functions so each chapter's file compiles its own copy, and the
 * pre-tokenizer's entry point `next_chunk`, defined in bpe_split.c.
 */
#ifndef MICROGPT_BPE_INTERNAL_H
#define MICROGPT_BPE_INTERNAL_H
#include "bpe.h"

#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- 1. hash tables */

/* FNV-1a, one byte at a time, then a finalizer for the low bits the tables use. Byte-wise
   so that the hashes of all prefixes of a string come in one pass (bpe_encoder_new). */
#define HASH_SEED 0xcbf29ce484222325ull
static inline uint64_t hash_step(uint64_t state, uint8_t byte)
{
    return (state ^ byte) * 0x100000001b3ull;
}

static inline uint64_t hash_final(uint64_t state)
{
    state ^= state >> 33;
    state *= 0xff51afd7ed558ccdull;
    return state ^ (state >> 33);
}

static inline uint64_t hash_bytes(const uint8_t *p, size_t n)
{
    uint64_t state = HASH_SEED;
    for (size_t i = 0; i < n; i++) state = hash_step(state, p[i]);
    return hash_final(state);
}

/* bmap: byte string -> int32 value. Keys live in a caller's buffer (`base`), stored as
   offsets so that the buffer may be reallocated. val < 0 marks an empty slot. */
typedef struct { uint64_t hash, off; uint32_t len; int32_t val; } bslot;
typedef struct { bslot *slots; size_t mask, size; } bmap;

static inline int bmap_init(bmap *m, size_t cap)
{
    size_t c = 16;
    while (c < 2 * cap) c <<= 1;
    m->slots = malloc(c * sizeof(bslot));
    if (!m->slots) return -1;
    for (size_t i = 0; i < c; i++) m->slots[i].val = -1;
    m->mask = c - 1;
    m->size = 0;
    return 0;
}

static inline int32_t bmap_get(const bmap *m, const uint8_t *base, const uint8_t *key, uint32_t len,
                        uint64_t h)
{
    for (size_t i = h & m->mask;; i = (i + 1) & m->mask) {
        const bslot *s = &m->slots[i];
        if (s->val < 0) return -1;
        if (s->hash == h && s->len == len && memcmp(base + s->off, key, len) == 0) return s->val;
    }
}

/* Insert a key known to be absent; grows at load 1/2. */
static inline int bmap_put(bmap *m, uint64_t off, uint32_t len, uint64_t h, int32_t val)
{
    if (2 * (m->size + 1) > m->mask + 1) {
        bmap bigger;
        if (bmap_init(&bigger, m->mask + 1) < 0) return -1;
        for (size_t i = 0; i <= m->mask; i++) {
            bslot s = m->slots[i];
            if (s.val < 0) continue;
            size_t j = s.hash & bigger.mask;
            while (bigger.slots[j].val >= 0) j = (j + 1) & bigger.mask;
            bigger.slots[j] = s;
        }
        bigger.size = m->size;
        free(m->slots);
        *m = bigger;
    }
    size_t i = h & m->mask;
    while (m->slots[i].val >= 0) i = (i + 1) & m->mask;
    m->slots[i] = (bslot){h, off, len, val};
    m->size++;
    return 0;
}

/* pmap: pair key (left << 32 | right) -> int32 value; val < 0 marks an empty slot. */
typedef struct { uint64_t *keys; int32_t *vals; size_t mask, size; } pmap;

static inline int pmap_init(pmap *m, size_t cap)
{
    size_t c = 16;
    while (c < 2 * cap) c <<= 1;
    m->keys = malloc(c * sizeof(uint64_t));
    m->vals = malloc(c * sizeof(int32_t));
    if (!m->keys || !m->vals) { free(m->keys); free(m->vals); return -1; }
    for (size_t i = 0; i < c; i++) m->vals[i] = -1;
    m->mask = c - 1;
    m->size = 0;
    return 0;
}

static inline void pmap_free(pmap *m) { free(m->keys); free(m->vals); }

static inline int32_t pmap_get(const pmap *m, uint64_t key)
{
    for (size_t i = hash_final(key) & m->mask;; i = (i + 1) & m->mask) {
        if (m->vals[i] < 0) return -1;
        if (m->keys[i] == key) return m->vals[i];
    }
}

static inline int pmap_put(pmap *m, uint64_t key, int32_t val)
{
    if (2 * (m->size + 1) > m->mask + 1) {
        pmap bigger;
        if (pmap_init(&bigger, m->mask + 1) < 0) return -1;
        for (size_t i = 0; i <= m->mask; i++) {
            if (m->vals[i] < 0) continue;
            size_t j = hash_final(m->keys[i]) & bigger.mask;
            while (bigger.vals[j] >= 0) j = (j + 1) & bigger.mask;
            bigger.keys[j] = m->keys[i];
            bigger.vals[j] = m->vals[i];
        }
        bigger.size = m->size;
        pmap_free(m);
        *m = bigger;
    }
    size_t i = hash_final(key) & m->mask;
    while (m->vals[i] >= 0) i = (i + 1) & m->mask;
    m->keys[i] = key;
    m->vals[i] = val;
    m->size++;
    return 0;
}

#define PAIR(a, b) (((uint64_t)(uint32_t)(a) << 32) | (uint32_t)(b))

/* The text being pre-tokenized: character classes by code point, the UTF-8 bytes, length. */
typedef struct { const uint8_t *cls; const uint8_t *s; size_t n; } scan;

/* The end of the chunk that starts at byte i (pattern: 0 GPT-2, 1 GPT-4); bpe_split.c. */
size_t next_chunk(const scan *x, int pattern, size_t i);

#endif /* MICROGPT_BPE_INTERNAL_H */
