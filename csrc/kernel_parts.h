/* What the row kernels share beyond the vector arithmetic: the kept-terms
 * buffer, Jensen-Shannon's terms, the masses a clipped tail's log p comes
 * from, the top-k lists and pass 1.
 *
 * A float side is read twice: pass 1 streams it, each step's exps taken
 * against the running max (the sum rescaled when a step raises it); pass 2
 * reads it again from L2 beside the base and sums the KL terms. Each KL
 * term keeps the other side's log-sum-exp inside it, p * ((lp - (y - Y)) +
 * lse_hi), so that near-identical rows do not lose their small KLD to
 * cancellation between large sums: per row |KLD - reference| <= 1e-7 +
 * 1e-6 * KLD, the contract tests/test_kernels.py holds every build to. Each
 * side's top-10 list is built at the end from the ten blocks with the
 * largest maxima. */
#ifndef QUANTKL_KERNEL_PARTS_H
#define QUANTKL_KERNEL_PARTS_H

#include "kernel_math.h"

/* --- kept terms --------------------------------------------------------------- */

/* llama mode's forward sum needs the base's p only where the -16 cut keeps
 * its term: a fifth of a language model's row. llama mode's pass 2 packs
 * the kept lanes' two inputs (what kept_sum's enum names) into a buffer (a
 * permutation and a store per stream and vector) and the exps and terms run
 * once a block is read, on full vectors of kept entries, instead of on every
 * lane: measured +15 % (u16 x f32, AVX2, Zen 3), +4 % float16 x float16 and
 * +22 % u16 x u16 (AVX-512, Zen 4). A block's leftover partial step waits
 * for the next block; the row's last one is masked. */
#define QK_KEPT (QK_BLOCK + 2 * QK_SPAN)
typedef struct {
    float a[QK_KEPT], y[QK_KEPT];
} kept_terms;

/* Appends the lanes keep selects of a and y; returns the new count. */
QK_INLINE int kept_add_g(kept_terms *b, int n, const vmask *keep, const vf *a, const vf *y)
{
    vmask any = vm_none();
    for (int j = 0; j < QK_G; j++)
        any = vm_or(any, keep[j]);
    if (!vm_bits(any)) /* peaked rows: most steps keep nothing */
        return n;
    for (int j = 0; j < QK_G; j++) {
        const vpack k = vm_pack(keep[j]);
        vf_store_packed(b->a + n, k, a[j]);
        vf_store_packed(b->y + n, k, y[j]);
        n += count(keep[j]);
    }
    return n;
}

/* Step i of the buffer: its a and y, and which lanes hold kept entries
 * (lanes past n hold stale or unset values, for the caller to mask). */
QK_INLINE void kept_load_g(const kept_terms *b, int i, int n, vf *a, vf *y, vmask *live)
{
    for (int j = 0; j < QK_G; j++) {
        a[j] = vf_load_f32(b->a + i + j * QK_W);
        y[j] = vf_load_f32(b->y + i + j * QK_W);
    }
    valid_g(live, i, n, i + QK_SPAN <= n);
}

/* After a block's full steps are summed from [0, done): the rest to the front. */
QK_INLINE int kept_keep_rest(kept_terms *b, int done, int n)
{
    memmove(b->a, b->a + done, sizeof(float) * (size_t)(n - done));
    memmove(b->y, b->y + done, sizeof(float) * (size_t)(n - done));
    return n - done;
}

/* --- Jensen-Shannon ----------------------------------------------------------- */

/* Per entry, with a = max(p, q) and d = log(min / max) <= 0, E = e^d and
 * t = log((1 + E) / 2):
 *     p log(2p / (p + q)) + q log(2q / (p + q)) = a * (E * (d - t) - t),
 * twice the entry's JS term. Written so, each term is a times a function of
 * d alone, as small as the KL's terms when P and Q are alike (~ a d^2 / 4),
 * and a log of the mixture (whose rounding alone, ~3e-8 weighted by p + q,
 * would use most of the contract near JS = 0) is never taken: t comes from
 * log1p(expm1(d) / 2), each accurate relative to its small value. sq sums
 * q log(2q / (p + q)), how 2 * JS moves when every log q shifts (the float64
 * part of a log-sum-exp the float32 terms leave out, put back at the end). */
