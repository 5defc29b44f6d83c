"""quantkl: how far a quantized language model drifts from its base.

KL divergence, perplexity ratio, Δp and same-top-token statistics over saved
logits, computed by C kernels and printed as `llama-perplexity --kl-divergence`
prints them.
"""
from .arrays import LlamaRows, llama_row_width
from .encoding import encode_llama_rows
from .scoring import (Scorer, current_kernel, kernel_paths, score, score_rows,
                      select_kernel, _apply_kernel_env)
from .result import KLDResult
from .sparse import SparseRows, encode_sparse_rows

__version__ = "0.1.0"

__all__ = ["LlamaRows", "llama_row_width", "encode_llama_rows", "Scorer", "score", "score_rows",
           "KLDResult", "SparseRows", "encode_sparse_rows", "select_kernel", "kernel_paths",
           "current_kernel", "__version__"]

_apply_kernel_env()
del _apply_kernel_env
