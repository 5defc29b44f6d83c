"""The quantkl command end to end on real GGUF models and llama.cpp's files."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import quantkl
from quantkl.cli import main
from quantkl.dumpfile import LogitDump
from conftest import cpu_has_avx512
from test_golden import assert_same_printout, block_of, upto_same_top

GOLDEN_KLD = "smollm2-q4_1-gpl3-c128.kld"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def base_dump(tmp_path_factory, smollm2, golden):
    """`quantkl dump` of the golden text with the golden settings, made on this machine."""
    out = tmp_path_factory.mktemp("dump") / "base.kld"
    code = main(["dump", smollm2, str(golden / "gpl3.txt"), "-o", str(out), "--ctx", "128",
                 "--chunks", "2", "-q"])
    assert code == 0
    return out


def test_dump_matches_the_golden_file(base_dump, golden, capsys):
    ours, theirs = LogitDump(base_dump), LogitDump(golden / GOLDEN_KLD)
    assert (ours.n_ctx, ours.n_vocab, ours.n_chunk) == (theirs.n_ctx, theirs.n_vocab, theirs.n_chunk)
    np.testing.assert_array_equal(ours.tokens, theirs.tokens)  # tokenization: bit-exact
    assert base_dump.stat().st_size == (golden / GOLDEN_KLD).stat().st_size
    rows_ours, rows_theirs = ours.all_rows(), theirs.all_rows()
    if cpu_has_avx512():
        # The golden files come from an AVX-512 machine: there llama.cpp's
        # forward pass is the same and the rows match to its rounding.
        from rowcheck import assert_llama_rows_close
        assert_llama_rows_close(np.asarray(rows_ours.rows), np.asarray(rows_theirs.rows))
    else:
        # Without AVX-512 llama.cpp's own CPU kernels give other logits for the
        # same model (measured: PPL 29.62 vs 29.14, KL 0.0065 between the two
        # dumps, with llama-perplexity and llama-cpp-python alike). What is
        # checked then: the two dumps are the same model to within that floor.
        r = quantkl.score(rows_theirs, rows_ours, ours.scored_tokens())
        assert r.kld_mean < 0.02 and r.same_top > 0.85


def test_dump_prints_the_base_ppl_line(smollm2, golden, tmp_path, capsys):
    code, out, err = run(capsys, "dump", smollm2, golden / "gpl3.txt", "-o", tmp_path / "b.kld",
                         "--ctx", "128", "--chunks", "2")
    assert code == 0, err
    line = [l for l in out.splitlines() if l.startswith("Final estimate")][0]
    assert re.fullmatch(r"Final estimate: PPL = \d+\.\d{4} \+/- \d+\.\d{5}", line)
    ppl = float(line.split()[4])
    golden_ppl = float((golden / "llama-perplexity-base.txt").read_text().split()[4])
    if cpu_has_avx512():
        assert line == (golden / "llama-perplexity-base.txt").read_text().strip()
    else:
        assert ppl == pytest.approx(golden_ppl, rel=0.03)  # see test_dump_matches_the_golden_file
    # and the line is what the rows say: exp(mean NLL) re-derived from the file
    d = LogitDump(tmp_path / "b.kld")
    rows = d.all_rows()
    tok = d.scored_tokens()
    hdr = np.asarray(rows.rows[:, :4]).copy().view(np.float32)
    nll = -(hdr[:, 0].astype(np.float64) * np.asarray(rows.rows)[np.arange(len(tok)), 4 + tok]
            + hdr[:, 1])
    assert np.exp(nll.mean()) == pytest.approx(ppl, rel=2e-4)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q8_0"])
def test_score_prints_llama_perplexity_block(qtype, quants, golden, tmp_path, capsys):
    code, out, err = run(capsys, "score", golden / GOLDEN_KLD, "--model", quants[qtype],
                         "--json", tmp_path / "r.json")
    assert code == 0, err
    expected = (golden / f"llama-perplexity-kld-{qtype}.txt").read_text()
    assert out[len(upto_same_top(out)):].startswith("\n====== Beyond llama-perplexity ======")
    lines = upto_same_top(out).rstrip("\n").splitlines()
    assert lines[0] == expected.splitlines()[0]  # the per-chunk table header
    assert len(lines) == len(expected.rstrip("\n").splitlines())
    if cpu_has_avx512():
        assert_same_printout(block_of(out), block_of(expected))
    else:
        # Same layout and labels; the figures differ as the model's logits do
        # on this CPU (see test_dump_matches_the_golden_file). llama.cpp's own
        # digits are reproduced from its logits in test_golden.py.
        num = re.compile(r" *-?\d+\.\d+")  # numbers and their padding
        assert num.sub("#", block_of(out)) == num.sub("#", block_of(expected))
        got = json.loads((tmp_path / "r.json").read_text())["statistics"]
        want = float(re.search(r"Mean    KLD:\s+(\S+)", expected).group(1))
        assert got["kld_mean"] == pytest.approx(want, rel=0.1)
        assert got["ppl_base"] == pytest.approx(29.135631, rel=1e-6)  # from the file: exact


def test_json_record(quants, golden, tmp_path, capsys):
    rec_path = tmp_path / "q8.json"
    code, _, err = run(capsys, "score", golden / GOLDEN_KLD, "--model", quants["Q8_0"],
                       "--json", rec_path, "-q")
    assert code == 0, err
    rec = json.loads(rec_path.read_text())
    assert rec["kind"] == "score" and rec["mode"] == "llama"
    assert (rec["n_ctx"], rec["n_chunk"], rec["n_vocab"], rec["count"]) == (128, 2, 49152, 126)
    assert rec["model"]["file"] == "smollm2-q8_0.gguf"
    assert rec["model"]["size_bytes"] == os.path.getsize(quants["Q8_0"])
    assert 8.0 < rec["model"]["bits_per_weight"] < 9.0
    assert rec["base"]["size_bytes"] == (golden / GOLDEN_KLD).stat().st_size
    assert rec["quantkl_version"] == quantkl.__version__
    assert rec["statistics"]["same_top"] > 0.9
    assert sum(rec["per_token_summary"]["rank_histogram"]) == 126
    z = np.load(tmp_path / rec["per_token_file"])
    assert z["kld"].mean() == pytest.approx(rec["statistics"]["kld_mean"])


def test_compare_agrees_with_score(quants, golden, tmp_path, capsys):
    """Scoring the quant's saved dump instead of its float logits changes each
    log q by at most half a code step, (M - m)/65535/2 <= 16/65535/2 = 1.2e-4
    nats, plus the clipped tail (log q below the clip point): so mean KLD and
    mean NLL agree to a few 1e-4, and same-top may differ only where two top
    logits fall in one code step."""
    save, j1, j2 = tmp_path / "q4.kld", tmp_path / "score.json", tmp_path / "cmp.json"
    assert run(capsys, "score", golden / GOLDEN_KLD, "--model", quants["Q4_0"], "--save", save,
               "--json", j1, "-q")[0] == 0
    code, out, err = run(capsys, "compare", golden / GOLDEN_KLD, save, "--json", j2)
    assert code == 0, err
    assert "====== KL divergence statistics ======" in out
    a = json.loads(j1.read_text())["statistics"]
    b = json.loads(j2.read_text())["statistics"]
    assert abs(a["kld_mean"] - b["kld_mean"]) < 5e-4
    assert b["ppl"] == pytest.approx(a["ppl"], rel=2.5e-4)
    assert b["ppl_base"] == a["ppl_base"]
    assert abs(a["same_top"] - b["same_top"]) <= 1 / 126 + 1e-12
    assert abs(a["dp_rms"] - b["dp_rms"]) < 1e-3


def test_info(golden, capsys):
    code, out, _ = run(capsys, "info", golden / GOLDEN_KLD)
    assert code == 0
    assert "n_ctx     : 128" in out and "n_vocab   : 49,152" in out
    assert "chunks    : 2 (63 scored rows each, 126 rows)" in out
    assert "status    : whole" in out
    assert "tokens    : 42185, 28807, 35185" in out


def test_bench_reports_each_yardstick(capsys):
    """Each kernel's rate beside the numpy baseline, llama.cpp's loop and the
    memory read, all measured in the run; the derived columns follow from
    them."""
    code, out, err = run(capsys, "bench", "--vocab", "4099", "--rows", "6",
                         "--kernels", "u16xf32,encode,sparsexf32", "--json")
    assert code == 0, err
    got = json.loads(out)["kernels"]
    assert [(k["name"], k["mode"]) for k in got] == [("u16xf32", "llama"), ("u16xf32", "exact"),
                                                     ("encode", "llama"), ("sparsexf32", "llama"),
                                                     ("sparsexf32", "exact")]
    for k in got:
        for field in ("rate_M_per_s", "reference_rate_M_per_s", "llama_loop_rate_M_per_s",
                      "read_loop_GB_per_s"):
            assert 0 < k[field] < float("inf"), field
        if k["name"] != "sparsexf32":  # its bytes per entry follow its stored share
            assert k["GB_per_s"] == pytest.approx(k["rate_M_per_s"] * 6 / 1e3)
        assert k["llama_loop_ratio"] == pytest.approx(k["rate_M_per_s"] /
                                                      k["llama_loop_rate_M_per_s"])
        assert k["read_loop_fraction"] == pytest.approx(k["GB_per_s"] / k["read_loop_GB_per_s"])
    assert len({k["read_loop_GB_per_s"] for k in got}) == 1  # one memory, one yardstick
    code, out, err = run(capsys, "bench", "--vocab", "4099", "--rows", "6", "--kernels", "u16xf32",
                         "-q")
    assert code == 0, err
    head, columns, *rows = out.splitlines()
    assert re.search(r"; memory read \d+\.\d\d GB/s$", head)
    assert columns.split()[-3:] == ["GB/s", "of", "read"]
    assert [r.split()[:2] for r in rows] == [["u16xf32", "llama"], ["u16xf32", "exact"]]
    assert all(re.search(r" \d+%$", r) for r in rows)


def test_gemma3_dump_and_score(gemma3, tmp_path, capsys):
    """The 262,144-entry vocabulary through dump and score (self and a Q4_0 requant)."""
    from quantkl.models import quantize
    base = tmp_path / "g.kld"
    code, out, err = run(capsys, "dump", gemma3, quantkl.models.SAMPLE_TEXT, "-o", base,
                         "--ctx", "128", "--chunks", "2", "-q")
    assert code == 0, err
    d = LogitDump(base)
    assert d.n_vocab == 262144 and d.n_chunk == 2
    code, out, err = run(capsys, "score", base, "--model", gemma3, "--json", tmp_path / "s.json")
    assert code == 0, err
    self_stats = json.loads((tmp_path / "s.json").read_text())["statistics"]
    assert abs(self_stats["kld_mean"]) < 1e-3 and self_stats["same_top"] == 1.0
    q4 = quantize(gemma3, str(tmp_path / "g-q4_0.gguf"), "Q4_0")
    code, out, err = run(capsys, "score", base, "--model", q4, "--json", tmp_path / "q.json")
    assert code == 0, err
    assert "Same top p:" in out
    q = json.loads((tmp_path / "q.json").read_text())["statistics"]
    assert q["kld_mean"] > 10 * max(self_stats["kld_mean"], 1e-4)
    code, out, err = run(capsys, "score", base, "--model", q4, "--exact", "-q",
                         "--json", tmp_path / "e.json")
    e = json.loads((tmp_path / "e.json").read_text())["statistics"]
    # On Gemma 3 the -16 cut moves mean KLD by ~2e-4 relative (docs/statistics.md)
    assert e["kld_mean"] != q["kld_mean"]
    assert e["kld_mean"] == pytest.approx(q["kld_mean"], rel=5e-3)


# --- bad input: exit 1, one line, no traceback, nothing written ----------------

def bad_dump_files(tmp_path, golden):
    raw = (golden / GOLDEN_KLD).read_bytes()
    (tmp_path / "empty.kld").write_bytes(b"")
    (tmp_path / "foreign.kld").write_bytes(b"GGUF" + bytes(64))
    (tmp_path / "truncated.kld").write_bytes(raw[:len(raw) - 1001])
    import struct
    big_ctx = struct.pack("<8sIii", b"_logits_", 9000, 1, 1) + bytes(4 * 9000) + bytes(2 * 6 * 4499)
    (tmp_path / "bigctx.kld").write_bytes(big_ctx)


@pytest.mark.parametrize("name, words", [
    ("empty.kld", "empty file"),
    ("foreign.kld", "not a llama.cpp logits file"),
    ("truncated.kld", "truncated at chunk 2 of 2"),
    ("bigctx.kld", "context 9000 is larger than the 8192 tokens this model was trained on"),
])
def test_score_bad_files(name, words, tmp_path, golden, quants, capsys):
    bad_dump_files(tmp_path, golden)
    save, rec = tmp_path / "save.kld", tmp_path / "rec.json"
    code, out, err = run(capsys, "score", tmp_path / name, "--model", quants["Q4_0"],
                         "--save", save, "--json", rec)
    assert code == 1
    assert words in err and err.count("\n") == 1 and "Traceback" not in err
    assert not save.exists() and not rec.exists()
    assert not os.path.exists(str(save) + ".partial")


def test_score_wrong_vocab(tmp_path, golden, gemma3, capsys):
    save = tmp_path / "save.kld"
    code, _, err = run(capsys, "score", golden / GOLDEN_KLD, "--model", gemma3, "--save", save)
    assert code == 1
    assert "vocabulary mismatch" in err and "49152" in err and "262144" in err
    assert not save.exists() and not os.path.exists(str(save) + ".partial")


def test_bad_model_and_text(tmp_path, golden, smollm2, capsys):
    code, _, err = run(capsys, "score", golden / GOLDEN_KLD, "--model", golden / "gpl3.txt")
    assert code == 1 and "not a GGUF model file" in err
    short = tmp_path / "short.txt"
    short.write_text("too short")
    code, _, err = run(capsys, "dump", smollm2, short, "-o", tmp_path / "x.kld", "--ctx", "128")
    assert code == 1 and "needs at least 256" in err
    assert not (tmp_path / "x.kld").exists() and not (tmp_path / "x.kld.partial").exists()
    code, _, err = run(capsys, "compare", golden / GOLDEN_KLD, tmp_path / "missing.kld")
    assert code == 1 and "cannot open" in err


def test_compare_refuses_different_tokens(tmp_path, golden, capsys):
    raw = bytearray((golden / GOLDEN_KLD).read_bytes())
    raw[24:28] = (5).to_bytes(4, "little")
    (tmp_path / "other.kld").write_bytes(bytes(raw))
    code, _, err = run(capsys, "compare", golden / GOLDEN_KLD, tmp_path / "other.kld")
    assert code == 1 and "different tokens" in err


def test_console_script_and_module(golden, tmp_path):
    """Both entry points run, with exit status and one-line errors."""
    for cmd in (["quantkl"], [sys.executable, "-m", "quantkl"]):
        p = subprocess.run(cmd + ["info", str(golden / GOLDEN_KLD)], capture_output=True,
                           text=True)
        assert p.returncode == 0 and "status    : whole" in p.stdout
        empty = tmp_path / "e.kld"
        empty.write_bytes(b"")
        p = subprocess.run(cmd + ["info", str(empty)], capture_output=True, text=True)
        assert p.returncode == 1 and "NOT usable: empty file" in p.stdout
        p = subprocess.run(cmd + ["score", str(empty), "--model", "x.gguf"], capture_output=True,
                           text=True)
        assert p.returncode == 1 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr


def test_worst_tokens(quants, golden, tmp_path, capsys):
    from quantkl.worst import worst_mean
    assert worst_mean(np.arange(100.0), 5) == pytest.approx(97.0)
    assert worst_mean(np.array([1.0, 2.0]), 5) == 2.0  # at least one token
    rec = tmp_path / "q4.json"
    assert run(capsys, "score", golden / GOLDEN_KLD, "--model", quants["Q4_0"], "--json", rec,
               "-q")[0] == 0
    z = np.load(tmp_path / "q4.npz")
    code, out, err = run(capsys, "worst", rec, "--top", "4")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert f"worst 5 % of tokens (7 of 126): mean KLD {worst_mean(z['kld'], 5):.6f}" in lines[0]
    assert len(lines) == 2 + 4
    assert f"{z['kld'].max():9.4f}" in lines[2]
    text = (golden / "gpl3.txt").read_text()
    context = re.search(r"\(\.\.\.'(.*)'\)$", lines[2]).group(1)
    assert context.replace("\\n", "\n") in text  # detokenized from the dump's own tokens
    # two dumps, no record: the same worst token
    save = tmp_path / "q4.kld"
    assert run(capsys, "score", golden / GOLDEN_KLD, "--model", quants["Q4_0"], "--save", save,
               "-q")[0] == 0
    code, out2, err = run(capsys, "worst", golden / GOLDEN_KLD, save, "--top", "1",
                          "--model", quants["Q4_0"])
    assert code == 0, err
    assert context in out2
    # a record whose base dump has gone
    moved = json.loads(rec.read_text())
    moved["base"]["path"] = str(tmp_path / "gone.kld")
    (tmp_path / "moved.json").write_text(json.dumps(moved))
    (tmp_path / "moved.npz").write_bytes((tmp_path / "q4.npz").read_bytes())
    code, _, err = run(capsys, "worst", tmp_path / "moved.json")
    assert code == 1 and "base dump" in err and "is not there" in err
