"""Every kernel path against quantkl.reference, the float64 twin, under the
accuracy contract: per row |KLD - ref| <= 1e-7 + 1e-6 * KLD, NLLs within
1e-7 + 1e-7 * |NLL|, tops and ranks identical (the generated rows have no
logits that tie within float32 rounding but are unequal)."""
import hashlib

import ml_dtypes
import numpy as np
import pytest

import quantkl
from quantkl import _kernels, reference
from rowcheck import assert_llama_rows_close

# 17 and 1001: not multiples of any vector width; 49153: odd, a padded row
VOCABS = [1, 2, 3, 17, 1001, 49153, 262144]
KINDS = ["peaked", "peak40", "flat", "masked", "equal", "near", "wide", "lm", "rising"]


def make_logits(rng, n, v, kind):
    """Rows of one shape of distribution; the 'other' side is a perturbation."""
    if kind in ("peaked", "peak40"):  # one token 25 (40) nats above the bulk
        x = rng.normal(size=(n, v)) * 2
        x[np.arange(n), rng.integers(0, v, n)] += 25 if kind == "peaked" else 40
    elif kind == "flat":
        x = rng.normal(size=(n, v)) * 0.01
    elif kind == "masked":
        x = rng.normal(size=(n, v)) * 3
        mask = rng.random((n, v)) < 0.2
        mask[:, 0] = False  # keep one finite logit per row
        x[mask] = -np.inf
    elif kind == "equal":
        x = np.full((n, v), 1.5)
    elif kind == "rising":  # a new max at most steps, after a masked start
        x = np.linspace(-30, 10, v) + rng.normal(size=(n, v))
        x[:, : v // 8] = -np.inf
    elif kind == "lm":  # as quantkl.bench: a quarter within llama.cpp's window
        x = rng.normal(size=(n, v)) * 2.5
        x[rng.random((n, v)) < 0.01] += 8
    else:  # near, wide: a long tail below the -16 cut, where llama and exact differ
        x = rng.normal(size=(n, v)) * (2 if kind == "near" else 8)
    return x


def perturb(rng, x, kind):
    """The quant: identical rows for 'equal', nearly identical for 'near'
    (KLD ~ 1e-7), noise of 0.3 otherwise."""
    sigma = {"equal": 0.0, "near": 5e-4}.get(kind, 0.3)
    y = x + rng.normal(size=x.shape) * sigma
    if kind in ("masked", "rising"):
        y[np.isinf(x)] = -np.inf  # the quant masks the same tokens
    return y


def as_dtype(x, dtype):
    return x.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)


def score(*args, **kw):
    """The kernels as runs take them: the plain copies, the copies with the
    reverse KL, and the one with Jensen-Shannon (its flags tested at run
    time). They reach the forward KL differently (one pass or two; exps on
    packed entries or on every lane), so check holds each to the reference."""
    return {"plain": quantkl.score_rows(*args, **kw),
            "reverse": quantkl.score_rows(*args, reverse=True, **kw),
            "js": quantkl.score_rows(*args, js=True, **kw)}


def check(runs, ref):
    """The accuracy contract, row by row, with the worst row in the message:
    every field of each call in runs, the reverse KL and Jensen-Shannon in
    the calls that ask for them."""
    asked = {"reverse": "rkl", "js": "js"}
    for which, rows in runs.items():
        for name, rel in (("kld", 1e-6), ("rkl", 1e-6), ("js", 1e-6), ("nll_p", 1e-7),
                          ("nll_q", 1e-7)):
            if name in ("rkl", "js") and asked.get(which) != name:
                continue
            got, want = getattr(rows, name), ref[name]
            assert np.array_equal(np.isfinite(got), np.isfinite(want)), (which, name, got, want)
            np.testing.assert_array_equal(got[~np.isfinite(want)], want[~np.isfinite(want)])
            fin = np.isfinite(want)
            excess = np.abs(got[fin] - want[fin]) / (1e-7 + rel * np.abs(want[fin]))
            assert np.all(excess <= 1), (which, name, got[fin][np.argmax(excess)],
                                         want[fin][np.argmax(excess)], excess.max())
        np.testing.assert_array_equal(rows.top_p, ref["top_p"])
        np.testing.assert_array_equal(rows.top_q, ref["top_q"])
        np.testing.assert_array_equal(rows.rank, ref["rank"])
        np.testing.assert_allclose(rows.p_top, ref["p_top"], rtol=1e-7, atol=0)
        np.testing.assert_array_equal(rows.overlap, ref["overlap"])


