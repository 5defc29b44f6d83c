/* A dump row (llama.cpp's uint16 codes) against float logits: the pair
 * llama-perplexity --kl-divergence scores. llama mode's plain KL reads both
 * rows once (llama_logits_one_pass), each block's terms taken against a
 * guess of the normaliser that the end corrects; every other mode takes
 * pass 1 over the logits and pass 2 over both. The reverse KL (QK_REVERSE)
 * adds its sums where both sides are read together, with an exp of Q per
 * entry; Jensen-Shannon (QK_JS) an exp, an expm1 and a log per entry. */
#include "kernel_parts.h"
#include "kernel_copies.h"

typedef struct {
    vd t_lo, t_hi;   /* kept base entries: p * ((lp - (y - Y)) + lse_hi) */
    vf p32;          /* llama mode, kept base entries: p (it only scales lse's float32
                        rounding, < 5e-7: float32 sums are ample) */
    mass_sum p;      /* the base's decoded mass (code > 0), for its tail (exact mode, or
                        the reverse KL): add_mass_g's */
    vd y_lo, y_hi;   /* exact mode, tail entries (code 0, y finite): y - Y */
    int64_t tail_n;  /* exact mode or the reverse KL: code-0 entries where y is finite */
    vmask inf;       /* exact mode, kept base entries where y is -inf: the KL is infinite */
    vf lp_max;       /* the block's largest decoded log p, for the top-k list */
    vd r_lo, r_hi;   /* reverse KL: e * d, e = exp((y - Y) - lse_hi), over live q (y finite) */
    vd re_lo, re_hi; /* reverse KL: e over live q on the base's code 0 (its tail, in both modes) */
    js_sums js;
} llama_logits_sums;

/* Jensen-Shannon's terms, in either mode: the base's decoded log p, its
 * code 0 the clipped tail; log q relative to lse_hi (what that leaves out is
 * put back at the end). */
QK_INLINE void llama_logits_js(llama_logits_sums *s, const llama_logits_consts *k, const vf *c,
                               const vf *y, const vmask *valid)
{
    vf la[QK_G], dqp[QK_G];
    vmask keep[QK_G];
    for (int j = 0; j < QK_G; j++) {
        const vmask code = vf_gt(c[j], k->zero);
        const vf lp = vf_select(code, decode(c[j], k->scale, k->min_log_prob), k->tail_lp);
        /* code 0 where y is -inf: no tail mass there, p = q = 0 */
        keep[j] = vm_and(valid[j], vm_or(code, vf_gt(y[j], k->ninf)));
        dqp[j] = ((y[j] - k->ymax) - lp) - k->lse_hi;
        la[j] = lp + vf_max(dqp[j], k->zero);
    }
    js_add_g(&s->js, la, dqp, keep);
}

/* Reverse KL's per-entry sums: KL(Q||P) = sum q (lq - lp). The forward
 * term's d is -(lq - lp) in float32 with lq = (y - Y) - lse_hi (small when
 * the rows are alike, as the forward terms are), so e * d with e =
 * exp((y - Y) - lse_hi) is the term; on the base's code 0, whose lp decodes
 * to min_log_prob, the tail's own log p takes its place at the end through
 * Q's mass there (re), and the float64 part of lse the terms leave out is put
 * back then too. */
QK_INLINE void llama_logits_reverse(llama_logits_sums *s, const llama_logits_consts *k,
                                    const vf *c, const vf *y, const vf *d, const vmask *valid)
{
    vf e[QK_G], r[QK_G], et[QK_G];
    vmask live[QK_G];
    for (int j = 0; j < QK_G; j++) {
        e[j] = (y[j] - k->ymax) - k->lse_hi;
        live[j] = vm_and(valid[j], vf_gt(y[j], k->ninf));
    }
    vf_exp_n(e, QK_G);
    for (int j = 0; j < QK_G; j++) {
        r[j] = vf_keep(live[j], e[j] * d[j]);
        et[j] = vf_keep(vm_andnot(live[j], vf_gt(c[j], k->zero)), e[j]);
    }
    add_terms_g(&s->r_lo, &s->r_hi, r);
    add_terms_g(&s->re_lo, &s->re_hi, et);
}

