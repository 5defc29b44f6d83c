"""The statistics `llama-perplexity --kl-divergence` prints (docs/statistics.md), and quantkl's own, from a result's per-token arrays.

llama.cpp's block comes from running sums (llama_sums, summary_of_sums: the
per-chunk line's figures, and a whole run's) and from the sorted arrays
(percentiles); in ``llama`` mode the values are rounded to float32 where
llama.cpp holds them in float32 (NLLs, Δp, the KLD array used for
percentiles), so the printed block matches llama-perplexity to the digit.
Every function takes a :class:`~quantkl.result.KLDResult`.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ._kernels import TOPK_MAX

MODES = ("llama", "exact")

KLD_PERCENTILES = ((0.999, "99.9%"), (0.990, "99.0%"), (0.950, "95.0%"), (0.900, "90.0%"))
KLD_LOW_PERCENTILES = ((0.100, "10.0%"), (0.050, " 5.0%"), (0.010, " 1.0%"), (0.001, " 0.1%"))
DP_HIGH_PERCENTILES = KLD_PERCENTILES + ((0.750, "75.0%"),)
DP_LOW_PERCENTILES = ((0.250, "25.0%"),) + KLD_LOW_PERCENTILES

# Buckets of the base's top-1 probability for by_confidence.
CONFIDENCE_EDGES = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)
# Percentiles given for the statistics beyond llama-perplexity's block.
SPREAD_PERCENTILES = (0.01, 0.05, 0.10, 0.50, 0.90)


def stat_key(prefix: str, fraction: float) -> str:
    """Attribute name of a percentile: kld_p99_9, dp_p75, kld_p0_1."""
    return f"{prefix}_p{fraction * 100:g}".replace(".", "_")


def _exp(x: float) -> float:
    """exp that gives inf, as C would, where math.exp raises (x > 709.78)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.exp(np.float64(x)))


def _sqrt(x: float) -> float:
    """sqrt of a variance: nan for a negative one (rounding of huge values)."""
    return math.sqrt(x) if x >= 0 else float("nan")


def _spread(name: str, values: np.ndarray) -> Dict[str, float]:
    """Mean, its standard error and percentiles of a per-token quantity."""
    v = np.sort(np.asarray(values, np.float64))
    m, u = mean_and_uncertainty(float(v.sum()), float((v * v).sum()), len(v))
    out = {f"{name}_mean": m, f"{name}_mean_unc": u}
    for f in SPREAD_PERCENTILES:
        out[stat_key(name, f)] = percentile(v, f)
    return out


def mean_and_uncertainty(total: float, total2: float, n: int) -> Tuple[float, float]:
    """llama.cpp's mean and its standard error from a sum and a sum of squares."""
    if n < 1:
        return 0.0, 0.0
    f = total / n
    v = total2 / n - f * f
    return f, (_sqrt(v / (n - 1)) if v > 0 and n > 10 else 0.0)


def covariance(sa: float, sb: float, sab: float, n: int) -> float:
    """llama.cpp's covariance of two means (0 below 10 samples)."""
    if n < 10:
        return 0.0
    return (sab / n - (sa / n) * (sb / n)) / (n - 1)


