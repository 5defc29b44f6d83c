/* Float logits against float logits (float32, float16 or bfloat16 on either
 * side, any stride): pass 1 over each side for its normaliser, then pass 2
 * over both for the terms, llama mode's cut taken from the base's own
 * log-sum-exp. */
#include "kernel_parts.h"
#include "kernel_copies.h"

typedef struct {
    vf xmax, ymax, lsep_hi, dlse_hi, cut, ninf, lseq_hi;
} logits_consts;

typedef struct {
    vd t_lo, t_hi; /* llama: kept p~ * (((x - X) - (y - Y)) + dlse_hi); exact: e * ((x - X) - (y - Y)) */
    vd e_lo, e_hi; /* exact mode: the base's normaliser, sum of e = exp(x - X) */
    vf p32;        /* llama mode: kept p~ (it only scales float32 roundings of lse) */
    vd r_lo, r_hi; /* reverse KL: e * ((y - Y) - (x - X)), e = exp((y - Y) - lseq_hi), live q */
    js_sums js;
} logits_sums;

/* Jensen-Shannon's terms, log p and log q relative to the float32 parts of
 * the log-sum-exps (the rest is put back at the end). */
QK_INLINE void logits_js(logits_sums *s, const logits_consts *k, const vf *x, const vf *y,
                         const vmask *valid)
{
    vf la[QK_G], dqp[QK_G];
    vmask keep[QK_G];
    for (int j = 0; j < QK_G; j++) {
        const vf xr = x[j] - k->xmax, yr = y[j] - k->ymax;
        const vmask x_live = vf_gt(x[j], k->ninf);
        keep[j] = vm_and(valid[j], vm_or(x_live, vf_gt(y[j], k->ninf)));
        dqp[j] = (yr - xr) - k->dlse_hi;
        /* where the base logit is -inf, q is the larger: from its own lse */
        la[j] = vf_select(x_live, (xr - k->lsep_hi) + vf_max(dqp[j], vf_set1(0.0f)),
                          yr - k->lseq_hi);
    }
    js_add_g(&s->js, la, dqp, keep);
}

/* Reverse KL's per-entry sum: KL(Q||P) = sum q ((y - Y) - (x - X)) - lse_q + lse_p,
 * each term small when the rows are alike; a -inf base logit under a live q
 * makes it +inf. */
QK_INLINE void logits_reverse(logits_sums *s, const logits_consts *k, const vf *x, const vf *y,
                              const vmask *valid)
{
    vf yr[QK_G], e[QK_G], r[QK_G];
    vmask live[QK_G];
    for (int j = 0; j < QK_G; j++) {
        yr[j] = y[j] - k->ymax;
        e[j] = yr[j] - k->lseq_hi;
        live[j] = vm_and(valid[j], vf_gt(y[j], k->ninf));
    }
    vf_exp_n(e, QK_G);
    for (int j = 0; j < QK_G; j++)
        r[j] = vf_keep(live[j], e[j] * (yr[j] - (x[j] - k->xmax)));
    add_terms_g(&s->r_lo, &s->r_hi, r);
}

/* llama mode: the cut needs the base's log-sum-exp, so pass 1 took both
 * sides' and this is a third exp, where the cut keeps the term: the kept
 * lanes' log p~ = (x - X) - lsep_hi and d go to the kept buffer (b, n: the
 * new count is returned), and p~ = exp(log p~) is taken there.
 * exact mode: pass 1 took only the other side's normaliser and the base's
 * max; the base's exps are taken here, for its normaliser and the terms
 * alike: KL = sum e * ((x - X) - (y - Y)) / sum e - lse_p + lse_q. */
