"""Benchmark generation with and without the KV cache: olm_edu's `generate`, greedy, batch 1.

The model: GPT-2 shrunk to 6 layers, 384 wide, 6 heads of 64, hidden 1,536, vocabulary 50,257,
float32, random weights (seed 0). From a prompt of 8 random token ids it generates 256 tokens
greedily (temperature 0), once with the cache and once without, several times in turn; the
tables report medians. Greedy decoding makes the tokens deterministic, so the script checks
that both ways produce the same tokens (and exits with status 1 if not).

Without the cache, step i runs all prompt + i tokens through the model again, so its cost grows
with the position; with the cache, step 0 runs the prompt (the "prefill") and every later step
runs one token. The second table shows it: milliseconds per token, averaged over buckets of
positions. Per-step times come from hooks around the model's forward (sampling and the
concatenation of the new token, a few microseconds, are left out); totals time `generate`.

Run: python benchmarks/generation.py                 (about a minute on 2 cores)
     python benchmarks/generation.py --quick         (64 new tokens, one repeat)
     python benchmarks/generation.py --csv per_token.csv --threads 2
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time

import torch

from olm_edu.generate import generate
from olm_edu.models import ModelConfig, Transformer, build, preset, render_diff

MODES = {"with cache": True, "without cache": False}


class StepTimer:
    """Records the wall time of every forward call of a model (hooks around `forward`)."""

    def __init__(self, model: torch.nn.Module):
        self.seconds: list[float] = []
        self._start = 0.0
        model.register_forward_pre_hook(self._before)
        model.register_forward_hook(self._after)

    def _before(self, module, inputs) -> None:
        self._start = time.perf_counter()

    def _after(self, module, inputs, output) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def bench_config(max_seq_len: int) -> ModelConfig:
    """GPT-2's architecture at 6 layers / 384 wide (head_dim 64), with room for prompt + new tokens."""
    gpt2 = preset("gpt2")
    return gpt2.replace(name="gpt2-6L-384", num_layers=6, embed_dim=384, num_heads=6, hidden_dim=1536,
                        max_seq_len=max(gpt2.max_seq_len, max_seq_len), dropout=0.0)


def timed_generate(model: Transformer, timer: StepTimer, prompt: torch.Tensor, new_tokens: int,
                   use_cache: bool) -> tuple[torch.Tensor, float, list[float]]:
    """(tokens (1, T + new_tokens), total seconds, seconds of each step)."""
    timer.seconds.clear()
    start = time.perf_counter()
    tokens = generate(model, prompt, new_tokens, temperature=0.0, use_cache=use_cache)
    return tokens, time.perf_counter() - start, list(timer.seconds)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=256, help="tokens to generate (default 256)")
    parser.add_argument("--prompt-len", type=int, default=8, help="prompt length in tokens (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each mode, taking turns (default 3)")
    parser.add_argument("--bucket", type=int, default=32, help="positions per row of the second table (default 32)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help=f"torch threads (default torch's: {torch.get_num_threads()})")
    parser.add_argument("--csv", metavar="PATH", help="also write milliseconds per step, one row per new token")
    parser.add_argument("--quick", action="store_true", help="smoke run: 64 new tokens, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.new_tokens, args.repeats = 64, 1
    for name in ("new_tokens", "prompt_len", "repeats", "bucket", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = bench_config(args.prompt_len + args.new_tokens)
    model = build(cfg).eval()
    timer = StepTimer(model)
    prompt = torch.randint(0, cfg.vocab_size, (1, args.prompt_len), generator=torch.Generator().manual_seed(1))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, CPU")
    print(f"config {cfg.name}: {model.num_parameters() / 1e6:.1f}M parameters (tied head), random weights "
          f"(seed 0), max_seq_len {cfg.max_seq_len}; the knobs changed from GPT-2:")
    print(render_diff(preset("gpt2"), cfg))
    print(f"batch 1, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, greedy (temperature 0); "
          f"{args.repeats} runs of each mode after one short warm-up, taking turns\n")

    for use_cache in MODES.values():  # warm-up: first calls allocate and pick kernels
        generate(model, prompt, 8, temperature=0.0, use_cache=use_cache)
    totals = {mode: [] for mode in MODES}
    steps = {mode: [] for mode in MODES}  # mode -> one list of step times per run
    outputs = {mode: [] for mode in MODES}
    for _ in range(args.repeats):
        for mode, use_cache in MODES.items():
            tokens, seconds, step_seconds = timed_generate(model, timer, prompt, args.new_tokens, use_cache)
            totals[mode].append(seconds)
            steps[mode].append(step_seconds)
            outputs[mode].append(tokens)

    reference = outputs["with cache"][0]
    identical = all(torch.equal(tokens, reference) for runs in outputs.values() for tokens in runs)
    total = {mode: statistics.median(times) for mode, times in totals.items()}
    print(f"| {'mode':<13} | {'total (s)':>9} | {'tokens/s':>8} | {'speed-up':>8} |")
    print(f"|{'-' * 15}|{'-' * 11}|{'-' * 10}|{'-' * 10}|")
    for mode in MODES:
        speed_up = total["without cache"] / total[mode]
        print(f"| {mode:<13} | {total[mode]:>9.2f} | {args.new_tokens / total[mode]:>8.1f} | {speed_up:>7.1f}x |")
    print(f"\nidentical: {identical}  (all {2 * args.repeats} runs give the same {args.new_tokens} tokens)")

    # per step: the median over runs; step i reads prompt_len + i tokens without the cache
    per_step = {mode: [1000 * statistics.median(run[i] for run in runs) for i in range(args.new_tokens)]
                for mode, runs in steps.items()}
    print(f"\nmilliseconds per token by new-token index (step 0 runs the whole prompt; "
          f"without the cache step i reads {args.prompt_len} + i tokens)\n")
    print(f"| {'new tokens':<10} | {'with cache':>10} | {'without cache':>13} | {'ratio':>6} |")
    print(f"|{'-' * 12}|{'-' * 12}|{'-' * 15}|{'-' * 8}|")
    for first in range(0, args.new_tokens, args.bucket):
        last = min(first + args.bucket, args.new_tokens) - 1
        cached, uncached = (statistics.mean(per_step[mode][first:last + 1]) for mode in MODES)
        print(f"| {f'{first}-{last}':<10} | {cached:>10.2f} | {uncached:>13.2f} | {uncached / cached:>5.1f}x |")

    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["new_token_index", "tokens_read_without_cache", "ms_with_cache", "ms_without_cache"])
            for i in range(args.new_tokens):
                writer.writerow([i, args.prompt_len + i, f"{per_step['with cache'][i]:.4f}",
                                 f"{per_step['without cache'][i]:.4f}"])
        print(f"\nwrote {args.new_tokens} rows to {args.csv}")
    print("\nreproduce: python benchmarks/generation.py", *sys.argv[1:])
    if not identical:
        raise SystemExit("the cache changed the generated tokens: the cached path disagrees with the full one")


if __name__ == "__main__":
    main()
