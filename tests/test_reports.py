"""Comparison tables and paired tests from JSON records."""
import csv
import io
import json
import math

import numpy as np
import pytest

import quantkl
from quantkl.cli import main
from quantkl.records import write_record
from quantkl.reports import comparison_table, load_records, paired_diff


def make_record(path, noise, seed=0, tokens_sha="t" * 64, base=("base.kld", 100), size=10**9,
                n=300, v=2000, mode="llama"):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, v)).astype(np.float32) * 3
    y = x + rng.normal(size=x.shape).astype(np.float32) * np.float32(noise)
    tok = rng.integers(0, v, n)
    res = quantkl.score(x, y, tok, mode=mode)
    write_record(str(path), res, {
        "kind": "score", "n_ctx": 512, "n_chunk": 1, "n_vocab": v, "tokens_sha256": tokens_sha,
        "base": {"file": base[0], "size_bytes": base[1]},
        "model": {"file": path.stem + ".gguf", "size_bytes": size, "bits_per_weight": 4.5}})
    return res


@pytest.fixture
def records(tmp_path):
    a = make_record(tmp_path / "q4.json", 0.5, size=2 * 10**9)
    b = make_record(tmp_path / "q8.json", 0.1, size=4 * 10**9)
    return tmp_path, a, b


def test_table_sorted_by_kld_with_per_gb_figures(records):
    d, a, b = records
    t = comparison_table(load_records([str(d / "q4.json"), str(d / "q8.json")]))
    assert t.quants == ["q8", "q4"]  # smaller mean KLD first
    vals = t.to_dict()
    assert vals["q4"]["KLD mean"] == pytest.approx(a.kld_mean)
    assert vals["q8"]["Size (GB)"] == 4.0
    assert vals["q4"]["1/KLD per GB"] == pytest.approx(1 / a.kld_mean / 2.0)
    assert vals["q8"]["1/PPL per GB"] == pytest.approx(1 / b.ppl / 4.0)
    s = b.same_top
    assert vals["q8"]["logit(Same top) per GB"] == pytest.approx(math.log(s / (1 - s)) / 4.0)
    md = t.render("markdown")
    assert md.splitlines()[0] == "| Measurement | q8 | q4 |"
    assert f"| KLD mean | {b.kld_mean:.6f} | {a.kld_mean:.6f} |" in md
    rows = list(csv.reader(io.StringIO(t.render("csv", by_rows=True))))
    assert rows[0][:3] == ["Quant", "Size (GB)", "Bits per weight"] and rows[1][0] == "q8"
    assert json.loads(t.render("json"))["q4"]["RMS Δp"] == pytest.approx(a.dp_rms)


def test_paired_diff(records):
    d, a, b = records
    ra, rb = load_records([str(d / "q4.json"), str(d / "q8.json")])
    diff = paired_diff(ra, rb)
    k = a.kld - b.kld
    assert diff.mean_diff == pytest.approx(k.mean())
    assert diff.se == pytest.approx(k.std(ddof=1) / math.sqrt(len(k)))
    assert diff.verdict == "q8 better"
    same = paired_diff(ra, ra)
    assert same.mean_diff == 0 and same.verdict == "not distinguishable at 95 %"


def test_mixing_is_refused(tmp_path):
    make_record(tmp_path / "a.json", 0.3)
    make_record(tmp_path / "b.json", 0.3, tokens_sha="u" * 64)
    make_record(tmp_path / "c.json", 0.3, base=("other.kld", 100))
    make_record(tmp_path / "e.json", 0.3, mode="exact")
    for other, words in (("b", "different tokens"), ("c", "against base other.kld"),
                         ("e", "different mode")):
        with pytest.raises(ValueError, match=words):
            load_records([str(tmp_path / "a.json"), str(tmp_path / f"{other}.json")])


