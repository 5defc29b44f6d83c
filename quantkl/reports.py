"""Reports across quants from JSON records: the comparison table and paired tests.

The table follows the community's published quant comparisons: size,
PPL, the KLD and Δp distributions, RMS Δp and same-top, then per-GB figures,
one column per quant, sorted by mean KLD. Records must come from the same base
and the same tokens; anything else is refused rather than mixed. Task records
(quantkl tasks) add accuracy rows: each goes to the quant scored from the same
model file, or to a column of its own (the base model's accuracy, say); all
records of one task must come from the same task file (its SHA-256) and the
same tasks.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .records import load_result, read_record
from .result import KLDResult


@dataclass
class QuantRecord:
    """One scored quant: its record, name and size."""
    path: str
    record: Dict[str, Any]
    name: str
    size_bytes: Optional[int]
    bits_per_weight: Optional[float]
    _result: Optional[KLDResult] = field(default=None, repr=False)
    tasks: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # task -> task record

    @property
    def has_kld(self) -> bool:
        return "statistics" in self.record

    @property
    def stats(self) -> Dict[str, Any]:
        return self.record["statistics"]

    @property
    def size_gb(self) -> Optional[float]:
        return None if self.size_bytes is None else self.size_bytes / 1e9

    def result(self) -> KLDResult:
        """The per-token arrays behind the record (from its .npz sidecar)."""
        if not self.has_kld:
            raise ValueError(f"{self.path} is a task record: it has no per-token KLD")
        if self._result is None:
            self._result = load_result(self.path, self.record)
        return self._result


def load_records(paths: Sequence[str], positions: Optional[np.ndarray] = None
                 ) -> List[QuantRecord]:
    """Read records and check they were scored against one base on the same
    tokens; task records join the quant of the same model file. positions:
    token positions (indices of the records' scored tokens) every statistic
    is restricted to."""
    from .task_records import is_task_record, read_task_record
    if not paths:
        raise ValueError("no records given")
    out: List[QuantRecord] = []
    task_records = []
    for p in paths:
        if is_task_record(p):
            task_records.append((p, read_task_record(p)[0]))
            continue
        rec = read_record(p)
        model = rec.get("model") or {}
        other = rec.get("other") or {}
        name = model.get("file") or other.get("file") or os.path.basename(p)
        out.append(QuantRecord(p, rec, os.path.splitext(name)[0], model.get("size_bytes"),
                               model.get("bits_per_weight")))
    names = [q.name for q in out]
    for q in out:  # one model run several ways (KV cache types, say): name each by its record
        if names.count(q.name) > 1:
            q.name = os.path.splitext(os.path.basename(q.path))[0]
    if out:
        check_comparable(out)
    if positions is not None:
        for q in out:
            _restrict(q, positions)
    _attach_tasks(out, task_records)
    return out


def read_positions(path: str) -> np.ndarray:
    """Token positions from a text file: whole numbers (0-based indices of a
    record's scored tokens) and half-open ranges A:B, separated by spaces,
    commas or newlines; # starts a comment. Sorted, without repeats."""
    from .files import regular_file_size
    regular_file_size(path, "positions file")
    picked = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for ln, line in enumerate(f, 1):
            for item in line.split("#", 1)[0].replace(",", " ").split():
                try:
                    if ":" in item:
                        a, b = (int(v) for v in item.split(":", 1))
                        if not 0 <= a <= b:
                            raise ValueError
                        picked.extend(range(a, b))
                    else:
                        v = int(item)
                        if v < 0:
                            raise ValueError
                        picked.append(v)
                except ValueError:
                    raise ValueError(f"{path}: line {ln}: {item!r} is not a position (a whole "
                                     f"number from 0) or a range A:B") from None
    if not picked:
        raise ValueError(f"{path}: no positions in the file")
    return np.unique(np.asarray(picked, np.int64))


def _restrict(q: QuantRecord, positions: np.ndarray) -> None:
    full = q.result()
    if positions[-1] >= full.count:
        raise ValueError(f"position {int(positions[-1])} is past the {full.count} tokens "
                         f"{q.path} scored")
    mask = np.zeros(full.count, bool)
    mask[positions] = True
    sub = full.subset(mask)
    q.record = {**q.record, "statistics": sub.to_dict(), "positions": len(positions)}
    q._result = sub


@dataclass
class Breakdown:
    """Mean KLD and same top by bucket (of the base's confidence or the scored
    token's class), one column pair per quant."""
    by: str
    buckets: List[str]
    counts: List[int]
    quants: List[str]
    rows: List[List[Dict[str, float]]]  # [quant][bucket]

    def to_dict(self) -> Dict[str, Any]:
        return {"by": self.by, "buckets": self.buckets, "counts": self.counts,
                "quants": {q: r for q, r in zip(self.quants, self.rows)}}

    def render(self, fmt: str = "markdown") -> str:
        if fmt == "json":
            return json.dumps(self.to_dict(), indent=2) + "\n"
        label = "Base top-1 p" if self.by == "confidence" else "Token class"
        header = [label, "Tokens"]
        for q in self.quants:
            header += [f"{q} KLD mean", f"{q} same top"]
        body = []
        for i, bucket in enumerate(self.buckets):
            line = [bucket, str(self.counts[i])]
            for rows in self.rows:
                r = rows[i]
                if not r["count"]:
                    line += ["-", "-"]
                    continue
                line += [f"{r['kld_mean']:.6f} ± {r['kld_mean_unc']:.6f}",
                         f"{100 * r['same_top']:.2f} ± {100 * r['same_top_unc']:.2f} %"]
            body.append(line)
        return render_rows(header, body, fmt)


def breakdown(records: Sequence[QuantRecord], by: str, model: Optional[str] = None
              ) -> Breakdown:
    """Mean KLD and same top of each KLD record by the base's top-1
    probability (by="confidence") or by the scored token's class (by="class",
    classes from the vocabulary of model, by default the records' model)."""
    recs = sorted((r for r in records if r.has_kld), key=lambda r: r.stats["kld_mean"])
    if not recs:
        raise ValueError("--by needs KLD records (from quantkl score or compare)")
    results = [r.result() for r in recs]
    if by == "confidence":
        rows = [res.by_confidence() for res in results]
    elif by == "class":
        from .runner import Vocabulary
        from .tokenclass import TOKEN_CLASSES, token_classes
        if any(res.token is None for res in results):
            raise ValueError("a record has no token ids (written before quantkl kept them): "
                             "score it again for --by class")
        model = model or next(((r.record.get("model") or {}).get("path") for r in recs
                               if (r.record.get("model") or {}).get("path")), None)
        if not model or not os.path.exists(model):
            raise ValueError("--by class reads token text from a model's vocabulary: give "
                             "--model MODEL.gguf")
        classes = token_classes(Vocabulary(model), results[0].token)
        rows = [res.by_class(classes, TOKEN_CLASSES) for res in results]
    else:
        raise ValueError(f"unknown breakdown {by!r}: confidence or class")
    return Breakdown(by, [r["bucket"] for r in rows[0]], [r["count"] for r in rows[0]],
                     [r.name for r in recs], rows)


def _model_key(record: Dict[str, Any]) -> Optional[Tuple[Any, Any]]:
    model = record.get("model") or {}
    return (model["file"], model.get("size_bytes")) if model.get("file") else None


def _attach_tasks(quants: List[QuantRecord], task_records) -> None:
    first: Dict[str, Tuple[str, Dict[str, Any]]] = {}
    by_model = {_model_key(q.record): q for q in quants if _model_key(q.record)}
    for path, rec in task_records:
        task = rec["task"]
        if task in first:
            p0, r0 = first[task]
            if (rec.get("task_file") or {}).get("sha256") != (r0.get("task_file") or {}).get(
                    "sha256"):
                raise ValueError(f"{path} and {p0} scored {task} on different task files: "
                                 f"not comparable")
            if rec["count"] != r0["count"]:
                raise ValueError(f"{path} scored {rec['count']} {task} tasks, {p0} "
                                 f"{r0['count']}: not comparable")
        else:
            first[task] = (path, rec)
        key = _model_key(rec)
        q = by_model.get(key)
        if q is None:
            model = rec.get("model") or {}
            name = os.path.splitext(model.get("file") or os.path.basename(path))[0]
            q = QuantRecord(path, {"model": model}, name, model.get("size_bytes"),
                            model.get("bits_per_weight"))
            quants.append(q)
            if key:
                by_model[key] = q
        if task in q.tasks:
            raise ValueError(f"two {task} records for {q.name}: {q.tasks[task]['path']} and "
                             f"{path}")
        q.tasks[task] = {**rec, "path": path}


def scored_chunks(record: Dict[str, Any]) -> Tuple[int, int]:
    """The chunk range a record covers (records before --chunks covered all)."""
    c = record.get("chunks_scored")
    if isinstance(c, list) and len(c) == 2:
        return int(c[0]), int(c[1])
    return 0, int(record.get("n_chunk", 0))


def check_comparable(records: Sequence[QuantRecord]) -> None:
    """Refuse records of different bases, tokens or modes."""
    first = records[0]
    for r in records[1:]:
        for key, what in (("tokens_sha256", "tokens"), ("mode", "mode")):
            if r.record.get(key) != first.record.get(key):
                raise ValueError(f"{r.path} and {first.path} were scored on different {what}; "
                                 f"records must share base, tokens and mode to be compared")
        c1, c2 = scored_chunks(first.record), scored_chunks(r.record)
        if c1 != c2:
            raise ValueError(f"{r.path} scored chunks {c2[0]}:{c2[1]}, {first.path} chunks "
                             f"{c1[0]}:{c1[1]}: not comparable (merge shards first)")
        b1, b2 = first.record.get("base", {}), r.record.get("base", {})
        if (b1.get("file"), b1.get("size_bytes")) != (b2.get("file"), b2.get("size_bytes")):
            raise ValueError(f"{r.path} was scored against base {b2.get('file')}, {first.path} "
                             f"against {b1.get('file')}: not comparable")


def _fmt(v: Optional[float], digits: int, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{100 * v:.{digits}f}%" if pct else f"{v:.{digits}f}"


def _logit(p: float) -> float:
    return math.log(p / (1 - p)) if 0 < p < 1 else float("nan")


def _per_gb(value: Optional[float], r: QuantRecord) -> Optional[float]:
    if value is None or not r.size_gb or not math.isfinite(value):
        return None
    return value / r.size_gb


# (label, function of a record giving a number, digits, percent?)
MEASUREMENTS: List[Tuple[str, Any, int, bool]] = [
    ("Size (GB)", lambda r: r.size_gb, 3, False),
    ("Bits per weight", lambda r: r.bits_per_weight, 2, False),
    ("Mean PPL", lambda r: r.stats["ppl"], 4, False),
    ("Mean PPL(Q)/PPL(base)", lambda r: r.stats["ppl_ratio"], 4, False),
    ("KLD mean", lambda r: r.stats["kld_mean"], 6, False),
    ("KLD mean uncertainty", lambda r: r.stats["kld_mean_unc"], 6, False),
    ("Reverse KLD mean", lambda r: r.stats["rkl_mean"], 6, False),
    ("Jensen-Shannon mean", lambda r: r.stats["js_mean"], 6, False),
    ("KLD max", lambda r: r.stats["kld_max"], 4, False),
    ("KLD 99.9%", lambda r: r.stats["kld_p99_9"], 4, False),
    ("KLD 99%", lambda r: r.stats["kld_p99"], 4, False),
    ("KLD median", lambda r: r.stats["kld_median"], 6, False),
    ("KLD 10%", lambda r: r.stats["kld_p10"], 6, False),
    ("KLD 5%", lambda r: r.stats["kld_p5"], 6, False),
    ("KLD 1%", lambda r: r.stats["kld_p1"], 6, False),
    ("Δp mean", lambda r: r.stats["dp_mean"], 2, True),
    ("Δp max", lambda r: r.stats["dp_max"], 2, True),
    ("Δp 99.9%", lambda r: r.stats["dp_p99_9"], 2, True),
    ("Δp 99%", lambda r: r.stats["dp_p99"], 2, True),
    ("Δp 95%", lambda r: r.stats["dp_p95"], 2, True),
    ("Δp 90%", lambda r: r.stats["dp_p90"], 2, True),
    ("Δp 75%", lambda r: r.stats["dp_p75"], 2, True),
    ("Δp median", lambda r: r.stats["dp_median"], 2, True),
    ("Δp 25%", lambda r: r.stats["dp_p25"], 2, True),
    ("Δp 10%", lambda r: r.stats["dp_p10"], 2, True),
    ("Δp 5%", lambda r: r.stats["dp_p5"], 2, True),
    ("Δp 1%", lambda r: r.stats["dp_p1"], 2, True),
    ("Δp 0.1%", lambda r: r.stats["dp_p0_1"], 2, True),
    ("Δp min", lambda r: r.stats["dp_min"], 2, True),
    ("RMS Δp", lambda r: r.stats["dp_rms"], 2, True),
    ("Same top", lambda r: r.stats["same_top"], 2, True),
    ("Top-5 overlap", lambda r: r.stats["top5_overlap_mean"], 2, True),
    ("Top-10 overlap", lambda r: r.stats["top10_overlap_mean"], 2, True),
    ("Base top-1 p", lambda r: r.stats["p_top_mean"], 2, True),
    ("1/PPL per GB", lambda r: _per_gb(1 / r.stats["ppl"], r), 4, False),
    ("1/KLD per GB", lambda r: _per_gb(1 / r.stats["kld_mean"] if r.stats["kld_mean"] > 0
                                       else None, r), 3, False),
    ("Same top per GB", lambda r: _per_gb(r.stats["same_top"], r), 4, False),
    ("logit(Same top) per GB", lambda r: _per_gb(_logit(r.stats["same_top"]), r), 4, False),
]


def _kv_cache(r: QuantRecord) -> Optional[str]:
    o = r.record.get("model_options") or {}
    if "cache_type_k" not in o:
        return None
    return f"{o['cache_type_k']}/{o['cache_type_v']}"


def _flash_attn(r: QuantRecord) -> Optional[str]:
    o = r.record.get("model_options") or {}
    if "flash_attn" not in o:
        return None
    used = o.get("flash_attn_used")
    return o["flash_attn"] + ("" if used is None else f" ({'on' if used else 'off'})")


def _setting(r: QuantRecord, key: str) -> Optional[str]:
    v = r.record.get(key, (r.record.get("model_options") or {}).get(key))
    return None if v is None else str(v)


# How each quant was run: (label, function of a record giving text or None).
SETTINGS: List[Tuple[str, Any]] = [
    ("Context", lambda r: _setting(r, "n_ctx")),
    ("Decode size (tokens)", lambda r: _setting(r, "decode_tokens")),
    ("KV cache K/V", _kv_cache),
    ("Flash attention", _flash_attn),
]


@dataclass
class ComparisonTable:
    """Quants (sorted by mean KLD) against the measurements of MEASUREMENTS."""
    quants: List[str]
    measurements: List[str]
    values: List[List[Any]]  # [measurement][quant]: a float, or text for a setting
    text: List[List[str]]                # the same, formatted

    def to_dict(self) -> Dict[str, Dict[str, Optional[float]]]:
        return {q: {m: self.values[i][j] for i, m in enumerate(self.measurements)}
                for j, q in enumerate(self.quants)}

    def to_pandas(self):
        """A DataFrame (measurements x quants); needs pandas."""
        import pandas as pd
        return pd.DataFrame(self.values, index=self.measurements, columns=self.quants)

    def render(self, fmt: str = "markdown", by_rows: bool = False) -> str:
        header = ["Measurement"] + self.quants
        body = [[m] + row for m, row in zip(self.measurements, self.text)]
        if by_rows:
            header = ["Quant"] + self.measurements
            body = [[q] + [row[j] for row in self.text] for j, q in enumerate(self.quants)]
        if fmt == "json":
            return json.dumps(self.to_dict(), indent=2) + "\n"
        return render_rows(header, body, fmt)


def _task_measurements(records: Sequence[QuantRecord]):
    from .tasks import TASK_NAMES
    out = []
    for task, name in TASK_NAMES.items():
        counts = {r.tasks[task]["count"] for r in records if task in r.tasks}
        if not counts:
            continue
        metric = "acc_norm" if task == "hellaswag" else "accuracy"
        out.append((f"{name} {metric} ({counts.pop()} tasks)",
                    lambda r, t=task: r.tasks[t]["accuracy"], 2, True))
        out.append((f"{name} ± (95 %)", lambda r, t=task: (r.tasks[t]["interval95"][1]
                                                           - r.tasks[t]["interval95"][0]) / 2,
                    2, True))
    return out


def render_rows(header: List[str], body: List[List[str]], fmt: str) -> str:
    """A table as markdown or CSV."""
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(header)
        w.writerows(body)
        return buf.getvalue()
    if fmt != "markdown":
        raise ValueError(f"unknown format {fmt!r}: markdown, csv or json")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body]) + "\n"


def comparison_table(records: Sequence[QuantRecord]) -> ComparisonTable:
    recs = (sorted((r for r in records if r.has_kld), key=lambda r: r.stats["kld_mean"])
            + sorted((r for r in records if not r.has_kld), key=lambda r: r.name))
    values, text, names = [], [], []
    for label, get, digits, pct in MEASUREMENTS + _task_measurements(recs):
        row = []
        for r in recs:
            try:
                v = get(r)
            except (KeyError, ZeroDivisionError, TypeError):
                v = None
            row.append(None if v is None else float(v))
        if all(v is None for v in row):
            continue  # a measurement none of these records has (KLD of task records)
        values.append(row)
        text.append([_fmt(v, digits, pct) for v in row])
        names.append(label)
    for label, get in SETTINGS:
        row = [get(r) for r in recs]
        if any(v is not None for v in row):
            values.append(row)
            text.append(["-" if v is None else v for v in row])
            names.append(label)
    return ComparisonTable([r.name for r in recs], names, values, text)


Z95 = 1.959964  # two-sided 95 % quantile of the normal distribution


@dataclass
class PairedDiff:
    """Mean per-token KLD of A minus B over the same tokens, with its paired s.e. (nats)."""
    name_a: str
    name_b: str
    count: int
    mean_a: float
    mean_b: float
    mean_diff: float
    se: float

    @property
    def z(self) -> float:
        return self.mean_diff / self.se if self.se > 0 else (0.0 if self.mean_diff == 0
                                                             else math.copysign(math.inf,
                                                                                self.mean_diff))

    @property
    def verdict(self) -> str:
        if abs(self.z) <= Z95:
            return "not distinguishable at 95 %"
        return f"{self.name_a} better" if self.mean_diff < 0 else f"{self.name_b} better"

    @property
    def tokens_needed(self) -> Optional[float]:
        """Paired tokens at which the observed mean difference would reach 95 %
        significance, if the per-token spread stays as measured: the s.e.
        shrinks as 1/sqrt(n), so n * (z95 / |z|)^2. None when it is already
        significant; inf when no difference was observed."""
        if abs(self.z) > Z95:
            return None
        if self.mean_diff == 0 or not math.isfinite(self.se):
            return math.inf
        return self.count * (Z95 / abs(self.z)) ** 2

    def format(self) -> str:
        text = (f"A = {self.name_a}: mean KLD {self.mean_a:.6f}\n"
                f"B = {self.name_b}: mean KLD {self.mean_b:.6f}\n"
                f"A - B over {self.count} paired tokens: {self.mean_diff:+.6f} ± {self.se:.6f} "
                f"nats (z = {self.z:+.2f})\n"
                f"verdict: {self.verdict}\n")
        need = self.tokens_needed
        if need is not None:
            if math.isinf(need):
                text += "no difference was observed: no number of tokens would make one significant\n"
            else:
                more = math.ceil(need) - self.count
                text += (f"to be significant at 95 % this difference needs about "
                         f"{math.ceil(need):,} paired tokens ({more:,} more, "
                         f"{need / self.count:.1f}x these), if the per-token spread holds\n")
        return text

    def to_dict(self) -> Dict[str, Any]:
        need = self.tokens_needed
        return {"a": self.name_a, "b": self.name_b, "count": self.count, "mean_a": self.mean_a,
                "mean_b": self.mean_b, "mean_diff": self.mean_diff, "se": self.se, "z": self.z,
                "verdict": self.verdict,
                "tokens_needed": None if need is None or math.isinf(need) else math.ceil(need)}


def paired_diff(a: QuantRecord, b: QuantRecord) -> PairedDiff:
    """Paired comparison of two quants scored against the same base on the same tokens."""
    check_comparable([a, b])
    ka, kb = a.result().kld, b.result().kld
    if len(ka) != len(kb):
        raise ValueError(f"{a.path} has {len(ka)} tokens, {b.path} has {len(kb)}")
    d = ka - kb
    n = len(d)
    se = float(np.std(d, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return PairedDiff(a.name, b.name, n, float(ka.mean()), float(kb.mean()), float(d.mean()), se)