def _div(a: float, b: float) -> float:
    """a / b with IEEE results (inf, nan) where C would give them, not an exception."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(a) / np.float64(b))


def percentile(sorted_values: np.ndarray, fraction: float) -> float:
    """llama.cpp's interpolated percentile, in the array's own precision."""
    ft = sorted_values.dtype.type
    n = len(sorted_values)
    f = ft(fraction)
    if f <= 0:
        return float(sorted_values[0])
    if f >= 1:
        return float(sorted_values[-1])
    t = f * ft(n - 1)
    k = int(t)
    t = t - ft(k)
    return float((ft(1) - t) * sorted_values[k] + t * sorted_values[min(k + 1, n - 1)])


def median(sorted_values: np.ndarray) -> float:
    ft = sorted_values.dtype.type
    n = len(sorted_values)
    if n % 2:
        return float(sorted_values[n // 2])
    return float(ft(0.5) * (sorted_values[n // 2] + sorted_values[n // 2 - 1]))


def summary_of_sums(s: Dict[str, float]) -> Dict[str, float]:
    """llama.cpp's running statistics (the per-chunk line's) from its sums."""
    c = s["n"]
    a, da = mean_and_uncertainty(s["nll"], s["nll2"], c)
    b, db = mean_and_uncertainty(s["base"], s["base2"], c)
    cov = covariance(s["nll"], s["base"], s["nll_base"], c)
    ppl, ppl_base = _exp(a), _exp(b)
    ln_ratio_unc = _sqrt(da * da + db * db - 2.0 * cov)
    ppl_diff_var = (ppl * da) * (ppl * da) + (ppl_base * db) * (ppl_base * db) \
        - 2.0 * ppl * ppl_base * cov
    kl, dkl = mean_and_uncertainty(s["kld"], s["kld2"], c)
    dpm, ddpm = mean_and_uncertainty(s["dp"], s["dp2"], c)
    mse, dmse = mean_and_uncertainty(s["dp2"], s["dp4"], c)
    rms = _sqrt(mse)
    same = s["same"] / c if c else float("nan")
    return {
        "count": c,
        "ppl": ppl, "ppl_unc": ppl * da,
        "ppl_base": ppl_base, "ppl_base_unc": ppl_base * db,
        "cor_ln_ppl": _div(cov, da * db),
        "ln_ppl_ratio": a - b, "ln_ppl_ratio_unc": ln_ratio_unc,
        "ppl_ratio": _exp(a - b), "ppl_ratio_unc": _exp(a - b) * ln_ratio_unc,
        "ppl_diff": ppl - ppl_base,
        "ppl_diff_unc": _sqrt(ppl_diff_var),
        "kld_mean": kl, "kld_mean_unc": dkl,
        "dp_mean": dpm, "dp_mean_unc": ddpm,
        "dp_rms": rms, "dp_rms_unc": _div(0.5, rms) * dmse,
        "same_top": same,
        "same_top_unc": _sqrt(_div(same * (1 - same), c - 1)) if c > 1 else float("nan"),
    }


def llama_sums(result, n: Optional[int] = None) -> Dict[str, float]:
    """llama.cpp's running sums over the first ``n`` tokens (all by default)."""
    sl = slice(0, result.count if n is None else n)
    f64 = np.float64
    with np.errstate(over="ignore", invalid="ignore"):  # extreme values: inf, not warnings
        kld, nll, base, dp = result.kld[sl], result.nll[sl], result.nll_base[sl], result.dp[sl]
        if result.mode == "llama":
            # Products of float values are taken in float, as llama.cpp does.
            nll, base, dp = nll.astype(np.float32), base.astype(np.float32), dp.astype(np.float32)
        dp2 = (dp * dp).astype(np.float64)
        return {
            "n": len(kld),
            "nll": float(np.sum(nll, dtype=f64)), "nll2": float(np.sum(nll * nll, dtype=f64)),
            "base": float(np.sum(base, dtype=f64)), "base2": float(np.sum(base * base, dtype=f64)),
            "nll_base": float(np.sum(nll * base, dtype=f64)),
            "kld": float(np.sum(kld)), "kld2": float(np.sum(kld * kld)),
            "dp": float(np.sum(dp, dtype=f64)), "dp2": float(np.sum(dp2)),
            "dp4": float(np.sum(dp2 * dp2)),
            "same": int(np.count_nonzero(result.rank[sl] == 0)),
        }


def summary(result, n: Optional[int] = None) -> Dict[str, float]:
    """The per-chunk line's statistics over the first ``n`` tokens."""
    return summary_of_sums(llama_sums(result, n))


def statistics(result) -> Dict[str, float]:
    """Every statistic of llama-perplexity's block and quantkl's, by name."""
    out = summary(result)
    ft = np.float32 if result.mode == "llama" else np.float64
    kld = np.sort(result.kld.astype(ft))
    dp = np.sort(result.dp.astype(ft))
    if result.count:
        out["kld_max"], out["kld_min"] = float(kld[-1]), float(kld[0])
        out["kld_median"] = median(kld)
        for f, _ in KLD_PERCENTILES + KLD_LOW_PERCENTILES:
            out[stat_key("kld", f)] = percentile(kld, f)
        out["dp_max"], out["dp_min"] = float(dp[-1]), float(dp[0])
        out["dp_median"] = median(dp)
        for f, _ in DP_HIGH_PERCENTILES + DP_LOW_PERCENTILES:
            out[stat_key("dp", f)] = percentile(dp, f)
    for k in result.topk:
        s, u = topk_agreement(result, k)
        out[f"top{k}_agreement"], out[f"top{k}_agreement_unc"] = s, u
    if result.overlap is not None and result.count:
        for k in result.topk:
            out.update(_spread(f"top{k}_overlap", topk_overlap(result, k)))
    if result.p_top is not None and result.count:
        out.update(_spread("p_top", result.p_top))
    if result.rkl is not None and result.count:
        with np.errstate(invalid="ignore", over="ignore"):
            out.update(_spread("rkl", result.rkl))
    if result.js is not None and result.count:
        out.update(_spread("js", result.js))
    # a precise sparse base's intervals: the mean of the upper ends beside the
    # lower ends' (kld_mean, rkl_mean, js_mean)
    with np.errstate(invalid="ignore", over="ignore"):
        for name in ("kld", "rkl", "js"):
            hi = getattr(result, f"{name}_hi")
            if hi is not None and result.count and (name != "kld" or result.bounded):
                out[f"{name}_mean_hi"] = float(np.mean(hi))
    return out


