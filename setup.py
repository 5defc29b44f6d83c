"""Build of the quantkl extension: Cython over the C kernels in csrc/.

Each kernel family (csrc/llama_logits.c, logits_logits.c, llama_llama.c,
encode.c) is compiled once per instruction set: as a portable baseline, and
again for AVX2+FMA and for AVX-512 on x86-64 compilers that accept those
flags, each copy into its own object directory with QK_ISA_<SET> defined;
dispatch.c learns which copies exist from QK_HAVE_<SET> and picks one at run
time from what the CPU reports. On x86-64 the portable copy runs only on CPUs
without AVX2, so it is built with QK_FEW_COPIES (one copy per mode, not per
flag and dtype combination) and -O2. The (family, instruction set)
objects are compiled side by side, one per core, the longest first;
QUANTKL_BUILD_JOBS caps how many at once, and QUANTKL_KERNEL_PATHS=portable
(or avx2, avx512, comma-separated) builds only those copies, for a quick
developer build.

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
# No debug information for the kernel objects: for their inlined copies it is
# most of the wheel (12 of its 14.7 MB) and a third of their compile time.
KERNEL_FLAGS = ["-g0"]
# Longest compile first, so that the last object to finish is a short one.
KERNEL_FAMILIES = ["csrc/logits_logits.c", "csrc/llama_logits.c", "csrc/llama_llama.c",
                   "csrc/sparse.c", "csrc/encode.c"]
HEADERS = ["csrc/quantkl.h", "csrc/dispatch.h", "csrc/rowstate.h", "csrc/simd.h",
           "csrc/kernel_math.h", "csrc/kernel_parts.h", "csrc/kernel_copies.h",
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
            wanted = os.environ.get("QUANTKL_KERNEL_PATHS", "")
            wanted = {w.strip() for w in wanted.split(",") if w.strip()} or None
            targetable = []
            for isa, (flags, probe) in ISAS.items():
                if is_x86() and compiles(self.compiler, "#include <immintrin.h>\n" + probe + "\n",
                                         flags):
                    targetable.append(isa)
                else:
                    print(f"quantkl: this compiler cannot target {isa}; that kernel path is left "
                          f"out", file=sys.stderr)
            copies = []  # widest first: the longest compiles start first
            for isa in reversed(targetable):
                if wanted is None or isa in wanted:
                    copies.append((isa, [(f"QK_ISA_{isa.upper()}", "1")], ISAS[isa][0]))
                    ext.define_macros.append((f"QK_HAVE_{isa.upper()}", "1"))
            # Where AVX2 can be targeted, only CPUs without it (and the tests) run the
            # portable copy: one copy per mode, at -O2, a third of its compile time.
            if "avx2" in targetable:
                copies.append(("portable", [("QK_FEW_COPIES", "1")], ["-O2"]))
            else:
                copies.append(("portable", [], []))

            def compile_object(job):
                (name, macros, flags), source = job
                if name == "extension":  # the Cython module and its C helpers
                    return self.compiler.compile(
                        [source], output_dir=self.build_temp, macros=ext.define_macros,
                        include_dirs=ext.include_dirs, extra_postargs=ext.extra_compile_args,
                        depends=ext.depends)
                return self.compiler.compile(
                    [source], output_dir=os.path.join(self.build_temp, name), macros=macros,
                    include_dirs=["csrc"], extra_postargs=BASE_FLAGS + KERNEL_FLAGS + flags,
                    depends=HEADERS)

            # every object in one pool, so that no core waits while the last compiles
            jobs = [(copy, family) for copy in copies for family in KERNEL_FAMILIES]
            jobs[1:1] = [(("extension", [], []), source) for source in ext.sources]
            ext.sources = []
            workers = int(os.environ.get("QUANTKL_BUILD_JOBS", "0")) or os.cpu_count() or 1
            with ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs)))) as pool:
                ext.extra_objects = [o for objs in pool.map(compile_object, jobs) for o in objs]
        super().build_extensions()


extensions = [
    Extension(
        "quantkl._kernels",
        sources=["quantkl/_kernels.pyx", "csrc/dispatch.c", "csrc/guard.c", "csrc/llama_loop.c",
                 "csrc/read_loop.c"],
        include_dirs=["csrc"],
        depends=HEADERS + KERNEL_FAMILIES,
    )
]

setup(
    ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}),
    cmdclass={"build_ext": BuildExt},
)
