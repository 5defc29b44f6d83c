/* The few vector operations the kernels need, for the one instruction set
 * a kernel family is being compiled for: QK_ISA_AVX512 (AVX-512 F/BW/DQ/VL),
 * QK_ISA_AVX2 (AVX2+FMA+F16C) or neither (portable: GCC/Clang vector
 * extensions of 16 bytes, which become SSE2 on x86-64 and NEON on Arm).
 *
 * Arithmetic is written with C operators on the vector types (GCC and Clang
 * define __m512 and __m256 as such vectors); this header holds only what an
 * operator cannot say: fused multiply-add, max/min, lane masks, rounding,
 * conversions and loads. The build never fuses a*b+c by itself
 * (-ffp-contract=off): a kernel asks for vf_fma where it wants one and
 * writes a*b+c where llama.cpp's own rounding must be kept.
 *
 * Loads take byte addresses and never dereference a typed pointer, so rows
 * may sit at any alignment (numpy views, memory maps). */
#ifndef QUANTKL_SIMD_H
#define QUANTKL_SIMD_H

#include <stdint.h>
#include <string.h>

#define QK_INLINE static inline __attribute__((always_inline))

/* ======================================================================= */
#if defined(QK_ISA_AVX512)
#include <immintrin.h>

#define QK_W 16
typedef __m512 vf;       /* float32 lanes */
typedef __m512d vd;      /* float64, half as many lanes */
typedef __mmask16 vmask; /* one bit per float lane */

QK_INLINE vf vf_set1(float a) { return _mm512_set1_ps(a); }
QK_INLINE vd vd_set1(double a) { return _mm512_set1_pd(a); }
QK_INLINE vf vf_load_f32(const void *p) { return _mm512_loadu_ps(p); }
QK_INLINE vf vf_load_f16(const void *p) { return _mm512_cvtph_ps(_mm256_loadu_si256(p)); }
QK_INLINE vf vf_load_bf16(const void *p)
{
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p)), 16));
}
QK_INLINE vf vf_load_u16(const void *p)
{
    return _mm512_cvtepi32_ps(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p)));
}
QK_INLINE void vf_store(float *p, vf a) { _mm512_storeu_ps(p, a); }
/* Packing: vf_store_packed stores the lanes vm_pack's mask selects from p
 * on, in order, and may write anything up to p + QK_W. Here the register
 * form of vcompressps: its memory form is microcoded on Zen 4. */
