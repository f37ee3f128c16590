"""Checks for lesson 18 — The ablation lab (equal sizes, seed noise, real differences, tokens/s).

References, all exact arithmetic on Python numbers:

- the matched width: the hidden_dim w whose `count_params(variant.replace(hidden_dim=w))
  .non_embedding` is closest to the baseline's non-embedding count (the smaller w on a tie),
  found by scanning the widths around the linear solution;
- mean and spread: `statistics.mean` and `statistics.stdev` (the sample standard deviation,
  ddof=1); fewer than two losses must raise ValueError;
- real differences: difference = mean(variant) - mean(baseline), real when
  |difference| > sd(variant) + sd(baseline), both sample standard deviations;
- tokens/s: batch_size * block_size / median(step times after the warm-up), with
  `statistics.median` (the mean of the two middle values for an even count).

Numbers are compared at rel_tol=1e-4, abs_tol=1e-6, so float32 arithmetic (torch tensors of the
losses) passes; each named mistake is off by far more (a factor sqrt(2) for ddof=0 with two seeds).

When an answer is wrong, the check computes the usual mistakes on the same inputs and names the
one it matches: matching total instead of non-embedding parameters, keeping the classic 4d width
for a gated feed-forward, solving as if the gated feed-forward had two matrices, rounding down;
the population standard deviation (ddof=0), the variance, the range; a single seed compared
instead of the means, a signed test that never calls an improvement real, one spread instead of
two; the mean step time instead of the median, B*(T+1) tokens per step, the warm-up kept, steps
per second, and torch.median's lower middle value.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Callable

from olm_edu.analysis import count_params
from olm_edu.grading import Check, exercise
from olm_edu.models import ModelConfig, preset

REL_TOL, ABS_TOL = 1e-4, 1e-6  # float32 arithmetic (torch's default dtype) passes; every mistake is further off


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) or type(value).__name__ in ("int64", "int32")


def _as_float(check: Check, value: Any, what: str) -> float:
    """A learner's number (float, int, numpy or 0-d torch scalar) as a float."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        check.fail(f"{what}: expected a number, got {type(value).__name__} ({value!r:.60})")
    if isinstance(value, bool) or not math.isfinite(number):
        check.fail(f"{what}: expected a finite number, got {value!r}")
    return number


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)


# -- the library's versions, with the exercises' signatures ------------------------------------
# What the cells after an unfinished exercise use until its check passes
# (`check.<exercise>.yours_or_reference(yours)`): the learner's notebook runs to the end either way.

def reference_matched_hidden_dim(variant: ModelConfig, baseline: ModelConfig) -> int:
    """The hidden_dim whose count_params(...).non_embedding is closest to the baseline's."""
    return _closest_width(variant, count_params(baseline).non_embedding)


def reference_seed_summary(final_losses: dict[str, list[float]]) -> dict[str, tuple[float, float]]:
    """{variant: (mean, sample standard deviation)}."""
    return {name: (statistics.mean(losses), statistics.stdev(losses)) for name, losses in final_losses.items()}


def reference_real_differences(final_losses: dict[str, list[float]], baseline: str) -> dict[str, tuple[float, bool]]:
    """{variant: (mean - baseline mean, |difference| > sd + baseline sd)}."""
    return _reference_real(final_losses, baseline)


def reference_tokens_per_second(step_seconds: list[float], batch_size: int, block_size: int, warmup: int) -> float:
    """batch_size * block_size / the median step time after the warm-up."""
    return batch_size * block_size / statistics.median(step_seconds[warmup:])


# ---------------------------------------------------------------------------
# Exercise 1 — the width that matches the baseline's size
# ---------------------------------------------------------------------------


def _tiny_gpt2(vocab_size: int, seq_len: int, embed_dim: int, layers: int, heads: int) -> ModelConfig:
    return preset("gpt2").replace(name="baseline", vocab_size=vocab_size, max_seq_len=seq_len,
                                  embed_dim=embed_dim, num_layers=layers, num_heads=heads, hidden_dim=4 * embed_dim)


def _counter(variant: ModelConfig, measure: str = "non_embedding") -> Callable[[int], int]:
    """width -> count_params(variant with that hidden_dim).<measure>"""
    return lambda width: getattr(count_params(variant.replace(hidden_dim=width)), measure)


def _closest_width(variant: ModelConfig, target: int, measure: str = "non_embedding") -> int:
    """The hidden_dim whose count (`measure`) is closest to `target` (the smaller on a tie)."""
    count = _counter(variant, measure)
    centre = 1 + (target - count(1)) / (count(2) - count(1))
    first = max(1, math.floor(centre) - 2)
    return min(range(first, first + 6), key=lambda width: (abs(count(width) - target), width))