/* The smallest code that decodes above cut (65536 if none): decoding is
 * monotonic in the code (scale >= 0), so the cut is a code threshold and
 * pass 2 compares codes, decoding only what it keeps. */
static inline float cut_code(const qk_header *h, float cut)
{
    int32_t lo = 0, hi = 65536; /* decode(hi) > cut >= decode(lo - 1) */
    while (lo < hi) {
        const int32_t mid = lo + (hi - lo) / 2;
        if (qk_decode(h, (uint16_t)mid) > cut)
            hi = mid;
        else
            lo = mid + 1;
    }
    return (float)lo;
}

/* Exact mode's clipped tail in a step: its entries (code 0, y finite)
 * counted and their y - Y summed; code: the lanes with code > 0. */
QK_INLINE void exact_tail_g(llama_logits_sums *s, const llama_logits_consts *k, const vf *c,
                            const vf *y, const vmask *valid, vmask *code)
{
    for (int j = 0; j < QK_G; j++) {
        code[j] = vm_and(valid[j], vf_gt(c[j], k->zero));
        const vmask tail = vm_andnot(vm_and(valid[j], vf_gt(y[j], k->ninf)), code[j]);
        s->tail_n += count(tail);
        const vf ty = vf_keep(tail, y[j] - k->ymax);
        s->y_lo += vf_lo_pd(ty);
        s->y_hi += vf_hi_pd(ty);
    }
}

/* One step of pass 2 (and of llama_logits_one_pass, flags 0). llama mode's
 * forward terms go to the kept buffer, which returns with its new count:
 * the kept lanes' codes and logits, or, with the reverse KL, which takes
 * every lane's p for the base's tail anyway, their p and d; exact mode's
 * code > 0 lanes go there too where exact_packs says. Everything that
 * needs y is taken before the exps, so that y is dead while they run: four
 * exp chains need most of the registers. */
QK_INLINE int llama_logits_step(llama_logits_sums *s, const llama_logits_consts *k, int flags,
                                kept_terms *b, int n, vf *c_max, const vf *c, const vf *y,
                                const vmask *valid)
{
    const int exact = flags & QK_EXACT;
    if (flags & QK_JS)
        llama_logits_js(s, k, c, y, valid);
    vf lp[QK_G], d[QK_G], e[QK_G], t[QK_G];
    vmask keep[QK_G], code[QK_G];
    if (exact_packs(flags)) {
        *c_max = vf_max(max_g(c), *c_max);
        exact_tail_g(s, k, c, y, valid, code);
        return kept_add_g(b, n, code, c, y);
    }
    for (int j = 0; j < QK_G; j++) /* exact mode sets its own */
        keep[j] = vm_and(valid[j], vf_gt(c[j], k->c_cut));
    if (!exact) {
        *c_max = vf_max(max_g(c), *c_max); /* lanes past the end: code 0 */
        if (!(flags & QK_REVERSE))
            return kept_add_g(b, n, keep, c, y);
    }
    for (int j = 0; j < QK_G; j++) {
        lp[j] = decode(c[j], k->scale, k->min_log_prob);
        d[j] = (lp[j] - (y[j] - k->ymax)) + k->lse_hi;
    }
    if (flags & QK_REVERSE)
        llama_logits_reverse(s, k, c, y, d, valid);
    if (exact) {
        s->lp_max = vf_max(max_g(lp), s->lp_max); /* lanes past the end: the row's minimum */
        exact_tail_g(s, k, c, y, valid, code);
        for (int j = 0; j < QK_G; j++) {
            const vmask finite_y = vf_gt(y[j], k->ninf);
            s->inf = vm_or(s->inf, vm_andnot(code[j], finite_y));
            /* p may underflow here, and 0 * inf must not make a NaN */
            keep[j] = vm_and(code[j], finite_y);
            e[j] = lp[j];
        }
    } else {
        /* the reverse KL reads the base's code 0 as its clipped tail: the
         * decoded mass of every step */
        for (int j = 0; j < QK_G; j++) {
            code[j] = vm_and(valid[j], vf_gt(c[j], k->zero));
            s->tail_n += count(vm_andnot(vm_and(valid[j], vf_gt(y[j], k->ninf)), code[j]));
            e[j] = lp[j];
        }
    }
    vf_exp_n(e, QK_G);
    add_mass_g(&s->p, code, lp, e);
    if (!exact)
        return kept_add_g(b, n, keep, e, d);
    for (int j = 0; j < QK_G; j++)
        t[j] = vf_keep(keep[j], e[j] * d[j]);
    add_terms_g(&s->t_lo, &s->t_hi, t);
    return n;
}

