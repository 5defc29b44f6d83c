"""JSON records of a scoring run, the input of reports.

A record holds every statistic, the run's shape, what was compared (file
names, sizes, bits per weight), a fingerprint of the evaluated tokens (so
records of different texts or bases are never mixed) and quantkl's version.
The per-token arrays go to a sidecar ``.npz`` beside it, so paired
comparisons between records stay exact.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from typing import Any, Dict, Optional, Sequence

import numpy as np

from .files import check_output_path, named_errors, regular_file_size, written_whole
from .result import KLDResult

RECORD_VERSION = 1


def tokens_fingerprint(tokens: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tokens, np.int32).tobytes()).hexdigest()


def file_entry(path: str) -> Dict[str, Any]:
    return {"file": os.path.basename(path), "path": os.path.abspath(path),
            "size_bytes": os.path.getsize(path)}


def statistics_dict(result: KLDResult) -> Dict[str, Any]:
    """A result's statistics as plain floats (JSON-ready), with its mode: a
    record's "statistics" field."""
    d: Dict[str, Any] = {"mode": result.mode}
    d.update(result.statistics())
    return d


def per_token_frame(result: KLDResult):
    """The per-token arrays as a pandas DataFrame (one row per token)."""
    import pandas as pd
    columns = {"kld": result.kld, "nll": result.nll, "nll_base": result.nll_base,
               "dp": result.dp, "rank": result.rank, "top_base": result.top_base,
               "top_other": result.top_other}
    if result.bounded:
        columns["kld_hi"] = result.kld_hi
    return pd.DataFrame(columns)


def per_token_summary(result: KLDResult) -> Dict[str, Any]:
    """Mean, spread and extremes of the per-token arrays (KLD in nats, Δp as probability)."""
    out: Dict[str, Any] = {}
    for name, arr in (("kld", result.kld), ("dp", result.dp)):
        finite = arr[np.isfinite(arr)]
        out[name] = {"mean": float(np.mean(arr)), "std": float(np.std(arr)),
                     "min": float(np.min(arr)), "max": float(np.max(arr)),
                     "non_finite": int(arr.size - finite.size)}
    out["rank_histogram"] = np.bincount(result.rank.astype(np.int64), minlength=11).tolist()
    return out


def score_metadata(dump, model_path: str, runner, info, save: Optional[str]) -> Dict[str, Any]:
    """What a record of ``quantkl score`` says besides its statistics: the
    run's shape, the base and its input, the model and how it ran, the
    saved dump, where the run stopped and its timing."""
    from .inputs import read_description
    model = file_entry(model_path)
    model.update(n_params=runner.n_params, model_size_bytes=runner.size_bytes,
                 bits_per_weight=runner.bits_per_weight, description=runner.description)
    return {"kind": "score", "n_ctx": dump.n_ctx, "n_chunk": dump.n_chunk,
            "n_vocab": dump.n_vocab, "tokens_sha256": tokens_fingerprint(dump.tokens),
            "base": file_entry(dump.path), "input": read_description(dump.path), "model": model,
            "model_options": runner.settings(),
            "saved_dump": file_entry(save) if save else None, **info.to_dict(),
            "timing": info.timing()}


def compare_metadata(base, other_path: str, info) -> Dict[str, Any]:
    """The same for ``quantkl compare``: two dumps, no model."""
    from .inputs import read_description
    return {"kind": "compare", "n_ctx": base.n_ctx, "n_chunk": base.n_chunk,
            "n_vocab": base.n_vocab, "tokens_sha256": tokens_fingerprint(base.tokens),
            "base": file_entry(base.path), "input": read_description(base.path), "model": None,
            "other": file_entry(other_path), **info.to_dict(), "timing": info.timing()}


