/* Precise sparse rows (.kldp): the base's float32 logits at the entries it
 * stores, a float64 normaliser, and exact scalars of its tail.
 *
 * Design:
 *  - a row stores llama mode's kept entries (the same float32 cut the float
 *    kernels take, (x - X) - float(lse) > -16) and, where fewer than ten pass
 *    it, the ten largest: the top-k lists need them;
 *  - llama mode against float logits is the float-logits kernel's sum over
 *    the same entries: pass 1 over Q, then Q gathered at the stored indices
 *    into the kept-terms buffer, whose exps and terms run on full vectors;
 *  - everything else (exact mode, the reverse KL, JS, two sparse rows) runs
 *    in float64 over the stored entries, with one float64 pass over Q for
 *    its tail's mass and minimum; what the tail leaves unknown becomes an
 *    interval [qk_row value, qk_bounds value] (docs/statistics.md derives it);
 *  - indices are checked as they are read (in range, increasing): a row that
 *    breaks them is QK_P_CORRUPT / QK_Q_CORRUPT, never a read out of bounds. */
#include "kernel_parts.h"

#define LOG2 0.69314718055994530942

/* The cut the float kernels take: the same float32 operations, lane for lane. */
static inline int sparse_kept(float x, float x_max, float lse_hi)
{
    const float xr = x - x_max;
    return xr - lse_hi > -16.0f;
}

static inline int header_ok(const qk_sparse_header *h, int64_t n)
{
    return (int64_t)h->n_stored + (int64_t)h->tail_count == n && h->n_stored >= 1 &&
           isfinite(h->x_max) && isfinite(h->lse) && h->lse >= 0.0 && h->lse <= 1e3 &&
           !isnan(h->tail_lse) && h->tail_lse <= 1e-9 && !isnan(h->tail_min) &&
           !isnan(h->tail_max) && h->tail_max <= h->x_max && !isnan(h->x_tok) &&
           h->x_tok <= h->x_max && (h->tail_count == 0 || h->tail_min <= h->tail_max);
}

/* --- encoding -------------------------------------------------------------- */

/* The row's K largest logits (ties in index order), K = min(QK_TOPK_MAX, n). */
static void top_of_row(const float *x, ptrdiff_t st, int64_t n, qk_topk *t)
{
    memset(t, 0, sizeof *t);
    for (int64_t i = 0; i < n; i++)
        qk_topk_push(t, x[i * st], i);
}

/* Whether entry i (logit v) is stored: kept by the cut, or, in a row where
 * fewer than QK_TOPK_MAX are, among the top list. */
static inline int stored_at(float v, int64_t i, const qk_sparse_header *h, float lse_hi,
                            const qk_topk *top)
{
    if (!top)
        return sparse_kept(v, h->x_max, lse_hi);
    for (int j = 0; j < top->n; j++)
        if (top->idx[j] == i)
            return 1;
    return 0;
}

int QK_NAME(qk_sparse_measure)(const float *x, ptrdiff_t st, int64_t n, int64_t tok,
                               qk_sparse_header *h)
{
    float mx = -INFINITY;
    int bad = 0;
    for (int64_t i = 0; i < n; i++) {
        const float v = x[i * st];
        bad |= isnan(v) || v == INFINITY;
        mx = v > mx ? v : mx;
    }
    if (bad)
        return QK_P_NONFINITE;
    if (mx == -INFINITY)
        return QK_P_EMPTY;
    double s = 0.0;
    for (int64_t i = 0; i < n; i++)
        s += exp((double)x[i * st] - (double)mx);
    memset(h, 0, sizeof *h);
    h->x_max = mx;
    h->lse = log(s);
    h->x_tok = x[tok * st];
    const float lse_hi = (float)h->lse;
    int64_t kept = 0;
    for (int64_t i = 0; i < n; i++)
        kept += sparse_kept(x[i * st], mx, lse_hi);
    qk_topk top;
    const qk_topk *list = NULL;
    if (kept < QK_TOPK_MAX && kept < n) {
        top_of_row(x, st, n, &top);
        list = &top;
        kept = top.n;
    }
    double tail = 0.0;
    float tail_min = INFINITY, tail_max = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        const float v = x[i * st];
        if (!stored_at(v, i, h, lse_hi, list)) {
            tail += exp((double)v - (double)mx);
            tail_min = v < tail_min ? v : tail_min;
            tail_max = v > tail_max ? v : tail_max;
        }
    }
    h->n_stored = (uint32_t)kept;
    h->tail_count = (uint32_t)(n - kept);
    h->tail_min = tail_min;
    h->tail_max = tail_max;
    h->tail_lse = tail > 0.0 ? log(tail) - h->lse : -INFINITY;
    return QK_OK;
}

