"""Task accuracy with llama-perplexity's protocols: HellaSwag, Winogrande and
multiple choice (MMLU, ARC, TruthfulQA-style), task by task as it scores them.

Which tasks: with N of them asked, HellaSwag scores the first N of a shuffle
(a Mersenne Twister seeded with 1 picks, N times, one task not yet picked,
with C++'s uniform_int_distribution as libstdc++ computes it), all of them
shuffled when N is not given. Winogrande and multiple choice pick N tasks by
scaling the same generator's output by 2^-32 in float32 and swapping the
picked slot with the last; with no N (or N at least the file's count) they
score every task in file order.

How: every choice is one token sequence with BOS (a HellaSwag ending or an
answer after its context and a space; a Winogrande option put in the blank).
The tokens all choices share are decoded once, for all their sequences, and
each choice's own tokens in its sequence, in one unified KV cache of
parallel x n_ctx (parallel at least 4); as many whole tasks go in one decode
as fit in the context and in the sequence ids, as llama-perplexity packs them,
because the batch a token is decoded in can move its logits in the last
digits. A choice's score is the mean log-probability of its scored tokens,
summed in float32 as llama.cpp sums it; the log-softmax of every scored row
goes through the C kernels. HellaSwag and multiple choice score every token
after the shared prefix; Winogrande scores the rest of the sentence after the
option (see _winogrande_rows). The highest score is the choice (the first on
a tie; option 2 on a Winogrande tie).

What is printed is llama-perplexity's own lines: HellaSwag's running acc_norm
with its Wilson 95 % interval, Winogrande's running accuracy with both scores,
multiple choice's running accuracy, and the final lines where it prints them.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from .runner import ModelOptions, ModelRunner
from .scoring import score_rows
from .taskfiles import HellaswagTask, MultipleChoiceTask, WinograndeTask

WILSON_Z = 1.95996398454
TASK_NAMES = {"hellaswag": "HellaSwag", "winogrande": "Winogrande",
              "multiple-choice": "Multiple choice"}


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
class TaskOutcome:
    number: int
    gold: int
    choice: int
    scores: List[float]   # mean log-probability of each choice

    @property
    def correct(self) -> bool:
        return self.choice == self.gold


def llama_pick_order(n_total: int, n_tasks: Optional[int]) -> List[int]:
    """The tasks llama-perplexity's Winogrande and multiple choice score, in order."""
    if n_tasks is None or n_tasks >= n_total:
        return list(range(n_total))
    rng = MersenneTwister(1)
    scale = np.float32(1.0 / 2 ** 32)
    left = list(range(n_total))
    order = []
    for _ in range(n_tasks):
        j = int(scale * np.float32(rng()) * np.float32(len(left)))
        j = min(j, len(left) - 1)  # an output rounded up to 2^32 lands past the end in C++
        order.append(left[j])
        left[j] = left[-1]
        left.pop()
    return order


