/* A dump row against a dump row (quantkl compare): one pass over both rows'
 * codes, each side's clipped tail (code 0) read as its own tail log p where
 * exact mode, the reverse KL or Jensen-Shannon needs it. */
#include "kernel_parts.h"
#include "kernel_copies.h"

typedef struct {
    vf sp, mp, sq, mq, cut, zero;
    vf tail_p, tail_q; /* Jensen-Shannon: the two tails' log p */
} llama_llama_consts;

typedef struct {
    vd t_lo, t_hi;   /* kept base entries: p * (lp - lq), lq = Q's clip point on its code 0 */
    vf pq;           /* kept base entries on Q's code 0: p (it scales c_q - clip <= 16) */
    vf p32;          /* llama mode, kept base entries: p (for the corrupt-row check) */
    mass_sum q;      /* Q's decoded mass: exp(lq) where its code > 0 (add_mass_g) */
    mass_sum p;      /* the base's decoded mass (code > 0), for its tail (exact mode, or
                        the reverse KL): add_mass_g's */
    vd l_lo, l_hi;   /* exact mode, base code 0 on Q's code > 0: lq */
    int64_t q_tail_n; /* Q's code-0 entries */
    int64_t p_tail_n, p_tail_on_q_tail; /* exact mode or the reverse KL: the base's code-0
                                           entries, and those where Q's code is 0 too */
    vf lp_max, lq_max; /* the block's largest decoded log p and log q */
    /* reverse KL, over Q's code > 0 (e = exp(lq)): e * (lq - lp) where the base
     * has a log p here (code > 0), else e * lq and e (the base's tail log p
     * comes at the end); over Q's code 0 where the base has a log p: lp (Q's
     * tail comes at the end) */
    vd r_lo, r_hi, a_lo, a_hi, b_lo, b_hi, l3_lo, l3_hi;
    js_sums js;
} llama_llama_sums;

/* Jensen-Shannon's terms, in either mode: each side's decoded log p, its
 * code 0 its clipped tail. */
QK_INLINE void llama_llama_js(llama_llama_sums *s, const llama_llama_consts *k, const vf *cp,
                              const vf *lp, const vf *lq, const vmask *q_live, const vmask *valid)
{
    vf la[QK_G], dqp[QK_G];
    for (int j = 0; j < QK_G; j++) {
        const vf p = vf_select(vf_gt(cp[j], k->zero), lp[j], k->tail_p);
        dqp[j] = vf_select(q_live[j], lq[j], k->tail_q) - p;
        la[j] = p + vf_max(dqp[j], k->zero);
    }
    js_add_g(&s->js, la, dqp, valid);
}

/* Reverse KL's per-entry sums; e = exp(lq), taken for Q's mass. Either
 * side's code 0 is its clipped tail, in both modes: the base's decoded log p
 * where its code > 0 (has_lp), else its tail's (c_p, known at the end). */
QK_INLINE void llama_llama_reverse(llama_llama_sums *s, const vf *cp, const vf *lp, const vf *lq,
                                   const vf *e, const vmask *q_live, const vmask *valid, vf zero)
{
    vf r[QK_G], a[QK_G], b[QK_G], l3[QK_G];
    for (int j = 0; j < QK_G; j++) {
        const vmask has_lp = vm_and(valid[j], vf_gt(cp[j], zero));
        r[j] = vf_keep(vm_and(q_live[j], has_lp), e[j] * (lq[j] - lp[j]));
        const vmask no_lp = vm_andnot(q_live[j], has_lp);
        a[j] = vf_keep(no_lp, e[j] * lq[j]);
        b[j] = vf_keep(no_lp, e[j]);
        l3[j] = vf_keep(vm_andnot(has_lp, q_live[j]), lp[j]);
    }
    add_terms_g(&s->r_lo, &s->r_hi, r);
    add_terms_g(&s->a_lo, &s->a_hi, a);
    add_terms_g(&s->b_lo, &s->b_hi, b);
    add_each_g(&s->l3_lo, &s->l3_hi, l3); /* many values near the clip: each widened */
}

