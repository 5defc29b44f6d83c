"""llama-perplexity's evaluation protocol (docs/formats.md) on a real model: write a base dump, score a model against one.

Each decode's logits stream from llama.cpp's output buffer straight into the
kernels (scoring) and the encoder and file writer (dumping), and the buffer
is reused by the next decode: memory holds one decode's rows, not a chunk's.
The per-chunk line and stopping rules read running sums; the per-token
arrays are joined once, at the end.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .dumpfile import LogitDump, LogitDumpWriter, dump_prefix, scored_rows_per_chunk
from .encoding import encode_llama_rows
from .inputs import EvalText
from .runner import ModelError, ModelOptions, ModelRunner
from .scoring import READ_FAULT, RowError, Scorer
from .sparse import encode_sparse_rows
from .result import KLDResult
from .stats import RunningTotals, _exp

# Called after each chunk with (chunk number from 1, chunks in all).
ChunkCallback = Callable[[int, int], None]


def count_chunks(n_tokens: int, n_ctx: int, chunks: Optional[int] = None) -> int:
    """Chunks llama-perplexity evaluates: floor(n_tokens / n_ctx), at most ``chunks``."""
    if n_tokens < 2 * n_ctx:
        raise ValueError(f"the text tokenizes to {n_tokens} tokens; a context of {n_ctx} needs "
                         f"at least {2 * n_ctx}")
    n = n_tokens // n_ctx
    if chunks is not None:
        if chunks < 1:
            raise ValueError(f"chunks must be at least 1, got {chunks}")
        n = min(n, chunks)
    return n


@dataclass
class BasePerplexity:
    """The base model's perplexity over the dumped rows, as llama-perplexity prints it."""
    ppl: float
    ppl_unc: float
    count: int

    def format(self) -> str:
        return f"Final estimate: PPL = {self.ppl:.4f} +/- {self.ppl_unc:.5f}"


def base_perplexity(nll: np.ndarray) -> BasePerplexity:
    """llama.cpp's final PPL line from per-token NLLs (float32 values summed in double)."""
    v = np.asarray(nll, np.float32).astype(np.float64)
    n = len(v)
    mean = float(np.sum(v)) / n
    var = float(np.sum(v * v)) / n - mean * mean
    ppl = _exp(mean)
    unc = math.sqrt(var / (n - 1)) * ppl if var > 0 and n > 1 else float("nan")
    return BasePerplexity(ppl, unc, n)


# Encoded rows held at once while writing a dump (a decode's rows are encoded
# and written in blocks of at most this many bytes).
ENCODE_BLOCK_BYTES = 32 << 20
# A dump's rows read at once while scoring; their pages are released before
# the next piece, so resident memory does not grow with the context.
PIECE_BYTES = 64 << 20