@dataclass
class TaskResult:
    """Outcomes of one task set, in llama-perplexity's order."""
    task: str                 # hellaswag, winogrande or multiple-choice
    outcomes: List[TaskOutcome] = field(default_factory=list)
    n_available: int = 0      # tasks in the file
    model: dict = field(default_factory=dict)  # what the runner says of the model
    settings: dict = field(default_factory=dict)  # the runner's options as run

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

    def llama_sigma(self, p: Optional[float] = None) -> float:
        """The ± llama-perplexity prints after Winogrande and multiple choice:
        sqrt(p (1 - p) / (n - 1)) in float32, as a fraction."""
        f = np.float32
        p = f(self.correct) / f(self.count) if p is None else f(p)
        return float(np.sqrt(p * (f(1) - p) / f(self.count - 1)))

    def header(self) -> Optional[str]:
        return {"hellaswag": "task\tacc_norm\t95% confidence interval",
                "multiple-choice": "task\tacc_norm"}.get(self.task)

    def format_line(self, n: int) -> str:
        """llama-perplexity's running line after task n (1-based)."""
        freq = sum(o.correct for o in self.outcomes[:n]) / n
        if self.task == "hellaswag":
            a, b = self.interval(n)
            return "%d\t%3.8f%%\t[%3.4f%%, %3.4f%%]" % (n, freq * 100.0, a * 100.0, b * 100.0)
        if self.task == "winogrande":
            o = self.outcomes[n - 1]
            return "%d\t%.4f\t%10.6f  %10.6f  %d  %d" % (n, 100.0 * freq, o.scores[0],
                                                         o.scores[1], o.choice + 1, o.gold + 1)
        return "%d\t%.8f" % (n, 100.0 * freq)

    def footer(self) -> List[str]:
        """The final lines llama-perplexity prints, where it prints them
        (Winogrande from 100 tasks on; multiple choice always: its test for
        fewer than 100 of a subset compares the count with itself)."""
        n, f = self.count, np.float32
        if self.task == "winogrande" and n >= 100:
            return ["Final Winogrande score(%d tasks): %.4f +/- %.4f"
                    % (n, f(100) * (f(self.correct) / f(n)), f(100) * f(self.llama_sigma()))]
        if self.task == "multiple-choice" and n >= 2:
            p = f(self.correct) / f(n)
            chance = f(n) / f(sum(len(o.scores) for o in self.outcomes))
            return ["Final result: %.4f +/- %.4f" % (f(100) * p, f(100) * f(self.llama_sigma())),
                    "Random chance: %.4f +/- %.4f" % (f(100) * chance,
                                                      f(100) * f(self.llama_sigma(chance)))]
        return []

    def format(self) -> str:
        lines = [h for h in [self.header()] if h]
        lines += [self.format_line(n) for n in range(1, self.count + 1)]
        return "\n".join(lines + self.footer()) + "\n"

    def summary(self) -> str:
        lo, hi = self.interval()
        return (f"{self.task}: {self.correct}/{self.count} tasks, "
                f"{'acc_norm' if self.task == 'hellaswag' else 'accuracy'} "
                f"{100 * self.accuracy:.4f} % [{100 * lo:.4f} %, {100 * hi:.4f} %] (95 %)")


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    n = 0
    for column in zip(*seqs):
        if any(t != column[0] for t in column[1:]):
            break
        n += 1
    return n


@dataclass
class _Prepared:
    """One task's token sequences (one per choice) and their shared prefix."""
    number: int
    seqs: List[List[int]]
    prefix: int

    @property
    def required(self) -> int:
        return self.prefix + sum(len(s) - self.prefix for s in self.seqs)


def _prepare(number: int, seqs: List[List[int]]) -> _Prepared:
    prefix = _common_prefix(seqs)
    if prefix == 0:
        raise ValueError(f"task {number}: its choices share no first token (no BOS?)")
    return _Prepared(number, seqs, prefix)


def _batches(runner: ModelRunner, tasks: List[_Prepared], max_tasks: int, all_outputs: bool):
    """Decode tasks as llama-perplexity packs them: as many whole tasks per
    batch as fit in the context (all sequences) and in max_tasks tasks' worth
    of sequence ids (capped by --parallel); each task's shared prefix once for
    all its sequences, logits at the prefix's last token and at each choice's
    tokens (all of them with all_outputs, else all but the last). Yields the
    tasks of a batch, where each task's logits start, and the logits."""
    capacity = runner.n_ctx * runner.parallel
    i0 = 0
    while i0 < len(tasks):
        toks, pos, ids, outs, starts = [], [], [], [], []
        n_cur = s0 = rows = 0
        i1 = i0
        while i1 < len(tasks) and n_cur + tasks[i1].required <= capacity:
            t = tasks[i1]
            k = len(t.seqs)
            if s0 + k > min(max_tasks * k, runner.parallel):
                if s0 == 0:
                    raise ValueError(f"task {t.number} has {k} choices: it needs --parallel "
                                     f"{k} or more")
                break
            starts.append(rows)
            for j in range(t.prefix):
                toks.append(t.seqs[0][j]); pos.append(j)
                ids.append(tuple(range(s0, s0 + k))); outs.append(j == t.prefix - 1)
            rows += 1
            for s, seq in enumerate(t.seqs):
                for j in range(t.prefix, len(seq)):
                    out = all_outputs or j < len(seq) - 1
                    toks.append(seq[j]); pos.append(j); ids.append((s0 + s,)); outs.append(out)
                    rows += out
            s0 += k
            n_cur += t.required
            i1 += 1
        if i1 == i0:
            raise ValueError(f"task {tasks[i0].number} does not fit in the context: it needs "
                             f"{tasks[i0].required} tokens, the context holds {capacity}")
        yield tasks[i0:i1], starts, runner.decode_tokens(toks, pos, ids, outs)
        i0 = i1


