"""Lesson 26's race at full length: lesson 06's recipe against a 2025 recipe, at equal wall time.

The model is lesson 06's (GPT-2 shrunk to 2 layers, 128 wide, 4 heads, hidden 512, 64 characters
of context, 0.4 M parameters), trained on the course's Shakespeare characters. Every recipe starts
from the same initial weights and draws its batches from the same seeded generator. Each trains for
the same wall-time budget (`olm_edu.train.train(time_budget=...)`: the run stops when its training
steps have taken the budget, evaluations excluded, and its schedule is laid over the budget, so a
recipe with dearer steps gets fewer of them and still finishes its decay). Each is then scored by
lesson 06's final estimate: the mean loss over the same 50 validation batches of 64 x 64 characters
(seed 0), in nats per character.

The recipes (--recipes picks some; --recipe NAME='{json}' adds your own, the keyword arguments of
`train` plus "batch_size"):
  lesson-06       AdamW at 5e-3 (betas 0.9, 0.95, weight decay 0.1), warm-up 10 % then cosine to 5e-4,
                  batches of 64 x 64 characters: lesson 06's recipe.
  lesson-26       Muon (Nesterov, 5 Newton-Schulz steps, Moonlight's RMS matching) on the blocks'
                  matrices, AdamW on the embeddings, norms and biases; warm-up-stable-decay; the
                  settings of lesson 26's race cell (see RECIPES).
--cpu-clock measures the budget in CPU seconds of this process (time.process_time) instead of wall
seconds, and needs --threads 1: on a machine shared with other jobs, one thread's CPU time is what a
quiet machine's wall time would be, so the race stays fair while the load changes.
Recipes run in turn, and with --rounds N the order reverses every round (A B, B A, ...) so that a
machine that gets busier or quieter over time favours neither; the table gives each recipe's mean
over the rounds and the range. The load average before and after is printed: on a busy machine
every step slows and the losses rise, so run it on a quiet one.

Run: python benchmarks/race.py                              (2 x 87 s and evaluations: about 3.5 min)
     python benchmarks/race.py --budget 30 --rounds 2
     python benchmarks/race.py --recipe mine='{"optimizer": "muon", "muon_lr": 0.03, "max_lr": 0.005,
                                              "schedule": "wsd", "decay_fraction": 0.5, "min_lr": 0.0}'
Writes benchmarks/results/race.json (the table, the per-round histories, the machine, the command).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from olm_edu.data import CharVocab, shakespeare
from olm_edu.models import build, preset
from olm_edu.train import estimate_loss, train

BLOCK_SIZE = 64
SCHEDULE_STEPS = 1000  # the grid the schedules are written on; laid over the budget by time_budget
RECIPES: dict[str, dict] = {
    "lesson-06": dict(optimizer="adamw", max_lr=5e-3, schedule="cosine", min_lr=5e-4, warmup_steps=100,
                      batch_size=64),
    "lesson-26": dict(optimizer="muon", max_lr=5e-3, muon_lr=2e-2, schedule="wsd", decay_fraction=0.5,
                      min_lr=0.0, warmup_steps=50, batch_size=32),
}


def lesson_06_model(vocab_size: int) -> torch.nn.Module:
    """Lesson 06's model, initialised from seed 0."""
    config = preset("gpt2").replace(name="shakespeare-char", vocab_size=vocab_size, max_seq_len=BLOCK_SIZE,
                                    embed_dim=128, num_layers=2, num_heads=4, hidden_dim=512)
    torch.manual_seed(0)
    return build(config)


