/* Element loads shared by the row kernels. Every load goes through memcpy:
 * rows may be misaligned or strided (numpy views), and memcpy is the one
 * portable way to read them that the compiler still turns into a plain mov. */
#ifndef QUANTKL_ROWLOAD_H
#define QUANTKL_ROWLOAD_H

#include <math.h>
#include <string.h>

#include "quantkl.h"

static inline float qk_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t expo = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    if (expo == 0x1fu) {
        bits = sign | 0x7f800000u | (mant << 13); /* inf or NaN */
    } else if (expo != 0) {
        bits = sign | ((expo + 112u) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else { /* subnormal half: value = mant * 2^-24, exact in float */
        float f = (float)mant * 5.9604644775390625e-8f;
        memcpy(&bits, &f, 4);
        bits |= sign;
    }
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

static inline float qk_bf16_to_float(uint16_t b)
{
    uint32_t bits = (uint32_t)b << 16;
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

/* Element i of a logit row of the given dtype and stride, widened to double. */
static inline double qk_load(const void *row, int dtype, ptrdiff_t stride, int64_t i)
{
    const unsigned char *base = (const unsigned char *)row;
    if (dtype == QK_F32) {
        float v;
        memcpy(&v, base + (ptrdiff_t)i * stride * 4, 4);
        return v;
    }
    uint16_t h;
    memcpy(&h, base + (ptrdiff_t)i * stride * 2, 2);
    return dtype == QK_F16 ? qk_half_to_float(h) : qk_bf16_to_float(h);
}

static inline uint16_t qk_code(const uint16_t *row, int64_t i)
{
    uint16_t c;
    memcpy(&c, row + 4 + i, 2);
    return c;
}

/* A llama row's header: log p[i] = scale * code[i] + min_log_prob. */
typedef struct {
    double scale;
    double min_log_prob;
} qk_header;

/* Returns 0 when the header is unusable (corrupt file, not a llama row). */
static inline int qk_read_header(const uint16_t *row, qk_header *h)
{
    float f[2];
    memcpy(f, row, sizeof f);
    h->scale = f[0];
    h->min_log_prob = f[1];
    return isfinite(f[0]) && isfinite(f[1]) && f[0] >= 0.0f;
}

#endif