void QK_NAME(qk_sparse_fill)(const float *x, ptrdiff_t st, int64_t n, const qk_sparse_header *h,
                             int32_t *idx, float *val)
{
    const float lse_hi = (float)h->lse;
    int64_t kept = 0;
    for (int64_t i = 0; i < n; i++)
        kept += sparse_kept(x[i * st], h->x_max, lse_hi);
    qk_topk top;
    const qk_topk *list = NULL;
    if (kept != (int64_t)h->n_stored) {
        top_of_row(x, st, n, &top);
        list = &top;
    }
    int64_t k = 0;
    for (int64_t i = 0; i < n && k < (int64_t)h->n_stored; i++) {
        if (stored_at(x[i * st], i, h, lse_hi, list)) {
            idx[k] = (int32_t)i;
            val[k++] = x[i * st];
        }
    }
}

/* --- the tail's intervals ---------------------------------------------------- */

/* What the bounds read of a row pair, as logs (-inf for a zero mass):
 * P's tail mass m, its entries' largest and smallest p (tau, p_min: from
 * the stored tail maximum and minimum), Q's mass M on P's tail (within
 * [M_lo, M_hi]) and its smallest probability there. */
typedef struct {
    double log_m, log_tau, log_p_min;
    double log_M_lo, log_M_hi, log_q_min;
} tail_facts;

/* a log(a / b) for masses given as logs; 0 when a = 0. */
static inline double xlogx(double log_a, double log_b)
{
    if (log_a == -INFINITY)
        return 0.0;
    return exp(log_a) * (log_a - log_b);
}

static inline double logaddexp(double a, double b)
{
    const double m = a > b ? a : b;
    if (m == -INFINITY)
        return -INFINITY;
    return m + log(exp(a - m) + exp(b - m));
}

/* JS's terms of one entry pair, 2 * JS-term: a log(2a / (a + b)) + b log(2b / (a + b)). */
static inline double js2(double log_a, double log_b)
{
    const double log_mix = logaddexp(log_a, log_b) - LOG2;
    return xlogx(log_a, log_mix) + xlogx(log_b, log_mix);
}

/* The tail's share of KL(P||Q): the log-sum inequality below (all of P's
 * tail mass against all of Q's, at Q's largest possible M), and above every
 * entry at p = tau against q = q_min. */
static void tail_kl(const tail_facts *t, double *lo, double *hi)
{
    *lo = xlogx(t->log_m, t->log_M_hi);
    *hi = t->log_m == -INFINITY ? 0.0 : exp(t->log_m) * (t->log_tau - t->log_q_min);
}

/* The tail's share of KL(Q||P): the log-sum inequality below (its minimum
 * over M in [M_lo, M_hi]: M log(M / m) is convex, least at M = m / e), and
 * above each q at most M against p at least p_min. */
static void tail_rkl(const tail_facts *t, double *lo, double *hi)
{
    double a = xlogx(t->log_M_lo, t->log_m), b = xlogx(t->log_M_hi, t->log_m);
    *lo = a < b ? a : b;
    if (t->log_m - 1.0 > t->log_M_lo && t->log_m - 1.0 < t->log_M_hi)
        *lo = -exp(t->log_m - 1.0);
    *hi = t->log_M_hi == -INFINITY ? 0.0 : exp(t->log_M_hi) * (t->log_M_hi - t->log_p_min);
}

