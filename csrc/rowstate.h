/* Per-row running state shared by every kernel path. */
#ifndef QUANTKL_ROWSTATE_H
#define QUANTKL_ROWSTATE_H

#include <math.h>

#include "quantkl.h"
#include "rowload.h"

/* Online log-sum-exp: sum holds sum(exp(v - max)); when a larger value
 * arrives the sum is rescaled, so one read of a row gives its normaliser. */
typedef struct {
    double max;
    double sum;
} qk_lse;

#define QK_LSE_INIT {-INFINITY, 0.0}

static inline void qk_lse_push(qk_lse *a, double v)
{
    if (v > a->max) {
        a->sum = a->sum * exp(a->max - v) + 1.0;
        a->max = v;
    } else if (v > -INFINITY) {
        a->sum += exp(v - a->max);
    }
}

static inline double qk_lse_value(const qk_lse *a) { return a->max + log(a->sum); }

/* llama.cpp holds max + log(sum) in float32 and uses that for every term of
 * the row: rounding it the same way is what llama mode means by "the same
 * numbers to the printed digit" (it moves a row's KLD by up to 1e-6 nats). */
static inline double qk_lse_value_llama(const qk_lse *a)
{
    const float m = (float)a->max, l = (float)log(a->sum);
    return (float)(m + l);
}

/* llama.cpp's float32 NLL of a token: float(lse) - logit, in float. */
static inline double qk_nll_llama(double lse, double logit) { return (float)((float)lse - (float)logit); }

/* llama.cpp's float32 decoding of a base row's token: -(scale*code + min). */
static inline double qk_nll_base_llama(double scale, uint16_t code, double min_log_prob)
{
    const float lp = (float)scale * (float)code;
    return -(float)(lp + (float)min_log_prob);
}

/* The QK_TOPK_MAX largest values seen so far, largest first; equal values
 * keep index order, so idx[0] is the first index of the maximum. */
typedef struct {
    int n;
    double val[QK_TOPK_MAX];
    int64_t idx[QK_TOPK_MAX];
} qk_topk;

static inline void qk_topk_push(qk_topk *t, double v, int64_t i)
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

/* Smallest code whose decoded log-probability passes llama.cpp's cut
 * (scale*code + min > -16, in double as the scalar kernel tests it);
 * 65536 when no code does. Lets SIMD paths test the cut on integer codes. */
static inline int32_t qk_llama_keep_from(double scale, double min_log_prob)
{
    if (scale == 0)
        return min_log_prob > -16.0 ? 0 : 65536;
    double c = ceil((-16.0 - min_log_prob) / scale);
    int32_t k = c < 0 ? 0 : c > 65536 ? 65536 : (int32_t)c;
    while (k > 0 && scale * (k - 1) + min_log_prob > -16.0)
        k--;
    while (k <= 65535 && !(scale * k + min_log_prob > -16.0))
        k++;
    return k;
}

static inline int32_t qk_side_status(int nonfinite, double max, int32_t nonfinite_bit,
                                     int32_t empty_bit)
{
    if (nonfinite)
        return nonfinite_bit;
    return max == -INFINITY ? empty_bit : 0;
}

/* Clears out and reads the base row's header; 0 (with out->status set) if it
 * is corrupt. *keep_from: the first code kept in the sum for this mode. */
static inline int qk_llama_logits_begin(const uint16_t *p_row, int mode, qk_header *h,
                                        int32_t *keep_from, qk_row *out)
{
    memset(out, 0, sizeof *out);
    if (!qk_read_header(p_row, h)) {
        out->status = QK_P_BAD_HEADER;
        return 0;
    }
    *keep_from = mode == QK_EXACT ? 1 : qk_llama_keep_from(h->scale, h->min_log_prob);
    return 1;
}

/* Sums over a base llama row's entries against the other side's logits
 * (gathered by any path, in any order). */
typedef struct {
    double s0, s1, s2;     /* kept base terms: sum p, p*log p, p*y */
    double tail_n, tail_y; /* exact mode: base code-0 entries where y is finite; sum of y */
} qk_llama_logits_sums;

/* One entry: base code c, other logit y; keep_from from qk_llama_keep_from
 * (llama mode) or 1 (exact mode, where code 0 is the tail). */
static inline void qk_llama_logits_add(qk_llama_logits_sums *s, const qk_header *h, uint16_t c,
                                       double y, int exact, int32_t keep_from)
{
    if (exact && c == 0) {
        if (y > -INFINITY) {
            s->tail_n += 1;
            s->tail_y += y;
        }
        return;
    }
    if (c < keep_from)
        return;
    const double lp = h->scale * c + h->min_log_prob, p = exp(lp);
    if (p > 0) {
        s->s0 += p;
        s->s1 += p * lp;
        s->s2 += p * y;
    }
}

/* KLD, NLLs and tops of a base llama row against logits, from the sums. */
static inline void qk_llama_logits_finish(const qk_llama_logits_sums *s, const qk_header *h,
                                          const uint16_t *p_row, const qk_lse *lq, double y_tok,
                                          int32_t tok, int exact, int64_t top_p,
                                          const qk_topk *tq, qk_row *out)
{
    const double lse_q = exact ? qk_lse_value(lq) : qk_lse_value_llama(lq);
    double kld = s->s1 - s->s2 + lse_q * s->s0;
    double c_tail = -INFINITY;
    if (s->tail_n > 0) {
        c_tail = qk_tail_log_prob(1.0 - s->s0, s->tail_n, h->min_log_prob);
        kld += exp(c_tail) * (s->tail_n * (c_tail + lse_q) - s->tail_y);
    }
    const uint16_t c_tok = qk_code(p_row, tok);
    out->kld = kld;
    if (exact) {
        out->nll_q = lse_q - y_tok;
        out->nll_p = c_tok ? -(h->scale * c_tok + h->min_log_prob)
                           : (y_tok > -INFINITY ? -c_tail : INFINITY);
    } else {
        out->nll_q = qk_nll_llama(lse_q, y_tok);
        out->nll_p = qk_nll_base_llama(h->scale, c_tok, h->min_log_prob);
    }
    out->top_p = (int32_t)top_p;
    out->top_q = (int32_t)tq->idx[0];
    out->rank = qk_topk_rank(tq, top_p);
}

