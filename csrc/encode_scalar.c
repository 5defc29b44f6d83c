/* float32 logits -> llama.cpp uint16 row (SPEC §2). The arithmetic is float32
 * in llama.cpp's order, with expf summed in double, so that the rows written
 * are the bytes llama-perplexity --kl-divergence-base writes. This file must
 * be built without fast-math and without FP contraction. */
#include <math.h>
#include <string.h>

#include "quantkl.h"
#include "rowload.h"

static inline float load_f32(const float *x, ptrdiff_t stride, int64_t i)
{
    float v;
    memcpy(&v, x + (ptrdiff_t)i * stride, 4);
    return v;
}

int qk_encode_llama_row_scalar(const float *x, ptrdiff_t stride, int64_t n_vocab, int32_t tok,
                               uint16_t *row, double *nll)
{
    float max_logit = -INFINITY, min_logit = INFINITY;
    int bad = 0;
    for (int64_t i = 0; i < n_vocab; i++) {
        const float v = load_f32(x, stride, i);
        bad |= !(v < INFINITY);
        max_logit = v > max_logit ? v : max_logit;
        min_logit = v < min_logit ? v : min_logit;
    }
    if (bad)
        return QK_P_NONFINITE;
    if (max_logit == -INFINITY)
        return QK_P_EMPTY;
    min_logit = min_logit > max_logit - 16 ? min_logit : max_logit - 16;
    double sum_exp = 0.0;
    for (int64_t i = 0; i < n_vocab; i++)
        sum_exp += expf(load_f32(x, stride, i) - max_logit);
    const float log_sum_exp = (float)log(sum_exp);
    const float min_log_prob = min_logit - max_logit - log_sum_exp;
    const float scale = (max_logit - min_logit) / 65535.f;
    const float header[2] = {scale, min_log_prob};
    memcpy(row, header, sizeof header);
    uint16_t *codes = row + 4;
    const int64_t width = qk_llama_row_width(n_vocab) - 4;
    for (int64_t i = 0; i < width; i++) {
        uint16_t c = 0;
        if (scale != 0 && i < n_vocab) {
            const float v = load_f32(x, stride, i);
            if (v > min_logit) {
                const long r = lrintf((1 / scale) * (v - min_logit));
                c = (uint16_t)(r > 65535 ? 65535 : r);
            }
        }
        memcpy(codes + i, &c, 2);
    }
    *nll = max_logit + log_sum_exp - load_f32(x, stride, tok);
    return QK_OK;
}
