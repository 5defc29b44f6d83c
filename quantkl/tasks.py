"""Task accuracy with llama-perplexity's protocols: HellaSwag so far.

HellaSwag (llama-perplexity ``--hellaswag``). The file has six lines per
task: the context, the index (0-3) of the right ending, and four endings.
Tasks are drawn in a random order fixed by llama.cpp: a Mersenne Twister
seeded with 1 picks, N times, one of the tasks not yet picked (C++'s
uniform_int_distribution as libstdc++ computes it), so the first N tasks of
the shuffle are scored. Each ending is tokenized as ``context + " " + ending``
with BOS; the tokens all four share are decoded once, shared by four
sequences, then each ending's own tokens in its sequence. An ending's score
is the mean log-probability of its tokens after the shared prefix (the first
from the last shared position's distribution); the highest score is the
model's choice (the first on a tie), and the accuracy is llama.cpp's
acc_norm with its Wilson 95 % interval. Tasks are decoded one per batch, four
sequences in one KV cache of 4 x n_ctx, as llama-perplexity does by default.
The log-softmax of every scored row goes through the C kernels.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from .dumpfile import regular_file_size
from .runner import ModelOptions, ModelRunner
from .scoring import score_rows

WILSON_Z = 1.95996398454


class MersenneTwister:
    """std::mt19937: 32-bit outputs, seeded as C++ seeds it (init_genrand)."""

    def __init__(self, seed: int):
        self.mt = [0] * 624
        self.mt[0] = seed & 0xFFFFFFFF
        for i in range(1, 624):
            prev = self.mt[i - 1]
            self.mt[i] = (1812433253 * (prev ^ (prev >> 30)) + i) & 0xFFFFFFFF
        self.index = 624

    def __call__(self) -> int:
        if self.index >= 624:
            mt = self.mt
            for i in range(624):
                y = (mt[i] & 0x80000000) | (mt[(i + 1) % 624] & 0x7FFFFFFF)
                mt[i] = mt[(i + 397) % 624] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
            self.index = 0
        y = self.mt[self.index]
        self.index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        return y ^ (y >> 18)


def uniform_below(rng: MersenneTwister, n: int) -> int:
    """std::uniform_int_distribution(0, n - 1)(rng) as libstdc++ (GCC 11 and
    later) computes it from a 32-bit engine: Lemire's multiply-and-shift with
    rejection."""
    product = rng() * n
    low = product & 0xFFFFFFFF
    if low < n:
        threshold = (0x100000000 - n) % n
        while low < threshold:
            product = rng() * n
            low = product & 0xFFFFFFFF
    return product >> 32


def llama_task_order(n_total: int, n_tasks: int) -> List[int]:
    """The tasks llama-perplexity scores, in its order (HellaSwag's shuffle)."""
    rng = MersenneTwister(1)
    left = list(range(n_total))
    return [left.pop(uniform_below(rng, len(left))) for _ in range(min(n_tasks, n_total))]


@dataclass
class HellaswagTask:
    number: int          # 1-based task number in the file
    context: str
    gold: int
    endings: Tuple[str, str, str, str]


def read_hellaswag(path: str | os.PathLike) -> List[HellaswagTask]:
    """Tasks of a llama.cpp HellaSwag file; ValueError naming the task that is wrong."""
    path = os.fspath(path)
    regular_file_size(path, "HellaSwag file")
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", errors="replace")
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e.strerror}") from None
    lines = text.split("\n")
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


@dataclass
class TaskOutcome:
    number: int
    gold: int
    choice: int
    scores: List[float]   # mean log-probability of each choice

    @property
    def correct(self) -> bool:
        return self.choice == self.gold


