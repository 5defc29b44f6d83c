"""Every kernel against quantkl.reference on generated rows."""
import ml_dtypes
import numpy as np
import pytest

import quantkl
from quantkl import reference
from rowcheck import assert_llama_rows_close

VOCABS = [1, 2, 3, 1001, 49152, 262144]
KINDS = ["peaked", "flat", "masked", "equal", "wide"]


def make_logits(rng, n, v, kind):
    """Rows of one shape of distribution; the 'other' side is a perturbation."""
    if kind == "peaked":
        x = rng.normal(size=(n, v)) * 2
        x[np.arange(n), rng.integers(0, v, n)] += 25
    elif kind == "flat":
        x = rng.normal(size=(n, v)) * 0.01
    elif kind == "masked":
        x = rng.normal(size=(n, v)) * 3
        mask = rng.random((n, v)) < 0.2
        mask[:, 0] = False  # keep one finite logit per row
        x[mask] = -np.inf
    elif kind == "equal":
        x = np.full((n, v), 1.5)
    else:  # wide: a long tail below the -16 cut, where llama and exact differ
        x = rng.normal(size=(n, v)) * 8
    return x


def perturb(rng, x, kind):
    y = x + rng.normal(size=x.shape) * (0.0 if kind == "equal" else 0.3)
    if kind == "masked":
        y[np.isinf(x)] = -np.inf  # the quant masks the same tokens
    return y


def as_dtype(x, dtype):
    return x.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)


def check(rows, ref, *, rtol=1e-6):
    # Kernels sum in float64 like the reference; 1e-6 relative is the accuracy
    # contract for every path (SIMD ones included), atol covers KLDs near 0.
    np.testing.assert_allclose(rows.kld, ref["kld"], rtol=rtol, atol=1e-9)
    np.testing.assert_allclose(rows.nll_p, ref["nll_p"], rtol=rtol, atol=1e-9)
    np.testing.assert_allclose(rows.nll_q, ref["nll_q"], rtol=rtol, atol=1e-9)
    np.testing.assert_array_equal(rows.top_p, ref["top_p"])
    np.testing.assert_array_equal(rows.top_q, ref["top_q"])
    np.testing.assert_array_equal(rows.rank, ref["rank"])


def n_rows_for(v):
    return 3 if v >= 100000 else 6


