"""llama-perplexity's printout: the per-chunk line, the statistics block to
the digit, and quantkl's block after it."""
from __future__ import annotations

from typing import Dict, Optional

from .stats import (DP_HIGH_PERCENTILES, DP_LOW_PERCENTILES, KLD_LOW_PERCENTILES,
                    KLD_PERCENTILES, stat_key, summary)

CHUNK_HEADER = ("chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence"
                "              Δp RMS            Same top p")


def chunk_row(s: Dict[str, float], label: int) -> str:
    """llama-perplexity's per-chunk line from running statistics (summary_of_sums)."""
    return ("%4d" % label
            + "    %9.4f ± %9.4f" % (s["ppl"], s["ppl_unc"])
            + "    %10.5f ± %10.5f" % (s["ln_ppl_ratio"], s["ln_ppl_ratio_unc"])
            + "    %10.5f ± %10.5f" % (s["kld_mean"], s["kld_mean_unc"])
            + "    %6.3f ± %6.3f %%" % (100 * s["dp_rms"], 100 * s["dp_rms_unc"])
            + "    %6.3f ± %6.3f %%" % (100 * s["same_top"], 100 * s["same_top_unc"]))


def chunk_line(result, chunk: int, label: Optional[int] = None) -> str:
    """The line llama-perplexity prints after chunk ``chunk`` (1-based) of a
    result: running totals over every token up to the end of that chunk.
    ``label`` is the number printed (the chunk's number in the dump, for a
    shard)."""
    if not 1 <= chunk <= len(result.chunk_ends):
        raise ValueError(f"chunk must be in 1..{len(result.chunk_ends)}, got {chunk}")
    return chunk_row(summary(result, result.chunk_ends[chunk - 1]),
                     chunk if label is None else label)


def statistics_blocks(result) -> str:
    """llama-perplexity's statistics block (llama_block), then, in a block of
    its own, what quantkl adds: the base's top-1 probability, top-k set
    overlap and mean KLD by the base's confidence. Empty below 100 tokens, as
    llama-perplexity prints nothing there."""
    block = llama_block(result)
    more = beyond_block(result)
    return block + ("\n" + more if block and more else "")


def llama_block(result) -> str:
    """The statistics block exactly as llama-perplexity prints it, from
    "====== Perplexity statistics ======" to "Same top p". llama-perplexity
    prints nothing below 100 tokens; neither does this (empty string)."""
    if result.count < 100:
        return ""
    s = result.statistics()
    L = ["====== Perplexity statistics ======",
         "Mean PPL(Q)                   : %10.6f ± %10.6f" % (s["ppl"], s["ppl_unc"]),
         "Mean PPL(base)                : %10.6f ± %10.6f" % (s["ppl_base"], s["ppl_base_unc"]),
         "Cor(ln(PPL(Q)), ln(PPL(base))): %6.2f%%" % (100 * s["cor_ln_ppl"]),
         "Mean ln(PPL(Q)/PPL(base))     : %10.6f ± %10.6f" % (s["ln_ppl_ratio"],
                                                             s["ln_ppl_ratio_unc"]),
         "Mean PPL(Q)/PPL(base)         : %10.6f ± %10.6f" % (s["ppl_ratio"], s["ppl_ratio_unc"]),
         "Mean PPL(Q)-PPL(base)         : %10.6f ± %10.6f" % (s["ppl_diff"], s["ppl_diff_unc"]),
         "",
         "====== KL divergence statistics ======"]
    # against a precise sparse base, exact mode's KLDs are intervals: the
    # mean is printed as one, the percentiles are of the lower ends
    low = " (lower bound)" if result.bounded else ""
    if result.bounded:
        L.append("Mean    KLD: [%10.6f, %10.6f] ± %10.6f" % (s["kld_mean"], s["kld_mean_hi"],
                                                           s["kld_mean_unc"]))
    else:
        L.append("Mean    KLD: %10.6f ± %10.6f" % (s["kld_mean"], s["kld_mean_unc"]))
    L.append("Maximum KLD: %10.6f%s" % (s["kld_max"], low))
    L += ["%s   KLD: %10.6f%s" % (lab, s[stat_key("kld", f)], low) for f, lab in KLD_PERCENTILES]
    L.append("Median  KLD: %10.6f%s" % (s["kld_median"], low))
    L += ["%s   KLD: %10.6f%s" % (lab, s[stat_key("kld", f)], low)
          for f, lab in KLD_LOW_PERCENTILES]
    L += ["Minimum KLD: %10.6f%s" % (s["kld_min"], low),
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


def beyond_block(result) -> str:
    """The block after llama-perplexity's (empty for results without the
    arrays it needs)."""
    if result.count < 100 or result.p_top is None or result.overlap is None:
        return ""
    s = result.statistics()
    L = ["====== Beyond llama-perplexity ======"]
    if result.rkl is not None:
        L.append("Mean reverse KLD, KL(Q||base): %s ± %10.6f" % (_mean(s, "rkl"),
                                                              s["rkl_mean_unc"]))
    if result.js is not None:
        L.append("Mean Jensen-Shannon div.    : %s ± %10.6f" % (_mean(s, "js"),
                                                              s["js_mean_unc"]))
    L.append("Base top-1 p  : %6.3f ± %5.3f %%" % (100 * s["p_top_mean"],
                                                  100 * s["p_top_mean_unc"]))
    L += ["Top-%-2d overlap: %6.3f ± %5.3f %%" % (k, 100 * s[f"top{k}_overlap_mean"],
                                                100 * s[f"top{k}_overlap_mean_unc"])
          for k in result.topk]
    L += ["", "By base top-1 p   tokens    Mean KLD                Same top p"]
    L += [format_bucket(r) for r in result.by_confidence()]
    return "\n".join(L) + "\n"


def _mean(s: Dict[str, float], name: str) -> str:
    """A mean, or [lower, upper] where a precise sparse base leaves an interval."""
    if f"{name}_mean_hi" in s:
        return "[%10.6f, %10.6f]" % (s[f"{name}_mean"], s[f"{name}_mean_hi"])
    return "%10.6f" % s[f"{name}_mean"]


def format_bucket(row: Dict[str, float], width: int = 15) -> str:
    """One line of a breakdown table (by confidence or by token class)."""
    if not row["count"]:
        return "%-*s %8d    -" % (width, row["bucket"], 0)
    return "%-*s %8d    %9.6f ± %9.6f    %7.3f ± %6.3f %%" % (
        width, row["bucket"], row["count"], row["kld_mean"], row["kld_mean_unc"],
        100 * row["same_top"], 100 * row["same_top_unc"])
