"""quantkl against llama.cpp's own files and printouts (tests/data)."""
import re

import numpy as np
import pytest

import quantkl
from quantkl.dumpfile import LogitDump
from rowcheck import assert_llama_rows_close

NUMBER = re.compile(r"-?\d+\.\d+")


def upto_same_top(text: str) -> str:
    """A printout up to llama-perplexity's last statistics line ("Same top p"),
    without the block quantkl prints after it."""
    return text[:text.index("\n", text.rindex("Same top p:")) + 1]


def block_of(text: str) -> str:
    """llama-perplexity's statistics block in a printout: its first line to
    the "Same top p" line."""
    start = text.index("====== Perplexity statistics")
    end = text.index("\n", text.index("Same top p:", start))
    return text[start:end + 1]


# Lines that print one token's KLD (docs/statistics.md): llama.cpp forms each
# term in float32, ~1.4e-6 nats of noise per token, so they may differ by 3 units.
ONE_TOKEN_KLD = re.compile(r"^(Maximum|Minimum|Median|[ \d.]+%) +KLD:")


def assert_same_printout(got: str, expected: str) -> None:
    """Same labels and layout; every number within one unit of its last
    printed digit, three on the lines that print one token's KLD. llama.cpp
    sums float32 terms, quantkl float64 ones, so a value on a rounding
    boundary of the printed digit can land on either side."""
    g_lines, e_lines = got.splitlines(), expected.splitlines()
    assert len(g_lines) == len(e_lines), got
    for g, e in zip(g_lines, e_lines):
        assert NUMBER.sub("#", g) == NUMBER.sub("#", e), (g, e)
        units = 3 if ONE_TOKEN_KLD.match(g) else 1
        for a, b in zip(NUMBER.findall(g), NUMBER.findall(e)):
            assert len(a) == len(b), (g, e)
            unit = 10.0 ** -len(a.split(".")[1])
            assert abs(float(a) - float(b)) <= units * unit * 1.001, (g, e)


@pytest.fixture(scope="module")
def dump(golden):
    with LogitDump(golden / "smollm2-q4_1-gpl3-c128.kld") as d:
        yield d


def test_dump_header(dump):
    assert (dump.n_ctx, dump.n_vocab, dump.n_chunk) == (128, 49152, 2)
    assert dump.rows_per_chunk == 63 and dump.n_rows == 126


def test_q4_0_block_matches_llama_perplexity(dump, golden, golden_logits, kernel_path):
    q = golden_logits["q4_0"]
    scorer = quantkl.Scorer(mode="llama")
    for ch in dump.chunks():
        r0 = ch.index * dump.rows_per_chunk
        scorer.update(ch.rows, q[r0:r0 + dump.rows_per_chunk], ch.tokens)
    res = scorer.result()
    expected = (golden / "llama-perplexity-kld-Q4_0.txt").read_text()
    assert_same_printout(res.format_llama(), block_of(expected))
    table = [res.format_chunk_row(c) for c in (1, 2)]
    assert_same_printout("\n".join([quantkl.printout.CHUNK_HEADER] + table),
                         "\n".join(expected.splitlines()[:3]))
    # The figures tests/data/README.md's files were checked against when made.
    assert f"{res.kld_mean:.6f}" == "0.667713"
    assert f"{100 * res.same_top:.3f}" == "60.317"


def test_exact_mode_differs_from_llama_mode_only_slightly(dump, golden_logits):
    q = golden_logits["q4_0"]
    tok = dump.scored_tokens()
    llama = quantkl.score(dump.all_rows(), q, tok, mode="llama")
    exact = quantkl.score(dump.all_rows(), q, tok, mode="exact")
    assert exact.kld_mean != llama.kld_mean
    assert exact.kld_mean == pytest.approx(llama.kld_mean, rel=5e-3)


def test_encoder_reproduces_the_file(dump, golden, golden_logits, kernel_path):
    base = golden_logits["base"]
    tok = dump.scored_tokens()
    rows, nll = quantkl.encode_llama_rows(base, tok)
    file_rows = np.asarray(dump.all_rows().rows)
    assert_llama_rows_close(rows.rows, file_rows)
    # 125 of 126 rows are byte for byte identical (one header rounds
    # differently); never fewer.
    assert np.sum(np.all(rows.rows == file_rows, axis=1)) >= 125
    ppl = np.exp(np.mean(nll.astype(np.float32).astype(np.float64)))
    line = (golden / "llama-perplexity-base.txt").read_text()
    assert f"PPL = {ppl:.4f}" in line


def test_self_score_is_the_format_floor(dump, golden, golden_logits):
    """The base's own logits against its file: llama-perplexity-kld-self.txt."""
    base = golden_logits["base"]
    res = quantkl.score(dump.all_rows(), base, dump.scored_tokens())
    expected = (golden / "llama-perplexity-kld-self.txt").read_text()
    # llama.cpp's own base run and these logits (from llama-cpp-python)
    # differ by float noise, so only the statistics that noise cannot move are
    # compared to the digit: the KLD floor and agreement.
    assert abs(res.kld_mean) < 5e-6
    assert f"{100 * res.same_top:.3f}" == "100.000"
    assert "Same top p: 100.000 ± 0.000 %" in expected