typedef struct {
    vd f_lo, f_hi; /* a * (E * (d - t) - t) */
    vd q_lo, q_hi; /* q log(2q / (p + q)) */
} js_sums;

/* log_a: log of the larger of p and q; dqp: log q - log p (formed as the KL's
 * terms form it); keep: lanes where p or q is above 0. */
QK_INLINE void js_add_g(js_sums *s, const vf *log_a, const vf *dqp, const vmask *keep)
{
    vf a[QK_G], d[QK_G], k[QK_G], r[QK_G], em1[QK_G], t[QK_G], f[QK_G], sq[QK_G];
    for (int j = 0; j < QK_G; j++) {
        a[j] = log_a[j];
        /* e^-80 = 2e-35: below it, E's part of the term cannot move a sum */
        d[j] = vf_max(vf_min(dqp[j], vf_set1(0.0f) - dqp[j]), vf_set1(-80.0f));
        k[j] = vf_round(d[j] * vf_set1(1.44269504088896341f));
        r[j] = vf_fma(k[j], vf_set1(-0.693359375f), d[j]);
        r[j] = vf_fma(k[j], vf_set1(2.12194440e-4f), r[j]);
    }
    vf_exp_n(a, QK_G);
    for (int j = 0; j < QK_G; j++) {
        /* (e^r - 1) / r by vf_exp_in_range_n's polynomial, less its last step */
        vf p = vf_fma(vf_set1(1.3814613e-3f), r[j], vf_set1(8.3687100e-3f));
        p = vf_fma(p, r[j], vf_set1(4.1668387e-2f));
        p = vf_fma(p, r[j], vf_set1(1.6666521e-1f));
        p = vf_fma(p, r[j], vf_set1(4.9999994e-1f));
        p = vf_fma(p, r[j], vf_set1(1.0f));
        const vf m_r = p * r[j]; /* e^r - 1, accurate relative to itself */
        em1[j] = vf_select(vf_eq(k[j], vf_set1(0.0f)), m_r,
                           vf_scale2(m_r + vf_set1(1.0f), k[j]) - vf_set1(1.0f));
    }
    for (int j = 0; j < QK_G; j++) {
        /* log1p(u), u = em1 / 2 in [-1/2, 0]: 2 atanh(s), s = u / (2 + u) in
         * [-1/3, 0], by its series to s^15 (remainder < 2e-8 relative) */
        const vf s1 = em1[j] / (em1[j] + vf_set1(4.0f)), z = s1 * s1;
        vf p = vf_fma(z, vf_set1(1.0f / 15), vf_set1(1.0f / 13));
        p = vf_fma(p, z, vf_set1(1.0f / 11));
        p = vf_fma(p, z, vf_set1(1.0f / 9));
        p = vf_fma(p, z, vf_set1(1.0f / 7));
        p = vf_fma(p, z, vf_set1(1.0f / 5));
        p = vf_fma(p, z, vf_set1(1.0f / 3));
        p = vf_fma(p, z, vf_set1(1.0f));
        t[j] = (s1 + s1) * p;
    }
    for (int j = 0; j < QK_G; j++) {
        const vf e_dt = (em1[j] + vf_set1(1.0f)) * (d[j] - t[j]);
        f[j] = vf_keep(keep[j], a[j] * (e_dt - t[j]));
        /* q is the smaller where log q - log p <= 0 */
        sq[j] = vf_keep(keep[j], a[j] * vf_select(vf_gt(dqp[j], vf_set1(0.0f)),
                                                  vf_set1(0.0f) - t[j], e_dt));
    }
    add_terms_g(&s->f_lo, &s->f_hi, f);
    add_terms_g(&s->q_lo, &s->q_hi, sq);
}

/* JS from the sums: scale multiplies both sides' probabilities, shift_q is
 * how far every true log q sits above the one the terms used. */
QK_INLINE double js_of(const js_sums *s, double scale, double shift_q)
{
    return 0.5 * scale *
           (vd_hsum(widened_sum(s->f_lo, s->f_hi)) + shift_q * vd_hsum(widened_sum(s->q_lo, s->q_hi)));
}

/* --- masses a clipped tail's log p comes from ------------------------------- */

