"""Benchmarks: each kernel beside the numpy float32 baseline, llama.cpp's own
loop and the memory's read rate, in the same run; thread scaling; dump
files; end to end.

Run: python -m pytest benchmarks/ (add --benchmark-json=out.json to keep the
figures). Every test records its rates in extra_info; the summary at the end
prints them as a table: "ref" is the test's yardstick (numpy, 1 thread, the
in-memory rate, llama-perplexity's wall time), "x ref" the ratio to it, and
"of read" a kernel's bytes per second over a loop of nothing but loads.
"""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # llama_tool

RESULTS = []


@pytest.fixture
def record():
    def add(benchmark, **info):
        benchmark.extra_info.update(info)
        RESULTS.append(info)
    return add


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("quantkl rates (M vocabulary entries / s; seconds where the label says s)")
    tr.write_line(f"{'benchmark':<40} {'quantkl':>9} {'ref':>9} {'x ref':>7} {'llama.cpp':>10} "
                  f"{'x llama':>8} {'GB/s':>6} {'of read':>8}")
    for r in RESULTS:
        llama = (f"{r['llama_loop_rate_M_per_s']:10.1f} {r['llama_loop_ratio']:7.1f}x"
                 if "llama_loop_rate_M_per_s" in r else " " * 19)
        gbs = f"{r['GB_per_s']:6.2f}" if "GB_per_s" in r else ""
        if "read_loop_fraction" in r:
            gbs += f" {r['read_loop_fraction']:7.0%}"
        tr.write_line(f"{r['label']:<40} {r['rate_M_per_s']:9.1f} "
                      f"{r['reference_rate_M_per_s']:9.1f} {r['ratio']:6.2f}x {llama} {gbs}")
