/* quantkl's row kernels, written once and compiled once per instruction set.
 *
 * setup.py builds this file three times, with QK_ISA_AVX512, QK_ISA_AVX2 or
 * neither defined (simd.h maps the vector operations onto each); QK_NAME
 * gives each build's entry points their suffix and dispatch.c calls the best
 * one the CPU runs. The logic is the same on every machine, so the tests of
 * the portable build exercise it where no wide build can run.
 *
 * A float side is read twice: pass 1 streams it block by block (the block's
 * max, then its exps against the running max while the block is in L1, the
 * sum rescaled when the max grows); pass 2 reads it again from L2 beside the
 * base and sums the KL terms. Exps are float32 (vf_exp, < 1 ulp, unbiased);
 * every term is widened to float64 before it is summed, and each KL term
 * keeps the other side's log-sum-exp inside it, p * ((lp - (y - Y)) + lse_hi),
 * so that near-identical rows do not lose their small KLD to cancellation
 * between large sums. The result: per row |KLD - reference| <= 1e-7 +
 * 1e-6 * KLD, the contract tests/test_kernels.py holds every build to.
 */
#include <math.h>
#include <string.h>

#include "quantkl.h"
#include "rowstate.h"
#include "simd.h"

#if defined(QK_ISA_AVX512)
#define QK_NAME(f) f##_avx512
#elif defined(QK_ISA_AVX2)
#define QK_NAME(f) f##_avx2
#else
#define QK_NAME(f) f##_portable
#endif

/* Entries per pass-1 block: 8 KB of float32, well inside L1. */
#define QK_BLOCK 2048
/* Software prefetch distance of the streams read from memory (bytes). */
#define QK_PREFETCH 16384

/* --- exp ------------------------------------------------------------------ */

/* exp(x) in float32: Cody-Waite reduction to r in [-ln2/2, ln2/2], Cephes'
 * polynomial, scaling by 2^k. Over every float in [-87, 0]: at most 0.89 ulp
 * from exp, mean relative error 2e-10 (no bias a sum of 1e5 terms could
 * feel). Below -87.3 (and at -inf) it gives 0: such a term is < 1e-38 of the
 * row's largest and cannot move a float64 sum. */
QK_INLINE vf vf_exp(vf x)
{
    const vf lo = vf_set1(-87.3365402f);
    const vmask live = vf_gt(x, lo);
    x = vf_min(vf_max(x, lo), vf_set1(88.0f));
    const vf k = vf_round(x * vf_set1(1.44269504088896341f));
    vf r = vf_fma(k, vf_set1(-0.693359375f), x);
    r = vf_fma(k, vf_set1(2.12194440e-4f), r);
    vf p = vf_set1(1.9875691500e-4f);
    p = vf_fma(p, r, vf_set1(1.3981999507e-3f));
    p = vf_fma(p, r, vf_set1(8.3334519073e-3f));
    p = vf_fma(p, r, vf_set1(4.1665795894e-2f));
    p = vf_fma(p, r, vf_set1(1.6666665459e-1f));
    p = vf_fma(p, r, vf_set1(5.0000001201e-1f));
    p = vf_fma(p, r, vf_set1(1.0f)); /* 1 + r*(...) rounded once: 0.89 ulp at most */
    p = vf_fma(p, r, vf_set1(1.0f));
    return vf_keep(live, vf_scale2(p, k));
}

/* exp(x) in float64 to ~1e-14 relative, for the encoder, whose header must
 * be llama.cpp's to the bit: rounded to float32 it is the correctly rounded
 * expf (glibc's, in all but rare cases). Inputs below -708 give ~1e-308,
 * which rounds to float32 0 as expf's result would. */