def finished_run(path: str, dump, mode: str, chunks: Sequence[int]) -> bool:
    """Whether ``path`` is a whole record of a model against this dump, in
    this mode over these chunks, its arrays beside it: a run that resuming
    need not repeat."""
    try:
        rec = read_record(path)
    except ValueError:
        return False
    base = rec.get("base") or {}
    return (rec.get("tokens_sha256") == tokens_fingerprint(dump.tokens)
            and base.get("file") == os.path.basename(dump.path)
            and base.get("size_bytes") == dump.size and rec.get("mode") == mode
            and rec.get("chunks") == list(chunks)
            and os.path.exists(os.path.join(os.path.dirname(path), rec["per_token_file"])))


# Per-token arrays a record's sidecar holds when its result had them (records
# written before top-k overlap and the base's confidence were kept lack them).
OPTIONAL_ARRAYS = ("p_top", "overlap", "token", "rkl", "js", "kld_hi", "rkl_hi", "js_hi")


def sidecar_path(path: str) -> str:
    """The per-token arrays' file beside a record: OUT.json -> OUT.npz."""
    return os.path.splitext(path)[0] + ".npz"


def check_record_path(path: str, force: bool = False) -> None:
    """Refuse, before any work, a record path that cannot be written whole:
    a directory, one whose sidecar would be the record itself (X.npz), or an
    existing record without ``force``."""
    if sidecar_path(path) == path:
        raise ValueError(f"{path}: a record is JSON, its per-token arrays go to a .npz beside it; "
                         f"name the record OUT.json")
    check_output_path(sidecar_path(path))
    check_output_path(path, force)


def record_header(kind: str) -> Dict[str, Any]:
    """The fields every record starts with, whatever its kind (score,
    compare, tasks): the schema's version, the writer's and the kind."""
    from . import __version__
    return {"record_version": RECORD_VERSION, "quantkl_version": __version__, "kind": kind}


def build_record(result: KLDResult, meta: Dict[str, Any], sidecar: str) -> Dict[str, Any]:
    """The record's JSON content: identity, the run's ``meta`` (its "kind"
    among them), every statistic."""
    record = record_header(meta.get("kind", "score"))
    record.update(mode=result.mode, count=result.count, topk=list(result.topk))
    record.update(meta)
    record["statistics"] = statistics_dict(result)
    record["per_token_summary"] = per_token_summary(result)
    record["per_token_file"] = os.path.basename(sidecar)
    return record


def write_record(path: str, result: KLDResult, meta: Dict[str, Any], force: bool = True) -> str:
    """Write ``path`` (JSON) and its ``.npz`` sidecar (written whole or not at
    all); returns the sidecar's path."""
    check_record_path(path, force)
    sidecar = sidecar_path(path)
    record = build_record(result, meta, sidecar)
    write_json_and_arrays(path, record, sidecar, kld=result.kld, nll=result.nll,
                          nll_base=result.nll_base, rank=result.rank,
                          chunk_ends=np.asarray(result.chunk_ends, np.int64),
                          top_base=result.top_base, top_other=result.top_other,
                          **{name: getattr(result, name) for name in OPTIONAL_ARRAYS
                             if getattr(result, name) is not None})
    return sidecar


def write_json_and_arrays(path: str, record: Dict[str, Any], sidecar: str,
                          **arrays: np.ndarray) -> None:
    """A JSON record and its .npz of arrays, each written to a ``.partial``
    file and both renamed only when both are whole: a full disk or an error
    leaves neither half behind."""
    with written_whole(sidecar, path) as (arrays_partial, json_partial):
        with named_errors(arrays_partial), open(arrays_partial, "wb") as f:  # numpy adds no suffix
            np.savez_compressed(f, **arrays)
        with named_errors(json_partial), open(json_partial, "w") as f:
            json.dump(record, f, indent=2, allow_nan=True)
            f.write("\n")


# Fields every record has, and their types; reports read no others unchecked.
_FIELDS = {"record_version": int, "mode": str, "count": int, "statistics": dict,
           "per_token_file": str}
