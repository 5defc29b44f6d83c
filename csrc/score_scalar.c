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
    qk_header h;
    int32_t keep_from;
    if (!qk_llama_logits_begin(p_row, mode, &h, &keep_from, out))
        return;
    const int exact = mode == QK_EXACT;
    qk_lse lq = QK_LSE_INIT;
    qk_topk tq = {0};
    qk_llama_logits_sums sums = {0};
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
        qk_llama_logits_add(&sums, &h, c, y, exact, keep_from);
    }
    out->status = qk_side_status(bad, lq.max, QK_Q_NONFINITE, QK_Q_EMPTY);
    if (out->status)
        return;
    qk_llama_logits_finish(&sums, &h, p_row, &lq, qk_load(q, q_dtype, q_stride, tok), tok, exact,
                           top_p, &tq, out);
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
    qk_header hp, hq;
    if (!qk_llama_llama_begin(p_row, q_row, &hp, &hq, out))
        return;
    const int exact = mode == QK_EXACT;
    const int32_t keep_from = exact ? 1 : qk_llama_keep_from(hp.scale, hp.min_log_prob);
    qk_llama_llama_state st = {0};
    qk_llama_llama_range(&st, &hp, &hq, p_row, q_row, 0, n_vocab, exact, keep_from);
    qk_llama_llama_finish(&st.sums, &hp, &hq, p_row, q_row, tok, exact, st.top_p, &st.tq, out);
}
