"""Looking at a file or the machine: info (a dump's header and health) and
bench (the kernels' speed here)."""
from __future__ import annotations

import json

from ..dumpfile import inspect_dump
from .console import EXIT_BAD_INPUT, EXIT_OK, Progress


def cmd_info(args) -> int:
    info = inspect_dump(args.file)
    for key, value in info.lines():
        print(f"{key:<10}: {value}")
    return EXIT_OK if info.problem is None else EXIT_BAD_INPUT


def cmd_bench(args) -> int:
    from ..bench import check_kernels, check_memory, format_table, machine, measure_all, workloads
    kernels = check_kernels(args.kernels)
    check_memory(args.vocab, args.rows, kernels)
    progress = Progress(args.quiet or args.json, "timing", unit="round")
    try:
        results = measure_all(workloads(args.vocab, args.rows, args.threads, kernels),
                              on_round=progress)
    finally:
        progress.close()
    if args.json:
        print(json.dumps({"machine": machine(), "vocab": args.vocab, "rows": args.rows,
                          "threads": args.threads, "kernels": results}, indent=2))
    else:
        print(format_table(results, args.vocab, args.rows, args.threads))
    return EXIT_OK
