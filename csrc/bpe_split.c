/* bpe_split.c -- chapter 2, the pre-tokenizer: the GPT-2 and GPT-4 (cl100k) split regexes
 * as hand-written scanners over code-point classes.
 *
 * Part of the byte-level BPE core (overview: bpe.h; the algorithm in words:
 * microgpt/tokenizer/train.py and bpe.py). No function keeps global state, so calls on
 * different objects may run in parallel threads (cffi releases the GIL).
 */
#include "bpe_internal.h"

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

size_t next_chunk(const scan *x, int pattern, size_t i)
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