def _log_probs(logits: np.ndarray, rows: Sequence[int], tokens: Sequence[int],
               threads: int) -> np.ndarray:
    """log p(token) at each row, the log-softmax by the kernels (exact mode: no cut)."""
    if len(tokens) == 0:
        return np.empty(0)
    x = logits[np.asarray(rows, np.int64)]
    scored = score_rows(x, x, np.asarray(tokens, np.int64), mode="exact", threads=threads)
    return -scored.nll_p


def _mean_log_probs(t: _Prepared, start: int, logits: np.ndarray, threads: int) -> List[float]:
    """Each choice's mean log-probability over its tokens after the shared
    prefix, the first predicted at the prefix's last token (HellaSwag and
    multiple choice; rows as _batches lays them out without all_outputs)."""
    rows, toks, owner = [], [], []
    for s, seq in enumerate(t.seqs):
        rows.append(start); toks.append(seq[t.prefix]); owner.append(s)
    r = start + 1
    for s, seq in enumerate(t.seqs):
        for j in range(t.prefix, len(seq) - 1):
            rows.append(r); toks.append(seq[j + 1]); owner.append(s)
            r += 1
    lp = _log_probs(logits, rows, toks, threads)
    owner = np.asarray(owner)
    return [_float32_mean(lp[owner == s], int(np.sum(owner == s))) for s in range(len(t.seqs))]


def _float32_mean(values: np.ndarray, count: int) -> float:
    """llama.cpp's mean: float log-probabilities summed in float in order, over
    the count as a float (a count below zero is its unsigned count wrapped, a
    mean of 0). Kept because a choice between near-equal options follows it."""
    total = np.float32(0)
    for v in np.asarray(values, np.float32):
        total = np.float32(total + v)
    if count < 0:
        count += 2 ** 64
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(total / np.float32(count))  # 0/0 is NaN, as there


def _first_max(scores: Sequence[float]) -> int:
    best = 0
    for s in range(1, len(scores)):
        if scores[s] > scores[best]:
            best = s
    return best


def _open(model, n_ctx: int, options: Optional[ModelOptions], verbose: bool,
          result: "TaskResult") -> ModelRunner:
    """The model opened as llama-perplexity opens it for tasks: at least four
    sequences in one unified KV cache of parallel x n_ctx, batches of at most
    2048 tokens unless --batch says otherwise; what it says of itself goes in
    the result."""
    opts = (options or ModelOptions()).to_dict()
    opts["parallel"] = max(4, opts["parallel"])
    if opts["batch"] is None:
        opts["batch"] = min(2048, n_ctx * opts["parallel"])
    runner = ModelRunner(model, n_ctx, ModelOptions(**opts), verbose, kv_unified=True)
    result.model = {"bits_per_weight": runner.bits_per_weight, "description": runner.description}
    result.settings = runner.settings()
    return runner


def score_hellaswag(model: str | os.PathLike, tasks: List[HellaswagTask], *,
                    n_tasks: Optional[int] = None, n_ctx: int = 512,
                    options: Optional[ModelOptions] = None, verbose: bool = False,
                    on_task: Optional[Callable[[int, int, "TaskResult"], None]] = None
                    ) -> "TaskResult":
    """HellaSwag acc_norm as llama-perplexity --hellaswag computes it."""
    order = llama_task_order(len(tasks), len(tasks) if n_tasks is None else n_tasks)
    return _score_by_mean_log_prob(
        "hellaswag", model, tasks, order, lambda t: [t.context + " " + e for e in t.endings],
        "an ending adds no tokens to the context", n_ctx, options, verbose, on_task)


