"""Slow float64 numpy twin of every C kernel (the bottleneck ``slow/`` pattern).

Whole-row, two-pass, obviously-correct numpy: the tests hold every kernel path
to these functions, per row |KLD - reference| <= 1e-7 + 1e-6 * KLD, NLLs
within 1e-7 + 1e-7 * |NLL|, tops and ranks identical. Same inputs, same
outputs as :func:`quantkl.score_rows` and :func:`quantkl.encode_llama_rows`;
not meant to be fast.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from ._kernels import TOPK_MAX
from .arrays import LlamaRows, llama_row_width


def as_float64(logits: np.ndarray) -> np.ndarray:
    """float32/float16/bfloat16 logits as float64 (exact widening)."""
    a = np.asarray(logits)
    if a.dtype.name == "bfloat16":
        bits = a.view(np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).astype(np.float64)
    return a.astype(np.float64)


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64; -inf stays -inf."""
    m = np.max(x, axis=1, keepdims=True)
    with np.errstate(under="ignore"):
        return x - m - np.log(np.sum(np.exp(x - m), axis=1, keepdims=True))


def decode_llama(rows: LlamaRows) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, log p, min_log_prob) of llama rows, widened to float64.

    log p is decoded as llama.cpp decodes it: ``scale * code`` rounded to
    float32, then ``+ min_log_prob`` rounded to float32 (numpy never fuses
    the two). That float32 value is the definition of a dump's log p.
    """
    r = np.ascontiguousarray(rows.rows)
    header = r[:, :4].copy().view(np.float32)
    scale, minlp = header[:, 0:1], header[:, 1:2]
    codes = r[:, 4:4 + rows.n_vocab].astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        lp = scale * codes + minlp
    return codes.astype(np.float64), lp.astype(np.float64), minlp[:, 0].astype(np.float64)


def tail_log_prob(mass: np.ndarray, n: np.ndarray, min_log_prob: np.ndarray) -> np.ndarray:
    """Log-probability of each code-0 entry: leftover mass spread evenly, kept
    within [min_log_prob - 16, min_log_prob] (see csrc/rowstate.h)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(mass > 0, np.log(mass / np.maximum(n, 1)), -np.inf)
    return np.clip(c, min_log_prob - 16.0, min_log_prob)


