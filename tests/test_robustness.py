"""Bad input that once gave wrong numbers, crashes, hangs or leftover files:
each now ends in a clear error, the right exit status, or the
right (infinite) number."""
import errno
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import time

import ml_dtypes
import numpy as np
import pytest

import quantkl
from quantkl import LlamaRows
from quantkl.cli import main
from quantkl.dumpfile import DumpError, LogitDump, LogitDumpWriter, inspect_dump
from quantkl.evaluation import compare_dumps
from quantkl.scoring import RowError, check_llama_rows

GOLDEN_KLD = "smollm2-q4_1-gpl3-c128.kld"
ROW_BYTES = 2 * (49152 + 4)


def row_offset(row):
    return 20 + 4 * 256 + row * ROW_BYTES


@pytest.fixture
def golden_bytes(golden):
    return bytearray((golden / GOLDEN_KLD).read_bytes())


def write(path, raw):
    path.write_bytes(bytes(raw))
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# --- 1. corrupt rows with finite headers ---------------------------------------

def corrupt(raw, row, how):
    off = row_offset(row)
    if how == "zeros":
        raw[off:off + ROW_BYTES] = bytes(ROW_BYTES)
    elif how == "min_log_prob=+50":
        raw[off + 4:off + 8] = struct.pack("<f", 50.0)
    elif how == "scale=1":
        raw[off:off + 4] = struct.pack("<f", 1.0)
    elif how == "random codes":
        codes = np.random.default_rng(1).integers(0, 65536, 49152).astype("<u2")
        raw[off + 8:off + 8 + 2 * 49152] = codes.tobytes()
    return raw


@pytest.mark.parametrize("how", ["zeros", "min_log_prob=+50", "scale=1", "random codes"])
@pytest.mark.parametrize("mode", ["llama", "exact"])
def test_corrupt_rows_are_refused_and_named(golden, golden_bytes, tmp_path, capsys, how, mode):
    """Row 70 is chunk 2's row 7 (63 rows a chunk): named both ways, as the
    base and as the other side, in either mode; never a number."""
    bad = write(tmp_path / "bad.kld", corrupt(golden_bytes, 70, how))
    for base, other, side in ((bad, golden / GOLDEN_KLD, "base"), (golden / GOLDEN_KLD, bad, "other")):
        args = ["compare", base, other, "--json", tmp_path / "r.json"] + (["--exact"] if mode == "exact" else [])
        code, out, err = run(capsys, *args)
        assert code == 1, (how, side, out)
        assert f"{side} llama row 70 (chunk 2, row 7 of the chunk)" in err
        assert ("corrupt header" if how == "min_log_prob=+50" else "is corrupt") in err
        assert err.count("\n") == 1 and not (tmp_path / "r.json").exists()


def test_zero_filled_dump_against_itself(golden_bytes, tmp_path, capsys):
    """A preallocated file (all zeros past the header): once Mean KLD 530,973."""
    raw = golden_bytes
    raw[row_offset(0):] = bytes(len(raw) - row_offset(0))
    z = write(tmp_path / "zeros.kld", raw)
    for extra in ([], ["--exact"]):
        code, out, err = run(capsys, "compare", z, z, *extra)
        assert code == 1 and "base llama row 0 (chunk 1, row 0 of the chunk) is corrupt" in err
        assert "Mean    KLD" not in out


def test_genuine_rows_pass_the_checks(golden, tmp_path):
    with LogitDump(golden / GOLDEN_KLD) as d:
        assert not np.any(check_llama_rows(d.all_rows()))
    rng = np.random.default_rng(3)
    for x in (rng.normal(size=(8, 1001)) * 8, np.full((2, 5), 1.5), rng.normal(size=(4, 1)),
              np.where(rng.random((4, 300)) < 0.5, -np.inf, rng.normal(size=(4, 300)))):
        rows, _ = quantkl.encode_llama_rows(x.astype(np.float32), np.zeros(len(x), np.int64))
        assert not np.any(check_llama_rows(rows))


def test_info_names_corrupt_rows(golden_bytes, tmp_path, capsys):
    """The first and last row of every chunk are among the rows checked."""
    bad = write(tmp_path / "bad.kld", corrupt(golden_bytes, 62, "zeros"))
    code, out, _ = run(capsys, "info", bad)
    assert code == 1
    assert "status    : NOT usable: 1 of" in out and "row 62 (chunk 1)" in out
    assert inspect_dump(bad).n_corrupt == 1