def test_cli_report_and_diff(records, capsys):
    d, a, b = records
    assert main(["report", str(d / "q4.json"), str(d / "q8.json"), "--format", "csv",
                 "-o", str(d / "t.csv")]) == 0
    assert (d / "t.csv").read_text().startswith("Measurement,q8,q4")
    capsys.readouterr()
    assert main(["diff", str(d / "q4.json"), str(d / "q8.json")]) == 0
    out = capsys.readouterr().out
    assert "verdict: q8 better" in out
    (d / "bin.json").write_bytes(b"\x80\x81")
    assert main(["report", str(d / "bin.json")]) == 1
    err = capsys.readouterr().err
    assert "not a quantkl JSON record" in err and err.count("\n") == 1
    (d / "q4.npz").unlink()
    assert main(["diff", str(d / "q4.json"), str(d / "q8.json")]) == 1
    assert "per-token file" in capsys.readouterr().err


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    import struct
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("argv, size", [
    (["--x", "size", "--y", "kld"], (900, 600)),
    (["--x", "bpw", "--y", "same-top", "--width", "640", "--height", "480"], (640, 480)),
    (["--kind", "cdf", "--width", "700", "--height", "400"], (700, 400)),
])
def test_plot_png(records, argv, size):
    import matplotlib.image
    d, _, _ = records
    out = d / "p.png"
    assert main(["plot", str(d / "q4.json"), str(d / "q8.json"), "-o", str(out), "-q"] + argv) == 0
    assert png_size(out) == size
    img = matplotlib.image.imread(out)
    assert len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 10  # drawn, not blank


def test_plot_svg_and_bad_requests(records, capsys):
    d, _, _ = records
    assert main(["plot", str(d / "q4.json"), "-o", str(d / "p.svg"), "-q"]) == 0
    assert "<svg" in (d / "p.svg").read_text()
    assert main(["plot", str(d / "q4.json"), "-o", str(d / "p.jpg")]) == 1
    assert "must end in .png or .svg" in capsys.readouterr().err
    rec = json.loads((d / "q4.json").read_text())
    rec["model"] = None
    (d / "cmp.json").write_text(json.dumps(rec))
    (d / "cmp.npz").write_bytes((d / "q4.npz").read_bytes())
    assert main(["plot", str(d / "cmp.json"), "-o", str(d / "x.png")]) == 1
    assert "has no size (gb)" in capsys.readouterr().err
    assert not (d / "x.png").exists()


def test_to_pandas(records):
    d, a, _ = records
    df = a.to_pandas()
    assert list(df.columns[:4]) == ["kld", "nll", "nll_base", "dp"]
    assert len(df) == a.count and df["kld"].mean() == pytest.approx(a.kld_mean)
    t = comparison_table(load_records([str(d / "q4.json"), str(d / "q8.json")])).to_pandas()
    assert t.loc["KLD mean", "q4"] == pytest.approx(a.kld_mean)


def test_pareto_front():
    """The quants no smaller quant beats, in order of size."""
    from quantkl.plots import pareto_front
    errors = [(1.0, 0.5), (2.0, 0.6), (3.0, 0.2), (4.0, 0.3), (5.0, 0.1), (5.0, 0.05)]
    assert pareto_front(errors, larger_is_better=False) == [0, 2, 5]
    assert pareto_front([(1, 50), (2, 40), (3, 60)], larger_is_better=True) == [0, 2]


def test_plot_any_statistic_with_its_frontier(records, capsys):
    from quantkl.plots import y_axis
    d, a, b = records
    label, get, log_scale, larger = y_axis("kld-p99.9")
    q4 = load_records([str(d / "q4.json")])[0]
    assert get(q4)[0] == pytest.approx(a.kld_p99_9) and log_scale and not larger
    assert y_axis("top5-overlap-mean")[3] and not y_axis("dp-mean")[2]
    out = d / "p99.png"
    assert main(["plot", str(d / "q4.json"), str(d / "q8.json"), "-o", str(out),
                 "--y", "kld-p99.9", "-q"]) == 0
    assert out.stat().st_size > 1000
    assert main(["plot", str(d / "q4.json"), "-o", str(d / "x.png"), "--y", "no-such"]) == 1
    assert "none of the records has what --y no-such plots" in capsys.readouterr().err
    assert not (d / "x.png").exists()
