"""Task accuracy (issue 11, HellaSwag so far): llama-perplexity's printout
to the digit on the task file quantkl ships, its task order, bad files, and
the paired McNemar test between two quants."""
import json
import subprocess

import pytest

from quantkl.cli import main
from quantkl.models import SAMPLE_TEXT
from quantkl.tasks import (MersenneTwister, llama_task_order, mcnemar_exact, read_hellaswag,
                           read_task_record, uniform_below)
from llama_tool import llama_perplexity

HELLASWAG = SAMPLE_TEXT.parent / "hellaswag-sample.txt"


def test_mersenne_twister_is_cpp_mt19937():
    rng = MersenneTwister(1)
    # std::mt19937(1)'s first outputs; the 10000th of the default seed is the standard's check
    assert [rng() for _ in range(3)] == [1791095845, 4282876139, 3093770124]
    rng = MersenneTwister(5489)
    for _ in range(9999):
        rng()
    assert rng() == 4123659995
    assert all(uniform_below(MersenneTwister(7), n) < n for n in (1, 2, 3, 1000, 2**31 + 5))


def test_task_order_is_a_shuffle():
    order = llama_task_order(24, 24)
    assert sorted(order) == list(range(24)) and order[:3] == [10, 23, 16]
    assert llama_task_order(24, 5) == order[:5]


@pytest.fixture(scope="module")
def lp():
    return llama_perplexity()


@pytest.mark.parametrize("which, n_tasks", [("base", None), ("Q4_0", 10)])
def test_hellaswag_matches_llama_perplexity(lp, smollm2, quants, which, n_tasks, tmp_path,
                                            capsys):
    model = smollm2 if which == "base" else quants[which]
    extra = [] if n_tasks is None else ["--hellaswag-tasks", str(n_tasks)]
    p = subprocess.run([str(lp), "-m", model, "-f", str(HELLASWAG), "--hellaswag", *extra],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    theirs = p.stdout[p.stdout.index("task\tacc_norm"):].strip()
    argv = ["tasks", model, "--hellaswag", str(HELLASWAG), "--json", str(tmp_path / "t.json")]
    assert main(argv + ([] if n_tasks is None else ["--tasks", str(n_tasks)])) == 0
    out = capsys.readouterr().out
    ours = out[out.index("task\tacc_norm"):out.index("\n\nhellaswag:")].strip()
    assert ours == theirs  # every running accuracy and interval, so every task's outcome
    rec, result = read_task_record(str(tmp_path / "t.json"))
    assert rec["count"] == (n_tasks or 24) and len(result.outcomes) == rec["count"]
    assert rec["task_file"]["sha256"] and rec["accuracy"] == result.correct / rec["count"]
    assert [o.number - 1 for o in result.outcomes] == llama_task_order(24, rec["count"])
    for o in result.outcomes:
        assert o.choice == max(range(4), key=lambda s: (o.scores[s], -s))


def test_paired_test_on_two_quants(quants, tmp_path, capsys):
    for q in ("Q4_0", "Q8_0"):
        assert main(["tasks", quants[q], "--hellaswag", str(HELLASWAG), "-q", "--json",
                     str(tmp_path / f"{q}.json")]) == 0
    capsys.readouterr()
    assert main(["diff", str(tmp_path / "Q4_0.json"), str(tmp_path / "Q8_0.json")]) == 0
    out = capsys.readouterr().out
    _, a = read_task_record(str(tmp_path / "Q4_0.json"))
    _, b = read_task_record(str(tmp_path / "Q8_0.json"))
    a_only = sum(x.correct and not y.correct for x, y in zip(a.outcomes, b.outcomes))
    b_only = sum(y.correct and not x.correct for x, y in zip(a.outcomes, b.outcomes))
    assert f"{a_only} only A right, {b_only} only B right" in out
    assert f"McNemar exact p = {mcnemar_exact(a_only, b_only):.4g}" in out


def test_mcnemar_exact_values():
    assert mcnemar_exact(1, 4) == pytest.approx(0.375)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    assert mcnemar_exact(7, 7) == 1.0


def test_bad_task_files(smollm2, tmp_path, capsys):
    lines = HELLASWAG.read_text().splitlines()
    cases = {
        "short.txt": ("\n".join(lines[:-1]) + "\n", "is not 6 per task"),
        "gold.txt": ("\n".join(lines[:7] + ["5"] + lines[8:]) + "\n", "task 2 (line 8)"),
    }
    for name, (text, words) in cases.items():
        (tmp_path / name).write_text(text)
        code = main(["tasks", smollm2, "--hellaswag", str(tmp_path / name)])
        err = capsys.readouterr().err
        assert code == 1 and words in err and err.count("\n") == 1, err
    code = main(["tasks", smollm2, "--hellaswag", str(HELLASWAG), "--ctx", "8"])
    err = capsys.readouterr().err
    assert code == 1 and "does not fit in the context" in err and "task " in err
    with pytest.raises(ValueError, match="gold ending must be 0-3"):
        read_hellaswag(tmp_path / "gold.txt")
