/* AVX2+FMA building blocks. Functions carry their own target attribute so the
 * file builds with baseline flags and is only called after CPU dispatch. */
#ifndef QUANTKL_AVX2_MATH_H
#define QUANTKL_AVX2_MATH_H

#if defined(__x86_64__) || defined(__i386__)
#define QK_HAVE_X86 1
#include <immintrin.h>

#include "quantkl.h"

#define QK_AVX2 __attribute__((target("avx2,fma,f16c")))

/* exp(x) for float64 lanes, relative error < 1e-13 over the range used here
 * (x <= ~1). Lanes below -708 (including -inf) give exactly 0: such terms are
 * < 1e-307 of the row's largest and cannot change a float64 sum. Accuracy far
 * beyond float32 is the point: llama mode rounds max + log(sum) to float32,
 * and a sum off by 1e-8 would flip that rounding on one row in a hundred. */
QK_AVX2 static inline __m256d qk_exp_pd(__m256d x)
{
    const __m256d lo = _mm256_set1_pd(-708.0);
    const __m256d live = _mm256_cmp_pd(x, lo, _CMP_GT_OQ);
    x = _mm256_max_pd(x, lo);
    const __m256d k = _mm256_round_pd(_mm256_mul_pd(x, _mm256_set1_pd(1.4426950408889634)),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256d r = _mm256_fnmadd_pd(k, _mm256_set1_pd(6.93147180369123816490e-01), x);
    r = _mm256_fnmadd_pd(k, _mm256_set1_pd(1.90821492927058770002e-10), r);
    /* Taylor to degree 11 on |r| <= ln2/2 (remainder < 7e-15 relative),
     * evaluated by Estrin's scheme: a dependency chain of depth 5 instead of
     * Horner's 11, so the FMA units are not left waiting on latency. */
    const __m256d r2 = _mm256_mul_pd(r, r);
    const __m256d r4 = _mm256_mul_pd(r2, r2);
    const __m256d r8 = _mm256_mul_pd(r4, r4);
#define QK_PAIR(a, b) _mm256_fmadd_pd(_mm256_set1_pd(b), r, _mm256_set1_pd(a))
    const __m256d a0 = QK_PAIR(1.0, 1.0), a1 = QK_PAIR(1.0 / 2, 1.0 / 6),
                  a2 = QK_PAIR(1.0 / 24, 1.0 / 120), a3 = QK_PAIR(1.0 / 720, 1.0 / 5040),
                  a4 = QK_PAIR(1.0 / 40320, 1.0 / 362880),
                  a5 = QK_PAIR(1.0 / 3628800, 1.0 / 39916800);
#undef QK_PAIR
    const __m256d b0 = _mm256_fmadd_pd(a1, r2, a0), b1 = _mm256_fmadd_pd(a3, r2, a2),
                  b2 = _mm256_fmadd_pd(a5, r2, a4);
    const __m256d p = _mm256_fmadd_pd(b2, r8, _mm256_fmadd_pd(b1, r4, b0));
    /* 2^k through the exponent field: k in [-1022, 2] here. */
    const __m128i ki = _mm256_cvtpd_epi32(k);
    const __m256i e = _mm256_slli_epi64(
        _mm256_add_epi64(_mm256_cvtepi32_epi64(ki), _mm256_set1_epi64x(1023)), 52);
    return _mm256_and_pd(_mm256_mul_pd(p, _mm256_castsi256_pd(e)), live);
}

QK_AVX2 static inline double qk_hsum_pd(__m256d v)
{
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

QK_AVX2 static inline float qk_hmin_ps(__m256 v)
{
    __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    m = _mm_min_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

QK_AVX2 static inline float qk_hmax_ps(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/* Eight consecutive logits of any qk_dtype, as float32 (exact widening). */
QK_AVX2 static inline __m256 qk_load8(const void *row, int dtype, int64_t i)
{
    if (dtype == QK_F32)
        return _mm256_loadu_ps((const float *)row + i);
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)row + i));
    if (dtype == QK_F16)
        return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* Eight uint16 codes of a llama row starting at code i. */
QK_AVX2 static inline __m128i qk_codes8(const uint16_t *row, int64_t i)
{
    return _mm_loadu_si128((const __m128i *)(row + 4 + i));
}

/* Lane mask (as doubles) of the low/high four of eight float lanes. */
QK_AVX2 static inline __m256d qk_lo_pd(__m256 v) { return _mm256_cvtps_pd(_mm256_castps256_ps128(v)); }
QK_AVX2 static inline __m256d qk_hi_pd(__m256 v) { return _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)); }

/* uint16 codes -> float64, low/high four of eight. */
QK_AVX2 static inline __m256d qk_codes_lo_pd(__m128i c)
{
    return _mm256_cvtepi32_pd(_mm_cvtepu16_epi32(c));
}
QK_AVX2 static inline __m256d qk_codes_hi_pd(__m128i c)
{
    return _mm256_cvtepi32_pd(_mm_cvtepu16_epi32(_mm_unpackhi_epi64(c, c)));
}

#endif
#endif
