/*
 * attention_kernel.h — the body of csrc/attention.c, compiled once per instruction set.
 *
 * attention.c includes this file three times, each time under `#pragma GCC target(...)` and
 * with ISA (a name suffix), VW (floats per vector) and MR x NV (the register tile: MR rows by
 * NV vectors) defined: AVX-512 (VW 16, 8 x 2), AVX2+FMA (8, 4 x 2), the baseline (4, 4 x 2).
 * Every vector is the hardware's own width, so GCC never splits one. The code below uses plain
 * names (vload, tile, fwd_head ...); the #defines right here give each copy its own suffix
 * (vload_avx2 ...), and the end of the file undoes them. No include guard, on purpose.
 * Shapes: see attention.c (W query lanes per block, BC keys per block, HP padded head size).
 */
#define ISA_CAT2(a, b) a##_##b
#define ISA_CAT(a, b) ISA_CAT2(a, b)
#define vf ISA_CAT(vf, ISA)
#define vi ISA_CAT(vi, ISA)
#define vu ISA_CAT(vu, ISA)
#define rows_t ISA_CAT(rows_t, ISA)
#define vload ISA_CAT(vload, ISA)
#define seg_lanes ISA_CAT(seg_lanes, ISA)
#define vstore ISA_CAT(vstore, ISA)
#define vselect ISA_CAT(vselect, ISA)
#define vmax ISA_CAT(vmax, ISA)
#define vexp2 ISA_CAT(vexp2, ISA)
#define tile ISA_CAT(tile, ISA)
#define part ISA_CAT(part, ISA)
#define gemm ISA_CAT(gemm, ISA)
#define pack_rows ISA_CAT(pack_rows, ISA)
#define block_at ISA_CAT(block_at, ISA)
#define transpose ISA_CAT(transpose, ISA)
#define pack_panels_t ISA_CAT(pack_panels_t, ISA)
#define row_dots ISA_CAT(row_dots, ISA)
#define lanes ISA_CAT(lanes, ISA)
#define fwd_head ISA_CAT(fwd_head, ISA)
#define fwd_rows ISA_CAT(fwd_rows, ISA)
#define bwd_group ISA_CAT(bwd_group, ISA)

typedef float vf __attribute__((vector_size(4 * VW)));
typedef int vi __attribute__((vector_size(4 * VW)));
typedef unsigned int vu __attribute__((vector_size(4 * VW)));
typedef float ISA_CAT(vfu, ISA) __attribute__((vector_size(4 * VW), aligned(4), may_alias));

/* ---- vector helpers: unaligned memory, lane selects, exp2 ------------------------------------ */

AI vf vload(const float *p) { return *(const ISA_CAT(vfu, ISA) *)p; }
AI void vstore(float *p, vf v) { *(ISA_CAT(vfu, ISA) *)p = v; }

/* Document masking: the segment ids of queries i .. i + VW - 1 as lanes; queries past the
 * last one (padding lanes, whose results are dropped) repeat the last id. */
AI vi seg_lanes(const int32_t *seg, size_t i, size_t n)
{
    vi ids;
    for (int lane = 0; lane < VW; lane++) ids[lane] = seg[i + lane < n ? i + lane : n - 1];
    return ids;
}
#define vsplat(x) ((x) - (vf){0})   /* x - 0 = x: one broadcast (an inline function gets VW inserts) */
AI vf vselect(vi mask, vf yes, vf no) { return (vf)((mask & (vi)yes) | (~mask & (vi)no)); }
AI vf vmax(vf a, vf b) { return vselect(b > a, b, a); }           /* keeps a NaN in a */
#if VW == 16
static const vi lanes = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
#elif VW == 8
static const vi lanes = {0, 1, 2, 3, 4, 5, 6, 7};
#else
static const vi lanes = {0, 1, 2, 3};
#endif

