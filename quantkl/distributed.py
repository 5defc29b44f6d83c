"""Many machines: quants and chunk shards of one base scored as Ray tasks.

The work is cut into tasks of (quant, chunk range); Ray places them (each
asks for ``threads`` CPUs and, with GPU layers, one GPU), retries a task
whose worker died, and the driver joins each quant's shards with the exact
merge (quantkl.records.merge_records) into the record a local run writes.
Each finished shard's record is written under ``OUT/shards/`` as it comes
back, so a stopped driver loses no finished shard and a rerun resumes. A
worker reads the base and the model from their paths when it sees the same
files; otherwise (or with ``ship_base``) the driver puts each task's rows,
and each model once, into Ray's object store.

Ray is an optional extra (``pip install "quantkl[ray]"``); nothing else in
quantkl imports it. Without an address a local Ray is started (one machine,
several GPUs or cores); ``"auto"`` or ``"ray://host:port"`` joins a cluster.
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .dumpfile import Chunk, LogitDump
from .evaluation import RunInfo, compare_dumps, score_model
from .records import (compare_metadata, finished_run, merge_records, score_metadata,
                      write_record)
from .runner import ModelOptions

INSTALL = 'pip install "quantkl[ray]"'
# Worker deaths Ray retries a task through (its own failures are not retried:
# a bad quant fails the same way every time).
MAX_RETRIES = 3


class RayMissing(ValueError):
    """--ray asked for without Ray installed."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise RayMissing(f"--ray needs Ray, an optional extra: {INSTALL}") from None
    return ray


def shard_ranges(chunks: Tuple[int, int], size: int) -> List[Tuple[int, int]]:
    a, b = chunks
    return [(lo, min(lo + size, b)) for lo in range(a, b, size)]


def default_shard_chunks(n_chunks: int, n_models: int, workers: int) -> int:
    """Chunks per task: about two tasks per worker over all the models, so
    that the last ones to finish leave few workers idle, and no more tasks
    than that, since each loads its model."""
    tasks = max(1, 2 * workers)
    return max(1, min(n_chunks, math.ceil(n_chunks * n_models / tasks)))


@dataclass
class RunnerFacts:
    """What a record says of the model run a worker made (score_metadata's runner)."""
    n_params: int
    size_bytes: int
    bits_per_weight: float
    description: str
    model_options: dict

    def settings(self) -> dict:
        return self.model_options


class ShippedDump:
    """The rows of a shard's chunks, put in Ray's object store by the driver:
    what score_model reads of a LogitDump, from memory."""

    def __init__(self, dump: LogitDump, chunks: Tuple[int, int]):
        self.path, self.size, self.precise = dump.path, dump.size, dump.precise
        self.n_ctx, self.n_vocab, self.n_chunk = dump.n_ctx, dump.n_vocab, dump.n_chunk
        self.rows_per_chunk, self.row_width = dump.rows_per_chunk, dump.row_width
        self.tokens = np.array(dump.tokens)
        self.rows = {}
        for c in range(*chunks):
            rows = dump.chunk(c).rows
            self.rows[c] = rows if dump.precise else type(rows)(np.array(rows.rows), rows.n_vocab)

    def chunk_tokens(self, c: int) -> np.ndarray:
        return self.tokens[c * self.n_ctx:(c + 1) * self.n_ctx]

    def piece(self, c: int, lo: int, hi: int) -> Chunk:
        rows = self.rows[c]
        part = rows.slice(lo, hi) if self.precise else type(rows)(rows.rows[lo:hi], rows.n_vocab)
        first = self.n_ctx // 2
        return Chunk(c, part, np.ascontiguousarray(self.chunk_tokens(c)[first + 1 + lo:
                                                                        first + 1 + hi]))

    def check_unchanged(self) -> None:
        pass

    def close(self) -> None:
        pass


def _node_copy(model_name: str, size: int, data: bytes) -> str:
    """A shipped model's file on this node, written once per node (the
    first task writes it whole, later ones find it)."""
    d = os.path.join(tempfile.gettempdir(), "quantkl-models")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, f"{size}-{os.path.basename(model_name)}")
    if os.path.isfile(path) and os.path.getsize(path) == size:
        return path
    partial = f"{path}.{os.getpid()}.partial"
    with open(partial, "wb") as f:
        f.write(data)
    os.replace(partial, path)
    return path


# The last model a worker process loaded, kept for the next shard of it: Ray
# reuses a worker for the tasks it places there, and the driver submits each
# quant's shards in turn, so most shards skip the load.
_LOADED: dict = {}


