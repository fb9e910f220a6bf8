/* bpe.c -- byte-level BPE in C: pre-tokenizer, encoder, chunk counter, trainer.
 *
 * The algorithm is explained in microgpt/tokenizer/train.py (training) and bpe.py
 * (encoding); this file is the fast inner loop. Chapters:
 *   1. hash tables: bytes -> int32 (bmap) and uint64 pair -> int32 (pmap), open addressing
 *   2. pre-tokenizer: the GPT-2 and GPT-4 (cl100k) split regexes as hand-written scanners
 *   3. encoder: per-chunk merging by rank (array scan for short chunks, heap for long ones
 *      so that a 1 MB chunk stays O(n log n)), with a per-call chunk -> ids cache
 *   4. counter: unique pre-tokens and their counts, fed block by block (streaming)
 *   5. trainer: pair counts with incremental updates and a lazy max-heap
 * No function keeps global state, so calls on different objects may run in parallel
 * threads (cffi releases the GIL); an encoder is read-only after construction.
 */
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

static uint64_t hash_bytes(const uint8_t *p, size_t n)
{
    uint64_t state = HASH_SEED;
    for (size_t i = 0; i < n; i++) state = hash_step(state, p[i]);
    return hash_final(state);
}

/* bmap: byte string -> int32 value. Keys live in a caller's buffer (`base`), stored as
   offsets so that the buffer may be reallocated. val < 0 marks an empty slot. */
typedef struct { uint64_t hash, off; uint32_t len; int32_t val; } bslot;
typedef struct { bslot *slots; size_t mask, size; } bmap;

static int bmap_init(bmap *m, size_t cap)
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

static int32_t bmap_get(const bmap *m, const uint8_t *base, const uint8_t *key, uint32_t len,
                        uint64_t h)
{
    for (size_t i = h & m->mask;; i = (i + 1) & m->mask) {
        const bslot *s = &m->slots[i];
        if (s->val < 0) return -1;
        if (s->hash == h && s->len == len && memcmp(base + s->off, key, len) == 0) return s->val;
    }
}

/* Insert a key known to be absent; grows at load 1/2. */
static int bmap_put(bmap *m, uint64_t off, uint32_t len, uint64_t h, int32_t val)
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

static int pmap_init(pmap *m, size_t cap)
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

static void pmap_free(pmap *m) { free(m->keys); free(m->vals); }

static inline int32_t pmap_get(const pmap *m, uint64_t key)
{
    for (size_t i = hash_final(key) & m->mask;; i = (i + 1) & m->mask) {
        if (m->vals[i] < 0) return -1;
        if (m->keys[i] == key) return m->vals[i];
    }
}

static int pmap_put(pmap *m, uint64_t key, int32_t val)
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

/* ---------------------------------------------------------------- 2. pre-tokenizer */

enum { C_L = 1, C_N = 2, C_WS = 4 };
enum { K_S = 1, K_T, K_R, K_E, K_V, K_M, K_L, K_D };

/* Decode the code point at s[i] (text is valid UTF-8 from Python; a truncated sequence
   is read as one byte so that nothing is read past the end). */
static inline uint32_t cp_at(const uint8_t *s, size_t n, size_t i, size_t *len)
{
    uint8_t c = s[i];
    if (c < 0x80) { *len = 1; return c; }
    size_t k = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
    if (i + k > n) { *len = 1; return 0xFFFD; }
    uint32_t cp = c & (0x3F >> (k - 1));
    for (size_t j = 1; j < k; j++) cp = (cp << 6) | (s[i + j] & 0x3F);
    *len = k;
    return cp > 0x10FFFF ? 0xFFFD : cp;
}

typedef struct { const uint8_t *cls; const uint8_t *s; size_t n; } scan;

static inline uint8_t cls_at(const scan *x, size_t i, uint32_t *cp, size_t *len)
{
    *cp = cp_at(x->s, x->n, i, len);
    return x->cls[*cp];
}

#define OTHER(c) (((c) & (C_L | C_N | C_WS)) == 0)

/* End of the run of characters starting at i whose class has any bit of `mask`. */
static size_t run_of(const scan *x, size_t i, uint8_t mask)
{
    uint32_t cp;
    size_t len;
    while (i < x->n && (cls_at(x, i, &cp, &len) & mask)) i += len;
    return i;
}

static size_t run_other(const scan *x, size_t i)
{
    uint32_t cp;
    size_t len;
    while (i < x->n && OTHER(cls_at(x, i, &cp, &len))) i += len;
    return i;
}

/* The whitespace alternatives shared by both patterns, at i (a \s character):
   both:        \s++$       -> a run that reaches the end of the text, whole
   GPT-4 only:  \s*[\r\n]   -> ends right after the last \r or \n of the run
   both:        \s+(?!\S)   -> the run less its last character, when that leaves one
                \s          -> the one character */
