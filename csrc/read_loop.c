#include "read_loop.h"

#include <string.h>

uint64_t qk_read_loop(const void *row, int64_t bytes)
{
    const unsigned char *p = row;
    /* a cache line per step into four chains: loads, not the XORs, bound it */
    uint64_t x[4] = {0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 64 <= bytes; i += 64) {
        uint64_t w[8];
        memcpy(w, p + i, sizeof w);
        for (int j = 0; j < 8; j++)
            x[j & 3] ^= w[j];
    }
    for (; i + 8 <= bytes; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, sizeof w);
        x[0] ^= w;
    }
    for (; i < bytes; i++)
        x[1] ^= p[i];
    return x[0] ^ x[1] ^ x[2] ^ x[3];
}
