"""pack and unpack: a logits file to its lossless compressed form (.kldz)
and back."""
from __future__ import annotations

import os

from .console import EXIT_OK, Progress, say


def cmd_pack(args) -> int:
    from ..kldz import pack
    progress = Progress(args.quiet, "pack")
    try:
        pack(args.file, args.output, level=args.level, threads=args.threads, force=args.force,
             on_chunk=progress)
    finally:
        progress.close()
    size, packed = os.path.getsize(args.file), os.path.getsize(args.output)
    say(args, f"wrote {args.output}: {packed:,} bytes, {packed / size:.3f} of {args.file}")
    return EXIT_OK


def cmd_unpack(args) -> int:
    from ..kldz import unpack
    progress = Progress(args.quiet, "unpack")
    try:
        unpack(args.file, args.output, force=args.force, on_chunk=progress)
    finally:
        progress.close()
    say(args, f"wrote {args.output}: {os.path.getsize(args.output):,} bytes")
    return EXIT_OK