def score_multiple_choice(model: str | os.PathLike, tasks: List[MultipleChoiceTask], *,
                          n_tasks: Optional[int] = None, n_ctx: int = 512,
                          options: Optional[ModelOptions] = None, verbose: bool = False,
                          on_task: Optional[Callable[[int, int, "TaskResult"], None]] = None
                          ) -> "TaskResult":
    """Multiple-choice accuracy as llama-perplexity --multiple-choice computes it:
    each answer tokenized as ``question + " " + answer`` with BOS, scored by its
    mean log-probability after the tokens all answers share; the first best
    answer is the choice."""
    return _score_by_mean_log_prob(
        "multiple-choice", model, tasks, llama_pick_order(len(tasks), n_tasks),
        lambda t: [t.question + " " + a for a in t.answers],
        "an answer adds no tokens to the question", n_ctx, options, verbose, on_task)


def _score_by_mean_log_prob(task: str, model, tasks, order: List[int], choice_texts,
                            no_tokens: str, n_ctx: int, options: Optional[ModelOptions],
                            verbose: bool, on_task) -> "TaskResult":
    """HellaSwag's and multiple choice's common protocol: the choice with the
    best mean log-probability after the shared prefix (the first on a tie)."""
    result = TaskResult(task, n_available=len(tasks))
    with _open(model, n_ctx, options, verbose, result) as runner:
        prepared = []
        for t in (tasks[i] for i in order):
            p = _prepare(t.number, [runner.tokenize(text) for text in choice_texts(t)])
            if any(len(s) <= p.prefix for s in p.seqs):
                raise ValueError(f"task {t.number}: {no_tokens}")
            prepared.append(p)
        for batch, starts, logits in _batches(runner, prepared, 32, all_outputs=False):
            for p, start in zip(batch, starts):
                scores = _mean_log_probs(p, start, logits, runner.threads)
                result.outcomes.append(TaskOutcome(p.number, tasks[p.number - 1].gold,
                                                   _first_max(scores), scores))
                if on_task:
                    on_task(result.count, len(order), result)
    return result


# A Winogrande option is scored with the rest of the sentence after it only
# when both sentences keep more than this many tokens after their shared prefix.
WINOGRANDE_MIN_TRAILING = 3


def _winogrande_rows(t: _Prepared, n_base: Tuple[int, int], start: int
                     ) -> List[Tuple[List[int], List[int], int]]:
    """For each option, the logits rows, target tokens and count llama-perplexity
    scores. With enough tokens after the shared prefix, the option's own tokens
    are skipped and only the rest of the sentence is scored; otherwise all of
    it. The last token is left out when more than one remains. Rows are
    llama.cpp's: the first token of option 2, when its tokens are scored, is
    read from the last row of sentence 1 instead of the shared prefix's (the
    FIXME in perplexity.cpp); quantkl reads the same row so the scores agree."""
    seqs, cp = t.seqs, t.prefix
    skip = all(len(s) - cp > WINOGRANDE_MIN_TRAILING for s in seqs)
    out = []
    for s, seq in enumerate(seqs):
        nb = n_base[s] if skip else cp
        last = 1 if len(seq) - nb > 1 else 0
        first_row = start + nb - cp + (len(seqs[0]) - cp if s == 1 else 0)
        js = range(nb - 1, len(seq) - 1 - last)
        out.append(([first_row + i for i in range(len(js))], [seq[j + 1] for j in js],
                    len(seq) - nb - last))
    return out


