"""The ``quantkl`` command: dump, score, compare, info, quantize, bench, report, ...

Output follows llama-perplexity (per-chunk table, then the statistics block)
on stdout; progress bars go to stderr and only to a terminal. Exit status:
0 ok; 1 bad input or environment (a file, field or argument that will not do,
a full or read-only disk, not enough memory), one line on stderr naming it;
2 an internal error (a bug); 128 + N when signal N (SIGINT, SIGTERM, SIGHUP)
stops it, after removing whatever it had half written. ``--debug`` shows
tracebacks.

``parser`` builds the argument parser; ``cmd_kld`` (dump, quantize, score,
compare, merge), ``cmd_reports`` (report, diff, plot, worst), ``cmd_tasks``
and ``cmd_inspect`` (info, bench) hold the commands, each a thin layer over
the library; ``console`` is how they speak (progress, lines, errors);
``main`` runs one command under the exit-status contract.
"""
from .main import main
from .parser import build_parser

__all__ = ["main", "build_parser"]
