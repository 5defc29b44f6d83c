"""Precise sparse rows (.kldp): the encoder, the kernels against
quantkl.reference's sparse twin under the accuracy contract, llama mode
against the float logits, the intervals against the truth from full logits,
and the file."""
import os

import numpy as np
import pytest

import quantkl
from quantkl import kldz, reference
from quantkl.cli import main
from quantkl.dumpfile import DumpError, LogitDump, dump_prefix, inspect_dump
from quantkl.evaluation import compare_dumps
from quantkl.scoring import RowError
from quantkl.sparse import HEADER_DTYPE, SparseRows, SparseRowsError, encode_sparse_rows

from test_kernels import KINDS, as_dtype, make_logits, perturb

VOCABS = [3, 17, 1001, 49153]
CONTRACT = {"kld": 1e-6, "kld_hi": 1e-6, "rkl": 1e-6, "rkl_hi": 1e-6, "js": 1e-6, "js_hi": 1e-6,
            "nll_p": 1e-7, "nll_q": 1e-7}


def rows_of(rng, v, kind, n=5):
    x = make_logits(rng, n, v, kind).astype(np.float32)
    y = perturb(rng, x.astype(np.float64), kind).astype(np.float32)
    return x, y, rng.integers(0, v, n)


def within_contract(got, want, rel, what):
    assert np.array_equal(np.isfinite(got), np.isfinite(want)), (what, got, want)
    np.testing.assert_array_equal(got[~np.isfinite(want)], want[~np.isfinite(want)])
    fin = np.isfinite(want)
    excess = np.abs(got[fin] - want[fin]) / (1e-7 + rel * np.abs(want[fin]))
    assert np.all(excess <= 1), (what, got[fin][np.argmax(excess)], want[fin][np.argmax(excess)])


def check_sparse(rows, ref, fields):
    for name in fields:
        within_contract(getattr(rows, name), ref[name], CONTRACT[name], name)
    for name in ("top_p", "top_q", "rank", "overlap"):
        np.testing.assert_array_equal(getattr(rows, name), ref[name], err_msg=name)
    np.testing.assert_allclose(rows.p_top, ref["p_top"], rtol=1e-12)


# --- the encoder ------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_encoder_stores_the_cut_and_exact_tail_scalars(kernel_path, rng, kind):
    x, _, tok = rows_of(rng, 1001, kind)
    sp = encode_sparse_rows(x, tok)
    x64 = x.astype(np.float64)
    for r in range(len(x)):
        h, (idx, val) = sp.headers[r], sp.row(r)
        mx = x64[r].max()
        lse = np.log(np.sum(np.exp(x64[r] - mx)))
        assert h["x_max"] == x[r].max() and h["x_tok"] == x[r, tok[r]]
        assert abs(h["lse"] - lse) <= 1e-13 * max(1, lse)
        f32 = np.float32
        cut = (f32(x[r] - f32(h["x_max"])) - f32(h["lse"])) > f32(-16)
        want = np.flatnonzero(cut)
        if len(want) < 10:  # the ten largest, ties in index order
            want = np.sort(np.argsort(-x[r], kind="stable")[:10])
        np.testing.assert_array_equal(idx, want)
        np.testing.assert_array_equal(val, x[r, want])
        tail = np.ones(len(x[r]), bool)
        tail[want] = False
        assert h["tail_count"] == tail.sum() and h["n_stored"] == len(want)
        if tail.any():
            with np.errstate(divide="ignore"):
                mass = np.log(np.sum(np.exp(x64[r, tail] - mx))) - lse
            assert h["tail_min"] == x[r, tail].min() and h["tail_max"] == x[r, tail].max()
            assert mass == h["tail_lse"] or abs(mass - h["tail_lse"]) <= 1e-12 * abs(mass)


def test_encoder_refuses_nan_and_empty_rows():
    x = np.zeros((3, 20), np.float32)
    x[1, 4] = np.nan
    with pytest.raises(ValueError, match="logits row 1 contains NaN"):
        encode_sparse_rows(x, [0, 0, 0])
    x[1, 4] = 0
    x[2] = -np.inf
    with pytest.raises(ValueError, match="logits row 2 has no finite logit"):
        encode_sparse_rows(x, [0, 0, 0])


def test_block_bytes_round_trip_and_size(rng):
    x, _, tok = rows_of(rng, 49153, "lm", n=8)
    sp = encode_sparse_rows(x, tok)
    back = SparseRows.from_bytes(sp.to_bytes(), len(sp), sp.n_vocab)
    assert back.headers.tobytes() == sp.headers.tobytes()
    np.testing.assert_array_equal(back.indices, sp.indices)
    np.testing.assert_array_equal(back.logits, sp.logits)
    assert len(sp.to_bytes()) == 40 * 8 + 8 * sp.stored


