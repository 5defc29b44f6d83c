"""What Ray costs: 2 quants x 4 shards as tasks on a local Ray against the
same work in one local process (both on all cores, one task at a time, so
the difference is Ray's own: task placement, a model load per shard, the
results' trip back, the merge), Ray's start reported apart; and what
shipping the base costs per shard, in bytes and seconds.

SmolLM2-135M at context 512 over the GPL-3 text, chunks 0:4; Q4_0 and
Q8_0 quants made here. Run: python -m pytest benchmarks/test_distributed.py -s
"""
import os
import time

import pytest

from quantkl.distributed import ShippedDump, score_quants
from quantkl.dumpfile import LogitDump
from quantkl.evaluation import dump_base, score_model
from quantkl.models import SAMPLE_TEXT, default_model, quantize
from quantkl.runner import ModelOptions


def test_ray_overhead(tmp_path, record, benchmark):
    ray = pytest.importorskip("ray")
    model = default_model()
    quants = [quantize(model, str(tmp_path / f"{t}.gguf"), t) for t in ("Q4_0", "Q8_0")]
    base = tmp_path / "base.kld"
    dump_base(model, SAMPLE_TEXT, base, n_ctx=512, chunks=4)
    threads = os.cpu_count()
    start = time.perf_counter()
    with LogitDump(base) as dump:
        for q in quants:
            score_model(dump, q, options=ModelOptions(threads=threads))
    local = time.perf_counter() - start
    start = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False)
    started = time.perf_counter() - start
    try:
        walls = {}
        for ship in (False, True):
            start = time.perf_counter()
            out = score_quants(str(base), quants, str(tmp_path / f"ray-{ship}"), shard_chunks=1,
                               options=ModelOptions(threads=threads), ship_base=ship)
            walls[ship] = time.perf_counter() - start
            assert all(o.record and o.shards_run == 4 for o in out)
    finally:
        ray.shutdown()
    with LogitDump(base) as dump:
        start = time.perf_counter()
        shipped = ShippedDump(dump, (0, 1))
        shipped_bytes = sum(r.rows.nbytes for r in shipped.rows.values())
        pack = time.perf_counter() - start
    for ship, label in ((False, "Ray, base from its path (s)"), (True, "Ray, base shipped (s)")):
        record(benchmark, label=label, rate_M_per_s=walls[ship], reference_rate_M_per_s=local,
               ratio=walls[ship] / local)
    print(f"2 quants x 4 shards, {threads} threads a task: one local process {local:.1f} s; "
          f"Ray {walls[False]:.1f} s from the path ({walls[False] / local:.2f}x), "
          f"{walls[True]:.1f} s shipped ({walls[True] / local:.2f}x); Ray's start "
          f"{started:.1f} s apart; a shard's rows {shipped_bytes / 1e6:.1f} MB, read for "
          f"shipping in {pack:.2f} s")
