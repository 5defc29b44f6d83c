"""The extension builds without OpenMP too (rows then run on one thread), and
QUANTKL_KERNEL_PATHS narrows which kernel copies are built."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import quantkl

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_builds_and_scores_without_openmp(tmp_path):
    for item in ("setup.py", "pyproject.toml", "README.md", "csrc", "quantkl"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / item)
    for so in (tmp_path / "quantkl").glob("_kernels*.so"):
        so.unlink()
    # the portable copy alone: OpenMP is the extension's, not the kernels'
    env = {**os.environ, "QUANTKL_OPENMP": "0", "QUANTKL_KERNEL_PATHS": "portable"}
    p = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "building without OpenMP" in p.stderr
    so = next((tmp_path / "quantkl").glob("_kernels*.so"))
    assert b"GOMP_" not in so.read_bytes()
    code = ("import numpy as np, quantkl; rng = np.random.default_rng(5); "
            "x = rng.normal(size=(40, 3000)).astype(np.float32); "
            "y = x + rng.normal(size=x.shape).astype(np.float32) * 0.3; "
            "print(quantkl.__file__); print([n for n, _ in quantkl.kernel_paths()]); "
            "print(repr(quantkl.score(x, y, np.zeros(40, int), threads=2).kld_mean))")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    where, paths, kld = p.stdout.split("\n")[:3]
    assert where.startswith(str(tmp_path))
    assert paths == "['portable']"
    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 3000)).astype(np.float32)
    y = x + rng.normal(size=x.shape).astype(np.float32) * 0.3
    before = quantkl.current_kernel()
    quantkl.select_kernel("portable")
    try:
        assert float(kld) == quantkl.score(x, y, np.zeros(40, int)).kld_mean
    finally:
        quantkl.select_kernel(before)