/* 2^x = 2^n 2^f with n = round(x), f = x - n in [-1/2, 1/2]; 2^f by a degree-6 polynomial fitted
 * (relative least squares at Chebyshev nodes) to 2e-9, ~1 ulp after float rounding. Below -125
 * the result is exactly 0, which is how masked scores (-inf) become zero probabilities; from 128
 * up it is +inf and a NaN stays NaN (x + inf gives both), as exp2f: a NaN score must reach the
 * outputs, where attention.c sees it and hands the call to the naive rung. */
AI vf vexp2(vf x)
{
    vi dead = x < vsplat(-125.0f), beyond = ~(x < vsplat(128.0f));   /* beyond: >= 128 or NaN */
    vf c = vselect(dead, vsplat(-125.0f), x);
    c = vselect(c > vsplat(127.0f), vsplat(127.0f), c);
    c = vselect(beyond, vsplat(0.0f), c);                   /* no NaN into the integer conversion */
    vi n = __builtin_convertvector(c + 125.5f, vi) - 125;   /* c + 125.5 > 0: truncation = floor */
    vf f = c - __builtin_convertvector(n, vf);
    vf p = vsplat(1.5337585e-4f);
    p = p * f + 1.3399870e-3f;
    p = p * f + 9.6185198e-3f;
    p = p * f + 5.5503290e-2f;
    p = p * f + 2.4022646e-1f;
    p = p * f + 6.9314718e-1f;
    p = p * f + 1.0f;
    vu bits = (vu)p + ((vu)n << 23);                       /* multiply by 2^n in the exponent */
    return vselect(beyond, x + INFINITY, (vf)((vi)bits & ~dead));
}

/* ---- the micro-kernel and the tile GEMM ---------------------------------------------------------
 * One register tile of C is MR rows x nv vectors: per k, nv vector loads of B, MR broadcasts of
 * A, MR * nv fused multiply-adds into accumulators that never leave registers. A's element
 * (r, k) is a[r * ars + k * aks]: row-major A is (lda, 1), a transposed one (1, lda) — a
 * broadcast does not care which, so no product needs its left operand transposed in memory. */
AI void tile(float *c, size_t ldc, const float *a, size_t ars, size_t aks, const float *b,
             size_t ldb, size_t K, int accumulate, const int nv)
{
    vf acc[MR][NV];                 /* after unrolling, each one is a register */
    #pragma GCC unroll 16
    for (int r = 0; r < MR; r++)
        #pragma GCC unroll 2
        for (int v = 0; v < nv; v++)
            acc[r][v] = accumulate ? vload(c + r * ldc + VW * v) : vsplat(0.0f);
    for (size_t k = 0; k < K; k++) {
        vf bk[NV];
        #pragma GCC unroll 2
        for (int v = 0; v < nv; v++) bk[v] = vload(b + k * ldb + VW * v);
        #pragma GCC unroll 16
        for (int r = 0; r < MR; r++) {
            vf ar = vsplat(a[r * ars + k * aks]);
            #pragma GCC unroll 2
            for (int v = 0; v < nv; v++) acc[r][v] += ar * bk[v];
        }
    }
    #pragma GCC unroll 16
    for (int r = 0; r < MR; r++)
        #pragma GCC unroll 2
        for (int v = 0; v < nv; v++) vstore(c + r * ldc + VW * v, acc[r][v]);
}

/* The tile at row i, column j of C, with the causal shortcuts of attention.c (SKIP_HIDDEN ...). */
AI void part(float *c, size_t ldc, const float *a, size_t ars, size_t aks, const float *b,
             size_t ldb, size_t i, size_t j, size_t K, int accumulate, long diag,
             const int causal, const int nv)
{
    long k0 = 0, k1 = (long)K;
    if (causal == SKIP_HIDDEN && (long)i > diag + (long)j + VW * nv - 1) {
        if (!accumulate)
            for (int r = 0; r < MR; r++) memset(c + (i + r) * ldc + j, 0, sizeof(vf) * nv);
        return;
    }
    if (causal == K_FROM && (long)i - diag > 0) k0 = (long)i - diag;
    if (causal == K_TO && diag + (long)i + MR < k1) k1 = diag + (long)i + MR;
    if (k1 <= k0 && accumulate) return;
    if (k1 < k0) k1 = k0;
    tile(c + i * ldc + j, ldc, a + i * ars + (size_t)k0 * aks, ars, aks, b + (size_t)k0 * ldb + j,
         ldb, (size_t)(k1 - k0), accumulate, nv);
}

