"""llama.cpp `_logits_` files (docs/formats.md): a memory-mapped reader and a streaming writer.

The reader checks everything it can before any row is touched (magic, header,
exact file length, token ids) and reports in plain words what is wrong. Chunks
are handed out one at a time as views into the map, and the pages of a chunk
are released once the next is requested, so scoring a 20 GB file keeps
resident memory at about one chunk.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .arrays import LlamaRows, llama_row_width

if TYPE_CHECKING:
    from .sparse import SparseRows
from .files import check_output_path, regular_file_size

MAGIC = b"_logits_"
HEADER = struct.Struct("<8sIii")


class DumpError(ValueError):
    """A logits file that is not what it should be (foreign, truncated, inconsistent)."""


def scored_rows_per_chunk(n_ctx: int) -> int:
    """Rows llama-perplexity scores per chunk: positions n_ctx/2 .. n_ctx-2."""
    return n_ctx - 1 - n_ctx // 2


@dataclass(frozen=True)
class Chunk:
    """One chunk of a dump: its rows (SparseRows for a .kldp) and the token each row predicts."""
    index: int
    rows: "LlamaRows | SparseRows"
    tokens: np.ndarray  # int32, the actual next token of each row


class LogitDump:
    """A llama.cpp logits file written by `llama-perplexity --kl-divergence-base`,
    or the same compressed (.kldz), or quantkl's precise sparse form (.kldp,
    whose rows are SparseRows).

    Attributes: ``n_ctx``, ``n_vocab``, ``n_chunk``, ``rows_per_chunk``,
    ``tokens`` (all evaluated tokens, int32, chunk after chunk), ``path``.
    """

    def __init__(self, path: str | os.PathLike):
        from .kldz import container_magic
        self.path = os.fspath(path)
        size = regular_file_size(self.path, "logits file", DumpError)
        self._kldz = self._map = None
        if container_magic(self.path):
            self._open_kldz(size)
            return
        try:
            f = open(self.path, "rb")
        except OSError as e:
            raise DumpError(f"{self.path}: cannot open: {e.strerror}") from None
        with f:
            head = f.read(HEADER.size)
            if size == 0:
                raise DumpError(f"{self.path}: empty file, not a llama.cpp logits file")
            if len(head) < 8 or head[:8] != MAGIC:
                raise DumpError(f"{self.path}: not a llama.cpp logits file "
                                f"(starts with {head[:8]!r}, expected {MAGIC!r})")
            if len(head) < HEADER.size:
                raise DumpError(f"{self.path}: truncated header ({size} bytes, need {HEADER.size})")
            _, n_ctx, n_vocab, n_chunk = HEADER.unpack(head)
            if n_ctx < 3 or n_vocab < 1 or n_chunk < 1:
                raise DumpError(f"{self.path}: impossible header n_ctx={n_ctx}, "
                                f"n_vocab={n_vocab}, n_chunk={n_chunk}")
            self.size = size
            self.n_ctx, self.n_vocab, self.n_chunk = n_ctx, n_vocab, n_chunk
            self.rows_per_chunk = scored_rows_per_chunk(n_ctx)
            self.row_width = llama_row_width(n_vocab)
            self._check_length()
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._fd = os.dup(f.fileno())  # to notice the file shrinking under us
        self.tokens = np.frombuffer(self._map, np.int32, n_ctx * n_chunk, HEADER.size)
        self._check_tokens()
        self._rows = np.frombuffer(self._map, np.uint16, self.n_rows * self.row_width,
                                   self.rows_offset).reshape(self.n_rows, self.row_width)
        self._resident: Optional[Tuple[int, int]] = None

    def _open_kldz(self, size: int) -> None:
        """The same file compressed, or its precise sparse form (quantkl.kldz):
        rows come from its blocks."""
        from .kldz import KldzReader
        z = self._kldz = KldzReader(self.path)
        self.size = size
        self.n_ctx, self.n_vocab, self.n_chunk = z.n_ctx, z.n_vocab, z.n_chunk
        self.rows_per_chunk, self.row_width = z.rows_per_chunk, z.row_width
        self._fd = os.dup(z.fileno())
        self.tokens = np.frombuffer(z.prefix, np.int32, self.n_ctx * self.n_chunk, HEADER.size)
        self._check_tokens()
        self._rows = None
        self._resident = None

    def _check_tokens(self) -> None:
        bad = np.flatnonzero((self.tokens < 0) | (self.tokens >= self.n_vocab))
        if bad.size:
            i, tok = int(bad[0]), int(self.tokens[bad[0]])
            self.close()
            raise DumpError(f"{self.path}: token {tok} at position {i % self.n_ctx} of "
                            f"chunk {i // self.n_ctx + 1} is outside the vocabulary "
                            f"[0, {self.n_vocab})")

    @property
    def compressed(self) -> bool:
        """Whether this is a .kldz or .kldp (rows decompressed a piece at a time)."""
        return self._kldz is not None

    @property
    def precise(self) -> bool:
        """Whether this is a .kldp: its rows are SparseRows, not llama rows."""
        return self._kldz is not None and self._kldz.precise

    def compression(self) -> Optional[str]:
        """A .kldz's or .kldp's codec, level and blocks, in words (None for a .kld)."""
        z = self._kldz
        if z is None:
            return None
        return (f"zstd level {z.level}, {len(z.blocks)} blocks of up to "
                f"{z.rows_per_block} rows, "
                f"{self.size / (self.rows_offset + 2 * self.row_width * self.n_rows):.3f} of "
                f"the .kld")

    # --- layout ------------------------------------------------------------
    @property
    def n_rows(self) -> int:
        return self.n_chunk * self.rows_per_chunk

    @property
    def rows_offset(self) -> int:
        return HEADER.size + 4 * self.n_ctx * self.n_chunk

    @property
    def chunk_bytes(self) -> int:
        return 2 * self.row_width * self.rows_per_chunk

    def expected_size(self) -> int:
        return self.rows_offset + self.n_chunk * self.chunk_bytes

    def _check_length(self) -> None:
        expected = self.expected_size()
        if self.size == expected:
            return
        if self.size > expected:
            raise DumpError(f"{self.path}: {self.size - expected} unexpected bytes after the last "
                            f"of {self.n_chunk} chunks (header says {expected} bytes in all)")
        if self.size < self.rows_offset:
            raise DumpError(f"{self.path}: truncated in the token list ({self.size} of "
                            f"{expected} bytes; header says {self.n_chunk} chunks of {self.n_ctx})")
        whole = (self.size - self.rows_offset) // self.chunk_bytes
        raise DumpError(f"{self.path}: truncated at chunk {whole + 1} of {self.n_chunk} "
                        f"({self.size} of {expected} bytes; {whole} whole chunks)")

    # --- access ------------------------------------------------------------
    def chunk_tokens(self, c: int) -> np.ndarray:
        """The n_ctx tokens evaluated in chunk c (0-based)."""
        return self.tokens[c * self.n_ctx:(c + 1) * self.n_ctx]

    def check_unchanged(self) -> None:
        """DumpError if the file has shrunk since it was opened: its pages are
        gone, and reading them would kill the process (SIGBUS)."""
        size = os.fstat(self._fd).st_size
        if size < self.size:
            raise DumpError(f"{self.path}: truncated to {size} bytes while being read "
                            f"(it had {self.size}); another process changed it")

    def chunk(self, c: int) -> Chunk:
        return self.piece(c, 0, self.rows_per_chunk)

    def piece(self, c: int, lo: int, hi: int) -> Chunk:
        """Rows lo..hi-1 of chunk c (0-based) and the tokens they predict.
        The pages of the piece served before are released: resident memory
        holds one piece of the file, however long a chunk is."""
        if not 0 <= c < self.n_chunk:
            raise IndexError(f"chunk {c} out of range 0..{self.n_chunk - 1}")
        if not 0 <= lo < hi <= self.rows_per_chunk:
            raise IndexError(f"rows {lo}:{hi} out of range 0:{self.rows_per_chunk}")
        self.check_unchanged()
        first = self.n_ctx // 2
        if self.precise:
            rows = self._kldz.read_sparse(c, lo, hi)
        elif self._kldz is not None:
            rows = LlamaRows(self._kldz.read_rows(c, lo, hi), self.n_vocab)
        else:
            r0 = c * self.rows_per_chunk
            self._release_previous((r0 + lo, r0 + hi))
            rows = LlamaRows(self._rows[r0 + lo:r0 + hi], self.n_vocab)
        return Chunk(c, rows, np.ascontiguousarray(self.chunk_tokens(c)[first + 1 + lo:
                                                                        first + 1 + hi]))

    def chunks(self, start: int = 0, stop: Optional[int] = None) -> Iterator[Chunk]:
        for c in range(start, self.n_chunk if stop is None else min(stop, self.n_chunk)):
            yield self.chunk(c)

    def scored_tokens(self) -> np.ndarray:
        """The next token of every row, all chunks."""
        first = self.n_ctx // 2
        return self.tokens.reshape(self.n_chunk, self.n_ctx)[:, first + 1:].reshape(-1).copy()

    def all_rows(self) -> LlamaRows:
        """Every row as one LlamaRows view (memory-mapped, not loaded); a
        .kldz is read a piece at a time instead (``piece``)."""
        if self._kldz is not None:
            raise DumpError(f"{self.path}: a .kldz or .kldp is read a piece at a time (piece(), "
                            f"chunks()); quantkl unpack makes the .kld of a .kldz")
        return LlamaRows(self._rows, self.n_vocab)

    def sample_rows(self, rows: Sequence[int]) -> "LlamaRows | SparseRows":
        """The rows at these indices (over all chunks), copied."""
        if self._kldz is None:
            return LlamaRows(self._rows[list(rows)], self.n_vocab)
        # each block decompressed once, for every sampled row it holds
        r, size = self.rows_per_chunk, self._kldz.rows_per_block
        by_block: dict = {}
        for k, i in enumerate(rows):
            by_block.setdefault((i // r, i % r // size), []).append(k)
        read = self._kldz.read_sparse if self.precise else self._kldz.read_rows
        picked: list = [None] * len(rows)
        for (c, b), ks in by_block.items():
            lo = b * size
            block = read(c, lo, min(lo + size, r), threads=1)
            for k in ks:
                at = rows[k] % r - lo
                picked[k] = block.slice(at, at + 1) if self.precise else block[at]
        if self.precise:
            from .sparse import concat
            return concat(picked, self.n_vocab)
        return LlamaRows(np.array(picked, np.uint16).reshape(len(rows), self.row_width),
                         self.n_vocab)

    def _release_previous(self, rows: Tuple[int, int]) -> None:
        # Pages of rows already scored are file-backed and clean: dropping
        # them keeps resident memory flat however long the file is.
        prev = self._resident
        self._resident = rows
        if prev is None or prev == rows or not hasattr(self._map, "madvise"):
            return
        start = self.rows_offset + prev[0] * 2 * self.row_width
        end = self.rows_offset + prev[1] * 2 * self.row_width
        lo = (start // mmap.PAGESIZE) * mmap.PAGESIZE
        try:
            self._map.madvise(mmap.MADV_DONTNEED, lo, end - lo)
        except (OSError, ValueError, AttributeError):
            pass

    def close(self) -> None:
        self._rows = None
        self.tokens = None
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None
        if self._kldz is not None:
            self._kldz.close()
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                pass  # views still held by the caller keep the map alive

    def __enter__(self) -> "LogitDump":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"LogitDump({self.path!r}, n_ctx={self.n_ctx}, n_vocab={self.n_vocab}, "
                f"n_chunk={self.n_chunk})")


def dump_prefix(n_ctx: int, n_vocab: int, tokens: Sequence[int] | np.ndarray) -> bytes:
    """A logits file's header and token list, checked: what its rows follow."""
    n_ctx, n_vocab = int(n_ctx), int(n_vocab)
    if not 3 <= n_ctx < 2**32 or not 1 <= n_vocab < 2**31:
        raise ValueError(f"impossible dump shape n_ctx={n_ctx}, n_vocab={n_vocab}: the file "
                         f"holds n_ctx as uint32 (at least 3) and n_vocab as int32")
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or len(tokens) == 0 or len(tokens) % n_ctx:
        raise ValueError(f"tokens must be whole chunks of {n_ctx}, got {len(tokens)}")
    if tokens.dtype.kind not in "iu":
        raise TypeError(f"tokens must be integers, got {tokens.dtype}")
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= n_vocab:
        bad = lo if lo < 0 else hi
        i = int(np.argmax(tokens == bad))
        raise ValueError(f"token {bad} at position {i % n_ctx} of chunk {i // n_ctx + 1} is "
                         f"outside the vocabulary [0, {n_vocab})")
    if len(tokens) // n_ctx >= 2**31:
        raise ValueError(f"{len(tokens) // n_ctx} chunks: the file holds n_chunk as int32")
    tokens = np.ascontiguousarray(tokens, dtype="<i4")
    return HEADER.pack(MAGIC, n_ctx, n_vocab, len(tokens) // n_ctx) + tokens.tobytes()


class LogitDumpWriter:
    """Streams a llama.cpp logits file to disk, chunk by chunk.

    Rows go to ``PATH.partial`` and the file is renamed to ``PATH`` only when
    every chunk the header promises has been written, so an interrupted run
    never leaves a file that looks complete. Use as a context manager: an
    exception inside the block deletes the partial file.
    """

    def __init__(self, path: str | os.PathLike, n_ctx: int, n_vocab: int,
                 tokens: Sequence[int] | np.ndarray):
        # Everything is checked before the partial file is created.
        prefix = dump_prefix(n_ctx, n_vocab, tokens)
        n_ctx, n_vocab = int(n_ctx), int(n_vocab)
        self.path = os.fspath(path)
        check_output_path(self.path)
        self.partial = self.path + ".partial"
        self.n_ctx, self.n_vocab = n_ctx, n_vocab
        self.n_chunk = (len(prefix) - HEADER.size) // (4 * n_ctx)
        self.rows_per_chunk = scored_rows_per_chunk(n_ctx)
        self.row_width = llama_row_width(n_vocab)
        self.rows_written = 0
        self._f = open(self.partial, "wb")
        self._f.write(prefix)
        self._f.flush()
        self._rows_at = self._f.tell()

    def write_chunk(self, rows: LlamaRows | np.ndarray) -> None:
        """Append one chunk's rows (rows_per_chunk llama rows)."""
        self.write_rows(self.chunks_written, 0, rows, whole=True)

    def write_rows(self, c: int, lo: int, rows: LlamaRows | np.ndarray,
                   whole: bool = False) -> None:
        """Rows lo.. of chunk c (0-based), in their place in the file: pieces
        of chunks decoded together may come in any order. ``whole``: the rows
        must be the whole chunk."""
        arr = rows.rows if isinstance(rows, LlamaRows) else np.asarray(rows)
        if whole:
            expected = (self.rows_per_chunk, self.row_width)
            if arr.dtype != np.uint16 or arr.shape != expected:
                raise ValueError(f"a chunk is uint16 {expected}, got {arr.dtype} {arr.shape}")
        elif (arr.dtype != np.uint16 or arr.ndim != 2 or arr.shape[1] != self.row_width
              or not 0 <= lo <= self.rows_per_chunk - len(arr)):
            raise ValueError(f"rows {lo}.. of a chunk are uint16 (up to "
                             f"{self.rows_per_chunk - lo}, {self.row_width}), got {arr.dtype} "
                             f"{arr.shape}")
        n = len(arr)
        if not 0 <= c < self.n_chunk:
            raise ValueError(f"chunk {c} is not one of the {self.n_chunk} chunks of this file")
        row_bytes = 2 * self.row_width
        offset = self._rows_at + (c * self.rows_per_chunk + lo) * row_bytes
        data = memoryview(np.ascontiguousarray(arr)).cast("B")
        while len(data):
            done = os.pwrite(self._f.fileno(), data, offset)
            data, offset = data[done:], offset + done
        self.rows_written += n

    @property
    def chunks_written(self) -> int:
        """Whole chunks' worth of rows written so far."""
        return self.rows_written // self.rows_per_chunk

    def close(self) -> None:
        """Finish: the file appears under its name only if it is whole."""
        if self._f is None:
            return
        self._f.close()
        self._f = None
        if self.rows_written != self.n_chunk * self.rows_per_chunk:
            os.unlink(self.partial)
            raise ValueError(f"{self.path}: only {self.chunks_written} of {self.n_chunk} chunks "
                             f"written; no file left behind")
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        try:
            os.unlink(self.partial)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "LogitDumpWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@dataclass
class DumpInfo:
    """What `quantkl info` reports about a file, whole or not."""
    path: str
    size: int
    header: Optional[tuple] = None  # (n_ctx, n_vocab, n_chunk)
    tokens_sample: Optional[List[int]] = None
    problem: Optional[str] = None
    rows_checked: int = 0
    corrupt_rows: Optional[List[str]] = None  # "row 70 (chunk 2)", at most a few
    n_corrupt: int = 0
    compression: Optional[str] = None  # a .kldz's or .kldp's codec, level and blocks
    precise: bool = False  # a .kldp
    stored_share: Optional[float] = None  # a .kldp: stored entries / n_vocab in the rows checked

    def lines(self) -> List[tuple]:
        out = [("file", f"{self.path} ({self.size:,} bytes)")]
        if self.header:
            n_ctx, n_vocab, n_chunk = self.header
            r = scored_rows_per_chunk(n_ctx)
            width = llama_row_width(n_vocab)
            kld_size = f"{HEADER.size + 4 * n_ctx * n_chunk + 2 * width * r * n_chunk:,} bytes"
            if self.precise:
                fmt = f"quantkl .kldp, precise sparse base rows ({self.compression})"
            elif self.compression is None:
                fmt = "llama.cpp logits (_logits_)"
            else:
                fmt = f"quantkl .kldz of llama.cpp logits ({self.compression})"
            out += [("format", fmt),
                    ("n_ctx", str(n_ctx)), ("n_vocab", f"{n_vocab:,}"),
                    ("chunks", f"{n_chunk} ({r} scored rows each, {n_chunk * r:,} rows)")]
            if self.precise:
                if self.stored_share is not None:
                    out.append(("row", f"{self.stored_share:.1%} of the entries stored, as "
                                       f"float32 logits (in the rows checked)"))
                out.append(("as .kld", kld_size))
            else:
                out += [("row", f"{width:,} uint16 ({2 * width:,} bytes)"),
                        ("unpacked" if self.compression else "expected", kld_size)]
        if self.tokens_sample is not None:
            out.append(("tokens", ", ".join(map(str, self.tokens_sample)) + ", ..."))
        if self.rows_checked:
            out.append(("checked", f"{self.rows_checked:,} rows (the first and last of every "
                                   f"chunk, and others at random): {self.n_corrupt} corrupt"))
        out.append(("status", "whole" if self.problem is None else f"NOT usable: {self.problem}"))
        return out


def check_sample(dump: LogitDump, info: DumpInfo, n_random: int = 64,
                 limit: int = 1024) -> None:
    """Check a sample of a dump's rows with the kernels: the first and last row
    of every chunk and ``n_random`` others, ``limit`` at most. Corrupt rows
    (zero-filled, random codes, impossible headers) make the file unusable."""
    from .scoring import check_llama_rows
    r = dump.rows_per_chunk
    rows = {c * r for c in range(dump.n_chunk)} | {c * r + r - 1 for c in range(dump.n_chunk)}
    rows |= set(np.random.default_rng(0).integers(0, dump.n_rows, n_random).tolist())
    rows = sorted(rows)
    if len(rows) > limit:
        rows = [rows[i] for i in np.linspace(0, len(rows) - 1, limit).astype(int)]
    sample = dump.sample_rows(rows)
    if dump.precise:  # its blocks' every field was checked as they were read
        info.rows_checked = len(rows)
        info.stored_share = sample.stored / (len(sample) * dump.n_vocab)
        return
    status = check_llama_rows(sample)
    bad = [rows[i] for i in np.flatnonzero(status)]
    info.rows_checked, info.n_corrupt = len(rows), len(bad)
    if bad:
        info.corrupt_rows = [f"row {b} (chunk {b // r + 1})" for b in bad[:5]]
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        info.problem = (f"{len(bad)} of {len(rows)} rows checked are corrupt: "
                        f"{', '.join(info.corrupt_rows)}{more}")


def inspect_dump(path: str | os.PathLike) -> DumpInfo:
    """Describe a logits file without failing on it: header, tokens, and what is wrong."""
    path = os.fspath(path)
    info = DumpInfo(path, regular_file_size(path, "logits file", DumpError))
    try:
        with LogitDump(path) as d:
            info.header = (d.n_ctx, d.n_vocab, d.n_chunk)
            info.tokens_sample = d.tokens[:16].tolist()
            if d.compressed:
                info.compression = d.compression()
                info.precise = d.precise
            check_sample(d, info)
        return info
    except DumpError as e:
        info.problem = str(e).split(": ", 1)[-1]
    with open(path, "rb") as f:
        head = f.read(HEADER.size + 64)
    if len(head) >= HEADER.size and head[:8] == MAGIC:
        _, n_ctx, n_vocab, n_chunk = HEADER.unpack(head[:HEADER.size])
        info.header = (n_ctx, n_vocab, n_chunk)
        n_tok = (len(head) - HEADER.size) // 4
        info.tokens_sample = np.frombuffer(head[HEADER.size:HEADER.size + 4 * n_tok],
                                           np.int32).tolist()
    return info