def score_winogrande(model: str | os.PathLike, tasks: List[WinograndeTask], *,
                     n_tasks: Optional[int] = None, n_ctx: int = 512,
                     options: Optional[ModelOptions] = None, verbose: bool = False,
                     on_task: Optional[Callable[[int, int, "TaskResult"], None]] = None
                     ) -> "TaskResult":
    """Winogrande accuracy as llama-perplexity --winogrande computes it: each
    option put in the blank, the sentence tokenized with BOS, and the option
    whose sentence continues more probably (mean log-probability, summed in
    float32 as llama.cpp does) is chosen; option 2 on a tie."""
    order = llama_pick_order(len(tasks), n_tasks)
    result = TaskResult("winogrande", n_available=len(tasks))
    with _open(model, n_ctx, options, verbose, result) as runner:
        prepared, bases = [], []
        for t in (tasks[i] for i in order):
            prepared.append(_prepare(t.number, [runner.tokenize(t.first + c + t.second)
                                                for c in t.choices]))
            bases.append(tuple(len(runner.tokenize(t.first + c)) for c in t.choices))
        done = 0
        for batch, starts, logits in _batches(runner, prepared, 128, all_outputs=True):
            for p, start in zip(batch, starts):
                scores = []
                for rows, toks, count in _winogrande_rows(p, bases[done], start):
                    scores.append(_float32_mean(_log_probs(logits, rows, toks, runner.threads),
                                                count))
                task = tasks[p.number - 1]
                choice = 0 if scores[0] > scores[1] else 1
                result.outcomes.append(TaskOutcome(p.number, task.gold, choice, scores))
                done += 1
                if on_task:
                    on_task(result.count, len(order), result)
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
    width = max((len(o.scores) for o in result.outcomes), default=0)
    scores = np.full((result.count, width), np.nan)
    for i, o in enumerate(result.outcomes):
        scores[i, :len(o.scores)] = o.scores
    record = {"record_version": RECORD_VERSION, "quantkl_version": __version__, "kind": "tasks",
              "task": result.task, "count": result.count, "available": result.n_available,
              "correct": result.correct, "accuracy": result.accuracy, "interval95": [lo, hi],
              **({} if result.task == "hellaswag" or result.count < 2
                 else {"llama_sigma": result.llama_sigma()}),
              **meta, "per_task_file": os.path.basename(sidecar)}
    write_json_and_arrays(
        path, record, sidecar, number=np.array([o.number for o in result.outcomes], np.int64),
        gold=np.array([o.gold for o in result.outcomes], np.int64),
        choice=np.array([o.choice for o in result.outcomes], np.int64),
        n_choices=np.array([len(o.scores) for o in result.outcomes], np.int64), scores=scores)


def is_task_record(path: str) -> bool:
    """Whether path holds a task record (anything else, a FIFO included, is
    left to the KLD reader to refuse)."""
    from .records import read_json_record
    if not os.path.isfile(path):
        return False
    try:
        rec = read_json_record(path)
    except ValueError:
        return False
    return isinstance(rec, dict) and rec.get("kind") == "tasks"


def read_task_record(path: str) -> Tuple[dict, TaskResult]:
    """A task record and its per-task outcomes; ValueError naming what is wrong."""
    from .records import read_json_record, read_sidecar
    rec = read_json_record(path, "quantkl task record")
    if not isinstance(rec, dict) or rec.get("kind") != "tasks":
        raise ValueError(f"{path}: not a quantkl task record")
    if rec.get("task") not in TASK_NAMES:
        raise ValueError(f"{path}: unknown task {rec.get('task')!r}")
    for key, kind in (("task", str), ("count", int), ("per_task_file", str)):
        if not isinstance(rec.get(key), kind):
            raise ValueError(f"{path}: field '{key}' is missing or not {kind.__name__}")
    arr = read_sidecar(path, rec, "per_task_file", "per-task file",
                       ("number", "gold", "choice", "n_choices", "scores"))
    sidecar = rec["per_task_file"]
    if len(arr["number"]) != rec["count"]:
        raise ValueError(f"{path}: {sidecar} holds {len(arr['number'])} tasks, the record "
                         f"counts {rec['count']}")
    result = TaskResult(rec["task"], [
        TaskOutcome(int(n), int(g), int(c), [float(x) for x in s[:k]])
        for n, g, c, k, s in zip(arr["number"], arr["gold"], arr["choice"], arr["n_choices"],
                                 arr["scores"])], int(rec.get("available", 0)))
    return rec, result