/* Adds exp(lp) of the lanes in m, from float64 exps. A clipped tail's log p
 * is log((1 - mass) / n), ill-conditioned when the mass is near 1. */
QK_INLINE void add_mass64(vd *lo, vd *hi, vmask m, vf lp)
{
    vd x[2] = {vf_lo_pd(lp), vf_hi_pd(lp)};
    vd_exp_n(x, 2);
    *lo += vd_keep_lo(m, x[0]);
    *hi += vd_keep_hi(m, x[1]);
}

/* A decoded mass: exp(lp) summed over the code > 0 entries of a row, from
 * float64 exps (add_mass64) or by add_mass_g, which takes float64 exps for
 * a step holding a log p above -6 (p > 0.0025: at most 400 entries of a
 * row) and the float32 exps the caller took otherwise, each widened on its
 * own (adding them in float32 pairs first was slower, measured). Those are
 * within 7.7e-8 of exp, 2.6e-8 relative rms, with no bias (measured over
 * every float in [-87, -6]), so the sum is within QK_EXP_ERR4 * sqrt(sum of
 * the squares of the float32 terms) of the float64 one: 4 standard
 * deviations, and more than the error of one term alone. sq holds those
 * squares. */
typedef struct {
    vd lo, hi;
    vf sq;
} mass_sum;

#define QK_EXP_ERR4 1.1e-7

QK_INLINE void add_mass_g(mass_sum *m, const vmask *live, const vf *lp, const vf *e)
{
    vmask big = vm_none();
    for (int j = 0; j < QK_G; j++)
        big = vm_or(big, vm_and(live[j], vf_gt(lp[j], vf_set1(-6.0f))));
    if (vm_bits(big)) {
        for (int j = 0; j < QK_G; j++)
            add_mass64(&m->lo, &m->hi, live[j], lp[j]);
        return;
    }
    vf kept[QK_G];
    for (int j = 0; j < QK_G; j++) {
        kept[j] = vf_keep(live[j], e[j]);
        m->sq = vf_fma(kept[j], kept[j], m->sq);
    }
    add_each_g(&m->lo, &m->hi, kept);
}

QK_INLINE double mass_of(const mass_sum *m) { return vd_hsum(widened_sum(m->lo, m->hi)); }

/* How far the mass may sit from the float64 one (1e-15 for float64 exps). */
QK_INLINE double mass_error(const mass_sum *m)
{
    return QK_EXP_ERR4 * sqrt(vd_hsum(widened_sum(vf_lo_pd(m->sq), vf_hi_pd(m->sq)))) + 1e-15;
}

/* A dump's mass needs exp(lq) only where its code is > 0: a quarter of a
 * language model's row (the entries within 16 nats of its max). Packed as
 * kept terms are (kept_add_g), their exps run on full vectors at each
 * block's end instead of on every lane of every step. */
typedef struct {
    float l[QK_KEPT];
} live_log_p;

QK_INLINE int live_add_g(live_log_p *b, int n, const vmask *live, const vf *l)
{
    for (int j = 0; j < QK_G; j++) {
        vf_store_packed(b->l + n, vm_pack(live[j]), l[j]);
        n += count(live[j]);
    }
    return n;
}

/* The buffer's full steps into m (all: every entry, the last step masked);
 * returns what is left, moved to the front. */
QK_INLINE int live_mass(live_log_p *b, int n, mass_sum *m, int all)
{
    int i = 0;
    for (; i < n && (all || i + QK_SPAN <= n); i += QK_SPAN) {
        vf l[QK_G], e[QK_G];
        vmask live[QK_G];
        for (int j = 0; j < QK_G; j++)
            e[j] = l[j] = vf_load_f32(b->l + i + j * QK_W);
        valid_g(live, i, n, i + QK_SPAN <= n);
        vf_exp_n(e, QK_G);
        add_mass_g(m, live, l, e);
    }
    if (all)
        return 0;
    memmove(b->l, b->l + i, sizeof(float) * (size_t)(n - i));
    return n - i;
}

/* How far a tail log p from a mass within err of the float64 one may sit
 * from the tail log p of that float64 mass (0 where the clamp holds it
 * whatever the mass, +inf where 1 - mass may be 0 or below). */
