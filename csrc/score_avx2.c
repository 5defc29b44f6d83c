/* AVX2+FMA row kernels. Same contract as score_scalar.c, which they fall back
 * to for strided rows and tiny vocabularies.
 *
 * A row is cut into tiles of QK_TILE entries; a tile is read from memory once
 * and stays in L1 for two sweeps: sweep A takes the tile's max (the online
 * normaliser moves once per tile, not per entry), checks for NaN/+inf, and
 * feeds the rare candidates for top-k and argmax to scalar code; sweep B does
 * the exps (float64, see qk_exp_pd) and the sums. Groups of eight whose base
 * codes are all excluded skip the base's exp; groups of the other side lying
 * more than 40 nats below its running max skip its exp (< 1e-17 of the sum). */
#include "avx2_math.h"

#ifdef QK_HAVE_X86
#include <math.h>
#include <string.h>

#include "dispatch.h"
#include "rowload.h"
#include "rowstate.h"

#define QK_TILE 1024
#define QK_FAR 40.0

/* Running log-sum-exp of one side, kept in vector lanes plus a scalar for tails. */
typedef struct {
    double max;
    __m256d lo, hi;
    double rest;
} lse_vec;

QK_AVX2 static inline void lse_vec_init(lse_vec *a)
{
    a->max = -INFINITY;
    a->lo = a->hi = _mm256_setzero_pd();
    a->rest = 0;
}

/* Move the running max up to m (called once per tile). */
QK_AVX2 static inline void lse_vec_raise(lse_vec *a, double m)
{
    if (m > a->max) {
        const double f = exp(a->max - m);
        const __m256d fv = _mm256_set1_pd(f);
        a->lo = _mm256_mul_pd(a->lo, fv);
        a->hi = _mm256_mul_pd(a->hi, fv);
        a->rest *= f;
        a->max = m;
    }
}

/* Add exp(v - max) for eight values; far = max - QK_FAR and m = max
 * broadcast once per tile (max must be finite). */
QK_AVX2 static inline void lse_vec_add8(lse_vec *a, __m256 v, __m256 far, __m256d m)
{
    if (!_mm256_movemask_ps(_mm256_cmp_ps(v, far, _CMP_GE_OQ)))
        return;
    a->lo = _mm256_add_pd(a->lo, qk_exp_pd(_mm256_sub_pd(qk_lo_pd(v), m)));
    a->hi = _mm256_add_pd(a->hi, qk_exp_pd(_mm256_sub_pd(qk_hi_pd(v), m)));
}

QK_AVX2 static inline void lse_vec_add1(lse_vec *a, double v)
{
    if (v > -INFINITY)
        a->rest += exp(v - a->max);
}

QK_AVX2 static inline qk_lse lse_vec_done(const lse_vec *a)
{
    qk_lse l = {a->max, qk_hsum_pd(_mm256_add_pd(a->lo, a->hi)) + a->rest};
    return l;
}

/* Sweep A over logits: tile max, NaN/+inf, top-k candidates (scalar). */
QK_AVX2 static inline float sweep_logits(const void *q, int dt, int64_t i0, int64_t n,
                                         __m256 *bad, qk_topk *tq)
{
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    const __m256 inf = _mm256_set1_ps(INFINITY);
    float smax = -INFINITY;
    int64_t i = i0;
    for (; i + 8 <= i0 + n; i += 8) {
        const __m256 y = qk_load8(q, dt, i);
        vmax = _mm256_max_ps(y, vmax);
        *bad = _mm256_or_ps(*bad, _mm256_cmp_ps(y, inf, _CMP_NLT_UQ));
        if (tq) {
            const __m256 thr = _mm256_set1_ps(tq->n < QK_TOPK_MAX ? -INFINITY
                                                                  : (float)tq->val[QK_TOPK_MAX - 1]);
            if (tq->n < QK_TOPK_MAX || _mm256_movemask_ps(_mm256_cmp_ps(y, thr, _CMP_GT_OQ))) {
                float v[8];
                _mm256_storeu_ps(v, y);
                for (int l = 0; l < 8; l++)
                    qk_topk_push(tq, v[l], i + l);
            }
        }
    }
    for (; i < i0 + n; i++) {
        const float y = (float)qk_load(q, dt, 1, i);
        if (!(y < INFINITY))
            *bad = _mm256_or_ps(*bad, _mm256_castsi256_ps(_mm256_set1_epi32(-1)));
        smax = y > smax ? y : smax;
        if (tq)
            qk_topk_push(tq, y, i);
    }
    const float m = qk_hmax_ps(vmax);
    return m > smax ? m : smax;
}

