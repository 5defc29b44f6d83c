"""quantkl against llama-perplexity run here, on this CPU: the dump byte for
byte, the PPL line, and the KL-divergence printout to the printed digit."""
import subprocess

import pytest

from quantkl.cli import main
from llama_tool import llama_perplexity
from test_golden import assert_same_printout, upto_same_top


@pytest.fixture(scope="module")
def lp():
    return llama_perplexity()


@pytest.fixture(scope="module")
def llama_base(lp, smollm2, golden, tmp_path_factory):
    d = tmp_path_factory.mktemp("lp")
    out = d / "base.kld"
    p = subprocess.run([str(lp), "-m", smollm2, "-f", str(golden / "gpl3.txt"), "-c", "128",
                        "--chunks", "2", "-b", "128", "--kl-divergence-base", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    line = next(l for l in (p.stdout + p.stderr).splitlines() if "Final estimate" in l)
    return out, line[line.index("Final estimate"):]


def test_dump_is_byte_identical(llama_base, smollm2, golden, tmp_path, capsys):
    out, ppl_line = llama_base
    ours = tmp_path / "ours.kld"
    assert main(["dump", smollm2, str(golden / "gpl3.txt"), "-o", str(ours), "--ctx", "128",
                 "--chunks", "2"]) == 0
    assert ours.read_bytes() == out.read_bytes()
    printed = capsys.readouterr().out
    assert ppl_line in printed.splitlines()


@pytest.mark.parametrize("qtype", ["Q4_0", "Q8_0"])
def test_score_matches_llama_perplexity(lp, llama_base, quants, qtype, capsys):
    """Same table and block; a number may be one unit off in its last digit,
    where llama.cpp's float32 sums and quantkl's float64 ones round apart."""
    base, _ = llama_base
    p = subprocess.run([str(lp), "-m", quants[qtype], "-c", "128", "-b", "128",
                        "--kl-divergence-base", str(base), "--kl-divergence"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    theirs = p.stdout[p.stdout.index("chunk "):].rstrip("\n")
    assert main(["score", str(base), "--model", quants[qtype]]) == 0
    out = capsys.readouterr().out
    ours = upto_same_top(out[out.index("chunk "):]).rstrip("\n")
    assert_same_printout(ours, theirs)


@pytest.mark.parametrize("ours, theirs", [
    (["--batch", "100"], ["-b", "100"]),           # chunks decoded in slices of 100, 28
    (["--parallel", "2"], ["-b", "256"]),          # n_seq = 256 / 128 = 2 chunks a decode
])
def test_batch_and_parallel_match_llama_perplexity(lp, llama_base, quants, ours, theirs,
                                                   capsys):
    """llama.cpp's numbers depend on how a chunk is cut into decodes; with the
    same cut, quantkl prints llama-perplexity's block."""
    base, _ = llama_base
    p = subprocess.run([str(lp), "-m", quants["Q4_0"], "-c", "128", *theirs,
                        "--kl-divergence-base", str(base), "--kl-divergence"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    expected = p.stdout[p.stdout.index("chunk "):].rstrip("\n")
    assert main(["score", str(base), "--model", quants["Q4_0"], *ours]) == 0
    out = capsys.readouterr().out
    assert_same_printout(upto_same_top(out[out.index("chunk "):]).rstrip("\n"), expected)
