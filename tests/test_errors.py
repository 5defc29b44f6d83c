"""Bad input ends in a clear ValueError/TypeError naming the problem."""
import numpy as np
import pytest

import quantkl
from quantkl import LlamaRows


def good(n=3, v=7, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, v)).astype(np.float32),
            rng.normal(size=(n, v)).astype(np.float32), rng.integers(0, v, n))


@pytest.mark.parametrize("side", ["base", "other"])
@pytest.mark.parametrize("value, words", [(np.nan, r"NaN or \+inf"), (np.inf, r"NaN or \+inf")])
def test_nonfinite_logits(side, value, words):
    x, y, t = good()
    (x if side == "base" else y)[1, 3] = value
    with pytest.raises(ValueError, match=f"{side} logits row 1 contains {words}"):
        quantkl.score(x, y, t)
    with pytest.raises(ValueError, match=f"{side} logits row 1 contains"):
        quantkl.score(x, y, t, mode="exact")


@pytest.mark.parametrize("side", ["base", "other"])
def test_row_of_all_minus_inf(side):
    x, y, t = good()
    (x if side == "base" else y)[2] = -np.inf
    with pytest.raises(ValueError, match=f"{side} logits row 2 has no finite logit"):
        quantkl.score(x, y, t, mode="exact")


def test_nan_in_other_against_llama_rows():
    x, y, t = good()
    rows, _ = quantkl.encode_llama_rows(x, t)
    y[0, 0] = np.nan
    with pytest.raises(ValueError, match="other logits row 0 contains NaN"):
        quantkl.score(rows, y, t)


def test_encoder_rejects_nan_and_half_precision():
    x, _, t = good()
    x[1, 1] = np.nan
    with pytest.raises(ValueError, match="row 1 contains NaN"):
        quantkl.encode_llama_rows(x, t)
    with pytest.raises(TypeError, match="float32"):
        quantkl.encode_llama_rows(x.astype(np.float16), t)


def test_corrupt_llama_header():
    x, y, t = good()
    rows, _ = quantkl.encode_llama_rows(x, t)
    bad = rows.rows.copy()
    bad[1, :2] = np.array([np.nan], np.float32).view(np.uint16)
    with pytest.raises(ValueError, match="base llama row 1 has a corrupt header"):
        quantkl.score(LlamaRows(bad, 7), y, t)
    with pytest.raises(ValueError, match="other llama row 1 has a corrupt header"):
        quantkl.score(rows, LlamaRows(bad, 7), t)


def test_shape_and_vocab_mismatch():
    x, y, t = good()
    with pytest.raises(ValueError, match="vocabulary mismatch: base has 7 entries, other has 6"):
        quantkl.score(x, y[:, :6], t)
    with pytest.raises(ValueError, match="row count mismatch"):
        quantkl.score(x, y[:2], t)
    rows, _ = quantkl.encode_llama_rows(x, t)
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        quantkl.score(rows, good(v=8)[1], t)
    with pytest.raises(ValueError, match="are 12 uint16 wide, got 11"):
        LlamaRows(rows.rows[:, :11], 7)


@pytest.mark.parametrize("tokens, words", [
    ([0, 7, 1], "token id 7 at row 1 is outside the vocabulary"),
    ([0, 1, -1], "token id -1 at row 2 is outside the vocabulary"),
    ([0, 1], "2 tokens for 3 rows"),
    ([[0, 1, 2]], "tokens must be 1-D"),
])
def test_bad_tokens(tokens, words):
    x, y, _ = good()
    with pytest.raises(ValueError, match=words):
        quantkl.score(x, y, tokens)


def test_float_tokens():
    x, y, _ = good()
    with pytest.raises(TypeError, match="tokens must be integers"):
        quantkl.score(x, y, [0.0, 1.0, 2.0])


@pytest.mark.parametrize("dtype, words", [
    (np.float64, "astype"), (np.int32, "got int32"), (np.uint16, "LlamaRows")])
def test_wrong_dtype(dtype, words):
    x, y, t = good()
    with pytest.raises(TypeError, match=words):
        quantkl.score(x.astype(dtype), y, t)
    with pytest.raises(TypeError, match=words):
        quantkl.score(x, y.astype(dtype), t)


def test_empty_inputs():
    x, y, t = good()
    with pytest.raises(ValueError, match="no rows to score"):
        quantkl.score(x[:0], y[:0], t[:0])
    with pytest.raises(ValueError, match="vocabulary is empty"):
        quantkl.score(x[:, :0], y[:, :0], t)
    with pytest.raises(ValueError, match="must be 2-D"):
        quantkl.score(x[0], y[0], t[:1])
    with pytest.raises(ValueError, match="no rows to encode"):
        quantkl.encode_llama_rows(x[:0], t[:0])


def test_float_base_against_llama_rows_is_refused():
    x, y, t = good()
    rows, _ = quantkl.encode_llama_rows(y, t)
    with pytest.raises(TypeError, match="encode the base"):
        quantkl.score(x, rows, t)


def test_bad_options():
    x, y, t = good()
    with pytest.raises(ValueError, match="mode must be"):
        quantkl.score(x, y, t, mode="fast")
    with pytest.raises(ValueError, match="top-k values must be in 1..10"):
        quantkl.score(x, y, t, topk=(0, 11))
    with pytest.raises(ValueError, match="threads must be at least 1"):
        quantkl.score(x, y, t, threads=0)
    with pytest.raises(ValueError, match="unknown kernel path"):
        quantkl.select_kernel("gpu")


def test_adding_results_of_different_modes():
    x, y, t = good()
    with pytest.raises(ValueError, match="cannot add"):
        quantkl.score(x, y, t) + quantkl.score(x, y, t, mode="exact")


def test_quantkl_kernel_environment_variable():
    import os
    import subprocess
    import sys
    code = "import quantkl; print(quantkl.current_kernel())"
    def run(value):
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, "QUANTKL_KERNEL": value})
    p = run("portable")
    assert p.returncode == 0 and p.stdout.strip() == "portable"
    p = run("auto")  # the best path this CPU supports: paths are listed best first
    assert p.returncode == 0
    assert p.stdout.strip() == next(n for n, ok in quantkl.kernel_paths() if ok)
    p = run("sse9")
    assert p.returncode != 0 and "unknown kernel path 'sse9'" in p.stderr
