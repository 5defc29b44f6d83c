"""llama.cpp's task files, read as llama-perplexity reads them and checked.

HellaSwag (``--hellaswag``): plain text, six lines per task: the context, the
index 0-3 of the right ending, then the four endings.

Winogrande (``--winogrande``): CSV, one task per line: an index (ignored), the
sentence with ``_`` where an option goes, option 1, option 2, the answer (1 or
2). Fields are cut at the first four commas outside double quotes; a quoted
sentence loses its quotes, the options are taken as written, and the answer is
read as a leading integer (so ``2\\r`` is 2). A first line that is not a task is
a header and skipped. llama-perplexity skips any other line it cannot parse;
quantkl refuses it, naming the line, so that no task goes missing unseen. Like
llama-perplexity (which strips the file's final newline and then stops at a
line that ends the input), quantkl does not read the last line of the file:
the same file gives the same tasks. End the file with an empty line to have
its last task scored by both.

Multiple choice (``--multiple-choice``, llama.cpp's binary format for MMLU,
ARC, TruthfulQA-style tasks), little-endian: ``u32`` task count, one ``u32``
byte offset per task, then each task: the question, then two answer sets
(``mc1``: one right answer, scored; ``mc2``: several, not scored), each set a
``u32`` count (at most 100), that many strings and that many ``i32`` labels
(1 right, 0 wrong). A string is a ``u32`` byte length and UTF-8 bytes.
"""
from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from typing import List, Optional, Tuple

from .files import regular_file_size

MAX_ANSWERS = 100  # llama.cpp's own limit on a multiple-choice answer set


@dataclass
class HellaswagTask:
    number: int          # 1-based task number in the file
    context: str
    gold: int
    endings: Tuple[str, str, str, str]


@dataclass
class WinograndeTask:
    number: int          # 1-based task number in the file (the header not counted)
    first: str           # the sentence before the blank
    second: str          # after it
    choices: Tuple[str, str]
    gold: int            # 0 or 1 (the file's answer minus one)


@dataclass
class MultipleChoiceTask:
    number: int
    question: str
    answers: List[str]
    labels: List[int]    # 1 for the right answer, 0 for the others

    @property
    def gold(self) -> int:
        return self.labels.index(1)


def _read_text(path: str, what: str) -> str:
    regular_file_size(path, what)
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e.strerror}") from None


def read_hellaswag(path: str | os.PathLike) -> List[HellaswagTask]:
    """Tasks of a llama.cpp HellaSwag file; ValueError naming the task that is wrong."""
    path = os.fspath(path)
    lines = _read_text(path, "HellaSwag file").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # std::getline does not see a line after the last newline
    if not lines:
        raise ValueError(f"{path}: empty HellaSwag file")
    if len(lines) % 6:
        raise ValueError(f"{path}: not a HellaSwag file: {len(lines)} lines is not 6 per task "
                         f"(context, gold index, four endings)")
    tasks = []
    for i in range(0, len(lines), 6):
        n = i // 6 + 1
        gold = lines[i + 1].strip()
        if not gold.lstrip("-").isdigit() or not 0 <= int(gold) <= 3:
            raise ValueError(f"{path}: task {n} (line {i + 2}): the gold ending must be 0-3, "
                             f"got {lines[i + 1][:40]!r}")
        tasks.append(HellaswagTask(n, lines[i], int(gold), tuple(lines[i + 2:i + 6])))
    return tasks


def _csv_commas(line: str) -> List[int]:
    """Positions of the first four commas outside double quotes."""
    out, quoted = [], False
    for i, c in enumerate(line):
        if c == '"':
            quoted = not quoted
        elif c == "," and not quoted:
            out.append(i)
            if len(out) == 4:
                break
    return out


_LEADING_INT = re.compile(r"\s*([+-]?\d+)")


def read_winogrande(path: str | os.PathLike) -> Tuple[List[WinograndeTask], Optional[int]]:
    """Tasks of a llama.cpp Winogrande CSV as llama-perplexity reads them, and
    the number of a last line it leaves unread (None when that is blank);
    ValueError naming the task that is wrong."""
    path = os.fspath(path)
    text = _read_text(path, "Winogrande file")
    # llama.cpp drops the file's final newline, then stops at a line that ends
    # the input: the last line is never read unless an empty line follows it
    lines = text[:-1].split("\n") if text.endswith("\n") else text.split("\n")
    unread = None if not lines[-1].strip() else len(lines)
    tasks: List[WinograndeTask] = []
    for ln, line in enumerate(lines[:-1], 1):
        if not line.strip():
            continue
        where = f"{path}: task {len(tasks) + 1} (line {ln})"
        try:
            tasks.append(_winogrande_task(line, len(tasks) + 1))
        except ValueError as e:
            if ln == 1:
                continue  # a header line (llama.cpp skips it as unreadable too)
            raise ValueError(f"{where}: {e}") from None
    if not tasks:
        raise ValueError(f"{path}: no Winogrande tasks in the file")
    return tasks, unread


