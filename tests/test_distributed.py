"""score --ray: quants and chunk shards as tasks on a local Ray (2 CPUs),
joined into the records a local run writes, to the last digit; retried
when a worker dies; a bad quant reported while the others finish; a
stopped driver resumed without redoing finished shards."""
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from quantkl.cli import main
from quantkl.records import load_result, read_record

NAME = "smollm2-q4_1-gpl3-c128.kld"
ARRAYS = ("kld", "nll", "nll_base", "rank", "top_base", "top_other", "p_top", "overlap", "token")


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_records(golden, quants, tmp_path_factory):
    """The two quants scored by a plain local run, the records --ray must equal."""
    out = tmp_path_factory.mktemp("local")
    assert main(["score", str(golden / NAME), "-m", quants["Q4_0"], quants["Q8_0"],
                 "--json-dir", str(out), "--threads", "1", "-q"]) == 0
    return out


def assert_same_records(a_dir, b_dir, stems):
    for stem in stems:
        a, b = read_record(str(a_dir / f"{stem}.json")), read_record(str(b_dir / f"{stem}.json"))
        sa, sb = a["statistics"], b["statistics"]
        assert sa.keys() == sb.keys()
        for k in sa:
            assert sa[k] == sb[k] or (sa[k] != sa[k] and sb[k] != sb[k]), (stem, k)
        ra, rb = load_result(str(a_dir / f"{stem}.json")), load_result(str(b_dir / f"{stem}.json"))
        for name in ARRAYS:
            np.testing.assert_array_equal(getattr(ra, name), getattr(rb, name), err_msg=name)
        assert ra.chunk_ends == rb.chunk_ends


@pytest.mark.parametrize("ship", [False, True])
def test_ray_records_equal_the_local_run(golden, quants, local_ray, local_records, tmp_path,
                                         capsys, ship):
    out = tmp_path / "ray"
    args = ["score", str(golden / NAME), "-m", quants["Q4_0"], quants["Q8_0"],
            "--json-dir", str(out), "--threads", "1", "--ray", "--shard-chunks", "1"]
    assert main(args + (["--ship-base"] if ship else [])) == 0
    printed = capsys.readouterr().out
    assert printed.count("====== KL divergence statistics ======") == 2
    assert "(2 shards scored, 0 from an earlier run)" in printed
    assert_same_records(local_records, out, ["smollm2-q4_0", "smollm2-q8_0"])
    assert sorted(os.listdir(out / "shards")) == sorted(
        f"smollm2-{t}.chunks-{c}-{c + 1}.{ext}" for t in ("q4_0", "q8_0") for c in (0, 1)
        for ext in ("json", "npz"))


def test_a_worker_killed_mid_task_is_retried(golden, quants, local_ray, local_records, tmp_path,
                                             monkeypatch):
    marker = tmp_path / "killed-once"
    monkeypatch.setenv("QUANTKL_TEST_KILL_ONCE", str(marker))
    out = tmp_path / "ray"
    assert main(["score", str(golden / NAME), "-m", quants["Q4_0"], quants["Q8_0"],
                 "--json-dir", str(out), "--threads", "1", "--ray", "--shard-chunks", "2",
                 "-q"]) == 0
    assert marker.exists()  # a worker did die after its first chunk
    assert_same_records(local_records, out, ["smollm2-q4_0", "smollm2-q8_0"])


def test_a_bad_quant_fails_alone(golden, quants, local_ray, tmp_path, capsys):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 200)
    out = tmp_path / "ray"
    code = main(["score", str(golden / NAME), "-m", quants["Q4_0"], str(bad), "--json-dir",
                 str(out), "--threads", "1", "--ray", "-q"])
    err = capsys.readouterr().err
    assert code == 1
    assert "quantkl score: error: broken.gguf:" in err and "1 of 2 models failed" in err
    assert (out / "smollm2-q4_0.json").exists() and not (out / "broken.json").exists()