_REFERENCES = {}


def _digest(a) -> tuple:
    if isinstance(a, quantkl.LlamaRows):
        return ("llama", a.n_vocab, _digest(a.rows))
    a = np.asarray(a)
    return (str(a.dtype), a.shape, hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest())


def reference_rows(base, other, tok, mode):
    """reference.score_rows, computed once per case: the rng fixture is
    seeded per test, so every kernel path of a case gets the same rows, and
    the float64 results (the slow part) are shared by the paths."""
    key = (mode, _digest(base), _digest(other), _digest(tok))
    if key not in _REFERENCES:
        _REFERENCES[key] = reference.score_rows(base, other, tok, mode)
    return _REFERENCES[key]


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
    check(score(x32, y32, tok, mode=mode), reference_rows(x32, y32, tok, mode))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("mode", ["llama", "exact"])
@pytest.mark.parametrize("v", [3, 1001, 49153])
def test_logits_logits_half_types(kernel_path, rng, v, mode, dtype):
    n = 5
    x = make_logits(rng, n, v, "peaked")
    y = perturb(rng, x, "peaked")
    xh, yh = as_dtype(x, dtype), as_dtype(y, dtype)
    tok = rng.integers(0, v, n)
    check(score(xh, yh, tok, mode=mode), reference_rows(xh, yh, tok, mode))
    # mixed: half-precision base against a float32 quant
    y32 = y.astype(np.float32)
    check(score(xh, y32, tok, mode=mode), reference_rows(xh, y32, tok, mode))


