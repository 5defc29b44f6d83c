/* The benchmarks' memory yardstick: rows read by nothing but loads. A kernel
 * that streams its rows from memory once cannot read bytes faster than this
 * loop on the same threads, so quantkl bench shows each kernel's bytes per
 * second as a fraction of it: near 1, the kernel waits on memory; well below,
 * on its arithmetic. */
#ifndef QUANTKL_READ_LOOP_H
#define QUANTKL_READ_LOOP_H

#include <stdint.h>

/* XOR of the row's 64-bit words (its last bytes, past a whole word, XORed
 * into the low byte), so that no load can be left out. */
uint64_t qk_read_loop(const void *row, int64_t bytes);

#endif