/* The tail's share of JS: joint convexity below (the pair of masses, least
 * where M is nearest m), and above p log(2p / (p + q)) <= p log(2 tau / (tau
 * + q_min)), q log(2q / (p + q)) <= q log(2M / (M + p_min)). */
static void tail_js(const tail_facts *t, double *lo, double *hi)
{
    const double near = t->log_m < t->log_M_lo ? t->log_M_lo
                        : t->log_m > t->log_M_hi ? t->log_M_hi : t->log_m;
    *lo = 0.5 * js2(t->log_m, near);
    double up = 0.0;
    if (t->log_m > -INFINITY)
        up += exp(t->log_m) * (LOG2 + t->log_tau - logaddexp(t->log_tau, t->log_q_min));
    if (t->log_M_hi > -INFINITY)
        up += exp(t->log_M_hi) * (LOG2 + t->log_M_hi - logaddexp(t->log_M_hi, t->log_p_min));
    *hi = 0.5 * up;
}

/* --- sparse x logits ---------------------------------------------------------- */

static inline float q_at(const void *q, int dt, ptrdiff_t st, int64_t i)
{
    return dt == QK_F32 && st == 1 ? ((const float *)q)[i] : qk_logit_at(q, dt, st, i);
}

/* Whether a row's indices are in range and increasing (branch-free: it
 * vectorises, a few percent of the gather's time). */
static inline int indices_ok(const int32_t *idx, int64_t n_stored, int64_t n)
{
    int bad = n_stored > 0 && (idx[0] < 0 || idx[n_stored - 1] >= n);
    for (int64_t k = 1; k < n_stored; k++)
        bad |= idx[k] <= idx[k - 1];
    return !bad;
}

/* Q's logits at QK_W stored indices (m of them valid) as float32: scalar
 * loads from L1 (the block just streamed), as fast as vgatherdps on Zen 4
 * and the same on every path. */
QK_INLINE vf gather_q(const void *q, int dt, ptrdiff_t st, const int32_t *idx, int64_t m)
{
    float y[QK_W] = {0};
    if (dt == QK_F32 && st == 1 && m == QK_W) {
        for (int l = 0; l < QK_W; l++)
            y[l] = ((const float *)q)[idx[l]];
    } else {
        for (int l = 0; l < m; l++)
            y[l] = qk_logit_at(q, dt, st, idx[l]);
    }
    return vf_load_f32(y);
}

/* The kept entries waiting in the buffer (a: x - X, y: Q's logit) summed,
 * full steps of them, all: the last partial step too; returns how many
 * wait. Each term p~ d' with p~ = exp((x - X) - lse_hi) and d' = ((x - X)
 * - (y - m)) + c, m the running max of Q and c the block's guess of Q's
 * normaliser (sparse_logits_one_pass puts back what the guess misses). */
QK_INLINE int sparse_kept_sum(kept_terms *b, int n, vf lse_hi, vf m, vf c, vd *t_lo, vd *t_hi,
                              vf *p32, int all)
{
    int i = 0;
    for (; i < n && (all || i + QK_SPAN <= n); i += QK_SPAN) {
        vf xr[QK_G], y[QK_G], p[QK_G], t[QK_G];
        vmask live[QK_G];
        kept_load_g(b, i, n, xr, y, live);
        for (int j = 0; j < QK_G; j++) {
            p[j] = xr[j] - lse_hi;
            t[j] = (xr[j] - (y[j] - m)) + c;
        }
        vf_exp_in_range_n(p, QK_G); /* kept: p~ > e^-16 */
        for (int j = 0; j < QK_G; j++) {
            p[j] = vf_keep(live[j], p[j]);
            t[j] = vf_keep(live[j], p[j] * t[j]);
        }
        *p32 = *p32 + sum_g(p);
        add_terms_g(t_lo, t_hi, t);
    }
    return all ? 0 : kept_keep_rest(b, i, n);
}

