/* The compiled copies of the kernel families (one per instruction set) and the
 * process-wide choice among them. */
#ifndef QUANTKL_DISPATCH_H
#define QUANTKL_DISPATCH_H

#include "quantkl.h"

/* Declares the entry points of the kernels built for one ISA. */
#define QK_DECLARE_PATH(isa)                                                                   \
    void qk_score_llama_logits_##isa(const uint16_t *, const void *, int, ptrdiff_t, int64_t,  \
                                     int64_t, int, qk_row *);                                  \
    void qk_score_logits_logits_##isa(const void *, int, ptrdiff_t, const void *, int,         \
                                      ptrdiff_t, int64_t, int64_t, int, qk_row *);             \
    void qk_score_llama_llama_##isa(const uint16_t *, const uint16_t *, int64_t, int64_t, int, \
                                    qk_row *);                                                 \
    int qk_encode_llama_row_##isa(const float *, ptrdiff_t, int64_t, int64_t, uint16_t *,      \
                                  double *);                                                   \
    void qk_score_sparse_logits_##isa(const qk_sparse_header *, const int32_t *, const float *, \
                                      const void *, int, ptrdiff_t, int64_t, int64_t, int,     \
                                      qk_row *, qk_bounds *);                                  \
    void qk_score_sparse_sparse_##isa(const qk_sparse_header *, const int32_t *, const float *, \
                                      const qk_sparse_header *, const int32_t *, const float *, \
                                      int64_t, int64_t, int, qk_row *, qk_bounds *);           \
    int qk_sparse_measure_##isa(const float *, ptrdiff_t, int64_t, int64_t,                   \
                                qk_sparse_header *);                                           \
    void qk_sparse_fill_##isa(const float *, ptrdiff_t, int64_t, const qk_sparse_header *,     \
                              int32_t *, float *);

QK_DECLARE_PATH(portable)
#ifdef QK_HAVE_AVX2
QK_DECLARE_PATH(avx2)
#endif
#ifdef QK_HAVE_AVX512
QK_DECLARE_PATH(avx512)
#endif

int qk_path_count(void);
const char *qk_path_name(int i);
int qk_path_supported(int i);
int qk_select_path(int i); /* 0 on success, -1 if this CPU lacks the path */
const char *qk_current_path(void);

#endif