static size_t whitespace(const scan *x, size_t i, int newline_rule)
{
    size_t j = i, last_start = i, after_nl = 0, len;
    uint32_t cp;
    while (j < x->n && (cls_at(x, j, &cp, &len) & C_WS)) {
        last_start = j;
        j += len;
        if (cp == '\r' || cp == '\n') after_nl = j;
    }
    if (j == x->n) return j;
    if (newline_rule && after_nl) return after_nl;
    return last_start == i ? j : last_start;
}

/* GPT-4 / cl100k (possessive quantifiers never give back, so no backtracking is needed):
   '(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|
   \s++$|\s*[\r\n]|\s+(?!\S)|\s                                                            */
static size_t next_gpt4(const scan *x, size_t i)
{
    uint32_t cp, cp2;
    size_t len, len2, len3;
    uint8_t c = cls_at(x, i, &cp, &len);
    if (cp == '\'' && i + 1 < x->n) {
        uint8_t k = cls_at(x, i + 1, &cp2, &len2) >> 4;
        if (k == K_S || k == K_T || k == K_M || k == K_D) return i + 1 + len2;
        if ((k == K_R || k == K_V || k == K_L) && i + 1 + len2 < x->n) {
            uint8_t k3 = cls_at(x, i + 1 + len2, &cp2, &len3) >> 4;
            if (k3 == (k == K_L ? K_L : K_E)) return i + 1 + len2 + len3;
        }
    }
    if (c & C_L) return run_of(x, i, C_L);
    if (!(c & C_N) && cp != '\r' && cp != '\n' && i + len < x->n
        && (cls_at(x, i + len, &cp2, &len2) & C_L))
        return run_of(x, i + len, C_L);
    if (c & C_N) {
        size_t j = i;
        for (int k = 0; k < 3 && j < x->n && (cls_at(x, j, &cp2, &len2) & C_N); k++) j += len2;
        return j;
    }
    size_t j = i;
    if (cp == ' ' && i + 1 < x->n && OTHER(cls_at(x, i + 1, &cp2, &len2))) j = i + 1;
    if (j > i || OTHER(c)) {
        j = run_other(x, j);
        while (j < x->n && (x->s[j] == '\r' || x->s[j] == '\n')) j++;
        return j;
    }
    return whitespace(x, i, 1);
}

/* GPT-2:  '(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s */
static size_t next_gpt2(const scan *x, size_t i)
{
    const uint8_t *s = x->s;
    size_t n = x->n, len, len2;
    uint32_t cp, cp2;
    if (s[i] == '\'' && i + 1 < n) {
        uint8_t b = s[i + 1];
        if (b == 's' || b == 't' || b == 'm' || b == 'd') return i + 2;
        if (i + 2 < n && ((b == 'r' && s[i + 2] == 'e') || (b == 'v' && s[i + 2] == 'e')
                          || (b == 'l' && s[i + 2] == 'l')))
            return i + 3;
    }
    uint8_t c = cls_at(x, i, &cp, &len);
    size_t j = i;
    if (cp == ' ' && i + 1 < n) {
        c = cls_at(x, i + 1, &cp2, &len2);
        if (!(c & C_WS)) j = i + 1; else c = C_WS;
    }
    if (c & C_L) return run_of(x, j, C_L);
    if (c & C_N) return run_of(x, j, C_N);
    if (OTHER(c)) return run_other(x, j);
    return whitespace(x, i, 0);
}

static size_t next_chunk(const scan *x, int pattern, size_t i)
{
    return pattern == BPE_PATTERN_GPT2 ? next_gpt2(x, i) : next_gpt4(x, i);
}

int64_t bpe_split(const uint8_t *classes, int pattern, const char *text, size_t n,
                  int64_t *ends, size_t cap)
{
    if (pattern != BPE_PATTERN_GPT2 && pattern != BPE_PATTERN_GPT4) return -2;
    scan x = {classes, (const uint8_t *)text, n};
    size_t k = 0;
    for (size_t i = 0; i < n; k++) {
        if (k >= cap) return -2;
        i = next_chunk(&x, pattern, i);
        ends[k] = (int64_t)i;
    }
    return (int64_t)k;
}

/* ---------------------------------------------------------------- 3. encoder */

struct bpe_encoder {
    int32_t n_tokens;
    uint8_t *bytes;            /* token strings concatenated */
    int64_t *offsets;          /* token i = bytes[offsets[i]:offsets[i+1]] */
    bmap vocab;                /* bytes -> id */
    pmap pairs;                /* (left, right) -> id of left+right, when that is a token */
    int32_t byte_id[256];
    const uint8_t *classes;    /* borrowed; the Python owner keeps it alive */
    int pattern;
};