static inline double tail_error(double mass, double err, double n, double min_log_prob)
{
    const double left = 1.0 - mass;
    if (left <= err)
        return INFINITY;
    if (log((left - err) / n) >= min_log_prob || log((left + err) / n) <= min_log_prob - 16.0)
        return 0.0;
    return log((left + err) / (left - err));
}

/* Whether a tail log p's error, moving a result of size `value` by up to
 * `moved`, could take a twentieth of what the contract allows it (rel: 1e-6
 * for a divergence, 1e-7 for an NLL): then the tail's mass is summed again
 * from float64 exps. */
static inline int tail_could_matter(double moved, double value, double rel)
{
    return moved > 0.05 * (1e-7 + rel * fabs(value));
}

/* --- what a pass follows besides its sums ------------------------------------ */

/* The top-k list, given the lanes of v in `in`: one vector compare lets
 * almost every vector by, and only the lanes that can enter are pushed;
 * lane k is entry idx[k] (a sparse row's indices) or, idx NULL, i + k. */
QK_INLINE void topk_push_lanes(qk_topk *t, vf v, vmask in, const int32_t *idx, int64_t i)
{
    if (t->n == QK_TOPK_MAX)
        in = vm_and(in, vf_gt(v, vf_set1(t->val[QK_TOPK_MAX - 1])));
    unsigned bits = vm_bits(in);
    if (!bits)
        return;
    float l[QK_W];
    vf_store(l, v);
    for (; bits; bits &= bits - 1) {
        const int k = __builtin_ctz(bits);
        qk_topk_push(t, l[k], idx ? idx[k] : i + k);
    }
}

/* The same for entries i.., given the lanes at or above floor (a value at
 * most the row's k-th largest). */
QK_INLINE void topk_add(qk_topk *t, vf v, int64_t i, vmask valid, vf floor)
{
    topk_push_lanes(t, v, vm_and(valid, vf_ge(v, floor)), NULL, i);
}

/* The blocks a side's top-k list comes from. A block holds one of the row's
 * k largest values only if its own largest is among the k largest block
 * maxima (ties in index order, as the list keeps them), so a pass keeps a
 * top-k list of blocks by their max, one compare per block, and the list of
 * values is built at the end from those k blocks alone: following every
 * block that could change a running list cost 12 % of the u16 x f32 rate
 * once both sides kept one (measured). */
QK_INLINE void blocks_add(qk_topk *blocks, float block_max, int64_t b)
{
    if (blocks->n < QK_TOPK_MAX || block_max > blocks->val[QK_TOPK_MAX - 1])
        qk_topk_push(blocks, block_max, b);
}

/* The listed blocks' starts in index order, so that equal values enter the
 * list in index order; returns how many. */
QK_INLINE int blocks_in_order(const qk_topk *blocks, int64_t *starts)
{
    for (int j = 0; j < blocks->n; j++) {
        int64_t b = blocks->idx[j];
        int i = j;
        for (; i > 0 && starts[i - 1] > b; i--)
            starts[i] = starts[i - 1];
        starts[i] = b;
    }
    return blocks->n;
}


QK_INLINE int64_t block_end(int64_t b, int64_t n) { return b + QK_BLOCK < n ? b + QK_BLOCK : n; }

/* --- pass 1: a float side's normaliser -------------------------------------- */

/* max and sum of exp(v - max), the exps added by add_exps_g, taken in one
 * read against the running max: a step whose own max passes it rescales the
 * sums (once per new record: a handful per row unless the logits rise
 * along it). The max is a vector too, m, -FLT_MAX until a finite logit so
 * that -inf logits before it give exps (0, not NaN) that the rescale drops;
 * the step's max is compared with pass, -inf until then, so that a first
 * finite logit of -FLT_MAX still counts as one. One read instead of a max
 * loop and then the exps from L1: +5-7 % (u16 x f32 and two float sides in
 * llama mode, AVX-512, 2 threads, Zen 4, A/B in one process). A NaN logit
 * makes the sum NaN and +inf makes the max +inf: no per-entry check. */
typedef struct {
    float max;
    vf m, pass;
    vd lo, hi;
} norm;