/* One step of llama_logits_row's pass 2 (nq NULL) or of
 * llama_logits_one_pass, which adds the logits to their normaliser nq (y_max:
 * the block's max) after the step has taken what it needs of them. full:
 * the step lies in the block [.., e), whose streams are prefetched ahead
 * bytes ahead. */
QK_INLINE int llama_logits_span(llama_logits_sums *s, const llama_logits_consts *k, int flags,
                                kept_terms *kept, int kept_n, vf *c_max, norm *nq, vf *y_max,
                                const uint16_t *p_row, const void *q, int dt, ptrdiff_t st,
                                int64_t i, int64_t e, int full, int64_t ahead)
{
    vf c[QK_G], y[QK_G];
    vmask valid[QK_G];
    if (full) {
        const int64_t size = dt == QK_F32 ? 4 : 2;
        prefetch_span(p_row, 8 + 2 * i + ahead, 2 * QK_SPAN);
        if (nq && st == 1)
            prefetch_span(q, size * i + ahead, size * QK_SPAN);
    }
    load_codes_g(c, p_row, i, e, full);
    load_logits_g(y, valid, q, dt, st, i, e, full);
    kept_n = llama_logits_step(s, k, flags, kept, kept_n, c_max, c, y, valid);
    if (nq)
        norm_step(nq, y_max, y);
    return kept_n;
}

/* Exact mode's packed code > 0 entries (exact_packs) from the buffer: their
 * mass, their terms, and whether a -inf logit meets one (the KL is then
 * infinite; p may underflow, and 0 * inf must not make a NaN); as kept_sum
 * returns, how many wait. */
QK_INLINE int kept_exact_sum(kept_terms *b, int n, const llama_logits_consts *k,
                             llama_logits_sums *s, int all)
{
    int i = 0;
    for (; i < n && (all || i + QK_SPAN <= n); i += QK_SPAN) {
        vf lp[QK_G], y[QK_G], d[QK_G], e[QK_G], t[QK_G];
        vmask live[QK_G], keep[QK_G];
        kept_load_g(b, i, n, lp, y, live);
        for (int j = 0; j < QK_G; j++) {
            lp[j] = decode(lp[j], k->scale, k->min_log_prob);
            d[j] = (lp[j] - (y[j] - k->ymax)) + k->lse_hi;
            const vmask finite_y = vf_gt(y[j], k->ninf);
            s->inf = vm_or(s->inf, vm_andnot(live[j], finite_y));
            keep[j] = vm_and(live[j], finite_y);
            e[j] = lp[j];
        }
        vf_exp_n(e, QK_G);
        add_mass_g(&s->p, live, lp, e);
        for (int j = 0; j < QK_G; j++)
            t[j] = vf_keep(keep[j], e[j] * d[j]);
        add_terms_g(&s->t_lo, &s->t_hi, t);
    }
    return all ? 0 : kept_keep_rest(b, i, n);
}