QK_INLINE vd vd_exp(vd x)
{
    x = vd_max(x, vd_set1(-708.0));
    const vd k = vd_round(x * vd_set1(1.4426950408889634));
    vd r = vd_fma(k, vd_set1(-6.93147180369123816490e-01), x);
    r = vd_fma(k, vd_set1(-1.90821492927058770002e-10), r);
    /* Taylor to degree 11 on |r| <= ln2/2 (remainder < 7e-15), by Estrin's
     * scheme: a dependency chain of 5 instead of Horner's 11. */
    const vd r2 = r * r, r4 = r2 * r2, r8 = r4 * r4;
#define QK_PAIR(a, b) vd_fma(vd_set1(b), r, vd_set1(a))
    const vd a0 = QK_PAIR(1.0, 1.0), a1 = QK_PAIR(1.0 / 2, 1.0 / 6),
             a2 = QK_PAIR(1.0 / 24, 1.0 / 120), a3 = QK_PAIR(1.0 / 720, 1.0 / 5040),
             a4 = QK_PAIR(1.0 / 40320, 1.0 / 362880), a5 = QK_PAIR(1.0 / 3628800, 1.0 / 39916800);
#undef QK_PAIR
    const vd b0 = vd_fma(a1, r2, a0), b1 = vd_fma(a3, r2, a2), b2 = vd_fma(a5, r2, a4);
    return vd_scale2(vd_fma(b2, r8, vd_fma(b1, r4, b0)), k);
}

/* --- loads ------------------------------------------------------------------- */

/* Logits i .. i+QK_W-1 of a row as float32 (exact widening). */
QK_INLINE vf load_logits(const void *row, int dt, ptrdiff_t stride, int64_t i)
{
    const unsigned char *b = (const unsigned char *)row;
    if (stride == 1) {
        if (dt == QK_F32)
            return vf_load_f32(b + 4 * i);
        return dt == QK_F16 ? vf_load_f16(b + 2 * i) : vf_load_bf16(b + 2 * i);
    }
    float v[QK_W];
    for (int l = 0; l < QK_W; l++)
        v[l] = qk_logit_at(row, dt, stride, i + l);
    return vf_load_f32(v);
}

/* The last n < QK_W logits of a row; lanes past the end read -inf, which no
 * max, exp or top-k takes. */
QK_INLINE vf load_logits_tail(const void *row, int dt, ptrdiff_t stride, int64_t i, int n)
{
    float v[QK_W];
    for (int l = 0; l < QK_W; l++)
        v[l] = l < n ? qk_logit_at(row, dt, stride, i + l) : -INFINITY;
    return vf_load_f32(v);
}

/* Codes i .. i+QK_W-1 of a llama row, as float32 (exact). */
QK_INLINE vf load_codes(const uint16_t *row, int64_t i)
{
    return vf_load_u16((const unsigned char *)row + 8 + 2 * i);
}

QK_INLINE vf load_codes_tail(const uint16_t *row, int64_t i, int n)
{
    float v[QK_W];
    for (int l = 0; l < QK_W; l++)
        v[l] = l < n ? (float)qk_code(row, i + l) : 0.0f;
    return vf_load_f32(v);
}

QK_INLINE void prefetch(const void *base, int64_t byte_offset)
{
    __builtin_prefetch((const char *)base + byte_offset + QK_PREFETCH);
}

QK_INLINE int count(vmask m) { return __builtin_popcount(vm_bits(m)); }

QK_INLINE vd widened_sum(vd lo, vd hi) { return lo + hi; }

/* Adds exp(lp) of the lanes in m, in float64. A clipped tail's log p is
 * log((1 - mass) / n): when the mass is near 1 that is ill-conditioned, so
 * the masses it comes from are summed from float64 exps. */
QK_INLINE void add_mass64(vd *lo, vd *hi, vmask m, vf lp)
{
    *lo += vd_keep_lo(m, vd_exp(vf_lo_pd(lp)));
    *hi += vd_keep_hi(m, vd_exp(vf_hi_pd(lp)));
}

/* --- what a pass follows besides its sums ------------------------------------ */

/* First index of the largest value. */
typedef struct {
    float best;
    int64_t top;
} argmax;

QK_INLINE void argmax_add(argmax *a, vf v, int64_t i, vmask valid)
{
    if (!vm_bits(vm_and(valid, vf_gt(v, vf_set1(a->best)))))
        return;
    float l[QK_W];
    vf_store(l, v);
    const unsigned bits = vm_bits(valid);
    for (int k = 0; k < QK_W; k++)
        if ((bits >> k & 1) && l[k] > a->best) {
            a->best = l[k];
            a->top = i + k;
        }
}

/* The top-k list; one vector compare lets almost every vector by. */
QK_INLINE void topk_add(qk_topk *t, vf v, int64_t i, vmask valid)
{
    if (t->n == QK_TOPK_MAX &&
        !vm_bits(vm_and(valid, vf_gt(v, vf_set1(t->val[QK_TOPK_MAX - 1])))))
        return;
    float l[QK_W];
    vf_store(l, v);
    const unsigned bits = vm_bits(valid);
    for (int k = 0; k < QK_W; k++)
        if (bits >> k & 1)
            qk_topk_push(t, l[k], i + k);
}

