"""JSON records of a scoring run, the input of reports.

A record holds every statistic, the run's shape, what was compared (file
names, sizes, bits per weight), a fingerprint of the evaluated tokens (so
records of different texts or bases are never mixed) and quantkl's version.
The per-token arrays go to a sidecar ``.npz`` beside it, so paired
comparisons between records stay exact.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zipfile
from typing import Any, Dict, Optional

import numpy as np

from .stats import KLDResult

RECORD_VERSION = 1


def tokens_fingerprint(tokens: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tokens, np.int32).tobytes()).hexdigest()


def file_entry(path: str) -> Dict[str, Any]:
    return {"file": os.path.basename(path), "path": os.path.abspath(path),
            "size_bytes": os.path.getsize(path)}


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


def sidecar_path(path: str) -> str:
    """The per-token arrays' file beside a record: OUT.json -> OUT.npz."""
    return os.path.splitext(path)[0] + ".npz"


def check_record_path(path: str, force: bool = False) -> None:
    """Refuse, before any work, a record path that cannot be written whole:
    a directory, one whose sidecar would be the record itself (X.npz), or an
    existing record without ``force``."""
    from .dumpfile import check_output_path
    check_output_path(path)
    if sidecar_path(path) == path:
        raise ValueError(f"{path}: a record is JSON, its per-token arrays go to a .npz beside it; "
                         f"name the record OUT.json")
    check_output_path(sidecar_path(path))
    if os.path.exists(path) and not force:
        raise ValueError(f"{path} exists; pass --force to overwrite it")


def write_record(path: str, result: KLDResult, meta: Dict[str, Any], force: bool = True) -> str:
    """Write ``path`` (JSON) and its ``.npz`` sidecar; returns the sidecar's path.

    Both are written to ``.partial`` files and renamed only when both are
    whole: a full disk or an error leaves neither half behind."""
    from . import __version__
    check_record_path(path, force)
    sidecar = sidecar_path(path)
    record = {"record_version": RECORD_VERSION, "quantkl_version": __version__,
              "mode": result.mode, "count": result.count}
    record.update(meta)
    record["statistics"] = result.to_dict()
    record["per_token_summary"] = per_token_summary(result)
    record["per_token_file"] = os.path.basename(sidecar)
    partials = [sidecar + ".partial", path + ".partial"]
    try:
        with named_errors(partials[0]), open(partials[0], "wb") as f:  # numpy adds no suffix
            np.savez_compressed(f, kld=result.kld, nll=result.nll, nll_base=result.nll_base,
                                rank=result.rank, chunk_ends=np.asarray(result.chunk_ends, np.int64),
                                top_base=result.top_base, top_other=result.top_other)
        with named_errors(partials[1]), open(partials[1], "w") as f:
            json.dump(record, f, indent=2, allow_nan=True)
            f.write("\n")
        os.replace(partials[0], sidecar)
        os.replace(partials[1], path)
    except BaseException:
        for p in partials:
            if os.path.exists(p):
                os.unlink(p)
        raise
    return sidecar


@contextlib.contextmanager
def named_errors(path: str):
    """OSErrors raised deep inside a writer (numpy's zip files drop the file
    name) come out naming the file being written."""
    try:
        yield
    except OSError as e:
        if e.filename:
            raise
        raise OSError(e.errno, e.strerror or str(e), path) from None


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


def read_record(path: str) -> Dict[str, Any]:
    """A record as a dict; raises ValueError naming what is wrong."""
    from .dumpfile import regular_file_size
    regular_file_size(path, "record")
    try:
        with open(path) as f:
            record = json.load(f)
    except OSError as e:
        raise ValueError(f"{path}: cannot read record: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a quantkl JSON record ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a quantkl JSON record (binary data)") from None
    check_schema(path, record)
    return record


def load_result(path: str, record: Optional[Dict[str, Any]] = None) -> KLDResult:
    """The full per-token result behind a record, from its sidecar."""
    record = record or read_record(path)
    sidecar = os.path.join(os.path.dirname(os.path.abspath(path)),
                           os.path.basename(record["per_token_file"]))
    try:
        with np.load(sidecar) as z:
            arrays = {k: z[k] for k in ("kld", "nll", "nll_base", "rank", "chunk_ends",
                                        "top_base", "top_other")}
    except OSError:
        raise ValueError(f"{path}: its per-token file {sidecar} is missing") from None
    except (KeyError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: its per-token file {sidecar} is damaged ({e})") from None
    n = record["count"]
    for name, a in arrays.items():
        if name != "chunk_ends" and (a.ndim != 1 or len(a) != n):
            raise ValueError(f"{path}: {sidecar} holds {a.shape} for '{name}', the record "
                             f"counts {n} tokens")
    return KLDResult(arrays["kld"], arrays["nll"], arrays["nll_base"], arrays["rank"],
                     record["mode"], chunk_ends=arrays["chunk_ends"].tolist(),
                     top_base=arrays["top_base"], top_other=arrays["top_other"])