/* The log-normaliser N = Y + lse of y as one kept entry guesses it:
 * y - lp = N - (lp - lq). The largest code kept so far (from the block the
 * kept buffer now holds, where it beats *best) gives the guess: its term
 * carries most weight, and its log-ratio, the guess's error, is small
 * wherever P and Q are alike. Entries whose y is -inf guess nothing. The
 * guess is kept as its y and lp, for the caller to take y - m first: with
 * logits near -3e38, y - lp in float64 would lose lp. */
QK_INLINE void guess_normaliser(const kept_terms *kept, int kept_n, float block_max,
                                const qk_header *h, float *best, float *guess_y,
                                float *guess_lp)
{
    if (!(block_max > *best))
        return;
    for (int i = 0; i < kept_n; i++) {
        if (kept->a[i] == block_max && kept->y[i] > -INFINITY) {
            *best = block_max;
            *guess_y = kept->y[i];
            *guess_lp = qk_decode(h, (uint16_t)block_max);
            return;
        }
    }
}

/* llama mode's forward KL alone (the plain copies: no reverse, no JS) in
 * one pass over both rows, so that memory streams while the exps run
 * instead of in a burst through pass 1 (measured: +5 %, u16 x f32, AVX-512,
 * 2 threads, Zen 4). Each step packs its kept codes and logits, then adds
 * the logits' exps against the running max m (norm_step); at the block's
 * end its kept terms run with y still in L1, d = (lp - (y - m)) + c,
 * c = G - m for G a guess of the row's normaliser (guess_normaliser): d is
 * then lp - lq less the guess's error, as small as the two-pass terms where
 * P and Q are alike. What the guess misses, (Y + lse) - G times the kept p
 * of the terms it served, is put back in float64 at the end (each block's
 * kept p summed in float32: its rounding, times that miss, is what the
 * guess leaves in the KL: with a rough log of the running sum for a guess,
 * 1.1 to 2.8 times the contract's allowance on rows of equal logits; with
 * this one, none). */