def _winogrande_task(line: str, number: int) -> WinograndeTask:
    commas = _csv_commas(line)
    if len(commas) != 4:
        raise ValueError(f"not a Winogrande line (index, sentence, option 1, option 2, "
                         f"answer): found {len(commas)} separating commas")
    c0, c1, c2, c3 = commas
    answer = _LEADING_INT.match(line[c3 + 1:])
    if answer is None or not 1 <= int(answer.group(1)) <= 2:
        raise ValueError(f"the answer must be 1 or 2, got {line[c3 + 1:][:20]!r}")
    sentence = line[c0 + 2:c1 - 1] if line[c0 + 1:c0 + 2] == '"' else line[c0 + 1:c1]
    blank = sentence.find("_")
    if blank < 0:
        raise ValueError("the sentence has no _ where an option goes")
    return WinograndeTask(number, sentence[:blank], sentence[blank + 1:],
                          (line[c1 + 1:c2], line[c2 + 1:c3]), int(answer.group(1)) - 1)


class _Reader:
    """Little-endian fields of a multiple-choice file, with the task being read
    named in every error."""

    def __init__(self, data: bytes, path: str):
        self.data, self.path, self.pos, self.task = data, path, 0, 0

    def fail(self, what: str):
        where = f"task {self.task}" if self.task else "header"
        raise ValueError(f"{self.path}: {where} (byte {self.pos}): {what}")

    def u32(self, what: str) -> int:
        if self.pos + 4 > len(self.data):
            self.fail(f"the file ends inside {what} (truncated?)")
        (v,) = struct.unpack_from("<I", self.data, self.pos)
        self.pos += 4
        return v

    def string(self, what: str) -> str:
        n = self.u32(f"the length of {what}")
        if self.pos + n > len(self.data):
            self.fail(f"the file ends inside {what} ({n} bytes announced; truncated?)")
        s = self.data[self.pos:self.pos + n].decode("utf-8", errors="replace")
        self.pos += n
        return s

    def answer_set(self, name: str) -> Tuple[List[str], List[int]]:
        n = self.u32(f"the {name} answer count")
        if n > MAX_ANSWERS:
            self.fail(f"{n} {name} answers (llama.cpp reads at most {MAX_ANSWERS}): not a "
                      f"multiple-choice file?")
        answers = [self.string(f"{name} answer {k + 1}") for k in range(n)]
        if self.pos + 4 * n > len(self.data):
            self.fail(f"the file ends inside the {name} labels (truncated?)")
        labels = list(struct.unpack_from(f"<{n}i", self.data, self.pos))
        self.pos += 4 * n
        return answers, labels


def read_multiple_choice(path: str | os.PathLike) -> List[MultipleChoiceTask]:
    """Tasks of llama.cpp's binary multiple-choice file; ValueError naming the task."""
    path = os.fspath(path)
    regular_file_size(path, "multiple-choice file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e.strerror}") from None
    r = _Reader(data, path)
    n_task = r.u32("the task count")
    if n_task == 0:
        r.fail("no tasks")
    if 4 + 4 * n_task > len(data):
        r.fail(f"{n_task} tasks announced but the file is {len(data)} bytes: not a "
               f"multiple-choice file, or truncated")
    offsets = [r.u32("the task offsets") for _ in range(n_task)]
    tasks = []
    for i in range(n_task):
        r.task = i + 1
        if offsets[i] != r.pos:
            r.fail(f"the offset table says the task starts at byte {offsets[i]}")
        question = r.string("the question")
        answers, labels = r.answer_set("mc1")
        r.answer_set("mc2")
        if not question or not answers or any(not a for a in answers):
            r.fail("an empty question or answer")
        if any(v not in (0, 1) for v in labels) or labels.count(1) != 1:
            r.fail(f"labels must mark exactly one right answer with 1 and the others with 0, "
                   f"got {labels}")
        tasks.append(MultipleChoiceTask(i + 1, question, answers, labels))
    if r.pos != len(data):
        r.task = 0
        r.fail(f"{len(data) - r.pos} bytes after the last task: not a multiple-choice file")
    return tasks


def write_multiple_choice(path: str | os.PathLike, tasks: List[MultipleChoiceTask]) -> None:
    """Write tasks in llama.cpp's binary multiple-choice format (mc2 left empty)."""
    def string(s: str) -> bytes:
        b = s.encode("utf-8")
        return struct.pack("<I", len(b)) + b

    bodies = []
    for t in tasks:
        if len(t.answers) != len(t.labels) or not 0 < len(t.answers) <= MAX_ANSWERS:
            raise ValueError(f"task {t.number}: {len(t.answers)} answers and {len(t.labels)} "
                             f"labels (1 to {MAX_ANSWERS} of each, as many of one as the other)")
        bodies.append(string(t.question) + struct.pack("<I", len(t.answers))
                      + b"".join(string(a) for a in t.answers)
                      + struct.pack(f"<{len(t.labels)}i", *t.labels) + struct.pack("<I", 0))
    offsets, pos = [], 4 + 4 * len(tasks)
    for b in bodies:
        offsets.append(pos)
        pos += len(b)
    with open(path, "wb") as f:
        f.write(struct.pack(f"<I{len(tasks)}I", len(tasks), *offsets) + b"".join(bodies))