def _runner_for(model: str, n_ctx: int, options: dict):
    from .runner import ModelRunner
    key = (model, os.path.getsize(model), n_ctx, tuple(sorted(options.items())))
    if _LOADED.get("key") != key:
        old = _LOADED.pop("runner", None)
        _LOADED.pop("key", None)
        if old is not None:
            old.close()
        _LOADED["runner"] = ModelRunner(model, n_ctx, ModelOptions(**options))
        _LOADED["key"] = key
    return _LOADED["runner"]


def _visible(path: str, size: int) -> bool:
    return os.path.isfile(path) and os.path.getsize(path) == size


def _chunk_hook(progress, kill_once: Optional[str], rows_per_chunk: int):
    """A task's on_chunk: the tokens to the driver's count; in tests, with
    kill_once, the worker ends after its first chunk once (then Ray retries)."""
    def on_chunk(number, total, running):
        if progress is not None:
            progress.add.remote(rows_per_chunk)
        if kill_once and not os.path.exists(kill_once):
            open(kill_once, "w").close()
            os._exit(1)
    return on_chunk


def run_shard(base_path: str, base_size: int, shipped: Optional[ShippedDump], model: str,
              model_size: int, model_data: Optional[bytes], chunks: Tuple[int, int],
              options: dict, mode: str, topk: Sequence[int], reverse: bool, js: bool,
              progress=None, kill_once: Optional[str] = None):
    """A task's body: ("need-base" | "need-model", None) where this worker
    cannot see a file it was not sent, else ("done", (result, facts, info))."""
    if shipped is None and not _visible(base_path, base_size):
        return "need-base", None
    if not _visible(model, model_size):
        if model_data is None:
            return "need-model", None
        model = _node_copy(model, model_size, model_data)
    dump = shipped if shipped is not None else LogitDump(base_path)

    info = RunInfo()
    try:
        runner = _runner_for(model, dump.n_ctx, options)
        result = score_model(dump, model, mode=mode, topk=topk, chunks=chunks, runner=runner,
                             info=info, reverse=reverse, js=js,
                             on_chunk=_chunk_hook(progress, kill_once, dump.rows_per_chunk))
        facts = RunnerFacts(runner.n_params, runner.size_bytes, runner.bits_per_weight,
                            runner.description, runner.settings())
    finally:
        dump.close()
    return "done", (result, facts, info)


def run_compare_shard(base_path: str, base_size: int, shipped: Optional[ShippedDump],
                      other: str, other_size: int, shipped_other: Optional[ShippedDump],
                      chunks: Tuple[int, int], threads: int, mode: str, topk: Sequence[int],
                      reverse: bool, js: bool, progress=None, kill_once: Optional[str] = None):
    """A compare task's body, as run_shard's: the other dump from its path or
    sent ("need-other" where neither)."""
    if shipped is None and not _visible(base_path, base_size):
        return "need-base", None
    if shipped_other is None and not _visible(other, other_size):
        return "need-other", None
    dump = shipped if shipped is not None else LogitDump(base_path)
    second = shipped_other if shipped_other is not None else LogitDump(other)

    info = RunInfo()
    try:
        result = compare_dumps(dump, second, mode=mode, topk=topk, threads=threads, chunks=chunks,
                               on_chunk=_chunk_hook(progress, kill_once, dump.rows_per_chunk),
                               info=info, reverse=reverse, js=js)
    finally:
        dump.close()
        second.close()
    return "done", (result, None, info)


@dataclass
class QuantOutcome:
    """One quant's end: its merged record's path, or why it failed."""
    model: str
    record: Optional[str] = None
    error: Optional[str] = None
    shards_run: int = 0
    shards_resumed: int = 0


@dataclass
class _Quant:
    """One model (or other dump), its chunk ranges, and the shard records in
    (by range; "" for all of them where the merged record is from an earlier run)."""
    model: str
    stem: str
    size: int
    ranges: List[Tuple[int, int]]
    done: Dict[Tuple[int, int], str] = field(default_factory=dict)
    error: Optional[str] = None
    resumed: int = 0

    def shard_path(self, out_dir: str, chunks: Tuple[int, int]) -> str:
        a, b = chunks
        return os.path.join(out_dir, "shards", f"{self.stem}.chunks-{a}-{b}.json")