# --- 2. byte order ----------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_big_endian_logits_are_read_by_value(rng, dtype):
    x = (rng.normal(size=(4, 3000)) * 3).astype(dtype)
    y = (x.astype(np.float32) + rng.normal(size=x.shape).astype(np.float32) * 0.3).astype(dtype)
    big = lambda a: a.byteswap().view(a.dtype.newbyteorder(">"))  # noqa: E731
    assert big(x).dtype.byteorder == ">"
    tok = np.zeros(4, np.int64)
    for mode in ("llama", "exact"):
        want = quantkl.score_rows(x, y, tok, mode=mode)
        got = quantkl.score_rows(big(x), big(y), tok, mode=mode)
        np.testing.assert_array_equal(got.kld, want.kld)
    rows, _ = quantkl.encode_llama_rows(x.astype(np.float32), tok)
    swapped = LlamaRows(rows.rows.byteswap().view(">u2"), 3000)
    np.testing.assert_array_equal(quantkl.score_rows(swapped, y, tok).kld,
                                  quantkl.score_rows(rows, y, tok).kld)


# --- 3. extreme values ---------------------------------------------------------

def test_extreme_values_give_infinite_statistics(rng):
    x = rng.normal(size=(200, 300)).astype(np.float32)
    tok = np.zeros(200, np.int64)
    rows, _ = quantkl.encode_llama_rows(x, tok)
    r = rows.rows.copy()
    r[:, 2:4] = np.array([-1e6], np.float32).view(np.uint16)  # min_log_prob = -1e6
    res = quantkl.score(LlamaRows(r, 300), x + 0.1, tok)
    assert res.ppl_base == np.inf and np.isfinite(res.ppl)
    assert "Mean PPL(base)                :        inf" in res.format()
    y = x.copy()
    y[:, 0] = 1e4  # the quant puts all its mass on token 0, the next token is 1: NLL ~ 1e4
    res = quantkl.score(x, y, np.ones(200, np.int64), mode="exact")
    assert res.ppl == np.inf and res.ppl_ratio == np.inf and res.kld_mean > 1e3
    assert res.format().startswith("====== Perplexity statistics ======")


# --- 4. 64-bit indices --------------------------------------------------------

def test_vocabulary_past_two_to_the_31(tmp_path):
    """A (virtual, stride-0) row of 2^31 + 16 logits, its token and its top
    beyond 2^31: once cast to int32 and a segfault."""
    v = 2**31 + 16
    x = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape=(1, v), strides=(0, 0))
    tok = np.array([2**31 + 3])
    r = quantkl.score_rows(x, x, tok, mode="exact")
    assert r.kld[0] == 0 and r.top_p[0] == 0 and r.top_q[0] == 0
    assert r.nll_p[0] == pytest.approx(np.log(v), rel=1e-9)
    with pytest.raises(ValueError, match="token id 2147483664 at row 0 is outside"):
        quantkl.score_rows(x, x, np.array([v]))


# --- 6. a dump truncated while it is read -------------------------------------------

def test_dump_truncated_between_chunks(golden, tmp_path):
    path = write(tmp_path / "t.kld", (golden / GOLDEN_KLD).read_bytes())
    with LogitDump(path) as d:
        d.chunk(0)
        os.truncate(path, row_offset(10))
        with pytest.raises(DumpError, match="truncated to .* bytes while being read"):
            d.chunk(1)


def test_dump_truncated_under_the_kernels(golden, tmp_path):
    """The pages of a chunk vanish after it was handed out: the kernels meet
    SIGBUS, and the process lives on with an error naming the file."""
    path = write(tmp_path / "t.kld", (golden / GOLDEN_KLD).read_bytes())
    with LogitDump(golden / GOLDEN_KLD) as good, LogitDump(path) as d:
        ch = d.chunk(0)
        os.truncate(path, row_offset(10))
        with pytest.raises(RowError, match="could not be read: a memory-mapped file was truncated"):
            quantkl.score_rows(ch.rows, good.chunk(0).rows, ch.tokens)

    class Shrink:  # compare_dumps' per-chunk callback: the file shrinks after chunk 1
        def __call__(self, done, total, running):
            os.truncate(path, row_offset(100))

    path.write_bytes((golden / GOLDEN_KLD).read_bytes())
    with LogitDump(golden / GOLDEN_KLD) as good, LogitDump(path) as d:
        with pytest.raises(DumpError, match=f"{path}: truncated to"):
            compare_dumps(good, d, on_chunk=Shrink())