/* The other side's tile [t, end): sweep A, then what sweep B needs. */
typedef struct {
    int64_t end, vec_end; /* tile end; end of its whole groups of eight */
    int live;             /* the other side has a finite logit so far */
    __m256 far;           /* groups below this skip their exps */
    __m256d max;
} q_tile;

QK_AVX2 static inline q_tile q_tile_begin(lse_vec *lq, const void *q, int dt, int64_t t,
                                          int64_t n_vocab, __m256 *bad, qk_topk *tq)
{
    const int64_t n = n_vocab - t < QK_TILE ? n_vocab - t : QK_TILE;
    lse_vec_raise(lq, sweep_logits(q, dt, t, n, bad, tq));
    q_tile qt = {t + n, t + (n & ~(int64_t)7), lq->max > -INFINITY,
                 _mm256_set1_ps((float)(lq->max - QK_FAR)), _mm256_set1_pd(lq->max)};
    return qt;
}

/* First index of the largest code, updated from eight codes at a time. */
QK_AVX2 static inline void argmax_codes8(__m128i c, int64_t i, const uint16_t *row,
                                         uint16_t *best, int64_t *top)
{
    const __m128i b = _mm_set1_epi16((short)*best);
    if (_mm_movemask_epi8(_mm_cmpeq_epi16(_mm_max_epu16(c, b), b)) == 0xFFFF)
        return;
    for (int l = 0; l < 8; l++) {
        const uint16_t v = qk_code(row, i + l);
        if (v > *best) {
            *best = v;
            *top = i + l;
        }
    }
}

/* Lanes (as float64 masks) where codes >= from; from in [0, 65536]. */
QK_AVX2 static inline __m128i codes_at_least(__m128i c, int32_t from)
{
    if (from <= 0)
        return _mm_set1_epi32(-1);
    if (from > 65535)
        return _mm_setzero_si128();
    const __m128i f = _mm_set1_epi16((short)(uint16_t)from);
    return _mm_cmpeq_epi16(_mm_max_epu16(c, f), c);
}

QK_AVX2 static inline __m256d mask_lo(__m128i m16) { return _mm256_castsi256_pd(_mm256_cvtepi16_epi64(m16)); }
QK_AVX2 static inline __m256d mask_hi(__m128i m16)
{
    return _mm256_castsi256_pd(_mm256_cvtepi16_epi64(_mm_unpackhi_epi64(m16, m16)));
}

/* Base sums over kept entries: s0 += p, s1 += p*lp, s2 += p*y (y = the other
 * side's logit or log-probability; 0 where p is 0 so -inf never meets 0). */
typedef struct {
    __m256d s0, s1, s2;
} base_sums;

QK_AVX2 static inline void base_add4(base_sums *s, __m256d lp, __m256d keep, __m256d y)
{
    const __m256d p = _mm256_and_pd(qk_exp_pd(lp), keep);
    const __m256d live = _mm256_cmp_pd(p, _mm256_setzero_pd(), _CMP_GT_OQ);
    s->s0 = _mm256_add_pd(s->s0, p);
    s->s1 = _mm256_fmadd_pd(p, _mm256_and_pd(lp, live), s->s1);
    s->s2 = _mm256_fmadd_pd(p, _mm256_and_pd(y, live), s->s2);
}

QK_AVX2 static inline void base_add1(double *s0, double *s1, double *s2, double lp, double y)
{
    const double p = exp(lp);
    if (p > 0) {
        *s0 += p;
        *s1 += p * lp;
        *s2 += p * y;
    }
}