/* --- pass 1: a float side's normaliser -------------------------------------- */

/* max and sum of exp(v - max); the float32 exps are widened and summed in
 * float64 (float32 partial sums would move log-sum-exp by ~1e-7). */
typedef struct {
    float max;
    vd lo, hi;
    vmask bad; /* lanes that met NaN or +inf */
} norm;

QK_INLINE void norm_init(norm *s)
{
    s->max = -INFINITY;
    s->lo = s->hi = vd_set1(0.0);
    s->bad = vm_none();
}

/* log of the sum, relative to max */
QK_INLINE double norm_lse(const norm *s) { return log(vd_hsum(widened_sum(s->lo, s->hi))); }

QK_INLINE void norm_scan(norm *s, vf *m, vf v, int64_t i, vmask valid, qk_topk *tk, argmax *am)
{
    *m = vf_max(v, *m);
    s->bad = vm_or(s->bad, vf_not_lt(v, vf_set1(INFINITY)));
    if (tk)
        topk_add(tk, v, i, valid);
    if (am)
        argmax_add(am, v, i, valid);
}

QK_INLINE void norm_add(norm *s, vf v, vf max)
{
    const vf e = vf_exp(v - max);
    s->lo += vf_lo_pd(e);
    s->hi += vf_hi_pd(e);
}

/* Entries [b, e) of a float side: the block's max and whatever else is
 * followed (from memory), then its exps against the running max (from L1). */
QK_INLINE void norm_block(norm *s, const void *row, int dt, ptrdiff_t st, int64_t b, int64_t e,
                          qk_topk *tk, argmax *am)
{
    const int64_t size = dt == QK_F32 ? 4 : 2;
    vf m = vf_set1(-INFINITY);
    int64_t i = b;
    for (; i + QK_W <= e; i += QK_W) {
        if (st == 1)
            prefetch(row, size * i);
        norm_scan(s, &m, load_logits(row, dt, st, i), i, vm_all(), tk, am);
    }
    if (i < e)
        norm_scan(s, &m, load_logits_tail(row, dt, st, i, (int)(e - i)), i, vm_first((int)(e - i)),
                  tk, am);
    const float bm = vf_hmax(m);
    if (bm > s->max) {
        if (s->max > -INFINITY) {
            const vd f = vd_set1(exp((double)s->max - (double)bm));
            s->lo = s->lo * f;
            s->hi = s->hi * f;
        }
        s->max = bm;
    }
    if (s->max == -INFINITY)
        return;
    const vf max = vf_set1(s->max);
    for (i = b; i + QK_W <= e; i += QK_W)
        norm_add(s, load_logits(row, dt, st, i), max);
    if (i < e)
        norm_add(s, load_logits_tail(row, dt, st, i, (int)(e - i)), max);
}

QK_INLINE int64_t block_end(int64_t b, int64_t n) { return b + QK_BLOCK < n ? b + QK_BLOCK : n; }

/* --- llama row x logits ---------------------------------------------------- */

typedef struct {
    vf scale, min_log_prob, cut, zero, ninf, ymax, lse_hi;
} llama_logits_consts;

typedef struct {
    vd t_lo, t_hi; /* kept base entries: p * ((lp - (y - Y)) + lse_hi) */
    vd p_lo, p_hi; /* kept base entries: p (exact mode: float64 exps, for the tail) */
    vd y_lo, y_hi; /* exact mode, tail entries (code 0, y finite): y - Y */
    int64_t tail_n;
    vmask inf;     /* kept base entries where y is -inf: the KL is infinite */
    argmax top;    /* the base's largest decoded log p */
} llama_logits_sums;

