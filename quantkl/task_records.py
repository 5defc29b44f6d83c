"""Task records: accuracy and its interval in JSON, the per-task outcomes
(number, gold, choice, per-choice scores) in a .npz beside it, written
through records.py's one writer and schema stamp."""
from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, Optional, Tuple

import numpy as np

from .mcnemar import PairedTasks, paired_tasks
from .records import (check_record_path, file_entry, read_json_record, read_sidecar,
                      record_header, sidecar_path, write_json_and_arrays)
from .tasks import TASK_NAMES, TaskOutcome, TaskResult


def write_task_record(path: str, result: TaskResult, meta: dict, force: bool = False) -> None:
    """A task record: accuracy and its interval in JSON, the per-task
    outcomes (number, gold, choice, per-choice scores) in the .npz beside it;
    both written whole or not at all."""
    check_record_path(path, force)
    sidecar = sidecar_path(path)
    lo, hi = result.interval()
    width = max((len(o.scores) for o in result.outcomes), default=0)
    scores = np.full((result.count, width), np.nan)
    for i, o in enumerate(result.outcomes):
        scores[i, :len(o.scores)] = o.scores
    record = {**record_header("tasks"),
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
    if not os.path.isfile(path):
        return False
    try:
        rec = read_json_record(path)
    except ValueError:
        return False
    return isinstance(rec, dict) and rec.get("kind") == "tasks"


def read_task_record(path: str) -> Tuple[dict, TaskResult]:
    """A task record and its per-task outcomes; ValueError naming what is wrong."""
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


def task_metadata(model_path: str, task_path: str, result: TaskResult, n_ctx: int,
                  n_tasks: Optional[int]) -> Dict[str, Any]:
    """What a task record says besides its accuracy: the model (file and what
    llama.cpp reports), the task file and its hash, the context, the tasks
    asked for and how the model ran."""
    task_file = file_entry(task_path)
    with open(task_path, "rb") as f:
        task_file["sha256"] = hashlib.sha256(f.read()).hexdigest()
    return {"model": {**file_entry(model_path), **result.model}, "task_file": task_file,
            "n_ctx": n_ctx, "tasks_asked": n_tasks, "model_options": result.settings}


def paired_task_records(path_a: str, path_b: str) -> PairedTasks:
    """McNemar's test of two task records of the same task file."""
    (ra, a), (rb, b) = read_task_record(path_a), read_task_record(path_b)
    if (ra.get("task_file") or {}).get("sha256") != (rb.get("task_file") or {}).get("sha256"):
        raise ValueError(f"{path_a} and {path_b} were scored on different task files")

    def name(rec: Dict[str, Any], path: str) -> str:
        return os.path.splitext((rec.get("model") or {}).get("file", path))[0]

    return paired_tasks(a, b, name(ra, path_a), name(rb, path_b))