QK_AVX2 void qk_score_llama_logits_avx2(const uint16_t *p_row, const void *q, int q_dtype,
                                        ptrdiff_t q_stride, int64_t n_vocab, int32_t tok,
                                        int mode, qk_row *out)
{
    if (q_stride != 1 || n_vocab < 64) {
        qk_score_llama_logits_scalar(p_row, q, q_dtype, q_stride, n_vocab, tok, mode, out);
        return;
    }
    qk_header h;
    int32_t keep_from;
    if (!qk_llama_logits_begin(p_row, mode, &h, &keep_from, out))
        return;
    const int exact = mode == QK_EXACT;
    const __m256d scale = _mm256_set1_pd(h.scale), minlp = _mm256_set1_pd(h.min_log_prob);
    const __m256d ninf = _mm256_set1_pd(-INFINITY), one = _mm256_set1_pd(1.0);
    lse_vec lq;
    lse_vec_init(&lq);
    qk_topk tq = {0};
    base_sums bs = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd()};
    qk_llama_logits_sums sums = {0}; /* scalar remainders, then the totals */
    __m256d tail_n = _mm256_setzero_pd(), tail_y = _mm256_setzero_pd();
    __m256 bad = _mm256_setzero_ps();
    uint16_t best = 0;
    int64_t top_p = 0;
    for (int64_t t = 0; t < n_vocab; t += QK_TILE) {
        const q_tile qt = q_tile_begin(&lq, q, q_dtype, t, n_vocab, &bad, &tq);
        for (int64_t i = t; i < qt.vec_end; i += 8) {
            const __m256 y = qk_load8(q, q_dtype, i);
            const __m128i c = qk_codes8(p_row, i);
            argmax_codes8(c, i, p_row, &best, &top_p);
            if (qt.live)
                lse_vec_add8(&lq, y, qt.far, qt.max);
            const __m256d ylo = qk_lo_pd(y), yhi = qk_hi_pd(y);
            if (exact) {
                const __m128i z = _mm_cmpeq_epi16(c, _mm_setzero_si128());
                if (!_mm_testz_si128(z, z)) {
                    const __m256d zl = _mm256_and_pd(mask_lo(z), _mm256_cmp_pd(ylo, ninf, _CMP_GT_OQ));
                    const __m256d zh = _mm256_and_pd(mask_hi(z), _mm256_cmp_pd(yhi, ninf, _CMP_GT_OQ));
                    tail_n = _mm256_add_pd(tail_n, _mm256_add_pd(_mm256_and_pd(one, zl),
                                                                 _mm256_and_pd(one, zh)));
                    tail_y = _mm256_add_pd(tail_y, _mm256_add_pd(_mm256_and_pd(ylo, zl),
                                                                 _mm256_and_pd(yhi, zh)));
                }
            }
            const __m128i k = codes_at_least(c, keep_from);
            if (_mm_testz_si128(k, k))
                continue;
            base_add4(&bs, _mm256_fmadd_pd(scale, qk_codes_lo_pd(c), minlp), mask_lo(k), ylo);
            base_add4(&bs, _mm256_fmadd_pd(scale, qk_codes_hi_pd(c), minlp), mask_hi(k), yhi);
        }
        for (int64_t i = qt.vec_end; i < qt.end; i++) {
            const double y = qk_load(q, q_dtype, 1, i);
            const uint16_t c = qk_code(p_row, i);
            if (c > best) {
                best = c;
                top_p = i;
            }
            if (qt.live)
                lse_vec_add1(&lq, y);
            qk_llama_logits_add(&sums, &h, c, y, exact, keep_from);
        }
    }
    out->status = qk_side_status(_mm256_movemask_ps(bad), lq.max, QK_Q_NONFINITE, QK_Q_EMPTY);
    if (out->status)
        return;
    const qk_lse l = lse_vec_done(&lq);
    sums.s0 += qk_hsum_pd(bs.s0);
    sums.s1 += qk_hsum_pd(bs.s1);
    sums.s2 += qk_hsum_pd(bs.s2);
    sums.tail_n += qk_hsum_pd(tail_n);
    sums.tail_y += qk_hsum_pd(tail_y);
    qk_llama_logits_finish(&sums, &h, p_row, &l, qk_load(q, q_dtype, 1, tok), tok, exact, top_p,
                           &tq, out);
}

