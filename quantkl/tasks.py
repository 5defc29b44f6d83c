"""Task accuracy with llama-perplexity's protocols: HellaSwag, Winogrande and
multiple choice (MMLU, ARC, TruthfulQA-style), task by task as it scores them.

Which tasks, in which order: task_order.py, a replica of llama-perplexity's
random numbers.

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
from .task_order import llama_pick_order, llama_task_order
from .taskfiles import HellaswagTask, MultipleChoiceTask, WinograndeTask

WILSON_Z = 1.95996398454
TASK_NAMES = {"hellaswag": "HellaSwag", "winogrande": "Winogrande",
              "multiple-choice": "Multiple choice"}


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