def _width_mistakes(variant: ModelConfig, baseline: ModelConfig) -> dict[str, int]:
    """{message naming a mistake: the width it gives}, for the mistakes that give a wrong width here."""
    target = count_params(baseline).non_embedding
    right = _closest_width(variant, target)
    total = _closest_width(variant, count_params(baseline).total, measure="total")
    count = _counter(variant)
    solution = 1 + (target - count(1)) / (count(2) - count(1))
    two_matrices = max(1, round(1 + (target - count(1)) / (2 * variant.embed_dim * variant.num_layers)))
    mistakes = {
        f"you matched TOTAL parameters (the tables included), which gives width {total}: this variant's token "
        "or position tables differ from the baseline's (RoPE has no position table), so totals compare the "
        "tables, not the layers. Compare count_params(...).non_embedding of the two": total,
        f"you kept the classic width 4 * embed_dim = {4 * variant.embed_dim}, but a gated feed-forward has "
        "three matrices (gate, up, down), so at width 4d it is 1.5 times larger. Solve for the width":
            4 * variant.embed_dim,
        "your width solves for a feed-forward of two matrices, but a gated one has three per unit of width "
        "(gate, up, down): measure the slope with count_params at two widths instead of assuming "
        "2 * embed_dim per layer": two_matrices if variant.ffn == "glu" else right,
        f"you rounded the solution down (width {max(1, math.floor(solution))}); take the whole width whose "
        "count is closest to the target, which may be the one above": max(1, math.floor(solution)),
        f"you returned the baseline's width {baseline.hidden_dim} unchanged: this variant's other knobs change "
        "its count, so its width must be solved again": baseline.hidden_dim,
    }
    return {message: width for message, width in mistakes.items() if width != right}


def _width_cases(check: Check) -> list[tuple[str, ModelConfig, ModelConfig]]:
    base = _tiny_gpt2(65, 64, 64, 2, 4)
    modern = dict(norm="rmsnorm", norm_bias=False, position="rope", ffn="glu", activation="silu", num_kv_heads=2,
                  qkv_bias=False, attn_out_bias=False, ffn_bias=False, qk_norm=True)
    no_bias = dict(qkv_bias=False, attn_out_bias=False, ffn_bias=False)
    wide = _tiny_gpt2(80, 64, 128, 4, 4)
    cases = [
        ("a SwiGLU variant (d=64, 2 layers)", base, base.replace(name="swiglu", ffn="glu", activation="silu")),
        ("a GQA variant (4 query heads, 2 KV heads)", base, base.replace(name="gqa", num_kv_heads=2)),
        ("the modern recipe (RMSNorm, RoPE, SwiGLU, GQA, no biases, QK-norm)", base,
         base.replace(name="modern", **modern)),
        ("a RoPE variant", base, base.replace(name="rope", position="rope")),
        ("a variant without biases (d=128, 4 layers)", wide, wide.replace(name="no-bias", **no_bias)),
    ]
    if check.hidden:
        for _ in range(4):
            embed_dim, seq_len = 16 * int(check.randint(2, 9, 1)), 16 * int(check.randint(2, 9, 1))
            layers, vocab = int(check.randint(1, 5, 1)), int(check.randint(30, 300, 1))
            base = _tiny_gpt2(vocab, seq_len, embed_dim, layers, 4)
            what = f"a random modern variant (d={embed_dim}, {layers} layers, vocab {vocab}, {seq_len} positions)"
            cases.append((what, base, base.replace(name="modern", **modern)))
        base = _tiny_gpt2(50257, 1024, 768, 12, 12)
        cases.append(("GPT-2 small turned into the modern recipe", base, base.replace(name="modern", **modern)))
    return cases


