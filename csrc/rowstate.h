/* Per-row running state shared by every kernel path. */
#ifndef QUANTKL_ROWSTATE_H
#define QUANTKL_ROWSTATE_H

#include <math.h>

#include "quantkl.h"

/* Online log-sum-exp: sum holds sum(exp(v - max)); when a larger value
 * arrives the sum is rescaled, so one read of a row gives its normaliser. */
typedef struct {
    double max;
    double sum;
} qk_lse;

#define QK_LSE_INIT {-INFINITY, 0.0}

static inline void qk_lse_push(qk_lse *a, double v)
{
    if (v > a->max) {
        a->sum = a->sum * exp(a->max - v) + 1.0;
        a->max = v;
    } else if (v > -INFINITY) {
        a->sum += exp(v - a->max);
    }
}

static inline double qk_lse_value(const qk_lse *a) { return a->max + log(a->sum); }

/* llama.cpp holds max + log(sum) in float32 and uses that for every term of
 * the row: rounding it the same way is what llama mode means by "the same
 * numbers to the printed digit" (it moves a row's KLD by up to 1e-6 nats). */
static inline double qk_lse_value_llama(const qk_lse *a)
{
    const float m = (float)a->max, l = (float)log(a->sum);
    return (float)(m + l);
}

/* llama.cpp's float32 NLL of a token: float(lse) - logit, in float. */
static inline double qk_nll_llama(double lse, double logit) { return (float)((float)lse - (float)logit); }

/* llama.cpp's float32 decoding of a base row's token: -(scale*code + min). */
static inline double qk_nll_base_llama(double scale, uint16_t code, double min_log_prob)
{
    const float lp = (float)scale * (float)code;
    return -(float)(lp + (float)min_log_prob);
}

/* The QK_TOPK_MAX largest values seen so far, largest first; equal values
 * keep index order, so idx[0] is the first index of the maximum. */
typedef struct {
    int n;
    double val[QK_TOPK_MAX];
    int64_t idx[QK_TOPK_MAX];
} qk_topk;

static inline void qk_topk_push(qk_topk *t, double v, int64_t i)
{
    if (t->n == QK_TOPK_MAX && !(v > t->val[QK_TOPK_MAX - 1]))
        return;
    int j = t->n < QK_TOPK_MAX ? t->n++ : QK_TOPK_MAX - 1;
    while (j > 0 && t->val[j - 1] < v) {
        t->val[j] = t->val[j - 1];
        t->idx[j] = t->idx[j - 1];
        j--;
    }
    t->val[j] = v;
    t->idx[j] = i;
}

static inline int32_t qk_topk_rank(const qk_topk *t, int64_t i)
{
    for (int j = 0; j < t->n; j++)
        if (t->idx[j] == i)
            return j;
    return QK_TOPK_MAX;
}

/* Log-probability of each of n code-0 entries of a llama row: code 0 means
 * "at or below the clip point", so the mass the decoded entries leave of 1
 * is spread evenly over them, kept within 16 nats below the clip point
 * (rounding of the codes can make that leftover zero or negative). */
static inline double qk_tail_log_prob(double mass, double n, double min_log_prob)
{
    double c = mass > 0 ? log(mass / n) : -INFINITY;
    if (c > min_log_prob)
        c = min_log_prob;
    if (!(c > min_log_prob - 16.0))
        c = min_log_prob - 16.0;
    return c;
}

/* Smallest code whose decoded log-probability passes llama.cpp's cut
 * (scale*code + min > -16, in double as the scalar kernel tests it);
 * 65536 when no code does. Lets SIMD paths test the cut on integer codes. */
static inline int32_t qk_llama_keep_from(double scale, double min_log_prob)
{
    if (scale == 0)
        return min_log_prob > -16.0 ? 0 : 65536;
    double c = ceil((-16.0 - min_log_prob) / scale);
    int32_t k = c < 0 ? 0 : c > 65536 ? 65536 : (int32_t)c;
    while (k > 0 && scale * (k - 1) + min_log_prob > -16.0)
        k--;
    while (k <= 65535 && !(scale * k + min_log_prob > -16.0))
        k++;
    return k;
}

static inline int32_t qk_side_status(int nonfinite, double max, int32_t nonfinite_bit,
                                     int32_t empty_bit)
{
    if (nonfinite)
        return nonfinite_bit;
    return max == -INFINITY ? empty_bit : 0;
}

#endif
