"""A GGUF model evaluated chunk by chunk exactly as llama-perplexity does (docs/formats.md).

Uses llama-cpp-python's C API directly, with the context llama-perplexity's
common parameters give (full-size SWA cache off, flash attention "auto", f16
KV cache, one KV stream per sequence), the KV cache cleared before every
group of chunks, BOS substituted for the first token of each chunk when the
vocabulary adds BOS. ``parallel`` chunks are decoded together as separate
sequences (its n_seq), each carrying the same slice of every chunk:
``min(2048, n_ctx)`` tokens a chunk by default, llama-perplexity's default
``-b 2048``, cut by llama.cpp into the same micro-batches as there. Like
llama-perplexity it asks llama.cpp for logits only at the scored half of a
chunk (positions from ``n_ctx / 2``). Each decode's logits are handed on as a
view of llama.cpp's own output buffer and consumed before the next decode:
memory holds one decode's rows (a micro-batch's, for one chunk at a time),
whatever the context.
"""
from __future__ import annotations

import ctypes
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

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
_ECHO = False  # --debug: llama.cpp's log goes to stderr as well
# What quantkl keeps of llama.cpp's log while silencing it: the lines that say
# how it set itself up (layers offloaded, KV caches made, flash attention
# chosen) and its errors, read back into the runner's attributes.
_KEPT_LINES: List[str] = []
_KEEP = re.compile(r"offloaded \d+/\d+ layers|llama_kv_cache: +size =|Flash Attention|"
                   r"enabling flash_attn|compute buffer size", re.I)
_GGML_LOG_ERROR = 4


def _silence_llama_logs(llama_cpp, verbose: bool = False) -> None:
    """llama.cpp logs every tensor it loads to stderr; quantkl prints its own
    summary, unless ``verbose`` (--debug) lets the log through."""
    global _SILENCE, _ECHO
    _ECHO = verbose
    if _SILENCE is None:
        def keep(level, text, user):
            if _ECHO and text:
                sys.stderr.write(text.decode(errors="replace"))
            line = text.decode(errors="replace").strip() if text else ""
            if line and (level == _GGML_LOG_ERROR or _KEEP.search(line)):
                _KEPT_LINES.append(line)
                del _KEPT_LINES[:-64]
        _SILENCE = llama_cpp.llama_log_callback(keep)
        llama_cpp.llama_log_set(_SILENCE, ctypes.c_void_p(0))


@dataclass(frozen=True)
class KVCache:
    """One KV cache llama.cpp made (a sliding-window model has two), from its own log line."""
    cells: int
    layers: int
    type_k: str
    type_v: str
    mib: float

    def to_dict(self) -> dict:
        return {"cells": self.cells, "layers": self.layers, "type_k": self.type_k,
                "type_v": self.type_v, "MiB": self.mib}


_KV_LINE = re.compile(r"size = +([\d.]+) MiB \( *(\d+) cells, +(\d+) layers.*K \((\w+)\).*"
                      r"V \((\w+)\)")


def _kv_caches(lines: Sequence[str]) -> List[KVCache]:
    out = []
    for line in lines:
        m = _KV_LINE.search(line)
        if m:
            out.append(KVCache(int(m.group(2)), int(m.group(3)), m.group(4), m.group(5),
                               float(m.group(1))))
    return out


def _flash_attn_used(lines: Sequence[str], asked: str) -> Optional[bool]:
    """Whether llama.cpp uses flash attention: "auto" is resolved in its log."""
    for line in reversed(lines):
        low = line.lower()
        if "flash attention" in low or "enabling flash_attn" in low:
            return "disabled" not in low
    return {"on": True, "off": False}.get(asked)


def _compute_buffers_mib(lines: Sequence[str]) -> float:
    """llama.cpp's compute buffers (its scratch space for one micro-batch), summed."""
    sizes = [float(m.group(1)) for l in lines
             for m in [re.search(r"compute buffer size = +([\d.]+) MiB", l)] if m]
    return sum(sizes)


def _last_error(lines: Sequence[str]) -> str:
    errors = [l for l in lines if not _KEEP.search(l)]
    return f" (llama.cpp: {errors[-1]})" if errors else ""


# KV cache types llama-perplexity accepts (-ctk/-ctv), with their ggml type ids.
KV_CACHE_TYPES = {"f32": 0, "f16": 1, "bf16": 30, "q8_0": 8, "q4_0": 2, "q4_1": 3,
                  "iq4_nl": 20, "q5_0": 6, "q5_1": 7}
