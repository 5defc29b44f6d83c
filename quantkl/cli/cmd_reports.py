"""Commands over saved results: report (tables), diff (paired tests), plot,
worst (the tokens a quant damages most)."""
from __future__ import annotations

from .console import EXIT_OK, say
from .options import positions_of


def cmd_report(args) -> int:
    from ..reports import breakdown, comparison_table, load_records
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


def cmd_diff(args) -> int:
    from ..reports import load_records, paired_diff
    from ..task_records import is_task_record, paired_task_records
    if is_task_record(args.a) or is_task_record(args.b):
        print(paired_task_records(args.a, args.b).format(), end="")
        return EXIT_OK
    a, b = load_records([args.a, args.b], positions_of(args))
    print(paired_diff(a, b).format(), end="")
    return EXIT_OK


def cmd_plot(args) -> int:
    from ..plots import plot_records
    from ..reports import load_records
    plot_records(load_records(args.records), args.output, kind=args.kind, x=args.x, y=args.y,
                 width=args.width, height=args.height)
    say(args, f"wrote {args.output}")
    return EXIT_OK


def cmd_worst(args) -> int:
    from ..worst import worst_of_inputs
    for block in worst_of_inputs(args.inputs, args.model, args.top, args.percent,
                                 threads=args.threads, verbose=args.debug):
        print(block)
    return EXIT_OK
