"""The chunk loop's own cost, kernels and model excluded: blocks of 256
scored rows are added one chunk at a time, each followed by the per-chunk
line and a --target-unc check, as in a long scoring run. quantkl's loop
(running sums, the per-token arrays joined once at the end) against the loop
it replaced, which joined every earlier token into a new result each chunk
and computed every statistic of it, sorts included. Timed at 250 and 1,000
chunks: a loop linear in rows costs 4x as much at 1,000; the old one ~16x.
"""
import time

import numpy as np
import pytest

from quantkl.evaluation import RunInfo, StopRule, after_chunk
from quantkl.scoring import Scorer

ROWS, VOCAB = 256, 64


@pytest.fixture(scope="module")
def blocks():
    rng = np.random.default_rng(7)
    scorer = Scorer(threads=1)
    out = []
    for _ in range(1000):
        x = rng.normal(size=(ROWS, VOCAB)).astype(np.float32)
        y = x + rng.normal(scale=0.1, size=x.shape).astype(np.float32)
        out.append(scorer.score_block(x, y, rng.integers(0, VOCAB, ROWS)))
    return out


def streaming_loop(blocks):
    scorer, info, stop = Scorer(threads=1), RunInfo(), StopRule(unc=1e-12)
    lines = []
    for c, b in enumerate(blocks):
        scorer.add(b)
        after_chunk(scorer, c, len(blocks), 0, lambda n, t, r: lines.append(
            r.format_chunk_row(n)), stop, info)
    return scorer.result()


def rebuilding_loop(blocks):
    total, stop, lines = None, StopRule(unc=1e-12), []
    for b in blocks:
        total = b if total is None else total + b
        lines.append(total.format_chunk_row(len(total.chunk_ends)))
        stop.reached(total)
    return total


def seconds(loop, blocks):
    start = time.perf_counter()
    loop(blocks)
    return time.perf_counter() - start


def test_chunk_loop_is_linear_in_rows(benchmark, record, blocks):
    times = {}

    def both():
        for name, loop in (("streaming", streaming_loop), ("rebuilding", rebuilding_loop)):
            for n in (250, 1000):
                times[name, n] = seconds(loop, blocks[:n])

    benchmark.pedantic(both, rounds=1, iterations=1)
    assert streaming_loop(blocks).statistics() == rebuilding_loop(blocks).statistics()
    for name in ("streaming", "rebuilding"):
        record(benchmark, label=f"{name} loop s, 1,000 vs 250 chunks",
               rate_M_per_s=times[name, 1000], reference_rate_M_per_s=times[name, 250],
               ratio=times[name, 1000] / times[name, 250])
    record(benchmark, label="streaming loop s vs rebuilding, 1,000 chunks",
           rate_M_per_s=times["streaming", 1000],
           reference_rate_M_per_s=times["rebuilding", 1000],
           ratio=times["streaming", 1000] / times["rebuilding", 1000])
