"""The ablation lab: GPT-2 and variants that each turn one modern knob, trained at equal size.

Every variant starts from the same small GPT-2 (LayerNorm, learned positions, GELU MLP of width
4d, multi-head attention, biases everywhere) and changes one knob, except "modern", which turns
them all at once (Qwen3-like: Llama 3's recipe plus QK-norm), and "modern-moe" (that, with
experts). The variants:

    gpt2        the baseline
    rmsnorm     RMSNorm instead of LayerNorm (no norm biases)
    rope        RoPE inside attention instead of the learned position table
    swiglu      SwiGLU feed-forward instead of the GELU MLP
    gqa         grouped-query attention: num_heads query heads share num_heads/2 key/value heads
    no-bias     no biases in the attention and feed-forward projections (the norms keep theirs)
    qk-norm     RMSNorm on every head's queries and keys (Qwen 3)
    moe         the MLP replaced by --experts experts, top --top-k, Mixtral's renormalised softmax
                router and a Switch balancing loss (0.01); the experts carry no biases
    modern      rmsnorm + rope + swiglu + gqa + no-bias + qk-norm
    modern-moe  modern with the moe feed-forward (Qwen3-MoE-like); not in the default set

Equal size. The parameter counts come from `olm_edu.analysis.count_params`. Each variant's
feed-forward width (hidden_dim, or expert_hidden_dim for the MoE variants) is solved so that its
NON-EMBEDDING count (everything except the token table and the learned position table) is the
closest to the baseline's; the script stops if any variant misses it by more than 2%. The token
table is the same in all of them; the position table is what RoPE removes, so the RoPE variants
have fewer parameters in total but the same number where the computation happens. The MoE
variants match in TOTAL (non-embedding) parameters; a token uses only its top-k experts, so
their ACTIVE count (reported) is lower.

The same data, budget and seeds. Shakespeare's plays as characters (`olm_edu.data`, the split
by play of lesson 06), the same recipe for every variant (`olm_edu.train.train`: AdamW, warm-up
then cosine decay, clipping at 1.0, GPT-2's initialisation), the same number of steps and batch
shape (so the same tokens). Seed s fixes a variant's initial weights and its batches; with the
same seed, every variant sees the same batches. The final validation loss is measured on the
same --final-eval-batches validation batches for every run.

Noise. Each variant trains once per seed (at least 2). The table gives the mean over seeds and
the sample standard deviation (ddof=1); a difference from the baseline is called real only when
it is larger than the two spreads added, |mean_v - mean_gpt2| > sd_v + sd_gpt2 (the one-sd bars do
not overlap). With two seeds an sd is itself a rough number; more seeds make the verdicts firmer.

Speed. Training runs alternate variants (seed by seed, the variant order reversed every other
seed; with --jobs 2 two runs share the machine). tokens/s in the table comes from a separate
phase, in this one process, after all training: every variant's training step (the same step as
`train`: batch, forward, loss, backward, clipping, AdamW) timed for --speed-steps steps in turn,
--speed-rounds rounds, the order rotated each round; the median per variant, and the median over
rounds of each variant's ratio to the baseline timed in the same round (a busy machine slows a
whole round alike, so the ratio is steadier than the tokens/s). On a shared machine both are
noisy: read the ratio, not the absolute numbers.

Memory. The CPU has no allocator statistics comparable to CUDA's peak memory, and the process's
resident size mixes in the corpus, Python and the allocator's caches. So the script reports,
clearly labelled, an estimate: 16 bytes per parameter (float32 weights, gradients and AdamW's two
moments) plus the activations autograd saves for the backward pass, MEASURED on one training
batch with `torch.autograd.graph.saved_tensors_hooks` (each saved storage counted once; the
weights, which autograd also saves, are not counted again).

Run: python benchmarks/ablation.py                  (the default set, 2 seeds: long on a 2-core CPU)
     python benchmarks/ablation.py --steps 300 --seeds 0 1 --jobs 2
     python benchmarks/ablation.py --variants gpt2 swiglu modern --seeds 0 1 2 --out /tmp/a.json
Writes --out (JSON: the command line, the machine, the recipe, and per variant its config, its
knob diff, parameter counts, per-seed curves and final losses, the summary, speed and memory) and
prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from olm_edu.analysis import count_params
from olm_edu.data import CharVocab, get_batch, shakespeare
from olm_edu.models import ModelConfig, build, diff, preset, set_moe_implementation
from olm_edu.train import aux_loss, clip_gradients, estimate_loss, make_optimizer, next_token_loss, train

BASELINE = "gpt2"
DEFAULT_VARIANTS = ("gpt2", "rmsnorm", "rope", "swiglu", "gqa", "no-bias", "qk-norm", "moe", "modern")
ALL_VARIANTS = DEFAULT_VARIANTS + ("modern-moe",)
MAX_MISMATCH = 0.02  # every variant's non-embedding count within 2% of the baseline's
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "ablation.json"
FINAL_EVAL_SEED = 12345  # the same validation batches for every run

DESCRIPTIONS = {
    "gpt2": "baseline: LayerNorm, learned positions, GELU MLP, MHA, biases",
    "rmsnorm": "RMSNorm instead of LayerNorm",
    "rope": "RoPE instead of learned positions",
    "swiglu": "SwiGLU feed-forward instead of the GELU MLP",
    "gqa": "grouped-query attention (KV heads shared by 2 query heads)",
    "no-bias": "no biases in the attention and feed-forward projections",
    "qk-norm": "RMSNorm on queries and keys (Qwen 3)",
    "moe": "mixture of experts (top-k of E) instead of the MLP, equal total parameters",
    "modern": "all of rmsnorm, rope, swiglu, gqa, no-bias, qk-norm (Qwen3-like)",
    "modern-moe": "modern with the mixture-of-experts feed-forward (Qwen3-MoE-like)",
}


# ---------------------------------------------------------------------------
# Configs: the baseline, the knobs, and the width that matches the baseline's size
# ---------------------------------------------------------------------------


def baseline_config(args: argparse.Namespace, vocab_size: int) -> ModelConfig:
    """GPT-2's architecture (its preset's knobs), shrunk to the benchmark's size."""
    return preset("gpt2").replace(
        name=BASELINE, vocab_size=vocab_size, max_seq_len=args.block_size, embed_dim=args.embed_dim,
        num_layers=args.layers, num_heads=args.heads, hidden_dim=4 * args.embed_dim,
    )


