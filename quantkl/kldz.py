"""``.kldz``: a llama.cpp logits file, lossless, compressed in independent blocks.

A ``.kld`` holds its header and token list, then n_chunk x rows_per_chunk
rows of (n_vocab + 4) uint16. A ``.kldz`` holds the same bytes: the header
and token list verbatim (the "prefix"), then the rows in blocks of at most
``block_rows`` rows of one chunk, each a zstandard frame, then an index of
the blocks and a footer. Any row range is read by decompressing only the
blocks it touches, so ``--chunks``, shards and 64 MB pieces work as on a
``.kld``, and ``unpack`` restores the original file byte for byte.

Layout (little-endian):

    header   magic "quantklz", version u32, codec u32 (1: zstd), level i32,
             block_rows u32, prefix_bytes u64, prefix crc32 u32
    prefix   the .kld's header and token list
    blocks   zstd frames, in the order they filled (chunks decoded together
             interleave); the index lists them in chunk and row order
    index    per block: offset u64, size u64, chunk u32, first row u32,
             rows u32, crc32 of the block's bytes u32
    footer   index offset u64, blocks u32, index crc32 u32, magic

Checksums are CRC-32 (zlib): of the prefix, of each block's compressed bytes
(checked before it is decompressed: a quarter of the cost of checking its
rows), of the index. The reader checks the header, the footer, the index
(offsets in the file and increasing, every chunk covered in order) and the
prefix before anything is scored, and each block's checksum as it is read.
KldzWriter streams the file (``dump --compress``, ``pack``).

A ``.kldp`` (magic "quantklp", KldpWriter) is the same container around
precise sparse rows (quantkl.sparse): each block is a SparseRows block's
bytes (``SparseRows.to_bytes``), every field checked as it is read.
docs/formats.md describes both formats and why zstandard at level 3.
"""
from __future__ import annotations

import os
import struct
import threading
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import List, NamedTuple, Optional, Tuple

import numpy as np

from .arrays import LlamaRows, llama_row_width
from .dumpfile import HEADER, MAGIC, DumpError, LogitDump, scored_rows_per_chunk
from .files import check_output_path, named_errors, regular_file_size, written_whole
from .sparse import HEADER_DTYPE, SparseRows, SparseRowsError, concat

KLDZ_MAGIC = b"quantklz"
KLDP_MAGIC = b"quantklp"
VERSION = 1
CODEC_ZSTD = 1
DEFAULT_LEVEL = 3
# Rows per block: up to 8 MB of rows, so that a piece of scoring (up to 64
# MB) spans several blocks that decompress on two threads: compare of two
# SmolLM2 .kldz ran 1.65x faster than with 32 MB blocks, the size the same to
# 1e-4 (zstandard's window at level 3 is smaller than either).
BLOCK_BYTES = 8 << 20
# Rows per .kldp block: 2-7 MB of sparse rows for SmolLM2 and Gemma 3.
SPARSE_BLOCK_ROWS = 64
FILE_HEADER = struct.Struct("<8sIIiIQI")
INDEX_ENTRY = struct.Struct("<QQIIII")
FOOTER = struct.Struct("<QII8s")


class Block(NamedTuple):
    offset: int
    size: int
    chunk: int
    first_row: int
    rows: int
    crc: int


