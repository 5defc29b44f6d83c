"""Task accuracy: HellaSwag, Winogrande and multiple choice against
llama-perplexity's printout on the task files quantkl ships (SmolLM2 and a
quant), llama.cpp's task orders, bad files, the paired McNemar test, and task
records in report and plot."""
import re
import struct
import subprocess

import pytest

from quantkl.cli import main
from quantkl.mcnemar import mcnemar_exact
from quantkl.models import SAMPLE_TEXT
from quantkl.taskfiles import (MultipleChoiceTask, read_hellaswag, read_multiple_choice,
                               read_winogrande, write_multiple_choice)
from quantkl.task_order import MersenneTwister, llama_pick_order, llama_task_order, uniform_below
from quantkl.task_records import read_task_record
from llama_tool import llama_perplexity

HELLASWAG = SAMPLE_TEXT.parent / "hellaswag-sample.txt"
WINOGRANDE = SAMPLE_TEXT.parent / "winogrande-sample.csv"
MULTIPLE_CHOICE = SAMPLE_TEXT.parent / "mc-sample.bin"


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


def discordant(path_a, path_b):
    """Tasks only A got right and tasks only B got right, counted from the records."""
    _, a = read_task_record(str(path_a))
    _, b = read_task_record(str(path_b))
    pairs = list(zip(a.outcomes, b.outcomes))
    return (sum(x.correct and not y.correct for x, y in pairs),
            sum(y.correct and not x.correct for x, y in pairs))


def test_paired_test_on_two_quants(quants, tmp_path, capsys):
    for q in ("Q4_0", "Q8_0"):
        assert main(["tasks", quants[q], "--hellaswag", str(HELLASWAG), "-q", "--json",
                     str(tmp_path / f"{q}.json")]) == 0
    capsys.readouterr()
    assert main(["diff", str(tmp_path / "Q4_0.json"), str(tmp_path / "Q8_0.json")]) == 0
    out = capsys.readouterr().out
    a_only, b_only = discordant(tmp_path / "Q4_0.json", tmp_path / "Q8_0.json")
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


