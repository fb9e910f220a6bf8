/* minhash.c — the C parts of the data-cleaning pipeline (microgpt/data/).
 *
 * 1. MinHash for near-duplicate detection (dedup.py): one pass per document splits the UTF-8
 *    bytes into words (hashing each with FNV-1a as it is read), combines k consecutive word
 *    ids into a shingle hash, and folds every shingle into the P running minima. The P-wide
 *    min-update loop is the hot spot: with GCC on x86-64 it is compiled twice
 *    (target_clones), an AVX2 clone and a baseline one, chosen at load time.
 * 2. Word n-gram repetition statistics for the Gopher quality rules (filters.py): one
 *    open-addressing hash table of n-gram ids per n, counting occurrences and marking the
 *    words covered by repeated occurrences.
 * The definitions are in minhash.h; the Python specifications they are tested against are
 * dedup.py (shingle_hashes_reference, signatures_reference) and filters.py
 * (ngram_fractions_reference).
 */
#include <stdlib.h>
#include <string.h>
#include "minhash.h"

#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL
#define SHINGLE_MUL 0x9E3779B97F4A7C15ULL

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define MINHASH_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MINHASH_CLONES
#endif

static inline int is_word_byte(uint8_t c) {
    return c >= 0x80 || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
           (c >= 'A' && c <= 'Z') || c == '_';
}

/* splitmix64 finalizer: spreads every input bit over the 64 output bits. */
static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27; x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* Word ids of text into ids[]; returns the number of words. ids must hold len/2+1. */
static int64_t word_ids(uint64_t *ids, const uint8_t *text, int64_t len) {
    int64_t n = 0, i = 0;
    while (i < len) {
        while (i < len && !is_word_byte(text[i])) i++;
        if (i >= len) break;
        uint64_t h = FNV_OFFSET;
        while (i < len && is_word_byte(text[i])) {
            uint8_t c = text[i++];
            if (c >= 'A' && c <= 'Z') c += 32;
            h = (h ^ c) * FNV_PRIME;
        }
        ids[n++] = h;
    }
    return n;
}

/* Shingle hashes from word ids, in place (shingle i only reads ids[i .. i+k-1]). */
static int64_t shingles_from_ids(uint64_t *ids, int64_t n, int32_t k) {
    if (n == 0) return 0;
    int64_t m = n >= k ? n - k + 1 : 1;
    int64_t width = n >= k ? k : n;
    for (int64_t i = 0; i < m; i++) {
        uint64_t h = 0;
        for (int64_t j = 0; j < width; j++) h = h * SHINGLE_MUL + ids[i + j];
        ids[i] = mix64(h);
    }
    return m;
}

int64_t minhash_shingles(uint64_t *out, int64_t cap, const uint8_t *text, int64_t len,
                         int32_t shingle) {
    uint64_t *ids = malloc(sizeof(uint64_t) * (size_t)(len / 2 + 1));
    if (!ids) return -1;
    int64_t m = shingles_from_ids(ids, word_ids(ids, text, len), shingle);
    memcpy(out, ids, sizeof(uint64_t) * (size_t)(m < cap ? m : cap));
    free(ids);
    return m;
}

/* sig[p] = min(sig[p], hi32(a[p] * x + b[p])) for every shingle x. */
MINHASH_CLONES
static void fold_minima(uint32_t *restrict sig, const uint64_t *restrict xs, int64_t m,
                        const uint64_t *restrict a, const uint64_t *restrict b, int32_t P) {
    for (int64_t i = 0; i < m; i++) {
        uint64_t x = xs[i];
        for (int32_t p = 0; p < P; p++) {
            uint32_t v = (uint32_t)((a[p] * x + b[p]) >> 32);
            sig[p] = v < sig[p] ? v : sig[p];
        }
    }
}

int32_t minhash_signatures(uint32_t *sig, const uint8_t *text, const int64_t *offsets,
                           const uint64_t *a, const uint64_t *b,
                           int64_t D, int32_t P, int32_t shingle) {
    int64_t longest = 0;
    for (int64_t d = 0; d < D; d++) {
        int64_t len = offsets[d + 1] - offsets[d];
        if (len > longest) longest = len;
    }
    uint64_t *ids = malloc(sizeof(uint64_t) * (size_t)(longest / 2 + 1));
    if (!ids) return -1;
    for (int64_t d = 0; d < D; d++) {
        const uint8_t *doc = text + offsets[d];
        int64_t len = offsets[d + 1] - offsets[d];
        uint32_t *row = sig + d * (int64_t)P;
        for (int32_t p = 0; p < P; p++) row[p] = 0xFFFFFFFFu;
        int64_t m = shingles_from_ids(ids, word_ids(ids, doc, len), shingle);
        fold_minima(row, ids, m, a, b, P);
    }
    free(ids);
    return 0;
}

