"""Scoring a base model's distributions against another's, row by row.

``score`` does one block; :class:`Scorer` accumulates blocks (chunks of a dump,
shards on other machines) and its results add up. Python checks and routes;
the C kernels (quantkl._kernels) compute.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Union

import numpy as np

from . import _kernels
from ._kernels import TOPK_MAX
from .arrays import LlamaRows, logits_view, thread_count, threads_for, token_ids
from .result import KLDResult
from .sparse import SparseRows
from .stats import MODES, RunningTotals, check_topk

Distributions = Union[np.ndarray, LlamaRows, SparseRows]

_CORRUPT = ("is corrupt: its codes decode to log-probabilities above 0 or summing past 1, "
            "or its scale is 0 with codes set; llama.cpp writes no such row")
_HEADER = "has a corrupt header (scale/min_log_prob not finite, scale < 0 or min_log_prob > 0)"

# Bits of qk_row.status (csrc/quantkl.h), most telling first.
_STATUS_MESSAGES = (
    ("READ_FAULT", "{row} could not be read: a memory-mapped file was truncated or changed "
                   "while quantkl read it"),
    ("P_BAD_HEADER", f"base llama {{row}} {_HEADER}"),
    ("Q_BAD_HEADER", f"other llama {{row}} {_HEADER}"),
    ("P_CORRUPT", f"base llama {{row}} {_CORRUPT}"),
    ("Q_CORRUPT", f"other llama {{row}} {_CORRUPT}"),
    ("P_NONFINITE", "base logits {row} contains NaN or +inf"),
    ("Q_NONFINITE", "other logits {row} contains NaN or +inf"),
    ("P_EMPTY", "base logits {row} has no finite logit (all -inf)"),
    ("Q_EMPTY", "other logits {row} has no finite logit (all -inf)"),
)
# The same bits from the sparse kernels (a precise .kldp row on that side).
_SPARSE_MESSAGES = {
    "P_BAD_HEADER": "base sparse {row} has an impossible header (counts, max logit or "
                    "log-sum-exp)",
    "Q_BAD_HEADER": "other sparse {row} has an impossible header (counts, max logit or "
                    "log-sum-exp)",
    "P_CORRUPT": "base sparse {row} stores indices out of range or not increasing",
    "Q_CORRUPT": "other sparse {row} stores indices out of range or not increasing",
}
READ_FAULT = _kernels.STATUS["READ_FAULT"]
_MODE_CODES = _kernels.MODES


class RowError(ValueError):
    """A row the kernels refused (NaN, corrupt dump row, unreadable memory).

    ``row`` is its index in the whole input (across chunks), ``status`` the
    kernel's status bits."""

    def __init__(self, message: str, row: int, status: int):
        super().__init__(message)
        self.row, self.status = row, status


def raise_for_status(status: np.ndarray, first_row: int = 0, chunk: Optional[int] = None,
                     sparse: bool = False) -> None:
    """Turn the kernels' per-row status bits into one clear RowError. The
    block's rows start at row ``first_row`` of the input; ``chunk`` (from 1,
    as llama-perplexity counts) names the dump chunk they are; ``sparse``:
    the rows were precise sparse ones."""
    bad = np.flatnonzero(status)
    if not bad.size:
        return
    row = int(bad[0])
    bits = int(status[row])
    where = f"row {first_row + row}"
    if chunk is not None:
        where += f" (chunk {chunk}, row {row} of the chunk)"
    for name, msg in _STATUS_MESSAGES:
        if sparse:
            msg = _SPARSE_MESSAGES.get(name, msg)
        if bits & _kernels.STATUS[name]:
            more = f" ({bad.size} bad rows in this block)" if bad.size > 1 else ""
            raise RowError(msg.format(row=where) + more, first_row + row, bits)
    raise RuntimeError(f"kernel reported unknown status {bits} for {where}")


def select_kernel(name: str) -> None:
    """Force a kernel path ("avx512", "avx2" or "portable"; see kernel_paths()) for this process."""
    _kernels.select_kernel(name)


