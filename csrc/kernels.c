/* quantkl's row kernels, written once and compiled once per instruction set.
 *
 * setup.py builds this file three times, with QK_ISA_AVX512, QK_ISA_AVX2 or
 * neither defined (simd.h maps the vector operations onto each); QK_NAME
 * gives each build's entry points their suffix and dispatch.c calls the best
 * one the CPU runs. The logic is the same on every machine, so the tests of
 * the portable build exercise it where no wide build can run.
 *
 * A float side is read twice: pass 1 streams it, each step's exps taken
 * against the running max (the sum rescaled when a step raises it); pass 2
 * reads it again from L2 beside the base and sums the KL terms; llama
 * mode's plain KL of a dump against float logits reads both once instead
 * (llama_logits_one_pass), each block's terms taken against a guess of the
 * normaliser that the end corrects. Exps are float32 (< 0.9 ulp, unbiased),
 * each step runs QK_G of them with their stages interleaved, and sums are
 * float64 (terms meet in float32 first only where that rounding stays far
 * below the contract: add_terms_g, add_exps_g); each KL term keeps the other
 * side's log-sum-exp inside it, p * ((lp - (y - Y)) + lse_hi), so that
 * near-identical rows do not lose their small KLD to cancellation between
 * large sums. The result: per row |KLD - reference| <= 1e-7 + 1e-6 * KLD,
 * the contract tests/test_kernels.py holds every build to. Each side's top-10
 * list is built at the end from the ten blocks with the largest maxima, and
 * the reverse KL (the QK_REVERSE flag) adds its sums where both sides are
 * read together (pass 2, or the one pass over two dumps), with an exp of Q
 * per entry where there is none to share; the Jensen-Shannon divergence
 * (QK_JS) adds its sums there too, an exp, an expm1 and a log per entry,
 * in one copy per row kind with its flags tested at run time (it is opt-in,
 * and a copy per flag combination would double the build).
 */
#include <float.h>
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

/* Entries per block: 2 KB of float32, the unit of the top-k lists' block
 * maxima and of llama mode's kept terms (measured when pass 1 read each
 * block twice: 512 is 9 % faster than 2048, 256 no faster than 512). */
#define QK_BLOCK 512
/* Software prefetch distance of the streams read from memory (bytes),
 * shared among the streams a pass reads side by side. The passes stream
 * while their exps run, and need less ahead than a loop that only loads:
 * 4 KB measured 4 % faster than 16 KB in llama_logits_one_pass (2 and 8 KB
 * between), and 0-5 % faster for two float sides (AVX-512, 2 threads,
 * Zen 4). */
#define QK_PREFETCH 4096
/* Vectors per step. One exp is a chain of eleven dependent operations that
 * leaves the FP pipes idle; four independent chains with their stages
 * interleaved (GCC keeps source order on x86) keep them busy: -30 % time. */
#ifndef QK_G
#define QK_G 4
#endif
#define QK_SPAN (QK_G * QK_W)
_Static_assert(QK_G % 2 == 0 && QK_BLOCK % QK_SPAN == 0, "a step is pairs, a block whole steps");

/* --- exp --------------------------------------------------------------------- */

/* exp of n vectors in place (n a constant at each call), each x within
 * [-87.3, 88]: Cody-Waite reduction to r in [-ln2/2, ln2/2], a degree-6
 * polynomial (a minimax fit of e^r with its first two coefficients held at
 * 1; relative error 3e-9 in exact arithmetic), scaling by 2^k. Over every
 * float in [-87, 0]: at most 0.88 ulp from exp, mean relative error 3e-10
 * (no bias a sum of 1e5 terms could feel). Lanes outside the range give
 * anything, so callers mask them: clamping costs a tenth of a kernel. */
QK_INLINE void vf_exp_in_range_n(vf *x, int n)
{
    vf k[QK_G], p[QK_G];
    for (int j = 0; j < n; j++)
        k[j] = vf_round(x[j] * vf_set1(1.44269504088896341f));
    for (int j = 0; j < n; j++)
        x[j] = vf_fma(k[j], vf_set1(-0.693359375f), x[j]);
    for (int j = 0; j < n; j++)
        x[j] = vf_fma(k[j], vf_set1(2.12194440e-4f), x[j]);
    for (int j = 0; j < n; j++)
        p[j] = vf_fma(vf_set1(1.3814613e-3f), x[j], vf_set1(8.3687100e-3f));
    for (int j = 0; j < n; j++)
        p[j] = vf_fma(p[j], x[j], vf_set1(4.1668387e-2f));
    for (int j = 0; j < n; j++)
        p[j] = vf_fma(p[j], x[j], vf_set1(1.6666521e-1f));
    for (int j = 0; j < n; j++)
        p[j] = vf_fma(p[j], x[j], vf_set1(4.9999994e-1f));
    for (int j = 0; j < n; j++)
        p[j] = vf_fma(p[j], x[j], vf_set1(1.0f)); /* 1 + r*(...) rounded once */
    for (int j = 0; j < n; j++)
        p[j] = vf_fma(p[j], x[j], vf_set1(1.0f));
    for (int j = 0; j < n; j++)
        x[j] = vf_scale2(p[j], k[j]);
}

/* exp of n vectors for any x <= 88. Below -87.3 (and at -inf) it gives
 * e^-87.3 = 1.2e-38, a term that cannot move a float64 sum but is never 0,
 * so p * (+inf) stays +inf; NaN gives NaN, so that a NaN logit turns the sum
 * it feeds into NaN. */
