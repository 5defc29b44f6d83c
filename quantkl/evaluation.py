"""The evaluation protocol of SPEC §1 on a real model: write a base dump, score a model against one.

Each chunk's logits stream from llama.cpp straight into the kernels (scoring)
and the encoder (dumping); one chunk is alive at a time.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from .dumpfile import LogitDump, LogitDumpWriter, regular_file_size, scored_rows_per_chunk
from .encoding import encode_llama_rows
from .runner import ModelError, ModelRunner
from .scoring import RowError, Scorer
from .stats import KLDResult, _exp

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


def read_text(path: str | os.PathLike) -> str:
    regular_file_size(os.fspath(path), "text file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read text: {e.strerror}") from None
    if not data.strip():
        raise ValueError(f"{path}: the text file is empty")
    return data.decode("utf-8", errors="replace")


def dump_base(model: str | os.PathLike, text_path: str | os.PathLike, out: str | os.PathLike, *,
              n_ctx: int = 512, chunks: Optional[int] = None, threads: Optional[int] = None,
              on_chunk: Optional[ChunkCallback] = None, verbose: bool = False) -> BasePerplexity:
    """Write the base model's llama.cpp logits file for a text; return its perplexity."""
    text = read_text(text_path)
    with ModelRunner(model, n_ctx, threads, verbose) as runner:
        tokens = runner.tokenize(text)
        n_chunk = count_chunks(len(tokens), n_ctx, chunks)
        tokens = tokens[:n_chunk * n_ctx]
        first = runner.first
        nll = []
        with LogitDumpWriter(out, n_ctx, runner.n_vocab, tokens) as writer:
            for c in range(n_chunk):
                chunk = tokens[c * n_ctx:(c + 1) * n_ctx]
                logits = runner.chunk_logits(chunk)
                rows, chunk_nll = encode_llama_rows(logits[:n_ctx - 1 - first], chunk[first + 1:],
                                                    threads=runner.threads)
                writer.write_chunk(rows)
                nll.append(chunk_nll)
                if on_chunk:
                    on_chunk(c + 1, n_chunk)
    return base_perplexity(np.concatenate(nll))


def update(scorer: Scorer, dumps, base, other, tokens, chunk: int) -> None:
    """scorer.update for a dump's chunk (numbered from 1); a row that could not
    be read (a file shrank under the memory map) is blamed on its file."""
    try:
        scorer.update(base, other, tokens, chunk=chunk)
    except RowError as e:
        if e.status & 256:
            for d in dumps:
                d.check_unchanged()
        raise


@dataclass
class RunTimes:
    """Where a scoring run's wall time went, in seconds."""
    wall: float = 0.0
    model: float = 0.0    # llama.cpp's forward passes
    scoring: float = 0.0  # quantkl's kernels (and the encoder for --save)

    def to_dict(self) -> dict:
        return {"wall_seconds": self.wall, "model_seconds": self.model,
                "scoring_seconds": self.scoring,
                "other_seconds": max(0.0, self.wall - self.model - self.scoring)}


def score_model(dump: LogitDump, model: str | os.PathLike, *, mode: str = "llama",
                topk: Sequence[int] = (1, 5, 10), save: Optional[str | os.PathLike] = None,
                threads: Optional[int] = None, on_chunk: Optional[Callable[[int, int, KLDResult], None]] = None,
                verbose: bool = False, runner: Optional[ModelRunner] = None,
                times: Optional[RunTimes] = None) -> KLDResult:
    """Run a model on a dump's own tokens and score it against the dump, chunk by chunk.

    ``on_chunk(chunk_number, n_chunk, running_result)`` follows every chunk
    (for the per-chunk table). ``save`` also writes the model's own dump.
    ``times``, if given, receives where the wall time went.
    """
    start = time.perf_counter()
    own = runner is None
    if own:
        runner = ModelRunner(model, dump.n_ctx, threads, verbose)
    decoded_before = runner.decode_seconds
    scoring = 0.0
    try:
        if runner.n_vocab != dump.n_vocab:
            raise ModelError(f"vocabulary mismatch: {dump.path} has {dump.n_vocab} entries, "
                             f"{runner.path} has {runner.n_vocab}")
        scorer = Scorer(mode=mode, topk=topk, threads=runner.threads)
        writer = LogitDumpWriter(save, dump.n_ctx, dump.n_vocab, dump.tokens) if save else None
        try:
            for ch in dump.chunks():
                logits = runner.chunk_logits(dump.chunk_tokens(ch.index))
                scored = logits[:dump.rows_per_chunk]
                t = time.perf_counter()
                update(scorer, (dump,), ch.rows, scored, ch.tokens, ch.index + 1)
                if writer:
                    writer.write_chunk(encode_llama_rows(scored, ch.tokens,
                                                         threads=runner.threads)[0])
                scoring += time.perf_counter() - t
                if on_chunk:
                    on_chunk(ch.index + 1, dump.n_chunk, scorer.result())
        except BaseException:
            if writer:
                writer.abort()
            raise
        if writer:
            writer.close()
        return scorer.result()
    finally:
        if times is not None:
            times.model = runner.decode_seconds - decoded_before
            times.scoring = scoring
            times.wall = time.perf_counter() - start
        if own:
            runner.close()


def compare_dumps(base: LogitDump, other: LogitDump, *, mode: str = "llama",
                  topk: Sequence[int] = (1, 5, 10), threads: Optional[int] = None,
                  on_chunk: Optional[Callable[[int, int, KLDResult], None]] = None) -> KLDResult:
    """Score two saved dumps of the same tokens against each other; no model needed."""
    if (base.n_ctx, base.n_vocab, base.n_chunk) != (other.n_ctx, other.n_vocab, other.n_chunk):
        raise ValueError(f"dumps differ in shape: {base.path} has n_ctx={base.n_ctx}, "
                         f"n_vocab={base.n_vocab}, {base.n_chunk} chunks; {other.path} has "
                         f"n_ctx={other.n_ctx}, n_vocab={other.n_vocab}, {other.n_chunk} chunks")
    if not np.array_equal(base.tokens, other.tokens):
        i = int(np.argmax(base.tokens != other.tokens))
        raise ValueError(f"dumps were made from different tokens (first difference at position "
                         f"{i % base.n_ctx} of chunk {i // base.n_ctx + 1})")
    scorer = Scorer(mode=mode, topk=topk, threads=threads)
    for b, o in zip(base.chunks(), other.chunks()):
        update(scorer, (base, other), b.rows, o.rows, b.tokens, b.index + 1)
        if on_chunk:
            on_chunk(b.index + 1, base.n_chunk, scorer.result())
    return scorer.result()


__all__ = ["count_chunks", "dump_base", "score_model", "compare_dumps", "base_perplexity",
           "BasePerplexity", "RunTimes", "scored_rows_per_chunk"]