def test_a_stopped_driver_resumes_without_redoing_shards(golden, quants, local_records,
                                                         tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "ray"
    cmd = [sys.executable, "-m", "quantkl", "score", str(golden / NAME), "-m", quants["Q4_0"],
           quants["Q8_0"], "--json-dir", str(out), "--threads", "1", "--ray", "--shard-chunks",
           "1", "--ray-tasks", "1", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = out / "shards"
    deadline = time.time() + 300
    while time.time() < deadline and not (shards.exists() and
                                          any(p.suffix == ".json" for p in shards.iterdir())):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) != 0
    first = {p.name: p.stat().st_mtime_ns for p in shards.iterdir() if p.suffix == ".json"}
    assert 1 <= len(first) < 4
    done = subprocess.run(cmd[:-1], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    for name, mtime in first.items():  # finished shards were not scored again
        assert (shards / name).stat().st_mtime_ns == mtime, name
    resumed = [int(n) for n in re.findall(r"(\d+) from an earlier run", done.stdout)]
    assert sum(resumed) == len(first) and len(resumed) == 2
    assert_same_records(local_records, out, ["smollm2-q4_0", "smollm2-q8_0"])


def test_ray_options_are_checked(golden, tmp_path, capsys, monkeypatch):
    base = str(golden / NAME)
    assert main(["score", base, "-m", "x.gguf", "--ray"]) == 1
    assert "give --json-dir DIR" in capsys.readouterr().err
    assert main(["score", base, "-m", "x.gguf", "--ship-base"]) == 1
    assert "--ship-base is an option of --ray" in capsys.readouterr().err
    assert main(["score", base, "-m", "x.gguf", "--ray", "--json-dir", str(tmp_path),
                 "--target-unc", "0.01"]) == 1
    assert "--target-unc does not go with --ray" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    assert main(["score", base, "-m", "x.gguf", "--ray", "--json-dir", str(tmp_path)]) == 1
    assert 'pip install "quantkl[ray]"' in capsys.readouterr().err


def test_nothing_else_imports_ray():
    code = ("import sys, quantkl, quantkl.cli, quantkl.evaluation, quantkl.reports, "
            "quantkl.kldz, quantkl.sparse; print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_compare_several_dumps_on_ray(golden, quants, local_ray, tmp_path, capsys):
    """compare BASE OTHER... --ray: the records compare --json-dir writes locally."""
    base = str(golden / NAME)
    dumps = []
    for t in ("Q4_0", "Q8_0"):
        path = str(tmp_path / f"{t.lower()}.kld")
        assert main(["dump", quants[t], str(golden / "gpl3.txt"), "--ctx", "128", "--chunks", "2",
                     "-o", path, "-q"]) == 0
        dumps.append(path)
    local, ray_dir = tmp_path / "local", tmp_path / "ray"
    assert main(["compare", base, *dumps, "--json-dir", str(local), "-q", "--js"]) == 0
    assert main(["compare", base, *dumps, "--json-dir", str(ray_dir), "--ray", "--threads", "1",
                 "--shard-chunks", "1", "--ship-base", "--js"]) == 0
    out = capsys.readouterr().out
    assert out.count("====== KL divergence statistics ======") == 4
    assert_same_records(local, ray_dir, ["q4_0", "q8_0"])
    for stem in ("q4_0", "q8_0"):
        np.testing.assert_array_equal(load_result(str(local / f"{stem}.json")).js,
                                      load_result(str(ray_dir / f"{stem}.json")).js)
    with pytest.raises(SystemExit):
        main(["compare", base])
    assert main(["compare", base, *dumps]) == 1
    assert "give --json-dir DIR" in capsys.readouterr().err


def test_a_worker_without_the_files_asks_for_them_and_uses_what_it_is_sent(golden, quants,
                                                                           tmp_path):
    """run_shard, a task's body, on a worker that sees neither file: it asks
    for the base and the model, then scores from the shipped rows and a
    node-local copy of the model, written once."""
    from quantkl.distributed import ShippedDump, run_shard
    from quantkl.dumpfile import LogitDump
    from quantkl.runner import ModelOptions
    model, base = quants["Q8_0"], str(golden / NAME)
    size = os.path.getsize(model)
    opts = ModelOptions(threads=1).to_dict()
    args = ((0, 1), opts, "llama", [1, 5, 10], False, False)
    gone = str(tmp_path / "not-here.gguf")
    assert run_shard(str(tmp_path / "nothing.kld"), 1, None, model, size, None, *args) == \
        ("need-base", None)
    with LogitDump(base) as dump:
        shipped = ShippedDump(dump, (0, 1))
        assert run_shard(base, dump.size, shipped, gone, size, None, *args) == ("need-model", None)
        with open(model, "rb") as f:
            status, (result, facts, info) = run_shard("/nowhere", 0, shipped, gone, size,
                                                      f.read(), *args)
        copy = os.path.join(tempfile.gettempdir(), "quantkl-models", f"{size}-not-here.gguf")
        assert status == "done" and os.path.getsize(copy) == size
        status, (local, *_rest) = run_shard(base, dump.size, None, model, size, None, *args)
    os.remove(copy)
    assert result.count == 63 and info.scored == (0, 1)
    np.testing.assert_array_equal(result.kld, local.kld)
