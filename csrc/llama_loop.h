/* llama.cpp's own per-row loops, written here from llama.cpp's definitions (docs/formats.md) as the
 * yardstick of the benchmarks (quantkl bench times them beside the kernels,
 * so that the "x llama.cpp" ratio is measured on every user's machine).
 * Scalar, one expf per entry, float32 terms summed in double, as
 * llama-perplexity runs them. Rows must be contiguous and aligned. */
#ifndef QUANTKL_LLAMA_LOOP_H
#define QUANTKL_LLAMA_LOOP_H

#include <stdint.h>

/* KL(base || logits) of one row, llama-perplexity's --kl-divergence sum. */
double qk_llama_loop_kld(const uint16_t *base_row, const float *logits, int64_t n_vocab);

/* One row of llama-perplexity's --kl-divergence-base file. */
void qk_llama_loop_encode(const float *logits, int64_t n_vocab, uint16_t *row);

#endif