typedef __mmask16 vpack;
QK_INLINE vpack vm_pack(vmask m) { return m; }
QK_INLINE void vf_store_packed(float *p, vpack k, vf a)
{
    _mm512_storeu_ps(p, _mm512_maskz_compress_ps(k, a));
}
QK_INLINE vf vf_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
QK_INLINE vd vd_fma(vd a, vd b, vd c) { return _mm512_fmadd_pd(a, b, c); }
/* max/min return b where a is NaN: a NaN never becomes the running max. */
QK_INLINE vf vf_max(vf a, vf b) { return _mm512_max_ps(a, b); }
QK_INLINE vf vf_min(vf a, vf b) { return _mm512_min_ps(a, b); }
QK_INLINE vd vd_max(vd a, vd b) { return _mm512_max_pd(a, b); }
QK_INLINE vmask vf_gt(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
QK_INLINE vmask vf_eq(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
QK_INLINE vmask vf_ge(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
QK_INLINE vmask vf_not_lt(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_NLT_UQ); }
QK_INLINE vmask vm_and(vmask a, vmask b) { return a & b; }
QK_INLINE vmask vm_or(vmask a, vmask b) { return a | b; }
QK_INLINE vmask vm_andnot(vmask a, vmask b) { return a & (vmask)~b; }
QK_INLINE vmask vm_none(void) { return 0; }
QK_INLINE vmask vm_all(void) { return 0xFFFF; }
QK_INLINE vmask vm_first(int n) { return (vmask)((1u << n) - 1); }
QK_INLINE unsigned vm_bits(vmask m) { return m; }
QK_INLINE vf vf_keep(vmask m, vf a) { return _mm512_maskz_mov_ps(m, a); }
QK_INLINE vf vf_select(vmask m, vf a, vf b) { return _mm512_mask_blend_ps(m, b, a); }
QK_INLINE vd vf_lo_pd(vf a) { return _mm512_cvtps_pd(_mm512_castps512_ps256(a)); }
QK_INLINE vd vf_hi_pd(vf a)
{
    return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
}
QK_INLINE vd vd_round_f32(vd a) { return _mm512_cvtps_pd(_mm512_cvtpd_ps(a)); }
/* a where the low (high) half of a float mask is set, else 0 */
QK_INLINE vd vd_keep_lo(vmask m, vd a) { return _mm512_maskz_mov_pd((__mmask8)m, a); }
QK_INLINE vd vd_keep_hi(vmask m, vd a) { return _mm512_maskz_mov_pd((__mmask8)(m >> 8), a); }
QK_INLINE float vf_hmax(vf a) { return _mm512_reduce_max_ps(a); }
QK_INLINE float vf_hmin(vf a) { return _mm512_reduce_min_ps(a); }
QK_INLINE double vd_hsum(vd a) { return _mm512_reduce_add_pd(a); }
QK_INLINE vf vf_round(vf a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
QK_INLINE vd vd_round(vd a) { return _mm512_roundscale_pd(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
/* a * 2^k for whole-valued k within the normal range */
QK_INLINE vf vf_scale2(vf a, vf k) { return _mm512_scalef_ps(a, k); }
QK_INLINE vd vd_scale2(vd a, vd k) { return _mm512_scalef_pd(a, k); }
/* Stores round-to-nearest-even(a) as uint16, keeping the low 16 bits as a
 * C cast from int would; 0 in lanes outside m. */
QK_INLINE void vf_store_u16(void *p, vf a, vmask m)
{
    _mm256_storeu_si256(p, _mm512_cvtepi32_epi16(_mm512_maskz_cvtps_epi32(m, a)));
}

/* ======================================================================= */
#elif defined(QK_ISA_AVX2)
#include <immintrin.h>

#define QK_W 8
typedef __m256 vf;
typedef __m256d vd;
typedef __m256 vmask; /* all-ones lanes */

QK_INLINE vf vf_set1(float a) { return _mm256_set1_ps(a); }
QK_INLINE vd vd_set1(double a) { return _mm256_set1_pd(a); }
QK_INLINE vf vf_load_f32(const void *p) { return _mm256_loadu_ps(p); }
QK_INLINE vf vf_load_f16(const void *p) { return _mm256_cvtph_ps(_mm_loadu_si128(p)); }
QK_INLINE vf vf_load_bf16(const void *p)
{
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(p)), 16));
}
QK_INLINE vf vf_load_u16(const void *p)
{
    return _mm256_cvtepi32_ps(_mm256_cvtepu16_epi32(_mm_loadu_si128(p)));
}
QK_INLINE void vf_store(float *p, vf a) { _mm256_storeu_ps(p, a); }
QK_INLINE vf vf_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
QK_INLINE vd vd_fma(vd a, vd b, vd c) { return _mm256_fmadd_pd(a, b, c); }
QK_INLINE vf vf_max(vf a, vf b) { return _mm256_max_ps(a, b); }
QK_INLINE vf vf_min(vf a, vf b) { return _mm256_min_ps(a, b); }
QK_INLINE vd vd_max(vd a, vd b) { return _mm256_max_pd(a, b); }
QK_INLINE vmask vf_gt(vf a, vf b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
QK_INLINE vmask vf_eq(vf a, vf b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
QK_INLINE vmask vf_ge(vf a, vf b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
QK_INLINE vmask vf_not_lt(vf a, vf b) { return _mm256_cmp_ps(a, b, _CMP_NLT_UQ); }
QK_INLINE vmask vm_and(vmask a, vmask b) { return _mm256_and_ps(a, b); }
QK_INLINE vmask vm_or(vmask a, vmask b) { return _mm256_or_ps(a, b); }
QK_INLINE vmask vm_andnot(vmask a, vmask b) { return _mm256_andnot_ps(b, a); }
QK_INLINE vmask vm_none(void) { return _mm256_setzero_ps(); }
QK_INLINE vmask vm_all(void) { return _mm256_castsi256_ps(_mm256_set1_epi32(-1)); }
QK_INLINE vmask vm_first(int n)
{
    return _mm256_castsi256_ps(
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
}
QK_INLINE unsigned vm_bits(vmask m) { return (unsigned)_mm256_movemask_ps(m); }
/* Packing as a permutation: each half's lane indices from a 16-entry table
 * (one byte per selected lane, in order), the high half's shifted past the
 * low half's. Integer work the FP pipes never see; BMI2's pext would be
 * shorter but is microcoded on Zen 1 and 2. */
typedef __m256i vpack;
QK_INLINE vpack vm_pack(vmask m)
{
    static const uint32_t nibble[16] = {0x0, 0x0, 0x1, 0x100, 0x2, 0x200, 0x201, 0x20100,
                                        0x3, 0x300, 0x301, 0x30100, 0x302, 0x30200, 0x30201,
                                        0x3020100};
    const unsigned b = vm_bits(m), lo = b & 15u, hi = b >> 4;
    const uint64_t idx =
        nibble[lo] | (uint64_t)(nibble[hi] + 0x04040404u) << (8 * __builtin_popcount(lo));
    return _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)idx));
}
QK_INLINE void vf_store_packed(float *p, vpack k, vf a)
{
    _mm256_storeu_ps(p, _mm256_permutevar8x32_ps(a, k));
}
QK_INLINE vf vf_keep(vmask m, vf a) { return _mm256_and_ps(m, a); }
QK_INLINE vf vf_select(vmask m, vf a, vf b) { return _mm256_blendv_ps(b, a, m); }
QK_INLINE vd vf_lo_pd(vf a) { return _mm256_cvtps_pd(_mm256_castps256_ps128(a)); }
QK_INLINE vd vf_hi_pd(vf a) { return _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)); }
QK_INLINE vd vd_round_f32(vd a) { return _mm256_cvtps_pd(_mm256_cvtpd_ps(a)); }
QK_INLINE vd vd_keep_lo(vmask m, vd a)
{
    return _mm256_and_pd(_mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm_castps_si128(_mm256_castps256_ps128(m)))), a);
}
QK_INLINE vd vd_keep_hi(vmask m, vd a)
{
    return _mm256_and_pd(_mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm_castps_si128(_mm256_extractf128_ps(m, 1)))), a);
}
QK_INLINE float vf_hmax(vf a)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}
QK_INLINE float vf_hmin(vf a)
{
    __m128 m = _mm_min_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_min_ss(m, _mm_movehdup_ps(m)));
}
QK_INLINE double vd_hsum(vd a)
{
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}
QK_INLINE vf vf_round(vf a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
QK_INLINE vd vd_round(vd a) { return _mm256_round_pd(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
QK_INLINE vf vf_scale2(vf a, vf k)
{
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(a, _mm256_castsi256_ps(e));
}
QK_INLINE vd vd_scale2(vd a, vd k)
{
    const __m256i e = _mm256_slli_epi64(
        _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_cvtpd_epi32(k)), _mm256_set1_epi64x(1023)), 52);
    return _mm256_mul_pd(a, _mm256_castsi256_pd(e));
}
QK_INLINE void vf_store_u16(void *p, vf a, vmask m)
{
    __m256i c = _mm256_and_si256(_mm256_cvtps_epi32(a), _mm256_castps_si256(m));
    c = _mm256_and_si256(c, _mm256_set1_epi32(0xFFFF)); /* no saturation: a C cast keeps the low bits */
    _mm_storeu_si128(p, _mm_packus_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1)));
}