def piece_rows(dump: LogitDump) -> int:
    """Rows of ``dump`` in one piece of at most PIECE_BYTES."""
    return max(1, PIECE_BYTES // (2 * dump.row_width))


class RowEncoder:
    """float32 logits -> llama.cpp rows -> their place in a dump file, in
    blocks of bounded size, one buffer reused."""

    def __init__(self, writer: LogitDumpWriter, threads: int):
        self.writer, self.threads = writer, threads
        self.block = max(1, ENCODE_BLOCK_BYTES // (2 * writer.row_width))
        self._buf = np.empty((0, writer.row_width), np.uint16)

    def write(self, c: int, lo: int, logits: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Rows lo.. of chunk c from their logits; returns their NLLs (float32)."""
        n = len(logits)
        if len(self._buf) < min(n, self.block):
            self._buf = np.empty((min(n, self.block), self.writer.row_width), np.uint16)
        nll = np.empty(n, np.float32)
        for i in range(0, n, self.block):
            j = min(i + self.block, n)
            rows, nll[i:j] = encode_llama_rows(logits[i:j], tokens[i:j], threads=self.threads,
                                               out=self._buf[:j - i])
            self.writer.write_rows(c, lo + i, rows)
        return nll


class SparseRowEncoder:
    """float32 logits -> precise sparse rows (quantkl.sparse) -> a .kldp writer."""

    def __init__(self, writer, threads: int):
        self.writer, self.threads = writer, threads

    def write(self, c: int, lo: int, logits: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Rows lo.. of chunk c from their logits; returns their NLLs."""
        rows = encode_sparse_rows(logits, tokens, threads=self.threads)
        self.writer.write_rows(c, lo, rows)
        h = rows.headers
        return (h["x_max"].astype(np.float64) - h["x_tok"]) + h["lse"]


def dump_base(model: str | os.PathLike, text: "EvalText | str | os.PathLike | Sequence",
              out: str | os.PathLike, *,
              n_ctx: int = 512, chunks: Optional[int] = None,
              options: Optional[ModelOptions] = None,
              on_chunk: Optional[ChunkCallback] = None, verbose: bool = False,
              compress: bool = False, precise: bool = False) -> BasePerplexity:
    """Write the base model's llama.cpp logits file for a text; return its perplexity.

    ``text`` says what is evaluated (text files, or chat conversations put
    through the model's own template); a description of it is written beside
    the dump (``OUT.input.json``) and copied into later scores' records.
    ``compress`` writes a .kldz (quantkl.kldz) instead, its blocks compressed
    as they fill; ``precise`` a .kldp (quantkl.sparse: no rounded value,
    about a quarter of the .kld's size)."""
    if compress and precise:
        raise ValueError("a dump is either compressed (.kldz) or precise (.kldp), not both")
    if not isinstance(text, EvalText):
        text = EvalText([text] if isinstance(text, (str, os.PathLike)) else text)
    with ModelRunner(model, n_ctx, options, verbose) as runner:
        tokens = text.tokenize(runner)
        n_chunk = count_chunks(len(tokens), n_ctx, chunks)
        tokens = tokens[:n_chunk * n_ctx]
        first, per_chunk = runner.first, scored_rows_per_chunk(n_ctx)
        nll = np.empty(n_chunk * per_chunk, np.float64 if precise else np.float32)
        if compress or precise:
            from .kldz import KldpWriter, KldzWriter
            writer = (KldpWriter if precise else KldzWriter)(
                out, dump_prefix(n_ctx, runner.n_vocab, tokens), threads=runner.threads)
        else:
            writer = LogitDumpWriter(out, n_ctx, runner.n_vocab, tokens)
        with writer:
            encoder = (SparseRowEncoder if precise else RowEncoder)(writer, runner.threads)
            for group in chunk_groups(0, n_chunk, runner.parallel):
                texts = [tokens[c * n_ctx:(c + 1) * n_ctx] for c in group]
                for lo, logits in runner.decode_chunks(texts):
                    n = min(logits.shape[1], per_chunk - lo)  # position n_ctx - 1 is not scored
                    for k, c in enumerate(group if n > 0 else ()):
                        r = c * per_chunk + lo
                        nll[r:r + n] = encoder.write(c, lo, logits[k, :n],
                                                     texts[k][first + 1 + lo:first + 1 + lo + n])
                for c in group:
                    if on_chunk:
                        on_chunk(c + 1, n_chunk)
            text.write_description(writer.path, runner)
    return base_perplexity(nll)


def chunk_groups(start: int, stop: int, size: int) -> Iterator[List[int]]:
    """Chunk indices start..stop-1 in groups of ``size`` (decoded together)."""
    for lo in range(start, stop, size):
        yield list(range(lo, min(lo + size, stop)))


def chunk_range(text: Optional[str], n_chunk: int) -> Tuple[int, int]:
    """``A:B`` (chunk indices from 0, half-open, either end optional, as a
    Python slice) checked against a dump of ``n_chunk`` chunks."""
    if text is None:
        return 0, n_chunk
    parts = str(text).split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        a = int(parts[0]) if parts[0].strip() else 0
        b = int(parts[1]) if parts[1].strip() else n_chunk
    except ValueError:
        raise ValueError(f"--chunks takes A:B (chunk indices from 0, B excluded), got {text!r}"
                         ) from None
    if not 0 <= a < b <= n_chunk:
        raise ValueError(f"--chunks {text}: the dump has chunks 0:{n_chunk}; a range needs "
                         f"0 <= A < B <= {n_chunk}")
    return a, b


@dataclass
class StopRule:
    """Stop once the mean KLD is known well enough: its uncertainty (the ±
    llama-perplexity prints) at most ``unc`` nats, or at most ``unc_rel`` of
    the mean. Checked after every chunk."""
    unc: Optional[float] = None
    unc_rel: Optional[float] = None

    def __post_init__(self):
        for name in ("unc", "unc_rel"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"target {name.replace('_', '-')} must be a positive number, "
                                 f"got {v}")

    def reached(self, result: "RunningTotals | KLDResult") -> Optional[str]:
        """Why to stop now, or None."""
        if result.count < 2:
            return None
        mean, unc = result.kld_mean, result.kld_mean_unc
        if not math.isfinite(unc):
            return None
        if self.unc is not None and unc <= self.unc:
            return f"mean KLD uncertainty {unc:.6f} <= target {self.unc:g}"
        if self.unc_rel is not None and mean > 0 and unc <= self.unc_rel * mean:
            return (f"mean KLD uncertainty {unc:.6f} <= {self.unc_rel:g} x mean {mean:.6f}")
        return None


def score_piece(scorer: Scorer, dumps, base, other, tokens, first_row: int,
                chunk: int) -> KLDResult:
    """scorer.score_block for rows of a dump's chunk (numbered from 1); a row
    that could not be read (a file shrank under the memory map) is blamed on
    its file."""
    try:
        return scorer.score_block(base, other, tokens, first_row=first_row, chunk=chunk)
    except RowError as e:
        if e.status & READ_FAULT:
            for d in dumps:
                d.check_unchanged()
        raise


@dataclass
class RunInfo:
    """What a scoring run did: the chunks it scored, why it stopped, and where
    its wall time went (seconds)."""
    chunks: Tuple[int, int] = (0, 0)      # the range asked for (indices, B excluded)
    scored: Tuple[int, int] = (0, 0)      # the range scored (shorter when a target stopped it)
    stop_reason: str = "end of the chunk range"
    wall: float = 0.0
    model: float = 0.0    # llama.cpp's forward passes
    scoring: float = 0.0  # quantkl's kernels (and the encoder for --save)

    def timing(self) -> dict:
        return {"wall_seconds": self.wall, "model_seconds": self.model,
                "scoring_seconds": self.scoring,
                "other_seconds": max(0.0, self.wall - self.model - self.scoring)}

    def to_dict(self) -> dict:
        return {"chunks": list(self.chunks), "chunks_scored": list(self.scored),
                "stop_reason": self.stop_reason}

    def summary(self) -> str:
        a, b = self.scored
        n = b - a
        return f"scored chunks {a}:{b} ({n} chunk{'s' if n != 1 else ''}): {self.stop_reason}"


# Called after each chunk with (chunk number from 1 in the dump, chunks in
# the dump, the running totals: RunningTotals.format_chunk_row prints the line).
ResultCallback = Callable[[int, int, RunningTotals], None]


def after_chunk(scorer: Scorer, c: int, n_chunk: int, first: int,
                on_chunk: Optional[ResultCallback], stop: Optional[StopRule],
                info: RunInfo) -> bool:
    """Report chunk c (0-based) and say whether the stop rule ends the run there."""
    if on_chunk:
        on_chunk(c + 1, n_chunk, scorer.running)
    reason = stop.reached(scorer.running) if stop else None
    if reason:
        info.scored, info.stop_reason = (first, c + 1), reason
    return reason is not None


def score_model(dump: LogitDump, model: str | os.PathLike, *, mode: str = "llama",
                topk: Sequence[int] = (1, 5, 10), save: Optional[str | os.PathLike] = None,
                options: Optional[ModelOptions] = None, chunks: Optional[Tuple[int, int]] = None,
                stop: Optional[StopRule] = None, on_chunk: Optional[ResultCallback] = None,
                verbose: bool = False, runner: Optional[ModelRunner] = None,
                info: Optional[RunInfo] = None, reverse: bool = False,
                js: bool = False) -> KLDResult:
    """Run a model on a dump's own tokens and score it against the dump, decode by decode.

    ``chunks`` (A, B) scores chunk indices A..B-1 only (a shard; see
    ``quantkl merge``); ``stop`` ends the run early once the mean KLD is
    precise enough. ``on_chunk(chunk_number, n_chunk, running_totals)``
    follows every chunk (for the per-chunk table). ``save`` also writes the
    model's own dump (whole dumps only). ``info``, if given, receives what was
    scored, why it stopped and where the wall time went.
    """
    start = time.perf_counter()
    info = info if info is not None else RunInfo()
    a, b = chunks if chunks is not None else (0, dump.n_chunk)
    info.chunks = info.scored = (a, b)
    if save and ((a, b) != (0, dump.n_chunk) or stop):
        raise ValueError("--save writes a whole dump: it cannot be combined with --chunks or a "
                         "target uncertainty")
    own = runner is None
    if own:
        runner = ModelRunner(model, dump.n_ctx, options, verbose)
    decoded_before = runner.decode_seconds
    scoring = 0.0
    per_chunk, step = dump.rows_per_chunk, piece_rows(dump)
    try:
        if runner.n_vocab != dump.n_vocab:
            raise ModelError(f"vocabulary mismatch: {dump.path} has {dump.n_vocab} entries, "
                             f"{runner.path} has {runner.n_vocab}")
        scorer = Scorer(mode=mode, topk=topk, threads=runner.threads, reverse=reverse, js=js)
        writer = LogitDumpWriter(save, dump.n_ctx, dump.n_vocab, dump.tokens) if save else None
        encoder = RowEncoder(writer, runner.threads) if writer else None
        try:
            for group in chunk_groups(a, b, runner.parallel):
                # chunks decoded together arrive a slice of each at a time;
                # their blocks join the result in chunk order
                blocks: List[List[KLDResult]] = [[] for _ in group]
                for lo, logits in runner.decode_chunks([dump.chunk_tokens(c) for c in group]):
                    n = min(logits.shape[1], per_chunk - lo)  # position n_ctx - 1 is not scored
                    t = time.perf_counter()
                    for k, c in enumerate(group if n > 0 else ()):
                        for i in range(0, n, step):
                            j = min(i + step, n)
                            piece = dump.piece(c, lo + i, lo + j)
                            blocks[k].append(score_piece(
                                scorer, (dump,), piece.rows, logits[k, i:j], piece.tokens,
                                scorer.count + k * per_chunk + lo + i, c + 1))
                            if encoder:
                                encoder.write(c, lo + i, logits[k, i:j], piece.tokens)
                    scoring += time.perf_counter() - t
                for c, pieces in zip(group, blocks):
                    for j, block in enumerate(pieces):
                        scorer.add(block, chunk_end=j == len(pieces) - 1)
                    if after_chunk(scorer, c, dump.n_chunk, a, on_chunk, stop, info):
                        break
                else:
                    continue
                break
        except BaseException:
            if writer:
                writer.abort()
            raise
        if writer:
            writer.close()
        return scorer.result()
    finally:
        info.model = runner.decode_seconds - decoded_before
        info.scoring = scoring
        info.wall = time.perf_counter() - start
        if own:
            runner.close()


def compare_dumps(base: LogitDump, other: LogitDump, *, mode: str = "llama",
                  topk: Sequence[int] = (1, 5, 10), threads: Optional[int] = None,
                  chunks: Optional[Tuple[int, int]] = None, stop: Optional[StopRule] = None,
                  on_chunk: Optional[ResultCallback] = None,
                  info: Optional[RunInfo] = None, reverse: bool = False,
                  js: bool = False) -> KLDResult:
    """Score two saved dumps of the same tokens against each other; no model
    needed. ``chunks``, ``stop`` and ``info`` as for :func:`score_model`."""
    start = time.perf_counter()
    if other.precise and not base.precise:
        raise ValueError(f"{other.path} is a precise .kldp: compare it as the base (first), "
                         f"against another .kldp")
    if base.precise and not other.precise:
        raise ValueError(f"{base.path} is a precise .kldp and {other.path} is not: compare two "
                         f".kldp files, or score the other model against {base.path}")
    if (base.n_ctx, base.n_vocab, base.n_chunk) != (other.n_ctx, other.n_vocab, other.n_chunk):
        raise ValueError(f"dumps differ in shape: {base.path} has n_ctx={base.n_ctx}, "
                         f"n_vocab={base.n_vocab}, {base.n_chunk} chunks; {other.path} has "
                         f"n_ctx={other.n_ctx}, n_vocab={other.n_vocab}, {other.n_chunk} chunks")
    if not np.array_equal(base.tokens, other.tokens):
        i = int(np.argmax(base.tokens != other.tokens))
        raise ValueError(f"dumps were made from different tokens (first difference at position "
                         f"{i % base.n_ctx} of chunk {i // base.n_ctx + 1})")
    info = info if info is not None else RunInfo()
    a, b = chunks if chunks is not None else (0, base.n_chunk)
    info.chunks = info.scored = (a, b)
    scorer = Scorer(mode=mode, topk=topk, threads=threads, reverse=reverse, js=js)
    per_chunk, step = base.rows_per_chunk, piece_rows(base)
    for c in range(a, b):
        for lo in range(0, per_chunk, step):
            hi = min(lo + step, per_chunk)
            bp, op = base.piece(c, lo, hi), other.piece(c, lo, hi)
            scorer.add(score_piece(scorer, (base, other), bp.rows, op.rows, bp.tokens,
                                   scorer.count, c + 1), chunk_end=hi == per_chunk)
        if after_chunk(scorer, c, base.n_chunk, a, on_chunk, stop, info):
            break
    info.wall = time.perf_counter() - start
    info.scoring = info.wall
    return scorer.result()


__all__ = ["count_chunks", "dump_base", "score_model", "compare_dumps", "base_perplexity",
           "BasePerplexity", "RunInfo", "StopRule", "chunk_range", "scored_rows_per_chunk"]