void bpe_encoder_free(bpe_encoder *e)
{
    if (!e) return;
    free(e->bytes);
    free(e->offsets);
    free(e->vocab.slots);
    pmap_free(&e->pairs);
    free(e);
}

/* Build the tables. The pair table holds every split of every token into two tokens:
   exactly the pairs tiktoken's rank lookup `ranks[piece[a_start:b_end]]` can find. */
bpe_encoder *bpe_encoder_new(const uint8_t *tokens, const int64_t *offsets, int32_t n_tokens,
                             const uint8_t *classes, int pattern)
{
    if (n_tokens < 256 || offsets[0] != 0) return NULL;
    bpe_encoder *e = calloc(1, sizeof(bpe_encoder));
    if (!e) return NULL;
    size_t total = (size_t)offsets[n_tokens];
    e->n_tokens = n_tokens;
    e->bytes = malloc(total ? total : 1);
    e->offsets = malloc((size_t)(n_tokens + 1) * sizeof(int64_t));
    e->classes = classes;
    e->pattern = pattern;
    if (!e->bytes || !e->offsets || bmap_init(&e->vocab, (size_t)n_tokens) < 0
        || pmap_init(&e->pairs, (size_t)n_tokens * 2) < 0) goto fail;
    memcpy(e->bytes, tokens, total);
    memcpy(e->offsets, offsets, (size_t)(n_tokens + 1) * sizeof(int64_t));
    for (int i = 0; i < 256; i++) e->byte_id[i] = -1;
    for (int32_t t = 0; t < n_tokens; t++) {
        int64_t off = offsets[t], len = offsets[t + 1] - off;
        if (len <= 0 || len > 0x7fffffff) goto fail;
        uint64_t h = hash_bytes(tokens + off, (size_t)len);
        if (bmap_get(&e->vocab, e->bytes, tokens + off, (uint32_t)len, h) >= 0) goto fail;
        if (bmap_put(&e->vocab, (uint64_t)off, (uint32_t)len, h, t) < 0) goto fail;
        if (len == 1) e->byte_id[tokens[off]] = t;
    }
    for (int i = 0; i < 256; i++) if (e->byte_id[i] < 0) goto fail;
    for (int32_t t = 0; t < n_tokens; t++) {       /* prefix hashes in one pass: O(len) */
        const uint8_t *p = e->bytes + offsets[t];  /* plus O(len) per prefix that is a token */
        uint32_t len = (uint32_t)(offsets[t + 1] - offsets[t]);
        uint64_t state = HASH_SEED;
        for (uint32_t k = 1; k < len; k++) {
            state = hash_step(state, p[k - 1]);
            int32_t a = bmap_get(&e->vocab, e->bytes, p, k, hash_final(state));
            int32_t b = a < 0 ? -1 : bmap_get(&e->vocab, e->bytes, p + k, len - k,
                                              hash_bytes(p + k, len - k));
            if (b >= 0 && pmap_put(&e->pairs, PAIR(a, b), t) < 0) goto fail;
        }
    }
    return e;
fail:
    bpe_encoder_free(e);
    return NULL;
}

/* Per-call scratch: merge buffers sized to the longest chunk seen, and the chunk cache
   (chunk bytes, which stay in the caller's text, -> a slice of `cached` ids). */
typedef struct {
    int32_t *ids, *rank, *prev, *next;
    uint64_t *heap;
    size_t cap;
    bmap cache;
    int32_t *cached;
    int64_t *cache_at;          /* value v of the cache -> cached[cache_at[v]:cache_at[v+1]] */
    size_t n_cached, cap_cached, n_entries, cap_entries;
} work;

#define NO_RANK 0x7fffffff
/* Up to SHORT_CHUNK bytes the O(n^2) array scan; longer chunks use the heap. Measured on
   3 MB of stdlib code (C call alone, 8192 ids): heap for every chunk 73 MB/s, 64: 106,
   1024: 117 (within noise of 64); 64 keeps the quadratic part small. */
#define SHORT_CHUNK 64
#define CACHE_MAX 256           /* longer chunks are rare: not cached */

static int work_reserve(work *w, size_t n)
{
    if (n <= w->cap) return 0;
    size_t c = n < 256 ? 256 : n;
    free(w->ids); free(w->rank); free(w->prev); free(w->next); free(w->heap);
    w->ids = malloc(c * sizeof(int32_t));
    w->rank = malloc(c * sizeof(int32_t));
    w->prev = malloc(c * sizeof(int32_t));
    w->next = malloc(c * sizeof(int32_t));
    w->heap = malloc(2 * c * sizeof(uint64_t));
    w->cap = (w->ids && w->rank && w->prev && w->next && w->heap) ? c : 0;
    return w->cap ? 0 : -1;
}

static void work_free(work *w)
{
    free(w->ids); free(w->rank); free(w->prev); free(w->next); free(w->heap);
    free(w->cache.slots); free(w->cached); free(w->cache_at);
}