QK_INLINE void llama_logits_one_pass(const uint16_t *p_row, const void *q, int dt, ptrdiff_t st,
                                     int64_t n, int64_t tok, qk_row *out)
{
    memset(out, 0, sizeof *out);
    qk_header h;
    if (!qk_read_header(p_row, &h)) {
        out->status = QK_P_BAD_HEADER;
        return;
    }
    llama_logits_consts k = {vf_set1(h.scale), vf_set1(h.min_log_prob),
                             vf_set1(cut_code(&h, -16.0f) - 0.5f), vf_set1(0.0f),
                             vf_set1(-INFINITY), vf_set1(0.0f), vf_set1(0.0f), vf_set1(0.0f)};
    norm nq;
    norm_init(&nq);
    llama_logits_sums s;
    memset(&s, 0, sizeof s); /* every sum 0.0 */
    qk_topk tq = {0}, bq = {0}, tp = {0}, bp = {0};
    kept_terms kept;
    int kept_n = 0;
    float best = -1.0f; /* the code the guess came from */
    /* the guess G = y - lp; until there is one, no kept y is finite */
    float guess_y = 0.0f, guess_lp = 0.0f;
    /* kept p, and kept p times (m - (m_b + c_b)), m the running max and m_b,
     * c_b each block's: relative to m, as logits of -3e38 would lose the
     * normaliser to float64 rounding in (m + lse) * sum p - sum p * G */
    double p_sum = 0.0, shift = 0.0;
    float shift_max = 0.0f; /* the m shift is relative to, once p_sum > 0 */
    for (int64_t b = 0; b < n; b += QK_BLOCK) {
        const int64_t e = block_end(b, n);
        vf c_max = vf_set1(0.0f), y_max = vf_set1(-INFINITY);
        int64_t i = b;
        for (; i + QK_SPAN <= e; i += QK_SPAN)
            kept_n = llama_logits_span(&s, &k, 0, &kept, kept_n, &c_max, &nq, &y_max, p_row, q,
                                       dt, st, i, e, 1, QK_PREFETCH / 2);
        if (i < e)
            kept_n = llama_logits_span(&s, &k, 0, &kept, kept_n, &c_max, &nq, &y_max, p_row, q,
                                       dt, st, i, e, 0, 0);
        blocks_add(&bq, vf_hmax(y_max), b);
        const float block_max = vf_hmax(c_max);
        blocks_add(&bp, qk_decode(&h, (uint16_t)block_max), b);
        guess_normaliser(&kept, kept_n, block_max, &h, &best, &guess_y, &guess_lp);
        /* no finite y yet (the kept terms wait), or +inf (the row is refused) */
        if (!(nq.max > -INFINITY && nq.max < INFINITY))
            continue;
        if (p_sum > 0.0)
            shift += p_sum * ((double)nq.max - (double)shift_max);
        shift_max = nq.max;
        const float c_b = (float)(((double)guess_y - (double)nq.max) - (double)guess_lp);
        k.ymax = vf_set1(nq.max);
        k.lse_hi = vf_set1(c_b);
        vf p32 = vf_set1(0.0f);
        kept_n = kept_sum(&kept, kept_n, KEPT_CODES, &k, &s.t_lo, &s.t_hi, &p32, e == n);
        const double p_block = vd_hsum(widened_sum(vf_lo_pd(p32), vf_hi_pd(p32)));
        p_sum += p_block;
        shift -= p_block * (double)c_b;
    }
    const double lse = norm_lse(&nq);
    out->status = norm_status(&nq, lse, QK_Q_NONFINITE, QK_Q_EMPTY);
    if (out->status)
        return;
    const side_values pv = codes_side(p_row, k.scale, k.min_log_prob),
                      qv = logits_side(q, dt, st);
    topk_of_blocks(&tp, &bp, &pv, n);
    topk_of_blocks(&tq, &bq, &qv, n);
    if (qk_row_corrupt(&h, qk_topk_best(&tp), p_sum, p_row, n)) {
        out->status = QK_P_CORRUPT;
        return;
    }
    out->kld = vd_hsum(widened_sum(s.t_lo, s.t_hi)) + (shift + lse * p_sum);
    const float y_tok = qk_logit_at(q, dt, st, tok);
    out->nll_q = ((double)nq.max - y_tok) + lse;
    out->nll_q_llama = llama_nll(nq.max, lse, y_tok);
    out->nll_p = -(double)qk_decode(&h, qk_code(p_row, tok));
    qk_set_tops(out, &tp, &tq, exp((double)tp.val[0]));
}

/* Pass 2 over both rows: every sum of s, and the base's block maxima (bp). */
QK_INLINE void llama_logits_pass2(const uint16_t *p_row, const void *q, int dt, ptrdiff_t st,
                                  int64_t n, int flags, const llama_logits_consts *k,
                                  llama_logits_sums *s, qk_topk *bp)
{
    const int exact = flags & QK_EXACT;
    kept_terms kept;
    int kept_n = 0;
    for (int64_t b = 0; b < n; b += QK_BLOCK) {
        const int64_t e = block_end(b, n);
        vf c_max = vf_set1(0.0f); /* lanes past the end: code 0 */
        s->lp_max = vf_set1(-INFINITY);
        int64_t i = b;
        for (; i + QK_SPAN <= e; i += QK_SPAN)
            kept_n = llama_logits_span(s, k, flags, &kept, kept_n, &c_max, NULL, NULL, p_row, q,
                                       dt, st, i, e, 1, QK_PREFETCH);
        if (i < e)
            kept_n = llama_logits_span(s, k, flags, &kept, kept_n, &c_max, NULL, NULL, p_row, q,
                                       dt, st, i, e, 0, 0);
        if (!exact)
            kept_n = kept_sum(&kept, kept_n, flags & QK_REVERSE ? KEPT_P : KEPT_CODES, k,
                              &s->t_lo, &s->t_hi, &s->p32, e == n);
        else if (exact_packs(flags))
            kept_n = kept_exact_sum(&kept, kept_n, k, s, e == n);
        if (!exact || exact_packs(flags))
            s->lp_max = decode(c_max, k->scale, k->min_log_prob);
        blocks_add(bp, vf_hmax(s->lp_max), b);
    }
}

