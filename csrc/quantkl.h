/*
 * quantkl C core: score one row (one token position) of a base distribution P
 * against another distribution Q over a vocabulary of n_vocab entries.
 *
 * Design, in the manner of sklearn/_loss:
 *  - every function works on ONE row and knows nothing of Python, threads or
 *    files; the Cython layer loops over rows with prange, GIL released;
 *  - a row is read in place, never copied: a float side is streamed once for
 *    its max and exp sum (block by block, the sum rescaled when the max
 *    grows), then the KL terms are summed on a second read from cache;
 *  - arithmetic is float32 SIMD with every term widened and summed in
 *    float64; each row's KLD is within 1e-7 + 1e-6*KLD nats of
 *    quantkl/reference.py, the float64 twin of every function here;
 *  - each kernel family (llama_logits.c, logits_logits.c, llama_llama.c,
 *    encode.c) is written once and compiled for AVX-512, AVX2+FMA and a
 *    portable baseline; dispatch.c picks the best the CPU runs;
 *  - bad data (NaN, +inf, a row with no finite logit, a corrupt row header)
 *    never aborts: it is reported in qk_row.status for Python to raise on.
 */
#ifndef QUANTKL_H
#define QUANTKL_H

#include <stddef.h>
#include <stdint.h>

#define QK_TOPK_MAX 10

/* Input element types of a logit row. */
enum qk_dtype { QK_F32 = 0, QK_F16 = 1, QK_BF16 = 2 };

/* QK_LLAMA: llama-perplexity's sum (base terms with log p <= -16 dropped).
 * QK_EXACT: the full sum; code 0 of a base dump is the clipped tail. */
enum qk_mode { QK_LLAMA = 0, QK_EXACT = 1 };
/* A flag or-ed into the mode: also compute the reverse KL(Q||P) (qk_row.rkl),
 * at the cost of an exp per entry where the kernel has none to share. */
#define QK_REVERSE 2
/* Another: also the Jensen-Shannon divergence (qk_row.js), at the cost of an
 * exp, an expm1 and a log per entry. */
#define QK_JS 4

/* Bits of qk_row.status. */
enum qk_status {
    QK_OK = 0,
    QK_P_NONFINITE = 1,   /* NaN or +inf among the base logits */
    QK_Q_NONFINITE = 2,   /* NaN or +inf among the other logits */
    QK_P_EMPTY = 4,       /* every base logit is -inf */
    QK_Q_EMPTY = 8,       /* every other logit is -inf */
    QK_P_BAD_HEADER = 16, /* base llama row: scale/min_log_prob not finite, scale < 0 or
                             min_log_prob > 0 */
    QK_Q_BAD_HEADER = 32, /* other llama row: same */
    QK_P_CORRUPT = 64,    /* base llama row that no llama.cpp row can be: see qk_row_corrupt */
    QK_Q_CORRUPT = 128,   /* other llama row: same */
    QK_READ_FAULT = 256   /* a row's memory could not be read (SIGBUS: a mapped file shrank) */
};

typedef struct {
    double kld;    /* KL(P||Q) in nats */
    double nll_p;  /* -log P(actual next token), nats */
    double nll_q;  /* -log Q(actual next token), nats */
    float nll_q_llama; /* nll_q as llama-perplexity stores it: float(float(max +
                          float(lse)) - logit); what llama mode prints PPL from */
    int64_t top_p; /* first index of P's largest probability */
    int64_t top_q; /* first index of Q's largest probability */
    int32_t rank;  /* rank of top_p in Q (0 = same top), QK_TOPK_MAX if not in Q's top 10 */
    int32_t status;
    double p_top;  /* P's largest probability, the top-1 token's */
    double rkl;    /* KL(Q||P) in nats with QK_REVERSE (else 0): the full sum, the same in
                      both modes; a dump's code 0 (either side's) is its clipped tail */
    double js;     /* JS(P, Q) = (KL(P||M) + KL(Q||M)) / 2, M = (P + Q) / 2, in nats with QK_JS
                      (else 0): the full sum, the same in both modes, a dump's code 0
                      its clipped tail (the base's where q > 0) */
    uint8_t overlap[QK_TOPK_MAX]; /* overlap[k - 1] = |top_k(P) ∩ top_k(Q)|, k = 1 .. 10 (ties
                                     in index order, as the tops) */
} qk_row;