static inline int32_t pair_rank(const bpe_encoder *e, int32_t a, int32_t b)
{
    int32_t r = pmap_get(&e->pairs, PAIR(a, b));
    return r < 0 ? NO_RANK : r;
}

/* Short chunks: keep ids[0..m) and rank[k] = rank of (ids[k], ids[k+1]); merge the lowest
   rank (leftmost on ties) until no pair has a rank -- tiktoken's loop, O(n^2). */
static size_t merge_short(const bpe_encoder *e, work *w, const uint8_t *s, size_t n, int32_t *out)
{
    int32_t *ids = w->ids, *rank = w->rank;
    size_t m = n;
    for (size_t k = 0; k < n; k++) ids[k] = e->byte_id[s[k]];
    for (size_t k = 0; k + 1 < n; k++) rank[k] = pair_rank(e, ids[k], ids[k + 1]);
    while (m > 1) {
        size_t best = 0;
        for (size_t k = 1; k + 1 < m; k++) if (rank[k] < rank[best]) best = k;
        if (rank[best] == NO_RANK) break;
        ids[best] = rank[best];
        memmove(ids + best + 1, ids + best + 2, (m - best - 2) * sizeof(int32_t));
        if (best + 2 < m)
            memmove(rank + best + 1, rank + best + 2, (m - best - 3) * sizeof(int32_t));
        m--;
        if (best > 0) rank[best - 1] = pair_rank(e, ids[best - 1], ids[best]);
        if (best + 1 < m) rank[best] = pair_rank(e, ids[best], ids[best + 1]);
    }
    memcpy(out, ids, m * sizeof(int32_t));
    return m;
}

static void heap_push(uint64_t *h, size_t *n, uint64_t v)
{
    size_t i = (*n)++;
    while (i > 0 && h[(i - 1) / 2] > v) { h[i] = h[(i - 1) / 2]; i = (i - 1) / 2; }
    h[i] = v;
}

static uint64_t heap_pop(uint64_t *h, size_t *n)
{
    uint64_t top = h[0], v = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && h[c + 1] < h[c]) c++;
        if (h[c] >= v) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = v;
    return top;
}

/* Long chunks: the same merges in O(n log n). Parts form a linked list indexed by their
   first byte; a min-heap holds (rank << 32 | position) of candidate pairs, so it pops the
   lowest rank and, among equal ranks, the leftmost -- the order of merge_short. An entry is
   stale when its part is gone or its pair changed; rank[] holds each part's current pair
   rank (a changed pair spans more bytes, hence has another rank), so staleness is one
   comparison. */
static size_t merge_long(const bpe_encoder *e, work *w, const uint8_t *s, size_t n, int32_t *out)
{
    int32_t *ids = w->ids, *rank = w->rank, *prev = w->prev, *next = w->next;
    uint64_t *heap = w->heap;
    size_t hn = 0, m = 0;
    for (size_t k = 0; k < n; k++) {
        ids[k] = e->byte_id[s[k]];
        prev[k] = (int32_t)k - 1;
        next[k] = k + 1 < n ? (int32_t)k + 1 : -1;
    }
    for (size_t k = 0; k < n; k++) {
        rank[k] = k + 1 < n ? pair_rank(e, ids[k], ids[k + 1]) : NO_RANK;
        if (rank[k] != NO_RANK) heap_push(heap, &hn, ((uint64_t)rank[k] << 32) | k);
    }
    while (hn > 0) {
        uint64_t top = heap_pop(heap, &hn);
        int32_t r = (int32_t)(top >> 32), p = (int32_t)(top & 0xffffffffu);
        if (ids[p] < 0 || rank[p] != r) continue;
        int32_t q = next[p];                      /* merge parts p and q into token r */
        ids[p] = r;
        ids[q] = -1;
        next[p] = next[q];
        if (next[q] >= 0) prev[next[q]] = p;
        rank[p] = next[p] >= 0 ? pair_rank(e, r, ids[next[p]]) : NO_RANK;
        if (rank[p] != NO_RANK) heap_push(heap, &hn, ((uint64_t)rank[p] << 32) | (uint32_t)p);
        int32_t o = prev[p];
        if (o >= 0) {
            rank[o] = pair_rank(e, ids[o], r);
            if (rank[o] != NO_RANK) heap_push(heap, &hn, ((uint64_t)rank[o] << 32) | (uint32_t)o);
        }
    }
    for (int32_t k = 0; k >= 0; k = next[k]) out[m++] = ids[k];
    return m;
}