def run_llama(lp, model, flag, path, n_tasks):
    extra = [] if n_tasks is None else [f"{flag}-tasks", str(n_tasks)]
    p = subprocess.run([str(lp), "-m", model, "-f", str(path), flag, *extra],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    return p


def task_lines(text):
    return [line for line in text.splitlines() if re.match(r"^\d+\t", line)]


@pytest.mark.parametrize("which, n_tasks", [("base", None), ("Q4_0", 20)])
def test_winogrande_matches_llama_perplexity(lp, smollm2, quants, which, n_tasks, tmp_path,
                                             capsys):
    model = smollm2 if which == "base" else quants[which]
    theirs = task_lines(run_llama(lp, model, "--winogrande", WINOGRANDE, n_tasks).stdout)
    argv = ["tasks", model, "--winogrande", str(WINOGRANDE), "--json", str(tmp_path / "w.json")]
    assert main(argv + ([] if n_tasks is None else ["--tasks", str(n_tasks)])) == 0
    out, err = capsys.readouterr()
    ours = task_lines(out)
    # the sample's last line is not read, by llama-perplexity or by quantkl, and quantkl says so
    assert len(ours) == len(theirs) == (n_tasks or 39)
    assert "line 41, the last, is not read" in err
    for a, b in zip(ours, theirs):
        n, acc, s1, s2, choice, answer = a.split()
        n_, acc_, t1, t2, choice_, answer_ = b.split()
        # the running accuracy, the choice and the answer to the digit; the
        # scores within llama.cpp's float sum over the vocabulary (it drops
        # terms below half an ulp of the running sum: its log-probs run high)
        assert (n, acc, choice, answer) == (n_, acc_, choice_, answer_)
        assert abs(float(s1) - float(t1)) < 5e-4 and abs(float(s2) - float(t2)) < 5e-4
    rec, result = read_task_record(str(tmp_path / "w.json"))
    assert rec["task"] == "winogrande" and rec["available"] == 39
    assert [o.number - 1 for o in result.outcomes] == llama_pick_order(39, n_tasks)
    assert [o.choice + 1 for o in result.outcomes] == [int(b.split()[4]) for b in theirs]


@pytest.mark.parametrize("which, n_tasks", [("base", None), ("Q4_0", 12)])
def test_multiple_choice_matches_llama_perplexity(lp, smollm2, quants, which, n_tasks,
                                                  tmp_path, capsys):
    model = smollm2 if which == "base" else quants[which]
    p = run_llama(lp, model, "--multiple-choice", MULTIPLE_CHOICE, n_tasks)
    argv = ["tasks", model, "--multiple-choice", str(MULTIPLE_CHOICE), "--json",
            str(tmp_path / "m.json")]
    assert main(argv + ([] if n_tasks is None else ["--tasks", str(n_tasks)])) == 0
    out = capsys.readouterr().out
    assert task_lines(out) == task_lines(p.stdout) and len(task_lines(out)) == (n_tasks or 30)
    finals = [line.split(" I ", 1)[1] for line in p.stderr.splitlines()
              if "Final result:" in line or "Random chance:" in line]
    assert len(finals) == 2
    for line in finals:
        assert line in out
    rec, result = read_task_record(str(tmp_path / "m.json"))
    assert rec["task"] == "multiple-choice" and rec["count"] == (n_tasks or 30)
    tasks = read_multiple_choice(MULTIPLE_CHOICE)
    for o in result.outcomes:
        assert len(o.scores) == len(tasks[o.number - 1].answers)
        assert o.choice == max(range(len(o.scores)), key=lambda s: (o.scores[s], -s))


def test_pick_order_is_llama_cpp_float_draw():
    order = llama_pick_order(39, 20)
    assert len(set(order)) == 20 and all(0 <= i < 39 for i in order)
    assert llama_pick_order(39, None) == llama_pick_order(39, 39) == list(range(39))
    # the draw scales the generator's output by 2^-32 in float32: first pick of 39
    assert order[0] == int(1791095845 / 2 ** 32 * 39)


def test_shipped_files_read_and_write_back(tmp_path):
    mc = read_multiple_choice(MULTIPLE_CHOICE)
    assert len(mc) == 30 and {len(t.answers) for t in mc} == {2, 3, 4}
    write_multiple_choice(tmp_path / "again.bin", mc)
    assert (tmp_path / "again.bin").read_bytes() == MULTIPLE_CHOICE.read_bytes()
    wg, unread = read_winogrande(WINOGRANDE)
    assert len(wg) == 39 and unread == 41 and wg[6].choices == ("Tom", "Ben")
    # a quoted sentence loses its quotes; the blank splits it
    assert wg[6].first.endswith("because ") and wg[6].second == " was much stronger."
    text = WINOGRANDE.read_text()
    (tmp_path / "all.csv").write_text(text + "\n")
    assert read_winogrande(tmp_path / "all.csv") == (read_winogrande(WINOGRANDE)[0] + [
        read_winogrande(tmp_path / "all.csv")[0][-1]], None)
    assert len(read_winogrande(tmp_path / "all.csv")[0]) == 40


def _mc_bytes(tasks):
    import tempfile
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        write_multiple_choice(f.name, tasks)
        return open(f.name, "rb").read()


def test_bad_winogrande_and_multiple_choice_files(smollm2, tmp_path, capsys):
    lines = WINOGRANDE.read_text().splitlines()
    good = read_multiple_choice(MULTIPLE_CHOICE)
    mc = MULTIPLE_CHOICE.read_bytes()
    six = MultipleChoiceTask(1, "Q?", list("abcdef"), [0, 0, 1, 0, 0, 0])
    cases = {
        "answer.csv": ("\n".join(lines[:5] + [lines[5].rsplit(",", 1)[0] + ",3"] + lines[6:])
                       + "\n", "--winogrande", "task 5 (line 6): the answer must be 1 or 2"),
        "blank.csv": ("\n".join(lines[:3] + [lines[3].replace("_", "X")] + lines[4:]) + "\n",
                      "--winogrande", "task 3 (line 4): the sentence has no _"),
        "commas.csv": ("\n".join(lines[:2] + ["7;a;b;c;1"] + lines[3:]) + "\n", "--winogrande",
                       "task 2 (line 3): not a Winogrande line"),
        "trunc.bin": (mc[:-7], "--multiple-choice", "task 30 (byte"),
        "foreign.bin": (HELLASWAG.read_bytes(), "--multiple-choice", "not a multiple-choice"),
        "labels.bin": (_mc_bytes(good[:3] + [MultipleChoiceTask(4, "Q?", ["a", "b"], [1, 1])]),
                       "--multiple-choice", "task 4 (byte"),
        "tail.bin": (mc + b"\0\0", "--multiple-choice", "2 bytes after the last task"),
        "six.bin": (_mc_bytes([six]), "--multiple-choice", "task 1 has 6 choices: it needs "
                                                            "--parallel 6"),
    }
    for name, (data, flag, words) in cases.items():
        path = tmp_path / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        code = main(["tasks", smollm2, flag, str(path), "-q"])
        err = capsys.readouterr().err
        assert code == 1 and words in err and err.count("\n") == 1, (name, err)
    assert main(["tasks", smollm2, "--multiple-choice", str(tmp_path / "six.bin"), "-q",
                 "-np", "6"]) == 0
    capsys.readouterr()
    for flag, path in (("--winogrande", WINOGRANDE), ("--multiple-choice", MULTIPLE_CHOICE)):
        code = main(["tasks", smollm2, flag, str(path), "--ctx", "4", "-q"])
        err = capsys.readouterr().err
        assert code == 1 and re.search(r"task \d+ does not fit in the context", err), err
    mc_counts = bytearray(mc)
    struct.pack_into("<I", mc_counts, 4, 9)  # the first task's offset
    (tmp_path / "offset.bin").write_bytes(bytes(mc_counts))
    with pytest.raises(ValueError, match="task 1 .*offset table says the task starts at byte 9"):
        read_multiple_choice(tmp_path / "offset.bin")


@pytest.fixture(scope="module")
def task_records(smollm2, quants, tmp_path_factory):
    d = tmp_path_factory.mktemp("task-records")
    for name, model in (("base", smollm2), ("Q4_0", quants["Q4_0"]), ("Q8_0", quants["Q8_0"])):
        for flag, path, tag in (("--winogrande", WINOGRANDE, "wg"),
                                ("--multiple-choice", MULTIPLE_CHOICE, "mc")):
            assert main(["tasks", model, flag, str(path), "-q", "--json",
                         str(d / f"{tag}-{name}.json")]) == 0
    assert main(["dump", smollm2, "-o", str(d / "base.kld"), "--ctx", "128", "--chunks", "2",
                 "-q"]) == 0
    for name in ("Q4_0", "Q8_0"):
        assert main(["score", str(d / "base.kld"), "-m", quants[name], "-q", "--json",
                     str(d / f"kld-{name}.json")]) == 0
    return d


def test_paired_winogrande_on_two_quants(task_records, capsys):
    d = task_records
    capsys.readouterr()
    assert main(["diff", str(d / "wg-Q4_0.json"), str(d / "wg-Q8_0.json")]) == 0
    out = capsys.readouterr().out
    a_only, b_only = discordant(d / "wg-Q4_0.json", d / "wg-Q8_0.json")
    assert f"{a_only} only A right, {b_only} only B right" in out
    assert main(["diff", str(d / "wg-Q4_0.json"), str(d / "mc-Q8_0.json")]) == 1
    assert "different task files" in capsys.readouterr().err


def test_report_and_plot_task_columns(task_records, capsys, tmp_path):
    from quantkl.reports import comparison_table, load_records
    d = task_records
    kld = [str(d / "kld-Q4_0.json"), str(d / "kld-Q8_0.json")]
    tasks = [str(d / f"{t}-{n}.json") for t in ("wg", "mc") for n in ("base", "Q4_0", "Q8_0")]
    table = comparison_table(load_records(kld + tasks))
    got = table.to_dict()
    columns = {"base": "SmolLM2-135M-Instruct.Q4_1", "Q4_0": "smollm2-q4_0",
               "Q8_0": "smollm2-q8_0"}
    assert sorted(got) == sorted(columns.values())
    for n, column in columns.items():
        for tag, label in (("wg", "Winogrande accuracy (39 tasks)"),
                           ("mc", "Multiple choice accuracy (30 tasks)")):
            rec, result = read_task_record(str(d / f"{tag}-{n}.json"))
            assert got[column][label] == rec["accuracy"] == result.correct / result.count
    # the KLD records' quants carry their accuracies; the base model has a column of its own
    assert got["smollm2-q4_0"]["KLD mean"] is not None
    assert table.quants[-1].startswith("SmolLM2") and got[table.quants[-1]]["KLD mean"] is None
    assert main(["report"] + kld + tasks[:3] + [str(d / "mc-base.json")]) == 0
    out = capsys.readouterr().out
    assert "Winogrande accuracy (39 tasks)" in out and "Multiple choice accuracy (30 tasks)" in out
    png = tmp_path / "wg.png"
    assert main(["plot", *tasks, "--y", "winogrande", "--x", "bpw", "-o", str(png), "-q"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", *tasks[:3], "--y", "mc", "-o", str(png)]) == 1
    assert "none of the records has what --y mc plots" in capsys.readouterr().err
    other = tmp_path / "other.csv"
    other.write_text(WINOGRANDE.read_text().replace("trophy", "cup"))
    assert main(["tasks", _model_of(d), "--winogrande", str(other), "-q", "--json",
                 str(tmp_path / "o.json")]) == 0
    assert main(["report", tasks[0], str(tmp_path / "o.json")]) == 1
    assert "different task files" in capsys.readouterr().err


def _model_of(d):
    rec, _ = read_task_record(str(d / "wg-Q8_0.json"))
    return rec["model"]["path"]


def test_winogrande_final_line_and_packed_hellaswag(lp, smollm2, tmp_path, capsys):
    # 120 tasks (the sample three times, ended by an empty line so that its
    # last line is read too): llama-perplexity prints its final score line
    lines = WINOGRANDE.read_text().splitlines()
    many = tmp_path / "wg120.csv"
    many.write_text("\n".join([lines[0]] + lines[1:] * 3) + "\n\n")
    p = run_llama(lp, smollm2, "--winogrande", many, None)
    final = next(line.split(" I ", 1)[1] for line in p.stderr.splitlines()
                 if "Final Winogrande score" in line)
    assert main(["tasks", smollm2, "--winogrande", str(many)]) == 0
    out, err = capsys.readouterr()
    assert "is not read" not in err and len(task_lines(out)) == 120
    assert final in out.splitlines()
    # --parallel 8 packs two HellaSwag tasks per decode, as llama-perplexity -np 8 does
    p = subprocess.run([str(lp), "-m", smollm2, "-f", str(HELLASWAG), "--hellaswag", "-np", "8"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert main(["tasks", smollm2, "--hellaswag", str(HELLASWAG), "-np", "8"]) == 0
    assert task_lines(capsys.readouterr().out) == task_lines(p.stdout)
