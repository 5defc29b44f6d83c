"""The statistics `llama-perplexity --kl-divergence` prints (docs/statistics.md), from per-token arrays.

A :class:`KLDResult` keeps every scored token's KLD, both NLLs, Δp and the rank
of the base's top token in the other model, so percentiles, worst tokens and
paired tests stay possible, and so that adding two results is exactly the
result of scoring the union. In ``llama`` mode the per-token values are rounded
to float32 where llama.cpp holds them in float32 (NLLs, Δp, the KLD array used
for percentiles), so the printed block matches llama-perplexity to the digit.
"""
from __future__ import annotations

import json
import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .arrays import TOPK_MAX

MODES = ("llama", "exact")

KLD_PERCENTILES = ((0.999, "99.9%"), (0.990, "99.0%"), (0.950, "95.0%"), (0.900, "90.0%"))
KLD_LOW_PERCENTILES = ((0.100, "10.0%"), (0.050, " 5.0%"), (0.010, " 1.0%"), (0.001, " 0.1%"))
DP_HIGH_PERCENTILES = KLD_PERCENTILES + ((0.750, "75.0%"),)
DP_LOW_PERCENTILES = ((0.250, "25.0%"),) + KLD_LOW_PERCENTILES

# Buckets of the base's top-1 probability for by_confidence.
CONFIDENCE_EDGES = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)
# Percentiles given for the statistics beyond llama-perplexity's block.
SPREAD_PERCENTILES = (0.01, 0.05, 0.10, 0.50, 0.90)

CHUNK_HEADER = ("chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence"
                "              Δp RMS            Same top p")


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


