"""The KL-divergence workflow: dump a base, quantize, score quants against
the dump, compare two dumps, merge shard records."""
from __future__ import annotations

import os
import sys
import time
from typing import Optional

from ..dumpfile import LogitDump
from ..files import check_output_path
from ..records import check_record_path
from .console import (BAD_INPUT, EXIT_BAD_INPUT, EXIT_OK, Progress, chunk_table_printer,
                      describe, print_result, say)
from .options import mode_of, model_options, stop_rule


def cmd_dump(args) -> int:
    from ..evaluation import dump_base
    from ..inputs import EvalText
    from ..models import SAMPLE_TEXT, default_model
    model = args.model or default_model()
    text = EvalText(args.text or [str(SAMPLE_TEXT)], args.separator.encode().decode(
        "unicode_escape"))
    check_output_path(args.output, args.force)
    progress = Progress(args.quiet, "dump")
    try:
        ppl = dump_base(model, text, args.output, n_ctx=args.ctx, chunks=args.chunks,
                        options=model_options(args), on_chunk=progress, verbose=args.debug,
                        compress=args.compress, precise=args.precise)
    finally:
        progress.close()
    say(args, f"wrote {args.output}: {ppl.count} scored tokens from {os.path.basename(model)} "
              f"({text.kind}: {', '.join(os.path.basename(p) for p in text.paths)})")
    print(ppl.format())
    return EXIT_OK


def cmd_quantize(args) -> int:
    from ..models import default_model, quantize
    model = args.model or default_model()
    check_output_path(args.output, args.force)
    quantize(model, args.output, args.type, threads=args.threads or 0, verbose=args.debug)
    say(args, f"wrote {args.output} ({args.type.upper()} of {os.path.basename(model)}, "
              f"{os.path.getsize(args.output):,} bytes)")
    return EXIT_OK


def score_one(args, dump, model_path: str, record_path: Optional[str], save: Optional[str]):
    """Score one model against the open dump: table, block, record. Returns
    the in-memory QuantRecord for the closing table."""
    from ..evaluation import RunInfo, chunk_range, score_model
    from ..records import build_record, score_metadata, sidecar_path, write_record
    from ..reports import QuantRecord
    from ..runner import ModelRunner
    start = time.perf_counter()
    info = RunInfo()
    info.n_chunk = dump.n_chunk
    chunks = chunk_range(args.chunks, dump.n_chunk)
    with ModelRunner(model_path, dump.n_ctx, model_options(args), args.debug) as runner:
        if args.gpu_layers:
            say(args, f"{os.path.basename(runner.path)}: {runner.offloaded} of "
                      f"{runner.n_layer + 1} layers offloaded to the GPU")
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
        meta = score_metadata(dump, model_path, runner, info, save)
    if record_path:
        write_record(record_path, result, meta, force=True)
    path = record_path or model_path
    rec = build_record(result, meta, sidecar_path(path))
    name = os.path.splitext(os.path.basename(model_path))[0]
    return QuantRecord(path, rec, name, meta["model"]["size_bytes"],
                       meta["model"]["bits_per_weight"], _result=result)


def check_score_outputs(args, stems) -> None:
    """Refuse, before any model runs, outputs that cannot all be written."""
    if args.save and len(args.model) > 1:
        raise ValueError("--save writes one model's dump: give one --model")
    if args.json and args.json_dir:
        raise ValueError("--json names one record; with --json-dir each model gets its own")
    if args.json and len(args.model) > 1:
        raise ValueError("--json names one record: use --json-dir DIR for several models")
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


def cmd_score(args) -> int:
    from ..evaluation import chunk_range
    from ..records import finished_run
    if args.ray is not None:
        return run_on_ray(args, args.model)
    check_ray_flags(args)
    models = args.model
    many = len(models) > 1 or args.json_dir
    stems = [os.path.splitext(os.path.basename(m))[0] for m in models]
    check_score_outputs(args, stems)
    done, failed = [], []
    with LogitDump(args.base) as dump:
        chunks = chunk_range(args.chunks, dump.n_chunk)
        for model, stem in zip(models, stems):
            record_path = (os.path.join(args.json_dir, stem + ".json") if args.json_dir
                           else args.json)
            if many:
                say(args, f"=== {model}")
            try:
                if args.json_dir and not args.force and os.path.exists(record_path):
                    stops_early = args.target_unc is not None or args.target_unc_rel is not None
                    if stops_early or not finished_run(record_path, dump, mode_of(args), chunks):
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
    return closing_table(args, done, failed, models)


def check_ray_flags(args) -> None:
    for flag in ("shard_chunks", "ray_tasks", "ship_base"):
        if getattr(args, flag):
            raise ValueError(f"--{flag.replace('_', '-')} is an option of --ray")


