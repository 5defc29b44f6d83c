#include "llama_loop.h"

#include <math.h>
#include <string.h>

double qk_llama_loop_kld(const uint16_t *base_row, const float *logits, int64_t n_vocab)
{
    /* The other model's normaliser: max, then a float expf per entry
     * summed in double, held as float. */
    float max_logit = logits[0];
    for (int64_t i = 1; i < n_vocab; i++)
        if (logits[i] > max_logit)
            max_logit = logits[i];
    double sum_exp = 0.0;
    for (int64_t i = 0; i < n_vocab; i++)
        sum_exp += expf(logits[i] - max_logit);
    const float norm = max_logit + (float)log(sum_exp);
    float header[2];
    memcpy(header, base_row, sizeof header);
    const uint16_t *codes = base_row + 4;
    /* Every decoded base log-probability above -16 adds a float term. */
    double kld = 0.0;
    for (int64_t i = 0; i < n_vocab; i++) {
        const float log_p = header[0] * codes[i] + header[1];
        if (log_p > -16.f)
            kld += expf(log_p) * (log_p - logits[i] + norm);
    }
    return kld;
}

void qk_llama_loop_encode(const float *logits, int64_t n_vocab, uint16_t *row)
{
    float max_logit = logits[0], min_logit = logits[0];
    for (int64_t i = 1; i < n_vocab; i++) {
        max_logit = logits[i] > max_logit ? logits[i] : max_logit;
        min_logit = logits[i] < min_logit ? logits[i] : min_logit;
    }
    if (min_logit < max_logit - 16)
        min_logit = max_logit - 16;
    double sum_exp = 0.0;
    for (int64_t i = 0; i < n_vocab; i++)
        sum_exp += expf(logits[i] - max_logit);
    const float log_sum_exp = (float)log(sum_exp);
    const float header[2] = {(max_logit - min_logit) / 65535.f,
                             min_logit - max_logit - log_sum_exp};
    memcpy(row, header, sizeof header);
    uint16_t *codes = row + 4;
    memset(codes, 0, (size_t)(2 * ((n_vocab + 1) / 2)) * sizeof *codes);
    if (header[0] == 0)
        return;
    const float inv_scale = 1 / header[0];
    for (int64_t i = 0; i < n_vocab; i++)
        if (logits[i] > min_logit)
            codes[i] = (uint16_t)lrintf(inv_scale * (logits[i] - min_logit));
}
