/* The encoder: float32 logits into llama.cpp's uint16 dump rows. */
#include "kernel_parts.h"

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
#ifndef QK_FEW_COPIES
    if (stride == 1)
        return encode_row(x, 1, n_vocab, tok, row, nll);
#endif
    return encode_row(x, stride, n_vocab, tok, row, nll);
}