/* Remember a chunk's ids; a failed allocation just skips caching. */
static void cache_put(work *w, const uint8_t *text, const uint8_t *s, uint32_t n, uint64_t h,
                      const int32_t *ids, size_t m)
{
    if (w->n_entries + 2 > w->cap_entries) {
        size_t c = w->cap_entries ? 2 * w->cap_entries : 1024;
        int64_t *p = realloc(w->cache_at, c * sizeof(int64_t));
        if (!p) return;
        w->cache_at = p;
        w->cap_entries = c;
        if (w->n_entries == 0) w->cache_at[0] = 0;
    }
    if (w->n_cached + m > w->cap_cached) {
        size_t c = w->cap_cached ? 2 * w->cap_cached : 4096;
        while (c < w->n_cached + m) c *= 2;
        int32_t *p = realloc(w->cached, c * sizeof(int32_t));
        if (!p) return;
        w->cached = p;
        w->cap_cached = c;
    }
    if (bmap_put(&w->cache, (uint64_t)(s - text), n, h, (int32_t)w->n_entries) < 0) return;
    memcpy(w->cached + w->n_cached, ids, m * sizeof(int32_t));
    w->n_cached += m;
    w->cache_at[++w->n_entries] = (int64_t)w->n_cached;
}

/* One pre-token s[0..n) of text -> ids written to out; returns their count or -1. */
static int64_t encode_chunk(const bpe_encoder *e, work *w, const uint8_t *text,
                            const uint8_t *s, size_t n, int32_t *out)
{
    if (n == 1) { out[0] = e->byte_id[s[0]]; return 1; }
    uint64_t h = hash_bytes(s, n);
    int32_t v = n <= 0xffffffffu ? bmap_get(&e->vocab, e->bytes, s, (uint32_t)n, h) : -1;
    if (v >= 0) { out[0] = v; return 1; }
    if (n <= CACHE_MAX) {
        v = bmap_get(&w->cache, text, s, (uint32_t)n, h);
        if (v >= 0) {
            int64_t a = w->cache_at[v], b = w->cache_at[v + 1];
            memcpy(out, w->cached + a, (size_t)(b - a) * sizeof(int32_t));
            return b - a;
        }
    }
    if (work_reserve(w, n) < 0) return -1;
    size_t m = n <= SHORT_CHUNK ? merge_short(e, w, s, n, out) : merge_long(e, w, s, n, out);
    if (n <= CACHE_MAX) cache_put(w, text, s, (uint32_t)n, h, out, m);
    return (int64_t)m;
}

static int64_t encode_all(const bpe_encoder *e, const char *text, size_t n, const int64_t *ends,
                          size_t n_chunks, int32_t *out)
{
    if (!e || (!ends && e->pattern == BPE_PATTERN_NONE)) return -2;
    const uint8_t *t = (const uint8_t *)text;
    scan x = {e->classes, t, n};
    work w = {0};
    if (bmap_init(&w.cache, 1024) < 0) return -1;
    int64_t m = 0;
    size_t start = 0;
    for (size_t k = 0; ends ? k < n_chunks : start < n; k++) {
        size_t end = ends ? (size_t)ends[k] : next_chunk(&x, e->pattern, start);
        if (end < start || end > n) { m = -2; break; }
        int64_t got = end > start ? encode_chunk(e, &w, t, t + start, end - start, out + m) : 0;
        if (got < 0) { m = got; break; }
        m += got;
        start = end;
    }
    work_free(&w);
    return m;
}

int64_t bpe_encode(const bpe_encoder *e, const char *text, size_t n, int32_t *out)
{
    return encode_all(e, text, n, NULL, 0, out);
}

int64_t bpe_encode_chunks(const bpe_encoder *e, const char *text, const int64_t *ends,
                          size_t n_chunks, int32_t *out)
{
    if (n_chunks && ends[n_chunks - 1] < 0) return -2;
    return encode_all(e, text, n_chunks ? (size_t)ends[n_chunks - 1] : 0, ends, n_chunks, out);
}

/* ---------------------------------------------------------------- 4. counter */

struct bpe_counter {
    bmap map;                  /* chunk bytes -> index */
    uint8_t *arena;            /* chunk i = arena[off[i]:off[i+1]], in order of first sight */
    int64_t *off, *counts;
    size_t n, cap, len, cap_len;
};

bpe_counter *bpe_counter_new(void)
{
    bpe_counter *c = calloc(1, sizeof(bpe_counter));
    if (!c) return NULL;
    c->off = malloc(sizeof(int64_t));
    if (!c->off || bmap_init(&c->map, 1 << 14) < 0) { bpe_counter_free(c); return NULL; }
    c->off[0] = 0;
    return c;
}

void bpe_counter_free(bpe_counter *c)
{
    if (!c) return;
    free(c->map.slots);
    free(c->arena);
    free(c->off);
    free(c->counts);
    free(c);
}