/* ======================================================================= */
#else /* portable */
#include <math.h>

#include "rowstate.h"

#define QK_W 4
typedef float vf __attribute__((vector_size(16)));
typedef double vd __attribute__((vector_size(16)));
typedef int32_t vi __attribute__((vector_size(16)));
typedef int64_t vl __attribute__((vector_size(16)));
typedef vi vmask; /* all-ones lanes */

QK_INLINE vf vf_set1(float a) { return (vf){a, a, a, a}; }
QK_INLINE vd vd_set1(double a) { return (vd){a, a}; }
QK_INLINE vf vf_load_f32(const void *p)
{
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}
QK_INLINE vf vf_load_f16(const void *p)
{
    uint16_t h[4];
    memcpy(h, p, sizeof h);
    return (vf){qk_f16_to_float(h[0]), qk_f16_to_float(h[1]),
                qk_f16_to_float(h[2]), qk_f16_to_float(h[3])};
}
QK_INLINE vf vf_load_bf16(const void *p)
{
    uint16_t h[4];
    memcpy(h, p, sizeof h);
    const vi bits = {(int32_t)((uint32_t)h[0] << 16), (int32_t)((uint32_t)h[1] << 16),
                     (int32_t)((uint32_t)h[2] << 16), (int32_t)((uint32_t)h[3] << 16)};
    return (vf)bits;
}
QK_INLINE vf vf_load_u16(const void *p)
{
    uint16_t h[4];
    memcpy(h, p, sizeof h);
    return (vf){h[0], h[1], h[2], h[3]};
}
QK_INLINE void vf_store(float *p, vf a) { memcpy(p, &a, sizeof a); }
QK_INLINE vf vf_fma(vf a, vf b, vf c) { return a * b + c; }
QK_INLINE vd vd_fma(vd a, vd b, vd c) { return a * b + c; }
QK_INLINE vf vf_select(vmask m, vf a, vf b) { return (vf)((m & (vi)a) | (~m & (vi)b)); }
QK_INLINE vf vf_keep(vmask m, vf a) { return (vf)(m & (vi)a); }
QK_INLINE vf vf_max(vf a, vf b) { return vf_select(a > b, a, b); }
QK_INLINE vf vf_min(vf a, vf b) { return vf_select(a < b, a, b); }
QK_INLINE vd vd_max(vd a, vd b) { return (vd)(((a > b) & (vl)a) | (~(a > b) & (vl)b)); }
QK_INLINE vmask vf_gt(vf a, vf b) { return a > b; }
QK_INLINE vmask vf_eq(vf a, vf b) { return a == b; }
QK_INLINE vmask vf_ge(vf a, vf b) { return a >= b; }
QK_INLINE vmask vf_not_lt(vf a, vf b) { return ~(a < b); }
QK_INLINE vmask vm_and(vmask a, vmask b) { return a & b; }
QK_INLINE vmask vm_or(vmask a, vmask b) { return a | b; }
QK_INLINE vmask vm_andnot(vmask a, vmask b) { return a & ~b; }
QK_INLINE vmask vm_none(void) { return (vmask){0, 0, 0, 0}; }
QK_INLINE vmask vm_all(void) { return (vmask){-1, -1, -1, -1}; }
QK_INLINE vmask vm_first(int n) { return (vi){0, 1, 2, 3} < (vi){n, n, n, n}; }
QK_INLINE unsigned vm_bits(vmask m)
{
    return (m[0] & 1u) | (m[1] & 2u) | (m[2] & 4u) | (m[3] & 8u);
}
typedef unsigned vpack;
QK_INLINE vpack vm_pack(vmask m) { return vm_bits(m); }
/* lane by lane, without a branch: an unselected lane's store is
 * overwritten by the next one's */
