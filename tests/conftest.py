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