static int counter_add(bpe_counter *c, const uint8_t *s, size_t n)
{
    if (n == 0 || n > 0x7fffffff) return 0;
    uint64_t h = hash_bytes(s, n);
    int32_t v = bmap_get(&c->map, c->arena, s, (uint32_t)n, h);
    if (v >= 0) { c->counts[v]++; return 0; }
    if (c->n + 1 >= c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 1 << 14;
        int64_t *off = realloc(c->off, (cap + 1) * sizeof(int64_t));
        if (!off) return -1;
        c->off = off;
        int64_t *counts = realloc(c->counts, cap * sizeof(int64_t));
        if (!counts) return -1;
        c->counts = counts;
        c->cap = cap;
    }
    if (c->len + n > c->cap_len) {
        size_t cap = c->cap_len ? 2 * c->cap_len : 1 << 16;
        while (cap < c->len + n) cap *= 2;
        uint8_t *arena = realloc(c->arena, cap);
        if (!arena) return -1;
        c->arena = arena;
        c->cap_len = cap;
    }
    if (c->n >= 0x7fffffff || bmap_put(&c->map, c->len, (uint32_t)n, h, (int32_t)c->n) < 0)
        return -1;
    memcpy(c->arena + c->len, s, n);
    c->len += n;
    c->counts[c->n++] = 1;
    c->off[c->n] = (int64_t)c->len;
    return 0;
}

int64_t bpe_counter_add_text(bpe_counter *c, const uint8_t *classes, int pattern,
                             const char *text, size_t n)
{
    if (!c || (pattern != BPE_PATTERN_GPT2 && pattern != BPE_PATTERN_GPT4)) return -2;
    scan x = {classes, (const uint8_t *)text, n};
    for (size_t i = 0; i < n;) {
        size_t j = next_chunk(&x, pattern, i);
        if (counter_add(c, x.s + i, j - i) < 0) return -1;
        i = j;
    }
    return (int64_t)c->n;
}

int64_t bpe_counter_add_chunks(bpe_counter *c, const char *text, const int64_t *ends,
                               size_t n_chunks)
{
    if (!c) return -2;
    int64_t start = 0;
    for (size_t k = 0; k < n_chunks; k++) {
        if (ends[k] < start) return -2;
        if (counter_add(c, (const uint8_t *)text + start, (size_t)(ends[k] - start)) < 0) return -1;
        start = ends[k];
    }
    return (int64_t)c->n;
}

int64_t bpe_counter_size(const bpe_counter *c) { return c ? (int64_t)c->n : -2; }

/* ---------------------------------------------------------------- 5. trainer */

typedef struct {
    int32_t a, b;
    int64_t count;
    int32_t *occ;              /* words holding the pair (may repeat, may be stale) */
    int32_t n_occ, cap_occ, last_word, stamp;
    int banned;                /* its concatenation already is a token: never merged */
} pair_t;

typedef struct { int64_t count; int32_t a, b, pair; } hent;

struct bpe_trainer {
    int32_t n_words, step;
    int64_t *wcount, *woff;    /* word w = syms[woff[w]:woff[w] + wlen[w]], seen wcount times */
    int32_t *wlen, *syms, *wstamp;
    pair_t *pairs;
    int32_t n_pairs, cap_pairs;
    pmap index;                /* (a, b) -> pair */
    hent *heap;
    size_t hn, hcap;
    uint8_t *tb;               /* token bytes: token t = tb[toff[t]:toff[t+1]] */
    int64_t *toff;
    size_t tb_len, tb_cap;
    int32_t n_tok, cap_tok;
    bmap tset;                 /* token bytes -> id */
    int32_t *touched;          /* pairs whose count grew in this step */
    int32_t n_touched, cap_touched;
};

/* Max-heap order: higher count first; ties -> smaller (a, b). */
static inline int hbetter(const hent *x, const hent *y)
{
    if (x->count != y->count) return x->count > y->count;
    return x->a != y->a ? x->a < y->a : x->b < y->b;
}

static int hpush(bpe_trainer *t, int32_t p)
{
    if (t->hn == t->hcap) {
        size_t c = t->hcap ? 2 * t->hcap : 1024;
        hent *h = realloc(t->heap, c * sizeof(hent));
        if (!h) return -1;
        t->heap = h;
        t->hcap = c;
    }
    hent v = {t->pairs[p].count, t->pairs[p].a, t->pairs[p].b, p};
    size_t i = t->hn++;
    while (i > 0 && hbetter(&v, &t->heap[(i - 1) / 2])) {
        t->heap[i] = t->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    t->heap[i] = v;
    return 0;
}

static hent hpop(bpe_trainer *t)
{
    hent top = t->heap[0], v = t->heap[--t->hn];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= t->hn) break;
        if (c + 1 < t->hn && hbetter(&t->heap[c + 1], &t->heap[c])) c++;
        if (!hbetter(&t->heap[c], &v)) break;
        t->heap[i] = t->heap[c];
        i = c;
    }
    t->heap[i] = v;
    return top;
}

