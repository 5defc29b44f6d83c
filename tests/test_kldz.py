"""The .kldz container: lossless, read piece by piece like a .kld, refused
clearly when damaged."""
import filecmp
import os
import struct
import zlib

import numpy as np
import pytest

from quantkl import kldz
from quantkl.cli import main
from quantkl.dumpfile import DumpError, LogitDump, inspect_dump
from quantkl.evaluation import compare_dumps

NAME = "smollm2-q4_1-gpl3-c128.kld"


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 10 rows: several per chunk, the last one short."""
    monkeypatch.setattr(kldz, "BLOCK_BYTES", 10 * 2 * (49152 + 4))


@pytest.fixture
def packed(golden, tmp_path, small_blocks):
    out = tmp_path / "base.kldz"
    kldz.pack(str(golden / NAME), str(out))
    return out


def test_unpack_restores_the_file_byte_for_byte(golden, packed, tmp_path):
    kldz.unpack(str(packed), str(tmp_path / "back.kld"))
    assert filecmp.cmp(golden / NAME, tmp_path / "back.kld", shallow=False)
    assert os.path.getsize(packed) < 0.35 * os.path.getsize(golden / NAME)
    assert sorted(os.listdir(tmp_path)) == ["back.kld", "base.kldz"]


def test_pieces_across_blocks_equal_the_kld(golden, packed):
    rng = np.random.default_rng(3)
    with LogitDump(golden / NAME) as a, LogitDump(packed) as b:
        assert b.compressed and not a.compressed
        assert (b.n_ctx, b.n_vocab, b.n_chunk) == (a.n_ctx, a.n_vocab, a.n_chunk)
        assert np.array_equal(a.tokens, b.tokens)
        assert len(b._kldz.blocks) == 2 * 7  # 63 rows a chunk, 10 a block
        for c in range(a.n_chunk):
            for lo, hi in [(0, 63), (9, 11), (10, 20), (62, 63)] + [
                    tuple(sorted(rng.choice(64, 2, replace=False))) for _ in range(5)]:
                pa, pb = a.piece(c, lo, hi), b.piece(c, lo, hi)
                assert np.array_equal(pa.rows.rows, pb.rows.rows)
                assert np.array_equal(pa.tokens, pb.tokens)
        rows = [0, 5, 62, 63, 100, 125]
        assert np.array_equal(a.sample_rows(rows).rows, b.sample_rows(rows).rows)
        with pytest.raises(DumpError, match="piece at a time"):
            b.all_rows()


def test_compare_reads_either_form_to_the_same_arrays(golden, packed):
    kld = str(golden / NAME)
    with LogitDump(kld) as a, LogitDump(packed) as b:
        ref = compare_dumps(a, a, mode="exact", reverse=True)
        for x, y in ((a, b), (b, a), (b, b)):
            r = compare_dumps(x, y, mode="exact", reverse=True)
            for name in ("kld", "nll", "nll_base", "rank", "top_base", "top_other", "rkl"):
                assert np.array_equal(getattr(r, name), getattr(ref, name)), name


def test_cli_pack_info_unpack(golden, tmp_path, capsys, small_blocks):
    kld, z, back = str(golden / NAME), str(tmp_path / "b.kldz"), str(tmp_path / "b.kld")
    assert main(["pack", kld, "-o", z, "--level", "1"]) == 0
    assert "of " + kld in capsys.readouterr().out
    assert main(["pack", kld, "-o", z]) == 1
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["info", z]) == 0
    out = capsys.readouterr().out
    assert "quantkl .kldz of llama.cpp logits (zstd level 1, 14 blocks of up to 10 rows" in out
    assert "status    : whole" in out
    assert main(["pack", z, "-o", str(tmp_path / "again.kldz")]) == 1
    assert "is a .kldz already" in capsys.readouterr().err
    assert main(["unpack", z, "-o", back]) == 0
    assert filecmp.cmp(kld, back, shallow=False)
    assert f"wrote {back}: 12,388,356 bytes" in capsys.readouterr().out
    assert main(["compare", "-q", kld, z]) == 0
    via_z = capsys.readouterr().out
    assert main(["compare", "-q", kld, kld]) == 0
    assert capsys.readouterr().out == via_z


def _blocks(path):
    with LogitDump(path) as d:
        return list(d._kldz.blocks)


def test_a_damaged_block_names_file_block_and_chunk(packed, golden, capsys):
    b = _blocks(packed)[9]  # chunk 2's third block
    data = bytearray(packed.read_bytes())
    data[b.offset + b.size // 2] ^= 0xFF
    packed.write_bytes(bytes(data))
    with LogitDump(packed) as d:  # the layout is whole; the block is read when asked for
        d.piece(0, 0, 63)
        with pytest.raises(DumpError, match=r"damaged block 9 \(chunk 2, rows 20\.\.29\)"):
            d.piece(1, 25, 26)
    assert main(["compare", "-q", str(golden / NAME), str(packed)]) == 1
    err = capsys.readouterr().err
    assert str(packed) in err and "block 9 (chunk 2" in err and err.count("\n") == 1


@pytest.mark.parametrize("cut", [10, 5000, 3_000_000])
def test_a_truncated_kldz_is_refused(packed, cut):
    data = packed.read_bytes()
    packed.write_bytes(data[:-cut])
    with pytest.raises(DumpError, match="footer is missing"):
        LogitDump(packed)


def test_a_damaged_index_header_or_version_is_refused(packed):
    data = packed.read_bytes()
    footer = kldz.FOOTER.unpack(data[-kldz.FOOTER.size:])
    index_at = footer[0]
    bad = bytearray(data)
    bad[index_at + 3] ^= 1  # an offset in the index
    packed.write_bytes(bytes(bad))
    with pytest.raises(DumpError, match=r"damaged index \(checksum mismatch\)"):
        LogitDump(packed)
    # an index whose checksum holds but whose blocks do not tile the file
    entries = [list(kldz.INDEX_ENTRY.unpack_from(data, index_at + i * kldz.INDEX_ENTRY.size))
               for i in range(footer[1])]
    entries[4][0] += 1
    table = b"".join(kldz.INDEX_ENTRY.pack(*e) for e in entries)
    tail = kldz.FOOTER.pack(index_at, footer[1], zlib.crc32(table), kldz.KLDZ_MAGIC)
    packed.write_bytes(data[:index_at] + table + tail)
    with pytest.raises(DumpError, match=r"damaged index: block 4 \(chunk 1\)"):
        LogitDump(packed)
    bad = bytearray(data)
    bad[kldz.FILE_HEADER.size + 20] ^= 1  # a token in the stored token list
    packed.write_bytes(bytes(bad))
    with pytest.raises(DumpError, match="damaged header or token list"):
        LogitDump(packed)
    bad = bytearray(data)
    bad[8:12] = struct.pack("<I", 7)
    packed.write_bytes(bytes(bad))
    with pytest.raises(DumpError, match="version 7; this quantkl reads version 1"):
        LogitDump(packed)
    info = inspect_dump(packed)
    assert info.problem and "version 7" in info.problem


def test_a_failed_pack_leaves_nothing(golden, tmp_path, monkeypatch):
    def fail(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(kldz.zlib, "crc32", fail)
    with pytest.raises(OSError):
        kldz.pack(str(golden / NAME), str(tmp_path / "x.kldz"))
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_dump_compress_writes_the_packed_dump(smollm2, tmp_path, capsys):
    plain, packed = tmp_path / "b.kld", tmp_path / "b.kldz"
    args = [smollm2, "--ctx", "128", "--chunks", "2", "-q"]
    assert main(["dump", *args, "-o", str(plain)]) == 0
    assert main(["dump", *args, "-o", str(packed), "--compress"]) == 0
    kldz.unpack(str(packed), str(tmp_path / "back.kld"))
    assert filecmp.cmp(plain, tmp_path / "back.kld", shallow=False)
    assert sorted(os.listdir(tmp_path)) == ["b.kld", "b.kld.input.json", "b.kldz",
                                            "b.kldz.input.json", "back.kld"]
    out = capsys.readouterr().out
    assert out.count("Final estimate: PPL") == 2


def test_chunks_written_together_interleave_and_read_back(golden, tmp_path, small_blocks):
    """Chunks decoded together (--parallel) fill their blocks side by side:
    the blocks lie in the file in the order they filled, the index in chunk
    order, and the file reads as the .kld."""
    with LogitDump(golden / NAME) as d, open(golden / NAME, "rb") as f:
        prefix = f.read(d.rows_offset)
        rows = [d.chunk(c).rows.rows for c in range(d.n_chunk)]
        out = tmp_path / "both.kldz"
        with kldz.KldzWriter(str(out), prefix, level=1) as w:
            for lo in range(0, 63, 7):  # 7 rows a decode, blocks of 10
                for c in (1, 0):
                    w.write_rows(c, lo, rows[c][lo:lo + 7])
        blocks = _blocks(out)
        assert [b.chunk for b in blocks] == [0] * 7 + [1] * 7
        assert blocks[0].offset > blocks[7].offset  # chunk 2's first block filled first
        with LogitDump(out) as z:
            for c in range(d.n_chunk):
                assert np.array_equal(z.chunk(c).rows.rows, rows[c])
        kldz.unpack(str(out), str(tmp_path / "back.kld"))
        assert filecmp.cmp(golden / NAME, tmp_path / "back.kld", shallow=False)


def test_writer_refuses_rows_out_of_order_and_missing_chunks(golden, tmp_path):
    with LogitDump(golden / NAME) as d, open(golden / NAME, "rb") as f:
        prefix = f.read(d.rows_offset)
        rows = d.chunk(0).rows.rows
        out = tmp_path / "x.kldz"
        with pytest.raises(ValueError, match=r"rows 5\.\. of chunk 1 come out of order"):
            with kldz.KldzWriter(str(out), prefix) as w:
                w.write_rows(0, 0, rows[:3])
                w.write_rows(0, 5, rows[5:9])
        with pytest.raises(ValueError, match="chunk 2 of 2 is not whole; no file left behind"):
            with kldz.KldzWriter(str(out), prefix) as w:
                w.write_rows(0, 0, rows)
    assert os.listdir(tmp_path) == []
