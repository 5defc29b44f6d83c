"""Beyond llama-perplexity's block: the base's top-1 probability and top-k set
overlap from the kernels (held to reference.py in test_kernels), their
statistics after llama-perplexity's block, mean KLD by the base's confidence
and by token class, and statistics restricted to given token positions, on
real records of two SmolLM2 quants."""
import json

import numpy as np
import pytest

import quantkl
from quantkl.cli import main
from quantkl.records import load_result
from quantkl.stats import CONFIDENCE_EDGES
from quantkl.tokenclass import TOKEN_CLASSES, class_of_piece, token_classes


@pytest.fixture(scope="module")
def records(smollm2, quants, tmp_path_factory):
    d = tmp_path_factory.mktemp("breakdowns")
    assert main(["dump", smollm2, "-o", str(d / "base.kld"), "--ctx", "128", "--chunks", "4",
                 "-q"]) == 0
    assert main(["score", str(d / "base.kld"), "-m", quants["Q4_0"], quants["Q8_0"], "-q",
                 "--json-dir", str(d)]) == 0
    return d, sorted(str(p) for p in d.glob("smollm2-*.json"))


def test_record_keeps_the_new_arrays_and_statistics(records):
    d, paths = records
    rec = json.loads(open(paths[0]).read())
    res = load_result(paths[0])
    assert res.count == 4 * 63 and res.p_top.shape == (res.count,)
    assert res.overlap.shape == (res.count, 10) and res.token.shape == (res.count,)
    s = rec["statistics"]
    for k in (1, 5, 10):
        want = res.overlap[:, k - 1] / k
        assert s[f"top{k}_overlap_mean"] == pytest.approx(want.mean(), rel=1e-12)
    assert s["p_top_mean"] == pytest.approx(res.p_top.mean(), rel=1e-12)
    # top-1 overlap is same-top: the base's top token is the other model's top
    assert np.array_equal(res.overlap[:, 0] == 1, res.rank == 0)
    assert np.all(np.diff(res.overlap.astype(int), axis=1) >= 0)  # more k, no fewer shared
    assert np.all((res.p_top > 0) & (res.p_top <= 1))
    # the base's top-1 probability is exp(-NLL) where the scored token is the base's top
    hit = res.token == res.top_base
    np.testing.assert_allclose(res.p_top[hit], np.exp(-res.nll_base[hit]), rtol=1e-6)


def test_format_keeps_llama_block_then_adds_its_own(records):
    _, paths = records
    res = load_result(paths[0])
    text = res.format()
    assert text.startswith(res.format_llama())
    more = text[len(res.format_llama()):]
    assert more == "\n" + res.format_more()
    assert more.splitlines()[1] == "====== Beyond llama-perplexity ======"
    assert "Top-5  overlap: %6.3f" % (100 * res.top5_overlap_mean) in more


def test_by_confidence_matches_numpy(records):
    _, paths = records
    res = load_result(paths[1])
    rows = res.by_confidence()
    assert [r["count"] for r in rows] == [
        int(np.sum((res.p_top >= lo) & ((res.p_top <= hi) if hi == 1.0 else (res.p_top < hi))))
        for lo, hi in zip(CONFIDENCE_EDGES[:-1], CONFIDENCE_EDGES[1:])]
    assert sum(r["count"] for r in rows) == res.count
    for r in rows:
        if r["count"]:
            m = (res.p_top >= r["lo"]) & ((res.p_top <= r["hi"]) if r["hi"] == 1.0
                                          else (res.p_top < r["hi"]))
            assert r["kld_mean"] == pytest.approx(res.kld[m].mean(), rel=1e-12)
            assert r["same_top"] == np.mean(res.rank[m] == 0)


