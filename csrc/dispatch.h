/* Kernel paths (scalar, SIMD variants) and the process-wide choice among them. */
#ifndef QUANTKL_DISPATCH_H
#define QUANTKL_DISPATCH_H

#include "quantkl.h"

typedef void (*qk_score_llama_logits_fn)(const uint16_t *, const void *, int, ptrdiff_t, int64_t,
                                         int32_t, int, qk_row *);
typedef void (*qk_score_logits_logits_fn)(const void *, int, ptrdiff_t, const void *, int,
                                          ptrdiff_t, int64_t, int32_t, int, qk_row *);
typedef void (*qk_score_llama_llama_fn)(const uint16_t *, const uint16_t *, int64_t, int32_t, int,
                                        qk_row *);
typedef int (*qk_encode_fn)(const float *, ptrdiff_t, int64_t, int32_t, uint16_t *, double *);

void qk_score_llama_logits_scalar(const uint16_t *, const void *, int, ptrdiff_t, int64_t, int32_t,
                                  int, qk_row *);
void qk_score_logits_logits_scalar(const void *, int, ptrdiff_t, const void *, int, ptrdiff_t,
                                   int64_t, int32_t, int, qk_row *);
void qk_score_llama_llama_scalar(const uint16_t *, const uint16_t *, int64_t, int32_t, int,
                                 qk_row *);
int qk_encode_llama_row_scalar(const float *, ptrdiff_t, int64_t, int32_t, uint16_t *, double *);

void qk_score_llama_logits_avx2(const uint16_t *, const void *, int, ptrdiff_t, int64_t, int32_t,
                                int, qk_row *);

void qk_score_logits_logits_avx2(const void *, int, ptrdiff_t, const void *, int, ptrdiff_t,
                                 int64_t, int32_t, int, qk_row *);
void qk_score_llama_llama_avx2(const uint16_t *, const uint16_t *, int64_t, int32_t, int, qk_row *);
int qk_encode_llama_row_avx2(const float *, ptrdiff_t, int64_t, int32_t, uint16_t *, double *);

int qk_path_count(void);
const char *qk_path_name(int i);
int qk_path_supported(int i);
int qk_select_path(int i); /* 0 on success, -1 if this CPU lacks the path */
const char *qk_current_path(void);

#endif