@exercise("Exercise 1 — the width that matches the baseline", reference=reference_matched_hidden_dim)
def matched_hidden_dim(check: Check, fn: Callable[[ModelConfig, ModelConfig], int]) -> None:
    for what, baseline, variant in _width_cases(check):
        call = f"matched_hidden_dim(variant, baseline) for {what}"
        got = check.call(fn, variant, baseline, what=call,
                         hint="count_params(cfg).non_embedding is linear in hidden_dim: measure it at two widths")
        if not _is_int(got):
            check.fail(f"{call}: expected an int (a width), got {type(got).__name__} {got!r}. Hint: round the "
                       "solution, and return the closer of the two whole widths as an int")
        got = int(got)
        target = count_params(baseline).non_embedding
        expected = _closest_width(variant, target)
        if got != expected:
            for message, wrong in _width_mistakes(variant, baseline).items():
                if got == wrong:
                    check.fail(f"{call}: {message} (the right width is {expected})")
            count = _counter(variant)
            check.fail(f"{call}: expected width {expected} (non-embedding count {count(expected):,} for a target "
                       f"of {target:,}), got {got} ({count(max(1, got)):,}). Hint: N(w) = N(1) + (w - 1) * "
                       "(N(2) - N(1)); solve N(w) = target, then keep the closer of floor and ceil")
        check.passed += 1


# ---------------------------------------------------------------------------
# Exercise 2 — mean and spread over seeds
# ---------------------------------------------------------------------------


def _summary_mistakes(losses: list[float]) -> dict[str, float]:
    """{message: the spread that mistake reports}."""
    mean = statistics.mean(losses)
    n = len(losses)
    return {
        f"your spread is the population standard deviation (ddof=0, dividing by n = {n}). With a handful of seeds "
        "it underestimates the noise (by a factor sqrt(2) with two seeds): divide by n - 1 (statistics.stdev, "
        "torch.std's default, np.std(..., ddof=1))": statistics.pstdev(losses),
        "your spread is the variance; take its square root to get the standard deviation (in nats, like the losses)":
            statistics.variance(losses),
        "your spread is the range (max - min), not the sample standard deviation": max(losses) - min(losses),
        "your spread is the mean absolute deviation, not the sample standard deviation":
            sum(abs(x - mean) for x in losses) / n,
    }


def _loss_table(check: Check, variants: int, seeds: list[int]) -> dict[str, list[float]]:
    table = {}
    for index in range(variants):
        centre = 2.0 + 0.5 * float(check.randn(1)[0]) * 0.1
        count = seeds[index % len(seeds)]
        table[f"variant-{index}"] = [round(centre + 0.02 * float(x), 6) for x in check.randn(count)]
    return table


@exercise("Exercise 2 — mean and spread over seeds", reference=reference_seed_summary)
def seed_summary(check: Check, fn: Callable[[dict[str, list[float]]], dict]) -> None:
    tables = [
        {"gpt2": [2.10, 2.14], "swiglu": [2.09, 2.10], "moe": [2.20, 2.17, 2.19]},
        _loss_table(check, 4, [2, 3]),
    ]
    if check.hidden:
        tables += [_loss_table(check, 6, [2, 3, 4, 5]), {"only": [1.5, 1.5]}]
    for table in tables:
        call = f"seed_summary({table})"
        original = {name: list(losses) for name, losses in table.items()}
        got = check.call(fn, table, what=call)
        check.expect(table == original, f"{call} changed its input; only read the losses")
        if not isinstance(got, dict) or set(got) != set(table):
            check.fail(f"{call}: expected a dict with the same keys {sorted(table)}, got "
                       f"{sorted(got) if isinstance(got, dict) else type(got).__name__}")
        for name, losses in table.items():
            value = got[name]
            if not (isinstance(value, (tuple, list)) and len(value) == 2):
                check.fail(f"{call}[{name!r}]: expected a pair (mean, sd), got {value!r:.80}")
            mean = _as_float(check, value[0], f"{call}[{name!r}][0], the mean")
            spread = _as_float(check, value[1], f"{call}[{name!r}][1], the spread")
            if not _close(mean, statistics.mean(losses)):
                check.fail(f"{call}[{name!r}]: expected the mean {statistics.mean(losses):.6g} of {losses}, "
                           f"got {mean:.6g}")
            expected = statistics.stdev(losses)
            if not _close(spread, expected):
                for message, wrong in _summary_mistakes(losses).items():
                    if _close(spread, wrong):
                        check.fail(f"{call}[{name!r}]: {message}")
                check.fail(f"{call}[{name!r}]: expected the sample standard deviation {expected:.6g} of {losses}, "
                           f"got {spread:.6g}. Hint: sqrt(sum((x - mean)**2) / (n - 1))")
        check.passed += 1

    # One seed: there is no spread to measure, so no difference could ever be judged against it.
    single = {"gpt2": [2.10, 2.14], "modern": [2.05]}
    call = "seed_summary({'gpt2': [2.1, 2.14], 'modern': [2.05]})"
    try:
        got = fn(single)
    except NotImplementedError:
        raise
    except ValueError:
        check.passed += 1
        return
    except Exception as error:  # noqa: BLE001 - the learner's bug, reported
        check.fail(f"{call} raised {type(error).__name__}: {error}; expected ValueError (one seed has no spread)")
    check.fail(f"{call} returned {got!r:.100} for a variant with ONE seed. A single run cannot measure the noise "
               "(its spread is undefined, not 0): raise ValueError when a variant has fewer than two losses")


