"""Checks on the arrays handed to quantkl, before any pointer reaches C.

Logit arrays are 2-D (rows, vocab) float32, float16 or bfloat16 (the
``ml_dtypes``/JAX dtype, recognised by name). llama.cpp uint16 rows are
wrapped in :class:`LlamaRows`, which carries the vocabulary size that the row
width alone cannot tell (odd and even vocabularies share a width).
"""
from __future__ import annotations

import os
from typing import Tuple

import numpy as np

from ._kernels import DTYPES as DTYPE_CODES


def llama_row_width(n_vocab: int) -> int:
    """uint16 values in one llama.cpp row: 4 for the header, the codes, one pad if odd."""
    return 2 * ((n_vocab + 1) // 2) + 4


class LlamaRows:
    """llama.cpp log-probability rows (docs/formats.md): uint16 array (rows, width) and n_vocab.

    Row ``r`` decodes as ``log p = scale * code + min_log_prob`` (natural log,
    nats), with ``scale, min_log_prob`` the two float32 in the row's first four
    uint16.
    """

    def __init__(self, rows: np.ndarray, n_vocab: int):
        rows = np.asarray(rows)
        if rows.dtype.kind != "u" or rows.dtype.itemsize != 2:
            raise TypeError(f"llama rows must be uint16, got {rows.dtype}")
        rows = native(rows)
        if rows.ndim != 2:
            raise ValueError(f"llama rows must be 2-D (rows, width), got shape {rows.shape}")
        n_vocab = int(n_vocab)
        if n_vocab < 1:
            raise ValueError(f"n_vocab must be at least 1, got {n_vocab}")
        width = llama_row_width(n_vocab)
        if rows.shape[1] != width:
            raise ValueError(
                f"llama rows for n_vocab={n_vocab} are {width} uint16 wide, got {rows.shape[1]}")
        if rows.strides[1] != 2:
            rows = np.ascontiguousarray(rows)
        self.rows = rows
        self.n_vocab = n_vocab

    def __len__(self) -> int:
        return self.rows.shape[0]

    @property
    def shape(self) -> Tuple[int, int]:
        """(rows, n_vocab), the shape of the distributions these rows hold."""
        return (self.rows.shape[0], self.n_vocab)

    def __repr__(self) -> str:
        return f"LlamaRows(rows={len(self)}, n_vocab={self.n_vocab})"


def logits_view(arr: object, side: str) -> Tuple[np.ndarray, int]:
    """A kernel-ready 2-D view of a logit array and its qk_dtype code.

    float16 and bfloat16 are passed to C as their uint16 bits. Strides that are
    not whole elements (rare hand-made views) are the one case copied.
    """
    if isinstance(arr, LlamaRows):
        raise TypeError(f"{side}: expected logits, got llama rows")
    a = native(np.asarray(arr))
    name = a.dtype.name
    if name not in DTYPE_CODES:
        hint = " (wrap llama.cpp rows in quantkl.LlamaRows(rows, n_vocab))" if name == "uint16" \
            else " (convert with .astype(numpy.float32))" if a.dtype.kind == "f" else ""
        raise TypeError(f"{side}: logits must be float32, float16 or bfloat16, got {name}{hint}")
    if a.ndim != 2:
        raise ValueError(f"{side}: logits must be 2-D (rows, vocab), got shape {a.shape}")
    if a.shape[1] < 1:
        raise ValueError(f"{side}: vocabulary is empty (shape {a.shape})")
    if any(s % a.itemsize for s in a.strides):
        a = np.ascontiguousarray(a)
    if name != "float32":
        a = a.view(np.uint16)
    return a, DTYPE_CODES[name]


def native(a: np.ndarray) -> np.ndarray:
    """``a`` in this machine's byte order: a big-endian float16 read as
    little-endian is a different number, so such arrays are converted."""
    if a.dtype.isnative or a.dtype.byteorder == "|":
        return a
    return a.astype(a.dtype.newbyteorder("="))


def token_ids(tokens: object, n_rows: int, n_vocab: int) -> np.ndarray:
    """The next-token ids as contiguous int64, checked against rows and vocab."""
    t = np.asarray(tokens)
    if t.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {t.shape}")
    if t.size and t.dtype.kind not in "iu":
        raise TypeError(f"tokens must be integers, got {t.dtype}")
    if t.shape[0] != n_rows:
        raise ValueError(f"{t.shape[0]} tokens for {n_rows} rows: need one token per row")
    if t.size:
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= n_vocab:
            bad = lo if lo < 0 else hi
            row = int(np.argmax(t == bad))
            raise ValueError(f"token id {bad} at row {row} is outside the vocabulary [0, {n_vocab})")
    return np.ascontiguousarray(t, dtype=np.int64)


# Below this many vocabulary entries per thread, waking another thread costs
# more than it saves (and on a busy machine a descheduled thread stalls the
# whole call at the closing barrier).
ENTRIES_PER_THREAD = 1 << 18


def threads_for(threads: int, n_rows: int, n_vocab: int) -> int:
    """Threads worth using for a block: never more than rows or than the work warrants."""
    return max(1, min(threads, n_rows, (n_rows * n_vocab) // ENTRIES_PER_THREAD))


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def thread_count(threads: int | None) -> int:
    """Threads for the row loops and llama.cpp: all cores this process may use
    unless told, and never more (more threads than cores only wait on each
    other: 10,000 made a 0.6 s run take 119 s)."""
    if threads is None:
        return available_cores()
    threads = int(threads)
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    return min(threads, available_cores())