/* llama mode's forward KL in one pass over Q, as the u16 x f32 kernel takes
 * it (llama_logits_one_pass): each block of Q into its normaliser, then the
 * stored entries that fall in the block gathered from L1 and their kept
 * lanes packed; at the block's end their terms run against Q's running max
 * m and a guess G of its normaliser, c = G - m - lse_p, taken from the
 * largest stored entry so far (y - (x - X)): d' is then lp - lq less the
 * guess's error, as small as the two-pass terms where P and Q are alike,
 * and what the guess misses, times the kept p of the terms it served, is
 * put back in float64 at the end. With its float32 copy, 0.9-1.1x the u16
 * x f32 kernel's rate on SmolLM2 rows (two passes, Q's normaliser and then
 * the gather from L2, gave 0.7x; AVX-512, 2 threads, Zen 4).
 * Sets out->kld, nq and tq; returns 0 or QK_P_CORRUPT. */
QK_INLINE int32_t sparse_logits_one_pass(const qk_sparse_header *h, const int32_t *idx,
                                         const float *x, const void *q, int dt, ptrdiff_t st,
                                         int64_t n, norm *nq, qk_topk *tq, qk_topk *tp,
                                         qk_row *out)
{
    const int64_t stored = h->n_stored;
    if (!indices_ok(idx, stored, n))
        return QK_P_CORRUPT;
    const float lsep_hi = (float)h->lse;
    const vf xmax = vf_set1(h->x_max), lse_hi = vf_set1(lsep_hi), cut = vf_set1(-16.0f);
    norm_init(nq);
    qk_topk bq = {0};
    kept_terms kept;
    int kn = 0, inf = 0;
    vd t_lo = vd_set1(0.0), t_hi = vd_set1(0.0);
    /* kept p~, and kept p~ times ((Y - m_b) - c_b), Y the final max and m_b,
     * c_b each block's: relative to the running max, as logits of -3e38
     * would lose the normaliser to float64 rounding otherwise */
    double p_sum = 0.0, shift = 0.0;
    float shift_max = 0.0f, best = -INFINITY, guess_y = 0.0f, guess_xr = 0.0f;
    int64_t k = 0;
    for (int64_t b = 0; b < n; b += QK_BLOCK) {
        const int64_t e = block_end(b, n);
        norm_block(nq, q, dt, st, b, e, &bq, 0, QK_PREFETCH / 2);
        const int64_t k0 = k;
        vf block_max = vf_set1(-INFINITY);
        /* whole vectors of stored entries, the last may reach past the
         * block: its logits come from L2 a block early, and its terms
         * are as good against this block's max */
        for (; k < stored && idx[k] < e; k += QK_W) {
            const int64_t m = stored - k < QK_W ? stored - k : QK_W;
            const vmask valid = m == QK_W ? vm_all() : vm_first((int)m);
            float xs[QK_W];
            if (m < QK_W) {
                for (int l = 0; l < QK_W; l++)
                    xs[l] = l < m ? x[k + l] : -INFINITY;
            }
            const vf v = vf_load_f32(m == QK_W ? x + k : xs);
            const vf y = gather_q(q, dt, st, idx + k, m);
            topk_push_lanes(tp, v, valid, idx + k, 0);
            block_max = vf_max(block_max, v);
            const vf xr = v - xmax;
            const vmask keep = vm_and(valid, vf_gt(xr - lse_hi, cut));
            if (vm_bits(keep) == vm_bits(vm_all())) { /* stored entries are kept but for a
                                                          row's few extra top ones */
                vf_store(kept.a + kn, xr);
                vf_store(kept.y + kn, y);
                kn += QK_W;
            } else {
                vf_store_packed(kept.a + kn, vm_pack(keep), xr);
                vf_store_packed(kept.y + kn, vm_pack(keep), y);
                kn += count(keep);
            } /* at most a block and a vector more than the
                                  leftover step: within QK_KEPT */
        }
        if (k > stored)
            k = stored;
        if (!(nq->max > -INFINITY && nq->max < INFINITY)) {
            /* no finite y yet: any kept entry meets a -inf logit (+inf: the
             * row is refused) */
            inf |= kn > 0;
            kn = 0;
            continue;
        }
        const float bmax = vf_hmax(block_max);
        if (bmax > best) {
            for (int64_t j = k0; j < k; j++) {
                const float y = q_at(q, dt, st, idx[j]);
                if (x[j] == bmax && y > -INFINITY) {
                    best = bmax;
                    guess_y = y;
                    guess_xr = x[j] - h->x_max;
                    break;
                }
            }
        }
        if (p_sum > 0.0)
            shift += p_sum * ((double)nq->max - (double)shift_max);
        shift_max = nq->max;
        const float c_b = best > -INFINITY
                              ? (float)(((double)guess_y - (double)nq->max) - (double)guess_xr)
                              : 0.0f;
        vf p32 = vf_set1(0.0f);
        kn = sparse_kept_sum(&kept, kn, lse_hi, vf_set1(nq->max), vf_set1(c_b), &t_lo, &t_hi,
                             &p32, e == n);
        const double p_block = vd_hsum(widened_sum(vf_lo_pd(p32), vf_hi_pd(p32)));
        p_sum += p_block;
        shift -= p_block * (double)c_b;
    }
    const side_values qv = logits_side(q, dt, st);
    topk_of_blocks(tq, &bq, &qv, n);
    const double lse_q = norm_lse(nq), lsep_lo = h->lse - lsep_hi;
    out->kld = inf ? INFINITY
                   : exp(-lsep_lo) * (vd_hsum(widened_sum(t_lo, t_hi)) +
                                      ((lse_q - h->lse) * p_sum + shift));
    return 0;
}