@pytest.mark.parametrize("damage, match", [
    ("short", "cannot hold"), ("size", "take"), ("index", "outside the vocabulary"),
    ("nan", "NaN or above its max"), ("counts", "do not add up"), ("lse", "log-sum-exp"),
    ("tail", "tail mass")])
def test_damaged_block_bytes_are_named(rng, damage, match):
    x, _, tok = rows_of(rng, 300, "lm", n=3)
    sp = encode_sparse_rows(x, tok)
    raw = bytearray(sp.to_bytes())
    head = 3 * HEADER_DTYPE.itemsize
    h = np.frombuffer(raw, HEADER_DTYPE, 3).copy()
    if damage == "short":
        raw = raw[:50]
    elif damage == "size":
        raw = raw[:-1]
    elif damage == "index":  # the last row's last gap, low byte plane, made large
        raw[head + sp.stored - 1] = 255
        raw[head + 2 * sp.stored - 1] = 255
    elif damage == "nan":
        logits = np.frombuffer(bytes(raw[head + 4 * sp.stored:]), np.uint8).reshape(4, -1).copy()
        logits[:, 0] = np.frombuffer(np.float32(np.nan).tobytes(), np.uint8)
        raw[head + 4 * sp.stored:] = logits.tobytes()
    else:
        field, value = {"counts": ("tail_count", 5), "lse": ("lse", np.nan),
                        "tail": ("tail_lse", 0.5)}[damage]
        h[field][1] = value
        raw[:head] = h.tobytes()
    with pytest.raises(SparseRowsError, match=match):
        SparseRows.from_bytes(bytes(raw), 3, 300)


# --- the kernels ----------------------------------------------------------------

@pytest.mark.parametrize("mode", ["llama", "exact"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("v", VOCABS)
def test_sparse_logits_against_the_twin(kernel_path, rng, v, kind, mode):
    x, y, tok = rows_of(rng, v, kind, n=3 if v > 10000 else 5)
    sp = encode_sparse_rows(x, tok)
    ref = reference.score_sparse_rows(sp, y, tok, mode)
    plain = quantkl.score_rows(sp, y, tok, mode=mode)
    check_sparse(plain, ref, ["kld", "kld_hi", "nll_p", "nll_q"])
    full = quantkl.score_rows(sp, y, tok, mode=mode, reverse=True, js=True)
    check_sparse(full, ref, list(CONTRACT))
    np.testing.assert_array_equal(full.kld, plain.kld)  # llama mode: the one pass's sum


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_sparse_against_half_and_strided_logits(kernel_path, rng, dtype):
    x, y, tok = rows_of(rng, 1001, "lm")
    sp = encode_sparse_rows(x, tok)
    yh = as_dtype(y, dtype)
    for mode in ("llama", "exact"):
        ref = reference.score_sparse_rows(sp, yh, tok, mode)
        check_sparse(quantkl.score_rows(sp, yh, tok, mode=mode, reverse=True), ref,
                     ["kld", "kld_hi", "rkl", "rkl_hi", "nll_q"])
        wide = np.zeros((len(y), 2 * y.shape[1]), yh.dtype)
        wide[:, ::2] = yh
        check_sparse(quantkl.score_rows(sp, wide[:, ::2], tok, mode=mode), ref,
                     ["kld", "kld_hi", "nll_q"])


@pytest.mark.parametrize("mode", ["llama", "exact"])
@pytest.mark.parametrize("kind", ["lm", "peaked", "masked", "wide", "equal"])
def test_sparse_sparse_against_the_twin(kernel_path, rng, kind, mode):
    x, y, tok = rows_of(rng, 1001, kind)
    sp, sq = encode_sparse_rows(x, tok), encode_sparse_rows(y, tok)
    ref = reference.score_sparse_rows(sp, sq, tok, mode)
    check_sparse(quantkl.score_rows(sp, sq, tok, mode=mode), ref,
                 ["kld", "kld_hi", "nll_p", "nll_q"])


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "equal"])
def test_llama_mode_is_the_float_logits_sum(kernel_path, rng, kind):
    x, y, tok = rows_of(rng, 49153, kind, n=4)
    sp = encode_sparse_rows(x, tok)
    got = quantkl.score_rows(sp, y, tok, mode="llama")
    want = quantkl.score_rows(x, y, tok, mode="llama")
    within_contract(got.kld, want.kld, 1e-6, "kld")
    within_contract(got.nll_p, want.nll_p, 1e-7, "nll_p")
    np.testing.assert_array_equal(got.top_p, want.top_p)
    np.testing.assert_array_equal(got.overlap, want.overlap)