QK_INLINE void llama_logits_step(llama_logits_sums *s, const llama_logits_consts *k, int exact,
                                 vf c, vf y, int64_t i, vmask valid)
{
    const vf lp = c * k->scale + k->min_log_prob; /* llama.cpp's float32 decode */
    argmax_add(&s->top, lp, i, valid);
    const vf yr = y - k->ymax;
    const vmask finite_y = vf_gt(y, k->ninf);
    vmask keep;
    if (exact) {
        keep = vm_and(valid, vf_gt(c, k->zero));
        const vmask tail = vm_andnot(vm_and(valid, finite_y), keep);
        s->tail_n += count(tail);
        const vf ty = vf_keep(tail, yr);
        s->y_lo += vf_lo_pd(ty);
        s->y_hi += vf_hi_pd(ty);
    } else {
        keep = vm_and(valid, vf_gt(lp, k->cut));
    }
    if (!vm_bits(keep))
        return;
    s->inf = vm_or(s->inf, vm_andnot(keep, finite_y));
    const vf p = vf_exp(lp);
    const vf t = vf_keep(vm_and(keep, finite_y), p * ((lp - yr) + k->lse_hi));
    s->t_lo += vf_lo_pd(t);
    s->t_hi += vf_hi_pd(t);
    if (exact) {
        add_mass64(&s->p_lo, &s->p_hi, keep, lp);
    } else {
        const vf pk = vf_keep(keep, p);
        s->p_lo += vf_lo_pd(pk);
        s->p_hi += vf_hi_pd(pk);
    }
}

QK_INLINE void llama_logits_row(const uint16_t *p_row, const void *q, int dt, ptrdiff_t st,
                                int64_t n, int64_t tok, int exact, qk_row *out)
{
    memset(out, 0, sizeof *out);
    qk_header h;
    if (!qk_read_header(p_row, &h)) {
        out->status = QK_P_BAD_HEADER;
        return;
    }
    norm nq;
    norm_init(&nq);
    qk_topk tq = {0};
    for (int64_t b = 0; b < n; b += QK_BLOCK)
        norm_block(&nq, q, dt, st, b, block_end(b, n), &tq, NULL);
    out->status = qk_side_status(vm_bits(nq.bad) != 0, nq.max, QK_Q_NONFINITE, QK_Q_EMPTY);
    if (out->status)
        return;
    const double lse = norm_lse(&nq);
    const float lse_hi = (float)lse;
    const llama_logits_consts k = {vf_set1(h.scale), vf_set1(h.min_log_prob), vf_set1(-16.0f),
                                   vf_set1(0.0f), vf_set1(-INFINITY), vf_set1(nq.max),
                                   vf_set1(lse_hi)};
    const vd z = vd_set1(0.0);
    llama_logits_sums s = {z, z, z, z, z, z, 0, vm_none(), {-INFINITY, 0}};
    int64_t i = 0;
    for (; i + QK_W <= n; i += QK_W) {
        prefetch(p_row, 8 + 2 * i);
        llama_logits_step(&s, &k, exact, load_codes(p_row, i), load_logits(q, dt, st, i), i,
                          vm_all());
    }
    if (i < n)
        llama_logits_step(&s, &k, exact, load_codes_tail(p_row, i, (int)(n - i)),
                          load_logits_tail(q, dt, st, i, (int)(n - i)), i, vm_first((int)(n - i)));
    const double sum_p = vd_hsum(widened_sum(s.p_lo, s.p_hi));
    double kld = vd_hsum(widened_sum(s.t_lo, s.t_hi)) + (lse - lse_hi) * sum_p;
    double c_tail = -INFINITY;
    if (s.tail_n > 0) {
        c_tail = qk_tail_log_prob(1.0 - sum_p, (double)s.tail_n, h.min_log_prob);
        kld += exp(c_tail) * ((double)s.tail_n * (c_tail + lse) -
                              vd_hsum(widened_sum(s.y_lo, s.y_hi)));
    }
    out->kld = vm_bits(s.inf) ? INFINITY : kld;
    const float y_tok = qk_logit_at(q, dt, st, tok);
    const uint16_t c_tok = qk_code(p_row, tok);
    out->nll_q = ((double)nq.max + lse) - y_tok;
    if (exact && c_tok == 0)
        out->nll_p = y_tok > -INFINITY ? -c_tail : INFINITY;
    else
        out->nll_p = -(double)qk_decode(&h, c_tok);
    out->top_p = s.top.top;
    out->top_q = tq.idx[0];
    out->rank = qk_topk_rank(&tq, s.top.top);
}