static int grow(void **p, int32_t *cap, size_t item, int32_t need)
{
    if (need <= *cap) return 0;
    int32_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *q = realloc(*p, (size_t)c * item);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}

/* count(x, y) += delta for word w; a growing pair remembers w and is marked touched. */
static int pair_add(bpe_trainer *t, int32_t x, int32_t y, int64_t delta, int32_t w)
{
    int32_t p = pmap_get(&t->index, PAIR(x, y));
    if (p < 0) {
        if (grow((void **)&t->pairs, &t->cap_pairs, sizeof(pair_t), t->n_pairs + 1) < 0) return -1;
        p = t->n_pairs++;
        t->pairs[p] = (pair_t){x, y, 0, NULL, 0, 0, -1, -1, 0};
        if (pmap_put(&t->index, PAIR(x, y), p) < 0) return -1;
    }
    pair_t *q = &t->pairs[p];
    q->count += delta;
    if (delta <= 0) return 0;
    if (q->last_word != w) {
        if (grow((void **)&q->occ, &q->cap_occ, sizeof(int32_t), q->n_occ + 1) < 0) return -1;
        q->occ[q->n_occ++] = w;
        q->last_word = w;
    }
    if (q->stamp != t->step) {
        q->stamp = t->step;
        if (grow((void **)&t->touched, &t->cap_touched, sizeof(int32_t), t->n_touched + 1) < 0)
            return -1;
        t->touched[t->n_touched++] = p;
    }
    return 0;
}

static int push_touched(bpe_trainer *t)
{
    for (int32_t k = 0; k < t->n_touched; k++)
        if (t->pairs[t->touched[k]].count > 0 && hpush(t, t->touched[k]) < 0) return -1;
    t->n_touched = 0;
    return 0;
}

void bpe_trainer_free(bpe_trainer *t)
{
    if (!t) return;
    for (int32_t p = 0; p < t->n_pairs; p++) free(t->pairs[p].occ);
    free(t->pairs); free(t->heap); free(t->tb); free(t->toff); free(t->touched);
    free(t->wcount); free(t->woff); free(t->wlen); free(t->syms); free(t->wstamp);
    free(t->tset.slots);
    pmap_free(&t->index);
    free(t);
}

bpe_trainer *bpe_trainer_new(const bpe_counter *c)
{
    if (!c) return NULL;
    bpe_trainer *t = calloc(1, sizeof(bpe_trainer));
    if (!t) return NULL;
    size_t n_syms = 0, n_words = 0;
    for (size_t i = 0; i < c->n; i++) {
        size_t len = (size_t)(c->off[i + 1] - c->off[i]);
        if (len >= 2) { n_words++; n_syms += len; }
    }
    t->wcount = malloc((n_words + 1) * sizeof(int64_t));
    t->woff = malloc((n_words + 1) * sizeof(int64_t));
    t->wlen = malloc((n_words + 1) * sizeof(int32_t));
    t->wstamp = calloc(n_words + 1, sizeof(int32_t));
    t->syms = malloc((n_syms + 1) * sizeof(int32_t));
    t->tb_cap = 1 << 16;
    t->tb = malloc(t->tb_cap);
    t->cap_tok = 1024;
    t->toff = malloc(((size_t)t->cap_tok + 1) * sizeof(int64_t));
    if (!t->wcount || !t->woff || !t->wlen || !t->wstamp || !t->syms || !t->tb || !t->toff
        || bmap_init(&t->tset, 1024) < 0 || pmap_init(&t->index, 1 << 16) < 0) goto fail;
    t->toff[0] = 0;                                  /* tokens 0..255: the single bytes */
    for (int b = 0; b < 256; b++) {
        t->tb[b] = (uint8_t)b;
        t->toff[b + 1] = b + 1;
        if (bmap_put(&t->tset, (uint64_t)b, 1, hash_bytes(t->tb + b, 1), b) < 0) goto fail;
    }
    t->tb_len = 256;
    t->n_tok = 256;
    size_t at = 0;
    for (size_t i = 0; i < c->n; i++) {              /* words, and their pairs counted once */
        const uint8_t *s = c->arena + c->off[i];
        size_t len = (size_t)(c->off[i + 1] - c->off[i]);
        if (len < 2) continue;
        int32_t w = t->n_words++;
        t->wcount[w] = c->counts[i];
        t->woff[w] = (int64_t)at;
        t->wlen[w] = (int32_t)len;
        for (size_t k = 0; k < len; k++) t->syms[at + k] = s[k];
        for (size_t k = 0; k + 1 < len; k++)
            if (pair_add(t, s[k], s[k + 1], c->counts[i], w) < 0) goto fail;
        at += len;
    }
    if (push_touched(t) < 0) goto fail;
    return t;
fail:
    bpe_trainer_free(t);
    return NULL;
}

