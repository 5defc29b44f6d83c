/* AVX2 float32 logits -> llama.cpp uint16 row. Two reads of the row: max and
 * min, then exps and codes together. The codes use llama.cpp's float32
 * arithmetic lane for lane (cvtps rounds half to even, as lrintf), so they are
 * the scalar encoder's bit for bit; each expf term is a float64 exp rounded to
 * float32 (correctly rounded, as glibc's expf is in all but rare cases), so the
 * header's log-sum-exp matches too. Falls back to scalar for strided rows. */
#include "avx2_math.h"

#ifdef QK_HAVE_X86
#include <math.h>
#include <string.h>

#include "dispatch.h"

QK_AVX2 int qk_encode_llama_row_avx2(const float *x, ptrdiff_t stride, int64_t n_vocab, int32_t tok,
                                     uint16_t *row, double *nll)
{
    if (stride != 1 || n_vocab < 16)
        return qk_encode_llama_row_scalar(x, stride, n_vocab, tok, row, nll);
    const int64_t nv = n_vocab & ~(int64_t)7;
    const __m256 inf = _mm256_set1_ps(INFINITY);
    __m256 vmax = _mm256_set1_ps(-INFINITY), vmin = inf, bad = _mm256_setzero_ps();
    for (int64_t i = 0; i < nv; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        vmax = _mm256_max_ps(v, vmax);
        vmin = _mm256_min_ps(v, vmin);
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(v, inf, _CMP_NLT_UQ));
    }
    float max_logit = qk_hmax_ps(vmax), min_logit = qk_hmin_ps(vmin);
    int scalar_bad = 0;
    for (int64_t i = nv; i < n_vocab; i++) {
        const float v = x[i];
        scalar_bad |= !(v < INFINITY);
        max_logit = v > max_logit ? v : max_logit;
        min_logit = v < min_logit ? v : min_logit;
    }
    if (_mm256_movemask_ps(bad) || scalar_bad)
        return QK_P_NONFINITE;
    if (max_logit == -INFINITY)
        return QK_P_EMPTY;
    min_logit = min_logit > max_logit - 16 ? min_logit : max_logit - 16;
    const float scale = (max_logit - min_logit) / 65535.f;
    const float inv_scale = scale != 0 ? 1 / scale : 0;
    const __m256 vM = _mm256_set1_ps(max_logit), vm = _mm256_set1_ps(min_logit),
                 vinv = _mm256_set1_ps(inv_scale);
    const __m256i cap = _mm256_set1_epi32(65535);
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    uint16_t *codes = row + 4;
    for (int64_t i = 0; i < nv; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        /* expf(v - M) as glibc gives it: float difference, then a float64 exp
         * (1e-13) rounded to float32, i.e. the correctly rounded expf */
        const __m256 d = _mm256_sub_ps(v, vM);
        s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_cvtpd_ps(qk_exp_pd(qk_lo_pd(d)))));
        s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_cvtpd_ps(qk_exp_pd(qk_hi_pd(d)))));
        __m256i c = _mm256_cvtps_epi32(_mm256_mul_ps(vinv, _mm256_sub_ps(v, vm)));
        c = _mm256_and_si256(_mm256_min_epi32(c, cap),
                             _mm256_castps_si256(_mm256_cmp_ps(v, vm, _CMP_GT_OQ)));
        const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(c),
                                                _mm256_extracti128_si256(c, 1));
        _mm_storeu_si128((__m128i *)(codes + i), packed);
    }
    double sum_exp = qk_hsum_pd(_mm256_add_pd(s0, s1));
    for (int64_t i = nv; i < n_vocab; i++) {
        const float v = x[i];
        sum_exp += expf(v - max_logit);
        uint16_t c = 0;
        if (v > min_logit) {
            const long r = lrintf(inv_scale * (v - min_logit));
            c = (uint16_t)(r > 65535 ? 65535 : r);
        }
        codes[i] = c;
    }
    if (n_vocab & 1)
        codes[n_vocab] = 0;
    if (scale == 0)
        memset(codes, 0, (size_t)n_vocab * 2);
    const float log_sum_exp = (float)log(sum_exp);
    const float header[2] = {scale, min_logit - max_logit - log_sum_exp};
    memcpy(row, header, sizeof header);
    *nll = max_logit + log_sum_exp - x[tok];
    return QK_OK;
}

#endif