QK_INLINE void vf_exp_n(vf *x, int n)
{
    for (int j = 0; j < n; j++)
        x[j] = vf_max(vf_set1(-87.3365402f), x[j]);
    vf_exp_in_range_n(x, n);
}

/* exp of n float64 vectors in place, to ~1e-15 relative (Taylor to degree
 * 11 on |r| <= ln2/2, remainder < 7e-15, by Horner with the n chains
 * interleaved). Inputs below -708 give ~1e-308. For masses a clipped tail is
 * derived from, and for the encoder, whose header must be llama.cpp's to the
 * bit: rounded to float32 it is the correctly rounded expf (glibc's, in all
 * but rare cases). */
QK_INLINE void vd_exp_n(vd *x, int n)
{
    static const double taylor[12] = {1.0 / 39916800, 1.0 / 3628800, 1.0 / 362880, 1.0 / 40320,
                                      1.0 / 5040,     1.0 / 720,     1.0 / 120,    1.0 / 24,
                                      1.0 / 6,        1.0 / 2,       1.0,          1.0};
    vd k[2 * QK_G], p[2 * QK_G];
    for (int j = 0; j < n; j++) {
        x[j] = vd_max(vd_set1(-708.0), x[j]);
        k[j] = vd_round(x[j] * vd_set1(1.4426950408889634));
    }
    for (int j = 0; j < n; j++)
        x[j] = vd_fma(k[j], vd_set1(-6.93147180369123816490e-01), x[j]);
    for (int j = 0; j < n; j++)
        x[j] = vd_fma(k[j], vd_set1(-1.90821492927058770002e-10), x[j]);
    for (int j = 0; j < n; j++)
        p[j] = vd_set1(taylor[0]);
    for (int d = 1; d < 12; d++)
        for (int j = 0; j < n; j++)
            p[j] = vd_fma(p[j], x[j], vd_set1(taylor[d]));
    for (int j = 0; j < n; j++)
        x[j] = vd_scale2(p[j], k[j]);
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

/* One step's QK_G vectors of logits from entry i, and which of their lanes
 * hold entries of the row [.., e): lanes past the end read -inf, which no
 * max, exp or top-k takes. full: the caller knows every lane is in. */
QK_INLINE void load_logits_g(vf *v, vmask *valid, const void *row, int dt, ptrdiff_t st,
                             int64_t i, int64_t e, int full)
{
    for (int j = 0; j < QK_G; j++) {
        const int64_t at = i + (int64_t)j * QK_W;
        if (full || at + QK_W <= e) {
            v[j] = load_logits(row, dt, st, at);
            valid[j] = vm_all();
            continue;
        }
        float buf[QK_W];
        for (int l = 0; l < QK_W; l++)
            buf[l] = at + l < e ? qk_logit_at(row, dt, st, at + l) : -INFINITY;
        v[j] = vf_load_f32(buf);
        valid[j] = at < e ? vm_first((int)(e - at)) : vm_none();
    }
}

/* The same for a llama row's codes, as float32 (exact); codes past the end
 * read 0. */
QK_INLINE void load_codes_g(vf *c, const uint16_t *row, int64_t i, int64_t e, int full)
{
    for (int j = 0; j < QK_G; j++) {
        const int64_t at = i + (int64_t)j * QK_W;
        if (full || at + QK_W <= e) {
            c[j] = vf_load_u16((const unsigned char *)row + 8 + 2 * at);
            continue;
        }
        float buf[QK_W];
        for (int l = 0; l < QK_W; l++)
            buf[l] = at + l < e ? (float)qk_code(row, at + l) : 0.0f;
        c[j] = vf_load_f32(buf);
    }
}

QK_INLINE void valid_g(vmask *valid, int64_t i, int64_t e, int full)
{
    for (int j = 0; j < QK_G; j++) {
        const int64_t at = i + (int64_t)j * QK_W;
        valid[j] = full || at + QK_W <= e ? vm_all() : at < e ? vm_first((int)(e - at)) : vm_none();
    }
}

/* Cache lines [byte_offset, byte_offset + bytes) of a row, to come. */
QK_INLINE void prefetch_span(const void *base, int64_t byte_offset, int64_t bytes)
{
    for (int64_t b = 0; b < bytes; b += 64)
        __builtin_prefetch((const char *)base + byte_offset + b);
}

QK_INLINE int count(vmask m) { return __builtin_popcount(vm_bits(m)); }

QK_INLINE vd widened_sum(vd lo, vd hi) { return lo + hi; }

/* A step's float32 vectors of terms added into float64 sums: pairs added in
 * float32 first (one rounding relative to the terms themselves, which are
 * small exactly when the KLD is), then widened, for widening is a third of
 * a kernel's work. */
QK_INLINE void add_terms_g(vd *lo, vd *hi, const vf *t)
{
    vd l = vd_set1(0.0), h = l;
    for (int j = 0; j < QK_G; j += 2) {
        const vf a = t[j] + t[j + 1];
        l += vf_lo_pd(a);
        h += vf_hi_pd(a);
    }
    *lo += l;
    *hi += h;
}

/* float32 values widened each on its own: sums whose precision the
 * normaliser needs (summing float32 partials would move log-sum-exp by
 * ~1e-7). */
QK_INLINE void add_each_g(vd *lo, vd *hi, const vf *e)
{
    vd l = vd_set1(0.0), h = l;
    for (int j = 0; j < QK_G; j++) {
        l += vf_lo_pd(e[j]);
        h += vf_hi_pd(e[j]);
    }
    *lo += l;
    *hi += h;
}

/* exps of x <= 0 into float64 sums that reach at least 1 (the max's own
 * term), a group of QK_G vectors at a time. A group whose lanes each sum
 * below 1/16 is added in float32 first (pairs, then the pairs) and widened
 * once: its roundings (two per lane at QK_G = 4) together are at most 2^-23
 * of the lane's group sum, under 2^-27 of the row's, and unbiased, as the
 * exp's own error (0.88 ulp per term) is. A group holding a term near the
 * max widens each vector on its own. Widening every vector takes 30 % of
 * pass 1's time, and the branch costs what it saves where it is hard to
 * predict: u16 x f32, 2 threads, Zen 4, 3,470 M/s widening every vector,
 * 3,420 with the test at 2^-8 (15 % of the benchmark's groups take it),
 * 3,650 at 1/16 (3 %), 3,810 never testing (but then the group holding
 * the max rounds by up to 2^-24 of the row's sum: 6e-8 of the contract's
 * 1e-7 on a peaked row). A NaN lane takes the test's path. */
QK_INLINE void add_exps_g(vd *lo, vd *hi, const vf *e)
{
    vf pair[QK_G / 2];
    for (int j = 0; j < QK_G; j += 2)
        pair[j / 2] = e[j] + e[j + 1];
    vf s = pair[0];
    for (int j = 1; j < QK_G / 2; j++)
        s = s + pair[j];
    if (vm_bits(vf_not_lt(s, vf_set1(0x1p-4f)))) {
        add_each_g(lo, hi, e);
        return;
    }
    *lo += vf_lo_pd(s);
    *hi += vf_hi_pd(s);
}

QK_INLINE vf sum_g(const vf *v)
{
    vf s = v[0];
    for (int j = 1; j < QK_G; j++)
        s = s + v[j];
    return s;
}

QK_INLINE vf max_g(const vf *v)
{
    vf m = v[0];
    for (int j = 1; j < QK_G; j++)
        m = vf_max(v[j], m);
    return m;
}

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

/* The top-k list, given the lanes of v at or above floor (a value at most
 * the row's k-th largest): one vector compare lets almost every vector by,
 * and only the lanes that can enter are pushed. */
QK_INLINE void topk_add(qk_topk *t, vf v, int64_t i, vmask valid, vf floor)
{
    vmask in = vm_and(valid, vf_ge(v, floor));
    if (t->n == QK_TOPK_MAX)
        in = vm_and(in, vf_gt(v, vf_set1(t->val[QK_TOPK_MAX - 1])));
    unsigned bits = vm_bits(in);
    if (!bits)
        return;
    float l[QK_W];
    vf_store(l, v);
    for (; bits; bits &= bits - 1) {
        const int k = __builtin_ctz(bits);
        qk_topk_push(t, l[k], i + k);
    }
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

/* --- llama row x logits ---------------------------------------------------- */

QK_INLINE vf decode(vf c, vf scale, vf min_log_prob)
{
    return c * scale + min_log_prob; /* llama.cpp's float32 decode, never fused */
}

typedef struct {
    vf scale, min_log_prob, c_cut, zero, ninf, ymax, lse_hi;
    vf tail_lp;       /* Jensen-Shannon: the base's tail log p */
} llama_logits_consts;

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

/* A token's NLL as llama-perplexity stores it: its float32 log-sum-exp added
 * to the float32 max, then the logit taken away, each step rounded. */
static inline float llama_nll(float max, double lse, float logit)
{
    const float norm = max + (float)lse;
    return norm - logit;
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
    norm_init(&nq);
    qk_topk tq = {0}, bq = {0};
    for (int64_t b = 0; b < n; b += QK_BLOCK)
        norm_block(&nq, q, dt, st, b, block_end(b, n), &bq, 0, QK_PREFETCH);
    const side_values qv = logits_side(q, dt, st);
    topk_of_blocks(&tq, &bq, &qv, n);
    const double lse = norm_lse(&nq);
    out->status = norm_status(&nq, lse, QK_Q_NONFINITE, QK_Q_EMPTY);
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
    kept_terms kept;
    int kept_n = 0;
    for (int64_t b = 0; b < n; b += QK_BLOCK) {
        const int64_t e = block_end(b, n);
        vf c_max = vf_set1(0.0f); /* lanes past the end: code 0 */
        s.lp_max = vf_set1(-INFINITY);
        int64_t i = b;
        for (; i + QK_SPAN <= e; i += QK_SPAN)
            kept_n = llama_logits_span(&s, &k, flags, &kept, kept_n, &c_max, NULL, NULL, p_row, q,
                                       dt, st, i, e, 1, QK_PREFETCH);
        if (i < e)
            kept_n = llama_logits_span(&s, &k, flags, &kept, kept_n, &c_max, NULL, NULL, p_row, q,
                                       dt, st, i, e, 0, 0);
        if (!exact)
            kept_n = kept_sum(&kept, kept_n, flags & QK_REVERSE ? KEPT_P : KEPT_CODES, &k,
                              &s.t_lo, &s.t_hi, &s.p32, e == n);
        else if (exact_packs(flags))
            kept_n = kept_exact_sum(&kept, kept_n, &k, &s, e == n);
        if (!exact || exact_packs(flags))
            s.lp_max = decode(c_max, k.scale, k.min_log_prob);
        blocks_add(&bp, vf_hmax(s.lp_max), b);
    }
    const side_values pv = codes_side(p_row, k.scale, k.min_log_prob);
    topk_of_blocks(&tp, &bp, &pv, n);
    const double sum_p = exact ? mass_of(&s.p)
                               : vd_hsum(widened_sum(vf_lo_pd(s.p32), vf_hi_pd(s.p32)));
    if (qk_row_corrupt(&h, qk_topk_best(&tp), sum_p, p_row, n)) {
        out->status = QK_P_CORRUPT;
        return;
    }
    double kld = vd_hsum(widened_sum(s.t_lo, s.t_hi)) + (lse - lse_hi) * sum_p;
    const float y_tok = qk_logit_at(q, dt, st, tok);
    const uint16_t c_tok = qk_code(p_row, tok);
    /* The base's tail (exact mode, or the reverse KL in either): its log p
     * from add_mass_g's mass, within mass_error of the float64 one; where
     * that error, through what reads the tail (the exact KL's tail terms,
     * the token's NLL, Q's mass there), could reach a twentieth of the
     * contract, from float64 exps instead. q = e * exp(-(lse - lse_hi)): the
     * reverse terms' lq is lse - lse_hi too high. */
    const double q_scale = exp(-(lse - lse_hi)), lse_lo = lse - lse_hi, mlp = h.min_log_prob;
    const double tail_n = (double)s.tail_n, ys = vd_hsum(widened_sum(s.y_lo, s.y_hi));
    const double re = vd_hsum(widened_sum(s.re_lo, s.re_hi));
    double r = -vd_hsum(widened_sum(s.r_lo, s.r_hi)), c_tail = -INFINITY;
    if (s.tail_n > 0) {
        const double mass = mass_of(&s.p), err = tail_error(mass, mass_error(&s.p), tail_n, mlp);
        c_tail = qk_tail_log_prob(1.0 - mass, tail_n, mlp);
        int precise = 0;
        if (exact) {
            const double w = exp(c_tail), tail_kld = w * (tail_n * (c_tail + lse) - ys);
            precise = tail_could_matter(err * fabs(w * (tail_n * (c_tail + lse + 1.0) - ys)),
                                        kld + tail_kld, 1e-6) ||
                      (c_tok == 0 && y_tok > -INFINITY && tail_could_matter(err, c_tail, 1e-7));
        }
        if (flags & QK_REVERSE)
            precise = precise || tail_could_matter(err * q_scale * re,
                                                   q_scale * (r - (c_tail - mlp) * re) - lse_lo,
                                                   1e-6);
        if (precise)
            c_tail = qk_tail_log_prob(1.0 - mass64(p_row, &h, n), tail_n, mlp);
        if (exact)
            kld += exp(c_tail) * (tail_n * (c_tail + lse) - ys);
        r -= (c_tail - mlp) * re;
    }
    out->kld = vm_bits(s.inf) ? INFINITY : kld;
    if (flags & QK_REVERSE)
        out->rkl = q_scale * r - lse_lo;
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

/* Each flag combination (exact, reverse) its own copy, the flags folded in:
 * a run-time reverse test per step cost 7-17 % of the plain rates. Each copy
 * is a function of its own (QK_COPY): inlined side by side into one
 * dispatcher, GCC allocated registers over all of them at once and kept the
 * hot loops' inputs and sums in stack slots (measured: -10 %, u16 x f32,
 * AVX-512, Zen 4). copy_NAME_plain .. _exact_reverse take the same
 * parameters as their dispatcher, whose names ROW(F) uses. The sanitizer
 * build (.ci/sanitizers) defines QK_FEW_COPIES: one copy per mode, the
 * reverse flag tested at run time, for the same code instrumented four ways
 * over takes cc1 past 25 minutes. */
#define QK_COPY(NAME, PARAMS, BODY)                                                                \
    static __attribute__((noinline)) void NAME PARAMS { BODY; }
#ifdef QK_FEW_COPIES
#define QK_FLAG_COPIES(NAME, PARAMS, ROW)                                                          \
    QK_COPY(copy_##NAME##_plain, PARAMS, ROW(mode & QK_REVERSE))                                   \
    QK_COPY(copy_##NAME##_exact, PARAMS, ROW(QK_EXACT | (mode & QK_REVERSE)))
#define QK_BY_FLAGS(NAME, ARGS)                                                                    \
    do {                                                                                           \
        if (mode & QK_EXACT)                                                                       \
            copy_##NAME##_exact ARGS;                                                              \
        else                                                                                       \
            copy_##NAME##_plain ARGS;                                                              \
    } while (0)
#else
#define QK_FLAG_COPIES(NAME, PARAMS, ROW)                                                          \
    QK_COPY(copy_##NAME##_plain, PARAMS, ROW(0))                                                   \
    QK_COPY(copy_##NAME##_exact, PARAMS, ROW(QK_EXACT))                                            \
    QK_COPY(copy_##NAME##_reverse, PARAMS, ROW(QK_REVERSE))                                        \
    QK_COPY(copy_##NAME##_exact_reverse, PARAMS, ROW(QK_EXACT | QK_REVERSE))
#define QK_BY_FLAGS(NAME, ARGS)                                                                    \
    do {                                                                                           \
        switch (mode & (QK_EXACT | QK_REVERSE)) {                                                  \
        case 0: copy_##NAME##_plain ARGS; break;                                                   \
        case QK_EXACT: copy_##NAME##_exact ARGS; break;                                            \
        case QK_REVERSE: copy_##NAME##_reverse ARGS; break;                                        \
        default: copy_##NAME##_exact_reverse ARGS; break;                                          \
        }                                                                                          \
    } while (0)
#endif

/* Jensen-Shannon (opt-in, an exp, an expm1 and a log per entry): one copy per
 * mode with the dtypes and the reverse flag tested at run time, for a copy
 * per dtype and flag combination would double the build. Testing the mode
 * at run time too cost 40 % of the JS rate (measured: 510 vs 875 M/s, u16 x
 * f32, one thread); the sanitizer build takes the run-time copy. */
#ifdef QK_FEW_COPIES
#define QK_JS_COPIES(NAME, PARAMS, ROW) QK_COPY(copy_##NAME##_js, PARAMS, ROW(mode))
#define QK_BY_MODE_JS(NAME, ARGS) copy_##NAME##_js ARGS
#else
#define QK_JS_COPIES(NAME, PARAMS, ROW)                                                            \
    QK_COPY(copy_##NAME##_js, PARAMS, ROW(QK_JS | (mode & QK_REVERSE)))                            \
    QK_COPY(copy_##NAME##_js_exact, PARAMS, ROW(QK_JS | QK_EXACT | (mode & QK_REVERSE)))
#define QK_BY_MODE_JS(NAME, ARGS)                                                                  \
    do {                                                                                           \
        if (mode & QK_EXACT)                                                                       \
            copy_##NAME##_js_exact ARGS;                                                           \
        else                                                                                       \
            copy_##NAME##_js ARGS;                                                                 \
    } while (0)
#endif

#define QK_LQ_PARAMS                                                                               \
    (const uint16_t *p_row, const void *q, int q_dtype, int64_t n_vocab, int64_t tok, int mode,    \
     qk_row *out)
#define QK_LQ_ARGS (p_row, q, q_dtype, n_vocab, tok, mode, out)
#define QK_LQ(DT, F) llama_logits_row(p_row, q, DT, 1, n_vocab, tok, F, out)
#define QK_LQ_F32(F) QK_LQ(QK_F32, F)
#define QK_LQ_F16(F) QK_LQ(QK_F16, F)
#define QK_LQ_BF16(F) QK_LQ(QK_BF16, F)
#define QK_LQ_ANY(F) QK_LQ(q_dtype, F)
QK_FLAG_COPIES(llama_logits_f32, QK_LQ_PARAMS, QK_LQ_F32)
QK_FLAG_COPIES(llama_logits_f16, QK_LQ_PARAMS, QK_LQ_F16)
QK_FLAG_COPIES(llama_logits_bf16, QK_LQ_PARAMS, QK_LQ_BF16)
QK_JS_COPIES(llama_logits, QK_LQ_PARAMS, QK_LQ_ANY)

void QK_NAME(qk_score_llama_logits)(const uint16_t *p_row, const void *q, int q_dtype,
                                    ptrdiff_t q_stride, int64_t n_vocab, int64_t tok, int mode,
                                    qk_row *out)
{
    if (q_stride != 1)
        llama_logits_row(p_row, q, q_dtype, q_stride, n_vocab, tok, mode, out);
    else if (mode & QK_JS)
        QK_BY_MODE_JS(llama_logits, QK_LQ_ARGS);
    else if (q_dtype == QK_F32)
        QK_BY_FLAGS(llama_logits_f32, QK_LQ_ARGS);
    else if (q_dtype == QK_F16)
        QK_BY_FLAGS(llama_logits_f16, QK_LQ_ARGS);
    else
        QK_BY_FLAGS(llama_logits_bf16, QK_LQ_ARGS);
}

/* --- logits x logits --------------------------------------------------------- */

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
    (const void *p, int p_dtype, const void *q, int q_dtype, int64_t n_vocab, int64_t tok,         \
     int mode, qk_row *out)
#define QK_LL_ARGS (p, p_dtype, q, q_dtype, n_vocab, tok, mode, out)
#define QK_LL(DP, DQ, F) logits_logits_row(p, DP, 1, q, DQ, 1, n_vocab, tok, F, out)
#define QK_LL_F32_F32(F) QK_LL(QK_F32, QK_F32, F)
#define QK_LL_F32_F16(F) QK_LL(QK_F32, QK_F16, F)
#define QK_LL_F32_BF16(F) QK_LL(QK_F32, QK_BF16, F)
#define QK_LL_F16_F32(F) QK_LL(QK_F16, QK_F32, F)
#define QK_LL_F16_F16(F) QK_LL(QK_F16, QK_F16, F)
#define QK_LL_F16_BF16(F) QK_LL(QK_F16, QK_BF16, F)
#define QK_LL_BF16_F32(F) QK_LL(QK_BF16, QK_F32, F)
#define QK_LL_BF16_F16(F) QK_LL(QK_BF16, QK_F16, F)
#define QK_LL_BF16_BF16(F) QK_LL(QK_BF16, QK_BF16, F)
#define QK_LL_ANY(F) QK_LL(p_dtype, q_dtype, F)
QK_FLAG_COPIES(logits_f32_f32, QK_LL_PARAMS, QK_LL_F32_F32)
QK_FLAG_COPIES(logits_f32_f16, QK_LL_PARAMS, QK_LL_F32_F16)
QK_FLAG_COPIES(logits_f32_bf16, QK_LL_PARAMS, QK_LL_F32_BF16)
QK_FLAG_COPIES(logits_f16_f32, QK_LL_PARAMS, QK_LL_F16_F32)
QK_FLAG_COPIES(logits_f16_f16, QK_LL_PARAMS, QK_LL_F16_F16)
QK_FLAG_COPIES(logits_f16_bf16, QK_LL_PARAMS, QK_LL_F16_BF16)
QK_FLAG_COPIES(logits_bf16_f32, QK_LL_PARAMS, QK_LL_BF16_F32)
QK_FLAG_COPIES(logits_bf16_f16, QK_LL_PARAMS, QK_LL_BF16_F16)
QK_FLAG_COPIES(logits_bf16_bf16, QK_LL_PARAMS, QK_LL_BF16_BF16)
QK_JS_COPIES(logits_logits, QK_LL_PARAMS, QK_LL_ANY)

void QK_NAME(qk_score_logits_logits)(const void *p, int p_dtype, ptrdiff_t p_stride, const void *q,
                                     int q_dtype, ptrdiff_t q_stride, int64_t n_vocab, int64_t tok,
                                     int mode, qk_row *out)
{
    if (p_stride != 1 || q_stride != 1) {
        logits_logits_row(p, p_dtype, p_stride, q, q_dtype, q_stride, n_vocab, tok, mode, out);
        return;
    }
    if (mode & QK_JS) {
        QK_BY_MODE_JS(logits_logits, QK_LL_ARGS);
        return;
    }
    switch (p_dtype * 3 + q_dtype) {
    case QK_F32 * 3 + QK_F32: QK_BY_FLAGS(logits_f32_f32, QK_LL_ARGS); break;
    case QK_F32 * 3 + QK_F16: QK_BY_FLAGS(logits_f32_f16, QK_LL_ARGS); break;
    case QK_F32 * 3 + QK_BF16: QK_BY_FLAGS(logits_f32_bf16, QK_LL_ARGS); break;
    case QK_F16 * 3 + QK_F32: QK_BY_FLAGS(logits_f16_f32, QK_LL_ARGS); break;
    case QK_F16 * 3 + QK_F16: QK_BY_FLAGS(logits_f16_f16, QK_LL_ARGS); break;
    case QK_F16 * 3 + QK_BF16: QK_BY_FLAGS(logits_f16_bf16, QK_LL_ARGS); break;
    case QK_BF16 * 3 + QK_F32: QK_BY_FLAGS(logits_bf16_f32, QK_LL_ARGS); break;
    case QK_BF16 * 3 + QK_F16: QK_BY_FLAGS(logits_bf16_f16, QK_LL_ARGS); break;
    default: QK_BY_FLAGS(logits_bf16_bf16, QK_LL_ARGS); break;
    }
}

/* --- llama row x llama row -------------------------------------------------- */

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

QK_INLINE int llama_llama_step(llama_llama_sums *s, const llama_llama_consts *k, int flags,
                               kept_terms *b, int n, live_log_p *lb, int *lb_n, live_log_p *db,
                               int *db_n, const vf *cp, const vf *cq, const vmask *valid)
{
    const int exact = flags & QK_EXACT, reverse = flags & QK_REVERSE;
    vf lp[QK_G], lq[QK_G], eq[QK_G], d[QK_G], t[QK_G], pq[QK_G];
    vmask q_live[QK_G], keep[QK_G], code[QK_G];
    for (int j = 0; j < QK_G; j++) {
        lp[j] = decode(cp[j], k->sp, k->mp);
        lq[j] = decode(cq[j], k->sq, k->mq);
        q_live[j] = vm_and(valid[j], vf_gt(cq[j], k->zero));
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
    if (exact || reverse) { /* the base's tail: its code-0 entries */
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
    if (exact_packs(flags)) { /* the base's code > 0 lanes, by Q's code: uu_exact_sum */
        vmask on_q[QK_G], off_q[QK_G];
        for (int j = 0; j < QK_G; j++) {
            on_q[j] = vm_and(code[j], q_live[j]);
            off_q[j] = vm_andnot(code[j], q_live[j]);
        }
        *db_n = live_add_g(db, *db_n, off_q, lp);
        return kept_add_g(b, n, on_q, lp, d);
    }
    if (!exact && !reverse) {
        /* llama mode's terms go to the kept buffer (log p and d), and their
         * exps are taken there; the few kept lanes on Q's code 0 take theirs
         * here as well, for pq */
        vmask dead = vm_none();
        for (int j = 0; j < QK_G; j++) {
            keep[j] = vm_and(valid[j], vf_gt(lp[j], k->cut));
            dead = vm_or(dead, vm_andnot(keep[j], q_live[j]));
        }
        if (vm_bits(dead)) {
            vf e[QK_G];
            for (int j = 0; j < QK_G; j++)
                e[j] = lp[j];
            vf_exp_in_range_n(e, QK_G); /* lanes outside the range are masked */
            for (int j = 0; j < QK_G; j++)
                pq[j] = vf_keep(vm_andnot(keep[j], q_live[j]), e[j]);
            s->pq = s->pq + sum_g(pq);
        }
        return kept_add_g(b, n, keep, lp, d);
    }
    /* the base's decoded mass from every step, as llama_logits_step's */
    vf e[QK_G];
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
    if (!exact) /* the reverse KL: p and d, as kept_sum would take them (to the bit) */
        return kept_add_g(b, n, keep, e, d);
    add_terms_g(&s->t_lo, &s->t_hi, t);
    return n;
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
    qk_topk tp = {0};
    qk_topk tq = {0}, bp = {0}, bq = {0};
    kept_terms kept;
    live_log_p live, off_q;
    int kept_n = 0, live_n = 0, off_q_n = 0;
    for (int64_t b = 0; b < n; b += QK_BLOCK) {
        const int64_t e = block_end(b, n);
        s.lp_max = s.lq_max = vf_set1(-INFINITY);
        int64_t i = b;
        for (; i + QK_SPAN <= e; i += QK_SPAN) {
            vf cp[QK_G], cq[QK_G];
            vmask valid[QK_G];
            prefetch_span(p_row, 8 + 2 * i + QK_PREFETCH / 2, 2 * QK_SPAN);
            prefetch_span(q_row, 8 + 2 * i + QK_PREFETCH / 2, 2 * QK_SPAN);
            load_codes_g(cp, p_row, i, e, 1);
            load_codes_g(cq, q_row, i, e, 1);
            valid_g(valid, i, e, 1);
            kept_n = llama_llama_step(&s, &k, flags, &kept, kept_n, &live, &live_n, &off_q,
                                      &off_q_n, cp, cq, valid);
        }
        if (i < e) {
            vf cp[QK_G], cq[QK_G];
            vmask valid[QK_G];
            load_codes_g(cp, p_row, i, e, 0);
            load_codes_g(cq, q_row, i, e, 0);
            valid_g(valid, i, e, 0);
            kept_n = llama_llama_step(&s, &k, flags, &kept, kept_n, &live, &live_n, &off_q,
                                      &off_q_n, cp, cq, valid);
        }
        if (!exact) {
            kept_n = kept_sum(&kept, kept_n, flags & QK_REVERSE ? KEPT_P : KEPT_LOG_P, NULL,
                              &s.t_lo, &s.t_hi, &s.p32, e == n);
        } else if (exact_packs(flags)) {
            kept_n = uu_exact_sum(kept.a, kept.y, kept_n, &k, &s, e == n);
            off_q_n = uu_exact_sum(off_q.l, NULL, off_q_n, &k, &s, e == n);
        }
        if (!(flags & QK_REVERSE))
            live_n = live_mass(&live, live_n, &s.q, e == n);
        blocks_add(&bp, vf_hmax(s.lp_max), b);
        blocks_add(&bq, vf_hmax(s.lq_max), b);
    }
    const side_values pv = codes_side(p_row, k.sp, k.mp), qv = codes_side(q_row, k.sq, k.mq);
    topk_of_blocks(&tp, &bp, &pv, n);
    topk_of_blocks(&tq, &bq, &qv, n);
    const double q_n = (double)s.q_tail_n, mq = hq.min_log_prob;
    const double s_t = vd_hsum(widened_sum(s.t_lo, s.t_hi));
    const double s_pq = vd_hsum(widened_sum(vf_lo_pd(s.pq), vf_hi_pd(s.pq)));
    double q_mass = mass_of(&s.q);
    const double p_mass = exact ? mass_of(&s.p)
                                : vd_hsum(widened_sum(vf_lo_pd(s.p32), vf_hi_pd(s.p32)));
    if (qk_row_corrupt(&hp, qk_topk_best(&tp), p_mass, p_row, n))
        out->status |= QK_P_CORRUPT;
    if (qk_row_corrupt(&hq, qk_topk_best(&tq), q_mass, q_row, n))
        out->status |= QK_Q_CORRUPT;
    if (out->status)
        return;
    /* the base's tail log p (exact mode, or the reverse KL in either), from
     * a mass within mass_error, and in exact mode its mass on Q's code 0 */
    const double p_tail_mass = mass_of(&s.p);
    double c_p = 0.0, w_p = 0.0;
    if (s.p_tail_n > 0) {
        c_p = qk_tail_log_prob(1.0 - p_tail_mass, (double)s.p_tail_n, hp.min_log_prob);
        w_p = exact ? exp(c_p) * (double)s.p_tail_on_q_tail : 0.0;
    }
    const uint16_t cp_tok = qk_code(p_row, tok), cq_tok = qk_code(q_row, tok);
    double c_q = 0.0;
    if (q_n > 0) {
        /* Q's tail log p from the cheap mass, unless its error (through the
         * base's mass on Q's code 0, or the token's own NLL) could reach a
         * twentieth of what the contract allows: then from float64 exps. */
        c_q = qk_tail_log_prob(1.0 - q_mass, q_n, mq);
        const double err = tail_error(q_mass, mass_error(&s.q), q_n, mq);
        if (tail_could_matter(err * (s_pq + w_p), s_t - (c_q - mq) * s_pq, 1e-6) ||
            (cq_tok == 0 && tail_could_matter(err, c_q, 1e-7)) ||
            ((flags & QK_REVERSE) && tail_could_matter(err * fabs(reverse_slope_q(&s, c_q, c_p)),
                                                       reverse_kl(&s, c_q, c_p), 1e-6))) {
            q_mass = mass64(q_row, &hq, n);
            c_q = qk_tail_log_prob(1.0 - q_mass, q_n, mq);
        }
    }
    /* the same rule for the base's tail, which exact mode's KL (its tail
     * terms, the token's NLL) and the reverse KL read */
    const double p_n = (double)s.p_tail_n, l_sum = vd_hsum(widened_sum(s.l_lo, s.l_hi));
    double kld = s_t - (c_q - mq) * s_pq;
    if (s.p_tail_n > 0) {
        const double err = tail_error(p_tail_mass, mass_error(&s.p), p_n, hp.min_log_prob);
        int precise = 0;
        if (exact) {
            const double w = exp(c_p), n4 = (double)s.p_tail_on_q_tail;
            const double tail_kld = w * (p_n * c_p - l_sum - n4 * c_q);
            precise = tail_could_matter(err * fabs(w * (p_n * (c_p + 1.0) - l_sum - n4 * c_q)),
                                        kld + tail_kld, 1e-6) ||
                      (cp_tok == 0 && tail_could_matter(err, c_p, 1e-7));
        }
        if (flags & QK_REVERSE)
            precise = precise || tail_could_matter(err * fabs(reverse_slope_p(&s, c_q)),
                                                   reverse_kl(&s, c_q, c_p), 1e-6);
        if (precise) {
            c_p = qk_tail_log_prob(1.0 - mass64(p_row, &hp, n), p_n, hp.min_log_prob);
            w_p = exact ? exp(c_p) * (double)s.p_tail_on_q_tail : 0.0;
        }
        if (exact)
            kld += exp(c_p) * (p_n * c_p - l_sum) - w_p * c_q;
    }
    out->kld = kld;
    if (flags & QK_REVERSE)
        out->rkl = reverse_kl(&s, c_q, c_p);
    if (js)
        out->js = js_of(&s.js, 1.0, 0.0);
    out->nll_q = cq_tok ? -(double)qk_decode(&hq, cq_tok) : -c_q;
    out->nll_q_llama = (float)out->nll_q;
    /* llama mode: the base's NLL as llama.cpp decodes it, whatever Q is */
    out->nll_p = (cp_tok || !exact) ? -(double)qk_decode(&hp, cp_tok) : -c_p;
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

/* --- the encoder ------------------------------------------------------------- */

/* float32 logits -> llama.cpp uint16 row (docs/formats.md), byte for byte what
 * llama-perplexity --kl-divergence-base writes: llama.cpp's float32
 * arithmetic in its order, the codes rounded half to even, and each expf
 * term the correctly rounded float32 (vd_exp_n, rounded) summed in float64. */
QK_INLINE void encode_step(vd *sum, uint16_t *row, const vf *v, const vmask *valid, vf vmax,
                           vf vmin, vf inv, int64_t i, int full)
{
    vd d[2 * QK_G];
    for (int j = 0; j < QK_G; j++) {
        const vf x = v[j] - vmax;
        d[2 * j] = vf_lo_pd(x);
        d[2 * j + 1] = vf_hi_pd(x);
    }
    vd_exp_n(d, 2 * QK_G);
    for (int j = 0; j < 2 * QK_G; j++)
        *sum += vd_round_f32(d[j]);
    for (int j = 0; j < QK_G; j++) {
        const int n_codes = full ? QK_W : count(valid[j]);
        if (!n_codes)
            continue;
        unsigned char *dst = (unsigned char *)row + 8 + 2 * (i + (int64_t)j * QK_W);
        const vf c = inv * (v[j] - vmin);
        const vmask live = vf_gt(v[j], vmin);
        if (n_codes == QK_W) {
            vf_store_u16(dst, c, live);
            continue;
        }
        uint16_t buf[QK_W];
        vf_store_u16(buf, c, live);
        memcpy(dst, buf, 2 * (size_t)n_codes);
    }
}

QK_INLINE int encode_row(const float *x, ptrdiff_t st, int64_t n, int64_t tok, uint16_t *row,
                         double *nll)
{
    vf vmax[QK_G], vmin[QK_G];
    vmask bad = vm_none();
    for (int j = 0; j < QK_G; j++) {
        vmax[j] = vf_set1(-INFINITY);
        vmin[j] = vf_set1(INFINITY);
    }
    int64_t i = 0;
    for (; i + QK_SPAN <= n; i += QK_SPAN) {
        vf v[QK_G];
        vmask valid[QK_G];
        if (st == 1)
            prefetch_span(x, 4 * i + QK_PREFETCH, 4 * QK_SPAN);
        load_logits_g(v, valid, x, QK_F32, st, i, n, 1);
        for (int j = 0; j < QK_G; j++) {
            vmax[j] = vf_max(v[j], vmax[j]);
            vmin[j] = vf_min(v[j], vmin[j]);
            bad = vm_or(bad, vf_not_lt(v[j], vf_set1(INFINITY)));
        }
    }
    for (int j = 1; j < QK_G; j++)
        vmin[0] = vf_min(vmin[j], vmin[0]);
    float max_logit = vf_hmax(max_g(vmax)), min_logit = vf_hmin(vmin[0]);
    int tail_bad = 0;
    for (int64_t j = i; j < n; j++) {
        const float val = qk_logit_at(x, QK_F32, st, j);
        tail_bad |= !(val < INFINITY);
        max_logit = val > max_logit ? val : max_logit;
        min_logit = val < min_logit ? val : min_logit;
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
    for (i = 0; i + QK_SPAN <= n; i += QK_SPAN) {
        vf v[QK_G];
        vmask valid[QK_G];
        load_logits_g(v, valid, x, QK_F32, st, i, n, 1);
        encode_step(&sum, row, v, valid, vM, vm, vinv, i, 1);
    }
    if (i < n) { /* lanes past the end read -inf: exp 0, code 0, not stored */
        vf v[QK_G];
        vmask valid[QK_G];
        load_logits_g(v, valid, x, QK_F32, st, i, n, 0);
        encode_step(&sum, row, v, valid, vM, vm, vinv, i, 0);
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
