"""Real-model runs: model options, many quants in one command,
shards and their exact merge, stopping at a target uncertainty, chat and
multi-file input. SmolLM2 throughout, one run on Gemma 3."""
import json
import math

import numpy as np
import pytest

import quantkl
from quantkl.cli import main
from quantkl.dumpfile import LogitDump
from quantkl.inputs import EvalText, read_chat
from quantkl.models import SAMPLE_TEXT
from quantkl.records import load_result, read_record
from quantkl.reports import PairedDiff
from quantkl.runner import ModelOptions, ModelRunner
from quantkl.stats import summary

CHAT_SAMPLE = SAMPLE_TEXT.parent / "chat-sample.jsonl"
N_CHUNK = 6


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def six_chunks(tmp_path_factory, smollm2):
    """A SmolLM2 dump of 6 chunks of 128 over the shipped text."""
    out = tmp_path_factory.mktemp("runs") / "base.kld"
    assert main(["dump", smollm2, "-o", str(out), "--ctx", "128", "--chunks", str(N_CHUNK),
                 "-q"]) == 0
    return out


@pytest.fixture(scope="module")
def full_record(six_chunks, quants, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "full.json"
    assert main(["score", str(six_chunks), "-m", quants["Q4_0"], "-q", "--json", str(out)]) == 0
    return out


def stats(path):
    return json.loads(path.read_text())["statistics"]


def same_arrays(a, b):
    ra, rb = load_result(str(a)), load_result(str(b))
    for name in ("kld", "nll", "nll_base", "rank", "top_base", "top_other"):
        np.testing.assert_array_equal(getattr(ra, name), getattr(rb, name), err_msg=name)
    assert ra.chunk_ends == rb.chunk_ends


# --- model options -----------------------------------------------------------

def test_options_reach_llama_cpp(smollm2):
    import llama_cpp as lc
    opts = ModelOptions(batch=96, ubatch=32, threads=1, threads_batch=2, parallel=3)
    with ModelRunner(smollm2, 64, opts) as r:
        assert lc.llama_n_batch(r._ctx) == 96 and lc.llama_n_ubatch(r._ctx) == 32
        assert lc.llama_n_seq_max(r._ctx) == 3 and lc.llama_n_ctx(r._ctx) >= 3 * 64  # padded
        assert lc.llama_n_threads(r._ctx) == 1
        assert lc.llama_n_threads_batch(r._ctx) == min(2, quantkl.arrays.available_cores())
        assert r.slice == 32  # 96 tokens a decode, a third for each sequence
    with pytest.raises(ValueError, match="parallel"):
        ModelOptions(parallel=0).check()


def test_gpu_layers_on_this_build(six_chunks, quants, tmp_path, capsys):
    """Offload asked of a CPU-only llama-cpp-python: said once on stderr, run
    on the CPU, the record says 0 layers offloaded. With a GPU build the
    layers are counted from llama.cpp's own log."""
    import llama_cpp
    import quantkl.runner as runner
    runner._WARNED_NO_GPU = False
    code, out, err = run(capsys, "score", six_chunks, "-m", quants["Q8_0"], "-ngl", "99",
                         "--chunks", "0:1", "--json", tmp_path / "g.json")
    assert code == 0, err
    rec = json.loads((tmp_path / "g.json").read_text())
    assert rec["model_options"]["gpu_layers"] == 99
    if llama_cpp.llama_supports_gpu_offload():
        assert rec["model_options"]["offloaded_layers"] > 0
    else:
        assert err.count("built without GPU support") == 1
        assert rec["model_options"]["offloaded_layers"] == 0
        assert "0 of 31 layers offloaded to the GPU" in out
        code, _, err = run(capsys, "score", six_chunks, "-m", quants["Q8_0"], "-ngl", "99",
                           "--chunks", "0:1", "-q")
        assert code == 0 and "GPU" not in err  # once per process


@pytest.mark.parametrize("parallel", [2, 4])
def test_parallel_sequences_change_nothing(six_chunks, full_record, quants, tmp_path, parallel,
                                           capsys):
    """4 chunks a group leaves a last group of 2: both paths are exercised."""
    out = tmp_path / "p.json"
    code, _, err = run(capsys, "score", six_chunks, "-m", quants["Q4_0"], "-q", "--parallel",
                       parallel, "--json", out)
    assert code == 0, err
    assert stats(out) == stats(full_record)
    same_arrays(out, full_record)


def test_parallel_dump_is_byte_identical(six_chunks, smollm2, tmp_path, capsys):
    out = tmp_path / "p.kld"
    code, printed, err = run(capsys, "dump", smollm2, "-o", out, "--ctx", "128", "--chunks",
                             N_CHUNK, "--parallel", "3")
    assert code == 0, err
    assert out.read_bytes() == six_chunks.read_bytes()


# --- many quants -------------------------------------------------------------

def test_many_quants_one_bad_then_resume(six_chunks, quants, tmp_path, capsys):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + bytes(100))
    recs = tmp_path / "recs"
    code, out, err = run(capsys, "score", six_chunks, "-m", quants["Q4_0"], bad, quants["Q8_0"],
                         "--json-dir", recs, "-q", "--chunks", "0:2")
    assert code == 1
    assert "broken.gguf" in err and "1 of 3 models failed" in err
    assert sorted(p.name for p in recs.iterdir()) == ["smollm2-q4_0.json", "smollm2-q4_0.npz",
                                                      "smollm2-q8_0.json", "smollm2-q8_0.npz"]
    # the comparison table closes the run, best first
    table = out[out.index("| Measurement"):]
    assert table.splitlines()[0] == "| Measurement | smollm2-q8_0 | smollm2-q4_0 |"
    kld_row = next(l for l in table.splitlines() if l.startswith("| KLD mean |"))
    q8 = json.loads((recs / "smollm2-q8_0.json").read_text())["statistics"]["kld_mean"]
    assert f"{q8:.6f}" in kld_row
    before = (recs / "smollm2-q4_0.json").stat().st_mtime_ns
    code, out, err = run(capsys, "score", six_chunks, "-m", quants["Q4_0"], quants["Q8_0"],
                         "--json-dir", recs, "--chunks", "0:2")
    assert code == 0, err
    assert out.count("exists for this base: skipped") == 2 and "| Measurement" in out
    assert (recs / "smollm2-q4_0.json").stat().st_mtime_ns == before
    # other chunks are another run: not skipped
    code, out, err = run(capsys, "score", six_chunks, "-m", quants["Q8_0"], "--json-dir", recs,
                         "--chunks", "0:1", "-q")
    assert code == 1 and "exists from another run" in err
    code, out, err = run(capsys, "score", six_chunks, "-m", quants["Q8_0"], "--json-dir", recs,
                         "--chunks", "0:1", "-q", "--force")
    assert code == 0, err
    assert read_record(str(recs / "smollm2-q8_0.json"))["chunks_scored"] == [0, 1]