void QK_NAME(qk_score_llama_logits)(const uint16_t *p_row, const void *q, int q_dtype,
                                    ptrdiff_t q_stride, int64_t n_vocab, int64_t tok, int mode,
                                    qk_row *out)
{
    const int exact = mode == QK_EXACT;
    /* Each call below is its own copy, with the dtype and mode folded in. */
    if (q_stride != 1)
        llama_logits_row(p_row, q, q_dtype, q_stride, n_vocab, tok, exact, out);
    else if (q_dtype == QK_F32)
        exact ? llama_logits_row(p_row, q, QK_F32, 1, n_vocab, tok, 1, out)
              : llama_logits_row(p_row, q, QK_F32, 1, n_vocab, tok, 0, out);
    else if (q_dtype == QK_F16)
        exact ? llama_logits_row(p_row, q, QK_F16, 1, n_vocab, tok, 1, out)
              : llama_logits_row(p_row, q, QK_F16, 1, n_vocab, tok, 0, out);
    else
        exact ? llama_logits_row(p_row, q, QK_BF16, 1, n_vocab, tok, 1, out)
              : llama_logits_row(p_row, q, QK_BF16, 1, n_vocab, tok, 0, out);
}

/* --- logits x logits --------------------------------------------------------- */

typedef struct {
    vf xmax, ymax, lsep_hi, dlse_hi, cut, ninf;
} logits_consts;

typedef struct {
    vd t_lo, t_hi; /* kept base entries: p~ * (((x - X) - (y - Y)) + dlse_hi) */
    vd p_lo, p_hi; /* kept base entries: p~ = exp((x - X) - lsep_hi) */
    vmask inf;     /* kept base entries where y is -inf */
} logits_sums;

QK_INLINE void logits_step(logits_sums *s, const logits_consts *k, int exact, vf x, vf y,
                           vmask valid)
{
    const vf xr = x - k->xmax;
    const vf lp = xr - k->lsep_hi;
    const vmask keep = vm_and(valid, exact ? vf_gt(x, k->ninf) : vf_gt(lp, k->cut));
    if (!vm_bits(keep))
        return;
    const vmask finite_y = vf_gt(y, k->ninf);
    s->inf = vm_or(s->inf, vm_andnot(keep, finite_y));
    const vf p = vf_exp(lp);
    const vf t = vf_keep(vm_and(keep, finite_y), p * ((xr - (y - k->ymax)) + k->dlse_hi));
    const vf pk = vf_keep(keep, p);
    s->t_lo += vf_lo_pd(t);
    s->t_hi += vf_hi_pd(t);
    s->p_lo += vf_lo_pd(pk);
    s->p_hi += vf_hi_pd(pk);
}

QK_INLINE void logits_logits_row(const void *p, int dp, ptrdiff_t sp, const void *q, int dq,
                                 ptrdiff_t sq, int64_t n, int64_t tok, int exact, qk_row *out)
{
    memset(out, 0, sizeof *out);
    norm np, nq;
    norm_init(&np);
    norm_init(&nq);
    qk_topk tq = {0};
    argmax top = {-INFINITY, 0};
    for (int64_t b = 0; b < n; b += QK_BLOCK) {
        norm_block(&np, p, dp, sp, b, block_end(b, n), NULL, &top);
        norm_block(&nq, q, dq, sq, b, block_end(b, n), &tq, NULL);
    }
    out->status = qk_side_status(vm_bits(np.bad) != 0, np.max, QK_P_NONFINITE, QK_P_EMPTY) |
                  qk_side_status(vm_bits(nq.bad) != 0, nq.max, QK_Q_NONFINITE, QK_Q_EMPTY);
    if (out->status)
        return;
    /* p~ and the terms use float32 parts of the two log-sum-exps; what those
     * parts leave out is put back in float64 at the end. */
    const double lse_p = norm_lse(&np), lse_q = norm_lse(&nq);
    const float lsep_hi = (float)lse_p, dlse_hi = (float)(lse_q - lse_p);
    const double lsep_lo = lse_p - lsep_hi, dlse_lo = (lse_q - lse_p) - dlse_hi;
    const logits_consts k = {vf_set1(np.max), vf_set1(nq.max), vf_set1(lsep_hi),
                             vf_set1(dlse_hi), vf_set1(-16.0f), vf_set1(-INFINITY)};
    const vd z = vd_set1(0.0);
    logits_sums s = {z, z, z, z, vm_none()};
    int64_t i = 0;
    for (; i + QK_W <= n; i += QK_W)
        logits_step(&s, &k, exact, load_logits(p, dp, sp, i), load_logits(q, dq, sq, i), vm_all());
    if (i < n)
        logits_step(&s, &k, exact, load_logits_tail(p, dp, sp, i, (int)(n - i)),
                    load_logits_tail(q, dq, sq, i, (int)(n - i)), vm_first((int)(n - i)));
    const double kld = exp(-lsep_lo) * (vd_hsum(widened_sum(s.t_lo, s.t_hi)) +
                                        dlse_lo * vd_hsum(widened_sum(s.p_lo, s.p_hi)));
    out->kld = vm_bits(s.inf) ? INFINITY : kld;
    out->nll_p = ((double)np.max + lse_p) - qk_logit_at(p, dp, sp, tok);
    out->nll_q = ((double)nq.max + lse_q) - qk_logit_at(q, dq, sq, tok);
    out->top_p = top.top;
    out->top_q = tq.idx[0];
    out->rank = qk_topk_rank(&tq, top.top);
}