def kernel_paths():
    """[(name, supported)] for every kernel path compiled into this build."""
    return _kernels.kernel_paths()


def current_kernel() -> str:
    return _kernels.current_kernel()


def _check_mode(mode: str) -> int:
    if mode not in MODES:
        raise ValueError(f"mode must be 'llama' or 'exact', got {mode!r}")
    return _MODE_CODES[mode]


def score_rows(base: Distributions, other: Distributions, tokens: object, *,
               mode: str = "llama", threads: Optional[int] = None, first_row: int = 0,
               chunk: Optional[int] = None, reverse: bool = False,
               js: bool = False) -> "_kernels.RowScores":
    """Per-row kernel outputs (kld, nll_p, nll_q, top_p, top_q, rank, p_top,
    overlap, with ``reverse`` rkl, KL(other || base), and with ``js`` the
    Jensen-Shannon divergence) for one block.

    ``base`` is float logits (rows, vocab), :class:`LlamaRows` or
    :class:`~quantkl.sparse.SparseRows`; ``other`` is float logits or rows
    of the base's kind. Against sparse rows the outputs hold intervals'
    upper ends too (``kld_hi``, ``rkl_hi``, ``js_hi``). Raises
    ValueError/TypeError on bad input; a bad row is named by its index from
    ``first_row`` and, when the block is a dump's chunk, by ``chunk`` too.
    """
    mode_code = (_check_mode(mode) | (_kernels.REVERSE if reverse else 0)
                 | (_kernels.JS if js else 0))
    nthreads = thread_count(threads)
    if isinstance(base, SparseRows) or isinstance(other, SparseRows):
        return _score_sparse(base, other, tokens, mode_code, nthreads, first_row, chunk,
                             reverse or js)
    if not isinstance(base, LlamaRows):
        base_view, base_dtype = logits_view(base, "base")
    if not isinstance(other, LlamaRows):
        other_view, other_dtype = logits_view(other, "other")
    n_rows, n_vocab = base.shape if isinstance(base, LlamaRows) else base_view.shape
    _check_shapes((n_rows, n_vocab),
                  other.shape if isinstance(other, LlamaRows) else other_view.shape)
    tok = token_ids(tokens, n_rows, n_vocab)
    nthreads = threads_for(nthreads, n_rows, n_vocab)
    if isinstance(base, LlamaRows) and isinstance(other, LlamaRows):
        out = _kernels.score_llama_llama(base.rows, other.rows, tok, n_vocab, mode_code, nthreads)
    elif isinstance(base, LlamaRows):
        out = _kernels.score_llama_logits(base.rows, other_view, other_dtype, tok, n_vocab,
                                          mode_code, nthreads)
    elif isinstance(other, LlamaRows):
        raise TypeError("float base logits against llama rows is not supported: "
                        "encode the base with quantkl.encode_llama_rows first")
    else:
        out = _kernels.score_logits_logits(base_view, base_dtype, other_view, other_dtype, tok,
                                           n_vocab, mode_code, nthreads)
    raise_for_status(out.status, first_row, chunk)
    return out


def _check_shapes(base_shape, other_shape) -> None:
    (n_rows, n_vocab), (o_rows, o_vocab) = base_shape, other_shape
    if o_vocab != n_vocab:
        raise ValueError(f"vocabulary mismatch: base has {n_vocab} entries, other has {o_vocab}")
    if o_rows != n_rows:
        raise ValueError(f"row count mismatch: base has {n_rows} rows, other has {o_rows}")
    if n_rows == 0:
        raise ValueError("no rows to score")