# --- shards and merge --------------------------------------------------------

def test_shards_merge_to_the_unsharded_record(six_chunks, full_record, quants, tmp_path,
                                              capsys):
    shards = []
    for rng in ("4:", ":1", "1:4"):
        out = tmp_path / f"shard{len(shards)}.json"
        code, printed, err = run(capsys, "score", six_chunks, "-m", quants["Q4_0"], "--chunks",
                                 rng, "--json", out)
        assert code == 0, err
        shards.append(out)
    # a shard's table numbers its chunks as in the dump
    assert printed.splitlines()[1].startswith("   2 ")
    code, out, err = run(capsys, "merge", *shards, "-o", tmp_path / "all.json")
    assert code == 0, err
    assert stats(tmp_path / "all.json") == stats(full_record)
    same_arrays(tmp_path / "all.json", full_record)
    merged = read_record(str(tmp_path / "all.json"))
    assert merged["chunks_scored"] == [0, N_CHUNK] and len(merged["merged_from"]) == 3
    # the merged record compares with the unsharded one like any other
    code, out, _ = run(capsys, "diff", tmp_path / "all.json", full_record)
    assert code == 0 and "+0.000000 ± 0.000000" in out
    code, _, err = run(capsys, "merge", shards[0], shards[1], "-o", tmp_path / "gap.json")
    assert code == 1 and "chunks 1:4 are missing" in err
    code, _, err = run(capsys, "merge", shards[2], full_record, "-o", tmp_path / "ov.json")
    assert code == 1 and "overlap" in err
    other = tmp_path / "q8.json"
    assert main(["score", str(six_chunks), "-m", quants["Q8_0"], "--chunks", "1:4", "-q",
                 "--json", str(other)]) == 0
    code, _, err = run(capsys, "merge", shards[0], shards[1], other, "-o", tmp_path / "f.json")
    assert code == 1 and "different model files" in err
    assert not (tmp_path / "f.json").exists() and not (tmp_path / "gap.json").exists()