#define QK_LL_ROW(DP, DQ)                                                                      \
    (exact ? logits_logits_row(p, DP, 1, q, DQ, 1, n_vocab, tok, 1, out)                       \
           : logits_logits_row(p, DP, 1, q, DQ, 1, n_vocab, tok, 0, out))

void QK_NAME(qk_score_logits_logits)(const void *p, int p_dtype, ptrdiff_t p_stride, const void *q,
                                     int q_dtype, ptrdiff_t q_stride, int64_t n_vocab, int64_t tok,
                                     int mode, qk_row *out)
{
    const int exact = mode == QK_EXACT;
    if (p_stride != 1 || q_stride != 1) {
        logits_logits_row(p, p_dtype, p_stride, q, q_dtype, q_stride, n_vocab, tok, exact, out);
        return;
    }
    switch (p_dtype * 3 + q_dtype) {
    case QK_F32 * 3 + QK_F32: QK_LL_ROW(QK_F32, QK_F32); break;
    case QK_F32 * 3 + QK_F16: QK_LL_ROW(QK_F32, QK_F16); break;
    case QK_F32 * 3 + QK_BF16: QK_LL_ROW(QK_F32, QK_BF16); break;
    case QK_F16 * 3 + QK_F32: QK_LL_ROW(QK_F16, QK_F32); break;
    case QK_F16 * 3 + QK_F16: QK_LL_ROW(QK_F16, QK_F16); break;
    case QK_F16 * 3 + QK_BF16: QK_LL_ROW(QK_F16, QK_BF16); break;
    case QK_BF16 * 3 + QK_F32: QK_LL_ROW(QK_BF16, QK_F32); break;
    case QK_BF16 * 3 + QK_F16: QK_LL_ROW(QK_BF16, QK_F16); break;
    default: QK_LL_ROW(QK_BF16, QK_BF16); break;
    }
}
#undef QK_LL_ROW

/* --- llama row x llama row --------------------------------------------------- */

typedef struct {
    vf sp, mp, sq, mq, cut, zero;
} llama_llama_consts;

typedef struct {
    vd t_lo, t_hi;   /* kept base entries: p * (lp - lq), lq = Q's clip point on its code 0 */
    vd p_lo, p_hi;   /* kept base entries: p (exact mode: float64 exps, for the tail) */
    vd pq_lo, pq_hi; /* kept base entries on Q's code 0: p */
    vd q_lo, q_hi;   /* Q's decoded mass: exp(lq) where its code > 0, float64 exps */
    vd l_lo, l_hi;   /* exact mode, base code 0 on Q's code > 0: lq */
    int64_t q_tail_n, p_tail_n, p_tail_on_q_tail;
    argmax top;      /* the base's largest decoded log p */
    qk_topk tq;      /* Q's largest decoded log q */
} llama_llama_sums;