/* Q's float64 normaliser (its exps summed over the whole row, vectorised)
 * and its smallest logit: over the whole row, not only P's tail, which can
 * only lower q_min and so widens the upper bound, never breaks it. */
static void q_f64_pass(const void *q, int dt, ptrdiff_t st, int64_t n, float ymax,
                       double *sum, float *y_min, int64_t *live)
{
    int64_t n_live = 0;
    const vd ym = vd_set1((double)ymax);
    vd s_lo = vd_set1(0.0), s_hi = vd_set1(0.0);
    vf mn = vf_set1(INFINITY);
    for (int64_t i = 0; i < n; i += QK_SPAN) {
        vf y[QK_G];
        vmask valid[QK_G];
        vd e[2 * QK_G];
        load_logits_g(y, valid, q, dt, st, i, n, i + QK_SPAN <= n);
        for (int j = 0; j < QK_G; j++) {
            mn = vf_min(mn, vf_select(valid[j], y[j], vf_set1(INFINITY)));
            n_live += count(vm_and(valid[j], vf_gt(y[j], vf_set1(-INFINITY))));
            e[2 * j] = vf_lo_pd(y[j]) - ym;
            e[2 * j + 1] = vf_hi_pd(y[j]) - ym;
        }
        vd_exp_n(e, 2 * QK_G); /* lanes past the end (-inf) give ~1e-308 */
        for (int j = 0; j < QK_G; j++) {
            s_lo += e[2 * j];
            s_hi += e[2 * j + 1];
        }
    }
    *sum = vd_hsum(s_lo + s_hi);
    *y_min = vf_hmin(mn);
    *live = n_live;
}

/* Float64 sums over the stored entries: the forward KL (llama mode: its
 * kept entries; exact: all), the reverse KL and JS, each with the tail's
 * interval added where it is a full sum. */
