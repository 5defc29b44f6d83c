"""Run one command under the exit-status contract (see the package's
docstring): signals stop it cleanly, bad input is one line and exit 1, a bug
is exit 2."""
from __future__ import annotations

import os
import signal
import sys
from typing import List, Optional

from ..arrays import available_cores
from .console import BAD_INPUT, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_OK, describe
from .parser import build_parser


class Stopped(BaseException):
    """A signal asked quantkl to stop (SIGTERM, SIGHUP). A BaseException, like
    KeyboardInterrupt, so that only the cleanup in finally/with blocks runs."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


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
