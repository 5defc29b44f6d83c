/* Vector building blocks of the row kernels: exps, loads, float64 sums.
 *
 * Each kernel family (llama_logits.c, logits_logits.c, llama_llama.c,
 * encode.c) is compiled once per instruction set, with QK_ISA_AVX512,
 * QK_ISA_AVX2 or neither defined; simd.h maps the vector operations onto
 * each, and QK_NAME gives each build's entry points their suffix, so that
 * dispatch.c can call the best copy the CPU runs. The logic is the same on
 * every machine, so the tests of the portable build exercise it where no
 * wide build can run. Exps are float32 (< 0.9 ulp, unbiased), QK_G of them
 * per step with their stages interleaved; sums are float64 (terms meet in
 * float32 first only where that rounding stays far below the contract). */
#ifndef QUANTKL_KERNEL_MATH_H
#define QUANTKL_KERNEL_MATH_H

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

#endif