/* C (M x N) = [C +] A (M x K) B (K x N); M a multiple of MR, N of VW. */
AI void gemm(float *c, size_t ldc, const float *a, size_t ars, size_t aks, const float *b,
             size_t ldb, size_t M, size_t N, size_t K, int accumulate, long diag, const int causal)
{
    for (size_t i = 0; i < M; i += MR) {
        size_t j = 0;
        for (; j + VW * NV <= N; j += VW * NV)
            part(c, ldc, a, ars, aks, b, ldb, i, j, K, accumulate, diag, causal, NV);
        for (; j < N; j += VW)
            part(c, ldc, a, ars, aks, b, ldb, i, j, K, accumulate, diag, causal, 1);
    }
}

/* ---- operands: rows in place or padded, transposed panels, row dot products -------------------- */

/* A (T, HS) row-major operand as the GEMMs see it: blocks of R rows, HP wide, zero-padded.
 * When HS is a multiple of 16 (HS == HP) whole blocks are read in place from the caller's
 * array and only a ragged last block is copied; otherwise every row is copied into `pad`
 * (room for round_up(T, R) x HP floats). */
typedef struct { const float *src; const float *pad; size_t HS, HP, tail; } rows_t;

AI rows_t pack_rows(float *pad, const float *src, size_t T, size_t R, size_t HS, size_t HP)
{
    const size_t tail = HS == HP ? T / R * R : 0, end = round_up(T, R);   /* copy rows tail.. */
    for (size_t t = tail; t < T; t++) {
        memcpy(pad + (t - tail) * HP, src + t * HS, HS * sizeof *pad);
        memset(pad + (t - tail) * HP + HS, 0, (HP - HS) * sizeof *pad);
    }
    memset(pad + (T - tail) * HP, 0, (end - T) * HP * sizeof *pad);
    return (rows_t){src, pad, HS, HP, tail};
}

/* Rows t0 .. t0 + R - 1 (t0 a multiple of R), leading dimension HP. */
AI const float *block_at(rows_t x, size_t t0)
{
    return t0 < x.tail ? x.src + t0 * x.HS : x.pad + (t0 - x.tail) * x.HP;
}

/* VW x VW transpose in registers, in rounds b = VW/2 ... 1: each round swaps the two
 * off-diagonal b x b blocks of every 2b x 2b block (rows i and i + b trade halves):
 *   new r[i][c]   = c & b ? r[i + b][c - b] : r[i][c]        (shuffle mask lo)
 *   new r[i+b][c] = c & b ? r[i + b][c]     : r[i][c + b]    (shuffle mask hi)              */
AI void transpose(vf r[VW])
{
#if VW == 16
    static const vi lo[] = {{0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},
                            {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27},
                            {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29},
                            {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30}};
    static const vi hi[] = {{8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31},
                            {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31},
                            {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31},
                            {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31}};
#elif VW == 8
    static const vi lo[] = {{0, 1, 2, 3, 8, 9, 10, 11}, {0, 1, 8, 9, 4, 5, 12, 13},
                            {0, 8, 2, 10, 4, 12, 6, 14}};
    static const vi hi[] = {{4, 5, 6, 7, 12, 13, 14, 15}, {2, 3, 10, 11, 6, 7, 14, 15},
                            {1, 9, 3, 11, 5, 13, 7, 15}};
#elif VW == 4
    static const vi lo[] = {{0, 1, 4, 5}, {0, 4, 2, 6}};
    static const vi hi[] = {{2, 3, 6, 7}, {1, 5, 3, 7}};
#else
#error "attention_kernel.h: VW must be 4, 8 or 16"
#endif
    #pragma GCC unroll 4
    for (int round = 0, b = VW / 2; b > 0; round++, b /= 2)
        #pragma GCC unroll 16
        for (int i = 0; i < VW; i++)
            if (!(i & b)) {
                vf x = r[i], y = r[i + b];
                r[i] = __builtin_shuffle(x, y, lo[round]);
                r[i + b] = __builtin_shuffle(x, y, hi[round]);
            }
}