QK_INLINE void vf_store_packed(float *p, vpack k, vf a)
{
    unsigned n = 0;
    for (int l = 0; l < 4; l++) {
        p[n] = a[l];
        n += k >> l & 1u;
    }
}
QK_INLINE vd vf_lo_pd(vf a) { return (vd){a[0], a[1]}; }
QK_INLINE vd vf_hi_pd(vf a) { return (vd){a[2], a[3]}; }
QK_INLINE vd vd_round_f32(vd a) { return (vd){(float)a[0], (float)a[1]}; }
QK_INLINE vd vd_keep_lo(vmask m, vd a) { return (vd)((vl){m[0], m[1]} & (vl)a); }
QK_INLINE vd vd_keep_hi(vmask m, vd a) { return (vd)((vl){m[2], m[3]} & (vl)a); }
QK_INLINE float vf_hmax(vf a)
{
    const float x = a[0] > a[1] ? a[0] : a[1], y = a[2] > a[3] ? a[2] : a[3];
    return x > y ? x : y;
}
QK_INLINE float vf_hmin(vf a)
{
    const float x = a[0] < a[1] ? a[0] : a[1], y = a[2] < a[3] ? a[2] : a[3];
    return x < y ? x : y;
}
QK_INLINE double vd_hsum(vd a) { return a[0] + a[1]; }
/* Adding and taking away 1.5 * 2^23 (2^52) rounds to nearest even for the
 * small magnitudes exp feeds in; nothing here is built with fast-math. */
QK_INLINE vf vf_round(vf a) { return (a + vf_set1(12582912.0f)) - vf_set1(12582912.0f); }
QK_INLINE vd vd_round(vd a) { return (a + vd_set1(6755399441055744.0)) - vd_set1(6755399441055744.0); }
QK_INLINE vf vf_scale2(vf a, vf k)
{
    const vi e = (__builtin_convertvector(k, vi) + 127) << 23;
    return a * (vf)e;
}
QK_INLINE vd vd_scale2(vd a, vd k)
{
    const vl e = (__builtin_convertvector(k, vl) + 1023) << 52;
    return a * (vd)e;
}
QK_INLINE void vf_store_u16(void *p, vf a, vmask m)
{
    uint16_t c[4];
    for (int l = 0; l < 4; l++)
        c[l] = m[l] ? (uint16_t)lrintf(a[l]) : 0;
    memcpy(p, c, sizeof c);
}
#endif

#endif