static void sparse_logits_f64(const qk_sparse_header *h, const int32_t *idx, const float *x,
                              const void *q, int dt, ptrdiff_t st, int64_t n, float ymax,
                              int flags, qk_topk *tp, qk_row *out, qk_bounds *b)
{
    double s_all;
    float y_min;
    int64_t q_live, q_live_stored = 0; /* entries where q > 0, in all and where P stores */
    q_f64_pass(q, dt, st, n, ymax, &s_all, &y_min, &q_live);
    const double lse_q = log(s_all);
    const float lse_hi = (float)h->lse;
    double kl = 0.0, rkl = 0.0, js = 0.0, q_stored = 0.0;
    int inf_kl = 0, inf_rkl = 0;
    for (int64_t k = 0; k < (int64_t)h->n_stored; k++) {
        const int64_t i = idx[k];
        const float v = x[k];
        qk_topk_push(tp, v, i);
        const double lp = ((double)v - h->x_max) - h->lse;
        const double lq = ((double)q_at(q, dt, st, i) - ymax) - lse_q;
        const int in_sum = (flags & QK_EXACT) || sparse_kept(v, h->x_max, lse_hi);
        if (in_sum && lp > -INFINITY) {
            if (lq == -INFINITY)
                inf_kl = 1;
            else
                kl += exp(lp) * (lp - lq);
        }
        if (lq > -INFINITY) {
            q_stored += exp(lq);
            q_live_stored++;
            if (lp == -INFINITY)
                inf_rkl = 1;
            else
                rkl += exp(lq) * (lq - lp);
        }
        if (flags & QK_JS)
            js += js2(lp, lq);
    }
    /* Q's tail mass: 1 less its stored mass, both float64 sums of at most
     * n terms of at most 1, each within n * 2^-52 (relative to 1) */
    const double slack = (double)n * 2.3e-16, M = 1.0 - q_stored;
    /* none of Q's mass there when every q > 0 is at a stored entry: then
     * exactly 0, not a rounding's width */
    const int none = q_live == q_live_stored;
    /* else some q > 0 is there: M > 0, however small */
    const double M_lo = none ? 0.0 : fmax(M - slack, 4.9e-324), M_hi = none ? 0.0 : M + slack;
    const tail_facts t = {
        h->tail_lse,
        fmin(h->tail_lse, ((double)h->tail_max - h->x_max) - h->lse),
        ((double)h->tail_min - h->x_max) - h->lse,
        M_lo > 0.0 ? log(M_lo) : -INFINITY,
        M_hi > 0.0 ? log(fmin(M_hi, 1.0)) : -INFINITY,
        ((double)y_min - ymax) - lse_q,
    };
    double lo, hi;
    out->kld = b->kld_hi = inf_kl ? INFINITY : kl;
    if ((flags & QK_EXACT) && !inf_kl) {
        tail_kl(&t, &lo, &hi);
        out->kld = kl + lo;
        b->kld_hi = kl + hi;
    }
    if (flags & QK_REVERSE) {
        tail_rkl(&t, &lo, &hi);
        out->rkl = inf_rkl ? INFINITY : rkl + lo;
        b->rkl_hi = inf_rkl ? INFINITY : rkl + hi;
    }
    if (flags & QK_JS) {
        tail_js(&t, &lo, &hi);
        out->js = 0.5 * js + lo;
        b->js_hi = 0.5 * js + hi;
    }
}

QK_INLINE void sparse_logits_row(const qk_sparse_header *h, const int32_t *idx, const float *x,
                                 const void *q, int dt, ptrdiff_t st, int64_t n, int64_t tok,
                                 int mode, qk_row *out, qk_bounds *b)
{
    memset(out, 0, sizeof *out);
    memset(b, 0, sizeof *b);
    if (!header_ok(h, n)) {
        out->status = QK_P_BAD_HEADER;
        return;
    }
    norm nq;
    qk_topk tq = {0}, tp = {0};
    double lse_q;
    if (mode & QK_EXACT) {
        out->status = logits_pass1(q, dt, st, n, &nq, &tq, &lse_q);
        if (!out->status && !indices_ok(idx, h->n_stored, n))
            out->status = QK_P_CORRUPT;
    } else {
        out->status = sparse_logits_one_pass(h, idx, x, q, dt, st, n, &nq, &tq, &tp, out);
        lse_q = norm_lse(&nq);
        if (!out->status)
            out->status = norm_status(&nq, lse_q, QK_Q_NONFINITE, QK_Q_EMPTY);
        b->kld_hi = out->kld;
    }
    if (out->status)
        return;
    if (mode & (QK_EXACT | QK_REVERSE | QK_JS)) {
        qk_topk unused = {0};
        const double kld = out->kld;
        sparse_logits_f64(h, idx, x, q, dt, st, n, nq.max, mode, mode & QK_EXACT ? &tp : &unused,
                          out, b);
        if (!(mode & QK_EXACT)) /* llama mode's sum: the one pass's */
            out->kld = b->kld_hi = kld;
    }
    const float y_tok = q_at(q, dt, st, tok);
    out->nll_p = ((double)h->x_max - h->x_tok) + h->lse;
    out->nll_q = ((double)nq.max - y_tok) + lse_q;
    out->nll_q_llama = llama_nll(nq.max, lse_q, y_tok);
    qk_set_tops(out, &tp, &tq, exp(-h->lse));
}