/* Exact mode packs the base's code > 0 entries (exact_packs): those on Q's
 * code > 0 as log p and d (l, dl), those on its code 0 as log p alone (dl
 * NULL: d is log p less Q's clip point, and p goes to pq). Their exps, mass
 * and terms from full steps of a buffer, all: the last partial step too;
 * returns how many wait, moved to the front. u16 x u16 exact +7 % (2,098-
 * 2,130 -> 2,259-2,264 M/s, quantkl bench, AVX-512, 2 threads, Zen 4). */
QK_INLINE int uu_exact_sum(float *l, float *dl, int n, const llama_llama_consts *k,
                           llama_llama_sums *s, int all)
{
    int i = 0;
    for (; i < n && (all || i + QK_SPAN <= n); i += QK_SPAN) {
        vf lp[QK_G], e[QK_G], t[QK_G], pq[QK_G];
        vmask live[QK_G];
        for (int j = 0; j < QK_G; j++)
            e[j] = lp[j] = vf_load_f32(l + i + j * QK_W);
        valid_g(live, i, n, i + QK_SPAN <= n);
        vf_exp_n(e, QK_G);
        add_mass_g(&s->p, live, lp, e);
        for (int j = 0; j < QK_G; j++) {
            vf d = lp[j] - k->mq;
            if (dl)
                d = vf_load_f32(dl + i + j * QK_W);
            pq[j] = vf_keep(live[j], e[j]);
            t[j] = vf_keep(live[j], e[j] * d); /* lanes past n hold anything */
        }
        if (!dl)
            s->pq = s->pq + sum_g(pq);
        add_terms_g(&s->t_lo, &s->t_hi, t);
    }
    if (all)
        return 0;
    memmove(l, l + i, sizeof(float) * (size_t)(n - i));
    if (dl)
        memmove(dl, dl + i, sizeof(float) * (size_t)(n - i));
    return n - i;
}

/* The base's tail in a step (exact mode, or the reverse KL): its code-0
 * entries counted, those on Q's code 0 too, and in exact mode Q's log p
 * summed over those on Q's code > 0; code: the base's code > 0 lanes. */
QK_INLINE void uu_base_tail_g(llama_llama_sums *s, const llama_llama_consts *k, int exact,
                              const vf *cp, const vf *lq, const vmask *q_live,
                              const vmask *valid, vmask *code)
{
    for (int j = 0; j < QK_G; j++) {
        code[j] = vm_and(valid[j], vf_gt(cp[j], k->zero));
        const vmask tail = vm_andnot(valid[j], code[j]);
        s->p_tail_n += count(tail);
        s->p_tail_on_q_tail += count(vm_andnot(tail, q_live[j]));
        if (exact) {
            const vf l = vf_keep(vm_and(tail, q_live[j]), lq[j]);
            s->l_lo += vf_lo_pd(l);
            s->l_hi += vf_hi_pd(l);
        }
    }
}

/* llama mode's forward terms: to the kept buffer (log p and d), whose exps
 * are taken there; the few kept lanes on Q's code 0 take theirs here as
 * well, for pq. Returns the buffer's new count. */
QK_INLINE int uu_llama_terms_g(llama_llama_sums *s, const llama_llama_consts *k, kept_terms *b,
                               int n, const vf *lp, const vf *d, const vmask *q_live,
                               const vmask *valid)
{
    vmask keep[QK_G], dead = vm_none();
    for (int j = 0; j < QK_G; j++) {
        keep[j] = vm_and(valid[j], vf_gt(lp[j], k->cut));
        dead = vm_or(dead, vm_andnot(keep[j], q_live[j]));
    }
    if (vm_bits(dead)) {
        vf e[QK_G], pq[QK_G];
        for (int j = 0; j < QK_G; j++)
            e[j] = lp[j];
        vf_exp_in_range_n(e, QK_G); /* lanes outside the range are masked */
        for (int j = 0; j < QK_G; j++)
            pq[j] = vf_keep(vm_andnot(keep[j], q_live[j]), e[j]);
        s->pq = s->pq + sum_g(pq);
    }
    return kept_add_g(b, n, keep, lp, d);
}

/* The forward terms where the base's decoded mass is taken from every step,
 * as llama_logits_step's (exact mode without packing, or the reverse KL):
 * exact mode's terms summed here, llama mode's (p and d, as kept_sum would
 * take them, to the bit) to the kept buffer. Returns the buffer's count. */