def test_cli_survives_a_truncation_by_another_process(golden, tmp_path):
    """quantkl compare on a 40-chunk file that another process truncates
    midway: exit 1 and a line naming the file, never SIGBUS."""
    raw = (golden / GOLDEN_KLD).read_bytes()
    head, rows = raw[:20 + 4 * 256], raw[20 + 4 * 256:]
    n = 40
    big = head[:16] + struct.pack("<i", n) + (head[20:] * (n // 2)) + rows * (n // 2)
    for name in ("a.kld", "b.kld"):
        (tmp_path / name).write_bytes(big)
    p = subprocess.Popen([sys.executable, "-m", "quantkl", "compare", str(tmp_path / "a.kld"),
                          str(tmp_path / "b.kld"), "--threads", "1", "--exact"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not p.stdout.readline().startswith("   1 "):  # chunk 1's line of the table
        assert p.poll() is None
    os.truncate(tmp_path / "b.kld", len(big) // 2)
    p.stdout.read()
    err = p.stderr.read()
    assert p.wait(timeout=120) == 1, err
    assert "b.kld" in err and "truncated" in err and err.count("\n") == 1


# --- 7. signals ------------------------------------------------------------------

@pytest.fixture(scope="module")
def base_16(smollm2, golden, tmp_path_factory):
    """16 chunks of 128: a few seconds of work for score to be stopped in."""
    base = tmp_path_factory.mktemp("base16") / "base.kld"
    assert main(["dump", smollm2, str(golden / "gpl3.txt"), "-o", str(base), "--ctx", "128",
                 "--chunks", "16", "-q"]) == 0
    return base


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
@pytest.mark.parametrize("command", ["dump", "score --save"])
def test_signal_leaves_no_partial_file(smollm2, golden, base_16, tmp_path, sig, command):
    out = tmp_path / "out.kld"
    if command == "dump":  # the whole text: ~58 chunks of 128
        argv = ["dump", smollm2, str(golden / "gpl3.txt"), "-o", str(out), "--ctx", "128"]
    else:
        argv = ["score", str(base_16), "--model", smollm2, "--save", str(out), "--json",
                str(tmp_path / "r.json")]
    p = subprocess.Popen([sys.executable, "-m", "quantkl"] + argv + ["-q"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    partial = tmp_path / "out.kld.partial"
    deadline = time.time() + 120
    while not partial.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert p.poll() is None, "the run ended before the signal"
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 128 + sig, err
    assert f"stopped by {sig.name}" in err
    assert os.listdir(tmp_path) == []


# --- 8. outputs that cannot be written -------------------------------------------

def test_unwritable_outputs_refused_before_the_run(smollm2, golden, tmp_path, capsys):
    """A directory where a file should go, a record named .npz, an existing
    record: refused at once (no model is loaded), nothing written."""
    d = tmp_path / "adir"
    d.mkdir()
    kld = golden / GOLDEN_KLD
    for argv, words in [
        (["dump", smollm2, "-o", d], "is a directory"),
        (["score", kld, "--model", smollm2, "--save", d], "is a directory"),
        (["score", kld, "--model", smollm2, "--json", d], "is a directory"),
        (["compare", kld, kld, "--json", tmp_path / "x.npz"], "name the record OUT.json"),
        (["compare", kld, kld, "--json", tmp_path / "nofolder" / "x.json"], "does not exist"),
    ]:
        start = time.perf_counter()
        code, _, err = run(capsys, *argv)
        assert code == 1 and words in err, (argv, err)
        assert time.perf_counter() - start < 5
    assert sorted(f.name for f in tmp_path.iterdir()) == ["adir"] and not os.listdir(d)
    (tmp_path / "r.json").write_text("{}")
    code, _, err = run(capsys, "compare", kld, kld, "--json", tmp_path / "r.json")
    assert code == 1 and "exists; pass --force" in err
    code, _, err = run(capsys, "compare", kld, kld, "--json", tmp_path / "r.json", "-f", "-q")
    assert code == 0 and json.loads((tmp_path / "r.json").read_text())["count"] == 126


def test_a_failed_record_leaves_nothing(golden, tmp_path, monkeypatch):
    from quantkl import records
    res = quantkl.score(np.zeros((3, 5), np.float32), np.zeros((3, 5), np.float32), [0, 1, 2])

    def fail(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "r.json.partial"))

    monkeypatch.setattr(records.json, "dump", fail)
    with pytest.raises(OSError):
        records.write_record(str(tmp_path / "r.json"), res, {})
    assert os.listdir(tmp_path) == []


def test_full_disk_exit_status(golden, tmp_path):
    """Writes past RLIMIT_FSIZE fail as on a full disk: exit 1, one line
    naming the file, no half-written record."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))

    kld = str(golden / GOLDEN_KLD)
    p = subprocess.run([sys.executable, "-m", "quantkl", "compare", kld, kld, "--json",
                        str(tmp_path / "r.json"), "-q"], capture_output=True, text=True,
                       preexec_fn=limit, timeout=120)
    assert p.returncode == 1, p.stderr
    assert "File too large" in p.stderr and "r.npz.partial" in p.stderr
    assert p.stderr.count("\n") == 1 and os.listdir(tmp_path) == []


# --- 9. exit statuses ---------------------------------------------------------------

def test_bad_input_exits_1_with_one_line(golden, tmp_path, capsys):
    kld = golden / GOLDEN_KLD
    (tmp_path / "wrong.json").write_text(json.dumps({"record_version": 1, "mode": "llama",
                                                    "count": 3, "statistics": {},
                                                    "per_token_file": "x.npz"}))
    for argv, words in [
        (["bench", "--vocab", "100000000"], "--vocab 100000000 x --rows 255 needs about"),
        (["plot", tmp_path / "wrong.json", "-o", tmp_path / "p.png", "--width", "70000"],
         "at most 10000 pixels"),
        (["report", tmp_path / "wrong.json"], "field 'statistics.count' is missing"),
        (["worst", tmp_path / "wrong.json", "--percent", "inf"], "must be a percentage"),
        (["compare", kld], "the following arguments are required: OTHER.kld"),
        (["score", kld, "--model"], "expected at least one argument"),
        (["frobnicate"], "invalid choice"),
    ]:
        code, _, err = run_catching_exit(capsys, *argv)
        assert code == 1, (argv, err)
        assert words in err and err.count("\n") == 1 and "internal error" not in err, (argv, err)


def run_catching_exit(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse exits
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_os_errors_exit_1_naming_the_file(golden, tmp_path, capsys, monkeypatch):
    """A read-only filesystem (simulated: root may write anywhere here)."""
    from quantkl import records

    def readonly(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "r.npz.partial"))

    monkeypatch.setattr(records.np, "savez_compressed", readonly)
    code, _, err = run(capsys, "compare", golden / GOLDEN_KLD, golden / GOLDEN_KLD, "--json",
                       tmp_path / "r.json", "-q")
    assert code == 1 and f"{tmp_path / 'r.npz.partial'}: Read-only file system" in err
    assert os.listdir(tmp_path) == []


# --- 10. files that are not files ----------------------------------------------

def test_fifo_is_refused_not_waited_on(golden, smollm2, tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    kld = golden / GOLDEN_KLD
    for argv in (["info", fifo], ["compare", fifo, kld], ["score", kld, "--model", fifo],
                 ["dump", smollm2, fifo, "-o", tmp_path / "x.kld"], ["report", fifo],
                 ["diff", fifo, kld], ["tasks", smollm2, "--winogrande", fifo],
                 ["tasks", smollm2, "--multiple-choice", fifo]):
        code, _, err = run(capsys, *argv)
        assert code == 1 and "not a regular file" in err, (argv, err)


# --- 11. threads --------------------------------------------------------------------

def test_threads_are_clamped_to_the_cores(golden, capsys):
    from quantkl.arrays import available_cores, thread_count
    assert thread_count(10000) == available_cores()
    kld = golden / GOLDEN_KLD
    code, _, err = run(capsys, "compare", kld, kld, "--threads", "10000", "-q")
    assert code == 0 and f"--threads 10000 is more than the {available_cores()} cores" in err


# --- 12. the writer's own checks --------------------------------------------------

@pytest.mark.parametrize("n_vocab, tokens, words", [
    (5, [0, 1, 2, 3, 5, 0], "token 5 at position 1 of chunk 2 is outside the vocabulary"),
    (5, [0, 1, 2, -1, 0, 0], "token -1 at position 0 of chunk 2"),
    (2**31 + 10, [0, 1, 2, 3, 2**32 + 3, 0], "n_vocab as int32"),
    (10, [0, 1, 2, 3, 2**32 + 3, 0], "token 4294967299 at position 1 of chunk 2"),
])
def test_writer_checks_before_it_creates_a_file(tmp_path, n_vocab, tokens, words):
    with pytest.raises(ValueError, match=words):
        LogitDumpWriter(tmp_path / "x.kld", 3, n_vocab, np.array(tokens, np.int64))
    assert os.listdir(tmp_path) == []
