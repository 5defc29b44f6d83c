"""File handling every reader and writer shares: refusing what is not a
regular file before opening it, refusing an output path before a long run,
errors that name the file, and outputs that appear whole or not at all."""
from __future__ import annotations

import contextlib
import os
import stat
from typing import Iterator, List, Type


def regular_file_size(path: str, what: str = "file", error: Type[Exception] = ValueError) -> int:
    """The size of a regular file; ``error`` naming it for anything else (a
    FIFO would block open() forever, a directory cannot be read)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise error(f"{path}: cannot open: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise error(f"{path}: {kind}; a {what} must be a regular file")
    return st.st_size


def check_output_path(path: str, force: bool = True) -> None:
    """A clear error now, not after a long run, when ``path`` cannot be
    written: a directory is there, its folder does not exist, or (unless
    ``force``) a file is there already."""
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory; give a file name to write")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{path}: folder {folder} is not writable")
    if not force and os.path.exists(path):
        raise ValueError(f"{path} exists; pass --force to overwrite it")


@contextlib.contextmanager
def named_errors(path: str) -> Iterator[None]:
    """OSErrors raised deep inside a writer (numpy's zip files drop the file
    name) come out naming the file being written."""
    try:
        yield
    except OSError as e:
        if e.filename:
            raise
        raise OSError(e.errno, e.strerror or str(e), path) from None


@contextlib.contextmanager
def written_whole(*paths: str) -> Iterator[List[str]]:
    """Partial files (PATH.partial) to write ``paths`` through: renamed onto
    them, in order, when the block ends, and removed if it raises (a full
    disk, a signal), so that no half-written output is ever left."""
    partials = [p + ".partial" for p in paths]
    try:
        yield partials
        for partial, path in zip(partials, paths):
            os.replace(partial, path)
    except BaseException:
        for p in partials:
            if os.path.exists(p):
                os.unlink(p)
        raise