QK_INLINE int uu_mass_terms_g(llama_llama_sums *s, const llama_llama_consts *k, int exact,
                              kept_terms *b, int n, const vf *lp, const vf *d,
                              const vmask *q_live, const vmask *valid, const vmask *code)
{
    vf e[QK_G], t[QK_G], pq[QK_G];
    vmask keep[QK_G];
    for (int j = 0; j < QK_G; j++) {
        keep[j] = exact ? code[j] : vm_and(valid[j], vf_gt(lp[j], k->cut));
        e[j] = lp[j];
    }
    vf_exp_n(e, QK_G);
    add_mass_g(&s->p, code, lp, e);
    for (int j = 0; j < QK_G; j++) {
        const vf p = vf_keep(keep[j], e[j]);
        pq[j] = vf_keep(vm_andnot(keep[j], q_live[j]), p);
        t[j] = p * d[j];
    }
    s->pq = s->pq + sum_g(pq);
    if (!exact)
        return kept_add_g(b, n, keep, e, d);
    add_terms_g(&s->t_lo, &s->t_hi, t);
    return n;
}

/* One step of the pass over both rows: decode both sides, then each
 * algorithm the flags ask for (Q's mass or its live log q; the reverse KL;
 * Jensen-Shannon; the base's tail; the forward terms by mode). */
QK_INLINE int llama_llama_step(llama_llama_sums *s, const llama_llama_consts *k, int flags,
                               kept_terms *b, int n, live_log_p *lb, int *lb_n, live_log_p *db,
                               int *db_n, const vf *cp, const vf *cq, const vmask *valid)
{
    const int exact = flags & QK_EXACT, reverse = flags & QK_REVERSE;
    vf lp[QK_G], lq[QK_G], eq[QK_G], d[QK_G];
    vmask q_live[QK_G], code[QK_G];
    for (int j = 0; j < QK_G; j++) {
        lp[j] = decode(cp[j], k->sp, k->mp);
        lq[j] = decode(cq[j], k->sq, k->mq);
        q_live[j] = vm_and(valid[j], vf_gt(cq[j], k->zero));
        code[j] = vm_none(); /* set by uu_base_tail_g where exact_packs reads it */
        s->q_tail_n += count(valid[j]) - count(q_live[j]);
        /* Q's code-0 entries take its clip point here and their own log q
         * (the tail's, known only at the end) through a float64 correction:
         * the terms stay small when P and Q are alike. */
        d[j] = lp[j] - vf_select(q_live[j], lq[j], k->mq);
    }
    s->lp_max = vf_max(max_g(lp), s->lp_max);
    s->lq_max = vf_max(max_g(lq), s->lq_max);
    if (reverse) { /* its terms take exp(lq) on every lane */
        for (int j = 0; j < QK_G; j++)
            eq[j] = lq[j];
        vf_exp_n(eq, QK_G);
        add_mass_g(&s->q, q_live, lq, eq);
        llama_llama_reverse(s, cp, lp, lq, eq, q_live, valid, k->zero);
    } else {
        *lb_n = live_add_g(lb, *lb_n, q_live, lq);
    }
    if (flags & QK_JS)
        llama_llama_js(s, k, cp, lp, lq, q_live, valid);
    if (exact || reverse)
        uu_base_tail_g(s, k, exact, cp, lq, q_live, valid, code);
    if (exact_packs(flags)) { /* the base's code > 0 lanes, by Q's code: uu_exact_sum */
        vmask on_q[QK_G], off_q[QK_G];
        for (int j = 0; j < QK_G; j++) {
            on_q[j] = vm_and(code[j], q_live[j]);
            off_q[j] = vm_andnot(code[j], q_live[j]);
        }
        *db_n = live_add_g(db, *db_n, off_q, lp);
        return kept_add_g(b, n, on_q, lp, d);
    }
    if (!exact && !reverse)
        return uu_llama_terms_g(s, k, b, n, lp, d, q_live, valid);
    return uu_mass_terms_g(s, k, exact, b, n, lp, d, q_live, valid, code);
}

/* Q's code-0 entries where the base has a log p (n3 of them), and where it
 * is the base's tail too (n4 = p_tail_on_q_tail). */
QK_INLINE double reverse_n3(const llama_llama_sums *s)
{
    return (double)(s->q_tail_n - s->p_tail_on_q_tail);
}

/* KL(Q||P) from the sums and the two tails' log p (c_q, Q's; c_p, the
 * base's): Q's code 0 weighs exp(c_q) each. */
