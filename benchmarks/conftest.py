"""Benchmarks: each kernel against the numpy float32 baseline, in the same run.

Run: python -m pytest benchmarks/ (add --benchmark-json=out.json to keep the
figures). Every test records rate_M_per_s, reference_rate_M_per_s, ratio and
GB_per_s in extra_info; the summary at the end prints them as a table.
"""
import pytest

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
    tr.section("quantkl rates (M vocabulary entries / s)")
    tr.write_line(f"{'benchmark':<34} {'quantkl':>9} {'numpy':>8} {'ratio':>7} {'GB/s':>6}")
    for r in RESULTS:
        ref = f"{r['reference_rate_M_per_s']:8.1f}" if "reference_rate_M_per_s" in r else " " * 8
        ratio = f"{r['ratio']:6.2f}x" if "ratio" in r else " " * 7
        tr.write_line(f"{r['label']:<34} {r['rate_M_per_s']:9.1f} {ref} {ratio} "
                      f"{r.get('GB_per_s', 0):6.2f}")