QK_INLINE void llama_llama_step(llama_llama_sums *s, const llama_llama_consts *k, int exact,
                                vf cp, vf cq, int64_t i, vmask valid)
{
    const vf lp = cp * k->sp + k->mp, lq = cq * k->sq + k->mq; /* llama.cpp's decode */
    argmax_add(&s->top, lp, i, valid);
    topk_add(&s->tq, lq, i, valid);
    const vmask q_live = vm_and(valid, vf_gt(cq, k->zero));
    s->q_tail_n += count(valid) - count(q_live);
    add_mass64(&s->q_lo, &s->q_hi, q_live, lq);
    vmask keep;
    if (exact) {
        keep = vm_and(valid, vf_gt(cp, k->zero));
        const vmask tail = vm_andnot(valid, keep);
        s->p_tail_n += count(tail);
        s->p_tail_on_q_tail += count(vm_andnot(tail, q_live));
        const vf l = vf_keep(vm_and(tail, q_live), lq);
        s->l_lo += vf_lo_pd(l);
        s->l_hi += vf_hi_pd(l);
    } else {
        keep = vm_and(valid, vf_gt(lp, k->cut));
    }
    if (!vm_bits(keep))
        return;
    /* Q's code-0 entries take its clip point here and their own log q (the
     * tail's, known only at the end) through a float64 correction: the
     * terms stay small when P and Q are alike. */
    const vf p = vf_keep(keep, vf_exp(lp));
    const vf t = p * (lp - vf_select(q_live, lq, k->mq));
    const vf pq = vf_keep(vm_andnot(keep, q_live), p);
    s->t_lo += vf_lo_pd(t);
    s->t_hi += vf_hi_pd(t);
    s->pq_lo += vf_lo_pd(pq);
    s->pq_hi += vf_hi_pd(pq);
    if (exact) {
        add_mass64(&s->p_lo, &s->p_hi, keep, lp);
    }
}

QK_INLINE void llama_llama_row(const uint16_t *p_row, const uint16_t *q_row, int64_t n, int64_t tok,
                               int exact, qk_row *out)
{
    memset(out, 0, sizeof *out);
    qk_header hp, hq;
    if (!qk_read_header(p_row, &hp))
        out->status |= QK_P_BAD_HEADER;
    if (!qk_read_header(q_row, &hq))
        out->status |= QK_Q_BAD_HEADER;
    if (out->status)
        return;
    const llama_llama_consts k = {vf_set1(hp.scale), vf_set1(hp.min_log_prob), vf_set1(hq.scale),
                                  vf_set1(hq.min_log_prob), vf_set1(-16.0f), vf_set1(0.0f)};
    const vd z = vd_set1(0.0);
    llama_llama_sums s = {z, z, z, z, z, z, z, z, z, z, 0, 0, 0, {-INFINITY, 0}, {0}};
    int64_t i = 0;
    for (; i + QK_W <= n; i += QK_W) {
        prefetch(p_row, 8 + 2 * i);
        prefetch(q_row, 8 + 2 * i);
        llama_llama_step(&s, &k, exact, load_codes(p_row, i), load_codes(q_row, i), i, vm_all());
    }
    if (i < n)
        llama_llama_step(&s, &k, exact, load_codes_tail(p_row, i, (int)(n - i)),
                         load_codes_tail(q_row, i, (int)(n - i)), i, vm_first((int)(n - i)));
    const double q_mass = vd_hsum(widened_sum(s.q_lo, s.q_hi));
    const double c_q = s.q_tail_n > 0 ? qk_tail_log_prob(1.0 - q_mass, (double)s.q_tail_n,
                                                         hq.min_log_prob) : 0.0;
    double kld = vd_hsum(widened_sum(s.t_lo, s.t_hi)) -
                 (c_q - hq.min_log_prob) * vd_hsum(widened_sum(s.pq_lo, s.pq_hi));
    double c_p = 0.0;
    if (s.p_tail_n > 0) {
        c_p = qk_tail_log_prob(1.0 - vd_hsum(widened_sum(s.p_lo, s.p_hi)), (double)s.p_tail_n,
                               hp.min_log_prob);
        kld += exp(c_p) * ((double)s.p_tail_n * c_p - vd_hsum(widened_sum(s.l_lo, s.l_hi)) -
                           (double)s.p_tail_on_q_tail * c_q);
    }
    out->kld = kld;
    const uint16_t cp_tok = qk_code(p_row, tok), cq_tok = qk_code(q_row, tok);
    out->nll_q = cq_tok ? -(double)qk_decode(&hq, cq_tok) : -c_q;
    /* llama mode: the base's NLL as llama.cpp decodes it, whatever Q is */
    out->nll_p = (cp_tok || !exact) ? -(double)qk_decode(&hp, cp_tok) : -c_p;
    out->top_p = s.top.top;
    out->top_q = s.tq.idx[0];
    out->rank = qk_topk_rank(&s.tq, s.top.top);
}