/* Number of uint16 values in one llama row: 2 float32 header + codes + pad. */
static inline int64_t qk_llama_row_width(int64_t n_vocab) { return 2 * ((n_vocab + 1) / 2) + 4; }

/* P: llama uint16 row (contiguous, qk_llama_row_width values).
 * Q: logits of q_dtype, element stride q_stride (in elements). */
void qk_score_llama_logits(const uint16_t *p_row, const void *q, int q_dtype, ptrdiff_t q_stride,
                           int64_t n_vocab, int64_t tok, int mode, qk_row *out);

/* P and Q: logits, each of its own dtype and stride. */
void qk_score_logits_logits(const void *p, int p_dtype, ptrdiff_t p_stride, const void *q,
                            int q_dtype, ptrdiff_t q_stride, int64_t n_vocab, int64_t tok,
                            int mode, qk_row *out);

/* P and Q: llama uint16 rows. Q's code 0 is its clipped tail (docs/statistics.md). */
void qk_score_llama_llama(const uint16_t *p_row, const uint16_t *q_row, int64_t n_vocab,
                          int64_t tok, int mode, qk_row *out);

/* A row of a precise sparse dump (.kldp): the base's float32 logits at the
 * entries it stores (llama mode's kept entries, and the row's ten largest
 * where fewer pass the cut), in index order, and exact scalars of the rest
 * (its "tail"). log p = (x - x_max) - lse in float64, with no rounded value.
 * The layout is the file's (docs/formats.md): 40 bytes, little-endian. */
typedef struct {
    uint32_t n_stored;   /* entries stored */
    uint32_t tail_count; /* entries not stored: n_vocab - n_stored */
    float x_max;         /* the row's largest logit */
    float x_tok;         /* the scored token's logit */
    float tail_min;      /* the smallest logit not stored (+inf when every entry is stored) */
    float tail_max;      /* the largest logit not stored (-inf when every entry is stored) */
    double lse;          /* log sum exp(x - x_max) over the row, from float64 exps */
    double tail_lse;     /* log of the tail's probability mass, summed over the tail itself in
                            float64 (-inf: no tail, or no mass in it) */
} qk_sparse_header;

/* The upper ends of intervals a sparse row leaves (the lower ends are
 * qk_row.kld, .rkl and .js): what the tail's unknown entries allow. */
typedef struct {
    double kld_hi; /* exact mode; llama mode's sum is exact: kld_hi = kld */
    double rkl_hi;
    double js_hi;
} qk_bounds;

/* P: a sparse row (header, its indices and logits); Q: logits of q_dtype,
 * element stride q_stride. llama mode's KL is the float-logits one; exact
 * mode, the reverse KL and JS are intervals [out, bounds]. */
void qk_score_sparse_logits(const qk_sparse_header *h, const int32_t *idx, const float *x,
                            const void *q, int q_dtype, ptrdiff_t q_stride, int64_t n_vocab,
                            int64_t tok, int mode, qk_row *out, qk_bounds *bounds);

/* P and Q: sparse rows. Where Q stores no value, its log q is known only
 * within its tail's range: llama mode takes the tail's average there, exact
 * mode gives the interval (no reverse KL or JS). */
void qk_score_sparse_sparse(const qk_sparse_header *hp, const int32_t *ip, const float *xp,
                            const qk_sparse_header *hq, const int32_t *iq, const float *xq,
                            int64_t n_vocab, int64_t tok, int mode, qk_row *out,
                            qk_bounds *bounds);

/* A sparse row from float32 logits, in two steps: qk_sparse_measure fills
 * the header (returns a qk_status, QK_P_* bits, and nothing else on
 * failure), qk_sparse_fill writes its h->n_stored indices and logits. */
int qk_sparse_measure(const float *x, ptrdiff_t stride, int64_t n_vocab, int64_t tok,
                      qk_sparse_header *h);
void qk_sparse_fill(const float *x, ptrdiff_t stride, int64_t n_vocab, const qk_sparse_header *h,
                    int32_t *idx, float *val);

/* Encode float32 logits into a llama uint16 row exactly as llama-perplexity
 * --kl-divergence-base does. *nll = the base NLL of token tok (float32 maths,
 * as llama.cpp). Returns a qk_status (QK_P_* bits) and writes nothing else
 * on failure. */
int qk_encode_llama_row(const float *x, ptrdiff_t stride, int64_t n_vocab, int64_t tok,
                        uint16_t *row, double *nll);

#endif
