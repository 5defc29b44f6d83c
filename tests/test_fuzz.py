"""Fuzzing: the dump reader on mutated files and the kernels on
arbitrary small arrays. Each input must give the reference's numbers or a
clear ValueError, never a crash, another exception or a wrong number.

CI runs a few hundred examples per test (seconds); for a longer hunt set
QUANTKL_FUZZ_EXAMPLES, e.g. ``QUANTKL_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz.py``.
"""
import os
import struct

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import quantkl
from quantkl import reference
from quantkl.dumpfile import LogitDump, LogitDumpWriter, inspect_dump
from quantkl.evaluation import compare_dumps

EXAMPLES = int(os.environ.get("QUANTKL_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize="QUANTKL_FUZZ_EXAMPLES" not in
                os.environ, suppress_health_check=[HealthCheck.too_slow,
                                                   HealthCheck.function_scoped_fixture])

N_CTX, N_VOCAB, N_CHUNK = 8, 300, 2


@pytest.fixture(scope="module")
def small_dump(tmp_path_factory):
    """A genuine dump of random LM-like rows: the seed every mutation starts from."""
    rng = np.random.default_rng(5)
    path = tmp_path_factory.mktemp("fuzz") / "base.kld"
    tokens = rng.integers(0, N_VOCAB, N_CTX * N_CHUNK)
    with LogitDumpWriter(path, N_CTX, N_VOCAB, tokens) as w:
        for c in range(N_CHUNK):
            chunk = tokens[c * N_CTX:(c + 1) * N_CTX]
            logits = (rng.standard_normal((w.rows_per_chunk, N_VOCAB)) * 3).astype(np.float32)
            first = N_CTX // 2
            w.write_chunk(quantkl.encode_llama_rows(logits, chunk[first + 1:])[0])
    return path


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("word"), st.integers(0, 10**6),
              st.sampled_from([0, 1, 0x7F800000, 0xFF800000, 0x7FC00000, 0x42480000, 0xC9742400,
                               0x80000000, 0xFFFFFFFF, 2**31, 256])),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("append"), st.integers(1, 5000), st.just(0)),
)