QK_INLINE void norm_init(norm *s)
{
    s->max = -INFINITY;
    s->m = vf_set1(-FLT_MAX);
    s->pass = vf_set1(-INFINITY);
    s->lo = s->hi = vd_set1(0.0);
}

/* log of the sum, relative to max */
QK_INLINE double norm_lse(const norm *s) { return log(vd_hsum(widened_sum(s->lo, s->hi))); }

/* The side's status bits: NaN or +inf seen, or no finite logit at all. */
QK_INLINE int32_t norm_status(const norm *s, double lse, int32_t nonfinite_bit, int32_t empty_bit)
{
    return qk_side_status(s->max == INFINITY || isnan(lse), s->max, nonfinite_bit, empty_bit);
}

/* Out of line and given no pointer: the sums stay in registers through the
 * loop that calls it (a pointer into them kept them in memory: -7 % on two
 * float sides in exact mode). */
static __attribute__((noinline)) double norm_rescale(float old_max, float max)
{
    return old_max > -INFINITY ? exp((double)old_max - (double)max) : 0.0;
}

/* One step's logits v (consumed) into the sums; block_max: the block's
 * max so far, for its top-k list. */
QK_INLINE void norm_step(norm *s, vf *block_max, vf *v)
{
    const vf step_max = max_g(v);
    *block_max = vf_max(step_max, *block_max);
    if (vm_bits(vf_gt(step_max, s->pass))) {
        const float max = vf_hmax(step_max);
        const vd f = vd_set1(norm_rescale(s->max, max));
        s->lo = s->lo * f;
        s->hi = s->hi * f;
        s->max = max;
        s->pass = s->m = vf_set1(max);
    }
    for (int j = 0; j < QK_G; j++)
        v[j] = v[j] - s->m;
    vf_exp_n(v, QK_G);
    add_exps_g(&s->lo, &s->hi, v);
}

/* Entries [b, e) of a float side into its sums, the block listed among
 * those its top-k list may come from; with max_only, only its max.
 * ahead: its prefetch distance in bytes. */
QK_INLINE void norm_block(norm *s, const void *row, int dt, ptrdiff_t st, int64_t b, int64_t e,
                          qk_topk *blocks, int max_only, int64_t ahead)
{
    const int64_t size = dt == QK_F32 ? 4 : 2;
    vf block_max = vf_set1(-INFINITY);
    int64_t i = b;
    for (; i + QK_SPAN <= e; i += QK_SPAN) {
        vf v[QK_G];
        vmask valid[QK_G];
        if (st == 1)
            prefetch_span(row, size * i + ahead, size * QK_SPAN);
        load_logits_g(v, valid, row, dt, st, i, e, 1);
        if (max_only)
            block_max = vf_max(max_g(v), block_max);
        else
            norm_step(s, &block_max, v);
    }
    if (i < e) { /* lanes past the end read -inf: e^-87 each, nothing */
        vf v[QK_G];
        vmask valid[QK_G];
        load_logits_g(v, valid, row, dt, st, i, e, 0);
        if (max_only)
            block_max = vf_max(max_g(v), block_max);
        else
            norm_step(s, &block_max, v);
    }
    const float bm = vf_hmax(block_max);
    blocks_add(blocks, bm, b);
    if (max_only)
        s->max = bm > s->max ? bm : s->max;
}

/* --- llama rows: decoding, top-k sides, masses, NLL --------------------------- */

QK_INLINE vf decode(vf c, vf scale, vf min_log_prob)
{
    return c * scale + min_log_prob; /* llama.cpp's float32 decode, never fused */
}

/* Exact mode needs the base's p (for its mass and its terms) only where its
 * code is > 0: a quarter of a language model's row. Without the reverse KL
 * or Jensen-Shannon, which take every lane's p, pass 2 packs those lanes'
 * codes and logits as llama mode packs its kept ones, and kept_exact_sum
 * takes their exps once a block is read: u16 x f32 exact +10 % (AVX-512,
 * 2 threads, Zen 4, A/B in one process). */
QK_INLINE int exact_packs(int flags)
{
    return (flags & QK_EXACT) && !(flags & (QK_REVERSE | QK_JS));
}

/* What a side's top-k list is taken from: float logits, or a llama row's
 * codes decoded to log p (scale and min_log_prob from its header). */
