"""llama.cpp's own llama-perplexity, built once from the llama-cpp-python sdist
of the installed version and cached, so quantkl is compared with llama.cpp on
the CPU the tests run on (llama.cpp's logits differ between CPUs with and
without AVX-512, so tests/data alone cannot show bit-exactness here)."""
import glob
import os
import subprocess
import sys
import tarfile
from pathlib import Path

CACHE = Path(os.environ.get("QUANTKL_CACHE", Path.home() / ".cache" / "quantkl"))


def _run(cmd, cwd=None, timeout=1800):
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return p


def llama_perplexity() -> Path:
    """Path of the llama-perplexity binary ($QUANTKL_LLAMA_PERPLEXITY, or built and cached)."""
    env = os.environ.get("QUANTKL_LLAMA_PERPLEXITY")
    if env:
        return Path(env)
    import llama_cpp
    version = llama_cpp.__version__
    home = CACHE / f"llama-cpp-python-{version}"
    binary = home / "bin" / "llama-perplexity"
    if binary.exists():
        return binary
    home.mkdir(parents=True, exist_ok=True)
    if not glob.glob(str(home / "llama_cpp_python-*.tar.gz")):
        # pip prepares the sdist's metadata in an isolated build environment
        # of its own, so nothing beyond pip need be installed here
        _run([sys.executable, "-m", "pip", "download", "--no-deps",
              "--no-binary", "llama-cpp-python", f"llama-cpp-python=={version}", "-d", str(home)])
    sdist = glob.glob(str(home / "llama_cpp_python-*.tar.gz"))[0]
    with tarfile.open(sdist) as tf:
        tf.extractall(home, filter="data")
    src = Path(glob.glob(str(home / "llama_cpp_python-*" / "vendor" / "llama.cpp"))[0])
    build = home / "build"
    _run(["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
          "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
          "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_TOOLS=ON"])
    _run(["cmake", "--build", str(build), "--target", "llama-perplexity", "-j",
          str(os.cpu_count() or 2)])
    built = next(build.rglob("llama-perplexity"))
    binary.parent.mkdir(exist_ok=True)
    os.replace(built, binary)
    return binary