@pytest.mark.parametrize("kind", KINDS)
def test_intervals_hold_the_true_values(kernel_path, rng, kind):
    """lower <= true <= upper, the truth the float64 reference from both
    full rows: the twin's bounds with float64 slack only, the kernel's
    within the accuracy contract."""
    x, y, tok = rows_of(rng, 1001, kind, n=6)
    sp, sq = encode_sparse_rows(x, tok), encode_sparse_rows(y, tok)
    true = reference.score_rows(x, y, tok, "exact")
    for other in (y, sq):
        twin = reference.score_sparse_rows(sp, other, tok, "exact")
        rows = quantkl.score_rows(sp, other, tok, mode="exact",
                                  **({} if other is sq else {"reverse": True, "js": True}))
        for name in ("kld",) + (() if other is sq else ("rkl", "js")):
            t = true[name]
            slack = 1e-12 + 1e-9 * np.abs(t)
            with np.errstate(invalid="ignore"):
                assert np.all((twin[name] <= t + slack) | (t == np.inf)), name
                assert np.all(t <= twin[f"{name}_hi"] + slack), name
            tol = 1e-7 + 1e-6 * np.abs(t)
            lo, hi = getattr(rows, name), getattr(rows, f"{name}_hi")
            with np.errstate(invalid="ignore"):
                assert np.all((lo <= t + tol) | (t == np.inf)), (name, lo, t)
                assert np.all(t <= hi + tol), (name, t, hi)


def test_known_interval_of_a_row_with_one_tail_entry(kernel_path):
    """Eleven entries above the cut and one below it (p = 2e-8): the tail is
    that entry, known exactly from its mass, and Q's smallest entry is
    there too, so both ends of the interval are the true KL."""
    p = np.append(np.full(11, (1 - 2e-8) / 11), 2e-8)
    q = np.append(np.linspace(0.05, 0.13, 11), 3e-8)
    q /= q.sum()
    x, y = np.log(p).astype(np.float32)[None], np.log(q).astype(np.float32)[None]
    sp = encode_sparse_rows(x, [0])
    assert sp.headers["n_stored"][0] == 11 and sp.headers["tail_count"][0] == 1
    true = reference.score_rows(x, y, [0], "exact")["kld"][0]
    rows = quantkl.score_rows(sp, y, [0], mode="exact")
    assert abs(rows.kld[0] - true) < 1e-12 and abs(rows.kld_hi[0] - true) < 1e-12


def test_sparse_errors_are_named(rng):
    x, y, tok = rows_of(rng, 300, "lm", n=4)
    sp = encode_sparse_rows(x, tok)
    bad = SparseRows(sp.headers, sp.offsets, sp.indices.copy(), sp.logits, 300)
    bad.indices[sp.offsets[2] + 1] = bad.indices[sp.offsets[2]]  # row 2 not increasing
    for mode in ("llama", "exact"):
        with pytest.raises(RowError, match="base sparse row 2 stores indices out of range"):
            quantkl.score_rows(bad, y, tok, mode=mode)
    y[3, 7] = np.nan
    with pytest.raises(RowError, match="other logits row 3 contains NaN"):
        quantkl.score_rows(sp, y, tok)
    with pytest.raises(TypeError, match="base of a comparison"):
        quantkl.score_rows(y, sp, tok)
    with pytest.raises(ValueError, match="two precise sparse dumps give the forward KL only"):
        quantkl.score_rows(sp, sp, tok, reverse=True)
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        quantkl.score_rows(sp, y[:, :200], tok)


# --- the file ----------------------------------------------------------------------

N_CTX, N_VOCAB, N_CHUNK = 80, 700, 3


