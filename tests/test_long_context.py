"""Contexts past llama-perplexity's 512 and llama.cpp's options for them:
chunks decoded in slices that stream into the kernels and the file writer,
the context parameters llama-perplexity's common parameters give (a
sliding-window model's cache holds its window only), and the KV cache and
flash attention options. Compared with llama-perplexity built here."""
import filecmp
import json
import os
import subprocess
import sys
import tracemalloc

import pytest

from quantkl.cli import main
from quantkl.dumpfile import LogitDump
from quantkl.evaluation import dump_base, score_model
from quantkl.models import SAMPLE_TEXT
from quantkl.runner import ModelOptions, ModelRunner
from llama_tool import llama_perplexity
from test_golden import assert_same_printout, upto_same_top


@pytest.fixture(scope="module")
def lp():
    return llama_perplexity()


def run_lp(lp, *args):
    p = subprocess.run([str(lp), *map(str, args)], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


@pytest.fixture(scope="module")
def smollm2_2048(lp, smollm2, tmp_path_factory):
    """llama-perplexity's base dump of SmolLM2 at ctx 2048 in decodes of 256."""
    out = tmp_path_factory.mktemp("long") / "lp-2048.kld"
    run_lp(lp, "-m", smollm2, "-f", SAMPLE_TEXT, "-c", 2048, "-b", 256, "--chunks", 2,
           "--kl-divergence-base", out)
    return out


def test_ctx_2048_in_decodes_of_256_is_llama_perplexitys_dump(smollm2_2048, smollm2, tmp_path,
                                                               capsys):
    ours = tmp_path / "ours.kld"
    assert main(["dump", smollm2, str(SAMPLE_TEXT), "-o", str(ours), "--ctx", "2048",
                 "--batch", "256", "--chunks", "2"]) == 0
    assert ours.read_bytes() == smollm2_2048.read_bytes()
    desc = json.loads((tmp_path / "ours.kld.input.json").read_text())
    assert desc["model_options"]["decode_tokens"] == 256


def test_ctx_2048_scores_as_llama_perplexity(lp, smollm2_2048, quants, tmp_path, capsys):
    """Scored decode by decode: the same table and block as llama-perplexity
    with the same cut, and the record says how it was run."""
    out = run_lp(lp, "-m", quants["Q4_0"], "-c", 2048, "-b", 256,
                 "--kl-divergence-base", smollm2_2048, "--kl-divergence")
    theirs = out[out.index("chunk "):]
    record = tmp_path / "q4.json"
    assert main(["score", str(smollm2_2048), "--model", quants["Q4_0"], "--batch", "256",
                 "--json", str(record)]) == 0
    printed = capsys.readouterr().out
    assert_same_printout(upto_same_top(printed[printed.index("chunk "):]).rstrip("\n"),
                         theirs.rstrip("\n"))
    options = json.loads(record.read_text())["model_options"]
    assert options["decode_tokens"] == 256 and options["cache_type_v"] == "f16"
    assert options["flash_attn"] == "auto" and options["flash_attn_used"] is True


def test_default_decode_is_llama_perplexitys(smollm2):
    """llama-perplexity's default -b 2048 cuts a chunk past 2048 tokens into
    slices of 2048, and llama.cpp cuts those into micro-batches of 512;
    quantkl's default makes the same cut and hands llama.cpp one micro-batch
    per llama_decode, so that its output buffer holds 512 rows. --parallel
    keeps whole slices of each chunk."""
    with ModelRunner(smollm2, 4096) as r:
        assert (r.n_batch, r.slice, r.n_ubatch, r.decode_size) == (2048, 2048, 512, 512)
        assert r._decode_spans()[:5] == [(0, 512), (512, 1024), (1024, 1536), (1536, 2048),
                                         (2048, 2560)]
    with ModelRunner(smollm2, 512, ModelOptions(parallel=4)) as r:
        assert (r.n_batch, r.slice, r.decode_size) == (2048, 512, 512)
    with ModelRunner(smollm2, 1024, ModelOptions(batch=300, ubatch=128)) as r:
        assert (r.n_batch, r.slice, r.n_ubatch, r.decode_size) == (300, 300, 128, 128)
        assert r._decode_spans()[:4] == [(0, 128), (128, 256), (256, 300), (300, 428)]


def test_gemma3_past_its_window_is_llama_perplexitys_dump(lp, gemma3, tmp_path):
    """Gemma 3 attends to 512 tokens in five layers of six: at ctx 1024 the
    dump is llama-perplexity's only with its sliding-window cache (llama.cpp's
    own default keeps every position there, which moves the logits)."""
    theirs, ours = tmp_path / "lp.kld", tmp_path / "ours.kld"
    run_lp(lp, "-m", gemma3, "-f", SAMPLE_TEXT, "-c", 1024, "--chunks", 2,
           "--kl-divergence-base", theirs)
    dump_base(gemma3, SAMPLE_TEXT, ours, n_ctx=1024, chunks=2)
    assert filecmp.cmp(theirs, ours, shallow=False)


@pytest.mark.parametrize("ours, theirs", [([], []), (["--batch", "512"], ["-b", "512"])])
def test_gemma3_at_4096_is_llama_perplexitys_dump(lp, gemma3, tmp_path, ours, theirs):
    """At ctx 4096 llama-perplexity's defaults decode a chunk in two slices
    of 2048 tokens, eight micro-batches of 512; quantkl hands llama.cpp the
    same micro-batches one llama_decode at a time, and the file is the same;
    so it is with a cut of 512 on both sides."""
    text = tmp_path / "text.txt"
    text.write_bytes(SAMPLE_TEXT.read_bytes() + b"\n\n" + SAMPLE_TEXT.read_bytes())
    a, b = tmp_path / "lp.kld", tmp_path / "ours.kld"
    run_lp(lp, "-m", gemma3, "-f", text, "-c", 4096, "--chunks", 1, *theirs,
           "--kl-divergence-base", a)
    assert main(["dump", gemma3, str(text), "-o", str(b), "--ctx", "4096", "--chunks", "1",
                 "-q", *ours]) == 0
    assert filecmp.cmp(a, b, shallow=False)


def test_cache_options_reach_llama_cpp(smollm2):
    """What llama.cpp says it made, read back from its own log."""
    with ModelRunner(smollm2, 256, ModelOptions(cache_type_k="q8_0", cache_type_v="q4_0")) as r:
        assert [(c.type_k, c.type_v, c.cells) for c in r.kv_caches] == [("q8_0", "q4_0", 256)]
        assert r.flash_attn_used is True
        assert r.settings()["kv_caches"][0]["type_v"] == "q4_0"
    with ModelRunner(smollm2, 256, ModelOptions(flash_attn="off")) as r:
        assert r.flash_attn_used is False
        assert [(c.type_k, c.type_v) for c in r.kv_caches] == [("f16", "f16")]


def test_quantized_v_cache_changes_the_numbers(smollm2, tmp_path, capsys):
    """The model against its own dump: with the default cache only the
    dump's 16-bit codes stand between them; a q4_0 V cache adds its own error.
    Both records say which cache they ran with, and the report shows it."""
    base = tmp_path / "base.kld"
    assert main(["dump", smollm2, "-o", str(base), "--ctx", "256", "--chunks", "4"]) == 0
    same, q4 = tmp_path / "same.json", tmp_path / "q4v.json"
    assert main(["score", str(base), "-m", smollm2, "--json", str(same)]) == 0
    assert main(["score", str(base), "-m", smollm2, "-ctk", "q8_0", "-ctv", "q4_0",
                 "--json", str(q4)]) == 0
    a = json.loads(same.read_text())["statistics"]["kld_mean"]
    b = json.loads(q4.read_text())["statistics"]["kld_mean"]
    assert a < 1e-4 and b > 20 * a
    capsys.readouterr()
    assert main(["report", str(same), str(q4)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0] == "| Measurement | same | q4v |"  # one model: named by record
    assert "| KV cache K/V | f16/f16 | q8_0/q4_0 |" in table


@pytest.mark.parametrize("argv, message", [
    (["-ctv", "q3_k"], "argument --cache-type-v/-ctv: 'q3_k' is not a KV cache type llama.cpp "
                       "takes: f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1"),
    (["-fa", "off", "-ctv", "q4_0"], "--cache-type-v q4_0 needs flash attention"),
    (["--ctx", "16384"], "context 16384 is larger than the 8192 tokens this model was "
                         "trained on"),
])
def test_bad_model_options_are_refused_in_one_line(smollm2, tmp_path, capsys, argv, message):
    out = tmp_path / "x.kld"
    try:
        rc = main(["dump", smollm2, "-o", str(out), "--ctx", "256", *argv])
    except SystemExit as e:  # argparse's own refusal
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 1 and message in err and len(err.strip().splitlines()) <= 2
    assert not os.listdir(tmp_path)


def test_a_context_llama_cpp_cannot_make_is_one_line(smollm2, tmp_path, capsys):
    """An impossible KV cache (more cells than memory could hold) is a
    one-line error with the sizes asked for, exit 1, nothing left behind."""
    out = tmp_path / "x.kld"
    rc = main(["dump", smollm2, "-o", str(out), "--ctx", "8192", "--parallel", "100000",
               "--batch", "100000"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1
    assert "could not create a context of 819200000 tokens (100000 x 8192" in err
    assert not os.listdir(tmp_path)


def test_no_array_of_a_chunks_rows_is_allocated(smollm2, tmp_path):
    """numpy's allocations while dumping and scoring at ctx 2048 in decodes of
    256 stay far below one chunk's logits (1,023 rows x 49,152 floats, 201 MB):
    a decode's rows are a view of llama.cpp's buffer, encoded in blocks."""
    base = tmp_path / "base.kld"
    chunk_bytes = 1023 * 49152 * 4
    opts = ModelOptions(batch=256)
    tracemalloc.start()
    try:
        dump_base(smollm2, SAMPLE_TEXT, base, n_ctx=2048, chunks=2, options=opts)
        _, dump_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with LogitDump(base) as d:
            result = score_model(d, smollm2, options=opts, save=tmp_path / "again.kld")
        _, score_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.count == 2 * 1023
    assert dump_peak < chunk_bytes / 4 and score_peak < chunk_bytes / 4
    assert (tmp_path / "again.kld").read_bytes() == base.read_bytes()


PEAK_RSS = """
import resource, sys
from quantkl.evaluation import dump_base
from quantkl.models import SAMPLE_TEXT
from quantkl.runner import ModelOptions
dump_base(sys.argv[1], SAMPLE_TEXT, sys.argv[2], n_ctx=int(sys.argv[3]), chunks=1,
          options=ModelOptions(batch=256))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def test_peak_memory_does_not_grow_with_the_context_by_a_chunk(smollm2, tmp_path):
    """Peak RSS of a dump at ctx 3072 against ctx 512, both in decodes of 256:
    the difference is the KV cache (23 KB a token for SmolLM2), not the
    scored half of a chunk's logits (1,535 x 49,152 floats, 302 MB) or its
    encoded rows (151 MB), as when a chunk was gathered whole."""
    def peak(n_ctx):
        p = subprocess.run([sys.executable, "-c", PEAK_RSS, smollm2,
                            str(tmp_path / f"{n_ctx}.kld"), str(n_ctx)],
                           capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-2000:]
        return int(p.stdout.split()[-1])
    growth = peak(3072) - peak(512)
    kv_cache = (3072 - 512) * 30 * 2 * 3 * 64 * 2
    assert growth < kv_cache + 60e6, growth