FLASH_ATTN = ("on", "off", "auto")
# llama-perplexity's default -b: each chunk is decoded in slices of this many tokens.
DEFAULT_DECODE = 2048


@dataclass
class ModelOptions:
    """How llama.cpp runs a model: the options of every command that runs one.

    gpu_layers: layers offloaded to the GPU (llama-perplexity's -ngl); 0 keeps
        everything on the CPU. With a llama-cpp-python built without GPU
        support a request is noted once on stderr and the CPU is used.
    batch: llama-perplexity's -b: each chunk is decoded in slices of batch /
        parallel tokens (default: slices of min(2048, n_ctx), its default -b
        2048's cut). ubatch: llama.cpp's micro-batch (default 512, at most
        ``batch``); with one chunk at a time each llama_decode carries one
        micro-batch, so memory holds ubatch rows x vocabulary floats.
    threads / threads_batch: llama.cpp's generation and batch threads
        (default: all cores; threads_batch defaults to threads).
    parallel: chunks decoded together as separate sequences (n_seq). The
        numbers do not change, only the speed.
    cache_type_k / cache_type_v: the KV cache's types (-ctk / -ctv, one of
        KV_CACHE_TYPES; default f16). flash_attn: "on", "off" or "auto" (-fa;
        default auto, which llama.cpp turns on where the backend has it). A
        quantized V cache needs flash attention.
    """
    gpu_layers: int = 0
    batch: Optional[int] = None
    ubatch: Optional[int] = None
    threads: Optional[int] = None
    threads_batch: Optional[int] = None
    parallel: int = 1
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    flash_attn: str = "auto"

    def check(self) -> "ModelOptions":
        for name in ("batch", "ubatch", "threads", "threads_batch"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be at least 1, got {v}")
        if self.gpu_layers < 0:
            raise ValueError(f"gpu_layers must be 0 or more, got {self.gpu_layers}")
        if self.parallel < 1:
            raise ValueError(f"parallel must be at least 1, got {self.parallel}")
        for name, flag in (("cache_type_k", "--cache-type-k"), ("cache_type_v", "--cache-type-v")):
            if getattr(self, name) not in KV_CACHE_TYPES:
                raise ValueError(f"{flag} {getattr(self, name)!r}: llama.cpp's KV cache takes "
                                 f"{', '.join(KV_CACHE_TYPES)}")
        if self.flash_attn not in FLASH_ATTN:
            raise ValueError(f"--flash-attn {self.flash_attn!r}: on, off or auto")
        if self.flash_attn == "off" and self.cache_type_v not in ("f32", "f16", "bf16"):
            raise ValueError(f"--cache-type-v {self.cache_type_v} needs flash attention: "
                             f"llama.cpp quantizes the V cache only with --flash-attn on or auto")
        return self

    def to_dict(self) -> dict:
        return {"gpu_layers": self.gpu_layers, "batch": self.batch, "ubatch": self.ubatch,
                "threads": self.threads, "threads_batch": self.threads_batch,
                "parallel": self.parallel, "cache_type_k": self.cache_type_k,
                "cache_type_v": self.cache_type_v, "flash_attn": self.flash_attn}


_WARNED_NO_GPU = False


def _warn_no_gpu(llama_cpp, gpu_layers: int) -> bool:
    """True when offload was asked for and this llama.cpp cannot do it (said once)."""
    global _WARNED_NO_GPU
    if gpu_layers <= 0 or llama_cpp.llama_supports_gpu_offload():
        return False
    if not _WARNED_NO_GPU:
        print(f"quantkl: --gpu-layers {gpu_layers} asked for, but this llama-cpp-python was built "
              f"without GPU support; running on the CPU (see README: GPU offload)",
              file=sys.stderr)
        _WARNED_NO_GPU = True
    return True


def check_gguf(path: str) -> None:
    """Raise ModelError unless path is a readable GGUF file."""
    from .files import regular_file_size
    regular_file_size(path, "model", ModelError)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelError(f"{path}: cannot open model: {e.strerror}") from None
    if magic != b"GGUF":
        raise ModelError(f"{path}: not a GGUF model file (starts with {magic!r})")


def load_model(path: str, verbose: bool, vocab_only: bool = False, gpu_layers: int = 0):
    """llama-cpp-python's module and the llama.cpp model of the GGUF file
    ``path``; ModelError when it is not one or llama.cpp cannot load it."""
    check_gguf(path)
    lc = _llama()
    _silence_llama_logs(lc, verbose)
    lc.llama_backend_init()
    params = lc.llama_model_default_params()
    params.vocab_only = vocab_only
    params.n_gpu_layers = gpu_layers
    del _KEPT_LINES[:]
    model = lc.llama_model_load_from_file(path.encode(), params)
    if not model:
        what = "read this model's vocabulary" if vocab_only else "load this model"
        raise ModelError(f"{path}: llama.cpp could not {what}")
    return lc, model


class Vocabulary:
    """A GGUF model's vocabulary alone (no weights loaded), to turn token ids into text."""

    def __init__(self, model_path: str | os.PathLike, verbose: bool = False):
        self.path = os.fspath(model_path)
        lc, self._model = load_model(self.path, verbose, vocab_only=True)
        self._lc = lc
        self._vocab = lc.llama_model_get_vocab(self._model)
        self.n_vocab = lc.llama_vocab_n_tokens(self._vocab)

    def piece(self, token: int) -> str:
        """The text of one token (special tokens shown as their names)."""
        buf = ctypes.create_string_buffer(256)
        n = self._lc.llama_token_to_piece(self._vocab, int(token), buf, len(buf), 0, True)
        return buf.raw[:max(n, 0)].decode("utf-8", errors="replace")

    def text(self, tokens) -> str:
        return "".join(self.piece(t) for t in tokens)

    def is_special(self, token: int) -> bool:
        """Control and end-of-generation tokens (chat markers, BOS, EOS, ...)."""
        lc, t = self._lc, int(token)
        return bool(lc.llama_vocab_is_control(self._vocab, t) or lc.llama_vocab_is_eog(self._vocab, t))

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
    """One GGUF model with a context of ``n_ctx`` tokens per chunk, ready to
    evaluate chunks (``parallel`` of them at a time)."""

    def __init__(self, model_path: str | os.PathLike, n_ctx: int,
                 options: Optional[ModelOptions] = None, verbose: bool = False,
                 kv_unified: bool = False):
        self.path = os.fspath(model_path)
        self._model = self._ctx = self._batch = None
        options = (options or ModelOptions()).check()
        if n_ctx < 3:
            raise ModelError(f"context must be at least 3 tokens, got {n_ctx}")
        lc, self._model = load_model(self.path, verbose, gpu_layers=options.gpu_layers)
        self._lc = lc
        self.gpu_unavailable = _warn_no_gpu(lc, options.gpu_layers)
        self.n_layer = int(lc.llama_model_n_layer(self._model))
        self.offloaded = self._offloaded_layers(options.gpu_layers)
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
        self.parallel = options.parallel
        self.threads = thread_count(options.threads)
        self.threads_batch = thread_count(options.threads_batch or options.threads)
        # one decode carries the same slice of every chunk in the group
        group = n_ctx * self.parallel
        wanted = options.batch or min(DEFAULT_DECODE, n_ctx) * self.parallel
        self.n_batch = min(wanted, group)
        if self.n_batch < self.parallel:
            self.close()
            raise ModelError(f"--batch {self.n_batch} is smaller than --parallel {self.parallel}: "
                             f"a decode carries a slice of every chunk in the group")
        self.slice = min(n_ctx, self.n_batch // self.parallel)
        self.n_ubatch = min(options.ubatch or 512, self.n_batch)
        # llama.cpp cuts one sequence's slice into micro-batches of n_ubatch
        # tokens, in order, and its numbers depend on that cut alone: handing
        # it the micro-batches one llama_decode at a time gives the same
        # logits (tested against llama-perplexity's whole slices) with an
        # output buffer of n_ubatch rows instead of a slice's. Several
        # sequences are cut across all of them, so their slice goes whole.
        self.decode_size = self.slice if self.parallel > 1 else min(self.slice, self.n_ubatch)
        self.options = options
        p = lc.llama_context_default_params()
        p.n_ctx = group
        p.n_batch = self.n_batch
        p.n_ubatch = self.n_ubatch
        p.n_seq_max = self.parallel
        p.n_threads = self.threads
        p.n_threads_batch = self.threads_batch
        p.flash_attn_type = {"on": lc.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                             "off": lc.LLAMA_FLASH_ATTN_TYPE_DISABLED,
                             "auto": lc.LLAMA_FLASH_ATTN_TYPE_AUTO}[options.flash_attn]
        p.type_k = KV_CACHE_TYPES[options.cache_type_k]
        p.type_v = KV_CACHE_TYPES[options.cache_type_v]
        # llama-perplexity's common parameters: a sliding-window layer's cache
        # holds its window only (llama.cpp's own default keeps every position,
        # which changes the logits past the window)
        p.swa_full = False
        # task scoring shares a prefix between sequences: one KV cache for all
        p.kv_unified = self.kv_unified = kv_unified
        first_log = len(_KEPT_LINES)
        self._ctx = lc.llama_init_from_model(self._model, p)
        log = _KEPT_LINES[first_log:]
        if not self._ctx:
            self.close()
            raise ModelError(
                f"{self.path}: llama.cpp could not create a context of {group} tokens "
                f"({self.parallel} x {n_ctx}; decodes of {self.n_batch}, micro-batches of "
                f"{self.n_ubatch}; K/V cache {options.cache_type_k}/{options.cache_type_v}; flash "
                f"attention {options.flash_attn}): out of memory, or options this model does "
                f"not support{_last_error(log)}")
        self.kv_caches = _kv_caches(log)
        self.flash_attn_used = _flash_attn_used(log, options.flash_attn)
        self.compute_buffers_mib = _compute_buffers_mib(log)
        self._batch = lc.llama_batch_init(self.n_batch, 0, self.parallel)
        self.decode_seconds = 0.0  # time spent in llama.cpp's forward passes

    def settings(self) -> dict:
        """The options as run (defaults resolved) and what llama.cpp made of
        them, for the JSON record."""
        return {**self.options.to_dict(), "offloaded_layers": self.offloaded,
                "batch_tokens": self.n_batch, "ubatch_tokens": self.n_ubatch,
                # tasks decode whole batches (decode_tokens), chunks one span at a time
                "decode_tokens": self.n_batch if self.kv_unified else
                self.decode_size * self.parallel,
                "flash_attn_used": self.flash_attn_used,
                "kv_caches": [c.to_dict() for c in self.kv_caches],
                "compute_buffers_MiB": self.compute_buffers_mib}

    def _offloaded_layers(self, asked: int) -> int:
        """Layers llama.cpp put on the GPU: its own log line when it wrote one."""
        for line in reversed(_KEPT_LINES):
            m = re.search(r"offloaded (\d+)/(\d+) layers", line)
            if m:
                return int(m.group(1))
        if asked <= 0 or self.gpu_unavailable:
            return 0
        return min(asked, self.n_layer + 1)  # llama.cpp counts the output layer too

    @property
    def bits_per_weight(self) -> float:
        """Model size in bits over parameter count, as llama.cpp reports it (BPW)."""
        return 8.0 * self.size_bytes / self.n_params if self.n_params else float("nan")

    def tokenize(self, text: str, special: bool = False) -> np.ndarray:
        """The whole text as token ids, with the special tokens the vocabulary
        adds (BOS); ``special`` also reads special-token markers in the text
        (chat templates write them) as the tokens they name."""
        lc = self._lc
        data = text.encode("utf-8")
        cap = len(data) + 2
        while True:
            out = (lc.llama_token * cap)()
            n = lc.llama_tokenize(self._vocab, data, len(data), out, cap, True, special)
            if n >= 0:
                return np.ctypeslib.as_array(out)[:n].astype(np.int32)
            cap = -n

    def chat_template(self) -> Optional[str]:
        """The chat template in the model's GGUF metadata, or None."""
        t = self._lc.llama_model_chat_template(self._model, None)
        return t.decode("utf-8", errors="replace") if t else None

    def apply_chat_template(self, template: str, messages: Sequence[dict]) -> str:
        """One conversation as text, by llama.cpp's own template application
        (llama_chat_apply_template: the templates llama.cpp recognises)."""
        lc = self._lc
        keep = [(m["role"].encode(), m["content"].encode()) for m in messages]
        chat = (lc.llama_chat_message * len(keep))(*[lc.llama_chat_message(r, c)
                                                      for r, c in keep])
        tmpl = template.encode()
        size = 4 * sum(len(r) + len(c) for r, c in keep) + 1024
        while True:
            buf = ctypes.create_string_buffer(size)
            n = lc.llama_chat_apply_template(tmpl, chat, len(keep), False, buf, size)
            if n < 0:
                raise ModelError(f"{self.path}: llama.cpp does not recognise this model's chat "
                                 f"template, so it cannot format conversations")
            if n <= size:
                return buf.raw[:n].decode("utf-8", errors="replace")
            size = n + 1

    @property
    def first(self) -> int:
        """The first position of a chunk whose logits are scored (n_ctx / 2)."""
        return self.n_ctx // 2

    def decode_chunks(self, chunks: Sequence[np.ndarray]) -> Iterator[Tuple[int, np.ndarray]]:
        """Decode up to ``parallel`` chunks together, one sequence each, and
        after each llama_decode that returns logits yield ``(lo, logits)``:
        float32 logits (len(chunks), n, n_vocab) of positions first + lo ..
        first + lo + n - 1 of every chunk (row j predicts token first + j + 1;
        the last row, position n_ctx - 1, predicts nothing). ``logits`` is a
        view of llama.cpp's output buffer, valid until the generator resumes."""
        lc = self._lc
        n_seq = len(chunks)
        if not 1 <= n_seq <= self.parallel:
            raise ValueError(f"a group is 1 to {self.parallel} chunks, got {n_seq}")
        for t in chunks:
            if len(t) != self.n_ctx:
                raise ValueError(f"a chunk is {self.n_ctx} tokens, got {len(t)}")
        start = time.perf_counter()
        lc.llama_memory_clear(lc.llama_get_memory(self._ctx), True)
        first = self.first
        token_lists = [t.tolist() for t in chunks]
        for lo, hi in self._decode_spans():
            b = self._batch
            i = 0
            for seq, toks in enumerate(token_lists):
                for pos in range(lo, hi):
                    b.token[i] = self.bos if (pos == 0 and self.add_bos) else toks[pos]
                    b.pos[i] = pos
                    b.n_seq_id[i] = 1
                    b.seq_id[i][0] = seq
                    b.logits[i] = pos >= first
                    i += 1
            b.n_tokens = i
            self._decode(b, i, n_seq * max(0, hi - max(lo, first)))
            n_here = max(0, hi - max(lo, first))
            if n_here == 0:
                continue
            view = np.ctypeslib.as_array(lc.llama_get_logits(self._ctx),
                                         shape=(n_seq, n_here, self.n_vocab))
            self.decode_seconds += time.perf_counter() - start
            yield max(lo, first) - first, view
            start = time.perf_counter()
        self.decode_seconds += time.perf_counter() - start

    def _decode_spans(self) -> List[Tuple[int, int]]:
        """Positions [lo, hi) of a chunk that each llama_decode call carries."""
        spans = []
        for s in range(0, self.n_ctx, self.slice):
            e = min(s + self.slice, self.n_ctx)
            spans += [(lo, min(lo + self.decode_size, e))
                      for lo in range(s, e, self.decode_size)]
        return spans

    def _decode(self, batch, n_tokens: int, n_outputs: int) -> None:
        rc = self._lc.llama_decode(self._ctx, batch)
        if rc != 0:
            gb = n_outputs * self.n_vocab * 4 / 1e9
            raise ModelError(f"{self.path}: llama.cpp could not decode {n_tokens} tokens "
                             f"(status {rc}; {n_outputs} rows of logits, {gb:.2f} GB): out of "
                             f"memory? a smaller --batch needs less")

    def decode_tokens(self, tokens: Sequence[int], positions: Sequence[int],
                      seq_ids: Sequence[Sequence[int]], outputs: Sequence[bool]) -> np.ndarray:
        """One batch of tokens, each with its position, its sequences and
        whether its logits are wanted, decoded after clearing the KV cache in
        calls of at most ``batch`` tokens (llama-perplexity's decode_helper).
        Returns the wanted logits in batch order, a copy (n_out, n_vocab)."""
        lc = self._lc
        n = len(tokens)
        n_out = int(sum(bool(o) for o in outputs))
        out = np.empty((n_out, self.n_vocab), np.float32)
        start = time.perf_counter()
        lc.llama_memory_clear(lc.llama_get_memory(self._ctx), True)
        done = 0
        b = self._batch
        for lo in range(0, n, self.n_batch):
            hi = min(lo + self.n_batch, n)
            k = 0
            for i in range(lo, hi):
                b.token[k] = int(tokens[i])
                b.pos[k] = int(positions[i])
                ids = seq_ids[i]
                b.n_seq_id[k] = len(ids)
                for j, sid in enumerate(ids):
                    b.seq_id[k][j] = int(sid)
                b.logits[k] = bool(outputs[i])
                k += 1
            b.n_tokens = k
            here = int(sum(bool(o) for o in outputs[lo:hi]))
            self._decode(b, k, here)
            if here:
                out[done:done + here] = np.ctypeslib.as_array(lc.llama_get_logits(self._ctx),
                                                              shape=(here, self.n_vocab))
                done += here
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
