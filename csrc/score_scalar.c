/* Portable row kernels: one pass per row where the maths allows it, float64
 * throughout. These define the numbers; SIMD paths must agree with them. */
#include <math.h>
#include <string.h>

#include "quantkl.h"
#include "rowload.h"
#include "rowstate.h"

void qk_score_llama_logits_scalar(const uint16_t *p_row, const void *q, int q_dtype,
                                  ptrdiff_t q_stride, int64_t n_vocab, int32_t tok, int mode,
                                  qk_row *out)
{
    memset(out, 0, sizeof *out);
    qk_header h;
    if (!qk_read_header(p_row, &h)) {
        out->status = QK_P_BAD_HEADER;
        return;
    }
    const int exact = mode == QK_EXACT;
    qk_lse lq = QK_LSE_INIT;
    qk_topk tq = {0};
    double s0 = 0, s1 = 0, s2 = 0;    /* base terms kept: sum p, p*log p, p*y */
    double tail_n = 0, tail_y = 0;    /* exact mode: base code-0 entries, sum of their y */
    int bad = 0;
    uint16_t best = 0;
    int64_t top_p = 0;
    for (int64_t i = 0; i < n_vocab; i++) {
        const double y = qk_load(q, q_dtype, q_stride, i);
        bad |= !(y < INFINITY);
        qk_lse_push(&lq, y);
        qk_topk_push(&tq, y, i);
        const uint16_t c = qk_code(p_row, i);
        if (c > best) {
            best = c;
            top_p = i;
        }
        if (exact && c == 0) {
            if (y > -INFINITY) {
                tail_n += 1;
                tail_y += y;
            }
            continue;
        }
        const double lp = h.scale * c + h.min_log_prob;
        if (!exact && !(lp > -16.0))
            continue;
        const double p = exp(lp);
        if (p > 0) {
            s0 += p;
            s1 += p * lp;
            s2 += p * y;
        }
    }
    if (bad)
        out->status |= QK_Q_NONFINITE;
    if (lq.max == -INFINITY)
        out->status |= QK_Q_EMPTY;
    if (out->status)
        return;
    const double lse_q = exact ? qk_lse_value(&lq) : qk_lse_value_llama(&lq);
    double kld = s1 - s2 + lse_q * s0;
    double c_tail = -INFINITY;
    if (tail_n > 0) {
        c_tail = qk_tail_log_prob(1.0 - s0, tail_n, h.min_log_prob);
        kld += exp(c_tail) * (tail_n * (c_tail + lse_q) - tail_y);
    }
    const double y_tok = qk_load(q, q_dtype, q_stride, tok);
    const uint16_t c_tok = qk_code(p_row, tok);
    out->kld = kld;
    if (exact) {
        out->nll_q = lse_q - y_tok;
        out->nll_p = c_tok ? -(h.scale * c_tok + h.min_log_prob)
                           : (y_tok > -INFINITY ? -c_tail : INFINITY);
    } else {
        out->nll_q = qk_nll_llama(lse_q, y_tok);
        out->nll_p = qk_nll_base_llama(h.scale, c_tok, h.min_log_prob);
    }
    out->top_p = (int32_t)top_p;
    out->top_q = (int32_t)tq.idx[0];
    out->rank = qk_topk_rank(&tq, top_p);
}

/* llama mode needs P's normaliser before it can apply the -16 cut, so it
 * reads P twice; exact mode folds everything into one pass. */