# ---------------------------------------------------------------------------
# Exercise 3 — which differences exceed the noise
# ---------------------------------------------------------------------------


def _reference_real(table: dict[str, list[float]], baseline: str) -> dict[str, tuple[float, bool]]:
    base_mean, base_sd = statistics.mean(table[baseline]), statistics.stdev(table[baseline])
    result = {}
    for name, losses in table.items():
        if name != baseline:
            difference = statistics.mean(losses) - base_mean
            result[name] = (difference, abs(difference) > statistics.stdev(losses) + base_sd)
    return result


def _real_mistakes(table: dict[str, list[float]], baseline: str) -> dict[str, dict[str, tuple[float, bool]]]:
    base = table[baseline]
    out: dict[str, dict[str, tuple[float, bool]]] = {}

    def rule(name: str, difference: float, noise: float, signed: bool = False) -> tuple[float, bool]:
        return difference, (difference > noise if signed else abs(difference) > noise)

    mean, sd, psd = statistics.mean, statistics.stdev, statistics.pstdev
    others = [name for name in table if name != baseline]
    out["you compared single runs (the first seed of each) instead of the means over seeds: one seed's difference "
        "mixes the knob's effect with that seed's luck. Use the mean over seeds"] = {
        n: rule(n, table[n][0] - base[0], sd(table[n]) + sd(base)) for n in others}
    out["your noise uses the population standard deviation (ddof=0), which with two seeds is sqrt(2) too small, "
        "so differences inside the noise look real. Use the sample standard deviation (ddof=1)"] = {
        n: rule(n, mean(table[n]) - mean(base), psd(table[n]) + psd(base)) for n in others}
    out["an improvement is a NEGATIVE difference (a lower loss) and is just as real as a worsening: compare "
        "|difference| with the noise"] = {
        n: rule(n, mean(table[n]) - mean(base), sd(table[n]) + sd(base), signed=True) for n in others}
    out["your noise counts one spread only; the difference of two means carries the noise of both: add "
        "sd(variant) + sd(baseline)"] = {n: rule(n, mean(table[n]) - mean(base), sd(table[n])) for n in others}
    out["your difference is baseline minus variant; the lesson reports variant minus baseline (negative: the "
        "variant's loss is lower)"] = {
        n: rule(n, mean(base) - mean(table[n]), sd(table[n]) + sd(base)) for n in others}
    return out


def _same(got: dict, expected: dict) -> bool:
    try:
        return set(got) == set(expected) and all(
            _close(float(got[n][0]), expected[n][0]) and bool(got[n][1]) == expected[n][1] for n in expected)
    except (TypeError, ValueError, IndexError, KeyError):
        return False


@exercise("Exercise 3 — which differences exceed the noise", reference=reference_real_differences)
def real_differences(check: Check, fn: Callable[[dict[str, list[float]], str], dict]) -> None:
    designed = {  # gpt2 sd 0.02829 (ddof=1), 0.02 (ddof=0)
        "gpt2": [2.10, 2.14],
        "better": [2.00, 2.02],  # -0.11: real by every rule but a signed one
        "inside-ddof0": [2.146, 2.166],  # +0.036: noise 0.0424 (ddof=1), not real; 0.03 with ddof=0
        "worse": [2.20, 2.22],  # +0.09: real
        "tight": [2.13, 2.14],  # +0.015: not real; real only if the baseline's spread is left out
        "lucky-seed": [2.03, 2.19],  # +-0: first seed says -0.07
    }
    three_seeds = {"base": [1.90, 1.91, 1.93], "a": [1.85, 1.86, 1.84], "b": [1.92, 1.88, 1.95]}
    tables = [(designed, "gpt2"), (three_seeds, "base")]
    if check.hidden:
        for _ in range(3):
            table = _loss_table(check, 5, [2, 3, 4])
            tables.append((table, next(iter(table))))
    for table, baseline in tables:
        call = f"real_differences({table}, baseline={baseline!r})"
        got = check.call(fn, {name: list(losses) for name, losses in table.items()}, baseline, what=call)
        expected = _reference_real(table, baseline)
        if not isinstance(got, dict):
            check.fail(f"{call}: expected a dict {{variant: (difference, real)}}, got {type(got).__name__}")
        if baseline in got:
            check.fail(f"{call}: leave the baseline {baseline!r} out of the result (its difference from itself is 0)")
        if set(got) != set(expected):
            check.fail(f"{call}: expected the keys {sorted(expected)}, got {sorted(got)}")
        if _same(got, expected):
            check.passed += 1
            continue
        for message, wrong in _real_mistakes(table, baseline).items():
            if _same(got, wrong):
                check.fail(f"{call}: {message}")
        for name, (difference, real) in expected.items():
            value = got[name]
            if not (isinstance(value, (tuple, list)) and len(value) == 2):
                check.fail(f"{call}[{name!r}]: expected a pair (difference, real), got {value!r:.80}")
            mine = _as_float(check, value[0], f"{call}[{name!r}][0], the difference")
            if not _close(mine, difference):
                check.fail(f"{call}[{name!r}]: expected the difference mean(variant) - mean(baseline) = "
                           f"{difference:+.6g}, got {mine:+.6g}")
            if bool(value[1]) != real:
                noise = statistics.stdev(table[name]) + statistics.stdev(table[baseline])
                check.fail(f"{call}[{name!r}]: |difference| = {abs(difference):.4g} and the noise sd(variant) + "
                           f"sd(baseline) = {noise:.4g}, so real should be {real}, got {value[1]!r}")