def test_compare_shards_merge(six_chunks, quants, tmp_path, capsys):
    q = tmp_path / "q.kld"
    assert main(["score", str(six_chunks), "-m", quants["Q8_0"], "--save", str(q), "-q",
                 "--json", str(tmp_path / "s.json")]) == 0
    parts = []
    for rng in ("0:3", "3:6"):
        parts.append(tmp_path / f"c{rng[0]}.json")
        assert main(["compare", str(six_chunks), str(q), "--chunks", rng, "-q", "--json",
                     str(parts[-1])]) == 0
    assert main(["merge", *map(str, parts), "-o", str(tmp_path / "c.json")]) == 0
    assert main(["compare", str(six_chunks), str(q), "-q", "--json",
                 str(tmp_path / "w.json")]) == 0
    assert stats(tmp_path / "c.json") == stats(tmp_path / "w.json")
    code, _, err = run(capsys, "compare", six_chunks, q, "--chunks", "3:9")
    assert code == 1 and "0 <= A < B <= 6" in err
    code, _, err = run(capsys, "score", six_chunks, "-m", quants["Q8_0"], "--chunks", "0:2",
                       "--save", tmp_path / "part.kld")
    assert code == 1 and "--save writes a whole dump" in err


# --- stop when precise enough ------------------------------------------------

def running_unc(result, chunk):
    """The mean KLD's ± after ``chunk`` chunks (what the per-chunk table prints)."""
    return summary(result, result.chunk_ends[chunk - 1])["kld_mean_unc"]


def test_target_unc_stops_where_expected(six_chunks, full_record, quants, tmp_path, capsys):
    full = load_result(str(full_record))
    uncs = [running_unc(full, c) for c in range(1, N_CHUNK + 1)]
    target = (uncs[2] + uncs[3]) / 2 if uncs[3] < uncs[2] else uncs[3] * 1.0001
    expect = next(c for c, u in enumerate(uncs, 1) if u <= target)
    out = tmp_path / "t.json"
    code, printed, err = run(capsys, "score", six_chunks, "-m", quants["Q4_0"], "--target-unc",
                             repr(target), "--json", out)
    assert code == 0, err
    rec = read_record(str(out))
    assert rec["chunks_scored"] == [0, expect] and rec["chunks"] == [0, N_CHUNK]
    assert "mean KLD uncertainty" in rec["stop_reason"] and "target" in rec["stop_reason"]
    assert f"scored chunks 0:{expect}" in printed
    assert rec["statistics"]["kld_mean_unc"] <= target
    # relative: the first chunk at which unc <= F * mean
    means = [summary(full, full.chunk_ends[c - 1])["kld_mean"] for c in range(1, N_CHUNK + 1)]
    f = uncs[4] / means[4] * 1.0001
    expect_rel = next(c for c in range(1, N_CHUNK + 1) if uncs[c - 1] <= f * means[c - 1])
    code, printed, err = run(capsys, "score", six_chunks, "-m", quants["Q4_0"],
                             "--target-unc-rel", repr(f), "--json", tmp_path / "r.json")
    assert code == 0, err
    assert read_record(str(tmp_path / "r.json"))["chunks_scored"] == [0, expect_rel]
    # never reached: the whole range, and the record says so
    code, _, _ = run(capsys, "score", six_chunks, "-m", quants["Q4_0"], "--target-unc", "1e-9",
                     "-q", "--json", tmp_path / "n.json")
    rec = read_record(str(tmp_path / "n.json"))
    assert rec["chunks_scored"] == [0, N_CHUNK] and rec["stop_reason"] == "end of the chunk range"
    with pytest.raises(SystemExit) as e:
        main(["score", str(six_chunks), "-m", quants["Q4_0"], "--target-unc", "-1"])
    assert e.value.code == 1 and "--target-unc: must be a positive number" in capsys.readouterr().err


def test_diff_says_how_many_tokens_would_be_needed(full_record, tmp_path, capsys):
    d = PairedDiff("a", "b", 1000, 0.101, 0.1, 0.001, 0.001)
    assert d.tokens_needed == pytest.approx(1000 * 1.959964 ** 2)
    assert "3,842 paired tokens (2,842 more, 3.8x these)" in d.format()
    assert PairedDiff("a", "b", 1000, 0.2, 0.1, 0.1, 0.001).tokens_needed is None
    assert math.isinf(PairedDiff("a", "b", 10, 0.1, 0.1, 0.0, 0.0).tokens_needed)
    code, out, _ = run(capsys, "diff", full_record, full_record)
    assert code == 0 and "no difference was observed" in out


# --- chat and multi-file input -----------------------------------------------

