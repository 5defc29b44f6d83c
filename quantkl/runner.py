"""A GGUF model evaluated chunk by chunk exactly as llama-perplexity does (SPEC §1, §5).

Uses llama-cpp-python's C API directly: one context of ``n_ctx`` with
``n_batch = n_ctx`` and flash attention on, the KV cache cleared before every
chunk, each chunk decoded as one batch, BOS substituted for the first token
when the vocabulary adds BOS. Like llama-perplexity, it asks llama.cpp for
logits only at the scored half of the chunk (positions from ``n_ctx / 2``): at
a large vocabulary the output layer is most of a small model's work. The
logits of a chunk are a view of llama.cpp's own output buffer, handed to the
kernels in place: no copy, and never more than one chunk alive.
"""
from __future__ import annotations

import ctypes
import os
import time
from typing import Optional

import numpy as np

from .arrays import thread_count


class ModelError(ValueError):
    """A model file that cannot be used (missing, not GGUF, too short a context, ...)."""


def _llama():
    try:
        import llama_cpp
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ModelError("running a model needs llama-cpp-python: pip install llama-cpp-python"
                         ) from e
    return llama_cpp


_SILENCE = None


def _silence_llama_logs(llama_cpp) -> None:
    """llama.cpp logs every tensor it loads to stderr; quantkl prints its own summary."""
    global _SILENCE
    if _SILENCE is None:
        _SILENCE = llama_cpp.llama_log_callback(lambda level, text, user: None)
        llama_cpp.llama_log_set(_SILENCE, ctypes.c_void_p(0))


def check_gguf(path: str) -> None:
    """Raise ModelError unless path is a readable GGUF file."""
    from .dumpfile import DumpError, regular_file_size
    try:
        regular_file_size(path, "model")
    except DumpError as e:
        raise ModelError(str(e)) from None
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelError(f"{path}: cannot open model: {e.strerror}") from None
    if magic != b"GGUF":
        raise ModelError(f"{path}: not a GGUF model file (starts with {magic!r})")


