"""What the optional divergences cost: each pair's rate with the reverse KL
or the Jensen-Shannon divergence asked for, beside its plain rate measured
in the same run ("ref" is the plain rate, "x ref" the fraction kept).
A divergence stays off by default when it costs more than 25 %."""
import pytest

from quantkl.bench import best_time, lm_like_logits, next_tokens, perturbed
from quantkl.encoding import encode_llama_rows
from quantkl.scoring import score_rows

VOCAB, ROWS = 151936, 255


@pytest.fixture(scope="module")
def pairs():
    x = lm_like_logits(ROWS, VOCAB)
    y = perturbed(x)
    tok = next_tokens(x)
    base, other = encode_llama_rows(x, tok)[0], encode_llama_rows(y, tok)[0]
    return {"u16xf32": (base, y), "f32xf32": (x, y), "u16xu16": (base, other)}, tok, {}


@pytest.mark.parametrize("extra", ["reverse", "js"])
@pytest.mark.parametrize("mode", ["llama", "exact"])
@pytest.mark.parametrize("pair", ["u16xf32", "f32xf32", "u16xu16"])
def test_divergence_cost(benchmark, record, pairs, pair, mode, extra):
    arrays, tok, plain_times = pairs
    p, q = arrays[pair]
    run = lambda: score_rows(p, q, tok, mode=mode, **{extra: True})  # noqa: E731
    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    if (pair, mode) not in plain_times:
        plain_times[pair, mode] = best_time(lambda: score_rows(p, q, tok, mode=mode), 3)
    n = ROWS * VOCAB
    rate, plain = n / benchmark.stats.stats.min / 1e6, n / plain_times[pair, mode] / 1e6
    record(benchmark, label=f"{pair} {mode} +{extra} v{VOCAB}", rate_M_per_s=rate,
           reference_rate_M_per_s=plain, ratio=rate / plain)