typedef struct {
    const void *row;
    int dt, codes;
    ptrdiff_t st;
    vf scale, min_log_prob;
} side_values;

QK_INLINE side_values logits_side(const void *row, int dt, ptrdiff_t st)
{
    const side_values v = {row, dt, 0, st, vf_set1(0.0f), vf_set1(0.0f)};
    return v;
}

QK_INLINE side_values codes_side(const uint16_t *row, vf scale, vf min_log_prob)
{
    const side_values v = {row, QK_F32, 1, 1, scale, min_log_prob};
    return v;
}

QK_INLINE vf side_vector(const side_values *sv, int64_t i)
{
    if (sv->codes)
        return decode(vf_load_u16((const unsigned char *)sv->row + 8 + 2 * i), sv->scale,
                      sv->min_log_prob);
    return load_logits(sv->row, sv->dt, sv->st, i);
}

/* A side's top-k list from the blocks a pass listed, one vector at a time.
 * The k-th largest block max is a floor for the list: those k maxima are
 * k entries at or above it. Without it, the pushes that the list soon drops
 * (71 a side per row of the benchmark's logits, against 10.5 with it) and
 * their mispredicted branches took 9,300 cycles a side instead of 2,400:
 * u16 x f32 at 49,152 entries +19 %, at 151,936 +8 % (AVX-512, Zen 4).
 * (Loading a step's QK_G vectors to use one made this a tenth of the
 * kernel's time.) */
QK_INLINE void topk_of_blocks(qk_topk *t, const qk_topk *blocks, const side_values *sv,
                              int64_t n)
{
    int64_t starts[QK_TOPK_MAX];
    const int m = blocks_in_order(blocks, starts);
    const vf floor = vf_set1(m == QK_TOPK_MAX ? blocks->val[QK_TOPK_MAX - 1] : -INFINITY);
    for (int j = 0; j < m; j++) {
        const int64_t e = block_end(starts[j], n);
        int64_t i = starts[j];
        for (; i + QK_W <= e; i += QK_W)
            topk_add(t, side_vector(sv, i), i, vm_all(), floor);
        if (i < e) {
            vf v[QK_G]; /* only v[0] and valid[0] are used */
            vmask valid[QK_G];
            if (sv->codes) {
                load_codes_g(v, (const uint16_t *)sv->row, i, e, 0);
                valid_g(valid, i, e, 0);
                v[0] = decode(v[0], sv->scale, sv->min_log_prob);
            } else {
                load_logits_g(v, valid, sv->row, sv->dt, sv->st, i, e, 0);
            }
            topk_add(t, v[0], i, valid[0], floor);
        }
    }
}

/* Sum of exp(log p) over a llama row's code > 0 entries, all from float64
 * exps: for the rare rows where a clipped tail's log p is ill-conditioned. */
QK_INLINE double mass64(const uint16_t *row, const qk_header *h, int64_t n)
{
    const vf scale = vf_set1(h->scale), minlp = vf_set1(h->min_log_prob), zero = vf_set1(0.0f);
    vd lo = vd_set1(0.0), hi = lo;
    for (int64_t i = 0; i < n; i += QK_SPAN) {
        vf c[QK_G];
        load_codes_g(c, row, i, n, 0); /* codes past the end read 0 */
        for (int j = 0; j < QK_G; j++)
            add_mass64(&lo, &hi, vf_gt(c[j], zero), decode(c[j], scale, minlp));
    }
    return vd_hsum(widened_sum(lo, hi));
}

/* A dump's clipped tail log p from a pass of its own: Jensen-Shannon's
 * terms are not linear in it, so it is needed before the pass that sums
 * them. The mass by add_mass_g, as llama_llama_step sums Q's; the tail is the code-0
 * entries where the other side is finite (q: logits of dt, or NULL for a
 * dump, whose log q is finite everywhere). */