def race_one(settings: dict, budget: float, data: tuple[torch.Tensor, torch.Tensor], vocab_size: int) -> dict:
    """Train lesson 06's model with `settings` for `budget` seconds; its steps, time and final loss."""
    train_data, val_data = data
    options = dict(settings)
    batch_size = options.pop("batch_size", 64)
    model = lesson_06_model(vocab_size)
    history = train(model, train_data, val_data, steps=SCHEDULE_STEPS, batch_size=batch_size, block_size=BLOCK_SIZE,
                    time_budget=budget, eval_every=SCHEDULE_STEPS // 10, eval_batches=10, seed=0, progress=False,
                    **options)
    val_loss = estimate_loss(model, val_data, batch_size=64, block_size=BLOCK_SIZE, num_batches=50)
    return dict(steps=len(history.steps), seconds=history.seconds, val_loss=val_loss,
                val_steps=history.val_steps, val_curve=history.val_loss)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=87.0,
                        help="seconds of training per recipe (lesson 06's 1,000 steps took 87 s on 2 cores)")
    parser.add_argument("--rounds", type=int, default=1, help="races; the order of the recipes reverses each round")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), help=f"from {list(RECIPES)}")
    parser.add_argument("--recipe", action="append", default=[], metavar="NAME=JSON", help="add a recipe")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--cpu-clock", action="store_true",
                        help="budget in CPU seconds of this process (needs --threads 1), for a shared machine")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/race.json"))
    args = parser.parse_args(argv)
    recipes = {}
    for name in args.recipes:
        if name not in RECIPES:
            parser.error(f"--recipes {name!r} is not one of {list(RECIPES)}")
        recipes[name] = RECIPES[name]
    for item in args.recipe:
        name, _, text = item.partition("=")
        try:
            recipes[name] = json.loads(text)
        except json.JSONDecodeError as error:
            parser.error(f"--recipe {item!r} must be NAME='{{json}}': {error}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_clock:
        if args.threads != 1:
            parser.error("--cpu-clock needs --threads 1 (with more threads, CPU time runs faster than the clock)")
        # train() times its steps with time.perf_counter; point its `time` at the process's CPU clock
        import olm_edu.train as training

        training.time = type("ProcessClock", (), {"perf_counter": staticmethod(time.process_time)})

    train_text, val_text = shakespeare("train"), shakespeare("val")
    vocab = CharVocab.from_text(train_text + val_text)
    data = vocab.encode_tensor(train_text), vocab.encode_tensor(val_text)
    load_before = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"load average {load_before[0]:.1f}; budget {args.budget:g} {'CPU' if args.cpu_clock else 'wall'} s per recipe, {args.rounds} round(s)")
    results: dict[str, list[dict]] = {name: [] for name in recipes}
    names = list(recipes)
    for round_index in range(args.rounds):
        for name in names if round_index % 2 == 0 else names[::-1]:
            result = race_one(recipes[name], args.budget, data, len(vocab))
            results[name].append(result)
            print(f"  round {round_index + 1}: {name:<12} {result['steps']:>5} steps in {result['seconds']:5.1f} s "
                  f"-> validation loss {result['val_loss']:.4f}", flush=True)
    load_after = os.getloadavg()

    print(f"\n| recipe | steps | ms per step | validation loss (nats/char) | range over rounds |")
    print("| --- | ---: | ---: | ---: | ---: |")
    table = []
    for name, runs in results.items():
        losses = [run["val_loss"] for run in runs]
        steps = statistics.mean(run["steps"] for run in runs)
        ms = 1000 * statistics.mean(run["seconds"] / run["steps"] for run in runs)
        table.append(dict(recipe=name, settings=recipes[name], steps=steps, ms_per_step=ms,
                          val_loss=statistics.mean(losses), val_loss_range=[min(losses), max(losses)]))
        print(f"| {name} | {steps:,.0f} | {ms:.1f} | {statistics.mean(losses):.3f} | "
              f"{min(losses):.3f}-{max(losses):.3f} |")
    print(f"\nload average before {load_before[0]:.1f}, after {load_after[0]:.1f}")
    command = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    print(f"reproduce: {command}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(
        command=command, budget_seconds=args.budget, clock="cpu" if args.cpu_clock else "wall", rounds=args.rounds, table=table, runs=results,
        machine=dict(torch=torch.__version__, threads=torch.get_num_threads(), cpus=os.cpu_count(),
                     platform=platform.platform(), load_average_before=load_before[0], load_average_after=load_after[0]),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    ), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