def score_quants(base: str, models: Sequence[str], out_dir: str, *, address: Optional[str] = None,
                 mode: str = "llama", topk: Sequence[int] = (1, 5, 10), reverse: bool = False,
                 js: bool = False, options: Optional[ModelOptions] = None,
                 chunks: Optional[Tuple[int, int]] = None, shard_chunks: Optional[int] = None,
                 max_tasks: Optional[int] = None, ship_base: bool = False, force: bool = False,
                 on_tokens: Optional[Callable[[int, int], None]] = None,
                 on_quant: Optional[Callable[[QuantOutcome], None]] = None
                 ) -> List[QuantOutcome]:
    """Score each model against ``base`` as Ray tasks of ``shard_chunks``
    chunks; write ``out_dir/STEM.json`` (+ .npz) per model, the record a
    local ``score --json-dir`` run writes, and each shard's under
    ``out_dir/shards/``. Returns one QuantOutcome per model, in order;
    ``on_tokens(done, total)`` follows the tokens scored across the cluster
    and ``on_quant`` each quant as it ends."""
    options = (options or ModelOptions()).check()
    if options.threads is None:  # each task asks for what a local run would use
        options = ModelOptions(**{**options.to_dict(), "threads": os.cpu_count() or 1})
    return _run("score", base, models, out_dir, address, options, options.threads, mode, topk,
                reverse, js, chunks, shard_chunks, max_tasks, ship_base, force, on_tokens,
                on_quant)


def compare_others(base: str, others: Sequence[str], out_dir: str, *,
                   address: Optional[str] = None, mode: str = "llama",
                   topk: Sequence[int] = (1, 5, 10), reverse: bool = False, js: bool = False,
                   threads: Optional[int] = None, chunks: Optional[Tuple[int, int]] = None,
                   shard_chunks: Optional[int] = None, max_tasks: Optional[int] = None,
                   ship_base: bool = False, force: bool = False,
                   on_tokens: Optional[Callable[[int, int], None]] = None,
                   on_quant: Optional[Callable[[QuantOutcome], None]] = None
                   ) -> List[QuantOutcome]:
    """score_quants for saved dumps: each OTHER dump compared with ``base``
    in (dump, chunk range) tasks, ``out_dir/STEM.json`` per dump the record
    ``quantkl compare --json`` writes; a dump a worker cannot see is sent
    with each task."""
    return _run("compare", base, others, out_dir, address, None, threads or os.cpu_count() or 1,
                mode, topk, reverse, js, chunks, shard_chunks, max_tasks, ship_base, force,
                on_tokens, on_quant)


