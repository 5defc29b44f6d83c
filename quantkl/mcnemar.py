"""Two models on the same tasks: McNemar's exact test on the tasks only one
of them got right (``quantkl diff`` of two task records)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .tasks import TaskResult


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts: the
    binomial test of a_only successes in a_only + b_only trials at 1/2."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    k = min(a_only, b_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


@dataclass
class PairedTasks:
    """Two models on the same tasks: McNemar's exact test on the discordant ones."""
    name_a: str
    name_b: str
    count: int
    correct_a: int
    correct_b: int
    a_only: int   # tasks A got right and B wrong
    b_only: int

    @property
    def p_value(self) -> float:
        return mcnemar_exact(self.a_only, self.b_only)

    @property
    def verdict(self) -> str:
        if self.p_value >= 0.05:
            return "not distinguishable at 95 %"
        return f"{self.name_a} better" if self.a_only > self.b_only else f"{self.name_b} better"

    def format(self) -> str:
        return (f"A = {self.name_a}: {self.correct_a}/{self.count} correct "
                f"({100 * self.correct_a / self.count:.2f} %)\n"
                f"B = {self.name_b}: {self.correct_b}/{self.count} correct "
                f"({100 * self.correct_b / self.count:.2f} %)\n"
                f"discordant tasks: {self.a_only} only A right, {self.b_only} only B right; "
                f"McNemar exact p = {self.p_value:.4g}\n"
                f"verdict: {self.verdict}\n")


def paired_tasks(a: TaskResult, b: TaskResult, name_a: str, name_b: str) -> PairedTasks:
    na = [o.number for o in a.outcomes]
    if na != [o.number for o in b.outcomes] or a.task != b.task:
        raise ValueError(f"{name_a} and {name_b} were scored on different tasks or task orders")
    ra = np.array([o.correct for o in a.outcomes])
    rb = np.array([o.correct for o in b.outcomes])
    return PairedTasks(name_a, name_b, len(ra), int(ra.sum()), int(rb.sum()),
                       int(np.sum(ra & ~rb)), int(np.sum(~ra & rb)))