# ---------------------------------------------------------------------------
# Exercise 4 — tokens per second from step timings
# ---------------------------------------------------------------------------


def _throughput_mistakes(times: list[float], batch: int, block: int, warmup: int) -> dict[str, float]:
    kept = times[warmup:]
    tokens, median = batch * block, statistics.median(kept)
    mistakes = {
        "you used the MEAN step time: one step slowed by another program on the machine drags the mean; the "
        "median ignores it. Use statistics.median of the step times": tokens / statistics.mean(kept),
        f"you counted batch_size * (block_size + 1) tokens per step: a window of T + 1 tokens gives T inputs and T "
        f"predictions, so a step trains on batch_size * block_size = {tokens} tokens": batch * (block + 1) / median,
        f"you kept the first {warmup} warm-up steps (the first calls allocate memory and choose kernels, so they are "
        "slow): drop step_seconds[:warmup] before taking the median": tokens / statistics.median(times),
        "you returned steps per second; multiply by the tokens of one step, batch_size * block_size": 1 / median,
        "you returned seconds per token, upside down: tokens/s = tokens per step / seconds per step": median / tokens,
    }
    if len(kept) % 2 == 0:
        lower = sorted(kept)[len(kept) // 2 - 1]
        mistakes["for an even number of steps the median is the mean of the two middle values; torch.median returns "
                 "the lower one. Use statistics.median (or torch.quantile(t, 0.5))"] = tokens / lower
    return mistakes


@exercise("Exercise 4 — tokens per second from step timings", reference=reference_tokens_per_second)
def tokens_per_second(check: Check, fn: Callable[[list[float], int, int, int], float]) -> None:
    cases = [
        ([0.90, 0.31, 0.10, 0.11, 0.12, 0.40, 0.10], 16, 64, 2),  # two slow warm-up steps, one slow step later
        ([0.5, 0.2, 0.21, 0.2, 0.26, 0.9, 0.22], 8, 32, 1),  # an even count after the warm-up
        ([0.05, 0.05, 0.05], 4, 128, 0),
    ]
    if check.hidden:
        for _ in range(4):
            count, warmup = int(check.randint(3, 12, 1)), int(check.randint(0, 3, 1))
            times = [round(0.05 + abs(float(x)) * 0.03, 5) for x in check.randn(count + warmup)]
            cases.append((times, int(check.randint(1, 65, 1)), int(check.randint(8, 257, 1)), warmup))
    for times, batch, block, warmup in cases:
        call = f"tokens_per_second({times}, batch_size={batch}, block_size={block}, warmup={warmup})"
        got = _as_float(check, check.call(fn, list(times), batch, block, warmup, what=call), call)
        expected = batch * block / statistics.median(times[warmup:])
        if not _close(got, expected):
            for message, wrong in _throughput_mistakes(times, batch, block, warmup).items():
                if _close(got, wrong):
                    check.fail(f"{call}: {message}")
            check.fail(f"{call}: expected {expected:.6g} tokens/s, got {got:.6g}. Hint: batch_size * block_size / "
                       "median(step_seconds[warmup:])")
        check.passed += 1
