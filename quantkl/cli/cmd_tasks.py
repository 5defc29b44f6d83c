"""quantkl tasks: HellaSwag, Winogrande and multiple-choice accuracy as
llama-perplexity scores them."""
from __future__ import annotations

import sys

from ..records import check_record_path
from .console import EXIT_OK, Progress, say
from .options import model_options


def cmd_tasks(args) -> int:
    from .. import taskfiles, tasks
    from ..task_records import task_metadata, write_task_record
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
        write_task_record(args.json, result,
                          task_metadata(args.model, path, result, args.ctx, args.tasks),
                          force=True)
    return EXIT_OK
