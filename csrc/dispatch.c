/* Runtime choice of the kernel path. One build runs on every x86-64 (and
 * elsewhere): each path is compiled for its own instruction set and only
 * called when the CPU reports it. The choice is process-wide and made once
 * by qk_select_path (Python calls it at import, honouring QUANTKL_KERNEL). */
#include "dispatch.h"

typedef struct {
    const char *name;
    int (*supported)(void);
    qk_score_llama_logits_fn llama_logits;
    qk_score_logits_logits_fn logits_logits;
    qk_score_llama_llama_fn llama_llama;
    qk_encode_fn encode;
} qk_path;

static int always(void) { return 1; }

#if defined(__x86_64__) || defined(__i386__)
static int has_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
}
#endif

/* Best first: qk_select_best takes the first path the CPU supports. */
static const qk_path paths[] = {
#if defined(__x86_64__) || defined(__i386__)
    {"avx2", has_avx2, qk_score_llama_logits_avx2, qk_score_logits_logits_avx2,
     qk_score_llama_llama_avx2, qk_encode_llama_row_avx2},
#endif
    {"scalar", always, qk_score_llama_logits_scalar, qk_score_logits_logits_scalar,
     qk_score_llama_llama_scalar, qk_encode_llama_row_scalar},
};

#define N_PATHS ((int)(sizeof paths / sizeof paths[0]))

static const qk_path *current = 0;

static const qk_path *best_path(void)
{
    for (int i = 0; i < N_PATHS; i++)
        if (paths[i].supported())
            return &paths[i];
    return &paths[N_PATHS - 1];
}

static const qk_path *path(void)
{
    if (!current)
        current = best_path();
    return current;
}

int qk_path_count(void) { return N_PATHS; }

const char *qk_path_name(int i) { return i >= 0 && i < N_PATHS ? paths[i].name : 0; }

int qk_path_supported(int i) { return i >= 0 && i < N_PATHS && paths[i].supported(); }

int qk_select_path(int i)
{
    if (!qk_path_supported(i))
        return -1;
    current = &paths[i];
    return 0;
}

const char *qk_current_path(void) { return path()->name; }

void qk_score_llama_logits(const uint16_t *p_row, const void *q, int q_dtype, ptrdiff_t q_stride,
                           int64_t n_vocab, int32_t tok, int mode, qk_row *out)
{
    path()->llama_logits(p_row, q, q_dtype, q_stride, n_vocab, tok, mode, out);
}

void qk_score_logits_logits(const void *p, int p_dtype, ptrdiff_t p_stride, const void *q,
                            int q_dtype, ptrdiff_t q_stride, int64_t n_vocab, int32_t tok,
                            int mode, qk_row *out)
{
    path()->logits_logits(p, p_dtype, p_stride, q, q_dtype, q_stride, n_vocab, tok, mode, out);
}

void qk_score_llama_llama(const uint16_t *p_row, const uint16_t *q_row, int64_t n_vocab,
                          int32_t tok, int mode, qk_row *out)
{
    path()->llama_llama(p_row, q_row, n_vocab, tok, mode, out);
}

int qk_encode_llama_row(const float *x, ptrdiff_t stride, int64_t n_vocab, int32_t tok,
                        uint16_t *row, double *nll)
{
    return path()->encode(x, stride, n_vocab, tok, row, nll);
}
