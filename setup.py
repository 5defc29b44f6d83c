"""Build of the quantkl extension: Cython over the C kernels in csrc/.

OpenMP is used when the compiler accepts -fopenmp and left out otherwise (the
row loops then run on one thread). The C files are built without fast-math and
without FP contraction: the encoder must round exactly as llama.cpp does.
"""
import os
import shutil
import subprocess
import sys
import tempfile

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

C_SOURCES = ["csrc/dispatch.c", "csrc/score_scalar.c", "csrc/encode_scalar.c", "csrc/score_avx2.c",
             "csrc/encode_avx2.c"]
BASE_FLAGS = ["-O3", "-std=c11", "-ffp-contract=off", "-fno-math-errno"]


def compiler_accepts(compiler, flags):
    """True when this compiler builds and links a small OpenMP program with flags."""
    tmp = tempfile.mkdtemp(prefix="quantkl-omp-")
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main(void){return omp_get_max_threads() < 1;}\n")
        objs = compiler.compile([src], output_dir=tmp, extra_postargs=flags)
        compiler.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=flags)
        return True
    except Exception:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExt(build_ext):
    def build_extensions(self):
        omp = os.environ.get("QUANTKL_OPENMP", "auto") != "0" and compiler_accepts(
            self.compiler, ["-fopenmp"])
        for ext in self.extensions:
            ext.extra_compile_args = BASE_FLAGS + (["-fopenmp"] if omp else [])
            ext.extra_link_args = ["-fopenmp"] if omp else []
        if not omp:
            print("quantkl: building without OpenMP; rows will be scored on one thread",
                  file=sys.stderr)
        super().build_extensions()


extensions = [
    Extension(
        "quantkl._kernels",
        sources=["quantkl/_kernels.pyx"] + C_SOURCES,
        include_dirs=["csrc"],
        depends=["csrc/quantkl.h", "csrc/dispatch.h", "csrc/rowload.h", "csrc/rowstate.h",
                 "csrc/avx2_math.h"],
    )
]

setup(
    ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}),
    cmdclass={"build_ext": BuildExt},
)