QK_INLINE double reverse_kl(const llama_llama_sums *s, double c_q, double c_p)
{
    double r = vd_hsum(widened_sum(s->r_lo, s->r_hi));
    const double l3 = vd_hsum(widened_sum(s->l3_lo, s->l3_hi));
    if (s->q_tail_n > 0)
        r += exp(c_q) * (reverse_n3(s) * c_q - l3);
    r += vd_hsum(widened_sum(s->a_lo, s->a_hi)) - c_p * vd_hsum(widened_sum(s->b_lo, s->b_hi));
    if (s->p_tail_on_q_tail > 0)
        r += exp(c_q) * (double)s->p_tail_on_q_tail * (c_q - c_p);
    return r;
}

/* How fast reverse_kl moves with c_q and with c_p (for the tails' error
 * bounds). */
QK_INLINE double reverse_slope_q(const llama_llama_sums *s, double c_q, double c_p)
{
    if (s->q_tail_n == 0)
        return 0.0;
    const double n3 = reverse_n3(s), l3 = vd_hsum(widened_sum(s->l3_lo, s->l3_hi));
    return exp(c_q) * (n3 * c_q - l3 + n3 + (double)s->p_tail_on_q_tail * (c_q - c_p + 1.0));
}

QK_INLINE double reverse_slope_p(const llama_llama_sums *s, double c_q)
{
    return -(vd_hsum(widened_sum(s->b_lo, s->b_hi)) + exp(c_q) * (double)s->p_tail_on_q_tail);
}

/* The one pass over both rows: every sum of s, and each side's block maxima
 * (bp, bq) for its top-k list. */
QK_INLINE void llama_llama_pass(const uint16_t *p_row, const uint16_t *q_row, int64_t n, int flags,
                                const llama_llama_consts *k, llama_llama_sums *s, qk_topk *bp,
                                qk_topk *bq)
{
    const int exact = flags & QK_EXACT;
    kept_terms kept;
    live_log_p live, off_q;
    int kept_n = 0, live_n = 0, off_q_n = 0;
    for (int64_t b = 0; b < n; b += QK_BLOCK) {
        const int64_t e = block_end(b, n);
        s->lp_max = s->lq_max = vf_set1(-INFINITY);
        int64_t i = b;
        for (; i + QK_SPAN <= e; i += QK_SPAN) {
            vf cp[QK_G], cq[QK_G];
            vmask valid[QK_G];
            prefetch_span(p_row, 8 + 2 * i + QK_PREFETCH / 2, 2 * QK_SPAN);
            prefetch_span(q_row, 8 + 2 * i + QK_PREFETCH / 2, 2 * QK_SPAN);
            load_codes_g(cp, p_row, i, e, 1);
            load_codes_g(cq, q_row, i, e, 1);
            valid_g(valid, i, e, 1);
            kept_n = llama_llama_step(s, k, flags, &kept, kept_n, &live, &live_n, &off_q,
                                      &off_q_n, cp, cq, valid);
        }
        if (i < e) {
            vf cp[QK_G], cq[QK_G];
            vmask valid[QK_G];
            load_codes_g(cp, p_row, i, e, 0);
            load_codes_g(cq, q_row, i, e, 0);
            valid_g(valid, i, e, 0);
            kept_n = llama_llama_step(s, k, flags, &kept, kept_n, &live, &live_n, &off_q,
                                      &off_q_n, cp, cq, valid);
        }
        if (!exact) {
            kept_n = kept_sum(&kept, kept_n, flags & QK_REVERSE ? KEPT_P : KEPT_LOG_P, NULL,
                              &s->t_lo, &s->t_hi, &s->p32, e == n);
        } else if (exact_packs(flags)) {
            kept_n = uu_exact_sum(kept.a, kept.y, kept_n, k, s, e == n);
            off_q_n = uu_exact_sum(off_q.l, NULL, off_q_n, k, s, e == n);
        }
        if (!(flags & QK_REVERSE))
            live_n = live_mass(&live, live_n, &s->q, e == n);
        blocks_add(bp, vf_hmax(s->lp_max), b);
        blocks_add(bq, vf_hmax(s->lq_max), b);
    }
}