/* float32 contiguous logits, the kind every tool gives, in a copy of their
 * own: with the dtype and stride constants, Q's pass ran 2x faster */
static __attribute__((noinline)) void sparse_logits_f32(const qk_sparse_header *h,
                                                        const int32_t *idx, const float *x,
                                                        const void *q, int64_t n, int64_t tok,
                                                        int mode, qk_row *out, qk_bounds *b)
{
    sparse_logits_row(h, idx, x, q, QK_F32, 1, n, tok, mode, out, b);
}

static __attribute__((noinline)) void sparse_logits_any(const qk_sparse_header *h,
                                                        const int32_t *idx, const float *x,
                                                        const void *q, int dt, ptrdiff_t st,
                                                        int64_t n, int64_t tok, int mode,
                                                        qk_row *out, qk_bounds *b)
{
    sparse_logits_row(h, idx, x, q, dt, st, n, tok, mode, out, b);
}

void QK_NAME(qk_score_sparse_logits)(const qk_sparse_header *h, const int32_t *idx,
                                     const float *x, const void *q, int dt, ptrdiff_t st,
                                     int64_t n, int64_t tok, int mode, qk_row *out,
                                     qk_bounds *b)
{
    if (dt == QK_F32 && st == 1)
        sparse_logits_f32(h, idx, x, q, n, tok, mode, out, b);
    else
        sparse_logits_any(h, idx, x, q, dt, st, n, tok, mode, out, b);
}

/* --- sparse x sparse ------------------------------------------------------------ */