/* Sweep A over base logits: tile max, NaN/+inf, first index of the max. */
QK_AVX2 static inline float sweep_argmax(const void *p, int dt, int64_t i0, int64_t n,
                                         __m256 *bad, float *best, int64_t *top)
{
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    const __m256 inf = _mm256_set1_ps(INFINITY);
    float smax = -INFINITY;
    int64_t i = i0;
    for (; i + 8 <= i0 + n; i += 8) {
        const __m256 x = qk_load8(p, dt, i);
        vmax = _mm256_max_ps(x, vmax);
        *bad = _mm256_or_ps(*bad, _mm256_cmp_ps(x, inf, _CMP_NLT_UQ));
        if (_mm256_movemask_ps(_mm256_cmp_ps(x, _mm256_set1_ps(*best), _CMP_GT_OQ))) {
            float v[8];
            _mm256_storeu_ps(v, x);
            for (int l = 0; l < 8; l++)
                if (v[l] > *best) {
                    *best = v[l];
                    *top = i + l;
                }
        }
    }
    for (; i < i0 + n; i++) {
        const float x = (float)qk_load(p, dt, 1, i);
        if (!(x < INFINITY))
            *bad = _mm256_or_ps(*bad, _mm256_castsi256_ps(_mm256_set1_epi32(-1)));
        smax = x > smax ? x : smax;
        if (x > *best) {
            *best = x;
            *top = i;
        }
    }
    const float m = qk_hmax_ps(vmax);
    return m > smax ? m : smax;
}

static inline int32_t sides_status(int bad_p, double max_p, int bad_q, double max_q)
{
    return qk_side_status(bad_p, max_p, QK_P_NONFINITE, QK_P_EMPTY) |
           qk_side_status(bad_q, max_q, QK_Q_NONFINITE, QK_Q_EMPTY);
}