def topk_agreement(result, k: int) -> Tuple[float, float]:
    """Fraction of tokens whose base top token is in the other model's top k, ± its s.e."""
    check_topk([k])
    c = result.count
    if c == 0:
        return float("nan"), float("nan")
    s = float(np.count_nonzero(result.rank < k)) / c
    return s, (math.sqrt(s * (1 - s) / (c - 1)) if c > 1 else float("nan"))


def topk_overlap(result, k: int) -> np.ndarray:
    """Per token, |top_k(base) ∩ top_k(other)| / k (needs ``overlap``)."""
    check_topk([k])
    if result.overlap is None:
        raise ValueError("this result has no top-k overlap (scored before quantkl kept it)")
    return result.overlap[:, k - 1] / np.float64(k)


def bucket_summary(result) -> Dict[str, float]:
    """count, mean KLD and same top with their uncertainties (nan when empty)."""
    if not result.count:
        nan = float("nan")
        return {"count": 0, "kld_mean": nan, "kld_mean_unc": nan, "same_top": nan,
                "same_top_unc": nan}
    s = summary(result)
    return {k: s[k] for k in ("count", "kld_mean", "kld_mean_unc", "same_top", "same_top_unc")}


def by_confidence(result, edges: Sequence[float] = CONFIDENCE_EDGES) -> List[Dict[str, float]]:
    """Mean KLD (± its s.e.) and same top (± its s.e.) by bucket of the
    base's top-1 probability: [edges[i], edges[i+1]), the last bucket closed."""
    if result.p_top is None:
        raise ValueError("this result has no base top-1 probabilities (scored before "
                         "quantkl kept them)")
    edges = list(edges)
    rows = []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        last = i == len(edges) - 2
        mask = (result.p_top >= lo) & ((result.p_top <= hi) if last else (result.p_top < hi))
        rows.append({"bucket": f"[{lo:g}, {hi:g}{']' if last else ')'}", "lo": lo, "hi": hi,
                     **bucket_summary(result.subset(mask))})
    return rows


def by_class(result, classes: np.ndarray, names: Sequence[str]) -> List[Dict[str, float]]:
    """The same by class of the scored token: classes[i] is the index in
    names of token i's class (see quantkl.tokenclass)."""
    classes = np.asarray(classes)
    if classes.shape != (result.count,):
        raise ValueError(f"classes must have one entry per token ({result.count})")
    return [{"bucket": name, **bucket_summary(result.subset(classes == i))}
            for i, name in enumerate(names)]


class RunningTotals:
    """llama.cpp's running sums over the tokens scored so far: all the
    per-chunk line and a stopping rule need, at a constant cost per block
    (no re-concatenation or sorting of earlier tokens)."""

    _KEYS = ("n", "nll", "nll2", "base", "base2", "nll_base", "kld", "kld2", "dp", "dp2", "dp4",
             "same")

    def __init__(self):
        self.sums: Dict[str, float] = {k: 0 for k in self._KEYS}
        self._summary: Optional[Dict[str, float]] = None

    def add(self, block) -> None:
        for k, v in llama_sums(block).items():
            self.sums[k] += v
        self._summary = None

    def summary(self) -> Dict[str, float]:
        if self._summary is None:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                self._summary = summary_of_sums(self.sums)
        return self._summary

    @property
    def count(self) -> int:
        return int(self.sums["n"])

    @property
    def kld_mean(self) -> float:
        return self.summary()["kld_mean"]

    @property
    def kld_mean_unc(self) -> float:
        return self.summary()["kld_mean_unc"]

    def format_chunk_row(self, label: int) -> str:
        """The per-chunk line for the tokens so far; ``label`` is the chunk number printed."""
        from .printout import chunk_row
        return chunk_row(self.summary(), label)


def check_topk(topk: Iterable[int]) -> List[int]:
    ks = sorted({int(k) for k in topk})
    bad = [k for k in ks if not 1 <= k <= TOPK_MAX]
    if bad:
        raise ValueError(f"top-k values must be in 1..{TOPK_MAX}, got {bad}")
    return ks