void QK_NAME(qk_score_sparse_sparse)(const qk_sparse_header *hp, const int32_t *ip,
                                     const float *xp, const qk_sparse_header *hq,
                                     const int32_t *iq, const float *xq, int64_t n, int64_t tok,
                                     int mode, qk_row *out, qk_bounds *b)
{
    memset(out, 0, sizeof *out);
    memset(b, 0, sizeof *b);
    if (!header_ok(hp, n)) {
        out->status = QK_P_BAD_HEADER;
        return;
    }
    if (!header_ok(hq, n)) {
        out->status = QK_Q_BAD_HEADER;
        return;
    }
    if (!indices_ok(ip, hp->n_stored, n)) {
        out->status = QK_P_CORRUPT;
        return;
    }
    if (!indices_ok(iq, hq->n_stored, n)) {
        out->status = QK_Q_CORRUPT;
        return;
    }
    const int exact = mode & QK_EXACT;
    const float lsep_hi = (float)hp->lse;
    /* Q where it stores nothing: at most the smaller of its tail mass and
     * its smallest stored p, at least its tail minimum; llama mode takes the
     * tail's average there */
    qk_topk tq = {0}, tp = {0};
    for (int64_t k = 0; k < (int64_t)hq->n_stored; k++)
        qk_topk_push(&tq, xq[k], iq[k]);
    const double lq_tau = fmin(hq->tail_lse, ((double)hq->tail_max - hq->x_max) - hq->lse);
    const double lq_floor = ((double)hq->tail_min - hq->x_max) - hq->lse;
    double lq_avg = hq->tail_count ? hq->tail_lse - log((double)hq->tail_count) : -INFINITY;
    lq_avg = fmax(fmin(lq_avg, lq_tau), lq_floor);
    double kl_lo = 0.0, kl_hi = 0.0, kl = 0.0;
    double q_known = 0.0;      /* Q's stored mass outside P's stored entries */
    float y_min_tail = INFINITY; /* Q's smallest stored logit there */
    int64_t unknown = 0;       /* P's stored entries in Q's tail */
    int inf_lo = 0, inf_hi = 0;
    int64_t j = 0;
    for (int64_t k = 0; k < (int64_t)hp->n_stored; k++) {
        const int64_t i = ip[k];
        const float v = xp[k];
        qk_topk_push(&tp, v, i);
        for (; j < (int64_t)hq->n_stored && iq[j] < i; j++) {
            q_known += exp(((double)xq[j] - hq->x_max) - hq->lse);
            y_min_tail = xq[j] < y_min_tail ? xq[j] : y_min_tail;
        }
        double lq_lo, lq_hi, lq;
        if (j < (int64_t)hq->n_stored && iq[j] == i) {
            lq_lo = lq_hi = lq = ((double)xq[j] - hq->x_max) - hq->lse;
            j++;
        } else {
            lq_lo = lq_floor;
            lq_hi = lq_tau;
            lq = lq_avg;
            unknown++;
        }
        const double lp = ((double)v - hp->x_max) - hp->lse;
        if (lp == -INFINITY)
            continue;
        const double p = exp(lp);
        if (!exact && sparse_kept(v, hp->x_max, lsep_hi)) {
            if (lq == -INFINITY)
                inf_lo = 1;
            kl += p * (lp - lq);
        }
        if (lq_hi == -INFINITY)
            inf_lo = 1;
        if (lq_lo == -INFINITY)
            inf_hi = 1;
        kl_lo += p * (lp - lq_hi);
        kl_hi += p * (lp - lq_lo);
    }
    for (; j < (int64_t)hq->n_stored; j++) {
        q_known += exp(((double)xq[j] - hq->x_max) - hq->lse);
        y_min_tail = xq[j] < y_min_tail ? xq[j] : y_min_tail;
    }
    if (exact) {
        /* Q's mass on P's tail: its stored mass there, plus its tail mass
         * less what P's stored entries take of it (between unknown * its
         * tail minimum and the smaller of unknown * tau and all of it) */
        const double m_q = exp(hq->tail_lse);
        const double taken_hi = unknown ? fmin((double)unknown * exp(lq_tau), m_q) : 0.0;
        const double taken_lo = unknown ? (double)unknown * exp(lq_floor) : 0.0;
        const double M_lo = q_known + fmax(m_q - taken_hi, 0.0);
        const double M_hi = q_known + fmax(m_q - taken_lo, 0.0);
        const tail_facts t = {
            hp->tail_lse,
            fmin(hp->tail_lse, ((double)hp->tail_max - hp->x_max) - hp->lse),
            ((double)hp->tail_min - hp->x_max) - hp->lse,
            M_lo > 0.0 ? log(M_lo) : -INFINITY,
            M_hi > 0.0 ? log(M_hi) : -INFINITY,
            fmin(((double)y_min_tail - hq->x_max) - hq->lse, lq_floor),
        };
        double lo, hi;
        tail_kl(&t, &lo, &hi);
        out->kld = inf_lo ? INFINITY : kl_lo + lo;
        b->kld_hi = inf_hi ? INFINITY : kl_hi + hi;
    } else {
        out->kld = b->kld_hi = inf_lo ? INFINITY : kl;
    }
    out->nll_p = ((double)hp->x_max - hp->x_tok) + hp->lse;
    out->nll_q = ((double)hq->x_max - hq->x_tok) + hq->lse;
    out->nll_q_llama = llama_nll(hq->x_max, hq->lse, hq->x_tok);
    qk_set_tops(out, &tp, &tq, exp(-hp->lse));
}