QK_AVX2 void qk_score_logits_logits_avx2(const void *p, int p_dtype, ptrdiff_t p_stride,
                                         const void *q, int q_dtype, ptrdiff_t q_stride,
                                         int64_t n_vocab, int32_t tok, int mode, qk_row *out)
{
    if (p_stride != 1 || q_stride != 1 || n_vocab < 64) {
        qk_score_logits_logits_scalar(p, p_dtype, p_stride, q, q_dtype, q_stride, n_vocab, tok,
                                      mode, out);
        return;
    }
    memset(out, 0, sizeof *out);
    const int exact = mode == QK_EXACT;
    const __m256 ninf_ps = _mm256_set1_ps(-INFINITY);
    const __m256d ninf = _mm256_set1_pd(-INFINITY), zero = _mm256_setzero_pd();
    lse_vec lp, lq;
    lse_vec_init(&lp);
    lse_vec_init(&lq);
    qk_topk tq = {0};
    __m256 bad_p = _mm256_setzero_ps(), bad_q = _mm256_setzero_ps();
    float best = -INFINITY;
    int64_t top_p = 0;
    double kld;
    if (exact) {
        /* a = sum exp(x - lp.max) * (x - y), rescaled with lp */
        __m256d a_lo = zero, a_hi = zero;
        double a_rest = 0;
        for (int64_t t = 0; t < n_vocab; t += QK_TILE) {
            const q_tile qt = q_tile_begin(&lq, q, q_dtype, t, n_vocab, &bad_q, &tq);
            const double mp = sweep_argmax(p, p_dtype, t, qt.end - t, &bad_p, &best, &top_p);
            if (mp > lp.max) {
                const double f = exp(lp.max - mp);
                const __m256d fv = _mm256_set1_pd(f), infv = _mm256_set1_pd(INFINITY);
                a_lo = _mm256_blendv_pd(_mm256_mul_pd(a_lo, fv), a_lo, _mm256_cmp_pd(a_lo, infv, _CMP_EQ_OQ));
                a_hi = _mm256_blendv_pd(_mm256_mul_pd(a_hi, fv), a_hi, _mm256_cmp_pd(a_hi, infv, _CMP_EQ_OQ));
                a_rest = a_rest == INFINITY ? a_rest : a_rest * f;
            }
            lse_vec_raise(&lp, mp);
            /* until the base has a finite logit its terms are all zero, but the
             * other side's normaliser still needs every tile */
            const int p_live = lp.max > -INFINITY;
            const __m256 farp = _mm256_set1_ps((float)(lp.max - QK_FAR));
            const __m256d pmax = _mm256_set1_pd(lp.max);
            for (int64_t i = t; i < qt.vec_end; i += 8) {
                const __m256 x = qk_load8(p, p_dtype, i), y = qk_load8(q, q_dtype, i);
                if (qt.live)
                    lse_vec_add8(&lq, y, qt.far, qt.max);
                if (!p_live)
                    continue;
                /* a group far below the max is skipped unless the other side
                 * masks a token there (then the KL is infinite, and must say so) */
                if (!_mm256_movemask_ps(_mm256_cmp_ps(x, farp, _CMP_GE_OQ)) &&
                    !_mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(y, ninf_ps, _CMP_EQ_OQ),
                                                      _mm256_cmp_ps(x, ninf_ps, _CMP_GT_OQ))))
                    continue;
                const __m256d xl = qk_lo_pd(x), xh = qk_hi_pd(x);
                const __m256d el = qk_exp_pd(_mm256_sub_pd(xl, pmax));
                const __m256d eh = qk_exp_pd(_mm256_sub_pd(xh, pmax));
                lp.lo = _mm256_add_pd(lp.lo, el);
                lp.hi = _mm256_add_pd(lp.hi, eh);
                /* x = -inf carries no mass: its difference must not meet 0 */
                const __m256d dl = _mm256_and_pd(_mm256_sub_pd(xl, qk_lo_pd(y)),
                                                 _mm256_cmp_pd(xl, ninf, _CMP_GT_OQ));
                const __m256d dh = _mm256_and_pd(_mm256_sub_pd(xh, qk_hi_pd(y)),
                                                 _mm256_cmp_pd(xh, ninf, _CMP_GT_OQ));
                a_lo = _mm256_add_pd(a_lo, _mm256_and_pd(_mm256_mul_pd(el, dl),
                                                         _mm256_cmp_pd(el, zero, _CMP_GT_OQ)));
                a_hi = _mm256_add_pd(a_hi, _mm256_and_pd(_mm256_mul_pd(eh, dh),
                                                         _mm256_cmp_pd(eh, zero, _CMP_GT_OQ)));
                /* a mass that underflowed to 0 against a masked token is still infinite */
                const __m256d inf_l = _mm256_and_pd(_mm256_cmp_pd(dl, _mm256_set1_pd(INFINITY), _CMP_EQ_OQ),
                                                    _mm256_set1_pd(INFINITY));
                const __m256d inf_h = _mm256_and_pd(_mm256_cmp_pd(dh, _mm256_set1_pd(INFINITY), _CMP_EQ_OQ),
                                                    _mm256_set1_pd(INFINITY));
                a_lo = _mm256_add_pd(a_lo, inf_l);
                a_hi = _mm256_add_pd(a_hi, inf_h);
            }
            for (int64_t i = qt.vec_end; i < qt.end; i++) {
                const double x = qk_load(p, p_dtype, 1, i), y = qk_load(q, q_dtype, 1, i);
                if (qt.live)
                    lse_vec_add1(&lq, y);
                if (x > -INFINITY) {
                    const double e = exp(x - lp.max);
                    lp.rest += e;
                    a_rest += (x - y == INFINITY) ? INFINITY : e * (x - y);
                }
            }
        }
        out->status = sides_status(_mm256_movemask_ps(bad_p), lp.max, _mm256_movemask_ps(bad_q),
                                   lq.max);
        if (out->status)
            return;
        const qk_lse sp = lse_vec_done(&lp), sq = lse_vec_done(&lq);
        const double a = qk_hsum_pd(_mm256_add_pd(a_lo, a_hi)) + a_rest;
        kld = a / sp.sum - qk_lse_value(&sp) + qk_lse_value(&sq);
        out->nll_p = qk_lse_value(&sp) - qk_load(p, p_dtype, 1, tok);
        out->nll_q = qk_lse_value(&sq) - qk_load(q, q_dtype, 1, tok);
    } else {
        for (int64_t t = 0; t < n_vocab; t += QK_TILE) {
            const int64_t n = n_vocab - t < QK_TILE ? n_vocab - t : QK_TILE;
            const int64_t nv = t + (n & ~(int64_t)7);
            lse_vec_raise(&lp, sweep_argmax(p, p_dtype, t, n, &bad_p, &best, &top_p));
            if (lp.max == -INFINITY)
                continue;
            const __m256 far = _mm256_set1_ps((float)(lp.max - QK_FAR));
            const __m256d pmax = _mm256_set1_pd(lp.max);
            for (int64_t i = t; i < nv; i += 8)
                lse_vec_add8(&lp, qk_load8(p, p_dtype, i), far, pmax);
            for (int64_t i = nv; i < t + n; i++)
                lse_vec_add1(&lp, qk_load(p, p_dtype, 1, i));
        }
        out->status = qk_side_status(_mm256_movemask_ps(bad_p), lp.max, QK_P_NONFINITE, QK_P_EMPTY);
        if (out->status)
            return;
        const qk_lse sp = lse_vec_done(&lp);
        const double lse_p = qk_lse_value(&sp);
        const __m256d vlse = _mm256_set1_pd(lse_p), cut = _mm256_set1_pd(-16.0);
        const __m256 fcut = _mm256_set1_ps((float)(lse_p - 16.0) - 1.0f);
        base_sums bs = {zero, zero, zero};
        double r0 = 0, r1 = 0, r2 = 0;
        for (int64_t t = 0; t < n_vocab; t += QK_TILE) {
            const q_tile qt = q_tile_begin(&lq, q, q_dtype, t, n_vocab, &bad_q, &tq);
            for (int64_t i = t; i < qt.vec_end; i += 8) {
                const __m256 x = qk_load8(p, p_dtype, i), y = qk_load8(q, q_dtype, i);
                if (qt.live)
                    lse_vec_add8(&lq, y, qt.far, qt.max);
                /* fcut sits a nat below the cut: groups under it have no kept term */
                if (!_mm256_movemask_ps(_mm256_cmp_ps(x, fcut, _CMP_GT_OQ)))
                    continue;
                const __m256d ll = _mm256_sub_pd(qk_lo_pd(x), vlse), lh = _mm256_sub_pd(qk_hi_pd(x), vlse);
                base_add4(&bs, ll, _mm256_cmp_pd(ll, cut, _CMP_GT_OQ), qk_lo_pd(y));
                base_add4(&bs, lh, _mm256_cmp_pd(lh, cut, _CMP_GT_OQ), qk_hi_pd(y));
            }
            for (int64_t i = qt.vec_end; i < qt.end; i++) {
                const double y = qk_load(q, q_dtype, 1, i);
                if (qt.live)
                    lse_vec_add1(&lq, y);
                const double l = qk_load(p, p_dtype, 1, i) - lse_p;
                if (l > -16.0)
                    base_add1(&r0, &r1, &r2, l, y);
            }
        }
        out->status = qk_side_status(_mm256_movemask_ps(bad_q), lq.max, QK_Q_NONFINITE, QK_Q_EMPTY);
        if (out->status)
            return;
        const qk_lse sq = lse_vec_done(&lq);
        const double s0 = qk_hsum_pd(bs.s0) + r0, s1 = qk_hsum_pd(bs.s1) + r1,
                     s2 = qk_hsum_pd(bs.s2) + r2;
        kld = s1 - s2 + qk_lse_value_llama(&sq) * s0;
        out->nll_p = lse_p - qk_load(p, p_dtype, 1, tok);
        out->nll_q = qk_nll_llama(qk_lse_value_llama(&sq), qk_load(q, q_dtype, 1, tok));
    }
    out->kld = kld;
    out->top_p = (int32_t)top_p;
    out->top_q = (int32_t)tq.idx[0];
    out->rank = qk_topk_rank(&tq, top_p);
}

