/* Run-time choice of the kernel path. One build runs on every x86-64 (and
 * elsewhere): each kernel family is compiled once per instruction set
 * (setup.py defines QK_HAVE_<ISA> for the copies it could build) and only
 * called when the CPU reports that set. The choice is process-wide and made
 * once; Python calls qk_select_path at import to honour QUANTKL_KERNEL. */
#define _XOPEN_SOURCE 700 /* sigjmp_buf, for guard.h */

#include "dispatch.h"

#include <string.h>

#include "guard.h"

typedef struct {
    const char *name;
    int (*supported)(void);
    void (*llama_logits)(const uint16_t *, const void *, int, ptrdiff_t, int64_t, int64_t, int,
                         qk_row *);
    void (*logits_logits)(const void *, int, ptrdiff_t, const void *, int, ptrdiff_t, int64_t,
                          int64_t, int, qk_row *);
    void (*llama_llama)(const uint16_t *, const uint16_t *, int64_t, int64_t, int, qk_row *);
    int (*encode)(const float *, ptrdiff_t, int64_t, int64_t, uint16_t *, double *);
    void (*sparse_logits)(const qk_sparse_header *, const int32_t *, const float *, const void *,
                          int, ptrdiff_t, int64_t, int64_t, int, qk_row *, qk_bounds *);
    void (*sparse_sparse)(const qk_sparse_header *, const int32_t *, const float *,
                          const qk_sparse_header *, const int32_t *, const float *, int64_t,
                          int64_t, int, qk_row *, qk_bounds *);
    int (*sparse_measure)(const float *, ptrdiff_t, int64_t, int64_t, qk_sparse_header *);
    void (*sparse_fill)(const float *, ptrdiff_t, int64_t, const qk_sparse_header *, int32_t *,
                        float *);
} qk_path;

static int always(void) { return 1; }

#ifdef QK_HAVE_AVX2
static int has_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
}
#endif

#ifdef QK_HAVE_AVX512
static int has_avx512(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
#endif

#define QK_PATH(isa, test)                                                                     \
    {#isa, test, qk_score_llama_logits_##isa, qk_score_logits_logits_##isa,                    \
     qk_score_llama_llama_##isa, qk_encode_llama_row_##isa, qk_score_sparse_logits_##isa,     \
     qk_score_sparse_sparse_##isa, qk_sparse_measure_##isa, qk_sparse_fill_##isa}

/* Best first: the default is the first path the CPU supports. */
static const qk_path paths[] = {
#ifdef QK_HAVE_AVX512
    QK_PATH(avx512, has_avx512),
#endif
#ifdef QK_HAVE_AVX2
    QK_PATH(avx2, has_avx2),
#endif
    QK_PATH(portable, always),
};

#define N_PATHS ((int)(sizeof paths / sizeof paths[0]))

static const qk_path *current = 0;

static const qk_path *path(void)
{
    if (!current) {
        int i = 0;
        while (!paths[i].supported())
            i++; /* the last path is always supported */
        current = &paths[i];
    }
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

static void read_fault(qk_row *out)
{
    memset(out, 0, sizeof *out);
    out->status = QK_READ_FAULT;
}

void qk_score_llama_logits(const uint16_t *p_row, const void *q, int q_dtype, ptrdiff_t q_stride,
                           int64_t n_vocab, int64_t tok, int mode, qk_row *out)
{
    const qk_path *k = path();
    QK_GUARDED(k->llama_logits(p_row, q, q_dtype, q_stride, n_vocab, tok, mode, out),
               read_fault(out));
}

void qk_score_logits_logits(const void *p, int p_dtype, ptrdiff_t p_stride, const void *q,
                            int q_dtype, ptrdiff_t q_stride, int64_t n_vocab, int64_t tok,
                            int mode, qk_row *out)
{
    const qk_path *k = path();
    QK_GUARDED(k->logits_logits(p, p_dtype, p_stride, q, q_dtype, q_stride, n_vocab, tok, mode,
                                out),
               read_fault(out));
}

void qk_score_llama_llama(const uint16_t *p_row, const uint16_t *q_row, int64_t n_vocab,
                          int64_t tok, int mode, qk_row *out)
{
    const qk_path *k = path();
    QK_GUARDED(k->llama_llama(p_row, q_row, n_vocab, tok, mode, out), read_fault(out));
}

int qk_encode_llama_row(const float *x, ptrdiff_t stride, int64_t n_vocab, int64_t tok,
                        uint16_t *row, double *nll)
{
    const qk_path *k = path();
    int status = QK_OK;
    QK_GUARDED(status = k->encode(x, stride, n_vocab, tok, row, nll), status = QK_READ_FAULT);
    return status;
}

static void sparse_read_fault(qk_row *out, qk_bounds *bounds)
{
    read_fault(out);
    memset(bounds, 0, sizeof *bounds);
}

void qk_score_sparse_logits(const qk_sparse_header *h, const int32_t *idx, const float *x,
                            const void *q, int q_dtype, ptrdiff_t q_stride, int64_t n_vocab,
                            int64_t tok, int mode, qk_row *out, qk_bounds *bounds)
{
    const qk_path *k = path();
    QK_GUARDED(k->sparse_logits(h, idx, x, q, q_dtype, q_stride, n_vocab, tok, mode, out, bounds),
               sparse_read_fault(out, bounds));
}

void qk_score_sparse_sparse(const qk_sparse_header *hp, const int32_t *ip, const float *xp,
                            const qk_sparse_header *hq, const int32_t *iq, const float *xq,
                            int64_t n_vocab, int64_t tok, int mode, qk_row *out,
                            qk_bounds *bounds)
{
    const qk_path *k = path();
    QK_GUARDED(k->sparse_sparse(hp, ip, xp, hq, iq, xq, n_vocab, tok, mode, out, bounds),
               sparse_read_fault(out, bounds));
}

int qk_sparse_measure(const float *x, ptrdiff_t stride, int64_t n_vocab, int64_t tok,
                      qk_sparse_header *h)
{
    const qk_path *k = path();
    int status = QK_OK;
    QK_GUARDED(status = k->sparse_measure(x, stride, n_vocab, tok, h), status = QK_READ_FAULT);
    return status;
}

void qk_sparse_fill(const float *x, ptrdiff_t stride, int64_t n_vocab, const qk_sparse_header *h,
                    int32_t *idx, float *val)
{
    const qk_path *k = path();
    QK_GUARDED(k->sparse_fill(x, stride, n_vocab, h, idx, val), (void)0);
}