_STATISTICS = ("count", "ppl", "ppl_unc", "ppl_base", "ppl_base_unc", "cor_ln_ppl",
               "ln_ppl_ratio", "ln_ppl_ratio_unc", "ppl_ratio", "ppl_ratio_unc", "ppl_diff",
               "ppl_diff_unc", "kld_mean", "kld_mean_unc", "dp_mean", "dp_mean_unc", "dp_rms",
               "dp_rms_unc", "same_top", "same_top_unc")


def check_schema(path: str, record: Any) -> None:
    """ValueError naming the first field a quantkl record lacks or has wrong."""
    if not isinstance(record, dict) or "record_version" not in record:
        raise ValueError(f"{path}: not a quantkl JSON record")
    for key, kind in _FIELDS.items():
        if not isinstance(record.get(key), kind) or isinstance(record.get(key), bool):
            raise ValueError(f"{path}: not a quantkl record: field '{key}' is "
                             f"{'missing' if key not in record else 'not ' + kind.__name__}")
    if record["mode"] not in ("llama", "exact"):
        raise ValueError(f"{path}: field 'mode' is {record['mode']!r}, not llama or exact")
    stats = record["statistics"]
    for key in _STATISTICS:
        value = stats.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{path}: field 'statistics.{key}' is "
                             f"{'missing' if key not in stats else 'not a number'}")
    for key in ("model", "base", "other"):
        if record.get(key) is not None and not isinstance(record[key], dict):
            raise ValueError(f"{path}: field '{key}' is not an object")


def read_json_record(path: str, what: str = "quantkl JSON record") -> Any:
    """A record file's JSON (a KLD or a task record); ValueError naming the
    file and what is wrong with it."""
    regular_file_size(path, "record")
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        raise ValueError(f"{path}: cannot read record: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a {what} ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a {what} (binary data)") from None