def test_chat_jsonl_through_the_model_template(smollm2, quants, tmp_path, capsys):
    conversations = read_chat(CHAT_SAMPLE)
    assert len(conversations) >= 20
    out = tmp_path / "chat.kld"
    code, printed, err = run(capsys, "dump", smollm2, CHAT_SAMPLE, "-o", out, "--ctx", "128",
                             "--chunks", "4")
    assert code == 0, err
    assert "(chat: chat-sample.jsonl)" in printed
    desc = json.loads((tmp_path / "chat.kld.input.json").read_text())
    assert desc["kind"] == "chat" and desc["conversations"] == len(conversations)
    with ModelRunner(smollm2, 128) as r:
        template = r.chat_template()
        first = r.apply_chat_template(template, conversations[0])
        expected = r.tokenize(first, special=True)
    assert desc["chat_template"]["text"] == template and "<|im_start|>" in first
    assert conversations[0][0]["content"] in first
    with LogitDump(out) as d:
        np.testing.assert_array_equal(d.tokens[:len(expected)], expected)
        assert d.tokens[0] == expected[0]  # <|im_start|> read as its special token, not text
    code, _, err = run(capsys, "score", out, "-m", quants["Q8_0"], "-q", "--json",
                       tmp_path / "c.json")
    assert code == 0, err
    rec = read_record(str(tmp_path / "c.json"))
    assert rec["input"]["kind"] == "chat" and rec["input"]["chat_template"]["sha256"]


def test_bad_chat_files(smollm2, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": 3}\n')
    code, _, err = run(capsys, "dump", smollm2, bad, "-o", tmp_path / "x.kld")
    assert code == 1 and "line 2" in err and "messages" in err
    bad.write_text('{"messages": [{"role": "narrator", "content": "hi"}]}\n')
    code, _, err = run(capsys, "dump", smollm2, bad, "-o", tmp_path / "x.kld")
    assert code == 1 and "role 'narrator'" in err
    code, _, err = run(capsys, "dump", smollm2, CHAT_SAMPLE, SAMPLE_TEXT, "-o", tmp_path / "x.kld")
    assert code == 1 and "not both" in err
    assert not list(tmp_path.glob("x.kld*"))


def test_several_text_files_with_a_separator(smollm2, tmp_path, capsys):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    text = SAMPLE_TEXT.read_text()
    a.write_text(text[:20000])
    b.write_text(text[20000:])
    out = tmp_path / "ab.kld"
    code, printed, err = run(capsys, "dump", smollm2, a, b, "-o", out, "--ctx", "128",
                             "--chunks", "3", "--separator", "\\n----\\n")
    assert code == 0, err
    with ModelRunner(smollm2, 128) as r:
        expected = r.tokenize(text[:20000] + "\n----\n" + text[20000:])
    with LogitDump(out) as d:
        np.testing.assert_array_equal(d.tokens, expected[:3 * 128])
    desc = json.loads((tmp_path / "ab.kld.input.json").read_text())
    assert [f["file"] for f in desc["files"]] == ["a.txt", "b.txt"]
    assert desc["separator"] == "\n----\n" and len(desc["files"][0]["sha256"]) == 64
    assert EvalText([a]).kind == "text"


# --- Gemma 3 -----------------------------------------------------------------

def test_gemma3_parallel_shards_and_no_template(gemma3, tmp_path, capsys):
    """262,144 entries: a dump two chunks at a time (byte-identical to one at a
    time), the model against itself in parallel and in shards, and a chat
    file refused because this GGUF carries no chat template."""
    code, _, err = run(capsys, "dump", gemma3, CHAT_SAMPLE, "-o", tmp_path / "c.kld")
    assert code == 1 and "has no chat template in its GGUF metadata" in err
    assert not list(tmp_path.glob("c.kld*"))
    base, par = tmp_path / "g.kld", tmp_path / "p.kld"
    for out, extra in ((base, []), (par, ["--parallel", "2"])):
        code, _, err = run(capsys, "dump", gemma3, "-o", out, "--ctx", "128", "--chunks", "4",
                           "-q", *extra)
        assert code == 0, err
    assert base.read_bytes() == par.read_bytes()
    code, _, err = run(capsys, "score", base, "-m", gemma3, "--parallel", "2", "-q",
                       "--json", tmp_path / "all.json")
    assert code == 0, err
    s = stats(tmp_path / "all.json")
    assert abs(s["kld_mean"]) < 1e-3 and s["same_top"] == 1.0
    for rng in ("0:1", "1:4"):
        assert main(["score", str(base), "-m", gemma3, "-q", "--chunks", rng, "--json",
                     str(tmp_path / f"{rng[0]}.json")]) == 0
    assert main(["merge", str(tmp_path / "0.json"), str(tmp_path / "1.json"), "-o",
                 str(tmp_path / "m.json")]) == 0
    assert stats(tmp_path / "m.json") == s