@dataclass
class TaskResult:
    """Outcomes of one task set, in llama-perplexity's order."""
    task: str
    outcomes: List[TaskOutcome] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.outcomes)

    @property
    def correct(self) -> int:
        return sum(o.correct for o in self.outcomes)

    @property
    def accuracy(self) -> float:
        return self.correct / self.count if self.count else float("nan")

    def interval(self, n: Optional[int] = None) -> Tuple[float, float]:
        """llama.cpp's Wilson score interval (95 %) after the first n tasks."""
        n = self.count if n is None else n
        freq = sum(o.correct for o in self.outcomes[:n]) / n
        z = WILSON_Z * WILSON_Z / n
        cnf = z * math.sqrt(n * (4.0 * freq * (1 - freq) + z)) / (WILSON_Z + WILSON_Z)
        return (freq + z * 0.5 - cnf) / (1.0 + z), (freq + z * 0.5 + cnf) / (1.0 + z)

    def format_line(self, n: int) -> str:
        """llama-perplexity's running line after task n (1-based)."""
        freq = sum(o.correct for o in self.outcomes[:n]) / n
        a, b = self.interval(n)
        return "%d\t%3.8f%%\t[%3.4f%%, %3.4f%%]" % (n, freq * 100.0, a * 100.0, b * 100.0)

    def format(self) -> str:
        lines = ["task\tacc_norm\t95% confidence interval"]
        lines += [self.format_line(n) for n in range(1, self.count + 1)]
        return "\n".join(lines) + "\n"


def _log_probs(logits: np.ndarray, tokens: Sequence[int], threads: int) -> np.ndarray:
    """log p(token) of each row by the kernels (exact mode: no cut)."""
    if len(tokens) == 0:
        return np.empty(0)
    rows = score_rows(logits, logits, np.asarray(tokens, np.int64), mode="exact", threads=threads)
    return -rows.nll_p


def score_hellaswag(model: str | os.PathLike, tasks: List[HellaswagTask], *,
                    n_tasks: Optional[int] = None, n_ctx: int = 512,
                    options: Optional[ModelOptions] = None, verbose: bool = False,
                    on_task: Optional[Callable[[int, int, TaskResult], None]] = None
                    ) -> TaskResult:
    """HellaSwag acc_norm as llama-perplexity --hellaswag computes it."""
    opts = options or ModelOptions()
    opts = ModelOptions(**{**opts.to_dict(), "parallel": max(4, opts.parallel)})
    order = llama_task_order(len(tasks), len(tasks) if n_tasks is None else n_tasks)
    result = TaskResult("hellaswag")
    with ModelRunner(model, n_ctx, opts, verbose, kv_unified=True) as runner:
        capacity = n_ctx * runner.parallel
        for i, t_index in enumerate(order):
            task = tasks[t_index]
            seqs = [runner.tokenize(task.context + " " + e) for e in task.endings]
            prefix = 0
            for k in range(len(seqs[0])):
                if not all(k < len(s) and s[k] == seqs[0][k] for s in seqs[1:]):
                    break
                prefix += 1
            if prefix == 0 or any(len(s) <= prefix for s in seqs):
                raise ValueError(f"task {task.number}: an ending adds no tokens to the context")
            required = prefix + sum(len(s) - prefix for s in seqs)
            if required > capacity:
                raise ValueError(f"task {task.number} does not fit in the context: it needs "
                                 f"{required} tokens, the context holds {capacity}")
            toks, pos, ids, outs = [], [], [], []
            for k in range(prefix):
                toks.append(seqs[0][k]); pos.append(k); ids.append((0, 1, 2, 3))
                outs.append(k == prefix - 1)
            for s, seq in enumerate(seqs):
                for k in range(prefix, len(seq)):
                    toks.append(seq[k]); pos.append(k); ids.append((s,))
                    outs.append(k < len(seq) - 1)
            logits = runner.decode_tokens(toks, pos, ids, outs)
            # row 0: the last shared position; then each ending's rows in turn
            targets = [seq[prefix] for seq in seqs]
            rows, row_tokens = [0] * 4, list(targets)
            r = 1
            owner = []
            for s, seq in enumerate(seqs):
                for k in range(prefix, len(seq) - 1):
                    rows.append(r); row_tokens.append(seq[k + 1]); owner.append(s)
                    r += 1
            lp = _log_probs(logits[rows], row_tokens, runner.threads)
            sums = [float(lp[s]) for s in range(4)]
            counts = [1] * 4
            for s, v in zip(owner, lp[4:]):
                sums[s] += float(v)
                counts[s] += 1
            scores = [sums[s] / counts[s] for s in range(4)]
            choice = max(range(4), key=lambda s: (scores[s], -s))
            result.outcomes.append(TaskOutcome(task.number, task.gold, choice, scores))
            if on_task:
                on_task(i + 1, len(order), result)
    return result


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts: the
    binomial test of a_only successes in a_only + b_only trials at 1/2."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    k = min(a_only, b_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