class Vocabulary:
    """A GGUF model's vocabulary alone (no weights loaded), to turn token ids into text."""

    def __init__(self, model_path: str | os.PathLike, verbose: bool = False):
        self.path = os.fspath(model_path)
        check_gguf(self.path)
        lc = self._lc = _llama()
        if not verbose:
            _silence_llama_logs(lc)
        lc.llama_backend_init()
        params = lc.llama_model_default_params()
        params.vocab_only = True
        self._model = lc.llama_model_load_from_file(self.path.encode(), params)
        if not self._model:
            raise ModelError(f"{self.path}: llama.cpp could not read this model's vocabulary")
        self._vocab = lc.llama_model_get_vocab(self._model)
        self.n_vocab = lc.llama_vocab_n_tokens(self._vocab)

    def piece(self, token: int) -> str:
        """The text of one token (special tokens shown as their names)."""
        buf = ctypes.create_string_buffer(256)
        n = self._lc.llama_token_to_piece(self._vocab, int(token), buf, len(buf), 0, True)
        return buf.raw[:max(n, 0)].decode("utf-8", errors="replace")

    def text(self, tokens) -> str:
        return "".join(self.piece(t) for t in tokens)

    def close(self) -> None:
        if self._model:
            self._lc.llama_model_free(self._model)
            self._model = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class ModelRunner:
    """One GGUF model with a context of ``n_ctx`` tokens, ready to evaluate chunks."""

    def __init__(self, model_path: str | os.PathLike, n_ctx: int, threads: Optional[int] = None,
                 verbose: bool = False):
        self.path = os.fspath(model_path)
        check_gguf(self.path)
        if n_ctx < 3:
            raise ModelError(f"context must be at least 3 tokens, got {n_ctx}")
        lc = self._lc = _llama()
        if not verbose:
            _silence_llama_logs(lc)
        lc.llama_backend_init()
        self._model = lc.llama_model_load_from_file(self.path.encode(),
                                                    lc.llama_model_default_params())
        if not self._model:
            raise ModelError(f"{self.path}: llama.cpp could not load this model")
        self._ctx = self._batch = None
        self.n_ctx_train = lc.llama_model_n_ctx_train(self._model)
        if n_ctx > self.n_ctx_train:
            self.close()
            raise ModelError(f"{self.path}: context {n_ctx} is larger than the {self.n_ctx_train} "
                             f"tokens this model was trained on")
        self._vocab = lc.llama_model_get_vocab(self._model)
        self.n_vocab = lc.llama_vocab_n_tokens(self._vocab)
        self.add_bos = bool(lc.llama_vocab_get_add_bos(self._vocab))
        self.bos = lc.llama_vocab_bos(self._vocab)
        self.size_bytes = int(lc.llama_model_size(self._model))
        self.n_params = int(lc.llama_model_n_params(self._model))
        buf = ctypes.create_string_buffer(256)
        lc.llama_model_desc(self._model, buf, len(buf))
        self.description = buf.value.decode(errors="replace")
        self.n_ctx = n_ctx
        self.threads = thread_count(threads)
        p = lc.llama_context_default_params()
        p.n_ctx = n_ctx
        p.n_batch = n_ctx
        p.n_ubatch = min(512, n_ctx)  # llama-perplexity's default micro-batch
        p.n_seq_max = 1
        p.n_threads = p.n_threads_batch = self.threads
        p.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self._ctx = lc.llama_init_from_model(self._model, p)
        if not self._ctx:
            self.close()
            raise ModelError(f"{self.path}: llama.cpp could not create a context of {n_ctx}")
        self._batch = lc.llama_batch_init(n_ctx, 0, 1)
        self.decode_seconds = 0.0  # time spent in llama.cpp's forward passes

    @property
    def bits_per_weight(self) -> float:
        """Model size in bits over parameter count, as llama.cpp reports it (BPW)."""
        return 8.0 * self.size_bytes / self.n_params if self.n_params else float("nan")

    def tokenize(self, text: str) -> np.ndarray:
        """The whole text as token ids, with the special tokens the vocabulary adds (BOS)."""
        lc = self._lc
        data = text.encode("utf-8")
        cap = len(data) + 2
        while True:
            out = (lc.llama_token * cap)()
            n = lc.llama_tokenize(self._vocab, data, len(data), out, cap, True, False)
            if n >= 0:
                return np.ctypeslib.as_array(out)[:n].astype(np.int32)
            cap = -n

    @property
    def first(self) -> int:
        """The first position of a chunk whose logits are scored (SPEC §1)."""
        return self.n_ctx // 2

    def chunk_logits(self, tokens: np.ndarray) -> np.ndarray:
        """float32 logits (n_ctx - first, n_vocab) of one chunk at positions
        first .. n_ctx - 1: a view into llama.cpp's buffer, valid until the
        next call. Row j predicts token first + j + 1."""
        lc = self._lc
        if len(tokens) != self.n_ctx:
            raise ValueError(f"a chunk is {self.n_ctx} tokens, got {len(tokens)}")
        start = time.perf_counter()
        lc.llama_memory_clear(lc.llama_get_memory(self._ctx), True)
        b = self._batch
        b.n_tokens = self.n_ctx
        first = self.first
        for i, t in enumerate(tokens.tolist()):
            b.token[i] = self.bos if (i == 0 and self.add_bos) else t
            b.pos[i] = i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = i >= first
        rc = lc.llama_decode(self._ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with status {rc}")
        ptr = lc.llama_get_logits_ith(self._ctx, first)
        out = np.ctypeslib.as_array(ptr, shape=(self.n_ctx - first, self.n_vocab))
        self.decode_seconds += time.perf_counter() - start
        return out

    def close(self) -> None:
        lc = self._lc
        if self._batch is not None:
            lc.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            lc.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            lc.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> "ModelRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
