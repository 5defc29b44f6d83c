"""Build of the quantkl extension: Cython over the C kernels in csrc/.

csrc/kernels.c is compiled once per instruction set: as a portable baseline,
and again for AVX2+FMA and for AVX-512 on x86-64 compilers that accept those
flags, each copy into its own object directory with QK_ISA_<SET> defined;
dispatch.c learns which copies exist from QK_HAVE_<SET> and picks one at run
time from what the CPU reports. The copies are compiled side by side, one
per core (each takes minutes: kernels.c holds a copy of each kernel per
dtype and mode); QUANTKL_BUILD_JOBS caps how many at once.

OpenMP is used when the compiler accepts -fopenmp and left out otherwise (the
row loops then run on one thread). Nothing is built with fast-math or with FP
contraction: the encoder must round exactly as llama.cpp does, and the
kernels ask for a fused multiply-add only where they want one.
"""
import os
import platform
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

BASE_FLAGS = ["-O3", "-std=c11", "-ffp-contract=off", "-fno-math-errno"]
KERNELS = "csrc/kernels.c"
HEADERS = ["csrc/quantkl.h", "csrc/dispatch.h", "csrc/rowstate.h", "csrc/simd.h",
           "csrc/llama_loop.h", "csrc/read_loop.h", "csrc/guard.h"]

# Instruction sets with a copy of the kernels of their own, and a line only
# a compiler that can target the set accepts.
ISAS = {
    "avx2": (["-mavx2", "-mfma", "-mf16c"],
             "__m256 f(__m256 a) { return _mm256_fmadd_ps(a, a, _mm256_cvtph_ps(_mm_setzero_si128())); }"),
    "avx512": (["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx2", "-mfma", "-mf16c"],
               "__m512 f(__m512 a) { return _mm512_scalef_ps(a, _mm512_cvtph_ps(_mm256_setzero_si256())); }"),
}


def compiles(compiler, code, flags, link=False):
    """True when this compiler builds (and, if asked, links) code with flags."""
    tmp = tempfile.mkdtemp(prefix="quantkl-probe-")
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(code)
        objs = compiler.compile([src], output_dir=tmp, extra_postargs=flags)
        if link:
            # distutils gives LDFLAGS to shared links only; a sanitizer build needs them here too
            ldflags = os.environ.get("LDFLAGS", "").split()
            compiler.link_executable(objs, os.path.join(tmp, "probe"),
                                     extra_postargs=flags + ldflags)
        return True
    except Exception:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def is_x86():
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")


class BuildExt(build_ext):
    def build_extensions(self):
        omp = os.environ.get("QUANTKL_OPENMP", "auto") != "0" and compiles(
            self.compiler, "#include <omp.h>\nint main(void){return omp_get_max_threads() < 1;}\n",
            ["-fopenmp"], link=True)
        if not omp:
            print("quantkl: building without OpenMP; rows will be scored on one thread",
                  file=sys.stderr)
        for ext in self.extensions:
            ext.extra_compile_args = BASE_FLAGS + (["-fopenmp"] if omp else [])
            ext.extra_link_args = ["-fopenmp"] if omp else []
            copies = []  # widest first: the longest compiles start first
            for isa, (flags, probe) in reversed(ISAS.items()):
                if not (is_x86() and compiles(self.compiler,
                                              "#include <immintrin.h>\n" + probe + "\n", flags)):
                    print(f"quantkl: this compiler cannot target {isa}; that kernel path is left "
                          f"out", file=sys.stderr)
                    continue
                copies.append((isa, [(f"QK_ISA_{isa.upper()}", "1")], flags))
                ext.define_macros.append((f"QK_HAVE_{isa.upper()}", "1"))
            copies.append(("portable", [], []))

            def compile_copy(copy):
                name, macros, flags = copy
                return self.compiler.compile(
                    [KERNELS], output_dir=os.path.join(self.build_temp, name), macros=macros,
                    include_dirs=["csrc"], extra_postargs=BASE_FLAGS + flags,
                    depends=HEADERS)

            jobs = int(os.environ.get("QUANTKL_BUILD_JOBS", "0")) or os.cpu_count() or 1
            with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(copies)))) as pool:
                ext.extra_objects = [o for objs in pool.map(compile_copy, copies) for o in objs]
        super().build_extensions()


extensions = [
    Extension(
        "quantkl._kernels",
        sources=["quantkl/_kernels.pyx", "csrc/dispatch.c", "csrc/guard.c", "csrc/llama_loop.c",
                 "csrc/read_loop.c"],
        include_dirs=["csrc"],
        depends=HEADERS + [KERNELS],
    )
]

setup(
    ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}),
    cmdclass={"build_ext": BuildExt},
)