void qk_score_logits_logits_scalar(const void *p, int p_dtype, ptrdiff_t p_stride, const void *q,
                                   int q_dtype, ptrdiff_t q_stride, int64_t n_vocab, int32_t tok,
                                   int mode, qk_row *out)
{
    memset(out, 0, sizeof *out);
    qk_lse lp = QK_LSE_INIT, lq = QK_LSE_INIT;
    qk_topk tq = {0};
    double top_x = -INFINITY;
    int64_t top_p = 0;
    int bad_p = 0, bad_q = 0;
    double kld;
    if (mode == QK_EXACT) {
        double a = 0; /* sum over i of exp(x_i - lp.max) * (x_i - y_i) */
        for (int64_t i = 0; i < n_vocab; i++) {
            const double x = qk_load(p, p_dtype, p_stride, i);
            const double y = qk_load(q, q_dtype, q_stride, i);
            bad_p |= !(x < INFINITY);
            bad_q |= !(y < INFINITY);
            qk_lse_push(&lq, y);
            qk_topk_push(&tq, y, i);
            if (x > top_x) {
                top_x = x;
                top_p = i;
            }
            if (!(x > -INFINITY))
                continue;
            const double d = x - y;
            if (x > lp.max) {
                const double r = exp(lp.max - x);
                lp.sum = lp.sum * r + 1.0;
                a = (a == INFINITY ? a : a * r) + d;
                lp.max = x;
            } else {
                const double e = exp(x - lp.max);
                lp.sum += e;
                a += e * d;
            }
        }
        if (bad_p || bad_q || lp.max == -INFINITY || lq.max == -INFINITY)
            goto fail;
        kld = a / lp.sum - qk_lse_value(&lp) + qk_lse_value(&lq);
    } else {
        for (int64_t i = 0; i < n_vocab; i++) {
            const double x = qk_load(p, p_dtype, p_stride, i);
            bad_p |= !(x < INFINITY);
            qk_lse_push(&lp, x);
            if (x > top_x) {
                top_x = x;
                top_p = i;
            }
        }
        if (bad_p || lp.max == -INFINITY)
            goto fail;
        const double lse_p = qk_lse_value(&lp);
        double s0 = 0, s1 = 0, s2 = 0;
        for (int64_t i = 0; i < n_vocab; i++) {
            const double y = qk_load(q, q_dtype, q_stride, i);
            bad_q |= !(y < INFINITY);
            qk_lse_push(&lq, y);
            qk_topk_push(&tq, y, i);
            const double lpi = qk_load(p, p_dtype, p_stride, i) - lse_p;
            if (!(lpi > -16.0))
                continue;
            const double pi = exp(lpi);
            s0 += pi;
            s1 += pi * lpi;
            s2 += pi * y;
        }
        if (bad_q || lq.max == -INFINITY)
            goto fail;
        kld = s1 - s2 + qk_lse_value_llama(&lq) * s0;
    }
    out->kld = kld;
    out->nll_p = qk_lse_value(&lp) - qk_load(p, p_dtype, p_stride, tok);
    const double y_tok = qk_load(q, q_dtype, q_stride, tok);
    out->nll_q = mode == QK_EXACT ? qk_lse_value(&lq) - y_tok
                                  : qk_nll_llama(qk_lse_value_llama(&lq), y_tok);
    out->top_p = (int32_t)top_p;
    out->top_q = (int32_t)tq.idx[0];
    out->rank = qk_topk_rank(&tq, top_p);
    return;
fail:
    out->status = qk_side_status(bad_p, lp.max, QK_P_NONFINITE, QK_P_EMPTY);
    if (!out->status || mode == QK_EXACT)
        out->status |= qk_side_status(bad_q, lq.max, QK_Q_NONFINITE, QK_Q_EMPTY);
}

void qk_score_llama_llama_scalar(const uint16_t *p_row, const uint16_t *q_row, int64_t n_vocab,
                                 int32_t tok, int mode, qk_row *out)
{
    memset(out, 0, sizeof *out);
    qk_header hp, hq;
    if (!qk_read_header(p_row, &hp))
        out->status |= QK_P_BAD_HEADER;
    if (!qk_read_header(q_row, &hq))
        out->status |= QK_Q_BAD_HEADER;
    if (out->status)
        return;
    const int exact = mode == QK_EXACT;
    qk_topk tq = {0};
    double s0 = 0, s1 = 0, s2 = 0; /* base terms kept: sum p, p*log p, p*log q (q decoded) */
    double p_on_q_tail = 0;        /* base mass where Q has code 0 */
    double q_mass = 0, q_tail_n = 0;
    double p_tail_n = 0, p_tail_lq = 0, p_tail_on_q_tail = 0; /* exact: base code-0 entries */
    uint16_t best = 0;
    int64_t top_p = 0;
    for (int64_t i = 0; i < n_vocab; i++) {
        const uint16_t cp = qk_code(p_row, i), cq = qk_code(q_row, i);
        if (cp > best) {
            best = cp;
            top_p = i;
        }
        qk_topk_push(&tq, cq, i);
        double lq = 0;
        if (cq) {
            lq = hq.scale * cq + hq.min_log_prob;
            q_mass += exp(lq);
        } else {
            q_tail_n += 1;
        }
        if (exact && cp == 0) {
            p_tail_n += 1;
            if (cq)
                p_tail_lq += lq;
            else
                p_tail_on_q_tail += 1;
            continue;
        }
        const double lp = hp.scale * cp + hp.min_log_prob;
        if (!exact && !(lp > -16.0))
            continue;
        const double p = exp(lp);
        s0 += p;
        s1 += p * lp;
        if (cq)
            s2 += p * lq;
        else
            p_on_q_tail += p;
    }
    const double c_q = q_tail_n > 0 ? qk_tail_log_prob(1.0 - q_mass, q_tail_n, hq.min_log_prob) : 0;
    double kld = s1 - s2 - c_q * p_on_q_tail;
    double c_p = 0;
    if (p_tail_n > 0) {
        c_p = qk_tail_log_prob(1.0 - s0, p_tail_n, hp.min_log_prob);
        kld += exp(c_p) * (p_tail_n * c_p - p_tail_lq - p_tail_on_q_tail * c_q);
    }
    const uint16_t cp_tok = qk_code(p_row, tok), cq_tok = qk_code(q_row, tok);
    out->kld = kld;
    if (exact) {
        out->nll_q = cq_tok ? -(hq.scale * cq_tok + hq.min_log_prob) : -c_q;
        out->nll_p = cp_tok ? -(hp.scale * cp_tok + hp.min_log_prob) : -c_p;
    } else { /* the base's NLL as llama.cpp decodes it, whatever the other side is */
        out->nll_q = cq_tok ? qk_nll_base_llama(hq.scale, cq_tok, hq.min_log_prob) : -c_q;
        out->nll_p = qk_nll_base_llama(hp.scale, cp_tok, hp.min_log_prob);
    }
    out->top_p = (int32_t)top_p;
    out->top_q = (int32_t)tq.idx[0];
    out->rank = qk_topk_rank(&tq, top_p);
}