@pytest.mark.parametrize("mode", ["llama", "exact"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("v", VOCABS)
def test_logits_logits_float32(kernel_path, rng, v, kind, mode):
    n = n_rows_for(v)
    x = make_logits(rng, n, v, kind)
    y = perturb(rng, x, kind)
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    tok = rng.integers(0, v, n)
    check(quantkl.score_rows(x32, y32, tok, mode=mode), reference.score_rows(x32, y32, tok, mode))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("mode", ["llama", "exact"])
@pytest.mark.parametrize("v", [3, 1001, 49152])
def test_logits_logits_half_types(kernel_path, rng, v, mode, dtype):
    n = 5
    x = make_logits(rng, n, v, "peaked")
    y = perturb(rng, x, "peaked")
    xh, yh = as_dtype(x, dtype), as_dtype(y, dtype)
    tok = rng.integers(0, v, n)
    check(quantkl.score_rows(xh, yh, tok, mode=mode), reference.score_rows(xh, yh, tok, mode))
    # mixed: half-precision base against a float32 quant
    y32 = y.astype(np.float32)
    check(quantkl.score_rows(xh, y32, tok, mode=mode), reference.score_rows(xh, y32, tok, mode))


@pytest.mark.parametrize("mode", ["llama", "exact"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("v", VOCABS)
def test_llama_logits(kernel_path, rng, v, kind, mode):
    n = n_rows_for(v)
    x = make_logits(rng, n, v, kind).astype(np.float32)
    y = perturb(rng, x, kind).astype(np.float32)
    tok = rng.integers(0, v, n)
    base, _ = quantkl.encode_llama_rows(x, tok)
    check(quantkl.score_rows(base, y, tok, mode=mode), reference.score_rows(base, y, tok, mode))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_llama_logits_half_types(kernel_path, rng, dtype):
    v, n = 49152, 4
    x = make_logits(rng, n, v, "wide").astype(np.float32)
    y = as_dtype(perturb(rng, x, "wide"), dtype)
    tok = rng.integers(0, v, n)
    base, _ = quantkl.encode_llama_rows(x, tok)
    for mode in ("llama", "exact"):
        check(quantkl.score_rows(base, y, tok, mode=mode), reference.score_rows(base, y, tok, mode))


@pytest.mark.parametrize("mode", ["llama", "exact"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("v", VOCABS)
def test_llama_llama(kernel_path, rng, v, kind, mode):
    n = n_rows_for(v)
    x = make_logits(rng, n, v, kind).astype(np.float32)
    y = perturb(rng, x, kind).astype(np.float32)
    tok = rng.integers(0, v, n)
    base, _ = quantkl.encode_llama_rows(x, tok)
    other, _ = quantkl.encode_llama_rows(y, tok)
    check(quantkl.score_rows(base, other, tok, mode=mode),
          reference.score_rows(base, other, tok, mode))


def test_known_values(kernel_path):
    """Hand-computed KL on a 3-token vocabulary, independent of the reference."""
    p = np.log(np.array([[0.5, 0.25, 0.25]], np.float32))
    q = np.log(np.array([[0.25, 0.5, 0.25]], np.float32))
    r = quantkl.score_rows(p, q, [1], mode="exact")
    assert r.kld[0] == pytest.approx(0.25 * np.log(2), rel=1e-6)
    assert r.nll_p[0] == pytest.approx(np.log(4), rel=1e-6)
    assert r.nll_q[0] == pytest.approx(np.log(2), rel=1e-6)
    assert (r.top_p[0], r.top_q[0], r.rank[0]) == (0, 1, 1)


def test_quant_masking_a_base_token_gives_infinite_kld(kernel_path):
    x = np.zeros((1, 4), np.float32)
    y = np.array([[0, 0, 0, -np.inf]], np.float32)
    for mode in ("llama", "exact"):
        r = quantkl.score_rows(x, y, [0], mode=mode)
        assert r.kld[0] == np.inf


def test_exact_mode_keeps_the_tail_llama_mode_drops(kernel_path, rng):
    """With a wide distribution the -16 cut drops terms that matter (SPEC §5):
    the two modes differ by far more than rounding."""
    x = (rng.normal(size=(4, 262144)) * 8).astype(np.float32)
    y = (x + rng.normal(size=x.shape) * 0.5).astype(np.float32)
    tok = np.zeros(4, np.int64)
    llama = quantkl.score_rows(x, y, tok, mode="llama").kld
    exact = quantkl.score_rows(x, y, tok, mode="exact").kld
    assert np.all(np.abs(exact - llama) > 1e-5)
    assert np.all(llama > 0) and np.all(exact > 0)


@pytest.mark.parametrize("kind", ["noncontiguous", "misaligned", "fortran"])
def test_strided_and_misaligned_inputs(kernel_path, rng, kind):
    n, v = 4, 1001
    x = make_logits(rng, n, v, "peaked").astype(np.float32)
    y = perturb(rng, x, "peaked").astype(np.float32)
    tok = rng.integers(0, v, n)
    expected = quantkl.score_rows(x, y, tok, mode="exact")

    def transform(a):
        if kind == "noncontiguous":
            wide = np.zeros((n, 2 * v), a.dtype)
            wide[:, ::2] = a
            return wide[:, ::2]
        if kind == "fortran":
            return np.asfortranarray(a)
        buf = np.zeros(a.nbytes + 1, np.uint8)
        m = np.frombuffer(buf.data, a.dtype, a.size, offset=1).reshape(a.shape)
        m[...] = a
        assert not m.flags.aligned
        return m

    # Strided rows take the scalar route even on a SIMD path: same numbers to
    # the accuracy contract, not necessarily the same last bits.
    got = quantkl.score_rows(transform(x), transform(y), tok, mode="exact")
    np.testing.assert_allclose(got.kld, expected.kld, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(got.rank, expected.rank)
    np.testing.assert_array_equal(got.top_p, expected.top_p)
    enc, _ = quantkl.encode_llama_rows(x, tok)
    enc_t, _ = quantkl.encode_llama_rows(transform(x), tok)
    assert_llama_rows_close(enc.rows, enc_t.rows)


def test_one_and_two_threads_identical(kernel_path, rng):
    n, v = 17, 49152
    x = make_logits(rng, n, v, "wide").astype(np.float32)
    y = perturb(rng, x, "wide").astype(np.float32)
    tok = rng.integers(0, v, n)
    base, _ = quantkl.encode_llama_rows(x, tok, threads=1)
    base2, _ = quantkl.encode_llama_rows(x, tok, threads=2)
    np.testing.assert_array_equal(base.rows, base2.rows)
    for b in (x, base):
        for mode in ("llama", "exact"):
            one = quantkl.score_rows(b, y, tok, mode=mode, threads=1)
            two = quantkl.score_rows(b, y, tok, mode=mode, threads=2)
            for f in ("kld", "nll_p", "nll_q", "top_p", "top_q", "rank"):
                np.testing.assert_array_equal(getattr(one, f), getattr(two, f))


@pytest.mark.parametrize("v", [1, 2, 3, 1001, 49152, 262144])
def test_encoder_matches_reference(kernel_path, rng, v):
    n = n_rows_for(v)
    x = np.concatenate([make_logits(rng, n, v, k) for k in ("peaked", "masked", "wide")])
    x = x.astype(np.float32)
    tok = rng.integers(0, v, len(x))
    rows, nll = quantkl.encode_llama_rows(x, tok)
    ref_rows, ref_nll = reference.encode_llama_rows(x, tok)
    assert_llama_rows_close(rows.rows, ref_rows)
    np.testing.assert_allclose(nll, ref_nll, rtol=1e-6)


def test_numpy_baselines_agree_with_the_kernels(rng):
    """The benchmarks' float32 numpy yardsticks compute the same quantities."""
    n, v = 8, 49152
    x = make_logits(rng, n, v, "wide").astype(np.float32)
    y = perturb(rng, x, "wide").astype(np.float32)
    tok = rng.integers(0, v, n)
    base, _ = quantkl.encode_llama_rows(x, tok)
    for b in (x, base):
        np.testing.assert_allclose(reference.kld_numpy_f32(b, y, "llama"),
                                   quantkl.score_rows(b, y, tok).kld, rtol=2e-3)
    np.testing.assert_allclose(reference.kld_numpy_f32(x, y, "exact"),
                               quantkl.score_rows(x, y, tok, mode="exact").kld, rtol=2e-3)
    assert_llama_rows_close(reference.encode_llama_rows_numpy_f32(x), base.rows)


@pytest.mark.parametrize("lift", [0.0, -60.0])
def test_masked_token_in_a_long_row_gives_infinite_kld(kernel_path, rng, lift):
    """Long rows take the SIMD route; a token 60 nats below the max still has
    mass in the base, so the quant masking it makes the KL infinite."""
    v = 4096
    x = rng.normal(size=(2, v)).astype(np.float32)
    x[:, 1234] += np.float32(lift)
    y = x.copy()
    y[:, 1234] = -np.inf
    tok = np.zeros(2, np.int64)
    assert np.all(quantkl.score_rows(x, y, tok, mode="exact").kld == np.inf)
    if lift == 0.0:  # within llama.cpp's 16-nat window: infinite there too
        assert np.all(quantkl.score_rows(x, y, tok, mode="llama").kld == np.inf)
        base, _ = quantkl.encode_llama_rows(x, tok)
        assert np.all(quantkl.score_rows(base, y, tok).kld == np.inf)
    else:  # outside it, llama.cpp's cut drops the term
        assert np.all(np.isfinite(quantkl.score_rows(x, y, tok, mode="llama").kld))


@pytest.mark.parametrize("side", ["base", "other"])
def test_leading_tiles_fully_masked(kernel_path, rng, side):
    """Whole tiles of -inf at the start of a row (SIMD paths work in tiles of
    1024): the other side's normaliser must still see every tile."""
    v, n = 5000, 3
    x = make_logits(rng, n, v, "peaked").astype(np.float32)
    y = perturb(rng, x, "peaked").astype(np.float32)
    (x if side == "base" else y)[:, :2500] = -np.inf
    if side == "other":
        x[:, :2500] = -np.inf  # the quant may only mask what the base masks
    tok = np.full(n, 4000)
    for mode in ("llama", "exact"):
        check(quantkl.score_rows(x, y, tok, mode=mode), reference.score_rows(x, y, tok, mode))
        base, _ = quantkl.encode_llama_rows(x, tok)
        check(quantkl.score_rows(base, y, tok, mode=mode),
              reference.score_rows(base, y, tok, mode))