/* Sums over two llama rows (base P, other Q whose code 0 is its tail). */
typedef struct {
    double s0, s1, s2;       /* kept base terms: sum p, p*log p, p*log q (q decoded) */
    double p_on_q_tail;      /* base mass where Q has code 0 */
    double q_mass, q_tail_n; /* Q's decoded mass; its code-0 count */
    double p_tail_n, p_tail_lq, p_tail_on_q_tail; /* exact: base code-0 entries */
} qk_llama_llama_sums;

/* Clears out and reads both headers; 0 (with out->status set) if either is corrupt. */
static inline int qk_llama_llama_begin(const uint16_t *p_row, const uint16_t *q_row,
                                       qk_header *hp, qk_header *hq, qk_row *out)
{
    memset(out, 0, sizeof *out);
    if (!qk_read_header(p_row, hp))
        out->status |= QK_P_BAD_HEADER;
    if (!qk_read_header(q_row, hq))
        out->status |= QK_Q_BAD_HEADER;
    return out->status == 0;
}

static inline void qk_llama_llama_add(qk_llama_llama_sums *s, const qk_header *hp,
                                      const qk_header *hq, uint16_t cp, uint16_t cq, int exact,
                                      int32_t keep_from)
{
    double lq = 0;
    if (cq) {
        lq = hq->scale * cq + hq->min_log_prob;
        s->q_mass += exp(lq);
    } else {
        s->q_tail_n += 1;
    }
    if (exact && cp == 0) {
        s->p_tail_n += 1;
        if (cq)
            s->p_tail_lq += lq;
        else
            s->p_tail_on_q_tail += 1;
        return;
    }
    if (cp < keep_from)
        return;
    const double lp = hp->scale * cp + hp->min_log_prob, p = exp(lp);
    s->s0 += p;
    s->s1 += p * lp;
    if (cq)
        s->s2 += p * lq;
    else
        s->p_on_q_tail += p;
}

/* Everything a pass over two llama rows carries from entry to entry. */
typedef struct {
    qk_llama_llama_sums sums;
    qk_topk tq;      /* the other dump's largest codes */
    uint16_t best;   /* the base's largest code so far, first at top_p */
    int64_t top_p;
} qk_llama_llama_state;

/* Entries [from, to) one at a time: the scalar kernel's whole row, and the
 * remainder after a SIMD path's groups of eight. */
static inline void qk_llama_llama_range(qk_llama_llama_state *st, const qk_header *hp,
                                        const qk_header *hq, const uint16_t *p_row,
                                        const uint16_t *q_row, int64_t from, int64_t to,
                                        int exact, int32_t keep_from)
{
    for (int64_t i = from; i < to; i++) {
        const uint16_t cp = qk_code(p_row, i), cq = qk_code(q_row, i);
        if (cp > st->best) {
            st->best = cp;
            st->top_p = i;
        }
        qk_topk_push(&st->tq, cq, i);
        qk_llama_llama_add(&st->sums, hp, hq, cp, cq, exact, keep_from);
    }
}

static inline void qk_llama_llama_finish(const qk_llama_llama_sums *s, const qk_header *hp,
                                         const qk_header *hq, const uint16_t *p_row,
                                         const uint16_t *q_row, int32_t tok, int exact,
                                         int64_t top_p, const qk_topk *tq, qk_row *out)
{
    const double c_q =
        s->q_tail_n > 0 ? qk_tail_log_prob(1.0 - s->q_mass, s->q_tail_n, hq->min_log_prob) : 0;
    double kld = s->s1 - s->s2 - c_q * s->p_on_q_tail;
    double c_p = 0;
    if (s->p_tail_n > 0) {
        c_p = qk_tail_log_prob(1.0 - s->s0, s->p_tail_n, hp->min_log_prob);
        kld += exp(c_p) * (s->p_tail_n * c_p - s->p_tail_lq - s->p_tail_on_q_tail * c_q);
    }
    const uint16_t cp_tok = qk_code(p_row, tok), cq_tok = qk_code(q_row, tok);
    out->kld = kld;
    if (exact) {
        out->nll_q = cq_tok ? -(hq->scale * cq_tok + hq->min_log_prob) : -c_q;
        out->nll_p = cp_tok ? -(hp->scale * cp_tok + hp->min_log_prob) : -c_p;
    } else { /* the base's NLL as llama.cpp decodes it, whatever the other side is */
        out->nll_q = cq_tok ? qk_nll_base_llama(hq->scale, cq_tok, hq->min_log_prob) : -c_q;
        out->nll_p = qk_nll_base_llama(hp->scale, cp_tok, hp->min_log_prob);
    }
    out->top_p = (int32_t)top_p;
    out->top_q = (int32_t)tq->idx[0];
    out->rank = qk_topk_rank(tq, top_p);
}

#endif
