"""Which tasks llama-perplexity scores, in its order: a replica of the C++
random numbers it draws them with.

HellaSwag scores the first N of a shuffle (a Mersenne Twister seeded with 1
picks, N times, one task not yet picked, with C++'s uniform_int_distribution
as libstdc++ computes it), all of them shuffled when N is not given.
Winogrande and multiple choice pick N tasks by scaling the same generator's
output by 2^-32 in float32 and swapping the picked slot with the last; with
no N (or N at least the file's count) they score every task in file order.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np


class MersenneTwister:
    """std::mt19937: 32-bit outputs, seeded as C++ seeds it (init_genrand)."""

    def __init__(self, seed: int):
        self.mt = [0] * 624
        self.mt[0] = seed & 0xFFFFFFFF
        for i in range(1, 624):
            prev = self.mt[i - 1]
            self.mt[i] = (1812433253 * (prev ^ (prev >> 30)) + i) & 0xFFFFFFFF
        self.index = 624

    def __call__(self) -> int:
        if self.index >= 624:
            mt = self.mt
            for i in range(624):
                y = (mt[i] & 0x80000000) | (mt[(i + 1) % 624] & 0x7FFFFFFF)
                mt[i] = mt[(i + 397) % 624] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
            self.index = 0
        y = self.mt[self.index]
        self.index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        return y ^ (y >> 18)


def uniform_below(rng: MersenneTwister, n: int) -> int:
    """std::uniform_int_distribution(0, n - 1)(rng) as libstdc++ (GCC 11 and
    later) computes it from a 32-bit engine: Lemire's multiply-and-shift with
    rejection."""
    product = rng() * n
    low = product & 0xFFFFFFFF
    if low < n:
        threshold = (0x100000000 - n) % n
        while low < threshold:
            product = rng() * n
            low = product & 0xFFFFFFFF
    return product >> 32


def llama_task_order(n_total: int, n_tasks: int) -> List[int]:
    """The tasks llama-perplexity scores, in its order (HellaSwag's shuffle)."""
    rng = MersenneTwister(1)
    left = list(range(n_total))
    return [left.pop(uniform_below(rng, len(left))) for _ in range(min(n_tasks, n_total))]


def llama_pick_order(n_total: int, n_tasks: Optional[int]) -> List[int]:
    """The tasks llama-perplexity's Winogrande and multiple choice score, in order."""
    if n_tasks is None or n_tasks >= n_total:
        return list(range(n_total))
    rng = MersenneTwister(1)
    scale = np.float32(1.0 / 2 ** 32)
    left = list(range(n_total))
    order = []
    for _ in range(n_tasks):
        j = int(scale * np.float32(rng()) * np.float32(len(left)))
        j = min(j, len(left) - 1)  # an output rounded up to 2^32 lands past the end in C++
        order.append(left[j])
        left[j] = left[-1]
        left.pop()
    return order