QK_INLINE double tail_before(const uint16_t *row, const qk_header *h, int64_t n, const void *q,
                             int dt, ptrdiff_t st)
{
    const vf scale = vf_set1(h->scale), minlp = vf_set1(h->min_log_prob), zero = vf_set1(0.0f);
    mass_sum m;
    memset(&m, 0, sizeof m);
    int64_t tail_n = 0;
    for (int64_t i = 0; i < n; i += QK_SPAN) {
        const int full = i + QK_SPAN <= n;
        vf c[QK_G], lp[QK_G], e[QK_G], y[QK_G];
        vmask valid[QK_G], other[QK_G], live[QK_G];
        load_codes_g(c, row, i, n, full);
        valid_g(valid, i, n, full);
        if (q) {
            load_logits_g(y, other, q, dt, st, i, n, full);
        } else { /* a dump: finite wherever valid */
            for (int j = 0; j < QK_G; j++) {
                y[j] = vf_set1(0.0f);
                other[j] = valid[j];
            }
        }
        for (int j = 0; j < QK_G; j++) {
            other[j] = vm_and(other[j], vf_gt(y[j], vf_set1(-INFINITY)));
            live[j] = vm_and(valid[j], vf_gt(c[j], zero));
            tail_n += count(vm_andnot(other[j], live[j]));
            e[j] = lp[j] = decode(c[j], scale, minlp);
        }
        vf_exp_n(e, QK_G);
        add_mass_g(&m, live, lp, e);
    }
    return qk_tail_log_prob(1.0 - mass_of(&m), (double)tail_n, h->min_log_prob);
}

/* Pass 1 over the logits: their normaliser (max, log-sum-exp) and the
 * block maxima of their top-k list; returns the side's status bits. */
QK_INLINE int32_t logits_pass1(const void *q, int dt, ptrdiff_t st, int64_t n, norm *nq,
                               qk_topk *tq, double *lse)
{
    qk_topk bq = {0};
    norm_init(nq);
    for (int64_t b = 0; b < n; b += QK_BLOCK)
        norm_block(nq, q, dt, st, b, block_end(b, n), &bq, 0, QK_PREFETCH);
    const side_values qv = logits_side(q, dt, st);
    topk_of_blocks(tq, &bq, &qv, n);
    *lse = norm_lse(nq);
    return norm_status(nq, *lse, QK_Q_NONFINITE, QK_Q_EMPTY);
}

/* A token's NLL as llama-perplexity stores it: its float32 log-sum-exp added
 * to the float32 max, then the logit taken away, each step rounded. */
static inline float llama_nll(float max, double lse, float logit)
{
    const float norm = max + (float)lse;
    return norm - logit;
}

/* A dump row's decoding constants, and what a pass beside it takes from the
 * other side (kept_sum needs scale, min_log_prob, ymax and lse_hi). */
typedef struct {
    vf scale, min_log_prob, c_cut, zero, ninf, ymax, lse_hi;
    vf tail_lp;       /* Jensen-Shannon: the base's tail log p */
} llama_logits_consts;

/* What a kept-terms buffer holds: p and d; p's exp argument (log p) and d;
 * or a dump's codes and the logits (decoded with k). */
enum { KEPT_P, KEPT_LOG_P, KEPT_CODES };

/* llama mode's kept terms from the buffer, full steps of them, all: the
 * last partial step too, into t and p32; returns how many wait. k: for
 * KEPT_CODES only. */
QK_INLINE int kept_sum(kept_terms *b, int n, int holds, const llama_logits_consts *k, vd *t_lo,
                       vd *t_hi, vf *p32, int all)
{
    int i = 0;
    for (; i < n && (all || i + QK_SPAN <= n); i += QK_SPAN) {
        vf p[QK_G], d[QK_G], t[QK_G];
        vmask live[QK_G];
        kept_load_g(b, i, n, p, d, live);
        if (holds == KEPT_CODES) {
            for (int j = 0; j < QK_G; j++) {
                p[j] = decode(p[j], k->scale, k->min_log_prob);
                d[j] = (p[j] - (d[j] - k->ymax)) + k->lse_hi;
            }
        }
        if (holds != KEPT_P) /* lp > -16: p > 0, so a -inf logit's d gives +inf */
            vf_exp_in_range_n(p, QK_G);
        for (int j = 0; j < QK_G; j++) {
            p[j] = vf_keep(live[j], p[j]);
            t[j] = vf_keep(live[j], p[j] * d[j]);
        }
        *p32 = *p32 + sum_g(p);
        add_terms_g(t_lo, t_hi, t);
    }
    return all ? 0 : kept_keep_rest(b, i, n);
}

#endif