def run_on_ray(args, inputs) -> int:
    """score or compare --ray: quantkl.distributed runs the tasks; this
    prints what a local run prints, each model or dump as it is merged, then
    the table."""
    from ..distributed import compare_others, score_quants
    from ..evaluation import chunk_range
    from ..printout import CHUNK_HEADER
    from ..records import load_result, read_record
    from ..reports import QuantRecord
    if not args.json_dir:
        raise ValueError("--ray writes one record per input: give --json-dir DIR")
    for flag, name in (("save", "--save"), ("json", "--json"), ("target_unc", "--target-unc"),
                       ("target_unc_rel", "--target-unc-rel")):
        if getattr(args, flag, None) is not None:
            raise ValueError(f"{name} does not go with --ray (tasks score fixed chunk ranges)")
    with LogitDump(args.base) as dump:
        chunks = chunk_range(args.chunks, dump.n_chunk)
    progress = Progress(args.quiet, "score", unit="token")
    done, failed = [], []

    def on_quant(out) -> None:
        if out.error:
            print(f"quantkl score: error: {out.error}", file=sys.stderr)
            failed.append(out.model)
            return
        say(args, f"=== {out.model} ({out.shards_run} shards scored, {out.shards_resumed} "
                  f"from an earlier run)")
        result, rec = load_result(out.record), read_record(out.record)
        say(args, CHUNK_HEADER)
        for i in range(len(result.chunk_ends)):
            say(args, result.format_chunk_row(i + 1, label=chunks[0] + i + 1))
        print_result(args, result)
        name = os.path.splitext(os.path.basename(out.model))[0]
        model = rec.get("model") or {}
        done.append(QuantRecord(out.record, rec, name, model.get("size_bytes"),
                                model.get("bits_per_weight"), _result=result))

    common = dict(address=args.ray, mode=mode_of(args), topk=args.topk, reverse=args.reverse_kl,
                  js=args.js, chunks=chunks, shard_chunks=args.shard_chunks,
                  max_tasks=args.ray_tasks, ship_base=args.ship_base, force=args.force,
                  on_tokens=progress, on_quant=on_quant)
    try:
        if args.command == "score":
            score_quants(args.base, inputs, args.json_dir, options=model_options(args), **common)
        else:
            compare_others(args.base, inputs, args.json_dir, threads=args.threads, **common)
    finally:
        progress.close()
    return closing_table(args, done, failed, inputs)


def closing_table(args, done, failed, inputs) -> int:
    """The comparison table after several inputs, the failures' line; the exit status."""
    from ..reports import check_comparable, comparison_table, load_records
    if len(done) > 1 or (done and failed):
        records = [r for r in done if not isinstance(r, str)]
        paths = [r for r in done if isinstance(r, str)]
        records += load_records(paths) if paths else []
        check_comparable(records)
        print()
        print(comparison_table(records).render("markdown"), end="")
    if failed:
        what = "models" if args.command == "score" else "dumps"
        print(f"quantkl {args.command}: {len(failed)} of {len(inputs)} {what} failed: "
              f"{', '.join(os.path.basename(m) for m in failed)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def cmd_compare(args) -> int:
    if args.ray is not None:
        return run_on_ray(args, args.other)
    check_ray_flags(args)
    if len(args.other) == 1 and not args.json_dir:
        compare_one(args, args.other[0], args.json)
        return EXIT_OK
    if args.json:
        raise ValueError("--json names one record: use --json-dir DIR for several dumps")
    if not args.json_dir:
        raise ValueError("several OTHER dumps write one record each: give --json-dir DIR")
    os.makedirs(args.json_dir, exist_ok=True)
    done, failed = [], []
    for other in args.other:
        say(args, f"=== {other}")
        stem = os.path.splitext(os.path.basename(other))[0]
        try:
            done.append(compare_one(args, other, os.path.join(args.json_dir, stem + ".json")))
        except BAD_INPUT as e:
            if args.debug:
                raise
            print(f"quantkl compare: error: {describe(e)}", file=sys.stderr)
            failed.append(other)
    return closing_table(args, done, failed, args.other)


def compare_one(args, other_path: str, record: Optional[str]) -> Optional[str]:
    """One OTHER dump against BASE: table, block, record (its path, or None)."""
    from ..evaluation import RunInfo, chunk_range, compare_dumps
    from ..records import compare_metadata, write_record
    if record:
        check_record_path(record, args.force)
    info = RunInfo()
    with LogitDump(args.base) as base, LogitDump(other_path) as other:
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
        if record:
            write_record(record, result, compare_metadata(base, other_path, info))
    return record


def cmd_merge(args) -> int:
    from ..records import merge_records
    rec = merge_records(args.records, args.output, args.force)
    say(args, f"wrote {args.output}: chunks {rec['chunks'][0]}:{rec['chunks'][1]}, "
              f"{rec['count']} tokens from {len(args.records)} shards")
    return EXIT_OK