@dataclass
class PairedTasks:
    """Two models on the same tasks: McNemar's exact test on the discordant ones."""
    name_a: str
    name_b: str
    count: int
    correct_a: int
    correct_b: int
    a_only: int   # tasks A got right and B wrong
    b_only: int

    @property
    def p_value(self) -> float:
        return mcnemar_exact(self.a_only, self.b_only)

    @property
    def verdict(self) -> str:
        if self.p_value >= 0.05:
            return "not distinguishable at 95 %"
        return f"{self.name_a} better" if self.a_only > self.b_only else f"{self.name_b} better"

    def format(self) -> str:
        return (f"A = {self.name_a}: {self.correct_a}/{self.count} correct "
                f"({100 * self.correct_a / self.count:.2f} %)\n"
                f"B = {self.name_b}: {self.correct_b}/{self.count} correct "
                f"({100 * self.correct_b / self.count:.2f} %)\n"
                f"discordant tasks: {self.a_only} only A right, {self.b_only} only B right; "
                f"McNemar exact p = {self.p_value:.4g}\n"
                f"verdict: {self.verdict}\n")


def paired_tasks(a: TaskResult, b: TaskResult, name_a: str, name_b: str) -> PairedTasks:
    na = [o.number for o in a.outcomes]
    if na != [o.number for o in b.outcomes] or a.task != b.task:
        raise ValueError(f"{name_a} and {name_b} were scored on different tasks or task orders")
    ra = np.array([o.correct for o in a.outcomes])
    rb = np.array([o.correct for o in b.outcomes])
    return PairedTasks(name_a, name_b, len(ra), int(ra.sum()), int(rb.sum()),
                       int(np.sum(ra & ~rb)), int(np.sum(~ra & rb)))


def write_task_record(path: str, result: TaskResult, meta: dict, force: bool = False) -> None:
    """A task record: accuracy and its interval in JSON, the per-task
    outcomes (number, gold, choice, per-choice scores) in the .npz beside it;
    both written whole or not at all."""
    from . import __version__
    from .records import RECORD_VERSION, check_record_path, sidecar_path, write_json_and_arrays
    check_record_path(path, force)
    sidecar = sidecar_path(path)
    lo, hi = result.interval()
    record = {"record_version": RECORD_VERSION, "quantkl_version": __version__, "kind": "tasks",
              "task": result.task, "count": result.count, "correct": result.correct,
              "accuracy": result.accuracy, "interval95": [lo, hi], **meta,
              "per_task_file": os.path.basename(sidecar)}
    write_json_and_arrays(
        path, record, sidecar, number=np.array([o.number for o in result.outcomes], np.int64),
        gold=np.array([o.gold for o in result.outcomes], np.int64),
        choice=np.array([o.choice for o in result.outcomes], np.int64),
        scores=np.array([o.scores for o in result.outcomes], np.float64).reshape(
            result.count, -1))


def read_task_record(path: str) -> Tuple[dict, TaskResult]:
    """A task record and its per-task outcomes; ValueError naming what is wrong."""
    import json
    import zipfile
    regular_file_size(path, "record")
    try:
        with open(path) as f:
            rec = json.load(f)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a quantkl task record ({e})") from None
    if not isinstance(rec, dict) or rec.get("kind") != "tasks":
        raise ValueError(f"{path}: not a quantkl task record")
    for key, kind in (("task", str), ("count", int), ("per_task_file", str)):
        if not isinstance(rec.get(key), kind):
            raise ValueError(f"{path}: field '{key}' is missing or not {kind.__name__}")
    sidecar = os.path.join(os.path.dirname(os.path.abspath(path)),
                           os.path.basename(rec["per_task_file"]))
    try:
        with np.load(sidecar) as z:
            arr = {k: z[k] for k in ("number", "gold", "choice", "scores")}
    except OSError:
        raise ValueError(f"{path}: its per-task file {sidecar} is missing") from None
    except (KeyError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: its per-task file {sidecar} is damaged ({e})") from None
    if len(arr["number"]) != rec["count"]:
        raise ValueError(f"{path}: {sidecar} holds {len(arr['number'])} tasks, the record "
                         f"counts {rec['count']}")
    result = TaskResult(rec["task"], [
        TaskOutcome(int(n), int(g), int(c), [float(x) for x in s])
        for n, g, c, s in zip(arr["number"], arr["gold"], arr["choice"], arr["scores"])])
    return rec, result
