"""Each kernel at vocab 49,152, 151,936 and 262,144 (255 rows, all cores),
beside the numpy float32 baseline, llama.cpp's own loop and the memory's
read rate, same run."""
import pytest

from quantkl.bench import KERNELS, best_time, workloads

VOCABS = [49152, 151936, 262144]


@pytest.fixture(scope="module", params=VOCABS, ids=lambda v: f"v{v}")
def loads(request):
    return {(w.name, w.mode): w for w in workloads(request.param, 255)}, request.param, {}


@pytest.mark.parametrize("mode", ["llama", "exact"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_rate(benchmark, record, loads, kernel, mode):
    ws, vocab, yardstick_times = loads
    w = ws.get((kernel, mode))
    if w is None:
        pytest.skip(f"{kernel} has no {mode} mode" if kernel == "encode"
                    else f"{kernel} needs ml_dtypes")
    benchmark.pedantic(w.run, rounds=5, iterations=1, warmup_rounds=1)
    rate = w.n_entries / benchmark.stats.stats.min / 1e6
    ref = w.n_entries / best_time(w.run_reference, 1) / 1e6
    for yardstick in (w.run_llama, w.memory_read.run):
        if yardstick not in yardstick_times:
            yardstick_times[yardstick] = best_time(yardstick, 3)
    llama = w.n_entries / yardstick_times[w.run_llama] / 1e6
    read = w.memory_read.n_bytes / yardstick_times[w.memory_read.run] / 1e9
    gbs = rate * w.bytes_per_entry / 1e3
    record(benchmark, label=f"{kernel} {mode} v{vocab}", rate_M_per_s=rate,
           reference_rate_M_per_s=ref, ratio=rate / ref, llama_loop_rate_M_per_s=llama,
           llama_loop_ratio=rate / llama, GB_per_s=gbs, read_loop_GB_per_s=read,
           read_loop_fraction=gbs / read)
