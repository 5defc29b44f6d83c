"""float32 logits -> llama.cpp uint16 rows, byte-compatible with llama-perplexity."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from . import _kernels
from .arrays import (LlamaRows, llama_row_width, logits_view, thread_count, threads_for,
                     token_ids)
from .scoring import raise_for_status


def encode_llama_rows(logits: np.ndarray, tokens: object, *, threads: Optional[int] = None,
                      out: Optional[np.ndarray] = None) -> Tuple[LlamaRows, np.ndarray]:
    """Encode float32 logits (rows, n_vocab) as llama.cpp `--kl-divergence-base` rows.

    Returns the rows and each row's NLL of ``tokens`` (nats, computed in float32
    as llama.cpp does; exp(mean) is the base model's perplexity). ``out`` may
    be a preallocated uint16 array (rows, width), e.g. a slice of a memory map.
    """
    view, dtype = logits_view(logits, "logits")
    if dtype != 0:
        raise TypeError("the llama.cpp encoder takes float32 logits, as llama.cpp does")
    n, n_vocab = view.shape
    if n == 0:
        raise ValueError("no rows to encode")
    tok = token_ids(tokens, n, n_vocab)
    width = llama_row_width(n_vocab)
    if out is None:
        out = np.empty((n, width), np.uint16)
    elif out.dtype != np.uint16 or out.shape != (n, width) or out.strides[1] != 2:
        raise ValueError(f"out must be a uint16 array of shape {(n, width)} with contiguous rows")
    nthreads = threads_for(thread_count(threads), n, n_vocab)
    nll, status = _kernels.encode_llama_rows(view, tok, out, nthreads)
    raise_for_status(status)
    return LlamaRows(out, n_vocab), nll
