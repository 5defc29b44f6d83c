"""The tokens a quant damages most: an average KLD hides them.

For each quant: the mean KLD of its worst P % of tokens, and its N worst tokens
with the text before them, the actual next token, and what each model
predicted there, detokenized with the model's vocabulary.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator, List, Optional

import numpy as np

from .dumpfile import LogitDump
from .runner import Vocabulary
from .result import KLDResult

CONTEXT_TOKENS = 12


def worst_mean(kld: np.ndarray, percent: float) -> float:
    """Mean KLD (nats) of the worst ``percent`` % of tokens (at least one token)."""
    if not 0 < percent <= 100:
        raise ValueError(f"percent must be in (0, 100], got {percent}")
    k = max(1, math.ceil(len(kld) * percent / 100))
    return float(np.mean(np.sort(kld)[-k:]))


@dataclass
class WorstToken:
    row: int            # index among the scored tokens
    chunk: int          # 1-based, as llama-perplexity counts
    position: int       # position of the predicting token within its chunk
    kld: float          # nats
    dp: float           # probability of the actual token, quant minus base
    token: int          # the actual next token
    base_top: int
    other_top: int
    context: str = ""
    token_text: str = ""
    base_top_text: str = ""
    other_top_text: str = ""


def worst_tokens(result: KLDResult, dump: LogitDump, top: int = 10,
                 vocab: Optional[Vocabulary] = None) -> List[WorstToken]:
    """The ``top`` rows of largest KLD, located in the dump's tokens and detokenized."""
    if result.count != dump.n_rows:
        raise ValueError(f"the result has {result.count} tokens but {dump.path} has {dump.n_rows}"
                         f" rows: not the dump it was scored against")
    if vocab is not None and vocab.n_vocab != dump.n_vocab:
        raise ValueError(f"vocabulary mismatch: {vocab.path} has {vocab.n_vocab} entries, "
                         f"{dump.path} has {dump.n_vocab}")
    order = np.argsort(-result.kld, kind="stable")[:top]
    first, r = dump.n_ctx // 2, dump.rows_per_chunk
    out = []
    for row in order.tolist():
        c, j = divmod(row, r)
        pos = first + j
        chunk = dump.chunk_tokens(c)
        w = WorstToken(row, c + 1, pos, float(result.kld[row]), float(result.dp[row]),
                       int(chunk[pos + 1]), int(result.top_base[row]), int(result.top_other[row]))
        if vocab is not None:
            w.context = vocab.text(chunk[max(0, pos + 1 - CONTEXT_TOKENS):pos + 1])
            w.token_text = vocab.piece(w.token)
            w.base_top_text = vocab.piece(w.base_top) if w.base_top >= 0 else "?"
            w.other_top_text = vocab.piece(w.other_top) if w.other_top >= 0 else "?"
        out.append(w)
    return out


def format_worst(name: str, result: KLDResult, percent: float, tokens: List[WorstToken]) -> str:
    k = max(1, math.ceil(result.count * percent / 100))
    lines = [f"{name}: mean KLD {float(np.mean(result.kld)):.6f}; worst {percent:g} % of tokens "
             f"({k} of {result.count}): mean KLD {worst_mean(result.kld, percent):.6f}",
             f"{'#':>3} {'chunk':>5} {'pos':>5} {'KLD':>9} {'Δp %':>7}  token -> base top | "
             f"quant top  (context)"]
    for i, w in enumerate(tokens, 1):
        if w.token_text or w.context:
            what = (f"{w.token_text!r} -> {w.base_top_text!r} | {w.other_top_text!r}  "
                    f"(...{w.context!r})")
        else:
            what = f"{w.token} -> {w.base_top} | {w.other_top}"
        lines.append(f"{i:>3} {w.chunk:>5} {w.position:>5} {w.kld:9.4f} {100 * w.dp:7.2f}  {what}")
    return "\n".join(lines) + "\n"


def worst_of_inputs(inputs: List[str], model: Optional[str], top: int, percent: float, *,
                    threads: Optional[int] = None, verbose: bool = False) -> Iterator[str]:
    """``quantkl worst``'s blocks, one per quant: from JSON records of score
    runs (each names its base dump, whose tokens the text needs, and its
    model), or from two dumps (BASE, OTHER) compared here."""
    from .evaluation import compare_dumps
    from .records import load_result, read_record
    if all(p.endswith(".json") for p in inputs):
        runs = []
        for p in inputs:
            rec = read_record(p)
            base = (rec.get("base") or {}).get("path")
            if not base or not os.path.exists(base):
                raise ValueError(f"{p}: its base dump {base} is not there; the worst tokens need "
                                 f"the dump's tokens")
            name = os.path.splitext((rec.get("model") or rec.get("other") or {}).get(
                "file", os.path.basename(p)))[0]
            runs.append((name, load_result(p, rec), base,
                         model or (rec.get("model") or {}).get("path")))
    elif len(inputs) == 2 and not any(p.endswith(".json") for p in inputs):
        with LogitDump(inputs[0]) as b, LogitDump(inputs[1]) as o:
            result = compare_dumps(b, o, threads=threads)
        runs = [(os.path.basename(inputs[1]), result, inputs[0], model)]
    else:
        raise ValueError("give JSON records, or two dumps (BASE.kld OTHER.kld)")
    for name, result, base, run_model in runs:
        vocab = (Vocabulary(run_model, verbose) if run_model and os.path.exists(run_model)
                 else None)
        with LogitDump(base) as dump:
            tokens = worst_tokens(result, dump, top, vocab)
        yield format_worst(name, result, percent, tokens)