def _score_sparse(base, other, tokens, mode_code: int, nthreads: int, first_row: int,
                  chunk: Optional[int], full_sums: bool) -> "_kernels.RowScores":
    if not isinstance(base, SparseRows):
        raise TypeError("sparse rows (a .kldp) are the base of a comparison, scored against "
                        "float logits or other sparse rows")
    n_rows, n_vocab = base.shape
    if isinstance(other, SparseRows):
        if full_sums:
            raise ValueError("the reverse KL and Jensen-Shannon need the other side's full "
                             "distribution: two precise sparse dumps give the forward KL only "
                             "(score the quant's model against the base instead)")
    elif isinstance(other, LlamaRows):
        raise TypeError("a precise sparse base is scored against float logits or another "
                        ".kldp, not llama rows")
    else:
        other_view, other_dtype = logits_view(other, "other")
    _check_shapes(base.shape, other.shape if isinstance(other, SparseRows) else other_view.shape)
    tok = token_ids(tokens, n_rows, n_vocab)
    nthreads = threads_for(nthreads, n_rows, n_vocab)
    if isinstance(other, SparseRows):
        out = _kernels.score_sparse_sparse(base.header_bytes(), base.offsets, base.indices,
                                           base.logits, other.header_bytes(), other.offsets,
                                           other.indices, other.logits, tok, n_vocab, mode_code,
                                           nthreads)
    else:
        out = _kernels.score_sparse_logits(base.header_bytes(), base.offsets, base.indices,
                                           base.logits, other_view, other_dtype, tok, n_vocab,
                                           mode_code, nthreads)
    raise_for_status(out.status, first_row, chunk, sparse=True)
    return out


def check_llama_rows(rows: LlamaRows, threads: Optional[int] = None) -> np.ndarray:
    """Status bits of each llama row checked on its own (0: a row llama.cpp
    could have written; else its header or codes are corrupt). A row scored
    against itself meets every check the kernels make."""
    n_rows, n_vocab = rows.shape
    if n_rows == 0:
        return np.zeros(0, np.int32)
    out = _kernels.score_llama_llama(rows.rows, rows.rows, np.zeros(n_rows, np.int64), n_vocab,
                                     _MODE_CODES["llama"],
                                     threads_for(thread_count(threads), n_rows, n_vocab))
    other_side = _kernels.STATUS["Q_BAD_HEADER"] | _kernels.STATUS["Q_CORRUPT"]
    return out.status & ~np.int32(other_side)  # the "other" side is the same row