def read_sidecar(path: str, record: Dict[str, Any], field: str, what: str,
                 names: Sequence[str], optional: Sequence[str] = ()) -> Dict[str, np.ndarray]:
    """The arrays ``names`` (and those of ``optional`` it holds) of the .npz
    that ``record[field]`` names beside the record at ``path``; ``what`` names
    that file in errors."""
    sidecar = os.path.join(os.path.dirname(os.path.abspath(path)),
                           os.path.basename(record[field]))
    try:
        with np.load(sidecar) as z:
            arrays = {k: z[k] for k in names}
            arrays.update({k: z[k] for k in optional if k in z.files})
    except OSError:
        raise ValueError(f"{path}: its {what} {sidecar} is missing") from None
    except (KeyError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: its {what} {sidecar} is damaged ({e})") from None
    return arrays


def read_record(path: str) -> Dict[str, Any]:
    """A record as a dict; raises ValueError naming what is wrong."""
    record = read_json_record(path)
    check_schema(path, record)
    return record


def load_result(path: str, record: Optional[Dict[str, Any]] = None) -> KLDResult:
    """The full per-token result behind a record, from its sidecar."""
    record = record or read_record(path)
    arrays = read_sidecar(path, record, "per_token_file", "per-token file",
                          ("kld", "nll", "nll_base", "rank", "chunk_ends", "top_base",
                           "top_other"), OPTIONAL_ARRAYS)
    extra = {k: arrays.pop(k) for k in OPTIONAL_ARRAYS if k in arrays}
    sidecar = record["per_token_file"]
    n = record["count"]
    for name, a in extra.items():
        if len(a) != n or a.ndim != (2 if name == "overlap" else 1):
            raise ValueError(f"{path}: {sidecar} holds {a.shape} for '{name}', the record "
                             f"counts {n} tokens")
    for name, a in arrays.items():
        if name != "chunk_ends" and (a.ndim != 1 or len(a) != n):
            raise ValueError(f"{path}: {sidecar} holds {a.shape} for '{name}', the record "
                             f"counts {n} tokens")
    topk = record.get("topk", [1, 5, 10])
    if not (isinstance(topk, list) and topk and all(isinstance(k, int) and 1 <= k <= 10
                                                    for k in topk)):
        raise ValueError(f"{path}: field 'topk' is not a list of whole numbers in 1..10")
    return KLDResult(arrays["kld"], arrays["nll"], arrays["nll_base"], arrays["rank"],
                     record["mode"], topk, chunk_ends=arrays["chunk_ends"].tolist(),
                     top_base=arrays["top_base"], top_other=arrays["top_other"], **extra)


# What must be equal in shards of one run, and the name a user knows it by.
_SHARD_IDENTITY = (("kind", "kind"), ("mode", "mode"), ("tokens_sha256", "tokens"),
                   ("n_ctx", "context"), ("n_chunk", "dump length"), ("n_vocab", "vocabulary"),
                   ("topk", "top-k list"))


def _file_identity(entry: Any) -> Any:
    return (entry.get("file"), entry.get("size_bytes")) if isinstance(entry, dict) else None


def merge_records(paths: Sequence[str], out: str, force: bool = False) -> Dict[str, Any]:
    """Merge shard records (``--chunks A:B`` runs of one quant against one
    base) into the record scoring their union would have written: the
    per-token arrays are concatenated in chunk order and every statistic
    recomputed from them, so the figures agree to the last digit. Refuses
    shards of other runs, overlapping shards and gaps. Returns the record."""
    if len(paths) < 1:
        raise ValueError("no records to merge")
    check_record_path(out, force)
    shards = []
    for p in paths:
        rec = read_record(p)
        c = rec.get("chunks_scored")
        if not (isinstance(c, list) and len(c) == 2 and all(isinstance(x, int) for x in c)):
            c = [0, rec.get("n_chunk")]
            if not isinstance(c[1], int):
                raise ValueError(f"{p}: the record says neither its chunks nor n_chunk")
        shards.append((c[0], c[1], p, rec))
    shards.sort(key=lambda s: s[:2])
    _, _, p0, r0 = shards[0]
    for a, b, p, rec in shards[1:]:
        for key, what in _SHARD_IDENTITY:
            if rec.get(key) != r0.get(key):
                raise ValueError(f"{p} and {p0} differ in {what} ({rec.get(key)!r} vs "
                                 f"{r0.get(key)!r}): not shards of one run")
        for key in ("base", "model", "other"):
            if _file_identity(rec.get(key)) != _file_identity(r0.get(key)):
                raise ValueError(f"{p} and {p0} were scored with different {key} files: not "
                                 f"shards of one run")
    for (a1, b1, p1, _), (a2, b2, p2, _) in zip(shards, shards[1:]):
        if a2 < b1:
            raise ValueError(f"{p1} (chunks {a1}:{b1}) and {p2} (chunks {a2}:{b2}) overlap")
        if a2 > b1:
            raise ValueError(f"chunks {b1}:{a2} are missing between {p1} and {p2}")
    total = KLDResult.concat([load_result(p, rec) for _, _, p, rec in shards])
    a, b = shards[0][0], shards[-1][1]
    meta = {k: v for k, v in r0.items()
            if k not in ("record_version", "quantkl_version", "mode", "count", "topk",
                         "statistics", "per_token_summary", "per_token_file", "timing")}
    meta.update(chunks=[a, b], chunks_scored=[a, b],
                stop_reason=f"merged from {len(shards)} shards",
                merged_from=[{"file": os.path.basename(p), "chunks_scored": [x, y]}
                             for x, y, p, _ in shards])
    timings = [rec.get("timing") for *_, rec in shards]
    if all(isinstance(t, dict) for t in timings):
        meta["timing"] = {k: sum(float(t.get(k, 0.0)) for t in timings) for k in timings[0]}
    write_record(out, total, meta, force)
    return read_record(out)
