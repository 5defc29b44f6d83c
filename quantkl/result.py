"""The result of scoring: every scored token's KLD, both NLLs, Δp and the
rank of the base's top token in the other model, kept so that percentiles,
worst tokens and paired tests stay possible, and so that joining two results
is exactly the result of scoring the union.

KLDResult is the container; the statistics are computed in stats.py, the
printout in printout.py and the files in records.py, and its methods are the
way to them.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from . import printout, stats
from ._kernels import TOPK_MAX
from .stats import CONFIDENCE_EDGES, MODES, check_topk


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
    ``js`` (the Jensen-Shannon divergence). Against a precise sparse base
    (.kldp) the values its tail leaves unknown are intervals: ``kld`` (exact
    mode), ``rkl`` and ``js`` are then the lower ends and ``kld_hi``,
    ``rkl_hi``, ``js_hi`` the upper (None elsewhere).
    """

    def __init__(self, kld: np.ndarray, nll: np.ndarray, nll_base: np.ndarray,
                 rank: np.ndarray, mode: str = "llama", topk: Sequence[int] = (1, 5, 10),
                 chunk_ends: Optional[Iterable[int]] = None,
                 top_base: Optional[np.ndarray] = None, top_other: Optional[np.ndarray] = None,
                 p_top: Optional[np.ndarray] = None, overlap: Optional[np.ndarray] = None,
                 token: Optional[np.ndarray] = None, rkl: Optional[np.ndarray] = None,
                 js: Optional[np.ndarray] = None, kld_hi: Optional[np.ndarray] = None,
                 rkl_hi: Optional[np.ndarray] = None, js_hi: Optional[np.ndarray] = None):
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
        self.kld_hi = None if kld_hi is None else np.asarray(kld_hi, np.float64)
        self.rkl_hi = None if rkl_hi is None else np.asarray(rkl_hi, np.float64)
        self.js_hi = None if js_hi is None else np.asarray(js_hi, np.float64)
        for name in ("p_top", "overlap", "token", "rkl", "js", "kld_hi", "rkl_hi", "js_hi"):
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
                         joined("overlap"), joined("token"), joined("rkl"), joined("js"),
                         joined("kld_hi"), joined("rkl_hi"), joined("js_hi"))

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
                         pick(self.token), pick(self.rkl), pick(self.js), pick(self.kld_hi),
                         pick(self.rkl_hi), pick(self.js_hi))

    @property
    def bounded(self) -> bool:
        """Whether the KLDs are intervals (exact mode against a precise sparse base)."""
        return self.kld_hi is not None and self.mode == "exact"

    @property
    def count(self) -> int:
        """Number of scored tokens."""
        return len(self.kld)

    # --- statistics (stats.py) ---------------------------------------------
    def statistics(self) -> Dict[str, float]:
        """Every statistic of llama-perplexity's block and quantkl's, by name
        (nats, probabilities, perplexities); also attributes (``kld_mean``)."""
        if self._stats is None:
            self._stats = stats.statistics(self)
        return dict(self._stats)

    def __getattr__(self, name: str) -> float:
        if name.startswith("_") or name in ("kld", "nll", "nll_base", "dp", "rank", "top_base",
                                            "top_other", "p_top", "overlap", "token", "rkl",
                                            "js", "kld_hi", "rkl_hi", "js_hi"):
            raise AttributeError(name)
        values = self.statistics()
        if name in values:
            return values[name]
        raise AttributeError(f"{type(self).__name__} has no statistic {name!r}")

    def topk_agreement(self, k: int) -> Tuple[float, float]:
        """Fraction of tokens whose base top token is in the other model's top k, ± its s.e."""
        return stats.topk_agreement(self, k)

    def topk_overlap(self, k: int) -> np.ndarray:
        """Per token, |top_k(base) ∩ top_k(other)| / k (needs ``overlap``)."""
        return stats.topk_overlap(self, k)

    def by_confidence(self, edges: Sequence[float] = CONFIDENCE_EDGES) -> List[Dict[str, float]]:
        """Mean KLD and same top (each ± its s.e.) by bucket of the base's top-1 probability."""
        return stats.by_confidence(self, edges)

    def by_class(self, classes: np.ndarray, names: Sequence[str]) -> List[Dict[str, float]]:
        """The same by class of the scored token (see quantkl.tokenclass)."""
        return stats.by_class(self, classes, names)

    def bucket_summary(self) -> Dict[str, float]:
        """count, mean KLD and same top with their uncertainties (nan when empty)."""
        return stats.bucket_summary(self)

    # --- printout (printout.py) ----------------------------------------------
    def format_chunk_row(self, chunk: int, label: Optional[int] = None) -> str:
        """The per-chunk line llama-perplexity prints after chunk ``chunk`` (1-based)."""
        return printout.chunk_line(self, chunk, label)

    def format(self) -> str:
        """llama-perplexity's statistics block, then quantkl's own (empty below 100 tokens)."""
        return printout.statistics_blocks(self)

    def format_llama(self) -> str:
        """The statistics block exactly as llama-perplexity prints it."""
        return printout.llama_block(self)

    def format_more(self) -> str:
        """The block after llama-perplexity's."""
        return printout.beyond_block(self)

    def __repr__(self) -> str:
        if not self.count:
            return f"KLDResult(mode={self.mode!r}, count=0)"
        s = stats.summary(self)
        return (f"KLDResult(mode={self.mode!r}, count={self.count}, "
                f"kld_mean={s['kld_mean']:.6f}, ppl_ratio={s['ppl_ratio']:.6f}, "
                f"same_top={s['same_top']:.4f})")

    # --- export (records.py) ---------------------------------------------------
    def to_dict(self) -> Dict[str, object]:
        """Statistics as plain floats (JSON-ready), plus mode and count."""
        from .records import statistics_dict
        return statistics_dict(self)

    def to_json(self, **kw) -> str:
        import json
        return json.dumps(self.to_dict(), **kw)

    def to_pandas(self):
        """The per-token arrays as a DataFrame (one row per token); needs pandas."""
        from .records import per_token_frame
        return per_token_frame(self)