/* The base's tail (exact mode, or the reverse KL in either): its log p from
 * add_mass_g's mass, within mass_error of the float64 one; where that error,
 * through what reads the tail (the exact KL's tail terms, the token's NLL,
 * Q's mass there), could reach a twentieth of the contract, from float64
 * exps instead. Adds the tail's terms to *kld and *r (the reverse KL's sum,
 * q = e * exp(-(lse - lse_hi)): the reverse terms' lq is lse - lse_hi too
 * high); returns the tail's log p (-inf where there is no tail). */
QK_INLINE double llama_logits_tail(const llama_logits_sums *s, const uint16_t *p_row,
                                   const qk_header *h, int64_t n, int flags, double lse,
                                   float lse_hi, float y_tok, uint16_t c_tok, double *kld,
                                   double *r)
{
    if (s->tail_n == 0)
        return -INFINITY;
    const int exact = flags & QK_EXACT;
    const double q_scale = exp(-(lse - lse_hi)), lse_lo = lse - lse_hi, mlp = h->min_log_prob;
    const double tail_n = (double)s->tail_n, ys = vd_hsum(widened_sum(s->y_lo, s->y_hi));
    const double re = vd_hsum(widened_sum(s->re_lo, s->re_hi));
    const double mass = mass_of(&s->p), err = tail_error(mass, mass_error(&s->p), tail_n, mlp);
    double c_tail = qk_tail_log_prob(1.0 - mass, tail_n, mlp);
    int precise = 0;
    if (exact) {
        const double w = exp(c_tail), tail_kld = w * (tail_n * (c_tail + lse) - ys);
        precise = tail_could_matter(err * fabs(w * (tail_n * (c_tail + lse + 1.0) - ys)),
                                    *kld + tail_kld, 1e-6) ||
                  (c_tok == 0 && y_tok > -INFINITY && tail_could_matter(err, c_tail, 1e-7));
    }
    if (flags & QK_REVERSE)
        precise = precise || tail_could_matter(err * q_scale * re,
                                               q_scale * (*r - (c_tail - mlp) * re) - lse_lo,
                                               1e-6);
    if (precise)
        c_tail = qk_tail_log_prob(1.0 - mass64(p_row, h, n), tail_n, mlp);
    if (exact)
        *kld += exp(c_tail) * (tail_n * (c_tail + lse) - ys);
    *r -= (c_tail - mlp) * re;
    return c_tail;
}