class Scorer:
    """Streaming accumulator: ``update`` with blocks of rows, then ``result()``.

    Each update is one chunk unless ``chunk_end=False`` says more of the same
    chunk follows (a long chunk arrives one decode at a time). Running sums
    give the per-chunk line and stopping rules at a constant cost per block;
    the per-token arrays are joined once, by ``result()``. Results of separate
    Scorers (other processes, other machines) add up: ``a.result() +
    b.result()`` equals one Scorer fed both blocks in order.
    """

    def __init__(self, *, mode: str = "llama", topk: Sequence[int] = (1, 5, 10),
                 threads: Optional[int] = None, reverse: bool = False, js: bool = False):
        _check_mode(mode)
        self.mode = mode
        self.reverse = bool(reverse)
        self.js = bool(js)
        self.topk = check_topk(topk)
        self.threads = thread_count(threads)
        self.running = RunningTotals()
        self._blocks: List[KLDResult] = []
        self._chunk_ends: List[int] = []

    @property
    def count(self) -> int:
        """Tokens scored so far."""
        return self.running.count

    def score_block(self, base: Distributions, other: Distributions, tokens: object, *,
                    first_row: int = 0, chunk: Optional[int] = None) -> KLDResult:
        """One block's own result, not yet added (see ``add``); a bad row is
        named by its index from ``first_row`` and by ``chunk``."""
        rows = score_rows(base, other, tokens, mode=self.mode, threads=self.threads,
                          first_row=first_row, chunk=chunk, reverse=self.reverse,
                          js=self.js)
        # llama mode prints PPL from the NLLs llama-perplexity stores (float32,
        # rounded step by step); the exact ones differ by its rounding noise.
        nll = rows.nll_q_llama if self.mode == "llama" else rows.nll_q
        bounds = rows.kld_hi is not None
        return KLDResult(rows.kld, nll, rows.nll_p, rows.rank, self.mode, self.topk,
                         top_base=rows.top_p, top_other=rows.top_q, p_top=rows.p_top,
                         overlap=rows.overlap, token=np.asarray(tokens, np.int64),
                         rkl=rows.rkl if self.reverse else None,
                         js=rows.js if self.js else None,
                         kld_hi=rows.kld_hi if bounds and self.mode == "exact" else None,
                         rkl_hi=rows.rkl_hi if bounds and self.reverse else None,
                         js_hi=rows.js_hi if bounds and self.js else None)

    def add(self, block: KLDResult, chunk_end: bool = True) -> None:
        """Append a block scored by ``score_block``; ``chunk_end`` closes its chunk."""
        self.running.add(block)
        self._blocks.append(block)
        if chunk_end:
            self._chunk_ends.append(self.count)

    def update(self, base: Distributions, other: Distributions, tokens: object, *,
               chunk: Optional[int] = None, chunk_end: bool = True) -> KLDResult:
        """Score one block (e.g. one dump chunk, numbered from 1 in ``chunk``)
        and add it; returns that block's own result."""
        block = self.score_block(base, other, tokens, first_row=self.count, chunk=chunk)
        self.add(block, chunk_end)
        return block

    def result(self) -> KLDResult:
        """Everything scored so far, one chunk per closed chunk."""
        if not self._blocks:
            return KLDResult(np.empty(0), np.empty(0), np.empty(0), np.empty(0, np.int8),
                             self.mode, self.topk, [], p_top=np.empty(0),
                             overlap=np.empty((0, TOPK_MAX), np.uint8),
                             token=np.empty(0, np.int64),
                             rkl=np.empty(0) if self.reverse else None,
                             js=np.empty(0) if self.js else None)
        ends = list(self._chunk_ends)
        if not ends or ends[-1] != self.count:
            ends.append(self.count)  # a chunk still open counts as one
        total = KLDResult.concat(self._blocks, ends)
        self._blocks = [total]
        return total


def score(base: Distributions, other: Distributions, tokens: object, *, mode: str = "llama",
          topk: Sequence[int] = (1, 5, 10), threads: Optional[int] = None,
          reverse: bool = False, js: bool = False) -> KLDResult:
    """KL(base || other) and llama-perplexity's statistics over a block of rows.

    base, other: logits (rows, vocab) as float32/float16/bfloat16, or
        :class:`LlamaRows` (llama.cpp dump rows), or
        :class:`~quantkl.sparse.SparseRows` (a precise .kldp base). ``other``
        may be rows only when ``base`` is rows of the same kind (two saved
        dumps). Against sparse rows, exact mode's KLD and the reverse KL and
        JS are intervals: the result's ``kld_hi``, ``rkl_hi``, ``js_hi`` are
        their upper ends.
    tokens: the actual next token of each row (the one whose NLL is scored).
    mode: "llama" reproduces llama-perplexity (base terms with log p <= -16
        dropped); "exact" sums every term (a dump's code 0 is its clipped tail).
    topk: the k (1..10) for which top-k agreement is reported.
    threads: rows are scored in parallel; default all available cores.
    reverse: also KL(other || base) per token (``rkl``; an exp per entry more).
    js: also the Jensen-Shannon divergence per token (``js``; an exp, an
        expm1 and a log per entry more). Both are full sums, the same in
        either mode, with a dump's code 0 (on either side) read as its
        clipped tail; see README "Beyond llama-perplexity's block" (under
        "The command") for what that means.
    """
    s = Scorer(mode=mode, topk=topk, threads=threads, reverse=reverse, js=js)
    s.update(base, other, tokens)
    return s.result()


def _apply_kernel_env() -> None:
    name = os.environ.get("QUANTKL_KERNEL", "").strip()
    if name and name != "auto":
        select_kernel(name)