/* rows (T, HS) -> transposed panels: panel p holds rows p*W .. p*W+W-1 as an (HP x W) block,
 * element (d, t) at dst[p*HP*W + d*W + t % W]; times `scale`, zero padding. Whole VW x VW
 * blocks go through registers, ragged edges element by element. */
AI void pack_panels_t(float *dst, const float *src, size_t T, size_t TP, size_t HS, size_t HP,
                      size_t W, float scale)
{
    if (T < TP || HS < HP) memset(dst, 0, TP * HP * sizeof *dst);
    for (size_t t0 = 0; t0 < T; t0 += VW) {
        float *panel = dst + (t0 / W) * HP * W + t0 % W;
        for (size_t d0 = 0; d0 < HS; d0 += VW) {
            if (t0 + VW <= T && d0 + VW <= HS) {
                vf r[VW];
                for (int i = 0; i < VW; i++) r[i] = vload(src + (t0 + i) * HS + d0);
                transpose(r);
                for (int i = 0; i < VW; i++) vstore(panel + (d0 + i) * W, r[i] * scale);
            } else {
                for (size_t t = t0; t < T && t < t0 + VW; t++)
                    for (size_t d = d0; d < HS && d < d0 + VW; d++)
                        panel[d * W + t - t0] = src[t * HS + d] * scale;
            }
        }
    }
}

/* D_i = sum_d dout_id out_id for T rows of HS (VW lanes at a time, then the lanes summed). */
AI void row_dots(float *dd, const float *dout, const float *out, size_t T, size_t HS)
{
    for (size_t t = 0; t < T; t++) {
        const float *a = dout + t * HS, *b = out + t * HS;
        vf acc = vsplat(0.0f);
        size_t d = 0;
        for (; d + VW <= HS; d += VW) acc += vload(a + d) * vload(b + d);
        float s = 0.0f;
        for (int lane = 0; lane < VW; lane++) s += acc[lane];
        for (; d < HS; d++) s += a[d] * b[d];
        dd[t] = s;
    }
}

/* ---- forward: one (batch, head) -------------------------------------------------------------- */