def knob_changes(name: str, base: ModelConfig, args: argparse.Namespace) -> dict:
    """The knobs variant `name` turns on the baseline (before its width is matched)."""
    rmsnorm = dict(norm="rmsnorm", norm_bias=False)
    swiglu = dict(ffn="glu", activation="silu")
    gqa = dict(num_kv_heads=base.num_heads // 2)
    no_bias = dict(qkv_bias=False, attn_out_bias=False, ffn_bias=False)
    moe = dict(num_experts=args.experts, experts_per_token=args.top_k, router_renormalize=True, load_balance_coef=0.01)
    modern = {**rmsnorm, "position": "rope", **swiglu, **gqa, **no_bias, "qk_norm": True}
    return {
        "gpt2": {}, "rmsnorm": rmsnorm, "rope": dict(position="rope"), "swiglu": swiglu, "gqa": gqa,
        "no-bias": no_bias, "qk-norm": dict(qk_norm=True), "moe": moe, "modern": modern,
        "modern-moe": {**modern, **moe},
    }[name]  # fmt: skip


def width_knob(cfg: ModelConfig) -> str:
    """The knob that sets the feed-forward's size: each expert's width in an MoE model."""
    return "expert_hidden_dim" if cfg.num_experts else "hidden_dim"


def matched_config(cfg: ModelConfig, target_non_embedding: int) -> ModelConfig:
    """`cfg` with the feed-forward width whose non-embedding count is closest to the target.

    The count is linear in the width w: N(w) = N(1) + (w - 1) * (N(2) - N(1)). Solve, then keep
    the better of the two whole widths around the solution (the smaller on a tie).
    """
    knob = width_knob(cfg)

    def non_embedding(width: int) -> int:
        return count_params(cfg.replace(**{knob: width})).non_embedding

    slope = non_embedding(2) - non_embedding(1)
    exact = 1 + (target_non_embedding - non_embedding(1)) / slope
    candidates = [max(1, math.floor(exact)), max(1, math.ceil(exact))]
    best = min(candidates, key=lambda width: (abs(non_embedding(width) - target_non_embedding), width))
    return cfg.replace(**{knob: best})


def variant_configs(names: list[str], base: ModelConfig, args: argparse.Namespace) -> dict[str, ModelConfig]:
    target = count_params(base).non_embedding
    configs = {}
    for name in names:
        cfg = base.replace(name=name, **knob_changes(name, base, args))
        configs[name] = cfg if name == BASELINE else matched_config(cfg, target)
        mismatch = abs(count_params(configs[name]).non_embedding - target) / target
        if mismatch > MAX_MISMATCH:
            sys.exit(f"{name}: no feed-forward width brings it within {MAX_MISMATCH:.0%} of the baseline's "
                     f"{target:,} non-embedding parameters (off by {mismatch:.1%}); change --embed-dim or --layers")
    return configs


def parameter_summary(cfg: ModelConfig, target: int) -> dict:
    counts = count_params(cfg)
    return {
        "total": counts.total, "embedding": counts.embedding, "non_embedding": counts.non_embedding,
        "active": counts.active, "active_non_embedding": counts.active - counts.embedding,
        "non_embedding_vs_baseline": (counts.non_embedding - target) / target,
        "by_component": counts.by_component,
    }  # fmt: skip


# ---------------------------------------------------------------------------
# Data and training
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def corpus() -> tuple[CharVocab, torch.Tensor, torch.Tensor]:
    """(vocab, training ids, validation ids): the characters of lesson 06, split by play."""
    train_text, val_text = shakespeare("train"), shakespeare("val")
    vocab = CharVocab.from_text(train_text + val_text)
    return vocab, vocab.encode_tensor(train_text), vocab.encode_tensor(val_text)


def recipe(args: argparse.Namespace) -> dict:
    """The training settings every run uses (the keyword arguments of `olm_edu.train.train`)."""
    return dict(
        steps=args.steps, batch_size=args.batch_size, block_size=args.block_size, max_lr=args.lr,
        warmup_steps=max(1, args.steps // 10), min_lr=args.lr / 10, weight_decay=0.1, grad_clip=1.0,
        eval_every=max(1, args.steps // 10), eval_batches=args.eval_batches,
    )  # fmt: skip


def build_seeded(cfg: ModelConfig, seed: int, moe_implementation: str) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build(cfg)
    return set_moe_implementation(model, moe_implementation) if cfg.num_experts else model


def _rounded(values: list[float], digits: int = 5) -> list[float]:
    return [round(value, digits) for value in values]


def train_one(task: tuple) -> dict:
    """Train one (variant, seed) and measure its final validation loss. Runs in a worker process."""
    name, config_fields, seed, settings, threads, moe_implementation, final_eval_batches, device = task
    torch.set_num_threads(threads)
    _, train_data, val_data = corpus()
    cfg = ModelConfig(**config_fields)
    model = build_seeded(cfg, seed, moe_implementation)
    history = train(model, train_data, val_data, seed=seed, device=device, progress=False, **settings)
    final = estimate_loss(model, val_data, batch_size=settings["batch_size"], block_size=settings["block_size"],
                          num_batches=final_eval_batches, seed=FINAL_EVAL_SEED)
    return {
        "variant": name, "seed": seed, "final_val_loss": round(final, 5),
        "train_loss": _rounded(history.train_loss), "val_steps": history.val_steps,
        "val_loss": _rounded(history.val_loss), "seconds": round(history.seconds, 3),
        "tokens": history.tokens, "tokens_per_second": round(history.tokens_per_second, 1),
    }  # fmt: skip


def training_tasks(configs: dict[str, ModelConfig], seeds: list[int], args: argparse.Namespace) -> list[tuple]:
    """Seed by seed, every variant in turn, the order reversed every other seed."""
    names = list(configs)
    tasks = []
    for index, seed in enumerate(seeds):
        for name in names if index % 2 == 0 else names[::-1]:
            fields = dataclasses.asdict(configs[name])
            tasks.append((name, fields, seed, recipe(args), args.threads, args.moe_implementation,
                          args.final_eval_batches, args.device))
    return tasks


def run_training(tasks: list[tuple], jobs: int) -> list[dict]:
    results = []
    started = time.perf_counter()

    def report(result: dict) -> None:
        results.append(result)
        print(f"  [{len(results)}/{len(tasks)}] {result['variant']:<10} seed {result['seed']}: "
              f"validation loss {result['final_val_loss']:.4f}  ({result['seconds']:.0f} s training, "
              f"{time.perf_counter() - started:.0f} s so far)", flush=True)

    if jobs == 1:
        for task in tasks:
            report(train_one(task))
    else:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            for result in pool.map(train_one, tasks):
                report(result)
    return results


# ---------------------------------------------------------------------------
# Speed and memory
# ---------------------------------------------------------------------------


class Stepper:
    """A variant's model and optimiser, and one training step as `olm_edu.train.train` takes it."""

    def __init__(self, cfg: ModelConfig, args: argparse.Namespace, train_data: torch.Tensor):
        self.model = build_seeded(cfg, 0, args.moe_implementation).to(args.device).train()
        self.optimizer = make_optimizer(self.model, lr=args.lr, weight_decay=0.1)
        self.generator = torch.Generator().manual_seed(0)
        self.data, self.args = train_data, args

    def steps(self, count: int) -> float:
        """Seconds for `count` training steps."""
        args, model = self.args, self.model
        started = time.perf_counter()
        for _ in range(count):
            for group in self.optimizer.param_groups:
                group["lr"] = args.lr  # the peak rate; the schedule's value costs nothing to set
            inputs, targets = get_batch(self.data, args.batch_size, args.block_size, generator=self.generator,
                                        device=args.device)
            loss = next_token_loss(model(inputs), targets) + aux_loss(model)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(model.parameters(), 1.0)
            self.optimizer.step()
        return time.perf_counter() - started


def measure_speed(configs: dict[str, ModelConfig], args: argparse.Namespace, train_data: torch.Tensor) -> dict:
    """Per variant: tokens/s samples (one per round) and each round's ratio to the baseline."""
    torch.set_num_threads(args.threads)
    steppers = {name: Stepper(cfg, args, train_data) for name, cfg in configs.items()}
    for stepper in steppers.values():
        stepper.steps(2)  # warm-up: first calls allocate and choose kernels
    tokens = args.speed_steps * args.batch_size * args.block_size
    samples = {name: [] for name in configs}
    names = list(configs)
    for round_index in range(args.speed_rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(tokens / steppers[name].steps(args.speed_steps))
    speed = {}
    for name in names:
        ratios = [mine / base for mine, base in zip(samples[name], samples.get(BASELINE, samples[name]))]
        speed[name] = {
            "tokens_per_second_median": round(statistics.median(samples[name]), 1),
            "tokens_per_second_samples": _rounded(samples[name], 1),
            "ratio_to_baseline_median": round(statistics.median(ratios), 4),
            "ratio_to_baseline_samples": _rounded(ratios, 4),
        }
    return speed


def saved_activation_bytes(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one training forward.

    Each saved storage is counted once (views share one); the parameters' own storages are
    left out (they are counted as weights).
    """
    parameter_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameter_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = next_token_loss(model(inputs), targets) + aux_loss(model)
    del loss
    return sum(saved.values())


def measure_memory(cfg: ModelConfig, args: argparse.Namespace, train_data: torch.Tensor) -> dict:
    model = build_seeded(cfg, 0, args.moe_implementation).train()
    generator = torch.Generator().manual_seed(0)
    inputs, targets = get_batch(train_data, args.batch_size, args.block_size, generator=generator)
    activations = saved_activation_bytes(model, inputs, targets)
    state = 16 * count_params(cfg).total
    return {
        "weights_grads_adamw_bytes": state, "saved_activation_bytes": activations,
        "training_estimate_bytes": state + activations,
        "method": "16 B per parameter (fp32 weights, gradients, AdamW m and v: arithmetic) + activations saved "
                  "for backward on one batch (measured with torch.autograd.graph.saved_tensors_hooks); "
                  "not the process's peak resident memory",
    }  # fmt: skip


# ---------------------------------------------------------------------------
# Summary and report
# ---------------------------------------------------------------------------


def summarise(losses: list[float]) -> dict:
    """Mean and sample standard deviation (ddof=1) of the final losses over seeds."""
    return {
        "mean": round(statistics.mean(losses), 5), "sd": round(statistics.stdev(losses), 5),
        "min": min(losses), "max": max(losses), "n": len(losses),
    }  # fmt: skip


def compare(losses: list[float], baseline_losses: list[float]) -> dict:
    """The difference of the means from the baseline's and whether it exceeds the two spreads added."""
    difference = statistics.mean(losses) - statistics.mean(baseline_losses)
    noise = statistics.stdev(losses) + statistics.stdev(baseline_losses)
    baseline = {"mean": statistics.mean(baseline_losses)}
    return {"difference": round(difference, 5), "relative": round(difference / baseline["mean"], 5),
            "noise": round(noise, 5), "real": abs(difference) > noise}


def machine(args: argparse.Namespace) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "cpu": cpu, "cpu_count": os.cpu_count(), "threads_per_run": args.threads, "parallel_runs": args.jobs,
        "device": args.device, "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }  # fmt: skip


def print_table(report: dict) -> None:
    variants = report["variants"]
    print(f"\n| {'variant':<10} | {'non-emb':>8} | {'vs gpt2':>7} | {'active':>8} | {'val loss (mean ± sd, n)':>23} | "
          f"{'Δ vs gpt2':>9} | {'real?':>5} | {'tokens/s':>8} | {'speed':>5} | {'train MB':>8} |")
    print("|" + "|".join("-" * width for width in (12, 10, 9, 10, 25, 11, 7, 10, 7, 10)) + "|")
    for name, entry in variants.items():
        params, loss, verdict = entry["params"], entry["final_val_loss"], entry["vs_baseline"]
        speed, memory = entry["speed"], entry["memory"]
        active = params["active_non_embedding"]
        spread = f"{loss['mean']:.4f} ± {loss['sd']:.4f} ({loss['n']})"
        real = "-" if name == BASELINE else "yes" if verdict["real"] else "no"
        print(f"| {name:<10} | {params['non_embedding']:>8,} | {params['non_embedding_vs_baseline']:>+7.2%} | "
              f"{active:>8,} | {spread:>23} | {verdict['difference']:>+9.4f} | {real:>5} | "
              f"{speed['tokens_per_second_median']:>8,.0f} | {speed['ratio_to_baseline_median']:>5.2f} | "
              f"{memory['training_estimate_bytes'] / 2**20:>8.2f} |")
    print("\nnon-emb: parameters outside the token and position tables (matched); active: non-embedding parameters "
          "one token uses.\nreal?: |Δ| > sd_variant + sd_gpt2 (sample sd over seeds). speed: median over rounds of "
          "tokens/s relative to gpt2 timed in the same round (noisy on a shared machine).\ntrain MB: 16 B/parameter "
          "+ activations saved for backward, measured on one batch (an estimate, not peak RSS).")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps per run (default 300)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds; at least 2 (default 0 1)")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=ALL_VARIANTS,
                        metavar="NAME", help=f"variants to train, from {', '.join(ALL_VARIANTS)} "
                        f"(default: all but modern-moe; {BASELINE} is always added)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="JSON results file (default benchmarks/results/ablation.json)")
    parser.add_argument("--embed-dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4, help="query heads (gqa: half as many key/value heads)")
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-3, help="peak learning rate, the same for all (default 5e-3)")
    parser.add_argument("--experts", type=int, default=4, help="experts of the moe variants (default 4)")
    parser.add_argument("--top-k", type=int, default=2, help="experts per token (default 2)")
    parser.add_argument("--eval-batches", type=int, default=8, help="batches per point of the validation curve")
    parser.add_argument("--final-eval-batches", type=int, default=40, help="batches for the final validation loss")
    parser.add_argument("--speed-rounds", type=int, default=5)
    parser.add_argument("--speed-steps", type=int, default=3, help="training steps per variant per speed round")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at the same time (processes; default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--moe-implementation", choices=("loop", "batched"), default="loop")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) < 2:
        parser.error("--seeds needs at least two different seeds: one run per variant cannot measure the noise")
    for name in ("steps", "embed_dim", "layers", "heads", "block_size", "batch_size", "experts", "top_k",
                 "eval_batches", "final_eval_batches", "speed_rounds", "speed_steps", "jobs", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be at least 1")
    if args.heads % 2:
        parser.error(f"--heads={args.heads} must be even (gqa shares each key/value head between 2 query heads)")
    args.seeds = list(dict.fromkeys(args.seeds))
    args.variants = [BASELINE] + [name for name in dict.fromkeys(args.variants) if name != BASELINE]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    command = shlex.join(["python", "benchmarks/ablation.py", *(sys.argv[1:] if argv is None else argv)])
    vocab, train_data, _ = corpus()
    base = baseline_config(args, len(vocab))
    configs = variant_configs(args.variants, base, args)
    target = count_params(base).non_embedding
    settings = recipe(args)
    report = {
        "command": command, "machine": machine(args),
        "recipe": {**settings, "seeds": args.seeds, "tokens_per_run": args.steps * args.batch_size * args.block_size,
                   "final_eval_batches": args.final_eval_batches, "final_eval_seed": FINAL_EVAL_SEED,
                   "init": "GPT-2's: N(0, 0.02), residual projections / sqrt(2 * layers)",
                   "data": "Shakespeare characters (olm_edu.data, split by play)",
                   "moe_implementation": args.moe_implementation},
        "baseline": BASELINE, "target_non_embedding": target, "max_mismatch": MAX_MISMATCH,
        "noise_rule": "real when |mean_v - mean_gpt2| > sd_v + sd_gpt2, sd the sample standard deviation (ddof=1)",
        "variants": {},
    }  # fmt: skip
    print(f"torch {torch.__version__}, {args.threads} thread(s) per run, {args.jobs} run(s) at a time, "
          f"{report['machine']['cpu']}\nbaseline: {base.num_layers} layers, d={base.embed_dim}, "
          f"{base.num_heads} heads, "
          f"block {args.block_size}, batch {args.batch_size}; {target:,} non-embedding parameters; "
          f"{args.steps} steps = {report['recipe']['tokens_per_run']:,} tokens per run; seeds {args.seeds}")
    for name, cfg in configs.items():
        changes = ", ".join(f"{c.knob}={c.after}" for c in diff(base, cfg)) or "-"
        print(f"  {name:<10} {changes}")

    print(f"\ntraining {len(configs)} variants x {len(args.seeds)} seeds:")
    runs = run_training(training_tasks(configs, args.seeds, args), args.jobs)
    print("\ntiming the training step of each variant in turn ...", flush=True)
    speed = measure_speed(configs, args, train_data)

    for name, cfg in configs.items():
        mine = sorted((run for run in runs if run["variant"] == name), key=lambda run: run["seed"])
        report["variants"][name] = {
            "description": DESCRIPTIONS[name],
            "knobs": {c.knob: [c.before, c.after] for c in diff(base, cfg)},
            "config": dataclasses.asdict(cfg),
            "params": parameter_summary(cfg, target),
            "runs": [{key: value for key, value in run.items() if key != "variant"} for run in mine],
            "final_val_loss": summarise([run["final_val_loss"] for run in mine]),
            "speed": speed[name],
            "memory": measure_memory(cfg, args, train_data),
        }
    def final_losses(name: str) -> list[float]:
        return [run["final_val_loss"] for run in report["variants"][name]["runs"]]

    for name, entry in report["variants"].items():
        entry["vs_baseline"] = compare(final_losses(name), final_losses(BASELINE))
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    report["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    args.out.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.out.with_suffix(".tmp")
    temporary.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    temporary.replace(args.out)
    print_table(report)
    print(f"\n{report['wall_seconds']:.0f} s in all; results in {args.out}\nreproduce: {command}")


if __name__ == "__main__":
    main()
