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


def write_record(path: str, result: KLDResult, meta: Dict[str, Any]) -> str:
    """Write ``path`` (JSON) and its ``.npz`` sidecar; returns the sidecar's path."""
    from . import __version__
    sidecar = os.path.splitext(path)[0] + ".npz"
    record = {"record_version": RECORD_VERSION, "quantkl_version": __version__,
              "mode": result.mode, "count": result.count}
    record.update(meta)
    record["statistics"] = result.to_dict()
    record["per_token_summary"] = per_token_summary(result)
    record["per_token_file"] = os.path.basename(sidecar)
    np.savez_compressed(sidecar, kld=result.kld, nll=result.nll, nll_base=result.nll_base,
                        rank=result.rank, chunk_ends=np.asarray(result.chunk_ends, np.int64),
                        top_base=result.top_base, top_other=result.top_other)
    tmp = path + ".partial"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2, allow_nan=True)
        f.write("\n")
    os.replace(tmp, path)
    return sidecar


def read_record(path: str) -> Dict[str, Any]:
    """A record as a dict; raises ValueError naming what is wrong."""
    try:
        with open(path) as f:
            record = json.load(f)
    except OSError as e:
        raise ValueError(f"{path}: cannot read record: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a quantkl JSON record ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a quantkl JSON record (binary data)") from None
    if not isinstance(record, dict) or "statistics" not in record or "record_version" not in record:
        raise ValueError(f"{path}: not a quantkl JSON record")
    return record


def load_result(path: str, record: Optional[Dict[str, Any]] = None) -> KLDResult:
    """The full per-token result behind a record, from its sidecar."""
    record = record or read_record(path)
    sidecar = os.path.join(os.path.dirname(os.path.abspath(path)), record["per_token_file"])
    try:
        z = np.load(sidecar)
    except OSError:
        raise ValueError(f"{path}: its per-token file {sidecar} is missing") from None
    return KLDResult(z["kld"], z["nll"], z["nll_base"], z["rank"], record["mode"],
                     chunk_ends=z["chunk_ends"].tolist(), top_base=z["top_base"],
                     top_other=z["top_other"])