def write_kldp(path, rng, scale=2.5):
    """A .kldp of LM-like rows, and the float logits it was made from."""
    tokens = rng.integers(0, N_VOCAB, N_CTX * N_CHUNK)
    per_chunk = N_CTX - 1 - N_CTX // 2
    logits = []
    with kldz.KldpWriter(str(path), dump_prefix(N_CTX, N_VOCAB, tokens), threads=2) as w:
        for c in range(N_CHUNK):
            x = (rng.standard_normal((per_chunk, N_VOCAB)) * scale).astype(np.float32)
            nxt = tokens[c * N_CTX + N_CTX // 2 + 1:(c + 1) * N_CTX]
            w.write_rows(c, 0, encode_sparse_rows(x[:7], nxt[:7]))
            w.write_rows(c, 7, encode_sparse_rows(x[7:], nxt[7:]))
            logits.append(x)
    return tokens, np.concatenate(logits)


@pytest.fixture
def small_sparse_blocks(monkeypatch):
    monkeypatch.setattr(kldz, "SPARSE_BLOCK_ROWS", 5)


def test_kldp_pieces_score_as_the_float_logits(tmp_path, rng, small_sparse_blocks):
    path = tmp_path / "base.kldp"
    tokens, x = write_kldp(path, rng)
    y = (x + rng.standard_normal(x.shape).astype(np.float32) * 0.3).astype(np.float32)
    with LogitDump(path) as d:
        assert d.precise and d.compressed and (d.n_ctx, d.n_vocab, d.n_chunk) == (N_CTX, N_VOCAB,
                                                                                  N_CHUNK)
        assert len(d._kldz.blocks) == N_CHUNK * 8  # 39 rows a chunk, 5 a block
        r = d.rows_per_chunk
        for c in range(N_CHUNK):
            for lo, hi in ((0, r), (4, 6), (5, 10), (38, 39)):
                piece = d.piece(c, lo, hi)
                assert isinstance(piece.rows, SparseRows)
                rows = slice(c * r + lo, c * r + hi)
                want = encode_sparse_rows(x[rows], piece.tokens)
                np.testing.assert_array_equal(piece.rows.indices, want.indices)
                assert piece.rows.headers.tobytes() == want.headers.tobytes()
                got = quantkl.score(piece.rows, y[rows], piece.tokens)
                ref = quantkl.score(x[rows], y[rows], piece.tokens)
                within_contract(got.kld, ref.kld, 1e-6, "kld")
        sample = d.sample_rows([0, 38, 39, 116])
        np.testing.assert_array_equal(sample.headers["x_max"], x[[0, 38, 39, 116]].max(axis=1))
        with pytest.raises(DumpError, match="piece at a time"):
            d.all_rows()
    info = inspect_dump(path)
    lines = dict(info.lines())
    assert info.problem is None and lines["format"].startswith("quantkl .kldp, precise sparse")
    assert "of the entries stored" in lines["row"]


def test_compare_two_kldp_and_refuse_mixed_forms(tmp_path, rng, golden):
    a, b = tmp_path / "a.kldp", tmp_path / "b.kldp"
    tokens, _ = write_kldp(a, np.random.default_rng(1))
    write_kldp(b, np.random.default_rng(1), scale=2.6)
    with LogitDump(a) as da, LogitDump(b) as db:
        r = compare_dumps(da, db, mode="exact")
        assert r.bounded and np.all(r.kld <= r.kld_hi) and r.count == N_CHUNK * 39
        assert "Mean    KLD: [" in r.format_llama() and "(lower bound)" in r.format_llama()
        llama = compare_dumps(da, db)
        assert not llama.bounded and "Mean    KLD: [" not in llama.format_llama()
        with LogitDump(golden / "smollm2-q4_1-gpl3-c128.kld") as g:
            with pytest.raises(ValueError, match="compare two .kldp files"):
                compare_dumps(da, g)
            with pytest.raises(ValueError, match="compare it as the base"):
                compare_dumps(g, da)


def test_kldp_refused_when_damaged(tmp_path, rng, small_sparse_blocks):
    path = tmp_path / "base.kldp"
    write_kldp(path, rng)
    raw = bytearray(path.read_bytes())
    with LogitDump(path) as d:
        block = d._kldz.blocks[10]
    bad = tmp_path / "bad.kldp"
    raw[block.offset + 3] ^= 0x55
    bad.write_bytes(bytes(raw))
    with LogitDump(bad) as d:
        with pytest.raises(DumpError, match=r"damaged block 10 \(chunk 2, rows 10..14\) "
                                            r"\(checksum mismatch\)"):
            d.piece(1, 0, 39)
    bad.write_bytes(bytes(raw[:-3]))
    with pytest.raises(DumpError, match="footer is missing"):
        LogitDump(bad)
    raw = bytearray(path.read_bytes())
    raw[8] = 9  # version
    bad.write_bytes(bytes(raw))
    with pytest.raises(DumpError, match=".kldp version 9"):
        LogitDump(bad)


def test_an_index_past_the_vocabulary_is_refused_by_block(tmp_path, rng):
    """A block whose checksum is right (written so) but whose rows are not:
    the reader checks the rows themselves."""
    x = rng.standard_normal((39, N_VOCAB)).astype(np.float32) * 3
    tokens = np.zeros(N_CTX * 1, np.int64)
    sp = encode_sparse_rows(x, np.zeros(39, np.int64))
    broken = SparseRows(sp.headers, sp.offsets, sp.indices.copy(), sp.logits, N_VOCAB)
    broken.indices[sp.offsets[4] - 1] = N_VOCAB + 3  # row 3's last entry
    path = tmp_path / "bad.kldp"
    with kldz.KldpWriter(str(path), dump_prefix(N_CTX, N_VOCAB, tokens)) as w:
        w.write_rows(0, 0, broken)
    with LogitDump(path) as d:
        with pytest.raises(DumpError, match=r"damaged block 0 \(chunk 1, rows 0..38\): row 3 "
                                            r"stores index 703, outside the vocabulary"):
            d.piece(0, 0, 39)


def test_pack_and_unpack_refuse_a_kldp(tmp_path, rng, capsys):
    path = tmp_path / "base.kldp"
    write_kldp(path, rng)
    assert main(["pack", str(path), "-o", str(tmp_path / "x.kldz")]) == 1
    assert "precise sparse file (.kldp)" in capsys.readouterr().err
    assert main(["unpack", str(path), "-o", str(tmp_path / "x.kld")]) == 1
    assert "there is none to unpack" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["base.kldp"]


def test_kldp_writer_refuses_wrong_rows(tmp_path, rng):
    tokens = np.zeros(N_CTX * N_CHUNK, np.int64)
    path = tmp_path / "w.kldp"
    with pytest.raises(ValueError, match="takes SparseRows"):
        with kldz.KldpWriter(str(path), dump_prefix(N_CTX, N_VOCAB, tokens)) as w:
            w.write_rows(0, 0, np.zeros((3, N_VOCAB), np.float32))
    sp = encode_sparse_rows(rng.standard_normal((3, N_VOCAB)).astype(np.float32), [0, 0, 0])
    with pytest.raises(ValueError, match="out of order"):
        with kldz.KldpWriter(str(path), dump_prefix(N_CTX, N_VOCAB, tokens)) as w:
            w.write_rows(0, 2, sp)
    with pytest.raises(ValueError, match="is not whole"):
        with kldz.KldpWriter(str(path), dump_prefix(N_CTX, N_VOCAB, tokens)) as w:
            w.write_rows(0, 0, sp)
    assert not os.listdir(tmp_path)


# --- with the model (slow tier) ----------------------------------------------------

def test_precise_llama_mean_is_the_float_logits_one(golden_logits, kernel_path):
    """The golden Q4_0 pair: llama mode against the .kldp rows equals llama
    mode against the base's float logits to 1e-7 in the mean; the .kld's
    rounding moves it further."""
    base, q = golden_logits["base"], golden_logits["q4_0"]
    tok = np.zeros(len(base), np.int64)
    sp = encode_sparse_rows(base, tok)
    got = quantkl.score(sp, q, tok).kld_mean
    want = quantkl.score(base, q, tok).kld_mean
    assert abs(got - want) <= 1e-7, (got, want)
    exact = quantkl.score(sp, q, tok, mode="exact")
    true = quantkl.score(base, q, tok, mode="exact").kld_mean
    assert exact.kld_mean <= true <= exact.kld_mean_hi


def test_cli_dump_precise_then_score_and_compare(smollm2, quants, tmp_path, capsys):
    base, other = str(tmp_path / "b.kldp"), str(tmp_path / "q.kldp")
    assert main(["dump", smollm2, "--precise", "--ctx", "128", "--chunks", "2", "-o", base]) == 0
    assert main(["dump", quants["Q8_0"], "--precise", "--ctx", "128", "--chunks", "2",
                 "-o", other]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(["dump", smollm2, "--precise", "--compress", "-o", base])
    assert stop.value.code == 1 and "not allowed with argument" in capsys.readouterr().err
    rec = str(tmp_path / "s.json")
    assert main(["score", base, "-m", quants["Q8_0"], "--exact", "--json", rec]) == 0
    out = capsys.readouterr().out
    assert "Mean    KLD: [" in out and "Maximum KLD:" in out and "(lower bound)" in out
    from quantkl.records import load_result
    r = load_result(rec)
    assert r.bounded and np.all(r.kld <= r.kld_hi)
    assert main(["compare", base, other]) == 0
    assert "Mean    KLD:" in capsys.readouterr().out
    assert os.path.getsize(base) < 0.4 * (24 + 4 * 256 + 2 * 126 * (49152 + 4))
