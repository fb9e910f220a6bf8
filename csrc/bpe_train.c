/* bpe_train.c -- chapters 4 and 5: the counter of unique pre-tokens (fed block by block,
 * so corpora larger than memory stream through it) and the trainer (pair counts with
 * incremental updates and a lazy max-heap).
 *
 * Part of the byte-level BPE core (overview: bpe.h; the algorithm in words:
 * microgpt/tokenizer/train.py and bpe.py). No function keeps global state, so calls on
 * different objects may run in parallel threads (cffi releases the GIL).
 */
#include "bpe_internal.h"

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