/* What the tails' log p come from, and what reads them. */
typedef struct {
    double s_t, s_pq;   /* the forward terms; Q's code-0 entries' p where the base has one */
    double q_mass;      /* Q's decoded mass (code > 0) */
    double c_p, w_p;    /* the base's tail log p; exact mode: its mass on Q's code 0 */
    double c_q;         /* Q's tail log p */
} uu_tails;

/* Q's tail log p from the cheap mass, unless its error (through the base's
 * mass on Q's code 0, or the token's own NLL) could reach a twentieth of
 * what the contract allows: then from float64 exps. */
QK_INLINE void q_tail(uu_tails *t, const llama_llama_sums *s, const uint16_t *q_row,
                      const qk_header *hq, int64_t n, int flags, uint16_t cq_tok)
{
    const double q_n = (double)s->q_tail_n, mq = hq->min_log_prob;
    t->c_q = 0.0;
    if (q_n == 0)
        return;
    t->c_q = qk_tail_log_prob(1.0 - t->q_mass, q_n, mq);
    const double err = tail_error(t->q_mass, mass_error(&s->q), q_n, mq);
    if (tail_could_matter(err * (t->s_pq + t->w_p), t->s_t - (t->c_q - mq) * t->s_pq, 1e-6) ||
        (cq_tok == 0 && tail_could_matter(err, t->c_q, 1e-7)) ||
        ((flags & QK_REVERSE) &&
         tail_could_matter(err * fabs(reverse_slope_q(s, t->c_q, t->c_p)),
                           reverse_kl(s, t->c_q, t->c_p), 1e-6))) {
        t->q_mass = mass64(q_row, hq, n);
        t->c_q = qk_tail_log_prob(1.0 - t->q_mass, q_n, mq);
    }
}

/* The same rule for the base's tail, which exact mode's KL (its tail terms,
 * the token's NLL) and the reverse KL read; returns the KL, exact mode's
 * tail terms included (mq: Q's min_log_prob). */
QK_INLINE double p_tail(uu_tails *t, const llama_llama_sums *s, const uint16_t *p_row,
                        const qk_header *hp, double mq, int64_t n, int flags, uint16_t cp_tok)
{
    const int exact = flags & QK_EXACT;
    double kld = t->s_t - (t->c_q - mq) * t->s_pq;
    if (s->p_tail_n == 0)
        return kld;
    const double p_n = (double)s->p_tail_n, l_sum = vd_hsum(widened_sum(s->l_lo, s->l_hi));
    const double err = tail_error(mass_of(&s->p), mass_error(&s->p), p_n, hp->min_log_prob);
    int precise = 0;
    if (exact) {
        const double w = exp(t->c_p), n4 = (double)s->p_tail_on_q_tail;
        const double tail_kld = w * (p_n * t->c_p - l_sum - n4 * t->c_q);
        precise = tail_could_matter(err * fabs(w * (p_n * (t->c_p + 1.0) - l_sum - n4 * t->c_q)),
                                    kld + tail_kld, 1e-6) ||
                  (cp_tok == 0 && tail_could_matter(err, t->c_p, 1e-7));
    }
    if (flags & QK_REVERSE)
        precise = precise || tail_could_matter(err * fabs(reverse_slope_p(s, t->c_q)),
                                               reverse_kl(s, t->c_q, t->c_p), 1e-6);
    if (precise) {
        t->c_p = qk_tail_log_prob(1.0 - mass64(p_row, hp, n), p_n, hp->min_log_prob);
        t->w_p = exact ? exp(t->c_p) * (double)s->p_tail_on_q_tail : 0.0;
    }
    if (exact)
        kld += exp(t->c_p) * (p_n * t->c_p - l_sum) - t->w_p * t->c_q;
    return kld;
}