def llama_base(rows: LlamaRows, mode: str,
               q_finite: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p, log p, kept) of a base dump: the entries the KL sum takes and their values.

    llama mode: the decoded entries with log p > -16 (llama.cpp's cut).
    exact mode: decoded where code > 0; code-0 entries where the other side is
    finite share the clipped tail's mass.
    """
    codes, lp, minlp = decode_llama(rows)
    if mode == "llama":
        kept = lp > -16.0
        return np.where(kept, np.exp(lp), 0.0), lp, kept
    nz = codes > 0
    p_nz = np.where(nz, np.exp(lp), 0.0)
    tail = ~nz & q_finite
    c = tail_log_prob(1.0 - p_nz.sum(axis=1), tail.sum(axis=1), minlp)[:, None]
    logp = np.where(nz, lp, np.where(tail, c, -np.inf))
    return np.where(nz, p_nz, np.where(tail, np.exp(c), 0.0)), logp, nz | tail


def llama_other(rows: LlamaRows) -> np.ndarray:
    """Log-probabilities of a dump used as the second argument: code 0 is the tail."""
    codes, lp, minlp = decode_llama(rows)
    nz = codes > 0
    c = tail_log_prob(1.0 - np.where(nz, np.exp(lp), 0.0).sum(axis=1), (~nz).sum(axis=1),
                      minlp)[:, None]
    return np.where(nz, lp, c)


def rank_of(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Rank of values[r, idx[r]] in its row (larger first, ties by index), capped at 10."""
    n = values.shape[1]
    v = values[np.arange(len(idx)), idx][:, None]
    before = np.arange(n)[None, :] < idx[:, None]
    rank = np.sum(values > v, axis=1) + np.sum((values == v) & before, axis=1)
    return np.minimum(rank, TOPK_MAX)


def top_lists(values: np.ndarray) -> np.ndarray:
    """Each row's TOPK_MAX largest entries' indices, larger first, ties by index."""
    return np.argsort(-values, axis=1, kind="stable")[:, :TOPK_MAX]


def topk_overlap(p_values: np.ndarray, q_values: np.ndarray) -> np.ndarray:
    """(rows, TOPK_MAX): column k - 1 counts P's first k among Q's first k."""
    a, b = top_lists(p_values), top_lists(q_values)
    out = np.zeros((len(a), TOPK_MAX), np.uint8)
    for k in range(1, TOPK_MAX + 1):
        for r in range(len(a)):
            out[r, k - 1] = len(set(a[r, :k].tolist()) & set(b[r, :k].tolist()))
    return out


def score_rows(base, other, tokens, mode: str = "llama") -> Dict[str, np.ndarray]:
    """Reference per-row kld, nll_p, nll_q, top_p, top_q, rank, p_top (the
    base's top-1 probability), overlap (top-k set overlap counts), rkl
    (KL(Q||P)) and js (Jensen-Shannon), in float64 maths.

    A kept base entry (p > 0 by the mode's rules) where the other side's
    probability is 0 (a -inf logit) makes the row's KL infinite, however
    small p is.
    """
    tokens = np.asarray(tokens, np.int64)
    rows = np.arange(len(tokens))
    if isinstance(other, LlamaRows):
        lq = llama_other(other)
        q_rank_values = decode_llama(other)[1]
    else:
        y = as_float64(other)
        lq = log_softmax(y)
        q_rank_values = y
    q_finite = lq > -np.inf
    if isinstance(base, LlamaRows):
        p, lp, kept = llama_base(base, mode, q_finite)
        p_rank_values = decode_llama(base)[1]
        top_p = np.argmax(p_rank_values, axis=1)
        p_top = np.exp(p_rank_values[rows, top_p])  # the decoded top, as the file has it
    else:
        x = as_float64(base)
        lp = log_softmax(x)
        p = np.exp(lp)
        kept = lp > -16.0 if mode == "llama" else lp > -np.inf
        p_rank_values = x
        top_p = np.argmax(x, axis=1)
        p_top = np.exp(lp[rows, top_p])
    with np.errstate(invalid="ignore"):
        terms = np.where(kept & q_finite, p * (lp - lq), 0.0)
    # reverse KL and Jensen-Shannon, the full sums, the same in both modes: a
    # dump's code 0 is its clipped tail (the base's where q > 0, as exact
    # mode reads it), on either side
    lp_full = llama_base(base, "exact", q_finite)[1] if isinstance(base, LlamaRows) else lp
    q = np.exp(lq)
    with np.errstate(invalid="ignore"):
        rterms = np.where(q_finite, q * (lq - lp_full), 0.0)
    rkl = rterms.sum(axis=1)
    rkl[np.any(q_finite & (lp_full == -np.inf), axis=1)] = np.inf
    p_full = np.exp(lp_full)
    with np.errstate(invalid="ignore"):
        log_mix = np.logaddexp(lp_full, lq) - np.log(2.0)
        jterms = (np.where(p_full > 0, p_full * (lp_full - log_mix), 0.0)
                  + np.where(q > 0, q * (lq - log_mix), 0.0))
    js = 0.5 * jterms.sum(axis=1)
    kld = terms.sum(axis=1)
    kld[np.any(kept & ~q_finite, axis=1)] = np.inf
    # the cut drops KLD terms only, never the token's NLL
    nll_p = -(decode_llama(base)[1] if isinstance(base, LlamaRows) and mode == "llama"
              else lp)[rows, tokens]
    return {
        "kld": kld,
        "nll_p": nll_p,
        "nll_q": -lq[rows, tokens],
        "top_p": top_p,
        "top_q": np.argmax(q_rank_values, axis=1),
        "rank": rank_of(q_rank_values, top_p),
        "p_top": p_top,
        "rkl": rkl,
        "js": js,
        "overlap": topk_overlap(p_rank_values, q_rank_values),
    }


def encode_llama_rows(logits: np.ndarray, tokens) -> Tuple[np.ndarray, np.ndarray]:
    """llama.cpp's encoder in numpy float32 arithmetic: (rows uint16, nll float64).

    expf is taken as float64 exp rounded to float32 (glibc's expf is correctly
    rounded in all but rare cases), summed in float64 as llama.cpp does.
    """
    x = np.asarray(logits, np.float32)
    n, n_vocab = x.shape
    out = np.zeros((n, llama_row_width(n_vocab)), np.uint16)
    nll = np.empty(n)
    f32 = np.float32
    for r in range(n):
        row = x[r]
        mx, mn = row.max(), row.min()
        mn = max(mn, f32(mx - f32(16)))
        with np.errstate(under="ignore"):
            e = np.exp((row - mx).astype(np.float64)).astype(np.float32)
        lse = f32(np.log(np.sum(e.astype(np.float64))))
        min_lp = f32(f32(mn - mx) - lse)
        scale = f32(f32(mx - mn) / f32(65535))
        out[r, :4] = np.array([scale, min_lp], np.float32).view(np.uint16)
        if scale != 0:
            inv = f32(1) / scale
            v = np.rint(inv * (row - mn))  # float32 maths, half to even
            codes = np.where(row > mn, np.minimum(v, 65535), 0).astype(np.uint16)
            out[r, 4:4 + n_vocab] = codes
        nll[r] = f32(f32(mx + lse) - row[tokens[r]])
    return out, nll


# --- plain float32 numpy baselines for benchmarks ----------------------------
# What a user would write with numpy alone (vectorised over the block, float32
# maths): the speed yardstick of quantkl.bench. They follow llama.cpp's
# formulas without quantkl's refinements (no clipped-tail model), so tests hold
# them to the kernels only where those coincide, at float32 tolerance.

def _log_probs_row_f32(side, i: int, out: np.ndarray, work: np.ndarray) -> None:
    """Row i's log-probabilities into out (float32, in place; work is scratch)."""
    if isinstance(side, LlamaRows):
        r = side.rows[i]
        scale, minlp = r[:4].copy().view(np.float32)
        np.multiply(r[4:4 + side.n_vocab], scale, out=out, casting="unsafe")
        out += minlp
        return
    np.subtract(side[i], side[i].max(), out=out, casting="unsafe")
    np.exp(out, out=work)
    out -= np.float32(np.log(work.sum(dtype=np.float64)))


def kld_numpy_f32(base, other, mode: str = "llama") -> np.ndarray:
    """Per-row KL(base || other) in plain float32 numpy, row by row in place
    (rows may be LlamaRows)."""
    n_rows, n_vocab = base.shape
    lp, lq, p = (np.empty(n_vocab, np.float32) for _ in range(3))
    out = np.empty(n_rows)
    for i in range(n_rows):
        _log_probs_row_f32(base, i, lp, p)
        _log_probs_row_f32(other, i, lq, p)
        np.exp(lp, out=p)
        if mode == "llama":
            p[lp <= -16] = 0
        lp -= lq
        out[i] = np.dot(p, lp)
    return out


def encode_llama_rows_numpy_f32(logits: np.ndarray) -> np.ndarray:
    """llama.cpp's encoder vectorised over the block in float32 numpy."""
    x = np.asarray(logits, np.float32)
    n, n_vocab = x.shape
    mx = x.max(axis=1, keepdims=True)
    mn = np.maximum(x.min(axis=1, keepdims=True), mx - np.float32(16))
    lse = np.log(np.exp(x - mx).sum(axis=1, keepdims=True, dtype=np.float64)).astype(np.float32)
    scale = (mx - mn) / np.float32(65535)
    out = np.zeros((n, llama_row_width(n_vocab)), np.uint16)
    out[:, :4] = np.concatenate([scale, (mn - mx) - lse], axis=1).view(np.uint16)
    with np.errstate(divide="ignore", invalid="ignore"):
        codes = np.rint((np.float32(1) / scale) * (x - mn))
    out[:, 4:4 + n_vocab] = np.where(x > mn, np.minimum(codes, 65535), 0)
    return out


# --- precise sparse rows (quantkl.sparse) ------------------------------------
# The twin of csrc/sparse.c: float64 over the stored entries, the tail's
# intervals by the formulas docs/statistics.md derives, with whole-row numpy.

def _xlogy(a: np.ndarray, log_a: np.ndarray, log_b: np.ndarray) -> np.ndarray:
    """a (log_a - log_b), 0 where a = 0."""
    with np.errstate(invalid="ignore"):
        return np.where(a > 0, a * (log_a - log_b), 0.0)


def sparse_dense(rows) -> Tuple[np.ndarray, np.ndarray]:
    """(stored mask, float64 log p with -inf where not stored) of SparseRows."""
    n, v = rows.shape
    stored = np.zeros((n, v), bool)
    lp = np.full((n, v), -np.inf)
    for r in range(n):
        idx, x = rows.row(r)
        h = rows.headers[r]
        stored[r, idx] = True
        lp[r, idx] = (x.astype(np.float64) - np.float64(h["x_max"])) - h["lse"]
    return stored, lp


def sparse_kept(rows) -> np.ndarray:
    """llama mode's cut over the stored entries, in the float kernels' float32 steps."""
    n, v = rows.shape
    kept = np.zeros((n, v), bool)
    f32 = np.float32
    for r in range(n):
        idx, x = rows.row(r)
        h = rows.headers[r]
        kept[r, idx] = (f32(x - f32(h["x_max"])) - f32(h["lse"])) > f32(-16)
    return kept


def _tail_facts(rows) -> Dict[str, np.ndarray]:
    h = rows.headers
    return {"log_m": h["tail_lse"].astype(np.float64),
            "log_tau": np.minimum(h["tail_lse"],
                                  (h["tail_max"].astype(np.float64) - h["x_max"]) - h["lse"]),
            "log_p_min": (h["tail_min"].astype(np.float64) - h["x_max"]) - h["lse"]}


def _tail_bounds(f: Dict[str, np.ndarray], log_M: np.ndarray, log_q_min: np.ndarray):
    """Per row: (kl_lo, kl_hi, rkl_lo, rkl_hi, js_lo, js_hi) of the tail."""
    log_m, log_tau, log_p_min = f["log_m"], f["log_tau"], f["log_p_min"]
    m, M = np.exp(log_m), np.exp(log_M)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        kl_lo = _xlogy(m, log_m, log_M)
        kl_hi = np.where(m > 0, m * (log_tau - log_q_min), 0.0)
        rkl_lo = _xlogy(M, log_M, log_m)
        rkl_hi = np.where(M > 0, M * (log_M - log_p_min), 0.0)
        mix = np.logaddexp(log_m, log_M) - np.log(2.0)
        js_lo = 0.5 * (_xlogy(m, log_m, mix) + _xlogy(M, log_M, mix))
        js_hi = 0.5 * (np.where(m > 0, m * (np.log(2.0) + log_tau
                                            - np.logaddexp(log_tau, log_q_min)), 0.0)
                       + np.where(M > 0, M * (np.log(2.0) + log_M
                                              - np.logaddexp(log_M, log_p_min)), 0.0))
    return kl_lo, kl_hi, rkl_lo, rkl_hi, js_lo, js_hi


def _tops(rows, lp_stored: np.ndarray, q_values: np.ndarray) -> Dict[str, np.ndarray]:
    h = rows.headers
    n = len(h)
    top_p = np.argmax(lp_stored, axis=1)
    return {"nll_p": (np.float64(1) * h["x_max"] - h["x_tok"]) + h["lse"],
            "top_p": top_p, "top_q": np.argmax(q_values, axis=1),
            "rank": rank_of(q_values, top_p), "p_top": np.exp(-h["lse"]),
            "overlap": topk_overlap(lp_stored, q_values), "rows": np.arange(n)}


def score_sparse_rows(base, other, tokens, mode: str = "llama") -> Dict[str, np.ndarray]:
    """Reference outputs of a precise sparse base (SparseRows) against float
    logits or other SparseRows: the score_rows keys, and kld_hi, rkl_hi,
    js_hi (the intervals' upper ends; llama mode's KLD is exact there:
    kld_hi = kld). Q's smallest probability in the bounds is the row's, as
    the kernel takes it. Two sparse rows give the forward KL only."""
    tokens = np.asarray(tokens, np.int64)
    stored, lp = sparse_dense(base)
    p = np.exp(lp)
    facts = _tail_facts(base)
    kept = sparse_kept(base) if mode == "llama" else stored
    if not hasattr(other, "headers"):  # float logits
        y = as_float64(other)
        lq = log_softmax(y)
        q = np.exp(lq)
        # infinite where a live p (log p > -inf, even if p underflows) meets q = 0
        live_p, live_q = lp > -np.inf, lq > -np.inf
        with np.errstate(invalid="ignore"):
            terms = np.where(kept & live_p, p * (lp - lq), 0.0)
        kld = terms.sum(axis=1)
        kld[np.any(kept & live_p & ~live_q, axis=1)] = np.inf
        # Q's mass on P's tail, positive (if below float64's range) where a q > 0 is there
        M = np.where(stored, 0.0, q).sum(axis=1)
        M = np.where(np.any(~stored & live_q, axis=1), np.maximum(M, 4.9e-324), M)
        with np.errstate(divide="ignore"):
            log_M = np.log(M)
        log_q_min = lq.min(axis=1)
        kl_lo, kl_hi, rkl_lo, rkl_hi, js_lo, js_hi = _tail_bounds(facts, log_M, log_q_min)
        with np.errstate(invalid="ignore"):
            rterms = np.where(stored & live_q, q * (lq - lp), 0.0)
            mix = np.logaddexp(lp, lq) - np.log(2.0)
            jterms = np.where(stored, _xlogy(p, lp, mix) + _xlogy(q, lq, mix), 0.0)
        rkl = rterms.sum(axis=1)
        rkl[np.any(stored & live_q & ~live_p, axis=1)] = np.inf
        js = 0.5 * jterms.sum(axis=1)
        out = {"kld": kld + (kl_lo if mode == "exact" else 0.0),
               "kld_hi": kld + (kl_hi if mode == "exact" else 0.0),
               "rkl": rkl + rkl_lo, "rkl_hi": rkl + rkl_hi, "js": js + js_lo,
               "js_hi": js + js_hi, "nll_q": -lq[np.arange(len(tokens)), tokens]}
        out.update(_tops(base, lp, y))
        del out["rows"]
        return out
    # two sparse rows: Q's unstored entries lie in [its tail minimum, tau],
    # its tail's average standing for them in llama mode
    q_stored, lq_s = sparse_dense(other)
    qf = _tail_facts(other)
    hq = other.headers
    with np.errstate(divide="ignore"):
        avg = np.where(hq["tail_count"] > 0, hq["tail_lse"] - np.log(np.maximum(
            hq["tail_count"], 1)), -np.inf)
    avg = np.maximum(np.minimum(avg, qf["log_tau"]), qf["log_p_min"])
    unknown = ~q_stored
    lq_point = np.where(unknown, avg[:, None], lq_s)
    lq_hi = np.where(unknown, qf["log_tau"][:, None], lq_s)
    lq_lo = np.where(unknown, qf["log_p_min"][:, None], lq_s)
    live = stored & (lp > -np.inf)
    with np.errstate(invalid="ignore"):
        point = np.where(kept & live, p * (lp - lq_point), 0.0).sum(axis=1)
        lo = np.where(live, p * (lp - lq_hi), 0.0).sum(axis=1)
        hi = np.where(live, p * (lp - lq_lo), 0.0).sum(axis=1)
    point[np.any(kept & live & (lq_point == -np.inf), axis=1)] = np.inf
    lo[np.any(live & (lq_hi == -np.inf), axis=1)] = np.inf
    hi[np.any(live & (lq_lo == -np.inf), axis=1)] = np.inf
    if mode == "exact":
        q_known = np.where(~stored & q_stored, np.exp(lq_s), 0.0).sum(axis=1)
        n_unknown = (stored & unknown).sum(axis=1)
        m_q = np.exp(hq["tail_lse"].astype(np.float64))
        with np.errstate(invalid="ignore"):  # no unknown entry: nothing taken
            taken_hi = np.where(n_unknown > 0, np.minimum(n_unknown * np.exp(qf["log_tau"]),
                                                          m_q), 0.0)
            taken_lo = np.where(n_unknown > 0, n_unknown * np.exp(qf["log_p_min"]), 0.0)
        M_lo = q_known + np.maximum(m_q - taken_hi, 0.0)
        M_hi = q_known + np.maximum(m_q - taken_lo, 0.0)
        with np.errstate(divide="ignore"):
            y_min = np.where(~stored & q_stored, lq_s, np.inf).min(axis=1)
        log_q_min = np.minimum(y_min, qf["log_p_min"])
        with np.errstate(divide="ignore"):
            kl_lo = _tail_bounds(facts, np.log(M_hi), log_q_min)[0]
            kl_hi = _tail_bounds(facts, np.log(M_lo), log_q_min)[1]
        kld, kld_hi = lo + kl_lo, hi + kl_hi
    else:
        kld = kld_hi = point
    q_values = np.where(q_stored, lq_s, -np.inf)
    out = {"kld": kld, "kld_hi": kld_hi,
           "nll_q": (np.float64(1) * hq["x_max"] - hq["x_tok"]) + hq["lse"]}
    out.update(_tops(base, lp, q_values))
    del out["rows"]
    return out