/* Replace every non-overlapping (a, b) in word w, left to right, by z, and update the
   counts of the neighbouring pairs as we go (x a b y -> x z y):
       (a,b) -= c   (x,a) -= c   (x,z) += c   (b,y) -= c   (z,y) += c
   where x is the symbol already written to the left (possibly a z just made), so that
   runs like a b a b come out right. */
static int merge_word(bpe_trainer *t, int32_t w, int32_t a, int32_t b, int32_t z)
{
    int32_t *s = t->syms + t->woff[w], len = t->wlen[w], j = 0;
    int64_t c = t->wcount[w];
    for (int32_t i = 0; i < len;) {
        if (i + 1 < len && s[i] == a && s[i + 1] == b) {
            int32_t x = j > 0 ? s[j - 1] : -1, y = i + 2 < len ? s[i + 2] : -1;
            if (pair_add(t, a, b, -c, w) < 0) return -1;
            if (x >= 0 && (pair_add(t, x, a, -c, w) < 0 || pair_add(t, x, z, c, w) < 0)) return -1;
            if (y >= 0 && (pair_add(t, b, y, -c, w) < 0 || pair_add(t, z, y, c, w) < 0)) return -1;
            s[j++] = z;
            i += 2;
        } else {
            s[j++] = s[i++];
        }
    }
    t->wlen[w] = j;
    return 0;
}

/* The best pair by (count, then smallest (a, b)), skipping stale heap entries: an entry
   whose count is above the pair's current count is pushed again at the current count
   (counts only grow through pair_add, which pushes the grown pair itself). */
static int32_t pop_best(bpe_trainer *t)
{
    while (t->hn > 0) {
        hent e = hpop(t);
        const pair_t *q = &t->pairs[e.pair];
        if (q->banned || q->count <= 0) continue;
        if (q->count == e.count) return e.pair;
        if (q->count < e.count && hpush(t, e.pair) < 0) return -2;
    }
    return -1;
}

/* Make token z = a + b; returns 1 when made, 0 when the bytes already are a token (the pair
   is banned: two ids for one string would break rank-based encoding), -1 when out of memory. */
static int new_token(bpe_trainer *t, int32_t a, int32_t b)
{
    size_t la = (size_t)(t->toff[a + 1] - t->toff[a]), lb = (size_t)(t->toff[b + 1] - t->toff[b]);
    if (t->tb_len + la + lb > t->tb_cap) {
        size_t cap = 2 * t->tb_cap + la + lb;
        uint8_t *tb = realloc(t->tb, cap);
        if (!tb) return -1;
        t->tb = tb;
        t->tb_cap = cap;
    }
    if (grow((void **)&t->toff, &t->cap_tok, sizeof(int64_t), t->n_tok + 2) < 0) return -1;
    uint8_t *dst = t->tb + t->tb_len;
    memcpy(dst, t->tb + t->toff[a], la);
    memcpy(dst + la, t->tb + t->toff[b], lb);
    uint64_t h = hash_bytes(dst, la + lb);
    if (bmap_get(&t->tset, t->tb, dst, (uint32_t)(la + lb), h) >= 0) return 0;
    if (bmap_put(&t->tset, t->tb_len, (uint32_t)(la + lb), h, t->n_tok) < 0) return -1;
    t->tb_len += la + lb;
    t->toff[++t->n_tok] = (int64_t)t->tb_len;
    return 1;
}

int32_t bpe_trainer_step(bpe_trainer *t, int32_t max_merges, int32_t *pairs, int64_t *counts)
{
    if (!t || max_merges < 0) return -2;
    int32_t done = 0;
    while (done < max_merges) {
        int32_t p = pop_best(t);
        if (p == -2) return -1;
        if (p < 0) break;
        int32_t a = t->pairs[p].a, b = t->pairs[p].b;
        int64_t count = t->pairs[p].count;
        int made = new_token(t, a, b);
        if (made < 0) return -1;
        if (made == 0) { t->pairs[p].banned = 1; continue; }
        int32_t z = t->n_tok - 1, *occ = t->pairs[p].occ, n_occ = t->pairs[p].n_occ;
        t->pairs[p].occ = NULL;                      /* (a, b) gains no words from now on */
        t->pairs[p].n_occ = t->pairs[p].cap_occ = 0;
        t->step++;
        for (int32_t k = 0; k < n_occ; k++) {
            int32_t w = occ[k];
            if (t->wstamp[w] == t->step) continue;
            t->wstamp[w] = t->step;
            if (merge_word(t, w, a, b, z) < 0) { free(occ); return -1; }
        }
        free(occ);
        t->pairs[p].count = 0;
        if (push_touched(t) < 0) return -1;
        pairs[2 * done] = a;
        pairs[2 * done + 1] = b;
        counts[done] = count;
        done++;
    }
    return done;
}