QK_INLINE void llama_llama_row(const uint16_t *p_row, const uint16_t *q_row, int64_t n, int64_t tok,
                               int flags, qk_row *out)
{
    const int exact = flags & QK_EXACT;
    memset(out, 0, sizeof *out);
    qk_header hp, hq;
    if (!qk_read_header(p_row, &hp))
        out->status |= QK_P_BAD_HEADER;
    if (!qk_read_header(q_row, &hq))
        out->status |= QK_Q_BAD_HEADER;
    if (out->status)
        return;
    const int js = flags & QK_JS;
    const double js_cp = js ? tail_before(p_row, &hp, n, NULL, 0, 0) : 0.0;
    const double js_cq = js ? tail_before(q_row, &hq, n, NULL, 0, 0) : 0.0;
    const llama_llama_consts k = {vf_set1(hp.scale), vf_set1(hp.min_log_prob), vf_set1(hq.scale),
                                  vf_set1(hq.min_log_prob), vf_set1(-16.0f), vf_set1(0.0f),
                                  vf_set1((float)js_cp), vf_set1((float)js_cq)};
    llama_llama_sums s;
    memset(&s, 0, sizeof s); /* every sum 0.0, every count 0 */
    qk_topk tp = {0}, tq = {0}, bp = {0}, bq = {0};
    llama_llama_pass(p_row, q_row, n, flags, &k, &s, &bp, &bq);
    const side_values pv = codes_side(p_row, k.sp, k.mp), qv = codes_side(q_row, k.sq, k.mq);
    topk_of_blocks(&tp, &bp, &pv, n);
    topk_of_blocks(&tq, &bq, &qv, n);
    uu_tails t;
    t.s_t = vd_hsum(widened_sum(s.t_lo, s.t_hi));
    t.s_pq = vd_hsum(widened_sum(vf_lo_pd(s.pq), vf_hi_pd(s.pq)));
    t.q_mass = mass_of(&s.q);
    const double p_mass = exact ? mass_of(&s.p)
                                : vd_hsum(widened_sum(vf_lo_pd(s.p32), vf_hi_pd(s.p32)));
    if (qk_row_corrupt(&hp, qk_topk_best(&tp), p_mass, p_row, n))
        out->status |= QK_P_CORRUPT;
    if (qk_row_corrupt(&hq, qk_topk_best(&tq), t.q_mass, q_row, n))
        out->status |= QK_Q_CORRUPT;
    if (out->status)
        return;
    /* the base's tail log p (exact mode, or the reverse KL in either), from
     * a mass within mass_error, and in exact mode its mass on Q's code 0 */
    t.c_p = t.w_p = 0.0;
    if (s.p_tail_n > 0) {
        t.c_p = qk_tail_log_prob(1.0 - mass_of(&s.p), (double)s.p_tail_n, hp.min_log_prob);
        t.w_p = exact ? exp(t.c_p) * (double)s.p_tail_on_q_tail : 0.0;
    }
    const uint16_t cp_tok = qk_code(p_row, tok), cq_tok = qk_code(q_row, tok);
    q_tail(&t, &s, q_row, &hq, n, flags, cq_tok);
    out->kld = p_tail(&t, &s, p_row, &hp, hq.min_log_prob, n, flags, cp_tok);
    if (flags & QK_REVERSE)
        out->rkl = reverse_kl(&s, t.c_q, t.c_p);
    if (js)
        out->js = js_of(&s.js, 1.0, 0.0);
    out->nll_q = cq_tok ? -(double)qk_decode(&hq, cq_tok) : -t.c_q;
    out->nll_q_llama = (float)out->nll_q;
    /* llama mode: the base's NLL as llama.cpp decodes it, whatever Q is */
    out->nll_p = (cp_tok || !exact) ? -(double)qk_decode(&hp, cp_tok) : -t.c_p;
    qk_set_tops(out, &tp, &tq, exp((double)tp.val[0]));
}

#define QK_UU_PARAMS                                                                               \
    (const uint16_t *p_row, const uint16_t *q_row, int64_t n_vocab, int64_t tok, int mode,         \
     qk_row *out)
#define QK_UU_ARGS (p_row, q_row, n_vocab, tok, mode, out)
#define QK_UU_ROW(F) llama_llama_row(p_row, q_row, n_vocab, tok, F, out)
QK_FLAG_COPIES(llama_llama, QK_UU_PARAMS, QK_UU_ROW)
QK_JS_COPIES(llama_llama, QK_UU_PARAMS, QK_UU_ROW)

void QK_NAME(qk_score_llama_llama)(const uint16_t *p_row, const uint16_t *q_row, int64_t n_vocab,
                                   int64_t tok, int mode, qk_row *out)
{
    if (mode & QK_JS)
        QK_BY_MODE_JS(llama_llama, QK_UU_ARGS);
    else
        QK_BY_FLAGS(llama_llama, QK_UU_ARGS);
}
