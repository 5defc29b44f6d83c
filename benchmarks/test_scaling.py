"""1 -> 2 threads, and scoring a memory-mapped dump file from the disk cache."""
import os

import numpy as np
import pytest

import quantkl
from quantkl.bench import best_time, lm_like_logits, perturbed, thread_scaling
from quantkl.dumpfile import LogitDump, LogitDumpWriter


def test_thread_scaling(benchmark, record):
    result = benchmark.pedantic(thread_scaling, rounds=1, iterations=1)
    record(benchmark, label="u16xf32 llama 1->2 threads", rate_M_per_s=result["rate_2_threads"],
           reference_rate_M_per_s=result["rate_1_thread"], ratio=result["speedup"],
           GB_per_s=result["rate_2_threads"] * 6 / 1e3)


def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))


@pytest.fixture(scope="module")
def big_dump(tmp_path_factory):
    """A 2.1 GB dump: 27 chunks of 255 rows at vocab 151,936, n_ctx 512."""
    v, n_ctx, n_chunk = 151936, 512, 27
    x = lm_like_logits(255, v)
    toks = np.random.default_rng(3).integers(0, v, n_ctx * n_chunk)
    rows, _ = quantkl.encode_llama_rows(x, toks[257:512])
    path = tmp_path_factory.mktemp("big") / "big.kld"
    with LogitDumpWriter(path, n_ctx, v, toks) as w:
        for _ in range(n_chunk):
            w.write_chunk(rows)
    yield path, perturbed(x), rows
    os.unlink(path)


def test_dump_file_rate(benchmark, record, big_dump):
    path, quant, rows = big_dump
    assert os.path.getsize(path) >= 2e9
    peak = [0]

    def score_file():
        before = rss()
        scorer = quantkl.Scorer()
        with LogitDump(path) as d:
            for ch in d.chunks():
                scorer.update(ch.rows, quant, ch.tokens)
                peak[0] = max(peak[0], rss() - before)
        return scorer.result()

    in_memory = best_time(lambda: quantkl.score_rows(rows, quant, np.zeros(255, np.int64)), 3)
    benchmark.pedantic(score_file, rounds=2, iterations=1, warmup_rounds=1)
    n = 27 * 255 * 151936
    rate = n / benchmark.stats.stats.min / 1e6
    mem_rate = 255 * 151936 / in_memory / 1e6
    record(benchmark, label="dump file 2.1 GB vs in-memory", rate_M_per_s=rate,
           reference_rate_M_per_s=mem_rate, ratio=rate / mem_rate, GB_per_s=rate * 6 / 1e3)
    benchmark.extra_info["rss_growth_MB"] = peak[0] / 1e6
    print(f"resident memory grew by {peak[0] / 1e6:.0f} MB while scoring the file")