def _run(kind, base, models, out_dir, address, options, threads, mode, topk, reverse, js,
         chunks, shard_chunks, max_tasks, ship_base, force, on_tokens, on_quant):
    ray = import_ray()
    what = "model" if kind == "score" else "dump"
    stems = [os.path.splitext(os.path.basename(m))[0] for m in models]
    if len(set(stems)) != len(stems):
        raise ValueError(f"two {what}s have the same file name: their records would collide")
    for m in models:
        if not os.path.isfile(m):
            raise ValueError(f"{m}: no such {what} file")
    os.makedirs(os.path.join(out_dir, "shards"), exist_ok=True)
    started = ray.is_initialized()
    if not started:
        ray.init(address=None if address in (None, "local") else address,
                 include_dashboard=False, log_to_driver=False)
    try:
        with LogitDump(base) as dump:
            a, b = chunks if chunks is not None else (0, dump.n_chunk)
            cpus = int(ray.cluster_resources().get("CPU", 1))
            size = shard_chunks or default_shard_chunks(b - a, len(models),
                                                        max(1, cpus // threads))
            quants = []
            for m, stem in zip(models, stems):
                q = _Quant(m, stem, os.path.getsize(m), shard_ranges((a, b), size))
                final = os.path.join(out_dir, stem + ".json")
                if not force and os.path.exists(final):
                    if not finished_run(final, dump, mode, (a, b)):
                        raise ValueError(f"{final} exists from another run (base, mode or "
                                         f"chunks differ); pass --force to overwrite it")
                    q.done = {r: "" for r in q.ranges}
                    q.resumed = len(q.ranges)
                else:
                    for r in q.ranges:
                        path = q.shard_path(out_dir, r)
                        if not force and os.path.exists(path) and \
                                finished_run(path, dump, mode, r):
                            q.done[r] = path
                            q.resumed += 1
                quants.append(q)
            return _drive(kind, ray, dump, base, quants, out_dir, options, threads, mode,
                          topk, reverse, js, max_tasks, ship_base, on_tokens, on_quant)
    finally:
        if not started:
            ray.shutdown()


def _drive(kind, ray, dump, base, quants, out_dir, options, threads, mode, topk, reverse, js,
           max_tasks, ship_base, on_tokens, on_quant) -> List[QuantOutcome]:
    """Submit the shards left, at most max_tasks in flight; write each shard's
    record as it returns; merge each quant once its shards are in."""
    gpu = 1 if options is not None and options.gpu_layers else 0
    task = ray.remote(run_shard if kind == "score" else run_compare_shard).options(
        num_cpus=threads, num_gpus=gpu, max_retries=MAX_RETRIES, retry_exceptions=False)
    progress_actor = ray.remote(_Tokens).options(num_cpus=0).remote()
    def tokens(r: Tuple[int, int]) -> int:
        return (r[1] - r[0]) * dump.rows_per_chunk

    total = sum(tokens(r) for q in quants for r in q.ranges)
    resumed_tokens = sum(tokens(r) for q in quants for r in q.done)
    base_size = dump.size
    model_refs: Dict[str, object] = {}
    kill_once = os.environ.get("QUANTKL_TEST_KILL_ONCE")
    opts = options.to_dict() if options is not None else None
    queue = [(q, r, ship_base, False) for q in quants for r in q.ranges if r not in q.done]
    pending: Dict[object, tuple] = {}
    outcomes: Dict[str, QuantOutcome] = {}
    # twice the tasks Ray can run at once: enough to keep every slot fed, few
    # enough that shipped rows do not pile up in the object store
    slots = max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
    cap = max_tasks or 2 * slots

    def finish(q: _Quant) -> None:
        out = QuantOutcome(q.model, shards_resumed=q.resumed,
                           shards_run=len(q.ranges) - q.resumed)
        if q.error:
            out.error = q.error
        else:
            out.record = os.path.join(out_dir, q.stem + ".json")
            shards = [q.done[r] for r in q.ranges]
            if any(shards):  # else the merged record is whole from an earlier run
                merge_records(shards, out.record, force=True)
        outcomes[q.model] = out
        if on_quant:
            on_quant(out)

    for q in quants:
        if len(q.done) == len(q.ranges):
            finish(q)
    while queue or pending:
        while queue and len(pending) < cap:
            q, r, ship, ship_model = queue.pop(0)
            if q.error:
                continue
            shipped = ray.put(ShippedDump(dump, r)) if ship else None
            if kind == "compare":
                sent = None
                if ship_model:  # the other dump's rows, as the base's
                    with LogitDump(q.model) as other:
                        sent = ray.put(ShippedDump(other, r))
                ref = task.remote(base, base_size, shipped, q.model, q.size, sent, r, threads,
                                  mode, list(topk), reverse, js, progress_actor, kill_once)
            else:
                if ship_model and q.model not in model_refs:
                    with open(q.model, "rb") as f:
                        model_refs[q.model] = ray.put(f.read())
                ref = task.remote(base, base_size, shipped, q.model, q.size,
                                  model_refs.get(q.model) if ship_model else None, r, opts,
                                  mode, list(topk), reverse, js, progress_actor, kill_once)
            pending[ref] = (q, r, ship, ship_model)
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
        if on_tokens:
            on_tokens(min(total, resumed_tokens + ray.get(progress_actor.get.remote())), total)
        for ref in ready:
            q, r, ship, ship_model = pending.pop(ref)
            try:
                status, payload = ray.get(ref)
            except Exception as e:  # the task's own error (a bad GGUF), or retries spent
                cause = getattr(e, "cause", None) or e
                if not q.error:
                    q.error = f"{os.path.basename(q.model)}: {_one_line(cause)}"
                    for other, (oq, *_rest) in list(pending.items()):
                        if oq is q:
                            ray.cancel(other)
                    finish(q)
                continue
            if status == "need-base":
                queue.insert(0, (q, r, True, ship_model))
                continue
            if status in ("need-model", "need-other"):
                queue.insert(0, (q, r, ship, True))
                continue
            if q.error:
                continue
            result, facts, info = payload
            info.n_chunk = dump.n_chunk
            path = q.shard_path(out_dir, r)
            meta = (score_metadata(dump, q.model, facts, info, None) if kind == "score"
                    else compare_metadata(dump, q.model, info))
            write_record(path, result, meta, force=True)
            q.done[r] = path
            if len(q.done) == len(q.ranges):
                finish(q)
    return [outcomes[q.model] for q in quants]


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__


class _Tokens:
    """Tokens scored across the cluster (an actor: workers add, the driver reads)."""

    def __init__(self):
        self.n = 0

    def add(self, n: int) -> None:
        self.n += n

    def get(self) -> int:
        return self.n


__all__ = ["score_quants", "compare_others", "QuantOutcome", "RayMissing", "default_shard_chunks", "INSTALL"]
