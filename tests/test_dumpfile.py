"""Reading and writing llama.cpp logits files."""
import os
import struct

import numpy as np
import pytest

import quantkl
from quantkl.dumpfile import DumpError, LogitDump, LogitDumpWriter, inspect_dump

GOLDEN_KLD = "smollm2-q4_1-gpl3-c128.kld"


def test_reader_layout(golden):
    raw = (golden / GOLDEN_KLD).read_bytes()
    with LogitDump(golden / GOLDEN_KLD) as d:
        assert (d.n_ctx, d.n_vocab, d.n_chunk, d.rows_per_chunk) == (128, 49152, 2, 63)
        np.testing.assert_array_equal(d.tokens, np.frombuffer(raw[20:20 + 4 * 256], np.int32))
        ch = d.chunk(1)
        off = 20 + 4 * 256 + 63 * 49156 * 2
        np.testing.assert_array_equal(
            ch.rows.rows, np.frombuffer(raw[off:off + 63 * 49156 * 2], np.uint16).reshape(63, -1))
        np.testing.assert_array_equal(ch.tokens, d.tokens[128 + 65:256])
        assert len(list(d.chunks())) == 2


def test_writer_reproduces_the_file_byte_for_byte(golden, tmp_path):
    out = tmp_path / "copy.kld"
    with LogitDump(golden / GOLDEN_KLD) as d:
        with LogitDumpWriter(out, d.n_ctx, d.n_vocab, d.tokens) as w:
            assert os.path.exists(str(out) + ".partial") and not out.exists()
            for ch in d.chunks():
                w.write_chunk(ch.rows)
    assert out.read_bytes() == (golden / GOLDEN_KLD).read_bytes()
    assert not os.path.exists(str(out) + ".partial")


def test_interrupted_writer_leaves_nothing(tmp_path):
    out = tmp_path / "x.kld"
    rows, _ = quantkl.encode_llama_rows(np.zeros((2, 5), np.float32), [0, 1])
    with pytest.raises(RuntimeError):
        with LogitDumpWriter(out, 5, 5, np.zeros(10, np.int32)) as w:
            w.write_chunk(rows)
            raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []
    w = LogitDumpWriter(out, 5, 5, np.zeros(10, np.int32))
    w.write_chunk(rows)
    with pytest.raises(ValueError, match=r"a chunk is uint16 \(2, 10\)"):
        w.write_chunk(rows.rows[:1])
    with pytest.raises(ValueError, match="only 1 of 2 chunks written"):
        w.close()
    assert os.listdir(tmp_path) == []


def write_header(path, n_ctx, n_vocab, n_chunk, body=b""):
    path.write_bytes(struct.pack("<8sIii", b"_logits_", n_ctx, n_vocab, n_chunk) + body)
    return path


@pytest.mark.parametrize("make, words", [
    (lambda p, g: p.write_bytes(b""), "empty file, not a llama.cpp logits file"),
    (lambda p, g: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100)),
     "not a llama.cpp logits file"),
    (lambda p, g: p.write_bytes(g[:15]), "truncated header"),
    (lambda p, g: p.write_bytes(g[:500]), "truncated in the token list"),
    (lambda p, g: p.write_bytes(g[:len(g) - 12345]), "truncated at chunk 2 of 2"),
    (lambda p, g: p.write_bytes(g + b"\0\0"), "2 unexpected bytes after the last"),
    (lambda p, g: write_header(p, 128, 49152, 0), "impossible header"),
])
def test_bad_files(tmp_path, golden, make, words):
    path = tmp_path / "bad.kld"
    make(path, (golden / GOLDEN_KLD).read_bytes())
    with pytest.raises(DumpError, match=words):
        LogitDump(path)
    assert inspect_dump(path).problem is not None


def test_token_out_of_vocabulary(tmp_path, golden):
    raw = bytearray((golden / GOLDEN_KLD).read_bytes())
    raw[20 + 4 * 130:20 + 4 * 131] = struct.pack("<i", 49152)
    path = tmp_path / "badtok.kld"
    path.write_bytes(bytes(raw))
    with pytest.raises(DumpError, match="token 49152 at position 2 of chunk 2 is outside"):
        LogitDump(path)


def test_missing_file(tmp_path):
    with pytest.raises(DumpError, match="cannot open"):
        LogitDump(tmp_path / "nope.kld")


def rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def test_scoring_a_large_dump_keeps_memory_flat(tmp_path):
    """~400 MB file, scored chunk by chunk: resident memory grows by far less
    than the file (the reader drops each finished chunk's pages)."""
    n_ctx, v, n_chunk = 64, 49152, 130
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(31, v)).astype(np.float32) * 3
    toks = rng.integers(0, v, n_ctx * n_chunk)
    rows, _ = quantkl.encode_llama_rows(logits, toks[33:64])
    path = tmp_path / "big.kld"
    with LogitDumpWriter(path, n_ctx, v, toks) as w:
        for _ in range(n_chunk):
            w.write_chunk(rows)
    size = os.path.getsize(path)
    assert size > 350e6
    before = rss_bytes()
    peak = before
    scorer = quantkl.Scorer()
    with LogitDump(path) as d:
        for ch in d.chunks():
            scorer.update(ch.rows, logits, ch.tokens)
            peak = max(peak, rss_bytes())
    assert scorer.result().count == 31 * n_chunk
    assert peak - before < 64e6, f"RSS grew by {(peak - before) / 1e6:.0f} MB for a {size / 1e6:.0f} MB file"
