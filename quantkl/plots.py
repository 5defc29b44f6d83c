"""Plots across quants from JSON records (matplotlib, the optional extra quantkl[plot]).

"scatter": a quant's error (mean KLD, PPL ratio - 1, 1 - same top, or any
statistic of its record, such as kld-p99.9, the figure model cards quote)
against its size or bits per weight, log-scale y with error bars and
labelled points, the Pareto frontier (the quants no smaller quant beats)
joined and marked; or its task accuracy (HellaSwag, Winogrande, multiple
choice, from task records) with the Wilson 95 % interval as error bars.
"cdf": each quant's per-token KLD distribution, which shows the damaged tail
an average hides.
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


def _any_stat(key: str):
    def get(r: QuantRecord):
        if not r.has_kld or key not in r.stats:
            return None
        unc = r.stats.get(key + "_unc", 0.0)
        return r.stats[key], (unc, unc)
    return get


# y axis: label, value and (lower, upper) error of a record (None: not in it),
# whether a log scale suits it, whether larger is better
Y_AXES = {
    "kld": ("Mean KLD (nats)", _stat("kld_mean", "kld_mean_unc"), True, False),
    "ppl-ratio": ("PPL(Q)/PPL(base) - 1", _stat("ppl_ratio", "ppl_ratio_unc", minus_one=True),
                  True, False),
    "same-top": ("1 - same top", _stat("same_top", "same_top_unc", complement=True), True,
                 False),
    "hellaswag": ("HellaSwag acc_norm (%)", _accuracy("hellaswag"), False, True),
    "winogrande": ("Winogrande accuracy (%)", _accuracy("winogrande"), False, True),
    "mc": ("Multiple-choice accuracy (%)", _accuracy("multiple-choice"), False, True),
}
# Statistics where more is closer to the base (agreement, overlap, correlation).
_LARGER_IS_BETTER = ("same_top", "top", "cor_")


def y_axis(y: str):
    """(label, getter, log scale, larger is better) for --y: a named axis, or
    any statistic of a record by its name with - or _ (kld-p99.9 is
    kld_p99_9)."""
    if y in Y_AXES:
        return Y_AXES[y]
    key = y.replace("-", "_").replace(".", "_")
    return (y, _any_stat(key), not key.startswith(("dp_", "cor_", "ln_")),
            key.startswith(_LARGER_IS_BETTER))


def pareto_front(points, larger_is_better: bool):
    """Indices of the points (x, y) that no point of smaller or equal x beats
    in y, in order of x: the quants worth their size."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]
                                                      * (-1 if larger_is_better else 1)))
    front, best = [], None
    for i in order:
        y = points[i][1]
        if best is None or (y > best if larger_is_better else y < best):
            front.append(i)
            best = y
    return front
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
    ylabel, get, log_scale, larger_is_better = y_axis(y)
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
        raise ValueError(f"none of the records has what --y {y} plots (named axes: "
                         f"{', '.join(Y_AXES)}; or a statistic of the records, such as "
                         f"kld-p99.9 or dp-rms)")
    xs, ys, errs, names = zip(*pts)
    ax.errorbar(xs, ys, yerr=np.array(errs).T, fmt="o", capsize=3, mfc="none",
                label="quant")
    front = pareto_front(list(zip(xs, ys)), larger_is_better)
    ax.plot([xs[i] for i in front], [ys[i] for i in front], "o-", color="C1",
            label="Pareto frontier (no smaller quant is better)")
    ax.legend(fontsize=8)
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