/* Query blocks first, first + step, ... (all of them: 0, 1). */
static void fwd_head(float *out, float *lse, const float *q, const float *k, const float *v,
                     const int32_t *seg, size_t Tq, size_t Tk, size_t HS, float *w, size_t first,
                     size_t step)
{
    const size_t HP = round_up(HS, 16), TkP = round_up(Tk, BC), off = Tk - Tq;
    const size_t W = min_size(BR, round_up(Tq, 16));       /* query block width, lanes */
    const float qscale = LOG2E / sqrtf((float)HS);
    float *kp = w;                      /* (TkP, HP)  keys, where they need a padded copy   */
    float *vp = kp + TkP * HP;          /* (TkP, HP)  values, likewise                      */
    float *qt = vp + TkP * HP;          /* (HP, W)    query block transposed, times qscale */
    float *o = qt + HP * BR;            /* (W, HP)    output accumulator                  */
    float *st = o + HP * BR;            /* (BC, W)    scores S^T, then P^T                */
    float *m = st + BC * BR, *l = m + BR, *alpha = l + BR;
    const rows_t K = pack_rows(kp, k, Tk, BC, HS, HP), V = pack_rows(vp, v, Tk, BC, HS, HP);
    for (size_t i0 = first * W; i0 < Tq; i0 += step * W) {
        const size_t rows = min_size(W, Tq - i0);
        const size_t kend = off + i0 + rows;               /* keys this block may see: [0, kend) */
        /* document masking: T = Tq = Tk, so query i is key i and has segment_ids[i] */
        const seg_range_t qr = seg ? seg_range(seg, i0, i0 + rows) : (seg_range_t){0, 0};
        pack_panels_t(qt, q + i0 * HS, rows, W, HS, HP, W, qscale);
        memset(o, 0, W * HP * sizeof *o);
        for (size_t i = 0; i < W; i++) { m[i] = -INFINITY; l[i] = 0.0f; }
        for (size_t j0 = 0; j0 < kend; j0 += BC) {
            const long diag = (long)(off + i0) - (long)j0;   /* key c sees query i iff c <= i + diag */
            int masked = diag < BC - 1;                      /* some key comes after some query */
            if (seg) {                 /* skip a tile no query shares a document with (header) */
                const seg_range_t kr = seg_range(seg, j0, min_size(j0 + BC, kend));
                if (disjoint(qr, kr)) continue;
                masked |= !one_document(qr, kr);
            }
            gemm(st, W, block_at(K, j0), HP, 1, qt, W, BC, W, HP, 0, diag, SKIP_HIDDEN); /* S^T = K Q^T */
            for (size_t i = 0; i < W; i += VW) {
                vf mx = vload(m + i);                      /* m' = max(m, max_j S_ji) */
                vi qpos = (vi){0} + (int)(off + i0 + i) + lanes;
                const vi qseg = masked && seg ? seg_lanes(seg, i0 + i, Tq) : (vi){0};
                for (size_t c = 0; c < BC; c++) {
                    vf s = vload(st + c * W + i);
                    if (masked) {                          /* key j visible iff j <= pos */
                        vi hidden = (vi){0} + (int)(j0 + c) > qpos;
                        if (seg)                           /* ... and of the query's document */
                            hidden |= (vi){0} + seg[min_size(j0 + c, Tk - 1)] != qseg;
                        s = vselect(hidden, vsplat(-INFINITY), s);
                        vstore(st + c * W + i, s);
                    }
                    mx = vmax(mx, s);
                }
                /* With documents a query may see no key of this tile yet (m' = -inf); it then
                 * subtracts 0, not -inf (-inf - -inf is NaN): P = 2^-inf = 0, a = 0 (O, l are 0). */
                const vf base = seg ? vselect(mx == vsplat(-INFINITY), vsplat(0.0f), mx) : mx;
                vf a = vexp2(vload(m + i) - base), sum = vsplat(0.0f);
                for (size_t c = 0; c < BC; c++) {          /* P^T = 2^(S^T - m'), l' = l a + sum P */
                    vf p = vexp2(vload(st + c * W + i) - base);
                    vstore(st + c * W + i, p);
                    sum += p;
                }
                vstore(l + i, vload(l + i) * a + sum);
                vstore(m + i, mx);
                vstore(alpha + i, a);
            }
            for (size_t i = 0; i < W; i++) {               /* O <- diag(alpha) O */
                const vf a = vsplat(alpha[i]);
                for (size_t d = 0; d < HP; d += VW) vstore(o + i * HP + d, vload(o + i * HP + d) * a);
            }
            gemm(o, HP, st, 1, W, block_at(V, j0), HP, W, HP, BC, 1, diag, K_TO); /* O += P V */
        }
        for (size_t i = 0; i < rows; i++) {                /* out = O / l, lse = ln2 (m + log2 l) */
            const float inv = 1.0f / l[i];
            for (size_t d = 0; d < HS; d++) out[(i0 + i) * HS + d] = o[i * HP + d] * inv;
            lse[i0 + i] = LN2 * (m[i] + log2f(l[i]));
        }
    }
}

