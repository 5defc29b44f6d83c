/* Scalar pieces every kernel shares: reading one element or a row header,
 * llama.cpp's decoding of a dump's code, the top-k list and the clipped-tail
 * model of code 0. Everything here runs once per row or on rare elements;
 * the per-entry work is in the kernel families (kernel_parts.h and beside). */
#ifndef QUANTKL_ROWSTATE_H
#define QUANTKL_ROWSTATE_H

#include <math.h>
#include <string.h>

#include "quantkl.h"

static inline float qk_f16_to_float(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, expo = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    uint32_t bits;
    float out;
    if (expo == 0x1fu) {
        bits = sign | 0x7f800000u | (mant << 13); /* inf or NaN */
    } else if (expo) {
        bits = sign | ((expo + 112u) << 23) | (mant << 13);
    } else { /* zero or subnormal: mant * 2^-24, exact in float */
        out = (float)mant * 5.9604644775390625e-8f;
        memcpy(&bits, &out, 4);
        bits |= sign;
    }
    memcpy(&out, &bits, 4);
    return out;
}

static inline float qk_bf16_to_float(uint16_t b)
{
    const uint32_t bits = (uint32_t)b << 16;
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

/* Element i of a logit row of the given dtype and stride (in elements),
 * widened to float32 exactly. Reads through memcpy: rows may be misaligned. */
static inline float qk_logit_at(const void *row, int dtype, ptrdiff_t stride, int64_t i)
{
    const unsigned char *b = (const unsigned char *)row;
    if (dtype == QK_F32) {
        float v;
        memcpy(&v, b + (ptrdiff_t)i * stride * 4, 4);
        return v;
    }
    uint16_t h;
    memcpy(&h, b + (ptrdiff_t)i * stride * 2, 2);
    return dtype == QK_F16 ? qk_f16_to_float(h) : qk_bf16_to_float(h);
}

static inline uint16_t qk_code(const uint16_t *row, int64_t i)
{
    uint16_t c;
    memcpy(&c, (const unsigned char *)row + 8 + 2 * i, 2);
    return c;
}

/* A llama row's header: log p[i] = scale * code[i] + min_log_prob. */
typedef struct {
    float scale;
    float min_log_prob;
} qk_header;

/* 0 when the header cannot be a llama row's: not finite, scale < 0, or
 * min_log_prob > 0 (it is the clip point minus the max minus log-sum-exp). */
static inline int qk_read_header(const uint16_t *row, qk_header *h)
{
    memcpy(h, row, sizeof *h);
    return isfinite(h->scale) && isfinite(h->min_log_prob) && h->scale >= 0.0f &&
           h->min_log_prob <= 0.0f;
}

/* Whether a llama row with a good header is still no row llama.cpp writes,
 * from facts a pass over it gives for free: its largest decoded log p (a
 * genuine row's is -log-sum-exp <= 0, up to rounding), the decoded mass of
 * the entries it keeps (at most 1, up to the codes' rounding), and, for a
 * row of scale 0 (all logits equal), codes all 0 and min_log_prob =
 * -log(n_vocab). Zero-filled, random and shifted rows fail one of them. */
static inline int qk_row_corrupt(const qk_header *h, double max_log_p, double kept_mass,
                                 const uint16_t *row, int64_t n)
{
    if (max_log_p > 1e-3 || !(kept_mass <= 1.0 + 1e-3))
        return 1;
    if (h->scale != 0.0f)
        return 0;
    if (fabs(h->min_log_prob + log((double)n)) > 1e-3)
        return 1;
    for (int64_t i = 0; i < n; i++)
        if (qk_code(row, i))
            return 1;
    return 0;
}

/* llama.cpp's decoding of a code, in float32: the product rounded, then the
 * sum rounded (the build never fuses them), so that the -16 cut keeps the
 * very terms llama-perplexity keeps. */
static inline float qk_decode(const qk_header *h, uint16_t code)
{
    const float scaled = h->scale * (float)code;
    return scaled + h->min_log_prob;
}

/* The QK_TOPK_MAX largest values seen so far, largest first; equal values
 * keep index order, so idx[0] is the first index of the maximum. */
typedef struct {
    int n;
    float val[QK_TOPK_MAX];
    int64_t idx[QK_TOPK_MAX];
} qk_topk;

static inline void qk_topk_push(qk_topk *t, float v, int64_t i)
{
    if (t->n == QK_TOPK_MAX && !(v > t->val[QK_TOPK_MAX - 1]))
        return;
    int j = t->n < QK_TOPK_MAX ? t->n++ : QK_TOPK_MAX - 1;
    while (j > 0 && t->val[j - 1] < v) {
        t->val[j] = t->val[j - 1];
        t->idx[j] = t->idx[j - 1];
        j--;
    }
    t->val[j] = v;
    t->idx[j] = i;
}

static inline float qk_topk_best(const qk_topk *t) { return t->n ? t->val[0] : -INFINITY; }

/* overlap[k - 1] = how many of P's first k are among Q's first k, k = 1 ..
 * QK_TOPK_MAX (a list shorter than k, on a vocabulary under QK_TOPK_MAX,
 * takes what it has). */
static inline void qk_topk_overlap(const qk_topk *p, const qk_topk *q, uint8_t *overlap)
{
    for (int k = 1; k <= QK_TOPK_MAX; k++) {
        int n = 0;
        for (int a = 0; a < k && a < p->n; a++)
            for (int b = 0; b < k && b < q->n; b++)
                n += p->idx[a] == q->idx[b];
        overlap[k - 1] = (uint8_t)n;
    }
}

static inline int32_t qk_topk_rank(const qk_topk *t, int64_t i)
{
    for (int j = 0; j < t->n; j++)
        if (t->idx[j] == i)
            return j;
    return QK_TOPK_MAX;
}

/* Log-probability of each of n code-0 entries of a llama row: code 0 means
 * "at or below the clip point", so the mass the decoded entries leave of 1
 * is spread evenly over them, kept within 16 nats below the clip point
 * (rounding of the codes can make that leftover zero or negative). */
static inline double qk_tail_log_prob(double mass, double n, double min_log_prob)
{
    double c = mass > 0 ? log(mass / n) : -INFINITY;
    if (c > min_log_prob)
        c = min_log_prob;
    if (!(c > min_log_prob - 16.0))
        c = min_log_prob - 16.0;
    return c;
}

/* The row's outputs that come from the two top-k lists, and P's top-1
 * probability (p_top, from the side's own normaliser). */
static inline void qk_set_tops(qk_row *out, const qk_topk *tp, const qk_topk *tq, double p_top)
{
    out->top_p = tp->idx[0];
    out->top_q = tq->idx[0];
    out->rank = qk_topk_rank(tq, tp->idx[0]);
    out->p_top = p_top;
    qk_topk_overlap(tp, tq, out->overlap);
}

static inline int32_t qk_side_status(int nonfinite, float max, int32_t nonfinite_bit,
                                     int32_t empty_bit)
{
    if (nonfinite)
        return nonfinite_bit;
    return max == -INFINITY ? empty_bit : 0;
}

#endif