def test_report_by_confidence_and_class(records, smollm2, capsys):
    _, paths = records
    capsys.readouterr()
    assert main(["report", *paths, "--by", "confidence", "--format", "json"]) == 0
    got = json.loads(capsys.readouterr().out)
    res = {p: load_result(p) for p in paths}
    assert sum(got["counts"]) == res[paths[0]].count
    assert main(["report", *paths, "--by", "class", "--format", "json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["buckets"] == list(TOKEN_CLASSES) and sum(got["counts"]) == res[paths[0]].count
    from quantkl.runner import Vocabulary
    classes = token_classes(Vocabulary(smollm2), res[paths[0]].token)
    for name, rows in got["quants"].items():
        r = res[next(p for p in paths if name in p)]
        for i, row in enumerate(rows):
            m = classes == i
            assert row["count"] == int(m.sum())
            if row["count"] > 0:
                assert row["kld_mean"] == pytest.approx(r.kld[m].mean(), rel=1e-12)
    assert main(["report", *paths, "--by", "class"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("| Token class | Tokens |")


def test_positions_restrict_every_statistic(records, tmp_path, capsys):
    _, paths = records
    pos = tmp_path / "pos.txt"
    pos.write_text("0:40  # the first forty\n100, 101\n7\n")
    capsys.readouterr()
    assert main(["report", *paths, "--positions", str(pos), "--format", "json"]) == 0
    got = json.loads(capsys.readouterr().out)
    picked = np.r_[0:40, 100, 101]
    for name, row in got.items():
        r = load_result(next(p for p in paths if name in p))
        assert row["KLD mean"] == pytest.approx(r.kld[picked].mean(), rel=1e-12)
    assert main(["diff", *paths, "--positions", str(pos)]) == 0
    assert "over 42 paired tokens" in capsys.readouterr().out
    for text, words in (("5\n-3\n", "line 2: '-3' is not a position"),
                        ("0:9999\n", "position 9998 is past the 252 tokens"),
                        ("# nothing\n", "no positions in the file")):
        pos.write_text(text)
        assert main(["report", *paths, "--positions", str(pos)]) == 1
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err


def test_token_classes_from_text():
    names = [TOKEN_CLASSES[class_of_piece(p)] for p in
             (" the", "ing", "42", " 7", ",", " {", "\n\n", " ", "über", " Über")]
    assert names == ["word start", "continuation", "digit", "digit", "punctuation",
                     "punctuation", "whitespace", "whitespace", "continuation", "word start"]
    assert TOKEN_CLASSES[class_of_piece("<|im_end|>", special=True)] == "special"


def test_results_add_and_subset_keep_the_arrays(rng):
    x = (rng.normal(size=(150, 500)) * 3).astype(np.float32)
    y = (x + rng.normal(size=x.shape) * 0.4).astype(np.float32)
    t = rng.integers(0, 500, 150)
    whole = quantkl.score(x, y, t)
    s = quantkl.Scorer()
    s.update(x[:70], y[:70], t[:70])
    s.update(x[70:], y[70:], t[70:])
    parts = s.result()
    for name in ("p_top", "overlap", "token"):
        np.testing.assert_array_equal(getattr(parts, name), getattr(whole, name))
    sub = whole.subset(np.arange(150) % 3 == 0)
    np.testing.assert_array_equal(sub.overlap, whole.overlap[::3])
    assert sub.count == 50 and sub.top10_overlap_mean == pytest.approx(
        whole.overlap[::3, 9].mean() / 10)


def test_reverse_kl_and_js_on_real_dumps(records, quants, tmp_path, capsys):
    from quantkl import reference
    from quantkl.dumpfile import LogitDump
    d, _ = records
    base = d / "base.kld"
    assert main(["score", str(base), "-m", quants["Q4_0"], "--reverse-kl", "--js", "-q",
                 "--save", str(tmp_path / "q.kld"), "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    res = load_result(str(tmp_path / "s.json"))
    assert f"Mean reverse KLD, KL(Q||base): {res.rkl.mean():10.6f}" in out
    assert f"Mean Jensen-Shannon div.    : {res.js.mean():10.6f}" in out
    stats = json.loads((tmp_path / "s.json").read_text())["statistics"]
    assert stats["rkl_mean"] == pytest.approx(res.rkl.mean(), rel=1e-12)
    assert stats["js_mean"] == pytest.approx(res.js.mean(), rel=1e-12)
    # JS is at most log 2, and near KL / 4 where the two are close
    assert np.all(res.js <= np.log(2)) and 0.15 < res.js.mean() / res.kld.mean() < 0.35
    assert main(["report", str(tmp_path / "s.json")]) == 0
    row = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| Jensen-Shannon mean")]
    assert row and f"{res.js.mean():.6f}" in row[0]
    for mode in ("llama", "exact"):
        flag = ["--exact"] if mode == "exact" else []
        assert main(["compare", str(base), str(tmp_path / "q.kld"), "--reverse-kl", "--js", "-q",
                     "--json", str(tmp_path / f"c-{mode}.json"), *flag]) == 0
        got = load_result(str(tmp_path / f"c-{mode}.json"))
        b, q = LogitDump(str(base)), LogitDump(str(tmp_path / "q.kld"))
        ref = [reference.score_rows(cb.rows, cq.rows, cb.tokens, mode)
               for cb, cq in zip(b.chunks(), q.chunks())]
        for name in ("rkl", "js"):
            want = np.concatenate([r[name] for r in ref])
            assert np.all(np.abs(getattr(got, name) - want) <= 1e-7 + 1e-6 * np.abs(want))
            assert np.all(want > 0)
    capsys.readouterr()
    plain = load_result(str(records[1][0]))
    assert plain.js is None and "Jensen" not in plain.format()
    assert plain.rkl is None and "reverse" not in plain.format()