@pytest.mark.parametrize("mode", ["llama", "exact"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("v", VOCABS)
def test_llama_logits(kernel_path, rng, v, kind, mode):
    n = n_rows_for(v)
    x = make_logits(rng, n, v, kind).astype(np.float32)
    y = perturb(rng, x, kind).astype(np.float32)
    tok = rng.integers(0, v, n)
    base, _ = quantkl.encode_llama_rows(x, tok)
    check(score(base, y, tok, mode=mode), reference_rows(base, y, tok, mode))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_llama_logits_half_types(kernel_path, rng, dtype):
    v, n = 49153, 4
    x = make_logits(rng, n, v, "wide").astype(np.float32)
    y = as_dtype(perturb(rng, x, "wide"), dtype)
    tok = rng.integers(0, v, n)
    base, _ = quantkl.encode_llama_rows(x, tok)
    for mode in ("llama", "exact"):
        check(score(base, y, tok, mode=mode), reference_rows(base, y, tok, mode))


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
    check(score(base, other, tok, mode=mode),
          reference_rows(base, other, tok, mode))


def test_clipped_tail_token_nlls(kernel_path, rng):
    """Tokens whose code is 0 take the clipped tail's log p, which is
    ill-conditioned (log of 1 - mass): both sides' NLLs there still meet the
    contract (two dumps recompute Q's mass in float64 for such rows)."""
    v, n = 49153, 6
    x = make_logits(rng, n, v, "wide").astype(np.float32)
    y = perturb(rng, x, "wide").astype(np.float32)
    base, _ = quantkl.encode_llama_rows(x, np.zeros(n, np.int64))
    other, _ = quantkl.encode_llama_rows(y, np.zeros(n, np.int64))
    both_zero = (base.rows[:, 4:4 + v] == 0) & (other.rows[:, 4:4 + v] == 0)
    tok = np.argmax(both_zero, axis=1)
    assert both_zero[np.arange(n), tok].all()
    for mode in ("llama", "exact"):
        check(score(base, other, tok, mode=mode),
              reference_rows(base, other, tok, mode))
        check(score(base, y, tok, mode=mode),
              reference_rows(base, y, tok, mode))


def test_known_values(kernel_path):
    """Hand-computed KL on a 3-token vocabulary, independent of the reference."""
    p = np.log(np.array([[0.5, 0.25, 0.25]], np.float32))
    q = np.log(np.array([[0.25, 0.5, 0.25]], np.float32))
    r = quantkl.score_rows(p, q, [1], mode="exact")
    assert r.kld[0] == pytest.approx(0.25 * np.log(2), abs=1e-7)
    assert r.nll_p[0] == pytest.approx(np.log(4), rel=1e-7)
    assert r.nll_q[0] == pytest.approx(np.log(2), rel=1e-7)
    assert (r.top_p[0], r.top_q[0], r.rank[0]) == (0, 1, 1)


def test_known_jensen_shannon_values(kernel_path):
    """Hand-computed JS, independent of the reference: the 3-token pair
    above; disjoint supports give log 2; identical rows give 0; swapping the
    sides changes nothing (JS is symmetric)."""
    p = np.log(np.array([[0.5, 0.25, 0.25]], np.float32))
    q = np.log(np.array([[0.25, 0.5, 0.25]], np.float32))
    m = np.array([0.375, 0.375, 0.25])
    want = 0.5 * (np.sum([0.5, 0.25, 0.25] * np.log([0.5, 0.25, 0.25] / m))
                  + np.sum([0.25, 0.5, 0.25] * np.log([0.25, 0.5, 0.25] / m)))
    for mode in ("llama", "exact"):
        assert quantkl.score_rows(p, q, [1], mode=mode, js=True).js[0] == pytest.approx(
            want, abs=1e-7)
        assert quantkl.score_rows(q, p, [1], mode=mode, js=True).js[0] == pytest.approx(
            want, abs=1e-7)
    apart = np.array([[0, 0, -np.inf, -np.inf], [-np.inf, -np.inf, 0, 0]], np.float32)
    r = quantkl.score_rows(apart, apart[::-1].copy(), [0, 0], mode="exact", js=True)
    np.testing.assert_allclose(r.js, np.log(2), rtol=1e-7)
    x = np.random.default_rng(5).normal(size=(3, 50001)).astype(np.float32) * 3
    assert np.all(np.abs(quantkl.score_rows(x, x, [0, 1, 2], js=True).js) <= 1e-9)


def test_quant_masking_a_base_token_gives_infinite_kld(kernel_path):
    x = np.zeros((1, 4), np.float32)
    y = np.array([[0, 0, 0, -np.inf]], np.float32)
    for mode in ("llama", "exact"):
        r = quantkl.score_rows(x, y, [0], mode=mode)
        assert r.kld[0] == np.inf


def test_exact_mode_keeps_the_tail_llama_mode_drops(kernel_path, rng):
    """With a wide distribution the -16 cut drops terms that matter (docs/statistics.md):
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
    """Strided rows take a slower load on every path, misaligned ones the
    same vector code: both are held to the reference like any other."""
    n, v = 4, 1001
    x = make_logits(rng, n, v, "peaked").astype(np.float32)
    y = perturb(rng, x, "peaked").astype(np.float32)
    tok = rng.integers(0, v, n)

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

    for mode in ("llama", "exact"):
        check(score(transform(x), transform(y), tok, mode=mode),
              reference_rows(x, y, tok, mode))
        base, _ = quantkl.encode_llama_rows(x, tok)
        check(score(base, transform(y), tok, mode=mode),
              reference_rows(base, y, tok, mode))
    enc, _ = quantkl.encode_llama_rows(x, tok)
    enc_t, _ = quantkl.encode_llama_rows(transform(x), tok)
    np.testing.assert_array_equal(enc.rows, enc_t.rows)


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
            for f in ("kld", "nll_p", "nll_q", "top_p", "top_q", "rank", "p_top", "overlap"):
                np.testing.assert_array_equal(getattr(one, f), getattr(two, f))


@pytest.mark.parametrize("v", [1, 2, 3, 17, 1001, 49153, 262144])
def test_encoder_matches_reference(kernel_path, rng, v):
    n = n_rows_for(v)
    x = np.concatenate([make_logits(rng, n, v, k) for k in ("peaked", "masked", "wide")])
    x = x.astype(np.float32)
    tok = rng.integers(0, v, len(x))
    rows, nll = quantkl.encode_llama_rows(x, tok)
    ref_rows, ref_nll = reference.encode_llama_rows(x, tok)
    assert_llama_rows_close(rows.rows, ref_rows)
    np.testing.assert_allclose(nll, ref_nll, rtol=1e-7)


def test_encoder_is_llama_cpps_byte_for_byte(kernel_path, rng):
    """Against the C transcription of llama.cpp's encoder (glibc expf, float32
    arithmetic in llama.cpp's order): every row the same bytes."""
    v = 49153
    x = np.concatenate([make_logits(rng, 16, v, k) for k in ("lm", "peak40", "wide", "masked")])
    x = np.ascontiguousarray(x.astype(np.float32))
    rows, _ = quantkl.encode_llama_rows(x, np.zeros(len(x), np.int64))
    theirs = np.empty_like(rows.rows)
    _kernels.llama_loop_encode_rows(x, theirs, 1)
    np.testing.assert_array_equal(rows.rows, theirs)


def test_llama_mode_is_llama_cpps_sum(kernel_path, rng):
    """llama mode computes llama.cpp's sum: against the transcription of its
    loop (float32 terms, float32 normaliser) the KLDs agree within that loop's
    own rounding noise, ~1e-6 nats per row (docs/statistics.md), far below the KLDs."""
    v = 49153
    x = make_logits(rng, 32, v, "lm").astype(np.float32)
    y = np.ascontiguousarray(perturb(rng, x, "lm").astype(np.float32))
    base, _ = quantkl.encode_llama_rows(x, np.zeros(32, np.int64))
    ours = quantkl.score_rows(base, y, np.zeros(32, np.int64)).kld
    theirs = _kernels.llama_loop_kld_rows(base.rows, y, 1)
    assert np.all(ours > 1e-3)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=5e-6)


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


def test_memory_yardstick_reads_every_byte(rng):
    """The benchmarks' read loop XORs every 64-bit word of each row, and its
    last bytes past a whole word into the low byte: one flipped bit anywhere
    changes the row's result."""
    for width in (0, 7, 64, 1000003):
        rows = rng.integers(0, 256, (3, width), dtype=np.uint8)
        whole = width // 8 * 8
        want = np.bitwise_xor.reduce(rows[:, :whole].copy().view(np.uint64), axis=1) \
            ^ np.bitwise_xor.reduce(rows[:, whole:].astype(np.uint64), axis=1)
        np.testing.assert_array_equal(_kernels.read_loop_rows(rows, 2), want)
        if width:
            rows[1, width - 1] ^= 4
            assert _kernels.read_loop_rows(rows, 1)[1] != want[1]


@pytest.mark.parametrize("lift", [0.0, -60.0, -100.0])
def test_masked_token_in_a_long_row_gives_infinite_kld(kernel_path, rng, lift):
    """A token 60 or 100 nats below the max still has mass in the base (even
    where float32 exp underflows), so the quant masking it makes the KL
    infinite."""
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
def test_leading_blocks_fully_masked(kernel_path, rng, side):
    """Whole blocks of -inf at the start of a row (pass 1 works in blocks of
    512): the normalisers must still see every block."""
    v, n = 5000, 3
    x = make_logits(rng, n, v, "peaked").astype(np.float32)
    y = perturb(rng, x, "peaked").astype(np.float32)
    (x if side == "base" else y)[:, :2500] = -np.inf
    if side == "other":
        x[:, :2500] = -np.inf  # the quant may only mask what the base masks
    tok = np.full(n, 4000)
    for mode in ("llama", "exact"):
        check(score(x, y, tok, mode=mode), reference_rows(x, y, tok, mode))
        base, _ = quantkl.encode_llama_rows(x, tok)
        check(score(base, y, tok, mode=mode),
              reference_rows(base, y, tok, mode))


@pytest.mark.parametrize("v", [1, 70, 5000])
def test_lowest_finite_logit_is_a_logit(kernel_path, v):
    """Rows whose only finite logits are float32's lowest (-3.4e38), after
    -inf ones: a float side's running max starts below every finite value
    but must still take this one as the first (found by the fuzz test), and
    the NLL must not lose log(n) against 3.4e38."""
    low = np.finfo(np.float32).min
    x = np.full((2, v), low, np.float32)
    x[:, : v // 2] = -np.inf
    x[1, -1] = 0.0  # and one row where a larger logit follows
    y = x.copy()
    tok = np.full(2, v - 1)
    # a dump of such a row is lossy (its clip point M - 16 rounds to M):
    # the dump side comes from the same support with equal logits instead
    base, _ = quantkl.encode_llama_rows(np.where(np.isinf(x), x, 0).astype(np.float32), tok)
    # (not the reverse KL: its terms e^-87.3 * 3.4e38 stand for 0 * 3.4e38;
    # like test_fuzz, the contract is for logits a model can produce)
    for mode in ("llama", "exact"):
        for p in (x, base):
            got = quantkl.score_rows(p, y, tok, mode=mode)
            want = reference_rows(p, y, tok, mode)
            for name, rel in (("kld", 1e-6), ("nll_p", 1e-7), ("nll_q", 1e-7)):
                np.testing.assert_allclose(getattr(got, name), want[name], rtol=rel, atol=1e-7)
            np.testing.assert_array_equal(got.top_q, want["top_q"])


def test_every_compiled_path_is_listed():
    """The paths this build holds: portable always, AVX2 and AVX-512 on x86-64."""
    import platform
    names = [name for name, _ in quantkl.kernel_paths()]
    assert names[-1] == "portable"
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert names == ["avx512", "avx2", "portable"]


def test_reverse_kl_reads_a_dump_the_same_in_both_modes(kernel_path, rng):
    """The reverse KL takes a dump's code 0 as its clipped tail in llama mode
    too, so the two modes give the same value for a dump base (llama mode's
    cut is the forward KL's alone); reading code 0 at the clip point instead
    would move it by far more than the contract."""
    v, n = 49153, 4
    x = make_logits(rng, n, v, "wide").astype(np.float32)
    y = perturb(rng, x, "wide").astype(np.float32)
    tok = rng.integers(0, v, n)
    base, _ = quantkl.encode_llama_rows(x, tok)
    other, _ = quantkl.encode_llama_rows(y, tok)
    for o, lq in ((y, reference.log_softmax(y.astype(np.float64))),
                  (other, reference.llama_other(other))):
        llama = quantkl.score_rows(base, o, tok, reverse=True).rkl
        exact = quantkl.score_rows(base, o, tok, mode="exact", reverse=True).rkl
        assert np.all(np.abs(llama - exact) <= 2 * (1e-7 + 1e-6 * exact))
        at_clip = np.sum(np.exp(lq) * (lq - reference.decode_llama(base)[1]), axis=1)
        assert np.all(np.abs(llama - at_clip) > 100 * (1e-7 + 1e-6 * exact))


def test_reverse_kl_and_js_change_nothing_else(kernel_path, rng):
    """The flags add their sums and move nothing else, the forward KLD
    included: to the bit, except where the plain copies take fewer exps
    than the flagged ones, which need p on every entry (a dump base and
    float logits: llama mode reads both rows in one pass; a dump base in
    exact mode packs its code > 0 entries). There the KLDs differ by
    roundings, and so do exact mode's NLLs of tokens in the base's clipped
    tail, whose log p comes from the mass (each held to the reference by the
    contract)."""
    x = make_logits(rng, 5, 30001, "wide").astype(np.float32)
    y = perturb(rng, x, "wide").astype(np.float32)
    tok = rng.integers(0, 30001, 5)
    base, _ = quantkl.encode_llama_rows(x, tok)
    other, _ = quantkl.encode_llama_rows(y, tok)
    for b, o in ((x, y), (base, y), (base, other)):
        for mode in ("llama", "exact"):
            plain = quantkl.score_rows(b, o, tok, mode=mode)
            both = quantkl.score_rows(b, o, tok, mode=mode, reverse=True)
            js = quantkl.score_rows(b, o, tok, mode=mode, js=True)
            fields = ["nll_p", "nll_q", "top_p", "top_q", "rank", "p_top", "overlap"]
            if b is base and (o is y or mode == "exact"):
                allowed = 2 * (1e-7 + 1e-6 * plain.kld)
                assert np.all(np.abs(both.kld - plain.kld) <= allowed)
                assert np.all(np.abs(js.kld - plain.kld) <= allowed)
                if mode == "exact":
                    allowed = 2 * (1e-7 + 1e-7 * plain.nll_p)
                    assert np.all(np.abs(both.nll_p - plain.nll_p) <= allowed)
                    assert np.all(np.abs(js.nll_p - plain.nll_p) <= allowed)
                    fields.remove("nll_p")
            else:
                fields.append("kld")
            for f in fields:
                np.testing.assert_array_equal(getattr(plain, f), getattr(both, f))
                np.testing.assert_array_equal(getattr(plain, f), getattr(js, f))
            assert np.all(plain.rkl == 0) and np.all(both.rkl > 0) and np.all(js.rkl == 0)
            assert np.all(plain.js == 0) and np.all(both.js == 0) and np.all(js.js > 0)