def container_magic(path: str) -> Optional[bytes]:
    """KLDZ_MAGIC or KLDP_MAGIC when the file at ``path`` starts with it, else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(KLDZ_MAGIC))
    except OSError:
        return None
    return head if head in (KLDZ_MAGIC, KLDP_MAGIC) else None


def _zstd():
    try:
        import zstandard
    except ImportError:
        raise DumpError("reading or writing .kldz files needs the zstandard package: "
                        "pip install zstandard") from None
    return zstandard


def block_rows_for(row_width: int) -> int:
    return max(1, BLOCK_BYTES // (2 * row_width))


class KldzWriter:
    """Streams a .kldz, rows of each chunk in order (chunks decoded together
    may interleave): each chunk's rows gather into a block, and a full block
    is compressed on a small pool of threads and appended as it is done. The
    file appears under its name only when every chunk is written (written
    through PATH.partial, removed on any error). Use as a context manager."""

    MAGIC = KLDZ_MAGIC

    def __init__(self, path: str, prefix: bytes, *, level: int = DEFAULT_LEVEL,
                 threads: Optional[int] = None):
        self._zstandard = _zstd()
        if not 1 <= level <= 22:
            raise ValueError(f"--level must be in 1..22, got {level}")
        if len(prefix) < HEADER.size or prefix[:8] != MAGIC:
            raise ValueError("a .kldz starts from a llama.cpp logits file's header")
        _, n_ctx, n_vocab, n_chunk = HEADER.unpack(prefix[:HEADER.size])
        self.path, self.level = os.fspath(path), level
        check_output_path(self.path)
        self.n_chunk, self.rows_per_chunk = n_chunk, scored_rows_per_chunk(n_ctx)
        self.n_vocab, self.row_width = n_vocab, llama_row_width(n_vocab)
        self.rows_per_block = self._block_rows()
        self._filling = {}  # chunk -> (block buffer or None, rows in it, its first row)
        self._index: List[Block] = []
        self._pending = deque()  # (chunk, first row, rows, future of (crc, bytes)), in order
        self._local = threading.local()
        self._workers = max(1, threads or os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=self._workers)
        self._f = None
        self._whole = written_whole(self.path)
        (self.partial,) = self._whole.__enter__()
        try:
            self._f = open(self.partial, "wb")
            with named_errors(self.partial):
                self._f.write(FILE_HEADER.pack(self.MAGIC, VERSION, CODEC_ZSTD, level,
                                               self.rows_per_block, len(prefix),
                                               zlib.crc32(prefix)))
                self._f.write(prefix)
        except BaseException as e:
            self._abort(e)
            raise

    def _block_rows(self) -> int:
        return block_rows_for(self.row_width)

    def _check_place(self, c: int, lo: int, n: int) -> Tuple[object, int, int]:
        """What chunk c has gathered, after checking rows lo..lo+n-1 come next."""
        if not 0 <= c < self.n_chunk:
            raise ValueError(f"chunk {c} is not one of the {self.n_chunk} chunks of this file")
        filling = self._filling.get(c, (None, 0, 0))
        buf, n_in, first = filling
        if lo != first + n_in or lo + n > self.rows_per_chunk:
            raise ValueError(f"rows {lo}.. of chunk {c + 1} come out of order (expected row "
                             f"{first + n_in}) or past its {self.rows_per_chunk} rows")
        return filling

    def write_rows(self, c: int, lo: int, rows: LlamaRows | np.ndarray) -> None:
        """Rows lo.. of chunk c, which must follow the rows of c written before."""
        rows = rows.rows if isinstance(rows, LlamaRows) else np.asarray(rows)
        if rows.dtype != np.uint16 or rows.ndim != 2 or rows.shape[1] != self.row_width:
            raise ValueError(f"rows are uint16 (n, {self.row_width}), got {rows.dtype} "
                             f"{rows.shape}")
        buf, n, first = self._check_place(c, lo, len(rows))
        at = 0
        while at < len(rows):
            if buf is None:
                buf = np.empty((min(self.rows_per_block, self.rows_per_chunk - first),
                                self.row_width), np.uint16)
            take = min(len(buf) - n, len(rows) - at)
            buf[n:n + take] = rows[at:at + take]
            n, at = n + take, at + take
            if n == len(buf):
                self._submit(c, first, len(buf), lambda rows=buf: memoryview(rows).cast("B"))
                buf, n, first = None, 0, first + n
        self._filling[c] = (buf, n, first)
        self._drain(wait=False)

    def _submit(self, c: int, first: int, n_rows: int, payload) -> None:
        """Compress the block payload() returns (rows first.. of chunk c) on the pool."""
        def compress():
            if not hasattr(self._local, "compressor"):  # one per thread: they are not shared
                self._local.compressor = self._zstandard.ZstdCompressor(level=self.level)
            data = self._local.compressor.compress(payload())
            return zlib.crc32(data), data
        self._pending.append((c, first, n_rows, self._pool.submit(compress)))
        while len(self._pending) > 2 * self._workers:  # a few blocks in memory at most
            self._drain(wait=True, most=1)

    def _drain(self, wait: bool, most: Optional[int] = None) -> None:
        """Append finished blocks in the order they were submitted."""
        done = 0
        while self._pending and (wait or self._pending[0][3].done()) and \
                (most is None or done < most):
            c, first, rows, future = self._pending.popleft()
            crc, data = future.result()
            with named_errors(self.partial):
                offset = self._f.tell()
                self._f.write(data)
            self._index.append(Block(offset, len(data), c, first, rows, crc))
            done += 1

    def chunk_done(self, c: int) -> bool:
        _, n, first = self._filling.get(c, (None, 0, 0))
        return first + n == self.rows_per_chunk

    def close(self) -> None:
        """The index and footer, then the file under its name; ValueError (and
        nothing left) if a chunk is missing rows."""
        try:
            missing = [c for c in range(self.n_chunk) if not self.chunk_done(c)]
            if missing:
                raise ValueError(f"{self.path}: chunk {missing[0] + 1} of {self.n_chunk} is not "
                                 f"whole; no file left behind")
            self._drain(wait=True)
            self._pool.shutdown()
            self._index.sort(key=lambda b: (b.chunk, b.first_row))
            table = b"".join(INDEX_ENTRY.pack(*b) for b in self._index)
            with named_errors(self.partial):
                index_offset = self._f.tell()
                self._f.write(table)
                self._f.write(FOOTER.pack(index_offset, len(self._index), zlib.crc32(table),
                                          self.MAGIC))
                self._f.close()
        except BaseException as e:
            self._abort(e)
            raise
        self._whole.__exit__(None, None, None)

    def _abort(self, e: BaseException) -> None:
        self._pool.shutdown(cancel_futures=True)
        if self._f is not None:
            self._f.close()
        self._whole.__exit__(type(e), e, e.__traceback__)

    def __enter__(self) -> "KldzWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abort(exc)


class KldpWriter(KldzWriter):
    """Streams a .kldp: precise sparse rows (quantkl.sparse.SparseRows) of
    each chunk in order, in blocks of SPARSE_BLOCK_ROWS rows, as KldzWriter
    streams llama rows."""

    MAGIC = KLDP_MAGIC

    def _block_rows(self) -> int:
        return SPARSE_BLOCK_ROWS

    def write_rows(self, c: int, lo: int, rows: SparseRows) -> None:
        """Rows lo.. of chunk c, which must follow the rows of c written before."""
        if not isinstance(rows, SparseRows) or rows.n_vocab != self.n_vocab:
            raise ValueError(f"a .kldp takes SparseRows of {self.n_vocab} entries")
        parts, n, first = self._check_place(c, lo, len(rows))
        parts = parts or []
        at = 0
        while at < len(rows):
            size = min(self.rows_per_block, self.rows_per_chunk - first)
            take = min(size - n, len(rows) - at)
            parts.append(rows.slice(at, at + take))
            n, at = n + take, at + take
            if n == size:
                self._submit(c, first, n,
                             lambda block=parts: concat(block, self.n_vocab).to_bytes())
                parts, n, first = [], 0, first + n
        self._filling[c] = (parts, n, first)
        self._drain(wait=False)


def pack(src: str, dst: str, *, level: int = DEFAULT_LEVEL, threads: Optional[int] = None,
         force: bool = False, on_chunk=None) -> None:
    """Write ``dst`` (.kldz) holding ``src`` (.kld) losslessly; ``dst`` appears
    whole or not at all."""
    check_output_path(dst, force)
    with LogitDump(src) as dump, open(src, "rb") as f:
        if dump.precise:
            raise ValueError(f"{src} is a precise sparse file (.kldp): it keeps other values "
                             f"than a .kld and is compressed already")
        if dump.compressed:
            raise ValueError(f"{src} is a .kldz already")
        prefix = f.read(dump.rows_offset)
        rows = dump.all_rows().rows
        with KldzWriter(dst, prefix, level=level, threads=threads) as w:
            for c in range(dump.n_chunk):
                r0 = c * dump.rows_per_chunk
                for lo in range(0, dump.rows_per_chunk, w.rows_per_block):
                    hi = min(lo + w.rows_per_block, dump.rows_per_chunk)
                    w.write_rows(c, lo, rows[r0 + lo:r0 + hi])
                if on_chunk:
                    on_chunk(c + 1, dump.n_chunk)


class KldzReader:
    """The blocks of a .kldz or .kldp: its prefix (the .kld's header and token
    list) checked, its index checked, and any row range of a chunk
    decompressed on request (``read_rows`` for a .kldz, ``read_sparse`` for
    a .kldp: ``precise`` says which)."""

    def __init__(self, path: str):
        self.path = path
        self.size = regular_file_size(path, "logits file", DumpError)
        self._zstandard = _zstd()
        try:
            self._f = open(path, "rb")
        except OSError as e:
            raise DumpError(f"{path}: cannot open: {e.strerror}") from None
        try:
            self._read_layout()
        except BaseException:
            self._f.close()
            raise

    def _fail(self, what: str) -> DumpError:
        return DumpError(f"{self.path}: {what}")

    def _read_at(self, offset: int, n: int) -> bytes:
        if offset + n > self.size:
            raise self._fail(f"damaged: {n:,} bytes at {offset:,} would run past its end "
                             f"({self.size:,} bytes)")
        self._f.seek(offset)
        data = self._f.read(n)
        if len(data) != n:
            raise self._fail(f"truncated: {n} bytes at {offset} are past its end ({self.size} "
                             f"bytes)")
        return data

    def _read_layout(self) -> None:
        if self.size < FILE_HEADER.size + FOOTER.size:
            raise self._fail(f"truncated .kldz ({self.size} bytes)")
        magic, version, codec, level, rows_per_block, prefix_bytes, prefix_crc = \
            FILE_HEADER.unpack(self._read_at(0, FILE_HEADER.size))
        if magic not in (KLDZ_MAGIC, KLDP_MAGIC):
            raise self._fail(f"not a .kldz or .kldp file (starts with {magic!r})")
        self.magic, self.precise = magic, magic == KLDP_MAGIC
        kind = ".kldp" if self.precise else ".kldz"
        if version != VERSION:
            raise self._fail(f"{kind} version {version}; this quantkl reads version {VERSION}")
        if codec != CODEC_ZSTD:
            raise self._fail(f"unknown {kind} codec {codec}")
        if rows_per_block < 1:
            raise self._fail(f"damaged header: {rows_per_block} rows per block")
        self.level, self.rows_per_block = level, rows_per_block
        index_offset, n_blocks, index_crc, end_magic = FOOTER.unpack(
            self._read_at(self.size - FOOTER.size, FOOTER.size))
        if end_magic != magic:
            raise self._fail("truncated or damaged: the footer is missing (was the file cut "
                             "short while being written?)")
        table_bytes = n_blocks * INDEX_ENTRY.size
        if index_offset + table_bytes + FOOTER.size != self.size:
            raise self._fail(f"damaged index: {n_blocks} blocks at offset {index_offset} do not "
                             f"end where the footer starts")
        table = self._read_at(index_offset, table_bytes)
        if zlib.crc32(table) != index_crc:
            raise self._fail("damaged index (checksum mismatch)")
        prefix = self._read_at(FILE_HEADER.size, prefix_bytes)
        if zlib.crc32(prefix) != prefix_crc:
            raise self._fail("damaged header or token list (checksum mismatch)")
        if len(prefix) < HEADER.size or prefix[:8] != MAGIC:
            raise self._fail("damaged: the stored llama.cpp header is not one")
        _, n_ctx, n_vocab, n_chunk = HEADER.unpack(prefix[:HEADER.size])
        if n_ctx < 3 or n_vocab < 1 or n_chunk < 1 or \
                prefix_bytes != HEADER.size + 4 * n_ctx * n_chunk:
            raise self._fail(f"impossible stored header n_ctx={n_ctx}, n_vocab={n_vocab}, "
                             f"n_chunk={n_chunk}")
        self.prefix = prefix
        self.n_ctx, self.n_vocab, self.n_chunk = n_ctx, n_vocab, n_chunk
        self.rows_per_chunk = scored_rows_per_chunk(n_ctx)
        self.row_width = llama_row_width(n_vocab)
        self.blocks = [Block(*INDEX_ENTRY.unpack_from(table, i * INDEX_ENTRY.size))
                       for i in range(n_blocks)]
        self._check_index(FILE_HEADER.size + prefix_bytes, index_offset)
        # the index is checked regular: chunk c's row r is in block c * per_chunk + r // size
        self._blocks_per_chunk = -(-self.rows_per_chunk // rows_per_block)

    def _check_index(self, data_start: int, data_end: int) -> None:
        """The index lists every chunk's rows in order, in blocks of the
        header's size; the blocks tile the file between prefix and index
        (in any order: chunks decoded together are written as they fill)."""
        chunk, row = 0, 0
        for i, b in enumerate(self.blocks):
            where = f"block {i} (chunk {b.chunk + 1})"
            if b.size < 1 or b.offset < data_start or b.offset + b.size > data_end:
                raise self._fail(f"damaged index: {where} is at bytes {b.offset}+{b.size}, "
                                 f"outside {data_start}..{data_end}")
            if (b.chunk, b.first_row) != (chunk, row) or \
                    b.rows != min(self.rows_per_block, self.rows_per_chunk - row):
                raise self._fail(f"damaged index: {where} holds rows {b.first_row}+{b.rows}; "
                                 f"expected chunk {chunk + 1} from row {row}")
            row += b.rows
            if row == self.rows_per_chunk:
                chunk, row = chunk + 1, 0
        if (chunk, row) != (self.n_chunk, 0):
            raise self._fail(f"damaged index: its blocks cover {chunk} of {self.n_chunk} chunks")
        at = data_start
        for i in sorted(range(len(self.blocks)), key=lambda i: self.blocks[i].offset):
            b = self.blocks[i]
            if b.offset != at:
                raise self._fail(f"damaged index: block {i} (chunk {b.chunk + 1}) is at byte "
                                 f"{b.offset}, expected {at}")
            at += b.size
        if at != data_end:
            raise self._fail(f"damaged index: its blocks end at byte {at}, the index starts at "
                             f"{data_end}")

    def read_rows(self, c: int, lo: int, hi: int, threads: int = 2) -> np.ndarray:
        """Rows lo..hi-1 of chunk c as a (hi - lo, row_width) uint16 array."""
        out = np.empty((hi - lo, self.row_width), np.uint16)
        base = c * self._blocks_per_chunk
        numbers = range(base + lo // self.rows_per_block,
                        base + (hi - 1) // self.rows_per_block + 1)

        def one(i):
            b = self.blocks[i]
            a, z = max(lo, b.first_row), min(hi, b.first_row + b.rows)
            if (a, z) == (b.first_row, b.first_row + b.rows):  # the whole block: in place
                self._decompress(i, b, out[a - lo:z - lo])
                return
            rows = np.empty((b.rows, self.row_width), np.uint16)
            self._decompress(i, b, rows)
            out[a - lo:z - lo] = rows[a - b.first_row:z - b.first_row]

        if len(numbers) > 1 and threads > 1:
            with ThreadPoolExecutor(max_workers=min(threads, len(numbers))) as pool:
                list(pool.map(one, numbers))
        else:
            for i in numbers:
                one(i)
        return out

    def read_sparse(self, c: int, lo: int, hi: int, threads: int = 2) -> SparseRows:
        """Rows lo..hi-1 of chunk c of a .kldp, every block's fields checked."""
        base = c * self._blocks_per_chunk
        numbers = range(base + lo // self.rows_per_block,
                        base + (hi - 1) // self.rows_per_block + 1)

        def one(i):
            b = self.blocks[i]
            rows = self._sparse_block(i, b)
            a, z = max(lo, b.first_row), min(hi, b.first_row + b.rows)
            return rows.slice(a - b.first_row, z - b.first_row)

        if len(numbers) > 1 and threads > 1:
            with ThreadPoolExecutor(max_workers=min(threads, len(numbers))) as pool:
                parts = list(pool.map(one, numbers))
        else:
            parts = [one(i) for i in numbers]
        return concat(parts, self.n_vocab)

    def _where(self, i: int, b: Block) -> str:
        return f"block {i} (chunk {b.chunk + 1}, rows {b.first_row}..{b.first_row + b.rows - 1})"

    def _block_bytes(self, i: int, b: Block) -> bytes:
        data = os.pread(self._f.fileno(), b.size, b.offset)
        if len(data) != b.size:
            raise self._fail(f"truncated in {self._where(i, b)}")
        if zlib.crc32(data) != b.crc:
            raise self._fail(f"damaged {self._where(i, b)} (checksum mismatch)")
        return data

    def _sparse_block(self, i: int, b: Block) -> SparseRows:
        data = self._block_bytes(i, b)
        most = b.rows * (HEADER_DTYPE.itemsize + 8 * self.n_vocab)
        try:
            raw = self._zstandard.ZstdDecompressor().decompress(data, max_output_size=most)
        except self._zstandard.ZstdError as e:
            raise self._fail(f"damaged {self._where(i, b)}: {e}") from None
        try:
            return SparseRows.from_bytes(raw, b.rows, self.n_vocab)
        except SparseRowsError as e:
            raise self._fail(f"damaged {self._where(i, b)}: {e}") from None

    def _decompress(self, i: int, b: Block, into: np.ndarray) -> None:
        """Block i's rows into ``into`` ((b.rows, row_width) uint16, contiguous):
        its bytes checked against their checksum, its rows against their size."""
        where = self._where(i, b)
        data = self._block_bytes(i, b)
        buf = memoryview(into).cast("B")
        try:
            with self._zstandard.ZstdDecompressor().stream_reader(data) as reader:
                got = reader.readinto(buf)
                while got < len(buf):
                    n = reader.readinto(buf[got:])
                    if n == 0:
                        break
                    got += n
                extra = reader.read(1)
        except self._zstandard.ZstdError as e:
            raise self._fail(f"damaged {where}: {e}") from None
        if got != len(buf) or extra:
            raise self._fail(f"damaged {where}: its rows are not {len(buf):,} bytes")

    def fileno(self) -> int:
        return self._f.fileno()

    def close(self) -> None:
        self._f.close()


def unpack(src: str, dst: str, *, force: bool = False, on_chunk=None) -> None:
    """Write ``dst`` (.kld) from ``src`` (.kldz): the original file, byte for byte."""
    check_output_path(dst, force)
    reader = KldzReader(src)
    try:
        if reader.precise:
            raise ValueError(f"{src} is a precise sparse file (.kldp): it holds other values "
                             f"than a .kld, so there is none to unpack")
        with written_whole(dst) as (partial,), named_errors(partial), open(partial, "wb") as out:
            out.write(reader.prefix)
            for i, b in enumerate(reader.blocks):
                rows = np.empty((b.rows, reader.row_width), np.uint16)
                reader._decompress(i, b, rows)
                out.write(rows)
                if on_chunk and b.first_row + b.rows == reader.rows_per_chunk:
                    on_chunk(b.chunk + 1, reader.n_chunk)
    finally:
        reader.close()
