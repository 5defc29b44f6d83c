"""Kernel throughput beside two yardsticks measured in the same run.

Shared by `quantkl bench` and benchmarks/ (pytest-benchmark). Rates are
vocabulary entries scored per second (rows x vocab / seconds). Each kernel is
timed beside a plain float32 numpy implementation on the same arrays, and
beside llama.cpp's own per-row loop (csrc/llama_loop.c, written from llama.cpp's definition:
expf per entry, float32 terms, double sums) on the same rows: the KL loop for
the scoring kernels (what llama-perplexity --kl-divergence does per entry, on
the u16 x f32 pair it supports), the encoder loop for the encoder. A loop of
nothing but loads over the u16 x f32 pair's arrays (csrc/read_loop.c) gives
the memory's rate on the same threads, the most bytes per second a kernel
that streams its rows once can read. Ratios measured in one run hold on a
noisy machine even when absolute figures move.

The logits are synthetic but shaped like a language model's: normal(0, 2.5)
with 1 % of tokens lifted by 8 nats, which leaves about a quarter of the
vocabulary within llama.cpp's 16-nat window (SmolLM2 on English text: 21 %),
and the "quant" is the base plus normal(0, 0.3) noise.
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np

from . import _kernels, reference
from .arrays import threads_for, thread_count
from .encoding import encode_llama_rows
from .scoring import current_kernel, kernel_paths, score_rows
from .sparse import encode_sparse_rows

KERNELS = ("u16xf32", "sparsexf32", "f32xf32", "f16xf16", "bf16xbf16", "u16xu16", "encode")


def lm_like_logits(rows: int, vocab: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, vocab), dtype=np.float32) * np.float32(2.5)
    lift = rng.random((rows, vocab), dtype=np.float32) < 0.01
    x[lift] += 8
    return x


def next_tokens(x: np.ndarray, seed: int = 2) -> np.ndarray:
    """Each row's scored token drawn from the row's own distribution, as a
    text's next token follows the model's: most land near the top. Tokens
    drawn uniformly over the vocabulary would fall below the dump's clip
    point (16 nats under the max) in three rows of four, which real text
    rarely does, and the NLL of such a token in a quant's dump takes a
    float64 pass of its own."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(x), np.int64)
    for i, row in enumerate(x):
        p = np.exp(row.astype(np.float64) - row.max())
        c = np.cumsum(p)
        out[i] = min(int(np.searchsorted(c, rng.random() * c[-1])), len(row) - 1)
    return out


