/* bpe_encode.c -- chapter 3, the encoder: per-chunk merging by rank (an array scan for short
 * chunks, a heap for long ones so that a 1 MB chunk stays O(n log n)), with a per-call
 * chunk -> ids cache; an encoder is read-only after construction. One loop serves both
 * merge rules of bpe.h: it only ever asks "rank of this pair?" and "id that merge makes?".
 *
 * Part of the byte-level BPE core (overview: bpe.h; the algorithm in words:
 * microgpt/tokenizer/train.py and bpe.py). No function keeps global state, so calls on
 * different objects may run in parallel threads (cffi releases the GIL).
 */
#include "bpe_internal.h"

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
    /* The two merge rules (bpe.h). tiktoken's: the pair table holds every split of every
       token, its value is the rank of the concatenation, which is also its id, so merge_to
       is NULL and whole_chunks 1. Hugging Face's: the pair table holds exactly the listed
       merges, its value is the merge's rank k, merge_to[k] the id it makes. */
    int32_t *merge_to;
    int whole_chunks;          /* a chunk that is itself a token encodes as that token */
};

/* The id that merging a pair of rank r makes. */
static inline int32_t merged_id(const bpe_encoder *e, int32_t r)
{
    return e->merge_to ? e->merge_to[r] : r;
}

void bpe_encoder_free(bpe_encoder *e)
{
    if (!e) return;
    free(e->bytes);
    free(e->offsets);
    free(e->vocab.slots);
    pmap_free(&e->pairs);
    free(e->merge_to);
    free(e);
}

/* The tables both merge rules share: the token strings, bytes -> id, and the 256 byte ids;
   the pair table empty (sized for n_pairs). NULL if out of memory or the vocabulary is
   invalid (an empty or repeated string, a missing byte). */
static bpe_encoder *encoder_start(const uint8_t *tokens, const int64_t *offsets, int32_t n_tokens,
                                  size_t n_pairs, const uint8_t *classes, int pattern)
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
    e->whole_chunks = 1;
    if (!e->bytes || !e->offsets || bmap_init(&e->vocab, (size_t)n_tokens) < 0
        || pmap_init(&e->pairs, n_pairs) < 0) goto fail;
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
    return e;
fail:
    bpe_encoder_free(e);
    return NULL;
}

/* tiktoken's rule. The pair table holds every split of every token into two tokens:
   exactly the pairs tiktoken's rank lookup `ranks[piece[a_start:b_end]]` can find. */
bpe_encoder *bpe_encoder_new(const uint8_t *tokens, const int64_t *offsets, int32_t n_tokens,
                             const uint8_t *classes, int pattern)
{
    bpe_encoder *e = encoder_start(tokens, offsets, n_tokens, (size_t)n_tokens * 2, classes,
                                   pattern);
    if (!e) return NULL;
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

/* Hugging Face's rule: merge k joins (merges[3k], merges[3k+1]) into merges[3k+2], whose
   string must be the two strings concatenated; a pair may be listed once. */
bpe_encoder *bpe_encoder_new_merges(const uint8_t *tokens, const int64_t *offsets,
                                    int32_t n_tokens, const int32_t *merges, int32_t n_merges,
                                    int whole_chunks, const uint8_t *classes, int pattern)
{
    if (n_merges < 0) return NULL;
    bpe_encoder *e = encoder_start(tokens, offsets, n_tokens, (size_t)n_merges, classes, pattern);
    if (!e) return NULL;
    e->whole_chunks = whole_chunks != 0;
    e->merge_to = malloc((size_t)(n_merges ? n_merges : 1) * sizeof(int32_t));
    if (!e->merge_to) goto fail;
    for (int32_t k = 0; k < n_merges; k++) {
        int32_t a = merges[3 * k], b = merges[3 * k + 1], z = merges[3 * k + 2];
        if (a < 0 || b < 0 || z < 0 || a >= n_tokens || b >= n_tokens || z >= n_tokens) goto fail;
        int64_t la = offsets[a + 1] - offsets[a], lb = offsets[b + 1] - offsets[b];
        if (offsets[z + 1] - offsets[z] != la + lb
            || memcmp(e->bytes + offsets[z], e->bytes + offsets[a], (size_t)la) != 0
            || memcmp(e->bytes + offsets[z] + la, e->bytes + offsets[b], (size_t)lb) != 0
            || pmap_get(&e->pairs, PAIR(a, b)) >= 0
            || pmap_put(&e->pairs, PAIR(a, b), k) < 0) goto fail;
        e->merge_to[k] = z;
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
        ids[best] = merged_id(e, rank[best]);
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
        int32_t q = next[p], z = merged_id(e, r);  /* merge parts p and q into token z */
        ids[p] = z;
        ids[q] = -1;
        next[p] = next[q];
        if (next[q] >= 0) prev[next[q]] = p;
        rank[p] = next[p] >= 0 ? pair_rank(e, z, ids[next[p]]) : NO_RANK;
        if (rank[p] != NO_RANK) heap_push(heap, &hn, ((uint64_t)rank[p] << 32) | (uint32_t)p);
        int32_t o = prev[p];
        if (o >= 0) {
            rank[o] = pair_rank(e, ids[o], z);
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
    int32_t v = e->whole_chunks && n <= 0xffffffffu
                ? bmap_get(&e->vocab, e->bytes, s, (uint32_t)n, h) : -1;
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