QK_INLINE int logits_step(logits_sums *s, const logits_consts *k, int flags, kept_terms *b,
                          int n, const vf *x, const vf *y, const vmask *valid)
{
    const int exact = flags & QK_EXACT;
    if (flags & QK_REVERSE)
        logits_reverse(s, k, x, y, valid);
    if (flags & QK_JS)
        logits_js(s, k, x, y, valid);
    vf xr[QK_G], e[QK_G], t[QK_G];
    vmask keep[QK_G];
    for (int j = 0; j < QK_G; j++)
        xr[j] = x[j] - k->xmax;
    if (!exact) {
        for (int j = 0; j < QK_G; j++) {
            e[j] = xr[j] - k->lsep_hi;
            keep[j] = vm_and(valid[j], vf_gt(e[j], k->cut));
            t[j] = (xr[j] - (y[j] - k->ymax)) + k->dlse_hi;
        }
        return kept_add_g(b, n, keep, e, t);
    }
    for (int j = 0; j < QK_G; j++) {
        keep[j] = vm_and(valid[j], vf_gt(x[j], k->ninf));
        e[j] = xr[j];
    }
    vf_exp_n(e, QK_G); /* > 0 for every finite x: a -inf y makes the KL +inf */
    add_exps_g(&s->e_lo, &s->e_hi, e);
    for (int j = 0; j < QK_G; j++)
        t[j] = vf_keep(keep[j], e[j] * (xr[j] - (y[j] - k->ymax)));
    add_terms_g(&s->t_lo, &s->t_hi, t);
    return n;
}

QK_INLINE void logits_logits_row(const void *p, int dp, ptrdiff_t sp, const void *q, int dq,
                                 ptrdiff_t sq, int64_t n, int64_t tok, int flags, qk_row *out)
{
    const int exact = flags & QK_EXACT;
    memset(out, 0, sizeof *out);
    norm np, nq;
    norm_init(&np);
    norm_init(&nq);
    qk_topk tq = {0}, tp = {0}, bq = {0}, bp = {0};
    for (int64_t b = 0; b < n; b += QK_BLOCK) {
        norm_block(&np, p, dp, sp, b, block_end(b, n), &bp, exact && !(flags & QK_JS),
                   QK_PREFETCH / 2);
        norm_block(&nq, q, dq, sq, b, block_end(b, n), &bq, 0, QK_PREFETCH / 2);
    }
    const side_values pv = logits_side(p, dp, sp), qv = logits_side(q, dq, sq);
    topk_of_blocks(&tp, &bp, &pv, n);
    topk_of_blocks(&tq, &bq, &qv, n);
    /* exact mode takes the base's exps (and meets its NaNs) only in pass 2,
     * unless Jensen-Shannon needs its log p there */
    const double lse_q = norm_lse(&nq);
    const double lse_p1 = exact && !(flags & QK_JS) ? 0.0 : norm_lse(&np);
    out->status = qk_side_status(np.max == INFINITY || isnan(lse_p1), np.max, QK_P_NONFINITE,
                                 QK_P_EMPTY) |
                  norm_status(&nq, lse_q, QK_Q_NONFINITE, QK_Q_EMPTY);
    if (out->status)
        return;
    /* llama mode: p~ and the terms use float32 parts of the two
     * log-sum-exps; what those parts leave out is put back in float64. */
    const float lsep_hi = (float)lse_p1, dlse_hi = (float)(lse_q - lse_p1);
    const float lseq_hi = (float)lse_q;
    const logits_consts k = {vf_set1(np.max), vf_set1(nq.max), vf_set1(lsep_hi),
                             vf_set1(dlse_hi), vf_set1(-16.0f), vf_set1(-INFINITY),
                             vf_set1(lseq_hi)};
    const vd z = vd_set1(0.0);
    logits_sums s = {z, z, z, z, vf_set1(0.0f), z, z, {z, z, z, z}};
    kept_terms kept;
    int kept_n = 0;
    for (int64_t b = 0; b < n; b += QK_BLOCK) {
        const int64_t e = block_end(b, n);
        int64_t i = b;
        for (; i + QK_SPAN <= e; i += QK_SPAN) {
            vf x[QK_G], y[QK_G];
            vmask valid[QK_G];
            load_logits_g(x, valid, p, dp, sp, i, e, 1);
            load_logits_g(y, valid, q, dq, sq, i, e, 1);
            kept_n = logits_step(&s, &k, flags, &kept, kept_n, x, y, valid);
        }
        if (i < e) {
            vf x[QK_G], y[QK_G];
            vmask valid[QK_G];
            load_logits_g(x, valid, p, dp, sp, i, e, 0);
            load_logits_g(y, valid, q, dq, sq, i, e, 0);
            kept_n = logits_step(&s, &k, flags, &kept, kept_n, x, y, valid);
        }
        if (!exact)
            kept_n = kept_sum(&kept, kept_n, KEPT_LOG_P, NULL, &s.t_lo, &s.t_hi, &s.p32, e == n);
    }
    const double lse_p = exact ? log(vd_hsum(widened_sum(s.e_lo, s.e_hi))) : lse_p1;
    if (isnan(lse_p)) {
        out->status = QK_P_NONFINITE;
        return;
    }
    const double t = vd_hsum(widened_sum(s.t_lo, s.t_hi));
    if (exact) {
        out->kld = t * exp(-lse_p) - lse_p + lse_q;
    } else {
        const double lsep_lo = lse_p - lsep_hi, dlse_lo = (lse_q - lse_p) - dlse_hi;
        out->kld = exp(-lsep_lo) *
                   (t + dlse_lo * vd_hsum(widened_sum(vf_lo_pd(s.p32), vf_hi_pd(s.p32))));
    }
    if (flags & QK_REVERSE) /* q = e * exp(-(lse_q - lseq_hi)) */
        out->rkl = exp(-(lse_q - lseq_hi)) * vd_hsum(widened_sum(s.r_lo, s.r_hi)) - lse_q + lse_p;
    if (flags & QK_JS)
        out->js = js_of(&s.js, exp(-(lse_p1 - lsep_hi)), -((lse_q - lse_p1) - dlse_hi));
    const float y_tok = qk_logit_at(q, dq, sq, tok);
    out->nll_p = ((double)np.max - qk_logit_at(p, dp, sp, tok)) + lse_p;
    out->nll_q = ((double)nq.max - y_tok) + lse_q;
    out->nll_q_llama = llama_nll(nq.max, lse_q, y_tok);
    qk_set_tops(out, &tp, &tq, exp(-lse_p));
}