class KLDResult:
    """Scores of one or more blocks of tokens: llama-perplexity's statistics and the raw arrays.

    Units: KLD and NLL in nats; Δp (``dp``) and same-top as probabilities in
    [-1, 1] and [0, 1] (``format`` prints them as %). ``ppl_*`` are perplexities.
    Per-token arrays: ``kld``, ``nll`` (other model), ``nll_base``, ``dp``,
    ``rank`` (rank of the base's top token among the other model's
    predictions, 0 = same top, 10 = not in its top 10), ``top_base`` and
    ``top_other`` (each model's most likely token), and where the kernels gave
    them (older records lack them: None): ``p_top`` (the base's top-1
    probability), ``overlap`` ((tokens, 10): column k - 1 counts the base's
    top k among the other model's top k), ``token`` (the scored token's id)
    and, when asked for, ``rkl`` (the reverse KL, KL(other || base)) and
    ``js`` (the Jensen-Shannon divergence).
    """

    def __init__(self, kld: np.ndarray, nll: np.ndarray, nll_base: np.ndarray,
                 rank: np.ndarray, mode: str = "llama", topk: Sequence[int] = (1, 5, 10),
                 chunk_ends: Optional[Iterable[int]] = None,
                 top_base: Optional[np.ndarray] = None, top_other: Optional[np.ndarray] = None,
                 p_top: Optional[np.ndarray] = None, overlap: Optional[np.ndarray] = None,
                 token: Optional[np.ndarray] = None, rkl: Optional[np.ndarray] = None,
                 js: Optional[np.ndarray] = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        n = len(kld)
        if not (len(nll) == len(nll_base) == len(rank) == n):
            raise ValueError("per-token arrays must have one entry per token")
        self.mode = mode
        self.topk = check_topk(topk)
        self.kld = np.asarray(kld, np.float64)
        self.nll = np.asarray(nll, np.float64)
        self.nll_base = np.asarray(nll_base, np.float64)
        self.rank = np.asarray(rank, np.int8)
        # Each model's most likely token per row (-1 where not known).
        self.top_base = np.full(n, -1, np.int32) if top_base is None else np.asarray(top_base, np.int32)
        self.top_other = np.full(n, -1, np.int32) if top_other is None else np.asarray(top_other, np.int32)
        self.p_top = None if p_top is None else np.asarray(p_top, np.float64)
        self.overlap = None if overlap is None else np.asarray(overlap, np.uint8)
        self.token = None if token is None else np.asarray(token, np.int64)
        self.rkl = None if rkl is None else np.asarray(rkl, np.float64)
        self.js = None if js is None else np.asarray(js, np.float64)
        for name in ("p_top", "overlap", "token", "rkl", "js"):
            a = getattr(self, name)
            if a is not None and len(a) != n:
                raise ValueError(f"{name} must have one entry per token")
        if self.overlap is not None and self.overlap.shape[1:] != (TOPK_MAX,):
            raise ValueError(f"overlap must be (tokens, {TOPK_MAX})")
        if mode == "llama":
            # llama.cpp: float nll, nll_base; p = expf(-nll); Δp in float.
            nll32 = self.nll.astype(np.float32)
            base32 = self.nll_base.astype(np.float32)
            with np.errstate(over="ignore", under="ignore"):
                self.dp = (np.exp(-nll32) - np.exp(-base32)).astype(np.float64)
        else:
            self.dp = np.exp(-self.nll) - np.exp(-self.nll_base)
        self.chunk_ends = list(chunk_ends) if chunk_ends is not None else [n]
        self._stats: Optional[Dict[str, float]] = None

    # --- merging -----------------------------------------------------------
    def __add__(self, other: "KLDResult") -> "KLDResult":
        if not isinstance(other, KLDResult):
            return NotImplemented
        return KLDResult.concat([self, other])

    @classmethod
    def concat(cls, blocks: Sequence["KLDResult"],
               chunk_ends: Optional[Iterable[int]] = None) -> "KLDResult":
        """Results of consecutive blocks as one, each array joined once.
        ``chunk_ends`` (counts of tokens) replaces the blocks' own chunks."""
        if not blocks:
            raise ValueError("no results to join")
        modes = {b.mode for b in blocks}
        if len(modes) > 1:
            raise ValueError(f"cannot add results of different modes: {sorted(modes)}")
        if chunk_ends is None:
            chunk_ends, n = [], 0
            for b in blocks:
                chunk_ends += [n + e for e in b.chunk_ends]
                n += b.count

        def joined(name):  # an optional array survives only if every block has it
            arrays = [getattr(b, name) for b in blocks]
            return None if any(a is None for a in arrays) else np.concatenate(arrays)

        return KLDResult(joined("kld"), joined("nll"), joined("nll_base"), joined("rank"),
                         blocks[0].mode, sorted(set().union(*(b.topk for b in blocks))),
                         chunk_ends, joined("top_base"), joined("top_other"), joined("p_top"),
                         joined("overlap"), joined("token"), joined("rkl"), joined("js"))

    def subset(self, mask: np.ndarray) -> "KLDResult":
        """The tokens where mask is true, as one chunk (statistics over a
        chosen set of positions)."""
        mask = np.asarray(mask, bool)
        if mask.shape != (self.count,):
            raise ValueError(f"the mask must have one entry per token ({self.count})")
        pick = lambda a: None if a is None else a[mask]
        return KLDResult(self.kld[mask], self.nll[mask], self.nll_base[mask], self.rank[mask],
                         self.mode, self.topk, [int(mask.sum())], self.top_base[mask],
                         self.top_other[mask], pick(self.p_top), pick(self.overlap),
                         pick(self.token), pick(self.rkl), pick(self.js))

    @property
    def count(self) -> int:
        """Number of scored tokens."""
        return len(self.kld)

    # --- llama.cpp's sums ----------------------------------------------------
    def _sums(self, n: Optional[int] = None) -> Dict[str, float]:
        with np.errstate(over="ignore", invalid="ignore"):  # extreme values: inf, not warnings
            return self._sums_of(slice(0, self.count if n is None else n))

    def _sums_of(self, sl: slice) -> Dict[str, float]:
        kld, nll, base, dp = self.kld[sl], self.nll[sl], self.nll_base[sl], self.dp[sl]
        if self.mode == "llama":
            # Products of float values are taken in float, as llama.cpp does.
            nll, base, dp = nll.astype(np.float32), base.astype(np.float32), dp.astype(np.float32)
        dp2 = (dp * dp).astype(np.float64)
        f64 = np.float64
        return {
            "n": len(kld),
            "nll": float(np.sum(nll, dtype=f64)), "nll2": float(np.sum(nll * nll, dtype=f64)),
            "base": float(np.sum(base, dtype=f64)), "base2": float(np.sum(base * base, dtype=f64)),
            "nll_base": float(np.sum(nll * base, dtype=f64)),
            "kld": float(np.sum(kld)), "kld2": float(np.sum(kld * kld)),
            "dp": float(np.sum(dp, dtype=f64)), "dp2": float(np.sum(dp2)),
            "dp4": float(np.sum(dp2 * dp2)),
            "same": int(np.count_nonzero(self.rank[sl] == 0)),
        }

    def _summary(self, n: Optional[int] = None) -> Dict[str, float]:
        return summary_of_sums(self._sums(n))

    # --- public statistics ---------------------------------------------------
    def statistics(self) -> Dict[str, float]:
        """Every statistic of llama-perplexity's block and quantkl's, by name (nats, probabilities, perplexities)."""
        if self._stats is None:
            self._stats = self._statistics()
        return dict(self._stats)

    def _statistics(self) -> Dict[str, float]:
        out = self._summary()
        ft = np.float32 if self.mode == "llama" else np.float64
        kld = np.sort(self.kld.astype(ft))
        dp = np.sort(self.dp.astype(ft))
        if self.count:
            out["kld_max"], out["kld_min"] = float(kld[-1]), float(kld[0])
            out["kld_median"] = median(kld)
            for f, _ in KLD_PERCENTILES + KLD_LOW_PERCENTILES:
                out[stat_key("kld", f)] = percentile(kld, f)
            out["dp_max"], out["dp_min"] = float(dp[-1]), float(dp[0])
            out["dp_median"] = median(dp)
            for f, _ in DP_HIGH_PERCENTILES + DP_LOW_PERCENTILES:
                out[stat_key("dp", f)] = percentile(dp, f)
        for k in self.topk:
            s, u = self.topk_agreement(k)
            out[f"top{k}_agreement"], out[f"top{k}_agreement_unc"] = s, u
        if self.overlap is not None and self.count:
            for k in self.topk:
                out.update(_spread(f"top{k}_overlap", self.topk_overlap(k)))
        if self.p_top is not None and self.count:
            out.update(_spread("p_top", self.p_top))
        if self.rkl is not None and self.count:
            with np.errstate(invalid="ignore", over="ignore"):
                out.update(_spread("rkl", self.rkl))
        if self.js is not None and self.count:
            out.update(_spread("js", self.js))
        return out

    def topk_overlap(self, k: int) -> np.ndarray:
        """Per token, |top_k(base) ∩ top_k(other)| / k (needs ``overlap``)."""
        check_topk([k])
        if self.overlap is None:
            raise ValueError("this result has no top-k overlap (scored before quantkl kept it)")
        return self.overlap[:, k - 1] / np.float64(k)

    def by_confidence(self, edges: Sequence[float] = CONFIDENCE_EDGES) -> List[Dict[str, float]]:
        """Mean KLD (± its s.e.) and same top (± its s.e.) by bucket of the
        base's top-1 probability: [edges[i], edges[i+1]), the last bucket closed."""
        if self.p_top is None:
            raise ValueError("this result has no base top-1 probabilities (scored before "
                             "quantkl kept them)")
        edges = list(edges)
        rows = []
        for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
            last = i == len(edges) - 2
            mask = (self.p_top >= lo) & ((self.p_top <= hi) if last else (self.p_top < hi))
            rows.append({"bucket": f"[{lo:g}, {hi:g}{']' if last else ')'}", "lo": lo, "hi": hi,
                         **self.subset(mask).bucket_summary()})
        return rows

    def by_class(self, classes: np.ndarray, names: Sequence[str]) -> List[Dict[str, float]]:
        """The same by class of the scored token: classes[i] is the index in
        names of token i's class (see quantkl.tokenclass)."""
        classes = np.asarray(classes)
        if classes.shape != (self.count,):
            raise ValueError(f"classes must have one entry per token ({self.count})")
        return [{"bucket": name, **self.subset(classes == i).bucket_summary()}
                for i, name in enumerate(names)]

    def bucket_summary(self) -> Dict[str, float]:
        """count, mean KLD and same top with their uncertainties (nan when empty)."""
        if not self.count:
            nan = float("nan")
            return {"count": 0, "kld_mean": nan, "kld_mean_unc": nan, "same_top": nan,
                    "same_top_unc": nan}
        s = self._summary()
        return {k: s[k] for k in ("count", "kld_mean", "kld_mean_unc", "same_top",
                                  "same_top_unc")}

    def __getattr__(self, name: str) -> float:
        if name.startswith("_") or name in ("kld", "nll", "nll_base", "dp", "rank", "top_base",
                                            "top_other", "p_top", "overlap", "token", "rkl",
                                            "js"):
            raise AttributeError(name)
        stats = self.statistics()
        if name in stats:
            return stats[name]
        raise AttributeError(f"{type(self).__name__} has no statistic {name!r}")

    def topk_agreement(self, k: int) -> Tuple[float, float]:
        """Fraction of tokens whose base top token is in the other model's top k, ± its s.e."""
        check_topk([k])
        c = self.count
        if c == 0:
            return float("nan"), float("nan")
        s = float(np.count_nonzero(self.rank < k)) / c
        return s, (math.sqrt(s * (1 - s) / (c - 1)) if c > 1 else float("nan"))

    def to_dict(self) -> Dict[str, object]:
        """Statistics as plain floats (JSON-ready), plus mode and count."""
        d: Dict[str, object] = {"mode": self.mode}
        d.update(self.statistics())
        return d

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    def to_pandas(self):
        """The per-token arrays as a DataFrame (one row per token); needs pandas."""
        import pandas as pd
        return pd.DataFrame({"kld": self.kld, "nll": self.nll, "nll_base": self.nll_base,
                             "dp": self.dp, "rank": self.rank, "top_base": self.top_base,
                             "top_other": self.top_other})

    # --- llama-perplexity's printout ------------------------------------------
    def format_chunk_row(self, chunk: int, label: Optional[int] = None) -> str:
        """The per-chunk line llama-perplexity prints after chunk ``chunk`` (1-based),
        running totals over every token up to the end of that chunk. ``label``
        is the number printed (the chunk's number in the dump, for a shard)."""
        if not 1 <= chunk <= len(self.chunk_ends):
            raise ValueError(f"chunk must be in 1..{len(self.chunk_ends)}, got {chunk}")
        return chunk_row(self._summary(self.chunk_ends[chunk - 1]),
                         chunk if label is None else label)

    def format(self) -> str:
        """llama-perplexity's statistics block (format_llama), then, in a block
        of its own, what quantkl adds: the base's top-1 probability, top-k set
        overlap and mean KLD by the base's confidence. Empty below 100 tokens,
        as llama-perplexity prints nothing there."""
        block = self.format_llama()
        more = self.format_more()
        return block + ("\n" + more if block and more else "")

    def format_more(self) -> str:
        """The block after llama-perplexity's (empty for results without the
        arrays it needs)."""
        if self.count < 100 or self.p_top is None or self.overlap is None:
            return ""
        s = self.statistics()
        L = ["====== Beyond llama-perplexity ======"]
        if self.rkl is not None:
            L.append("Mean reverse KLD, KL(Q||base): %10.6f ± %10.6f" % (s["rkl_mean"],
                                                                      s["rkl_mean_unc"]))
        if self.js is not None:
            L.append("Mean Jensen-Shannon div.    : %10.6f ± %10.6f" % (s["js_mean"],
                                                                      s["js_mean_unc"]))
        L.append("Base top-1 p  : %6.3f ± %5.3f %%" % (100 * s["p_top_mean"],
                                                      100 * s["p_top_mean_unc"]))
        L += ["Top-%-2d overlap: %6.3f ± %5.3f %%" % (k, 100 * s[f"top{k}_overlap_mean"],
                                                    100 * s[f"top{k}_overlap_mean_unc"])
              for k in self.topk]
        L += ["", "By base top-1 p   tokens    Mean KLD                Same top p"]
        L += [format_bucket(r) for r in self.by_confidence()]
        return "\n".join(L) + "\n"

    def format_llama(self) -> str:
        """The statistics block exactly as llama-perplexity prints it, from
        "====== Perplexity statistics ======" to "Same top p". llama-perplexity
        prints nothing below 100 tokens; neither does this (empty string)."""
        if self.count < 100:
            return ""
        s = self.statistics()
        L = ["====== Perplexity statistics ======",
             "Mean PPL(Q)                   : %10.6f ± %10.6f" % (s["ppl"], s["ppl_unc"]),
             "Mean PPL(base)                : %10.6f ± %10.6f" % (s["ppl_base"], s["ppl_base_unc"]),
             "Cor(ln(PPL(Q)), ln(PPL(base))): %6.2f%%" % (100 * s["cor_ln_ppl"]),
             "Mean ln(PPL(Q)/PPL(base))     : %10.6f ± %10.6f" % (s["ln_ppl_ratio"],
                                                                 s["ln_ppl_ratio_unc"]),
             "Mean PPL(Q)/PPL(base)         : %10.6f ± %10.6f" % (s["ppl_ratio"], s["ppl_ratio_unc"]),
             "Mean PPL(Q)-PPL(base)         : %10.6f ± %10.6f" % (s["ppl_diff"], s["ppl_diff_unc"]),
             "",
             "====== KL divergence statistics ======",
             "Mean    KLD: %10.6f ± %10.6f" % (s["kld_mean"], s["kld_mean_unc"]),
             "Maximum KLD: %10.6f" % s["kld_max"]]
        L += ["%s   KLD: %10.6f" % (lab, s[stat_key("kld", f)]) for f, lab in KLD_PERCENTILES]
        L.append("Median  KLD: %10.6f" % s["kld_median"])
        L += ["%s   KLD: %10.6f" % (lab, s[stat_key("kld", f)]) for f, lab in KLD_LOW_PERCENTILES]
        L += ["Minimum KLD: %10.6f" % s["kld_min"],
              "",
              "====== Token probability statistics ======",
              "Mean    Δp: %6.3f ± %5.3f %%" % (100 * s["dp_mean"], 100 * s["dp_mean_unc"]),
              "Maximum Δp: %6.3f%%" % (100 * s["dp_max"])]
        L += ["%s   Δp: %6.3f%%" % (lab, 100 * s[stat_key("dp", f)]) for f, lab in DP_HIGH_PERCENTILES]
        L.append("Median  Δp: %6.3f%%" % (100 * s["dp_median"]))
        L += ["%s   Δp: %6.3f%%" % (lab, 100 * s[stat_key("dp", f)]) for f, lab in DP_LOW_PERCENTILES]
        L += ["Minimum Δp: %6.3f%%" % (100 * s["dp_min"]),
              "RMS Δp    : %6.3f ± %5.3f %%" % (100 * s["dp_rms"], 100 * s["dp_rms_unc"]),
              "Same top p: %6.3f ± %5.3f %%" % (100 * s["same_top"], 100 * s["same_top_unc"])]
        return "\n".join(L) + "\n"

    def __repr__(self) -> str:
        if not self.count:
            return f"KLDResult(mode={self.mode!r}, count=0)"
        s = self._summary()
        return (f"KLDResult(mode={self.mode!r}, count={self.count}, "
                f"kld_mean={s['kld_mean']:.6f}, ppl_ratio={s['ppl_ratio']:.6f}, "
                f"same_top={s['same_top']:.4f})")


def chunk_row(s: Dict[str, float], label: int) -> str:
    """llama-perplexity's per-chunk line from running statistics (summary_of_sums)."""
    return ("%4d" % label
            + "    %9.4f ± %9.4f" % (s["ppl"], s["ppl_unc"])
            + "    %10.5f ± %10.5f" % (s["ln_ppl_ratio"], s["ln_ppl_ratio_unc"])
            + "    %10.5f ± %10.5f" % (s["kld_mean"], s["kld_mean_unc"])
            + "    %6.3f ± %6.3f %%" % (100 * s["dp_rms"], 100 * s["dp_rms_unc"])
            + "    %6.3f ± %6.3f %%" % (100 * s["same_top"], 100 * s["same_top_unc"]))


class RunningTotals:
    """llama.cpp's running sums over the tokens scored so far: all the
    per-chunk line and a stopping rule need, at a constant cost per block
    (no re-concatenation or sorting of earlier tokens)."""

    _KEYS = ("n", "nll", "nll2", "base", "base2", "nll_base", "kld", "kld2", "dp", "dp2", "dp4",
             "same")

    def __init__(self):
        self.sums: Dict[str, float] = {k: 0 for k in self._KEYS}
        self._summary: Optional[Dict[str, float]] = None

    def add(self, block: "KLDResult") -> None:
        for k, v in block._sums().items():
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
        return chunk_row(self.summary(), label)


def format_bucket(row: Dict[str, float], width: int = 15) -> str:
    """One line of a breakdown table (by confidence or by token class)."""
    if not row["count"]:
        return "%-*s %8d    -" % (width, row["bucket"], 0)
    return "%-*s %8d    %9.6f ± %9.6f    %7.3f ± %6.3f %%" % (
        width, row["bucket"], row["count"], row["kld_mean"], row["kld_mean_unc"],
        100 * row["same_top"], 100 * row["same_top_unc"])


def check_topk(topk: Iterable[int]) -> List[int]:
    ks = sorted({int(k) for k in topk})
    bad = [k for k in ks if not 1 <= k <= TOPK_MAX]
    if bad:
        raise ValueError(f"top-k values must be in 1..{TOPK_MAX}, got {bad}")
    return ks