/* Few queries (decoding with a KV cache, Tq < ROWS_BELOW): one query row at a time, no tiles,
 * so nothing is padded to W lanes. For query i at position p = Tk - Tq + i:
 *   s_j = q_i . k_j log2(e)/sqrt(HS) (j <= p),  m = max s,  P_j = 2^(s_j - m),  l = sum P,
 *   out_i = sum_j P_j v_j / l,  lse_i = ln2 (m + log2 l).
 * The dot products go VW keys at a time: VW partial-sum vectors, transposed, added. */
static void fwd_rows(float *out, float *lse, const float *q, const float *k, const float *v,
                     const int32_t *seg, size_t Tq, size_t Tk, size_t HS, float *w, size_t first,
                     size_t step)
{
    const float qscale = LOG2E / sqrtf((float)HS);
    const size_t hv = HS / VW * VW;                 /* channels in whole vectors */
    float *s = w, *o = s + round_up(Tk, VW);        /* (Tk) scores, (HP) output row */
    for (size_t i = first; i < Tq; i += step) {    /* query rows first, first + step, ... */
        const float *qi = q + i * HS;
        const size_t n = Tk - Tq + i + 1;           /* visible keys */
        size_t j = 0;
        for (; j + VW <= n; j += VW) {              /* s_j .. s_j+VW-1 */
            vf acc[VW];
            for (int r = 0; r < VW; r++) acc[r] = vsplat(0.0f);
            for (size_t d = 0; d < hv; d += VW) {
                const vf qd = vload(qi + d);
                for (int r = 0; r < VW; r++) acc[r] += vload(k + (j + r) * HS + d) * qd;
            }
            transpose(acc);                         /* lane r of row c: key r, partial sum c */
            vf dots = acc[0];
            for (int c = 1; c < VW; c++) dots += acc[c];
            for (size_t d = hv; d < HS; d++)        /* channels past the last whole vector */
                for (int r = 0; r < VW; r++) dots[r] += k[(j + r) * HS + d] * qi[d];
            vstore(s + j, dots * qscale);
        }
        for (; j < n; j++) {                        /* keys past the last whole group */
            float dot = 0.0f;
            for (size_t d = 0; d < HS; d++) dot += k[j * HS + d] * qi[d];
            s[j] = dot * qscale;
        }
        if (seg)                                    /* document masking (Tq = Tk: key i is query i) */
            for (j = 0; j < n; j++)
                if (seg[j] != seg[i]) s[j] = -INFINITY;
        for (j = n; j < round_up(n, VW); j++) s[j] = -INFINITY;
        vf mx = vsplat(-INFINITY), sum = vsplat(0.0f);
        for (j = 0; j < n; j += VW) mx = vmax(mx, vload(s + j));
        float m = mx[0];
        for (int r = 1; r < VW; r++) m = mx[r] > m ? mx[r] : m;
        for (j = 0; j < n; j += VW) {               /* P = 2^(s - m), l = sum P */
            const vf p = vexp2(vload(s + j) - m);
            vstore(s + j, p);
            sum += p;
        }
        float l = 0.0f;
        for (int r = 0; r < VW; r++) l += sum[r];
        size_t d = 0;                               /* o = sum_j P_j v_j: 4 vectors at a time */
        for (; d + 4 * VW <= hv; d += 4 * VW) {     /* (4 independent FMA chains), then 1 */
            vf acc[4] = {vsplat(0.0f), vsplat(0.0f), vsplat(0.0f), vsplat(0.0f)};
            for (j = 0; j < n; j++)
                for (int c = 0; c < 4; c++) acc[c] += vsplat(s[j]) * vload(v + j * HS + d + c * VW);
            for (int c = 0; c < 4; c++) vstore(o + d + c * VW, acc[c]);
        }
        for (; d < hv; d += VW) {
            vf acc = vsplat(0.0f);
            for (j = 0; j < n; j++) acc += vsplat(s[j]) * vload(v + j * HS + d);
            vstore(o + d, acc);
        }
        for (size_t d = hv; d < HS; d++) {
            float acc = 0.0f;
            for (j = 0; j < n; j++) acc += s[j] * v[j * HS + d];
            o[d] = acc;
        }
        for (size_t d = 0; d < HS; d++) out[i * HS + d] = o[d] / l;
        lse[i] = LN2 * (m + log2f(l));
    }
}

