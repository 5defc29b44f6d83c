"""Precise sparse rows: a base model's distributions without rounding, in a
fraction of a llama.cpp row's bytes.

A row stores the base's float32 logits at the entries llama mode's sum keeps
(log p > -16, the float kernels' own cut), and at the row's ten largest where
fewer pass it, with their indices; and exact scalars of the rest (the
"tail"): the row's max logit and float64 log-sum-exp, so that log p = (x -
max) - lse in float64 with no rounded value, the tail's probability mass
summed over the tail itself in float64, its smallest logit and its entry
count, its largest and smallest logits, and the scored token's logit. llama mode's KL against such a row is
the one against the float logits; what the tail leaves unknown (exact mode,
the reverse KL, Jensen-Shannon) is reported as an interval (docs/statistics.md).

``SparseRows`` is a block of such rows in memory; ``encode_sparse_rows``
makes one from float32 logits (the C encoder); ``to_bytes``/``from_bytes``
are a block's form inside a ``.kldp`` file (quantkl.kldz holds the container).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from . import _kernels
from .arrays import thread_count, threads_for, token_ids

# csrc/quantkl.h qk_sparse_header, byte for byte
HEADER_DTYPE = np.dtype([("n_stored", "<u4"), ("tail_count", "<u4"), ("x_max", "<f4"),
                         ("x_tok", "<f4"), ("tail_min", "<f4"), ("tail_max", "<f4"),
                         ("lse", "<f8"), ("tail_lse", "<f8")])
assert HEADER_DTYPE.itemsize == 40


class SparseRowsError(ValueError):
    """A block of sparse rows that cannot be what the encoder wrote."""


class SparseRows:
    """Rows of precise sparse distributions over a vocabulary of ``n_vocab``.

    ``headers``: HEADER_DTYPE per row; row i's stored entries are
    ``indices[offsets[i]:offsets[i + 1]]`` (int32, increasing) with their
    base logits ``logits[...]`` (float32). ``shape`` is (rows, n_vocab), as
    for logits.
    """

    def __init__(self, headers: np.ndarray, offsets: np.ndarray, indices: np.ndarray,
                 logits: np.ndarray, n_vocab: int):
        self.headers = np.ascontiguousarray(headers, HEADER_DTYPE)
        self.offsets = np.ascontiguousarray(offsets, np.int64)
        self.indices = np.ascontiguousarray(indices, np.int32)
        self.logits = np.ascontiguousarray(logits, np.float32)
        self.n_vocab = int(n_vocab)
        n = len(self.headers)
        if self.offsets.shape != (n + 1,) or self.offsets[0] != 0 or \
                self.offsets[-1] != len(self.indices) or len(self.indices) != len(self.logits):
            raise SparseRowsError("sparse rows: offsets, indices and logits disagree")

    @property
    def shape(self) -> Tuple[int, int]:
        return len(self.headers), self.n_vocab

    def __len__(self) -> int:
        return len(self.headers)

    @property
    def stored(self) -> int:
        """Entries stored over all rows."""
        return len(self.indices)

    def header_bytes(self) -> np.ndarray:
        """The headers as (rows, 40) bytes, what the kernels read."""
        return self.headers.view(np.uint8).reshape(len(self.headers), HEADER_DTYPE.itemsize)

    def row(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        """Row i's stored indices and logits."""
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.indices[a:b], self.logits[a:b]

    def slice(self, lo: int, hi: int) -> "SparseRows":
        a, b = self.offsets[lo], self.offsets[hi]
        return SparseRows(self.headers[lo:hi], self.offsets[lo:hi + 1] - a, self.indices[a:b],
                          self.logits[a:b], self.n_vocab)

    def take(self, rows: Sequence[int]) -> "SparseRows":
        """The rows at these positions, in this order, copied."""
        return concat([self.slice(int(i), int(i) + 1) for i in rows], self.n_vocab)

    def log_probs(self) -> np.ndarray:
        """float64 log p of every stored entry (in ``indices`` order)."""
        counts = np.diff(self.offsets)
        shift = np.repeat(self.headers["x_max"].astype(np.float64) + self.headers["lse"], counts)
        return self.logits.astype(np.float64) - shift

    # --- a block's bytes in a .kldp --------------------------------------------
    def to_bytes(self) -> bytes:
        """Headers, then the indices delta-coded (each row's first absolute, then
        the gaps less one) as uint32 byte planes, then the logits as float32
        byte planes: planes of like bytes compress to 0.26 of a SmolLM2
        llama row with zstandard, against 0.31 interleaved."""
        starts = np.zeros(len(self.indices), bool)
        starts[self.offsets[:-1][np.diff(self.offsets) > 0]] = True
        gaps = np.diff(self.indices.astype(np.int64), prepend=-1) - 1
        gaps[starts] = self.indices[starts]
        return b"".join([self.headers.tobytes(), _planes(gaps.astype("<u4")),
                         _planes(self.logits.astype("<f4"))])

    @classmethod
    def from_bytes(cls, data: bytes, n_rows: int, n_vocab: int) -> "SparseRows":
        """The block ``to_bytes`` wrote, every field checked: SparseRowsError
        names what is wrong (sizes, indices out of range or not increasing,
        impossible headers or logits)."""
        head = n_rows * HEADER_DTYPE.itemsize
        if len(data) < head:
            raise SparseRowsError(f"{len(data)} bytes cannot hold {n_rows} row headers")
        headers = np.frombuffer(data, HEADER_DTYPE, n_rows).copy()
        _check_headers(headers, n_vocab)
        counts = headers["n_stored"].astype(np.int64)
        offsets = np.zeros(n_rows + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        total = int(offsets[-1])
        if len(data) != head + 8 * total:
            raise SparseRowsError(f"its rows store {total:,} entries, which take "
                                  f"{head + 8 * total:,} bytes, not {len(data):,}")
        gaps = _unplanes(data[head:head + 4 * total], "<u4").astype(np.int64) + 1
        ends = np.cumsum(gaps)
        row_start = np.repeat(np.concatenate(([0], ends[offsets[1:-1] - 1])), counts)
        indices = ends - row_start - 1
        last = indices[offsets[1:] - 1]
        if np.any(last >= n_vocab):
            r = int(np.argmax(last >= n_vocab))
            raise SparseRowsError(f"row {r} stores index {int(last[r])}, outside the "
                                  f"vocabulary [0, {n_vocab})")
        logits = _unplanes(data[head + 4 * total:], "<f4")
        bad = np.isnan(logits) | (logits > np.repeat(headers["x_max"], counts))
        if np.any(bad):
            r = int(np.searchsorted(offsets, np.argmax(bad), side="right") - 1)
            raise SparseRowsError(f"row {r} stores a logit that is NaN or above its max")
        return cls(headers, offsets, indices.astype(np.int32), logits, n_vocab)


def _planes(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a.view(np.uint8).reshape(-1, a.itemsize).T).tobytes()


def _unplanes(data: bytes, dtype: str) -> np.ndarray:
    size = np.dtype(dtype).itemsize
    planes = np.frombuffer(data, np.uint8).reshape(size, -1)
    return np.ascontiguousarray(planes.T).view(dtype).reshape(-1)


def _check_headers(h: np.ndarray, n_vocab: int) -> None:
    stored, tail = h["n_stored"].astype(np.int64), h["tail_count"].astype(np.int64)
    checks = [
        (stored + tail != n_vocab, f"stored and tail entries do not add up to {n_vocab}"),
        (stored < 1, "stores no entry"),
        (~np.isfinite(h["x_max"]), "has a max logit that is not finite"),
        (~np.isfinite(h["lse"]) | (h["lse"] < 0) | (h["lse"] > 1e3),
         "has an impossible log-sum-exp"),
        (np.isnan(h["tail_lse"]) | (h["tail_lse"] > 1e-9), "has an impossible tail mass"),
        (np.isnan(h["tail_min"]) | np.isnan(h["tail_max"]) | np.isnan(h["x_tok"])
         | (h["x_tok"] > h["x_max"]) | (h["tail_max"] > h["x_max"])
         | ((tail > 0) & (h["tail_min"] > h["tail_max"])), "has an impossible token or tail logit"),
    ]
    for bad, what in checks:
        if np.any(bad):
            raise SparseRowsError(f"row {int(np.argmax(bad))} {what}")


def concat(blocks: Sequence[SparseRows], n_vocab: int) -> SparseRows:
    if not blocks:
        return SparseRows(np.empty(0, HEADER_DTYPE), np.zeros(1, np.int64),
                          np.empty(0, np.int32), np.empty(0, np.float32), n_vocab)
    if len(blocks) == 1:
        return blocks[0]
    shifts = np.cumsum([0] + [b.stored for b in blocks[:-1]])
    offsets = np.concatenate([[0]] + [b.offsets[1:] + s for b, s in zip(blocks, shifts)])
    return SparseRows(np.concatenate([b.headers for b in blocks]), offsets,
                      np.concatenate([b.indices for b in blocks]),
                      np.concatenate([b.logits for b in blocks]), n_vocab)


def encode_sparse_rows(logits: np.ndarray, tokens: object,
                       threads: Optional[int] = None) -> SparseRows:
    """float32 logits (rows, n_vocab) -> their precise sparse rows.

    ValueError names the first row with NaN or +inf, or no finite logit."""
    x = np.asarray(logits)
    if x.dtype != np.float32 or x.ndim != 2:
        raise TypeError(f"logits must be a float32 array (rows, vocab), got {x.dtype} "
                        f"{x.shape}")
    n, n_vocab = x.shape
    if n_vocab >= 2 ** 31:
        raise ValueError(f"a vocabulary of {n_vocab} entries is past int32 indices")
    tok = token_ids(tokens, n, n_vocab)
    nthreads = threads_for(thread_count(threads), max(n, 1), n_vocab)
    headers = np.zeros(n, HEADER_DTYPE)
    raw = headers.view(np.uint8).reshape(n, HEADER_DTYPE.itemsize)
    status = _kernels.sparse_measure(x, tok, raw, nthreads)
    bad = np.flatnonzero(status)
    if bad.size:
        r = int(bad[0])
        what = ("contains NaN or +inf" if status[r] & _kernels.STATUS["P_NONFINITE"]
                else "has no finite logit (all -inf)")
        raise ValueError(f"logits row {r} {what}")
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(headers["n_stored"], out=offsets[1:])
    indices = np.empty(offsets[-1], np.int32)
    values = np.empty(offsets[-1], np.float32)
    _kernels.sparse_fill(x, raw, offsets, indices, values, nthreads)
    return SparseRows(headers, offsets, indices, values, n_vocab)


__all__ = ["SparseRows", "SparseRowsError", "encode_sparse_rows", "HEADER_DTYPE"]
