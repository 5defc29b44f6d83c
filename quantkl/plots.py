"""Plots across quants from JSON records (matplotlib, the optional extra quantkl[plot]).

"scatter": a quant's error (mean KLD, PPL ratio - 1, or 1 - same top) against
its size or bits per weight, log-scale y with error bars and labelled points,
as in quantization-error-against-bpw charts (seed 003); or its task accuracy
(HellaSwag, Winogrande, multiple choice, from task records) with the Wilson
95 % interval as error bars, as seed 003 plots HellaSwag and MMLU. "cdf": each quant's
per-token KLD distribution, which shows the damaged tail an average hides
(seed 002).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .reports import QuantRecord

def _stat(key: str, unc: str, minus_one: bool = False, complement: bool = False):
    def get(r: QuantRecord):
        if not r.has_kld:
            return None
        v = r.stats[key]
        v = v - 1 if minus_one else 1 - v if complement else v
        return v, (r.stats[unc], r.stats[unc])
    return get


def _accuracy(task: str):
    def get(r: QuantRecord):
        t = r.tasks.get(task)
        if t is None:
            return None
        lo, hi = t["interval95"]
        acc = t["accuracy"]
        return 100 * acc, (100 * (acc - lo), 100 * (hi - acc))
    return get


# y axis: label, value and (lower, upper) error of a record (None: not in it),
# whether a log scale suits it
Y_AXES = {
    "kld": ("Mean KLD (nats)", _stat("kld_mean", "kld_mean_unc"), True),
    "ppl-ratio": ("PPL(Q)/PPL(base) - 1", _stat("ppl_ratio", "ppl_ratio_unc", minus_one=True),
                  True),
    "same-top": ("1 - same top", _stat("same_top", "same_top_unc", complement=True), True),
    "hellaswag": ("HellaSwag acc_norm (%)", _accuracy("hellaswag"), False),
    "winogrande": ("Winogrande accuracy (%)", _accuracy("winogrande"), False),
    "mc": ("Multiple-choice accuracy (%)", _accuracy("multiple-choice"), False),
}
X_AXES = {"size": "Size (GB)", "bpw": "Bits per weight"}


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ValueError("plots need matplotlib: pip install 'quantkl[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_records(records: Sequence[QuantRecord], out: str, *, kind: str = "scatter",
                 x: str = "size", y: str = "kld", width: int = 900, height: int = 600) -> str:
    """Draw records to ``out`` (.png or .svg) at width x height pixels; returns out."""
    if not out.lower().endswith((".png", ".svg")):
        raise ValueError(f"{out}: the plot file must end in .png or .svg")
    if kind not in ("scatter", "cdf"):
        raise ValueError(f"unknown plot kind {kind!r}: scatter or cdf")
    plt = _pyplot()
    dpi = 100
    fig, ax = plt.subplots(figsize=(width / dpi, height / dpi), dpi=dpi)
    try:
        if kind == "scatter":
            _scatter(ax, records, x, y)
        else:
            _cdf(ax, records)
        fig.tight_layout()
        fig.savefig(out, dpi=dpi)
    finally:
        plt.close(fig)
    return out


def _scatter(ax, records, x, y):
    if x not in X_AXES:
        raise ValueError(f"unknown x axis {x!r}: {', '.join(X_AXES)}")
    if y not in Y_AXES:
        raise ValueError(f"unknown y axis {y!r}: {', '.join(Y_AXES)}")
    ylabel, get, log_scale = Y_AXES[y]
    pts = []
    for r in records:
        got = get(r)
        if got is None:
            continue
        xv = r.size_gb if x == "size" else r.bits_per_weight
        if xv is None:
            raise ValueError(f"{r.path} has no {X_AXES[x].lower()} (a compare record has no "
                             f"model): use records from quantkl score or quantkl tasks")
        pts.append((xv, got[0], got[1], r.name))
    if not pts:
        raise ValueError(f"none of the records has what --y {y} plots")
    xs, ys, errs, names = zip(*pts)
    ax.errorbar(xs, ys, yerr=np.array(errs).T, fmt="o", capsize=3)
    for xv, yv, name in zip(xs, ys, names):
        ax.annotate(name, (xv, yv), textcoords="offset points", xytext=(5, 5), fontsize=8)
    if log_scale and all(v > 0 for v in ys):
        ax.set_yscale("log")
    ax.set_xlabel(X_AXES[x])
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)


def _cdf(ax, records):
    records = [r for r in records if r.has_kld]
    if not records:
        raise ValueError("a cdf needs records with per-token KLD (from quantkl score or compare)")
    for r in records:
        k = np.sort(r.result().kld)
        k = k[k > 0]
        ax.plot(k, np.arange(1, len(k) + 1) / len(k), label=r.name)
    ax.set_xscale("log")
    ax.set_xlabel("per-token KLD (nats)")
    ax.set_ylabel("fraction of tokens")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