/* ---- backward: one (batch, kv-head) and the G query heads that read it -------------------------- */

/* Key blocks first, first + step, ... (all of them: 0, 1): dk and dv of those rows are written,
 * dq gets the whole gradient those blocks contribute (attention.c sums the parts). */

static void bwd_group(float *dq, float *dk, float *dv, const float *dout, const float *q,
                      const float *k, const float *v, const float *out, const float *lse,
                      const int32_t *seg, size_t G, size_t Tq, size_t Tk, size_t HS, float *w,
                      size_t first, size_t step)
{
    const size_t HP = round_up(HS, 16), TkP = round_up(Tk, BC), off = Tk - Tq;
    const size_t W = min_size(BR, round_up(Tq, 16)), TqP = round_up(Tq, W);
    const float scale = 1.0f / sqrtf((float)HS), qscale = LOG2E * scale;
    float *kp = w;                      /* (TkP, HP)  keys, where they need a padded copy */
    float *vp = kp + TkP * HP;          /* (TkP, HP)  values, likewise    */
    float *dka = vp + TkP * HP;         /* (TkP, HP)  dK, unscaled, summed over the group */
    float *dva = dka + TkP * HP;        /* (TkP, HP)  dV, summed over the group           */
    float *qp = dva + TkP * HP;         /* (TqP, HP)  queries, likewise (unscaled)        */
    float *qt = qp + TqP * HP;          /* TqP/W x (HP, W)  queries transposed, times qscale */
    float *dop = qt + TqP * HP;         /* (TqP, HP)  dout, likewise      */
    float *dot = dop + TqP * HP;        /* TqP/W x (HP, W)  dout transposed               */
    float *dqa = dot + TqP * HP;        /* (TqP, HP)  dQ, unscaled                        */
    float *lse2 = dqa + TqP * HP;       /* (TqP)  lse in log2 units */
    float *dd = lse2 + TqP;             /* (TqP)  D_i = sum_d dout_id out_id */
    float *pt = dd + TqP;               /* (BC, W)  S^T, then P^T  */
    float *dpt = pt + BC * BR;          /* (BC, W)  dP^T, then dS^T */
    const rows_t K = pack_rows(kp, k, Tk, BC, HS, HP), V = pack_rows(vp, v, Tk, BC, HS, HP);
    memset(dka, 0, 2 * TkP * HP * sizeof *dka);
    for (size_t g = 0; g < G; g++) {
        const size_t h = g * Tq * HS;
        const rows_t Q = pack_rows(qp, q + h, Tq, W, HS, HP);
        pack_panels_t(qt, q + h, Tq, TqP, HS, HP, W, qscale);
        const rows_t dO = pack_rows(dop, dout + h, Tq, W, HS, HP);
        pack_panels_t(dot, dout + h, Tq, TqP, HS, HP, W, 1.0f);
        memset(dqa, 0, TqP * HP * sizeof *dqa);
        row_dots(dd, dout + h, out + h, Tq, HS);
        for (size_t i = 0; i < TqP; i++) {
            if (i >= Tq) dd[i] = 0.0f;
            lse2[i] = i < Tq ? lse[g * Tq + i] * LOG2E : 0.0f;
        }
        for (size_t j0 = first * BC; j0 < Tk; j0 += step * BC) {   /* this call's key blocks */
            /* query i sees key j iff j <= off + i: the first query block that sees this one */
            size_t first = j0 > off ? (j0 - off) / W * W : 0;
            const seg_range_t kr = seg ? seg_range(seg, j0, min_size(j0 + BC, Tk)) : (seg_range_t){0, 0};
            for (size_t i0 = first; i0 < Tq; i0 += W) {
                const float *qt_i = qt + i0 * HP, *dot_i = dot + i0 * HP;
                const long diag = (long)(off + i0) - (long)j0;
                int masked = diag < BC - 1 || i0 + W > Tq;         /* or padding queries */
                if (seg) {             /* skip a tile no query shares a document with (header) */
                    const seg_range_t qr = seg_range(seg, i0, min_size(i0 + W, Tq));
                    if (disjoint(qr, kr)) continue;
                    masked |= !one_document(qr, kr);
                }
                /* S^T = K Q^T, then P^T = 2^(S^T - lse) */
                gemm(pt, W, block_at(K, j0), HP, 1, qt_i, W, BC, W, HP, 0, diag, SKIP_HIDDEN);
                for (size_t c = 0; c < BC; c++)
                    for (size_t i = 0; i < W; i += VW) {
                        vf x = vload(pt + c * W + i) - vload(lse2 + i0 + i);
                        /* (VW scalar loads per VW x 1 scores: cheap beside the tile's products) */
                        const vi qseg = masked && seg ? seg_lanes(seg, i0 + i, Tq) : (vi){0};
                        if (masked) {
                            vi qi = (vi){0} + (int)(i0 + i) + lanes;
                            vi hidden = (qi >= (int)Tq) | ((vi){0} + (int)(j0 + c) > qi + (int)off);
                            if (seg)               /* another document's key (Tq = Tk, off = 0) */
                                hidden |= (vi){0} + seg[min_size(j0 + c, Tk - 1)] != qseg;
                            x = vselect(hidden, vsplat(-INFINITY), x);
                        }
                        vstore(pt + c * W + i, vexp2(x));
                    }
                /* dV += P^T dO;  dP^T = V dO^T;  dS^T = P^T (dP^T - D) */
                gemm(dva + j0 * HP, HP, pt, W, 1, block_at(dO, i0), HP, BC, HP, W, 1, diag, K_FROM);
                gemm(dpt, W, block_at(V, j0), HP, 1, dot_i, W, BC, W, HP, 0, diag, SKIP_HIDDEN);
                for (size_t c = 0; c < BC; c++)
                    for (size_t i = 0; i < W; i += VW)
                        vstore(dpt + c * W + i, vload(pt + c * W + i)
                               * (vload(dpt + c * W + i) - vload(dd + i0 + i)));
                /* dK += dS^T Q;  dQ += dS K, reading dS = (dS^T)^T through the broadcasts */
                gemm(dka + j0 * HP, HP, dpt, W, 1, block_at(Q, i0), HP, BC, HP, W, 1, diag, K_FROM);
                gemm(dqa + i0 * HP, HP, dpt, 1, W, block_at(K, j0), HP, W, HP, BC, 1, diag, K_TO);
            }
        }
        for (size_t i = 0; i < Tq; i++)
            for (size_t d = 0; d < HS; d++) dq[h + i * HS + d] = scale * dqa[i * HP + d];
    }
    for (size_t j0 = first * BC; j0 < Tk; j0 += step * BC)
        for (size_t j = j0; j < j0 + BC && j < Tk; j++)
            for (size_t d = 0; d < HS; d++) {
                dk[j * HS + d] = scale * dka[j * HP + d];
                dv[j * HS + d] = dva[j * HP + d];
            }
}

#undef vf
#undef vi
#undef vu
#undef rows_t
#undef vload
#undef seg_lanes
#undef vstore
#undef vsplat
#undef vselect
#undef vmax
#undef vexp2
#undef lanes
#undef tile
#undef part
#undef gemm
#undef pack_rows
#undef block_at
#undef transpose
#undef pack_panels_t
#undef row_dots
#undef fwd_head
#undef fwd_rows
#undef bwd_group