QK_INLINE void llama_logits_row(const uint16_t *p_row, const void *q, int dt, ptrdiff_t st,
                                int64_t n, int64_t tok, int flags, qk_row *out)
{
    if (!flags) {
        llama_logits_one_pass(p_row, q, dt, st, n, tok, out);
        return;
    }
    const int exact = flags & QK_EXACT;
    memset(out, 0, sizeof *out);
    qk_header h;
    if (!qk_read_header(p_row, &h)) {
        out->status = QK_P_BAD_HEADER;
        return;
    }
    norm nq;
    qk_topk tq = {0};
    double lse;
    out->status = logits_pass1(q, dt, st, n, &nq, &tq, &lse);
    if (out->status)
        return;
    const float lse_hi = (float)lse;
    const double c_js = flags & QK_JS ? tail_before(p_row, &h, n, q, dt, st) : 0.0;
    /* c_cut: codes above it pass llama mode's -16 cut */
    const llama_logits_consts k = {vf_set1(h.scale), vf_set1(h.min_log_prob),
                                   vf_set1(cut_code(&h, -16.0f) - 0.5f), vf_set1(0.0f),
                                   vf_set1(-INFINITY), vf_set1(nq.max), vf_set1(lse_hi),
                                   vf_set1((float)c_js)};
    llama_logits_sums s;
    memset(&s, 0, sizeof s); /* every sum 0.0, every mask none */
    qk_topk tp = {0}, bp = {0};
    llama_logits_pass2(p_row, q, dt, st, n, flags, &k, &s, &bp);
    const side_values pv = codes_side(p_row, k.scale, k.min_log_prob);
    topk_of_blocks(&tp, &bp, &pv, n);
    const double sum_p = exact ? mass_of(&s.p)
                               : vd_hsum(widened_sum(vf_lo_pd(s.p32), vf_hi_pd(s.p32)));
    if (qk_row_corrupt(&h, qk_topk_best(&tp), sum_p, p_row, n)) {
        out->status = QK_P_CORRUPT;
        return;
    }
    double kld = vd_hsum(widened_sum(s.t_lo, s.t_hi)) + (lse - lse_hi) * sum_p;
    double r = -vd_hsum(widened_sum(s.r_lo, s.r_hi));
    const float y_tok = qk_logit_at(q, dt, st, tok);
    const uint16_t c_tok = qk_code(p_row, tok);
    const double c_tail = llama_logits_tail(&s, p_row, &h, n, flags, lse, lse_hi, y_tok, c_tok,
                                            &kld, &r);
    out->kld = vm_bits(s.inf) ? INFINITY : kld;
    if (flags & QK_REVERSE)
        out->rkl = exp(-(lse - lse_hi)) * r - (lse - lse_hi);
    if (flags & QK_JS)
        out->js = js_of(&s.js, 1.0, -(lse - lse_hi));
    out->nll_q = ((double)nq.max - y_tok) + lse;
    out->nll_q_llama = llama_nll(nq.max, lse, y_tok);
    if (exact && c_tok == 0)
        out->nll_p = y_tok > -INFINITY ? -c_tail : INFINITY;
    else
        out->nll_p = -(double)qk_decode(&h, c_tok);
    qk_set_tops(out, &tp, &tq, exp((double)tp.val[0]));
}

#define QK_LQ_PARAMS                                                                               \
    (const uint16_t *p_row, const void *q, int q_dtype, ptrdiff_t q_stride, int64_t n_vocab,       \
     int64_t tok, int mode, qk_row *out)
#define QK_LQ_ARGS (p_row, q, q_dtype, q_stride, n_vocab, tok, mode, out)
#define QK_LQ_F32(F) llama_logits_row(p_row, q, QK_F32, 1, n_vocab, tok, F, out)
#define QK_LQ_CONTIGUOUS(F) llama_logits_row(p_row, q, q_dtype, 1, n_vocab, tok, F, out)
#define QK_LQ_ANY(F) llama_logits_row(p_row, q, q_dtype, q_stride, n_vocab, tok, F, out)
#ifndef QK_FEW_COPIES
QK_FLAG_COPIES(llama_logits_f32, QK_LQ_PARAMS, QK_LQ_F32)
#endif
QK_MODE_COPIES(llama_logits_any, QK_LQ_PARAMS, QK_LQ_ANY)
QK_JS_COPIES(llama_logits, QK_LQ_PARAMS, QK_LQ_CONTIGUOUS)
QK_JS_STRIDED_COPY(llama_logits, QK_LQ_PARAMS, QK_LQ_ANY)

void QK_NAME(qk_score_llama_logits)(const uint16_t *p_row, const void *q, int q_dtype,
                                    ptrdiff_t q_stride, int64_t n_vocab, int64_t tok, int mode,
                                    qk_row *out)
{
    if (mode & QK_JS) {
        if (q_stride != 1)
            copy_llama_logits_js_strided QK_LQ_ARGS;
        else
            QK_BY_MODE_JS(llama_logits, QK_LQ_ARGS);
    }
#ifndef QK_FEW_COPIES
    else if (q_dtype == QK_F32 && q_stride == 1)
        QK_BY_FLAGS(llama_logits_f32, QK_LQ_ARGS);
#endif
    else
        QK_BY_MODE(llama_logits_any, QK_LQ_ARGS);
}