/* ---- word n-gram repetition statistics (the Gopher rules of data/filters.py) ---------- */

static inline int is_space_byte(uint8_t c) {
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}

/* Open-addressing table of n-gram ids: key, occurrences, first position. */
typedef struct { uint64_t key; int64_t count; int64_t first; } gram_slot;

static int64_t table_find(gram_slot *t, int64_t mask, uint64_t key) {
    int64_t i = (int64_t)(mix64(key) & (uint64_t)mask);
    while (t[i].count != 0 && t[i].key != key) i = (i + 1) & mask;
    return i;
}

int64_t ngram_repetition(double *top, double *dup, const uint8_t *text, int64_t len,
                         int32_t n_top, int32_t n_dup) {
    int64_t cap = len / 2 + 1, n = 0;
    uint64_t *ids = malloc(sizeof(uint64_t) * (size_t)cap);
    uint64_t *grams = malloc(sizeof(uint64_t) * (size_t)cap);
    int64_t *chars = malloc(sizeof(int64_t) * (size_t)(cap + 1));   /* prefix sums */
    int64_t *delta = malloc(sizeof(int64_t) * (size_t)(cap + 1));
    int64_t tsize = 1;
    while (tsize < 2 * cap) tsize <<= 1;
    gram_slot *table = malloc(sizeof(gram_slot) * (size_t)tsize);
    if (!ids || !grams || !chars || !delta || !table) {
        free(ids); free(grams); free(chars); free(delta); free(table);
        return -1;
    }
    chars[0] = 0;
    for (int64_t i = 0; i < len;) {                      /* words, ids, char lengths */
        while (i < len && is_space_byte(text[i])) i++;
        if (i >= len) break;
        uint64_t h = FNV_OFFSET;
        int64_t nchars = 0;
        while (i < len && !is_space_byte(text[i])) {
            uint8_t c = text[i++];
            h = (h ^ c) * FNV_PRIME;
            nchars += (c & 0xC0) != 0x80;
        }
        ids[n] = h;
        chars[n + 1] = chars[n] + nchars;
        n++;
    }
    int64_t total = chars[n];
    for (int32_t j = 0; j < n_top; j++) top[j] = 0.0;
    for (int32_t j = 0; j < n_dup; j++) dup[j] = 0.0;
    int32_t max_n = n_dup > 0 ? 4 + n_dup : 1 + n_top;
    for (int64_t i = 0; i < n; i++) grams[i] = ids[i];
    for (int32_t g = 2; g <= max_n && g <= n && total > 0; g++) {
        int64_t m = n - g + 1;                           /* n-grams of g words */
        for (int64_t i = 0; i < m; i++) grams[i] = grams[i] * SHINGLE_MUL + ids[i + g - 1];
        int is_top = g - 2 < n_top, is_dup = g >= 5 && g - 5 < n_dup;
        if (!is_top && !is_dup) continue;
        memset(table, 0, sizeof(gram_slot) * (size_t)tsize);
        memset(delta, 0, sizeof(int64_t) * (size_t)(n + 1));
        int64_t repeats = 0;
        for (int64_t i = 0; i < m; i++) {
            int64_t s = table_find(table, tsize - 1, grams[i]);
            if (table[s].count == 0) { table[s].key = grams[i]; table[s].first = i; }
            else { repeats++; delta[i]++; delta[i + g]--; }   /* words i .. i+g-1 covered */
            table[s].count++;
        }
        if (repeats == 0) break;                         /* none at larger g either */
        if (is_top) {
            int64_t best = -1;
            for (int64_t s = 0; s < tsize; s++) {
                if (table[s].count < 2) continue;
                if (best < 0 || table[s].count > table[best].count ||
                    (table[s].count == table[best].count && table[s].key < table[best].key))
                    best = s;
            }
            int64_t f = table[best].first;
            top[g - 2] = (double)table[best].count * (double)(chars[f + g] - chars[f]) /
                         (double)total;
        }
        if (is_dup) {
            int64_t run = 0, covered = 0;
            for (int64_t w = 0; w < n; w++) {
                run += delta[w];
                if (run > 0) covered += chars[w + 1] - chars[w];
            }
            dup[g - 5] = (double)covered / (double)total;
        }
    }
    free(ids); free(grams); free(chars); free(delta); free(table);
    return n;
}