def mutate(raw: bytearray, muts) -> bytearray:
    for kind, where, value in muts:
        if kind == "flip" and raw:
            raw[where % len(raw)] ^= value
        elif kind == "word" and len(raw) >= 4:
            # headers and row headers are 4-byte words: hit them far more often than chance
            i = (where % (len(raw) // 4)) * 4 if where % 3 else (where % 8) * 4
            raw[i:i + 4] = struct.pack("<I", value)
        elif kind == "truncate":
            del raw[where % (len(raw) + 1):]
        elif kind == "append":
            raw += bytes(where)
    return raw


@FUZZ
@given(muts=st.lists(mutation, min_size=1, max_size=4))
def test_fuzz_dump_reader(small_dump, tmp_path, muts):
    bad = tmp_path / "mutated.kld"
    bad.write_bytes(bytes(mutate(bytearray(small_dump.read_bytes()), muts)))
    info = inspect_dump(bad)  # never raises: it reports
    assert isinstance(info.lines(), list)
    try:
        with LogitDump(small_dump) as base, LogitDump(bad) as other:
            result = compare_dumps(base, other, threads=1)
    except ValueError as e:  # DumpError and RowError are ValueErrors
        assert str(e) and "\n" not in str(e)
        return
    # llama rows' probabilities are rounded codes with a -16 cut, so a row's
    # KLD may dip below 0 by the rounding, never by more than the 1e-3 of
    # excess mass the corrupt-row check lets through
    assert not np.isnan(result.kld).any() and (result.kld > -2e-3).all()
    assert not np.isnan(result.nll).any() and not np.isnan(result.nll_base).any()


@pytest.fixture(scope="module")
def small_kldz(small_dump):
    from quantkl.kldz import pack
    path = small_dump.with_suffix(".kldz")
    pack(str(small_dump), str(path), level=1)
    return path


@FUZZ
@given(muts=st.lists(mutation, min_size=1, max_size=4))
def test_fuzz_kldz_reader(small_dump, small_kldz, tmp_path, muts):
    """A mutated .kldz is refused in one line, or reads as the rows it was
    packed from: never a crash or other rows (every block has a checksum)."""
    bad = tmp_path / "mutated.kldz"
    bad.write_bytes(bytes(mutate(bytearray(small_kldz.read_bytes()), muts)))
    info = inspect_dump(bad)
    assert isinstance(info.lines(), list)
    try:
        with LogitDump(small_dump) as base, LogitDump(bad) as other:
            for c in range(base.n_chunk):
                a, b = base.chunk(c), other.chunk(c)
                assert np.array_equal(a.rows.rows, b.rows.rows)
                assert np.array_equal(a.tokens, b.tokens)
    except ValueError as e:
        assert str(e) and "\n" not in str(e)


@pytest.fixture(scope="module")
def small_kldp(tmp_path_factory):
    """A genuine .kldp of LM-like rows (blocks of 3 rows) and its float logits."""
    from quantkl import kldz
    from quantkl.dumpfile import dump_prefix
    from quantkl.sparse import encode_sparse_rows
    rng = np.random.default_rng(6)
    path = tmp_path_factory.mktemp("fuzzp") / "base.kldp"
    tokens = rng.integers(0, N_VOCAB, N_CTX * N_CHUNK)
    per_chunk = N_CTX - 1 - N_CTX // 2
    before, kldz.SPARSE_BLOCK_ROWS = kldz.SPARSE_BLOCK_ROWS, 2
    try:
        with kldz.KldpWriter(str(path), dump_prefix(N_CTX, N_VOCAB, tokens)) as w:
            for c in range(N_CHUNK):
                x = (rng.standard_normal((per_chunk, N_VOCAB)) * 3).astype(np.float32)
                w.write_rows(c, 0, encode_sparse_rows(x, tokens[c * N_CTX + N_CTX // 2 + 1:
                                                                (c + 1) * N_CTX]))
    finally:
        kldz.SPARSE_BLOCK_ROWS = before
    return path


@FUZZ
@given(muts=st.lists(mutation, min_size=1, max_size=4))
def test_fuzz_kldp_reader(small_kldp, tmp_path, muts):
    """A mutated .kldp is refused in one line, or reads as the rows it was
    written with (every block has a checksum, every field is checked)."""
    bad = tmp_path / "mutated.kldp"
    bad.write_bytes(bytes(mutate(bytearray(small_kldp.read_bytes()), muts)))
    assert isinstance(inspect_dump(bad).lines(), list)
    try:
        with LogitDump(small_kldp) as base, LogitDump(bad) as other:
            for c in range(base.n_chunk):
                a, b = base.chunk(c), other.chunk(c)
                assert a.rows.headers.tobytes() == b.rows.headers.tobytes()
                assert np.array_equal(a.rows.indices, b.rows.indices)
                assert np.array_equal(a.rows.logits, b.rows.logits)
    except ValueError as e:
        assert str(e) and "\n" not in str(e)


@FUZZ
@given(muts=st.lists(mutation, min_size=1, max_size=4), mode=st.sampled_from(["llama", "exact"]))
def test_fuzz_sparse_block_bytes(small_kldp, muts, mode):
    """A block's bytes damaged past its checksum (a writer's bug, a crafted
    file): refused with the reason, or rows the kernels score without a crash
    and without NaN; an impossible row is a RowError."""
    from quantkl.scoring import RowError
    from quantkl.sparse import SparseRows, SparseRowsError
    with LogitDump(small_kldp) as d:
        rows = d.piece(0, 0, 2).rows
    raw = bytes(mutate(bytearray(rows.to_bytes()), muts))
    try:
        got = SparseRows.from_bytes(raw, 2, N_VOCAB)
    except SparseRowsError as e:
        assert str(e) and "\n" not in str(e)
        return
    y = np.random.default_rng(1).standard_normal((2, N_VOCAB)).astype(np.float32)
    try:
        out = quantkl.score_rows(got, y, [0, 1], mode=mode, threads=1)
    except RowError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert not np.isnan(out.kld).any() and not np.isnan(out.kld_hi).any()


@FUZZ
@given(data=st.data(), rows=st.integers(1, 4), vocab=st.integers(1, 70),
       dtype=st.sampled_from(["float32", "float16", "bfloat16"]),
       mode=st.sampled_from(["llama", "exact"]))
def test_fuzz_sparse_rows(data, rows, vocab, dtype, mode):
    """Arbitrary logits through the sparse encoder and kernels: the twin's
    numbers (the contract scaled by the logits' size, as for the float
    kernels), or the encoder's or kernel's one-line refusal of NaN, +inf or
    an all -inf row."""
    from quantkl.sparse import encode_sparse_rows
    x = data.draw(hnp.arrays(np.float32, (rows, vocab), elements=LOGIT))
    y = as_dtype(data.draw(hnp.arrays(np.float32, (rows, vocab), elements=LOGIT)), dtype)
    tok = data.draw(hnp.arrays(np.int64, rows, elements=st.integers(0, vocab - 1)))
    y64 = reference.as_float64(y)
    if (np.isnan(x) | (x == np.inf)).any() or (x == -np.inf).all(axis=1).any():
        with pytest.raises(ValueError, match="logits row"):
            encode_sparse_rows(x, tok)
        return
    sp = encode_sparse_rows(x, tok)
    if (np.isnan(y64) | (y64 == np.inf)).any() or (y64 == -np.inf).all(axis=1).any():
        with pytest.raises(ValueError, match="other logits row"):
            quantkl.score_rows(sp, y, tok, mode=mode, threads=1)
        return
    got = quantkl.score_rows(sp, y, tok, mode=mode, threads=1, reverse=True, js=True)
    want = reference.score_sparse_rows(sp, y, tok, mode)
    span = np.max(np.abs(np.where(np.isfinite(x), x, 0)), axis=1) + \
        np.max(np.abs(np.where(np.isfinite(y64), y64, 0)), axis=1)
    for name in ("kld", "kld_hi", "rkl", "rkl_hi", "js", "js_hi", "nll_p", "nll_q"):
        g, w = getattr(got, name), want[name]
        np.testing.assert_array_equal(np.isfinite(g), np.isfinite(w), err_msg=name)
        fin = np.isfinite(w)
        np.testing.assert_array_equal(g[~fin], w[~fin], err_msg=name)
        tol = 1e-7 + 1e-6 * np.abs(w) + 4e-7 * span
        assert np.all(np.abs(g[fin] - w[fin]) <= tol[fin]), (name, g, w)


# mostly ordinary logits, with some specials and some huge magnitudes
FINITE = st.floats(-1e4, 1e4, width=32)
LOGIT = st.one_of(FINITE, FINITE, FINITE, st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -0.0]),
                  st.floats(width=32, allow_nan=False, allow_infinity=False))


