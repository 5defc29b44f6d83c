"""Statistics, merging and output of KLDResult."""
import json
import math

import numpy as np
import pytest

import quantkl
from quantkl import reference
from quantkl.result import KLDResult
from quantkl.stats import mean_and_uncertainty, median, percentile


def blocks(rng, n_blocks=3, n=60, v=500):
    for _ in range(n_blocks):
        x = rng.normal(size=(n, v)).astype(np.float32) * 3
        y = (x + rng.normal(size=x.shape).astype(np.float32) * 0.5)
        yield x, y, rng.integers(0, v, n)


def test_helpers_by_hand():
    f, df = mean_and_uncertainty(sum(range(20)), sum(i * i for i in range(20)), 20)
    assert f == 9.5
    assert df == pytest.approx(math.sqrt((sum(i * i for i in range(20)) / 20 - 90.25) / 19))
    assert mean_and_uncertainty(5.0, 30.0, 5) == (1.0, 0.0)  # n <= 10: no uncertainty
    v = np.array([1, 2, 3, 4], np.float32)
    assert percentile(v, 0.5) == pytest.approx(2.5)
    assert percentile(v, 0.999) == pytest.approx(np.float32(0.999) * 3 - 2 + 3, rel=1e-6)
    assert percentile(v, 0) == 1 and percentile(v, 1) == 4
    assert median(v) == 2.5 and median(v[:3]) == 2


def test_streaming_blocks_equal_one_shot(rng):
    bl = list(blocks(rng))
    scorer = quantkl.Scorer()
    for x, y, t in bl:
        scorer.update(x, y, t)
    streamed = scorer.result()
    whole = quantkl.score(np.concatenate([b[0] for b in bl]), np.concatenate([b[1] for b in bl]),
                          np.concatenate([b[2] for b in bl]))
    assert streamed.statistics() == whole.statistics()
    assert streamed.format() == whole.format()
    assert streamed.chunk_ends == [60, 120, 180]


def test_results_from_separate_scorers_add_up(rng):
    (x1, y1, t1), (x2, y2, t2) = blocks(rng, 2, n=80)
    a, b = quantkl.score(x1, y1, t1), quantkl.score(x2, y2, t2)
    both = quantkl.score(np.concatenate([x1, x2]), np.concatenate([y1, y2]),
                         np.concatenate([t1, t2]))
    assert (a + b).statistics() == both.statistics()


def test_statistics_against_numpy(rng):
    x, y, t = next(blocks(rng, 1, n=300))
    res = quantkl.score(x, y, t, mode="exact")
    ref = reference.score_rows(x, y, t, "exact")
    # each row within the accuracy contract, so the mean within it too
    assert abs(res.kld_mean - ref["kld"].mean()) <= 1e-7 + 1e-6 * ref["kld"].mean()
    assert res.kld_mean_unc == pytest.approx(ref["kld"].std() / math.sqrt(299), rel=1e-6)
    assert res.ppl == pytest.approx(math.exp(ref["nll_q"].mean()), rel=1e-7)
    assert res.ppl_base == pytest.approx(math.exp(ref["nll_p"].mean()), rel=1e-7)
    dp = np.exp(-ref["nll_q"]) - np.exp(-ref["nll_p"])
    assert res.dp_mean == pytest.approx(dp.mean(), rel=1e-6)
    assert res.dp_rms == pytest.approx(math.sqrt(np.mean(dp ** 2)), rel=1e-6)
    assert res.same_top == pytest.approx(np.mean(ref["top_p"] == ref["top_q"]))
    assert res.kld_max == pytest.approx(ref["kld"].max(), rel=1e-6)
    assert res.kld_p99 == pytest.approx(np.percentile(ref["kld"], 99), rel=1e-6)
    assert res.top5_agreement == pytest.approx(np.mean(ref["rank"] < 5))
    assert res.cor_ln_ppl == pytest.approx(np.corrcoef(ref["nll_q"], ref["nll_p"])[0, 1],
                                           rel=1e-6)


def test_topk_agreement_from_ranks():
    rank = np.array([0, 0, 1, 4, 9, 10, 10, 2, 0, 3, 5, 7], np.int8)
    z = np.zeros(len(rank))
    r = KLDResult(z, z, z, rank, topk=(1, 3, 10))
    assert r.topk_agreement(1)[0] == pytest.approx(3 / 12)
    assert r.topk_agreement(3)[0] == pytest.approx(5 / 12)
    assert r.topk_agreement(10)[0] == pytest.approx(10 / 12)
    assert r.top3_agreement == pytest.approx(5 / 12)
    with pytest.raises(ValueError):
        r.topk_agreement(11)


def test_to_dict_is_json_and_complete(rng):
    x, y, t = next(blocks(rng, 1, n=120))
    d = json.loads(quantkl.score(x, y, t).to_json())
    for key in ("ppl", "ppl_unc", "ppl_base", "cor_ln_ppl", "ln_ppl_ratio", "ppl_ratio",
                "ppl_diff", "kld_mean", "kld_mean_unc", "kld_max", "kld_p99_9", "kld_median",
                "kld_p0_1", "kld_min", "dp_mean", "dp_max", "dp_p75", "dp_p25", "dp_min",
                "dp_rms", "dp_rms_unc", "same_top", "same_top_unc", "top10_agreement", "count"):
        assert key in d, key
    assert d["mode"] == "llama" and d["count"] == 120


def test_format_needs_100_tokens(rng):
    x, y, t = next(blocks(rng, 1, n=99))
    assert quantkl.score(x, y, t).format() == ""
    x, y, t = next(blocks(rng, 1, n=100))
    assert quantkl.score(x, y, t).format().startswith("====== Perplexity statistics ======\n")


def test_unknown_statistic():
    z = np.zeros(3)
    with pytest.raises(AttributeError, match="no statistic 'kld_p42'"):
        KLDResult(z, z, z, np.zeros(3, np.int8)).kld_p42
