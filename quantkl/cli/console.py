"""How the commands speak: exit codes, progress bars, quiet-aware lines, the
per-chunk table, the closing statistics block and one-line errors."""
from __future__ import annotations

import sys
from typing import Callable

from ..dumpfile import DumpError
from ..runner import ModelError

EXIT_OK, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2

# Errors that are the input's or the environment's, not quantkl's: exit 1.
BAD_INPUT = (ValueError, TypeError, DumpError, ModelError, OSError, MemoryError)


def describe(e: BaseException) -> str:
    """One line for a bad-input error, naming the file where there is one."""
    if isinstance(e, MemoryError):
        return f"not enough memory ({e})" if str(e) else "not enough memory"
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return str(e)


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


def chunk_table_printer(args) -> Callable:
    """The on_chunk callback of a scoring run: llama-perplexity's per-chunk
    table from the running sums, and the progress bar."""
    from ..printout import CHUNK_HEADER
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
    """The statistics block, after a line on what was scored where a run
    stopped early or scored part of the dump."""
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