void QK_NAME(qk_score_llama_llama)(const uint16_t *p_row, const uint16_t *q_row, int64_t n_vocab,
                                   int64_t tok, int mode, qk_row *out)
{
    if (mode == QK_EXACT)
        llama_llama_row(p_row, q_row, n_vocab, tok, 1, out);
    else
        llama_llama_row(p_row, q_row, n_vocab, tok, 0, out);
}

/* --- the encoder ------------------------------------------------------------- */

/* float32 logits -> llama.cpp uint16 row (SPEC §2), byte for byte what
 * llama-perplexity --kl-divergence-base writes: llama.cpp's float32
 * arithmetic in its order, the codes rounded half to even, and each expf
 * term the correctly rounded float32 (vd_exp, rounded) summed in float64. */
QK_INLINE void encode_codes(uint16_t *row, vf v, vf vmin, vf inv, int64_t i, int n)
{
    unsigned char *dst = (unsigned char *)row + 8 + 2 * i;
    const vf c = inv * (v - vmin);
    const vmask live = vf_gt(v, vmin);
    if (n == QK_W) {
        vf_store_u16(dst, c, live);
        return;
    }
    uint16_t buf[QK_W];
    vf_store_u16(buf, c, live);
    memcpy(dst, buf, 2 * (size_t)n);
}

QK_INLINE vd encode_exps(vf v, vf vmax)
{
    const vf d = v - vmax;
    return vd_round_f32(vd_exp(vf_lo_pd(d))) + vd_round_f32(vd_exp(vf_hi_pd(d)));
}

QK_INLINE int encode_row(const float *x, ptrdiff_t st, int64_t n, int64_t tok, uint16_t *row,
                         double *nll)
{
    const vf inf = vf_set1(INFINITY);
    vf vmax = vf_set1(-INFINITY), vmin = inf;
    vmask bad = vm_none();
    int64_t i = 0;
    for (; i + QK_W <= n; i += QK_W) {
        if (st == 1)
            prefetch(x, 4 * i);
        const vf v = load_logits(x, QK_F32, st, i);
        vmax = vf_max(v, vmax);
        vmin = vf_min(v, vmin);
        bad = vm_or(bad, vf_not_lt(v, inf));
    }
    float max_logit = vf_hmax(vmax), min_logit = vf_hmin(vmin);
    int tail_bad = 0;
    for (int64_t j = i; j < n; j++) {
        const float v = qk_logit_at(x, QK_F32, st, j);
        tail_bad |= !(v < INFINITY);
        max_logit = v > max_logit ? v : max_logit;
        min_logit = v < min_logit ? v : min_logit;
    }
    if (vm_bits(bad) || tail_bad)
        return QK_P_NONFINITE;
    if (max_logit == -INFINITY)
        return QK_P_EMPTY;
    min_logit = min_logit > max_logit - 16 ? min_logit : max_logit - 16;
    const float scale = (max_logit - min_logit) / 65535.f;
    const float inv_scale = scale != 0 ? 1 / scale : 0; /* scale 0: every code is 0 */
    const vf vM = vf_set1(max_logit), vm = vf_set1(min_logit), vinv = vf_set1(inv_scale);
    vd sum = vd_set1(0.0);
    for (i = 0; i + QK_W <= n; i += QK_W) {
        const vf v = load_logits(x, QK_F32, st, i);
        sum += encode_exps(v, vM);
        encode_codes(row, v, vm, vinv, i, QK_W);
    }
    if (i < n) {
        const vf v = load_logits_tail(x, QK_F32, st, i, (int)(n - i));
        sum += encode_exps(v, vM);
        encode_codes(row, v, vm, vinv, i, (int)(n - i));
    }
    if (n & 1) {
        const uint16_t pad = 0;
        memcpy((unsigned char *)row + 8 + 2 * n, &pad, 2);
    }
    const float log_sum_exp = (float)log(vd_hsum(sum));
    const float header[2] = {scale, min_logit - max_logit - log_sum_exp};
    memcpy(row, header, sizeof header);
    *nll = max_logit + log_sum_exp - qk_logit_at(x, QK_F32, st, tok);
    return QK_OK;
}

int QK_NAME(qk_encode_llama_row)(const float *x, ptrdiff_t stride, int64_t n_vocab, int64_t tok,
                                 uint16_t *row, double *nll)
{
    if (stride == 1)
        return encode_row(x, 1, n_vocab, tok, row, nll);
    return encode_row(x, stride, n_vocab, tok, row, nll);
}