#define QK_LL_PARAMS                                                                               \
    (const void *p, int p_dtype, ptrdiff_t p_stride, const void *q, int q_dtype,                   \
     ptrdiff_t q_stride, int64_t n_vocab, int64_t tok, int mode, qk_row *out)
#define QK_LL_ARGS (p, p_dtype, p_stride, q, q_dtype, q_stride, n_vocab, tok, mode, out)
#define QK_LL_SAME(DT, F) logits_logits_row(p, DT, 1, q, DT, 1, n_vocab, tok, F, out)
#define QK_LL_F32(F) QK_LL_SAME(QK_F32, F)
#define QK_LL_F16(F) QK_LL_SAME(QK_F16, F)
#define QK_LL_BF16(F) QK_LL_SAME(QK_BF16, F)
#define QK_LL_CONTIGUOUS(F) logits_logits_row(p, p_dtype, 1, q, q_dtype, 1, n_vocab, tok, F, out)
#define QK_LL_ANY(F)                                                                               \
    logits_logits_row(p, p_dtype, p_stride, q, q_dtype, q_stride, n_vocab, tok, F, out)
#ifndef QK_FEW_COPIES
QK_FLAG_COPIES(logits_f32, QK_LL_PARAMS, QK_LL_F32)
QK_FLAG_COPIES(logits_f16, QK_LL_PARAMS, QK_LL_F16)
QK_FLAG_COPIES(logits_bf16, QK_LL_PARAMS, QK_LL_BF16)
#endif
QK_MODE_COPIES(logits_any, QK_LL_PARAMS, QK_LL_ANY)
QK_JS_COPIES(logits_logits, QK_LL_PARAMS, QK_LL_CONTIGUOUS)
QK_JS_STRIDED_COPY(logits_logits, QK_LL_PARAMS, QK_LL_ANY)

void QK_NAME(qk_score_logits_logits)(const void *p, int p_dtype, ptrdiff_t p_stride, const void *q,
                                     int q_dtype, ptrdiff_t q_stride, int64_t n_vocab, int64_t tok,
                                     int mode, qk_row *out)
{
    const int contiguous = p_stride == 1 && q_stride == 1;
    if (mode & QK_JS) {
        if (contiguous)
            QK_BY_MODE_JS(logits_logits, QK_LL_ARGS);
        else
            copy_logits_logits_js_strided QK_LL_ARGS;
        return;
    }
#ifndef QK_FEW_COPIES
    if (contiguous && p_dtype == q_dtype) {
        if (p_dtype == QK_F32)
            QK_BY_FLAGS(logits_f32, QK_LL_ARGS);
        else if (p_dtype == QK_F16)
            QK_BY_FLAGS(logits_f16, QK_LL_ARGS);
        else
            QK_BY_FLAGS(logits_bf16, QK_LL_ARGS);
        return;
    }
#endif
    QK_BY_MODE(logits_any, QK_LL_ARGS);
}