/* Top-k candidates among eight codes of the other dump (scalar pushes). */
QK_AVX2 static inline void topk_codes8(__m128i c, int64_t i, const uint16_t *row, qk_topk *t)
{
    if (t->n == QK_TOPK_MAX) {
        const __m128i thr = _mm_set1_epi16((short)(uint16_t)t->val[QK_TOPK_MAX - 1]);
        if (_mm_movemask_epi8(_mm_cmpeq_epi16(_mm_max_epu16(c, thr), thr)) == 0xFFFF)
            return;
    }
    for (int l = 0; l < 8; l++)
        qk_topk_push(t, qk_code(row, i + l), i + l);
}

QK_AVX2 static inline int popcount16(__m128i m16) { return __builtin_popcount(_mm_movemask_epi8(m16)) / 2; }

QK_AVX2 void qk_score_llama_llama_avx2(const uint16_t *p_row, const uint16_t *q_row,
                                       int64_t n_vocab, int32_t tok, int mode, qk_row *out)
{
    if (n_vocab < 64) {
        qk_score_llama_llama_scalar(p_row, q_row, n_vocab, tok, mode, out);
        return;
    }
    qk_header hp, hq;
    if (!qk_llama_llama_begin(p_row, q_row, &hp, &hq, out))
        return;
    const int exact = mode == QK_EXACT;
    const int32_t keep_from = exact ? 1 : qk_llama_keep_from(hp.scale, hp.min_log_prob);
    const __m256d sp = _mm256_set1_pd(hp.scale), mp = _mm256_set1_pd(hp.min_log_prob);
    const __m256d sq = _mm256_set1_pd(hq.scale), mq = _mm256_set1_pd(hq.min_log_prob);
    const __m256d zero = _mm256_setzero_pd();
    const __m128i z16 = _mm_setzero_si128();
    base_sums bs = {zero, zero, zero};
    __m256d q_mass = zero, p_on_q_tail = zero, p_tail_lq = zero;
    qk_llama_llama_state st = {0}; /* counts and scalar remainders, then the totals */
    qk_llama_llama_sums *sums = &st.sums;
    const int64_t nv = n_vocab & ~(int64_t)7;
    for (int64_t i = 0; i < nv; i += 8) {
        const __m128i cp = qk_codes8(p_row, i), cq = qk_codes8(q_row, i);
        argmax_codes8(cp, i, p_row, &st.best, &st.top_p);
        topk_codes8(cq, i, q_row, &st.tq);
        const __m128i qz = _mm_cmpeq_epi16(cq, z16);
        sums->q_tail_n += popcount16(qz);
        __m256d lql = zero, lqh = zero;
        const __m128i qnz = _mm_xor_si128(qz, _mm_set1_epi32(-1));
        const int any_q = !_mm_testz_si128(qnz, qnz);
        if (any_q) {
            lql = _mm256_and_pd(_mm256_fmadd_pd(sq, qk_codes_lo_pd(cq), mq), mask_lo(qnz));
            lqh = _mm256_and_pd(_mm256_fmadd_pd(sq, qk_codes_hi_pd(cq), mq), mask_hi(qnz));
            q_mass = _mm256_add_pd(q_mass, _mm256_add_pd(_mm256_and_pd(qk_exp_pd(lql), mask_lo(qnz)),
                                                         _mm256_and_pd(qk_exp_pd(lqh), mask_hi(qnz))));
        }
        if (exact) {
            const __m128i pz = _mm_cmpeq_epi16(cp, z16);
            if (!_mm_testz_si128(pz, pz)) {
                sums->p_tail_n += popcount16(pz);
                sums->p_tail_on_q_tail += popcount16(_mm_and_si128(pz, qz));
                p_tail_lq = _mm256_add_pd(p_tail_lq, _mm256_add_pd(_mm256_and_pd(lql, mask_lo(pz)),
                                                                   _mm256_and_pd(lqh, mask_hi(pz))));
            }
        }
        const __m128i k = codes_at_least(cp, keep_from);
        if (_mm_testz_si128(k, k))
            continue;
        const __m256d kl = mask_lo(k), kh = mask_hi(k);
        const __m256d lpl = _mm256_fmadd_pd(sp, qk_codes_lo_pd(cp), mp);
        const __m256d lph = _mm256_fmadd_pd(sp, qk_codes_hi_pd(cp), mp);
        const __m256d pl = _mm256_and_pd(qk_exp_pd(lpl), kl), ph = _mm256_and_pd(qk_exp_pd(lph), kh);
        bs.s0 = _mm256_add_pd(bs.s0, _mm256_add_pd(pl, ph));
        bs.s1 = _mm256_fmadd_pd(pl, lpl, _mm256_fmadd_pd(ph, lph, bs.s1));
        bs.s2 = _mm256_fmadd_pd(pl, lql, _mm256_fmadd_pd(ph, lqh, bs.s2));
        p_on_q_tail = _mm256_add_pd(p_on_q_tail, _mm256_add_pd(_mm256_and_pd(pl, mask_lo(qz)),
                                                               _mm256_and_pd(ph, mask_hi(qz))));
    }
    qk_llama_llama_range(&st, &hp, &hq, p_row, q_row, nv, n_vocab, exact, keep_from);
    sums->s0 += qk_hsum_pd(bs.s0);
    sums->s1 += qk_hsum_pd(bs.s1);
    sums->s2 += qk_hsum_pd(bs.s2);
    sums->q_mass += qk_hsum_pd(q_mass);
    sums->p_on_q_tail += qk_hsum_pd(p_on_q_tail);
    sums->p_tail_lq += qk_hsum_pd(p_tail_lq);
    qk_llama_llama_finish(sums, &hp, &hq, p_row, q_row, tok, exact, st.top_p, &st.tq, out);
}

#endif