def as_dtype(x, dtype):
    if dtype == "bfloat16":
        return x.astype(ml_dtypes.bfloat16)
    with np.errstate(over="ignore"):
        return x.astype(dtype)


@FUZZ
@given(data=st.data(), rows=st.integers(1, 4), vocab=st.integers(1, 70),
       dtypes=st.tuples(*[st.sampled_from(["float32", "float16", "bfloat16"])] * 2),
       mode=st.sampled_from(["llama", "exact"]))
def test_fuzz_score_rows(data, rows, vocab, dtypes, mode):
    x = data.draw(hnp.arrays(np.float32, (rows, vocab), elements=LOGIT))
    y = data.draw(hnp.arrays(np.float32, (rows, vocab), elements=LOGIT))
    xb, yb = as_dtype(x, dtypes[0]), as_dtype(y, dtypes[1])
    tok = data.draw(hnp.arrays(np.int64, rows, elements=st.integers(0, vocab - 1)))
    x64, y64 = reference.as_float64(xb), reference.as_float64(yb)
    bad_row = (np.isnan(x64) | (x64 == np.inf)).any() or (np.isnan(y64) | (y64 == np.inf)).any() \
        or (x64 == -np.inf).all(axis=1).any() or (y64 == -np.inf).all(axis=1).any()
    if bad_row:
        with pytest.raises(ValueError, match="row"):
            quantkl.score_rows(xb, yb, tok, mode=mode, threads=1)
        return
    got = quantkl.score_rows(xb, yb, tok, mode=mode, threads=1)
    want = reference.score_rows(xb, yb, tok, mode)
    for name, rel in (("kld", 1e-6), ("nll_p", 1e-7), ("nll_q", 1e-7)):
        g, w = getattr(got, name), want[name]
        np.testing.assert_array_equal(np.isfinite(g), np.isfinite(w), err_msg=name)
        fin = np.isfinite(w)
        np.testing.assert_array_equal(g[~fin], w[~fin], err_msg=name)
        # logits of 1e38 make float32 differences of ulp 1e31: the contract is
        # stated for logits a model can produce, so the bound scales with them
        span = np.max(np.abs(np.where(np.isfinite(x64), x64, 0)), axis=1, initial=0) + \
            np.max(np.abs(np.where(np.isfinite(y64), y64, 0)), axis=1, initial=0)
        tol = 1e-7 + rel * np.abs(w) + 4e-7 * span
        assert np.all(np.abs(g[fin] - w[fin]) <= tol[fin]), (name, g, w)
    # tops: the kernel's choice holds the row's largest value (ties may differ)
    for side, vals in (("top_p", x64), ("top_q", y64)):
        idx = getattr(got, side)
        np.testing.assert_array_equal(vals[np.arange(rows), idx], vals.max(axis=1))
