"""What Ray costs: 2 quants x 4 shards as tasks on a local Ray against the
same work in one local process writing the same records (both on all
cores, one task at a time, so the difference is Ray's own: task placement,
workers' start, model loads, the results' trip back, shard records and the
merge), Ray's start (until its daemons settle) reported apart, a run on
fresh workers and two on warm ones; and what shipping the base costs per shard, in bytes and seconds.

SmolLM2-135M at context 512 over the GPL-3 text, chunks 0:4; Q4_0 and
Q8_0 quants made here. Run: python -m pytest benchmarks/test_distributed.py -s
"""
import os
import time

import pytest

from quantkl.distributed import ShippedDump, score_quants, shard_ranges
from quantkl.dumpfile import LogitDump
from quantkl.evaluation import RunInfo, dump_base, score_model
from quantkl.models import SAMPLE_TEXT, default_model, quantize
from quantkl.records import score_metadata, write_record
from quantkl.runner import ModelOptions, ModelRunner


def test_ray_overhead(tmp_path, record, benchmark):
    ray = pytest.importorskip("ray")
    model = default_model()
    quants = [quantize(model, str(tmp_path / f"{t}.gguf"), t) for t in ("Q4_0", "Q8_0")]
    base = tmp_path / "base.kld"
    dump_base(model, SAMPLE_TEXT, base, n_ctx=512, chunks=4)
    threads = os.cpu_count()
    start = time.perf_counter()
    with LogitDump(base) as dump:  # what score --json-dir does, one quant after the other
        for q in quants:
            info = RunInfo()
            with ModelRunner(q, dump.n_ctx, ModelOptions(threads=threads)) as runner:
                result = score_model(dump, q, runner=runner, info=info)
                meta = score_metadata(dump, q, runner, info, None)
            write_record(str(tmp_path / f"local-{os.path.basename(q)}.json"), result, meta)
    local = time.perf_counter() - start
    start = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False)
    # Ray's start: its daemons and first workers come up after init returns,
    # and on 2 cores they take the CPU from whatever runs beside them; one
    # small task (a worker up, quantkl imported) and 2 s of calm
    ray.get(ray.remote(shard_ranges).remote((0, 1), 1))
    time.sleep(2)
    started = time.perf_counter() - start
    try:
        walls = {}
        for run, ship in (("first", False), ("path", False), ("shipped", True)):
            start = time.perf_counter()
            out = score_quants(str(base), quants, str(tmp_path / f"ray-{run}"), shard_chunks=1,
                               options=ModelOptions(threads=threads), ship_base=ship)
            walls[run] = time.perf_counter() - start
            assert all(o.record and o.shards_run == 4 for o in out)
    finally:
        ray.shutdown()
    with LogitDump(base) as dump:
        start = time.perf_counter()
        shipped = ShippedDump(dump, (0, 1))
        shipped_bytes = sum(r.rows.nbytes for r in shipped.rows.values())
        pack = time.perf_counter() - start
    labels = {"first": "Ray, fresh workers (s)", "path": "Ray, base from its path (s)",
              "shipped": "Ray, base shipped (s)"}
    for run, label in labels.items():
        record(benchmark, label=label, rate_M_per_s=walls[run], reference_rate_M_per_s=local,
               ratio=walls[run] / local)
    print(f"2 quants x 4 shards, {threads} threads a task: one local process {local:.1f} s; "
          f"Ray {walls['first']:.1f} s with fresh workers ({walls['first'] / local:.2f}x), then "
          f"{walls['path']:.1f} s from the path ({walls['path'] / local:.2f}x), "
          f"{walls['shipped']:.1f} s shipped ({walls['shipped'] / local:.2f}x); Ray's start "
          f"{started:.1f} s apart; a shard's rows {shipped_bytes / 1e6:.1f} MB, read for "
          f"shipping in {pack:.2f} s")