def perturbed(x: np.ndarray, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(0.3)


def bfloat16_dtype():
    try:
        import ml_dtypes
    except ImportError:
        return None
    return ml_dtypes.bfloat16


@dataclass
class MemoryRead:
    """The memory yardstick: n_bytes read by run, nothing but loads."""
    run: Callable[[], object]
    n_bytes: int


@dataclass
class Workload:
    """One kernel on one set of arrays: the fast call, its numpy twin,
    llama.cpp's loop for the same kind of work, and the memory yardstick."""
    name: str
    mode: str
    n_entries: int
    bytes_per_entry: float
    run: Callable[[], object]
    run_reference: Callable[[], object]
    run_llama: Callable[[], object]
    memory_read: MemoryRead


def workloads(vocab: int = 151936, rows: int = 255, threads: Optional[int] = None,
              kernels=KERNELS) -> List[Workload]:
    x = lm_like_logits(rows, vocab)
    y = perturbed(x)
    tok = next_tokens(x)
    n = rows * vocab
    out: List[Workload] = []
    other_rows = None
    base_rows = encode_llama_rows(x, tok, threads=threads)[0]
    loop_threads = threads_for(thread_count(threads), rows, vocab)
    llama_kld = lambda: _kernels.llama_loop_kld_rows(base_rows.rows, y, loop_threads)  # noqa: E731
    streams = (base_rows.rows.view(np.uint8), y.view(np.uint8))
    memory = MemoryRead(lambda: [_kernels.read_loop_rows(s, loop_threads) for s in streams],
                        sum(s.nbytes for s in streams))
    for name in kernels:
        if name == "u16xf32":
            for mode in ("llama", "exact"):
                out.append(Workload(
                    name, mode, n, 6,
                    lambda m=mode: score_rows(base_rows, y, tok, mode=m, threads=threads),
                    lambda m=mode: reference.kld_numpy_f32(base_rows, y, m), llama_kld,
                    memory))
        elif name == "sparsexf32":  # a precise .kldp base's rows: its float32 logits where
            sparse = encode_sparse_rows(x, tok, threads=threads)  # llama mode reads them
            for mode in ("llama", "exact"):
                out.append(Workload(
                    name, mode, n, 4 + 8 * sparse.stored / n,
                    lambda m=mode: score_rows(sparse, y, tok, mode=m, threads=threads),
                    lambda m=mode: reference.kld_numpy_f32(x, y, m), llama_kld, memory))
        elif name in ("f32xf32", "f16xf16", "bf16xbf16"):
            dt = {"f32xf32": np.float32, "f16xf16": np.float16,
                  "bf16xbf16": bfloat16_dtype()}[name]
            if dt is None:
                continue  # bfloat16 needs ml_dtypes
            a, b = x.astype(dt), y.astype(dt)
            for mode in ("llama", "exact"):
                out.append(Workload(
                    name, mode, n, 2 * a.itemsize,
                    lambda a=a, b=b, m=mode: score_rows(a, b, tok, mode=m, threads=threads),
                    lambda a=a, b=b, m=mode: reference.kld_numpy_f32(a, b, m), llama_kld,
                    memory))
        elif name == "u16xu16":
            other_rows = other_rows or encode_llama_rows(y, tok, threads=threads)[0]
            for mode in ("llama", "exact"):
                out.append(Workload(
                    name, mode, n, 4,
                    lambda m=mode: score_rows(base_rows, other_rows, tok, mode=m,
                                              threads=threads),
                    lambda m=mode: reference.kld_numpy_f32(base_rows, other_rows, m), llama_kld,
                    memory))
        elif name == "encode":
            buf = np.empty((rows, 2 * ((vocab + 1) // 2) + 4), np.uint16)
            out.append(Workload(
                name, "llama", n, 6,
                lambda: encode_llama_rows(x, tok, threads=threads, out=buf),
                lambda: reference.encode_llama_rows_numpy_f32(x),
                lambda: _kernels.llama_loop_encode_rows(x, buf, loop_threads), memory))
        else:
            raise ValueError(f"unknown kernel {name!r}; choose from {', '.join(KERNELS)}")
    return out


def bytes_needed(vocab: int, rows: int, kernels=KERNELS) -> int:
    """About how many bytes workloads() allocates: the float32 logits and
    their quant, the base's rows, the quant's rows or the encoder's output,
    and the half-precision copies of both asked for."""
    per_entry = 4 + 4 + 2 + 2 + 4 * len({"f16xf16", "bf16xbf16"} & set(kernels)) \
        + 3 * ("sparsexf32" in kernels)
    return vocab * rows * per_entry


def physical_memory() -> int:
    """Bytes of RAM, or 0 where the system will not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def check_kernels(names: Optional[str]) -> List[str]:
    """The kernels a comma-separated list names (all when None); ValueError
    naming one that is not a kernel."""
    kernels = names.split(",") if names else list(KERNELS)
    unknown = [k for k in kernels if k not in KERNELS]
    if unknown:
        raise ValueError(f"--kernels: unknown kernel {unknown[0]!r}; choose from "
                         f"{', '.join(KERNELS)}")
    return kernels


def check_memory(vocab: int, rows: int, kernels=KERNELS) -> None:
    """ValueError when the arrays would take more than 80 % of this machine's RAM."""
    need, have = bytes_needed(vocab, rows, kernels), physical_memory()
    if have and need > 0.8 * have:
        raise ValueError(f"--vocab {vocab} x --rows {rows} needs about {need / 2**30:.1f} GiB of "
                         f"arrays; this machine has {have / 2**30:.1f} GiB")


def format_table(results: List[Dict[str, object]], vocab: int, rows: int,
                 threads: Optional[int]) -> str:
    """The printout of ``quantkl bench``: the machine, then a row per kernel."""
    m = machine()
    lines = [f"{m['cpu']}, {m['cores']} cores, AVX-512 {'yes' if m['avx512'] else 'no'}, "
             f"kernel path {m['kernel_path']}; vocab {vocab}, {rows} rows, "
             f"threads {threads or m['cores']}; memory read "
             f"{results[0]['read_loop_GB_per_s']:.2f} GB/s",
             f"{'kernel':<10} {'mode':<6} {'quantkl M/s':>12} {'numpy M/s':>10} {'x numpy':>8} "
             f"{'llama.cpp M/s':>14} {'x llama.cpp':>12} {'GB/s':>6} {'of read':>8}"]
    for r in results:
        lines.append(f"{r['name']:<10} {r['mode']:<6} {r['rate_M_per_s']:12.1f} "
                     f"{r['reference_rate_M_per_s']:10.1f} {r['ratio']:7.1f}x "
                     f"{r['llama_loop_rate_M_per_s']:14.1f} {r['llama_loop_ratio']:11.1f}x "
                     f"{r['GB_per_s']:6.2f} {r['read_loop_fraction']:7.0%}")
    return "\n".join(lines)


def best_time(fn: Callable[[], object], repeat: int = 3) -> float:
    """Shortest of ``repeat`` runs (after one warm-up), in seconds."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure_all(ws: List[Workload], rounds: int = 5,
                on_round: Optional[Callable[[int, int], None]] = None) -> List[Dict[str, object]]:
    """Rates of every workload and its yardsticks. The kernels, llama.cpp's
    loops and the memory read are timed round-robin, each once per round
    (after one warm-up), and each keeps its best round: on a shared machine a
    noisy spell then slows every kernel of a round alike instead of one
    kernel's repeats, so the ratios between kernels, and to the yardsticks,
    hold. The numpy baselines, 5 to 100 times slower, run once each."""
    loops = list(dict.fromkeys(w.run_llama for w in ws))
    reads = list(dict.fromkeys(w.memory_read.run for w in ws))
    timed = [w.run for w in ws] + loops + reads
    best = {id(f): float("inf") for f in timed}
    for f in timed:
        f()
    for r in range(rounds):
        for f in timed:
            t = time.perf_counter()
            f()
            best[id(f)] = min(best[id(f)], time.perf_counter() - t)
        if on_round is not None:
            on_round(r + 1, rounds)
    out = []
    for w in ws:
        rate = w.n_entries / best[id(w.run)] / 1e6
        ref = w.n_entries / best_time(w.run_reference, 1) / 1e6
        llama = w.n_entries / best[id(w.run_llama)] / 1e6
        gbs = rate * w.bytes_per_entry / 1e3
        read = w.memory_read.n_bytes / best[id(w.memory_read.run)] / 1e9
        out.append({"name": w.name, "mode": w.mode, "rate_M_per_s": rate, "GB_per_s": gbs,
                    "reference_rate_M_per_s": ref, "ratio": rate / ref,
                    "llama_loop_rate_M_per_s": llama, "llama_loop_ratio": rate / llama,
                    "read_loop_GB_per_s": read, "read_loop_fraction": gbs / read})
    return out


def machine() -> Dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {"cpu": cpu, "cores": cores, "kernel_path": current_kernel(),
            "avx512": any(name == "avx512" and ok for name, ok in kernel_paths()),
            "python": platform.python_version(), "numpy": np.__version__}
